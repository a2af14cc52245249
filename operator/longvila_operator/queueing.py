"""Queueing through Kueue: each stage attempt's pods are one Kueue pod group. Pure.

The route (why, and what Kueue does, in docs/kueue.md): Kueue's plain-pod integration, as
pod groups. Every pod of an attempt carries the group's name (label), its size (annotation)
and, when the job names a LocalQueue, the queue-name label. Kueue's webhook then gates each
pod (scheduling gate kueue.x-k8s.io/admission); once the whole group exists Kueue creates a
Workload named after the group, queues it, and on admission lifts the gates together, so
the scheduler places all of the gang or none of it. The operator keeps its own placement:
pods are still pinned by required node affinity on metadata.name.

Two annotations bend Kueue's defaults to a gang that is restarted as a new attempt:
- role-hash `workers` on every pod: Kueue otherwise derives a pod's role from its spec, and
  pods pinned to different nodes differ, so a group of N pods would become N PodSets (a
  Workload holds at most 8). One role = one PodSet of N pods, as Kueue's own StatefulSet and
  LeaderWorkerSet integrations set it.
- retriable-in-group "false": the operator never refills a broken group (a restart is a new
  attempt, so a new group and a new Workload), so Kueue may finish the Workload and release
  its quota as soon as the group's pods are gone, instead of holding it for replacements.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from longvila_contract import labels as K

from . import naming
from . import status as st
from .api.manifest import Job
from .decision import Decision, Observed, PodView

ROLE = "workers"  # the group's one PodSet, as Kueue's messages name it


def group_metadata(job: Job, stage: str, attempt: int, nnodes: int) -> tuple[dict[str, str], dict[str, str]]:
    """Labels and annotations that make one attempt's pods a Kueue pod group.

    Set on every job's pods: without a queue (and a Kueue that manages the namespace) they
    change nothing, and where Kueue queues pods anyway (a namespace default LocalQueue,
    manageJobsWithoutQueueName) they keep the gang whole instead of N single-pod Workloads.
    """
    lbls = {K.KUEUE_GROUP: naming.group_name(job.name, stage, attempt)}
    if job.queue:
        lbls[K.KUEUE_QUEUE] = job.queue
    if job.spec.scheduling.workload_priority_class_name:
        lbls[K.KUEUE_PRIORITY_CLASS] = job.spec.scheduling.workload_priority_class_name
    annotations = {K.KUEUE_GROUP_TOTAL: str(nnodes), K.KUEUE_ROLE: ROLE, K.KUEUE_RETRIABLE: "false"}
    return lbls, annotations


def leftover(obs: Observed, group: str, mine: Sequence[PodView]) -> str:
    """Why the group's pods must not be created yet ('' when they may).

    A suspended and resumed attempt reuses its pod names, so its group name: Kueue would
    attach the new pods to the old, finished Workload, which is never admitted again. Its
    owners were the old pods, so the garbage collector removes it right after them.
    """
    wl = obs.workloads.get(group)
    if wl is not None and wl.finished and not mine:
        return f"Kueue's finished Workload {group} of the earlier pods is still being removed"
    return ""


def requeued(status: Mapping[str, Any], stage: str, attempt: int) -> Mapping[str, Any] | None:
    """The failure that sent this attempt back to the queue (a preemption), if one did."""
    last = status.get("lastFailure") or {}
    back = last.get("action") == "Requeue" and last.get("stage") == stage
    return last if back and int(last.get("attempt", -1)) == attempt - 1 else None


def admission(
    obs: Observed, d: Decision, job: Job, group: str, mine: Sequence[PodView], n: int,
    after: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Queued (phase and Admitted=False with Kueue's reason) while Kueue holds the group; Admitted after.

    `after`: the preemption that requeued this attempt (requeued()). Until Kueue admits the new
    group the job stays Queued, also while its pods are being created, and the condition's
    reason stays the preemption's class, with Kueue's current reason in the message."""
    s, gen, now = d.status, job.generation, obs.now
    wl = obs.workloads.get(group)
    queue = job.queue or next((p.queue for p in mine if p.queue), "")
    after = after if queue else None  # without Kueue a preempted gang is rescheduled, not queued
    if not any(p.gated for p in mine) and not (after and len(mine) < n):
        if wl is not None and wl.admitted:
            message = f"Workload {group} admitted by ClusterQueue {wl.cluster_queue or '?'}"
            if st.set_condition(s, st.ADMITTED, True, "Admitted", message, now, gen):
                d.info("Admitted", message)
        return
    s["phase"] = st.QUEUED
    if not mine:  # the requeued attempt's pods are being created: the requeue's condition stands
        return
    if wl is None:
        reason, why = "Queued", f"waiting for Kueue's Workload {group} ({len(mine)} pods in the group)"
    else:
        reason, why = wl.reason or "Queued", wl.message or "waiting for Kueue to admit it"
    message = f"LocalQueue {queue or '(namespace default)'}: Workload {group}: {why}"
    if after:
        reason = str(after.get("class") or reason)
        message += f" (requeued after {reason}: {after.get('message', '')})"
    if st.set_condition(s, st.ADMITTED, False, reason, message, now, gen):
        d.info("Queued", message)


def admitted_at(obs: Observed, group: str) -> str:
    """When Kueue admitted the group ('' if it never queued it): the gang timeout starts there."""
    wl = obs.workloads.get(group)
    return wl.admitted_at if wl is not None else ""
