"""`longvila check`: admission rules plus the trainer's preflight, against the public configs of
Qwen2-7B-Instruct and SigLIP-so400m (tests/data/models), and the same preflight in the trainer."""

from __future__ import annotations

import argparse
import copy
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import fleet, node_list
from longvila_operator.api.manifest import read_yaml
from longvila_operator.cli import main
from longvila_trainer.train import PreflightError, plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples/jobs/longvila-7b-256f.yaml", ROOT / "examples/jobs/longvila-7b-1m.yaml"]
QWEN = ROOT / "tests/data/models/qwen2-7b-instruct/config.json"
SIGLIP = ROOT / "tests/data/models/siglip-so400m-patch14-384/config.json"
CONFIGS = ("--llm-config", str(QWEN), "--vision-config", str(SIGLIP))


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def example(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = read_yaml(path.read_text())[0]
    return doc


def write(tmp_path: Path, manifest: dict[str, Any]) -> str:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_examples_pass_against_the_real_model_configs(path: Path) -> None:
    code, out, err = run("check", "-f", str(path), *CONFIGS)
    assert code == 0, err
    assert "28 query / 4 KV heads" in out and "196 tokens per frame" in out
    assert "ulysses 4 × ring" in out and out.rstrip().endswith("preflight")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_examples_place_on_a_32_node_cluster(path: Path, tmp_path: Path) -> None:
    nodes = tmp_path / "nodes.yaml"
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}  # the 1M job's nodeSelector
    nodes.write_text(yaml.safe_dump(node_list(*fleet({"spine-0": 16, "spine-1": 16}, labels=h100))))
    code, out, err = run("plan", "-f", str(path), "--nodes", str(nodes), "-o", "json")
    assert code == 0, err
    placed = json.loads(out)
    spec = example(path)["spec"]
    assert len(placed["nodes"]) == spec["topology"]["nodes"]
    u = spec["topology"]["sequenceParallel"]["ulysses"]
    for group in {r["ulyssesGroup"] for r in placed["ranks"]}:  # every Ulysses group inside one node
        assert len({r["node"] for r in placed["ranks"] if r["ulyssesGroup"] == group}) == 1, (group, u)


def test_ulysses_8_is_refused_naming_the_heads(tmp_path: Path) -> None:
    job = example(EXAMPLES[0])
    job["spec"]["topology"]["sequenceParallel"] = {"ulysses": 8, "ring": 2}
    code, _, err = run("check", "-f", write(tmp_path, job), *CONFIGS)
    assert code == 2
    lines = err.strip().splitlines()
    assert lines == [
        "spec.topology.sequenceParallel.ulysses: Invalid value: 8: attention heads (28) must be divisible by "
        "the Ulysses degree (8); allowed Ulysses degrees: [1, 2, 4, 7, 14, 28]"
    ]


def test_frames_and_rope_against_the_context(tmp_path: Path) -> None:
    job = example(EXAMPLES[0])
    stages = job["spec"]["stages"]
    stages[1]["frames"] = 1024  # 1024 × 196 tokens > 131072
    stages[0]["type"] = "short-sft"  # no extension before: 131072 tokens on the base RoPE
    for key in ("contextLength", "ropeTheta"):
        stages[0].pop(key)
    code, _, err = run("check", "-f", write(tmp_path, job), *CONFIGS)
    assert code == 2
    assert (
        "spec.stages[1].frames: Invalid value: 1024: 1024 frames × 196 tokens = 200704 visual tokens" in err
    )
    assert "spec.stages[1].contextLength: Invalid value: 131072: beyond the model's 32768 positions" in err
    assert "set spec.stages[1].ropeTheta" in err


def test_admission_errors_come_first_one_per_line(tmp_path: Path) -> None:
    job = example(EXAMPLES[0])
    job["spec"]["topology"]["gpusPerNode"] = 6  # U = 4 does not divide 6; 4 × 6 not divisible by 16
    code, _, err = run("check", "-f", write(tmp_path, job), *CONFIGS)
    assert code == 2
    assert "sequenceParallel.ulysses must divide gpusPerNode" in err and len(err.strip().splitlines()) == 2


def test_model_configs_are_read_from_the_spec_uris(tmp_path: Path) -> None:
    for name, src in (("qwen2", QWEN), ("siglip", SIGLIP)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(src.read_text())
    job = example(EXAMPLES[0])
    job["spec"]["model"] = {
        "llm": f"file://{tmp_path / 'qwen2'}",
        "visionTower": f"file://{tmp_path / 'siglip'}",
    }
    code, _, err = run("check", "-f", write(tmp_path, job))
    assert code == 2 and "not under a spec.volumeMounts[].mountPath" in err  # where the pods would look
    job["spec"]["volumes"] = [{"name": "models", "hostPath": {"path": str(tmp_path)}}]
    job["spec"]["volumeMounts"] = [{"name": "models", "mountPath": str(tmp_path), "readOnly": True}]
    code, _, err = run("check", "-f", write(tmp_path, job))
    assert code == 0, err
    job["spec"]["model"]["llm"] = f"file://{tmp_path / 'missing'}"
    code, _, err = run("check", "-f", write(tmp_path, copy.deepcopy(job)))
    assert code == 2 and err.startswith("spec.model.llm: cannot read file://") and "pass it as a file" in err


def test_the_trainer_runs_the_same_preflight_before_any_weights(tmp_path: Path) -> None:
    args = argparse.Namespace(
        config=None,
        preset="tiny-long-video-sft",
        set=[f"checkpoint.uri=file://{tmp_path}", "train.frames=300", "train.context_length=1024"],
        cache_dir=str(tmp_path),
    )
    with pytest.raises(PreflightError, match=r"train\.frames: Invalid value: 300: 300 frames × 4 tokens"):
        plan(args, {})
    args.set = [f"checkpoint.uri=file://{tmp_path}", "train.context_length=1024"]
    assert plan(args, {}).cfg.train.frames is not None  # the tiny preset as it is passes
