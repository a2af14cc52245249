"""Elastic, exact resume: torchrun (c10d rendezvous, --max-restarts 1) with a worker SIGKILLed
after a checkpoint restarts the group, which resumes from the S3 checkpoint and trains every
later step with the loss of an uninterrupted run (within 1e-6); and a resume on half the
world (dp 2 → 1, SP layout U = 2 kept) trains the same global batch per step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from longvila_contract import checkpoint as L
from longvila_trainer.checkpoint.s3 import open_storage
from test_train import REPO, VENV_BIN, contract_env, losses, records, run_ok, write_config

pytestmark = pytest.mark.distributed

STEPS = 6  # checkpoints at 2, 4, 6 (every_steps 2)


def torchrun(nproc: int, restarts: int = 0) -> list[str]:
    # No --standalone: the rendezvous comes from the contract's PET_RDZV_* variables.
    return [str(VENV_BIN / "torchrun"), "--nproc-per-node", str(nproc), f"--max-restarts={restarts}",
            "-m", "longvila_trainer.train"]  # fmt: skip


def workers_of(pid: int) -> list[int]:
    """Child processes of torchrun (its workers), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


@pytest.fixture
def setup(s3_server: dict[str, str], tmp_path: Path) -> tuple[Path, dict[str, str]]:
    cfg = write_config(tmp_path / "cfg.yaml", "tiny-long-video-sft", max_steps=STEPS)
    return cfg, s3_server


def env_for(
    nproc: int, uri: str, cfg: Path, s3: dict[str, str], tmp: Path, restarts: int = 0
) -> dict[str, str]:
    env = contract_env(nproc=nproc, ulysses=2, ring=1, uri=uri, config=cfg, s3=s3, max_restarts=restarts)
    env["LONGVILA_CACHE_DIR"] = str(tmp / "cache")
    return env


def test_kill_a_worker_and_resume_exactly(setup: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    cfg, s3 = setup
    bucket = s3["bucket"]
    ref_uri = f"s3://{bucket}/ref-{uuid.uuid4().hex[:6]}"
    ref = run_ok(torchrun(4), env_for(4, ref_uri, cfg, s3, tmp_path))
    want = losses(ref.stdout)
    assert sorted(want) == list(range(1, STEPS + 1))

    uri = f"s3://{bucket}/kill-{uuid.uuid4().hex[:6]}"
    env = env_for(4, uri, cfg, s3, tmp_path, restarts=1)
    storage = open_storage(uri, environ=env)
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with out.open("w") as so, err.open("w") as se:
        proc = subprocess.Popen(torchrun(4, restarts=1), env=env, cwd=REPO, stdout=so, stderr=se)
        try:
            deadline = time.monotonic() + 400
            while L.manifest_key(2) not in storage.listing("step-00000002/"):
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
                time.sleep(0.2)
            victims = workers_of(proc.pid)
            assert len(victims) == 4, victims
            os.kill(victims[-1], signal.SIGKILL)
            killed_at = time.monotonic()
            rc = proc.wait(timeout=500)
        finally:
            if proc.poll() is None:
                proc.kill()
    stdout, stderr = out.read_text(), err.read_text()
    assert rc == 0, stderr[-4000:]
    assert "resumed from step" in stderr, stderr[-3000:]  # the restarted group loaded a checkpoint
    resumed = int(stderr.split("resumed from step ")[1].split()[0])
    assert resumed in (2, 4)
    got = losses(stdout)  # the last record of each step: after the restart for steps > resumed
    steps = [r["step"] for r in records(stdout)]
    assert steps[-(STEPS - resumed) :] == list(range(resumed + 1, STEPS + 1)), steps
    for step in range(1, STEPS + 1):
        assert abs(got[step] - want[step]) <= 1e-6, (step, got[step], want[step])
    assert L.parse_final(storage.get_bytes(L.FINAL)) == STEPS
    print(f"kill → exit {time.monotonic() - killed_at:.1f}s, resumed from step {resumed}")


def test_resume_on_half_the_world(setup: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """world 4 = dp 2 × U 2 writes steps 2, 4, 6; with step 6 removed, world 2 = dp 1 × U 2 resumes at 4."""
    cfg, s3 = setup
    uri = f"s3://{s3['bucket']}/shrink-{uuid.uuid4().hex[:6]}"
    big = run_ok(torchrun(4), env_for(4, uri, cfg, s3, tmp_path))
    want = {r["step"]: r for r in records(big.stdout)}
    env = env_for(2, uri, cfg, s3, tmp_path)
    storage = open_storage(uri, environ=env)
    storage.delete([L.FINAL, L.manifest_key(STEPS)])  # as if the node died before step 6 was committed
    small = run_ok(torchrun(2), env)
    assert "resumed from step 4" in small.stderr and "written by 4 ranks" in small.stderr
    got = {r["step"]: r for r in records(small.stdout)}
    assert sorted(got) == [5, 6]
    for step in (5, 6):
        assert got[step]["world"] == 2
        # the same packs per step (dp 1 × accum 2 = dp 2 × accum 1): same targets, same tokens
        assert (got[step]["targets"], got[step]["tokens"]) == (want[step]["targets"], want[step]["tokens"])
        assert abs(got[step]["loss"] - want[step]["loss"]) <= 1e-5, (step, got[step], want[step])
    m = L.Manifest.from_json(storage.get_bytes(L.manifest_key(STEPS)))
    assert m.world_size == 2 and m.layout == {"world": 2, "ulysses": 2, "ring": 1, "dp": 1}
