"""Fake GPU Node objects for KWOK (pure builders)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
DEFAULT_DOMAIN_LABEL = "network.topology.nvidia.com/spine"


@dataclass(frozen=True)
class NodeSpec:
    """The shape of the fake GPU fleet."""

    nodes: int = 4
    gpus_per_node: int = 8
    domains: int = 2
    domain_label: str = DEFAULT_DOMAIN_LABEL
    prefix: str = "gpu-node"
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    rdma_resource: str = "rdma/ib"

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise ValueError(f"nodes must be ≥ 1, got {self.nodes}")
        if self.gpus_per_node < 1:
            raise ValueError(f"gpus-per-node must be ≥ 1, got {self.gpus_per_node}")
        if not 1 <= self.domains <= self.nodes:
            raise ValueError(f"domains must be between 1 and nodes ({self.nodes}), got {self.domains}")

    def name(self, i: int) -> str:
        return f"{self.prefix}-{i}"

    def domain_of(self, i: int) -> str:
        # Contiguous blocks of nodes per domain, as racks under one spine switch would be.
        return f"spine-{i * self.domains // self.nodes}"


def node_manifest(spec: NodeSpec, i: int) -> dict[str, Any]:
    name = spec.name(i)
    resources = {
        "cpu": "192",
        "memory": "2048Gi",
        "ephemeral-storage": "4Ti",
        "pods": "110",
        "nvidia.com/gpu": str(spec.gpus_per_node),
        spec.rdma_resource: str(spec.gpus_per_node),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": spec.gpu_product,
                "nvidia.com/gpu.count": str(spec.gpus_per_node),
                spec.domain_label: spec.domain_of(i),
            },
        },
        "spec": {},
        "status": {"capacity": dict(resources), "allocatable": dict(resources)},
    }


def fleet(spec: NodeSpec) -> list[dict[str, Any]]:
    return [node_manifest(spec, i) for i in range(spec.nodes)]
