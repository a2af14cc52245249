"""The S3 server (versitygw) of the local cluster, also started alone by tests and benchmarks."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .probes import free_ports, wait_for
from .processes import Supervisor


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def client(self) -> Any:
        """A boto3 client for this server, made by the trainer's own S3 code."""
        from longvila_trainer.checkpoint.s3 import S3Config, make_client

        return make_client(
            S3Config(endpoint=self.endpoint, access_key=self.access_key, secret_key=self.secret_key)
        )


def start_versitygw(
    sup: Supervisor, binary: Path, data_dir: Path, port: int, bucket: str, keys: tuple[str, str] | None = None
) -> S3Server:
    """Starts versitygw (posix backend) on 127.0.0.1:port and makes `bucket` (if it is not there).

    `keys`: (access, secret) to keep, e.g. when restarting a server its clients know; else fresh ones.
    """
    import botocore.exceptions

    access, secret = keys or ("lv" + secrets.token_hex(8), secrets.token_hex(20))
    data_dir.mkdir(parents=True, exist_ok=True)
    sup.start(
        "versitygw",
        [str(binary), "--port", f"127.0.0.1:{port}", "posix", str(data_dir)],
        env=dict(os.environ, ROOT_ACCESS_KEY=access, ROOT_SECRET_KEY=secret),
    )
    server = S3Server(f"http://127.0.0.1:{port}", access, secret, bucket)
    client = server.client()

    def create() -> bool:
        try:
            client.create_bucket(Bucket=bucket)
        except botocore.exceptions.EndpointConnectionError:
            return False
        except botocore.exceptions.ClientError as e:  # a restart finds its bucket on disk
            return e.response.get("Error", {}).get("Code") in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            )
        return True

    wait_for("the S3 server", create, 30, sup.check_alive)
    return server


def restart_versitygw(sup: Supervisor, binary: Path, data_dir: Path, server: S3Server) -> float:
    """SIGKILLs the running versitygw and starts it again on the same port, data and keys, as
    when its pod is rescheduled; returns the seconds it was not answering."""
    import signal
    import time

    t0 = time.monotonic()
    proc = sup.procs["versitygw"]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    port = int(server.endpoint.rsplit(":", 1)[1])
    start_versitygw(sup, binary, data_dir, port, server.bucket, keys=(server.access_key, server.secret_key))
    return time.monotonic() - t0


@contextmanager
def private_s3(run_dir: Path, bucket: str = "longvila") -> Iterator[S3Server]:
    """versitygw alone in run_dir, stopped on exit (and with its owner, even on SIGKILL)."""
    from .build import ensure_all
    from .versions import load_versions

    binary = ensure_all(load_versions())["versitygw"]
    sup = Supervisor(run_dir, die_with_parent=True)
    (port,) = free_ports(1)
    try:
        yield start_versitygw(sup, binary, run_dir / "data", port, bucket)
    finally:
        sup.stop_recorded()
