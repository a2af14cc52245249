"""The job's lifecycle around its stages: the gang-scheduling timeout (from Kueue's admission when
queued), stopping pods
(suspend, finish, invalid spec), pods stranded on dead nodes, and TTL after finishing. Pure."""

from __future__ import annotations

from collections.abc import Sequence

from . import naming, queueing
from . import status as st
from .api.manifest import Job
from .decision import Decision, Delete, Observed, PodView
from .placement import Placement


def gang(obs: Observed, d: Decision, job: Job, placement: Placement, mine: Sequence[PodView]) -> None:
    """Never hang silently: pods not all bound within gangTimeoutSeconds → the scheduler's reason."""
    s, gen = d.status, job.generation
    timeout = float(job.spec.scheduling.gang_timeout_seconds)
    n = len(placement.nodes)
    unbound = [p for p in mine if not p.node]
    if len(mine) == n and not unbound:
        st.clear_condition(s, st.UNSCHEDULABLE, "AllScheduled", f"{n} pods bound", obs.now, job.generation)
        return
    if any(p.gated for p in mine):
        return  # Kueue holds the group (queueing.admission reports why); the clock starts at admission
    created = [t for p in mine if (t := st.parse_time(p.created))]
    if not created:
        return
    group = naming.group_name(job.name, mine[0].stage, mine[0].attempt)
    admitted = st.parse_time(queueing.admitted_at(obs, group))
    start = max(min(created), admitted) if admitted else min(created)
    waited = (obs.now - start).total_seconds()
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
