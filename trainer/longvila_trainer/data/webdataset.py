"""Tar shards in the webdataset convention (pre-training data), as records of our formats.

A shard is a tar whose members are grouped into samples by key: `dir/000123.mp4` and
`dir/000123.json` are sample `dir/000123` (the key is the name up to the first dot of its
last path part). Each sample has one `.json` member with its text, in one of the record
formats (`{"caption": …}` for captioning and pre-training, LLaVA `conversations`, our
manifest's shapes) and media members: videos (.mp4 .mkv .webm .avi .mov) and images (.jpg
.jpeg .png .webp), in member order. The record's `media` point at the members' bytes in
the shard (`media.member_location`), so a sample is read without unpacking anything.

Indexing a shard reads it once (headers and the small JSON members); the index is cached
per node in the cache directory (one rank builds it, under a lock), keyed by the shard's
location and size, so restarts and the node's other ranks reuse it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .llava import RecordError, normalize
from .media import file_lock, member_location

VIDEO_EXT = (".mp4", ".mkv", ".webm", ".avi", ".mov")
IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")
INDEX_FORMAT = "longvila-wds-index/1"


def split_key(name: str) -> tuple[str, str]:
    """'dir/000123.seg.mp4' → ('dir/000123', '.seg.mp4'): webdataset's key and extension."""
    head, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{head}/{stem}" if head else stem), dot + ext.lower()


def index_tar(f: IO[bytes], shard: str) -> list[dict[str, Any]]:
    """The samples of one shard as records; `shard` names it in locations and errors."""
    samples: dict[str, dict[str, Any]] = {}
    with tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = split_key(member.name)
            entry = samples.setdefault(key, {"json": None, "media": []})
            if ext.endswith(".json"):
                raw = tar.extractfile(member)
                assert raw is not None
                try:
                    entry["json"] = json.loads(raw.read())
                except ValueError as err:
                    raise RecordError(f"{shard}: {member.name}: not JSON ({err})") from None
            elif ext.endswith(VIDEO_EXT) or ext.endswith(IMAGE_EXT):
                kind = "video" if ext.endswith(VIDEO_EXT) else "image"
                where = member_location(shard, member.offset_data, member.size)
                entry["media"].append({"type": kind, "path": where})
    out = []
    for key, entry in samples.items():
        where = f"{shard}: sample {key}"
        if entry["json"] is None:
            raise RecordError(f"{where}: no {key}.json member (its text)")
        record = normalize(entry["json"], where)
        if record.get("media"):
            raise RecordError(f"{where}: the JSON names media; in a shard they are the sample's members")
        record["media"] = entry["media"]
        record["__key__"] = key  # sources.py turns it into the record's location
        out.append(record)
    return out


def shard_records(
    shard: str,
    size: int,
    open_shard: Callable[[str], Any],
    index_dir: Path,
) -> list[dict[str, Any]]:
    """One shard's records, from the node's cached index or by reading the shard once.

    `open_shard(location)` is a context manager giving the shard's bytes (MediaReader.open)."""
    key = hashlib.sha256(f"{shard}:{size}".encode()).hexdigest()[:24]
    path = index_dir / f"{key}.json"
    with file_lock(index_dir / "locks" / key):
        try:
            cached = json.loads(path.read_text())
            if cached.get("format") == INDEX_FORMAT and cached.get("shard") == shard:
                return list(cached["records"])
        except (OSError, ValueError):
            pass
        with open_shard(shard) as f:
            records = index_tar(f, shard)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps({"format": INDEX_FORMAT, "shard": shard, "records": records}))
        tmp.replace(path)
    return records
