"""One reconcile of a LongVILAJob: observed state in, actions and the new status out. Pure.

Inputs are the job as stored (its status is the operator's memory: current stage, stage
attempts, placement), the job's pods from the pod index, and the nodes. Nothing here
talks to the API; apply.py carries the Decision out (decision.py). The policies live in
one file each: the stage pipeline (pipeline.py), failures and restarts (restart.py), and
the job's lifecycle: suspend, TTL, gang timeout, stopping pods (lifecycle.py).

Restart and rendezvous (the choice, and why; restart.py carries it out): a failure
restarts the whole gang as a new attempt. Ranks whose node is healthy keep their node
(placement `pinned`); only the lost ranks move, to a spare node in the same domain when
there is one. Every pod of the new attempt carries a new PET_RDZV_ID
(`<uid>-<stage>-a<attempt>`) and a new name (`…-a<attempt>-n<rank>`). Replacing only the
lost pod inside the old rendezvous would need the survivors' torchrun agents to restart
their workers, which they do not do reliably: with the default PET_MAX_RESTARTS=0 they
exit; with restarts left, surviving workers can hang in NCCL until its timeout instead of
noticing the lost peer (pytorch#111646), and losing node rank 0 loses the c10d store the
rendezvous lives in. Recreating the gang under a fresh id is what JobSet does, avoids
RendezvousClosedError loops on a reused id (kubeflow/trainer#1638, pytorch#82160), and the
trainer resumes from its last complete checkpoint either way. Names carry the attempt, so
a restart never waits for an old pod's name to be freed, and a replayed reconcile creates
nothing twice.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from . import status as st
from .api.manifest import InvalidJob, Job
from .decision import Decision, Delete, Event, Observed
from .lifecycle import force_delete_on_dead_nodes, stop_pods, ttl
from .pipeline import run_stage

__all__ = ["Decision", "Observed", "reconcile"]


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
        st.clear_condition(s, st.ADMITTED, "Suspended", "suspended: no pods, no Workload", obs.now, gen)
        return
    st.clear_condition(s, st.SUSPENDED, "Resumed", "spec.suspend is false", obs.now, gen)
    if s.get("phase") == st.SUSPENDED and any(p.deleting for p in obs.pods):
        # Resumed before the suspended pods are gone (grace period, Kueue's finalizer): they
        # are no failure, and the resumed attempt reuses their names. Wait for them.
        d.later(1)
        return
    for _ in range(len(job.spec.stages) + 1):  # a finished stage hands over to the next at once
        if not run_stage(obs, d, job):
            return


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
