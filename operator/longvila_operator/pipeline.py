"""The stage pipeline: stages run in order, each from the previous stage's committed
checkpoint; a stage is placed, its pods created, and it succeeds when every worker exits 0.
Pure (see reconcile.py)."""

from __future__ import annotations

import dataclasses

from . import children, naming, progress, queueing
from . import status as st
from .api.manifest import Job
from .decision import Decision, Delete, Observed
from .failures import RESTART_GRACE_SECONDS, Evidence, Settle, classify
from .lifecycle import gang, stop_pods, ttl
from .placement import PlacedNode, Placement, Request, Unplaceable, plan
from .restart import restart


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
    n = len(placement.nodes)
    group = naming.group_name(job.name, stage.name, attempt)
    hung = progress.check(obs, job, mine, n, progress.stored_for(s, stage.name, attempt), d)
    ev = Evidence(
        obs, job, placement, mine, hang=hung.message if hung else "", hang_reason=hung.reason if hung else "",
        workload=obs.workloads.get(group),
    )  # fmt: skip
    verdict = classify(ev)
    if isinstance(verdict, Settle):  # a pod failed; is a node behind it? status unchanged until known
        d.later(1.0)
        return False
    if verdict is not None:  # a restart goes on to create the new attempt's pods in the same decision
        return restart(obs, d, job, i, placement, mine, verdict)
    by_rank = {p.node_rank: p for p in mine}
    if len(by_rank) == n and all(p.phase == "Succeeded" for p in by_rank.values()):
        entry.update(phase=st.SUCCEEDED, completionTime=st.timestamp(now))
        progress.finished(d, stage.name, now)
        entry["checkpoint"] = children.stage_checkpoint_uri(job, stage)
        d.info("StageSucceeded", f"stage {stage.name} succeeded; checkpoint {entry['checkpoint']}")
        s.pop("placement", None)
        return True
    missing = [r for r in range(n) if r not in by_rank]
    if missing and (wait := queueing.leftover(obs, group, mine)):
        st.clear_condition(s, st.RUNNING, "WaitingForKueue", wait, now, gen)
        d.later(1)
        return False
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
    progress.update(obs, d, job, stage.name, attempt, mine, n)
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
    queueing.admission(obs, d, job, group, mine, n, queueing.requeued(s, stage.name, attempt))
    return False


def place(obs: Observed, d: Decision, job: Job) -> Placement | None:
    s, gen = d.status, job.generation
    lost = {name for name in obs.nodes if obs.lost(name)}  # e.g. a silent heartbeat, not yet NotReady
    try:
        placement = plan(
            Request.from_spec(job.spec), list(obs.nodes.values()), exclude=lost, gpus_in_use=obs.gpus_in_use
        )
    except Unplaceable as err:
        s["phase"] = st.PENDING if not s.get("restarts") else st.RESTARTING
        if st.set_condition(s, st.UNSCHEDULABLE, True, "Unplaceable", str(err), obs.now, gen):
            d.warn("Unplaceable", str(err))
        d.later(5)
        return None
    s["placement"] = placement.status()
    return placement
