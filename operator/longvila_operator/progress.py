"""Training progress in status.progress, and the hang check that reads it. Pure.

The scraper (scrape.py) reads global rank 0's metrics into a Sample; here the Sample
becomes status.progress (at most every `progress_interval` seconds: never one status write
per step) and decides whether the gang is hung:

- before the attempt's first step: hung when the gang has run for startupTimeoutSeconds
  (rendezvous, weight loading) and rank 0 still reports no step;
- after it: hung when neither the step nor the last checkpoint moved for
  hangTimeoutSeconds, counted from when the operator saw them move (its own clock;
  status.progress.lastProgressTime keeps it across an operator restart). A rank 0 that
  stops answering once it has answered (a frozen process) gives no news, which is the same.

A rank 0 that never answered is not called hung: the operator may simply not reach pod IPs
(a NetworkPolicy). status.progress.error says why, and an Event says it once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from . import status as st
from .api.manifest import Job
from .decision import Decision, Observed, PodView, Sample

STARTING = "starting"  # status.progress.summary of a stage whose rank 0 has not answered yet


@dataclass(frozen=True)
class Hang:
    reason: str  # NoFirstStep | NoProgress
    message: str


def sample_for(obs: Observed, mine: Sequence[PodView]) -> Sample | None:
    """The scraped sample, if it is of this attempt's node rank 0."""
    rank0 = next((p.name for p in mine if p.node_rank == 0), None)
    return obs.progress if obs.progress is not None and obs.progress.pod == rank0 else None


def stored_for(status: Mapping[str, Any], stage: str, attempt: int) -> dict[str, Any] | None:
    """status.progress, if rank 0 of this attempt has answered (the figures are its own)."""
    p = status.get("progress") or {}
    mine = p.get("stage") == stage and p.get("attempt") == attempt and p.get("summary") != STARTING
    return dict(p) if mine else None


def last_progress(sample: Sample | None, stored: Mapping[str, Any] | None) -> datetime | None:
    """When a step or checkpoint last moved in this attempt; None before its first step."""
    kept = st.parse_time(stored.get("lastProgressTime")) if stored else None
    if sample is None or sample.steps == 0:
        return kept
    if (
        kept is not None
        and stored is not None
        and (sample.step, sample.checkpoint_step)
        == (
            stored.get("step"),
            stored.get("lastCheckpointStep"),
        )
    ):
        return min(kept, sample.advanced)  # the operator restarted: what it saw before counts
    return sample.advanced


def finishing(sample: Sample | None, stored: Mapping[str, Any] | None) -> bool:
    """Rank 0 reported the stage's last step: what is left is the final checkpoint and the
    processes' exit, which a loaded machine can stretch past a short hang timeout. (A final
    save that hangs ends at the trainer's collective timeout instead.)"""
    if sample is not None:
        step, total = sample.step, sample.max_steps
    elif stored is not None:
        step, total = int(stored.get("step") or 0), int(stored.get("maxSteps") or 0)
    else:
        return False
    return total > 0 and step >= total


def gang_started(mine: Sequence[PodView], n: int) -> datetime | None:
    """When the last of the attempt's n pods started running (None until all run)."""
    if len(mine) != n or any(p.phase != "Running" for p in mine):
        return None
    times = [st.parse_time(p.started) or st.parse_time(p.created) for p in mine]
    return max(t for t in times if t is not None) if all(times) else None


def check(obs: Observed, job: Job, mine: Sequence[PodView], n: int, stored: Mapping[str, Any] | None,
          d: Decision) -> Hang | None:  # fmt: skip
    """Is the running gang hung? Asks for a reconcile at the next deadline otherwise."""
    fp = job.spec.failure_policy
    started = gang_started(mine, n)
    if not fp.hang_timeout_seconds or started is None:
        return None
    sample = sample_for(obs, mine)
    if finishing(sample, stored):
        return None  # every step done: what is left is the final save and teardown
    moved = last_progress(sample, stored)
    if moved is None:
        deadline = started + timedelta(seconds=fp.startup_timeout_seconds)
        if obs.now < deadline:
            d.later((deadline - obs.now).total_seconds())
            return None
        if sample is None and stored is None:
            return None  # never answered: unreachable, not hung (see the module doc)
        step = sample.step if sample else int((stored or {}).get("step") or 0)
        return Hang(
            "NoFirstStep",
            f"no training step {fp.startup_timeout_seconds}s after the gang started "
            f"(failurePolicy.startupTimeoutSeconds); rank 0 is at step {step}",
        )
    deadline = moved + timedelta(seconds=fp.hang_timeout_seconds)
    if obs.now < deadline:
        d.later((deadline - obs.now).total_seconds())
        return None
    step = sample.step if sample else int((stored or {}).get("step") or 0)
    quiet = int((obs.now - moved).total_seconds())
    news = "" if sample and sample.scraped >= moved and not obs.scrape_error else f" ({obs.scrape_error})"
    return Hang(
        "NoProgress",
        f"no new step or checkpoint for {quiet}s (failurePolicy.hangTimeoutSeconds "
        f"{fp.hang_timeout_seconds}); rank 0 last reported step {step}{news}",
    )


def unreachable(
    obs: Observed, job: Job, mine: Sequence[PodView], n: int, stored: Mapping[str, Any] | None
) -> bool:
    """Is a failed scrape news? Not while rank 0 starts up (it serves once Python has loaded):
    only once it has answered in this attempt, or the start-up allowance is over."""
    started = gang_started(mine, n)
    if started is None:
        return False
    allowance = timedelta(seconds=job.spec.failure_policy.startup_timeout_seconds)
    return stored is not None or obs.now >= started + allowance


def figures(sample: Sample, stage: str, attempt: int) -> dict[str, Any]:
    pct = min(100, 100 * sample.step // sample.max_steps) if sample.max_steps else 0
    out: dict[str, Any] = {
        "stage": stage,
        "attempt": attempt,
        "step": sample.step,
        "maxSteps": sample.max_steps,
        "percentage": pct,
        "lastCheckpointStep": sample.checkpoint_step,
        # Rank 0 answers before it knows the stage's length (weights still loading).
        "summary": f"{sample.step}/{sample.max_steps} ({pct}%)" if sample.max_steps else "loading",
    }
    if sample.steps and sample.loss is not None:
        out["loss"] = round(sample.loss, 6)
    if sample.steps and sample.tokens_per_second is not None:
        out["tokensPerSecond"] = round(sample.tokens_per_second, 1)
    if sample.steps and sample.step_seconds is not None and sample.max_steps:
        out["estimatedRemainingSeconds"] = round(max(0, sample.max_steps - sample.step) * sample.step_seconds)
    return out


def update(
    obs: Observed, d: Decision, job: Job, stage: str, attempt: int, mine: Sequence[PodView], n: int
) -> None:
    """status.progress from the newest sample, rewritten at most every progress_interval seconds."""
    s = d.status
    old = dict(s.get("progress") or {})
    stored = stored_for(s, stage, attempt)
    sample = sample_for(obs, mine)
    if sample is not None:
        new = figures(sample, stage, attempt)
        moved = last_progress(sample, stored)
        if moved is not None:
            new["lastProgressTime"] = st.timestamp(moved)
    elif old.get("stage") == stage:
        new = {k: v for k, v in old.items() if k not in ("lastUpdatedTime", "error")}
    else:  # a new stage: nothing to say yet but which
        new = {"stage": stage, "attempt": attempt, "step": 0, "maxSteps": 0, "percentage": 0,
               "lastCheckpointStep": 0, "summary": STARTING}  # fmt: skip
    if obs.scrape_error and unreachable(obs, job, mine, n, stored):
        new["error"] = obs.scrape_error[:1024]
    if {k: v for k, v in old.items() if k != "lastUpdatedTime"} == new:
        return
    updated = st.parse_time(old.get("lastUpdatedTime"))
    wait = obs.progress_interval - (obs.now - updated).total_seconds() if updated else 0.0
    first = stored is None or ("error" in new and "error" not in old)
    if wait > 0 and not first:
        d.later(wait)  # come back then to write what changed meanwhile
        return
    if "error" in new and "error" not in old:
        d.warn("ProgressUnavailable", f"cannot read rank 0's progress: {new['error']}")
    s["progress"] = {**new, "lastUpdatedTime": st.timestamp(obs.now)}


def finished(d: Decision, stage: str, now: datetime) -> None:
    """The stage succeeded: its progress is complete, whatever the last sample said."""
    p = dict(d.status.get("progress") or {})
    if p.get("stage") != stage or not p.get("maxSteps"):
        return
    total = int(p["maxSteps"])
    p.update(step=total, percentage=100, summary=f"{total}/{total} (100%)", estimatedRemainingSeconds=0,
             lastUpdatedTime=st.timestamp(now))  # fmt: skip
    p.pop("error", None)
    d.status["progress"] = p
