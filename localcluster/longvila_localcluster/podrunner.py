"""The pod runner: a process "kubelet" for the fake KWOK nodes of the local cluster.

KWOK binds and "starts" pods without running anything. The runner really runs the pods
that match its label selector: once KWOK has marked a pod Running on a node, the runner
starts the pod's command as a local process (podspec.launch decides argv, env, addresses
and volumes), and when the process exits it reports the exit to the API server as the
pod's terminated status, as a kubelet would; the operator reacts to that status.

Lifecycle, per tick (`--interval`, default 0.5 s):
1. A process whose node died (`longvila-cluster fail-node`: KWOK no longer manages the
   node) is SIGKILLed with its whole process tree at once, and nothing is reported: a dead
   kubelet reports nothing, the node lifecycle controller takes over.
2. A process whose pod is being deleted gets SIGTERM, then SIGKILL after the deletion's
   grace (at most --max-grace seconds), and then the runner removes the pod object, as a
   kubelet does once its containers are stopped (KWOK's own pod-delete stage leaves pods
   the runner runs alone: they carry RUN_BY). A pod that is gone at once was deleted with
   grace 0: its processes are SIGKILLed.
3. An exited process is reported: phase Succeeded or Failed with the exit code and the
   termination message (podspec.termination_message).
4. New Running pods are started, but not while a process of an earlier pod still holds
   the same loopback address (a restarted gang's rank 0 would find the old one's ports
   taken; in a cluster each pod has its own network namespace), and their pod IP is set
   to their loopback address, where clients such as the operator's progress scraper
   reach them.

Process trees: torchrun starts its workers in new sessions, so killing torchrun's group
would orphan them. The runner becomes a child subreaper and kills every descendant of a
pod's process by walking /proc. Logs: <dir>/pods/<namespace>/<pod>/log.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from longvila_contract.env import ENTRYPOINT

from . import podspec
from .cluster import ClusterInfo, LocalCluster, write_token_kubeconfig
from .nodes import KWOK_ANNOTATION

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36
RUN_BY = "longvila.io/local-kubelet"  # annotation on pods the runner runs (kwok-stages.yaml skips them)
TRAINER_PODS = "app.kubernetes.io/managed-by=longvila-operator"
# The ENTRYPOINTs of our images (images/*/Dockerfile; tests/unit/test_podspec.py holds them
# together), for containers that give only args, as the chart's operator Deployment does.
ENTRYPOINTS: dict[str, tuple[str, ...]] = {
    "longvila/operator": ("longvila-operator",),
    "longvila/trainer": ENTRYPOINT,
}


def _prctl(option: int, value: int) -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def descendants(pid: int) -> list[int]:
    """pid and every process below it (children before their parents are killed)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_tree(pid: int, sig: int) -> None:
    """Signals pid's whole tree; with SIGKILL also reaps the orphans that reparented to us."""
    tree = descendants(pid)
    for p in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, sig)
    if sig == signal.SIGKILL:
        for p in tree[1:]:  # the root is its Popen's to reap
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(p, 0)


def read_head(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def read_tail(path: Path, n: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - n))
            return f.read()
    except OSError:
        return b""


@dataclass
class Running:
    pod: str  # namespace/name
    uid: str
    node: str
    proc: subprocess.Popen[bytes]
    started: str
    log: Path
    termination_log: Path
    fallback_to_logs: bool
    address: str  # its pod's loopback address
    term_sent: float = 0.0  # monotonic time of SIGTERM, 0 = not sent


class PodRunner:
    """Runs the selected pods of a local cluster as processes; `start()` runs it in a thread."""

    def __init__(
        self,
        info: ClusterInfo,
        work_dir: Path,
        *,
        selectors: tuple[str, ...] = (TRAINER_PODS,),
        path: str | None = None,
        interval: float = 0.5,
        max_grace: float = 10.0,
        say: Callable[[str], None] = print,
    ) -> None:
        from kubernetes import client as k

        api = LocalCluster.client(info)
        self.core: Any = k.CoreV1Api(api)
        self.info = info
        self.dir = work_dir
        self.selectors = selectors
        self.path = path or os.environ.get("PATH", "/usr/bin:/bin")
        self.interval = interval
        self.max_grace = max_grace
        self.say = say
        self.procs: dict[str, Running] = {}
        self.done: set[str] = set()  # pod uids already run to completion (never started twice)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    # -- reads ------------------------------------------------------------------------------

    def _json(self, call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return json.loads(call(*args, _preload_content=False, **kw).data)

    def _pods(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for sel in self.selectors:  # label selectors cannot say OR: one list per selector
            for p in self._json(self.core.list_pod_for_all_namespaces, label_selector=sel)["items"]:
                out[p["metadata"]["uid"]] = p
        return list(out.values())

    def _kubeconfig(self, pod: Mapping[str, Any], pod_dir: Path) -> dict[str, str]:
        """The pod's service-account token as a kubeconfig ($KUBECONFIG), in place of the
        token volume a kubelet would mount (its in-cluster path is fixed, so it cannot move)."""
        spec, ns = pod["spec"], pod["metadata"]["namespace"]
        if spec.get("automountServiceAccountToken") is False:
            return {}
        sa = spec.get("serviceAccountName") or "default"
        body = {"spec": {"expirationSeconds": 24 * 3600}}
        token = self.core.create_namespaced_service_account_token(sa, ns, body).status.token
        return {"KUBECONFIG": str(write_token_kubeconfig(self.info, token, pod_dir / "kubeconfig"))}

    def _live_nodes(self) -> set[str]:
        """Nodes whose 'kubelet' is alive: KWOK still manages them (fail-node removes that)."""
        nodes = self._json(self.core.list_node)["items"]
        return {
            n["metadata"]["name"]
            for n in nodes
            if KWOK_ANNOTATION in (n["metadata"].get("annotations") or {})
        }

    def _data(self, kind: str, ns: str) -> dict[str, dict[str, str]]:
        import base64

        if kind == "secret":
            items = self._json(self.core.list_namespaced_secret, ns)["items"]
            return {
                f"{ns}/{s['metadata']['name']}": {
                    k: base64.b64decode(v).decode() for k, v in (s.get("data") or {}).items()
                }
                for s in items
            }
        items = self._json(self.core.list_namespaced_config_map, ns)["items"]
        return {f"{ns}/{c['metadata']['name']}": dict(c.get("data") or {}) for c in items}

    # -- one tick ---------------------------------------------------------------------------

    def tick(self) -> None:
        pods = self._pods()
        by_key = {podspec.key(p): p for p in pods}
        live = self._live_nodes()
        for k, r in list(self.procs.items()):
            pod = by_key.get(k)
            if r.node not in live:
                kill_tree(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
                self.say(f"[runner] {k}: node {r.node} died; its processes were killed")
                self.done.add(r.uid)
                del self.procs[k]
            elif pod is None or pod["metadata"]["uid"] != r.uid:  # deleted with grace 0
                kill_tree(r.proc.pid, signal.SIGKILL)
                r.proc.wait()
                self.say(f"[runner] {k}: pod deleted at once; SIGKILL")
                self.done.add(r.uid)
                del self.procs[k]
            elif pod["metadata"].get("deletionTimestamp"):
                self._terminate(k, r, pod)
        for k, r in list(self.procs.items()):
            code = r.proc.poll()
            if code is not None and k in self.procs:
                self._report(k, r, by_key.get(k), code)
        for p in pods:  # deleted pods whose processes are gone: the pod object goes too
            meta, gone = p["metadata"], podspec.key(p) not in self.procs
            ours = RUN_BY in (meta.get("annotations") or {}) and p["spec"].get("nodeName") in live
            if meta.get("deletionTimestamp") and ours and gone:
                self._finalize(p)
        for p in pods:
            self._maybe_start(p, pods, live)

    def _finalize(self, pod: Mapping[str, Any]) -> None:
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        with contextlib.suppress(Exception):  # gone already, or replaced by a new pod of that name
            self.core.delete_namespaced_pod(meta["name"], meta["namespace"], body=body)

    def _terminate(self, k: str, r: Running, pod: Mapping[str, Any]) -> None:
        asked = pod["metadata"].get("deletionGracePeriodSeconds")
        if asked is None:
            asked = pod["spec"].get("terminationGracePeriodSeconds", 30)
        grace = min(self.max_grace, float(asked))
        if not r.term_sent:
            kill_tree(r.proc.pid, signal.SIGTERM)
            kill_tree(r.proc.pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            r.term_sent = time.monotonic()
            self.say(f"[runner] {k}: pod deleted; SIGTERM (SIGKILL after {grace:.0f}s)")
        if r.proc.poll() is None and time.monotonic() - r.term_sent < grace:
            return
        kill_tree(r.proc.pid, signal.SIGKILL)
        code = r.proc.wait()
        self.done.add(r.uid)
        del self.procs[k]
        # Stopped, as a kubelet reports it: a finalizer (Kueue's) lets the pod go only once
        # it is terminal; then the object goes.
        with contextlib.suppress(Exception):
            stopped = podspec.terminated(pod, 128 - code if code < 0 else code, r.started, _now())
            self.core.patch_namespaced_pod_status(
                pod["metadata"]["name"], pod["metadata"]["namespace"], stopped
            )
        self._finalize(pod)

    def _report(self, k: str, r: Running, pod: Mapping[str, Any] | None, code: int) -> None:
        kill_tree(r.proc.pid, signal.SIGKILL)  # workers a dead launcher left behind
        self.done.add(r.uid)
        del self.procs[k]
        code = 128 - code if code < 0 else code  # killed by signal N → 128 + N, as a shell says
        if pod is None or pod["metadata"]["uid"] != r.uid:
            return
        ns, name = k.split("/", 1)
        message = podspec.termination_message(
            read_head(r.termination_log, podspec.MESSAGE_BYTES), read_tail(r.log, podspec.FALLBACK_BYTES + 1),
            code, r.fallback_to_logs,
        )  # fmt: skip
        patch = podspec.terminated(pod, code, r.started, _now(), message)
        self.core.patch_namespaced_pod_status(name, ns, patch)
        self.say(f"[runner] {k}: exited {code} → {patch['status']['phase']} (log {r.log})")

    def _maybe_start(self, pod: Mapping[str, Any], pods: list[dict[str, Any]], live: set[str]) -> None:
        k, meta = podspec.key(pod), pod["metadata"]
        node = pod["spec"].get("nodeName", "")
        address = podspec.pod_address(pod)
        busy = address != "127.0.0.1" and any(r.address == address for r in self.procs.values())
        if (
            busy
            or k in self.procs
            or meta["uid"] in self.done
            or meta.get("deletionTimestamp")
            or pod.get("status", {}).get("phase") != "Running"
            or node not in live
        ):
            return
        ns = meta["namespace"]
        pod_dir = self.dir / "pods" / ns / meta["name"]
        if pod_dir.exists():
            shutil.rmtree(pod_dir)
        for d in ("home", "tmp"):
            (pod_dir / d).mkdir(parents=True)
        try:
            plan = podspec.launch(
                pod, pods, pod_dir=pod_dir, path=self.path,
                secrets=self._data("secret", ns), config_maps=self._data("configmap", ns),
                extra_env=self._kubeconfig(pod, pod_dir), entrypoints=ENTRYPOINTS,
            )  # fmt: skip
        except podspec.PodSpecError as e:
            self.done.add(meta["uid"])
            self.errors.append(str(e))
            self.say(f"[runner] cannot run {e}")
            self.core.patch_namespaced_pod_status(
                meta["name"], ns, podspec.terminated(pod, 128, _now(), _now(), str(e))
            )
            return
        for m in plan.mounts:
            m.local.mkdir(parents=True, exist_ok=True)
            for name, text in m.files.items():
                (m.local / name).write_text(text)
        plan.termination_log.write_text("")  # the kubelet creates it, empty and writable
        try:  # from now on the runner, not KWOK, removes this pod when it is deleted
            self.core.patch_namespaced_pod(
                meta["name"], ns, {"metadata": {"annotations": {RUN_BY: "runner"}}}
            )
        except Exception:
            return  # gone meanwhile
        log = pod_dir / "log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                plan.argv, env=dict(plan.env), cwd=plan.cwd, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, preexec_fn=lambda: _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL),
            )  # fmt: skip
        self.procs[k] = Running(
            k, meta["uid"], node, proc, _now(), log, plan.termination_log, plan.fallback_to_logs, address
        )
        # A JSON patch: a strategic merge would add to KWOK's podIPs (one per family is allowed).
        ips = [
            {"op": "add", "path": "/status/podIP", "value": address},
            {"op": "add", "path": "/status/podIPs", "value": [{"ip": address}]},
        ]
        with contextlib.suppress(Exception):  # the pod may be gone already; the next tick sees it
            self.core.patch_namespaced_pod_status(meta["name"], ns, ips)
        self.say(f"[runner] {k}: started on {node} as {address}: {' '.join(plan.argv)}")

    # -- loop -------------------------------------------------------------------------------

    def loop(self) -> None:
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)  # orphaned workers stay findable under us
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # a flaky API call must not stop the kubelet
                self.errors.append(repr(e))
                self.say(f"[runner] tick failed: {e!r}")
            self._stop.wait(self.interval)
        for r in self.procs.values():
            kill_tree(r.proc.pid, signal.SIGKILL)
            r.proc.wait()
        self.procs.clear()

    def start(self) -> PodRunner:
        self._thread = threading.Thread(target=self.loop, name="pod-runner", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
