"""What one attention call needs to know, and which blocks of it must be computed (pure).

`AttentionContext` pairs this rank's process groups with the token placement. The ring
schedule below is plain index arithmetic over that placement: for ring rank r (queries)
and the KV block of ring rank s it lists the (query rows, key rows) pieces that are not
entirely masked, document by document. Every piece is either full or square-causal and
none has a fully masked row, so any kernel that returns a log-sum-exp can run it and no
-inf LSE ever reaches a kernel.

For causal zigzag this reproduces the balanced schedule (../../../docs/attention.md):
step s == r is causal on the local [front | back]; a sender s < r contributes only its
front chunk (to all local queries); a sender s > r is seen only by the local back chunk.
Packed documents never see each other, and keys past a document's real length (padding)
are trimmed away, so padding K/V is never even read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from longvila_contract.layout import LayoutError, kv_replication
from torch import Tensor

from ..parallel.groups import SPGroups
from ..parallel.token_layout import TokenLayout
from .comm import CommMeter


@dataclass(frozen=True)
class Piece:
    """Rows [q_start, q_start+q_len) of the local ring sequence against rows
    [k_start, k_start+k_len) of the visiting KV block. causal ⇒ q_len == k_len and row i
    sees keys 0..i (the two ranges cover the same positions)."""

    q_start: int
    q_len: int
    k_start: int
    k_len: int
    causal: bool


@dataclass(frozen=True)
class Pass:
    """Pieces run as one varlen kernel call: same causal flag, disjoint query rows."""

    causal: bool
    pieces: tuple[Piece, ...]


@dataclass(frozen=True)
class Step:
    source: int  # ring rank whose KV block is used at this step
    passes: tuple[Pass, ...]


def _chunks(tokens: TokenLayout, ring_rank: int) -> list[int]:
    if tokens.kind == "zigzag":
        return [ring_rank, 2 * tokens.ring - 1 - ring_rank]
    return [ring_rank]


def block_pieces(tokens: TokenLayout, q_rank: int, k_rank: int, causal: bool) -> list[Piece]:
    """Unmasked pieces of ring rank q_rank's queries against ring rank k_rank's keys."""
    pieces: list[Piece] = []
    q_chunks, k_chunks = _chunks(tokens, q_rank), _chunks(tokens, k_rank)
    base = 0  # start of this document inside any ring sequence (all have the same shape)
    for real, padded in zip(tokens.doc_lens, tokens.padded_lens, strict=True):
        c = padded // tokens.chunks_per_doc
        doc: list[Piece] = []
        for qi, qc in enumerate(q_chunks):
            for ki, kc in enumerate(k_chunks):
                kv = min(max(real - kc * c, 0), c)  # valid keys: a prefix of the chunk
                q0, k0 = base + qi * c, base + ki * c
                if kv == 0 or (causal and kc > qc):
                    continue
                if causal and kc == qc:
                    doc.append(Piece(q0, kv, k0, kv, True))
                    if kv < c:  # padding queries past the real length see every real key
                        doc.append(Piece(q0 + kv, c - kv, k0, kv, False))
                else:
                    doc.append(Piece(q0, c, k0, kv, False))
        pieces += _coalesce(doc)  # pieces of different documents never abut usefully
        base += len(q_chunks) * c
    return pieces


def _coalesce(pieces: list[Piece]) -> list[Piece]:
    """Merges full pieces that share one range and abut in the other (fewer kernel calls)."""
    out = list(pieces)
    merged = True
    while merged:
        merged = False
        for i, a in enumerate(out):
            for j, b in enumerate(out):
                if i == j or a.causal or b.causal:
                    continue
                if (a.q_start, a.q_len) == (b.q_start, b.q_len) and a.k_start + a.k_len == b.k_start:
                    out[i] = Piece(a.q_start, a.q_len, a.k_start, a.k_len + b.k_len, False)
                elif (a.k_start, a.k_len) == (b.k_start, b.k_len) and a.q_start + a.q_len == b.q_start:
                    out[i] = Piece(a.q_start, a.q_len + b.q_len, a.k_start, a.k_len, False)
                else:
                    continue
                del out[j]
                merged = True
                break
            if merged:
                break
    return sorted(out, key=lambda p: (p.q_start, p.k_start))


def group_passes(pieces: list[Piece]) -> tuple[Pass, ...]:
    """Greedy split into passes whose pieces share the causal flag and never share a query row
    (a varlen call writes one output row per query row). Pieces are visited by query start,
    so a pass only needs to remember where its rows end."""
    passes: list[tuple[bool, list[Piece], list[int]]] = []  # (causal, pieces, [rows end])
    for p in sorted(pieces, key=lambda p: (p.q_start, p.k_start)):
        for causal, members, end in passes:
            if causal == p.causal and p.q_start >= end[0]:
                members.append(p)
                end[0] = p.q_start + p.q_len
                break
        else:
            passes.append((p.causal, [p], [p.q_start + p.q_len]))
    return tuple(Pass(c, tuple(m)) for c, m, _ in passes)


def ring_schedule(tokens: TokenLayout, ring_rank: int, causal: bool) -> tuple[Step, ...]:
    """Step t uses the KV block of ring rank (r − t) mod R: the block that has travelled t hops."""
    steps = []
    for t in range(tokens.ring):
        s = (ring_rank - t) % tokens.ring
        steps.append(Step(s, group_passes(block_pieces(tokens, ring_rank, s, causal))))
    return tuple(steps)


@dataclass(frozen=True)
class AttentionContext:
    """Everything usp_attention needs besides q, k, v.

    `kernel` picks the attention kernel ("auto" chooses by device, see kernels.py);
    `meter`, when given, counts the bytes this rank sends (see comm.CommMeter);
    `overlap=False` makes the ring wait for each hop before computing on the block it has
    (same messages, same results: the baseline that measures what overlapping hides).
    """

    groups: SPGroups
    tokens: TokenLayout
    kernel: str = "auto"
    meter: CommMeter | None = None
    overlap: bool = True
    _schedules: dict[bool, tuple[Step, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        lay = self.groups.layout
        if (self.tokens.ulysses, self.tokens.ring) != (lay.ulysses, lay.ring):
            raise LayoutError(
                f"token layout is for ulysses={self.tokens.ulysses}, ring={self.tokens.ring} but the "
                f"process groups are for ulysses={lay.ulysses}, ring={lay.ring}; plan tokens with the "
                "groups' degrees"
            )

    def schedule(self, causal: bool) -> tuple[Step, ...]:
        """This rank's ring schedule, computed once per context (every layer reuses it)."""
        if causal not in self._schedules:
            self._schedules[causal] = ring_schedule(self.tokens, self.groups.ring_rank, causal)
        return self._schedules[causal]

    def check_inputs(self, q: Tensor, k: Tensor, v: Tensor) -> int:
        """Validates local shards against the contract; returns the KV-head replication factor."""
        if q.dim() != 3 or k.dim() != 3 or k.shape != v.shape:
            raise LayoutError(
                f"expected q [S_local, H, D] and k, v [S_local, H_kv, D] of one shape, got "
                f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
            )
        n = self.tokens.shard_len
        if q.shape[0] != n or k.shape[0] != n:
            raise LayoutError(
                f"local sequence length must be tokens.shard_len = {n} (padded total {self.tokens.total} "
                f"/ sp {self.tokens.sp}), got q {q.shape[0]}, k {k.shape[0]}"
            )
        if q.shape[2] != k.shape[2]:
            raise LayoutError(f"q and k head dims differ: {q.shape[2]} vs {k.shape[2]}")
        return kv_replication(q.shape[1], k.shape[1], self.groups.layout.ulysses)
