"""Needle-in-a-haystack eval for long video under sequence parallelism, and its CLI.

    python -m longvila_trainer.eval.niah --preset tiny --frames 8,16,32 \\
        --depths 0,0.25,0.5,0.75,1 [--ulysses U --ring R] [--weights URI] [--out DIR]

For each haystack length and depth the needle case (`needle.py`) runs through the SP
prefill (`prefill.py`) on U·R processes; the argmax at the answer positions is scored by
exact match. Without torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR) the CLI spawns
U·R local gloo processes on CPU; under torchrun it joins the given group (world = U·R).
Rank 0 prints the table and writes niah.{json,md,txt,png} to --out (`report.py`).
`--weights` is a stage's checkpoint URI (model/weights.py `load_weights`: its final
checkpoint, else its newest complete one); the model is the one the checkpoint says it
holds (manifest meta.model: configs, the RoPE base it trained with, the projector's token
order), so `--preset` only applies without `--weights` (the preset's random weights).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from longvila_contract.checkpoint import ManifestError, ModelMeta
from longvila_contract.layout import ParallelLayout

from ..checkpoint.s3 import StorageError
from ..checkpoint.store import CheckpointNotFoundError, CheckpointStore
from ..data.synthetic import haystack_frames, make_needle
from ..data.tokenizer import TextCodec, load_tokenizer
from ..data.video import decode_video
from ..model.longvila import LongVILA, build_longvila
from ..model.meta import build_from_meta
from ..model.presets import PRESETS
from ..model.weights import load_weights, weights_step
from ..parallel.groups import SPGroups, build_groups, single_process_groups
from ..parallel.spawn import run_gloo
from ..parallel.token_layout import Kind
from .needle import Cell, Haystack, NeedleMaker, build_case, cell_of, judge, parse_grid
from .prefill import prefill
from .report import write_report

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class NiahSpec:
    preset: str
    frames: tuple[int, ...]  # haystack lengths
    depths: tuple[float, ...]
    ulysses: int = 1
    ring: int = 1
    kind: Kind = "zigzag"
    needles: int = 1  # needle variants per cell (the score is the fraction correct)
    seed: int = 0  # model init (random weights), haystack and needle draws
    size: int | None = None  # frame side in px; None = the preset's vision image_size
    tokenizer: str = "tiny"
    haystack: str | None = None  # a video file; None = the synthetic moving-square haystack
    weights: str | None = None  # a stage's checkpoint URI: its model, with its weights

    @property
    def frame_size(self) -> int:
        return self.size if self.size is not None else int(PRESETS[self.preset].vision["image_size"])


def frame_size(spec: NiahSpec, model: LongVILA) -> int:
    """--size, else the side the model's vision tower was trained at."""
    return spec.size if spec.size is not None else int(model.vision.model.config.image_size)  # type: ignore[arg-type]


def evaluate(
    model: LongVILA,
    codec: TextCodec,
    groups: SPGroups,
    spec: NiahSpec,
    haystack: Haystack,
    needle: NeedleMaker,
) -> list[Cell]:
    """The whole grid on this SP group (every rank calls it; every rank gets the cells)."""
    if codec.media_token_id != model.media_token_id:
        raise ValueError(
            f"tokenizer media id {codec.media_token_id} differs from the model's {model.media_token_id}"
        )
    model.eval()
    size = frame_size(spec, model)
    cells = []
    for frames in spec.frames:
        hay = haystack(frames)
        for depth in spec.depths:
            cases = [build_case(codec, hay, needle(v, size), depth, size) for v in range(spec.needles)]
            verdicts, tokens = [], 0
            for case in cases:
                out = prefill(model, case.batch, groups, spec.kind)
                verdicts.append(judge(codec, case, out.argmax().tolist()))
                tokens = out.length
            cells.append(cell_of(frames, depth, cases, verdicts, tokens))
    return cells


def synthetic_haystack(seed: int, size: int) -> Haystack:
    def frames(n: int) -> np.ndarray:
        return haystack_frames(seed, n, size)

    return frames


def video_haystack(path: str) -> Haystack:
    def frames(n: int) -> np.ndarray:
        return decode_video(path, n)

    return frames


def checkpoint_model(source: str) -> ModelMeta:
    """Before spawning: the model of the checkpoint load_weights will read (its manifest only)."""
    store = CheckpointStore.from_uri(source, staging=Path(tempfile.gettempdir()))
    meta = ModelMeta.from_meta(store.manifest(weights_step(store, source)).meta, f"--weights {source}")
    if meta is None:
        raise ValueError(
            f"--weights {source}: the checkpoint does not say what model it holds (no meta.model)"
        )
    return meta


def worker(
    rank: int,
    world: int,
    spec: NiahSpec,
    state: dict[str, torch.Tensor] | None = None,
    needle: NeedleMaker = make_needle,
) -> list[Cell]:
    """One rank of the eval: model, groups, grid. `state` (a state dict) overrides weights."""
    del rank
    torch.manual_seed(spec.seed)
    if spec.weights is not None and state is None:  # the checkpoint's own model, RoPE base included
        model = build_from_meta(checkpoint_model(spec.weights), seed=spec.seed)
        load_weights(model, spec.weights)  # a stage checkpoint (final, else newest complete)
    else:
        model = build_longvila(PRESETS[spec.preset], seed=spec.seed)
    if state is not None:
        model.load_state_dict(state)
    codec = load_tokenizer(spec.tokenizer)
    layout = ParallelLayout(world, spec.ulysses, spec.ring)
    if layout.dp != 1:
        raise ValueError(f"the eval runs one SP group: world {world} must equal U·R = {layout.sp}")
    groups = build_groups(layout, check_hosts=False) if world > 1 else single_process_groups()
    size = frame_size(spec, model)
    hay = video_haystack(spec.haystack) if spec.haystack else synthetic_haystack(spec.seed, size)
    return evaluate(model, codec, groups, spec, hay, needle)


def run(
    spec: NiahSpec, state: dict[str, torch.Tensor] | None = None, needle: NeedleMaker = make_needle
) -> list[Cell]:
    """Spawns U·R gloo processes (or runs in this one for SP = 1); rank 0's cells."""
    world = spec.ulysses * spec.ring
    if world == 1:
        return worker(0, 1, spec, state, needle)
    results: list[list[Cell]] = run_gloo(worker, world, spec, state, needle)
    return results[0]


def parse_args(argv: Sequence[str] | None) -> tuple[NiahSpec, Path | None]:
    p = argparse.ArgumentParser(
        prog="python -m longvila_trainer.eval.niah", description=__doc__.split("\n")[0]
    )
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--frames", default="8,16,32", help="haystack lengths in frames, comma-separated")
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1", help="needle depths in [0, 1], comma-separated")
    p.add_argument("--ulysses", type=int, default=1)
    p.add_argument("--ring", type=int, default=1)
    p.add_argument("--layout", default="zigzag", choices=("zigzag", "contiguous"))
    p.add_argument("--needles", type=int, default=1, help="needle variants per cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=None, help="frame side in px (default: the preset's)")
    p.add_argument("--tokenizer", default="tiny")
    p.add_argument("--haystack", default=None, help="a video file (default: synthetic)")
    p.add_argument(
        "--weights", default=None, help="a stage's checkpoint URI: file:///dir or s3://bucket/prefix"
    )
    p.add_argument("--out", type=Path, default=None, help="directory for niah.{json,md,txt,png}")
    a = p.parse_args(argv)
    frames, depths = parse_grid(a.frames, a.depths)
    if a.haystack is not None and not Path(a.haystack).is_file():
        raise FileNotFoundError(f"--haystack {a.haystack}: no such video file")
    if a.needles < 1:
        raise ValueError(f"--needles must be ≥ 1, got {a.needles}")
    ParallelLayout(a.ulysses * a.ring, a.ulysses, a.ring)  # validates U and R
    if a.weights is not None and "://" not in a.weights:
        a.weights = f"file://{Path(a.weights).resolve()}"  # a local checkpoint directory
    spec = NiahSpec(
        preset=a.preset, frames=frames, depths=depths, ulysses=a.ulysses, ring=a.ring, kind=a.layout,
        needles=a.needles, seed=a.seed, size=a.size, tokenizer=a.tokenizer, haystack=a.haystack,
        weights=a.weights,
    )  # fmt: skip
    return spec, a.out


def main(argv: Sequence[str] | None = None) -> int:
    try:
        spec, out = parse_args(argv)
        if spec.weights is not None:
            checkpoint_model(spec.weights)  # fail before spawning anything
        if all(k in os.environ for k in TORCHRUN_ENV):
            dist.init_process_group("gloo")
            try:
                cells = worker(dist.get_rank(), dist.get_world_size(), spec)
                lead = dist.get_rank() == 0
            finally:
                dist.destroy_process_group()
        else:
            cells, lead = run(spec), True
    except (ValueError, FileNotFoundError, CheckpointNotFoundError, StorageError, ManifestError) as e:
        print(f"error: {e}".splitlines()[0], file=sys.stderr)
        return 2
    if lead:
        print(write_report(cells, out, title=f"NIAH {spec.preset} U={spec.ulysses} R={spec.ring}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
