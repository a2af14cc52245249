"""Exact single-process attention over the whole packed sequence: the yardstick for the
sequence-parallel kernels (tests, check_attention).

Deliberately naive and independent of kernels.py and the ring schedule: a dense [T, T]
mask built from TokenLayout's per-token metadata, softmax, autograd for the gradients,
computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..parallel.token_layout import TokenLayout


def attention_mask(tokens: TokenLayout, causal: bool) -> Tensor:
    """[T, T] bool: query i may attend key j (same document, j real, causal by position)."""
    same_doc = tokens.doc_id[:, None] == tokens.doc_id[None, :]
    mask = same_doc & tokens.valid[None, :]
    if causal:
        mask &= tokens.position[None, :] <= tokens.position[:, None]
    return mask


def exact_attention(
    q: Tensor, k: Tensor, v: Tensor, tokens: TokenLayout, causal: bool, scale: float | None = None
) -> Tensor:
    """q [T, H, D], k/v [T, H_kv, D] over the padded global sequence -> [T, H, D]."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    rep = q.shape[1] // k.shape[1]
    kx, vx = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)  # GQA as repeat_kv
    s = torch.einsum("qhd,khd->hqk", q, kx) * scale  # [H, T, T]
    s = s.masked_fill(~attention_mask(tokens, causal).to(q.device), float("-inf"))
    # every row has a key (position 0 of its document is real), so softmax has no NaN
    return torch.einsum("hqk,khd->qhd", torch.softmax(s, dim=-1), vx)


@dataclass(frozen=True)
class Problem:
    """Random global inputs and output gradient for one packed sequence. [T, *, D]"""

    tokens: TokenLayout
    q: Tensor
    k: Tensor
    v: Tensor
    dout: Tensor


def random_problem(
    tokens: TokenLayout,
    heads: int,
    kv_heads: int,
    head_dim: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    pad_kv: float = 1e4,
) -> Problem:
    """Reproducible inputs (same on every process). Padding K/V rows are filled with
    `pad_kv`·randn (nan allowed), so any leak of padding into real tokens shows."""
    gen = torch.Generator().manual_seed(seed)
    t = tokens.total

    def randn(h: int) -> Tensor:
        return torch.randn(t, h, head_dim, generator=gen, dtype=torch.float64).to(dtype)

    q, k, v, dout = randn(heads), randn(kv_heads), randn(kv_heads), randn(heads)
    pad = ~tokens.valid
    k[pad] = k[pad] * pad_kv
    v[pad] = v[pad] * pad_kv
    return Problem(tokens, q, k, v, dout)


def exact_grads(p: Problem, causal: bool, scale: float | None = None) -> dict[str, Tensor]:
    """out, dq, dk, dv of exact attention on the global problem, in float64.

    Padding K/V rows never enter (they are zeroed first, so even NaN there is harmless) and
    get gradient 0, which is what the contract asks of the parallel kernels.
    """
    valid = p.tokens.valid[:, None, None]
    q = p.q.double().requires_grad_()
    k = p.k.double().where(valid, 0.0).requires_grad_()
    v = p.v.double().where(valid, 0.0).requires_grad_()
    out = exact_attention(q, k, v, p.tokens, causal, scale)
    torch.autograd.backward(out, p.dout.double())
    assert q.grad is not None and k.grad is not None and v.grad is not None
    return {"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}


def shard(x: Tensor, tokens: TokenLayout, sp_rank: int) -> Tensor:
    """The rows of a global [T, ...] tensor that SP rank sp_rank holds, in its local order."""
    return x[tokens.shard_index(sp_rank)]


def unshard(parts: list[Tensor], tokens: TokenLayout) -> Tensor:
    """Inverse of shard: per-SP-rank local tensors (by SP rank) -> the global [T, ...] tensor."""
    out = parts[0].new_empty((tokens.total, *parts[0].shape[1:]))
    for r, part in enumerate(parts):
        out[tokens.shard_index(r)] = part
    return out


def max_errors(got: dict[str, Tensor], want: dict[str, Tensor]) -> dict[str, float]:
    """Max |got − want| per tensor (NaN anywhere counts as +inf)."""
    errs = {}
    for name, w in want.items():
        d = (got[name].double() - w).abs().max().item()
        errs[name] = d if d == d else float("inf")
    return errs
