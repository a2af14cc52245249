"""Helpers the operator's cluster tests share: the operator subprocess (from the local cluster
package), a job manifest for the fake GPU nodes, and reads of its pods and status.
"""

from __future__ import annotations

import time
from typing import Any

from longvila_localcluster.operator_process import OperatorProcess, free_port
from longvila_localcluster.probes import poll

__all__ = ["OperatorProcess", "elapsed", "env_of", "free_port", "job_manifest", "wait"]


def job_manifest(
    name: str,
    namespace: str,
    *,
    nodes: int = 2,
    gpus: int = 8,
    ulysses: int = 4,
    ring: int = 2,
    stages: int = 2,
    max_restarts: int = 3,
    node_failure: str = "replace",
    gang_timeout: int = 300,
    suspend: bool = False,
    bucket: str = "longvila-test",
) -> dict[str, Any]:
    kinds = [("short-sft", {"contextLength": 4096, "frames": 8}), ("long-video-sft", {"frames": 64})]
    return {
        "apiVersion": "longvila.io/v1alpha1",
        "kind": "LongVILAJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "image": "localhost/longvila-trainer:0.1.0",
            "model": {
                "llm": "file:///opt/longvila/tiny/qwen2",
                "visionTower": "file:///opt/longvila/tiny/siglip",
            },
            "topology": {
                "nodes": nodes,
                "gpusPerNode": gpus,
                "sequenceParallel": {"ulysses": ulysses, "ring": ring},
            },
            "checkpoint": {"uri": f"s3://{bucket}/{name}", "credentialsSecret": "longvila-s3"},
            "stages": [
                {
                    "name": f"s{i + 1}",
                    "type": kinds[i % 2][0],
                    "data": "synthetic://video-qa",
                    **kinds[i % 2][1],
                }
                for i in range(stages)
            ],
            "failurePolicy": {"maxRestarts": max_restarts, "nodeFailure": node_failure},
            "scheduling": {"gangTimeoutSeconds": gang_timeout},
            "resources": {"sharedMemory": "1Gi"},
            "suspend": suspend,
        },
    }


def env_of(pod: Any) -> dict[str, str]:
    return {e.name: e.value for e in pod.spec.containers[0].env or [] if e.value is not None}


def wait(what: str, fn: Any, timeout: float = 60.0) -> Any:
    return poll(what, fn, timeout, interval=0.2)


def elapsed(t0: float) -> float:
    return time.monotonic() - t0
