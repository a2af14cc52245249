"""Queueing through Kueue, pure: pod-group metadata, Workload views, and the job's Queued /
Admitted status as the reconcile computes it from gated pods and Kueue's Workload."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from builders import fleet, job_manifest
from longvila_contract.labels import LABEL_ATTEMPT, LABEL_NODE_RANK, LABEL_STAGE
from longvila_operator import status as st
from longvila_operator.api.manifest import InvalidJob
from longvila_operator.decision import Decision, Observed, PodView
from longvila_operator.nodes import parse_node
from longvila_operator.reconcile import reconcile
from longvila_operator.validation import load_job
from longvila_operator.workload import WorkloadView, workload_view

T0 = datetime(2026, 12, 3, 12, 0, 0, tzinfo=UTC)
GROUP = "demo-extend-64k-a0"
PENDING_WL = WorkloadView(
    name=GROUP,
    reason="Pending",
    message="couldn't assign flavors to pod set workers: insufficient unused quota for nvidia.com/gpu "
    "in flavor gpu, 32 more needed",
)


def queued_manifest(**scheduling: Any) -> dict[str, Any]:
    m = job_manifest(scheduling={"queueName": "team-a", **scheduling})
    m["metadata"]["generation"] = 1
    return m


class Cluster:
    """The API server, Kueue and the kubelets, as far as one job's reconcile sees them."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.body = copy.deepcopy(manifest)
        self.nodes = {n["metadata"]["name"]: parse_node(n) for n in fleet({"a": 4, "b": 4})}
        self.pods: dict[str, PodView] = {}
        self.applied: dict[str, dict[str, Any]] = {}
        self.workloads: dict[str, WorkloadView] = {}
        self.now = T0

    def run(self, seconds: float = 1.0) -> Decision:
        self.now += timedelta(seconds=seconds)
        obs = Observed(self.body, list(self.pods.values()), self.nodes, self.now, workloads=self.workloads)
        d = reconcile(obs)
        self.body["status"] = d.status
        for x in d.delete:
            self.pods.pop(x.name, None)
        for o in d.apply:
            meta = o["metadata"]
            if o["kind"] == "Pod" and meta["name"] not in self.pods:
                lb = meta["labels"]
                self.applied[meta["name"]] = o
                self.pods[meta["name"]] = PodView(  # Kueue's webhook gates every pod of a queued group
                    name=meta["name"],
                    stage=lb[LABEL_STAGE],
                    attempt=int(lb[LABEL_ATTEMPT]),
                    node_rank=int(lb[LABEL_NODE_RANK]),
                    created=st.timestamp(self.now),
                    gated=True,
                    queue=lb.get("kueue.x-k8s.io/queue-name", ""),
                )
        return d

    def admit(self, group: str = GROUP) -> None:
        self.workloads[group] = WorkloadView(
            name=group, admitted=True, cluster_queue="gpus", admitted_at=st.timestamp(self.now)
        )
        for name, p in self.pods.items():
            if name.startswith(group + "-"):
                self.pods[name] = PodView(**{**p.__dict__, "gated": False})

    def bind(self) -> None:
        for name, p in self.pods.items():
            node = self.applied[name]["metadata"]["annotations"]["longvila.io/node"]
            self.pods[name] = PodView(**{**p.__dict__, "node": node, "phase": "Running"})


def test_every_pod_of_an_attempt_is_one_group_of_one_role() -> None:
    c = Cluster(queued_manifest(workloadPriorityClassName="research", priorityClassName="high"))
    c.run()
    pods = list(c.applied.values())
    assert len(pods) == 4
    for pod in pods:
        labels, annotations = pod["metadata"]["labels"], pod["metadata"]["annotations"]
        assert labels["kueue.x-k8s.io/pod-group-name"] == GROUP
        assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
        assert labels["kueue.x-k8s.io/priority-class"] == "research"
        assert annotations["kueue.x-k8s.io/pod-group-total-count"] == "4"
        # One PodSet whatever the pinning (Kueue would make one per distinct affinity, at most 8).
        assert annotations["kueue.x-k8s.io/role-hash"] == "workers"
        assert annotations["kueue.x-k8s.io/retriable-in-group"] == "false"
        assert pod["spec"]["priorityClassName"] == "high"
        assert pod["spec"]["affinity"]["nodeAffinity"]  # our pinning stays


def test_queued_with_kueues_reason_then_admitted_then_running() -> None:
    c = Cluster(queued_manifest())
    c.run()  # creates the pods; Kueue's webhook gates them
    d = c.run()
    assert c.body["status"]["phase"] == "Queued"
    admitted = st.condition(c.body["status"], "Admitted") or {}
    assert admitted["status"] == "False" and "waiting for Kueue's Workload" in admitted["message"]
    assert "Queued" in {e.reason for e in d.events}

    c.workloads[GROUP] = PENDING_WL
    c.run()
    admitted = st.condition(c.body["status"], "Admitted") or {}
    assert admitted["reason"] == "Pending" and "insufficient unused quota" in admitted["message"]
    assert "LocalQueue team-a" in admitted["message"]
    # Hours in the queue are no gang timeout (the default is 300 s).
    d = c.run(seconds=3600)
    assert c.body["status"]["phase"] == "Queued" and st.condition(c.body["status"], "Unschedulable") is None
    assert d.apply == [] and d.delete == []

    c.admit()
    d = c.run()
    admitted = st.condition(c.body["status"], "Admitted") or {}
    assert admitted["status"] == "True" and "ClusterQueue gpus" in admitted["message"]
    assert c.body["status"]["phase"] == "Pending" and "Admitted" in {e.reason for e in d.events}
    c.bind()
    c.run()
    assert c.body["status"]["phase"] == "Running"


def test_gang_timeout_counts_from_admission_not_from_creation() -> None:
    c = Cluster(queued_manifest(gangTimeoutSeconds=60))
    c.run()
    c.run(seconds=600)  # queued for ten minutes
    c.admit()
    c.run(seconds=30)
    assert st.condition(c.body["status"], "Unschedulable") is None
    c.run(seconds=40)  # 70 s after admission, still unbound
    got = st.condition(c.body["status"], "Unschedulable") or {}
    assert got.get("reason") == "GangTimeout" and "after 7" in got["message"]


def test_resumed_attempt_waits_for_kueue_to_drop_the_old_workload() -> None:
    c = Cluster(queued_manifest())
    c.run()
    c.body["spec"]["suspend"] = True
    c.run()
    assert not c.pods and c.body["status"]["phase"] == "Suspended"
    c.workloads[GROUP] = WorkloadView(name=GROUP, finished=True)  # not yet collected
    c.body["spec"]["suspend"] = False
    d = c.run()
    assert not c.pods and d.requeue_after is not None
    del c.workloads[GROUP]
    c.run()
    assert len(c.pods) == 4  # same names, same group: a fresh Workload


def test_workload_view_reads_kueues_conditions() -> None:
    pending = {
        "metadata": {"name": GROUP},
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "reason": "Pending", "message": "no quota"},
            ]
        },
    }
    assert workload_view(pending) == WorkloadView(name=GROUP, reason="Pending", message="no quota")
    admitted = {
        "metadata": {"name": GROUP},
        "status": {
            "admission": {"clusterQueue": "gpus"},
            "conditions": [
                {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved", "message": "ok"},
                {
                    "type": "Admitted",
                    "status": "True",
                    "reason": "Admitted",
                    "lastTransitionTime": "2026-12-03T12:00:00Z",
                },
            ],
        },
    }
    view = workload_view(admitted)
    assert view.admitted and view.cluster_queue == "gpus" and view.admitted_at == "2026-12-03T12:00:00Z"
    assert view.reason == "" and not view.finished


def test_queue_from_the_label_and_a_disagreement_is_one_line() -> None:
    m = job_manifest()
    m["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-b"}
    assert load_job(m).queue == "team-b"
    m["spec"]["scheduling"] = {"queueName": "team-a"}
    with pytest.raises(InvalidJob) as err:
        load_job(m)
    assert err.value.errors == [
        'spec.scheduling.queueName: Invalid value: "team-a": the label kueue.x-k8s.io/queue-name names '
        'another queue ("team-b"); set one of them, or both to the same LocalQueue'
    ]
    m["spec"]["scheduling"] = {"queueName": "Team_A"}
    with pytest.raises(InvalidJob) as err:
        load_job(m)
    assert err.value.errors[0].startswith('spec.scheduling.queueName: Invalid value: "Team_A"')


def test_resumed_before_the_suspended_pods_are_gone_waits_and_counts_no_restart() -> None:
    c = Cluster(queued_manifest())
    c.run()
    c.body["spec"]["suspend"] = True
    c.run()
    name = "demo-extend-64k-a0-n0"  # Kueue's finalizer still holds a deleted pod
    c.pods = {name: PodView(name, "extend-64k", 0, 0, deleting=True, gated=True)}
    c.body["spec"]["suspend"] = False
    d = c.run()
    assert d.apply == [] and c.body["status"]["restarts"] == 0 and c.body["status"]["phase"] == "Suspended"
    c.pods = {}
    c.run()
    assert len(c.pods) == 4 and c.body["status"]["restarts"] == 0


PREEMPTED_BY = (
    "Preempted to accommodate a workload (UID: 1234, JobUID: UNKNOWN) due to prioritization in the "
    "ClusterQueue; preemptor path: /gpus; preemptee path: /gpus"
)


def running_in_queue() -> Cluster:
    c = Cluster(queued_manifest())
    c.run()
    c.admit()
    c.bind()
    c.run()
    assert c.body["status"]["phase"] == "Running"
    return c


def evict(c: Cluster, group: str = GROUP) -> None:
    """Kueue preempts the group: Evicted and Preempted on its Workload, TerminationTarget on its pods."""
    c.workloads[group] = WorkloadView(
        name=group, evicted="Preempted", preempted="InClusterQueue", eviction_message=PREEMPTED_BY
    )
    for name, p in c.pods.items():
        c.pods[name] = PodView(
            **{
                **p.__dict__,
                "deleting": True,
                "stopped": "WorkloadEvictedDueToPreempted",
                "stop_message": PREEMPTED_BY,
            }
        )


def test_preempted_by_kueue_goes_back_to_the_queue_and_spends_no_budget() -> None:
    c = running_in_queue()
    c.body["spec"]["failurePolicy"] = {"maxRestarts": 0, "maxDisruptionRestarts": 0}
    evict(c)
    d = c.run()
    s = c.body["status"]
    assert d.restarted and s["phase"] == "Queued" and s["failures"] == {"Preempted": 1}
    last = s["lastFailure"]
    assert (last["class"], last["reason"], last["action"], last["attempt"]) == (
        "Preempted",
        "InClusterQueue",
        "Requeue",
        0,
    )
    admitted = st.condition(s, "Admitted") or {}
    assert admitted["status"] == "False" and admitted["reason"] == "Preempted"
    assert "due to prioritization in the ClusterQueue" in admitted["message"]
    assert "resumes from its last checkpoint once LocalQueue team-a admits it again" in admitted["message"]
    assert st.condition(s, "Restarting") is None  # no fault to recover from
    assert [(e.type, e.reason) for e in d.events if e.reason == "Preempted"] == [("Normal", "Preempted")]
    # The new attempt is a new pod group, created at once; Kueue's webhook gates it.
    new = sorted(n for n in c.applied if "-a1-" in n)
    assert len(new) == 4 and {
        c.applied[n]["metadata"]["labels"]["kueue.x-k8s.io/pod-group-name"] for n in new
    } == {"demo-extend-64k-a1"}
    assert {p.stage for p in c.pods.values()} == {"extend-64k"}
    # The old pods are Kueue's to delete (its finalizer); they go, and the new group waits.
    c.pods = {n: p for n, p in c.pods.items() if "-a1-" in n}
    c.workloads["demo-extend-64k-a1"] = PENDING_WL
    c.run()
    s = c.body["status"]
    admitted = st.condition(s, "Admitted") or {}
    assert s["phase"] == "Queued" and admitted["reason"] == "Preempted"
    assert (
        "insufficient unused quota" in admitted["message"]
        and "requeued after Preempted" in admitted["message"]
    )
    c.run(seconds=3600)  # hours in the queue again: still no failure, no timeout
    assert c.body["status"]["phase"] == "Queued" and c.body["status"]["failures"] == {"Preempted": 1}
    c.admit("demo-extend-64k-a1")
    c.bind()
    d = c.run()
    s = c.body["status"]
    assert s["phase"] == "Running" and (st.condition(s, "Admitted") or {})["status"] == "True"
    assert (
        s["restarts"] == 1 and s["stages"][0]["restarts"] == 1 and "Admitted" in {e.reason for e in d.events}
    )
    # The trainer of the new attempt resumes: the same checkpoint URI, a new rendezvous.
    env = {
        e["name"]: e.get("value") for e in c.applied["demo-extend-64k-a1-n0"]["spec"]["containers"][0]["env"]
    }
    old = {
        e["name"]: e.get("value") for e in c.applied["demo-extend-64k-a0-n0"]["spec"]["containers"][0]["env"]
    }
    assert env["LONGVILA_CHECKPOINT_URI"] == old["LONGVILA_CHECKPOINT_URI"]
    assert env["PET_RDZV_ID"] != old["PET_RDZV_ID"]


def test_a_preemption_seen_only_on_the_workload_still_requeues() -> None:
    c = running_in_queue()
    c.workloads[GROUP] = WorkloadView(name=GROUP, evicted="Preempted", eviction_message=PREEMPTED_BY)
    c.pods = {}  # Kueue deleted the pods before the operator looked
    d = c.run()
    assert d.restarted and c.body["status"]["failures"] == {"Preempted": 1}
    assert c.body["status"]["phase"] == "Queued" and len(c.pods) == 4
    assert all("-a1-" in n for n in c.pods)


def test_kueue_stopping_the_group_for_another_reason_is_a_disruption() -> None:
    c = running_in_queue()
    for name, p in c.pods.items():
        c.pods[name] = PodView(
            **{
                **p.__dict__,
                "deleting": True,
                "stopped": "WorkloadEvictedDueToClusterQueueStopped",
                "stop_message": "The ClusterQueue is stopped",
            }
        )
    c.run()
    s = c.body["status"]
    assert (
        s["failures"] == {"Disrupted": 1}
        and s["lastFailure"]["reason"] == "WorkloadEvictedDueToClusterQueueStopped"
    )
    assert "The ClusterQueue is stopped" in s["lastFailure"]["message"]


def test_preempted_after_every_pod_succeeded_is_no_failure() -> None:
    c = running_in_queue()
    for name, p in c.pods.items():
        c.pods[name] = PodView(**{**p.__dict__, "phase": "Succeeded"})
    c.workloads[GROUP] = WorkloadView(name=GROUP, evicted="Preempted", eviction_message=PREEMPTED_BY)
    c.run()
    s = c.body["status"]
    assert s["stages"][0]["phase"] == "Succeeded" and not s.get("failures")


def test_suspend_while_requeued_after_a_preemption_and_resume() -> None:
    c = running_in_queue()
    evict(c)
    c.run()
    c.pods = {n: p for n, p in c.pods.items() if "-a1-" in n}
    c.body["spec"]["suspend"] = True
    c.run()
    assert not c.pods and c.body["status"]["phase"] == "Suspended"
    c.body["spec"]["suspend"] = False
    c.run()
    assert sorted(c.pods) == [f"demo-extend-64k-a1-n{r}" for r in range(4)]  # same attempt, same group
    assert c.body["status"]["phase"] == "Queued" and c.body["status"]["failures"] == {"Preempted": 1}


def test_workload_view_reads_kueues_eviction() -> None:
    body = {
        "metadata": {"name": GROUP, "uid": "u1"},
        "status": {
            "conditions": [
                {"type": "QuotaReserved", "status": "False", "reason": "Preempted", "message": PREEMPTED_BY},
                {"type": "Evicted", "status": "True", "reason": "Preempted", "message": PREEMPTED_BY},
                {"type": "Preempted", "status": "True", "reason": "InClusterQueue", "message": PREEMPTED_BY},
                {"type": "Requeued", "status": "True", "reason": "Preempted", "message": PREEMPTED_BY},
            ]
        },
    }
    view = workload_view(body)
    assert view.preempted_by_kueue and (view.evicted, view.preempted) == ("Preempted", "InClusterQueue")
    assert view.eviction_message == PREEMPTED_BY and view.uid == "u1" and not view.admitted
    stopped = {
        "metadata": {"name": GROUP},
        "status": {
            "conditions": [
                {"type": "Evicted", "status": "True", "reason": "ClusterQueueStopped", "message": "stopped"}
            ]
        },
    }
    assert not workload_view(stopped).preempted_by_kueue


def test_pod_view_reads_kueues_termination_target_and_the_schedulers_disruption() -> None:
    from longvila_operator.handlers import pod_view

    def pod(*conditions: dict[str, str]) -> dict[str, Any]:
        labels = {LABEL_STAGE: "extend-64k", LABEL_ATTEMPT: "0", LABEL_NODE_RANK: "1"}
        return {
            "metadata": {"name": "p", "labels": labels},
            "spec": {},
            "status": {"phase": "Running", "conditions": list(conditions)},
        }

    kueue = pod(
        {
            "type": "TerminationTarget",
            "status": "True",
            "reason": "WorkloadEvictedDueToPreempted",
            "message": PREEMPTED_BY,
        }
    )
    view = pod_view(kueue)
    assert (view.stopped, view.stop_message, view.disruption) == (
        "WorkloadEvictedDueToPreempted",
        PREEMPTED_BY,
        "",
    )
    sched = pod(
        {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "PreemptionByScheduler",
            "message": "default-scheduler: preempting to accommodate a higher priority pod",
        }
    )
    view = pod_view(sched)
    assert view.disruption == "PreemptionByScheduler" and "higher priority" in view.stop_message
    assert not view.stopped
