"""Greedy packing of samples into PackedBatches under a token budget.

The budget counts the sequence the LLM sees: text tokens plus every frame's visual tokens
(a placeholder stands for `tokens_per_frame` rows, 196 for a 384 px SigLIP frame after
the 2×2 projector). Packing is next-fit over the loader's order: samples are appended
while they fit, a sample is never split, and one that cannot fit even alone is an error
naming it (cut the text or sample fewer frames). Next-fit keeps the loader's state a
single cursor, which is what makes a resume exact.

Each sample stays its own document (`doc_lens`): the model restarts positions and
shifts labels per document, so no target crosses a sample boundary and attention is
block-diagonal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..model.longvila import PackedBatch
from .samples import MediaRef, Sample


def expanded_length(sample: Sample, tokens_per_frame: int) -> int:
    """Tokens the sample occupies in the LLM: each placeholder becomes `tokens_per_frame` rows."""
    return len(sample.input_ids) + sample.n_frames * (tokens_per_frame - 1)


def next_pack(length_of: Callable[[int], int], start: int, stop: int, budget: int) -> int:
    """End (exclusive) of the pack that begins at position `start`; positions < `stop` exist."""
    total, end = 0, start
    while end < stop:
        n = length_of(end)
        if n > budget:
            raise ValueError(f"sample at position {end} needs {n} tokens, more than the budget of {budget}")
        if total + n > budget:
            break
        total, end = total + n, end + 1
    return end


def pack_greedy(lengths: Sequence[int], budget: int) -> list[range]:
    """Positions of each pack, in order, covering every sample once."""
    packs, start = [], 0
    while start < len(lengths):
        end = next_pack(lambda i: lengths[i], start, len(lengths), budget)
        packs.append(range(start, end))
        start = end
    return packs


def decode_sample(sample: Sample, pixels: Callable[[MediaRef], torch.Tensor]) -> list[torch.Tensor]:
    """Every frame of a sample's media, in placeholder order: [3, H, W] each."""
    frames: list[torch.Tensor] = []
    for ref in sample.media:
        px = pixels(ref)  # [frames, 3, H, W]
        if px.shape[0] != ref.frames:
            raise ValueError(f"{ref.path}: decoded {px.shape[0]} frames, the text has {ref.frames}")
        frames += list(px)
    return frames


def assemble(samples: Sequence[Sample], frames: Sequence[torch.Tensor]) -> PackedBatch:
    """Decoded samples concatenated as documents."""
    ids = [t for s in samples for t in s.input_ids]
    labels = [t for s in samples for t in s.labels]
    return PackedBatch(
        input_ids=torch.tensor(ids, dtype=torch.long),  # [N]
        labels=torch.tensor(labels, dtype=torch.long),  # [N]
        doc_lens=tuple(len(s.input_ids) for s in samples),
        frames=tuple(frames),
    )


def build_packed_batch(samples: Sequence[Sample], pixels: Callable[[MediaRef], torch.Tensor]) -> PackedBatch:
    """Concatenates the samples as documents; `pixels(ref)` decodes one media [frames, 3, H, W]."""
    return assemble(samples, [f for s in samples for f in decode_sample(s, pixels)])
