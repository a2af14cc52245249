"""`make demo`: a LongVILAJob applied with kubectl, trained for real on the local cluster.

    python -m longvila_localcluster.cli demo [--no-fail-node] [--keep] [--work DIR]

Steps, each printed with the time since the start:
 1. binaries (built once, then cached) and a fresh local cluster: 6 fake 8-GPU nodes in
    2 InfiniBand domains, an S3 server;
 2. on the cluster's S3, what a user brings (demo_assets.py): a tiny checkpoint in VILA's
    released layout (pretrained to find the needle, cached per machine), imported with
    `longvila-import`, and datasets as published (LLaVA annotations + videos, a manifest),
    the short mix on this machine's disk for the job's hostPath volume;
 3. the pod runner (podrunner.py), which runs the pods scheduled to fake nodes as local
    processes, and `helm install` of charts/longvila-operator, whose operator pod the
    runner starts with the chart's ServiceAccount token;
 4. `kubectl apply` of examples/jobs/tiny-demo.yaml (two stages, MM-SP Ulysses 2 × ring 2
    over 2 nodes × 2 processes, weights and data read from S3 and the volume; the endpoint
    pointed at the local S3 server, the hostPath at the work directory);
 5. once the second stage has a complete checkpoint, node rank 1's node fails; the
    operator restarts the gang on a spare node of the same domain and training resumes
    from that checkpoint;
 6. the job's status, the checkpoint listing and a needle-in-a-haystack table of the
    final weights: 5 needles (one per colour) per cell, so a model that does not look at the
    video scores at most 0.2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import helm
from .build import ensure_all
from .cluster import NODE_HEARTBEAT_GRACE_SECONDS, ClusterInfo, LocalCluster, set_node_managed
from .demo_assets import VOLUME_PATH, stage_assets
from .demo_report import checkpoint_listing, stage_checkpoints, stage_table
from .nodes import NodeSpec
from .podrunner import TRAINER_PODS, PodRunner
from .probes import free_ports
from .versions import load_versions

REPO = Path(__file__).resolve().parents[2]
JOB_FILE = REPO / "examples" / "jobs" / "tiny-demo.yaml"
NAMESPACE = "default"
OPERATOR_NAMESPACE = "longvila-system"
SHOWN = re.compile(r"^(step \d+/\d+|longvila-train:|Traceback|\S*Error)")
RANK0 = re.compile(r"-n0+$")  # node rank 0's pod name suffix (longvila_operator.naming)
STEP = re.compile(r"^step (\d+)/\d+\s+loss (\S+)")


class DemoError(RuntimeError):
    """The demo could not finish; the message says where to look."""


@dataclass(frozen=True)
class DemoOptions:
    work: Path
    job_file: Path = JOB_FILE
    fail_node: bool = True
    niah: bool = True
    keep: bool = False  # leave the cluster running (and block until Ctrl-C)
    timeout_s: float = 1200.0


@dataclass
class DemoReport:
    phase: str = ""
    restarts: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # status.failures: by class
    progress: list[str] = field(default_factory=list)  # status.progress.summary as it changed
    failed_node: str = ""
    resumed: list[str] = field(default_factory=list)  # "resumed from step N …" lines
    # node rank 0's pod name without its -n0 suffix (<job>-<stage>-a<attempt>) → step → loss
    losses: dict[str, dict[int, float]] = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: str = ""
    niah: str = ""
    niah_score: float = 0.0  # mean over the table's cells
    seconds: float = 0.0


class Clock:
    def __init__(self, say: Callable[[str], None]) -> None:
        self.t0, self._say = time.monotonic(), say

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, text: str) -> None:
        self._say(f"[{self.elapsed:6.1f}s] {text}")


def demo_job(path: Path, info: ClusterInfo, volume: Path) -> dict[str, Any]:
    """The example job, pointed at this machine's S3 server (its bucket and endpoint) and at
    `volume`, the directory its hostPath volume names."""
    text = path.read_text().replace("s3://longvila/", f"s3://{info.s3_bucket}/")
    job: dict[str, Any] = yaml.safe_load(text.replace(VOLUME_PATH, f"{volume}/"))
    spec = job["spec"]
    spec["checkpoint"]["endpoint"] = info.s3_endpoint
    spec["checkpoint"]["uri"] = f"s3://{info.s3_bucket}/{job['metadata']['name']}"
    return job


def kubectl(info: ClusterInfo, *args: str) -> str:
    return helm.kubectl(info, *args).stdout  # the pinned kubectl; raises RuntimeError on failure


def read_job(info: ClusterInfo, name: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(kubectl(info, "get", "longvilajob", name, "-n", NAMESPACE, "-o", "json"))
    return out


class LogTail:
    """New lines of node rank 0's pod logs (the trainer's rank 0 prints there)."""

    def __init__(self, root: Path) -> None:
        self.root, self.offsets = root, dict[Path, int]()

    def lines(self) -> list[str]:
        out = []
        logs = self.root.glob(f"pods/{NAMESPACE}/*/log")
        for log in sorted(p for p in logs if RANK0.search(p.parent.name)):
            with log.open("rb") as f:
                f.seek(self.offsets.get(log, 0))
                data = f.read()
            cut = data.rfind(b"\n") + 1
            self.offsets[log] = self.offsets.get(log, 0) + cut
            out += [f"{log.parent.name}: {ln}" for ln in data[:cut].decode(errors="replace").splitlines()]
        return out


def watch(info: ClusterInfo, opts: DemoOptions, name: str, runner_dir: Path, say: Clock) -> DemoReport:
    """Follow the job to a terminal phase, failing a node midway through the last stage."""
    report, tail, seen = DemoReport(), LogTail(runner_dir), ("", "", -1)
    deadline = time.monotonic() + opts.timeout_s
    while time.monotonic() < deadline:
        job = read_job(info, name)
        st = job.get("status") or {}
        now = (st.get("phase") or "Pending", st.get("stage") or "", int(st.get("restarts") or 0))
        summary = str((st.get("progress") or {}).get("summary") or "")
        if now != seen:
            say(f"job {name}: phase {now[0]}, stage {now[1] or '-'}, restarts {now[2]}")
            seen = now
        if summary and summary != (report.progress or [""])[-1]:
            report.progress.append(summary)  # what `kubectl get lvj` shows in its Progress column
        for line in tail.lines():
            text = line.split(": ", 1)[1]
            if SHOWN.match(text):
                say(f"  {line}")
            if "resumed from step" in text:
                report.resumed.append(text)
            if m := STEP.match(text):
                pod = RANK0.sub("", line.split(": ", 1)[0])
                report.losses.setdefault(pod, {})[int(m.group(1))] = float(m.group(2))
        last = job["spec"]["stages"][-1]["name"]
        if opts.fail_node and not report.failed_node and now[1] == last and now[0] == "Running":
            prefix = f"{name}/{last}"
            steps = stage_checkpoints(info, prefix).complete_steps()
            nodes = (st.get("placement") or {}).get("nodes") or []
            if steps and len(nodes) > 1:
                say(kubectl(info, "get", "longvilajob", name, "-n", NAMESPACE).rstrip())  # progress so far
                report.failed_node = nodes[1]["name"]
                say(f"stage {last} has a complete checkpoint (step {steps[-1]}): failing node rank 1, "
                    f"{report.failed_node} (its heartbeats stop and its processes die)")  # fmt: skip
                set_node_managed(info, report.failed_node, managed=False)
        if now[0] in ("Succeeded", "Failed"):
            report.phase, report.restarts, report.stages = now[0], now[2], list(st.get("stages") or [])
            report.failures = dict(st.get("failures") or {})
            return report
        time.sleep(1.0)
    raise DemoError(f"job {name} did not finish in {opts.timeout_s:.0f}s; pod logs under {runner_dir}/pods")


def niah_table(info: ClusterInfo, weights_uri: str, out: Path) -> str:
    env = {**os.environ, **info.env(), "AWS_ENDPOINT_URL_S3": info.s3_endpoint}
    # the checkpoint says which model it holds, its RoPE base included
    argv = [sys.executable, "-m", "longvila_trainer.eval.niah", "--weights", weights_uri, "--needles", "5"]
    argv += ["--frames", "8,16", "--depths", "0,0.5,1", "--ulysses", "2", "--ring", "2", "--out", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise DemoError(f"niah failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def run_demo(opts: DemoOptions, say: Callable[[str], None] = print) -> DemoReport:
    clock = Clock(say)
    work = opts.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clock("building or finding the cluster binaries (cached after the first run)")
    binaries = ensure_all(load_versions())
    cluster = LocalCluster(work / "cluster", binaries, die_with_parent=True)
    info = cluster.up(
        NodeSpec(nodes=6, gpus_per_node=8, domains=2), progress=lambda s: clock(f"cluster: {s}")
    )
    runner: PodRunner | None = None
    try:
        assets = stage_assets(info, work, clock)
        venv_bin = str(Path(sys.executable).parent)
        runner = PodRunner(
            info, work / "runner", selectors=(TRAINER_PODS, "app.kubernetes.io/name=longvila-operator"),
            path=f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", say=clock,
        ).start()  # fmt: skip
        clock("helm install charts/longvila-operator (namespace longvila-system, watching namespace default)")
        live, metrics = free_ports(2)  # the operator runs on this machine: no fixed ports
        values = {
            "watchNamespaces": [NAMESPACE], "livenessPort": live, "metrics": {"port": metrics},
            "nodeHeartbeatGraceSeconds": NODE_HEARTBEAT_GRACE_SECONDS, "progressSeconds": 2,
            # The operator on the last node, which placement leaves to the end: the node the
            # demo fails is the job's, not the operator's (that is the chaos run's fault).
            "nodeSelector": {"kubernetes.io/hostname": info.nodes[-1]},
        }  # fmt: skip
        helm.install_operator_chart(info, "longvila", OPERATOR_NAMESPACE, values)
        job = demo_job(opts.job_file, info, Path(assets["volume"]))
        (work / "job.yaml").write_text(yaml.safe_dump(job, sort_keys=False))
        clock(f"kubectl apply -f {work / 'job.yaml'}  (from {opts.job_file.relative_to(REPO)})")
        say(kubectl(info, "apply", "--server-side", "-f", str(work / "job.yaml")).strip())
        name = job["metadata"]["name"]
        report = watch(info, opts, name, work / "runner", clock)
        say("")
        say(kubectl(info, "get", "longvilajob", name, "-n", NAMESPACE, "-o", "wide").rstrip())
        report.stages = report.stages or []
        say(stage_table(report.stages))
        report.checkpoints = checkpoint_listing(info, name)
        say(report.checkpoints)
        if report.phase != "Succeeded":
            raise DemoError(f"job {name} ended {report.phase}; pod logs under {work / 'runner' / 'pods'}")
        if opts.niah:
            last = job["spec"]["stages"][-1]
            uri = f"{job['spec']['checkpoint']['uri']}/{last['name']}"
            clock(f"needle in a haystack on the final weights of {last['name']} ({uri}), SP 4 prefill")
            report.niah = niah_table(info, uri, work / "niah")
            report.niah_score = float(json.loads((work / "niah" / "niah.json").read_text())["mean"])
            say(report.niah.rstrip())
        report.seconds = clock.elapsed
        clock(f"demo finished: job {report.phase}, {report.restarts} restart(s); total {report.seconds:.1f}s")
        if opts.keep:
            say(f"cluster kept: source {Path(info.run_dir) / 'env'}; Ctrl-C stops it")
            while True:
                time.sleep(3600)
        return report
    finally:
        if runner is not None:
            runner.stop()
        cluster.down()
