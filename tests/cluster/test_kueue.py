"""LongVILAJobs queued by the real Kueue controller (pod integration) on the local cluster.

Kueue (built from sigs.k8s.io/kueue at the pinned version) runs beside the session's
control plane and manages pods in namespaces labelled longvila.io/kueue=enabled; each test
has such a namespace, its own ClusterQueue and a LocalQueue. The operator runs as in
test_operator.py, started after Kueue so it watches Kueue's Workloads. Pods "finish" through
KWOK's pod-exit stage (annotation longvila.io/fake-exit-code).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from longvila_localcluster.cluster import ClusterInfo, LocalCluster
from longvila_localcluster.kueue import enable_namespace
from operator_harness import OperatorProcess, job_manifest, wait

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "longvila.io", "v1alpha1", "longvilajobs"
KUEUE, KV = "kueue.x-k8s.io", "v1beta2"
FLAVOR = "gpu"


@pytest.fixture(scope="module")
def apis(kueue: ClusterInfo) -> tuple[Any, Any]:
    from kubernetes import client as k

    api = LocalCluster.client(kueue)
    return k.CoreV1Api(api), k.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def operator(
    kueue: ClusterInfo, cluster_env: dict[str, str], repo_root: Path, tmp_path_factory: Any, apis: Any
) -> Iterator[OperatorProcess]:
    crd = repo_root / "charts/longvila-operator/files/longvila.io_longvilajobs.yaml"
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(crd)], env=cluster_env, check=True)
    subprocess.run(
        ["kubectl", "wait", "--for=condition=Established", "crd/longvilajobs.longvila.io"],
        env=cluster_env,
        check=True,
        capture_output=True,
    )
    flavor = {"apiVersion": f"{KUEUE}/{KV}", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}}
    if not apis[1].list_cluster_custom_object(KUEUE, KV, "resourceflavors")["items"]:
        apis[1].create_cluster_custom_object(KUEUE, KV, "resourceflavors", flavor)
    log = tmp_path_factory.mktemp("operator-kueue") / "operator.log"
    op = OperatorProcess(cluster_env, log)
    op.start()
    print(f"\n[operator] log: {log}")
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(apis: tuple[Any, Any], operator: OperatorProcess) -> Iterator[str]:
    """A namespace Kueue manages, with LocalQueue `lq` → its own ClusterQueue of 0 GPUs."""
    core, custom = apis
    name = f"q-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    enable_namespace(core, name)
    custom.create_cluster_custom_object(KUEUE, KV, "clusterqueues", cluster_queue(name, 0))
    lq = {
        "apiVersion": f"{KUEUE}/{KV}",
        "kind": "LocalQueue",
        "metadata": {"name": "lq", "namespace": name},
        "spec": {"clusterQueue": name},
    }
    custom.create_namespaced_custom_object(KUEUE, KV, name, "localqueues", lq)
    yield name
    for job in custom.list_namespaced_custom_object(GROUP, VERSION, name, PLURAL)["items"]:
        custom.delete_namespaced_custom_object(GROUP, VERSION, name, PLURAL, job["metadata"]["name"])
    wait("pods gone", lambda: not core.list_namespaced_pod(name).items, 60)
    core.delete_namespace(name, grace_period_seconds=0)
    custom.delete_cluster_custom_object(KUEUE, KV, "clusterqueues", name)


def cluster_queue(name: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{KUEUE}/{KV}",
        "kind": "ClusterQueue",
        "metadata": {"name": name},
        "spec": {
            "namespaceSelector": {},
            "preemption": {"withinClusterQueue": "LowerPriority"},
            "resourceGroups": [
                {
                    "coveredResources": ["nvidia.com/gpu"],
                    "flavors": [
                        {"name": FLAVOR, "resources": [{"name": "nvidia.com/gpu", "nominalQuota": gpus}]}
                    ],
                }
            ],
        },
    }


def set_quota(apis: tuple[Any, Any], cq: str, gpus: int) -> None:
    body = cluster_queue(cq, gpus)
    apis[1].patch_cluster_custom_object(KUEUE, KV, "clusterqueues", cq, {"spec": body["spec"]})


def queued_job(name: str, ns: str, **kw: Any) -> dict[str, Any]:
    body = job_manifest(name, ns, ulysses=4, ring=2, **kw)
    body["spec"]["scheduling"]["queueName"] = "lq"
    return body


def create(apis: tuple[Any, Any], body: dict[str, Any]) -> None:
    apis[1].create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body)


def job(apis: tuple[Any, Any], ns: str, name: str) -> dict[str, Any]:
    return dict(apis[1].get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def cond(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def live(apis: tuple[Any, Any], ns: str, prefix: str) -> list[Any]:
    pods = apis[0].list_namespaced_pod(ns).items
    return sorted(
        (p for p in pods if p.metadata.name.startswith(prefix) and not p.metadata.deletion_timestamp),
        key=lambda p: p.metadata.name,
    )


def running(apis: tuple[Any, Any], ns: str, prefix: str, n: int) -> list[Any] | None:
    ps = live(apis, ns, prefix)
    return ps if len(ps) == n and all(p.status.phase == "Running" for p in ps) else None


def gated(pod: Any) -> bool:
    return any(g.name == "kueue.x-k8s.io/admission" for g in pod.spec.scheduling_gates or [])


def exit_all(apis: tuple[Any, Any], ns: str, prefix: str, code: int = 0) -> None:
    for p in live(apis, ns, prefix):
        body = {"metadata": {"annotations": {"longvila.io/fake-exit-code": str(code)}}}
        apis[0].patch_namespaced_pod(p.metadata.name, ns, body)


def phase_is(apis: tuple[Any, Any], ns: str, name: str, phase: str) -> dict[str, Any] | None:
    body = job(apis, ns, name)
    return body if body.get("status", {}).get("phase") == phase else None


def queued_for_quota(apis: tuple[Any, Any], ns: str, name: str) -> dict[str, Any] | None:
    """The job once it is Queued and Kueue's quota reason has reached its Admitted condition."""
    body = phase_is(apis, ns, name, "Queued")
    return body if body and "quota" in cond(body, "Admitted").get("message", "") else None


def workload(apis: tuple[Any, Any], ns: str, name: str) -> dict[str, Any] | None:
    from kubernetes.client.exceptions import ApiException

    try:
        return dict(apis[1].get_namespaced_custom_object(KUEUE, KV, ns, "workloads", name))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def test_no_quota_stays_queued_with_kueues_reason_then_quota_admits_and_it_runs(
    apis: tuple[Any, Any], ns: str
) -> None:
    create(apis, queued_job("q", ns, nodes=2, stages=2))
    body = wait("Queued with Kueue's reason", lambda: queued_for_quota(apis, ns, "q"), 60)
    admitted = cond(body, "Admitted")
    assert admitted["status"] == "False" and admitted["reason"] == "Pending", admitted
    assert "insufficient" in admitted["message"] and "nvidia.com/gpu" in admitted["message"], admitted
    pods = live(apis, ns, "q-s1-a0-")
    assert len(pods) == 2 and all(gated(p) and not p.spec.node_name for p in pods)
    wl = workload(apis, ns, "q-s1-a0") or {}  # one Workload, named after the group, one PodSet of 2
    assert [(ps["name"], ps["count"]) for ps in wl["spec"]["podSets"]] == [("workers", 2)]
    time.sleep(5)  # it stays queued: nothing times out, nothing is scheduled around Kueue
    body = job(apis, ns, "q")
    assert body["status"]["phase"] == "Queued" and not cond(body, "Unschedulable")
    assert all(not p.spec.node_name for p in live(apis, ns, "q-s1-a0-"))

    t0 = time.monotonic()
    set_quota(apis, ns, 16)
    ps = wait("s1 Running", lambda: running(apis, ns, "q-s1-a0-", 2), 60)
    print(f"\nFIGURE kueue quota available → all 2 pods Running: {time.monotonic() - t0:.1f}s")
    placed = {n["nodeRank"]: n["name"] for n in job(apis, ns, "q")["status"]["placement"]["nodes"]}
    assert [p.spec.node_name for p in ps] == [placed[0], placed[1]]  # our topology pinning held
    assert (
        ps[0].metadata.annotations["longvila.io/domain"] == ps[1].metadata.annotations["longvila.io/domain"]
    )
    body = wait("Running", lambda: phase_is(apis, ns, "q", "Running"), 30)
    assert cond(body, "Admitted")["status"] == "True" and ns in cond(body, "Admitted")["message"]

    exit_all(apis, ns, "q-s1-")  # the s1 group finishes and frees its quota for s2's group
    wait("s2 Running", lambda: running(apis, ns, "q-s2-a0-", 2), 60)
    assert (workload(apis, ns, "q-s2-a0") or {})["status"]["admission"]["clusterQueue"] == ns
    exit_all(apis, ns, "q-s2-")
    wait("Succeeded", lambda: phase_is(apis, ns, "q", "Succeeded"), 60)


def test_two_jobs_in_one_queue_run_one_after_the_other(apis: tuple[Any, Any], ns: str) -> None:
    set_quota(apis, ns, 16)  # room for one 2 × 8-GPU job at a time; the cluster has 32 GPUs
    create(apis, queued_job("first", ns, nodes=2, stages=1))
    wait("first Running", lambda: running(apis, ns, "first-s1-a0-", 2), 60)
    create(apis, queued_job("second", ns, nodes=2, stages=1))
    second = wait("second Queued", lambda: queued_for_quota(apis, ns, "second"), 60)
    assert "insufficient unused quota" in cond(second, "Admitted")["message"], cond(second, "Admitted")
    assert all(gated(p) for p in live(apis, ns, "second-s1-a0-"))

    exit_all(apis, ns, "first-s1-")
    wait("first Succeeded", lambda: phase_is(apis, ns, "first", "Succeeded"), 60)
    wait("second Running", lambda: running(apis, ns, "second-s1-a0-", 2), 60)
    assert cond(job(apis, ns, "second"), "Admitted")["status"] == "True"
    exit_all(apis, ns, "second-s1-")
    wait("second Succeeded", lambda: phase_is(apis, ns, "second", "Succeeded"), 60)


def test_priority_classes_reach_the_pods_and_kueues_workload(apis: tuple[Any, Any], ns: str) -> None:
    from kubernetes import client as k

    sched = k.SchedulingV1Api(apis[0].api_client)
    pc, wpc = f"lv-{ns}", f"lv-w-{ns}"
    sched.create_priority_class({"metadata": {"name": pc}, "value": 1000, "globalDefault": False})
    wpc_body = {"apiVersion": f"{KUEUE}/{KV}", "kind": "WorkloadPriorityClass", "metadata": {"name": wpc}}
    apis[1].create_cluster_custom_object(KUEUE, KV, "workloadpriorityclasses", {**wpc_body, "value": 500})
    try:
        pod_only = queued_job("prio", ns, nodes=1, stages=1)
        pod_only["spec"]["scheduling"]["priorityClassName"] = pc
        both = queued_job("wprio", ns, nodes=1, stages=1)
        both["spec"]["scheduling"].update(priorityClassName=pc, workloadPriorityClassName=wpc)
        for body in (pod_only, both):
            create(apis, body)
        for name in ("prio", "wprio"):
            wait(f"{name} Queued", lambda name=name: phase_is(apis, ns, name, "Queued"), 60)
            pod = live(apis, ns, f"{name}-s1-a0-")[0]
            assert pod.spec.priority_class_name == pc and pod.spec.priority == 1000
        # Kueue takes the pods' PriorityClass as the Workload's priority …
        spec = wait("prio's Workload", lambda: workload(apis, ns, "prio-s1-a0"), 30)["spec"]
        assert spec["priority"] == 1000, spec
        assert spec["priorityClassRef"] == {"group": "scheduling.k8s.io", "kind": "PriorityClass", "name": pc}
        # … unless a WorkloadPriorityClass is named: Kueue's priority apart from the scheduler's.
        spec = wait("wprio's Workload", lambda: workload(apis, ns, "wprio-s1-a0"), 30)["spec"]
        assert spec["priority"] == 500, spec
        assert (
            spec["priorityClassRef"]["kind"] == "WorkloadPriorityClass"
            and spec["priorityClassRef"]["name"] == wpc
        )
    finally:
        sched.delete_priority_class(pc)
        apis[1].delete_cluster_custom_object(KUEUE, KV, "workloadpriorityclasses", wpc)


def test_a_higher_priority_job_preempts_the_running_one_which_queues_again_and_resumes(
    apis: tuple[Any, Any], ns: str
) -> None:
    """Kueue preempts `low` for `high` (one quota, LowerPriority preemption): `low` goes back to
    Queued as a new attempt (reason Preempted, no budget spent), `high` runs, then `low` is
    admitted again. No duplicate groups, no gated pods left. (Training and its resume with the
    same losses: tests/e2e/test_preemption.py.)"""
    classes = {f"low-{ns}": 100, f"high-{ns}": 1000}
    for name, value in classes.items():
        body = {"apiVersion": f"{KUEUE}/{KV}", "kind": "WorkloadPriorityClass", "metadata": {"name": name}}
        apis[1].create_cluster_custom_object(KUEUE, KV, "workloadpriorityclasses", {**body, "value": value})
    try:
        set_quota(apis, ns, 16)  # one 2 × 8-GPU job at a time
        low = queued_job("low", ns, nodes=2, stages=1, max_restarts=0)
        low["spec"]["scheduling"]["workloadPriorityClassName"] = f"low-{ns}"
        low["spec"]["failurePolicy"]["maxDisruptionRestarts"] = 0  # a preemption spends neither budget
        create(apis, low)
        wait("low Running", lambda: running(apis, ns, "low-s1-a0-", 2), 60)
        high = queued_job("high", ns, nodes=2, stages=1)
        high["spec"]["scheduling"]["workloadPriorityClassName"] = f"high-{ns}"
        t0 = time.monotonic()
        create(apis, high)

        def requeued() -> dict[str, Any] | None:
            body = phase_is(apis, ns, "low", "Queued")
            return body if body and body["status"].get("failures") else None

        body = wait("low preempted and Queued", requeued, 60)
        print(f"\nFIGURE kueue high-priority job created → low requeued: {time.monotonic() - t0:.1f}s")
        s = body["status"]
        assert s["failures"] == {"Preempted": 1} and s["restarts"] == 1, s
        last = s["lastFailure"]
        assert (last["class"], last["action"], last["attempt"]) == ("Preempted", "Requeue", 0), last
        assert last["reason"] == "InClusterQueue", last  # Kueue's Preempted condition: within the queue
        assert "Preempted to accommodate a workload" in last["message"], last
        assert cond(body, "Admitted")["status"] == "False" and cond(body, "Admitted")["reason"] == "Preempted"
        wait("high Running", lambda: running(apis, ns, "high-s1-a0-", 2), 60)
        print(f"FIGURE kueue high-priority job created → its pods Running: {time.monotonic() - t0:.1f}s")
        # The preempted group is gone; its successor is one new group, held by Kueue's gate.
        wait("low's old pods gone", lambda: not live(apis, ns, "low-s1-a0-"), 60)
        new = live(apis, ns, "low-s1-a1-")
        assert len(new) == 2 and all(gated(p) for p in new)
        groups = {p.metadata.labels["kueue.x-k8s.io/pod-group-name"] for p in live(apis, ns, "low-")}
        assert groups == {"low-s1-a1"}
        body = wait("low still Queued, Kueue's reason inside", lambda: queued_for_quota(apis, ns, "low"), 60)
        admitted = cond(body, "Admitted")
        assert admitted["reason"] == "Preempted" and "requeued after Preempted" in admitted["message"], (
            admitted
        )

        exit_all(apis, ns, "high-s1-")
        t1 = time.monotonic()
        wait("low admitted again and Running", lambda: running(apis, ns, "low-s1-a1-", 2), 60)
        print(f"FIGURE kueue preemptor finished → preempted job Running again: {time.monotonic() - t1:.1f}s")
        body = wait("low phase Running", lambda: phase_is(apis, ns, "low", "Running"), 30)
        assert cond(body, "Admitted")["status"] == "True" and body["status"]["failures"] == {"Preempted": 1}
        assert not any(gated(p) for p in live(apis, ns, "low-"))
        exit_all(apis, ns, "low-s1-a1-")
        body = wait("low Succeeded", lambda: phase_is(apis, ns, "low", "Succeeded"), 60)
        assert body["status"]["restarts"] == 1 and body["status"]["failures"] == {"Preempted": 1}
        assert phase_is(apis, ns, "high", "Succeeded") and not job(apis, ns, "high")["status"].get("failures")
    finally:
        for name in classes:
            apis[1].delete_cluster_custom_object(KUEUE, KV, "workloadpriorityclasses", name)


def test_suspend_while_queued_and_resume_leaves_no_stuck_gates(apis: tuple[Any, Any], ns: str) -> None:
    create(apis, queued_job("sus", ns, nodes=2, stages=1))
    wait("Queued", lambda: phase_is(apis, ns, "sus", "Queued"), 60)
    apis[1].patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "sus", {"spec": {"suspend": True}})
    wait("Suspended", lambda: phase_is(apis, ns, "sus", "Suspended") and not live(apis, ns, "sus-"), 60)
    assert cond(job(apis, ns, "sus"), "Admitted")["status"] == "False"
    apis[1].patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "sus", {"spec": {"suspend": False}})
    wait("Queued again", lambda: phase_is(apis, ns, "sus", "Queued"), 60)
    set_quota(apis, ns, 16)
    wait("Running", lambda: running(apis, ns, "sus-s1-a0-", 2), 60)  # the same group, a new Workload
    body = wait("phase Running", lambda: phase_is(apis, ns, "sus", "Running"), 30)
    assert body["status"]["restarts"] == 0  # resuming is no failure, even before the old pods are gone


def test_the_documented_queues_pass_kueues_own_validation(
    apis: tuple[Any, Any], cluster_env: dict[str, str], repo_root: Path, operator: OperatorProcess
) -> None:
    """examples/kueue/queues.yaml (README, docs/kueue.md), through Kueue's webhooks (server dry run)."""
    core = apis[0]
    core.create_namespace({"metadata": {"name": "llm"}})
    try:
        out = subprocess.run(
            ["kubectl", "apply", "--dry-run=server", "-f", str(repo_root / "examples/kueue/queues.yaml")],
            env=cluster_env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.count("(server dry run)") == 5, out.stdout
    finally:
        core.delete_namespace("llm")
