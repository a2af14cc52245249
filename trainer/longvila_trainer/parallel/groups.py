"""Process groups for a ParallelLayout, built once and passed around (never global)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import cast

import torch.distributed as dist
from longvila_contract.layout import ParallelLayout, check_ulysses_hosts


@dataclass(frozen=True)
class SPGroups:
    """This rank's view of the layout and its groups.

    A group is None when it has a single member (no communication needed), so a
    one-process run goes through the same code with every collective skipped.
    """

    layout: ParallelLayout
    rank: int
    ulysses: dist.ProcessGroup | None
    ring: dist.ProcessGroup | None
    sp: dist.ProcessGroup | None
    dp: dist.ProcessGroup | None
    ring_ranks: tuple[int, ...]  # global ranks of this rank's ring group, by ring rank

    @property
    def ulysses_rank(self) -> int:
        return self.layout.coords(self.rank).ulysses_rank

    @property
    def ring_rank(self) -> int:
        return self.layout.coords(self.rank).ring_rank

    @property
    def dp_rank(self) -> int:
        return self.layout.coords(self.rank).dp_rank

    @property
    def sp_rank(self) -> int:
        return self.layout.sp_rank(self.rank)


def single_process_groups() -> SPGroups:
    return SPGroups(ParallelLayout(1), 0, None, None, None, None, (0,))


def build_groups(layout: ParallelLayout, check_hosts: bool = True) -> SPGroups:
    """Creates every group of the layout; call on all ranks after init_process_group.

    new_group must be called for every group, in the same order, on every rank, even the
    groups a rank is not part of.
    """
    if not dist.is_initialized():
        if layout.world != 1:
            raise RuntimeError("torch.distributed is not initialized but the layout has world > 1")
        return single_process_groups()
    if dist.get_world_size() != layout.world:
        raise RuntimeError(
            f"layout world {layout.world} differs from torch.distributed world {dist.get_world_size()}"
        )
    rank = dist.get_rank()
    if check_hosts and layout.world > 1:
        hosts: list[str | None] = [None] * layout.world
        dist.all_gather_object(hosts, socket.gethostname())
        check_ulysses_hosts(layout, [str(h) for h in hosts])

    def mine(groups: list[list[int]]) -> dist.ProcessGroup | None:
        found = None
        for ranks in groups:
            g = cast(dist.ProcessGroup, dist.new_group(ranks)) if len(ranks) > 1 else None
            if rank in ranks:
                found = g
        return found

    ring_ranks = next(tuple(g) for g in layout.ring_groups() if rank in g)
    return SPGroups(
        layout=layout,
        rank=rank,
        ulysses=mine(layout.ulysses_groups()),
        ring=mine(layout.ring_groups()),
        sp=mine(layout.sp_groups()),
        dp=mine(layout.dp_groups()),
        ring_ranks=ring_ranks,
    )
