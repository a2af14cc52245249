"""Stage 1 of MM-SP: which frames each SP rank encodes, and where their tokens land.

Every rank of an SP group holds the same packed batch. Its frames (an image is one frame,
a video N) are split by count, contiguously, with a divmod balance: rank s encodes
frames [start_s, stop_s), the first `F mod sp` ranks taking one extra. Each rank runs the
vision tower and projector only on its own frames (../../../docs/mmsp.md).

A frame's token count is read from the encoder output and all-gathered (a handful of
ints), never assumed from a constant: the reference derives positions from
`tokens_per_image` and breaks when the real count differs (NVlabs/VILA #249). The counts
are host metadata: read from the output's shape (no wait for the GPU) and exchanged over
the SP group's CPU (gloo) twin. With the counts known, `expand_media` lays out the fused
global sequence in metadata, identically on every rank: each media placeholder token
becomes its frame's rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..parallel.comm import Group, host_all_gather_ints

IGNORE_INDEX = -100


def split_frames(n_frames: int, sp: int) -> list[range]:
    """Contiguous divmod split of `n_frames` frames over `sp` ranks: frame ranges by rank."""
    if n_frames < 0 or sp < 1:
        raise ValueError(f"need n_frames ≥ 0 and sp ≥ 1, got {n_frames}, {sp}")
    q, r = divmod(n_frames, sp)
    out, start = [], 0
    for s in range(sp):
        stop = start + q + (1 if s < r else 0)
        out.append(range(start, stop))
        start = stop
    return out


def frame_runs(shapes: Sequence[tuple[int, ...]]) -> int:
    """Vision-tower calls that encode these frames: one per run of consecutive equal shapes."""
    return sum(1 for i, s in enumerate(shapes) if i == 0 or s != shapes[i - 1])


def tower_calls(shapes: Sequence[tuple[int, ...]], sp: int) -> int:
    """The most tower calls any SP rank makes for a batch with frames of these shapes.

    Under FSDP every call of the tower is a round of all-gathers over every rank, so every
    rank makes this many calls, the ranks with fewer runs (or no frames) on a zero frame.
    """
    return max((frame_runs(shapes[r.start : r.stop]) for r in split_frames(len(shapes), sp)), default=0)


def gather_frame_tokens(
    local_counts: list[int], n_frames: int, sp: int, group: Group | None
) -> tuple[int, ...]:
    """Token count of every frame of the batch, in frame order, on every rank of the group.

    `local_counts` are this rank's counts (its frames per `split_frames`), measured from
    the encoder output's shape. `group` is the SP group's host (CPU) twin. Ranks own
    different numbers of frames, so the exchange is padded to the largest share: one
    all-gather of a [max_share] long tensor per rank.
    """
    if group is None:
        if len(local_counts) != n_frames:
            raise ValueError(f"one rank must encode all {n_frames} frames, got {len(local_counts)} counts")
        return tuple(local_counts)
    ranges = split_frames(n_frames, sp)
    share = max(len(r) for r in ranges)
    everyone = host_all_gather_ints(local_counts, share, group)  # sp × [share]
    counts: list[int] = []
    for s, r in enumerate(ranges):
        got, rest = everyone[s][: len(r)], everyone[s][len(r) :]
        if any(c < 0 for c in got) or any(c != -1 for c in rest):
            raise RuntimeError(f"SP rank {s} reported {everyone[s]} for frames {r}")
        counts += got
    return tuple(counts)


@dataclass(frozen=True)
class FusedSequence:
    """The packed sequence with every media placeholder expanded to its frame's rows.

    M = Σ doc_lens (real tokens, no SP padding). Visual rows are numbered in frame order:
    frame f owns rows [row_start[f], row_start[f] + tokens[f]) of the concatenated encoder
    outputs of all ranks, which is also the order ranks produce them in.
    """

    token_ids: torch.Tensor  # [M] long: text token id, −1 on visual rows
    visual_row: torch.Tensor  # [M] long: global visual row, −1 on text
    labels: torch.Tensor  # [M] long: per-position label (unshifted), IGNORE on visual rows
    doc_lens: tuple[int, ...]  # expanded length of each document
    frame_tokens: tuple[int, ...]  # tokens of each frame, frame order

    @property
    def n_visual(self) -> int:
        return sum(self.frame_tokens)

    def row_start(self) -> torch.Tensor:
        """First global visual row of each frame, and the total at the end. [F + 1]"""
        counts = torch.tensor((0, *self.frame_tokens), dtype=torch.long)
        return torch.cumsum(counts, 0)

    def rows_by_rank(self, sp: int) -> list[range]:
        """Global visual rows produced by each SP rank (its frames' rows, contiguous)."""
        starts = self.row_start().tolist()
        return [range(starts[r.start], starts[r.stop]) for r in split_frames(len(self.frame_tokens), sp)]


def expand_media(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    doc_lens: tuple[int, ...] | list[int],
    media_token_id: int,
    frame_tokens: tuple[int, ...] | list[int],
) -> FusedSequence:
    """Replaces the i-th media placeholder of `input_ids` [N] by frame i's rows.

    `doc_lens` are document lengths in `input_ids` (placeholders count one each). Labels
    of placeholders and of their rows are IGNORE: no target is a visual token.
    """
    if input_ids.shape != labels.shape or input_ids.dim() != 1:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must be [N]")
    if sum(doc_lens) != input_ids.numel():
        raise ValueError(f"document lengths sum to {sum(doc_lens)}, input has {input_ids.numel()} tokens")
    is_media = input_ids == media_token_id
    n_media = int(is_media.sum())
    if n_media != len(frame_tokens):
        raise ValueError(f"{n_media} media placeholders but {len(frame_tokens)} encoded frames")
    if any(t < 1 for t in frame_tokens):
        raise ValueError(f"every frame must yield ≥ 1 token, got {list(frame_tokens)}")

    # Each input token becomes `width` rows: 1 for text, tokens[f] for the f-th placeholder.
    width = torch.ones_like(input_ids)
    width[is_media] = torch.tensor(frame_tokens, dtype=torch.long)
    src = torch.repeat_interleave(torch.arange(input_ids.numel()), width)  # [M] input index of each row
    row_media = is_media[src]
    token_ids = torch.where(row_media, torch.full_like(src, -1), input_ids[src])
    visual_row = torch.full_like(src, -1)
    visual_row[row_media] = torch.arange(int(row_media.sum()))
    fused_labels = torch.where(row_media, torch.full_like(src, IGNORE_INDEX), labels[src])

    doc_of_input = torch.repeat_interleave(torch.arange(len(doc_lens)), torch.tensor(list(doc_lens)))
    expanded = torch.zeros(len(doc_lens), dtype=torch.long).index_add_(0, doc_of_input, width)
    return FusedSequence(
        token_ids=token_ids,
        visual_row=visual_row,
        labels=fused_labels,
        doc_lens=tuple(int(n) for n in expanded.tolist()),
        frame_tokens=tuple(int(t) for t in frame_tokens),
    )
