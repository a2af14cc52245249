"""Prometheus metrics of the operator, in a registry of their own (nothing global).

jobs by phase (a gauge recomputed from the job index), gang restarts, reconcile latency,
and API requests by verb, kind and code (what the benchmark reports).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from longvila_contract.status import PHASES
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.jobs = Gauge("longvila_jobs", "LongVILAJobs by phase.", ["phase"], registry=r)
        self.restarts = Counter("longvila_gang_restarts", "Gang restarts started.", registry=r)
        self.reconcile_seconds = Histogram(
            "longvila_reconcile_seconds",
            "Time to reconcile one job (compute and API calls).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "longvila_api_requests",
            "API requests by verb, kind and HTTP code.",
            ["verb", "kind", "code"],
            registry=r,
        )
        self.errors = Counter("longvila_reconcile_errors", "Reconciles that raised.", registry=r)

    def request(self, verb: str, kind: str, code: int) -> None:
        self.requests.labels(verb, kind, str(code)).inc()

    def set_phases(self, phases: Iterable[str | None]) -> None:
        tally = Tally(p or "Pending" for p in phases)
        for phase in PHASES:
            self.jobs.labels(phase).set(tally.get(phase, 0))

    def serve(self, port: int) -> Any:
        return start_http_server(port, registry=self.registry)
