"""The loader: same batch across an SP group, different across DP, exact resume, epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from longvila_contract.config import load_preset
from longvila_contract.model import tokens_per_frame
from longvila_trainer.data.loader import PackedLoader, build_loader, open_stage_data
from longvila_trainer.data.media import MediaCache, MediaReader
from longvila_trainer.data.samples import MediaRef, Sample
from longvila_trainer.data.tokenizer import load_tokenizer

N = 40


def dataset(n: int = N) -> list[Sample]:
    """Sample i holds the token i + 1 (so batches name their samples), 3..30 tokens long."""
    lengths = np.random.default_rng(1).integers(3, 31, n)
    return [Sample((i + 1,) * int(k), (i + 1,) * int(k), ()) for i, k in enumerate(lengths)]


def no_pixels(ref: MediaRef) -> torch.Tensor:
    raise AssertionError("text-only data")


def loader(
    dp_rank: int = 0, dp_size: int = 1, seed: int = 0, samples: list[Sample] | None = None
) -> PackedLoader:
    return PackedLoader(
        samples or dataset(),
        budget=64,
        tokens_per_frame=4,
        pixels=no_pixels,
        dp_rank=dp_rank,
        dp_size=dp_size,
        seed=seed,
    )


def ids_of(batch_ids: torch.Tensor, doc_lens: tuple[int, ...]) -> list[int]:
    starts = np.cumsum((0, *doc_lens[:-1]))
    return [int(batch_ids[s]) - 1 for s in starts]


def take(ld: PackedLoader, k: int) -> list[list[int]]:
    out = []
    for _ in range(k):
        b = next(ld)
        assert b.input_ids.numel() <= 64
        out.append(ids_of(b.input_ids, b.doc_lens))
    return out


def test_resume_yields_exactly_the_remaining_batches() -> None:
    full = take(loader(), 25)  # crosses epoch boundaries (~14 batches per epoch)
    for k in (0, 1, 7, 13, 14, 20):
        first = loader()
        assert take(first, k) == full[:k]
        state = first.state_dict()
        resumed = loader()
        resumed.load_state_dict(state)
        assert take(resumed, 25 - k) == full[k:]


def test_every_epoch_is_a_permutation_and_epochs_differ() -> None:
    ld = loader()
    by_epoch: dict[int, list[int]] = {}
    for _ in range(60):
        epoch = ld.round_packs()[0]
        by_epoch.setdefault(epoch, []).extend(take(ld, 1)[0])
    complete = [by_epoch[e] for e in sorted(by_epoch)[:-1]]
    assert len(complete) >= 2
    for e, seen in enumerate(complete):
        assert len(seen) == len(set(seen)) and seen == [int(i) for i in ld.order(e)[: len(seen)]]
        assert len(seen) > N - 31  # only the last pack's worth may be dropped (drop_last)
    assert complete[0] != complete[1]
    assert take(loader(seed=1), 3) != take(loader(seed=0), 3)


def test_dp_ranks_split_the_stream_and_sp_ranks_agree() -> None:
    single = take(loader(), 12)
    ranks = [loader(dp_rank=d, dp_size=2) for d in range(2)]
    per_rank = [take(r, 6) for r in ranks]
    # round r of dp = 2 holds packs 2r and 2r + 1 of the same stream
    assert [b for pair in zip(*per_rank, strict=True) for b in pair] == single
    assert not {i for b in per_rank[0] for i in b} & {i for b in per_rank[1] for i in b}
    # two ranks of one SP group (same dp rank) get the identical batch
    a, b = next(loader(1, 2)), next(loader(1, 2))
    assert (
        torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels) and a.doc_lens == b.doc_lens
    )


def test_resume_on_a_smaller_dp_neither_repeats_nor_skips() -> None:
    big = [loader(d, 4) for d in range(4)]
    seen = [ids for _ in range(2) for r in big for ids in take(r, 1)]  # two rounds = 8 packs
    small = loader(0, 1)
    small.load_state_dict(big[0].state_dict())
    seen += take(small, 3)
    assert seen == take(loader(), 11)


def test_state_from_other_data_is_refused() -> None:
    state = loader().state_dict()
    with pytest.raises(ValueError, match="n_samples=40, this loader n_samples=39"):
        loader(samples=dataset(39)).load_state_dict(state)
    with pytest.raises(ValueError, match="seed=0, this loader seed=3"):
        loader(seed=3).load_state_dict(state)


def test_dataset_too_small_for_dp() -> None:
    with pytest.raises(ValueError, match="fewer than dp_size=64 batches"):
        next(loader(0, 64))


def test_tiny_stage_batch_runs_through_the_model(tmp_path: Path) -> None:
    from longvila_trainer.model.longvila import build_longvila
    from longvila_trainer.model.presets import TINY
    from longvila_trainer.parallel.groups import single_process_groups

    cfg = load_preset("tiny-long-video-sft")
    codec = load_tokenizer(cfg.model.tokenizer)
    reader = MediaReader(MediaCache(tmp_path / "media", 1 << 20))
    samples = open_stage_data(cfg, codec, tmp_path, reader)
    assert len(samples) == 16 + 5  # long-short joint: 25% short
    tpf = tokens_per_frame(TINY.vision["image_size"], TINY.vision["patch_size"])
    ld = build_loader(
        cfg, samples, tokens_per_frame=tpf, image_size=TINY.vision["image_size"], dp_rank=0, dp_size=1,
        reader=reader,
    )  # fmt: skip
    batch = next(ld)
    n_media = int((batch.input_ids == TINY.media_token_id).sum())
    assert n_media == len(batch.frames) > 0
    assert batch.input_ids.numel() + n_media * (tpf - 1) <= cfg.train.budget
    parts = build_longvila(TINY, seed=0)(batch, single_process_groups())
    assert torch.isfinite(parts.loss) and parts.n_targets > 0


def test_rounds_in_epoch_counts_what_an_epoch_yields() -> None:
    for dp in (1, 2, 3):
        ld = loader(0, dp)
        n = ld.rounds_in_epoch(0)
        take(ld, n)
        assert ld.epoch == 0 and ld.round_packs()[0] == 1
