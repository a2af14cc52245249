"""Rank 0's training progress as Prometheus metrics: what the operator reads into
status.progress and its hang check, and what users' monitoring scrapes (the chart's
PodMonitor example). Metric names are the contract's (longvila_contract.progress).

One registry per run (nothing global); only global rank 0 serves it, from before the
process group exists, so a hang in rendezvous or weight loading shows as "up, no step".
A port that cannot be bound is a warning, not an error: training matters more than its
metrics, and the operator reports a job whose metrics it cannot read.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from longvila_contract import env as E
from longvila_contract import progress as P
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

HELP = {
    P.STEP: "Optimizer steps completed in this stage.",
    P.MAX_STEPS: "Optimizer steps in this stage (0 until known).",
    P.LOSS: "Mean loss of the last step over the global batch.",
    P.TOKENS_PER_SECOND: "LLM tokens (text + visual) of the last step's global batch per wall second.",
    P.STEP_SECONDS: "Wall seconds of the last step.",
    P.CHECKPOINT_STEP: "Step of the newest complete checkpoint (0: none).",
}


class Progress:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = {name: Gauge(name, doc, registry=self.registry) for name, doc in HELP.items()}
        self.steps = Counter(P.STEPS, "Optimizer steps this process completed.", registry=self.registry)
        self.server: Any = None

    def serve(self, environ: Mapping[str, str]) -> Progress:
        """Serve on the contract's port when this is global rank 0 and the contract names a port."""
        port = int(environ.get(E.METRICS_PORT_VAR, "0") or 0)
        if not port or environ.get("RANK", "0") != "0":
            return self
        addr = environ.get(E.METRICS_ADDR_VAR, "0.0.0.0")
        try:
            self.server, _thread = start_http_server(port, addr, registry=self.registry)
        except OSError as e:
            print(f"longvila-train: warning: no progress metrics on {addr}:{port}: {e}", file=sys.stderr)
        return self

    def started(self, step: int, max_steps: int, checkpoint_step: int) -> None:
        self.gauges[P.STEP].set(step)
        self.gauges[P.MAX_STEPS].set(max_steps)
        self.gauges[P.CHECKPOINT_STEP].set(checkpoint_step)

    def stepped(self, record: Mapping[str, Any]) -> None:
        """One step's record (loop.step_record)."""
        self.gauges[P.STEP].set(record["step"])
        self.gauges[P.MAX_STEPS].set(record["max_steps"])
        self.gauges[P.LOSS].set(record["loss"])
        self.gauges[P.TOKENS_PER_SECOND].set(record["tokens_per_s"])
        self.gauges[P.STEP_SECONDS].set(record["step_s"])
        self.steps.inc()

    def checkpointed(self, step: int) -> None:
        self.gauges[P.CHECKPOINT_STEP].set(step)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
