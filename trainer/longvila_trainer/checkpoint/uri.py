"""Checkpoint locations: `s3://bucket/prefix` and `file:///absolute/path`, parsed and validated.

Pure. Errors name the field the URI came from (e.g. LONGVILA_CHECKPOINT_URI), so a bad value
in a pod's environment is found from one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# S3 bucket naming rules (lower-case letters, digits, dots, hyphens; 3-63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class CheckpointURIError(ValueError):
    """A checkpoint URI that cannot be used; the message names the field and the rule."""


@dataclass(frozen=True)
class CheckpointURI:
    """scheme 's3' (bucket + key prefix) or 'file' (absolute path in `prefix`, no bucket)."""

    scheme: str
    bucket: str
    prefix: str  # s3: key prefix without leading/trailing '/'; file: absolute path without trailing '/'

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return f"file://{self.prefix}"

    def key(self, relative: str) -> str:
        """The S3 key (or filesystem path) of `relative` under this location."""
        relative = relative.lstrip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative else self.prefix


def parse_uri(text: str, field: str = "checkpoint URI") -> CheckpointURI:
    """Parses `s3://bucket[/prefix]` or `file:///abs/path`; raises CheckpointURIError naming `field`."""
    if not isinstance(text, str) or not text.strip():
        raise CheckpointURIError(f"{field}: empty; expected s3://<bucket>/<prefix> or file:///<path>")
    text = text.strip()
    if text.startswith("s3://"):
        rest = text[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise CheckpointURIError(
                f"{field}={text!r}: bucket {bucket!r} is not a valid S3 bucket name "
                "(3-63 of a-z 0-9 . -, starting and ending with a letter or digit)"
            )
        prefix = prefix.strip("/")
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise CheckpointURIError(f"{field}={text!r}: prefix must not contain empty, '.' or '..' parts")
        if any(c.isspace() for c in prefix):
            raise CheckpointURIError(f"{field}={text!r}: prefix must not contain whitespace")
        return CheckpointURI("s3", bucket, prefix)
    if text.startswith("file://"):
        path = text[len("file://") :]
        if not path.startswith("/"):
            raise CheckpointURIError(
                f"{field}={text!r}: file URIs need an absolute path, i.e. three slashes: file:///path"
            )
        if any(part == ".." for part in path.split("/")):
            raise CheckpointURIError(f"{field}={text!r}: path must not contain '..'")
        return CheckpointURI("file", "", path.rstrip("/") or "/")
    scheme = text.split("://", 1)[0] if "://" in text else "(none)"
    raise CheckpointURIError(
        f"{field}={text!r}: unsupported scheme {scheme!r}; expected s3://<bucket>/<prefix> or file:///<path>"
    )
