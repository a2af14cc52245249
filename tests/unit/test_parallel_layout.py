"""ParallelLayout rank arithmetic, group lists, KV replication and the one-host Ulysses rule."""

from __future__ import annotations

import pytest
from longvila_contract.layout import (
    LayoutError,
    ParallelLayout,
    check_ulysses_hosts,
    kv_replication,
)

LAYOUTS = [(1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 2, 2), (8, 2, 4), (8, 4, 2), (16, 4, 2), (12, 3, 2)]


@pytest.mark.parametrize(("world", "u", "r"), LAYOUTS)
def test_coords_round_trip(world: int, u: int, r: int) -> None:
    lay = ParallelLayout(world, u, r)
    assert lay.sp == u * r and lay.dp == world // (u * r)
    seen = set()
    for rank in range(world):
        c = lay.coords(rank)
        assert lay.rank_of(c.dp_rank, c.ring_rank, c.ulysses_rank) == rank
        assert lay.sp_rank(rank) == c.ulysses_rank + c.ring_rank * u
        seen.add((c.dp_rank, c.ring_rank, c.ulysses_rank))
    assert len(seen) == world


@pytest.mark.parametrize(("world", "u", "r"), LAYOUTS)
def test_groups_partition_the_world(world: int, u: int, r: int) -> None:
    lay = ParallelLayout(world, u, r)
    for groups, size in (
        (lay.ulysses_groups(), u),
        (lay.ring_groups(), r),
        (lay.sp_groups(), u * r),
        (lay.dp_groups(), world // (u * r)),
    ):
        assert all(len(g) == size for g in groups)
        assert sorted(x for g in groups for x in g) == list(range(world))


def test_ulysses_groups_are_contiguous_and_rings_strided() -> None:
    lay = ParallelLayout(16, 8, 2)  # two 8-GPU nodes: A2A inside a node, ring across
    assert lay.ulysses_groups() == [list(range(8)), list(range(8, 16))]
    assert lay.ring_groups()[:3] == [[0, 8], [1, 9], [2, 10]]
    assert lay.dp_groups() == [[s] for s in range(16)]
    lay = ParallelLayout(8, 2, 2)  # dp = 2
    assert lay.sp_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert lay.ring_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert lay.dp_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"world": 6, "ulysses": 4, "ring": 1}, "not divisible"),
        ({"world": 8, "ulysses": 2, "ring": 3}, "not divisible"),
        ({"world": 0}, "world must be a positive integer"),
        ({"world": 4, "ulysses": 0}, "ulysses must be a positive integer"),
        ({"world": 4, "ring": -1}, "ring must be a positive integer"),
    ],
)
def test_invalid_layouts(kwargs: dict[str, int], needle: str) -> None:
    with pytest.raises(LayoutError, match=needle):
        ParallelLayout(**kwargs)


def test_coords_out_of_range() -> None:
    with pytest.raises(LayoutError, match="outside world"):
        ParallelLayout(4, 2, 2).coords(4)


@pytest.mark.parametrize(
    ("heads", "kv", "u", "rep"),
    [
        (8, 8, 4, 1),
        (8, 2, 2, 1),
        (8, 2, 4, 2),
        (8, 2, 8, 4),
        (28, 4, 14, None),
        (28, 28, 14, 1),
        (4, 1, 4, 4),
    ],
)
def test_kv_replication(heads: int, kv: int, u: int, rep: int | None) -> None:
    if rep is None:
        with pytest.raises(LayoutError, match="must divide one another"):
            kv_replication(heads, kv, u)
    else:
        assert kv_replication(heads, kv, u) == rep
        assert (kv * rep) % u == 0  # every Ulysses rank gets whole KV heads


def test_kv_replication_errors_name_the_field() -> None:
    with pytest.raises(
        LayoutError, match=r"attention heads \(28\) must be divisible by the Ulysses degree \(8\)"
    ):
        kv_replication(28, 4, 8)
    with pytest.raises(LayoutError, match=r"multiple of kv heads \(3\)"):
        kv_replication(8, 3, 1)


def test_ulysses_hosts() -> None:
    lay = ParallelLayout(16, 8, 2)
    check_ulysses_hosts(lay, ["a"] * 8 + ["b"] * 8)
    with pytest.raises(LayoutError, match="ranks 0-7 span hosts a, b"):
        check_ulysses_hosts(lay, ["a"] * 4 + ["b"] * 12)
    # the reference's sp = 14 on 8-GPU nodes: a Ulysses group straddles two nodes
    with pytest.raises(LayoutError, match="must each stay inside one node"):
        check_ulysses_hosts(ParallelLayout(28, 14, 1), [f"n{r // 8}" for r in range(28)])
    with pytest.raises(LayoutError, match="host names"):
        check_ulysses_hosts(lay, ["a"])


def test_on_nodes_checks_node_locality() -> None:
    layout = ParallelLayout.on_nodes(4, 8, ulysses=4, ring=4)
    assert (layout.world, layout.sp, layout.dp) == (32, 16, 2)
    with pytest.raises(
        LayoutError, match=r"Ulysses degree \(3\) must divide the GPUs per node \(8\).*\[1, 2, 4, 8\]"
    ):
        ParallelLayout.on_nodes(4, 8, ulysses=3, ring=1)
    with pytest.raises(LayoutError, match="not divisible by the sequence-parallel size"):
        ParallelLayout.on_nodes(3, 8, ulysses=8, ring=2)


@pytest.mark.parametrize(
    ("ulysses", "ring", "gpn", "block"), [(4, 3, 8, 3), (8, 2, 8, 2), (2, 2, 8, 1), (8, 4, 8, 4)]
)
def test_node_block(ulysses: int, ring: int, gpn: int, block: int) -> None:
    assert ParallelLayout.on_nodes(block * 2, gpn, ulysses, ring).node_block(gpn) == block


def test_group_indices_point_into_the_group_lists() -> None:
    layout = ParallelLayout(world=24, ulysses=2, ring=3)
    for rank in range(layout.world):
        c = layout.coords(rank)
        assert rank in layout.ulysses_groups()[c.ulysses_group]
        assert rank in layout.ring_groups()[c.ring_group]
        assert rank in layout.dp_groups()[c.dp_group]
