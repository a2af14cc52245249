"""The preemption run's objects, report and verdict: Kueue preempts a training job for a
higher-priority one, the preempted job queues again and resumes. Pure (preemption_run.py runs it).

Two copies of one training job (2 nodes × 1 process, ring 2, a checkpoint every step) in one
LocalQueue whose ClusterQueue holds one of them at a time and preempts lower priorities:

| job | priority (WorkloadPriorityClass) | what happens |
|---|---|---|
| `preempt-low` | 100 | trains; preempted after a few steps; Queued; admitted again, resumes |
| `preempt-high` | 1000 | created while `low` trains; Kueue preempts `low` for it; trains to the end |

`high` is never interrupted, so its losses are the reference for every step `low` logged,
before and after the preemption (the chaos run's check, chaos.LOSS_TOLERANCE).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import chaos

KUEUE, KV = "kueue.x-k8s.io", "v1beta2"
LOW, HIGH = "preempt-low", "preempt-high"
PRIORITIES = {LOW: 100, HIGH: 1000}
FLAVOR = "preempt-gpu"
QUEUE = "lq"


def priority_class(job: str, namespace: str) -> str:
    return f"{namespace}-{job}"


def queue_objects(namespace: str, gpus: int) -> list[dict[str, Any]]:
    """ResourceFlavor, a ClusterQueue of `gpus` GPUs that preempts lower priorities, the
    LocalQueue and one WorkloadPriorityClass per job (cluster-scoped names carry the namespace)."""
    quota = [{"name": "nvidia.com/gpu", "nominalQuota": gpus}]
    objs: list[dict[str, Any]] = [
        {"apiVersion": f"{KUEUE}/{KV}", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}},
        {
            "apiVersion": f"{KUEUE}/{KV}",
            "kind": "ClusterQueue",
            "metadata": {"name": namespace},
            "spec": {
                "namespaceSelector": {},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [
                    {
                        "coveredResources": ["nvidia.com/gpu"],
                        "flavors": [{"name": FLAVOR, "resources": quota}],
                    }
                ],
            },
        },
        {
            "apiVersion": f"{KUEUE}/{KV}",
            "kind": "LocalQueue",
            "metadata": {"name": QUEUE, "namespace": namespace},
            "spec": {"clusterQueue": namespace},
        },
    ]
    objs += [
        {
            "apiVersion": f"{KUEUE}/{KV}",
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": priority_class(job, namespace)},
            "value": value,
        }
        for job, value in PRIORITIES.items()
    ]
    return objs


def job(name: str, namespace: str, *, steps: int, model: Mapping[str, str], weights: str, bucket: str,
        endpoint: str) -> dict[str, Any]:  # fmt: skip
    """The chaos run's training job in the queue, at its priority; GPUs are all the quota covers.
    `model`'s file:// URIs lie in `weights`, mounted into the pods as a hostPath volume."""
    body = chaos.job(name, nodes=2, steps=steps, hang_timeout=120, model=model, weights=weights,
                     bucket=bucket, endpoint=endpoint, bad_stage=False)  # fmt: skip
    body["metadata"]["namespace"] = namespace
    spec = body["spec"]
    spec["scheduling"].update(queueName=QUEUE, workloadPriorityClassName=priority_class(name, namespace))
    spec["resources"] = {"sharedMemory": "1Gi"}
    return body


@dataclass
class PreemptionReport:
    steps: int
    preempt_after: int
    marks: dict[str, float] = field(default_factory=dict)  # seconds since the start, by event
    reference: dict[int, float] = field(default_factory=dict)  # high's loss per step
    losses: dict[str, dict[int, float]] = field(default_factory=dict)  # low's, attempt prefix → step → loss
    resumes: list[tuple[int, bool]] = field(default_factory=list)  # low's: (step, complete when loaded)
    low: dict[str, Any] = field(default_factory=dict)  # low's final status
    high: dict[str, Any] = field(default_factory=dict)
    requeued: dict[str, Any] = field(default_factory=dict)  # low's Admitted condition while it queued again
    preempted_at_step: int = 0  # low's last logged step before the preemption
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def verdict(r: PreemptionReport) -> list[str]:
    """Everything that should hold after the run; [] when it all does."""
    problems = []
    if r.low.get("phase") != "Succeeded" or r.high.get("phase") != "Succeeded":
        problems.append(f"phases: low {r.low.get('phase')}, high {r.high.get('phase')}; both should succeed")
    if r.low.get("failures") != {"Preempted": 1} or int(r.low.get("restarts") or 0) != 1:
        problems.append(f"low: failures {r.low.get('failures')}, restarts {r.low.get('restarts')}; "
                        "expected one Preempted requeue and nothing else")  # fmt: skip
    last = r.low.get("lastFailure") or {}
    if last.get("action") != "Requeue" or "Preempted to accommodate" not in str(last.get("message")):
        problems.append(f"low's lastFailure is not Kueue's preemption: {last}")
    if r.high.get("failures") or int(r.high.get("restarts") or 0):
        problems.append(f"high restarted: {r.high.get('failures')}, {r.high.get('restarts')} restarts")
    if r.requeued.get("reason") != "Preempted" or "requeued after Preempted" not in r.requeued.get(
        "message", ""
    ):
        problems.append(f"low was not seen Queued with reason Preempted and Kueue's words: {r.requeued}")
    if not 0 < r.preempted_at_step < r.steps:
        problems.append(f"low was preempted after step {r.preempted_at_step} of {r.steps}, not mid-run")
    steps = {s for by_step in r.losses.values() for s in by_step}
    if steps != set(range(1, r.steps + 1)) or set(r.reference) != steps:
        problems.append(f"steps logged: low {sorted(steps)}, high {sorted(r.reference)}; want 1..{r.steps}")
    for attempt, by_step in sorted(r.losses.items()):
        for step, loss in sorted(by_step.items()):
            want = r.reference.get(step)
            if want is None or abs(loss - want) > chaos.LOSS_TOLERANCE:
                problems.append(f"{attempt} step {step}: loss {loss}, uninterrupted (high) {want}")
    if len(r.resumes) != 1 or not all(ok and step >= 1 for step, ok in r.resumes):
        problems.append(f"low's resumes {r.resumes}: expected one, from a complete checkpoint")
    problems += [f"left behind: {x}" for x in r.leftovers]
    return problems


FIGURES = (  # (label, from mark, to mark)
    ("high created → low counted Preempted", "high_created", "preempted"),
    ("high created → high's first step", "high_created", "high_training"),
    ("high Succeeded → low admitted again", "high_done", "low_admitted"),
    ("high Succeeded → low resumed from S3", "high_done", "low_resumed"),
    ("high Succeeded → low's first step again", "high_done", "low_training"),
    ("preempted → training again (low's next step)", "preempted", "low_training"),
)


def figures(r: PreemptionReport) -> list[dict[str, Any]]:
    """Seconds between the run's marks (docs/benchmarks.md)."""
    out = []
    for label, a, b in FIGURES:
        if a in r.marks and b in r.marks:
            out.append({"figure": label, "seconds": round(r.marks[b] - r.marks[a], 1)})
    return out
