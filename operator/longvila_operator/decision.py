"""What one reconcile sees (Observed, PodView) and what it decides (Decision). Pure data.

apply.py carries a Decision out: status first (so a restart counted in status is never
counted twice if the operator dies before the pods change), then applies, deletes, Events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
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
    ip: str = ""  # status.podIP
    started: str = ""  # the container's running (or terminated) startedAt
    finished: str = ""  # the container's terminated finishedAt
    message: str = ""  # the container's termination message (the trainer's one line, exits.py)
    waiting: str = ""  # the container's waiting reason (ErrImagePull, ImagePullBackOff…)
    waiting_message: str = ""
    disruption: str = ""  # reason of a DisruptionTarget=True condition (EvictionByEvictionAPI…)
    stopped: str = ""  # reason of Kueue's TerminationTarget=True condition (WorkloadEvictedDueToPreempted…)
    stop_message: str = ""  # the message of that condition, or of DisruptionTarget

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
class Heartbeat:
    """A node's Lease (kube-node-lease/<node>), the kubelet's heartbeat."""

    renewed: datetime  # spec.renewTime, by the node's clock
    seen: datetime  # when the operator saw that renewal, by its own clock (no skew in "how long ago")


@dataclass(frozen=True)
class Sample:
    """Global rank 0's progress metrics, scraped by the operator (scrape.py; progress.py reads it)."""

    pod: str  # the pod scraped (node rank 0 of an attempt)
    step: int
    max_steps: int
    loss: float | None
    tokens_per_second: float | None
    step_seconds: float | None
    checkpoint_step: int
    steps: int  # steps the scraped process completed: 0 while it starts up
    scraped: datetime  # the last successful scrape
    advanced: datetime  # when (steps, checkpoint_step) last changed, as the operator saw it


@dataclass(frozen=True)
class Observed:
    body: Mapping[str, Any]  # the LongVILAJob as stored
    pods: Sequence[PodView]
    nodes: Mapping[str, NodeInfo]
    now: datetime
    gpus_in_use: Mapping[str, int] = field(default_factory=dict)  # by other workloads
    parsed: Job | InvalidJob | None = None  # load_job(body), when the caller already has it
    workloads: Mapping[str, WorkloadView] = field(default_factory=dict)  # Kueue's, by name, in the namespace
    heartbeats: Mapping[str, Heartbeat] = field(default_factory=dict)  # by node name
    heartbeat_grace: float = 20.0  # seconds without a renewal before a node counts as lost
    progress: Sample | None = None  # the newest sample of the job's rank-0 pod
    scrape_error: str = ""  # why the last scrape of that pod failed ("" when it answered)
    progress_interval: float = 5.0  # status.progress is rewritten at most this often

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

    def silent(self, node: str) -> float | None:
        """Seconds since the operator saw the node's Lease renewed; None without a Lease."""
        hb = self.heartbeats.get(node)
        return None if hb is None else (self.now - hb.seen).total_seconds()

    def lost(self, node: str) -> str:
        """Why the node counts as lost ('' when it does not): gone, NotReady, or silent too long.

        The heartbeat is the early sign: a dead kubelet stops renewing its Lease at once,
        while Ready turns False only after the node lifecycle controller's grace period
        (40-50 s by default)."""
        info = self.nodes.get(node)
        if info is None:
            return "gone"
        if not info.ready:
            return "NotReady"
        silent = self.silent(node)
        if silent is not None and silent > self.heartbeat_grace:
            return f"silent: its Lease was last renewed {silent:.0f}s ago"
        return ""

    def heard_after(self, node: str, when: datetime) -> bool:
        """Has the node renewed its Lease after `when` (a failure's time, by a kubelet's clock)?

        Times in pod status have whole seconds, so one second of margin."""
        hb = self.heartbeats.get(node)
        return hb is not None and hb.renewed > when + timedelta(seconds=1)
