"""Quota available → all pods Running, through the real Kueue, for docs/benchmarks.md.

    python -m longvila_localcluster.benches.kueue_admission [--nodes 4] [--trials 3] [--json]

Starts its own local cluster (4 KWOK nodes × 8 GPUs in 2 domains) with Kueue, the operator
(`longvila-operator -A`, which finds Kueue and watches its Workloads), a ResourceFlavor, a
ClusterQueue with no GPU quota and a LocalQueue. Each trial creates a `--nodes`-node
LongVILAJob in that queue, waits until it is Queued with Kueue's reason on its Admitted
condition, then sets the ClusterQueue's GPU quota to what the job needs and times, from that
patch: Kueue's admission (the gates lifted), every pod bound, every pod Running. Then it
deletes the job and takes the quota away again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from longvila_operator import crd
from longvila_operator.api import GROUP, PLURAL, VERSION

from longvila_localcluster.benches.operator_scale import job
from longvila_localcluster.build import ensure_all
from longvila_localcluster.cluster import LocalCluster
from longvila_localcluster.kueue import enable_namespace, kubectl_apply
from longvila_localcluster.nodes import NodeSpec
from longvila_localcluster.operator_process import OperatorProcess
from longvila_localcluster.probes import poll
from longvila_localcluster.versions import load_versions

KUEUE, KV, NS, CQ = "kueue.x-k8s.io", "v1beta2", "bench", "bench"
GATE = "kueue.x-k8s.io/admission"


def queue_objects(gpus: int) -> list[dict[str, Any]]:
    quota = [{"name": "nvidia.com/gpu", "nominalQuota": gpus}]
    return [
        {"apiVersion": f"{KUEUE}/{KV}", "kind": "ResourceFlavor", "metadata": {"name": "gpu"}},
        {
            "apiVersion": f"{KUEUE}/{KV}",
            "kind": "ClusterQueue",
            "metadata": {"name": CQ},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {"coveredResources": ["nvidia.com/gpu"], "flavors": [{"name": "gpu", "resources": quota}]}
                ],
            },
        },
        {
            "apiVersion": f"{KUEUE}/{KV}",
            "kind": "LocalQueue",
            "metadata": {"name": "lq", "namespace": NS},
            "spec": {"clusterQueue": CQ},
        },
    ]


def pods_state(core: Any, prefix: str) -> tuple[int, int, int, int]:
    """(pods, ungated, bound, running) of the live pods whose name starts with prefix (raw JSON)."""
    items = json.loads(core.list_namespaced_pod(NS, _preload_content=False).data)["items"]
    pods = [p for p in items if p["metadata"]["name"].startswith(prefix)]
    pods = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    ungated = sum(not any(g["name"] == GATE for g in p["spec"].get("schedulingGates") or []) for p in pods)
    bound = sum(bool(p["spec"].get("nodeName")) for p in pods)
    return len(pods), ungated, bound, sum(p.get("status", {}).get("phase") == "Running" for p in pods)


def trial(info: Any, core: Any, custom: Any, nodes: int, i: int) -> dict[str, float]:
    name = f"q{i}"
    body = job(name, nodes, ulysses=8, ring=2)
    body["spec"]["scheduling"] = {"queueName": "lq"}
    custom.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, body)

    def queued() -> bool:
        status = custom.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name).get("status", {})
        admitted: dict[str, Any] = next(
            (c for c in status.get("conditions", []) if c["type"] == "Admitted"), {}
        )
        return status.get("phase") == "Queued" and "quota" in admitted.get("message", "")

    poll(f"{name} Queued with Kueue's reason", queued, 120, 0.2)
    patch = {"spec": queue_objects(nodes * 8)[1]["spec"]}
    t0 = time.monotonic()
    custom.patch_cluster_custom_object(KUEUE, KV, "clusterqueues", CQ, patch)
    marks: dict[str, float] = {}
    prefix = f"{name}-sft-a0-"
    while "running" not in marks:
        n, ungated, bound, running = pods_state(core, prefix)
        now = time.monotonic() - t0
        for key, count in (("admitted", ungated), ("bound", bound), ("running", running)):
            if key not in marks and n == nodes and count == nodes:
                marks[key] = now
        if now > 300:
            raise TimeoutError(f"{running}/{nodes} Running 300 s after the quota was set")
        time.sleep(0.05)
    custom.delete_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
    custom.patch_cluster_custom_object(KUEUE, KV, "clusterqueues", CQ, {"spec": queue_objects(0)[1]["spec"]})
    poll(f"{name}'s pods gone", lambda: pods_state(core, f"{name}-")[0] == 0, 120, 0.2)
    return {k: round(v, 2) for k, v in marks.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nodes", type=int, default=4, help="nodes of the job (the cluster has 4)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    from kubernetes import client as k

    binaries = ensure_all(load_versions())
    work = Path(tempfile.mkdtemp(prefix="kueue-bench-"))
    cluster = LocalCluster(work / "cluster", binaries, die_with_parent=True)
    try:
        info = cluster.up(NodeSpec(nodes=4, gpus_per_node=8, domains=2), progress=print, kueue=True)
        api = LocalCluster.client(info)
        core: Any = k.CoreV1Api(api)
        custom: Any = k.CustomObjectsApi(api)
        kubectl_apply(binaries["kubectl"], info.kubeconfig, json.dumps(crd.crd()))
        core.create_namespace({"metadata": {"name": NS}})
        enable_namespace(core, NS)
        for obj in queue_objects(0):
            kubectl_apply(binaries["kubectl"], info.kubeconfig, json.dumps(obj))
        op = OperatorProcess(
            {**info.env(), "PATH": ":".join(info.bin_path) + ":/usr/bin:/bin"},
            work / "operator.log",
            resync_s=10.0,
        )
        op.start()
        try:
            results = [trial(info, core, custom, a.nodes, i) for i in range(a.trials)]
        finally:
            op.stop()
    finally:
        cluster.down()
        shutil.rmtree(work, ignore_errors=True)
    summary = {key: statistics.median(r[key] for r in results) for key in ("admitted", "bound", "running")}
    if a.json:
        print(json.dumps({"nodes": a.nodes, "trials": results, "median": summary}))
    else:
        print(f"quota available → (median of {a.trials}, {a.nodes} nodes × 8 GPUs)")
        for key, label in (
            ("admitted", "Kueue lifts the gates"),
            ("bound", "all bound"),
            ("running", "all Running"),
        ):
            print(f"  {label:24} {summary[key]:6.2f} s   trials: {[r[key] for r in results]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
