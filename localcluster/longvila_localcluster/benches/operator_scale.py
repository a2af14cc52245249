"""Operator figures for docs/benchmarks.md, on a local cluster of 32 fake nodes × 8 GPUs.

    python -m longvila_localcluster.benches.operator_scale [--nodes 32] [--domains 4] [--json]

0. The nodes usable: `cluster up` returns once every node is Ready, but the node lifecycle
   controller removes each new node's `node.kubernetes.io/not-ready` taint only after it
   has seen it Ready, one by one; placement (like the scheduler) skips tainted nodes. The
   clock for 1. starts once no node is tainted, and the wait is reported on its own.
1. `create` of a 32-node LongVILAJob → all 32 pods bound, then Running; the operator's API
   requests in that window (its own counter: the reconcile layer's reads and writes; kopf's
   watch streams, one per resource kind, are not in it), its status writes, CPU seconds, RSS.
2. fail-node under a 28-node job (one block of spares left in the last domain) → every pod
   of the restarted gang Running again, the lost rank on a spare in its own domain.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from longvila_operator import crd
from longvila_operator.api import GROUP, PLURAL, VERSION

from longvila_localcluster.build import ensure_all
from longvila_localcluster.cluster import (
    NODE_HEARTBEAT_GRACE_SECONDS,
    ClusterInfo,
    LocalCluster,
    set_node_managed,
)
from longvila_localcluster.nodes import NodeSpec
from longvila_localcluster.operator_process import OperatorProcess
from longvila_localcluster.probes import poll
from longvila_localcluster.versions import load_versions


def job(name: str, nodes: int, ulysses: int = 8, ring: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LongVILAJob",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {
            "image": "localhost/longvila-trainer:0.1.0",
            "model": {
                "llm": "file:///opt/longvila/tiny/qwen2",
                "visionTower": "file:///opt/longvila/tiny/siglip",
            },
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


def tainted(core: Any) -> int:
    """Nodes still carrying a taint (new nodes start with node.kubernetes.io/not-ready)."""
    items = json.loads(core.list_node(_preload_content=False).data)["items"]
    return sum(1 for n in items if (n.get("spec") or {}).get("taints"))


def status_writes(op: OperatorProcess) -> int:
    """PATCHes of LongVILAJobs: the operator writes a job only through its status subresource."""
    found = op.metrics().items()
    return int(sum(v for k, v in found if k.startswith("longvila_api_requests_total{") and 'verb="PATCH"' in k
                   and 'kind="LongVILAJob"' in k))  # fmt: skip


def measure(info: ClusterInfo, op: OperatorProcess, nodes: int, up_at: float) -> dict[str, Any]:
    from kubernetes import client as k

    api = LocalCluster.client(info)
    core: Any = k.CoreV1Api(api)
    custom: Any = k.CustomObjectsApi(api)
    core.create_namespace({"metadata": {"name": "bench"}})
    out: dict[str, Any] = {}

    # 0. every node Ready (cluster up) and untainted (the node lifecycle controller)
    at_up = tainted(core)
    poll("no node tainted", lambda: tainted(core) == 0, 300, 0.2)
    out["nodes"] = {"tainted_at_up": at_up, "untainted_s_after_up": round(time.monotonic() - up_at, 2)}

    # 1. create → bound → Running
    req0, (cpu0, _), writes0 = op.api_requests(), op.cpu_seconds_and_rss(), status_writes(op)
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
    cpu1, rss1 = op.cpu_seconds_and_rss()
    out["create"] = {
        "pods": nodes,
        "created_s": round(t_created or 0.0, 2),
        "bound_s": round(t_bound or 0.0, 2),
        "running_s": round(t_running, 2),
        "api_requests": op.api_requests() - req0,
        "status_writes": status_writes(op) - writes0,
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
    req0, (cpu0, _), writes0 = op.api_requests(), op.cpu_seconds_and_rss(), status_writes(op)
    t0 = time.monotonic()
    set_node_managed(info, victim["name"], managed=False)
    poll(f"{victim['name']} NotReady", lambda: node_not_ready(core, victim["name"]), 120, 0.1)
    t_notready = time.monotonic() - t0
    poll("a1 Running", lambda: gang(core, "fail-sft-a1-", small)[2] == small, 300, 0.1)
    t_back = time.monotonic() - t0
    time.sleep(2.0)
    status = custom.get_namespaced_custom_object(GROUP, VERSION, "bench", PLURAL, "fail")["status"]
    cpu1, rss1 = op.cpu_seconds_and_rss()
    moved = status["placement"]["nodes"][victim["nodeRank"]]
    out["fail_node"] = {
        "pods": small,
        "node": victim["name"],
        "not_ready_s": round(t_notready, 2),
        "replacement_running_s": round(t_back, 2),
        "operator_after_not_ready_s": round(t_back - t_notready, 2),
        "replacement": f"{moved['name']} ({moved['domain']}; lost node was in {victim['domain']})",
        "restarts": status["restarts"],
        "failures": status.get("failures"),
        "api_requests": op.api_requests() - req0,
        "status_writes": status_writes(op) - writes0,
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
        up_at = time.monotonic()
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
            op = OperatorProcess(
                env,
                Path(tmp) / "operator.log",
                resync_s=10.0,
                extra_args=("--node-heartbeat-grace-seconds", str(NODE_HEARTBEAT_GRACE_SECONDS)),
            )
            op.start()
            time.sleep(1.0)  # initial lists done; measure steady state
            result = measure(info, op, a.nodes, up_at)
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
