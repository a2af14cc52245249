"""2D (unified) sequence-parallel attention: Ulysses inside a node × ring across nodes.

usp_attention = Ulysses all-to-all (scatter heads, gather the ring sequence over the U
ranks of a node) → ring attention over the ring group with H/U heads → inverse all-to-all.
The all-to-all stays on NVLink and only the ring's P2P crosses nodes (LongVILA §3, the
"2D attention"). With U = 1 it is ring attention, with R = 1 Ulysses, with both 1 plain
local attention; every case goes through the same code, collectives skipped for groups
of one.
"""

from __future__ import annotations

from torch import Tensor

from .context import AttentionContext
from .ring import ring_core
from .ulysses import around_ulysses


def usp_attention(
    q: Tensor, k: Tensor, v: Tensor, ctx: AttentionContext, *, causal: bool = True, scale: float | None = None
) -> Tensor:
    """Exact attention over the packed, padded global sequence, computed from local shards.

    q [S_local, H, D], k/v [S_local, H_kv, D]; row i is global position
    ctx.tokens.shard_index(ctx.groups.sp_rank)[i]. Query i attends key j iff they are in the
    same document, j is not padding, and (not causal or position[j] ≤ position[i]).
    Returns [S_local, H, D] in the same row order; differentiable in q, k, v.
    Raises LayoutError for head counts the layout cannot split.
    """
    return around_ulysses(q, k, v, ctx, causal, scale, ring_core)
