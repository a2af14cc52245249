"""NIAH pieces without a process group: case building, exact-match scoring on constructed
logits, the grid parser, the tables, the heatmap's cells, and the CLI's error and output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from longvila_trainer.data.synthetic import NEEDLE_COLORS, Needle, haystack_frames, make_needle
from longvila_trainer.data.tokenizer import load_tokenizer
from longvila_trainer.data.video import to_pixels
from longvila_trainer.eval.needle import Cell, build_case, judge, normalize, parse_grid
from longvila_trainer.eval.niah import main
from longvila_trainer.eval.prefill import Prefill
from longvila_trainer.eval.report import (
    HeatmapGeometry,
    grid_of,
    heatmap,
    json_report,
    markdown_table,
    score_color,
    text_table,
)
from longvila_trainer.sharding.frames import IGNORE_INDEX
from PIL import Image

SIZE = 28
CODEC = load_tokenizer("tiny")


@pytest.mark.parametrize(("n", "depth", "at"), [(8, 0.0, 0), (8, 0.5, 4), (8, 1.0, 8), (5, 0.3, 2)])
def test_case_puts_the_needle_at_its_depth(n: int, depth: float, at: int) -> None:
    needle = make_needle(3, SIZE)
    case = build_case(CODEC, haystack_frames(1, n, SIZE), needle, depth, SIZE)
    ids, labels = case.batch.input_ids, case.batch.labels
    assert case.needle_at == at
    assert int((ids == CODEC.media_token_id).sum()) == len(case.batch.frames) == n + 1
    assert torch.equal(case.batch.frames[at], to_pixels(needle.frame[None], SIZE)[0])
    # Labels: exactly the answer, right after the assistant header; the turn end is not scored.
    answer = CODEC.encode(needle.answer)
    assert labels[labels != IGNORE_INDEX].tolist() == answer == list(case.answer_ids)
    start = int(torch.nonzero(labels != IGNORE_INDEX)[0])
    assert CODEC.decode(ids[start - 10 : start].tolist()).endswith("assistant\n")
    assert ids[start + len(answer)] == CODEC.im_end_id
    assert case.batch.doc_lens == (len(ids),)


def one_hot_prefill(ids: list[int], vocab: int = 96) -> Prefill:
    logits = torch.full((len(ids), vocab), -3.0)
    logits[torch.arange(len(ids)), torch.tensor(ids)] = 5.0
    return Prefill(logits, torch.tensor(ids), (0,) * len(ids), 100)


def test_scoring_on_constructed_logits_is_exact() -> None:
    needle = Needle(np.zeros((SIZE, SIZE, 3), np.uint8), "which colors?", "Red and Blue")
    case = build_case(CODEC, haystack_frames(1, 4, SIZE), needle, 0.5, SIZE)
    right = list(case.answer_ids)
    v = judge(CODEC, case, one_hot_prefill(right).argmax().tolist())
    assert (v.correct, v.token_exact, v.predicted) == (True, True, "red and blue")
    # One token off anywhere → wrong.
    for i in range(len(right)):
        wrong = right.copy()
        wrong[i] = CODEC.encode("x")[0]
        assert not judge(CODEC, case, one_hot_prefill(wrong).argmax().tolist()).correct, i
    # A moved space: equal ignoring spaces (the reference's rule), not token-exact.
    moved = CODEC.encode("red an dblue")
    v = judge(CODEC, case, one_hot_prefill(moved).argmax().tolist())
    assert (v.correct, v.token_exact) == (True, False)
    with pytest.raises(ValueError, match="predictions"):
        judge(CODEC, case, right[:-1])
    assert normalize(" Red  AND\nblue ") == "redandblue"


def test_parse_grid() -> None:
    assert parse_grid("32,8,16,8", "1,0,0.5") == ((8, 16, 32), (0.0, 0.5, 1.0))
    for frames, depths in [("0,8", "0"), ("8", "1.5"), ("a", "0"), ("", "0"), ("8", "")]:
        with pytest.raises(ValueError):
            parse_grid(frames, depths)


def cells(frames: tuple[int, ...], depths: tuple[float, ...]) -> list[Cell]:
    """Score (i + j) mod 3 / 2 capped at 1 for depth i, length j: distinct per neighbour."""
    out = []
    for i, d in enumerate(depths):
        for j, f in enumerate(frames):
            correct = min((i + j) % 3, 2)
            out.append(Cell(f, d, 2, correct, correct, 10 * f, ("x",) * 2, ("y",) * 2))
    return out


def test_tables() -> None:
    grid = grid_of(cells((8, 16, 32), (0.0, 0.5, 1.0)))
    assert grid.scores == ((0.0, 0.5, 1.0), (0.5, 1.0, 0.0), (1.0, 0.0, 0.5))
    text = text_table(grid).splitlines()
    assert text[0].split()[-3:] == ["8", "16", "32"]
    assert text[2].split() == ["0.5", "0.50", "1.00", "0.00"]
    assert text[-1] == "mean 0.500"
    md = markdown_table(grid).splitlines()
    assert md[0] == "| depth \\ frames | 8 | 16 | 32 |" and md[4] == "| 1 | 1.00 | 0.00 | 0.50 |"
    rep = json_report(cells((8, 16, 32), (0.0, 0.5, 1.0)), "t")
    assert rep["scores"] == [list(r) for r in grid.scores] and len(rep["cells"]) == 9


def test_heatmap_has_one_colored_cell_per_grid_point(tmp_path: Path) -> None:
    frames, depths = (8, 16, 32, 64), (0.0, 0.25, 0.5, 0.75, 1.0)
    grid = grid_of(cells(frames, depths))
    heatmap(grid, "t").save(tmp_path / "h.png")
    geo = HeatmapGeometry(len(depths), len(frames))
    with Image.open(tmp_path / "h.png") as img:
        assert img.format == "PNG" and img.size == geo.size
        rgb = img.convert("RGB")
        for i in range(len(depths)):
            for j in range(len(frames)):
                x0, y0, x1, y1 = geo.box(i, j)
                want = score_color(grid.scores[i][j])
                for x, y in [(x0 + 3, y0 + 3), (x1 - 3, y1 - 3)]:  # away from the label text
                    assert rgb.getpixel((x, y)) == want, (i, j)
    assert score_color(0.0) != score_color(0.5) != score_color(1.0)


def test_cli_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--frames", "2,4", "--depths", "0,1", "--size", "28", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "depth \\ frames" in out and out.strip().splitlines()[-1].startswith("mean ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["niah.json", "niah.md", "niah.png", "niah.txt"]
    rep = json.loads((tmp_path / "niah.json").read_text())
    assert rep["frames"] == [2, 4] and rep["depths"] == [0.0, 1.0]
    for c in rep["cells"]:  # random weights: predictions are whatever the argmax says, one per cell
        assert c["n"] == 1 and len(c["predictions"]) == 1 and c["answers"][0] in NEEDLE_COLORS
        assert c["score"] == c["correct"] and c["tokens"] > 0
    with Image.open(tmp_path / "niah.png") as img:
        assert img.size == HeatmapGeometry(2, 2).size


def test_cli_weights_without_a_checkpoint_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --weights location holding no complete checkpoint: one line naming it, exit 2,
    before any rank is spawned."""
    empty = tmp_path / "run"
    empty.mkdir()
    rc = main(["--frames", "2", "--depths", "0", "--weights", str(empty)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("error:") and str(empty) in err


def test_cli_rejects_a_bad_grid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--depths", "0,2"]) == 2
    assert "--depths" in capsys.readouterr().err


def test_the_checkpoint_says_which_model_the_eval_builds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--weights needs no --rope-theta: the checkpoint's meta.model carries the RoPE base."""
    from dataclasses import replace

    from longvila_contract.model import rope_theta_of
    from longvila_trainer.checkpoint.store import CheckpointStore
    from longvila_trainer.eval.niah import checkpoint_model
    from longvila_trainer.model.longvila import build_longvila
    from longvila_trainer.model.meta import build_from_meta, checkpoint_meta_entry, meta_of
    from longvila_trainer.model.presets import TINY
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    model = build_longvila(replace(TINY, llm={**TINY.llm, "rope_theta": 12345.0}), seed=0)
    state = {"model": get_model_state_dict(model)}
    with_meta, without = f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}"
    CheckpointStore.from_uri(with_meta, staging=tmp_path / "s").save(
        1, state, meta=checkpoint_meta_entry(meta_of(model))
    )
    CheckpointStore.from_uri(without, staging=tmp_path / "s").save(1, state, meta={"stage": "old"})
    meta = checkpoint_model(with_meta)
    assert (
        meta.rope_theta == 12345.0
        and meta.token_order == "row"
        and meta.media_token_id == TINY.media_token_id
    )
    assert rope_theta_of(build_from_meta(meta).llm.config.to_dict()) == 12345.0
    assert main(["--frames", "2", "--depths", "0", "--weights", without]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no meta.model" in err and len(err.splitlines()) == 1
