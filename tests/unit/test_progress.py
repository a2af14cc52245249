"""Progress, both sides: the trainer's rank-0 metrics, the operator's scrape of them, status.progress
(rate-limited) and the hang check (progress.py) through the pure reconcile."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from datetime import timedelta
from typing import Any

from builders import job_manifest
from longvila_contract import env as E
from longvila_contract import progress as P
from longvila_operator import scrape
from longvila_operator.decision import PodView, Sample
from longvila_trainer.progress import Progress
from prometheus_client import generate_latest
from world import World, cond, started

RECORD = {"step": 3, "max_steps": 8, "loss": 4.5, "tokens_per_s": 900.0, "step_s": 1.5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_what_the_trainer_exports_is_what_the_operator_reads() -> None:
    p = Progress()
    p.started(2, 8, 2)
    first = scrape.sample_from(generate_latest(p.registry).decode(), "pod-a", T(0), None)
    assert (first.step, first.max_steps, first.checkpoint_step, first.steps) == (2, 8, 2, 0)
    p.stepped(RECORD)
    p.checkpointed(3)
    got = scrape.sample_from(generate_latest(p.registry).decode(), "pod-a", T(5), first)
    assert (got.step, got.max_steps, got.checkpoint_step, got.steps) == (3, 8, 3, 1)
    assert (got.loss, got.tokens_per_second, got.step_seconds) == (4.5, 900.0, 1.5)
    assert got.advanced == T(5)  # moved: stamped by the operator's clock
    again = scrape.sample_from(generate_latest(p.registry).decode(), "pod-a", T(9), got)
    assert again.advanced == T(5) and again.scraped == T(9)  # nothing moved since
    assert {P.STEP, P.MAX_STEPS, P.LOSS, P.CHECKPOINT_STEP} <= set(
        scrape.values(generate_latest(p.registry).decode())
    )


def test_rank0_serves_on_the_contract_port_and_others_do_not() -> None:
    port = free_port()
    env = {E.METRICS_PORT_VAR: str(port), E.METRICS_ADDR_VAR: "127.0.0.1", "RANK": "0"}
    served = Progress().serve(env)
    quiet = Progress().serve({**env, "RANK": "1"})
    try:
        served.stepped(RECORD)
        assert quiet.server is None and served.server is not None
        assert scrape.values(scrape.fetch("127.0.0.1", port))[P.STEP] == 3
    finally:
        served.close()
    assert Progress().serve({"RANK": "0"}).server is None  # no port in the contract: no endpoint


def T(seconds: float) -> Any:
    from world import T0

    return T0 + timedelta(seconds=seconds)


def test_the_scraper_reads_rank_0_of_the_newest_attempt_and_kicks_on_change() -> None:
    pods = [
        PodView("j-s-a0-n0", "s", 0, 0, phase="Running", ip="10.0.0.1", deleting=True),
        PodView("j-s-a1-n0", "s", 1, 0, phase="Running", ip="10.0.0.2"),
        PodView("j-s-a1-n1", "s", 1, 1, phase="Running", ip="10.0.0.3"),
    ]
    indices = {"job_bodies": {("ns", "j"): [{"status": {"stage": "s", "phase": "Running"}}]},
               "job_pods": {("ns", "j"): pods}}  # fmt: skip
    served = Progress()
    calls: list[str] = []

    def get(ip: str, port: int) -> str:
        calls.append(ip)
        if ip == "down":
            raise OSError("connection refused")
        return generate_latest(served.registry).decode()

    s = scrape.Scraper(interval=1, get=get)
    kicked: list[tuple[str, str]] = []
    asyncio.run(s.once(indices, kicked.append))
    assert calls == ["10.0.0.2"] and kicked == [("ns", "j")] and s.samples[("ns", "j")].pod == "j-s-a1-n0"
    asyncio.run(s.once(indices, kicked.append))
    assert kicked == [("ns", "j")]  # nothing moved: no reconcile
    served.stepped(RECORD)
    asyncio.run(s.once(indices, kicked.append))
    assert len(kicked) == 2
    pods[1] = dataclasses.replace(pods[1], ip="down")
    asyncio.run(s.once(indices, kicked.append))
    assert "connection refused" in s.errors[("ns", "j")] and len(kicked) == 3
    assert s.samples[("ns", "j")].step == 3  # the last figures stay


def sample(w: World, step: int, steps: int, *, ckpt: int = 0, max_steps: int = 8, pod: str = "") -> Sample:
    old = w.sample
    moved = old is None or (old.steps, old.step, old.checkpoint_step) != (steps, step, ckpt)
    w.sample = Sample(
        pod=pod or "demo-extend-64k-a0-n0", step=step, max_steps=max_steps, loss=4.0 + 1 / (step + 1),
        tokens_per_second=1000.0, step_seconds=2.0, checkpoint_step=ckpt, steps=steps, scraped=w.now,
        advanced=w.now if moved or old is None else old.advanced,
    )  # fmt: skip
    return w.sample


def hang_job(**policy: Any) -> World:
    return started(failurePolicy={"hangTimeoutSeconds": 60, "startupTimeoutSeconds": 300, **policy})


def test_status_progress_is_written_at_most_every_interval() -> None:
    w = hang_job()
    sample(w, 0, 0, max_steps=12)
    w.run()
    p = w.status["progress"]
    assert p["summary"] == "0/12 (0%)" and p["attempt"] == 0 and "loss" not in p  # the first answer at once
    writes, waits = 0, []
    for step in range(1, 13):  # a step a second; status.progress moves every 5 s, never per step
        sample(w, step, step, max_steps=12)
        before = dict(w.status["progress"])
        d = w.run()
        wrote = w.status["progress"] != before
        writes += wrote
        if not wrote:
            waits.append(d.requeue_after)
    assert writes == 2 and all(x is not None and x <= 5 for x in waits)  # comes back for what it held
    p = w.status["progress"]
    assert p["step"] == 10 and p["percentage"] == 83 and p["summary"] == "10/12 (83%)"
    assert (
        p["estimatedRemainingSeconds"] == 4
        and p["tokensPerSecond"] == 1000.0
        and p["loss"] == round(4 + 1 / 11, 6)
    )


def test_no_step_for_the_hang_timeout_restarts_the_gang_as_hung() -> None:
    w = hang_job()
    sample(w, 0, 0)
    w.run()
    sample(w, 1, 1)
    w.run(seconds=10)
    d = w.run(seconds=49)
    assert not d.restarted and d.requeue_after is not None and d.requeue_after <= 1.0 + 1e-9
    d = w.run(seconds=2)
    assert d.restarted and w.status["failures"] == {"Hang": 1}
    last = w.status["lastFailure"]
    assert last["reason"] == "NoProgress" and "hangTimeoutSeconds 60" in last["message"]
    assert {x.grace for x in d.delete} == {0}  # SIGKILL at once: SIGTERM would wait for a stuck collective


def test_no_first_step_within_the_startup_allowance_is_a_hang_but_never_answering_is_not() -> None:
    w = hang_job()
    sample(w, 0, 0)
    w.run()
    assert not w.run(seconds=250).restarted
    d = w.run(seconds=60)
    assert d.restarted and w.status["lastFailure"]["reason"] == "NoFirstStep"

    quiet = hang_job()
    quiet.scrape_error = "GET http://10.0.0.1:9400/metrics: timed out"
    d = quiet.run(seconds=400)
    assert not d.restarted and quiet.status["phase"] == "Running"
    assert "timed out" in quiet.status["progress"]["error"]
    assert [e.reason for e in d.events] == ["ProgressUnavailable"]
    assert [e.reason for e in quiet.run(seconds=30).events] == []  # said once


def test_the_hang_clock_survives_an_operator_restart() -> None:
    w = hang_job()
    sample(w, 2, 2)
    w.run()
    w.run(seconds=6)
    assert w.status["progress"]["lastProgressTime"]
    # The operator restarts 40 s later: its first sample shows the same step, stamped now.
    w.run(seconds=40)
    w.sample = dataclasses.replace(w.sample, advanced=w.now, scraped=w.now)  # type: ignore[arg-type]
    d = w.run(seconds=20)
    assert d.restarted and w.status["failures"] == {"Hang": 1}
    assert cond(w.status, "Restarting")["status"] == "True"


def test_hang_timeout_zero_turns_the_check_off() -> None:
    w = started(failurePolicy={"hangTimeoutSeconds": 0})
    sample(w, 1, 1)
    w.run()
    assert not w.run(seconds=86400).restarted


def test_a_sample_of_an_older_attempt_is_not_this_attempts_progress() -> None:
    w = hang_job()
    w.set("Failed", exit_code=1, only="-n1")
    w.run(seconds=2)
    sample(w, 7, 7, pod="demo-extend-64k-a0-n0")
    w.set("Running")
    w.run()
    assert w.status.get("progress", {}).get("attempt") != 1 or w.status["progress"]["step"] != 7
    assert job_manifest()  # the builders stay importable here


def test_heartbeats_stamp_a_renewal_when_it_changes_and_say_nothing_while_the_watch_is_down() -> None:
    from longvila_operator.heartbeats import Heartbeats

    clock = iter([T(1), T(2), T(3)])
    hb = Heartbeats(None, clock=lambda: next(clock))
    hb.observe("gpu-0", T(0))
    hb.observe("gpu-0", T(0))  # the same renewal seen again (a relist): not news
    assert hb.snapshot() == {}  # not connected: no news is not bad news
    hb.connected = True
    assert hb.snapshot()["gpu-0"].seen == T(1)
    hb.observe("gpu-0", T(2))
    assert hb.snapshot()["gpu-0"].seen == T(2) and hb.snapshot()["gpu-0"].renewed == T(2)
    hb.forget("gpu-0")
    assert hb.snapshot() == {}


def test_a_status_write_removes_nested_keys_the_new_status_lacks() -> None:
    from longvila_operator import status as st

    old = {"progress": {"attempt": 0, "loss": 4.2, "lastProgressTime": "t"}, "phase": "Running", "x": 1}
    new = {"progress": {"attempt": 1, "summary": "loading"}, "phase": "Restarting"}
    patch = st.merge_patch(old, new)
    assert patch["progress"] == {"attempt": 1, "summary": "loading", "loss": None, "lastProgressTime": None}
    assert patch["x"] is None and st.apply_merge_patch(old, patch) == new


def test_a_new_attempt_starts_its_hang_clock_afresh() -> None:
    w = hang_job()
    sample(w, 3, 3)
    w.run()
    w.run(seconds=6)
    assert w.status["progress"]["lastProgressTime"]
    w.set("Failed", exit_code=1, only="-n1")
    d = w.run(seconds=1)  # no heartbeats in view: restarted at once
    assert d.restarted
    w.set("Running")
    w.sample = None
    w.run()
    sample(w, 3, 0, pod="demo-extend-64k-a1-n0")  # the new rank 0 answers, still loading
    d = w.run(seconds=30)
    p = w.status["progress"]
    assert p["attempt"] == 1 and "lastProgressTime" not in p and "loss" not in p
    assert not d.restarted and not w.run(seconds=100).restarted  # start-up allowance (300 s), not hang


def test_a_change_of_condition_messages_alone_is_told_apart() -> None:
    from longvila_operator import status as st

    cond = {"type": "Unschedulable", "status": "True", "reason": "Unplaceable", "lastTransitionTime": "t"}
    old = {"phase": "Pending", "conditions": [{**cond, "message": "free: spine-0: 3"}]}
    assert st.only_messages(
        old, {"phase": "Pending", "conditions": [{**cond, "message": "free: spine-0: 4"}]}
    )
    assert not st.only_messages(old, old)  # no change at all
    assert not st.only_messages(old, {"phase": "Running", "conditions": [{**cond, "message": "x"}]})
    flipped = {**cond, "status": "False", "message": "x"}
    assert not st.only_messages(old, {"phase": "Pending", "conditions": [flipped]})


def test_a_gang_that_finished_its_steps_is_not_hung_while_it_saves_and_exits() -> None:
    w = hang_job()
    sample(w, 8, 8, ckpt=6)  # the last step; its checkpoint may not have been read before rank 0 exited
    w.run()
    assert not w.run(seconds=120).restarted  # torchrun and the processes may take their time to exit
    w2 = hang_job()
    sample(w2, 7, 7)
    w2.run()
    assert w2.run(seconds=61).restarted  # one step short: a hang
