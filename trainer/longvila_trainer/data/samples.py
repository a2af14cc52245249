"""Dataset records → token samples, by stage type; long-short mixing for stage 5.

A record is one line of a dataset's `manifest.jsonl` (formats in `synthetic.py`); its
shape says what it is: `caption`, `segments` (interleaved), `conversations`
(instruction) or `input_ids` (pre-tokenized text). Each stage type accepts some of them
(`FORMATS`). Encoding is pure metadata: media stay file references until a batch is built
(`pixels_of`), so packing can count tokens without decoding anything.

Labels are unshifted (label[t] is the id at t; the model shifts per document) and IGNORE
on everything that is not trained: media placeholders always, the prompt of captions,
and every non-assistant token of a conversation. Conversations use Qwen2's ChatML:

  <|im_start|>system\\n{SYSTEM}<|im_end|>\\n
  <|im_start|>user\\n{question, media expanded}<|im_end|>\\n<|im_start|>assistant\\n   ← IGNORE
  {answer}<|im_end|>                                                                  ← trained
  \\n                                                                                 ← IGNORE

A `<video>` marker in text becomes `frames` media placeholders (one per sampled frame), an
`<image>` marker one. Media without a marker go before the first user text, as in VILA.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from longvila_contract.stages import STAGE_TABLE

from ..sharding.frames import IGNORE_INDEX
from .tokenizer import MEDIA, VIDEO, TextCodec
from .video import decode_video, load_image, to_pixels

SYSTEM = "you are a helpful assistant."
FORMATS: dict[str, tuple[str, ...]] = {t.name: t.data_kinds for t in STAGE_TABLE}  # the stage table's
_MARKER = re.compile(f"({re.escape(MEDIA)}|{re.escape(VIDEO)})")


@dataclass(frozen=True)
class MediaRef:
    path: Path
    kind: Literal["image", "video"]
    frames: int  # placeholders in input_ids: 1 for an image, the sampled count for a video


@dataclass(frozen=True)
class Sample:
    input_ids: tuple[int, ...]  # one placeholder per frame
    labels: tuple[int, ...]  # same length; IGNORE where untrained
    media: tuple[MediaRef, ...]  # in placeholder order

    @property
    def n_frames(self) -> int:
        return sum(m.frames for m in self.media)


def record_format(record: dict[str, Any]) -> str:
    for key, fmt in (("conversations", "conversation"), ("segments", "interleaved"), ("caption", "caption")):
        if key in record:
            return fmt
    if "input_ids" in record:
        return "text"
    raise ValueError(f"unrecognized record with keys {sorted(record)}")


class _Builder:
    """Accumulates (ids, labels) piece by piece."""

    def __init__(self, codec: TextCodec) -> None:
        self.codec, self.ids, self.labels = codec, list[int](), list[int]()

    def text(self, text: str, trained: bool) -> None:
        ids = self.codec.encode(text)
        self.ids += ids
        self.labels += ids if trained else [IGNORE_INDEX] * len(ids)

    def token(self, token_id: int, trained: bool) -> None:
        self.ids.append(token_id)
        self.labels.append(token_id if trained else IGNORE_INDEX)

    def media(self, ref: MediaRef) -> None:
        self.ids += [self.codec.media_token_id] * ref.frames
        self.labels += [IGNORE_INDEX] * ref.frames

    def prompt(self, text: str, refs: list[MediaRef]) -> None:
        """Untrained text whose `<image>`/`<video>` markers take the next media of `refs`."""
        for part in _MARKER.split(text):
            if part in (MEDIA, VIDEO):
                if not refs:
                    raise ValueError(f"text has more {MEDIA}/{VIDEO} markers than the record has media")
                ref = refs.pop(0)
                if (part == VIDEO) != (ref.kind == "video"):
                    raise ValueError(f"marker {part} stands for a {ref.kind}")
                self.media(ref)
            elif part:
                self.text(part, trained=False)


def media_refs(record: dict[str, Any], root: Path, frames: int) -> list[MediaRef]:
    refs = []
    for m in record.get("media", []):
        kind = m["type"]
        if kind not in ("image", "video"):
            raise ValueError(f"media type must be image or video, got {kind!r}")
        refs.append(MediaRef(root / m["path"], kind, frames if kind == "video" else 1))
    return refs


def encode_record(
    record: dict[str, Any], root: Path, codec: TextCodec, frames: int, max_tokens: int | None = None
) -> Sample:
    """One record → a Sample; `frames` per video; pre-tokenized text cut to `max_tokens`."""
    fmt = record_format(record)
    b = _Builder(codec)
    refs = media_refs(record, root, frames)
    if fmt == "text":
        ids = [int(i) for i in record["input_ids"]][:max_tokens]
        return Sample(tuple(ids), tuple(ids), ())
    if fmt == "caption":  # VILA's "plain" template: media, newline, caption
        used = list(refs)
        for ref in refs:
            b.media(ref)
        b.text("\n", trained=False)
        b.text(record["caption"], trained=True)
        b.token(codec.eos_id, trained=True)
        return Sample(tuple(b.ids), tuple(b.labels), tuple(used))
    if fmt == "interleaved":
        used = []
        for seg in record["segments"]:
            if "image" in seg:
                ref = MediaRef(root / seg["image"], "image", 1)
                used.append(ref)
                b.media(ref)
            else:
                b.text(seg["text"], trained=True)
        b.token(codec.eos_id, trained=True)
        return Sample(tuple(b.ids), tuple(b.labels), tuple(used))
    # conversation
    pending, used = list(refs), list(refs)
    b.text(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n", trained=False)
    for i, turn in enumerate(record["conversations"]):
        role, value = turn["from"], turn["value"]
        if role == "human":
            b.text("<|im_start|>user\n", trained=False)
            if i == 0 and pending and not _MARKER.search(value):
                for ref in pending:
                    b.media(ref)
                pending = []
            b.prompt(value, pending)
            b.text("<|im_end|>\n<|im_start|>assistant\n", trained=False)
        elif role == "gpt":
            b.text(value, trained=True)
            b.token(codec.im_end_id, trained=True)
            b.text("\n", trained=False)
        else:
            raise ValueError(f"conversation turn from {role!r}: must be human or gpt")
    if pending:
        raise ValueError(f"{len(pending)} media of the record have no marker in the conversation")
    return Sample(tuple(b.ids), tuple(b.labels), tuple(used))


def read_manifest(root: Path) -> list[dict[str, Any]]:
    path = root / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"dataset {root}: no manifest.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SampleSet(Sequence[Sample]):
    """A dataset's records, encoded on access (cheap: text only)."""

    def __init__(
        self, records: list[dict[str, Any]], root: Path, codec: TextCodec, frames: int, max_tokens: int | None
    ) -> None:
        self.records, self.root, self.codec = records, root, codec
        self.frames, self.max_tokens = frames, max_tokens

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return encode_record(self.records[i], self.root, self.codec, self.frames, self.max_tokens)


def open_dataset(
    root: Path, stage_type: str, codec: TextCodec, frames: int, max_tokens: int | None = None
) -> SampleSet:
    """The dataset at `root` for a stage; fails on a record format the stage does not train on."""
    if stage_type not in FORMATS:
        raise ValueError(f"unknown stage type {stage_type!r}; known: {', '.join(FORMATS)}")
    records = read_manifest(root)
    for n, record in enumerate(records):
        fmt = record_format(record)
        if fmt not in FORMATS[stage_type]:
            raise ValueError(
                f"{root}/manifest.jsonl line {n + 1}: a {fmt} record; a {stage_type} stage reads "
                f"{', '.join(FORMATS[stage_type])}"
            )
    return SampleSet(records, root, codec, frames, max_tokens)


class LongShortMix(Sequence[Sample]):
    """Stage 5's long-short joint data: every long sample, plus short ones making up `short_fraction`.

    The short samples are a seeded draw without repeats (cycling when more are needed than
    exist); the loader shuffles the whole mix each epoch.
    """

    def __init__(self, long: Sequence[Sample], short: Sequence[Sample], short_fraction: float, seed: int):
        if not 0.0 <= short_fraction < 1.0:
            raise ValueError(f"short_fraction must be in [0, 1), got {short_fraction}")
        if short_fraction > 0 and not len(short):
            raise ValueError("short_fraction > 0 but the short dataset is empty")
        n_short = round(len(long) * short_fraction / (1.0 - short_fraction))
        order = np.random.default_rng([seed, 5]).permutation(max(len(short), 1))
        self.long, self.short = long, short
        self.pick = [int(order[i % len(order)]) for i in range(n_short)]

    def __len__(self) -> int:
        return len(self.long) + len(self.pick)

    @overload
    def __getitem__(self, i: int) -> Sample: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Sample]: ...
    def __getitem__(self, i: int | slice) -> Sample | Sequence[Sample]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self.long[i] if i < len(self.long) else self.short[self.pick[i - len(self.long)]]


def pixels_of(ref: MediaRef, size: int) -> torch.Tensor:
    """A media reference decoded for the vision tower: float [frames, 3, size, size]."""
    raw = decode_video(ref.path, ref.frames) if ref.kind == "video" else load_image(ref.path)
    return to_pixels(raw, size)
