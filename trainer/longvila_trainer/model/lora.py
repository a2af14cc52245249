"""LoRA adapters (LongLoRA-style, stage 4): y = W x + (α/r) · B A dropout(x), B starts at zero.

`apply_lora` swaps each targeted nn.Linear of a module for a `LoraLinear` holding the
original layer as `base`, before the parallelize step (FSDP then shards the adapters with
their layer). At init the output is exactly the base model's (B = 0). Which parameters
train is decided by loop.set_trainable: the adapters plus `modules_to_save` (substring
match on parameter names, as LongLoRA's `trainable_params`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import LoraConfig


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
