"""Who runs the optimizer step and holds its state: FSDP2 (default) or DeepSpeed ZeRO.

train.py sees one interface, `Engine`: `step` (one optimizer step over `accum`
micro-batches), `model_state` / `optimizer_state` (what a checkpoint holds, in
torch.distributed.checkpoint's by-name layout) and `load` (before the first step). The
FSDP2 engine is loop.train_step over the parallelized model; the ZeRO one is zero.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, cast

import torch
from longvila_contract.config import TrainConfig
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from . import loop
from .model.longvila import LongVILA, PackedBatch
from .parallel.groups import SPGroups
from .parallel.token_layout import Kind
from .zero import ZeroEngine


class Engine(Protocol):
    def step(
        self, batches: Iterator[PackedBatch], *, kind: Kind, accum: int, lr: float, tokens_per_frame: int
    ) -> loop.StepStats: ...

    def model_state(self) -> dict[str, Any]: ...

    def optimizer_state(self) -> dict[str, Any]: ...

    def load(self, model_sd: dict[str, Any], optim_sd: dict[str, Any] | None) -> None: ...


class FsdpEngine:
    """AdamW over the (FSDP2-sharded, or plain on one process) model; loop.train_step."""

    def __init__(self, model: LongVILA, t: TrainConfig, groups: SPGroups) -> None:
        self.model, self.t, self.groups = model, t, groups
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)

    def step(
        self, batches: Iterator[PackedBatch], *, kind: Kind, accum: int, lr: float, tokens_per_frame: int
    ) -> loop.StepStats:
        return loop.train_step(
            self.model, self.optimizer, batches, self.groups,
            kind=kind, accum=accum, clip=self.t.clip, lr=lr, tokens_per_frame=tokens_per_frame,
        )  # fmt: skip

    def model_state(self) -> dict[str, Any]:
        return cast(dict[str, Any], get_model_state_dict(self.model))

    def optimizer_state(self) -> dict[str, Any]:
        return cast(dict[str, Any], get_optimizer_state_dict(self.model, self.optimizer))

    def load(self, model_sd: dict[str, Any], optim_sd: dict[str, Any] | None) -> None:
        set_model_state_dict(self.model, model_sd)
        if optim_sd is not None:
            set_optimizer_state_dict(self.model, self.optimizer, optim_sd)


def make_engine(model: LongVILA, t: TrainConfig, groups: SPGroups, bf16: bool) -> Engine:
    if t.engine == "deepspeed":
        return ZeroEngine(model, t, groups, bf16)  # imports deepspeed here, not at import
    return FsdpEngine(model, t, groups)
