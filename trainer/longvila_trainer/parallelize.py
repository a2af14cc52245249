"""The parallelize step: MM-SP attention, activation checkpointing, FSDP2 — in that order.

The model is written for one device (model/longvila.py); this applies the parallelism to
it, torchtitan-style, once, after construction:

  1. MM-SP attention: the LLM's attention implementation is our registered usp attention
     (build_longvila sets it; checked here, since everything below assumes it);
  2. activation checkpointing of every transformer layer (LLM decoder layers and the
     vision encoder layers) through transformers' public activation_checkpointing_enable —
     recomputation re-runs the layer's all-to-alls and ring steps in the same order on
     every rank, so it composes with sequence parallelism;
  3. FSDP2 (fully_shard) of each layer, then the whole model, over ONE mesh spanning the
     flattened dp × ring × ulysses world. Every rank holds different tokens, so every rank
     is a data-parallel replica for the parameters. Each rank's loss is its partial sum over
     the global target count (model/longvila.py), so the gradient is the SUM over ranks:
     the reduce-scatter's divide factor is set to 1 (FSDP would average).

Mixed precision (bf16 params and compute, fp32 gradient reduction) applies on GPU only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from .hf_attention import register_usp_attention
from .model.longvila import LongVILA
from .parallel.groups import SPGroups

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class ParallelizeOptions:
    activation_checkpointing: bool = True
    fsdp: bool = True
    precision: Precision = "fp32"


def transformer_layers(model: LongVILA) -> list[nn.Module]:
    """The repeated blocks FSDP shards one by one: SigLIP encoder layers, Qwen2 decoder layers."""
    vision_layers = list(model.vision.model.encoder.layers)
    llm_layers = list(model.llm.model.layers)
    return [*vision_layers, *llm_layers]


def parallelize(model: LongVILA, groups: SPGroups, opts: ParallelizeOptions, device: str = "cpu") -> LongVILA:
    impl = model.llm.config._attn_implementation
    if impl != register_usp_attention():
        raise ValueError(f"the LLM's attention implementation is {impl!r}; MM-SP needs the usp attention")
    if opts.precision == "bf16" and device == "cpu":
        raise ValueError("precision bf16 is for GPU runs; use fp32 on the CPU")

    if opts.activation_checkpointing:
        kwargs = {"use_reentrant": False}
        model.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        model.vision.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    if opts.fsdp and groups.layout.world > 1:
        mesh = init_device_mesh(device, (groups.layout.world,), mesh_dim_names=("world",))
        mp = (
            MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
            if opts.precision == "bf16"
            else MixedPrecisionPolicy()
        )
        for layer in transformer_layers(model):
            fully_shard(layer, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp)
        for m in model.modules():
            if isinstance(m, FSDPModule):
                m.set_gradient_divide_factor(1.0)
                # Plain SUM collectives (gloo and NCCL's zero-copy path have no PREMUL_SUM).
                m.set_force_sum_reduction_for_comms(True)
    return model
