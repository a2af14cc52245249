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

A sample whose media cannot be read (missing, corrupt, undecodable) is skipped: it is
replaced in its pack by the first following sample of the epoch's order that fits the
pack's room and decodes (at most `SUBSTITUTES` tries), else dropped from the pack. Every
rank of an SP group meets the same failures (same files), so they keep the same batch; the
loader's state does not change, so a resume is still exact. Skips are counted
(`skipped`, `attempted`) and logged; train.py sums them over the job every step and fails
the stage past `data.max_skipped_fraction` (`skip_problem`). A store that is down (a
transient StorageError after its retries) is not the sample's fault: it propagates, and the
run exits 'unavailable' to be restarted (longvila_contract.exits).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from longvila_contract.config import TrainerConfig
from longvila_contract.stages import SHORT_MIX_SOURCE, STAGE_TABLE
from longvila_contract.stages import stage_type as stage_table_entry

from ..checkpoint.s3 import StorageError
from ..model.longvila import PackedBatch
from ..parallel import comm
from ..parallel.comm import Group
from .media import MediaReader
from .packing import assemble, decode_sample, expanded_length, next_pack
from .samples import LongShortMix, MediaRef, Sample, open_dataset, pixels_of
from .sources import open_source
from .tokenizer import TextCodec

DEFAULT_FRAMES = 8  # VILA's num_video_frames default, when the stage sets none
SUBSTITUTES = 16  # samples tried in place of one whose media cannot be read
MEDIA_ERRORS = (OSError, ValueError, av.FFmpegError, StorageError)
MIN_ATTEMPTS = 100  # the skip fraction is judged over at least this many samples


class DataError(ValueError):
    """The stage's data cannot be trained on; one line naming the setting or the sample."""


def skip_counts(loader: PackedLoader, sp: int, host: Group | None) -> tuple[int, int]:
    """(skipped, attempted) over the whole job: every rank of an SP group counts its batch's once.
    `host`: the world's host (gloo) group, None for one process."""
    skipped, attempted = comm.host_all_reduce([loader.skipped, loader.attempted], host)
    return round(skipped / sp), round(attempted / sp)


def skip_problem(skipped: int, attempted: int, fraction: float, last: str) -> str | None:
    """Why the stage must stop, or None: more samples skipped than `fraction` allows."""
    if skipped <= fraction * max(attempted, MIN_ATTEMPTS):
        return None
    return (
        f"data: {skipped} of {attempted} samples skipped for unreadable media, more than "
        f"data.max_skipped_fraction={fraction:g} allows; "
        + (f"last: {last}" if last else "the warnings in the pods' logs name them")
    )


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
        warn: Callable[[str], None] | None = None,
    ) -> None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank {dp_rank} outside [0, {dp_size})")
        if not len(samples):
            raise ValueError("the dataset is empty")
        self.samples, self.budget, self.tokens_per_frame = samples, budget, tokens_per_frame
        self.pixels, self.dp_rank, self.dp_size = pixels, dp_rank, dp_size
        self.seed, self.shuffle, self.warn = seed, shuffle, warn
        self.epoch, self.cursor, self.rounds = 0, 0, 0
        self.attempted, self.skipped, self.last_failure = 0, 0, ""  # this process's, not resumed
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
        self.epoch, self.cursor, self.rounds = epoch, packs[-1].stop, self.rounds + 1
        return self._build(order, packs[self.dp_rank])

    def _decode(self, index: int) -> tuple[Sample, list[torch.Tensor]] | None:
        sample = self.samples[index]
        self.attempted += 1
        try:
            return sample, decode_sample(sample, self.pixels)
        except MEDIA_ERRORS as err:
            if isinstance(err, StorageError) and err.transient:
                raise  # the store is down, not the sample: the run exits 'unavailable' and restarts
            self.skipped += 1
            where = ", ".join(ref.path for ref in sample.media) or "no media"
            self.last_failure = (
                f"sample {index} ({where}): {type(err).__name__}: {' '.join(str(err).split())}"
            )
            if self.warn is not None:
                self.warn(f"skipped {self.last_failure} [{self.skipped} of {self.attempted} so far]")
            return None

    def _build(self, order: np.ndarray, pack: range) -> PackedBatch:
        """The pack's samples decoded; a sample that cannot be read is replaced or dropped."""
        indices = [int(order[p]) for p in pack]
        room = self.budget - sum(self.length(i) for i in indices)
        got: list[tuple[Sample, list[torch.Tensor]]] = []
        for i in indices:
            one = self._decode(i)
            if one is None:
                room += self.length(i)
                one = self._substitute(order, pack.stop, room, set(indices))
                room -= 0 if one is None else expanded_length(one[0], self.tokens_per_frame)
            if one is not None:
                got.append(one)
        if not got:
            raise DataError(
                f"data: every sample of a packed batch failed to decode; last: {self.last_failure}"
            )
        return assemble([s for s, _ in got], [f for _, frames in got for f in frames])

    def _substitute(
        self, order: np.ndarray, start: int, room: int, used: set[int]
    ) -> tuple[Sample, list[torch.Tensor]] | None:
        """The first sample after position `start` (wrapping) that fits `room` and decodes."""
        for k in range(min(SUBSTITUTES, len(order))):
            i = int(order[(start + k) % len(order)])
            if i in used or self.length(i) > room:
                continue
            used.add(i)
            one = self._decode(i)
            if one is not None:
                return one
        return None

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


def open_stage_data(
    cfg: TrainerConfig, codec: TextCodec, cache_dir: Path, reader: MediaReader
) -> Sequence[Sample]:
    """The stage's samples: its dataset, plus the short mix for long-video SFT."""
    stage_type, d = cfg.stage.type, cfg.data
    frames, budget = cfg.train.frames or DEFAULT_FRAMES, cfg.train.budget

    def dataset(uri: str, field: str, kind: str, n_frames: int, root: str) -> Sequence[Sample]:
        ds = open_source(
            uri,
            field,
            root_setting=root,
            cache_dir=cache_dir,
            synthetic=d.synthetic,
            codec=codec,
            reader=reader,
        )
        return open_dataset(ds.records, ds.where, ds.root, kind, codec, n_frames, max_tokens=budget)

    main = dataset(d.uri, "data.uri", stage_type, frames, d.media_root)
    if d.short_fraction <= 0:
        return main
    if not stage_table_entry(stage_type).short_mix:
        mixing = [t.name for t in STAGE_TABLE if t.short_mix]
        raise ValueError(
            f"data.short_fraction: long-short mixing is for {', '.join(mixing)}, not {stage_type}"
        )
    short = dataset(d.short_uri, "data.short_uri", SHORT_MIX_SOURCE, d.short_frames, "")
    return LongShortMix(main, short, d.short_fraction, cfg.train.seed)


def describe_data(cfg: TrainerConfig, samples: Sequence[Sample]) -> str:
    """One line for the log: where the stage's samples come from and how many there are."""
    if isinstance(samples, LongShortMix):
        return (
            f"data {cfg.data.uri}: {len(samples.long)} samples; short mix {cfg.data.short_uri}: "
            f"{len(samples.pick)} drawn from {len(samples.short)}"
        )
    return f"data {cfg.data.uri}: {len(samples)} samples"


def build_loader(
    cfg: TrainerConfig,
    samples: Sequence[Sample],
    *,
    tokens_per_frame: int,
    image_size: int,
    dp_rank: int,
    dp_size: int,
    reader: MediaReader | None = None,
    warn: Callable[[str], None] | None = None,
) -> PackedLoader:
    """The loader of this DP rank; `image_size` is the tower's unless data.image_size is set."""
    return PackedLoader(
        samples,
        budget=cfg.train.budget,
        tokens_per_frame=tokens_per_frame,
        pixels=partial(pixels_of, size=cfg.data.image_size or image_size, reader=reader),
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=cfg.train.seed,
        shuffle=cfg.data.shuffle,
        warn=warn,
    )
