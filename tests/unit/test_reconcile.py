"""The pure reconcile: observed state in, actions and status out, driven through a tiny world
(world.py plays the API server and the kubelets)."""

from __future__ import annotations

import copy

from builders import job_manifest, topology
from longvila_operator import status as st
from longvila_operator.decision import PodView
from world import World, cond, started


def test_creates_one_pod_per_placed_node_and_nothing_twice() -> None:
    w = World(job_manifest())
    d = w.run()
    kinds = [o["kind"] for o in d.apply]
    assert kinds == ["Service", "ConfigMap", "Pod", "Pod", "Pod", "Pod"]
    assert w.running() == [f"demo-extend-64k-a0-n{r}" for r in range(4)]
    assert [n["name"] for n in w.status["placement"]["nodes"]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert w.status["phase"] == "Pending" and w.status["stages"][0]["phase"] == "Running"
    again = w.run()
    assert again.apply == [] and again.delete == []  # replaying a reconcile creates nothing


def test_status_is_stable_once_running_so_it_is_written_once() -> None:
    w = started()
    assert w.status["phase"] == "Running" and cond(w.status, "Running")["status"] == "True"
    before = copy.deepcopy(w.status)
    d = w.run(seconds=30)
    assert not st.differs(before, d.status) and d.events == []


def test_stage_two_starts_from_stage_one_checkpoint() -> None:
    w = started()
    assert w.env("demo-extend-64k-a0-n0")["LONGVILA_INIT_CHECKPOINT"] == "s3://ckpt/stage3"  # model.init
    w.set("Succeeded", exit_code=0)
    d = w.run()
    s1 = w.status["stages"][0]
    assert s1["phase"] == "Succeeded" and s1["checkpoint"] == "s3://ckpt/demo/extend-64k"
    assert w.running() == [f"demo-long-sft-a0-n{r}" for r in range(4)]
    assert w.env("demo-long-sft-a0-n2")["LONGVILA_INIT_CHECKPOINT"] == "s3://ckpt/demo/extend-64k"
    assert {"StageSucceeded", "StageStarted"} <= {e.reason for e in d.events}
    w.set("Succeeded", exit_code=0, only="long-sft")
    w.run()
    assert w.status["phase"] == "Succeeded" and cond(w.status, "Succeeded")["status"] == "True"


def test_lost_node_restarts_the_gang_keeping_survivors_and_a_spare_in_the_same_domain() -> None:
    w = started()
    w.kill_node("gpu-1")
    d = w.run()
    assert d.restarted and w.status["restarts"] == 1 and w.status["stages"][0]["restarts"] == 1
    assert [n["name"] for n in w.status["placement"]["nodes"]] == ["gpu-0", "gpu-4", "gpu-2", "gpu-3"]
    assert {x.name: x.grace for x in d.delete}["demo-extend-64k-a0-n1"] == 0  # on the dead node
    assert w.running() == [f"demo-extend-64k-a1-n{r}" for r in range(4)]
    assert {w.env(p)["PET_RDZV_ID"].rsplit("-", 1)[1] for p in w.running()} == {"a1"}
    assert w.status["phase"] == "Restarting" and cond(w.status, "Restarting")["status"] == "True"
    assert "gpu-1" in next(e.message for e in d.events if e.reason == "NodeLost")
    assert w.status["failures"] == {"NodeLost": 1} and w.status["lastFailure"]["reason"] == "NodeNotReady"
    w.set("Running")
    w.run()
    assert w.status["phase"] == "Running" and cond(w.status, "Restarting")["status"] == "False"


def test_failed_pod_restarts_on_the_same_nodes_until_max_restarts() -> None:
    w = started(failurePolicy={"maxRestarts": 1})
    w.set("Failed", exit_code=3, only="-n2")
    w.run()
    assert w.status["restarts"] == 1
    assert [n["name"] for n in w.status["placement"]["nodes"]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    w.set("Running")
    w.run()
    w.set("Failed", exit_code=3, only="a1-n0")
    d = w.run()
    failed = cond(w.status, "Failed")
    assert w.status["phase"] == "Failed" and failed["reason"] == "MaxRestartsExceeded"
    assert "exit code 3" in failed["message"] and w.status["restarts"] == 1
    assert w.running() == [] and "MaxRestartsExceeded" in {e.reason for e in d.events}


def test_node_failure_policy_fail() -> None:
    w = started(failurePolicy={"nodeFailure": "fail"})
    w.kill_node("gpu-3")
    w.run()
    assert w.status["phase"] == "Failed" and cond(w.status, "Failed")["reason"] == "NodeFailure"


def test_shrink_replans_on_fewer_nodes_keeping_the_sp_layout() -> None:
    w = World(job_manifest(failurePolicy={"nodeFailure": "shrink"}), per_domain={"a": 4})
    w.run()
    w.set("Running")
    w.run()
    w.kill_node("gpu-2")
    w.run()
    nodes = [n["name"] for n in w.status["placement"]["nodes"]]
    assert len(nodes) == 2 and "gpu-2" not in nodes  # blocks of 2 nodes (sp 16 on 8-GPU nodes)
    env = w.env(w.running()[0])
    assert env["PET_NNODES"] == "2" and env["LONGVILA_ULYSSES"] == "8" and env["LONGVILA_RING"] == "2"


def test_suspend_deletes_pods_keeps_status_and_resume_recreates() -> None:
    w = started()
    w.body["spec"]["suspend"] = True
    d = w.run()
    assert w.running() == [] and len(d.delete) == 4 and w.status["phase"] == "Suspended"
    assert w.status["stage"] == "extend-64k" and cond(w.status, "Suspended")["status"] == "True"
    w.body["spec"]["suspend"] = False
    w.run()
    assert w.running() == [f"demo-extend-64k-a0-n{r}" for r in range(4)]
    assert cond(w.status, "Suspended")["status"] == "False" and w.status["restarts"] == 0


def test_stuck_gang_reports_the_scheduler_reason_once() -> None:
    w = World(job_manifest(scheduling={"gangTimeoutSeconds": 30}))
    w.run()
    name = "demo-extend-64k-a0-n3"
    why = "Unschedulable: 0/9 nodes are available: 1 Insufficient cpu."
    w.pods[name] = PodView(**{**w.pods[name].__dict__, "unscheduled": why})
    d = w.run(seconds=5)
    assert not cond(w.status, "Unschedulable") and d.requeue_after is not None
    d = w.run(seconds=40)
    c = cond(w.status, "Unschedulable")
    assert c["status"] == "True" and c["reason"] == "GangTimeout" and "Insufficient cpu" in c["message"]
    assert [e.reason for e in d.events if e.type == "Warning"] == ["GangTimeout"]
    assert not [e for e in w.run().events if e.reason == "GangTimeout"]  # once per change


def test_unplaceable_job_says_why_and_creates_nothing() -> None:
    w = World(job_manifest(topology=topology(12)))
    d = w.run()
    c = cond(w.status, "Unschedulable")
    assert c["reason"] == "Unplaceable" and "cannot place 12 nodes" in c["message"]
    assert d.apply == [] and w.status["phase"] == "Pending"


def test_invalid_spec_gets_a_condition_and_an_event_then_recovers_when_fixed() -> None:
    stages = copy.deepcopy(job_manifest()["spec"]["stages"])
    stages[1]["overrides"] = {"model.llm": "s3://elsewhere/x"}
    w = World(job_manifest(stages=stages))
    d = w.run()
    c = cond(w.status, "Failed")
    assert c["reason"] == "InvalidSpec" and "spec.model.llm" in c["message"] and d.apply == []
    assert [e.reason for e in d.events].count("InvalidSpec") == 1
    stages[1]["overrides"] = {"train.lr": 1e-5}
    w.body["spec"]["stages"] = stages
    w.run()
    assert len(w.running()) == 4 and cond(w.status, "Failed")["status"] == "False"


def test_pods_stuck_terminating_on_a_dead_node_are_force_deleted() -> None:
    w = started()
    w.body["spec"]["suspend"] = True
    name = "demo-extend-64k-a0-n1"
    w.pods = {name: PodView(**{**w.pods[name].__dict__, "deleting": True})}
    w.kill_node("gpu-1")
    d = w.run()
    assert [(x.name, x.grace) for x in d.delete] == [(name, 0)]


def test_ttl_deletes_the_job_after_it_finishes() -> None:
    w = started(ttlSecondsAfterFinished=60)
    for _ in range(2):
        w.set("Succeeded", exit_code=0)
        w.run()
    assert w.status["phase"] == "Succeeded"
    assert not w.run(seconds=30).delete_job
    assert w.run(seconds=31).delete_job
