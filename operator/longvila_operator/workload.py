"""A Kueue Workload as the reconcile sees it (the shell's index holds these). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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


def workload_view(body: Mapping[str, Any]) -> WorkloadView:
    """A Workload (kueue.x-k8s.io v1beta1 or v1beta2: their conditions agree) as a WorkloadView."""
    status = body.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}

    def true(ctype: str) -> bool:
        return (conds.get(ctype) or {}).get("status") == "True"

    admitted = true("Admitted")
    why: Mapping[str, Any] = {}
    if not admitted:  # the most telling condition first
        for ctype, value in (("Evicted", "True"), ("QuotaReserved", "False"), ("Admitted", "False")):
            if (conds.get(ctype) or {}).get("status") == value:
                why = conds[ctype]
                break
    return WorkloadView(
        name=str((body.get("metadata") or {}).get("name", "")),
        admitted=admitted,
        finished=true("Finished"),
        reason=str(why.get("reason") or ""),
        message=str(why.get("message") or ""),
        cluster_queue=str((status.get("admission") or {}).get("clusterQueue") or ""),
        admitted_at=str((conds.get("Admitted") or {}).get("lastTransitionTime") or "") if admitted else "",
    )
