"""Every collective the trainer issues, each checked against the device its group carries.

A `Group` pairs a process group with the device of the tensors that travel over it: the
rank's GPU for the compute groups (NCCL on a GPU cluster), the CPU for the host groups that
carry metadata (gloo). NCCL rejects CPU tensors and gloo is the wrong road for GPU ones, so
each function here refuses a tensor on another device with one line naming the operation,
the group and both devices, before anything is sent. On a CPU run both kinds are gloo on
the CPU and the check is trivially true; the device tests (tests/unit/test_device.py) give
the compute groups a fake CUDA device, where a tensor left on the CPU fails here.

Nothing else in the trainer calls torch.distributed's collectives (a unit test reads the
sources to keep it so); FSDP2, DeepSpeed and DCP issue their own, over groups they own or
are given. A group of None means a single member: the callers skip the call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

HOST = torch.device("cpu")


class DeviceMismatchError(RuntimeError):
    """A tensor handed to a collective is not on its group's device."""


@dataclass(frozen=True, eq=False)
class Group:
    """A process group and the device its tensors live on; `name` appears in errors."""

    pg: dist.ProcessGroup
    device: torch.device
    name: str

    @property
    def rank(self) -> int:
        return dist.get_rank(self.pg)

    @property
    def size(self) -> int:
        return dist.get_world_size(self.pg)

    @property
    def is_host(self) -> bool:
        return self.device.type == "cpu"


def _same_device(t: Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def check_device(op: str, group: Group, tensors: Sequence[Tensor]) -> None:
    """Raises DeviceMismatchError unless every tensor is on `group.device`."""
    for t in tensors:
        if not _same_device(t, group.device):
            raise DeviceMismatchError(
                f"{op} over the {group.name} group: a tensor {tuple(t.shape)} {t.dtype} is on {t.device}, "
                f"but this group's tensors live on {group.device}"
            )


def all_reduce(t: Tensor, group: Group, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """In place over the group; returns `t`."""
    check_device("all_reduce", group, [t])
    dist.all_reduce(t, op=op, group=group.pg)
    return t


def all_gather(t: Tensor, group: Group) -> list[Tensor]:
    """Every member's `t` (same shape on all), in group-rank order."""
    check_device("all_gather", group, [t])
    out = [torch.empty_like(t) for _ in range(group.size)]
    dist.all_gather(out, t.contiguous(), group=group.pg)
    return out


def all_to_all_single(out: Tensor, x: Tensor, recv: list[int], send: list[int], group: Group) -> Tensor:
    """Rows of `x` in blocks of `send[j]` go to member j; `out` receives `recv[j]` rows from j."""
    check_device("all_to_all", group, [out, x])
    dist.all_to_all_single(out, x, recv, send, group=group.pg)
    return out


def isend_irecv(sends: Sequence[tuple[Tensor, int, int]], recvs: Sequence[tuple[Tensor, int, int]],
                group: Group) -> list[dist.Work]:  # fmt: skip
    """Starts non-blocking point-to-point transfers: (tensor, global peer rank, tag) each."""
    check_device("p2p", group, [t for t, _, _ in (*sends, *recvs)])
    # receives first: see attention/comm.RingShift.start (gloo's in-band ready-to-receive)
    ops = [dist.P2POp(dist.irecv, t, peer, group=group.pg, tag=tag) for t, peer, tag in recvs]
    ops += [dist.P2POp(dist.isend, t, peer, group=group.pg, tag=tag) for t, peer, tag in sends]
    return dist.batch_isend_irecv(ops) if ops else []


# -- host metadata: small numbers every rank needs, exchanged over a gloo group on the CPU ------


def _host(op: str, group: Group) -> None:
    if not group.is_host:
        raise DeviceMismatchError(f"{op}: host metadata goes over a CPU group, not the {group.name} group")


def host_all_reduce(values: Sequence[float], group: Group | None, op: str = "sum") -> list[float]:
    """Element-wise sum or max of a few numbers over the group, as float64 on the CPU."""
    if group is None:
        return [float(v) for v in values]
    _host("host_all_reduce", group)
    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    t = all_reduce(torch.tensor([float(v) for v in values], dtype=torch.float64), group, red)
    return [float(v) for v in t.tolist()]


def host_all_gather_ints(values: Sequence[int], width: int, group: Group) -> list[list[int]]:
    """Each member's list of at most `width` ints (padded with −1 on the wire), by group rank."""
    _host("host_all_gather_ints", group)
    mine = torch.full((width,), -1, dtype=torch.long)
    mine[: len(values)] = torch.tensor(list(values), dtype=torch.long)
    return [row.tolist() for row in all_gather(mine, group)]


def all_gather_object(obj: Any, pg: dist.ProcessGroup | None) -> list[Any]:
    """Picklable objects from every member (torch serialises them on the group's own device)."""
    out: list[Any] = [None] * dist.get_world_size(pg)
    dist.all_gather_object(out, obj, group=pg)
    return out


def broadcast_object(obj: Any, pg: dist.ProcessGroup | None, src: int = 0) -> Any:
    """Group rank `src`'s object on every member."""
    box = [obj]
    dist.broadcast_object_list(box, group=pg, group_src=src)
    return box[0]
