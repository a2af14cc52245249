"""Small builders for the operator's unit tests: Node objects and LongVILAJob manifests as dicts."""

from __future__ import annotations

import copy
from typing import Any

SPINE = "network.topology.nvidia.com/spine"


def node(
    name: str,
    domain: str | None = "spine-0",
    *,
    gpus: int = 8,
    ready: bool = True,
    cordoned: bool = False,
    taints: tuple[tuple[str, str, str], ...] = (),
    labels: dict[str, str] | None = None,
    label: str = SPINE,
    rdma: int = 8,
) -> dict[str, Any]:
    """A Node as `kubectl get nodes -o yaml` prints it (the fields placement reads)."""
    lbls = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}
    if domain is not None:
        lbls[label] = domain
    lbls.update(labels or {})
    alloc = {
        "cpu": "192",
        "memory": "2048Gi",
        "pods": "110",
        "nvidia.com/gpu": str(gpus),
        "rdma/ib": str(rdma),
    }
    spec: dict[str, Any] = {}
    if cordoned:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = [{"key": k, "value": v, "effect": e} for k, v, e in taints]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": lbls},
        "spec": spec,
        "status": {
            "allocatable": alloc,
            "capacity": dict(alloc),
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
            ],
        },
    }


def node_list(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": list(nodes), "metadata": {"resourceVersion": ""}}


def fleet(per_domain: dict[str, int], prefix: str = "gpu", **kw: Any) -> list[dict[str, Any]]:
    """Nodes named <prefix>-<i>, numbered across domains in the order given."""
    out, i = [], 0
    for domain, count in per_domain.items():
        for _ in range(count):
            out.append(node(f"{prefix}-{i}", domain, **kw))
            i += 1
    return out


BASE_JOB: dict[str, Any] = {
    "apiVersion": "longvila.io/v1alpha1",
    "kind": "LongVILAJob",
    "metadata": {"name": "demo", "namespace": "team-a", "uid": "0b7c3c1e-5f7a-4a55-9d3e-3f2d1c0a9b8e"},
    "spec": {
        "image": "registry.example.com/longvila-trainer:0.1.0",
        "model": {
            "llm": "s3://models/qwen2-7b",
            "visionTower": "s3://models/siglip",
            "init": "s3://ckpt/stage3",
        },
        "topology": {"nodes": 4, "gpusPerNode": 8, "sequenceParallel": {"ulysses": 8, "ring": 2}},
        "checkpoint": {
            "uri": "s3://ckpt/demo",
            "credentialsSecret": "s3-creds",
            "endpoint": "http://s3.local:7070",
        },
        "stages": [
            {
                "name": "extend-64k",
                "type": "context-extension",
                "contextLength": 65536,
                "ropeTheta": 15.3e6,
                "data": "s3://data/long-text",
            },
            {
                "name": "long-sft",
                "type": "long-video-sft",
                "frames": 256,
                "data": "s3://data/long-video",
                "overrides": {"train.lr": 2e-5},
            },
        ],
    },
}


def job_manifest(**spec_changes: Any) -> dict[str, Any]:
    """BASE_JOB with top-level spec fields replaced (topology=… replaces the whole topology)."""
    m = copy.deepcopy(BASE_JOB)
    m["spec"].update(copy.deepcopy(spec_changes))
    return m


def topology(nodes: int, gpus: int = 8, ulysses: int = 8, ring: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "nodes": nodes,
        "gpusPerNode": gpus,
        "sequenceParallel": {"ulysses": ulysses, "ring": ring},
        **extra,
    }
