"""Starts, records and stops the cluster's processes, leaving no orphan behind.

Every process runs in its own session (process group) with its output in logs/<name>.log,
and is recorded in state.json with its command line. `stop_recorded` kills exactly the
recorded processes whose /proc cmdline still matches, so a stale state file after a crash
never kills an unrelated process that reused a pid. With `die_with_parent`, children also
get PR_SET_PDEATHSIG, so a test run killed with SIGKILL takes its cluster with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass(frozen=True)
class Recorded:
    name: str
    pid: int
    argv0: str


KILL_WAIT_S = 10.0


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [p.decode(errors="replace") for p in raw.split(b"\0") if p]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


class Supervisor:
    """Owns the processes of one cluster directory."""

    def __init__(self, run_dir: Path, die_with_parent: bool = False) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.state_file = run_dir / "state.json"
        self.die_with_parent = die_with_parent
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _record(self) -> None:
        data = {n: {"pid": p.pid, "argv0": str(p.args[0])} for n, p in self.procs.items()}  # type: ignore[index]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state_file)

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        preexec: Callable[[], None] | None = _pdeathsig if self.die_with_parent else None
        self.procs[name] = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            preexec_fn=preexec,
            cwd=self.run_dir,
        )
        log.close()
        self._record()

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
                raise RuntimeError(f"{name} exited with {p.returncode}; last log lines:\n" + "\n".join(tail))

    def recorded(self) -> list[Recorded]:
        if not self.state_file.exists():
            return []
        data = json.loads(self.state_file.read_text())
        return [Recorded(n, int(v["pid"]), str(v["argv0"])) for n, v in data.items()]

    def stop_recorded(self, timeout: float = 10.0) -> list[str]:
        """Stops every recorded process (and its group); returns the names stopped."""
        stopped = []
        targets = [r for r in self.recorded() if _alive(r.pid) and _cmdline(r.pid)[:1] == [r.argv0]]
        # Reverse start order: clients (kwok, scheduler) before the apiserver, etcd last.
        for r in reversed(targets):
            try:
                os.killpg(r.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            stopped.append(r.name)
        deadline = time.monotonic() + timeout
        for r in targets:
            while _alive(r.pid) and time.monotonic() < deadline:
                self._reap(r.pid)
                time.sleep(0.05)
            if _alive(r.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(r.pid, signal.SIGKILL)
                # SIGKILL lands only when an uninterruptible (disk) wait ends: on a loaded
                # machine that takes a moment, and `down` promises nothing is left running.
                killed = time.monotonic() + KILL_WAIT_S
                while _alive(r.pid) and time.monotonic() < killed:
                    self._reap(r.pid)
                    time.sleep(0.05)
            self._reap(r.pid)
        self.state_file.unlink(missing_ok=True)
        self.procs.clear()
        return stopped

    def _reap(self, pid: int) -> None:
        for p in self.procs.values():
            if p.pid == pid:
                p.poll()
                return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def processes_in(run_dir: Path) -> list[tuple[int, str]]:
    """Live processes working inside run_dir (we start every process there; versitygw moves to s3/)."""
    found = []
    target = run_dir.resolve()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if cwd.is_relative_to(target) and _alive(int(entry.name)):
            found.append((int(entry.name), " ".join(_cmdline(int(entry.name)))))
    return found
