"""Where media bytes come from: local files, S3 objects through a bounded per-node cache, tar members.

A media reference's location is a string (`MediaRef.path`, set when a record is read):

    /abs/path/video.mp4                           a file on this machine (the image or a volume)
    s3://bucket/prefix/videos/v1.mp4              an S3 object, fetched on first use
    <shard location>#<offset>:<size>              `size` bytes at `offset` of a tar shard (webdataset)

`MediaReader.open(location)` gives a readable binary file for one decode. S3 objects go
through `MediaCache`, a directory shared by the ranks of a node (the pod's cache dir):
a fetch takes a per-object lock, so the node downloads each object once however many ranks
want it at the same moment (every rank of an SP group decodes the same batch); the cache
is bounded (`data.cache_mib`), least recently used first out, under one eviction lock. A
file in use stays readable after eviction (an open file outlives its name). Tar members on
S3 are read by range, so a shard is never copied whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from longvila_contract.uri import URI, parse_uri

from ..checkpoint.s3 import Storage, open_storage

_MEMBER = re.compile(r"^(?P<shard>.+)#(?P<offset>[0-9]+):(?P<size>[0-9]+)$")


def member_location(shard: str, offset: int, size: int) -> str:
    return f"{shard}#{offset}:{size}"


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class MediaCache:
    """A bounded directory of fetched objects, shared by the processes of one node."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"the media cache needs a positive size, got {max_bytes} bytes")
        self.root, self.max_bytes = Path(root), max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, key: str) -> Path:
        tail = re.sub(r"[^A-Za-z0-9._-]", "_", key.rsplit("/", 1)[-1])[-60:]
        return self.root / "objects" / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}-{tail}"

    @contextlib.contextmanager
    def open(self, key: str, fetch: Callable[[Path], None]) -> Iterator[BinaryIO]:
        """`key`'s bytes, fetched into the cache by `fetch(tmp_path)` unless already there."""
        dest = self.path_of(key)
        f: BinaryIO
        try:
            f = dest.open("rb")
        except FileNotFoundError:
            f = self._fill(dest, fetch)
        with f:
            with contextlib.suppress(OSError):
                os.utime(dest)  # recently used: evicted last
            yield f

    def _fill(self, dest: Path, fetch: Callable[[Path], None]) -> BinaryIO:
        with file_lock(self.root / "locks" / dest.name):  # one fetch per object and node
            try:
                return dest.open("rb")  # another rank fetched it while we waited
            except FileNotFoundError:
                pass
            tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            try:
                fetch(tmp)
                f = tmp.open("rb")  # held before the rename: eviction cannot take it from us
                os.replace(tmp, dest)
            finally:
                tmp.unlink(missing_ok=True)
        self.evict(keep=dest)
        return f

    def usage(self) -> int:
        return sum(p.stat().st_size for p in self._objects())

    def _objects(self) -> list[Path]:
        out = []
        for p in (self.root / "objects").glob("*"):
            if not p.name.startswith("."):
                out.append(p)
        return out

    def evict(self, keep: Path | None = None) -> list[Path]:
        """Least recently used objects out until the cache fits its bound (`keep` stays)."""
        gone = []
        with file_lock(self.root / "evict.lock"):
            entries = []
            for p in self._objects():
                with contextlib.suppress(FileNotFoundError):
                    st = p.stat()
                    entries.append((st.st_mtime, st.st_size, p))
            total = sum(size for _, size, _ in entries)
            for _, size, p in sorted(entries, key=lambda e: e[0]):
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                p.unlink(missing_ok=True)
                (self.root / "locks" / p.name).unlink(missing_ok=True)
                total -= size
                gone.append(p)
        return gone


class MediaReader:
    """Opens media locations (see the module doc); S3 storages are made once per bucket prefix."""

    def __init__(self, cache: MediaCache, storage_for: Callable[[URI], Storage] = open_storage) -> None:
        self.cache, self._storage_for = cache, storage_for
        self._storages: dict[str, Storage] = {}

    def storage(self, bucket_uri: URI) -> Storage:
        key = f"s3://{bucket_uri.bucket}"
        if key not in self._storages:
            self._storages[key] = self._storage_for(URI("s3", bucket_uri.bucket, ""))
        return self._storages[key]

    @contextlib.contextmanager
    def open(self, location: str) -> Iterator[BinaryIO]:
        m = _MEMBER.match(location)
        if m:  # a tar member: its bytes only
            data = self._member(m.group("shard"), int(m.group("offset")), int(m.group("size")))
            yield io.BytesIO(data)
            return
        if location.startswith("s3://"):
            u = parse_uri(location, "media")
            with self.cache.open(location, lambda tmp: self.storage(u).get_file(u.prefix, tmp)) as f:
                yield f
            return
        with Path(location).open("rb") as f:
            yield f

    def _member(self, shard: str, offset: int, size: int) -> bytes:
        """A member's bytes: from the shard file (local, or the node's cached copy of an S3
        shard, left by indexing), else by one ranged GET, cached like any object."""
        cached = self.cache.path_of(shard)
        f: BinaryIO
        for path in (Path(shard),) if not shard.startswith("s3://") else (cached,):
            with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
                f.seek(offset)
                return f.read(size)
        if not shard.startswith("s3://"):
            raise FileNotFoundError(f"{shard}: no such shard")
        u = parse_uri(shard, "media")

        def fetch(tmp: Path) -> None:
            tmp.write_bytes(self.storage(u).get_range(u.prefix, offset, size))

        with self.cache.open(member_location(shard, offset, size), fetch) as f:
            return f.read()
