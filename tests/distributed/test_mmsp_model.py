"""MM-SP end to end on a tiny LongVILA: loss and every parameter gradient under SP = 2, 4, 8
equal SP = 1, and SP = 1 equals the plain per-document Hugging Face computation.

Each world size is spawned once (gloo on CPU) and loops over its layouts, both token
layouts and two batches inside the workers. Every worker builds the same seeded model and
computes the SP = 1 reference itself, so only error summaries travel back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed as dist
from longvila_contract.layout import ParallelLayout
from longvila_trainer.model.longvila import LongVILA, PackedBatch, build_longvila
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.projector import Projector, downsample_2x2
from longvila_trainer.model.vision import VisionTower
from longvila_trainer.parallel.groups import build_groups, single_process_groups
from longvila_trainer.parallel.spawn import run_gloo
from longvila_trainer.sharding.frames import IGNORE_INDEX
from longvila_trainer.sharding.targets import gradient_group, sum_gradients
from transformers import SiglipVisionConfig, SiglipVisionModel

pytestmark = pytest.mark.distributed

RTOL = 1e-5  # relative to the largest entry of each reference gradient
ATOL = 1e-8  # for gradients that are zero in exact arithmetic (e.g. attention key biases)

# (ulysses, ring) per world size: U-only, R-only and 2D; U = 4 > 2 KV heads replicates KV.
LAYOUTS: dict[int, list[tuple[int, int]]] = {
    2: [(2, 1), (1, 2)],
    4: [(2, 2), (4, 1), (1, 4)],
    8: [(4, 2), (2, 4), (1, 8)],
}
KINDS = ("zigzag", "contiguous")


def _batch(docs: list[tuple[list[int], list[int]]], frames: list[torch.Tensor]) -> PackedBatch:
    ids = torch.tensor([t for d, _ in docs for t in d])
    labels = torch.tensor([t for _, lab in docs for t in lab])
    return PackedBatch(ids, labels, tuple(len(d) for d, _ in docs), tuple(frames))


def mixed_batch(seed: int = 1) -> PackedBatch:
    """Video + question/answer, a text-only document, and a non-square image (6 tokens)."""
    g = torch.Generator().manual_seed(seed)
    m = TINY.media_token_id

    def text(n: int) -> list[int]:
        return torch.randint(0, m, (n,), generator=g).tolist()

    video_q, video_a = [*text(3), *[m] * 5, *text(2)], text(6)
    plain = text(11)
    image_q, image_a = [m, *text(4)], text(3)
    frames = [torch.randn(3, 56, 56, generator=g) for _ in range(5)]  # 4×4 grid → 4 tokens each
    frames.append(torch.randn(3, 42, 70, generator=g))  # 3×5 grid, padded → 2×3 = 6 tokens
    return _batch(
        [
            (video_q + video_a, [IGNORE_INDEX] * len(video_q) + video_a),
            (plain, plain),
            (image_q + image_a, [IGNORE_INDEX] * len(image_q) + image_a),
        ],
        frames,
    )


def long_video_batch(seed: int = 2) -> PackedBatch:
    """One long video with a 3-token answer: its targets sit in one shard, the others have none."""
    g = torch.Generator().manual_seed(seed)
    m = TINY.media_token_id
    prompt = [*torch.randint(0, m, (2,), generator=g).tolist(), *[m] * 12, 7]
    answer = torch.randint(0, m, (3,), generator=g).tolist()
    frames = [torch.randn(3, 56, 56, generator=g) for _ in range(12)]
    return _batch([(prompt + answer, [IGNORE_INDEX] * len(prompt) + answer)], frames)


def grads(model: LongVILA) -> dict[str, torch.Tensor]:
    return {
        k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for k, p in model.named_parameters()
    }


def worst_error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> tuple[float, str, bool]:
    """Largest |Δ| / max|ref| over parameters with a non-negligible gradient, its name, and pass/fail."""
    worst, name, ok = 0.0, "", True
    for k, r in ref.items():
        diff = float((got[k] - r).abs().max())
        scale = float(r.abs().max())
        ok &= diff <= RTOL * scale + ATOL
        if scale > 1e-6 and diff / scale > worst:
            worst, name = diff / scale, k
    return worst, name, ok


def sp1_reference(model: LongVILA, batch: PackedBatch) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    parts = model(batch, single_process_groups(), "contiguous")
    parts.loss.backward()
    return float(parts.loss.detach()), grads(model)


def _check_layouts(rank: int, world: int, layouts: list[tuple[int, int]]) -> list[dict[str, Any]]:
    torch.manual_seed(1234 + rank)  # any use of the global RNG would differ per rank and show up
    model = build_longvila(TINY, seed=0)
    batches = {"mixed": mixed_batch(), "long_video": long_video_batch()}
    refs = {name: sp1_reference(model, b) for name, b in batches.items()}
    rows = []
    for ulysses, ring in layouts:
        groups = build_groups(ParallelLayout(world, ulysses, ring), check_hosts=False)
        for kind in KINDS:
            for name, batch in batches.items():
                model.zero_grad(set_to_none=True)
                parts = model(batch, groups, kind)
                parts.loss.backward()
                sum_gradients(model.parameters(), gradient_group(groups))
                total = parts.loss.detach().clone()
                dist.all_reduce(total, group=groups.sp.pg)
                ref_loss, ref_grads = refs[name]
                worst, param, ok = worst_error(grads(model), ref_grads)
                rows.append(
                    {
                        "layout": (ulysses, ring, kind, name),
                        "loss_err": abs(float(total) - ref_loss) / abs(ref_loss),
                        "grad_err": worst,
                        "grad_param": param,
                        "grad_ok": ok,
                        "n_local": parts.n_local,
                        "local_loss": float(parts.loss_sum.detach()),
                    }
                )
    return rows


def _check_dp(rank: int, world: int) -> dict[str, Any]:
    """dp = 2 × (U, R) = (2, 1): two SP groups train different batches; one global mean."""
    model = build_longvila(TINY, seed=0)
    batches = [mixed_batch(), long_video_batch()]
    model.zero_grad(set_to_none=True)
    parts = [model(b, single_process_groups(), "contiguous") for b in batches]
    n_all = sum(p.n_targets for p in parts)
    ref_loss = sum(p.loss_sum for p in parts) / n_all
    ref_loss.backward()
    ref = grads(model)

    groups = build_groups(ParallelLayout(world, ulysses=2, ring=1), check_hosts=False)
    model.zero_grad(set_to_none=True)
    mine = model(batches[groups.dp_rank], groups, "zigzag")
    mine.loss.backward()
    sum_gradients(model.parameters(), gradient_group(groups))
    total = mine.loss.detach().clone()
    dist.all_reduce(total)
    worst, param, ok = worst_error(grads(model), ref)
    return {
        "n_targets": mine.n_targets,
        "n_all": n_all,
        "loss_err": abs(float(total) - float(ref_loss.detach())) / float(ref_loss.detach()),
        "grad_err": worst,
        "grad_param": param,
        "grad_ok": ok,
    }


DP_WORLD = 4  # the world-4 spawn also checks dp = 2 × (U, R) = (2, 1)


def _worker(rank: int, world: int, layouts: list[tuple[int, int]], with_dp: bool) -> dict[str, Any]:
    rows = _check_layouts(rank, world, layouts)
    return {"rows": rows, "dp": _check_dp(rank, world) if with_dp else None}


@pytest.fixture(scope="module")
def spawned() -> Callable[[int], list[dict[str, Any]]]:
    """Spawns each world size once per module; results by rank."""
    cache: dict[int, list[dict[str, Any]]] = {}

    def get(world: int) -> list[dict[str, Any]]:
        if world not in cache:
            cache[world] = run_gloo(_worker, world, LAYOUTS[world], world == DP_WORLD)
        return cache[world]

    return get


def _report(world: int, rows_by_rank: list[list[dict[str, Any]]]) -> None:
    for row in rows_by_rank[0]:
        print(f"world {world} {row['layout']}: loss {row['loss_err']:.1e}, grad {row['grad_err']:.1e}")


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_sp_equals_sp1(world: int, spawned: Callable[[int], list[dict[str, Any]]]) -> None:
    rows_by_rank = [r["rows"] for r in spawned(world)]
    _report(world, rows_by_rank)
    for rank, rows in enumerate(rows_by_rank):
        assert len(rows) == len(LAYOUTS[world]) * len(KINDS) * 2
        for row in rows:
            where = f"rank {rank} {row['layout']}"
            assert row["loss_err"] < 1e-5, f"{where}: loss rel err {row['loss_err']:.2e}"
            assert row["grad_ok"], f"{where}: {row['grad_param']} grad rel err {row['grad_err']:.2e}"
            assert torch.isfinite(torch.tensor(row["local_loss"])), where
            if row["n_local"] == 0:
                assert row["local_loss"] == 0.0, f"{where}: empty shard loss {row['local_loss']}"
    # The long-video batch must really leave shards without targets (else the test is moot).
    for ulysses, ring in LAYOUTS[world]:
        for kind in KINDS:
            key = (ulysses, ring, kind, "long_video")
            empty = sum(1 for rows in rows_by_rank for r in rows if r["layout"] == key and r["n_local"] == 0)
            assert empty >= 1, f"{key}: every shard has targets"


def test_dp_groups_share_one_mean(spawned: Callable[[int], list[dict[str, Any]]]) -> None:
    results = [r["dp"] for r in spawned(DP_WORLD)]
    for rank, r in enumerate(results):
        assert r["n_targets"] == r["n_all"], f"rank {rank}: count {r['n_targets']} != {r['n_all']}"
        assert r["loss_err"] < 1e-5, f"rank {rank}: loss rel err {r['loss_err']:.2e}"
        assert r["grad_ok"], f"rank {rank}: {r['grad_param']} grad rel err {r['grad_err']:.2e}"


def plain_hf_loss(model: LongVILA, batch: PackedBatch) -> torch.Tensor:
    """VILA-style reference: splice every frame into its document, run each document through
    the stock Qwen2ForCausalLM with eager attention and HF's own shifted loss."""
    rows, counts = model.encode(batch.frames)
    per_frame = iter(rows.split(counts))
    embed = model.llm.get_input_embeddings()
    docs = []
    for ids, labels in zip(
        batch.input_ids.split(batch.doc_lens), batch.labels.split(batch.doc_lens), strict=True
    ):
        pieces, doc_labels = [], []
        for tok, lab in zip(ids.tolist(), labels.tolist(), strict=True):
            if tok == model.media_token_id:
                frame = next(per_frame)
                pieces.append(frame)
                doc_labels += [IGNORE_INDEX] * frame.shape[0]
            else:
                pieces.append(embed(torch.tensor([tok])))
                doc_labels.append(lab)
        docs.append((torch.cat(pieces), torch.tensor(doc_labels)))
    n_items = sum(int((lab[1:] != IGNORE_INDEX).sum()) for _, lab in docs)
    impl = model.llm.config._attn_implementation
    model.llm.set_attn_implementation("eager")
    try:
        losses = [
            model.llm(inputs_embeds=e[None], labels=lab[None], num_items_in_batch=n_items).loss
            for e, lab in docs
        ]
    finally:
        model.llm.set_attn_implementation(impl)
    return torch.stack(losses).sum()


@pytest.mark.parametrize("batch_fn", [mixed_batch, long_video_batch])
@pytest.mark.parametrize("kind", KINDS)
def test_sp1_equals_plain_hf(batch_fn: Any, kind: str) -> None:
    model = build_longvila(TINY, seed=0)
    batch = batch_fn()
    ref = plain_hf_loss(model, batch)
    ref.backward()
    ref_grads = grads(model)
    model.zero_grad(set_to_none=True)
    parts = model(batch, single_process_groups(), kind)  # type: ignore[arg-type]
    parts.loss.backward()
    assert abs(float(parts.loss.detach()) - float(ref.detach())) <= 1e-6 * abs(float(ref.detach()))
    worst, param, ok = worst_error(grads(model), ref_grads)
    assert ok, f"{param}: grad rel err {worst:.2e}"
    assert all(p.grad is not None for p in model.parameters()), "a parameter got no gradient"


def test_vision_tower_reads_vila_feature_layer() -> None:
    """Truncated tower output == hidden_states[-2] of the full SigLIP, for a non-square frame."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        full = SiglipVisionModel(SiglipVisionConfig(**TINY.vision))
    frames = torch.randn(2, 3, 42, 70)
    out = full(pixel_values=frames, output_hidden_states=True, interpolate_pos_encoding=True)
    want = out.hidden_states[-2]
    tower = VisionTower(full, select_layer=-2)  # truncates `full` in place
    assert len(tower.model.encoder.layers) == TINY.vision["num_hidden_layers"] - 1
    assert torch.equal(tower(frames), want)


def test_projector_pads_odd_grids_and_merges_2x2_blocks() -> None:
    feats = torch.arange(15.0).view(1, 15, 1)  # a 3×5 grid, one channel: value = row·5 + col
    merged = downsample_2x2(feats, (3, 5))  # padded to 4×6 → 2×3 tokens of 4 channels
    assert merged.shape == (1, 6, 4)
    assert merged[0, 0].tolist() == [0.0, 1.0, 5.0, 6.0]  # top-left block, row-major inside
    assert merged[0, 5].tolist() == [14.0, 0.0, 0.0, 0.0]  # bottom-right: padding is zero
    out = Projector(8, 16)(torch.randn(2, 27 * 27, 8), (27, 27))
    assert out.shape == (2, 196, 16)  # SigLIP-384 grid → 196 tokens per frame, as in LongVILA


def test_usp_attention_needs_the_sp_context() -> None:
    model = build_longvila(TINY, seed=0)
    with pytest.raises(TypeError, match="mmsp_context"):
        model.llm(inputs_embeds=torch.randn(1, 4, TINY.llm["hidden_size"]))
