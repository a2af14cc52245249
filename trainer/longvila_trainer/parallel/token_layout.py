"""Where each token of a packed sequence lives across an SP group (pure index arithmetic).

A packed sequence is a run of documents (samples) of lengths `doc_lens`. Each document is
padded at its end to a multiple of `unit` (2·R·U for zigzag, R·U for contiguous) so that it
splits evenly; padded positions are invalid (never keys for real queries, never targets).

Ring rank r holds, for every document in order, its ring chunk(s):
  contiguous: the document cut into R chunks, chunk r;
  zigzag:     the document cut into 2R chunks, chunks r and 2R−1−r, as [front | back]
              (balances causal work: every ring rank gets one early and one late chunk).
The ring sequence of rank r (length total/R) is then cut into U equal contiguous parts and
Ulysses rank u holds part u. So the Ulysses all-to-all, which concatenates the U parts in
order, rebuilds exactly ring rank r's sequence. This is the layout yunchang's
zigzag_extract_local gives for one document; the reference's 2D formula is wrong for
U > 1, R > 1 (../shared/design/mmsp.md §2). All indices refer to the padded global
sequence of length `total`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from longvila_contract.layout import TOKEN_LAYOUTS, LayoutError, TokenLayoutName

Kind = TokenLayoutName  # the names are the contract's (LONGVILA_LAYOUT, the CRD's enum)
KINDS = TOKEN_LAYOUTS


@dataclass(frozen=True)
class TokenLayout:
    doc_lens: tuple[int, ...]  # real (unpadded) length of each document
    ulysses: int
    ring: int
    kind: Kind

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LayoutError(f"layout must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not self.doc_lens:
            raise LayoutError("a packed sequence needs at least one document")
        if any(n < 1 for n in self.doc_lens):
            raise LayoutError(f"document lengths must be ≥ 1, got {list(self.doc_lens)}")
        if self.ulysses < 1 or self.ring < 1:
            raise LayoutError(f"ulysses and ring must be ≥ 1, got {self.ulysses}, {self.ring}")

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def chunks_per_doc(self) -> int:
        """Ring chunks each document is cut into."""
        return 2 * self.ring if self.kind == "zigzag" else self.ring

    @property
    def unit(self) -> int:
        """Every padded document length is a multiple of this."""
        return self.chunks_per_doc * self.ulysses

    @cached_property
    def padded_lens(self) -> tuple[int, ...]:
        u = self.unit
        return tuple(-(-n // u) * u for n in self.doc_lens)

    @property
    def total(self) -> int:
        return sum(self.padded_lens)

    @property
    def shard_len(self) -> int:
        return self.total // self.sp

    @cached_property
    def doc_starts(self) -> tuple[int, ...]:
        starts, acc = [], 0
        for n in self.padded_lens:
            starts.append(acc)
            acc += n
        return tuple(starts)

    # ---- per-token metadata over the padded global sequence, each [total] ----
    @cached_property
    def doc_id(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(len(self.padded_lens)), torch.tensor(self.padded_lens))

    @cached_property
    def position(self) -> torch.Tensor:
        """Position inside its document (RoPE position id); padding continues the count."""
        return torch.cat([torch.arange(n) for n in self.padded_lens])

    @cached_property
    def valid(self) -> torch.Tensor:
        return torch.cat([torch.arange(p) < n for p, n in zip(self.padded_lens, self.doc_lens, strict=True)])

    @cached_property
    def real_index(self) -> torch.Tensor:
        """Index into the unpadded packed sequence, −1 for padding. [total]"""
        out = torch.full((self.total,), -1, dtype=torch.long)
        out[self.valid] = torch.arange(sum(self.doc_lens))
        return out

    # ---- placement ----
    def ring_index(self, ring_rank: int) -> torch.Tensor:
        """Global indices held by ring rank r, in its local order. [total / R]"""
        if not 0 <= ring_rank < self.ring:
            raise LayoutError(f"ring rank {ring_rank} outside 0..{self.ring - 1}")
        parts = []
        for start, n in zip(self.doc_starts, self.padded_lens, strict=True):
            c = n // self.chunks_per_doc
            chunks = [ring_rank]
            if self.kind == "zigzag":
                chunks.append(2 * self.ring - 1 - ring_rank)
            parts += [torch.arange(start + k * c, start + (k + 1) * c) for k in chunks]
        return torch.cat(parts)

    def shard_index(self, sp_rank: int) -> torch.Tensor:
        """Global indices held by SP rank (u + r·U), in its local order. [total / sp]"""
        if not 0 <= sp_rank < self.sp:
            raise LayoutError(f"sp rank {sp_rank} outside 0..{self.sp - 1}")
        ring_rank, u = divmod(sp_rank, self.ulysses)
        seq = self.ring_index(ring_rank)
        n = self.shard_len
        return seq[u * n : (u + 1) * n]

    @cached_property
    def owner(self) -> torch.Tensor:
        """SP rank holding each global position. [total]"""
        out = torch.empty(self.total, dtype=torch.long)
        for s in range(self.sp):
            out[self.shard_index(s)] = s
        return out

    @cached_property
    def local_offset(self) -> torch.Tensor:
        """Offset of each global position inside its owner's shard. [total]"""
        out = torch.empty(self.total, dtype=torch.long)
        for s in range(self.sp):
            out[self.shard_index(s)] = torch.arange(self.shard_len)
        return out


def plan_tokens(doc_lens: list[int] | tuple[int, ...], ulysses: int, ring: int, kind: str) -> TokenLayout:
    if kind not in KINDS:
        raise LayoutError(f"layout must be one of {', '.join(KINDS)}, got {kind!r}")
    return TokenLayout(tuple(int(n) for n in doc_lens), ulysses, ring, kind)  # type: ignore[arg-type]
