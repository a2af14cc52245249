"""`data.uri` (and `data.short_uri`) → the dataset's records, wherever and however it is stored.

    synthetic://<generator>          generated once into the cache directory (synthetic.py)
    file:///dir or s3://b/prefix     a directory / prefix holding manifest.jsonl (our format),
                                     else tar shards (*.tar, webdataset convention)
    file:///x.json[l], s3://b/x.json a LLaVA / VILA annotation file (JSON array or JSONL)

Media paths of a record are relative to the media root: `data.media_root` when set
(file:///dir, /dir or s3://bucket/prefix), else the directory (prefix) of the manifest or
annotation file. Nothing is copied up front: annotation files and manifests are read
(through the node's cache for s3://), media are fetched when a batch needs them
(media.py). A file:// path must exist in the pod: inside the image or on a volume
(`spec.volumeMounts`).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvila_contract.config import SyntheticConfig
from longvila_contract.uri import SCHEMES, URI, parse_uri

from ..checkpoint.s3 import Storage
from .llava import RecordError, normalize, parse_annotations
from .media import MediaReader
from .synthetic import MANIFEST, generate
from .tokenizer import TextCodec
from .webdataset import shard_records

ANNOTATIONS = (".json", ".jsonl")


@dataclass(frozen=True)
class Dataset:
    """A dataset's records (normalized), where each came from, and its media root."""

    records: list[dict[str, Any]]
    where: list[str]  # "file:line" (or "shard: key") of each record
    root: str  # media root: a local directory or an s3:// prefix


def _uri(text: str, field: str) -> URI:
    if text.startswith("/"):
        text = f"file://{text}"
    return parse_uri(text, field, SCHEMES)


def synthetic_dir(name: str, cache_dir: Path, s: SyntheticConfig, codec: TextCodec) -> Path:
    """A synthetic dataset, generated once into `cache_dir` (atomically: ranks may race)."""
    root = cache_dir / f"{name}-s{s.seed}-n{s.samples}-f{s.video_frames}-p{s.size}-t{s.text_tokens}"
    if not (root / MANIFEST).is_file():
        tmp = cache_dir / f"{root.name}.tmp-{os.getpid()}"
        generate(name, tmp, samples=s.samples, seed=s.seed, frames=s.video_frames, size=s.size, codec=codec,
                 text_tokens=s.text_tokens)  # fmt: skip
        try:
            tmp.rename(root)
        except OSError:  # another rank won the race; its copy is identical
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _annotations(text: str, name: str, root: str) -> Dataset:
    raw = parse_annotations(text, name)
    return Dataset([normalize(r, at) for r, at in raw], [at for _, at in raw], root)


def _shards(shards: list[str], sizes: list[int], reader: MediaReader, root: str) -> Dataset:
    records, where = [], []
    for shard, size in zip(shards, sizes, strict=True):
        for record in shard_records(shard, size, reader.open, reader.cache.root / "wds-index"):
            records.append(record)
            where.append(f"{shard}: sample {record.pop('__key__', '?')}")
    return Dataset(records, where, root)


def media_root(setting: str, default: str) -> str:
    if not setting:
        return default
    u = _uri(setting, "data.media_root")
    if u.scheme == "synthetic":
        raise RecordError(
            "data.media_root: synthetic:// has no files; give file:///dir or s3://bucket/prefix"
        )
    return str(u) if u.is_s3 else u.prefix


def open_source(
    uri: str, field: str, *, root_setting: str, cache_dir: Path, synthetic: SyntheticConfig, codec: TextCodec,
    reader: MediaReader,
) -> Dataset:  # fmt: skip
    """The records of `uri` (the config field `field` names it in messages)."""
    u = _uri(uri, field)
    if u.scheme == "synthetic":
        local = synthetic_dir(u.prefix, cache_dir, synthetic, codec)
        return _annotations((local / MANIFEST).read_text(), str(local / MANIFEST), str(local))
    if u.scheme == "file":
        return _local(u.path, field, root_setting, reader)
    return _s3(u, field, root_setting, reader)


def _local(path: Path, field: str, root_setting: str, reader: MediaReader) -> Dataset:
    if path.is_file() and path.suffix in ANNOTATIONS:
        return _annotations(path.read_text(), str(path), media_root(root_setting, str(path.parent)))
    if (path / MANIFEST).is_file():
        return _annotations(
            (path / MANIFEST).read_text(), str(path / MANIFEST), media_root(root_setting, str(path))
        )
    shards = sorted(str(p) for p in path.glob("*.tar")) if path.is_dir() else []
    if shards:
        return _shards(shards, [Path(s).stat().st_size for s in shards], reader, str(path))
    raise FileNotFoundError(
        f"{field}=file://{path}: no {MANIFEST}, no *.tar shards, and not a .json/.jsonl annotation file "
        "(a file:// dataset must be inside the image or on a volume of spec.volumeMounts)"
    )


def _s3(u: URI, field: str, root_setting: str, reader: MediaReader) -> Dataset:
    storage: Storage = reader.storage(u)  # keys below are the bucket's
    parent = str(u).rsplit("/", 1)[0]
    if u.prefix.endswith(ANNOTATIONS):
        with reader.open(str(u)) as f:
            text = f.read().decode()
        return _annotations(text, str(u), media_root(root_setting, parent))
    manifest = u.key(MANIFEST)
    if manifest in storage.listing(manifest):
        with reader.open(str(u.join(MANIFEST))) as f:
            text = f.read().decode()
        return _annotations(text, str(u.join(MANIFEST)), media_root(root_setting, str(u)))
    listing = storage.listing(u.key("") + "/" if u.prefix else "")
    shards = sorted(k for k in listing if k.endswith(".tar"))
    if shards:
        locations = [f"s3://{u.bucket}/{k}" for k in shards]
        return _shards(locations, [listing[k] for k in shards], reader, str(u))
    raise FileNotFoundError(
        f"{field}={u}: no {MANIFEST} and no *.tar shards under that prefix, and not a .json/.jsonl object"
    )
