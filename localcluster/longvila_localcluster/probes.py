"""Small waits on cluster state shared by tests, the smoke demo and benchmarks."""

from __future__ import annotations

import socket
import ssl
import time
import urllib.error
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Calls fn until it returns something truthy; raises TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def node_ready(core: Any, name: str) -> str:
    node = core.read_node(name)
    return next((c.status for c in node.status.conditions or [] if c.type == "Ready"), "Unknown")


def gpu_pod(name: str, gpus: int, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod that asks the scheduler for `gpus` nvidia.com/gpu (a training worker's shape)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "worker",
                "image": "registry.invalid/longvila-trainer:smoke",
                "resources": {
                    "limits": {"nvidia.com/gpu": str(gpus)},
                    "requests": {"nvidia.com/gpu": str(gpus)},
                },
            }
        ],
        "restartPolicy": "Never",
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def unschedulable_reason(pod: Any) -> str | None:
    for c in pod.status.conditions or []:
        if c.type == "PodScheduled" and c.status == "False":
            return f"{c.reason}: {c.message}"
    return None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(what: str, check: Callable[[], bool], timeout: float, alive: Callable[[], None]) -> None:
    """poll() for a starting server: its own process must stay alive, and a connection it
    refuses (not listening yet) counts as not ready."""

    def attempt() -> bool:
        alive()
        try:
            return check()
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    poll(what, attempt, timeout)
