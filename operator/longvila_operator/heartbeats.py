"""Node heartbeats: the Leases in kube-node-lease, watched in a thread, read by the reconcile.

A kubelet renews its node's Lease every leaseDurationSeconds/4 (10 s by default); a dead
node stops at once, long before the node lifecycle controller's grace period (40-50 s) turns
it NotReady. failures.py uses that to tell a node loss from the worker failures it causes.

kopf watches only the operator's own namespaces, and the Leases live in kube-node-lease,
so this is a plain list + watch with the kubernetes client, resumed from its
resourceVersion and re-listed when that expires (410 Gone). When the watch is down the
snapshot is empty: the reconcile then falls back to the Ready condition alone rather than
mistake a broken watch for silent nodes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .decision import Heartbeat

NAMESPACE = "kube-node-lease"
WATCH_SECONDS = 60  # server-side end of each watch; a quiet, silently dead connection lasts no longer
log = logging.getLogger("longvila.operator.heartbeats")


class Heartbeats:
    def __init__(self, api_client: Any, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        from kubernetes import client

        self.api: Any = client.CoordinationV1Api(api_client)
        self.clock = clock
        self.lock = threading.Lock()
        self.beats: dict[str, Heartbeat] = {}
        self.connected = False  # a list succeeded and its watch is open
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def snapshot(self) -> dict[str, Heartbeat]:
        """The nodes' last renewals; {} while the watch is down (no news is not bad news then)."""
        with self.lock:
            return dict(self.beats) if self.connected else {}

    def observe(self, name: str, renewed: datetime | None) -> None:
        if renewed is None:
            return
        with self.lock:
            old = self.beats.get(name)
            if old is None or old.renewed != renewed:
                self.beats[name] = Heartbeat(renewed=renewed.astimezone(UTC), seen=self.clock())

    def forget(self, name: str) -> None:
        with self.lock:
            self.beats.pop(name, None)

    def run(self) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        warned = False
        while not self.stopping.is_set():
            try:
                listed = self.api.list_namespaced_lease(NAMESPACE)
                for lease in listed.items:
                    self.observe(lease.metadata.name, lease.spec.renew_time)
                with self.lock:
                    self.connected = True
                version = listed.metadata.resource_version
                while not self.stopping.is_set():
                    w: Any = watch.Watch()  # type: ignore[no-untyped-call]
                    limits = {"timeout_seconds": WATCH_SECONDS, "_request_timeout": WATCH_SECONDS + 30}
                    for event in w.stream(
                        self.api.list_namespaced_lease, NAMESPACE, resource_version=version, **limits
                    ):
                        lease = event["object"]
                        if event["type"] == "DELETED":
                            self.forget(lease.metadata.name)
                        else:
                            self.observe(lease.metadata.name, lease.spec.renew_time)
                        version = lease.metadata.resource_version
                        if self.stopping.is_set():
                            w.stop()
                warned = False
            except ApiException as e:
                if e.status != 410 and not warned:  # 410: the resourceVersion expired; list again
                    log.warning("cannot watch node Leases in %s (%s); using Ready alone", NAMESPACE, e.reason)
                    warned = True
                self.down(0.0 if e.status == 410 else 5.0)
            except Exception as e:  # a dropped connection: list again shortly
                log.info("node Lease watch ended (%s); listing again", e)
                self.down(1.0)

    def down(self, pause: float) -> None:
        with self.lock:
            self.connected = False
        self.stopping.wait(pause)

    def start(self) -> Heartbeats:
        self.thread = threading.Thread(target=self.run, name="node-leases", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=1.0)  # a daemon: an open stream need not end first
