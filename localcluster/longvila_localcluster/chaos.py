"""The chaos run's plan and its verdict: which faults, when, and what must hold afterwards. Pure.

One LongVILAJob meets a sequence of faults, one of each kind per round, at times drawn from
a seed (chaos_run.py injects them on the local cluster with the pod runner):

| fault | how | expected class (status.failures) |
|---|---|---|
| node-loss | the node of a random rank stops its heartbeats; its processes die | NodeLost |
| worker-kill | SIGKILL of one worker process of a random rank | WorkerCrash |
| hang | SIGSTOP of one worker process of a random rank | Hang |
| operator-kill | SIGKILL of the operator, started again a moment later | none |
| s3-restart | S3 killed and started again while a checkpoint uploads | none: the store's retries absorb it |
| bad-override | the last stage sets an override only the trainer refuses | PermanentError, the job Failed |

Then: restarts per class equal the faults injected; every step's loss equals an
uninterrupted run's (≤ 1e-6); every resume loaded a complete checkpoint; no pod or process
of the job is left.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("node-loss", "worker-kill", "hang", "operator-kill", "s3-restart")  # in stage 1, per round
EXPECTED: dict[str, str | None] = {
    "node-loss": "NodeLost",
    "worker-kill": "WorkerCrash",
    "hang": "Hang",
    "operator-kill": None,
    "s3-restart": None,
    "bad-override": "PermanentError",
}
LOSS_TOLERANCE = 1e-6
BAD_DATA = "no-such-dataset"  # the bad override's short mix: a prefix of the job's bucket holding nothing


@dataclass(frozen=True)
class Planned:
    fault: str
    after_steps: int  # steps of training (since the last recovery) before it strikes
    node_rank: int  # whose node or worker it hits (node-loss, worker-kill, hang)


def plan(seed: int, rounds: int, nodes: int, most_steps: int = 2) -> list[Planned]:
    """Each round: every fault once, in an order, after a number of steps (1..most_steps) and
    at a rank drawn from the seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(rounds):
        order = list(FAULTS)
        rng.shuffle(order)
        out += [Planned(f, rng.randint(1, most_steps), rng.randrange(nodes)) for f in order]
    return out


def steps_needed(planned: Sequence[Planned]) -> int:
    """Stage 1's length: room for every fault, the restart after it and a few steps at the end."""
    return sum(p.after_steps + 1 for p in planned) + 3


def expected_failures(planned: Sequence[Planned]) -> dict[str, int]:
    counts = Counter(EXPECTED[p.fault] for p in planned)
    counts[EXPECTED["bad-override"]] += 1
    return {k: v for k, v in counts.items() if k is not None}


def bad_override(bucket: str) -> dict[str, Any]:
    """A short mix from a dataset that is not there: the trainer refuses it (no restart helps)."""
    return {"data.short_uri": f"s3://{bucket}/{BAD_DATA}", "data.short_fraction": 0.25}


def job(name: str, *, nodes: int, steps: int, hang_timeout: int, model: Mapping[str, str], weights: str,
        bucket: str, endpoint: str, bad_stage: bool) -> dict[str, Any]:  # fmt: skip
    """nodes × 1 process, ring attention across them, a checkpoint every step; optionally a
    second stage that the trainer refuses (the bad override). `model`'s file:// URIs lie in
    `weights`, this machine's directory, mounted into every pod as a hostPath volume."""
    common = {"model.tokenizer": "tiny", "train.grad_accum": 1, "train.lr": 1.0e-3,
              "train.micro_batch_tokens": 512, "data.synthetic.samples": 16}  # fmt: skip
    stage = {"type": "long-video-sft", "contextLength": 1024, "ropeTheta": 100000, "frames": 8,
             "data": "synthetic://long-video"}  # fmt: skip
    stages = [{"name": "train", "maxSteps": steps, **stage, "overrides": common}]
    if bad_stage:
        stages.append(
            {"name": "bad", "maxSteps": 2, **stage, "overrides": {**common, **bad_override(bucket)}}
        )
    return {
        "apiVersion": "longvila.io/v1alpha1",
        "kind": "LongVILAJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "image": "longvila/trainer:0.1.0",
            "model": dict(model),
            "volumes": [{"name": "weights", "hostPath": {"path": weights, "type": "Directory"}}],
            "volumeMounts": [{"name": "weights", "mountPath": weights, "readOnly": True}],
            "topology": {"nodes": nodes, "gpusPerNode": 1, "sequenceParallel": {"ulysses": 1, "ring": nodes}},
            "checkpoint": {
                "uri": f"s3://{bucket}/{name}",
                "everySteps": 1,
                "keep": 2,
                "credentialsSecret": "longvila-s3",
                "endpoint": endpoint,
            },
            "stages": stages,
            "failurePolicy": {
                "maxRestarts": 10,
                "hangTimeoutSeconds": hang_timeout,
                "startupTimeoutSeconds": 300,
                "collectiveTimeoutSeconds": 600,
            },
            "scheduling": {"gangTimeoutSeconds": 60},
            "resources": {"cpu": "1", "memory": "4Gi", "sharedMemory": "1Gi"},
        },
    }


@dataclass
class Injected:
    fault: str
    at: float  # seconds since the run started
    target: str = ""  # node or pod it hit
    detected_s: float | None = None  # fault → the operator counted it (status.failures)
    training_s: float | None = None  # fault → the next training step finished
    note: str = ""


@dataclass
class ChaosReport:
    seed: int
    injected: list[Injected] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    phase: str = ""
    failed_message: str = ""
    losses: dict[str, dict[int, float]] = field(default_factory=dict)  # attempt pod prefix → step → loss
    reference: dict[int, float] = field(default_factory=dict)
    reference_restarts: int = 0  # the uninterrupted run must be just that
    resumes: list[tuple[int, bool]] = field(default_factory=list)  # (step, complete when it was loaded)
    leftovers: list[str] = field(default_factory=list)  # pods or processes still there at the end
    seconds: float = 0.0


def loss_mismatches(report: ChaosReport) -> list[str]:
    """Every logged step of every attempt against the uninterrupted run."""
    bad = []
    for attempt, steps in sorted(report.losses.items()):
        for step, loss in sorted(steps.items()):
            want = report.reference.get(step)
            if want is None or abs(loss - want) > LOSS_TOLERANCE:
                bad.append(f"{attempt} step {step}: {loss} vs uninterrupted {want}")
    return bad


def verdict(report: ChaosReport, planned: Sequence[Planned]) -> list[str]:
    """Everything that should hold after the run; [] when it all does."""
    problems = []
    want = expected_failures(planned)
    if report.failures != want:
        problems.append(f"failures by class {report.failures}, expected {want}")
    restarting = sum(1 for p in planned if EXPECTED[p.fault] is not None)
    if report.restarts != restarting:
        problems.append(f"{report.restarts} gang restarts, expected {restarting} (one per restarting fault)")
    if report.phase != "Failed" or "longvila-train: error:" not in report.failed_message:
        problems.append(
            f"ended {report.phase!r} with {report.failed_message!r}, expected Failed by the bad override"
        )
    if report.reference_restarts:
        problems.append(f"the uninterrupted run restarted {report.reference_restarts} time(s)")
    problems += loss_mismatches(report)
    if not report.reference or not report.losses:
        problems.append("no losses logged")
    problems += [
        f"resumed from step {s}, which was not a complete checkpoint" for s, ok in report.resumes if not ok
    ]
    problems += [f"left behind: {x}" for x in report.leftovers]
    return problems


def figures(report: ChaosReport) -> list[dict[str, Any]]:
    """Per fault: time to detect and time from the fault to training again (docs/benchmarks.md)."""
    return [
        {"fault": i.fault, "class": EXPECTED[i.fault] or "-", "target": i.target,
         "detect_s": None if i.detected_s is None else round(i.detected_s, 1),
         "training_again_s": None if i.training_s is None else round(i.training_s, 1), "note": i.note}
        for i in report.injected
    ]  # fmt: skip
