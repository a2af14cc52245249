"""Status of a LongVILAJob as plain dicts (the stored camelCase shape). Pure.

Conditions follow metav1.Condition: `lastTransitionTime` moves only when `status` flips,
so recomputing the same status from the same observed state gives the same dict, and the
shell writes it only when it differs from what is stored ("written once per change").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from longvila_contract.status import (
    ADMITTED,
    CONDITION_TYPES,
    FAILED,
    PENDING,
    QUEUED,
    RESTARTING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
    UNSCHEDULABLE,
)

__all__ = [
    "ADMITTED", "CONDITION_TYPES", "FAILED", "PENDING", "QUEUED", "RESTARTING", "RUNNING", "SUCCEEDED",
    "SUSPENDED", "TERMINAL", "UNSCHEDULABLE",
]  # fmt: skip
MAX_MESSAGE = 4000  # conditions and Events stay readable (and under the CRD's bound)


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def condition(status: Mapping[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in status.get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return None


def is_true(status: Mapping[str, Any], ctype: str) -> bool:
    c = condition(status, ctype)
    return c is not None and c.get("status") == "True"


def set_condition(
    status: dict[str, Any],
    ctype: str,
    value: bool,
    reason: str,
    message: str,
    now: datetime,
    generation: int | None = None,
) -> bool:
    """Set one condition in place; returns True when its status flipped (or it is new)."""
    conds = [dict(c) for c in status.get("conditions") or []]
    text = "True" if value else "False"
    for c in conds:
        if c.get("type") == ctype:
            flipped = c.get("status") != text
            if flipped:
                c["lastTransitionTime"] = timestamp(now)
            c.update(status=text, reason=reason, message=message[:MAX_MESSAGE])
            if generation is not None:
                c["observedGeneration"] = generation
            break
    else:
        flipped = True
        new: dict[str, Any] = {
            "type": ctype,
            "status": text,
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "lastTransitionTime": timestamp(now),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        conds.append(new)
    order = {t: i for i, t in enumerate(CONDITION_TYPES)}
    status["conditions"] = sorted(conds, key=lambda c: (order.get(c["type"], len(order)), c["type"]))
    return flipped


def clear_condition(
    status: dict[str, Any], ctype: str, reason: str, message: str, now: datetime, generation: int | None
) -> bool:
    """Set a condition False, but only if it exists (no False conditions for things never seen)."""
    if condition(status, ctype) is None:
        return False
    return set_condition(status, ctype, False, reason, message, now, generation)


def stage_entries(status: Mapping[str, Any], names: list[str]) -> list[dict[str, Any]]:
    """status.stages in spec order: existing entries kept, missing ones Pending."""
    known = {s["name"]: dict(s) for s in status.get("stages") or []}
    return [known.get(n) or {"name": n, "phase": PENDING, "restarts": 0} for n in names]


def differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return dict(old or {}) != dict(new)


def only_messages(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Do old and new differ only in condition messages (same types, statuses, reasons)?

    Such a change carries counts that move with every node event (free nodes per domain
    while a gang waits for nodes): worth writing, but not on every event.
    """
    old = dict(old or {})

    def bare(status: Mapping[str, Any]) -> dict[str, Any]:
        conds = [{k: v for k, v in c.items() if k != "message"} for c in status.get("conditions") or []]
        return {**status, "conditions": conds}

    return differs(old, new) and bare(old) == bare(new)


def merge_patch(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) turning `old` into `new`.

    A merge patch merges objects recursively, so a key gone from a nested object (say
    status.progress.loss after a restart) must be sent as null, or the stored one stays.
    Lists are replaced whole.
    """
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = (old or {}).get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            patch[key] = merge_patch(before, value)
        else:
            patch[key] = copy.deepcopy(value)
    for key in old or {}:
        if key not in new:
            patch[key] = None
    return patch


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """What the API server does with a merge patch (RFC 7386), for tests and checks."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = apply_merge_patch(out.get(key), value)
    return out
