"""A tiny world for the pure reconcile: the API server, kubelets and node heartbeats in memory.

`World` applies a Decision to an in-memory set of pods (deletes are instant, applied pods
appear Pending and unbound) and lets a test bind pods, finish them, fail them, kill nodes,
renew node Leases and feed rank 0's progress between reconciles.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

from builders import fleet, job_manifest
from longvila_contract.labels import ANNOTATION_NODE, LABEL_ATTEMPT, LABEL_NODE_RANK, LABEL_STAGE
from longvila_operator import status as st
from longvila_operator.decision import Decision, Heartbeat, Observed, PodView, Sample
from longvila_operator.nodes import NodeInfo, parse_node
from longvila_operator.reconcile import reconcile

T0 = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)


class World:
    def __init__(self, manifest: dict[str, Any], per_domain: dict[str, int] | None = None) -> None:
        self.body = copy.deepcopy(manifest)
        self.body["metadata"]["generation"] = 1
        self.nodes: dict[str, NodeInfo] = {
            n["metadata"]["name"]: parse_node(n) for n in fleet(per_domain or {"a": 5, "b": 4})
        }
        self.pods: dict[str, PodView] = {}
        self.specs: dict[str, dict[str, Any]] = {}
        self.now = T0
        self.heartbeats: dict[str, Heartbeat] = {}
        self.grace = 4.0
        self.sample: Sample | None = None
        self.scrape_error = ""

    def run(self, seconds: float = 1.0) -> Decision:
        self.now += timedelta(seconds=seconds)
        obs = Observed(
            self.body, list(self.pods.values()), self.nodes, self.now,
            heartbeats=dict(self.heartbeats), heartbeat_grace=self.grace,
            progress=self.sample, scrape_error=self.scrape_error,
        )  # fmt: skip
        d = reconcile(obs)
        old = self.body.get("status") or {}  # stored through a merge patch, as apply.py sends it
        self.body["status"] = st.apply_merge_patch(old, st.merge_patch(old, d.status))
        assert self.body["status"] == d.status, "the merge patch would not store the decided status"
        for x in d.delete:
            self.pods.pop(x.name, None)
        for o in d.apply:
            meta = o["metadata"]
            if o["kind"] == "Pod" and meta["name"] not in self.pods:
                lb = meta["labels"]
                self.pods[meta["name"]] = PodView(
                    name=meta["name"],
                    stage=lb[LABEL_STAGE],
                    attempt=int(lb[LABEL_ATTEMPT]),
                    node_rank=int(lb[LABEL_NODE_RANK]),
                    created=st.timestamp(self.now),
                )
                self.specs[meta["name"]] = o
        return d

    def set(self, phase: str, exit_code: int | None = None, only: str = "", **fields: Any) -> None:
        """Every live pod whose name contains `only` moves to `phase` on its planned node."""
        for name, p in list(self.pods.items()):
            if only in name and not p.terminal:
                node = self.specs[name]["metadata"]["annotations"][ANNOTATION_NODE]
                stamp = st.timestamp(self.now)
                times = {"started": p.started or stamp} if phase == "Running" else {}
                if phase in ("Succeeded", "Failed"):
                    times = {"finished": stamp}
                self.pods[name] = dataclasses.replace(
                    p, phase=phase, node=node, exit_code=exit_code, **{**times, **fields}
                )

    def kill_node(self, name: str) -> None:
        self.nodes[name] = dataclasses.replace(self.nodes[name], ready=False)

    def beat(self, *nodes: str) -> None:
        """These nodes' kubelets renew their Leases now (all nodes when none is named)."""
        for n in nodes or tuple(self.nodes):
            self.heartbeats[n] = Heartbeat(renewed=self.now, seen=self.now)

    def env(self, pod: str) -> dict[str, str]:
        return {e["name"]: e.get("value", "") for e in self.specs[pod]["spec"]["containers"][0]["env"]}

    def running(self) -> list[str]:
        return sorted(n for n, p in self.pods.items() if not p.terminal)

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.body["status"])


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return st.condition(status, ctype) or {}


def started(**spec: Any) -> World:
    w = World(job_manifest(**spec))
    w.run()
    w.set("Running")
    w.run()
    return w
