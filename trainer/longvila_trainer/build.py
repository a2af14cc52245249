"""The model of a run: from the config to this rank's device, in the order large jobs need.

    build (meta for real weights) → LoRA → trainable set → parallelize (MM-SP attention,
    activation checkpointing, FSDP2) → materialise this rank's shards on its device

Dtypes of each piece under FSDP2 on GPU (`precision="bf16"`, parallelize.py):

| piece                                   | dtype | where                                      |
|-----------------------------------------|-------|--------------------------------------------|
| sharded parameters (the master copy)    | fp32  | 1/W of every parameter per rank            |
| compute parameters (all-gathered)       | bf16  | one layer at a time, freed after use       |
| gradients, as computed                  | bf16  | on the compute parameters                  |
| gradients, reduce-scattered and sharded | fp32  | MixedPrecisionPolicy(reduce_dtype=fp32)    |
| AdamW state (exp_avg, exp_avg_sq)       | fp32  | sharded like the parameters                |
| activations                             | bf16  | checkpointed per layer                     |
| attention accumulators and LSE          | fp32  | ring.py                                    |
| logits, loss                            | fp32  | one chunk of rows at a time (head_loss.py) |

On CPU (tests, gloo) everything is fp32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from longvila_contract.checkpoint import ModelMeta
from longvila_contract.config import TrainerConfig
from longvila_contract.layout import kv_replication

from . import loop
from .model.longvila import LongVILA
from .model.lora import apply_lora
from .model.materialize import fresh_parameters, materialize, on_meta
from .model.weights import build_model
from .parallel.groups import SPGroups
from .parallelize import ParallelizeOptions, parallelize


def model_for_run(
    cfg: TrainerConfig, groups: SPGroups, media_token_id: int, cache: Path | None = None,
    init: ModelMeta | None = None,
) -> LongVILA:  # fmt: skip
    """The trainable model on `groups.device`, each rank holding only its FSDP shards; `init`:
    the model the init checkpoint holds (its vision feature layer, projector token order)."""
    t, device = cfg.train, groups.device
    built = build_model(cfg, media_token_id, cache, init)
    model = built.model
    llm_cfg = model.llm.config
    kv_replication(
        int(llm_cfg.num_attention_heads), int(llm_cfg.num_key_value_heads or 0), groups.layout.ulysses
    )
    if t.lora.enabled:
        apply_lora(model.llm, t.lora, t.seed)  # adapters drawn for real, on every rank alike
    loop.set_trainable(model, t)
    opts = ParallelizeOptions(fsdp=t.engine == "fsdp", precision="bf16" if device.type == "cuda" else "fp32")
    if on_meta(model):
        fresh = fresh_parameters(model)  # projector, adapters: full CPU values, cut after sharding
        model = parallelize(model, groups, opts, device.type)
        host = groups.host.world
        materialize(model, device, fresh, built.files, None if host is None else host.pg)
    else:
        model = parallelize(model, groups, opts, device.type)
        model.to(device)
    return model.train()


def parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of this rank's parameters as stored (its shards under FSDP2)."""
    total = 0
    for p in model.parameters():
        local = p.to_local() if hasattr(p, "to_local") else p
        total += local.numel() * local.element_size()
    return total
