"""The kopf shell: indexes of jobs, child pods and nodes, and one reconcile loop; beside
it, a watch on node Leases (heartbeats.py) and the progress scraper (scrape.py).

Handlers are registered on a registry built by `build` (nothing at import). No handler
needs a finalizer: there is no on.delete handler (children go with the job through owner
references) and no per-job kopf daemon or timer (kopf puts a finalizer on objects with
either, which blocks `kubectl delete` while the operator is down). Instead on.event
handlers only mark a job dirty, and one loop task, started at startup, reconciles dirty
jobs one at a time (so two reconciles of one job never race), every job every
`resync_s` (level-triggered: nothing depends on seeing a particular event), and a job
again when its Decision asks for it (gang timeout, TTL).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf
from longvila_contract.labels import (
    KUEUE_GATE,
    KUEUE_QUEUE,
    KUEUE_TERMINATION_TARGET,
    LABEL_ATTEMPT,
    LABEL_JOB,
    LABEL_NODE_RANK,
    LABEL_STAGE,
)

from . import status as st
from .api import GROUP, PLURAL, VERSION
from .api.manifest import InvalidJob, Job
from .apply import Kube, Recent, carry_out
from .decision import Observed, PodView
from .heartbeats import Heartbeats
from .metrics import Metrics
from .nodes import GPU, parse_node
from .reconcile import reconcile
from .scrape import Scraper
from .validation import load_job
from .workload import workload_view

PREFIX = "longvila.io"
KUEUE_GROUP = "kueue.x-k8s.io"
MESSAGE_INTERVAL_S = 5.0  # a status change of condition messages alone waits this long after a write
Key = tuple[str, str]  # (namespace, job name)
log = logging.getLogger("longvila.operator")


@dataclass
class State:
    """Everything the handlers share, passed in (no module globals)."""

    kube: Kube
    metrics: Metrics
    resync_s: float = 10.0
    debounce_s: float = 0.05
    dirty: set[Key] = field(default_factory=set)
    due: dict[Key, float] = field(default_factory=dict)
    latest: dict[Key, Mapping[str, Any]] = field(default_factory=dict)  # status we wrote last
    recent: dict[Key, Recent] = field(default_factory=dict)
    written_at: dict[Key, float] = field(default_factory=dict)  # monotonic time of our last status write
    parsed: dict[Key, tuple[tuple[str, int], Job | InvalidJob]] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pool: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(8, "longvila-api"))
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    kueue: str | None = None  # the served kueue.x-k8s.io version whose Workloads are watched; None = off
    heartbeats: Heartbeats | None = None  # started with the operator (needs the API client)
    heartbeat_grace: float = 20.0
    scraper: Scraper = field(default_factory=Scraper)

    def kick(self, key: Key) -> None:
        self.dirty.add(key)
        self.ready.set()
        self.wake.set()

    def run(self, calls: list[Any]) -> None:
        for f in [self.pool.submit(c) for c in calls]:
            f.result()


def pod_view(body: Mapping[str, Any]) -> PodView:
    meta, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    labels = meta.get("labels") or {}
    term: Mapping[str, Any] = {}
    running: Mapping[str, Any] = {}
    waiting: Mapping[str, Any] = {}
    for cs in status.get("containerStatuses") or []:  # the worker pod has one container
        state = cs.get("state") or {}
        term = state.get("terminated") or term
        running = state.get("running") or running
        waiting = state.get("waiting") or waiting
    unscheduled = disruption = stopped = stop_message = ""
    for c in status.get("conditions") or []:
        ctype, true = c.get("type"), c.get("status") == "True"
        if ctype == "PodScheduled" and c.get("status") == "False":
            unscheduled = f"{c.get('reason', '')}: {c.get('message', '')}"
        if ctype == "DisruptionTarget" and true:
            disruption = str(c.get("reason") or "DisruptionTarget")
            stop_message = stop_message or str(c.get("message") or "")
        if ctype == KUEUE_TERMINATION_TARGET and true:  # Kueue stopped the group (eviction, preemption)
            stopped = str(c.get("reason") or KUEUE_TERMINATION_TARGET)
            stop_message = str(c.get("message") or "")
    gates = {g.get("name") for g in spec.get("schedulingGates") or []}
    return PodView(
        name=meta["name"],
        stage=labels.get(LABEL_STAGE, ""),
        attempt=int(labels.get(LABEL_ATTEMPT, "0")),
        node_rank=int(labels.get(LABEL_NODE_RANK, "0")),
        node=spec.get("nodeName") or "",
        phase=status.get("phase") or "Pending",
        deleting=bool(meta.get("deletionTimestamp")),
        exit_code=term.get("exitCode"),
        reason=status.get("reason") or term.get("reason") or "",
        unscheduled=unscheduled,
        created=meta.get("creationTimestamp") or "",
        gated=KUEUE_GATE in gates,
        queue=labels.get(KUEUE_QUEUE, ""),
        ip=status.get("podIP") or "",
        started=(running or term).get("startedAt") or "",
        finished=term.get("finishedAt") or "",
        message=term.get("message") or "",
        waiting=waiting.get("reason") or "",
        waiting_message=waiting.get("message") or "",
        disruption=disruption,
        stopped=stopped,
        stop_message=stop_message,
    )


def gpus_of(spec: Mapping[str, Any]) -> int:
    total = 0
    for c in spec.get("containers") or []:
        want = (c.get("resources") or {}).get("requests") or {}
        total += int(str(want.get(GPU, "0")) or 0)
    return total


def parse(state: State, key: Key, body: Mapping[str, Any]) -> Job | InvalidJob:
    """load_job, once per spec generation (validation is the costly part of a reconcile)."""
    meta = body.get("metadata") or {}
    version = (str(meta.get("uid", "")), int(meta.get("generation") or 0))
    cached = state.parsed.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        parsed: Job | InvalidJob = load_job(body)
    except InvalidJob as err:
        parsed = err
    state.parsed[key] = (version, parsed)
    return parsed


def newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Is job body a strictly newer than b? (resourceVersions are etcd revisions.)"""
    try:
        return int(a["metadata"]["resourceVersion"]) > int(b["metadata"]["resourceVersion"])
    except (KeyError, ValueError):
        return False


async def reconcile_one(state: State, key: Key, indices: Mapping[str, Any]) -> None:
    bodies = list(indices["job_bodies"].get(key, []))
    if not bodies:
        state.latest.pop(key, None)
        state.recent.pop(key, None)
        state.written_at.pop(key, None)
        state.parsed.pop(key, None)
        return
    body = bodies[0]
    mine = state.latest.get(key)
    if mine is not None and newer(mine, body):
        body = mine  # our own status write, not yet seen by the watch
    pods = list(indices["job_pods"].get(key, []))
    nodes = {n.name: n for store in indices["node_infos"].values() for n in store}
    in_use: dict[str, int] = {}
    for node, store in indices["gpu_pods"].items():
        in_use[node] = sum(g for ns, job, g in store if (ns, job) != key)
    workloads = {w.name: w for w in indices.get("workloads", {}).get(key[0], [])}
    t0 = time.perf_counter()
    obs = Observed(
        body, pods, nodes, datetime.now(UTC), in_use, parse(state, key, body), workloads,
        heartbeats=state.heartbeats.snapshot() if state.heartbeats else {},
        heartbeat_grace=state.heartbeat_grace,
        progress=state.scraper.samples.get(key),
        scrape_error=state.scraper.errors.get(key, ""),
        progress_interval=state.scraper.interval,
    )  # fmt: skip
    decision = reconcile(obs)
    held = hold_messages(state, key, body, decision.status)
    if (
        held is not None
    ):  # a message that changed again so soon waits (status written per change, not per event)
        decision.status = copy.deepcopy(dict(body.get("status") or {}))
        decision.later(held)
    recent = state.recent.setdefault(key, Recent())
    written = await asyncio.to_thread(carry_out, state.kube, body, decision, recent, state.run)
    took = time.perf_counter() - t0
    state.metrics.reconcile_seconds.observe(took)
    if decision.apply or decision.delete or written is not None:
        log.info(
            "reconciled %s/%s in %.0f ms: phase %s, %d applied, %d deleted%s",
            *key,
            took * 1000,
            decision.status.get("phase"),
            len(decision.apply),
            len(decision.delete),
            f", status written ({', '.join(changed(body.get('status') or {}, decision.status))})"
            if written is not None
            else "",
        )
    if written is not None:
        state.latest[key] = written
        state.written_at[key] = time.monotonic()
    if decision.restarted:
        state.metrics.restarts.inc()
    if decision.requeue_after is not None:
        state.due[key] = time.monotonic() + decision.requeue_after


def hold_messages(state: State, key: Key, body: Mapping[str, Any], new: Mapping[str, Any]) -> float | None:
    """Seconds to hold a status change back: only condition messages changed, and the last
    status write was less than MESSAGE_INTERVAL_S ago; None to write now."""
    since = time.monotonic() - state.written_at.get(key, float("-inf"))
    if since >= MESSAGE_INTERVAL_S or not st.only_messages(body.get("status"), new):
        return None
    return MESSAGE_INTERVAL_S - since


def changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Top-level status fields that differ (what a status write was for, in the log)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


async def loop(state: State, indices: Mapping[str, Any]) -> None:
    await state.ready.wait()  # kopf calls handlers only once every index is filled
    last_sync = time.monotonic()
    while True:
        now = time.monotonic()
        wait = min([state.resync_s - (now - last_sync), *[t - now for t in state.due.values()]])
        if wait > 0:
            try:
                await asyncio.wait_for(state.wake.wait(), timeout=wait)
                await asyncio.sleep(state.debounce_s)  # let a burst of pod events land first
            except TimeoutError:
                pass
        state.wake.clear()
        now = time.monotonic()
        if now - last_sync >= state.resync_s:
            state.dirty |= set(indices["job_bodies"].keys())
            last_sync = now
        for key, t in list(state.due.items()):
            if t <= now:
                state.dirty.add(key)
                del state.due[key]
        keys, state.dirty = state.dirty, set()
        for key in sorted(keys):
            try:
                await reconcile_one(state, key, indices)
            except Exception:
                state.metrics.errors.inc()
                log.exception("reconcile of %s/%s failed; retrying", *key)
                state.due[key] = time.monotonic() + 2.0
        state.metrics.set_phases(
            (b.get("status") or {}).get("phase") for s in indices["job_bodies"].values() for b in s
        )


def build(state: State) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        """kopf logs in with the same client configuration as our API calls (in-cluster, else
        --kubeconfig): kopf's own client login reads only $KUBECONFIG, so --kubeconfig alone
        would give kopf a different identity or none. Called again on a 401, by when the
        in-cluster loader's refresh hook has read the rotated service-account token."""
        cfg = state.kube.api_client.configuration
        auth = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
        scheme, _sep, token = (auth or "").partition(" ")
        return kopf.ConnectionInfo(
            server=cfg.host,
            ca_path=cfg.ssl_ca_cert,
            insecure=not cfg.verify_ssl,
            scheme=scheme or None,
            token=token or None,
            certificate_path=cfg.cert_file,
            private_key_path=cfg.key_file,
        )

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
        settings.persistence.finalizer = f"{PREFIX}/finalizer"
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=PREFIX, key="last-handled-configuration"
        )
        settings.posting.enabled = True
        settings.posting.level = logging.WARNING  # kopf's own warnings as Events; ours go via apply
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        names = ("job_bodies", "job_pods", "node_infos", "gpu_pods", "workloads")
        indices = {k: kwargs[k] for k in names if k in kwargs}
        state.heartbeats = Heartbeats(state.kube.api_client).start()
        state.tasks = [
            asyncio.create_task(loop(state, indices)),
            asyncio.create_task(state.scraper.run(indices, state.kick)),
        ]

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        for task in state.tasks:
            task.cancel()
        if state.heartbeats is not None:
            state.heartbeats.stop()
        state.pool.shutdown(wait=False, cancel_futures=True)

    @kopf.index(GROUP, VERSION, PLURAL, id="job_bodies", registry=registry)
    def job_bodies(**kw: Any) -> Any:
        body = kw["body"]
        kept = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}
        return {(kw["namespace"], kw["name"]): kept}

    @kopf.index("pods", labels={LABEL_JOB: kopf.PRESENT}, id="job_pods", registry=registry)
    def job_pods(**kw: Any) -> Any:
        return {(kw["namespace"], kw["labels"][LABEL_JOB]): pod_view(kw["body"])}

    @kopf.index("pods", id="gpu_pods", registry=registry)
    def gpu_pods(**kw: Any) -> Any:
        spec, status = kw["spec"], kw["status"]
        node, gpus = spec.get("nodeName"), gpus_of(spec)
        if not node or not gpus or status.get("phase") in ("Succeeded", "Failed"):
            return None
        return {node: (kw["namespace"], kw["labels"].get(LABEL_JOB, ""), gpus)}

    @kopf.index("nodes", id="node_infos", registry=registry)
    def node_infos(**kw: Any) -> Any:
        return {kw["name"]: parse_node(kw["body"])}

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def job_event(**kw: Any) -> None:
        state.kick((kw["namespace"], kw["name"]))

    @kopf.on.event("pods", labels={LABEL_JOB: kopf.PRESENT}, registry=registry)
    def pod_event(**kw: Any) -> None:
        state.kick((kw["namespace"], kw["labels"][LABEL_JOB]))

    @kopf.on.event("nodes", registry=registry)
    def node_event(**kw: Any) -> None:
        for key in kw["job_bodies"]:
            state.kick(key)

    if state.kueue is not None:  # only when Kueue is served: an index on a missing API never fills
        watch_workloads(registry, state, state.kueue)
    return registry


def watch_workloads(registry: kopf.OperatorRegistry, state: State, version: str) -> None:
    """Kueue's Workloads by namespace; a change re-reconciles that namespace's jobs (a Workload
    is named after its pod group, queueing.py, and owned by the pods, not by the job)."""

    @kopf.index(KUEUE_GROUP, version, "workloads", id="workloads", registry=registry)
    def workloads(**kw: Any) -> Any:
        return {kw["namespace"]: workload_view(kw["body"])}

    @kopf.on.event(KUEUE_GROUP, version, "workloads", registry=registry)
    def workload_event(**kw: Any) -> None:
        for key in kw["job_bodies"]:
            if key[0] == kw["namespace"]:
                state.kick(key)
