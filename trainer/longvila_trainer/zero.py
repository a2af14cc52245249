"""DeepSpeed ZeRO (stage 1 or 2) in place of FSDP2: `train.engine: deepspeed`.

The same step as loop.train_step, computed by DeepSpeed: its ZeRO optimizer partitions the
AdamW state (stage 1) and the gradients (stage 2) over the flattened dp × ring × ulysses
world, reduces the gradients and clips them. Two things keep it the same computation:

- Gradients. Every rank's loss is its partial CE SUM and the step's gradient is the SUM over
  ranks divided by the global target count (model/longvila.py). DeepSpeed AVERAGES over its
  W ranks, so each micro-step backpropagates loss_sum · W / n_targets, with n_targets
  counted from the batches' labels before any forward (it is checked against the model's
  own count after the step).
- Checkpoints. The optimizer state is saved as full, unpartitioned tensors under each
  parameter's name, in the layout `get_state_dict` gives for a torch optimizer
  ({"state": {fqn: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [...]}), so a
  checkpoint loads on another world size and is read by either engine.

Order matters: weights are loaded into the plain module before `deepspeed.initialize` (its
fp32 master partitions are copied from the module), the optimizer state after it; the
engine is built on first use. Parameters are never sharded (ZeRO-3 is FSDP2's job here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from longvila_contract.config import ConfigError, TrainConfig

from .loop import StepStats, expanded_tokens, step_stats
from .model.longvila import LongVILA, PackedBatch
from .parallel.groups import SPGroups
from .parallel.token_layout import Kind
from .sharding.targets import count_targets, global_target_count, shift_targets

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


def import_deepspeed() -> Any:
    try:
        import deepspeed
    except ImportError as e:
        raise ConfigError(
            f"train.engine: deepspeed is not installed ({e}); pip install deepspeed, or use engine fsdp"
        ) from None
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown the progress
    return deepspeed


BUCKET_ELEMENTS = 500_000_000  # DeepSpeed's default reduce/all-gather bucket


def ds_config(t: TrainConfig, bf16: bool, trainable: int = BUCKET_ELEMENTS) -> dict[str, Any]:
    """DeepSpeed's config for one micro-batch per call; accumulation boundaries are set per step.

    Buckets are never larger than the trainable parameters: DeepSpeed allocates them whole
    (its default, 5e8 elements, is 2 GB of fp32 for a model of any size)."""
    bucket = max(1, min(BUCKET_ELEMENTS, trainable))
    zero = {"stage": t.zero_stage, "overlap_comm": False}
    zero |= {"reduce_bucket_size": bucket, "allgather_bucket_size": bucket}
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": t.clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def batch_targets(batch: PackedBatch) -> int:
    """Targets of a packed batch, from its labels alone. Expanding a media placeholder into
    its frame's tokens adds only IGNORE labels, so this equals the model's count. [scalar]"""
    return count_targets(shift_targets(batch.labels, batch.doc_lens))


class ZeroEngine:
    """The model, DeepSpeed's engine around it (built on first use) and the checkpoint view."""

    def __init__(self, model: LongVILA, t: TrainConfig, groups: SPGroups, bf16: bool) -> None:
        self.deepspeed = import_deepspeed()
        self.model, self.t, self.groups, self.bf16 = model, t, groups, bf16
        self.names = {p: n for n, p in model.named_parameters() if p.requires_grad}
        self.engine: Any = None
        self.pending: dict[str, Any] | None = None  # optimizer state loaded before the engine

    # -- the engine ------------------------------------------------------------------------

    def ready(self) -> Any:
        if self.engine is None:
            if not dist.is_initialized():  # a direct one-process run: DeepSpeed needs a group
                store = dist.HashStore()  # type: ignore[attr-defined]
                dist.init_process_group("gloo", store=store, rank=0, world_size=1)
                os.environ.setdefault("LOCAL_RANK", "0")  # DeepSpeed asserts torchrun's variable
            self.deepspeed.init_distributed(dist_backend=dist.get_backend())
            params = list(self.names)
            optimizer = torch.optim.AdamW(params, lr=self.t.lr, weight_decay=self.t.weight_decay)
            self.engine, *_ = self.deepspeed.initialize(
                model=self.model, optimizer=optimizer,
                config=ds_config(self.t, self.bf16, sum(p.numel() for p in params)),
                dist_init_required=False,
            )  # fmt: skip
            if self.pending is not None:
                self._set_optimizer_state(self.pending)
                self.pending = None
        return self.engine

    def step(
        self, batches: Iterator[PackedBatch], *, kind: Kind, accum: int, lr: float, tokens_per_frame: int
    ) -> StepStats:
        engine, groups = self.ready(), self.groups
        for g in engine.optimizer.param_groups:
            g["lr"] = lr
        micro = [next(batches) for _ in range(accum)]
        n_targets = global_target_count(sum(batch_targets(b) for b in micro), groups)
        scale = groups.layout.world / max(n_targets, 1)  # DeepSpeed divides by the world: SUM / n
        loss_sum, counted, tokens = 0.0, 0, 0
        for i, batch in enumerate(micro):
            engine.set_gradient_accumulation_boundary(i == accum - 1)
            parts = engine(batch, groups, kind)
            engine.backward(parts.loss_sum * scale, scale_wrt_gas=False)
            engine.step()  # the optimizer steps at the boundary only
            loss_sum += float(parts.loss_sum.detach())
            counted += parts.n_targets
            tokens += expanded_tokens(batch, tokens_per_frame)
        if counted != n_targets:
            raise RuntimeError(f"target count from labels {n_targets} != the model's {counted}")
        norm = engine.get_global_grad_norm()
        return step_stats(loss_sum, n_targets, tokens, groups, float(norm or 0.0), lr)

    # -- checkpoints -----------------------------------------------------------------------

    def model_state(self) -> dict[str, torch.Tensor]:
        """The module's weights: ZeRO 1/2 keep them whole on every rank."""
        return dict(self.model.state_dict())

    def optimizer_state(self) -> dict[str, Any]:
        """Full AdamW state by parameter name (a collective: every rank calls it in order)."""
        if self.engine is None:  # a template for loading: shapes only
            return self._template()
        utils = self.deepspeed.utils
        base = self.engine.optimizer.optimizer
        steps = [s["step"] for s in base.state.values() if "step" in s]
        step = steps[0].clone() if steps else torch.tensor(0.0)
        state = {}
        for p, name in self.names.items():
            full = {k: utils.safe_get_full_optimizer_state(p, k) for k in ADAM_KEYS}
            state[name] = {"step": step.clone(), **{k: v.detach().float().cpu() for k, v in full.items()}}
        return {"state": state, "param_groups": [self._group(base.param_groups[0])]}

    def load(self, model_sd: dict[str, torch.Tensor], optim_sd: dict[str, Any] | None) -> None:
        if self.engine is not None:
            raise RuntimeError("load before the first step: DeepSpeed copies the weights at initialize")
        self.model.load_state_dict(model_sd)
        self.pending = optim_sd

    def _template(self) -> dict[str, Any]:
        state = {}
        for p, name in self.names.items():
            zeros = {k: torch.zeros_like(p, dtype=torch.float32) for k in ADAM_KEYS}
            state[name] = {"step": torch.tensor(0.0), **zeros}
        return {"state": state}  # saved param_groups are not read back: lr is set every step

    def _group(self, group: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in group.items() if k != "params"}, "params": list(self.names.values())}

    def _set_optimizer_state(self, optim_sd: dict[str, Any]) -> None:
        utils = self.deepspeed.utils
        base = self.engine.optimizer.optimizer
        saved = optim_sd["state"]
        step = next(iter(saved.values()))["step"] if saved else torch.tensor(0.0)
        for group in base.param_groups:  # torch AdamW creates its state lazily, at the first step
            for flat in group["params"]:
                if not base.state[flat]:
                    base.state[flat] = {k: torch.zeros_like(flat) for k in ADAM_KEYS}
                base.state[flat]["step"] = torch.as_tensor(step, dtype=torch.float32).clone()
        # DeepSpeed maps each parameter onto those tensors once they exist (it does so itself
        # after its first step); the safe_set calls below write through that mapping.
        self.engine.optimizer._lazy_init_hp_params_optimizer_state()
        for p, name in self.names.items():
            for k in ADAM_KEYS:
                utils.safe_set_full_optimizer_state(p, saved[name][k].to(p.device), k)
