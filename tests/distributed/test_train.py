"""`longvila-train` end to end on CPU: one process, torchrun SP = 4 against the S3 server, bad inputs.

Each run is a real subprocess; the JSON lines on stdout are the contract checked here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from longvila_trainer.checkpoint import layout as L
from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.config import merge, preset_tree
from longvila_trainer.parallel.spawn import free_port

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
RECORD_FIELDS = {"step", "max_steps", "loss", "lr", "grad_norm", "targets", "tokens", "tokens_per_s"}
RECORD_FIELDS |= {"step_s", "rss_peak_mib", "world"}


def write_config(path: Path, preset: str, **train: Any) -> Path:
    """The tiny preset as a config file, pinned so no stage-preset value leaks in under the contract."""
    tree = merge(preset_tree(preset), {"train": {"grad_accum": 1, "warmup_ratio": 0.0, **train}})
    path.write_text(yaml.safe_dump(tree))
    return path


def contract_env(
    *, nproc: int, ulysses: int, ring: int, uri: str, config: Path, s3: dict[str, str] | None,
    stage_type: str = "long-video-sft", rdzv_port: int | None = None, max_restarts: int = 0,
) -> dict[str, str]:  # fmt: skip
    """The operator's env contract for one node on loopback (what longvila_operator renders)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "LONGVILA_"))}
    env.update(
        {
            "PET_NNODES": "1",
            "PET_NPROC_PER_NODE": str(nproc),
            "PET_NODE_RANK": "0",
            "PET_MASTER_ADDR": "127.0.0.1",
            "PET_MASTER_PORT": str(free_port()),
            "PET_RDZV_BACKEND": "c10d",
            "PET_RDZV_ENDPOINT": f"127.0.0.1:{rdzv_port or free_port()}",
            "PET_RDZV_ID": f"test-{uuid.uuid4().hex[:8]}",
            "PET_RDZV_CONF": "is_host=1",
            "PET_LOCAL_ADDR": "127.0.0.1",
            "PET_MAX_RESTARTS": str(max_restarts),
            "LONGVILA_SP_SIZE": str(ulysses * ring),
            "LONGVILA_ULYSSES": str(ulysses),
            "LONGVILA_RING": str(ring),
            "LONGVILA_LAYOUT": "zigzag",
            "LONGVILA_STAGE": "test",
            "LONGVILA_STAGE_TYPE": stage_type,
            "LONGVILA_CHECKPOINT_URI": uri,
            "LONGVILA_CONFIG": str(config),
            "OMP_NUM_THREADS": "1",
        }
    )
    if s3:
        env.update(
            {
                "AWS_ENDPOINT_URL_S3": s3["endpoint"],
                "AWS_ACCESS_KEY_ID": s3["access_key"],
                "AWS_SECRET_ACCESS_KEY": s3["secret_key"],
            }
        )
    return env


def direct_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "LONGVILA_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "longvila_trainer.train", *args]


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def losses(stdout: str) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(stdout)}


def run_ok(cmd: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"
    return p


# -- one process ------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["context-extension", "long-video-sft"])
def test_one_process_stage(stage: str, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    p = run_ok(
        train_cmd("--preset", f"tiny-{stage}", "--cache-dir", str(tmp_path / "cache"),
                  "--set", f"checkpoint.uri=file://{ck}", "--set", "train.max_steps=3"),
        direct_env(),
    )  # fmt: skip
    recs = records(p.stdout)
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert set(r) >= RECORD_FIELDS, r
        assert r["max_steps"] == 3 and r["world"] == 1
        assert r["targets"] > 0 and r["tokens"] >= r["targets"] and r["tokens_per_s"] > 0
        assert r["rss_peak_mib"] > 50 and r["grad_norm"] > 0
        assert 0 < r["loss"] < 10
    assert "step 3/3" in p.stderr  # the readable progress line
    # every_steps 2 in the tiny presets, plus the end: steps 2 and 3, committed as final
    storage = open_storage(f"file://{ck}")
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 3
    for step in (2, 3):
        m = L.Manifest.from_json(storage.get_bytes(L.manifest_key(step)))
        assert m.step == step and m.world_size == 1
        assert any(f.path == "dcp/.metadata" for f in m.files)
    # A second run of the same config resumes at the end and does no step; same seed, same losses.
    again = run_ok(
        train_cmd("--preset", f"tiny-{stage}", "--cache-dir", str(tmp_path / "cache"),
                  "--set", f"checkpoint.uri=file://{tmp_path / 'ck2'}", "--set", "train.max_steps=3"),
        direct_env(),
    )  # fmt: skip
    assert losses(again.stdout) == losses(p.stdout)  # bit for bit


# -- SP = 4 through torchrun and S3 -----------------------------------------------------------


def test_sp4_matches_sp1_through_s3(s3_server: dict[str, str], tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", "tiny-long-video-sft", max_steps=3)
    ref = run_ok(
        train_cmd("--config", str(cfg), "--cache-dir", str(tmp_path / "cache"),
                  "--set", f"checkpoint.uri=file://{tmp_path / 'ref'}"),
        direct_env(),
    )  # fmt: skip
    uri = f"s3://{s3_server['bucket']}/sp4-{uuid.uuid4().hex[:6]}"
    env = contract_env(nproc=4, ulysses=2, ring=2, uri=uri, config=cfg, s3=s3_server)
    env["LONGVILA_CACHE_DIR"] = str(tmp_path / "cache")
    sp = run_ok(
        [str(VENV_BIN / "torchrun"), "--nproc-per-node", "4", "--standalone", "-m", "longvila_trainer.train"],
        env,
    )
    want, got = losses(ref.stdout), losses(sp.stdout)
    assert sorted(got) == [1, 2, 3], sp.stdout
    for step in want:
        assert abs(got[step] - want[step]) <= 1e-5, (step, got[step], want[step])
    assert [r["world"] for r in records(sp.stdout)] == [4, 4, 4]  # rank 0 logs once per step
    storage = open_storage(uri, environ=env)
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 3
    m = L.Manifest.from_json(storage.get_bytes(L.manifest_key(3)))
    assert m.world_size == 4 and m.layout == {"world": 4, "ulysses": 2, "ring": 2, "dp": 1}
    assert {f.path for f in m.files} >= {"dcp/.metadata", *(f"dcp/__{r}_0.distcp" for r in range(4))}


# -- bad inputs: one line, non-zero exit ------------------------------------------------------


def bad_run(cmd: list[str], env: dict[str, str]) -> str:
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr[-3000:])
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("longvila-train: error: "), p.stderr[-3000:]
    return lines[0]


def test_unknown_field(tmp_path: Path) -> None:
    line = bad_run(train_cmd("--preset", "tiny-short-sft", "--set", "train.learning_rate=1"), direct_env())
    assert "train.learning_rate: unknown field" in line


def test_ulysses_not_dividing_heads(tmp_path: Path) -> None:
    # 3 processes, U = 3: the contract holds, but the tiny LLM's 4 heads do not split in 3.
    cfg = write_config(tmp_path / "cfg.yaml", "tiny-long-video-sft")
    env = contract_env(nproc=3, ulysses=3, ring=1, uri="s3://longvila/x", config=cfg, s3=None)
    line = bad_run(train_cmd(), env)
    assert "divisible by the Ulysses degree (3)" in line


def test_missing_weights_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    line = bad_run(
        train_cmd("--preset", "tiny-short-sft", "--set", "model.preset=", "--set", f"model.llm=file://{missing}",
                  "--set", f"model.vision_tower=file://{missing}", "--set", "model.tokenizer=tiny",
                  "--set", f"checkpoint.uri=file://{tmp_path / 'ck'}", "--cache-dir", str(tmp_path / "c")),
        direct_env(),
    )  # fmt: skip
    assert f"model.llm='file://{missing}': no config.json" in line


def test_unreachable_s3(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", "tiny-long-video-sft")
    dead = {
        "endpoint": f"http://127.0.0.1:{free_port()}",
        "access_key": "AKIATEST",
        "secret_key": "topsecret-do-not-log",
    }
    env = contract_env(nproc=1, ulysses=1, ring=1, uri="s3://longvila/x", config=cfg, s3=dead)
    env["LONGVILA_CACHE_DIR"] = str(tmp_path / "cache")
    line = bad_run(train_cmd(), env)
    assert "127.0.0.1" in line and "topsecret" not in line and "AKIATEST" not in line


# -- where the weights come from --------------------------------------------------------------


def test_next_stage_starts_from_the_previous_final_weights(tmp_path: Path) -> None:
    """short-sft writes final weights; long-video-sft with model.init starts from them."""
    cache = str(tmp_path / "cache")
    first = tmp_path / "sft"
    run_ok(
        train_cmd("--preset", "tiny-short-sft", "--cache-dir", cache, "--set", f"checkpoint.uri=file://{first}",
                  "--set", "train.max_steps=2"),
        direct_env(),
    )  # fmt: skip
    common = ("--preset", "tiny-long-video-sft", "--cache-dir", cache, "--set", "train.max_steps=1")
    fresh = run_ok(train_cmd(*common, "--set", f"checkpoint.uri=file://{tmp_path / 'a'}"), direct_env())
    init = run_ok(
        train_cmd(*common, "--set", f"checkpoint.uri=file://{tmp_path / 'b'}", "--set", f"model.init=file://{first}"),
        direct_env(),
    )  # fmt: skip
    assert f"initialised weights from step 2 of file://{first}" in init.stderr
    # step 1's loss is computed before any update: it differs only through the initial weights
    assert losses(init.stdout)[1] != losses(fresh.stdout)[1]


def test_real_weights_from_local_directories(tmp_path: Path) -> None:
    """HF-layout directories (save_pretrained) load through from_pretrained, never a hub."""
    from longvila_trainer.model.presets import TINY
    from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

    Qwen2ForCausalLM(Qwen2Config(**TINY.llm)).save_pretrained(tmp_path / "llm")
    SiglipVisionModel(SiglipVisionConfig(**TINY.vision)).save_pretrained(tmp_path / "siglip")
    p = run_ok(
        train_cmd("--preset", "tiny-short-sft", "--cache-dir", str(tmp_path / "cache"),
                  "--set", "model.preset=", "--set", f"model.llm=file://{tmp_path / 'llm'}",
                  "--set", f"model.vision_tower={tmp_path / 'siglip'}", "--set", "model.tokenizer=tiny",
                  "--set", f"checkpoint.uri=file://{tmp_path / 'ck'}", "--set", "train.max_steps=2"),
        {**direct_env(), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    recs = records(p.stdout)
    assert [r["step"] for r in recs] == [1, 2] and all(0 < r["loss"] < 10 for r in recs)
