"""Two-stage sharding as pure metadata: frame split, placeholder expansion, shard round trip,
the stage-2 exchange simulated for all ranks in one process, global label shift and the
sharded loss, each compared with a straightforward unsharded computation."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from longvila_trainer.parallel.groups import single_process_groups
from longvila_trainer.parallel.token_layout import KINDS, TokenLayout, plan_tokens
from longvila_trainer.sharding.exchange import assemble_shard, exchange_rows, plan_shard
from longvila_trainer.sharding.frames import (
    IGNORE_INDEX,
    FusedSequence,
    expand_media,
    frame_runs,
    gather_frame_tokens,
    split_frames,
    tower_calls,
)
from longvila_trainer.sharding.targets import (
    count_targets,
    gradient_group,
    loss_sum,
    shard,
    shift_targets,
    sum_gradients,
    to_padded,
    unshard,
)

MEDIA = 99
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (4, 2), (2, 4), (1, 8), (8, 1)]


# ---- stage 1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_frames", [0, 1, 3, 7, 8, 13, 64])
@pytest.mark.parametrize("sp", [1, 2, 3, 4, 8])
def test_split_frames_is_contiguous_and_balanced(n_frames: int, sp: int) -> None:
    ranges = split_frames(n_frames, sp)
    assert len(ranges) == sp
    assert [f for r in ranges for f in r] == list(range(n_frames))  # contiguous, in order, complete
    sizes = [len(r) for r in ranges]
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the extra frames go to the first ranks


def test_tower_calls_count_runs_of_equal_frame_sizes_per_rank() -> None:
    a, b = (3, 56, 56), (3, 42, 70)
    assert frame_runs([]) == 0 and frame_runs([a, a, a]) == 1 and frame_runs([a, b, a]) == 3
    assert tower_calls([], 4) == 0
    assert tower_calls([a] * 5 + [b], 1) == 2  # one rank: two runs
    assert tower_calls([a] * 5 + [b], 2) == 2  # ranks 0 [a a a] and 1 [a a b]
    assert tower_calls([a] * 5 + [b], 4) == 1  # [a a] [a a] [a] [b]
    assert tower_calls([a, b], 8) == 1  # six ranks encode nothing but still call the tower once


def test_gather_frame_tokens_single_process_checks_counts() -> None:
    assert gather_frame_tokens([4, 6], 2, 1, None) == (4, 6)
    with pytest.raises(ValueError):
        gather_frame_tokens([4], 2, 1, None)


def test_expand_media_uses_each_frames_own_count() -> None:
    # doc 0: [5, M, M, 6], doc 1: [7, M, 8]; frames yield 2, 3 and 1 tokens.
    ids = torch.tensor([5, MEDIA, MEDIA, 6, 7, MEDIA, 8])
    labels = torch.tensor([IGNORE_INDEX, 0, 0, 6, IGNORE_INDEX, 0, 8])
    seq = expand_media(ids, labels, (4, 3), MEDIA, (2, 3, 1))
    assert seq.doc_lens == (7, 3)
    assert seq.token_ids.tolist() == [5, -1, -1, -1, -1, -1, 6, 7, -1, 8]
    assert seq.visual_row.tolist() == [-1, 0, 1, 2, 3, 4, -1, -1, 5, -1]
    assert seq.labels.tolist() == [IGNORE_INDEX] * 6 + [6, IGNORE_INDEX, IGNORE_INDEX, 8]
    assert seq.rows_by_rank(2) == [range(0, 5), range(5, 6)]  # frames 0-1 on rank 0, frame 2 on rank 1
    with pytest.raises(ValueError, match="placeholders"):
        expand_media(ids, labels, (4, 3), MEDIA, (2, 3))


# ---- fixtures: a random packed multimodal sequence ----------------------------------------


def random_sequence(seed: int) -> FusedSequence:
    """2–4 documents mixing text and frames of 1–5 tokens; about half the labels trained."""
    g = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    doc_lens = []
    for _ in range(int(torch.randint(2, 5, (1,), generator=g))):
        n = int(torch.randint(1, 12, (1,), generator=g))
        doc = torch.randint(0, 50, (n,), generator=g)
        doc[torch.rand(n, generator=g) < 0.3] = MEDIA
        ids += doc.tolist()
        doc_lens.append(n)
    input_ids = torch.tensor(ids)
    labels = torch.where(torch.rand(len(ids), generator=g) < 0.5, input_ids, IGNORE_INDEX)
    n_media = int((input_ids == MEDIA).sum())
    frame_tokens = torch.randint(1, 6, (n_media,), generator=g).tolist()
    return expand_media(input_ids, labels, tuple(doc_lens), MEDIA, tuple(frame_tokens))


def naive_targets(seq: FusedSequence) -> list[int]:
    """Per document, position t predicts the label at t + 1; nothing crosses a document."""
    out, start = [], 0
    for n in seq.doc_lens:
        doc = seq.labels[start : start + n].tolist()
        out += [*doc[1:], IGNORE_INDEX]
        start += n
    return out


CASES = list(itertools.product(range(6), LAYOUTS, KINDS))


# ---- shard round trip --------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "layout", "kind"), CASES)
def test_shard_then_unshard_is_identity(seed: int, layout: tuple[int, int], kind: str) -> None:
    seq = random_sequence(seed)
    tokens = plan_tokens(seq.doc_lens, *layout, kind)
    values = torch.randn(tokens.total, 3)
    shards = [shard(values, tokens, s) for s in range(tokens.sp)]
    assert all(part.shape == (tokens.shard_len, 3) for part in shards)
    assert torch.equal(unshard(shards, tokens), values)
    held = torch.cat([tokens.shard_index(s) for s in range(tokens.sp)]).sort().values
    assert torch.equal(held, torch.arange(tokens.total))  # every position on exactly one rank


# ---- stage 2: the exchange plan, all ranks simulated in one process ------------------------


def simulate_stage2(seq: FusedSequence, tokens: TokenLayout) -> list[torch.Tensor]:
    """Each rank's LLM input, with feature vectors that name their source: text id t → [t, 0],
    visual row v → [0, v + 1], padding → [0, 0]. The all-to-all is done by hand."""
    sp = tokens.sp
    plans = [plan_shard(seq, tokens, s) for s in range(sp)]
    for s, d in itertools.product(range(sp), repeat=2):
        assert plans[s].send_counts[d] == plans[d].recv_counts[s]
    assert sum(len(p.send_rows) for p in plans) == seq.n_visual  # every visual row sent once
    # Stage-1 output of rank s: its frames' rows, in order.
    encoded = [
        torch.stack([torch.zeros(len(r)), torch.arange(r.start, r.stop) + 1.0], 1)
        for r in seq.rows_by_rank(sp)
    ]
    sent = [
        exchange_rows(encoded[s], plans[s], None, False).split(list(plans[s].send_counts)) for s in range(sp)
    ]
    out = []
    for d, plan in enumerate(plans):
        received = torch.cat([sent[s][d] for s in range(sp)])
        text = torch.stack([plan.text_ids.float(), torch.zeros(len(plan.text_ids))], 1)
        out.append(assemble_shard(plan, text, received, 2))
    return out


@pytest.mark.parametrize(("seed", "layout", "kind"), CASES)
def test_exchange_places_every_row_where_the_layout_says(
    seed: int, layout: tuple[int, int], kind: str
) -> None:
    seq = random_sequence(seed)
    tokens = plan_tokens(seq.doc_lens, *layout, kind)
    got = unshard(simulate_stage2(seq, tokens), tokens)  # [total, 2]

    # Straightforward: the fused sequence, then padding appended to each document.
    fused = torch.stack(
        [
            torch.where(seq.token_ids >= 0, seq.token_ids, 0).float(),
            torch.where(seq.visual_row >= 0, seq.visual_row + 1, 0).float(),
        ],
        1,
    )
    assert torch.equal(got, to_padded(fused, tokens, 0.0))
    for s in range(tokens.sp):  # RoPE positions travel with the rows
        assert torch.equal(plan_shard(seq, tokens, s).position_ids, tokens.position[tokens.shard_index(s)])


def test_exchange_without_group_is_a_gather_with_gradient() -> None:
    seq = random_sequence(0)
    tokens = plan_tokens(seq.doc_lens, 1, 1, "contiguous")
    plan = plan_shard(seq, tokens, 0)
    rows = torch.randn(seq.n_visual, 4, requires_grad=True)
    exchange_rows(rows, plan, None, True).sum().backward()
    assert rows.grad is not None and torch.equal(rows.grad, torch.ones_like(rows))


# ---- targets -----------------------------------------------------------------------------


def test_shift_targets_stops_at_document_boundaries() -> None:
    labels = torch.tensor([10, 11, 12, 20, 21, IGNORE_INDEX, 31])
    assert shift_targets(labels, (3, 2, 2)).tolist() == [
        11,
        12,
        IGNORE_INDEX,
        21,
        IGNORE_INDEX,
        31,
        IGNORE_INDEX,
    ]


@pytest.mark.parametrize(("seed", "layout", "kind"), CASES)
def test_sharded_targets_equal_unsharded(seed: int, layout: tuple[int, int], kind: str) -> None:
    seq = random_sequence(seed)
    tokens = plan_tokens(seq.doc_lens, *layout, kind)
    expected = naive_targets(seq)
    targets = to_padded(shift_targets(seq.labels, seq.doc_lens), tokens, IGNORE_INDEX)
    seen = 0
    for s in range(tokens.sp):
        local = shard(targets, tokens, s)
        for t, g in zip(local.tolist(), tokens.shard_index(s).tolist(), strict=True):
            m = int(tokens.real_index[g])
            assert t == (expected[m] if m >= 0 else IGNORE_INDEX), f"rank {s}, global position {g}"
        seen += count_targets(local)
    assert seen == count_targets(torch.tensor(expected)) == count_targets(targets)  # none lost


def test_shifting_inside_each_shard_loses_and_corrupts_targets() -> None:
    """The reference's per-shard shift, checked against the same rule: it must be wrong,
    or the test above could not tell the two apart."""
    seq = expand_media(torch.arange(1, 33), torch.arange(1, 33), (32,), MEDIA, ())
    expected = naive_targets(seq)
    for kind in KINDS:
        tokens = plan_tokens(seq.doc_lens, 1, 2, kind)
        labels = to_padded(seq.labels, tokens, IGNORE_INDEX)
        lost = wrong = 0
        for s in range(tokens.sp):
            local = shard(labels, tokens, s)
            per_shard = torch.cat([local[1:], torch.tensor([IGNORE_INDEX])])  # HF's shift, on the shard
            for t, g in zip(per_shard.tolist(), tokens.shard_index(s).tolist(), strict=True):
                want = expected[int(tokens.real_index[g])]
                lost += int(t == IGNORE_INDEX and want != IGNORE_INDEX)
                wrong += int(t != IGNORE_INDEX and t != want)
        assert lost >= 1
        assert (wrong >= 1) == (kind == "zigzag")  # zigzag: end of front chunk → start of back chunk


# ---- loss ----------------------------------------------------------------------------------


def test_empty_shard_loss_is_zero_not_nan() -> None:
    logits = torch.randn(5, 7, requires_grad=True)
    keep = torch.tensor([], dtype=torch.long)
    loss = loss_sum(logits[keep], torch.tensor([], dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros_like(logits))
    # What a local mean does instead (the reference's per-shard HF loss):
    all_ignored = torch.full((5,), IGNORE_INDEX)
    assert torch.isnan(F.cross_entropy(logits.detach(), all_ignored))


@pytest.mark.parametrize(("layout", "kind"), list(itertools.product(LAYOUTS, KINDS)))
def test_shard_loss_sums_add_up_to_the_global_mean(layout: tuple[int, int], kind: str) -> None:
    seq = random_sequence(3)
    tokens = plan_tokens(seq.doc_lens, *layout, kind)
    targets = to_padded(shift_targets(seq.labels, seq.doc_lens), tokens, IGNORE_INDEX)
    logits = torch.randn(tokens.total, 60, generator=torch.Generator().manual_seed(0))
    n = count_targets(targets)
    total = torch.zeros(())
    for s in range(tokens.sp):
        local_t, local_l = shard(targets, tokens, s), shard(logits, tokens, s)
        keep = local_t != IGNORE_INDEX
        total = total + loss_sum(local_l[keep], local_t[keep])
    reference = F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
    assert torch.allclose(total / n, reference, rtol=1e-6)


def test_gradient_sum_is_a_no_op_on_one_process() -> None:
    groups = single_process_groups()
    assert gradient_group(groups) is None
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    sum_gradients([p], gradient_group(groups))
    assert torch.equal(p.grad, torch.full((3,), 2.0))
