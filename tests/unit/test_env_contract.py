"""The env contract, both sides: what the operator renders, the trainer parses back."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from longvila_contract import env as c


def sample(**changes: object) -> c.WorkerEnv:
    base = c.WorkerEnv(
        nnodes=4,
        nproc_per_node=8,
        node_rank=1,
        master_addr="demo-sft-a0-n0.demo-workers.team-a.svc",
        local_addr="demo-sft-a0-n1.demo-workers.team-a.svc",
        rdzv_id="0b7c3c1e-sft-a0",
        ulysses=8,
        ring=2,
        token_layout="zigzag",
        stage="sft",
        stage_type="long-video-sft",
        checkpoint_uri="s3://ckpt/demo/sft",
        init_checkpoint="s3://ckpt/demo/extend/step-40",
        s3_endpoint="http://s3.local:7070",
        max_restarts=1,
    )
    return dataclasses.replace(base, **changes)


@pytest.mark.parametrize(
    "env",
    [sample(), sample(node_rank=0), sample(init_checkpoint="", s3_endpoint=""), sample(ulysses=4, ring=8)],
)
def test_render_parse_round_trip(env: c.WorkerEnv) -> None:
    rendered = c.render(env)
    assert all(isinstance(v, str) for v in rendered.values())
    assert c.parse(rendered) == env


def test_rendered_values() -> None:
    env = c.render(sample())
    assert env[c.RDZV_BACKEND] == "c10d"
    assert env[c.RDZV_ENDPOINT] == "demo-sft-a0-n0.demo-workers.team-a.svc:29400"
    assert (
        env[c.ULYSSES] == "8" and env[c.RING] == "2" and env[c.NNODES] == "4" and env[c.NPROC_PER_NODE] == "8"
    )
    assert sample().layout().sp == 16 and sample().layout().dp == 2
    assert env[c.RDZV_CONF] == "is_host=0" and c.render(sample(node_rank=0))[c.RDZV_CONF] == "is_host=1"
    assert c.S3_ENDPOINT in env and c.S3_ENDPOINT not in c.render(sample(s3_endpoint=""))
    assert set(env) >= {
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "PET_RDZV_ENDPOINT",
        "PET_RDZV_BACKEND",
        "PET_RDZV_ID",
        "PET_MAX_RESTARTS",
        "LONGVILA_ULYSSES",
        "LONGVILA_RING",
        "LONGVILA_LAYOUT",
        "LONGVILA_STAGE",
        "LONGVILA_STAGE_TYPE",
        "LONGVILA_CHECKPOINT_URI",
        "LONGVILA_INIT_CHECKPOINT",
        "LONGVILA_CONFIG",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({c.NNODES: None}, "PET_NNODES: not set"),
        ({c.NNODES: "four"}, "PET_NNODES='four': must be an integer"),
        ({c.NODE_RANK: "4"}, "PET_NODE_RANK=4: must be in [0, PET_NNODES=4)"),
        (
            {c.ULYSSES: "3"},
            "LONGVILA_ULYSSES=3, LONGVILA_RING=2 on PET_NNODES=4 × PET_NPROC_PER_NODE=8: "
            "the Ulysses degree (3) must divide the GPUs per node (8)",
        ),
        ({c.RDZV_BACKEND: "etcd"}, "PET_RDZV_BACKEND='etcd': must be c10d"),
        ({c.RDZV_ID: "none"}, "PET_RDZV_ID='none': must be unique per job and restart"),
        ({c.RDZV_ENDPOINT: "elsewhere:29400"}, "host must be PET_MASTER_ADDR"),
        ({c.RDZV_ENDPOINT: "no-port"}, "PET_RDZV_ENDPOINT='no-port': must be host:port"),
        ({c.RDZV_CONF: "is_host=1"}, "PET_RDZV_CONF='is_host=1': must be 'is_host=0' on node rank 1"),
        ({c.LAYOUT: "striped"}, "LONGVILA_LAYOUT='striped': must be one of zigzag, contiguous"),
        ({c.STAGE_TYPE: "finetune"}, "LONGVILA_STAGE_TYPE='finetune': must be one of alignment"),
        (
            {c.CHECKPOINT_URI: "/local/ckpt"},
            "LONGVILA_CHECKPOINT_URI='/local/ckpt': unsupported scheme '(none)'; expected s3://",
        ),
        (
            {c.INIT_CHECKPOINT: "gs://x/y"},
            "LONGVILA_INIT_CHECKPOINT='gs://x/y': unsupported scheme 'gs'; expected s3://",
        ),
        ({c.CONFIG: "config.yaml"}, "LONGVILA_CONFIG='config.yaml': must be an absolute path"),
        ({c.S3_ENDPOINT: "minio:9000"}, "AWS_ENDPOINT_URL_S3='minio:9000': must be empty or http(s)://"),
        ({c.NNODES: "3"}, "world size 24 is not divisible by the sequence-parallel size"),
    ],
)
def test_parse_errors_name_the_variable(changes: dict[str, str | None], message: str) -> None:
    environ = c.render(sample())
    for var, value in changes.items():
        if value is None:
            del environ[var]
        else:
            environ[var] = value
    with pytest.raises(c.EnvContractError) as err:
        c.parse(environ)
    assert message in str(err.value), str(err.value)


def test_all_problems_reported_at_once() -> None:
    environ = c.render(sample())
    environ[c.NNODES] = "x"
    del environ[c.STAGE]
    with pytest.raises(c.EnvContractError) as err:
        c.parse(environ)
    assert len(err.value.problems) == 2


def test_group_rank_check() -> None:
    env = sample()
    c.check_group_rank(env, {"GROUP_RANK": "1"})
    with pytest.raises(c.EnvContractError, match="GROUP_RANK='2'"):
        c.check_group_rank(env, {"GROUP_RANK": "2"})


def test_secret_env_never_holds_values() -> None:
    entries = c.secret_env("s3-creds")
    assert [e["name"] for e in entries] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
    for e in entries:
        assert "value" not in e
        assert e["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
        assert e["valueFrom"]["secretKeyRef"]["key"] == e["name"]


def test_pure_modules_do_not_import_torch() -> None:
    code = (
        "import sys, longvila_contract.env, longvila_contract.config, longvila_operator.cli,"
        " longvila_operator.children;"
        "bad = [m for m in ('torch', 'kopf', 'kubernetes') if m in sys.modules];"
        "print(bad); sys.exit(bool(bad))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
