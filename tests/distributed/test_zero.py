"""DeepSpeed ZeRO (train.engine deepspeed) trains the same steps as FSDP2, and its checkpoints
resume on another world size and under the other engine.

Every run is the real entry point under torchrun with the operator's env contract (4 or 2
gloo processes); the reference is one process with FSDP's engine (SP = 1), whose losses the
SP and dp layouts reproduce (test_train.py). Checkpoints go through the S3 server.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from longvila_contract import checkpoint as L
from longvila_trainer.checkpoint.s3 import open_storage
from test_train import VENV_BIN, contract_env, direct_env, losses, records, run_ok, train_cmd, write_config

pytest.importorskip("deepspeed")
pytestmark = pytest.mark.distributed

STEPS = 4  # checkpoints at 2 and 4 (every_steps 2)


def torchrun(nproc: int, *sets: str) -> list[str]:
    args = [a for s in sets for a in ("--set", s)]
    return [str(VENV_BIN / "torchrun"), "--nproc-per-node", str(nproc), "-m", "longvila_trainer.train", *args]


def env_for(
    nproc: int, ulysses: int, ring: int, uri: str, cfg: Path, s3: dict[str, str], tmp: Path
) -> dict[str, str]:
    env = contract_env(nproc=nproc, ulysses=ulysses, ring=ring, uri=uri, config=cfg, s3=s3)
    env["LONGVILA_CACHE_DIR"] = str(tmp / "cache")
    return env


Reference = Callable[[int], tuple[Path, dict[int, float]]]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The config and the per-step losses of one FSDP-engine process training `packs` packed
    batches per step: what a world with dp = packs trains per step (grad_accum 1 each)."""
    runs: dict[int, tuple[Path, dict[int, float]]] = {}

    def run(packs: int) -> tuple[Path, dict[int, float]]:
        if packs not in runs:
            tmp = tmp_path_factory.mktemp(f"zero-ref-{packs}")
            cfg = write_config(tmp / "cfg.yaml", "tiny-long-video-sft", max_steps=STEPS)
            ref = run_ok(
                train_cmd("--config", str(cfg), "--cache-dir", str(tmp / "cache"),
                          "--set", f"checkpoint.uri=file://{tmp}/ck", "--set", f"train.grad_accum={packs}"),
                direct_env(),
            )  # fmt: skip
            want = losses(ref.stdout)
            assert sorted(want) == list(range(1, STEPS + 1))
            runs[packs] = cfg, want
        return runs[packs]

    return run


@pytest.mark.parametrize(
    ("stage", "ulysses", "ring"),
    [(1, 2, 2), (2, 2, 1)],  # ZeRO-1 at U 2 × R 2; ZeRO-2 at U 2 with dp 2
    ids=["zero1-U2R2", "zero2-U2-dp2"],
)
def test_zero_trains_the_steps_fsdp_trains(
    reference: Reference, s3_server: dict[str, str], stage: int, ulysses: int, ring: int, tmp_path: Path
) -> None:
    cfg, want = reference(4 // (ulysses * ring))  # dp packs per step
    uri = f"s3://{s3_server['bucket']}/zero{stage}-{uuid.uuid4().hex[:6]}"
    env = env_for(4, ulysses, ring, uri, cfg, s3_server, tmp_path)
    p = run_ok(torchrun(4, "train.engine=deepspeed", f"train.zero_stage={stage}"), env)
    got = losses(p.stdout)
    assert sorted(got) == list(range(1, STEPS + 1)), p.stdout
    for step, loss in want.items():
        assert abs(got[step] - loss) <= 1e-5, (step, got[step], loss)
    assert all(r["world"] == 4 and r["grad_norm"] > 0 for r in records(p.stdout))
    storage = open_storage(uri, environ=env)
    assert L.parse_final(storage.get_bytes(L.FINAL)) == STEPS
    assert L.Manifest.from_json(storage.get_bytes(L.manifest_key(STEPS))).world_size == 4


def test_zero_checkpoint_resumes_on_half_the_world_and_under_fsdp(
    reference: Reference, s3_server: dict[str, str], tmp_path: Path
) -> None:
    """ZeRO-2 at world 4 (U 2, dp 2) writes steps 2 and 4; with step 4 withdrawn, ZeRO-2 at
    world 2 (dp 1, accum 2) and then FSDP at world 4 each resume at step 2 and train steps 3
    and 4 with the uninterrupted losses: the optimizer state is saved whole, by name."""
    cfg, want = reference(2)  # dp 2 × accum 1, then dp 1 × accum 2: two packs per step
    uri = f"s3://{s3_server['bucket']}/zero-resume-{uuid.uuid4().hex[:6]}"
    env = env_for(4, 2, 1, uri, cfg, s3_server, tmp_path)
    storage = open_storage(uri, environ=env)
    run_ok(torchrun(4, "train.engine=deepspeed"), env)
    for nproc, engine in ((2, "deepspeed"), (4, "fsdp")):
        storage.delete([L.FINAL, L.manifest_key(STEPS)])  # as if step 4 had never been committed
        p = run_ok(
            torchrun(nproc, f"train.engine={engine}"), env_for(nproc, 2, 1, uri, cfg, s3_server, tmp_path)
        )
        assert "resumed from step 2" in p.stderr and "written by 4 ranks" in p.stderr, p.stderr[-2000:]
        got = losses(p.stdout)
        assert sorted(got) == [3, 4], (engine, p.stdout)
        for step in (3, 4):
            assert abs(got[step] - want[step]) <= 1e-5, (engine, step, got[step], want[step])
