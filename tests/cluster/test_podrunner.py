"""The pod runner against the real local cluster: pods on fake nodes run as local processes."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from longvila_localcluster.cluster import ClusterInfo, core_api, set_node_managed
from longvila_localcluster.podrunner import PodRunner, descendants
from longvila_localcluster.probes import node_ready, poll

pytestmark = pytest.mark.cluster
LABEL = "longvila.io/test-runner"


def pod(name: str, node: str, script: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {LABEL: "yes"}},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "longvila/trainer:test",
                    "command": [sys.executable, "-c", script],
                    "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
                }
            ],
        },
    }


@pytest.fixture
def runner(local_cluster: ClusterInfo, tmp_path: Path) -> Iterator[PodRunner]:
    lines: list[str] = []
    r = PodRunner(local_cluster, tmp_path, selectors=(f"{LABEL}=yes",), interval=0.2, say=lines.append)
    with r:
        yield r
    print("\n".join(lines))
    assert not r.errors, r.errors


def running(r: PodRunner, name: str) -> int:
    return poll(f"{name} started", lambda: (p := r.procs.get(f"default/{name}")) and p.proc.pid, 30)


def test_exit_code_is_reported_as_the_pod_status(local_cluster: ClusterInfo, runner: PodRunner) -> None:
    core, name = core_api(local_cluster), f"exit-{uuid.uuid4().hex[:6]}"
    script = "import os, sys; print('hello', os.environ['WHO'], os.environ['TMPDIR']); sys.exit(3)"
    core.create_namespaced_pod("default", pod(name, local_cluster.nodes[0], script, {"WHO": "runner"}))
    try:
        done = poll(
            f"{name} Failed",
            lambda: (p := core.read_namespaced_pod(name, "default")).status.phase == "Failed" and p,
            60,
        )
        term = done.status.container_statuses[0].state.terminated
        assert (term.exit_code, term.reason) == (3, "Error")
        log = (runner.dir / "pods" / "default" / name / "log").read_text()
        assert log.startswith("hello runner ") and f"/pods/default/{name}/tmp" in log
    finally:
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)


def test_deleting_a_pod_stops_its_process_tree(local_cluster: ClusterInfo, runner: PodRunner) -> None:
    core, name = core_api(local_cluster), f"del-{uuid.uuid4().hex[:6]}"
    # A parent and a child in its own session, as torchrun starts its workers.
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); time.sleep(600)"  # noqa: E501
    core.create_namespaced_pod("default", pod(name, local_cluster.nodes[0], script))
    pid = running(runner, name)
    tree = poll("child started", lambda: len(t := descendants(pid)) == 2 and t, 30)
    core.delete_namespaced_pod(name, "default")
    poll("process tree gone", lambda: not any(alive(p) for p in tree), 30)


def test_a_failed_node_kills_its_processes_at_once(local_cluster: ClusterInfo, runner: PodRunner) -> None:
    core, name, node = core_api(local_cluster), f"node-{uuid.uuid4().hex[:6]}", local_cluster.nodes[-1]
    core.create_namespaced_pod("default", pod(name, node, "import time; time.sleep(600)"))
    pid = running(runner, name)
    set_node_managed(local_cluster, node, managed=False)
    try:
        poll("process killed with its node", lambda: not alive(pid), 15)
        assert (
            core.read_namespaced_pod(name, "default").status.phase == "Running"
        )  # a dead node reports nothing
    finally:
        set_node_managed(local_cluster, node, managed=True)
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        poll(f"{node} Ready again", lambda: node_ready(core, node) == "True", 60)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
