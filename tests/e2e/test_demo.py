"""The demo's path end to end (`make demo`): kubectl apply → operator → pods really run → S3.

One real run of longvila_localcluster.demo on its own local cluster: a checkpoint in VILA's
released layout and LLaVA-layout datasets put on S3 (the short mix on a hostPath volume), the
checkpoint imported with longvila-import, the chart installed with helm, the operator pod and
the trainer pods executed by the pod runner, two stages of MM-SP training (Ulysses 2 × ring 2
over 2 nodes × 2 processes) reading weights and data from S3 and the volume, a node failed
once the second stage has a checkpoint, and the needle-in-a-haystack table on the final
weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from longvila_localcluster.demo import DemoOptions, run_demo

NIAH_FLOOR = 0.6  # the demo's tiny model finds the needle; ignoring the video scores ≤ 0.2
pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_demo_trains_two_stages_through_a_node_failure(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_demo(DemoOptions(work=tmp_path / "demo", timeout_s=1200), say=lines.append)
    log = "\n".join(lines)
    print(log)

    assert report.phase == "Succeeded"
    assert [s["phase"] for s in report.stages] == ["Succeeded", "Succeeded"]
    assert report.failed_node, "no node was failed"
    # One fault, one restart: the node loss is found (its heartbeats stopped) before the gang
    # restarts, so the lost rank moves in that one restart (issue 14).
    assert report.restarts == 1 and report.stages[1]["restarts"] == 1, report
    assert report.failures == {"NodeLost": 1}, report.failures
    # `kubectl get lvj` shows progress while it trains, and the finished stage complete.
    assert any(re.fullmatch(r"[1-7]/8 \(\d+%\)", p) for p in report.progress), report.progress
    assert report.progress[-1] == "8/8 (100%)", report.progress
    # The replacement ran the lost rank somewhere else, and training resumed from S3.
    assert f"node {report.failed_node} died; its processes were killed" in log
    assert any("resumed from step" in r and "/long-sft" in r for r in report.resumed), report.resumed
    assert "initialised weights from step 6 of s3://" in log  # stage 2 from stage 1's final
    assert "initialised weights from step 0 of s3://" in log and "/imports/tiny-vila" in log  # the import
    assert "LoRA adapters merged" in log
    # the user's path: a VILA-layout checkpoint imported, datasets as published, on S3
    assert "longvila-import s3://" in log and "projector mlp_downsample_2x2_fix" in log
    assert "LLaVA layout (train.json + media)" in log and "manifest.jsonl" in log
    # long videos read from S3, the short mix from the hostPath volume every worker mounts
    data = re.compile(
        r"-long-sft-a0-n0: longvila-train: data s3://\S+/datasets/needle-qa/train\.json: 24 samples; "
        r"short mix file:///\S+/datasets/video-qa/train\.json: \d+ drawn from 12"
    )
    assert data.search(log), log
    assert any("-long-sft-" in ln and "RoPE base 100000" in ln for ln in lines)  # context-ext's base

    # Exact resume: a step run both before the failure and after the resume has the same loss.
    attempts = sorted(k for k in report.losses if "-long-sft-" in k)
    assert len(attempts) >= 2, report.losses
    first, last = report.losses[attempts[0]], report.losses[attempts[-1]]
    assert max(last) == 8 and min(last) > 1, last  # resumed, not restarted from step 1
    for step in set(first) & set(last):
        assert first[step] == pytest.approx(last[step], abs=1e-4), (step, first, last)

    for stage in ("context-ext", "long-sft"):
        assert any(
            ln.startswith(stage) and ln.endswith("complete, final") for ln in report.checkpoints.splitlines()
        )
    assert "depth" in report.niah.lower() and "frames" in report.niah.lower(), report.niah
    # 5 needles (one per colour) per cell: a model that does not look at the video scores ≤ 0.2
    assert report.niah_score >= NIAH_FLOOR, report.niah
