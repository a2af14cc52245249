"""LoRA adapters (LongLoRA-style, stage 4): y = W x + (α/r) · B A dropout(x), B starts at zero.

`apply_lora` swaps each targeted nn.Linear of a module for a `LoraLinear` holding the
original layer as `base`, before the parallelize step (FSDP then shards the adapters with
their layer). At init the output is exactly the base model's (B = 0). Which parameters
train is decided by loop.set_trainable: the adapters plus `modules_to_save` (substring
match on parameter names, as LongLoRA's `trainable_params`).

At the end of the stage the adapters are merged into the base weights (`merge_lora_state`,
on the sharded state dict): the stage's final checkpoint has the plain model's names, so the
next stage (no LoRA) initialises from it; intermediate checkpoints keep the adapters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from longvila_contract.config import LoraConfig
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)  # [r, in]
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)  # [out, r], zeros
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scale = alpha / rank
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] → [..., out]
        out: torch.Tensor = self.base(x) + self.lora_B(self.lora_A(self.drop(x))) * self.scale
        return out


def apply_lora(module: nn.Module, cfg: LoraConfig, seed: int) -> int:
    """Wraps every nn.Linear whose own name is in cfg.targets; returns how many (0 is an error)."""
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if name in cfg.targets and isinstance(child, nn.Linear)
    ]
    if not found:
        raise ValueError(f"train.lora.targets: no nn.Linear named {', '.join(cfg.targets)} in the LLM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same adapters on every rank
        for parent, name, child in found:
            setattr(parent, name, LoraLinear(child, cfg.rank, cfg.alpha, cfg.dropout))
    return len(found)


# -- merging: the stage's final weights carry no adapters ----------------------------------------

MERGED = "merged-lora"  # manifest meta "weights" of a LoRA stage's final checkpoint (train.py)
_A, _B = ".lora_A.weight", ".lora_B.weight"


def merged_weight(w: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale · B A, [out, in], with W [out, in], A [r, in], B [out, r].

    Under FSDP2 all three are DTensors sharded by rows; B A is formed whole on every rank (B
    and A are all-gathered: r is small) and each rank keeps its own rows of it, so the result
    has W's placements.
    """
    with torch.no_grad():
        if isinstance(w, DTensor):
            full_b = b.full_tensor() if isinstance(b, DTensor) else b  # [out, r]
            full_a = a.full_tensor() if isinstance(a, DTensor) else a  # [r, in]
            delta = distribute_tensor(
                full_b @ full_a * scale, w.device_mesh, w.placements, src_data_rank=None
            )
            return w.detach() + delta
        return w.detach() + (b @ a) * scale


def merge_lora_state(state: Mapping[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A model state dict with LoraLinear names → the plain model's names, adapters merged.

    `P.base.weight` and `P.lora_{A,B}.weight` become `P.weight` = W + scale · B A;
    `P.base.bias` becomes `P.bias`; every other entry is kept as is (same object).
    """
    out: dict[str, torch.Tensor] = {}
    for plain, key in plain_names(state).items():
        value = state[key]
        if key != plain and key.endswith(".base.weight"):
            head = key.removesuffix(".base.weight")
            value = merged_weight(value, state[head + _A], state[head + _B], scale)
        out[plain] = value
    return out


def plain_names(state: Mapping[str, object]) -> dict[str, str]:
    """{plain model name: name in `state`} for every entry but the adapters: how a LoRA model
    takes weights from a checkpoint without LoRA (`P.weight` goes into `P.base.weight`)."""
    adapted = {k.removesuffix(_A) for k in state if k.endswith(_A)}
    out: dict[str, str] = {}
    for key in state:
        head, sep, tail = key.rpartition(".base.")
        if sep and head in adapted:
            out[f"{head}.{tail}"] = key
        elif not (key.endswith((_A, _B)) and key[: -len(_A)] in adapted):
            out[key] = key
    return out


def merge_lora(module: nn.Module) -> int:
    """In place, unsharded: every LoraLinear becomes its base nn.Linear with B A merged in."""
    found = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, LoraLinear)
    ]
    for parent, name, child in found:
        w = merged_weight(child.base.weight, child.lora_A.weight, child.lora_B.weight, child.scale)
        with torch.no_grad():
            child.base.weight.copy_(w)
        setattr(parent, name, child.base)
    return len(found)
