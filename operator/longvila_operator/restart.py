"""Acting on a classified failure (failures.py): count it by class, then restart the gang as
a new attempt with the lost ranks moved, or fail the job when its class is permanent, the
policy says so, or its budget is spent; a preempted gang goes back to the queue as a new
attempt without spending any budget. Pure; the reasons for restarting the whole gang under a
new rendezvous id are in reconcile.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import status as st
from .api.manifest import Job
from .decision import Decision, Delete, Observed, PodView
from .failures import SCHEDULER_PREEMPTED, Failure, spent
from .placement import Placement, Request, Unplaceable, plan, shrink

BUDGET_FIELDS = {  # failurePolicy JSON name → JobSpec.failure_policy attribute
    "maxRestarts": "max_restarts",
    "maxNodeLossRestarts": "max_node_loss_restarts",
    "maxDisruptionRestarts": "max_disruption_restarts",
}


def record(obs: Observed, d: Decision, job: Job, i: int, failure: Failure, action: str) -> str:
    """Count the failure in status (failures by class, lastFailure) and say it in an Event."""
    s, entry, cls = d.status, d.status["stages"][i], failure.cls
    counts = dict(s.get("failures") or {})
    counts[cls.name] = int(counts.get(cls.name, 0)) + 1
    s["failures"] = counts
    message = failure.finding.message
    s["lastFailure"] = {
        "class": cls.name,
        "reason": failure.finding.reason,
        "message": message[: st.MAX_MESSAGE],
        "time": st.timestamp(obs.now),
        "stage": entry["name"],
        "attempt": int(entry.get("restarts") or 0),
        "action": action,
    }
    return message


def restart(
    obs: Observed,
    d: Decision,
    job: Job,
    i: int,
    placement: Placement,
    mine: Sequence[PodView],
    failure: Failure,
) -> bool:
    """Restart stage i's gang as a new attempt (True: go on and create its pods), or fail the job."""
    s, fp = d.status, job.spec.failure_policy
    entry, cls = s["stages"][i], failure.cls
    dead = set(failure.lost)
    for p in mine:
        if not p.terminal and not p.deleting:
            d.delete.append(Delete(p.name, 0 if p.node in dead else cls.grace, failure.finding.message))
    used = spent(s.get("failures") or {}, cls.budget) if cls.budget else 0
    limit = getattr(fp, BUDGET_FIELDS[cls.budget]) if cls.budget else 0
    cause = f"{cls.name}: {failure.finding.message}"
    if cls.requeue:
        record(obs, d, job, i, failure, "Requeue")
        return requeue(obs, d, job, i, placement, mine, failure)
    if cls.budget is None:
        why = record(obs, d, job, i, failure, "Fail")
        fail(obs, d, job, cls.name, f"stage {entry['name']} cannot succeed: {why}")
    elif dead and fp.node_failure == "fail":
        record(obs, d, job, i, failure, "Fail")
        fail(obs, d, job, "NodeFailure", f"{cause}; failurePolicy.nodeFailure is fail")
    elif used >= limit:
        record(obs, d, job, i, failure, "Fail")
        fail(obs, d, job, "MaxRestartsExceeded", f"{cause}; failurePolicy.{cls.budget} ({limit}) spent")
    else:
        record(obs, d, job, i, failure, "Restart")
        what = f"restart {used + 1}/{limit} ({cls.budget}) of stage {entry['name']}: {cause}"
        return replan(obs, d, job, i, placement, dead, cls.name, what)
    entry["phase"] = st.FAILED
    return False


def requeue(
    obs: Observed,
    d: Decision,
    job: Job,
    i: int,
    placement: Placement,
    mine: Sequence[PodView],
    failure: Failure,
) -> bool:
    """A preempted gang: a new attempt, queued again where Kueue queues the job (True: create its pods).

    Its pods form a new pod group, so a new Workload that waits in the job's LocalQueue; the
    preempted group's Workload finishes once its pods are gone (never refilled, queueing.py).
    The ranks keep their nodes where those are still free; the trainer resumes from the
    stage's last complete checkpoint. No budget is spent: preemption can repeat as often as
    the cluster's priorities say, and each one is counted in status.failures.Preempted."""
    entry = d.status["stages"][i]
    queue = job.queue or next((p.queue for p in mine if p.queue), "")
    # A rank the scheduler preempted moves: its node is promised to the higher-priority pod.
    taken = {p.node for p in mine if p.node and p.disruption == SCHEDULER_PREEMPTED}
    attempt = int(entry.get("restarts") or 0) + 1
    message = f"attempt {attempt} of stage {entry['name']} resumes from its last checkpoint"
    if queue:  # the condition's reason names the class
        message = f"{failure.finding.message}; {message} once LocalQueue {queue} admits it again"
    else:
        message = f"{failure.cls.name}: {failure.finding.message}; {message}"
    return replan(
        obs, d, job, i, placement, taken, failure.cls.name, message, queued=bool(queue), shrink_ok=False
    )


def replan(
    obs: Observed,
    d: Decision,
    job: Job,
    i: int,
    placement: Placement,
    dead: set[str],
    reason: str,
    what: str,
    *,
    queued: bool = False,
    shrink_ok: bool = True,
) -> bool:
    """The new attempt's placement: survivors keep their nodes, lost ranks move (or the job shrinks).

    `queued`: the attempt goes back to Kueue's queue (phase Queued, condition Admitted=False
    with the failure's class as its reason) instead of Restarting."""
    s, fp, entry = d.status, job.spec.failure_policy, d.status["stages"][i]
    s["restarts"] = int(s.get("restarts") or 0) + 1
    entry["restarts"] = int(entry.get("restarts") or 0) + 1
    entry["phase"] = st.RESTARTING
    s["phase"] = st.QUEUED if queued else st.RESTARTING
    d.restarted = True
    req = Request.from_spec(job.spec)
    nodes = list(obs.nodes.values())
    try:
        if dead and shrink_ok and fp.node_failure == "shrink":
            new = shrink(req, nodes, min_nodes=fp.min_nodes, exclude=dead,
                         previous=[n.name for n in placement.nodes], gpus_in_use=obs.gpus_in_use)  # fmt: skip
        else:
            pinned = {n.node_rank: n.name for n in placement.nodes if n.name not in dead}
            new = plan(dataclasses.replace(req, nodes=len(placement.nodes)), nodes, exclude=dead,
                       pinned=pinned, gpus_in_use=obs.gpus_in_use)  # fmt: skip
    except Unplaceable as err:
        s.pop("placement", None)  # placed afresh once nodes come back
        moved = f"no replacement yet: {err}"
    else:
        s["placement"] = new.status()
        moves = [
            f"rank {a.node_rank}: {a.name} → {b.name}"
            for a, b in zip(placement.nodes, new.nodes, strict=False)
            if a.name != b.name
        ]
        if len(new.nodes) != len(placement.nodes):
            moves.append(f"shrunk from {len(placement.nodes)} to {len(new.nodes)} nodes")
        moved = "; ".join(moves) or "same nodes"
    message = f"{what}; {moved}"
    if queued:  # a preemption is no fault: a Normal Event, and no Restarting condition to recover from
        st.set_condition(s, st.ADMITTED, False, reason, message, obs.now, job.generation)
        st.clear_condition(s, st.RUNNING, reason, "back in the queue", obs.now, job.generation)
        d.info(reason, message)
        return True
    st.set_condition(s, st.RESTARTING, True, "GangRestart", message, obs.now, job.generation)
    d.warn(reason, message)  # one Event per restart, named for the failure class
    return True


def fail(obs: Observed, d: Decision, job: Job, reason: str, message: str) -> None:
    s = d.status
    s["phase"] = st.FAILED
    st.set_condition(s, st.FAILED, True, reason, message, obs.now, job.generation)
    st.clear_condition(s, st.RUNNING, reason, "the job failed", obs.now, job.generation)
    st.clear_condition(s, st.RESTARTING, reason, "the job failed", obs.now, job.generation)
    d.warn(reason, message)
