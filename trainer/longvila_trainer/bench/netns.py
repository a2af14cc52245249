"""Network namespaces that cannot outlive the benchmark (the shell around netsim.py).

The namespaces are anonymous: created with unshare(CLONE_NEWNET) and held only by file
descriptors of this process (never bound under /run/netns), and by the rank processes that
entered them, which die with this process (PR_SET_PDEATHSIG). The kernel destroys a
network namespace when its last holder goes, and a veth pair with it, so every exit path,
SIGKILL of the benchmark included, leaves nothing behind, and there is nothing stale to
clean at the next start. The host's own interfaces, `lo` included, are never touched, so
other people's processes on this machine see no change.

ip and tc run inside a namespace through nsenter on /proc/self/fd/N (the fd passed to
the child). Linux only; needs root (CAP_SYS_ADMIN for unshare/setns, CAP_NET_ADMIN for tc).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from .netsim import (
    IFACE,
    TwoTier,
    parse_class_bytes,
    port_commands,
    rank_commands,
    rate_commands,
    switch_commands,
    veth_command,
)

CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
TOOLS = ("ip", "tc", "nsenter")


class NetnsError(RuntimeError):
    """The simulated network cannot be built here; the message is one line saying why."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def why_not() -> str | None:
    """None when namespaces can be built here, else one line naming what is missing."""
    if not sys.platform.startswith("linux"):
        return f"needs Linux network namespaces, this is {sys.platform}"
    if os.geteuid() != 0:
        return "needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN) to create network namespaces and tc qdiscs"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} on PATH (iproute2 and util-linux)"
    try:
        os.close(new_namespace())
    except OSError as e:
        return f"cannot create a network namespace: {e.strerror} (a container without CAP_SYS_ADMIN?)"
    return None


def new_namespace() -> int:
    """A new, empty network namespace; returns an fd that holds it (close it to let it go).

    unshare moves only the calling thread, which is put back at once; the fd keeps the new
    namespace alive with no name anywhere.
    """
    libc = _libc()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        try:
            return os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                os.abort()  # this thread could not go home: nothing it did next would be safe
    finally:
        os.close(home)


def run_in(fd: int, argv: list[str], *extra_fds: int) -> str:
    """Runs argv inside the namespace held by fd and returns its output; NetnsError with
    ip/tc's own message on failure."""
    p = subprocess.run(
        ["nsenter", f"--net=/proc/self/fd/{fd}", *argv],
        pass_fds=(fd, *extra_fds),
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        msg = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise NetnsError(f"{' '.join(argv)}: {msg}")
    return p.stdout


def enter(path: str) -> None:
    """Moves the calling thread (call it first thing in a fresh process) into a namespace."""
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (so no rank keeps a namespace alive)."""
    parent = os.getppid()
    if _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class SimulatedNetwork:
    """The namespaces of one TwoTier layout: a switch and one namespace per rank.

    Use as a context manager; `path(rank)` is what a rank process passes to `enter`.
    `set_rates` reshapes every rank's two classes in place (connections stay up).
    """

    def __init__(self, net: TwoTier) -> None:
        self.net = net
        self._fds: list[int] = []  # [switch, rank 0, rank 1, ...]

    def __enter__(self) -> SimulatedNetwork:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        switch = new_namespace()
        self._fds.append(switch)
        for cmd in switch_commands():
            run_in(switch, cmd)
        for rank in range(self.net.world):
            fd = new_namespace()
            self._fds.append(fd)
            run_in(fd, veth_command(rank, f"/proc/self/fd/{switch}"), switch)
            for cmd in port_commands(rank):
                run_in(switch, cmd)
            for cmd in rank_commands(self.net, rank):
                run_in(fd, cmd)

    def path(self, rank: int) -> str:
        return f"/proc/{os.getpid()}/fd/{self._fds[1 + rank]}"

    def inodes(self) -> list[int]:
        """The namespaces' inode numbers (net:[N] in /proc/*/ns/net), for checking they are gone."""
        return [os.fstat(fd).st_ino for fd in self._fds]

    def set_rates(self, fast_mbs: float, ratio: float) -> None:
        self.net = self.net.with_rates(fast_mbs, ratio)
        for fd in self._fds[1:]:
            for cmd in rate_commands(self.net):
                run_in(fd, cmd)

    def tc_class_bytes(self, rank: int) -> dict[str, int]:
        """Bytes the kernel sent through each of the rank's classes ("1:10" fast, "1:20" slow)."""
        return parse_class_bytes(run_in(self._fds[1 + rank], ["tc", "-s", "class", "show", "dev", IFACE]))

    def close(self) -> None:
        """Drops this process's hold; the kernel frees each namespace once its ranks are gone."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []


def holders(inodes: list[int]) -> dict[int, list[int]]:
    """pid -> namespace inodes (of `inodes`) it still holds, as its own namespace or an open fd.

    Scans /proc; used by the tests and the benchmark's exit check. Processes that vanish
    while being read are skipped.
    """
    wanted = {f"net:[{i}]" for i in inodes}
    found: dict[int, list[int]] = {}
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        links = [f"/proc/{pid}/ns/net"]
        try:
            links += [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target in wanted:
                found.setdefault(pid, []).append(int(target[5:-1]))
    return found


@contextmanager
def signals_exit() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit (so `with` blocks unwind, as Ctrl-C does)."""

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    old = {s: signal.signal(s, _raise) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
