"""What one reconcile sees (Observed, PodView) and what it decides (Decision). Pure data.

apply.py carries a Decision out: status first (so a restart counted in status is never
counted twice if the operator dies before the pods change), then applies, deletes, Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .api.manifest import InvalidJob, Job
from .nodes import NodeInfo
from .validation import load_job
from .workload import WorkloadView


@dataclass(frozen=True)
class PodView:
    """What the reconcile needs from one child pod (see handlers.pod_view)."""

    name: str
    stage: str
    attempt: int
    node_rank: int
    node: str = ""  # spec.nodeName once bound
    phase: str = "Pending"
    deleting: bool = False
    exit_code: int | None = None
    reason: str = ""  # status.reason (Evicted…) or the container's terminated reason
    unscheduled: str = ""  # PodScheduled=False message from the scheduler
    created: str = ""
    gated: bool = False  # Kueue still holds it (scheduling gate kueue.x-k8s.io/admission)
    queue: str = ""  # its kueue.x-k8s.io/queue-name label

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


@dataclass(frozen=True)
class Delete:
    name: str
    grace: int | None  # None: the pod's own terminationGracePeriodSeconds
    why: str


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    status: dict[str, Any]
    apply: list[dict[str, Any]] = field(default_factory=list)
    delete: list[Delete] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    restarted: bool = False
    requeue_after: float | None = None

    def warn(self, reason: str, message: str) -> None:
        self.events.append(Event("Warning", reason, message))

    def info(self, reason: str, message: str) -> None:
        self.events.append(Event("Normal", reason, message))

    def later(self, seconds: float) -> None:
        seconds = max(seconds, 0.5)
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


@dataclass(frozen=True)
class Observed:
    body: Mapping[str, Any]  # the LongVILAJob as stored
    pods: Sequence[PodView]
    nodes: Mapping[str, NodeInfo]
    now: datetime
    gpus_in_use: Mapping[str, int] = field(default_factory=dict)  # by other workloads
    parsed: Job | InvalidJob | None = None  # load_job(body), when the caller already has it
    workloads: Mapping[str, WorkloadView] = field(default_factory=dict)  # Kueue's, by name, in the namespace

    def job(self) -> Job:
        """The typed job; raises InvalidJob. The spec is fixed per generation, so callers cache it."""
        if self.parsed is None:
            return load_job(self.body)
        if isinstance(self.parsed, InvalidJob):
            raise self.parsed
        return self.parsed

    def alive(self, node: str) -> bool:
        info = self.nodes.get(node)
        return info is not None and info.ready
