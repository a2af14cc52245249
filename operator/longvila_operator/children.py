"""Child objects of a LongVILAJob as plain dicts, ready for server-side apply. Pure.

Per stage attempt: one Pod per planned node (node rank order), a ConfigMap with the
stage's trainer config; per job: one headless Service for rendezvous DNS. Names are
deterministic (naming.py), so re-running a reconcile applies the same objects again and
creates nothing twice. Every object is owned by the job (controller=true) and goes with it.

Queueing: every pod of an attempt is one Kueue pod group (queueing.py); with a queue name
Kueue holds the group until it admits it whole.

Pinning: required node affinity on the node's `metadata.name` (matchFields), not
spec.nodeName. nodeName bypasses the scheduler: no resource-fit check (a wrong count
surfaces as a kubelet OutOf… failure), NoSchedule taints ignored, no preemption, no gang
scheduler, and no scheduler reason to report for a stuck gang. Affinity keeps all of
that and costs little: the scheduler's NodeAffinity pre-filter turns a metadata.name
term into the single candidate node. matchFields, not the kubernetes.io/hostname label,
because the hostname label need not equal the node name.
"""

from __future__ import annotations

from typing import Any

import yaml
from longvila_contract import env as contract
from longvila_contract import labels as K

from . import naming, queueing
from .api import API_VERSION, KIND
from .api.manifest import Job, encode
from .api.types import Stage
from .placement import Placement
from .trainer_config import render as render_config

CONTAINER = "trainer"
CONFIG_DIR, CONFIG_KEY = contract.CONFIG_PATH.rsplit("/", 1)  # the ConfigMap is mounted at CONFIG_DIR
RUN_AS = 1000  # the trainer image's non-root user
GRACE_SECONDS = 120  # room for the trainer's final checkpoint on SIGTERM (suspend, delete)


def owner_reference(job: Job) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(
    job: Job, stage: str | None = None, node_rank: int | None = None, attempt: int | None = None
) -> dict[str, str]:
    out = {
        K.NAME: K.APP,
        K.MANAGED_BY: K.OPERATOR,
        K.LABEL_JOB: job.name,
    }
    if stage is not None:
        out[K.LABEL_STAGE] = stage
    if node_rank is not None:
        out[K.LABEL_NODE_RANK] = str(node_rank)
    if attempt is not None:
        out[K.LABEL_ATTEMPT] = str(attempt)
    return out


def metadata(job: Job, name: str, lbls: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.namespace,
        "labels": lbls,
        "ownerReferences": [owner_reference(job)],
    }


def service(job: Job) -> dict[str, Any]:
    """Headless; publishes not-ready pods so rendezvous DNS resolves before readiness."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(job, naming.service_name(job.name), labels(job)),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {K.LABEL_JOB: job.name},
            "ports": [
                {"name": "c10d", "port": contract.RDZV_PORT, "targetPort": contract.RDZV_PORT},
                {
                    "name": "master",
                    "port": contract.DEFAULT_MASTER_PORT,
                    "targetPort": contract.DEFAULT_MASTER_PORT,
                },
            ],
        },
    }


def config_map(job: Job, stage: Stage) -> dict[str, Any]:
    text = yaml.safe_dump(render_config(job.spec, stage), sort_keys=True, allow_unicode=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(job, naming.config_map_name(job.name, stage.name), labels(job, stage.name)),
        "data": {CONFIG_KEY: text},
    }


def stage_checkpoint_uri(job: Job, stage: Stage) -> str:
    """Where a stage writes its checkpoints: <checkpoint.uri>/<stage name>."""
    return f"{job.spec.checkpoint.uri.rstrip('/')}/{stage.name}"


def dns_name(job: Job, pod: str) -> str:
    """A pod's name through the headless Service: <hostname>.<subdomain>.<namespace>.svc."""
    return f"{pod}.{naming.service_name(job.name)}.{job.namespace}.svc"


def worker_env(
    job: Job, stage: Stage, placement: Placement, node_rank: int, *, attempt: int, init_checkpoint: str
) -> contract.WorkerEnv:
    nnodes = len(placement.nodes)
    pod = naming.pod_name(job.name, stage.name, attempt, node_rank, nnodes)
    master = naming.pod_name(job.name, stage.name, attempt, 0, nnodes)
    sp = job.spec.topology.sequence_parallel
    return contract.WorkerEnv(
        nnodes=nnodes,
        nproc_per_node=job.spec.topology.gpus_per_node,
        node_rank=node_rank,
        master_addr=dns_name(job, master),
        local_addr=dns_name(job, pod),
        # The uid makes it unique per job (a re-created job with the same name gets a new
        # one); stage and attempt make it unique per restart (pytorch#82160).
        rdzv_id=f"{job.uid}-{stage.name}-a{attempt}",
        ulysses=sp.ulysses,
        ring=sp.ring,
        token_layout=sp.layout,
        stage=stage.name,
        stage_type=stage.type,
        checkpoint_uri=stage_checkpoint_uri(job, stage),
        init_checkpoint=init_checkpoint,
        s3_endpoint=job.spec.checkpoint.endpoint,
        max_restarts=job.spec.failure_policy.worker_restarts,
    )


def container_env(job: Job, env: contract.WorkerEnv) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in contract.render(env).items()]
    if job.spec.checkpoint.credentials_secret:
        out += contract.secret_env(job.spec.checkpoint.credentials_secret)
    for var in job.spec.env:
        if var.secret_key_ref is not None:
            ref = {"name": var.secret_key_ref.name, "key": var.secret_key_ref.key}
            out.append({"name": var.name, "valueFrom": {"secretKeyRef": ref}})
        else:
            out.append({"name": var.name, "value": var.value})
    return out


def resources(job: Job) -> dict[str, Any]:
    spec = job.spec
    want: dict[str, str] = {"nvidia.com/gpu": str(spec.topology.gpus_per_node)}
    if spec.topology.rdma_resource:
        want[spec.topology.rdma_resource] = str(spec.topology.rdma_per_node)
    if spec.resources.cpu:
        want["cpu"] = spec.resources.cpu
    if spec.resources.memory:
        want["memory"] = spec.resources.memory
    # requests = limits: extended resources require it, and it makes the pod Guaranteed.
    return {"requests": dict(want), "limits": dict(want)}


def pod(
    job: Job, stage: Stage, placement: Placement, node_rank: int, *, attempt: int, init_checkpoint: str = ""
) -> dict[str, Any]:
    """The worker pod of one node rank for one attempt of a stage."""
    node = placement.nodes[node_rank]
    name = naming.pod_name(job.name, stage.name, attempt, node_rank, len(placement.nodes))
    env = worker_env(job, stage, placement, node_rank, attempt=attempt, init_checkpoint=init_checkpoint)
    group_labels, group_annotations = queueing.group_metadata(job, stage.name, attempt, len(placement.nodes))
    meta = metadata(job, name, {**labels(job, stage.name, node_rank, attempt), **group_labels})
    meta["annotations"] = {
        K.ANNOTATION_NODE: node.name,
        K.ANNOTATION_DOMAIN: node.domain,
        **group_annotations,
    }
    # No capabilities, RDMA or not: for a non-root user Kubernetes grants none (no ambient
    # capabilities), so IPC_LOCK would do nothing. What ibverbs needs to pin its buffers is
    # the memlock rlimit, which the container runtime sets (docs/failures.md#rdma-and-memlock).
    security: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    term = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node.name]}]}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",  # the operator restarts gangs, never the kubelet
        "hostname": name,
        "subdomain": naming.service_name(job.name),
        "affinity": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}
        },
        "tolerations": [
            {
                k: v
                for k, v in (
                    ("key", t.key),
                    ("operator", t.operator),
                    ("value", t.value),
                    ("effect", t.effect),
                    ("tolerationSeconds", t.toleration_seconds),
                )
                if v not in ("", None)
            }
            for t in job.spec.topology.tolerations
        ],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,  # the trainer never calls the API
        "enableServiceLinks": False,  # no env var per Service in the namespace
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "containers": [
            {
                "name": CONTAINER,
                "image": job.spec.image,
                "imagePullPolicy": job.spec.image_pull_policy,
                "command": list(contract.ENTRYPOINT),
                "env": container_env(job, env),
                "ports": [
                    {"name": "c10d", "containerPort": contract.RDZV_PORT},
                    {"name": "master", "containerPort": contract.DEFAULT_MASTER_PORT},
                    {"name": "metrics", "containerPort": contract.METRICS_PORT},  # rank 0's progress
                ],
                # The trainer's one-line error, which torchrun's exit code cannot carry
                # (longvila_contract.exits); without it, the log's tail says what it can.
                "terminationMessagePath": contract.TERMINATION_LOG,
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "resources": resources(job),
                "securityContext": security,
                "volumeMounts": [
                    {"name": "dshm", "mountPath": "/dev/shm"},
                    {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                    *(encode(m) for m in job.spec.volume_mounts),  # datasets, weights: spec.volumeMounts
                ],
            }
        ],
        "volumes": [
            # NCCL and DataLoader workers need far more than the runtime's 64 MiB /dev/shm.
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": job.spec.resources.shared_memory}},
            {"name": "config", "configMap": {"name": naming.config_map_name(job.name, stage.name)}},
            *(encode(v) for v in job.spec.volumes),  # core/v1 Volume objects as written
        ],
    }
    if job.spec.scheduling.priority_class_name:
        spec["priorityClassName"] = job.spec.scheduling.priority_class_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def pods(
    job: Job, stage: Stage, placement: Placement, *, attempt: int, init_checkpoint: str = ""
) -> list[dict[str, Any]]:
    """Every worker pod of a stage attempt, in node-rank (ring) order."""
    return [
        pod(job, stage, placement, r, attempt=attempt, init_checkpoint=init_checkpoint)
        for r in range(len(placement.nodes))
    ]
