"""S3 prefixes copied once to a local directory (model weights and tokenizers in HF layout).

`local_copy(uri, cache)` lists `s3://bucket/prefix` through the checkpoint storage
(checkpoint/s3.py: credentials from the environment, retries, one-line errors) and copies
every object to `cache/s3/<name>-<hash of the URI>`. The ranks of a node share the cache and
may race: each copies into its own temporary directory and renames it into place, so a
reader sees a whole copy or none, and a later run reuses it without listing again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

from longvila_contract.uri import URI

from .checkpoint.s3 import Storage, StorageError, open_storage


def cache_path(uri: str, cache: Path) -> Path:
    """Where `uri` is copied: readable tail plus a hash, so two prefixes never share a directory."""
    tail = re.sub(r"[^A-Za-z0-9._-]", "_", uri.rstrip("/").rsplit("/", 1)[-1])[:40]
    return cache / "s3" / f"{tail}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def local_copy(uri: str | URI, cache: Path, storage: Storage | None = None) -> Path:
    """The local directory holding every object under `uri` (fetched on first use)."""
    uri = str(uri)
    dest = cache_path(uri, cache)
    if dest.is_dir():
        return dest
    storage = storage if storage is not None else open_storage(uri)
    files = storage.listing("")
    if not files:
        raise FileNotFoundError(f"{uri}: no objects under that prefix")
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for key, size in sorted(files.items()):
            storage.get_file(key, tmp / key)
            if (tmp / key).stat().st_size != size:
                raise StorageError(f"{storage.describe(key)}: {size} bytes listed, another size fetched")
        tmp.rename(dest)
    except OSError:  # another rank renamed its identical copy first
        if not dest.is_dir():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
