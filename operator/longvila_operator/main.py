"""`longvila-operator`: runs the kopf operator for LongVILAJobs.

    longvila-operator --namespace team-a            # one or more namespaces
    longvila-operator --all-namespaces              # cluster-wide
    longvila-operator -A --metrics-port 9090 --liveness-port 8080

Run one replica (`--standalone`, the default): kopf's peering is not leader election,
two equal-priority operators both freeze. The Deployment should use strategy Recreate.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

import kopf

from .apply import ApiError, Kube, NoCredentialsError
from .handlers import State, build
from .metrics import Metrics


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvila-operator", description=__doc__.split("\n")[0])
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("-n", "--namespace", action="append", default=[], help="watch this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    p.add_argument("--metrics-port", type=int, default=9090, help="Prometheus /metrics port; 0 = off")
    p.add_argument("--liveness-port", type=int, default=8080, help="kopf's /healthz port; 0 = off")
    p.add_argument(
        "--standalone",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="no kopf peering (one replica; the default)",
    )
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: in-cluster, then $KUBECONFIG"
    )
    p.add_argument(
        "--resync-seconds", type=float, default=10.0, help="reconcile every job at least this often"
    )
    p.add_argument(
        "--kueue",
        choices=("auto", "off"),
        default="auto",
        help="watch Kueue's Workloads (queue status, docs/kueue.md) when the API server serves them",
    )
    p.add_argument(
        "--node-heartbeat-grace-seconds",
        type=float,
        default=20.0,
        help="a node whose Lease is not renewed this long counts as lost when a pod of its gang fails "
        "(kubelets renew every 10 s by default)",
    )
    p.add_argument(
        "--progress-seconds",
        type=float,
        default=5.0,
        help="read each running job's rank-0 metrics, and rewrite status.progress, at most this often",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def served_kueue(kube: Kube) -> str | None:
    """The kueue.x-k8s.io version (preferred first) that serves Workloads, or None without Kueue."""
    try:
        group = kube.request("GET", "/apis/kueue.x-k8s.io")
    except ApiError as err:
        if err.code == 404:
            return None
        raise
    versions = [group["preferredVersion"]["version"], *(v["version"] for v in group.get("versions") or [])]
    for version in dict.fromkeys(versions):
        served = kube.request("GET", f"/apis/kueue.x-k8s.io/{version}")
        if any(r.get("name") == "workloads" for r in served.get("resources") or []):
            return str(version)
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not args.verbose:  # kopf logs every handler call at INFO: a line per pod event
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    metrics = Metrics()
    try:
        kube = Kube.from_env(args.kubeconfig, on_request=metrics.request)
    except NoCredentialsError as e:
        print(f"longvila-operator: error: {e}", file=sys.stderr)
        return 2
    state = State(kube=kube, metrics=metrics, resync_s=args.resync_seconds)
    state.heartbeat_grace = args.node_heartbeat_grace_seconds
    state.scraper.interval = args.progress_seconds
    state.kueue = served_kueue(kube) if args.kueue == "auto" else None
    watched = f"watching Workloads (kueue.x-k8s.io/{state.kueue})" if state.kueue else "Workloads not watched"
    logging.getLogger("longvila.operator").info("Kueue: %s", watched)
    registry = build(state)
    if args.metrics_port:
        metrics.serve(args.metrics_port)
    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    asyncio.run(
        kopf.operator(
            registry=registry,
            standalone=args.standalone,
            clusterwide=args.all_namespaces,
            namespaces=args.namespace,
            liveness_endpoint=liveness,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
