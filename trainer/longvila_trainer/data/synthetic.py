"""Small synthetic datasets with real encoded media, deterministic by seed (tests and the demo).

A video is a colored square moving across a plain background, encoded with PyAV (MPEG-4
Part 2 in MP4 by default: in every FFmpeg build, no licence questions). Its caption and
answers name the square's color, its direction and the background, so a model can in
principle learn them. Images are PNG. Every generator writes `<root>/manifest.jsonl`, one
record per line, media paths relative to `root`, in the formats `samples.py` reads:

  captions      {"media": [{"type": "video"|"image", "path": …}], "caption": …}
  interleaved   {"segments": [{"text": …} | {"image": path}, …]}
  instructions  {"media": […], "conversations": [{"from": "human"|"gpt", "value": …}, …]}
  long-text     {"input_ids": [int, …]}  (pre-tokenized, as SlimPajama-encoded data is)
  long-video    like instructions, one long video each
  needle-qa     a haystack video with a needle frame at a random depth, asked about as the
                NIAH eval asks (its question and answer), so a model can learn to find it

With `layout="llava"` the same records are written as a LLaVA / VILA annotation file,
`train.json` (a JSON array of {"id", "video" | "image", "conversations"}; captions become
VILA's two-turn pre-training records), media paths relative to it: what public datasets
publish, and what the demo puts on S3.

`needle_video` builds the needle-in-a-haystack input: a haystack video with one distinct
needle frame inserted at a depth in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from .tokenizer import TextCodec

GENERATORS = ("captions", "interleaved", "instructions", "long-text", "long-video", "needle-qa")
# Names used by examples/jobs/tiny-demo.yaml and the operator's cluster tests.
ALIASES = {"video-qa": "instructions", "long-video-qa": "long-video"}
MANIFEST = "manifest.jsonl"
LLAVA = "train.json"
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 200, 60),
    "blue": (40, 60, 220),
    "yellow": (230, 220, 40),
    "white": (240, 240, 240),
    "black": (15, 15, 15),
}
# The needle's colors (checkered with black), and the NIAH haystack's, none of them a needle's:
# the needle is the one frame showing its color (and the only checkerboard), as a real needle
# is unlike its haystack.
NEEDLE_COLORS = ("red", "green", "blue", "yellow", "white")
HAYSTACK_COLORS = {
    "gray": (128, 128, 128),
    "brown": (120, 70, 30),
    "teal": (0, 128, 128),
    "olive": (128, 128, 0),
    "purple": (120, 40, 140),
    "orange": (240, 140, 20),
}
DIRECTIONS = ("left", "right", "up", "down")
WORDS = ("the", "a", "video", "shows", "square", "moves", "slowly", "quickly", "across", "frame", "scene")


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    color: str  # the square's
    background: str
    direction: str


def moving_square(
    rng: np.random.Generator, n_frames: int, size: int, palette: dict[str, tuple[int, int, int]] = COLORS
) -> Clip:
    """A square of one color crossing a background of another, in one of four directions."""
    fg, bg = rng.choice(list(palette), size=2, replace=False)
    direction = str(rng.choice(DIRECTIONS))
    side = max(size // 4, 2)
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    frames[:] = palette[bg]
    for t in range(n_frames):
        p = round(t * (size - side) / max(n_frames - 1, 1))  # leading edge position
        y, x = {"right": (size // 3, p), "left": (size // 3, size - side - p)}.get(
            direction, (p, size // 3) if direction == "down" else (size - side - p, size // 3)
        )
        frames[t, y : y + side, x : x + side] = palette[fg]
    return Clip(frames, str(fg), str(bg), direction)


def write_video(path: Path, frames: np.ndarray, fps: int = 8, codec: str = "mpeg4") -> None:
    """uint8 [T, H, W, 3] → an encoded video file (H and W even, as yuv420p needs)."""
    _, h, w, _ = frames.shape
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.bit_rate = 4_000_000  # near-lossless at these sizes: a needle frame must survive
        stream.gop_size = 4  # keyframe interval
        for image in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_image(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="PNG")


def caption_of(clip: Clip) -> str:
    return f"a {clip.color} square moves {clip.direction} on a {clip.background} background."


def _sentence(rng: np.random.Generator, n_words: int) -> str:
    return " ".join(str(w) for w in rng.choice(WORDS, size=n_words)) + "."


def _media(
    rng: np.random.Generator, root: Path, i: int, frames: int, size: int, video: bool
) -> tuple[Any, Clip]:
    clip = moving_square(rng, frames if video else 1, size)
    if video:
        write_video(root / f"video_{i:05d}.mp4", clip.frames)
        return {"type": "video", "path": f"video_{i:05d}.mp4"}, clip
    write_image(root / f"image_{i:05d}.png", clip.frames[0])
    return {"type": "image", "path": f"image_{i:05d}.png"}, clip


def _record(
    name: str,
    rng: np.random.Generator,
    root: Path,
    i: int,
    frames: int,
    size: int,
    codec: TextCodec | None,
    text_tokens: int,
) -> dict[str, Any]:
    if name == "captions":
        media, clip = _media(rng, root, i, frames, size, video=i % 2 == 1)  # images and videos alternate
        return {"media": [media], "caption": caption_of(clip)}
    if name == "interleaved":
        media, clip = _media(rng, root, i, frames, size, video=False)
        text = [{"text": _sentence(rng, 4)}, {"image": media["path"]}, {"text": caption_of(clip)}]
        return {"segments": text}
    if name in ("instructions", "long-video"):
        media, clip = _media(rng, root, i, frames, size, video=name == "long-video" or i % 2 == 1)
        tag = "<video>" if media["type"] == "video" else "<image>"
        turns = [
            {"from": "human", "value": f"{tag}\nwhat color is the square?"},
            {"from": "gpt", "value": f"{clip.color}."},
            {"from": "human", "value": "where does it move?"},
            {"from": "gpt", "value": f"{clip.direction}."},
        ]
        return {"media": [media], "conversations": turns}
    if name == "needle-qa":
        hay = haystack_frames(int(rng.integers(1 << 30)), frames, size)  # as the eval's haystack
        needle = make_needle(int(rng.integers(1 << 30)), size)
        needle_video(root / f"video_{i:05d}.mp4", hay, needle, float(rng.random()))
        turns = [
            {"from": "human", "value": f"<video>\n{needle.question}"},
            {"from": "gpt", "value": needle.answer},
        ]
        return {"media": [{"type": "video", "path": f"video_{i:05d}.mp4"}], "conversations": turns}
    if name == "long-text":
        if codec is None:
            raise ValueError("the long-text generator needs a tokenizer (it writes pre-tokenized text)")
        ids: list[int] = []
        while len(ids) < text_tokens:
            ids += codec.encode(_sentence(rng, 6) + " ")
        return {"input_ids": ids[:text_tokens]}
    raise ValueError(f"unknown synthetic generator {name!r}; known: {', '.join(GENERATORS)}")


def generate(
    name: str,
    root: Path,
    *,
    samples: int,
    seed: int,
    frames: int = 16,
    size: int = 56,
    codec: TextCodec | None = None,
    text_tokens: int = 512,
    layout: str = "manifest",
) -> Path:
    """Writes dataset `name` (one of GENERATORS or ALIASES) under `root`; returns the manifest
    path, or with layout "llava" the annotation file's."""
    name = ALIASES.get(name, name)
    if name not in GENERATORS:
        raise ValueError(
            f"unknown synthetic generator {name!r}; known: {', '.join(GENERATORS + tuple(ALIASES))}"
        )
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, GENERATORS.index(name)])
    records = [_record(name, rng, root, i, frames, size, codec, text_tokens) for i in range(samples)]
    if layout == "llava":
        annotations = root / LLAVA
        annotations.write_text(json.dumps([as_llava(r, i) for i, r in enumerate(records)], indent=1))
        return annotations
    if layout != "manifest":
        raise ValueError(f"layout {layout!r}: manifest or llava")
    manifest = root / MANIFEST
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    return manifest


def as_llava(record: dict[str, Any], i: int) -> dict[str, Any]:
    """One of our records as a LLaVA / VILA annotation record."""
    if "segments" in record or "input_ids" in record:
        raise ValueError("interleaved and pre-tokenized records have no LLaVA form; use layout 'manifest'")
    out: dict[str, Any] = {"id": f"sample-{i:05d}"}
    for m in record["media"]:
        out.setdefault(m["type"], []).append(m["path"])
    for kind in ("video", "image"):
        if len(out.get(kind, [])) == 1:
            out[kind] = out[kind][0]
    if "caption" in record:  # VILA's pre-training form: the answer is the caption
        tag = "<video>" if "video" in out else "<image>"
        out["conversations"] = [
            {"from": "human", "value": f"{tag}\n"},
            {"from": "gpt", "value": record["caption"]},
        ]
    else:
        out["conversations"] = record["conversations"]
    return out


# Needle in a haystack ----------------------------------------------------------------------


@dataclass(frozen=True)
class Needle:
    frame: np.ndarray  # uint8 [H, W, 3]
    question: str
    answer: str


def make_needle(seed: int, size: int) -> Needle:
    """A frame unlike any haystack frame: a checkerboard of a needle color and black; the answer
    is the color. Variant `seed` has color NEEDLE_COLORS[seed % 5], so 5 variants ask for
    every color once and a model that ignores the video gets at most 1 in 5 right."""
    color = NEEDLE_COLORS[seed % len(NEEDLE_COLORS)]
    cell = max(size // 8, 1)
    yy, xx = np.indices((size, size)) // cell
    frame = np.where(((yy + xx) % 2 == 0)[..., None], COLORS[color], COLORS["black"]).astype(np.uint8)
    return Needle(frame, "what color is the checkerboard?", color)


def haystack_frames(seed: int, n_frames: int, size: int) -> np.ndarray:
    """uint8 [T, H, W, 3]: moving-square clips of 8 frames in HAYSTACK_COLORS, back to back."""
    rng = np.random.default_rng([seed, 11])
    clips = [moving_square(rng, 8, size, HAYSTACK_COLORS).frames for _ in range((n_frames + 7) // 8)]
    return np.concatenate(clips)[:n_frames] if clips else np.zeros((0, size, size, 3), np.uint8)


def insert_needle(haystack: np.ndarray, needle: np.ndarray, depth: float) -> tuple[np.ndarray, int]:
    """[T, H, W, 3] + [H, W, 3] → [T+1, H, W, 3] with the needle at index round(depth·T)."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    at = round(depth * len(haystack))
    return np.concatenate([haystack[:at], needle[None], haystack[at:]]), at


def needle_video(path: Path, haystack: np.ndarray, needle: Needle, depth: float, fps: int = 8) -> int:
    """Writes the haystack with the needle inserted at `depth`; returns the needle's frame index."""
    frames, at = insert_needle(haystack, needle.frame, depth)
    write_video(path, frames, fps=fps)
    return at
