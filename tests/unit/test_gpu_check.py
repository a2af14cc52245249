"""`make gpu-check` stays runnable without a GPU in reach: its --dry-run runs every part on the
CPU (tiny model, CPU kernel) and writes the report a GPU run writes; without a GPU and
without --dry-run it refuses with one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from longvila_trainer.bench import gpu_check


def test_dry_run_writes_the_whole_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = ["--dry-run", "--out", str(out), "--tokens", "96", "--frames", "1", "--steps", "1"]
    assert gpu_check.main([*argv, "--ring-seqs", "64", "--ring", "2"]) == 0
    report = json.loads(out.read_text())
    assert report["dry_run"] and report["ok"]
    assert {(r["dtype"], r["pass"]) for r in report["kernels"]} == {
        (d, p) for d in ("torch.bfloat16", "torch.float32") for p in ("full", "causal")
    }
    assert report["ring_merge_max_abs_err"] < 1e-4
    [train] = report["training"]
    assert train["fits"] and train["tokens"] == 96 and train["tokens_per_s"] > 0
    assert report["ring_step"][0]["what"] == "full-seq SDPA causal"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_without_a_gpu_it_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_check.main(["--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dry-run" in err
