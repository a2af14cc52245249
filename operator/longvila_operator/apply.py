"""Carrying a reconcile Decision out against the API server. The only module that writes.

Children go by server-side apply (field manager `longvila-operator`, force): applying the
same object twice is a no-op, so a replayed reconcile, or an operator restarted halfway,
creates nothing twice. Order: status first (restart counts and placement are the
operator's memory), then deletes, then applies, then Events. Every request goes through
`Kube.request`, which counts it (metrics.py) so the benchmark can report API requests.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import status as st
from .api import GROUP, KIND, PLURAL, VERSION
from .decision import Decision, Delete, Event

FIELD_MANAGER = "longvila-operator"
COMPONENT = "longvila-operator"


class ApiError(Exception):
    def __init__(self, method: str, path: str, code: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {code}: {body[:500]}")
        self.code = code


class NoCredentialsError(RuntimeError):
    """Neither in-cluster credentials nor a usable kubeconfig."""


@dataclass
class Kube:
    """A minimal JSON client over the kubernetes package's ApiClient (auth and TLS from it)."""

    api_client: Any
    on_request: Callable[[str, str, int], None] = lambda verb, kind, code: None

    @classmethod
    def from_env(cls, kubeconfig: str | None = None, **kw: Any) -> Kube:
        from kubernetes import client, config

        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except config.ConfigException as in_cluster:
            try:
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, client_configuration=cfg
                )
            except (config.ConfigException, OSError) as e:
                raise NoCredentialsError(
                    f"no Kubernetes credentials: not in a cluster ({in_cluster}) and no usable kubeconfig "
                    f"({e}); give --kubeconfig or $KUBECONFIG"
                ) from None
        cfg.connection_pool_maxsize = 16
        return cls(client.ApiClient(cfg), **kw)

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", kind: str = ""
    ) -> Any:
        cfg = self.api_client.configuration
        headers = {"Accept": "application/json", "Content-Type": content_type}
        token = cfg.get_api_key_with_prefix("authorization") or cfg.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token if token.lower().startswith("bearer") else f"Bearer {token}"
        resp = self.api_client.call_api(method, cfg.host + path, header_params=headers, body=body)
        resp.read()
        self.on_request(method, kind, int(resp.status))
        text = resp.data.decode() if resp.data else ""
        if resp.status >= 400:
            raise ApiError(method, path, int(resp.status), text)
        return json.loads(text) if text else None


def path_of(obj: Mapping[str, Any]) -> str:
    kind, meta = obj["kind"], obj["metadata"]
    plural = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}[kind]
    return f"/api/v1/namespaces/{meta['namespace']}/{plural}/{meta['name']}"


def server_side_apply(kube: Kube, obj: Mapping[str, Any]) -> Any:
    query = f"?fieldManager={FIELD_MANAGER}&force=true"
    try:
        return kube.request(
            "PATCH", path_of(obj) + query, dict(obj), "application/apply-patch+yaml", kind=obj["kind"]
        )
    except ApiError as err:
        if err.code == 403 and "NamespaceTerminating" in str(err):
            return None  # the job goes with its namespace
        raise


def delete_pod(kube: Kube, namespace: str, name: str, grace: int | None) -> bool:
    body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    if grace is not None:
        body["gracePeriodSeconds"] = grace
    try:
        kube.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/{name}", body, kind="Pod")
    except ApiError as err:
        if err.code == 404:
            return False
        raise
    return True


def job_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def patch_status(
    kube: Kube, namespace: str, name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> Any:
    body = {"status": st.merge_patch(old, new)}
    return kube.request(
        "PATCH", job_path(namespace, name) + "/status", body, "application/merge-patch+json", kind=KIND
    )


def delete_job(kube: Kube, namespace: str, name: str) -> None:
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
    try:
        kube.request("DELETE", job_path(namespace, name), body, kind=KIND)
    except ApiError as err:
        if err.code != 404:
            raise


def post_event(kube: Kube, job: Mapping[str, Any], event: Event, now: str) -> None:
    meta = job["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:12]}", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[: st.MAX_MESSAGE],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    kube.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", body, kind="Event")


@dataclass
class Recent:
    """Objects applied a moment ago: the pod index may not show them yet, so skip re-sending."""

    window_s: float = 10.0
    seen: dict[str, float] = field(default_factory=dict)

    def fresh(self, key: str) -> bool:
        t = self.seen.get(key)
        return t is not None and time.monotonic() - t < self.window_s

    def mark(self, key: str) -> None:
        now = time.monotonic()
        self.seen = {k: t for k, t in self.seen.items() if now - t < self.window_s}
        self.seen[key] = now


def carry_out(
    kube: Kube, job: Mapping[str, Any], d: Decision, recent: Recent, run: Callable[[list[Any]], None]
) -> Any:
    """Write status (if changed), delete, apply, post Events; returns the patched job or None.

    `run` executes a list of zero-argument calls, concurrently where the caller can.
    """
    meta = job["metadata"]
    ns, name = meta["namespace"], meta["name"]
    written = None
    if st.differs(job.get("status"), d.status):
        written = patch_status(kube, ns, name, job.get("status"), d.status)
    deletes: list[Delete] = [x for x in d.delete if not recent.fresh(f"del/{ns}/{x.name}/{x.grace}")]
    run([lambda x=x: delete_pod(kube, ns, x.name, x.grace) for x in deletes])
    for x in deletes:
        recent.mark(f"del/{ns}/{x.name}/{x.grace}")
    applies = [o for o in d.apply if not recent.fresh(path_of(o))]
    shared = [o for o in applies if o["kind"] != "Pod"]  # Service and ConfigMap before the pods
    run([lambda o=o: server_side_apply(kube, o) for o in shared])
    run([lambda o=o: server_side_apply(kube, o) for o in applies if o["kind"] == "Pod"])
    for o in applies:
        recent.mark(path_of(o))
    now = st.timestamp(datetime.now(UTC))
    for e in d.events:
        with contextlib.suppress(ApiError):  # an Event lost is not worth a failed reconcile
            post_event(kube, written or job, e, now)
    if d.delete_job:
        delete_job(kube, ns, name)
    return written
