"""Object storage for checkpoints: one interface, an S3 (boto3) and a local-filesystem backend.

Both backends have the same semantics: keys are '/'-separated paths relative to a root
(the checkpoint URI); `put_*` is atomic per object (readers see the whole object or none), and `put_file`
returns the size and sha256 of the file it stored;
`listing` returns {key: size} under a prefix; `delete` ignores missing keys.

S3 calls are retried with exponential backoff and full jitter; botocore's own retries are
off so that `RetryPolicy` alone decides (and tests can cap it). After the last attempt a
`StorageError` names the endpoint, bucket, key and cause. Credentials come from the
environment (the operator mounts them from a Secret) or explicit config, and are never put
into a message or a repr. Large files go up as multipart uploads with parallel parts.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from longvila_contract.uri import URI, parse_uri

T = TypeVar("T")
MiB = 1 << 20


class StorageError(RuntimeError):
    """A storage operation failed for good (after retries where they help).

    `transient`: a later attempt may succeed (the service was down or slow); False when the
    store refused the request itself (credentials, a bucket that does not exist), which no
    restart fixes. The trainer reports the two differently (longvila_contract.exits).
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class Storage(Protocol):
    def put_file(self, key: str, path: Path) -> tuple[int, str]: ...  # (bytes, sha256) sent
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_file(self, key: str, path: Path) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def get_range(self, key: str, offset: int, size: int) -> bytes: ...  # `size` bytes at `offset`
    def listing(self, prefix: str = "") -> dict[str, int]: ...
    def delete(self, keys: list[str]) -> None: ...
    def describe(self, key: str = "") -> str: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.2
    cap_s: float = 10.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter (AWS architecture blog): uniform in [0, min(cap, base·2^attempt)]."""
        return rng.uniform(0.0, min(self.cap_s, self.base_s * 2**attempt))


# ---------------------------------------------------------------- local filesystem


def _ignore(_: object) -> None:
    return None


def file_digest(path: Path, chunk: int = 8 << 20) -> tuple[int, str]:
    """(size, sha256 hex) of a file."""
    h, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def copy_hashing(src: Path, dest: Path, chunk: int = 8 << 20) -> tuple[int, str]:
    """Copies src to dest in one pass; returns (size, sha256 hex) of the bytes copied."""
    h, size = hashlib.sha256(), 0
    with src.open("rb") as f, dest.open("wb") as out:
        while block := f.read(chunk):
            h.update(block)
            out.write(block)
            size += len(block)
    return size, h.hexdigest()


class LocalStorage:
    """A directory tree; writes go to a temporary name and are renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key.lstrip("/")

    def describe(self, key: str = "") -> str:
        return f"file://{self._path(key)}"

    def _atomic(self, key: str, write: Callable[[Path], None]) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        try:
            write(tmp)
            tmp.replace(dest)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"writing {self.describe(key)} failed: {e}") from e

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        sent: list[tuple[int, str]] = []
        self._atomic(key, lambda tmp: sent.append(copy_hashing(path, tmp)))
        return sent[0]

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic(key, lambda tmp: _ignore(tmp.write_bytes(data)))

    def get_file(self, key: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._path(key), path)
        except OSError as e:
            raise StorageError(f"reading {self.describe(key)} failed: {e}") from e

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as e:
            raise StorageError(f"reading {self.describe(key)} failed: {e}") from e

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        try:
            with self._path(key).open("rb") as f:
                f.seek(offset)
                return f.read(size)
        except OSError as e:
            raise StorageError(f"reading {self.describe(key)} failed: {e}") from e

    def listing(self, prefix: str = "") -> dict[str, int]:
        base = self._path(prefix)
        if not base.exists():
            return {}
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()]
        return {
            p.relative_to(self.root).as_posix(): p.stat().st_size
            for p in files
            if not (p.name.startswith(".") and p.name.endswith(".tmp"))
        }

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        for key in keys:  # drop directories left empty, deepest first
            parent = self._path(key).parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


# ---------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Config:
    """How to reach S3. Secrets are excluded from repr; empty values fall back to boto3's chain."""

    endpoint: str = ""
    region: str = "us-east-1"
    access_key: str = field(default="", repr=False)
    secret_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    retry: RetryPolicy = RetryPolicy()
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    part_size: int = 32 * MiB
    max_concurrency: int = 8
    sign_payload: bool = False

    @staticmethod
    def from_env(environ: Mapping[str, str], **overrides: Any) -> S3Config:
        values: dict[str, Any] = {
            "endpoint": environ.get("AWS_ENDPOINT_URL_S3", "") or environ.get("AWS_ENDPOINT_URL", ""),
            "region": environ.get("AWS_DEFAULT_REGION", "") or environ.get("AWS_REGION", "") or "us-east-1",
            "access_key": environ.get("AWS_ACCESS_KEY_ID", ""),
            "secret_key": environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "session_token": environ.get("AWS_SESSION_TOKEN", ""),
        }
        values.update(overrides)
        return S3Config(**values)


def make_client(config: S3Config) -> Any:
    import boto3
    import botocore.config

    kwargs: dict[str, Any] = {"region_name": config.region}
    if config.endpoint:
        kwargs["endpoint_url"] = config.endpoint
    if config.access_key:
        kwargs["aws_access_key_id"] = config.access_key
        kwargs["aws_secret_access_key"] = config.secret_key
        if config.session_token:
            kwargs["aws_session_token"] = config.session_token
    bc = botocore.config.Config(
        retries={"total_max_attempts": 1},  # RetryPolicy retries, with its own backoff
        connect_timeout=config.connect_timeout_s,
        read_timeout=config.read_timeout_s,
        max_pool_connections=max(10, 2 * config.max_concurrency),
        # SigV4 otherwise hashes every body on both client and server over plain http; the
        # manifest's sha256 already checks every byte end to end (checked on download).
        s3={"addressing_style": "path", "payload_signing_enabled": config.sign_payload},
        # Integrity is checked end to end by the manifest's sha256; per-request CRCs only cost CPU.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", config=bc, **kwargs)


_PERMANENT_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "NoSuchKey",
    "404", "403", "InvalidBucketName", "InvalidRequest",
}  # fmt: skip


def is_retryable(err: BaseException) -> bool:
    """Network errors, timeouts, throttling and 5xx are worth another try; auth and missing keys are not."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, NoCredentialsError, ParamValidationError

    if isinstance(err, (NoCredentialsError, ParamValidationError)):
        return False
    if isinstance(err, ClientError):
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return code not in _PERMANENT_CODES and not (400 <= status < 500 and status not in (408, 429))
    if isinstance(err, S3UploadFailedError):  # boto3's transfer wraps the ClientError text
        return not any(f"({c})" in str(err) for c in _PERMANENT_CODES)
    return True


class S3Storage:
    """Keys under `s3://bucket/prefix`; every call retried per the config's RetryPolicy."""

    def __init__(
        self,
        uri: URI,
        config: S3Config,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        seed: int | None = None,
    ) -> None:
        if uri.scheme != "s3":
            raise ValueError(f"S3Storage needs an s3:// URI, got {uri}")
        self.uri, self.config = uri, config
        self.client = client if client is not None else make_client(config)
        self._sleep, self._rng = sleep, random.Random(seed)
        from boto3.s3.transfer import TransferConfig

        self.transfer = TransferConfig(
            multipart_threshold=config.part_size,
            multipart_chunksize=config.part_size,
            max_concurrency=config.max_concurrency,
            use_threads=True,
        )

    def describe(self, key: str = "") -> str:
        where = f"s3://{self.uri.bucket}/{self.uri.key(key)}"
        return f"{where} at {self.config.endpoint or 'the default AWS endpoint'}"

    def _call(self, what: str, key: str, fn: Callable[[], T]) -> T:
        policy = self.config.retry
        for attempt in range(policy.attempts):
            try:
                return fn()
            except Exception as e:
                retryable = is_retryable(e)
                if attempt == policy.attempts - 1 or not retryable:
                    tried = f"after {attempt + 1} attempt(s)"
                    raise StorageError(
                        f"S3 {what} of {self.describe(key)} failed {tried}: {type(e).__name__}: {e}",
                        transient=retryable,
                    ) from e
                self._sleep(policy.delay(attempt, self._rng))
        raise AssertionError("unreachable")

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        k = self.uri.key(key)
        # The digest is computed beside the upload (hashlib releases the GIL): measured faster
        # than hashing inside the upload's read path, which serialises reads and forbids seeks.
        with ThreadPoolExecutor(1) as pool:
            digest = pool.submit(file_digest, path)
            self._call(
                "upload",
                key,
                lambda: self.client.upload_file(str(path), self.uri.bucket, k, Config=self.transfer),
            )
            return digest.result()

    def put_bytes(self, key: str, data: bytes) -> None:
        k = self.uri.key(key)
        self._call("put", key, lambda: self.client.put_object(Bucket=self.uri.bucket, Key=k, Body=data))

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        k = self.uri.key(key)
        try:
            self._call(
                "download",
                key,
                lambda: self.client.download_file(self.uri.bucket, k, str(tmp), Config=self.transfer),
            )
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)

    def get_bytes(self, key: str) -> bytes:
        k = self.uri.key(key)

        def get() -> bytes:
            body: bytes = self.client.get_object(Bucket=self.uri.bucket, Key=k)["Body"].read()
            return body

        return self._call("get", key, get)

    def get_range(self, key: str, offset: int, size: int) -> bytes:
        k, span = self.uri.key(key), f"bytes={offset}-{offset + size - 1}"

        def get() -> bytes:
            body: bytes = self.client.get_object(Bucket=self.uri.bucket, Key=k, Range=span)["Body"].read()
            if len(body) != size:
                raise StorageError(f"{self.describe(key)}: {len(body)} bytes for range {span}")
            return body

        return self._call("range get", key, get)

    def listing(self, prefix: str = "") -> dict[str, int]:
        full = self.uri.key(prefix)
        root = f"{self.uri.prefix}/" if self.uri.prefix else ""

        def scan() -> dict[str, int]:
            out: dict[str, int] = {}
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.uri.bucket, Prefix=full)
            for page in pages:
                for obj in page.get("Contents", []):
                    out[obj["Key"][len(root) :]] = int(obj["Size"])
            return out

        return self._call("list", prefix, scan)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": self.uri.key(k)} for k in keys[i : i + 1000]]
            self._call(
                "delete",
                keys[i],
                lambda b=batch: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.uri.bucket, Delete={"Objects": b, "Quiet": True}
                ),
            )


def open_storage(uri: str | URI, environ: Mapping[str, str] | None = None, **s3: Any) -> Storage:
    """The backend for a URI: S3 (config from `environ`, else os.environ, plus overrides) or local."""
    u = parse_uri(uri) if isinstance(uri, str) else uri
    if u.scheme == "file":
        return LocalStorage(Path(u.prefix))
    return S3Storage(u, S3Config.from_env(os.environ if environ is None else environ, **s3))
