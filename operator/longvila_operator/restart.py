"""Failures and restarts: what broke the current attempt, and a gang restart as a new attempt
with the lost ranks moved (or the job failed when the policy or the budget says so). Pure;
the reasons for restarting the whole gang under a new rendezvous id are in reconcile.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from . import status as st
from .api.manifest import Job
from .decision import Decision, Delete, Observed, PodView
from .placement import Placement, Request, Unplaceable, plan, shrink

RESTART_GRACE_SECONDS = 10  # survivors of a broken gang cannot commit a checkpoint anyway


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
    obs: Observed, d: Decision, job: Job, i: int, placement: Placement, mine: Sequence[PodView], cause: str
) -> bool:
    """Restart stage i's gang as a new attempt (True: go on and create its pods), or fail the job."""
    s, gen, now, fp = d.status, job.generation, obs.now, job.spec.failure_policy
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
