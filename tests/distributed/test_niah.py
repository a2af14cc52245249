"""The NIAH eval's sequence-parallel prefill: SP = (2, 2) and (1, 2) give the SP = 1 logits and
argmax at every answer position, and SP = 1 gives what the stock HF model computes.

Each layout is spawned once (gloo on CPU). Every worker builds the same seeded tiny model,
computes the SP = 1 reference itself and compares; only summaries travel back. The batch
packs three needle cases (different haystack lengths and depths), so the answer positions
fall on several ranks and the gather has real work to do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from longvila_contract.layout import ParallelLayout
from longvila_trainer.data.synthetic import haystack_frames, make_needle
from longvila_trainer.data.tokenizer import load_tokenizer
from longvila_trainer.eval.needle import Case, build_case
from longvila_trainer.eval.niah import NiahSpec, evaluate, run, synthetic_haystack
from longvila_trainer.eval.prefill import prefill
from longvila_trainer.model.longvila import LongVILA, PackedBatch, build_longvila
from longvila_trainer.model.presets import TINY
from longvila_trainer.parallel.groups import build_groups, single_process_groups
from longvila_trainer.parallel.spawn import run_gloo
from longvila_trainer.parallel.token_layout import Kind
from longvila_trainer.sharding.frames import IGNORE_INDEX

pytestmark = pytest.mark.distributed

SIZE = 56  # px: 4×4 patches → 4 LLM tokens per frame
ATOL = 1e-4
LAYOUTS = [(2, 2), (1, 2)]
KINDS: tuple[Kind, ...] = ("zigzag", "contiguous")
GRID = NiahSpec("tiny", frames=(3, 7), depths=(0.0, 0.5, 1.0), needles=2)


def needle_cases() -> list[Case]:
    codec = load_tokenizer("tiny")
    return [
        build_case(codec, haystack_frames(seed, n, SIZE), make_needle(seed, SIZE), depth, SIZE)
        for seed, n, depth in [(1, 5, 0.0), (2, 9, 0.6), (3, 2, 1.0)]
    ]


def pack(cases: list[Case]) -> PackedBatch:
    """Several cases as one packed sequence (documents back to back)."""
    return PackedBatch(
        torch.cat([c.batch.input_ids for c in cases]),
        torch.cat([c.batch.labels for c in cases]),
        tuple(len(c.batch.input_ids) for c in cases),
        tuple(f for c in cases for f in c.batch.frames),
    )


def _worker(rank: int, world: int, ulysses: int, ring: int) -> dict[str, Any]:
    model = build_longvila(TINY, seed=0).eval()
    batch = pack(needle_cases())
    ref = prefill(model, batch, single_process_groups(), "contiguous")
    groups = build_groups(ParallelLayout(world, ulysses, ring), check_hosts=False)
    rows = {}
    for kind in KINDS:
        got = prefill(model, batch, groups, kind)
        rows[kind] = {
            "max_diff": float((got.logits - ref.logits).abs().max()),
            "argmax_equal": bool(torch.equal(got.argmax(), ref.argmax())),
            "targets_equal": bool(torch.equal(got.targets, ref.targets)),
            "owners": sorted(set(got.owners)),
            "n": int(got.logits.shape[0]),
        }
    codec = load_tokenizer("tiny")
    hay = synthetic_haystack(GRID.seed, GRID.frame_size)
    sp_cells = evaluate(model, codec, groups, GRID, hay, make_needle)
    ref_cells = evaluate(model, codec, single_process_groups(), GRID, hay, make_needle)
    return {"rows": rows, "n_ref": int(ref.logits.shape[0]), "cells": (sp_cells, ref_cells)}


@pytest.fixture(scope="module")
def spawned() -> Callable[[int, int], list[dict[str, Any]]]:
    cache: dict[tuple[int, int], list[dict[str, Any]]] = {}

    def get(ulysses: int, ring: int) -> list[dict[str, Any]]:
        if (ulysses, ring) not in cache:
            cache[ulysses, ring] = run_gloo(_worker, ulysses * ring, ulysses, ring)
        return cache[ulysses, ring]

    return get


@pytest.mark.parametrize(("ulysses", "ring"), LAYOUTS)
def test_sp_prefill_equals_sp1(
    ulysses: int, ring: int, spawned: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    results = spawned(ulysses, ring)
    answer_tokens = sum(len(c.answer_ids) for c in needle_cases())
    for rank, res in enumerate(results):
        # The answer rows must come from several ranks (over both layouts), or the gather is
        # moot. Answers end their document: zigzag puts that end on ring rank 0.
        owners = {o for row in res["rows"].values() for o in row["owners"]}
        assert len(owners) >= 2, f"rank {rank}: all answers on ranks {owners}"
        assert res["n_ref"] == answer_tokens, f"rank {rank}: {res['n_ref']} rows for {answer_tokens} answers"
        for kind, row in res["rows"].items():
            where = f"rank {rank} U={ulysses} R={ring} {kind}"
            print(f"{where}: max |Δlogit| {row['max_diff']:.1e}, answer rows on ranks {row['owners']}")
            assert row["n"] == answer_tokens, where
            assert row["targets_equal"], where
            assert row["max_diff"] < ATOL, f"{where}: max |Δlogit| {row['max_diff']:.2e}"
            assert row["argmax_equal"], where


@pytest.mark.parametrize(("ulysses", "ring"), LAYOUTS)
def test_sp_grid_equals_sp1_grid(
    ulysses: int, ring: int, spawned: Callable[[int, int], list[dict[str, Any]]]
) -> None:
    for rank, res in enumerate(spawned(ulysses, ring)):
        sp_cells, ref_cells = res["cells"]
        assert len(sp_cells) == len(GRID.frames) * len(GRID.depths)
        assert sp_cells == ref_cells, f"rank {rank}: the SP grid's predictions differ from SP = 1"


def test_cli_run_spawns_the_layout() -> None:
    """`run` (the CLI's path without torchrun) spawns U·R ranks and returns rank 0's grid."""
    spec = NiahSpec("tiny", frames=(4,), depths=(0.0, 1.0), ulysses=2, ring=1)
    cells = run(spec)
    ref = run(NiahSpec("tiny", frames=(4,), depths=(0.0, 1.0)))
    assert [(c.frames, c.depth) for c in cells] == [(4, 0.0), (4, 1.0)]
    assert cells == ref


def test_cli_under_torchrun(tmp_path: Path) -> None:
    """With torchrun's environment the CLI joins the group instead of spawning; rank 0 reports."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "longvila_trainer.eval.niah", "--ring", "2", "--frames", "2,5", "--depths", "0,1"]
    done = subprocess.run([*cmd, "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("depth \\ frames") == 1  # printed by rank 0 only
    got = json.loads((tmp_path / "niah.json").read_text())["cells"]
    ref = run(NiahSpec("tiny", frames=(2, 5), depths=(0.0, 1.0)))
    assert [(c["frames"], c["depth"], c["predictions"]) for c in got] == [
        (c.frames, c.depth, list(c.predictions)) for c in ref
    ]


def hf_logits(model: LongVILA, case: Case) -> torch.Tensor:
    """Reference: frames spliced into the document, the stock Qwen2 with eager attention,
    logits at every position whose next token is an answer token. [n, V]"""
    rows, counts = model.encode(case.batch.frames)
    frames = iter(torch.split(rows, counts))
    embed = model.llm.get_input_embeddings()
    pieces, labels = [], []
    for tok, lab in zip(case.batch.input_ids.tolist(), case.batch.labels.tolist(), strict=True):
        if tok == model.media_token_id:
            frame = next(frames)
            pieces.append(frame)
            labels += [IGNORE_INDEX] * frame.shape[0]
        else:
            pieces.append(embed(torch.tensor([tok])))
            labels.append(lab)
    impl = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    try:
        logits = model.llm(inputs_embeds=torch.cat(pieces)[None], use_cache=False).logits[0]
    finally:
        model.llm.set_attn_implementation(impl)
    nxt = torch.tensor([*labels[1:], IGNORE_INDEX])
    out: torch.Tensor = logits[nxt != IGNORE_INDEX]
    return out


def test_sp1_prefill_equals_plain_hf() -> None:
    model = build_longvila(TINY, seed=0).eval()
    for case in needle_cases():
        with torch.no_grad():
            ref = hf_logits(model, case)
        got = prefill(model, case.batch, single_process_groups(), "zigzag")
        assert got.logits.shape == ref.shape == (len(case.answer_ids), TINY.llm["vocab_size"])
        assert float((got.logits - ref).abs().max()) < ATOL
        assert got.targets.tolist() == list(case.answer_ids)


def test_weights_of_a_training_run(tmp_path: Path) -> None:
    """`--weights URI` evaluates a stage's trained weights: load_weights gives exactly the
    checkpoint's parameters (not the preset's random ones), and the CLI at SP = 2 gives the
    cells of SP = 1 over those parameters."""
    from longvila_trainer.eval.niah import main
    from longvila_trainer.model.weights import load_weights
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "longvila_trainer.train", "--preset", "tiny-short-sft",
           "--cache-dir", str(tmp_path / "cache"), "--set", f"checkpoint.uri=file://{ck}",
           "--set", "train.max_steps=2", "--set", "train.lr=0.01"]  # fmt: skip
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dcp_to_torch_save(ck / "step-00000002" / "dcp", tmp_path / "trained.pt")  # straight from the files
    trained = torch.load(tmp_path / "trained.pt", weights_only=False)["model"]

    model, fresh = build_longvila(TINY, seed=0), build_longvila(TINY, seed=0)
    assert load_weights(model, f"file://{ck}") == 2
    got, init = get_model_state_dict(model), get_model_state_dict(fresh)
    assert set(got) == set(trained)
    assert all(torch.equal(got[k], trained[k]) for k in trained)
    assert sum(not torch.equal(got[k], init[k]) for k in init) > len(init) // 2  # "all" trained

    case = needle_cases()[0]
    one = single_process_groups()
    with torch.no_grad():
        diff = prefill(model.eval(), case.batch, one).logits - prefill(fresh.eval(), case.batch, one).logits
    assert diff.abs().max() > 1e-3

    ref = run(NiahSpec("tiny", frames=(3,), depths=(0.0, 1.0)), state=model.state_dict())
    out = tmp_path / "niah"
    assert (
        main(["--frames", "3", "--depths", "0,1", "--ulysses", "2", "--weights", str(ck), "--out", str(out)])
        == 0
    )
    cells = json.loads((out / "niah.json").read_text())["cells"]
    assert [c["predictions"] for c in cells] == [list(c.predictions) for c in ref]
