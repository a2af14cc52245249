"""URIs of weights, data and checkpoints: the one place that parses, validates and resolves them.

    s3://<bucket>[/<prefix>]       an S3 (or S3-compatible) prefix
    file:///<absolute path>        a directory inside the image or on a mounted volume
    synthetic://<generator>        generated data (data URIs only)

Two layers, kept in step by tests/unit/test_uri.py: the regex text (`S3_URI`, `MODEL_URI`,
`DATA_URI`, `HTTP_ENDPOINT`) is what the CRD's CEL rules and the operator's Python side
of them match, written without backslashes so the same text is valid inside a CEL string
literal (`[.]`, not an escaped dot; `[!-~]` is any printable ASCII character but space);
`parse_uri` is the stricter parser every reader uses (no empty, '.' or '..' path parts).
Errors name the field the URI came from, so a bad value is found from one line. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Scheme = Literal["s3", "file", "synthetic"]
SCHEMES: tuple[Scheme, ...] = ("s3", "file", "synthetic")

_BODY = {
    "s3": "s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[!-~]*)?",
    "file": "file:///[!-~]*",
    "synthetic": "synthetic://[a-z0-9][-a-z0-9._]*",
}
_FORM = {
    "s3": "s3://<bucket>/<prefix>",
    "file": "file:///<absolute path>",
    "synthetic": "synthetic://<generator name>",
}


def pattern(*schemes: Scheme) -> str:
    """An anchored regex (RE2 and Python) accepting exactly these schemes."""
    bodies = [_BODY[s] for s in schemes]
    return f"^{bodies[0]}$" if len(bodies) == 1 else "^(" + "|".join(bodies) + ")$"


def forms(schemes: Collection[Scheme]) -> str:
    """'s3://<bucket>/<prefix> or file:///<absolute path>' — what a message says is allowed."""
    names = [_FORM[s] for s in SCHEMES if s in schemes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


# What the trainer image ships (images/trainer/Dockerfile: tiny weights under it); a file:// URI
# of a job must lie under it or under one of the job's volume mounts.
IMAGE_DIR = "/opt/longvila"

S3_URI = pattern("s3")
MODEL_URI = pattern("s3", "file")
DATA_URI = pattern("s3", "file", "synthetic")
HTTP_ENDPOINT = "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/?$"
# S3 bucket naming rules (lower-case letters, digits, dots, hyphens; 3-63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_GENERATOR = re.compile(r"^[a-z0-9][-a-z0-9._]*$")


class URIError(ValueError):
    """A URI that cannot be used; the message names the field and what is allowed."""


@dataclass(frozen=True)
class URI:
    """scheme 's3' (bucket + key prefix), 'file' (absolute path in `prefix`) or 'synthetic'
    (generator name in `prefix`)."""

    scheme: Scheme
    bucket: str
    prefix: str  # s3: key prefix without leading/trailing '/'; file: absolute path; synthetic: name

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if self.scheme == "file":
            return f"file://{self.prefix}"
        return f"synthetic://{self.prefix}"

    @property
    def is_s3(self) -> bool:
        return self.scheme == "s3"

    @property
    def path(self) -> Path:
        """The local path of a file:// URI."""
        if self.scheme != "file":
            raise URIError(f"{self}: not a file:// URI")
        return Path(self.prefix)

    def key(self, relative: str) -> str:
        """The S3 key (or filesystem path) of `relative` under this location."""
        relative = relative.lstrip("/")
        if not self.prefix:
            return relative
        return f"{self.prefix}/{relative}" if relative else self.prefix

    def join(self, relative: str) -> URI:
        """This location's child `relative` (a relative path with '/' separators)."""
        parts = [p for p in relative.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise URIError(f"{relative!r}: a relative path under {self} must not contain '.' or '..'")
        if self.scheme == "synthetic":
            raise URIError(f"{self}: synthetic data has no children")
        prefix = "/".join([self.prefix.rstrip("/"), *parts]) if self.prefix else "/".join(parts)
        return URI(self.scheme, self.bucket, prefix)


def parse_uri(text: str, field: str = "URI", schemes: Collection[Scheme] = ("s3", "file")) -> URI:
    """Parses one of `schemes`; raises URIError naming `field` and the allowed forms."""
    allowed = forms(schemes)
    if not isinstance(text, str) or not text.strip():
        raise URIError(f"{field}: empty; expected {allowed}")
    text = text.strip()
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in schemes:
        raise URIError(f"{field}={text!r}: unsupported scheme {scheme or '(none)'!r}; expected {allowed}")
    rest = text[len(scheme) + 3 :]
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET.match(bucket):
            raise URIError(
                f"{field}={text!r}: bucket {bucket!r} is not a valid S3 bucket name "
                "(3-63 of a-z 0-9 . -, starting and ending with a letter or digit)"
            )
        prefix = prefix.strip("/")
        if "//" in prefix or any(part in (".", "..") for part in prefix.split("/")):
            raise URIError(f"{field}={text!r}: prefix must not contain empty, '.' or '..' parts")
        if any(c.isspace() for c in prefix):
            raise URIError(f"{field}={text!r}: prefix must not contain whitespace")
        return URI("s3", bucket, prefix)
    if scheme == "file":
        if not rest.startswith("/"):
            raise URIError(
                f"{field}={text!r}: file URIs need an absolute path, i.e. three slashes: file:///path"
            )
        if any(part == ".." for part in rest.split("/")):
            raise URIError(f"{field}={text!r}: path must not contain '..'")
        if any(c.isspace() for c in rest):
            raise URIError(f"{field}={text!r}: path must not contain whitespace")
        return URI("file", "", rest.rstrip("/") or "/")
    if not _GENERATOR.match(rest):
        raise URIError(f"{field}={text!r}: a generator name is lower-case letters, digits, '.', '_', '-'")
    return URI("synthetic", "", rest)


def local_path(uri: str | URI, fetch: Callable[[URI], Path] | None, field: str = "URI") -> Path:
    """Where the files of a weights, tokenizer or dataset URI are on this machine: a file://
    path (or a bare absolute path, for direct runs) as it is, an s3:// prefix through `fetch`
    (the trainer's S3 copy into its cache)."""
    if isinstance(uri, str) and uri.startswith("/"):
        uri = "file://" + uri
    u = uri if isinstance(uri, URI) else parse_uri(uri, field)
    if u.scheme == "file":
        return u.path
    if u.scheme == "s3":
        if fetch is None:
            raise URIError(f"{field}={u}: s3:// is not supported here; give a file:///<absolute path>")
        return fetch(u)
    raise URIError(f"{field}={u}: synthetic data has no files; it is generated")


def check_endpoint(text: str, field: str) -> None:
    """An S3-compatible endpoint: empty (AWS) or http(s)://host[:port]."""
    if text and not re.fullmatch(HTTP_ENDPOINT, text):
        raise URIError(f"{field}={text!r}: must be empty or http(s)://host[:port]")
