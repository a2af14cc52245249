"""The operator as a real subprocess against a local cluster: start, SIGKILL, restart, metrics.

Used by the operator's cluster tests, the chaos run and the benchmarks: `python -m
longvila_operator.main` with its own metrics and liveness ports, dying with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from .probes import poll


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pdeathsig() -> None:  # the operator dies with the test process, even on SIGKILL
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


class OperatorProcess:
    """`python -m longvila_operator.main` watching the given namespaces (or all)."""

    def __init__(
        self, env: dict[str, str], log_path: Path, namespaces: list[str] | None = None, resync_s: float = 2.0,
        extra_args: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.env = dict(env)
        self.extra_args = extra_args
        self.log_path = log_path
        self.namespaces = namespaces
        self.resync_s = resync_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0
        self.starts = 0

    def start(self, timeout: float = 60) -> None:
        self.metrics_port, liveness = free_port(), free_port()
        scope = [a for ns in self.namespaces for a in ("-n", ns)] if self.namespaces else ["-A"]
        argv = [sys.executable, "-m", "longvila_operator.main", *scope]
        argv += ["--metrics-port", str(self.metrics_port), "--liveness-port", str(liveness)]
        argv += ["--resync-seconds", str(self.resync_s), *self.extra_args]
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts} =====\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_pdeathsig
        )
        log.close()

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        poll("operator /healthz", healthy, timeout, interval=0.2)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown, as when its node dies."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                with contextlib.suppress(ValueError):
                    out[name] = float(value)
        return out

    def api_requests(self) -> int:
        return int(sum(v for k, v in self.metrics().items() if k.startswith("longvila_api_requests_total")))

    def cpu_seconds_and_rss(self) -> tuple[float, int]:
        """(user+system CPU seconds, resident bytes) from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / tick
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return cpu, rss
