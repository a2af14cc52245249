"""NIAH results as a table (text, markdown, JSON) and a depth × haystack-length heatmap PNG.

The grid is depths (rows, 0 at the top) by haystack lengths (columns, shortest at the
left), as in the LongVA / LongVILA needle plots. The heatmap is drawn with PIL alone:
each cell is filled with a red (score 0) → green (score 1) color and labelled with its
score; `HeatmapGeometry` says where each cell lies, so tests can check the pixels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .needle import Cell

CELL = 48  # px, side of one heatmap cell
LEFT, TOP, BOTTOM = 56, 28, 40  # px, margins for the depth labels, the title, the lengths
MIN_WIDTH = 240  # px, room for the title and the axis caption
RED, GREEN = (200, 40, 40), (40, 170, 70)


@dataclass(frozen=True)
class Grid:
    frames: tuple[int, ...]  # columns
    depths: tuple[float, ...]  # rows
    scores: tuple[tuple[float | None, ...], ...]  # [depth][frames]; None = not run

    @property
    def mean(self) -> float:
        got = [s for row in self.scores for s in row if s is not None]
        return sum(got) / len(got) if got else 0.0


def grid_of(cells: Sequence[Cell]) -> Grid:
    frames = tuple(sorted({c.frames for c in cells}))
    depths = tuple(sorted({c.depth for c in cells}))
    score = {(c.depth, c.frames): c.score for c in cells}
    return Grid(frames, depths, tuple(tuple(score.get((d, f)) for f in frames) for d in depths))


def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.2f}"


def text_table(grid: Grid) -> str:
    """Fixed-width: one row per depth, one column per haystack length."""
    head = ["depth \\ frames", *(str(f) for f in grid.frames)]
    rows = [[f"{d:g}", *(_fmt(s) for s in row)] for d, row in zip(grid.depths, grid.scores, strict=True)]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(x.rjust(w) for x, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    return "\n".join([*lines, f"mean {grid.mean:.3f}"])


def markdown_table(grid: Grid) -> str:
    head = "| depth \\ frames | " + " | ".join(str(f) for f in grid.frames) + " |"
    rule = "|---|" + "---|" * len(grid.frames)
    rows = [
        f"| {d:g} | " + " | ".join(_fmt(s) for s in row) + " |"
        for d, row in zip(grid.depths, grid.scores, strict=True)
    ]
    return "\n".join([head, rule, *rows, "", f"Mean score: {grid.mean:.3f}"])


def json_report(cells: Sequence[Cell], title: str) -> dict[str, Any]:
    grid = grid_of(cells)
    return {
        "title": title,
        "frames": list(grid.frames),
        "depths": list(grid.depths),
        "scores": [list(row) for row in grid.scores],
        "mean": grid.mean,
        "cells": [asdict(c) | {"score": c.score} for c in cells],
    }


@dataclass(frozen=True)
class HeatmapGeometry:
    rows: int
    cols: int

    @property
    def size(self) -> tuple[int, int]:
        return max(LEFT + self.cols * CELL + 8, MIN_WIDTH), TOP + self.rows * CELL + BOTTOM

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) of a cell, inclusive."""
        x0, y0 = LEFT + col * CELL, TOP + row * CELL
        return x0, y0, x0 + CELL - 1, y0 + CELL - 1


def score_color(score: float | None) -> tuple[int, int, int]:
    if score is None:
        return (160, 160, 160)
    t = min(max(score, 0.0), 1.0)
    r, g, b = (round(a + (z - a) * t) for a, z in zip(RED, GREEN, strict=True))
    return r, g, b


def heatmap(grid: Grid, title: str) -> Image.Image:
    """RGB image: a colored, labelled cell per (depth, haystack length)."""
    geo = HeatmapGeometry(len(grid.depths), len(grid.frames))
    img = Image.new("RGB", geo.size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    draw.text((4, 6), title, fill=(0, 0, 0))  # PIL's default font: ASCII only
    for i, (depth, row) in enumerate(zip(grid.depths, grid.scores, strict=True)):
        x0, y0, _, y1 = geo.box(i, 0)
        draw.text((6, (y0 + y1) // 2 - 5), f"{depth:g}", fill=(0, 0, 0))
        for j, score in enumerate(row):
            box = geo.box(i, j)
            draw.rectangle(box, fill=score_color(score), outline=(255, 255, 255))
            draw.text((box[0] + 12, box[1] + CELL // 2 - 5), _fmt(score), fill=(255, 255, 255))
    bottom = TOP + len(grid.depths) * CELL
    for j, frames in enumerate(grid.frames):
        x0, *_ = geo.box(0, j)
        draw.text((x0 + 14, bottom + 6), str(frames), fill=(0, 0, 0))
    draw.text((LEFT, bottom + 22), "x: haystack frames, y: depth", fill=(0, 0, 0))
    return img


def write_report(cells: Sequence[Cell], out: Path | None, title: str = "NIAH") -> str:
    """The text table; with `out`, also niah.txt, niah.md, niah.json and niah.png there."""
    grid = grid_of(cells)
    text = f"{title}\n{text_table(grid)}"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "niah.txt").write_text(text + "\n")
        (out / "niah.md").write_text(f"## {title}\n\n{markdown_table(grid)}\n")
        (out / "niah.json").write_text(json.dumps(json_report(cells, title), indent=2) + "\n")
        heatmap(grid, title).save(out / "niah.png", format="PNG")
    return text
