"""Child objects: names, pinning, resources, the env contract in every pod, owner refs, no secrets."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from builders import fleet, job_manifest, node_list, topology
from longvila_contract import env as contract
from longvila_contract.config import from_dict, merge, preset_tree
from longvila_operator import children, naming
from longvila_operator.api.manifest import Job
from longvila_operator.nodes import parse_nodes
from longvila_operator.placement import Placement, Request, plan
from longvila_operator.validation import load_job


def build(
    manifest: dict[str, Any] | None = None, per_domain: dict[str, int] | None = None
) -> tuple[Job, Placement]:
    job = load_job(manifest or job_manifest())
    nodes = parse_nodes(node_list(*fleet(per_domain or {"a": 4, "b": 4})))
    return job, plan(Request.from_spec(job.spec), nodes)


def env_of(pod: dict[str, Any]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = pod["spec"]["containers"][0]["env"]
    return env


def plain(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in env_of(pod) if "value" in e}


@pytest.mark.parametrize(
    ("job", "stage", "nnodes"),
    [
        ("demo", "sft", 4),
        ("a" * 63, "s" * 32, 4),
        ("longvila-7b-1m", "extend-1m", 32),
        ("my.job.with.dots", "long-sft", 12),
        ("7b-starts-with-digit", "x", 2),
        ("x" * 60, "extend-256k", 1024),
    ],
)
def test_names_are_dns_labels_deterministic_and_sort_by_rank(job: str, stage: str, nnodes: int) -> None:
    for attempt in (0, 7, 123):
        pods = [naming.pod_name(job, stage, attempt, r, nnodes) for r in range(nnodes)]
        assert pods == [naming.pod_name(job, stage, attempt, r, nnodes) for r in range(nnodes)]
        assert len(set(pods)) == nnodes and sorted(pods) == pods  # torchrun numbers nodes by sorted address
        for name in [*pods, naming.service_name(job), naming.config_map_name(job, stage)]:
            assert len(name) <= 63
            assert name[0].isalpha() and name[-1].isalnum()
            assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-")
    assert naming.pod_name(job, stage, 0, 0, nnodes) != naming.pod_name(job, stage, 1, 0, nnodes)
    assert naming.pod_name(job, stage, 0, 0, nnodes) != naming.pod_name(job, stage + "2", 0, 0, nnodes)


def test_short_names_stay_readable() -> None:
    assert naming.pod_name("demo", "sft", 0, 3, 4) == "demo-sft-a0-n3"
    assert naming.pod_name("demo", "sft", 2, 3, 16) == "demo-sft-a2-n03"
    assert naming.service_name("demo") == "demo-workers"
    assert naming.config_map_name("demo", "sft") == "demo-sft-config"


def test_one_pod_per_node_pinned_in_ring_order() -> None:
    job, placement = build()
    stage = job.spec.stages[1]
    pods = children.pods(
        job, stage, placement, attempt=2, init_checkpoint="s3://ckpt/demo/extend-64k/step-40"
    )
    assert len(pods) == 4
    for rank, (pod, placed) in enumerate(zip(pods, placement.nodes, strict=True)):
        terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        field = terms["nodeSelectorTerms"][0]["matchFields"][0]
        assert field == {"key": "metadata.name", "operator": "In", "values": [placed.name]}
        assert "nodeName" not in pod["spec"]
        assert pod["metadata"]["labels"] == {
            "app.kubernetes.io/name": "longvila",
            "app.kubernetes.io/managed-by": "longvila-operator",
            "longvila.io/job": "demo",
            "longvila.io/stage": "long-sft",
            "longvila.io/node-rank": str(rank),
            "longvila.io/attempt": "2",
            "kueue.x-k8s.io/pod-group-name": "demo-long-sft-a2",  # inert unless Kueue manages the namespace
        }
        assert pod["metadata"]["annotations"]["longvila.io/domain"] == placed.domain
        assert pod["spec"]["restartPolicy"] == "Never"
        assert pod["spec"]["hostname"] == pod["metadata"]["name"]
        assert pod["spec"]["subdomain"] == "demo-workers"


def test_env_contract_in_every_pod_parses_back() -> None:
    job, placement = build()
    stage = job.spec.stages[1]
    pods = children.pods(
        job, stage, placement, attempt=2, init_checkpoint="s3://ckpt/demo/extend-64k/step-40"
    )
    master = "demo-long-sft-a2-n0.demo-workers.team-a.svc"
    ids = set()
    for rank, pod in enumerate(pods):
        env = contract.parse(plain(pod))
        assert (env.nnodes, env.nproc_per_node, env.node_rank) == (4, 8, rank)
        assert (env.ulysses, env.ring, env.layout().sp, env.token_layout) == (8, 2, 16, "zigzag")
        assert env.master_addr == master and env.rdzv_endpoint == master + ":29400"
        assert env.local_addr == f"{pod['metadata']['name']}.demo-workers.team-a.svc"
        assert (env.stage, env.stage_type) == ("long-sft", "long-video-sft")
        assert env.checkpoint_uri == "s3://ckpt/demo/long-sft"
        assert env.init_checkpoint == "s3://ckpt/demo/extend-64k/step-40"
        assert env.s3_endpoint == "http://s3.local:7070"
        assert env.config_path == contract.CONFIG_PATH
        ids.add(env.rdzv_id)
    assert ids == {"0b7c3c1e-5f7a-4a55-9d3e-3f2d1c0a9b8e-long-sft-a2"}
    other = contract.parse(plain(children.pod(job, stage, placement, 0, attempt=3)))
    assert other.rdzv_id not in ids  # a new id per restart (pytorch#82160)
    # the local addresses sort in node-rank order: torchrun's c10d rendezvous ranks nodes that way
    addrs = [contract.parse(plain(p)).local_addr for p in pods]
    assert sorted(addrs) == addrs


def test_resources_shm_security_and_rdma() -> None:
    job, placement = build(
        job_manifest(
            topology=topology(4, rdmaResource="rdma/ib", rdmaPerNode=8),
            resources={"cpu": "32", "memory": "512Gi", "sharedMemory": "128Gi"},
        )
    )
    pod = children.pod(job, job.spec.stages[0], placement, 1, attempt=0)
    container = pod["spec"]["containers"][0]
    want = {"nvidia.com/gpu": "8", "rdma/ib": "8", "cpu": "32", "memory": "512Gi"}
    assert container["resources"] == {"requests": want, "limits": want}
    # Non-root: an added capability would never be effective (no ambient capabilities); RDMA
    # pinning needs the memlock rlimit, which is the runtime's (docs/failures.md).
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert (
        pod["spec"]["securityContext"]["runAsNonRoot"] is True
        and pod["spec"]["securityContext"]["runAsUser"] > 0
    )
    shm = next(v for v in pod["spec"]["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "128Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    plain_job, p2 = build()
    no_rdma = children.pod(plain_job, plain_job.spec.stages[0], p2, 0, attempt=0)["spec"]["containers"][0]
    assert no_rdma["resources"]["limits"] == {"nvidia.com/gpu": "8"}
    assert "add" not in no_rdma["securityContext"]["capabilities"]


def test_no_secret_values_in_env() -> None:
    manifest = job_manifest(
        env=[
            {"name": "WANDB_API_KEY", "secretKeyRef": {"name": "wandb", "key": "api-key"}},
            {"name": "NCCL_DEBUG", "value": "WARN"},
        ]
    )
    job, placement = build(manifest)
    for pod in children.pods(job, job.spec.stages[0], placement, attempt=0):
        env = env_of(pod)
        names = [e["name"] for e in env]
        assert len(names) == len(set(names))
        by_name = {e["name"]: e for e in env}
        for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "WANDB_API_KEY"):
            assert "value" not in by_name[secret] and "secretKeyRef" in by_name[secret]["valueFrom"]
        allowed_plain = set(contract.render(contract.parse(plain(pod)))) | {"NCCL_DEBUG"}
        assert set(plain(pod)) == allowed_plain


def test_owner_references_and_service() -> None:
    job, placement = build()
    svc = children.service(job)
    cm = children.config_map(job, job.spec.stages[0])
    pod = children.pod(job, job.spec.stages[0], placement, 0, attempt=0)
    for obj in (svc, cm, pod):
        assert obj["metadata"]["namespace"] == "team-a"
        assert obj["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "longvila.io/v1alpha1",
                "kind": "LongVILAJob",
                "name": "demo",
                "uid": "0b7c3c1e-5f7a-4a55-9d3e-3f2d1c0a9b8e",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["metadata"]["name"] == pod["spec"]["subdomain"]
    assert all(pod["metadata"]["labels"][k] == v for k, v in svc["spec"]["selector"].items())
    assert {p["port"] for p in svc["spec"]["ports"]} == {contract.RDZV_PORT, contract.DEFAULT_MASTER_PORT}


def test_config_map_holds_the_stage_config_and_is_mounted_where_the_env_says() -> None:
    job, placement = build()
    stage = job.spec.stages[1]
    cm = children.config_map(job, stage)
    config = yaml.safe_load(cm["data"]["config.yaml"])
    # Complete: the stage preset (long-video-sft) under the spec's values and overrides.
    preset = preset_tree("long-video-sft")
    assert config == merge(
        preset,
        {
            "model": {"llm": "s3://models/qwen2-7b", "vision_tower": "s3://models/siglip"},
            "data": {"uri": "s3://data/long-video"},
            "train": {"frames": 256, "lr": 2e-5, "rope_theta": 15.3e6, "collective_timeout_s": 1800},
            "checkpoint": {"every_steps": 200, "keep": 3},
        },
    )
    assert from_dict(config).stage.type == "long-video-sft"
    pod = children.pod(job, stage, placement, 0, attempt=0)
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    mount = next(m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "config")
    assert f"{mount['mountPath']}/config.yaml" == plain(pod)[contract.CONFIG]
    ext = yaml.safe_load(children.config_map(job, job.spec.stages[0])["data"]["config.yaml"])
    assert ext == merge(preset_tree("context-extension"), ext)  # the 64k recipe
    assert (ext["train"]["context_length"], ext["train"]["rope_theta"]) == (65536, 15.3e6)
    assert ext["train"]["collective_timeout_s"] == 1800  # failurePolicy.collectiveTimeoutSeconds


def test_builders_are_pure_and_json_ready() -> None:
    job, placement = build()
    stage = job.spec.stages[0]
    first = [
        children.service(job),
        children.config_map(job, stage),
        *children.pods(job, stage, placement, attempt=1),
    ]
    again = [
        children.service(job),
        children.config_map(job, stage),
        *children.pods(job, stage, placement, attempt=1),
    ]
    assert first == again
    assert json.loads(json.dumps(first)) == first


def test_termination_message_and_metrics_port_come_from_the_contract() -> None:
    job, placement = build()
    pod = children.pod(job, job.spec.stages[0], placement, 0, attempt=0)
    c = pod["spec"]["containers"][0]
    env = plain(pod)
    # One constant for both: where the kubelet reads the message is where the trainer writes it.
    assert c["terminationMessagePath"] == contract.TERMINATION_LOG == env[contract.TERMINATION_LOG_VAR]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    port = next(p["containerPort"] for p in c["ports"] if p["name"] == "metrics")
    assert port == contract.METRICS_PORT == int(env[contract.METRICS_PORT_VAR])
