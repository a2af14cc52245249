"""Operator figures for docs/benchmarks.md, on a local cluster of 32 fake nodes × 8 GPUs.

    python -m longvila_localcluster.benches.operator_scale [--nodes 32] [--domains 4] [--json]

1. `create` of a 32-node LongVILAJob → all 32 pods bound, then Running; the operator's API
   requests in that window (its own counter: the reconcile layer's reads and writes; kopf's
   watch streams, one per resource kind, are not in it), its CPU seconds and RSS.
2. fail-node under a 28-node job (one block of spares left in the last domain) → every pod
   of the restarted gang Running again, the lost rank on a spare in its own domain.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from longvila_operator import crd
from longvila_operator.api import GROUP, PLURAL, VERSION

from longvila_localcluster.build import ensure_all
from longvila_localcluster.cluster import ClusterInfo, LocalCluster, set_node_managed
from longvila_localcluster.nodes import NodeSpec
from longvila_localcluster.probes import poll
from longvila_localcluster.versions import load_versions


def port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pdeathsig() -> None:
    ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)


class Operator:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.metrics_port, live = port(), port()
        argv = [
            sys.executable,
            "-m",
            "longvila_operator.main",
            "-A",
            "--metrics-port",
            str(self.metrics_port),
        ]
        argv += ["--liveness-port", str(live)]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pdeathsig
            )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{live}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        poll("operator /healthz", healthy, 60, 0.2)

    def requests(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            lines = r.read().decode().splitlines()
        return int(
            sum(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith("longvila_api_requests_total"))
        )

    def cpu_rss(self) -> tuple[float, int]:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return cpu, int(fields[21]) * os.sysconf("SC_PAGE_SIZE")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def job(name: str, nodes: int, ulysses: int = 8, ring: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LongVILAJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "image": "localhost/longvila-trainer:0.1.0",
            "model": {"llm": "file:///opt/tiny/qwen2", "visionTower": "file:///opt/tiny/siglip"},
            "topology": {
                "nodes": nodes,
                "gpusPerNode": 8,
                "sequenceParallel": {"ulysses": ulysses, "ring": ring},
            },
            "checkpoint": {"uri": f"s3://bench/{name}", "credentialsSecret": "longvila-s3"},
            "stages": [{"name": "sft", "type": "short-sft", "data": "synthetic://video-qa"}],
            "failurePolicy": {"maxRestarts": 3},
        },
    }


def gang(core: Any, prefix: str, n: int) -> tuple[int, int, int]:
    """(created, bound, running) pods whose name starts with prefix, not being deleted.

    Raw JSON, no client models: on a 2-core machine the poller must not eat the CPU it measures.
    """
    resp = core.list_namespaced_pod("bench", _preload_content=False)
    items = json.loads(resp.data)["items"]
    pods = [p for p in items if p["metadata"]["name"].startswith(prefix)]
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    bound = sum(bool(p["spec"].get("nodeName")) for p in pods)
    return len(pods), bound, sum(p.get("status", {}).get("phase") == "Running" for p in pods)


def measure(info: ClusterInfo, op: Operator, nodes: int) -> dict[str, Any]:
    from kubernetes import client as k

    api = LocalCluster.client(info)
    core: Any = k.CoreV1Api(api)
    custom: Any = k.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": "bench"}})
    out: dict[str, Any] = {}

    # 1. create → bound → Running
    req0, (cpu0, _) = op.requests(), op.cpu_rss()
    t0 = time.monotonic()
    custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, job("big", nodes))
    t_bound = t_created = None
    while True:
        created, bound, running = gang(core, "big-sft-a0-", nodes)
        if t_created is None and created == nodes:
            t_created = time.monotonic() - t0
        if t_bound is None and bound == nodes:
            t_bound = time.monotonic() - t0
        if running == nodes:
            break
        if time.monotonic() - t0 > 300:
            raise TimeoutError(f"{running}/{nodes} Running after 300 s")
        time.sleep(0.1)
    t_running = time.monotonic() - t0
    time.sleep(2.0)  # let the status write and Events land before counting
    cpu1, rss1 = op.cpu_rss()
    out["create"] = {
        "pods": nodes,
        "created_s": round(t_created or 0.0, 2),
        "bound_s": round(t_bound or 0.0, 2),
        "running_s": round(t_running, 2),
        "api_requests": op.requests() - req0,
        "operator_cpu_s": round(cpu1 - cpu0, 2),
        "operator_rss_mib": round(rss1 / 2**20, 1),
    }
    custom.delete_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, "big")
    core.delete_collection_namespaced_pod("bench", grace_period_seconds=0)
    poll("big's pods gone", lambda: not core.list_namespaced_pod("bench").items, 120, 0.2)

    # 2. fail-node → the restarted gang Running, lost rank on a spare in its domain
    small = nodes - 4
    custom.create_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, job("fail", small))
    poll("fail Running", lambda: gang(core, "fail-sft-a0-", small)[2] == small, 300, 0.1)
    status = custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, "fail")["status"]
    victim = status["placement"]["nodes"][-3]
    req0, (cpu0, _) = op.requests(), op.cpu_rss()
    t0 = time.monotonic()
    set_node_managed(info, victim["name"], managed=False)
    poll(f"{victim['name']} NotReady", lambda: node_not_ready(core, victim["name"]), 120, 0.1)
    t_notready = time.monotonic() - t0
    poll("a1 Running", lambda: gang(core, "fail-sft-a1-", small)[2] == small, 300, 0.1)
    t_back = time.monotonic() - t0
    time.sleep(2.0)
    status = custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, "fail")["status"]
    cpu1, rss1 = op.cpu_rss()
    moved = status["placement"]["nodes"][victim["nodeRank"]]
    out["fail_node"] = {
        "pods": small,
        "node": victim["name"],
        "not_ready_s": round(t_notready, 2),
        "replacement_running_s": round(t_back, 2),
        "operator_after_not_ready_s": round(t_back - t_notready, 2),
        "replacement": f"{moved['name']} ({moved['domain']}; lost node was in {victim['domain']})",
        "restarts": status["restarts"],
        "api_requests": op.requests() - req0,
        "operator_cpu_s": round(cpu1 - cpu0, 2),
        "operator_rss_mib": round(rss1 / 2**20, 1),
    }
    set_node_managed(info, victim["name"], managed=True)
    return out


def node_not_ready(core: Any, name: str) -> bool:
    conds = core.read_node(name).status.conditions or []
    return any(c.type == "Ready" and c.status != "True" for c in conds)


def main(argv: list[str] | None = None) -> int:
    prog = "python -m longvila_localcluster.benches.operator_scale"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=32)
    p.add_argument("--domains", type=int, default=4)
    p.add_argument("--json", action="store_true")
    p.add_argument("--keep-log", type=Path, help="copy the operator's log here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lvbench-") as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", ensure_all(load_versions()), die_with_parent=True)
        info = cluster.up(
            NodeSpec(nodes=a.nodes, gpus_per_node=8, domains=a.domains), progress=lambda m: None
        )
        env = {**os.environ, **info.env()}
        op = None
        try:
            subprocess.run(
                ["kubectl", "apply", "--server-side", "-f", "-"],
                input=crd.render().encode(),
                env=env,
                check=True,
                capture_output=True,
            )
            subprocess.run(
                ["kubectl", "wait", "--for=condition=Established", "crd/longvilajobs.longvila.io"],
                env=env,
                check=True,
                capture_output=True,
            )
            op = Operator(env, Path(tmp) / "operator.log")
            time.sleep(1.0)  # initial lists done; measure steady state
            result = measure(info, op, a.nodes)
        finally:
            if op is not None:
                op.stop()
            cluster.down()
            if a.keep_log:
                shutil.copy(Path(tmp) / "operator.log", a.keep_log)
    result["cluster"] = f"{a.nodes} KWOK nodes × 8 GPUs in {a.domains} domains"
    print(json.dumps(result, indent=2) if a.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
