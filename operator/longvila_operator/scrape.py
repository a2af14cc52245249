"""Reading global rank 0's progress metrics for every running job (an asyncio task).

Every `interval` seconds, for each job with a running node-rank-0 pod: GET
http://<pod IP>:<env.METRICS_PORT>/metrics, turn it into a Sample (decision.py) and kick the
job's reconcile when something moved; the pure core (progress.py) decides what goes into
status.progress and whether the gang is hung. The pod IP is what a kubelet reports (and
what Prometheus scrapes through the chart's PodMonitor); the local pod runner reports its
per-pod loopback address there, so the same code reaches both.

`advanced` is stamped by the operator's own clock when the step counter or the
checkpoint step changes, so the hang check never compares clocks of different machines.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from longvila_contract import env as E
from longvila_contract import progress as P
from prometheus_client.parser import text_string_to_metric_families

from .decision import PodView, Sample

Key = tuple[str, str]
TIMEOUT_S = 3.0


def values(text: str) -> dict[str, float]:
    """{sample name: value} of a Prometheus text exposition (counters keep their _total)."""
    return {s.name: float(s.value) for fam in text_string_to_metric_families(text) for s in fam.samples}


def sample_from(text: str, pod: str, now: datetime, previous: Sample | None) -> Sample:
    v = values(text)

    def num(name: str) -> float | None:
        return v.get(name)

    got = Sample(
        pod=pod,
        step=int(v.get(P.STEP, 0)),
        max_steps=int(v.get(P.MAX_STEPS, 0)),
        loss=num(P.LOSS),
        tokens_per_second=num(P.TOKENS_PER_SECOND),
        step_seconds=num(P.STEP_SECONDS),
        checkpoint_step=int(v.get(P.CHECKPOINT_STEP, 0)),
        steps=int(v.get(P.STEPS + "_total", v.get(P.STEPS, 0))),
        scraped=now,
        advanced=now,
    )
    if previous is not None and previous.pod == pod and moves(previous) == moves(got):
        got = replace(got, advanced=previous.advanced)
    return got


def moves(s: Sample) -> tuple[int, int, int]:
    return s.steps, s.step, s.checkpoint_step


def rank0(pods: Iterable[PodView], stage: str) -> PodView | None:
    """The running node-rank-0 pod of the stage's newest attempt."""
    found = [p for p in pods if p.stage == stage and p.node_rank == 0 and p.phase == "Running" and p.ip]
    found = [p for p in found if not p.deleting]
    return max(found, key=lambda p: p.attempt) if found else None


def fetch(ip: str, port: int) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    with urllib.request.urlopen(f"http://{host}:{port}{P.METRICS_PATH}", timeout=TIMEOUT_S) as r:
        return str(r.read().decode())


@dataclass
class Scraper:
    interval: float = 5.0
    port: int = E.METRICS_PORT
    samples: dict[Key, Sample] = field(default_factory=dict)
    errors: dict[Key, str] = field(default_factory=dict)
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    get: Callable[[str, int], str] = fetch

    async def once(self, indices: Mapping[str, Any], kick: Callable[[Key], None]) -> None:
        targets: dict[Key, PodView] = {}
        for key, bodies in indices["job_bodies"].items():
            body = next(iter(bodies), None)
            status = (body or {}).get("status") or {}
            pod = rank0(indices["job_pods"].get(key, []), str(status.get("stage") or ""))
            if pod is not None and status.get("phase") not in ("Succeeded", "Failed", "Suspended"):
                targets[key] = pod
        for key in set(self.samples) - set(targets):
            self.samples.pop(key, None)
            self.errors.pop(key, None)
        results = await asyncio.gather(*(self.one(key, pod) for key, pod in targets.items()))
        for key, changed in zip(targets, results, strict=True):
            if changed:
                kick(key)

    async def one(self, key: Key, pod: PodView) -> bool:
        """Scrape one job's rank 0; True when the reconcile should look again."""
        before, error = self.samples.get(key), self.errors.get(key, "")
        try:
            text = await asyncio.to_thread(self.get, pod.ip, self.port)
            got = sample_from(text, pod.name, self.clock(), before)
        except Exception as e:  # unreachable, refused, frozen (timeout), garbage
            self.errors[key] = f"GET http://{pod.ip}:{self.port}{P.METRICS_PATH} ({pod.name}): {e}"
            return not error
        self.samples[key] = got
        self.errors.pop(key, None)
        return bool(error) or before is None or moves(before) != moves(got) or before.pod != got.pod

    async def run(self, indices: Mapping[str, Any], kick: Callable[[Key], None]) -> None:
        while True:
            await self.once(indices, kick)
            await asyncio.sleep(self.interval)
