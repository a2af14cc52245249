"""Failure classes: what broke an attempt, found before anything restarts. Pure.

One record per class (CLASSES): how it is detected, which failurePolicy budget its restarts
spend (None: the job fails at once, unless the class requeues), and the grace the broken
gang's pods get. `classify` asks the detectors in table order and the first match wins, as
JobSet's failure-policy rules do; a new class is one more record placed before the more
general one it refines (Preempted before Disrupted).

Preemption is no fault of the job: Kueue evicted its Workload for a higher-priority one (or
to reclaim a cohort's quota), or the scheduler evicted a pod for a higher-priority pod. The
gang goes back to the queue as a new attempt, spending no budget, and resumes from its last
complete checkpoint once admitted again (restart.requeue).

One fault, one restart. A node that dies takes its pods silently (no kubelet reports
them), and the surviving pods fail a second later when their collectives lose the peer,
while the node still counts as Ready for the node lifecycle controller's grace period.
Restarting on the survivor's failure would keep the lost rank on the dead node and cost
a second restart. So a worker failure is believed only once every node still running a
pod of the gang has been heard from after it (its Lease renewed, proof its kubelet is
alive); a node that stays silent past the heartbeat grace is lost, and the gang restarts
once, as NodeLost, with that rank moved (`Settle` while neither is known).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from longvila_contract import exits

from . import status as st
from .api.manifest import Job
from .decision import Observed, PodView
from .placement import Placement
from .workload import WorkloadView

RESTART_GRACE_SECONDS = 5  # survivors of a broken gang cannot commit a checkpoint; their GPUs free sooner
SETTLE_SLACK_SECONDS = 5.0  # beyond the heartbeat grace, for nodes that have no Lease
EVICTED = ("Evicted", "Preempting", "Terminated", "Shutdown", "NodeShutdown")  # pod status.reason
PULL_NOW = ("InvalidImageName", "ErrImageNeverPull")  # never fixed by waiting
PULL_LATER = ("ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError")  # may be, for a while
KUEUE_PREEMPTED = "WorkloadEvictedDueToPreempted"  # Kueue's TerminationTarget reason on a preempted group
SCHEDULER_PREEMPTED = "PreemptionByScheduler"  # kube-scheduler's DisruptionTarget reason on its victims


@dataclass(frozen=True)
class Evidence:
    """What the detectors look at: the current attempt of the current stage."""

    obs: Observed
    job: Job
    placement: Placement
    pods: Sequence[PodView]  # this attempt's
    hang: str = ""  # why progress.hang thinks the gang is hung ('' when it does not)
    hang_reason: str = ""
    workload: WorkloadView | None = None  # Kueue's Workload of this attempt's pod group, if any

    @property
    def lost(self) -> dict[str, str]:
        """Placed nodes that count as lost, by name (ranks that already succeeded excluded)."""
        done = {p.node_rank for p in self.pods if p.phase == "Succeeded"}
        out = {}
        for n in self.placement.nodes:
            why = self.obs.lost(n.name) if n.node_rank not in done else ""
            if why:
                out[n.name] = why
        return out

    @property
    def broken(self) -> list[PodView]:
        """Pods that stopped or are being stopped without having succeeded."""
        return [p for p in self.pods if p.phase == "Failed" or (p.deleting and p.phase != "Succeeded")]

    def failed(self) -> list[PodView]:
        """Failed pods, the first to finish first (the root cause; the others react to it)."""
        return sorted((p for p in self.pods if p.phase == "Failed"), key=lambda p: (p.finished, p.node_rank))


@dataclass(frozen=True)
class Finding:
    reason: str  # what gave it away, CamelCase
    message: str
    since: datetime | None = None  # when the failure happened (for the settle window)


@dataclass(frozen=True)
class FailureClass:
    name: str
    detected: str  # how, in words (docs/failures.md has the table)
    budget: str | None  # failurePolicy field whose restarts it spends; None: fail the job at once
    detect: Callable[[Evidence], Finding | None]
    settles: bool = False  # a node loss looks like this at first: hear from every node before believing it
    grace: int | None = RESTART_GRACE_SECONDS  # grace of the broken gang's surviving pods
    requeue: bool = False  # not the job's fault: back to the queue as a new attempt, no budget spent

    @property
    def application(self) -> bool:
        """Spends the application budget (JobSet: rules that do not ignore maxRestarts)."""
        return self.budget == "maxRestarts"


@dataclass(frozen=True)
class Failure:
    cls: FailureClass
    finding: Finding
    lost: Mapping[str, str]  # nodes to move the ranks off, with why


@dataclass(frozen=True)
class Settle:
    """A pod failed but a node of the gang has not been heard from since: ask again later."""

    waiting_for: tuple[str, ...]
    until: datetime


def rank_of(ev: Evidence, node: str) -> int:
    return next(n.node_rank for n in ev.placement.nodes if n.name == node)


def node_lost(ev: Evidence) -> Finding | None:
    lost = ev.lost
    hard = {n: why for n, why in lost.items() if not why.startswith("silent")}
    # A silent heartbeat alone restarts nothing (a slow kubelet is not a dead one); it says
    # which node a failure came from.
    pick = hard or (lost if ev.broken else {})
    if not pick:
        return None
    name = sorted(pick, key=lambda n: rank_of(ev, n))[0]
    why = pick[name]
    reason = {"gone": "NodeGone", "NotReady": "NodeNotReady"}.get(why, "HeartbeatMissed")
    return Finding(reason, f"node {name} (node rank {rank_of(ev, name)}) is {why}")


def preempted(ev: Evidence) -> Finding | None:
    """Kueue preempted the attempt's Workload, or the scheduler preempted one of its pods."""
    done = {p.node_rank for p in ev.pods if p.phase == "Succeeded"}
    if len(done) == len(ev.placement.nodes):
        return None  # it finished first: nothing to resume
    wl = ev.workload
    if wl is not None and wl.preempted_by_kueue:  # also when its pods are gone before we saw them
        why = f": {wl.eviction_message}" if wl.eviction_message else ""
        return Finding(wl.preempted or wl.evicted, f"Kueue preempted Workload {wl.name}{why}")
    for p in sorted(ev.pods, key=lambda p: p.node_rank):
        if p.phase == "Succeeded":
            continue
        if p.stopped == KUEUE_PREEMPTED:
            why = f": {p.stop_message}" if p.stop_message else ""
            return Finding("Preempted", f"Kueue preempted the pod group of {p.name}{why}")
        if p.disruption == SCHEDULER_PREEMPTED:
            why = f" ({p.stop_message})" if p.stop_message else ""
            return Finding(SCHEDULER_PREEMPTED, f"pod {p.name} was preempted by the scheduler{why}")
    return None


def disrupted(ev: Evidence) -> Finding | None:
    for p in sorted(ev.pods, key=lambda p: p.node_rank):
        if p.phase == "Succeeded":
            continue
        if p.stopped:  # Kueue evicted the group for another reason (a stopped queue, PodsReady timeout…)
            why = f": {p.stop_message}" if p.stop_message else ""
            return Finding(p.stopped, f"Kueue stopped pod {p.name} ({p.stopped}){why}")
        if p.disruption:
            return Finding("DisruptionTarget", f"pod {p.name} is being disrupted ({p.disruption})")
        if p.phase == "Failed" and p.reason in EVICTED:
            return Finding(p.reason, f"pod {p.name} failed: {p.reason}")
        if p.deleting:  # the operator deletes the current attempt's pods only after counting a failure
            return Finding("Deleted", f"pod {p.name} was deleted by someone else")
    return None


def permanent(ev: Evidence) -> Finding | None:
    for p in ev.failed():
        if exits.is_permanent(p.message):
            return Finding("TerminationMessage", f"pod {p.name}: {p.message.strip().splitlines()[0]}")
    grace = ev.job.spec.failure_policy.image_pull_grace_seconds
    for p in sorted(ev.pods, key=lambda p: p.node_rank):
        created = st.parse_time(p.created)
        waited = (ev.obs.now - created).total_seconds() if created else 0.0
        if p.waiting in PULL_NOW or (p.waiting in PULL_LATER and waited >= grace):
            detail = f": {p.waiting_message}" if p.waiting_message else ""
            return Finding(p.waiting, f"pod {p.name}: {p.waiting} for {waited:.0f}s{detail}")
    return None


def oom_killed(ev: Evidence) -> Finding | None:
    for p in ev.failed():
        if p.reason == "OOMKilled":
            return Finding("OOMKilled", f"pod {p.name} was OOMKilled (exit code {p.exit_code})", since_of(p))
    return None


def worker_crash(ev: Evidence) -> Finding | None:
    failed = ev.failed()
    if not failed:
        return None
    p = failed[0]
    code = f"exit code {p.exit_code}" if p.exit_code is not None else "no exit code"
    said = exits.classify(p.message)
    tail = said[1] if said else (p.message.strip().splitlines() or [""])[-1]
    detail = f": {tail[:500]}" if tail else ""
    return Finding("ExitCode", f"pod {p.name} failed ({code}{', ' + p.reason if p.reason else ''}){detail}",
                   since_of(p))  # fmt: skip


def hang(ev: Evidence) -> Finding | None:
    return Finding(ev.hang_reason or "NoProgress", ev.hang) if ev.hang else None


def since_of(p: PodView) -> datetime | None:
    return st.parse_time(p.finished) or None


CLASSES: tuple[FailureClass, ...] = (
    FailureClass(
        "NodeLost",
        "a placed node is NotReady or gone; or, when a pod broke, a node has not renewed its Lease "
        "for the heartbeat grace",
        "maxNodeLossRestarts",
        node_lost,
        grace=RESTART_GRACE_SECONDS,
    ),
    FailureClass(
        "Preempted",
        "Kueue preempted the attempt's Workload (Evicted=True reason Preempted, its Preempted condition, "
        "or TerminationTarget=True reason WorkloadEvictedDueToPreempted on a pod), or the scheduler "
        "preempted a pod (DisruptionTarget=True reason PreemptionByScheduler)",
        None,
        preempted,
        requeue=True,
    ),
    FailureClass(
        "Disrupted",
        "a pod has DisruptionTarget=True (eviction, taint manager) or Kueue's TerminationTarget=True "
        "(a Kueue eviction other than preemption), failed as Evicted/Preempting/Shutdown, or was deleted "
        "by someone else",
        "maxDisruptionRestarts",
        disrupted,
    ),
    FailureClass(
        "PermanentError",
        "a failed pod's termination message is the trainer's `longvila-train: error:` line, or a pod "
        "cannot pull its image or build its container for imagePullGraceSeconds",
        None,
        permanent,
    ),
    FailureClass(
        "OOMKilled", "a failed pod's container was OOMKilled", "maxRestarts", oom_killed, settles=True
    ),
    FailureClass(
        "Hang",
        "no first step within startupTimeoutSeconds of the gang running, or no new step or checkpoint "
        "for hangTimeoutSeconds (rank 0's metrics)",
        "maxRestarts",
        hang,
        grace=0,  # a hung collective never reaches a checkpoint; SIGTERM would only wait
    ),
    FailureClass("WorkerCrash", "any other failed pod", "maxRestarts", worker_crash, settles=True),
)
BY_NAME = {c.name: c for c in CLASSES}


def classify(ev: Evidence) -> Failure | Settle | None:
    """The first class whose detector matches; Settle while a worker failure may still be a node loss."""
    for cls in CLASSES:
        found = cls.detect(ev)
        if found is None:
            continue
        if cls.settles and found.since is not None:
            wait = unheard(ev, found.since)
            if wait:
                return Settle(
                    wait, found.since + timedelta(seconds=ev.obs.heartbeat_grace + SETTLE_SLACK_SECONDS)
                )
        lost = ev.lost if cls.name == "NodeLost" else {}
        return Failure(cls, found, lost)
    return None


def unheard(ev: Evidence, since: datetime) -> tuple[str, ...]:
    """Nodes running a pod of the gang whose Lease has not been renewed since `since`.

    Nodes without a Lease in view cannot be heard from and are not waited for; the window is
    capped in case a Lease stops changing without its node being lost."""
    cap = since + timedelta(seconds=ev.obs.heartbeat_grace + SETTLE_SLACK_SECONDS)
    if ev.obs.now >= cap:
        return ()
    nodes = {p.node for p in ev.pods if p.node and not p.terminal and not p.deleting}
    return tuple(sorted(n for n in nodes if n in ev.obs.heartbeats and not ev.obs.heard_after(n, since)))


def spent(failures: Mapping[str, int], budget: str) -> int:
    """Restarts already spent from one budget: the failures of every class that draws on it."""
    return sum(int(failures.get(c.name, 0)) for c in CLASSES if c.budget == budget)
