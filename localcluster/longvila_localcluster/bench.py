"""Cluster figures for docs/benchmarks.md: cold build, warm start, node-loss eviction.

python -m longvila_localcluster.bench [--trials 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from .build import components, ensure_all
from .cluster import LocalCluster, core_api, set_node_managed
from .nodes import NodeSpec
from .probes import gpu_pod, node_ready, poll
from .versions import cache_root, load_versions


def cold_build_seconds() -> dict[str, float]:
    """Seconds each component's last cold build took (recorded by build.py)."""
    out = {}
    for c in components(load_versions()):
        f = cache_root() / "build-logs" / f"{c.name}-{c.version}.seconds"
        if f.exists():
            out[c.name] = float(f.read_text())
    return out


def _trial(binaries: dict[str, Path], nodes: int) -> tuple[float, float, float]:
    """One cold-process, warm-binary start, then one node failure: (up, NotReady, evicted) seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp), binaries, die_with_parent=True)
        t0 = time.monotonic()
        info = cluster.up(NodeSpec(nodes=nodes), progress=lambda m: None)
        up = time.monotonic() - t0
        try:
            core = core_api(info)
            node = info.nodes[0]
            core.create_namespaced_pod("default", gpu_pod("victim", 8, {"kubernetes.io/hostname": node}))
            poll(
                "victim Running",
                lambda: core.read_namespaced_pod("victim", "default").status.phase == "Running",
                60,
            )
            t1 = time.monotonic()
            set_node_managed(info, node, managed=False)
            poll("NotReady", lambda: node_ready(core, node) != "True", 60, interval=0.05)
            nr = time.monotonic() - t1
            poll(
                "eviction",
                lambda: core.read_namespaced_pod("victim", "default").metadata.deletion_timestamp is not None,
                60,
                interval=0.05,
            )
            return up, nr, time.monotonic() - t1
        finally:
            cluster.down()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    binaries = ensure_all(load_versions())
    ups: list[float] = []
    not_ready: list[float] = []
    evicted: list[float] = []
    for trial in range(a.trials):
        up, nr, ev = _trial(binaries, a.nodes)
        ups.append(up)
        not_ready.append(nr)
        evicted.append(ev)
        print(f"trial {trial + 1}: up {up:.1f}s, NotReady {nr:.1f}s, evicted {ev:.1f}s", flush=True)
    res = {
        "cold_build_s": cold_build_seconds(),
        "warm_up_s": {"median": statistics.median(ups), "max": max(ups)},
        "fail_node_not_ready_s": {"median": statistics.median(not_ready), "max": max(not_ready)},
        "fail_node_evicted_s": {"median": statistics.median(evicted), "max": max(evicted)},
        "nodes": a.nodes,
        "trials": a.trials,
    }
    print(json.dumps(res, indent=None if a.json else 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
