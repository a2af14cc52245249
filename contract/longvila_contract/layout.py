"""The dp × ring × ulysses layout: the one owner of sequence-parallel arithmetic. Pure.

Ranks are numbered rank = dp_rank·sp + ring_rank·U + ulysses_rank, with sp = ring·U.
Ulysses is innermost, so a Ulysses group is a run of U contiguous ranks: torchrun numbers
ranks node by node (rank = node_rank·gpus_per_node + local_rank), and with U dividing the
GPUs per node every all-to-all stays inside a node (NVLink) while the ring's P2P crosses
nodes (../shared/design/mmsp.md §1). `on_nodes` checks that locality; the operator's
placement, the env contract and the trainer all ask this module, none restates the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Literal

# How tokens of a packed sequence are spread over the ring (trainer: parallel/token_layout.py).
TokenLayoutName = Literal["zigzag", "contiguous"]
TOKEN_LAYOUTS: tuple[TokenLayoutName, ...] = ("zigzag", "contiguous")


class LayoutError(ValueError):
    """An impossible parallel layout; the message names the field and what is allowed."""


# The two rules every layout obeys, as predicates (the CRD's CEL rules say the same).
def ulysses_in_node(ulysses: int, gpus_per_node: int) -> bool:
    """Every Ulysses group (U consecutive ranks) stays inside one node."""
    return gpus_per_node % ulysses == 0


def sp_divides_world(world: int, ulysses: int, ring: int) -> bool:
    """The world splits into whole sequence-parallel groups of U × R ranks (dp = world / sp)."""
    return world % (ulysses * ring) == 0


@dataclass(frozen=True)
class RankCoords:
    rank: int
    dp_rank: int
    ring_rank: int
    ulysses_rank: int
    ulysses_group: int  # index into ParallelLayout.ulysses_groups()
    ring_group: int  # index into ParallelLayout.ring_groups()
    dp_group: int  # index into ParallelLayout.dp_groups()


@dataclass(frozen=True)
class ParallelLayout:
    """world = dp × ring × ulysses; validates itself on construction."""

    world: int
    ulysses: int = 1
    ring: int = 1

    def __post_init__(self) -> None:
        for name in ("world", "ulysses", "ring"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise LayoutError(f"{name} must be a positive integer, got {v!r}")
        if not sp_divides_world(self.world, self.ulysses, self.ring):
            raise LayoutError(
                f"world size {self.world} is not divisible by the sequence-parallel size "
                f"ulysses × ring = {self.ulysses} × {self.ring} = {self.sp}"
            )

    @classmethod
    def on_nodes(cls, nodes: int, gpus_per_node: int, ulysses: int = 1, ring: int = 1) -> ParallelLayout:
        """The layout of `nodes` × `gpus_per_node` ranks; also checks that every Ulysses group
        stays inside one node (U divides the GPUs per node)."""
        if not isinstance(gpus_per_node, int) or gpus_per_node < 1:
            raise LayoutError(f"GPUs per node must be a positive integer, got {gpus_per_node!r}")
        if not isinstance(ulysses, int) or ulysses < 1:
            raise LayoutError(f"ulysses must be a positive integer, got {ulysses!r}")
        if not ulysses_in_node(ulysses, gpus_per_node):
            allowed = [d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0]
            raise LayoutError(
                f"the Ulysses degree ({ulysses}) must divide the GPUs per node ({gpus_per_node}), so every "
                f"Ulysses all-to-all stays inside one node; allowed: {allowed}"
            )
        return cls(world=nodes * gpus_per_node, ulysses=ulysses, ring=ring)

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def dp(self) -> int:
        return self.world // self.sp

    def coords(self, rank: int) -> RankCoords:
        if not 0 <= rank < self.world:
            raise LayoutError(f"rank {rank} outside world of size {self.world}")
        dp_rank, sp_rank = divmod(rank, self.sp)
        ring_rank, ulysses_rank = divmod(sp_rank, self.ulysses)
        return RankCoords(
            rank,
            dp_rank,
            ring_rank,
            ulysses_rank,
            ulysses_group=dp_rank * self.ring + ring_rank,
            ring_group=dp_rank * self.ulysses + ulysses_rank,
            dp_group=sp_rank,
        )

    def node_block(self, gpus_per_node: int) -> int:
        """The fewest consecutive nodes that hold whole SP groups (sp / gcd(sp, gpus per node))."""
        return self.sp // gcd(self.sp, gpus_per_node)

    def sp_rank(self, rank: int) -> int:
        """Position inside the SP group: ulysses_rank + ring_rank·U."""
        return rank % self.sp

    def rank_of(self, dp_rank: int, ring_rank: int, ulysses_rank: int) -> int:
        return dp_rank * self.sp + ring_rank * self.ulysses + ulysses_rank

    # Groups as rank lists, identical on every rank (new_group must be called that way).
    def sp_groups(self) -> list[list[int]]:
        return [list(range(d * self.sp, (d + 1) * self.sp)) for d in range(self.dp)]

    def ulysses_groups(self) -> list[list[int]]:
        return [
            [self.rank_of(d, r, u) for u in range(self.ulysses)]
            for d in range(self.dp)
            for r in range(self.ring)
        ]

    def ring_groups(self) -> list[list[int]]:
        return [
            [self.rank_of(d, r, u) for r in range(self.ring)]
            for d in range(self.dp)
            for u in range(self.ulysses)
        ]

    def dp_groups(self) -> list[list[int]]:
        return [[s + d * self.sp for d in range(self.dp)] for s in range(self.sp)]


def kv_replication(num_heads: int, num_kv_heads: int, ulysses: int) -> int:
    """How many times each KV head is repeated so every Ulysses rank holds ≥ 1 KV head.

    Returns 1 when kv heads already split evenly over U. Raises LayoutError when the head
    counts cannot be split (heads % U, or GQA with U not a multiple of kv heads).
    """
    if num_heads % ulysses != 0:
        raise LayoutError(
            f"attention heads ({num_heads}) must be divisible by the Ulysses degree ({ulysses}); "
            f"allowed Ulysses degrees: {[d for d in range(1, num_heads + 1) if num_heads % d == 0]}"
        )
    if num_heads % num_kv_heads != 0:
        raise LayoutError(f"attention heads ({num_heads}) must be a multiple of kv heads ({num_kv_heads})")
    if num_kv_heads % ulysses == 0:
        return 1
    if ulysses % num_kv_heads == 0:
        return ulysses // num_kv_heads
    raise LayoutError(
        f"kv heads ({num_kv_heads}) and the Ulysses degree ({ulysses}) must divide one another "
        "(GQA: KV heads are replicated when U > kv heads)"
    )


def check_ulysses_hosts(layout: ParallelLayout, hosts: list[str]) -> None:
    """Fails unless every Ulysses group lives on one host.

    `hosts[rank]` is the host name of each rank (all-gathered at start-up). A Ulysses group
    that straddles hosts would run its all-to-all over the inter-node fabric, the layout the
    reference's released recipes produce (sp = 14 on 8-GPU nodes) and the one we forbid.
    """
    if len(hosts) != layout.world:
        raise LayoutError(f"got {len(hosts)} host names for a world of {layout.world}")
    bad = []
    for group in layout.ulysses_groups():
        seen = sorted({hosts[r] for r in group})
        if len(seen) > 1:
            bad.append(f"ranks {group[0]}-{group[-1]} span hosts {', '.join(seen)}")
    if bad:
        raise LayoutError(
            f"Ulysses groups (U={layout.ulysses}) must each stay inside one node, but "
            + "; ".join(bad)
            + ". Choose U dividing the GPUs per node (nproc_per_node), and launch one torchrun per node."
        )
