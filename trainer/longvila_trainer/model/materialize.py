"""Real-size weights: built on the meta device, sharded, then each rank reads only its shards.

A 7B LLM with a 400M tower is 30 GB in fp32; eight ranks of a node each building it whole
and reading every file would need 240 GB of host memory and read the weights eight times.
Instead (the order train.py follows):

  1. `parameters_on_meta()`: the HF modules are constructed with their parameters on the
     meta device (no memory, no init) and their buffers real (RoPE frequencies, SigLIP's
     position ids: computed from the config, never stored in a checkpoint). Parameters
     that do not come from the files (the projector, LoRA adapters) are built afterwards,
     for real, from the seed: every rank draws the same full values (`fresh_parameters`).
  2. parallelize: FSDP2 `fully_shard` turns each meta parameter into a meta DTensor shard.
  3. `materialize`: `to_empty` allocates only this rank's shards on its device, the
     buffers are put back, the fresh parameters are cut to this rank's rows, and
     torch.distributed.checkpoint reads the safetensors files with its HuggingFace reader,
     which slices each tensor in the file (`safe_open(...).get_slice(...)[rows]`): a rank
     touches only the bytes of its own rows, converting bf16 → the shard's fp32 as it copies.

Peak host memory per rank is then its shard plus one slice, not the model
(docs/benchmarks.md, "Loading at real size").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.tensor import DTensor
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from .lora import plain_names

# How a module's parameter names appear in HF files: the LLM as saved by Qwen2ForCausalLM;
# the tower as SiglipVisionModel (transformers 5 names) or with the `vision_model.` prefix of
# transformers 4 and of google/siglip-so400m-patch14-384 (a SiglipModel that also holds a text tower).
FILE_PREFIXES: dict[str, tuple[str, ...]] = {"llm": ("",), "vision.model": ("", "vision_model.")}


class MissingWeightsError(ValueError):
    """A parameter the model needs is not in the weights directory (or has another shape)."""


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules constructed inside get their parameters on the meta device and keep real
    buffers (accelerate's init_empty_weights(include_buffers=False), in a few lines)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            kind = type(param)
            meta = kind(param.to("meta"), requires_grad=param.requires_grad)
            module._parameters[name] = meta

    nn.Module.register_parameter = register  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def fresh_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the parameters that are not on meta (built from the seed, the
    same on every rank); `materialize` cuts each rank's rows from them after sharding."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.is_meta}


def _local_rows(param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """The part of `full` [global shape] this rank holds of `param` (a DTensor shard or whole)."""
    if not isinstance(param, DTensor):
        return full
    shape, offset = compute_local_shape_and_global_offset(full.shape, param.device_mesh, param.placements)
    out = full
    for dim, (n, start) in enumerate(zip(shape, offset, strict=True)):
        out = out.narrow(dim, start, n)
    return out


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b for n, b in model.named_buffers()}


def _tied(model: nn.Module) -> dict[str, str]:
    """{name: the first name of the same parameter} for every later user of a shared one."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[name] = first[id(p)]
        else:
            first[id(p)] = name
    return out


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner)._buffers[leaf] = value


def materialize(
    model: nn.Module,
    device: torch.device,
    fresh: Mapping[str, torch.Tensor],
    files: Mapping[str, Path],
    pg: dist.ProcessGroup | None,
) -> None:
    """Allocates this rank's shards on `device` and fills them: `fresh` (full CPU values by
    parameter name) and, for each submodule prefix in `files`, its HF safetensors directory.
    Collective over `pg` when a process group exists (DCP plans the reads together)."""
    buffers, tied = _buffers(model), _tied(model)
    model.to_empty(device=device)  # may give each user of a shared meta parameter its own copy
    for name, value in buffers.items():
        _set_buffer(model, name, value.to(device))
    for name, first in tied.items():  # re-share them (Qwen2-0.5B: lm_head.weight is embed_tokens.weight)
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._parameters[leaf] = model.get_parameter(first)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, full in fresh.items():
            target = params[name]
            local = target.to_local() if isinstance(target, DTensor) else target
            local.copy_(_local_rows(target, full))
    for prefix, directory in files.items():
        skip = {name.removeprefix(prefix + ".") for name in fresh if name.startswith(prefix + ".")}
        load_safetensors(model.get_submodule(prefix), directory, FILE_PREFIXES[prefix], pg, skip)


def file_keys(directory: Path) -> dict[str, list[int]]:
    """Every tensor name in the directory's safetensors files, with its shape (headers only)."""
    from safetensors import safe_open

    out: dict[str, list[int]] = {}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (a safe_open handle, not a dict)
                out[key] = list(f.get_slice(key).get_shape())
    return out


def load_safetensors(
    module: nn.Module,
    directory: Path,
    prefixes: tuple[str, ...],
    pg: dist.ProcessGroup | None,
    skip: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Reads `module`'s parameters (each rank its own shard) from HF safetensors in place.

    Names are matched as `prefix + name` for the first prefix the files know, under the
    plain model's names (a LoRA layer's `q_proj.base.weight` is the file's `q_proj.weight`);
    parameters in `skip` (the adapters, already drawn) are not read; a tied parameter
    (Qwen2-0.5B's lm_head = embed_tokens) is read once. Extra tensors in the files (the
    tower's dropped layers, a text tower) are not read.
    """
    known = file_keys(directory)
    if not known:
        raise MissingWeightsError(f"{directory}: no *.safetensors files (weights must be in safetensors)")
    params = dict(module.named_parameters())  # remove_duplicate: a tied parameter once
    plain = {mine: name for name, mine in plain_names(dict.fromkeys(params)).items()}
    state: dict[str, Any] = {}
    for mine, param in params.items():
        if mine in skip:
            continue
        name = plain.get(mine, mine)
        key = next((p + name for p in prefixes if p + name in known), None)
        if key is None:
            raise MissingWeightsError(f"{directory}: no tensor {name!r} (tried prefixes {list(prefixes)})")
        if list(param.shape) != known[key]:
            raise MissingWeightsError(
                f"{directory}: {key} has shape {known[key]}, the model's config says {list(param.shape)}"
            )
        state[key] = param.data if not isinstance(param, DTensor) else param
    single = not dist.is_initialized()
    dcp_load(state, storage_reader=HuggingFaceStorageReader(str(directory)), process_group=pg, no_dist=single)
