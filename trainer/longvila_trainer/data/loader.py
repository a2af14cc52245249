"""The deterministic, resumable loader: one PackedBatch per call, per data-parallel rank.

The sample stream is a fixed function of (seed, epoch): each epoch is a seeded permutation
of the dataset. Every rank walks the same stream and packs it the same way (metadata
only, cheap); a round of `dp_size` consecutive packs feeds one micro-step of all DP
groups, and DP rank d takes (and decodes) pack d of the round. So every rank of an SP
group (same dp rank) gets the same batch, and DP groups get different ones.

The state is where the next round starts: (epoch, cursor into the epoch's order), plus
the seed and dataset size to catch a resume against different data. It is the same on
every rank and does not depend on dp_size, so a resume after a node is lost (smaller
dp) continues the same stream, neither repeating nor skipping a sample. A round that the
rest of the epoch cannot fill is dropped (drop_last) and the next epoch begins.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from longvila_contract.config import SyntheticConfig, TrainerConfig
from longvila_contract.stages import SHORT_MIX_SOURCE, STAGE_TABLE
from longvila_contract.stages import stage_type as stage_table_entry
from longvila_contract.uri import SCHEMES, URI, local_path, parse_uri

from ..model.longvila import PackedBatch
from .packing import build_packed_batch, expanded_length, next_pack
from .samples import LongShortMix, MediaRef, Sample, open_dataset, pixels_of
from .synthetic import MANIFEST, generate
from .tokenizer import TextCodec

DEFAULT_FRAMES = 8  # VILA's num_video_frames default, when the stage sets none


class PackedLoader(Iterator[PackedBatch]):
    def __init__(
        self,
        samples: Sequence[Sample],
        *,
        budget: int,
        tokens_per_frame: int,
        pixels: Callable[[MediaRef], torch.Tensor],
        dp_rank: int = 0,
        dp_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        if not len(samples):
            raise ValueError("the dataset is empty")
        self.samples, self.budget, self.tokens_per_frame = samples, budget, tokens_per_frame
        self.pixels, self.dp_rank, self.dp_size = pixels, dp_rank, dp_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.cursor, self.rounds = 0, 0, 0
        self._lengths: dict[int, int] = {}  # sample index → expanded length
        self._order_epoch, self._order = -1, np.arange(0)

    # -- the stream ---------------------------------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """Sample indices of `epoch`, in stream order."""
        if epoch != self._order_epoch:
            n = len(self.samples)
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def length(self, index: int) -> int:
        if index not in self._lengths:
            self._lengths[index] = expanded_length(self.samples[index], self.tokens_per_frame)
        return self._lengths[index]

    def _length_at(self, order: np.ndarray, position: int) -> int:
        return self.length(int(order[position]))

    def round_packs(self) -> tuple[int, int, list[range]]:
        """(epoch, cursor, packs) of the next round: `dp_size` packs of positions in that epoch."""
        epoch, cursor = self.epoch, self.cursor
        for _ in range(2):
            order = self.order(epoch)
            packs: list[range] = []
            start = cursor
            length_at = partial(self._length_at, order)
            while len(packs) < self.dp_size and start < len(order):
                end = next_pack(length_at, start, len(order), self.budget)
                packs.append(range(start, end))
                start = end
            if len(packs) == self.dp_size:
                return epoch, cursor, packs
            epoch, cursor = epoch + 1, 0  # drop the short tail round, start the next epoch
        raise ValueError(
            f"one epoch of {len(self.samples)} samples packs into fewer than dp_size={self.dp_size} batches "
            f"of {self.budget} tokens"
        )

    def __next__(self) -> PackedBatch:
        epoch, _, packs = self.round_packs()
        order = self.order(epoch)
        mine = [self.samples[int(order[p])] for p in packs[self.dp_rank]]
        self.epoch, self.cursor, self.rounds = epoch, packs[-1].stop, self.rounds + 1
        return build_packed_batch(mine, self.pixels)

    def rounds_in_epoch(self, epoch: int = 0) -> int:
        """Rounds (micro-steps of every DP group) one epoch yields: sizes `max_steps: None`."""
        order, start, packs = self.order(epoch), 0, 0
        length_at = partial(self._length_at, order)
        while start < len(order):
            start, packs = next_pack(length_at, start, len(order), self.budget), packs + 1
        return packs // self.dp_size

    def peek_indices(self) -> list[int]:
        """Sample indices this rank's next batch will hold (for logs and tests); no state change."""
        epoch, _, packs = self.round_packs()
        return [int(self.order(epoch)[p]) for p in packs[self.dp_rank]]

    # -- checkpointing ------------------------------------------------------------------

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "rounds": self.rounds,
            "seed": self.seed,
            "n_samples": len(self.samples),
            "budget": self.budget,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continues from `state`; fails if it was saved over a different stream."""
        mine = self.state_dict()
        for key in ("seed", "n_samples", "budget"):
            if int(state[key]) != mine[key]:
                raise ValueError(
                    f"loader state has {key}={state[key]}, this loader {key}={mine[key]}: "
                    "a resume must read the same data with the same seed and budget"
                )
        self.epoch, self.cursor, self.rounds = int(state["epoch"]), int(state["cursor"]), int(state["rounds"])


# -- from the config ------------------------------------------------------------------------


def data_root(
    uri: str,
    cache_dir: Path,
    synthetic: SyntheticConfig,
    codec: TextCodec,
    fetch: Callable[[URI], Path] | None = None,
) -> Path:
    """The local directory of dataset `uri`: file:///dir as is, synthetic:// generated
    once into `cache_dir` (atomically: several ranks may race), s3:// copied by `fetch`."""
    u = parse_uri(uri, "data.uri", SCHEMES) if not uri.startswith("/") else uri
    if isinstance(u, URI) and u.scheme == "synthetic":
        name, s = u.prefix, synthetic
        root = cache_dir / f"{name}-s{s.seed}-n{s.samples}-f{s.video_frames}-p{s.size}-t{s.text_tokens}"
        if not (root / MANIFEST).is_file():
            tmp = cache_dir / f"{root.name}.tmp-{os.getpid()}"
            generate(
                name,
                tmp,
                samples=s.samples,
                seed=s.seed,
                frames=s.video_frames,
                size=s.size,
                codec=codec,
                text_tokens=s.text_tokens,
            )
            try:
                tmp.rename(root)
            except OSError:  # another rank won the race; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        return root
    return local_path(u, fetch, "data.uri")


def open_stage_data(
    cfg: TrainerConfig, codec: TextCodec, cache_dir: Path, fetch: Callable[[URI], Path] | None = None
) -> Sequence[Sample]:
    """The stage's samples: its dataset, plus the short mix for long-video SFT."""
    stage_type = cfg.stage.type
    frames, budget = cfg.train.frames or DEFAULT_FRAMES, cfg.train.budget
    root = data_root(cfg.data.uri, cache_dir, cfg.data.synthetic, codec, fetch)
    main = open_dataset(root, stage_type, codec, frames, max_tokens=budget)
    if cfg.data.short_fraction <= 0:
        return main
    if not stage_table_entry(stage_type).short_mix:
        mixing = [t.name for t in STAGE_TABLE if t.short_mix]
        raise ValueError(
            f"data.short_fraction: long-short mixing is for {', '.join(mixing)}, not {stage_type}"
        )
    short_root = data_root(cfg.data.short_uri, cache_dir, cfg.data.synthetic, codec, fetch)
    short = open_dataset(short_root, SHORT_MIX_SOURCE, codec, cfg.data.short_frames, max_tokens=budget)
    return LongShortMix(main, short, cfg.data.short_fraction, cfg.train.seed)


def build_loader(
    cfg: TrainerConfig,
    samples: Sequence[Sample],
    *,
    tokens_per_frame: int,
    image_size: int,
    dp_rank: int,
    dp_size: int,
) -> PackedLoader:
    """The loader of this DP rank; `image_size` is the tower's unless data.image_size is set."""
    return PackedLoader(
        samples,
        budget=cfg.train.budget,
        tokens_per_frame=tokens_per_frame,
        pixels=partial(pixels_of, size=cfg.data.image_size or image_size),
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=cfg.train.seed,
        shuffle=cfg.data.shuffle,
    )
