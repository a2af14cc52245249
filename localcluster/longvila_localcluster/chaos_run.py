"""The chaos run on the local cluster (chaos.py has the plan and the verdict).

A fresh cluster (nodes for the job, one spare per round, S3), the CRD, the operator as a
process (so it can be SIGKILLed and started again), the pod runner, tiny weights. First an
uninterrupted run of stage 1 for its losses; then the same stage under the planned faults,
followed by a stage the trainer refuses. Every rank-0 log line, status change and fault
is stamped with the time since the start; `figures` come from those stamps.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import chaos, helm
from .build import ensure_all
from .cluster import NODE_HEARTBEAT_GRACE_SECONDS, ClusterInfo, LocalCluster, set_node_managed
from .demo import Clock
from .demo_assets import export_tiny_weights
from .demo_report import stage_checkpoints
from .nodes import NodeSpec
from .operator_process import OperatorProcess
from .podrunner import TRAINER_PODS, PodRunner, descendants
from .processes import processes_in
from .versions import load_versions

RESUMED = re.compile(r"longvila-train: resumed from step (\d+) of (\S+)")
POD = re.compile(r"^(?P<job>.+)-(?P<stage>[a-z0-9-]+?)-a(?P<attempt>\d+)-n(?P<rank>\d+)$")


@dataclass(frozen=True)
class ChaosOptions:
    work: Path
    seed: int = 1
    rounds: int = 1
    nodes: int = 2  # the job's (one process each)
    hang_timeout: int = 15
    most_steps: int = 2  # a fault strikes after 1..most_steps steps of training
    timeout_s: float = 1500.0


@dataclass
class Rig:
    """What the faults act on."""

    info: ClusterInfo
    cluster: LocalCluster
    runner: PodRunner
    operator: OperatorProcess
    clock: Clock
    work: Path
    injected: list[chaos.Injected] = field(default_factory=list)


class Watcher:
    """Reads the job's status and its rank-0 logs; remembers when things happened."""

    def __init__(
        self, info: ClusterInfo, runner: PodRunner, clock: Clock, name: str, namespace: str = "default"
    ) -> None:
        self.info, self.runner, self.clock, self.name, self.namespace = info, runner, clock, name, namespace
        self.offsets: dict[Path, int] = {}
        self.losses: dict[str, dict[int, float]] = {}
        self.steps: list[tuple[float, str, int]] = []  # (time, attempt prefix, step)
        self.resumes: list[tuple[int, bool]] = []
        self.resumed_at: list[float] = []
        self.phases: list[tuple[float, str, str]] = []  # (time, phase, stage) as they changed
        self.status: dict[str, Any] = {}

    def job(self) -> dict[str, Any]:
        out = helm.kubectl(
            self.info, "-n", self.namespace, "get", "longvilajob", self.name, "-o", "json", check=False
        )
        return dict(json.loads(out.stdout)) if out.returncode == 0 else {}

    def poll(self) -> dict[str, Any]:
        self.status = dict(self.job().get("status") or {})
        now = (str(self.status.get("phase") or ""), str(self.status.get("stage") or ""))
        if not self.phases or self.phases[-1][1:] != now:
            self.phases.append((self.clock.elapsed, *now))
        for log in sorted((self.runner.dir / "pods" / self.namespace).glob(f"{self.name}-*-n0*/log")):
            with log.open("rb") as f:
                f.seek(self.offsets.get(log, 0))
                data = f.read()
            cut = data.rfind(b"\n") + 1
            self.offsets[log] = self.offsets.get(log, 0) + cut
            attempt = log.parent.name.rsplit("-n", 1)[0]
            for line in data[:cut].decode(errors="replace").splitlines():
                self.read(attempt, line)
        return self.status

    def read(self, attempt: str, line: str) -> None:
        if line.startswith("{"):
            with contextlib.suppress(ValueError, KeyError):
                rec = json.loads(line)
                self.losses.setdefault(attempt, {})[int(rec["step"])] = float(rec["loss"])
                self.steps.append((self.clock.elapsed, attempt, int(rec["step"])))
        elif m := RESUMED.search(line):
            step, uri = int(m.group(1)), m.group(2)
            prefix = uri.split("/", 3)[3]  # s3://bucket/<job>/<stage>
            self.resumes.append((step, step in stage_checkpoints(self.info, prefix).complete_steps()))
            self.resumed_at.append(self.clock.elapsed)
            self.clock(f"  {attempt}: {line.strip()}")

    def steps_since(self, t: float) -> int:
        return sum(1 for when, _, _ in self.steps if when > t)

    def first_step_after(self, t: float) -> float | None:
        return next((when for when, _, _ in self.steps if when > t), None)


def until(what: str, check: Callable[[], Any], watcher: Watcher, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watcher.poll()
        got = check()
        if got:
            return got
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; status {watcher.status}")


def workers(runner: PodRunner, pod: str) -> list[int]:
    """The trainer worker processes under a pod's torchrun (not torchrun itself)."""
    r = runner.procs.get(f"default/{pod}")
    if r is None:
        return []
    out = []
    for pid in descendants(r.proc.pid)[1:]:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "longvila_trainer.train" in cmd and "torch.distributed.run" not in cmd:
                out.append(pid)
    return out


def current_pods(status: dict[str, Any], name: str) -> dict[int, str]:
    """Node rank → this attempt's pod name (as the operator names them: naming.pod_name)."""
    stage = status.get("stage") or ""
    entry: dict[str, Any] = next((s for s in status.get("stages") or [] if s["name"] == stage), {})
    attempt = int(entry.get("restarts") or 0)
    nodes = (status.get("placement") or {}).get("nodes") or []
    width = len(str(len(nodes) - 1)) if len(nodes) > 10 else 1
    return {n["nodeRank"]: f"{name}-{stage}-a{attempt}-n{n['nodeRank']:0{width}d}" for n in nodes}


def inject(p: chaos.Planned, rig: Rig, w: Watcher) -> chaos.Injected:
    """Strike; returns the record (its times are filled in by the caller)."""
    info, runner, op, cluster, clock = rig.info, rig.runner, rig.operator, rig.cluster, rig.clock
    status = w.status
    pods = current_pods(status, w.name)
    rec = chaos.Injected(p.fault, clock.elapsed)
    if p.fault == "node-loss":
        node = status["placement"]["nodes"][p.node_rank]["name"]
        rec.target = node
        set_node_managed(info, node, managed=False)
    elif p.fault in ("worker-kill", "hang"):
        pod = pods[p.node_rank]
        pid = until(f"a worker of {pod}", lambda: (workers(runner, pod) or [0])[0], w, 30)
        rec.target = f"{pod} pid {pid}"
        rec.at = clock.elapsed
        with contextlib.suppress(ProcessLookupError):
            import os

            os.kill(pid, signal.SIGKILL if p.fault == "worker-kill" else signal.SIGSTOP)
    elif p.fault == "operator-kill":
        rec.target = f"operator pid {op.pid}"
        op.kill()
        time.sleep(1.0)
        op.start()
        rec.note = f"back after {clock.elapsed - rec.at:.1f}s"
    elif p.fault == "s3-restart":
        prefix = f"{w.name}/{status.get('stage')}"
        bucket = Path(info.run_dir) / "s3" / info.s3_bucket / prefix

        def uploading() -> bool:  # a step's files are arriving and its manifest is not there yet
            steps = [d for d in bucket.glob("step-*") if d.is_dir()]
            return any(not (d / "manifest.json").exists() and any(d.rglob("*")) for d in steps)

        deadline, polled = time.monotonic() + 300, 0.0
        while not uploading():  # tight: an upload of the tiny model's step lasts a fraction of a second
            if time.monotonic() > deadline:
                raise TimeoutError(f"no checkpoint upload seen under {bucket} in 300s")
            if time.monotonic() - polled > 1.0:
                w.poll()
                polled = time.monotonic()
            time.sleep(0.01)
        rec.at = clock.elapsed
        rec.target = info.s3_endpoint
        rec.note = f"S3 down {cluster.restart_s3(info):.1f}s"
    clock(f"fault {p.fault} → {rec.target} {rec.note}".rstrip())
    return rec


def steps_after(w: Watcher, since: float, n: int) -> Callable[[], bool]:
    return lambda: w.steps_since(since) >= n and w.status.get("phase") == "Running"


def observe(rec: chaos.Injected, w: Watcher, clock: Clock) -> chaos.Injected:
    """Wait for the operator to count the fault's class (if any), then for the next step."""
    cls = chaos.EXPECTED[rec.fault]
    before = int((w.status.get("failures") or {}).get(cls or "", 0))
    if cls is not None:
        until(f"{cls} counted", lambda: int((w.status.get("failures") or {}).get(cls, 0)) > before, w, 300)
        rec.detected_s = clock.elapsed - rec.at
    until("training again", lambda: w.first_step_after(rec.at), w, 600)
    rec.training_s = (w.first_step_after(rec.at) or clock.elapsed) - rec.at
    resumed = [t for t in w.resumed_at if t > rec.at]
    if cls is not None and resumed:  # the rest of "training again" is the new attempt's start-up
        rec.note = f"resumed {resumed[0] - rec.at:.1f}s after the fault"
    detected = "-" if rec.detected_s is None else f"{rec.detected_s:.1f}s"
    clock(f"  {rec.fault}: detected {detected}, training again {rec.training_s:.1f}s after the fault")
    return rec


def run_job(rig: Rig, name: str, manifest: dict[str, Any], planned: list[chaos.Planned]) -> Watcher:
    info, clock = rig.info, rig.clock
    path = rig.work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    helm.kubectl(info, "apply", "--server-side", "-f", str(path))
    clock(f"kubectl apply -f {path}")
    w = Watcher(info, rig.runner, clock, name)
    last = clock.elapsed
    for p in planned:
        trained = steps_after(w, last, p.after_steps)
        until(f"{p.after_steps} steps before {p.fault}", trained, w, 600)
        rig.injected.append(observe(inject(p, rig, w), w, clock))
        last = clock.elapsed
    until(f"{name} finished", lambda: w.status.get("phase") in ("Succeeded", "Failed"), w, 900)
    st = w.status
    clock(f"job {name}: {st.get('phase')}, restarts {st.get('restarts')}, failures {st.get('failures')}")
    return w


def leftovers(rig: Rig, name: str) -> list[str]:
    """Pods of the job not finished and processes of its pods still alive, after a settling wait."""
    info, runner = rig.info, rig.runner

    def scan() -> list[str]:
        pods = json.loads(
            helm.kubectl(info, "get", "pods", "-l", f"longvila.io/job={name}", "-o", "json").stdout
        )
        live = [
            p["metadata"]["name"]
            for p in pods["items"]
            if p["status"].get("phase") not in ("Succeeded", "Failed")
        ]
        procs = [f"pid {pid}: {cmd[:80]}" for pid, cmd in processes_in(runner.dir / "pods")]
        return live + procs

    deadline = time.monotonic() + 60
    while (left := scan()) and time.monotonic() < deadline:
        time.sleep(1.0)
    return left


def run_chaos(
    opts: ChaosOptions, say: Callable[[str], None] = print
) -> tuple[chaos.ChaosReport, list[chaos.Planned]]:
    clock = Clock(say)
    work = opts.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    planned = chaos.plan(opts.seed, opts.rounds, opts.nodes, opts.most_steps)
    steps = chaos.steps_needed(planned)
    clock(
        f"plan (seed {opts.seed}): "
        + ", ".join(f"{p.fault}@+{p.after_steps} r{p.node_rank}" for p in planned)
    )
    cluster = LocalCluster(work / "cluster", ensure_all(load_versions()), die_with_parent=True)
    info = cluster.up(NodeSpec(nodes=opts.nodes + opts.rounds + 1, gpus_per_node=1, domains=1),
                      progress=lambda s: clock(f"cluster: {s}"))  # fmt: skip
    report = chaos.ChaosReport(seed=opts.seed)
    op: OperatorProcess | None = None
    runner: PodRunner | None = None
    try:
        from longvila_operator import crd

        helm.kubectl(info, "apply", "--server-side", "-f", "-", stdin=crd.render())
        helm.kubectl(info, "wait", "--for=condition=Established", "crd/longvilajobs.longvila.io")
        export_tiny_weights(work / "weights")
        env = {**info.env()}
        args = (
            "--node-heartbeat-grace-seconds",
            str(NODE_HEARTBEAT_GRACE_SECONDS),
            "--progress-seconds",
            "1",
        )
        op = OperatorProcess(env, work / "operator.log", namespaces=["default"], extra_args=args)
        op.start()
        venv = str(Path(sys.executable).parent)
        runner = PodRunner(info, work / "runner", selectors=(TRAINER_PODS,), path=f"{venv}:/usr/bin:/bin",
                           say=clock).start()  # fmt: skip
        rig = Rig(info, cluster, runner, op, clock, work)
        model = {
            "llm": f"file://{work / 'weights' / 'qwen2'}",
            "visionTower": f"file://{work / 'weights' / 'siglip'}",
        }

        def manifest(name: str, bad_stage: bool) -> dict[str, Any]:
            return chaos.job(name, nodes=opts.nodes, steps=steps, hang_timeout=opts.hang_timeout,
                             model=model, weights=str(work / "weights"), bucket=info.s3_bucket,
                             endpoint=info.s3_endpoint, bad_stage=bad_stage)  # fmt: skip

        ref = run_job(rig, "reference", manifest("reference", False), [])
        report.reference = {step: loss for steps in ref.losses.values() for step, loss in steps.items()}
        report.reference_restarts = int(ref.status.get("restarts") or 0)
        w = run_job(rig, "chaos", manifest("chaos", True), planned)
        st = w.status
        report.failures, report.restarts, report.phase = (
            dict(st.get("failures") or {}),
            int(st["restarts"]),
            st["phase"],
        )
        report.failed_message = next(
            (c["message"] for c in st.get("conditions") or [] if c["type"] == "Failed"), ""
        )
        report.losses = {k: v for k, v in w.losses.items() if "-train-" in k + "-"}
        report.resumes = list(w.resumes)
        report.injected = list(rig.injected)
        bad = next(s for s in st["stages"] if s["name"] == "bad")
        began = next(t for t, _, stage in w.phases if stage == "bad")  # the bad stage's pods created
        ended = next(t for t, phase, _ in w.phases if phase == "Failed")
        bad_rec = chaos.Injected("bad-override", began, "stage bad", note=f"attempts {bad['restarts'] + 1}")
        bad_rec.detected_s = ended - began  # from its pods' creation: the trainer's start-up and check
        report.injected.append(bad_rec)
        report.leftovers = leftovers(rig, "chaos")
        report.seconds = clock.elapsed
        return report, planned
    finally:
        if runner is not None:
            runner.stop()
        if op is not None:
            op.stop()
        cluster.down()
