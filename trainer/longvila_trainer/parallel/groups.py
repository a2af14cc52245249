"""Process groups for a ParallelLayout, built once and passed around (never global).

Two sets, each group paired with its device (comm.Group):

- compute groups (ulysses, ring, sp, dp, world) carry the step's tensors on the rank's
  device: NCCL on a GPU cluster, gloo on CPU runs;
- host groups (`host.sp`, `host.dp`, `host.world`) carry metadata that the host needs as
  Python numbers: frame token counts, target counts, logged figures. They run on gloo over
  the CPU, so reading a result never waits for the GPU's queue and NCCL never sees a CPU
  tensor. They are created once, here, as gloo twins of the compute groups when the
  default backend is NCCL; when it already carries CPU tensors (gloo, or the "fake"
  backend of the device tests) the same process groups serve, paired with the CPU.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import cast

import torch
import torch.distributed as dist
from longvila_contract.layout import ParallelLayout, check_ulysses_hosts

from .comm import HOST, Group, all_gather_object


@dataclass(frozen=True)
class HostGroups:
    """CPU (gloo) groups for metadata; None where the group has a single member."""

    sp: Group | None = None
    dp: Group | None = None
    world: Group | None = None


@dataclass(frozen=True)
class SPGroups:
    """This rank's view of the layout and its groups.

    A group is None when it has a single member (no communication needed), so a
    one-process run goes through the same code with every collective skipped.
    """

    layout: ParallelLayout
    rank: int
    ulysses: Group | None
    ring: Group | None
    sp: Group | None
    dp: Group | None
    ring_ranks: tuple[int, ...]  # global ranks of this rank's ring group, by ring rank
    device: torch.device = HOST  # where this rank's step tensors live
    world: Group | None = None  # every rank (gradient sums when dp > 1)
    host: HostGroups = field(default_factory=HostGroups)

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


def single_process_groups(device: torch.device = HOST) -> SPGroups:
    return SPGroups(ParallelLayout(1), 0, None, None, None, None, (0,), device=torch.device(device))


def host_backend() -> str | None:
    """The backend of the host groups: None = the default group's own (it carries CPU tensors)."""
    return None if dist.get_backend() in ("gloo", "fake") else "gloo"


def build_groups(
    layout: ParallelLayout, check_hosts: bool = True, device: torch.device | str = HOST
) -> SPGroups:
    """Creates every group of the layout; call on all ranks after init_process_group.

    new_group must be called for every group, in the same order, on every rank, even the
    groups a rank is not part of.
    """
    device = torch.device(device)
    if not dist.is_initialized():
        if layout.world != 1:
            raise RuntimeError("torch.distributed is not initialized but the layout has world > 1")
        return single_process_groups(device)
    if dist.get_world_size() != layout.world:
        raise RuntimeError(
            f"layout world {layout.world} differs from torch.distributed world {dist.get_world_size()}"
        )
    rank = dist.get_rank()
    twin = host_backend()
    everyone = list(range(layout.world))
    host_world = cast(dist.ProcessGroup, dist.group.WORLD)
    if twin and layout.world > 1:
        host_world = cast(dist.ProcessGroup, dist.new_group(everyone, backend=twin))
    if check_hosts and layout.world > 1:
        hosts = all_gather_object(socket.gethostname(), host_world)
        check_ulysses_hosts(layout, [str(h) for h in hosts])

    def mine(name: str, groups: list[list[int]], backend: str | None, dev: torch.device) -> Group | None:
        found = None
        for ranks in groups:
            pg = cast(dist.ProcessGroup, dist.new_group(ranks, backend=backend)) if len(ranks) > 1 else None
            if rank in ranks and pg is not None:
                found = Group(pg, dev, name)
        return found

    def host(name: str, groups: list[list[int]], compute: Group | None) -> Group | None:
        if twin:
            return mine(f"host {name}", groups, twin, HOST)
        return None if compute is None else Group(compute.pg, HOST, f"host {name}")

    ring_ranks = next(tuple(g) for g in layout.ring_groups() if rank in g)
    sp = mine("sp", layout.sp_groups(), None, device)
    dp = mine("dp", layout.dp_groups(), None, device)
    world = Group(cast(dist.ProcessGroup, dist.group.WORLD), device, "world") if layout.world > 1 else None
    return SPGroups(
        layout=layout,
        rank=rank,
        ulysses=mine("ulysses", layout.ulysses_groups(), None, device),
        ring=mine("ring", layout.ring_groups(), None, device),
        sp=sp,
        dp=dp,
        ring_ranks=ring_ranks,
        device=device,
        world=world,
        host=HostGroups(
            sp=host("sp", layout.sp_groups(), sp),
            dp=host("dp", layout.dp_groups(), dp),
            world=None if world is None else Group(host_world, HOST, "host world"),
        ),
    )
