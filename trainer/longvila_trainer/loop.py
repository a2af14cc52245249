"""The pieces of the training loop: LR schedule, trainable sets, one optimizer step, metrics.

train.py wires these together. Everything takes its process groups as arguments.

One optimizer step = `packs_per_step` packed micro-batches over the whole job: `accum`
micro-steps on each of the `dp` SP groups (accum · dp = packs_per_step). Every rank
backpropagates its partial loss SUM (model/longvila.py), FSDP SUMs the gradients over the
world, and the gradients are divided once by the step's global target count. So the step
is the same computation whatever the split into dp × accum: a resume on fewer nodes keeps
`packs_per_step` (saved in the checkpoint) and raises accum instead (issue 4, elastic).
"""

from __future__ import annotations

import math
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from longvila_contract.config import TrainConfig
from torch import nn
from torch.distributed.tensor import DTensor

from .model.longvila import LongVILA, PackedBatch
from .parallel import comm
from .parallel.groups import SPGroups
from .parallel.token_layout import Kind
from .sharding.targets import gradient_group, sum_gradients

# -- schedule ---------------------------------------------------------------------------------


def warmup_steps(t: TrainConfig, total: int) -> int:
    return t.warmup_steps or round(t.warmup_ratio * total)


def lr_at(step: int, t: TrainConfig, total: int) -> float:
    """LR of optimizer step `step` (0-based) of `total`: linear warmup, then constant or cosine to 0."""
    warm = warmup_steps(t, total)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant_with_warmup":
        return t.lr
    progress = (step - warm) / max(1, total - warm)
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -- what trains ------------------------------------------------------------------------------


def set_trainable(model: LongVILA, t: TrainConfig) -> int:
    """requires_grad per train.trainable (and LoRA); returns the number of trainable elements."""
    parts: dict[str, tuple[nn.Module, ...]] = {
        "projector": (model.projector,),
        "projector+llm": (model.projector, model.llm),
        "llm": (model.llm,),
        "all": (model.vision, model.projector, model.llm),
    }
    chosen = {id(p) for m in parts[t.trainable] for p in m.parameters()}
    for name, p in model.named_parameters():
        on = id(p) in chosen
        if t.lora.enabled:
            on = on and ("lora_" in name or any(s in name for s in t.lora.modules_to_save))
        p.requires_grad_(on)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise ValueError(f"train.trainable={t.trainable!r} (lora {t.lora.enabled}) leaves nothing to train")
    return n


def accumulation(packs_per_step: int, dp: int) -> int:
    """Micro-steps per rank so the job still trains `packs_per_step` packs per optimizer step."""
    if packs_per_step % dp:
        raise ValueError(
            f"the run trains {packs_per_step} packed batches per step, which {dp} data-parallel groups "
            "cannot split evenly; resume with a dp that divides it"
        )
    return packs_per_step // dp


# -- one step ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepStats:
    loss: float  # the step's mean loss over every target of the global batch
    n_targets: int
    tokens: int  # LLM rows (text + visual) of the global batch
    grad_norm: float
    lr: float


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Global L2 norm of the gradients (sharded DTensors included); clips in place when max_norm > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()  # the shards' partial norms combined over the mesh
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return float(total)


def expanded_tokens(batch: PackedBatch, tokens_per_frame: int) -> int:
    return int(batch.input_ids.numel()) + len(batch.frames) * (tokens_per_frame - 1)


def train_step(
    model: LongVILA,
    optimizer: torch.optim.Optimizer,
    batches: Iterator[PackedBatch],
    groups: SPGroups,
    *,
    kind: Kind,
    accum: int,
    clip: float,
    lr: float,
    tokens_per_frame: int,
) -> StepStats:
    params = [p for p in model.parameters() if p.requires_grad]
    for g in optimizer.param_groups:
        g["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    # The loss stays on the device until the one read for the log line (no sync per micro-step).
    loss_sum = torch.zeros((), dtype=torch.float64, device=groups.device)
    n_targets, tokens = 0, 0
    for _ in range(accum):
        batch = next(batches)
        parts = model(batch, groups, kind)
        parts.loss_sum.backward()  # SUM over ranks and micro-steps; divided once below
        loss_sum += parts.loss_sum.detach().double()
        n_targets += parts.n_targets  # already summed over dp (step_counts)
        tokens += expanded_tokens(batch, tokens_per_frame)
    if groups.layout.world > 1 and not any(isinstance(p.grad, DTensor) for p in params):
        sum_gradients(params, gradient_group(groups))  # no FSDP: plain all-reduce (SUM)
    scale = 1.0 / max(n_targets, 1)
    for p in params:
        if p.grad is not None:
            p.grad.mul_(scale)
    norm = clip_grad_norm(params, clip)
    optimizer.step()
    return step_stats(float(loss_sum), n_targets, tokens, groups, norm, lr)


def step_stats(
    loss_sum: float, n_targets: int, tokens: int, groups: SPGroups, norm: float, lr: float
) -> StepStats:
    """Logging only: the step's loss and tokens over the world (each SP group counts its batch
    once), summed as host metadata over the world's CPU (gloo) group."""
    loss, rows = comm.host_all_reduce([loss_sum, tokens / groups.layout.sp], groups.host.world)
    return StepStats(loss / max(n_targets, 1), n_targets, round(rows), norm, lr)


# -- metrics ----------------------------------------------------------------------------------


def memory_mib(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (and peak CUDA memory on GPU), MiB."""
    out = {"rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # KiB on Linux
    if device.type == "cuda":
        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def max_over_ranks(values: dict[str, float], groups: SPGroups) -> dict[str, float]:
    """The largest value of each figure over the world (host metadata, CPU group)."""
    return dict(
        zip(values, comm.host_all_reduce(list(values.values()), groups.host.world, "max"), strict=True)
    )


def step_record(
    step: int, total: int, stats: StepStats, seconds: float, memory: dict[str, float], **extra: Any
) -> dict[str, Any]:
    """One JSON log line (rank 0): what the operator, the tests and people read."""
    return {
        "step": step,
        "max_steps": total,
        "loss": stats.loss,
        "lr": stats.lr,
        "grad_norm": stats.grad_norm,
        "targets": stats.n_targets,
        "tokens": stats.tokens,
        "tokens_per_s": stats.tokens / max(seconds, 1e-9),
        "step_s": seconds,
        **memory,
        **extra,
    }


def progress_line(r: dict[str, Any]) -> str:
    mem = f"{r['rss_peak_mib']:.0f} MiB rss"
    if "cuda_peak_mib" in r:
        mem += f", {r['cuda_peak_mib']:.0f} MiB cuda"
    return (
        f"step {r['step']}/{r['max_steps']}  loss {r['loss']:.4f}  lr {r['lr']:.2e}  "
        f"|g| {r['grad_norm']:.3f}  {r['tokens_per_s']:.0f} tok/s  {mem}"
    )
