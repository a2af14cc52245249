"""A Kueue Workload as the reconcile sees it (the shell's index holds these). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The Workload's Evicted condition reason when Kueue preempted it (kueue v1beta2
# WorkloadEvictedByPreemption); its Preempted condition then says why (InClusterQueue,
# InCohortReclamation, InCohortFairSharing, InCohortReclaimWhileBorrowing).
EVICTED_BY_PREEMPTION = "Preempted"


@dataclass(frozen=True)
class WorkloadView:
    """What the reconcile needs from one Kueue Workload (see workload_view below)."""

    name: str
    admitted: bool = False
    finished: bool = False
    reason: str = ""  # why it is not admitted: Kueue's condition reason (Pending, Inadmissible …)
    message: str = ""  # … and message (e.g. insufficient unused quota for nvidia.com/gpu …)
    cluster_queue: str = ""
    admitted_at: str = ""  # the Admitted condition's lastTransitionTime
    uid: str = ""
    evicted: str = ""  # reason of Evicted=True (Preempted, PodsReadyTimeout, ClusterQueueStopped …)
    preempted: str = ""  # reason of Preempted=True (InClusterQueue, InCohort…)
    eviction_message: str = ""  # Kueue's words, e.g. "Preempted to accommodate a workload (UID: …) …"

    @property
    def preempted_by_kueue(self) -> bool:
        return self.evicted == EVICTED_BY_PREEMPTION or bool(self.preempted)


def workload_view(body: Mapping[str, Any]) -> WorkloadView:
    """A Workload (kueue.x-k8s.io v1beta1 or v1beta2: their conditions agree) as a WorkloadView."""
    status = body.get("status") or {}
    meta = body.get("metadata") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}

    def true(ctype: str) -> Mapping[str, Any]:
        c = conds.get(ctype) or {}
        return c if c.get("status") == "True" else {}

    admitted = bool(true("Admitted"))
    why: Mapping[str, Any] = {}
    if not admitted:  # the most telling condition first
        for ctype, value in (("Evicted", "True"), ("QuotaReserved", "False"), ("Admitted", "False")):
            if (conds.get(ctype) or {}).get("status") == value:
                why = conds[ctype]
                break
    evicted, preempted = true("Evicted"), true("Preempted")
    return WorkloadView(
        name=str(meta.get("name", "")),
        admitted=admitted,
        finished=bool(true("Finished")),
        reason=str(why.get("reason") or ""),
        message=str(why.get("message") or ""),
        cluster_queue=str((status.get("admission") or {}).get("clusterQueue") or ""),
        admitted_at=str((conds.get("Admitted") or {}).get("lastTransitionTime") or "") if admitted else "",
        uid=str(meta.get("uid", "")),
        evicted=str(evicted.get("reason") or ""),
        preempted=str(preempted.get("reason") or ""),
        eviction_message=str(preempted.get("message") or evicted.get("message") or ""),
    )
