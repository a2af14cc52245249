"""Failure classes (failures.py) through the pure reconcile: one restart per fault, the right
class and budget, permanent errors fail at once, the settle window around a node loss."""

from __future__ import annotations

import dataclasses
import typing
from datetime import timedelta

import pytest
from builders import job_manifest
from longvila_contract import exits
from longvila_operator.api.schema import camel
from longvila_operator.api.types import FailurePolicy
from longvila_operator.failures import BY_NAME, CLASSES
from world import World, cond, started

ERROR_LINE = exits.line(exits.ERROR, "data.uri: s3:// datasets are not readable yet, got s3://data/x")


def running(**spec: typing.Any) -> World:
    w = started(**spec)
    w.beat()
    return w


def fail(w: World, only: str, **fields: typing.Any) -> typing.Any:
    """A pod fails; two seconds later every node has renewed its Lease; reconcile."""
    w.set("Failed", only=only, **{"exit_code": 1, **fields})
    w.now += timedelta(seconds=2)
    w.beat()
    return w.run()


def test_the_table_names_each_class_once_with_a_budget_the_spec_has() -> None:
    names = [c.name for c in CLASSES]
    assert len(set(names)) == len(names) == 7
    fields = {camel(f.name) for f in dataclasses.fields(FailurePolicy)}
    for c in CLASSES:
        assert c.budget is None or c.budget in fields, c
        assert c.detected and callable(c.detect)
    assert BY_NAME["PermanentError"].budget is None  # fails at once
    assert BY_NAME["Preempted"].budget is None and BY_NAME["Preempted"].requeue  # spends nothing
    assert names.index("Preempted") < names.index("Disrupted")  # it refines a disruption
    assert {c.name for c in CLASSES if c.application} == {"OOMKilled", "Hang", "WorkerCrash"}
    assert BY_NAME["Hang"].grace == 0  # a hung collective never reaches a checkpoint


def test_a_node_loss_is_one_restart_with_the_rank_moved_even_when_a_survivor_fails_first() -> None:
    w = running(failurePolicy={"maxRestarts": 0})  # infrastructure faults spend their own budget
    # gpu-1's kubelet dies: no more heartbeats, its pod stays "Running"; a second later the
    # survivor on gpu-0 loses its peer and fails, while gpu-1 still counts as Ready.
    w.beat()
    w.now += timedelta(seconds=1)
    w.set("Failed", exit_code=1, only="-n0")
    for _ in range(3):  # the other nodes renew; gpu-1 does not
        d = w.run()
        w.beat("gpu-0", "gpu-2", "gpu-3")
        assert not d.restarted and not d.delete and w.status["phase"] == "Running"  # settling
    d = w.run(seconds=2)  # gpu-1 silent past the 4 s grace
    assert d.restarted and w.status["restarts"] == 1
    assert [n["name"] for n in w.status["placement"]["nodes"]] == ["gpu-0", "gpu-4", "gpu-2", "gpu-3"]
    assert w.status["failures"] == {"NodeLost": 1}
    last = w.status["lastFailure"]
    assert last["class"] == "NodeLost" and last["reason"] == "HeartbeatMissed" and last["action"] == "Restart"
    assert {x.name: x.grace for x in d.delete}["demo-extend-64k-a0-n1"] == 0  # no kubelet will stop it
    assert [e.reason for e in d.events if e.type == "Warning"].count("NodeLost") == 1
    # Later the node lifecycle controller catches up: nothing more happens.
    w.kill_node("gpu-1")
    w.beat()
    w.set("Running")
    d = w.run()
    assert not d.restarted and w.status["restarts"] == 1 and w.status["phase"] == "Running"


def test_a_worker_crash_is_believed_once_every_node_is_heard_from() -> None:
    w = running()
    w.set("Failed", exit_code=1, only="-n2", message=exits.line(exits.CRASHED, "RuntimeError: boom"))
    d = w.run()
    assert not d.restarted and d.requeue_after == 1.0  # gpu-0,1,3 not heard from since
    w.now += timedelta(seconds=2)
    w.beat()
    d = w.run()
    assert d.restarted and w.status["failures"] == {"WorkerCrash": 1}
    assert [n["name"] for n in w.status["placement"]["nodes"]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert "RuntimeError: boom" in w.status["lastFailure"]["message"]
    assert "exit code 1" in w.status["lastFailure"]["message"]
    assert next(e for e in d.events if e.reason == "WorkerCrash").type == "Warning"


def test_without_heartbeats_in_view_a_crash_is_classified_at_once() -> None:
    w = started()  # no Leases known (the watch is down): the Ready condition alone
    w.set("Failed", exit_code=137, only="-n3", reason="OOMKilled")
    d = w.run()
    assert d.restarted and w.status["failures"] == {"OOMKilled": 1}


def test_a_permanent_error_fails_the_job_at_once_with_the_trainers_message() -> None:
    w = running(failurePolicy={"maxRestarts": 5})
    w.set("Failed", exit_code=1, message=ERROR_LINE + "\n")
    d = w.run()
    assert not d.restarted and w.status["phase"] == "Failed" and w.status["restarts"] == 0
    failed = cond(w.status, "Failed")
    assert failed["reason"] == "PermanentError"
    assert (
        "s3:// datasets are not readable yet" in failed["message"]
        and "longvila-train: error:" in failed["message"]
    )
    assert w.status["failures"] == {"PermanentError": 1} and w.status["lastFailure"]["action"] == "Fail"
    assert w.status["stages"][0]["phase"] == "Failed"
    assert any(e.reason == "PermanentError" and "s3://data/x" in e.message for e in d.events)
    assert w.running() == []


@pytest.mark.parametrize(("waiting", "after", "fails"), [
    ("ImagePullBackOff", 100, False), ("ImagePullBackOff", 400, True), ("InvalidImageName", 1, True),
    ("CreateContainerConfigError", 301, True),
])  # fmt: skip
def test_a_pod_that_cannot_start_fails_the_job_after_the_pull_grace(
    waiting: str, after: int, fails: bool
) -> None:
    w = World(job_manifest())
    w.run()
    w.set("Pending", only="-n1", waiting=waiting, waiting_message="registry says no")
    w.run(seconds=after)
    assert (w.status["phase"] == "Failed") is fails
    if fails:
        assert cond(w.status, "Failed")["reason"] == "PermanentError"
        assert (
            waiting in w.status["lastFailure"]["reason"]
            and "registry says no" in w.status["lastFailure"]["message"]
        )


DISRUPTIONS = [
    {"disruption": "EvictionByEvictionAPI"},
    {"reason": "Evicted", "phase": "Failed"},
    {"deleting": True},
]


@pytest.mark.parametrize("how", DISRUPTIONS)
def test_a_disrupted_pod_restarts_without_spending_max_restarts(how: dict[str, typing.Any]) -> None:
    w = running(failurePolicy={"maxRestarts": 0, "maxDisruptionRestarts": 1})
    how = dict(how)
    phase = how.pop("phase", "Running")
    w.set(phase, only="-n2", **how)
    d = w.run()
    assert d.restarted and w.status["failures"] == {"Disrupted": 1}
    w.set("Running")
    w.beat()
    w.run()
    w.set("Running", only="-n0", disruption="TaintManagerEviction")
    w.run()
    failed = cond(w.status, "Failed")
    assert w.status["phase"] == "Failed" and failed["reason"] == "MaxRestartsExceeded"
    assert "failurePolicy.maxDisruptionRestarts (1) spent" in failed["message"]


def test_application_budget_is_max_restarts_and_names_the_field() -> None:
    w = running(failurePolicy={"maxRestarts": 1})
    assert fail(w, "-n1", exit_code=137, reason="OOMKilled").restarted
    w.set("Running")
    w.run()
    assert not fail(w, "a1-n0").restarted
    failed = cond(w.status, "Failed")
    assert (
        failed["reason"] == "MaxRestartsExceeded"
        and "failurePolicy.maxRestarts (1) spent" in failed["message"]
    )
    assert w.status["failures"] == {"OOMKilled": 1, "WorkerCrash": 1} and w.status["restarts"] == 1


def test_a_pod_preempted_by_the_scheduler_is_rescheduled_off_its_node_without_a_budget() -> None:
    w = running(failurePolicy={"maxRestarts": 0, "maxDisruptionRestarts": 0, "nodeFailure": "shrink"})
    for round_ in (1, 2, 3):  # preemption may repeat: never a reason to fail the job
        w.set(
            "Running",
            only=f"a{round_ - 1}-n1",
            disruption="PreemptionByScheduler",
            stop_message="default-scheduler: preempting to accommodate a higher priority pod",
        )
        taken = w.status["placement"]["nodes"][1]["name"]
        d = w.run()
        s = w.status
        assert d.restarted and s["failures"] == {"Preempted": round_} and s["phase"] == "Restarting"
        assert (
            s["lastFailure"]["reason"] == "PreemptionByScheduler" and s["lastFailure"]["action"] == "Requeue"
        )
        assert "higher priority pod" in s["lastFailure"]["message"]
        placed = [n["name"] for n in s["placement"]["nodes"]]
        assert len(placed) == 4 and taken not in placed  # the rank moved; no shrink for a preemption
        assert (
            cond(s, "Restarting")["reason"] == "GangRestart"
            and "Preempted" in cond(s, "Restarting")["message"]
        )
        w.set("Running")
        w.beat()
        w.run()
    assert w.status["phase"] == "Running" and w.status["restarts"] == 3


def test_the_docs_table_lists_every_class_in_table_order() -> None:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "failures.md").read_text()
    section = text.split("## Failure classes", 1)[1].split("\n## ", 1)[0]
    assert re.findall(r"^\| `(\w+)` \|", section, re.M) == [c.name for c in CLASSES]
