"""`longvila-cluster`: the local cluster for tests and the demo (`make cluster-up` etc.)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .build import ensure_all
from .cluster import ClusterInfo, LocalCluster, core_api, set_node_managed
from .nodes import DEFAULT_DOMAIN_LABEL, NodeSpec
from .versions import load_versions


def default_dir() -> Path:
    return Path(os.environ.get("LONGVILA_CLUSTER_DIR", ".localcluster"))


def _info(run_dir: Path) -> ClusterInfo:
    try:
        return ClusterInfo.load(run_dir)
    except FileNotFoundError:
        raise SystemExit(
            f"no local cluster is running in {run_dir} (start one with `make cluster-up`)"
        ) from None


def cmd_up(a: argparse.Namespace) -> int:
    spec = NodeSpec(
        nodes=a.nodes, gpus_per_node=a.gpus_per_node, domains=a.domains, domain_label=a.domain_label
    )
    t0 = time.monotonic()
    binaries = ensure_all(load_versions())
    print(f"binaries ready in {time.monotonic() - t0:.1f}s")
    info = LocalCluster(a.dir, binaries).up(spec, kueue=a.kueue)
    print()
    print(Path(info.kubeconfig).read_text())
    print(f"kubeconfig: {info.kubeconfig}")
    print(f"logs:       {Path(info.run_dir) / 'logs'}")
    print(
        f"S3:         {info.s3_endpoint} bucket {info.s3_bucket} (credentials in {info.run_dir}/env "
        f"and Secret default/longvila-s3)"
    )
    print(f"use it:     source {Path(info.run_dir) / 'env'} && kubectl get nodes -L {info.domain_label}")
    if a.kueue:
        from .kueue_manifests import NAMESPACE_LABEL, NAMESPACE_LABEL_VALUE

        print(
            f"Kueue:      manages pods in namespaces labelled {NAMESPACE_LABEL}={NAMESPACE_LABEL_VALUE}; "
            f"log {Path(info.run_dir) / 'logs' / 'kueue.log'}"
        )
    return 0


def cmd_down(a: argparse.Namespace) -> int:
    stopped = LocalCluster(a.dir, {}).down()
    print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    info = _info(a.dir)
    core = core_api(info)
    for n in core.list_node().items:
        ready = next((c.status for c in n.status.conditions or [] if c.type == "Ready"), "?")
        gpus = (n.status.allocatable or {}).get("nvidia.com/gpu", "0")
        print(
            f"{n.metadata.name:16} Ready={ready:8} gpus={gpus:3} {info.domain_label}="
            f"{n.metadata.labels.get(info.domain_label, '')}"
        )
    return 0


def cmd_fail(a: argparse.Namespace) -> int:
    set_node_managed(_info(a.dir), a.node, managed=False)
    print(f"{a.node}: heartbeats stopped; it turns NotReady within seconds and its pods are evicted")
    return 0


def cmd_restore(a: argparse.Namespace) -> int:
    set_node_managed(_info(a.dir), a.node, managed=True)
    print(f"{a.node}: heartbeats resumed")
    return 0


def cmd_env(a: argparse.Namespace) -> int:
    info = _info(a.dir)
    if a.json:
        print(json.dumps(info.env()))
    else:
        print((Path(info.run_dir) / "env").read_text(), end="")
    return 0


def cmd_build(a: argparse.Namespace) -> int:
    for name, p in sorted(ensure_all(load_versions()).items()):
        print(f"{name:24} {p}")
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from .demo import DemoError, DemoOptions, run_demo

    opts = DemoOptions(work=a.work, fail_node=a.fail_node, niah=a.niah, keep=a.keep, timeout_s=a.timeout)
    try:
        run_demo(opts)
    except (DemoError, RuntimeError) as e:  # DemoError, or a helm/kubectl step that failed
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_smoke(a: argparse.Namespace) -> int:
    from .smoke import run_smoke_demo

    return run_smoke_demo(a.dir)


def cmd_run_pods(a: argparse.Namespace) -> int:
    from .podrunner import TRAINER_PODS, PodRunner

    info = _info(a.dir)
    runner = PodRunner(info, a.dir / "runner", selectors=(TRAINER_PODS, *a.selector))
    print(f"running pods matching {', '.join(runner.selectors)}; logs under {a.dir / 'runner' / 'pods'}")
    try:
        runner.loop()
    except KeyboardInterrupt:
        runner.stop()
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longvila-cluster", description=__doc__)
    p.add_argument("--dir", type=Path, default=default_dir(), help="run directory (default: .localcluster)")
    sub = p.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start etcd, the control plane, KWOK GPU nodes and S3")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--gpus-per-node", type=int, default=8)
    up.add_argument("--domains", type=int, default=2, help="InfiniBand domains the nodes are spread over")
    up.add_argument("--domain-label", default=DEFAULT_DOMAIN_LABEL)
    up.add_argument("--kueue", action="store_true", help="also start the Kueue controller (pod integration)")
    up.set_defaults(fn=cmd_up)
    sub.add_parser("down", help="stop every process the cluster started").set_defaults(fn=cmd_down)
    sub.add_parser("status", help="list nodes").set_defaults(fn=cmd_status)
    f = sub.add_parser("fail-node", help="make a node NotReady the way a dead kubelet would")
    f.add_argument("node")
    f.set_defaults(fn=cmd_fail)
    r = sub.add_parser("restore-node", help="resume a failed node's heartbeats")
    r.add_argument("node")
    r.set_defaults(fn=cmd_restore)
    e = sub.add_parser("env", help="print the shell exports (KUBECONFIG, PATH, S3 credentials)")
    e.add_argument("--json", action="store_true")
    e.set_defaults(fn=cmd_env)
    sub.add_parser("build", help="build (or find cached) binaries").set_defaults(fn=cmd_build)
    d = sub.add_parser("demo", help="kubectl apply a LongVILAJob and train it for real (make demo)")
    d.add_argument("--work", type=Path, default=Path(".demo"), help="demo directory (default: .demo)")
    d.add_argument("--no-fail-node", dest="fail_node", action="store_false", help="skip the node failure")
    d.add_argument("--no-niah", dest="niah", action="store_false", help="skip the needle-in-a-haystack table")
    d.add_argument("--keep", action="store_true", help="keep the cluster up at the end until Ctrl-C")
    d.add_argument("--timeout", type=float, default=1200.0, help="seconds the job may take")
    d.set_defaults(fn=cmd_demo)
    sub.add_parser("smoke", help="the cluster smoke check: a GPU pod, then its node fails").set_defaults(
        fn=cmd_smoke
    )
    rp = sub.add_parser("run-pods", help="run the operator's pods on fake nodes as local processes")
    rp.add_argument("--selector", action="append", default=[], help="also run pods with these labels")
    rp.set_defaults(fn=cmd_run_pods)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        rc: int = a.fn(a)
    except (RuntimeError, TimeoutError, ValueError) as e:
        print(f"longvila-cluster {a.cmd}: {e}", file=sys.stderr)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
