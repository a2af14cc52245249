"""The preemption run on a local cluster where Kueue runs (preemption.py has the objects and
the verdict): tests/e2e/test_preemption.py on the session's cluster, and
`python -m longvila_localcluster.benches.kueue_preemption` on a cluster of its own.

A namespace Kueue manages (with the S3 Secret), the queue objects, the operator watching that
namespace (it finds Kueue and watches its Workloads), the pod runner for the two jobs' pods
only, tiny weights. Every rank-0 log line and status change is stamped with the time since
the start; the report's marks come from those stamps.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import helm
from . import preemption as P
from .chaos_run import Watcher
from .cluster import NODE_HEARTBEAT_GRACE_SECONDS, S3_SECRET_NAME, ClusterInfo
from .demo import Clock
from .demo_assets import export_tiny_weights
from .kueue_manifests import NAMESPACE_LABEL, NAMESPACE_LABEL_VALUE
from .operator_process import OperatorProcess
from .podrunner import TRAINER_PODS, PodRunner
from .processes import processes_in


@dataclass(frozen=True)
class PreemptionOptions:
    work: Path
    namespace: str = "preempt"
    steps: int = 6  # of each job
    preempt_after: int = 2  # low's logged steps before high is created
    timeout_s: float = 600.0  # for each wait


def setup(info: ClusterInfo, ns: str) -> None:
    """The CRD, the namespace (managed by Kueue, with the S3 Secret) and the queue objects."""
    from longvila_operator import crd

    helm.kubectl(info, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=crd.render())
    helm.kubectl(info, "wait", "--for=condition=Established", "crd/longvilajobs.longvila.io")
    namespace = {"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": ns, "labels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}}  # fmt: skip
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": S3_SECRET_NAME, "namespace": ns},
        "stringData": {"AWS_ACCESS_KEY_ID": info.s3_access_key, "AWS_SECRET_ACCESS_KEY": info.s3_secret_key},
    }
    docs = [namespace, secret, *P.queue_objects(ns, gpus=2)]  # one 2 × 1-GPU job at a time
    helm.kubectl(info, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))


def teardown(info: ClusterInfo, ns: str) -> None:
    helm.kubectl(info, "delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
    for kind, name in [("clusterqueue", ns), *(("workloadpriorityclass", P.priority_class(j, ns))
                                              for j in P.PRIORITIES)]:  # fmt: skip
        helm.kubectl(info, "delete", f"{kind}.kueue.x-k8s.io", name, "--ignore-not-found", check=False)


def apply(info: ClusterInfo, body: dict[str, Any], clock: Clock) -> None:
    helm.kubectl(info, "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(body, sort_keys=False))
    clock(f"kubectl apply: {body['metadata']['name']} (priority {P.PRIORITIES[body['metadata']['name']]})")


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == ctype), {})


def leftovers(info: ClusterInfo, runner: PodRunner, ns: str) -> list[str]:
    """Pods of the jobs not finished (or gated) and processes of their pods, after a settling wait."""

    def scan() -> list[str]:
        import json

        pods = json.loads(helm.kubectl(info, "-n", ns, "get", "pods", "-o", "json").stdout)["items"]
        left = [
            p["metadata"]["name"] for p in pods if p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        left += [f"{p['metadata']['name']} (gated)" for p in pods if p["spec"].get("schedulingGates")]
        return left + [f"pid {pid}: {cmd[:80]}" for pid, cmd in processes_in(runner.dir / "pods")]

    deadline = time.monotonic() + 60
    while (left := scan()) and time.monotonic() < deadline:
        time.sleep(1.0)
    return left


def run_preemption(
    info: ClusterInfo, opts: PreemptionOptions, say: Callable[[str], None] = print
) -> P.PreemptionReport:
    clock = Clock(say)
    work, ns = opts.work.resolve(), opts.namespace
    work.mkdir(parents=True, exist_ok=True)
    report = P.PreemptionReport(steps=opts.steps, preempt_after=opts.preempt_after)
    marks = report.marks
    setup(info, ns)
    op: OperatorProcess | None = None
    runner: PodRunner | None = None
    try:
        export_tiny_weights(work / "weights")
        model = {
            "llm": f"file://{work / 'weights' / 'qwen2'}",
            "visionTower": f"file://{work / 'weights' / 'siglip'}",
        }
        args = (
            "--node-heartbeat-grace-seconds",
            str(NODE_HEARTBEAT_GRACE_SECONDS),
            "--progress-seconds",
            "1",
        )
        op = OperatorProcess(info.env(), work / "operator.log", namespaces=[ns], extra_args=args)
        op.start()
        venv = str(Path(sys.executable).parent)
        ours = f"{TRAINER_PODS},longvila.io/job in ({P.LOW},{P.HIGH})"
        runner = PodRunner(
            info, work / "runner", selectors=(ours,), path=f"{venv}:/usr/bin:/bin", say=clock
        ).start()
        low, high = (Watcher(info, runner, clock, name, ns) for name in (P.LOW, P.HIGH))

        def until(what: str, check: Callable[[], Any]) -> Any:
            deadline = time.monotonic() + opts.timeout_s
            while time.monotonic() < deadline:
                low.poll()
                high.poll()
                if got := check():
                    return got
                time.sleep(0.25)
            raise TimeoutError(f"timed out after {opts.timeout_s:.0f}s waiting for {what}; "
                               f"low {low.status}; high {high.status}")  # fmt: skip

        def job(name: str) -> dict[str, Any]:
            return P.job(name, ns, steps=opts.steps, model=model, weights=str(work / "weights"),
                         bucket=info.s3_bucket, endpoint=info.s3_endpoint)  # fmt: skip

        apply(info, job(P.LOW), clock)
        until(f"{opts.preempt_after} steps of low", lambda: len(low.steps) >= opts.preempt_after)
        marks["low_started"] = low.steps[0][0]
        marks["high_created"] = clock.elapsed
        apply(info, job(P.HIGH), clock)
        until("low counted Preempted", lambda: (low.status.get("failures") or {}).get("Preempted"))
        marks["preempted"] = clock.elapsed
        clock(f"low preempted: {low.status.get('lastFailure')}")

        def requeued() -> dict[str, Any] | None:  # Queued, the preemption and Kueue's reason both said
            c = condition(low.status, "Admitted")
            return (
                c
                if low.status.get("phase") == "Queued" and "requeued after" in c.get("message", "")
                else None
            )

        report.requeued = until("low Queued again with Kueue's reason", requeued)
        clock(f"low Queued: Admitted {report.requeued.get('reason')}: {report.requeued.get('message')}")
        until("high's first step", lambda: high.steps)
        marks["high_training"] = high.steps[0][0]
        until("high Succeeded", lambda: high.status.get("phase") in ("Succeeded", "Failed"))
        marks["high_done"] = clock.elapsed
        until("low admitted again", lambda: condition(low.status, "Admitted").get("status") == "True")
        marks["low_admitted"] = clock.elapsed
        until("low resumed", lambda: low.resumed_at)
        marks["low_resumed"] = low.resumed_at[0]
        until("low's first step again", lambda: low.first_step_after(marks["high_done"]))
        marks["low_training"] = low.first_step_after(marks["high_done"]) or clock.elapsed
        until("low finished", lambda: low.status.get("phase") in ("Succeeded", "Failed"))
        marks["low_done"] = clock.elapsed
        report.low, report.high = dict(low.status), dict(high.status)
        report.reference = {s: loss for by_step in high.losses.values() for s, loss in by_step.items()}
        report.losses = {k: dict(v) for k, v in low.losses.items()}
        hit = int((report.low.get("lastFailure") or {}).get("attempt") or 0)  # the attempt preempted
        report.preempted_at_step = max(report.losses.get(f"{P.LOW}-train-a{hit}") or {0: 0.0})
        report.resumes = list(low.resumes)
        report.leftovers = leftovers(info, runner, ns)
        report.seconds = clock.elapsed
        lo, hi = report.low, report.high
        clock(f"low: {lo.get('phase')}, failures {lo.get('failures')}; high: {hi.get('phase')}")
        return report
    finally:
        if runner is not None:
            runner.stop()
        if op is not None:
            op.stop()
        with contextlib.suppress(Exception):
            teardown(info, ns)
