"""Tiny pretrained weights for the demo: the tiny model taught to find the NIAH needle.

    python -m longvila_localcluster.tiny_needle OUT [--steps N] [--seed S]

The demo starts from these as a user starts from a released VILA checkpoint: they are
written in VILA's layout (`model.vila.save_vila`), put on S3 and imported with
`longvila-import`. A random tiny model answers the needle question at chance, and the
demo's job trains for seconds, so the retrieval is learnt here: in this one process, on
needle cases built exactly as the eval builds them (`eval.needle.build_case`, haystacks of
up to `max_frames // 2` frames, then up to `max_frames`, the needle at a random depth, a
random one of its five colors), with AdamW, a warmup and a cosine decay: ~100 steps find it
in haystacks of 8 frames, the longer ones follow (on this 2-core CPU, ~0.2 s a step when
idle, a few times that under load). The RoPE base is the demo job's (1e5), so context extension
keeps it.

The demo caches the result under ~/.cache/longvila/demo (keyed by these settings), so only
a machine's first demo pays for it; the time is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from longvila_trainer.data.synthetic import haystack_frames, make_needle
from longvila_trainer.data.tokenizer import TextCodec, load_tokenizer
from longvila_trainer.eval.needle import build_case, judge
from longvila_trainer.eval.prefill import prefill
from longvila_trainer.model.longvila import LongVILA, PackedBatch, build_longvila
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.vila import save_vila
from longvila_trainer.parallel.groups import single_process_groups


@dataclass(frozen=True)
class Recipe:
    steps: int = 260
    cases: int = 6  # needle cases per step, one packed sequence
    lr: float = 3e-3
    warmup: int = 20
    max_frames: int = 16  # longest haystack (the demo's NIAH table goes to 16)
    short_steps: int = 140  # first steps on haystacks of at most max_frames // 2: found there first
    rope_theta: float = 1e5
    seed: int = 0

    def key(self) -> str:
        """What the demo's cache is keyed by."""
        return "tiny-needle-" + "-".join(f"{v}" for v in dataclasses.astuple(self))


def packed_cases(
    codec: TextCodec, rng: np.random.Generator, n: int, max_frames: int, size: int
) -> PackedBatch:
    """`n` needle cases as one packed batch of documents (labels on the answers)."""
    ids: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    lens: list[int] = []
    frames: list[torch.Tensor] = []  # [3, H, W] per placeholder
    for _ in range(n):
        hay = haystack_frames(int(rng.integers(1 << 30)), int(rng.integers(0, max_frames + 1)), size)
        case = build_case(
            codec, hay, make_needle(int(rng.integers(1 << 30)), size), float(rng.random()), size
        )
        ids.append(case.batch.input_ids)
        labels.append(case.batch.labels)
        lens += case.batch.doc_lens
        frames += case.batch.frames
    return PackedBatch(torch.cat(ids), torch.cat(labels), tuple(lens), tuple(frames))


def accuracy(model: LongVILA, codec: TextCodec, frames: int, needles: int = 5) -> float:
    """The eval's exact-match score at one haystack length, depths 0 and 1."""
    size, correct = int(TINY.vision["image_size"]), 0
    model.eval()
    for v in range(needles):
        for depth in (0.0, 1.0):
            case = build_case(codec, haystack_frames(v, frames, size), make_needle(v, size), depth, size)
            out = prefill(model, case.batch, single_process_groups(), "zigzag")
            correct += judge(codec, case, out.argmax().tolist()).correct
    return correct / (2 * needles)


def pretrain(r: Recipe, say: Callable[[str], None] = print) -> tuple[LongVILA, TextCodec]:
    preset = dataclasses.replace(TINY, llm={**TINY.llm, "rope_theta": r.rope_theta})
    model, codec = build_longvila(preset, seed=r.seed), load_tokenizer("tiny")
    groups, size = single_process_groups(), int(TINY.vision["image_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.0)
    rng = np.random.default_rng([r.seed, 13])
    t0 = time.monotonic()
    for step in range(r.steps):
        warm = min(1.0, (step + 1) / r.warmup)
        decay = 0.5 * (1 + math.cos(math.pi * step / r.steps))
        for g in opt.param_groups:
            g["lr"] = r.lr * warm * max(decay, 0.1)
        model.train()
        opt.zero_grad(set_to_none=True)
        longest = r.max_frames // 2 if step < r.short_steps else r.max_frames
        parts = model(packed_cases(codec, rng, r.cases, longest, size), groups)
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 40 == 0 or step + 1 == r.steps:
            score = accuracy(model, codec, r.max_frames)
            say(f"step {step + 1}/{r.steps}  loss {float(parts.loss.detach()):.3f}  needle found {score:.0%} "
                f"at {r.max_frames} frames  {time.monotonic() - t0:.0f}s")  # fmt: skip
    return model.eval(), codec


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m longvila_localcluster.tiny_needle", description=__doc__.split("\n")[0]
    )
    ap.add_argument("out", type=Path, help="directory for the VILA-layout checkpoint")
    ap.add_argument("--steps", type=int, default=Recipe.steps)
    ap.add_argument("--seed", type=int, default=Recipe.seed)
    a = ap.parse_args(argv)
    model, codec = pretrain(Recipe(steps=a.steps, seed=a.seed), say=lambda m: print(m, flush=True))
    print(save_vila(model, codec, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
