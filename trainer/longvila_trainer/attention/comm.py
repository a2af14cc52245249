"""The communication the attention does, in one layer that can count its bytes.

Two primitives: an all-to-all over the Ulysses group (uneven split sizes allowed) and a
ring shift (send to ring rank r+1, receive from r−1) over P2P with batch_isend_irecv,
addressed by the global ranks in SPGroups.ring_ranks. Every call records the bytes this
rank puts on the wire in an optional CommMeter, so the benchmark reports measured traffic,
not a formula; given the node of every rank, the meter also splits the bytes by tier
(inside a node / across nodes) and adds up the host seconds spent blocked in each kind.
A group of None means a single member: nothing is sent. The transfers themselves go
through parallel/comm.py, which refuses a tensor off the group's device.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

from ..parallel import comm
from ..parallel.comm import Group

TIERS = ("intra_node", "inter_node")


@dataclass(eq=False)  # compared and hashed by identity, so an AttentionContext holding one stays hashable
class CommMeter:
    """Bytes sent and calls made by this rank, per kind ("all_to_all", "p2p").

    With `node_of` (the node of every global rank) and `rank` (this one), bytes are also
    split by tier in `tier_sent` ("intra_node" / "inter_node"). `blocked_s` adds up the
    host seconds spent inside a blocking all-to-all or waiting for a ring hop: what the
    computation could not hide. On CUDA (NCCL) a wait only orders streams, so there it
    measures nothing; it is for gloo runs.
    """

    sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    node_of: tuple[int, ...] = ()
    rank: int = 0
    tier_sent: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    blocked_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def record(self, kind: str, nbytes: int, to: Iterable[tuple[int, int]] = ()) -> None:
        """One call that sent nbytes; `to` lists (global peer rank, bytes) for the tier split."""
        self.sent[kind] += nbytes
        self.calls[kind] += 1
        if self.node_of:
            here = self.node_of[self.rank]
            for peer, n in to:
                self.tier_sent[TIERS[self.node_of[peer] != here]] += n

    def reset(self) -> None:
        self.sent.clear()
        self.calls.clear()
        self.tier_sent.clear()
        self.blocked_s.clear()

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def all_to_all(
    x: Tensor,
    send_sizes: list[int],
    recv_sizes: list[int],
    group: Group | None,
    meter: CommMeter | None = None,
) -> Tensor:
    """Exchanges row blocks along dim 0: rows [Σsend[:j], Σsend[:j+1]) go to group rank j, and
    the result concatenates, in group-rank order, recv_sizes[j] rows from each rank j."""
    if group is None:
        return x
    x = x.contiguous()
    out = x.new_empty((sum(recv_sizes), *x.shape[1:]))
    t0 = time.perf_counter()
    comm.all_to_all_single(out, x, recv_sizes, send_sizes, group)
    if meter is not None:
        meter.blocked_s["all_to_all"] += time.perf_counter() - t0
        me = group.rank
        row = x[0].numel() * x.element_size() if x.shape[0] else 0
        to: list[tuple[int, int]] = []
        if meter.node_of:
            peers = dist.get_process_group_ranks(group.pg)  # group rank -> global rank
            to = [(peers[j], n * row) for j, n in enumerate(send_sizes) if j != me]
        meter.record("all_to_all", (sum(send_sizes) - send_sizes[me]) * row, to)  # own block stays local
    return out


def all_gather_sizes(n: int, group: Group | None) -> list[int]:
    """Every group member's n, in group-rank order (for shards of unknown, uneven length)."""
    if group is None:
        return [n]
    t = torch.tensor([n], dtype=torch.long, device=group.device)
    return [int(o.item()) for o in comm.all_gather(t, group)]


class RingShift:
    """Non-blocking shift of tensors one hop around a ring: start(), compute, wait().

    Several tensors may travel in one shift; each gets its own tag, so a KV block and a
    gradient block moving between the same pair of ranks can never be mismatched.
    """

    def __init__(
        self, ring_ranks: tuple[int, ...], me: int, group: Group | None, meter: CommMeter | None
    ) -> None:
        n = len(ring_ranks)
        self.next, self.prev = ring_ranks[(me + 1) % n], ring_ranks[(me - 1) % n]
        self.group, self.meter = group, meter
        self._works: list[dist.Work] = []
        self._keep: list[Tensor] = []  # send buffers must outlive the non-blocking sends

    def start(self, tensors: list[Tensor]) -> list[Tensor]:
        """Sends each tensor to the next rank; returns buffers that receive the previous rank's."""
        if self._works:
            raise RuntimeError("RingShift.start called twice without wait")
        if self.group is None or not tensors:
            return list(tensors)
        # Receives are posted before sends (parallel/comm.isend_irecv): gloo's TCP pair tells the
        # sender "ready to receive" in band, so a receive posted after a send of the same pair
        # queues that notice behind the whole outgoing message and the opposite transfer starts
        # only when ours is through (measured on a shaped link: 2x one transfer; bench.network).
        sends, recvs = [], []
        for tag, t in enumerate(tensors):
            t = t.contiguous()
            sends.append((t, self.next, tag))
            recvs.append((torch.empty_like(t, memory_format=torch.contiguous_format), self.prev, tag))
            self._keep.append(t)
            if self.meter is not None:
                n = t.numel() * t.element_size()
                self.meter.record("p2p", n, [(self.next, n)])
        self._works = comm.isend_irecv(sends, recvs, self.group)
        return [r for r, _, _ in recvs]

    def wait(self) -> None:
        t0 = time.perf_counter()
        for w in self._works:
            w.wait()
        if self.meter is not None and self._works:
            self.meter.blocked_s["p2p"] += time.perf_counter() - t0
        self._works, self._keep = [], []
