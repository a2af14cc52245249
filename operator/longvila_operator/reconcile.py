"""One reconcile of a LongVILAJob: observed state in, actions and the new status out. Pure.

Inputs are the job as stored (its status is the operator's memory: current stage, stage
attempts, placement), the job's pods from the pod index, and the nodes. Nothing here
talks to the API; apply.py carries the Decision out, status first (so a restart counted
in status is never counted twice if the operator dies before the pods change).

Restart and rendezvous (the choice, and why): a failure restarts the whole gang as a new
attempt. Ranks whose node is healthy keep their node (placement `pinned`); only the lost
ranks move, to a spare node in the same domain when there is one. Every pod of the new
attempt carries a new PET_RDZV_ID (`<uid>-<stage>-a<attempt>`) and a new name
(`…-a<attempt>-n<rank>`). Replacing only the lost pod inside the old rendezvous would need
the survivors' torchrun agents to restart their workers, which they do not do reliably:
with the default PET_MAX_RESTARTS=0 they exit; with restarts left, surviving workers can
hang in NCCL until its timeout instead of noticing the lost peer (pytorch#111646), and
losing node rank 0 loses the c10d store the rendezvous lives in. Recreating the gang under
a fresh id is what JobSet does, avoids RendezvousClosedError loops on a reused id
(kubeflow/trainer#1638, pytorch#82160), and the trainer resumes from its last complete
checkpoint either way. Names carry the attempt, so a restart never waits for an old pod's
name to be freed, and a replayed reconcile creates nothing twice.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import children
from . import status as st
from .api.manifest import InvalidJob, Job
from .nodes import NodeInfo
from .placement import PlacedNode, Placement, Request, Unplaceable, plan, shrink
from .validation import load_job

RESTART_GRACE_SECONDS = 10  # survivors of a broken gang cannot commit a checkpoint anyway


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


def reconcile(obs: Observed) -> Decision:
    old = dict(obs.body.get("status") or {})
    d = Decision(status=copy.deepcopy(old))
    try:
        job = obs.job()
    except InvalidJob as err:
        invalid(obs, d, err)
    else:
        valid(obs, d, job)
    finish(old, d)
    return d


def invalid(obs: Observed, d: Decision, err: InvalidJob) -> None:
    """Rules CEL cannot express: a condition and an Event, never a crash loop."""
    s = d.status
    message = "invalid spec (fix it and re-apply):\n" + "\n".join(err.errors)
    s["phase"] = st.FAILED
    s["observedGeneration"] = int(obs.body.get("metadata", {}).get("generation") or 0)
    if st.set_condition(s, st.FAILED, True, "InvalidSpec", message, obs.now):
        d.warn("InvalidSpec", message)
    stop_pods(obs, d, "the spec is invalid")


def valid(obs: Observed, d: Decision, job: Job) -> None:
    s, gen = d.status, job.generation
    failed = st.condition(s, st.FAILED)
    if failed and failed.get("reason") == "InvalidSpec":  # fixed: start over
        s.pop("phase", None)
        st.set_condition(s, st.FAILED, False, "SpecValid", "the spec is valid now", obs.now, gen)
    s["observedGeneration"] = gen
    s["stages"] = st.stage_entries(s, [x.name for x in job.spec.stages])
    s.setdefault("restarts", 0)
    force_delete_on_dead_nodes(obs, d)
    if s.get("phase") in st.TERMINAL:
        stop_pods(obs, d, f"the job {s['phase'].lower()}")
        ttl(obs, d, job)
        return
    if job.spec.suspend:
        stop_pods(obs, d, "the job is suspended")
        s["phase"] = st.SUSPENDED
        st.set_condition(s, st.SUSPENDED, True, "Suspended", "spec.suspend is true: no pods", obs.now, gen)
        st.clear_condition(s, st.RUNNING, "Suspended", "suspended", obs.now, gen)
        return
    st.clear_condition(s, st.SUSPENDED, "Resumed", "spec.suspend is false", obs.now, gen)
    for _ in range(len(job.spec.stages) + 1):  # a finished stage hands over to the next at once
        if not run_stage(obs, d, job):
            return


def current_stage(d: Decision, job: Job) -> int | None:
    for i, entry in enumerate(d.status["stages"]):
        if entry["phase"] != st.SUCCEEDED:
            return i
    return None


def init_checkpoint(d: Decision, job: Job, i: int) -> str:
    """Stage i starts from stage i-1's committed checkpoint; the first from model.init."""
    if i > 0:
        return str(d.status["stages"][i - 1].get("checkpoint") or "")
    return job.spec.model.init or ""


def stored_placement(d: Decision, job: Job) -> Placement | None:
    raw = d.status.get("placement")
    if not raw or not raw.get("nodes"):
        return None
    nodes = tuple(PlacedNode(n["name"], int(n["nodeRank"]), n["domain"]) for n in raw["nodes"])
    req = dataclasses.replace(Request.from_spec(job.spec), nodes=len(nodes))
    return Placement(request=req, domain_label=str(raw.get("domainLabel", "")), nodes=nodes)


def run_stage(obs: Observed, d: Decision, job: Job) -> bool:
    """Drive the current stage one step; True when it finished and the next one should run."""
    s, gen, now = d.status, job.generation, obs.now
    i = current_stage(d, job)
    if i is None:
        s["phase"] = st.SUCCEEDED
        st.set_condition(s, st.SUCCEEDED, True, "AllStagesSucceeded", "every stage succeeded", now, gen)
        st.clear_condition(s, st.RUNNING, "Finished", "the job succeeded", now, gen)
        st.clear_condition(s, st.RESTARTING, "Finished", "the job succeeded", now, gen)
        stop_pods(obs, d, "the job succeeded")
        ttl(obs, d, job)
        return False
    stage, entry = job.spec.stages[i], s["stages"][i]
    attempt = int(entry.get("restarts") or 0)
    if s.get("stage") != stage.name:
        s["stage"] = stage.name
        s.pop("placement", None)  # each stage is placed afresh
    placement = stored_placement(d, job)
    if placement is None:
        placement = place(obs, d, job)
        if placement is None:
            return False
    mine = [p for p in obs.pods if p.stage == stage.name and p.attempt == attempt]
    stale = [p for p in obs.pods if p not in mine and not p.terminal and not p.deleting]
    for p in stale:
        d.delete.append(Delete(p.name, RESTART_GRACE_SECONDS, "an earlier attempt or stage"))
    cause = failure(obs, placement, mine)
    if cause:  # a restart goes on to create the new attempt's pods in the same decision
        return restart(obs, d, job, placement, mine, cause)
    by_rank = {p.node_rank: p for p in mine}
    n = len(placement.nodes)
    if len(by_rank) == n and all(p.phase == "Succeeded" for p in by_rank.values()):
        entry.update(phase=st.SUCCEEDED, completionTime=st.timestamp(now))
        entry["checkpoint"] = children.stage_checkpoint_uri(job, stage)
        d.info("StageSucceeded", f"stage {stage.name} succeeded; checkpoint {entry['checkpoint']}")
        s.pop("placement", None)
        return True
    missing = [r for r in range(n) if r not in by_rank]
    if missing:
        init = init_checkpoint(d, job, i)
        d.apply += [children.service(job), children.config_map(job, stage)]
        d.apply += [
            children.pod(job, stage, placement, r, attempt=attempt, init_checkpoint=init) for r in missing
        ]
    if entry["phase"] == st.PENDING:
        entry.update(phase=st.RUNNING, startTime=st.timestamp(now))
        d.info("StageStarted", f"stage {stage.name} started on {n} nodes (attempt {attempt})")
    gang(obs, d, job, placement, mine)
    running = len(by_rank) == n and all(p.phase in ("Running", "Succeeded") for p in by_rank.values())
    if running:
        s["phase"] = st.RUNNING
        entry["phase"] = st.RUNNING
        st.set_condition(s, st.RUNNING, True, "AllWorkersRunning", f"stage {stage.name}: {n} pods", now, gen)
        st.clear_condition(s, st.RESTARTING, "Recovered", "every worker is running again", now, gen)
    else:
        s["phase"] = st.RESTARTING if attempt > 0 else st.PENDING
        # No running count in the message: status is written per change, not per pod started.
        st.clear_condition(s, st.RUNNING, "WaitingForWorkers", f"waiting for {n} pods to run", now, gen)
    return False


def place(obs: Observed, d: Decision, job: Job) -> Placement | None:
    s, gen = d.status, job.generation
    try:
        placement = plan(Request.from_spec(job.spec), list(obs.nodes.values()), gpus_in_use=obs.gpus_in_use)
    except Unplaceable as err:
        s["phase"] = st.PENDING if not s.get("restarts") else st.RESTARTING
        if st.set_condition(s, st.UNSCHEDULABLE, True, "Unplaceable", str(err), obs.now, gen):
            d.warn("Unplaceable", str(err))
        d.later(5)
        return None
    s["placement"] = placement.status()
    return placement


def failure(obs: Observed, placement: Placement, mine: Sequence[PodView]) -> str:
    """Why the current attempt is broken ('' when it is not): a lost node or a failed pod."""
    done = {p.node_rank for p in mine if p.phase == "Succeeded"}
    for node in placement.nodes:
        if node.node_rank not in done and not obs.alive(node.name):
            state = "gone" if node.name not in obs.nodes else "NotReady"
            return f"node {node.name} (node rank {node.node_rank}) is {state}"
    for p in sorted(mine, key=lambda p: p.node_rank):
        if p.phase == "Failed":
            code = f"exit code {p.exit_code}" if p.exit_code is not None else "no exit code"
            return f"pod {p.name} failed ({code}{', ' + p.reason if p.reason else ''})"
        if p.deleting and p.phase != "Succeeded":
            return f"pod {p.name} was deleted or evicted{' (' + p.reason + ')' if p.reason else ''}"
    return ""


def restart(
    obs: Observed, d: Decision, job: Job, placement: Placement, mine: Sequence[PodView], cause: str
) -> bool:
    s, gen, now, fp = d.status, job.generation, obs.now, job.spec.failure_policy
    i = current_stage(d, job)
    assert i is not None
    entry = s["stages"][i]
    dead = {n.name for n in placement.nodes if not obs.alive(n.name)}
    for p in mine:
        if not p.terminal and not p.deleting:
            d.delete.append(Delete(p.name, 0 if p.node in dead else RESTART_GRACE_SECONDS, cause))
    used = int(s.get("restarts") or 0)
    if used >= fp.max_restarts or (dead and fp.node_failure == "fail"):
        why = (
            f"{cause}; maxRestarts ({fp.max_restarts}) exhausted"
            if used >= fp.max_restarts
            else f"{cause}; failurePolicy.nodeFailure is fail"
        )
        reason = "MaxRestartsExceeded" if used >= fp.max_restarts else "NodeFailure"
        fail(obs, d, job, reason, why)
        entry["phase"] = st.FAILED
        return False
    s["restarts"] = used + 1
    entry["restarts"] = int(entry.get("restarts") or 0) + 1
    entry["phase"] = st.RESTARTING
    s["phase"] = st.RESTARTING
    d.restarted = True
    req = Request.from_spec(job.spec)
    nodes = list(obs.nodes.values())
    try:
        if dead and fp.node_failure == "shrink":
            new = shrink(
                req,
                nodes,
                min_nodes=fp.min_nodes,
                exclude=dead,
                previous=[n.name for n in placement.nodes],
                gpus_in_use=obs.gpus_in_use,
            )
        else:
            pinned = {n.node_rank: n.name for n in placement.nodes if n.name not in dead}
            new = plan(
                dataclasses.replace(req, nodes=len(placement.nodes)),
                nodes,
                exclude=dead,
                pinned=pinned,
                gpus_in_use=obs.gpus_in_use,
            )
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
    message = f"restart {used + 1}/{fp.max_restarts} of stage {entry['name']}: {cause}; {moved}"
    st.set_condition(s, st.RESTARTING, True, "GangRestart", message, now, gen)
    d.warn("Restarting", message)
    return True


def fail(obs: Observed, d: Decision, job: Job, reason: str, message: str) -> None:
    s = d.status
    s["phase"] = st.FAILED
    st.set_condition(s, st.FAILED, True, reason, message, obs.now, job.generation)
    st.clear_condition(s, st.RUNNING, reason, "the job failed", obs.now, job.generation)
    st.clear_condition(s, st.RESTARTING, reason, "the job failed", obs.now, job.generation)
    d.warn(reason, message)


def gang(obs: Observed, d: Decision, job: Job, placement: Placement, mine: Sequence[PodView]) -> None:
    """Never hang silently: pods not all bound within gangTimeoutSeconds → the scheduler's reason."""
    s, gen = d.status, job.generation
    timeout = float(job.spec.scheduling.gang_timeout_seconds)
    n = len(placement.nodes)
    unbound = [p for p in mine if not p.node]
    if len(mine) == n and not unbound:
        st.clear_condition(s, st.UNSCHEDULABLE, "AllScheduled", f"{n} pods bound", obs.now, job.generation)
        return
    created = [t for p in mine if (t := st.parse_time(p.created))]
    if not created:
        return
    waited = (obs.now - min(created)).total_seconds()
    if waited < timeout:
        d.later(timeout - waited)
        return
    stuck = next((p for p in unbound if p.unscheduled), unbound[0] if unbound else None)
    why = stuck.unscheduled if stuck and stuck.unscheduled else "no reason from the scheduler yet"
    message = (
        f"{len(unbound) + n - len(mine)} of {n} pods not scheduled after {int(waited)}s "
        f"(gangTimeoutSeconds {int(timeout)}); {stuck.name if stuck else 'a pod'}: {why}"
    )
    if st.set_condition(s, st.UNSCHEDULABLE, True, "GangTimeout", message, obs.now, gen):
        d.warn("GangTimeout", message)


def stop_pods(obs: Observed, d: Decision, why: str) -> None:
    queued = {x.name for x in d.delete}
    for p in obs.pods:
        if not p.terminal and not p.deleting and p.name not in queued:
            d.delete.append(Delete(p.name, None, why))


def force_delete_on_dead_nodes(obs: Observed, d: Decision) -> None:
    """No kubelet will ever finish these (kubeflow/trainer#2072): delete with grace 0."""
    for p in obs.pods:
        if p.node and not obs.alive(p.node) and (p.deleting or not p.terminal):
            d.delete.append(Delete(p.name, 0, f"node {p.node} is not Ready"))


def ttl(obs: Observed, d: Decision, job: Job) -> None:
    seconds = job.spec.ttl_seconds_after_finished
    if seconds is None:
        return
    done = st.condition(d.status, st.SUCCEEDED if d.status.get("phase") == st.SUCCEEDED else st.FAILED)
    since = st.parse_time(done.get("lastTransitionTime") if done else None)
    if since is None:
        return
    left = seconds - (obs.now - since).total_seconds()
    if left <= 0:
        d.delete_job = True
        d.info("TTLExpired", f"deleting the job {seconds}s after it finished")
    else:
        d.later(left)


def finish(old: Mapping[str, Any], d: Decision) -> None:
    """An Event for every phase transition (the specific Events above say why)."""
    before, after = old.get("phase"), d.status.get("phase")
    if before != after and after is not None:
        kind = "Warning" if after in (st.FAILED, st.RESTARTING) else "Normal"
        d.events.append(Event(kind, f"Phase{after}", f"phase {before or 'new'} → {after}"))
    # Deletes are idempotent but need not be sent twice in one decision; grace 0 wins.
    best: dict[str, Delete] = {}
    for x in d.delete:
        if x.name not in best or (x.grace == 0 and best[x.name].grace != 0):
            best[x.name] = x
    d.delete = list(best.values())
