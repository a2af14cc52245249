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
from longvila_contract import checkpoint as L
from longvila_contract import exits
from longvila_contract.config import merge, preset_tree
from longvila_trainer.checkpoint.s3 import open_storage
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
    # S3 still down after the retries is transient (exit 3, "unavailable": the operator restarts
    # the gang), not bad input (exit 2, which fails the job at once)
    p = subprocess.run(train_cmd(), env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 3, (p.returncode, p.stderr[-3000:])
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("longvila-train: unavailable: "), p.stderr[-3000:]
    line = lines[0]
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


# -- LoRA: the stage's final weights are merged --------------------------------------------------


def dcp_keys(ck: Path, step: int) -> set[str]:
    """The state keys a file:// checkpoint holds (its DCP metadata)."""
    from torch.distributed.checkpoint import FileSystemReader

    return set(FileSystemReader(str(ck / L.step_dir(step) / "dcp")).read_metadata().state_dict_metadata)


def lora_stage(ck: Path, cache: Path, steps: int = 3) -> list[str]:
    return train_cmd("--preset", "tiny-context-extension", "--cache-dir", str(cache),
                     "--set", f"checkpoint.uri=file://{ck}", "--set", f"train.max_steps={steps}")  # fmt: skip


def test_lora_stage_ends_merged_and_the_next_stage_starts_from_it(tmp_path: Path) -> None:
    ce, cache = tmp_path / "ce", tmp_path / "cache"
    first = run_ok(lora_stage(ce, cache), direct_env())
    assert "step 3: LoRA adapters merged into the final weights" in first.stderr
    storage = open_storage(f"file://{ce}")
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 3
    adapters, merged = dcp_keys(ce, 2), dcp_keys(ce, 3)  # every_steps 2: step 2 keeps the adapters
    q = "model.llm.model.layers.0.self_attn.q_proj"
    assert {f"{q}.base.weight", f"{q}.lora_A.weight", f"{q}.lora_B.weight"} <= adapters
    assert any(k.startswith("optimizer.") for k in adapters)
    assert f"{q}.weight" in merged and not any("lora_" in k or ".base." in k for k in merged)
    assert not any(k.startswith("optimizer.") for k in merged)
    meta2 = L.Manifest.from_json(storage.get_bytes(L.manifest_key(2))).meta
    meta3 = L.Manifest.from_json(storage.get_bytes(L.manifest_key(3))).meta
    assert meta2["lora"] == {"rank": 4, "alpha": 8.0, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert meta3["weights"] == "merged-lora"
    nxt = run_ok(
        train_cmd("--preset", "tiny-long-video-sft", "--cache-dir", str(cache), "--set", "train.max_steps=1",
                  "--set", f"checkpoint.uri=file://{tmp_path / 'sft'}", "--set", f"model.init=file://{ce}"),
        direct_env(),
    )  # fmt: skip
    assert f"initialised weights from step 3 of file://{ce}" in nxt.stderr
    assert [r["step"] for r in records(nxt.stdout)] == [1]


def test_lora_stage_recovers_from_a_crash_at_its_end(tmp_path: Path) -> None:
    """The states a crash after the last step can leave, rebuilt from a finished run."""
    ce, cache = tmp_path / "ce", tmp_path / "cache"
    want = losses(run_ok(lora_stage(ce, cache), direct_env()).stdout)
    storage = open_storage(f"file://{ce}")
    # merged checkpoint committed, final.json not yet written: commit it, train nothing
    storage.delete([L.FINAL])
    p = run_ok(lora_stage(ce, cache), direct_env())
    assert "step 3 of" in p.stderr and "holds the stage's merged final weights" in p.stderr
    assert records(p.stdout) == [] and L.parse_final(storage.get_bytes(L.FINAL)) == 3
    # merged shards written but no manifest: step 2 (adapters) is the newest complete one
    storage.delete([L.FINAL, L.manifest_key(3)])
    # (the eval's loader reads such an adapter checkpoint too, merging it: plain names out)
    from longvila_trainer.model.longvila import build_longvila
    from longvila_trainer.model.presets import TINY
    from longvila_trainer.model.weights import load_weights

    model = build_longvila(TINY)
    assert load_weights(model, f"file://{ce}") == 2
    assert set(model.state_dict()) == set(build_longvila(TINY).state_dict())
    p = run_ok(lora_stage(ce, cache), direct_env())
    assert "resumed from step 2" in p.stderr and losses(p.stdout) == {3: want[3]}
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 3
    assert L.Manifest.from_json(storage.get_bytes(L.manifest_key(3))).meta["weights"] == "merged-lora"
    assert not any("lora_" in k for k in dcp_keys(ce, 3))


# -- weights from S3 ---------------------------------------------------------------------------


def upload_dir(local: Path, uri: str, env: dict[str, str]) -> None:
    storage = open_storage(uri, environ=env)
    for f in sorted(local.iterdir()):
        storage.put_file(f.name, f)


def s3_env(s3: dict[str, str]) -> dict[str, str]:
    return {**direct_env(), "AWS_ENDPOINT_URL_S3": s3["endpoint"], "AWS_ACCESS_KEY_ID": s3["access_key"],
            "AWS_SECRET_ACCESS_KEY": s3["secret_key"], "HF_HUB_OFFLINE": "1"}  # fmt: skip


def test_weights_from_s3_prefixes(s3_server: dict[str, str], tmp_path: Path) -> None:
    """Exported HF directories uploaded to S3 train exactly as the same directories on disk."""
    from longvila_trainer.model.export import export

    llm_dir, tower_dir = export("tiny", tmp_path / "hf")
    env = s3_env(s3_server)
    prefix = f"s3://{s3_server['bucket']}/weights-{uuid.uuid4().hex[:6]}"
    upload_dir(llm_dir, f"{prefix}/qwen2", env)
    upload_dir(tower_dir, f"{prefix}/siglip", env)
    common = ("--preset", "tiny-short-sft", "--set", "model.preset=", "--set", "model.tokenizer=tiny",
              "--set", "train.max_steps=2")  # fmt: skip

    def weights(llm: str, tower: str, name: str) -> list[str]:
        return train_cmd(*common, "--set", f"model.llm={llm}", "--set", f"model.vision_tower={tower}",
                         "--cache-dir", str(tmp_path / f"cache-{name}"),
                         "--set", f"checkpoint.uri=file://{tmp_path / name}")  # fmt: skip

    remote = run_ok(weights(f"{prefix}/qwen2", f"{prefix}/siglip", "s3"), env)
    local = run_ok(weights(f"file://{llm_dir}", f"file://{tower_dir}", "local"), env)
    assert sorted(losses(remote.stdout)) == [1, 2]
    assert losses(remote.stdout) == losses(local.stdout)  # same bytes, same seeded projector
    fetched = sorted((tmp_path / "cache-s3" / "s3").iterdir())
    assert len(fetched) == 2 and all((d / "config.json").is_file() for d in fetched)
    # two ranks under the contract build the same initial weights (the projector is seeded)
    model = {"preset": "", "llm": f"{prefix}/qwen2", "vision_tower": f"{prefix}/siglip", "tokenizer": "tiny"}
    tree = merge(preset_tree("tiny-short-sft"), {"model": model, "train": {"grad_accum": 1, "max_steps": 2}})
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(tree))
    ck = f"s3://{s3_server['bucket']}/from-s3-{uuid.uuid4().hex[:6]}"
    tenv = contract_env(nproc=2, ulysses=2, ring=1, uri=ck, config=tmp_path / "cfg.yaml", s3=s3_server,
                        stage_type="short-sft")  # fmt: skip
    tenv["LONGVILA_CACHE_DIR"] = str(tmp_path / "cache-sp2")
    torchrun = [
        str(VENV_BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "longvila_trainer.train",
    ]
    sp2 = run_ok(torchrun, tenv)
    got, want = losses(sp2.stdout), losses(local.stdout)
    assert sorted(got) == [1, 2] and all(abs(got[s] - want[s]) <= 1e-5 for s in want), (got, want)
    line = bad_run(weights(f"{prefix}/nothing", f"{prefix}/siglip", "bad"), env)
    assert f"model.llm='{prefix}/nothing': no config.json under that S3 prefix" in line


# -- a crash in the middle of a checkpoint's uploads ---------------------------------------------


class StallingProxy:
    """A TCP proxy in front of the S3 server that holds, unanswered, the request whose bytes
    contain `stall`: the trainer is caught with that checkpoint's uploads in flight."""

    def __init__(self, upstream: str, stall: bytes) -> None:
        import socket
        import threading
        from urllib.parse import urlparse

        u = urlparse(upstream)
        self.upstream, self.stall = (u.hostname or "127.0.0.1", u.port or 80), stall
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.stalled = threading.Event()
        self.held: list[Any] = []  # sockets of the held request, kept open
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, False), daemon=True).start()

    def _pipe(self, src: Any, dst: Any, requests: bool) -> None:
        tail = b""
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                return
            if not data:
                break
            if requests:
                window = tail + data
                if self.stall in window:
                    self.held += [src, dst]
                    self.stalled.set()
                    return
                tail = window[-len(self.stall) :]
            try:
                dst.sendall(data)
            except OSError:
                return
        dst.close()

    def close(self) -> None:
        self.server.close()
        for s in self.held:
            s.close()


def test_sigkill_while_a_checkpoint_uploads_resumes_from_the_previous_one(
    s3_server: dict[str, str], tmp_path: Path
) -> None:
    """Killed while step 4's shard is going up (its manifest not written), the rerun resumes
    from step 2, never from the partial step 4, and finishes."""
    import signal
    import time

    prefix = f"crash-{uuid.uuid4().hex[:6]}"
    uri = f"s3://{s3_server['bucket']}/{prefix}"
    shard = f"PUT /{s3_server['bucket']}/{prefix}/{L.step_dir(4)}/{L.dcp_shard(0)}".encode()
    proxy = StallingProxy(s3_server["endpoint"], shard)
    env = s3_env(s3_server)
    cmd = train_cmd("--preset", "tiny-short-sft", "--cache-dir", str(tmp_path / "cache"),
                    "--set", f"checkpoint.uri={uri}", "--set", "train.max_steps=4")  # fmt: skip
    storage = open_storage(uri, environ=env)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    try:
        with out.open("w") as so, err.open("w") as se:
            proc = subprocess.Popen(cmd, env={**env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}, cwd=REPO,
                                    stdout=so, stderr=se)  # fmt: skip
            try:
                assert proxy.stalled.wait(300), err.read_text()[-3000:]
                deadline = time.monotonic() + 30  # the step's other files go up beside the shard
                while f"{L.step_dir(4)}/{L.DCP_METADATA}" not in storage.listing(L.step_dir(4) + "/"):
                    assert time.monotonic() < deadline
                    time.sleep(0.1)
                proc.send_signal(signal.SIGKILL)
                assert proc.wait(60) == -signal.SIGKILL
            finally:
                if proc.poll() is None:
                    proc.kill()
    finally:
        proxy.close()
    first = losses(out.read_text())
    assert sorted(first) == [1, 2, 3, 4]  # step 4 trained; its checkpoint was being written
    partial = storage.listing(L.step_dir(4) + "/")
    assert partial and L.manifest_key(4) not in partial and L.FINAL not in storage.listing(L.FINAL)

    again = run_ok(cmd, env)
    assert f"resumed from step 2 of {uri}" in again.stderr, again.stderr[-3000:]
    assert losses(again.stdout) == {3: first[3], 4: first[4]}  # deterministic: the same steps again
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 4
    m = L.Manifest.from_json(storage.get_bytes(L.manifest_key(4)))
    assert {f.path for f in m.files} >= {L.DCP_METADATA, L.dcp_shard(0)}


def test_bad_input_under_torchrun_reaches_the_termination_message(
    s3_server: dict[str, str], tmp_path: Path
) -> None:
    """torchrun turns the workers' exit 2 into its own 1; the termination message keeps why."""
    cfg = write_config(tmp_path / "cfg.yaml", "tiny-long-video-sft")
    tree = yaml.safe_load(cfg.read_text())
    missing = f"s3://{s3_server['bucket']}/no-such-dataset-{uuid.uuid4().hex[:6]}"
    tree["data"]["uri"] = missing  # a dataset that is not there: no restart helps
    cfg.write_text(yaml.safe_dump(tree))
    uri = f"s3://{s3_server['bucket']}/bad-{uuid.uuid4().hex[:6]}"
    env = contract_env(nproc=2, ulysses=2, ring=1, uri=uri, config=cfg, s3=s3_server)
    env["LONGVILA_CACHE_DIR"] = str(tmp_path / "cache")
    log = tmp_path / "termination-log"
    log.write_text("")  # as the kubelet leaves it
    env["LONGVILA_TERMINATION_LOG"] = str(log)
    cmd = [
        str(VENV_BIN / "torchrun"),
        "--nproc-per-node",
        "2",
        "--standalone",
        "-m",
        "longvila_trainer.train",
    ]
    p = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr[-3000:]  # torchrun's, whatever the workers said
    kind, text = exits.classify(log.read_text()) or ("", "")
    assert kind == exits.ERROR and f"data.uri={missing}: no manifest.jsonl and no *.tar shards" in text
