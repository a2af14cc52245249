"""Reads the pinned binary versions (localcluster/versions.toml) and the cache location."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

VERSIONS_FILE = Path(__file__).resolve().parent.parent / "versions.toml"


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    versitygw: str
    kubeconform: str
    kueue: str


def load_versions(path: Path = VERSIONS_FILE) -> Versions:
    data = tomllib.loads(path.read_text())
    try:
        return Versions(**{k: str(v["version"]) for k, v in data.items()})
    except TypeError as e:
        raise ValueError(f"{path}: expected sections {list(Versions.__dataclass_fields__)}: {e}") from e


def cache_root() -> Path:
    """Where built binaries live: outside the checkout, so clones and CI runs share them."""
    return Path(os.environ.get("LONGVILA_CACHE", Path.home() / ".cache" / "longvila"))
