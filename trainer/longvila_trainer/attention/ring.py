"""Ring attention over the ring group, forward and backward, with log-sum-exp merging.

Each ring rank holds the queries of its ring sequence (TokenLayout.ring_index(r)) for good.
K and V travel: at step t a rank computes against the block of ring rank (r − t) mod R
while the next block is already in flight (RingShift: the send/recv of the next block is
posted before the current block's compute, forward and backward; with
AttentionContext.overlap=False it is waited for first, the baseline bench.network compares
against). Only the unmasked pieces of each block are computed (context.ring_schedule: per
document, zigzag or contiguous, causal by block), and partial results are merged with their
LSE into a float32 accumulator.

The backward is a ring too. Every step recomputes its pieces with the *final* out and LSE
(the flash-attention formula), so each piece's gradient is exact on its own. dQ stays put;
the dK/dV of a visiting block travel with it: the block of rank s collects contributions on
ranks s+1, …, s−1 and is then delivered to s, which adds its own (computed at step 0).
Traffic per rank: forward (R−1)·|KV|, backward (R−1)·|KV| + (R−1)·|dKV| (dKV in fp32).
"""

from __future__ import annotations

from typing import Any

import torch
from longvila_contract.layout import LayoutError
from torch import Tensor

from .comm import RingShift
from .context import AttentionContext, Pass
from .kernels import Kernel, Varlen, select_kernel


def _varlen(p: Pass) -> Varlen:
    cu_q, cu_k = [0], [0]
    for piece in p.pieces:
        cu_q.append(cu_q[-1] + piece.q_len)
        cu_k.append(cu_k[-1] + piece.k_len)
    return Varlen(tuple(cu_q), tuple(cu_k), p.causal)


def _take(x: Tensor, ranges: list[tuple[int, int]]) -> Tensor:
    """Rows of x from each (start, length) range, packed in order (a view for one range)."""
    if len(ranges) == 1:
        return x.narrow(0, *ranges[0])
    return torch.cat([x.narrow(0, s, n) for s, n in ranges])


def _q_ranges(p: Pass) -> list[tuple[int, int]]:
    return [(piece.q_start, piece.q_len) for piece in p.pieces]


def _k_ranges(p: Pass) -> list[tuple[int, int]]:
    return [(piece.k_start, piece.k_len) for piece in p.pieces]


def merge_into(acc: Tensor, acc_lse: Tensor, out: Tensor, lse: Tensor) -> None:
    """acc, acc_lse ← softmax-merge of (acc, acc_lse) and (out, lse), in place.

    acc/out [n, H, D], acc_lse/lse [n, H]. −inf on either side (rows not seen yet, or fully
    masked) contributes weight 0; two −inf give weight 0 and stay −inf, never NaN.
    """
    new = torch.logaddexp(acc_lse, lse)
    safe = new.masked_fill(new == float("-inf"), 0.0)
    w_old = torch.exp(acc_lse - safe).unsqueeze(-1)
    w_new = torch.exp(lse - safe).unsqueeze(-1)
    acc.mul_(w_old).add_(out.to(acc.dtype) * w_new)
    acc_lse.copy_(new)


def pass_forward(
    kernel: Kernel, q: Tensor, k: Tensor, v: Tensor, p: Pass, scale: float, acc: Tensor, acc_lse: Tensor
) -> None:
    kr = _k_ranges(p)
    out, lse = kernel.forward(_take(q, _q_ranges(p)), _take(k, kr), _take(v, kr), _varlen(p), scale)
    at = 0
    for s, n in _q_ranges(p):
        merge_into(acc[s : s + n], acc_lse[s : s + n], out[at : at + n], lse[at : at + n])
        at += n


def pass_backward(
    kernel: Kernel,
    saved: tuple[Tensor, ...],
    k: Tensor,
    v: Tensor,
    p: Pass,
    scale: float,
    dq: Tensor,
    dkv: Tensor,
) -> None:
    dout, q, out, lse = saved
    qr, kr = _q_ranges(p), _k_ranges(p)
    g = kernel.backward(
        _take(dout, qr),
        _take(q, qr),
        _take(k, kr),
        _take(v, kr),
        _take(out, qr),
        _take(lse, qr),
        _varlen(p),
        scale,
    )
    at = 0
    for s, n in qr:
        dq[s : s + n] += g[0][at : at + n]
        at += n
    at = 0
    for s, n in kr:  # key ranges of one pass may overlap: accumulate
        dkv[0, s : s + n] += g[1][at : at + n]
        dkv[1, s : s + n] += g[2][at : at + n]
        at += n


class RingAttention(torch.autograd.Function):
    """q [S, H, D], k/v [S, Hkv, D]: ring rank r's ring sequence (TokenLayout.ring_index(r))."""

    @staticmethod
    def forward(
        fctx: Any, q: Tensor, k: Tensor, v: Tensor, actx: AttentionContext, causal: bool, scale: float
    ) -> Tensor:
        g = actx.groups
        q = q.contiguous()  # callers may hand in transposed views ([1, H, S, D] -> [S, H, D])
        kernel = select_kernel(actx.kernel, q)
        steps = actx.schedule(causal)
        shift = RingShift(g.ring_ranks, g.ring_rank, g.ring, actx.meter)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        acc = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)  # [S, H, D]
        acc_lse = torch.full(q.shape[:2], float("-inf"), dtype=torch.float32, device=q.device)  # [S, H]
        kv = torch.stack([k, v])  # [2, S, Hkv, D]: one message per hop
        for t, step in enumerate(steps):
            nxt = shift.start([kv]) if t < len(steps) - 1 else []
            if not actx.overlap:
                shift.wait()
            for p in step.passes:
                pass_forward(kernel, q, kv[0], kv[1], p, scale, acc, acc_lse)
            shift.wait()
            kv = nxt[0] if nxt else kv
        out = acc.to(q.dtype)
        fctx.save_for_backward(q, k, v, out, acc_lse)
        fctx.actx, fctx.causal, fctx.scale = actx, causal, scale
        return out

    @staticmethod
    def backward(fctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, out, lse = fctx.saved_tensors
        actx: AttentionContext = fctx.actx
        g = actx.groups
        kernel = select_kernel(actx.kernel, q)
        steps = actx.schedule(fctx.causal)
        shift = RingShift(g.ring_ranks, g.ring_rank, g.ring, actx.meter)
        acc_dtype = torch.promote_types(q.dtype, torch.float32)
        saved = (dout.contiguous(), q, out, lse)
        dq = torch.zeros(q.shape, dtype=acc_dtype, device=q.device)
        kv = torch.stack([k, v])  # [2, S, Hkv, D]
        own = travel = torch.zeros(kv.shape, dtype=acc_dtype, device=q.device)
        last = len(steps) - 1
        for t, step in enumerate(steps):
            # hop t: this block moves on; the dKV finished at step t−1 goes to the next rank
            # (which holds that block now) and the one for this step's block arrives.
            sends = ([kv] if t < last else []) + ([travel] if t >= 2 else [])
            got = shift.start(sends)
            if not actx.overlap:
                shift.wait()
            dkv = torch.zeros(kv.shape, dtype=acc_dtype, device=q.device)
            for p in step.passes:
                pass_backward(kernel, saved, kv[0], kv[1], p, fctx.scale, dq, dkv)
            shift.wait()
            if t == 0:
                own = dkv
            else:
                travel = dkv if t == 1 else got[-1] + dkv
            kv = got[0] if t < last else kv
        if last > 0:  # deliver the last accumulator to its owner; receive ours
            got = shift.start([travel])
            shift.wait()
            own = own + got[0]
        return dq.to(q.dtype), own[0].to(k.dtype), own[1].to(v.dtype), None, None, None


def ring_core(q: Tensor, k: Tensor, v: Tensor, actx: AttentionContext, causal: bool, scale: float) -> Tensor:
    """Ring attention on ring sequences (any U: called by usp after the Ulysses all-to-all)."""
    out: Tensor = RingAttention.apply(q, k, v, actx, causal, scale)
    return out


def ring_attention(
    q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, *, causal: bool = True, scale: float | None = None
) -> Tensor:
    """Ring-only sequence parallelism (U = 1): the usp_attention contract without Ulysses."""
    if ctx.groups.layout.ulysses != 1:
        raise LayoutError(
            f"ring_attention needs ulysses = 1, got {ctx.groups.layout.ulysses}; use usp_attention"
        )
    ctx.check_inputs(q, k, v)
    return ring_core(q, k, v, ctx, causal, scale if scale is not None else q.shape[-1] ** -0.5)
