"""Dataset records → token samples, by stage type; long-short mixing for stage 5.

A record (read by sources.py from a manifest.jsonl, LLaVA / VILA annotations or webdataset
shards, and normalized by llava.py) has a shape that says what it is: `caption`,
`segments` (interleaved), `conversations` (instruction) or `input_ids` (pre-tokenized
text). Each stage type accepts some of them (`FORMATS`); a caption stage also reads a
LLaVA pre-training record (one question, one answer) as VILA's "plain" template does: the
media, then the answer as the caption. Encoding is pure metadata: media stay locations
(media.py) until a batch is built (`pixels_of`), so packing counts tokens without decoding.

Labels are unshifted (label[t] is the id at t; the model shifts per document) and IGNORE
on everything that is not trained: media placeholders always, the prompt of captions,
and every non-assistant token of a conversation. Conversations use Qwen2's ChatML:

  <|im_start|>system\\n{SYSTEM}<|im_end|>\\n
  <|im_start|>user\\n{question, media expanded}<|im_end|>\\n<|im_start|>assistant\\n   ← IGNORE
  {answer}<|im_end|>                                                                  ← trained
  \\n                                                                                 ← IGNORE

A `<video>` marker in text becomes `frames` media placeholders (one per sampled frame), an
`<image>` marker one; each marker takes the record's next media of its kind. Media without
a marker go before the first user text, as in VILA.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np
import torch
from longvila_contract.stages import STAGE_TABLE

from ..sharding.frames import IGNORE_INDEX
from .llava import RecordError
from .media import MediaReader
from .tokenizer import MEDIA, VIDEO, TextCodec
from .video import decode_video, load_image, to_pixels

SYSTEM = "you are a helpful assistant."
FORMATS: dict[str, tuple[str, ...]] = {t.name: t.data_kinds for t in STAGE_TABLE}  # the stage table's
_MARKER = re.compile(f"({re.escape(MEDIA)}|{re.escape(VIDEO)})")


@dataclass(frozen=True)
class MediaRef:
    path: str  # a location (media.py): a local path, an s3:// URI or a tar member
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
        """Untrained text whose `<image>`/`<video>` markers take the next media of their kind."""
        for part in _MARKER.split(text):
            if part in (MEDIA, VIDEO):
                kind = "video" if part == VIDEO else "image"
                ref = next((r for r in refs if r.kind == kind), None)
                if ref is None:
                    other = f" (marker {part} stands for a {refs[0].kind})" if refs else ""
                    raise ValueError(f"text has more {part} markers than the record has {kind}s{other}")
                refs.remove(ref)
                self.media(ref)
            elif part:
                self.text(part, trained=False)


def locate(root: str | Path, path: str) -> str:
    """A media path of a record as a location: relative paths are under the media root."""
    if "://" in path or path.startswith("/"):  # already a location (webdataset members are)
        return path
    return f"{str(root).rstrip('/')}/{path.lstrip('/')}"


def media_refs(record: dict[str, Any], root: str | Path, frames: int) -> list[MediaRef]:
    refs = []
    for m in record.get("media", []):
        kind = m["type"]
        if kind not in ("image", "video"):
            raise ValueError(f"media type must be image or video, got {kind!r}")
        refs.append(MediaRef(locate(root, m["path"]), kind, frames if kind == "video" else 1))
    return refs


def encode_record(
    record: dict[str, Any], root: str | Path, codec: TextCodec, frames: int, max_tokens: int | None = None
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
                ref = MediaRef(locate(root, seg["image"]), "image", 1)
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


class SampleSet(Sequence[Sample]):
    """A dataset's records, encoded on access (cheap: text only); errors name the record."""

    def __init__(
        self, records: Sequence[dict[str, Any]], where: Sequence[str], root: str, codec: TextCodec,
        frames: int, max_tokens: int | None,
    ) -> None:  # fmt: skip
        self.records, self.where, self.root, self.codec = records, where, root, codec
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
        try:
            return encode_record(self.records[i], self.root, self.codec, self.frames, self.max_tokens)
        except (ValueError, KeyError, TypeError) as err:
            raise RecordError(f"{self.where[i]}: {err}") from None


def as_caption(record: dict[str, Any]) -> dict[str, Any] | None:
    """A LLaVA pre-training record (one human turn, one gpt turn) as a caption, VILA's "plain"."""
    turns = record.get("conversations") or []
    if len(turns) == 2 and [t.get("from") for t in turns] == ["human", "gpt"]:
        return {"media": record.get("media", []), "caption": turns[1]["value"]}
    return None


def open_dataset(
    records: Sequence[dict[str, Any]], where: Sequence[str], root: str, stage_type: str, codec: TextCodec,
    frames: int, max_tokens: int | None = None,
) -> SampleSet:  # fmt: skip
    """Records of a dataset (sources.py) for a stage; refuses a format the stage does not train on."""
    if stage_type not in FORMATS:
        raise ValueError(f"unknown stage type {stage_type!r}; known: {', '.join(FORMATS)}")
    kinds, out = FORMATS[stage_type], []
    for record, at in zip(records, where, strict=True):
        try:
            fmt = record_format(record)
        except ValueError as err:
            raise RecordError(f"{at}: {err}") from None
        if fmt == "conversation" and fmt not in kinds and "caption" in kinds:
            record = as_caption(record) or record
            fmt = record_format(record)
        if fmt not in kinds:
            raise RecordError(f"{at}: a {fmt} record; a {stage_type} stage reads {', '.join(kinds)}")
        out.append(record)
    return SampleSet(out, where, root, codec, frames, max_tokens)


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


def pixels_of(ref: MediaRef, size: int, reader: MediaReader | None = None) -> torch.Tensor:
    """A media reference decoded for the vision tower: float [frames, 3, size, size]."""
    if reader is None:  # a local file
        raw = decode_video(ref.path, ref.frames) if ref.kind == "video" else load_image(ref.path)
    else:
        with reader.open(ref.path) as f:
            raw = decode_video(f, ref.frames) if ref.kind == "video" else load_image(f)
    return to_pixels(raw, size)
