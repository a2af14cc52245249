"""Annotation files as published (LLaVA / VILA), and their records in the shapes samples.py encodes.

A file is a JSON array of records or JSON Lines (one record per line); our own manifest.jsonl
is the second kind. A LLaVA / VILA record:

    {"id": "v_0001", "video": "rel/path.mp4" | "image": "rel/a.jpg" | ["rel/a.jpg", …],
     "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                       {"from": "gpt", "value": "…"}, …]}

Media paths are relative to the media root (`data.media_root`, default: the annotation
file's directory); records without media are text-only conversations. `normalize` turns
it into our conversation record (`media: [{type, path}]`); records already in one of our
shapes (media/caption/segments/input_ids) pass as they are. Roles `human`/`user` and
`gpt`/`assistant` are accepted. Many video datasets (LLaVA-Video, LLaVA-NeXT) mark their
video with `<image>`: in a record whose media are all videos, `<image>` stands for the video.

A record that cannot be read is a `RecordError` naming the file and line (for a JSON array,
the line its record starts on) and the field.
"""

from __future__ import annotations

import json
from typing import Any

ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
OURS = ("media", "caption", "segments", "input_ids")  # keys of our manifest's record shapes


class RecordError(ValueError):
    """A malformed annotation record; the message starts with its file and line."""


def parse_annotations(text: str, name: str) -> list[tuple[dict[str, Any], str]]:
    """(raw record, "file:line") for every record of a JSON array or JSONL file."""
    body = text.lstrip()
    if body.startswith("["):
        return _array(text, name)
    out: list[tuple[dict[str, Any], str]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            raise RecordError(f"{name}:{n}: not JSON ({err})") from None
        out.append((record, f"{name}:{n}"))
    return out


def _array(text: str, name: str) -> list[tuple[dict[str, Any], str]]:
    """Records of a JSON array with the line each starts on (raw_decode element by element)."""
    decoder = json.JSONDecoder()
    out: list[tuple[dict[str, Any], str]] = []
    pos = text.index("[") + 1
    while True:
        pos = _skip(text, pos)
        if pos < len(text) and text[pos] == "]":
            return out
        line = text.count("\n", 0, pos) + 1
        try:
            record, pos = decoder.raw_decode(text, pos)
        except ValueError as err:
            raise RecordError(f"{name}:{line}: not JSON ({err})") from None
        out.append((record, f"{name}:{line}"))
        pos = _skip(text, pos)
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos >= len(text) or text[pos] != "]":
            raise RecordError(f"{name}:{text.count(chr(10), 0, pos) + 1}: expected ',' or ']' after a record")


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _paths(value: Any, field: str, where: str) -> list[str]:
    paths = [value] if isinstance(value, str) else value
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise RecordError(f"{where}: {field}: expected a path or a list of paths, got {value!r}")
    return paths


def normalize(raw: Any, where: str) -> dict[str, Any]:
    """A record in the shape samples.encode_record reads; RecordError naming `where` and the field."""
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(raw).__name__}")
    if any(k in raw for k in OURS) and not ("video" in raw or "image" in raw):
        return raw
    if not any(k in raw for k in ("conversations", "video", "image")):
        raise RecordError(
            f"{where}: unrecognized record with keys {sorted(raw)}: expected LLaVA's conversations "
            f"(+ video / image) or one of {', '.join(OURS)}"
        )
    media = (
        [{"type": "image", "path": p} for p in _paths(raw["image"], "image", where)] if "image" in raw else []
    )
    media += (
        [{"type": "video", "path": p} for p in _paths(raw["video"], "video", where)] if "video" in raw else []
    )
    turns = raw.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"{where}: conversations: expected a non-empty list of turns")
    videos_only = bool(media) and all(m["type"] == "video" for m in media)
    out_turns = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise RecordError(f"{where}: conversations[{i}].value: expected a string")
        role = ROLES.get(turn.get("from"))  # type: ignore[arg-type]
        if role is None:
            raise RecordError(
                f"{where}: conversations[{i}].from: {turn.get('from')!r}; one of {', '.join(ROLES)}"
            )
        value = turn["value"]
        if role == "human" and videos_only and "<video>" not in value:
            value = value.replace("<image>", "<video>")  # LLaVA-Video marks its video so
        out_turns.append({"from": role, "value": value})
    out: dict[str, Any] = {"conversations": out_turns, "media": media}
    if "id" in raw:
        out["id"] = raw["id"]
    return out
