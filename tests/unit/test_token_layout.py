"""TokenLayout: padding, metadata, and the zigzag/contiguous placement over U × R ranks."""

from __future__ import annotations

import itertools

import pytest
import torch
from longvila_contract.layout import LayoutError
from longvila_trainer.parallel.token_layout import plan_tokens

DOCS = [(64,), (37, 5, 60, 1), (1,), (7, 7, 7)]
DEGREES = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 4), (4, 1), (2, 4), (4, 2), (3, 2)]
CASES = list(itertools.product(DOCS, DEGREES, ("zigzag", "contiguous")))


@pytest.mark.parametrize(("docs", "deg", "kind"), CASES)
def test_padding_and_metadata(docs: tuple[int, ...], deg: tuple[int, int], kind: str) -> None:
    u, r = deg
    t = plan_tokens(docs, u, r, kind)
    unit = (2 * r if kind == "zigzag" else r) * u
    assert t.unit == unit
    for real, padded in zip(docs, t.padded_lens, strict=True):
        assert padded % unit == 0 and real <= padded < real + unit
    assert t.total == sum(t.padded_lens) and t.shard_len * u * r == t.total
    assert int(t.valid.sum()) == sum(docs)
    # real_index enumerates the unpadded packed sequence in order, −1 on padding
    assert t.real_index[t.valid].tolist() == list(range(sum(docs)))
    assert (t.real_index[~t.valid] == -1).all()
    for d, (start, n) in enumerate(zip(t.doc_starts, t.padded_lens, strict=True)):
        assert (t.doc_id[start : start + n] == d).all()
        assert t.position[start : start + n].tolist() == list(range(n))


@pytest.mark.parametrize(("docs", "deg", "kind"), CASES)
def test_shards_form_a_permutation(docs: tuple[int, ...], deg: tuple[int, int], kind: str) -> None:
    u, r = deg
    t = plan_tokens(docs, u, r, kind)
    allidx = torch.cat([t.shard_index(s) for s in range(t.sp)])
    assert sorted(allidx.tolist()) == list(range(t.total))
    for s in range(t.sp):
        idx = t.shard_index(s)
        assert len(idx) == t.shard_len
        assert (t.owner[idx] == s).all()
        assert t.local_offset[idx].tolist() == list(range(t.shard_len))


@pytest.mark.parametrize(("docs", "deg", "kind"), CASES)
def test_ulysses_shards_concatenate_to_the_ring_sequence(
    docs: tuple[int, ...], deg: tuple[int, int], kind: str
) -> None:
    u, r = deg
    t = plan_tokens(docs, u, r, kind)
    for ring_rank in range(r):
        gathered = torch.cat([t.shard_index(ring_rank * u + x) for x in range(u)])  # sp = u + r·U
        assert torch.equal(gathered, t.ring_index(ring_rank))


@pytest.mark.parametrize(("docs", "deg"), list(itertools.product(DOCS, DEGREES)))
def test_ring_rank_holds_its_chunks_per_document(docs: tuple[int, ...], deg: tuple[int, int]) -> None:
    u, r = deg
    for kind in ("zigzag", "contiguous"):
        t = plan_tokens(docs, u, r, kind)
        for ring_rank in range(r):
            want = []
            for start, n in zip(t.doc_starts, t.padded_lens, strict=True):
                if kind == "zigzag":  # 2R chunks, rank r holds r and 2R−1−r as [front | back]
                    c = n // (2 * r)
                    for chunk in (ring_rank, 2 * r - 1 - ring_rank):
                        want += range(start + chunk * c, start + (chunk + 1) * c)
                else:
                    c = n // r
                    want += range(start + ring_rank * c, start + (ring_rank + 1) * c)
            assert t.ring_index(ring_rank).tolist() == want


def test_zigzag_example_2x2() -> None:
    """The case the reference gets wrong: U=2, R=2, one document of 8 tokens."""
    t = plan_tokens([8], 2, 2, "zigzag")
    assert [t.shard_index(s).tolist() for s in range(4)] == [[0, 1], [6, 7], [2, 3], [4, 5]]
    assert t.ring_index(0).tolist() == [0, 1, 6, 7]


def test_padding_is_at_the_end_of_each_document() -> None:
    t = plan_tokens([3, 5], 1, 2, "zigzag")  # unit 4: 3 -> 4, 5 -> 8
    assert t.padded_lens == (4, 8)
    assert t.valid.tolist() == [True] * 3 + [False] + [True] * 5 + [False] * 3
    assert t.doc_id.tolist() == [0] * 4 + [1] * 8


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (((), 1, 1, "zigzag"), "at least one document"),
        (((3, 0), 1, 1, "zigzag"), "must be ≥ 1"),
        (((3,), 0, 1, "zigzag"), "ulysses and ring must be ≥ 1"),
        (((3,), 1, 0, "contiguous"), "ulysses and ring must be ≥ 1"),
        (((3,), 1, 1, "striped"), "layout must be one of zigzag, contiguous"),
    ],
)
def test_errors(args: tuple[tuple[int, ...], int, int, str], needle: str) -> None:
    with pytest.raises(LayoutError, match=needle):
        plan_tokens(*args)


def test_rank_out_of_range() -> None:
    t = plan_tokens([16], 2, 2, "zigzag")
    with pytest.raises(LayoutError, match="ring rank 2"):
        t.ring_index(2)
    with pytest.raises(LayoutError, match="sp rank 4"):
        t.shard_index(4)
