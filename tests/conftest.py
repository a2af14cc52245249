"""Shared fixtures. The local cluster is real (built from Go modules on first use)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One cluster per test session: 4 nodes × 8 GPUs in 2 InfiniBand domains.

    Its processes get PR_SET_PDEATHSIG, so even a SIGKILLed pytest leaves no orphan.
    """
    from longvila_localcluster.build import ensure_all
    from longvila_localcluster.cluster import LocalCluster
    from longvila_localcluster.nodes import NodeSpec
    from longvila_localcluster.versions import load_versions

    t0 = time.monotonic()
    binaries = ensure_all(load_versions())
    run_dir = tmp_path_factory.mktemp("localcluster")
    cluster = LocalCluster(run_dir, binaries, die_with_parent=True)
    info = cluster.up(
        NodeSpec(nodes=4, gpus_per_node=8, domains=2), progress=lambda m: print(f"[cluster] {m}")
    )
    print(f"[cluster] ready {time.monotonic() - t0:.1f}s after the fixture started")
    try:
        yield info
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kueue(local_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real Kueue controller on the session's cluster (pod integration); yields the cluster.

    It manages pods only in namespaces labelled longvila.io/kueue=enabled
    (longvila_localcluster.kueue.enable_namespace), so other tests' pods never meet it.
    """
    from longvila_localcluster.build import ensure_all
    from longvila_localcluster.kueue import start_kueue
    from longvila_localcluster.processes import Supervisor
    from longvila_localcluster.versions import load_versions

    t0 = time.monotonic()
    run_dir = tmp_path_factory.mktemp("kueue")
    sup = Supervisor(run_dir, die_with_parent=True)
    kubeconfig = local_cluster.kubeconfig  # type: ignore[attr-defined]
    try:
        start_kueue(sup, kubeconfig, ensure_all(load_versions()), run_dir, lambda m: print(f"[kueue] {m}"))
        print(f"[kueue] ready {time.monotonic() - t0:.1f}s after the fixture started")
        yield local_cluster
    finally:
        sup.stop_recorded()


@pytest.fixture(scope="session")
def cluster_env(local_cluster: object) -> dict[str, str]:
    env = dict(os.environ)
    env.update(local_cluster.env())  # type: ignore[attr-defined]
    return env


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Only versitygw (no Kubernetes), on a free loopback port, with one bucket.

    Yields endpoint, access_key, secret_key and bucket; the process dies with pytest.
    """
    from longvila_localcluster.s3 import private_s3

    with private_s3(tmp_path_factory.mktemp("s3server")) as server:
        yield server.as_dict()
