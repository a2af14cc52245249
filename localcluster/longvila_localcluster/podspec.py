"""A pod spec turned into a local process launch, as a kubelet would run its container. Pure.

The pod runner (podrunner.py) executes the pods the operator creates on fake KWOK nodes as
local processes; this module decides *what* to run, over plain-dict pods:

- Command: the container's `command` + `args`, looked up on the runner's PATH (the
  project's virtualenv first), so `torchrun …` is the venv's torchrun.
- Environment: a container sees only its own env, so the process gets the container's
  `env` (values, Secret / ConfigMap keys, downward-API fields) plus PATH, HOME and a
  private TMPDIR, and nothing else of the runner's environment.
- Addresses: each pod gets its own loopback address `127.0.<slot>.<100 + node rank>`
  (`pod_address`): the slot comes from the pod's headless Service (one per job), the last
  byte from its `longvila.io/node-rank` label. Every DNS name `<host>.<service>.<ns>.svc`
  in env values or args is replaced by that pod's address (names of Services or unknown
  pods by 127.0.0.1). Distinct addresses matter: torchrun's c10d rendezvous numbers nodes
  by sorting their PET_LOCAL_ADDR strings, and fixed-width last bytes (100…254) sort in
  node-rank order exactly as the pods' DNS names do in a cluster.
- Volumes: ConfigMap volumes are written as files under the pod's directory and emptyDirs
  become directories there; paths under a mountPath in env values and args are rewritten
  to the local copy. A memory emptyDir at /dev/shm is the host's /dev/shm. A hostPath is
  this machine's directory, mounted only at its own path (file:// URIs inside the trainer
  config are not rewritten); PVC, CSI and NFS volumes cannot run locally.
- Termination message: the container's terminationMessagePath becomes a file in the pod's
  directory (env values naming the path are rewritten to it); `termination_message` reads
  it back as a kubelet does, falling back to the log's tail under FallbackToLogsOnError.
- Listening: processes share this machine's network namespace, so a server that would bind
  0.0.0.0 in its pod is told its pod address instead (LONGVILA_METRICS_ADDR, the trainer's
  metrics), and the runner reports that address as the pod's IP.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from longvila_contract.env import METRICS_ADDR_VAR
from longvila_contract.labels import LABEL_NODE_RANK

_DNS = re.compile(r"\b([a-z0-9]([-a-z0-9.]*[a-z0-9])?)\.svc(\.cluster\.local)?\b")
SHM = "/dev/shm"
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
MESSAGE_BYTES, FALLBACK_BYTES, FALLBACK_LINES = 4096, 2048, 80  # what a kubelet keeps


class PodSpecError(ValueError):
    """The pod asks for something the local runner cannot provide (named in the message)."""


@dataclass(frozen=True)
class Mount:
    path: str  # where the container sees it
    local: Path  # where it is on this machine
    files: Mapping[str, str] = field(default_factory=dict)  # ConfigMap keys → contents


@dataclass(frozen=True)
class Launch:
    argv: tuple[str, ...]
    env: Mapping[str, str]
    cwd: Path
    mounts: tuple[Mount, ...]
    termination_log: Path  # the local file behind terminationMessagePath
    fallback_to_logs: bool  # terminationMessagePolicy FallbackToLogsOnError


def key(pod: Mapping[str, Any]) -> str:
    return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"


def pod_address(pod: Mapping[str, Any]) -> str:
    """127.0.<slot>.<100 + node rank> for a pod behind a headless Service, else 127.0.0.1."""
    spec, meta = pod.get("spec", {}), pod.get("metadata", {})
    subdomain = spec.get("subdomain")
    if not subdomain:
        return "127.0.0.1"
    rank = int((meta.get("labels") or {}).get(LABEL_NODE_RANK, "0"))
    if not 0 <= rank <= 154:
        raise PodSpecError(f"{key(pod)}: node rank {rank} > 154 does not fit the local address scheme")
    slot = zlib.crc32(f"{meta.get('namespace')}/{subdomain}".encode()) % 250 + 1
    return f"127.0.{slot}.{100 + rank}"


def dns_names(pods: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """`<hostname>.<subdomain>.<namespace>` (the part before `.svc`) → the pod's address."""
    out = {}
    for p in pods:
        spec, ns = p.get("spec", {}), p["metadata"]["namespace"]
        if spec.get("hostname") and spec.get("subdomain"):
            out[f"{spec['hostname']}.{spec['subdomain']}.{ns}"] = pod_address(p)
    return out


def rewrite_hosts(value: str, names: Mapping[str, str]) -> str:
    return _DNS.sub(lambda m: names.get(m.group(1), "127.0.0.1"), value)


def rewrite_paths(value: str, mounts: Sequence[Mount]) -> str:
    """A value that is a path under a mountPath (or `file://` of one) points at the local copy."""
    for m in sorted(mounts, key=lambda m: -len(m.path)):
        if m.path == SHM:
            continue
        for prefix in ("", "file://"):
            head = prefix + m.path
            if value == head or value.startswith(head.rstrip("/") + "/"):
                return prefix + str(m.local) + value[len(head) :]
    return value


def _container(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    containers = pod["spec"].get("containers") or []
    if len(containers) != 1:
        raise PodSpecError(f"{key(pod)}: the local runner runs pods with exactly one container")
    if pod["spec"].get("initContainers"):
        raise PodSpecError(f"{key(pod)}: init containers are not supported by the local runner")
    c: Mapping[str, Any] = containers[0]
    return c


def repository(image: str) -> str:
    """`registry/name:tag@digest` → `registry/name`."""
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def command(pod: Mapping[str, Any], entrypoints: Mapping[str, Sequence[str]]) -> list[str]:
    """command + args; a container without `command` runs its image's ENTRYPOINT, which the
    runner knows only for the images it is told about (`entrypoints`, by repository)."""
    c = _container(pod)
    head = c.get("command")
    if not head:
        head = entrypoints.get(repository(str(c.get("image", ""))))
        if head is None:
            raise PodSpecError(
                f"{key(pod)}: container {c.get('name')} has no command and image {c.get('image')!r} "
                f"has no known entrypoint (known: {', '.join(sorted(entrypoints)) or 'none'})"
            )
    return [*head, *(c.get("args") or [])]


def _env_value(
    pod: Mapping[str, Any], var: Mapping[str, Any], secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
) -> str | None:  # fmt: skip
    if "value" in var or "valueFrom" not in var:
        return str(var.get("value", ""))
    src, ns = var["valueFrom"], pod["metadata"]["namespace"]
    for kind, store in (("secretKeyRef", secrets), ("configMapKeyRef", config_maps)):
        if kind in src:
            ref = src[kind]
            data = store.get(f"{ns}/{ref['name']}")
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    return None
                raise PodSpecError(
                    f"{key(pod)}: env {var['name']}: {kind} {ref['name']}/{ref['key']} not found"
                )
            return data[ref["key"]]
    if "fieldRef" in src:
        path = src["fieldRef"]["fieldPath"]
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "spec.nodeName": pod["spec"].get("nodeName", ""),
            "status.podIP": pod_address(pod),
        }
        if path in fields:
            return str(fields[path])
        raise PodSpecError(f"{key(pod)}: env {var['name']}: fieldRef {path} is not supported locally")
    raise PodSpecError(f"{key(pod)}: env {var['name']}: valueFrom {sorted(src)} is not supported locally")


def mounts(
    pod: Mapping[str, Any], pod_dir: Path, config_maps: Mapping[str, Mapping[str, str]]
) -> tuple[Mount, ...]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    out = []
    for vm in _container(pod).get("volumeMounts") or []:
        vol = volumes.get(vm["name"])
        if vol is None:
            raise PodSpecError(f"{key(pod)}: volumeMount {vm['name']} names no volume")
        local = pod_dir / "volumes" / vm["name"]
        if "configMap" in vol:
            name = vol["configMap"]["name"]
            data = config_maps.get(f"{pod['metadata']['namespace']}/{name}")
            if data is None:
                raise PodSpecError(f"{key(pod)}: volume {vm['name']}: ConfigMap {name} not found")
            out.append(Mount(vm["mountPath"], local, dict(data)))
        elif "emptyDir" in vol:
            shm = vm["mountPath"] == SHM
            out.append(Mount(vm["mountPath"], Path(SHM) if shm else local))
        elif "hostPath" in vol:
            path = vol["hostPath"]["path"]
            if vm["mountPath"] != path:  # config files name the mount path; they are not rewritten
                raise PodSpecError(
                    f"{key(pod)}: volume {vm['name']}: the local runner mounts a hostPath only at its own "
                    f"path (mountPath {vm['mountPath']}, hostPath.path {path})"
                )
            out.append(Mount(vm["mountPath"], Path(path)))
        elif "projected" in vol or "secret" in vol:
            continue  # service-account tokens: the runner passes a kubeconfig instead
        else:
            raise PodSpecError(
                f"{key(pod)}: volume {vm['name']}: only configMap, emptyDir and hostPath run locally"
            )
    return tuple(out)


def launch(
    pod: Mapping[str, Any],
    pods: Sequence[Mapping[str, Any]],
    *,
    pod_dir: Path,
    path: str,
    secrets: Mapping[str, Mapping[str, str]],
    config_maps: Mapping[str, Mapping[str, str]],
    extra_env: Mapping[str, str] | None = None,
    entrypoints: Mapping[str, Sequence[str]] | None = None,
) -> Launch:
    """What to run for `pod`; `pods` are every pod the runner sees (for DNS names)."""
    c = _container(pod)
    ms = mounts(pod, pod_dir, config_maps)
    names = dns_names(pods)
    term_path = str(c.get("terminationMessagePath") or TERMINATION_LOG)
    term_log = pod_dir / "termination-log"

    def local(v: str) -> str:
        return str(term_log) if v == term_path else rewrite_paths(rewrite_hosts(v, names), ms)

    env = {
        "PATH": path,
        "HOME": str(pod_dir / "home"),
        "TMPDIR": str(pod_dir / "tmp"),  # a container's /tmp is its own
        "HOSTNAME": pod["spec"].get("hostname") or pod["metadata"]["name"],
        "PYTHONUNBUFFERED": "1",
        METRICS_ADDR_VAR: pod_address(pod),
    }
    env.update(extra_env or {})
    for var in c.get("env") or []:
        value = _env_value(pod, var, secrets, config_maps)
        if value is not None:
            env[var["name"]] = local(value)
    argv = tuple(local(a) for a in command(pod, entrypoints or {}))
    fallback = c.get("terminationMessagePolicy") == "FallbackToLogsOnError"
    return Launch(
        argv=argv, env=env, cwd=pod_dir, mounts=ms, termination_log=term_log, fallback_to_logs=fallback
    )


def termination_message(file_text: bytes, log_tail: bytes, code: int, fallback_to_logs: bool) -> str:
    """What a kubelet puts in state.terminated.message: the file (its first 4096 bytes), or,
    under FallbackToLogsOnError, for a failed container with an empty file, the log's last
    80 lines within 2048 bytes."""
    if file_text:
        return file_text[:MESSAGE_BYTES].decode(errors="replace")
    if not fallback_to_logs or code == 0:
        return ""
    lines = log_tail[-FALLBACK_BYTES:].decode(errors="replace").splitlines()
    if len(log_tail) > FALLBACK_BYTES and lines:
        lines = lines[1:]  # the first line was cut
    return "\n".join(lines[-FALLBACK_LINES:])


def terminated(
    pod: Mapping[str, Any], code: int, started: str, finished: str, message: str = ""
) -> dict[str, Any]:
    """The status patch a kubelet sends when the pod's only container exits with `code`."""
    c = (pod["spec"].get("containers") or [{}])[0]
    reason = "Completed" if code == 0 else "Error"
    state: dict[str, Any] = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": finished}
    if message:
        state["message"] = message
    down = [
        {"type": t, "status": "False", "lastTransitionTime": finished, "reason": "PodCompleted"}
        for t in ("Ready", "ContainersReady")
    ]
    return {
        "status": {
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": down,
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c.get("image", ""),
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"terminated": state},
                }
            ],
        }
    }
