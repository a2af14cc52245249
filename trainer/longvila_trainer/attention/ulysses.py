"""Ulysses: an all-to-all that trades a sequence shard of all heads for the whole (ring)
sequence of a slice of the heads, attention in between, and the inverse all-to-all.

Forward  [S_u, H, D] on each of the U ranks  ->  [Σ_u S_u, H/U, D]  (scatter heads, gather seq)
Inverse  [Σ_u S_u, H/U, D]                    ->  [S_u, H, D]        (scatter seq, gather heads)
Rank u gets heads [u·H/U, (u+1)·H/U). The gathered rows are the U shards concatenated in
Ulysses-rank order, which TokenLayout guarantees is ring rank r's ring sequence. Each
direction's backward is the other direction with the same split sizes; shards may be
uneven (all_to_all_single with split sizes), although TokenLayout makes them even.

GQA: when U > kv heads, each KV head is repeated kv_replication(...) times before the
all-to-all so every rank gets one; autograd sums the replicas' gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from longvila_contract.layout import LayoutError
from torch import Tensor

from ..parallel.comm import Group
from .comm import CommMeter, all_gather_sizes, all_to_all
from .context import AttentionContext
from .ring import ring_core


def _scatter_heads(
    x: Tensor, sizes: list[int], me: int, group: Group | None, meter: CommMeter | None
) -> Tensor:
    """[S_me, H, D] -> [Σ sizes, H/U, D]."""
    u = len(sizes)
    s, h, d = x.shape
    blocks = x.reshape(s, u, h // u, d).transpose(0, 1).reshape(u * s, h // u, d)  # block j: heads of rank j
    return all_to_all(blocks, [s] * u, sizes, group, meter)


def _gather_heads(
    y: Tensor, sizes: list[int], me: int, group: Group | None, meter: CommMeter | None
) -> Tensor:
    """[Σ sizes, h, D] -> [S_me, U·h, D]."""
    u, s = len(sizes), sizes[me]
    _, h, d = y.shape
    blocks = all_to_all(y, sizes, [s] * u, group, meter)  # [U·S_me, h, D], block j: heads of rank j
    return blocks.reshape(u, s, h, d).transpose(0, 1).reshape(s, u * h, d)


class SeqAllToAll(torch.autograd.Function):
    """to_seq=True: scatter heads / gather sequence; False: the inverse. Backward swaps them."""

    @staticmethod
    def forward(
        fctx: Any,
        x: Tensor,
        sizes: list[int],
        me: int,
        group: Group | None,
        meter: CommMeter | None,
        to_seq: bool,
    ) -> Tensor:
        fctx.args = (sizes, me, group, meter)
        fctx.to_seq = to_seq
        return (_scatter_heads if to_seq else _gather_heads)(x, sizes, me, group, meter)

    @staticmethod
    def backward(fctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        inverse = _gather_heads if fctx.to_seq else _scatter_heads
        return inverse(grad.contiguous(), *fctx.args), None, None, None, None, None


def seq_all_to_all(
    x: Tensor,
    group: Group | None,
    me: int,
    to_seq: bool,
    sizes: list[int] | None = None,
    meter: CommMeter | None = None,
) -> Tensor:
    """Differentiable Ulysses all-to-all. `sizes`: every rank's local sequence length, in
    Ulysses-rank order; exchanged with an all-gather when not given (uneven shards)."""
    if group is None:
        return x
    if sizes is None:
        if not to_seq:
            raise ValueError("the inverse all-to-all needs the shard sizes of the forward one")
        sizes = all_gather_sizes(x.shape[0], group)
    out: Tensor = SeqAllToAll.apply(x, sizes, me, group, meter, to_seq)
    return out


Inner = Callable[[Tensor, Tensor, Tensor, AttentionContext, bool, float], Tensor]


def around_ulysses(
    q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, causal: bool, scale: float | None, inner: Inner
) -> Tensor:
    """Validates, replicates KV heads if needed, all-to-alls q/k/v to ring sequences with H/U
    heads, runs `inner` on them and all-to-alls the result back to [S_local, H, D]."""
    rep = ctx.check_inputs(q, k, v)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    g = ctx.groups
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # [S, Hkv·rep, D]
    sizes = [ctx.tokens.shard_len] * g.layout.ulysses
    a2a = [seq_all_to_all(x, g.ulysses, g.ulysses_rank, True, sizes, ctx.meter) for x in (q, k, v)]
    out = inner(a2a[0], a2a[1], a2a[2], ctx, causal, scale)  # [S_ring, H/U, D]
    return seq_all_to_all(out, g.ulysses, g.ulysses_rank, False, sizes, ctx.meter)


def ulysses_attention(
    q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, *, causal: bool = True, scale: float | None = None
) -> Tensor:
    """Ulysses-only sequence parallelism (R = 1): the usp_attention contract without a ring."""
    if ctx.groups.layout.ring != 1:
        raise LayoutError(
            f"ulysses_attention needs ring = 1, got {ctx.groups.layout.ring}; use usp_attention"
        )
    return around_ulysses(q, k, v, ctx, causal, scale, ring_core)  # a ring of one: no P2P
