"""Next-token targets shifted globally, sharded like the inputs, and the exact sharded loss.

The reference shifts labels inside each shard (HF's causal-LM loss on the local slice),
which drops one target per shard boundary and, with zigzag, trains the end of the front
chunk to predict the start of the back chunk (../../../docs/mmsp.md). Here the shift
happens once on the whole packed sequence, before sharding:

    target[t] = label[t + 1] when t + 1 is in t's document, else IGNORE,

and the targets are permuted with the same index as the inputs, so CE needs no further
shift. Each rank returns the SUM of its CE; the divisor is the global number of targets,
known from metadata on every rank, so a shard without targets contributes exactly 0 and
the per-rank losses add up to the unsharded mean. Since each rank's loss is a partial of
one scalar, the true gradient of a replicated parameter is the SUM of the ranks' grads.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from ..parallel import comm
from ..parallel.comm import Group
from ..parallel.groups import SPGroups
from ..parallel.token_layout import TokenLayout
from .frames import IGNORE_INDEX


def shift_targets(labels: torch.Tensor, doc_lens: tuple[int, ...] | list[int]) -> torch.Tensor:
    """target[t] = labels[t+1] within a document; last position of each document IGNORE. [M]"""
    if labels.dim() != 1 or labels.numel() != sum(doc_lens):
        raise ValueError(
            f"labels {tuple(labels.shape)} do not match document lengths summing to {sum(doc_lens)}"
        )
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:-1] = labels[1:]
    doc_ends = torch.cumsum(torch.tensor(list(doc_lens), dtype=torch.long), 0) - 1
    targets[doc_ends] = IGNORE_INDEX
    return targets


def to_padded(values: torch.Tensor, tokens: TokenLayout, fill: int | float) -> torch.Tensor:
    """Places per-real-token values [M, ...] on the padded global sequence [total, ...]."""
    out = values.new_full((tokens.total, *values.shape[1:]), fill)
    out[tokens.valid] = values
    return out


def shard(padded: torch.Tensor, tokens: TokenLayout, sp_rank: int) -> torch.Tensor:
    """Rows of the padded global sequence held by `sp_rank`, in its local order. [total/sp, ...]"""
    return padded[tokens.shard_index(sp_rank)]


def unshard(shards: list[torch.Tensor], tokens: TokenLayout) -> torch.Tensor:
    """Inverse of `shard` over all SP ranks: the padded global sequence. [total, ...]"""
    if len(shards) != tokens.sp:
        raise ValueError(f"need {tokens.sp} shards, got {len(shards)}")
    out = shards[0].new_empty((tokens.total, *shards[0].shape[1:]))
    for s, part in enumerate(shards):
        out[tokens.shard_index(s)] = part
    return out


def count_targets(targets: torch.Tensor) -> int:
    return int((targets != IGNORE_INDEX).sum())


def step_counts(n_targets: int, tower_calls: int, groups: SPGroups) -> tuple[int, int]:
    """(targets of the whole micro-step, vision-tower calls every rank makes), from this SP
    group's metadata: targets summed over dp, tower calls the most any rank needs.

    Each dp group trains a different batch, so with dp > 1 the numbers are exchanged over
    the dp group's host (CPU) twin: numbers the host needs, with no GPU in the way.
    """
    if groups.host.dp is None:
        return n_targets, tower_calls
    rows = comm.host_all_gather_ints([n_targets, tower_calls], 2, groups.host.dp)  # dp × [2]
    return sum(r[0] for r in rows), max(r[1] for r in rows)


def global_target_count(sp_count: int, groups: SPGroups) -> int:
    """Targets over the whole step: every rank divides by this same number."""
    return step_counts(sp_count, 0, groups)[0]


def loss_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed CE of logits [n, V] against targets [n] (no IGNORE inside), in fp32.

    With n = 0 the result is an exact 0 that still depends on `logits`, so backward runs
    through this rank's graph and its collectives (others wait on them).
    """
    if logits.shape[0] != targets.shape[0]:
        raise ValueError(f"{logits.shape[0]} logit rows for {targets.shape[0]} targets")
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def gradient_group(groups: SPGroups) -> Group | None:
    """Where parameter gradients are summed: the SP group, or the world when dp > 1.

    None when there is a single process (nothing to do).
    """
    if groups.layout.world == 1:
        return None
    if groups.layout.dp == 1:
        return groups.sp
    return groups.world


def sum_gradients(params: Iterable[torch.nn.Parameter], group: Group | None) -> None:
    """All-reduce (SUM) the gradients of trainable parameters, one flat buffer per dtype.

    A rank that never touched a parameter (e.g. a rank with no frames and the vision
    tower) contributes zeros, so every rank issues the same collectives. FSDP will take
    this over; it stays explicit so the loss/gradient contract is tested.
    """
    trainable = [p for p in params if p.requires_grad]
    if group is None or not trainable:
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in trainable:
        by_dtype.setdefault(p.dtype, []).append(p)
    for bucket in by_dtype.values():
        flat = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket]
        )
        comm.all_reduce(flat, group)
        parts = torch.split(flat, [p.numel() for p in bucket])
        for p, part in zip(bucket, parts, strict=True):
            p.grad = part.view_as(p).clone()
