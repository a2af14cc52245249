"""The operator against the real local cluster: pods, stages, node loss, restarts, suspend, crashes.

One operator subprocess (all namespaces) serves the module; each test has its own
namespace. Workers "finish" through KWOK's pod-exit stage (annotation
longvila.io/fake-exit-code), nodes "die" through set_node_managed (heartbeats stop).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from longvila_localcluster.cluster import ClusterInfo, LocalCluster, set_node_managed
from longvila_localcluster.probes import node_ready
from operator_harness import OperatorProcess, env_of, job_manifest, wait

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL = "longvila.io", "v1alpha1", "longvilajobs"
# Node loss → replacement pods Running. The node goes NotReady ~6–8 s after its heartbeats
# stop (lease 4 s, grace 6 s); the operator then restarts the gang in about a second. The
# bound leaves room for a loaded 2-core CI machine; the measured figure is printed.
RECOVERY_BOUND_S = 40.0


@pytest.fixture(scope="module")
def apis(local_cluster: ClusterInfo) -> tuple[Any, Any]:
    from kubernetes import client as k

    api = LocalCluster.client(local_cluster)
    return k.CoreV1Api(api), k.CustomObjectsApi(api)


@pytest.fixture(scope="module")
def operator(
    local_cluster: ClusterInfo, cluster_env: dict[str, str], repo_root: Path, tmp_path_factory: Any
) -> Iterator[OperatorProcess]:
    crd = repo_root / "charts/longvila-operator/files/longvila.io_longvilajobs.yaml"
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(crd)], env=cluster_env, check=True)
    subprocess.run(
        ["kubectl", "wait", "--for=condition=Established", "crd/longvilajobs.longvila.io"],
        env=cluster_env,
        check=True,
        capture_output=True,
    )
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(cluster_env, log)
    op.start()
    print(f"\n[operator] log: {log}")
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def ns(apis: tuple[Any, Any], operator: OperatorProcess) -> Iterator[str]:
    core, _ = apis
    name = f"t-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_collection_namespaced_pod(name, grace_period_seconds=0)  # free the GPUs at once
    core.delete_namespace(name, grace_period_seconds=0)


def create(apis: tuple[Any, Any], body: dict[str, Any]) -> None:
    apis[1].create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], PLURAL, body)


def job(apis: tuple[Any, Any], ns: str, name: str) -> dict[str, Any]:
    return dict(apis[1].get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def patch_spec(apis: tuple[Any, Any], ns: str, name: str, spec: dict[str, Any]) -> None:
    apis[1].patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})


def pods(apis: tuple[Any, Any], ns: str) -> list[Any]:
    return sorted(apis[0].list_namespaced_pod(ns).items, key=lambda p: p.metadata.name)


def live(apis: tuple[Any, Any], ns: str, prefix: str = "") -> list[Any]:
    return [
        p for p in pods(apis, ns) if p.metadata.name.startswith(prefix) and not p.metadata.deletion_timestamp
    ]


def running(apis: tuple[Any, Any], ns: str, prefix: str, n: int) -> list[Any] | None:
    ps = live(apis, ns, prefix)
    return ps if len(ps) == n and all(p.status.phase == "Running" for p in ps) else None


def exit_all(apis: tuple[Any, Any], ns: str, prefix: str, code: int = 0) -> None:
    for p in live(apis, ns, prefix):
        body = {"metadata": {"annotations": {"longvila.io/fake-exit-code": str(code)}}}
        apis[0].patch_namespaced_pod(p.metadata.name, ns, body)


def events(apis: tuple[Any, Any], ns: str) -> list[str]:
    return [
        e.reason for e in apis[0].list_namespaced_event(ns).items if e.involved_object.kind == "LongVILAJob"
    ]


def cond(body: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def test_pods_pinned_with_env_then_stage_two_starts_from_stage_one_checkpoint(
    apis: tuple[Any, Any], ns: str
) -> None:
    create(apis, job_manifest("demo", ns, nodes=2, ulysses=4, ring=2))
    ps = wait("stage s1 pods Running", lambda: running(apis, ns, "demo-s1-a0-", 2))
    status = job(apis, ns, "demo")["status"]
    placed = {n["nodeRank"]: n["name"] for n in status["placement"]["nodes"]}
    uid = job(apis, ns, "demo")["metadata"]["uid"]
    for rank, p in enumerate(ps):
        env = env_of(p)
        assert p.spec.node_name == placed[rank]  # bound where placement put it
        assert env["PET_NODE_RANK"] == str(rank) and env["PET_NNODES"] == "2"
        assert env["PET_NPROC_PER_NODE"] == "8"
        assert env["LONGVILA_ULYSSES"] == "4" and env["LONGVILA_RING"] == "2"
        assert env["PET_RDZV_ID"] == f"{uid}-s1-a0"
        assert env["LONGVILA_CHECKPOINT_URI"] == "s3://longvila-test/demo/s1"
        assert env.get("LONGVILA_INIT_CHECKPOINT", "") == ""
        assert p.metadata.owner_references[0].uid == uid
    assert apis[0].read_namespaced_service("demo-workers", ns).spec.cluster_ip == "None"
    assert "config.yaml" in apis[0].read_namespaced_config_map("demo-s1-config", ns).data
    up = wait("phase Running", lambda: (b := job(apis, ns, "demo"))["status"].get("phase") == "Running" and b)
    assert cond(up, "Running")["status"] == "True"

    exit_all(apis, ns, "demo-s1-")
    ps2 = wait("stage s2 pods Running", lambda: running(apis, ns, "demo-s2-a0-", 2))
    for p in ps2:
        assert env_of(p)["LONGVILA_INIT_CHECKPOINT"] == "s3://longvila-test/demo/s1"
    s1 = job(apis, ns, "demo")["status"]["stages"][0]
    assert s1["phase"] == "Succeeded" and s1["checkpoint"] == "s3://longvila-test/demo/s1"

    exit_all(apis, ns, "demo-s2-")
    done = wait(
        "job Succeeded", lambda: (b := job(apis, ns, "demo"))["status"].get("phase") == "Succeeded" and b
    )
    assert [s["phase"] for s in done["status"]["stages"]] == ["Succeeded", "Succeeded"]
    assert cond(done, "Succeeded")["status"] == "True"
    assert {"StageStarted", "StageSucceeded", "PhaseRunning", "PhaseSucceeded"} <= set(events(apis, ns))


def test_fail_node_replaces_the_lost_rank_in_its_domain_and_counts_one_restart(
    apis: tuple[Any, Any], ns: str, local_cluster: ClusterInfo
) -> None:
    # 3 nodes: placement takes spine-0 (gpu-node-0, 1) and gpu-node-2 of spine-1, so
    # gpu-node-3 is the spare in the lost node's domain.
    create(apis, job_manifest("fail", ns, nodes=3, ulysses=4, ring=2))
    before = wait("a0 Running", lambda: running(apis, ns, "fail-s1-a0-", 3))
    nodes = [p.spec.node_name for p in before]
    assert nodes == ["gpu-node-0", "gpu-node-1", "gpu-node-2"], nodes
    t0 = time.monotonic()
    set_node_managed(local_cluster, "gpu-node-2", managed=False)
    try:
        after = wait("a1 Running", lambda: running(apis, ns, "fail-s1-a1-", 3), RECOVERY_BOUND_S)
        recovered = time.monotonic() - t0
        status = job(apis, ns, "fail")["status"]
        print(f"\nFIGURE operator fail-node → replacement pods Running: {recovered:.1f}s")
        assert status["restarts"] == 1 and status["stages"][0]["restarts"] == 1
        # Survivors keep their nodes; the lost rank moves to the spare in the same domain.
        assert [p.spec.node_name for p in after] == ["gpu-node-0", "gpu-node-1", "gpu-node-3"]
        # The whole gang re-rendezvouses under a new id (see reconcile.py for why).
        assert {env_of(p)["PET_RDZV_ID"].rsplit("-", 1)[1] for p in after} == {"a1"}
        # The pod stuck on the dead node was force-deleted (no kubelet would finish it).
        wait("a0 pods gone", lambda: not [p for p in pods(apis, ns) if "-a0-" in p.metadata.name], 30)
        assert "NodeLost" in events(apis, ns)  # the Event is named for the failure class
        assert status["failures"] == {"NodeLost": 1} and status["lastFailure"]["class"] == "NodeLost"
        wait("recovered", lambda: cond(job(apis, ns, "fail"), "Restarting").get("status") == "False", 20)
    finally:
        set_node_managed(local_cluster, "gpu-node-2", managed=True)
    core = apis[0]
    wait("gpu-node-2 Ready", lambda: node_ready(core, "gpu-node-2") == "True", 60)
    wait(
        "gpu-node-2 untainted",
        lambda: (
            not [t for t in core.read_node("gpu-node-2").spec.taints or [] if "node.kubernetes.io" in t.key]
        ),
        60,
    )


def test_a_pod_the_scheduler_preempts_moves_its_rank_and_spends_no_budget(
    apis: tuple[Any, Any], ns: str
) -> None:
    """The kube-scheduler evicts a worker for a higher-priority pod (DisruptionTarget,
    PreemptionByScheduler): class Preempted, a new attempt with that rank on another node."""
    from kubernetes import client as k

    sched = k.SchedulingV1Api(apis[0].api_client)
    pc = f"vip-{ns}"
    sched.create_priority_class({"metadata": {"name": pc}, "value": 1_000_000, "globalDefault": False})
    try:
        body = job_manifest("prey", ns, nodes=2, ulysses=4, ring=2, max_restarts=0)
        body["spec"]["failurePolicy"]["maxDisruptionRestarts"] = 0  # neither budget is spent
        create(apis, body)
        before = wait("a0 Running", lambda: running(apis, ns, "prey-s1-a0-", 2))
        taken = before[1].spec.node_name
        # KWOK removes a deleted pod at once, where a kubelet takes the pod's grace period (120 s
        # here) to stop it; a finalizer stands in for that grace, so the victim is seen
        # Terminating with the scheduler's DisruptionTarget condition, as on a real node.
        hold = {"metadata": {"finalizers": ["longvila.io/test-grace"]}}
        apis[0].patch_namespaced_pod(before[1].metadata.name, ns, hold)
        term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [taken]}]}
        vip = {
            "metadata": {"name": "vip"},
            "spec": {
                "priorityClassName": pc,
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [term]}}},
                "containers": [{"name": "c", "image": "vip", "resources": {
                    "requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}}}],
            },
        }  # fmt: skip
        apis[0].create_namespaced_pod(ns, vip)
        wait("Preempted counted", lambda: job(apis, ns, "prey")["status"].get("failures"), 60)
        apis[0].patch_namespaced_pod(before[1].metadata.name, ns, {"metadata": {"finalizers": None}})
        after = wait("a1 Running", lambda: running(apis, ns, "prey-s1-a1-", 2), 60)
        assert after[0].spec.node_name == before[0].spec.node_name and after[1].spec.node_name != taken
        status = job(apis, ns, "prey")["status"]
        assert status["failures"] == {"Preempted": 1} and status["restarts"] == 1, status
        last = status["lastFailure"]
        assert (last["class"], last["reason"], last["action"]) == (
            "Preempted",
            "PreemptionByScheduler",
            "Requeue",
        )
        wait("vip Running", lambda: apis[0].read_namespaced_pod("vip", ns).status.phase == "Running", 60)
        assert "Preempted" in events(apis, ns)
    finally:
        sched.delete_priority_class(pc)


def test_max_restarts_exhausted_fails_the_job_with_the_reason(apis: tuple[Any, Any], ns: str) -> None:
    create(apis, job_manifest("flaky", ns, nodes=1, ulysses=4, ring=2, max_restarts=1))
    wait("a0 Running", lambda: running(apis, ns, "flaky-s1-a0-", 1))
    exit_all(apis, ns, "flaky-s1-a0-", code=3)
    wait("a1 Running", lambda: running(apis, ns, "flaky-s1-a1-", 1))
    assert job(apis, ns, "flaky")["status"]["restarts"] == 1
    exit_all(apis, ns, "flaky-s1-a1-", code=3)
    body = wait("job Failed", lambda: (b := job(apis, ns, "flaky"))["status"].get("phase") == "Failed" and b)
    failed = cond(body, "Failed")
    assert failed["reason"] == "MaxRestartsExceeded", failed
    assert "exit code 3" in failed["message"] and "maxRestarts (1)" in failed["message"]
    assert body["status"]["restarts"] == 1
    assert "MaxRestartsExceeded" in events(apis, ns)
    assert not live(apis, ns, "flaky-s1-a2-")


def test_suspend_deletes_pods_and_keeps_status_resume_recreates(apis: tuple[Any, Any], ns: str) -> None:
    create(apis, job_manifest("sus", ns, nodes=2, ulysses=8, ring=2))
    wait("Running", lambda: running(apis, ns, "sus-s1-a0-", 2))
    patch_spec(apis, ns, "sus", {"suspend": True})
    wait("pods gone", lambda: not pods(apis, ns), 60)
    body = wait("Suspended", lambda: (b := job(apis, ns, "sus"))["status"].get("phase") == "Suspended" and b)
    assert cond(body, "Suspended")["status"] == "True"
    assert body["status"]["stage"] == "s1" and body["status"]["restarts"] == 0
    patch_spec(apis, ns, "sus", {"suspend": False})
    wait("Running again", lambda: running(apis, ns, "sus-s1-a0-", 2))
    body = wait(
        "phase Running", lambda: (b := job(apis, ns, "sus"))["status"].get("phase") == "Running" and b
    )
    assert cond(body, "Suspended")["status"] == "False"


def test_operator_sigkilled_between_steps_creates_no_duplicates(
    apis: tuple[Any, Any], ns: str, operator: OperatorProcess
) -> None:
    create(apis, job_manifest("crash", ns, nodes=4, ulysses=4, ring=4))
    wait(
        "first pod",
        lambda: pods(apis, ns),
        30,
    )
    operator.kill()  # in the middle of creating the gang
    operator.start()
    wait("s1 Running", lambda: running(apis, ns, "crash-s1-a0-", 4))
    exit_all(apis, ns, "crash-s1-")
    operator.kill()  # before it has seen the stage finish
    operator.start()
    wait("s2 Running", lambda: running(apis, ns, "crash-s2-a0-", 4))
    operator.kill()
    operator.start()
    time.sleep(3)  # a restarted operator re-reconciles everything at once
    names = [p.metadata.name for p in pods(apis, ns)]
    assert names == [f"crash-s{s}-a0-n{r}" for s in (1, 2) for r in range(4)], names
    status = job(apis, ns, "crash")["status"]
    assert status["restarts"] == 0 and status["stage"] == "s2"


def test_gang_not_scheduled_in_time_reports_the_scheduler_reason(apis: tuple[Any, Any], ns: str) -> None:
    body = job_manifest("stuck", ns, nodes=1, ulysses=4, ring=2, gang_timeout=10)
    body["spec"]["resources"]["cpu"] = "10000"  # placement counts GPUs; the scheduler also CPUs
    create(apis, body)
    got = wait(
        "GangTimeout",
        lambda: (c := cond(job(apis, ns, "stuck"), "Unschedulable")).get("reason") == "GangTimeout" and c,
        60,
    )
    assert got["status"] == "True" and got["reason"] == "GangTimeout", got
    assert "Insufficient cpu" in got["message"], got
    assert "GangTimeout" in events(apis, ns)


def test_spec_only_the_operator_can_check_gets_a_condition_and_no_pods(
    apis: tuple[Any, Any], ns: str
) -> None:
    body = job_manifest("bad", ns, nodes=1, ulysses=4, ring=2)
    body["spec"]["stages"][0]["overrides"] = {"model.llm": "file:///elsewhere"}  # owned by spec.model
    create(apis, body)
    got = wait("InvalidSpec", lambda: (b := job(apis, ns, "bad")) and cond(b, "Failed"), 30)
    assert got["reason"] == "InvalidSpec" and "spec.model.llm" in got["message"], got
    assert "InvalidSpec" in events(apis, ns) and not pods(apis, ns)
    fixed = {k: v for k, v in body["spec"]["stages"][0].items() if k != "overrides"}
    patch_spec(apis, ns, "bad", {"stages": [fixed]})
    wait("fixed spec runs", lambda: running(apis, ns, "bad-s1-a0-", 1))


def test_volumes_reach_every_pod_and_the_api_server_accepts_them(apis: tuple[Any, Any], ns: str) -> None:
    """The CRD's volume subset is valid core/v1: the API server creates the pods carrying it."""
    body = job_manifest("vols", ns, nodes=2, ulysses=4, ring=2, stages=1)
    body["spec"]["volumes"] = [
        {"name": "weights", "hostPath": {"path": "/mnt/weights", "type": "DirectoryOrCreate"}},
        {"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}},
        {"name": "shared", "nfs": {"server": "nfs.example.com", "path": "/export", "readOnly": True}},
        {"name": "lustre", "csi": {"driver": "fsx.csi.aws.com", "volumeAttributes": {"dnsname": "fs-1"}}},
    ]
    body["spec"]["volumeMounts"] = [
        {"name": "weights", "mountPath": "/weights", "readOnly": True},
        {"name": "scratch", "mountPath": "/scratch"},
        {"name": "shared", "mountPath": "/data", "subPath": "llava"},
        {"name": "lustre", "mountPath": "/lustre"},
    ]
    body["spec"]["stages"][0]["data"] = "file:///data/llava_video.json"
    create(apis, body)
    ps = wait("pods with volumes Running", lambda: running(apis, ns, "vols-s1-a0-", 2))
    for p in ps:
        vols = {v.name: v for v in p.spec.volumes}
        assert (
            vols["weights"].host_path.path == "/mnt/weights"
            and vols["scratch"].empty_dir.size_limit == "10Gi"
        )
        assert (
            vols["shared"].nfs.server == "nfs.example.com" and vols["lustre"].csi.driver == "fsx.csi.aws.com"
        )
        mounts = {m.mount_path: m for m in p.spec.containers[0].volume_mounts}
        assert mounts["/data"].sub_path == "llava" and mounts["/weights"].read_only
        assert {"/dev/shm", "/etc/longvila"} <= set(mounts)


# Server-side apply builds a typed patch before validation and words list-map duplicates its
# own way; the data files carry the create / client-side apply wording.
SSA_WORDING = {
    "Duplicate value": "duplicate entries for key",
    "must be of type integer": "expected numeric (int or float), got string",
}


def test_invalid_manifests_are_rejected_by_kubectl_apply(
    cluster_env: dict[str, str], repo_root: Path, ns: str
) -> None:
    files = sorted((repo_root / "tests/data/invalid_jobs").glob("*.yaml"))
    assert len(files) >= 10
    problems = []
    for f in files:
        expect = [ln.split("expect:", 1)[1].strip() for ln in f.read_text().splitlines() if "# expect:" in ln]
        assert expect, f.name
        out = subprocess.run(
            ["kubectl", "apply", "--server-side", "-n", ns, "-f", str(f)],
            env=cluster_env,
            capture_output=True,
            text=True,
        )
        if out.returncode == 0:
            problems.append(f"{f.name} was accepted")
        problems += [
            f"{f.name}: {e!r} not in {out.stderr.strip()}"
            for e in expect
            if e not in out.stderr and SSA_WORDING.get(e, e) not in out.stderr
        ]
    assert not problems, "\n".join(problems)


def test_deleting_the_job_collects_children_and_needs_no_finalizer(
    apis: tuple[Any, Any], ns: str, cluster_env: dict[str, str]
) -> None:
    create(apis, job_manifest("gone", ns, nodes=1, ulysses=4, ring=2))
    wait("Running", lambda: running(apis, ns, "gone-s1-a0-", 1))
    assert not job(apis, ns, "gone")["metadata"].get("finalizers")
    out = subprocess.run(
        ["kubectl", "get", "lvj", "gone", "-n", ns, "-o", "json"],
        env=cluster_env,
        capture_output=True,
        text=True,
    )
    assert json.loads(out.stdout)["metadata"]["name"] == "gone"
    apis[1].delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "gone")
    wait("children collected", lambda: not pods(apis, ns), 60)
