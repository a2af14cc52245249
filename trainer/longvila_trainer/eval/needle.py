"""Needle-in-a-haystack cases and their scoring (pure: no process group, no model).

One case is one conversation in the SFT format (`data/samples.py`, ChatML):

  system prompt, user: <haystack frames with the needle frame at `depth`>\\n{question},
  assistant: {answer}

with the answer appended (teacher forcing, as the reference's vision_niah eval does,
../../../docs/eval.md): one prefill predicts every answer token from the true prefix,
so there is no decoding loop. Labels mark the answer tokens only (the closing
<|im_end|> is not scored). The prediction is the argmax at each answer position;
a case is correct when the predicted text equals the answer ignoring case and spaces
(the reference's rule), `token_exact` records the stricter token-for-token match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.samples import encode_record
from ..data.synthetic import Needle, insert_needle
from ..data.tokenizer import VIDEO, TextCodec
from ..data.video import to_pixels
from ..model.longvila import PackedBatch
from ..sharding.frames import IGNORE_INDEX

# Haystack frames for a length: uint8 [T, H, W, 3].
Haystack = Callable[[int], np.ndarray]
# A needle for a variant index and a frame size.
NeedleMaker = Callable[[int, int], Needle]


@dataclass(frozen=True)
class Case:
    frames: int  # haystack length, without the needle
    depth: float  # in [0, 1]
    needle_at: int  # the needle's frame index in the video (T + 1 frames)
    answer: str
    answer_ids: tuple[int, ...]
    batch: PackedBatch  # one document; labels on the answer tokens only


def build_case(codec: TextCodec, haystack: np.ndarray, needle: Needle, depth: float, size: int) -> Case:
    """The haystack [T, H, W, 3] with `needle` inserted at `depth`, as one packed sequence."""
    video, at = insert_needle(haystack, needle.frame, depth)  # [T + 1, H, W, 3]
    record = {
        "media": [{"type": "video", "path": "needle"}],  # never opened: pixels come from `video`
        "conversations": [
            {"from": "human", "value": f"{VIDEO}\n{needle.question}"},
            {"from": "gpt", "value": needle.answer},
        ],
    }
    sample = encode_record(record, Path("."), codec, frames=len(video))
    ids = torch.tensor(sample.input_ids)
    labels = torch.tensor(sample.labels)
    labels[labels == codec.im_end_id] = IGNORE_INDEX  # score the answer, not the turn end
    answer_ids = tuple(int(t) for t in labels[labels != IGNORE_INDEX].tolist())
    if answer_ids != tuple(codec.encode(needle.answer)):
        raise ValueError(f"answer {needle.answer!r} does not tokenize to the labelled span")
    pixels = to_pixels(video, size)  # [T + 1, 3, size, size]
    batch = PackedBatch(ids, labels, (len(ids),), tuple(pixels))
    return Case(len(haystack), depth, at, needle.answer, answer_ids, batch)


def normalize(text: str) -> str:
    """Case- and space-insensitive form used for the exact match."""
    return "".join(text.lower().split())


@dataclass(frozen=True)
class Verdict:
    predicted: str
    correct: bool  # text match, ignoring case and spaces
    token_exact: bool


def judge(codec: TextCodec, case: Case, predicted_ids: Sequence[int]) -> Verdict:
    """Scores the argmax ids at the answer positions against the case's answer."""
    if len(predicted_ids) != len(case.answer_ids):
        raise ValueError(f"{len(predicted_ids)} predictions for {len(case.answer_ids)} answer tokens")
    text = codec.decode(list(predicted_ids))
    return Verdict(
        predicted=text,
        correct=normalize(text) == normalize(case.answer),
        token_exact=tuple(predicted_ids) == case.answer_ids,
    )


@dataclass(frozen=True)
class Cell:
    """One grid cell: a haystack length and a depth, over `n` needle variants."""

    frames: int
    depth: float
    n: int
    correct: int
    token_exact: int
    tokens: int  # LLM sequence length of the cell's (last) case
    predictions: tuple[str, ...]
    answers: tuple[str, ...]

    @property
    def score(self) -> float:
        return self.correct / self.n if self.n else 0.0


def cell_of(
    frames: int, depth: float, cases: Sequence[Case], verdicts: Sequence[Verdict], tokens: int
) -> Cell:
    return Cell(
        frames=frames,
        depth=depth,
        n=len(verdicts),
        correct=sum(v.correct for v in verdicts),
        token_exact=sum(v.token_exact for v in verdicts),
        tokens=tokens,
        predictions=tuple(v.predicted for v in verdicts),
        answers=tuple(c.answer for c in cases),
    )


def parse_grid(frames: str, depths: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """'8,16,32' and '0,0.5,1' → sorted unique haystack lengths and depths, validated."""
    try:
        lengths = sorted({int(x) for x in frames.split(",") if x.strip()})
        ds = sorted({float(x) for x in depths.split(",") if x.strip()})
    except ValueError as e:
        raise ValueError(f"--frames takes integers and --depths numbers, comma-separated: {e}") from None
    if not lengths or min(lengths) < 1:
        raise ValueError(f"--frames needs haystack lengths ≥ 1, got {frames!r}")
    if not ds or min(ds) < 0.0 or max(ds) > 1.0:
        raise ValueError(f"--depths must lie in [0, 1], got {depths!r}")
    return tuple(lengths), tuple(ds)
