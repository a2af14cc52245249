"""The five tiny stages in order, each a torchrun job of 4 processes at SP = 4 (U 2 × R 2)
under the operator's env contract, checkpoints through the S3 server, each stage starting
from the previous one's committed (final) checkpoint; and the LoRA merge under FSDP.

What each stage must show: exit 0, a finite loss for every step, a complete checkpoint that
final.json names; parameters the stage does not train are bit-equal to what it started from;
the stage after context extension starts from merged (adapter-free) weights.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from longvila_contract.config import LoraConfig, merge, preset_tree
from longvila_contract.layout import ParallelLayout
from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.checkpoint.store import CheckpointStore
from longvila_trainer.model.longvila import build_longvila
from longvila_trainer.model.lora import MERGED, LoraLinear, apply_lora, merge_lora_state
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.weights import load_weights
from longvila_trainer.parallel.groups import build_groups
from longvila_trainer.parallel.spawn import run_gloo
from longvila_trainer.parallelize import ParallelizeOptions, parallelize
from test_train import VENV_BIN, contract_env, records, run_ok

pytestmark = pytest.mark.distributed

STEPS = 2
STAGES = ("alignment", "pretraining", "short-sft", "context-extension", "long-video-sft")
# Parameter-name prefixes a stage leaves alone (alignment trains the projector only; context
# extension trains LoRA adapters on q/k/v/o plus the embeddings and norms).
FROZEN: dict[str, tuple[str, ...]] = {
    "alignment": ("vision.", "llm."),
    "pretraining": ("vision.",),
    "context-extension": ("vision.", "projector.", "llm.lm_head."),
}
FROZEN_PARTS = {"context-extension": (".mlp.",)}  # the LLM's MLPs: no adapters there


def stage_config(path: Path, stage: str) -> Path:
    """The tiny stage preset pinned as a config file, shortened to STEPS steps."""
    every = 1 if stage == "context-extension" else STEPS  # an adapter checkpoint before the merged one
    tree = merge(
        preset_tree(f"tiny-{stage}"),
        {
            "train": {"grad_accum": 1, "warmup_ratio": 0.0, "max_steps": STEPS},
            "checkpoint": {"every_steps": every},
        },
    )
    path.write_text(yaml.safe_dump(tree))
    return path


def weights(uri: str, env: dict[str, str], tmp: Path) -> dict[str, torch.Tensor]:
    """A stage's committed weights as the unsharded model's state dict."""
    model = build_longvila(TINY)
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(k, env[k])
        assert load_weights(model, uri, staging=tmp / "staging") == STEPS
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def frozen(stage: str, name: str) -> bool:
    return name.startswith(FROZEN.get(stage, ())) or any(p in name for p in FROZEN_PARTS.get(stage, ()))


def test_five_stages_at_sp4_through_s3(s3_server: dict[str, str], tmp_path: Path) -> None:
    bucket, run = s3_server["bucket"], uuid.uuid4().hex[:6]
    before = {k: v.detach().clone() for k, v in build_longvila(TINY).state_dict().items()}  # alignment's init
    init = ""
    for stage in STAGES:
        uri = f"s3://{bucket}/pipeline-{run}/{stage}"
        cfg = stage_config(tmp_path / f"{stage}.yaml", stage)
        env = contract_env(nproc=4, ulysses=2, ring=2, uri=uri, config=cfg, s3=s3_server, stage_type=stage)
        env["LONGVILA_CACHE_DIR"] = str(tmp_path / "cache")
        env["LONGVILA_INIT_CHECKPOINT"] = init
        cmd = [
            str(VENV_BIN / "torchrun"),
            "--nproc-per-node",
            "4",
            "--standalone",
            "-m",
            "longvila_trainer.train",
        ]
        p = run_ok(cmd, env)

        recs = records(p.stdout)
        assert [r["step"] for r in recs] == list(range(1, STEPS + 1)), (stage, p.stdout[-2000:])
        assert all(math.isfinite(r["loss"]) and r["world"] == 4 for r in recs), (stage, recs)
        store = CheckpointStore(open_storage(uri, environ=env), staging=tmp_path / "staging")
        assert store.final_step() == STEPS, stage
        manifest = store.manifest(STEPS)  # complete, or this raises
        assert manifest.layout == {"world": 4, "ulysses": 2, "ring": 2, "dp": 1}
        if init:
            assert f"initialised weights from step {STEPS} of {init}" in p.stderr, (stage, p.stderr[-2000:])
        if stage == "context-extension":
            assert manifest.meta["weights"] == MERGED and "lora" in store.manifest(1).meta

        after = weights(uri, env, tmp_path)  # loads only with plain names: merged after LoRA
        assert set(after) == set(before)
        still = [k for k in before if frozen(stage, k)]
        assert all(torch.equal(after[k], before[k]) for k in still), stage
        moved = [k for k in before if not frozen(stage, k) and not torch.equal(after[k], before[k])]
        assert moved, f"{stage}: no parameter changed"
        before, init = after, uri


# -- the merge itself under FSDP -----------------------------------------------------------------


def merge_worker(rank: int, world: int) -> dict[str, Any]:
    """Merges a sharded (FSDP2, world ranks) LoRA model's state; compares with the unsharded merge."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.tensor import DTensor

    del rank
    model = build_longvila(TINY, seed=0)
    apply_lora(model.llm, LoraConfig(enabled=True, rank=4, alpha=8.0), seed=0)
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, LoraLinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)  # as after training
    want = {k: v.clone() for k, v in merge_lora_state(model.state_dict(), 2.0).items()}
    plain = set(build_longvila(TINY).state_dict())
    model = parallelize(model, build_groups(ParallelLayout(world), check_hosts=False), ParallelizeOptions())
    sharded = get_model_state_dict(model)
    got = merge_lora_state(sharded, 2.0)  # type: ignore[arg-type]
    full = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in got.items()}
    return {
        "sharded": all(isinstance(v, DTensor) for v in sharded.values()),
        "names": set(full) == plain == set(want),
        "diff": max(float((full[k] - want[k]).abs().max()) for k in want),
    }


def test_lora_merge_under_fsdp() -> None:
    for out in run_gloo(merge_worker, 2):
        assert out["sharded"] and out["names"], out
        assert out["diff"] <= 1e-6, out
