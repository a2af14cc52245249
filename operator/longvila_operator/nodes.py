"""Node objects (as `kubectl get nodes -o yaml` prints them) reduced to what placement needs.

Also the InfiniBand-domain label: configured, or detected from the keys the common tools
write. No upstream standard exists (KEP-4962 was closed), and Topograph renamed its keys
twice in 2026, so detection walks a list instead of trusting one key.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api.types import Toleration

GPU = "nvidia.com/gpu"
HOSTNAME = "kubernetes.io/hostname"

# Tightest fabric first: an NVLink clique, then the switch closest to the node, then wider
# groups; a `*` stands for a tier number and the lowest tier present wins. Hostname last:
# every node is then its own domain.
DOMAIN_KEYS = (
    "nvidia.com/gpu.clique",
    "accelerator.topograph.run/domain",
    "fabric.topograph.run/tier-*",
    "network.topology.nvidia.com/accelerator",
    "network.topology.nvidia.com/leaf",
    "network.topology.nvidia.com/tier-*",
    "network.topology.nvidia.com/spine",
    "network.topology.nvidia.com/core",
    "cloud.google.com/gce-topology-block",
    "topology.kubernetes.io/zone",
    HOSTNAME,
)


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class NodeInfo:
    name: str
    ready: bool = True
    unschedulable: bool = False
    gpus: int = 0  # allocatable nvidia.com/gpu
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable: Mapping[str, str] = field(default_factory=dict)

    def count(self, resource: str) -> int:
        return whole(self.allocatable, resource)


def whole(allocatable: Mapping[str, str], resource: str) -> int:
    """Allocatable units of an extended resource; extended resources are whole numbers."""
    text = str(allocatable.get(resource, "0"))
    return int(text) if text.isdigit() else 0


def parse_node(obj: Mapping[str, Any]) -> NodeInfo:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    allocatable = {str(k): str(v) for k, v in (status.get("allocatable") or {}).items()}
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value", "") or ""), str(t.get("effect", "")))
        for t in spec.get("taints") or []
    )
    return NodeInfo(
        name=str(meta["name"]),
        ready=ready,
        unschedulable=bool(spec.get("unschedulable", False)),
        gpus=whole(allocatable, GPU),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        taints=taints,
        allocatable=allocatable,
    )


def parse_nodes(doc: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> list[NodeInfo]:
    """A v1 List / NodeList (kubectl get nodes -o yaml), a single Node, or a plain list of Nodes."""
    items = (doc.get("items") if "items" in doc else [doc]) if isinstance(doc, Mapping) else list(doc)
    nodes = [parse_node(o) for o in items or [] if o.get("kind", "Node") == "Node"]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ValueError("the node list names a node twice")
    return nodes


def tolerates(tolerations: Iterable[Toleration], taint: Taint) -> bool:
    """core/v1 semantics: an empty effect matches all effects; Exists ignores the value, and with
    an empty key matches every taint."""
    for t in tolerations:
        if t.effect and t.effect != taint.effect:
            continue
        if t.operator == "Exists" and (t.key == "" or t.key == taint.key):
            return True
        if t.operator == "Equal" and t.key == taint.key and t.value == taint.value:
            return True
    return False


def blocking_taint(node: NodeInfo, tolerations: Sequence[Toleration]) -> Taint | None:
    """The first NoSchedule/NoExecute taint not tolerated (PreferNoSchedule never blocks)."""
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return taint
    return None


def keys_for(pattern: str, nodes: Sequence[NodeInfo]) -> list[str]:
    """Concrete label keys a DOMAIN_KEYS entry stands for, lowest tier first."""
    if "*" not in pattern:
        return [pattern]
    rx = re.compile(re.escape(pattern).replace(r"\*", "([0-9]+)") + "$")
    found = {m.group(0): int(m.group(1)) for n in nodes for k in n.labels if (m := rx.match(k))}
    return sorted(found, key=lambda k: found[k])


def detect_domain_label(nodes: Sequence[NodeInfo]) -> str:
    """The first known key that every given node carries (hostname when none does)."""
    if not nodes:
        return HOSTNAME
    for pattern in DOMAIN_KEYS:
        for key in keys_for(pattern, nodes):
            if all(key in n.labels for n in nodes):
                return key
    return HOSTNAME


def domain_of(node: NodeInfo, label: str) -> str | None:
    if label == HOSTNAME:
        return node.labels.get(HOSTNAME, node.name)
    return node.labels.get(label)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """gpu-2 before gpu-10: hosts are usually numbered by their place in the rack."""
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"([0-9]+)", name) if p)
