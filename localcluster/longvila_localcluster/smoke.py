"""The cluster smoke demo: a GPU pod scheduled to a fake node, then that node fails."""

from __future__ import annotations

import time
from pathlib import Path

from .build import ensure_all
from .cluster import ClusterInfo, LocalCluster, core_api, set_node_managed
from .nodes import NodeSpec
from .probes import gpu_pod, node_ready, poll
from .versions import load_versions


def run_smoke_demo(run_dir: Path) -> int:
    t0 = time.monotonic()
    cluster = LocalCluster(run_dir, ensure_all(load_versions()))
    started_here = not (run_dir / "cluster.json").exists()
    info = cluster.up(NodeSpec()) if started_here else ClusterInfo.load(run_dir)
    core = core_api(info)
    try:
        core.create_namespaced_pod("default", gpu_pod("smoke-8gpu", 8))
        pod = poll(
            "smoke-8gpu Running",
            lambda: (p := core.read_namespaced_pod("smoke-8gpu", "default")).status.phase == "Running" and p,
            30,
        )
        node = pod.spec.node_name
        print(f"pod smoke-8gpu (8 × nvidia.com/gpu) scheduled to {node} and Running")
        t_fail = time.monotonic()
        set_node_managed(info, node, managed=False)
        print(f"failing {node} (heartbeats stopped)…")
        poll(f"{node} NotReady", lambda: node_ready(core, node) != "True", 60)
        t_nr = time.monotonic() - t_fail
        poll(
            "eviction of smoke-8gpu",
            lambda: core.read_namespaced_pod("smoke-8gpu", "default").metadata.deletion_timestamp is not None,
            60,
        )
        print(f"{node} NotReady after {t_nr:.1f}s; smoke-8gpu evicted after {time.monotonic() - t_fail:.1f}s")
        set_node_managed(info, node, managed=True)
        core.delete_namespaced_pod("smoke-8gpu", "default", grace_period_seconds=0)
        poll(f"{node} Ready again", lambda: node_ready(core, node) == "True", 60)
        print(f"{node} restored")
    finally:
        if started_here:
            cluster.down()
    print(f"smoke demo done in {time.monotonic() - t0:.1f}s")
    return 0
