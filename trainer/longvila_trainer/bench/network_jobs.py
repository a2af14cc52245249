"""What each rank runs in the simulated network (module-level functions for RankPool.run).

- `probe_links`: timed P2P messages over one fast and one slow pair, two sizes each, so the
  model gets each tier's goodput and per-message latency as gloo sees them;
- `probe_a2a`: timed all-to-alls over the Ulysses groups inside a node and across nodes,
  for the rate gloo's all-to-all reaches per peer on each tier;
- `measure`: usp_attention forward + backward on a random sequence per job, timed per
  iteration after a barrier, with the bytes per tier and the seconds blocked in
  communication counted by the comm layer (CommMeter).
Process groups are built once per (U, R) and kept in the rank's state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from longvila_contract.layout import ParallelLayout
from torch import Tensor

from ..attention.comm import CommMeter
from ..attention.context import AttentionContext
from ..attention.usp import usp_attention
from ..parallel.groups import SPGroups, build_groups
from ..parallel.token_layout import plan_tokens
from .costmodel import AttnShape, Layout

MAX_ROUNDS = 15


@dataclass(frozen=True)
class Job:
    mode: str  # "ring", "ulysses", "2d"
    ulysses: int
    ring: int
    seq: int
    overlap: bool = True

    @property
    def layout(self) -> Layout:
        return Layout(self.ulysses, self.ring)


def _groups(state: dict[Any, Any], world: int, job: Job) -> SPGroups:
    key = ("groups", job.ulysses, job.ring)
    if key not in state:  # new_group is collective: every rank runs the same jobs in order
        state[key] = build_groups(ParallelLayout(world, job.ulysses, job.ring), check_hosts=False)
    groups: SPGroups = state[key]
    return groups


Pairs = dict[str, tuple[int, int, list[int]]]  # name -> (sender, receiver, message sizes)


def probe_links(
    rank: int, world: int, state: dict[Any, Any], pairs: Pairs, reps: int
) -> dict[str, list[list[float]]]:
    """Seconds of one message of each size on each pair (a → b, sizes), `reps` times each,
    barrier to barrier, so every rank returns the same numbers up to noise."""
    out: dict[str, list[list[float]]] = {}
    for name, (a, b, sizes) in pairs.items():
        out[name] = []
        for n in sizes:
            x = torch.zeros(n // 4)
            times = []
            for _ in range(reps):
                dist.barrier()
                t0 = time.perf_counter()
                if rank == a:
                    dist.send(x, b)
                elif rank == b:
                    dist.recv(x, a)
                dist.barrier()
                times.append(time.perf_counter() - t0)
            out[name].append(times)
    return out


def probe_a2a(rank: int, world: int, state: dict[Any, Any], probes: list[tuple[int, int]],
              reps: int) -> list[list[float]]:  # fmt: skip
    """Seconds of one all_to_all_single over the Ulysses groups of U ranks with `per_peer` bytes
    to each peer, per (U, per_peer), `reps` times, barrier to barrier: the collective's own
    rate, which is not a lone message's (gloo posts each pair's send before its receive)."""
    out = []
    for u, per_peer in probes:
        group = _groups(state, world, Job("probe", u, world // u, 0)).ulysses
        x = torch.zeros(u * (per_peer // 4))
        y = torch.empty_like(x)
        times = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_to_all_single(y, x, group=None if group is None else group.pg)
            dist.barrier()
            times.append(time.perf_counter() - t0)
        out.append(times)
    return out


def barrier_seconds(rank: int, world: int, state: dict[Any, Any], reps: int) -> list[float]:
    """Seconds of an empty barrier (subtracted from probe_links' timings)."""
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    return times


@dataclass
class _Case:
    """One job's inputs on this rank: its context (with its meter) and local shards."""

    ctx: AttentionContext
    meter: CommMeter
    q: Tensor
    k: Tensor
    v: Tensor
    dout: Tensor


def _case(
    state: dict[Any, Any], rank: int, world: int, job: Job, shape: AttnShape, node_of: tuple[int, ...]
) -> _Case:
    tokens = plan_tokens([job.seq], job.ulysses, job.ring, "zigzag")
    meter = CommMeter(node_of=node_of, rank=rank)
    ctx = AttentionContext(_groups(state, world, job), tokens, meter=meter, overlap=job.overlap)
    gen = torch.Generator().manual_seed(rank)
    n, d = tokens.shard_len, shape.head_dim
    q, k, v = (
        torch.randn(n, x, d, generator=gen).requires_grad_()
        for x in (shape.heads, shape.kv_heads, shape.kv_heads)
    )
    return _Case(ctx, meter, q, k, v, torch.randn(n, shape.heads, d, generator=gen))


def measure(rank: int, world: int, state: dict[Any, Any], jobs: list[Job], shape: AttnShape, iters: int,
            node_of: tuple[int, ...], budget_s: float = 0.0) -> list[dict[str, Any]]:  # fmt: skip
    """Per job: per-iteration forward and backward seconds of usp_attention on this rank
    (round 0 warms up and is dropped), and what the comm layer counted per direction.

    Iterations go round-robin over the jobs (job 1, job 2, …, job 1, …), so a burst of load
    from other work on this shared machine lands on every job alike. At least `iters` rounds,
    more when rounds are short: as many as fit in `budget_s` at the warm-up round's pace
    (agreed over all ranks, so every rank runs the same number of collectives).
    """
    cases = [_case(state, rank, world, job, shape, node_of) for job in jobs]
    rows: list[dict[str, Any]] = [
        {"fwd_s": [], "bwd_s": [], "fwd_blocked_s": [], "bwd_blocked_s": []} for _ in jobs
    ]
    rounds, it = iters, 0
    while it <= rounds:
        t_round = time.perf_counter()
        for c, row in zip(cases, rows, strict=True):
            c.meter.reset()
            dist.barrier()
            t0 = time.perf_counter()
            o = usp_attention(c.q, c.k, c.v, c.ctx, causal=True)
            t1 = time.perf_counter()
            fwd = _snapshot(c.meter)
            torch.autograd.backward(o, c.dout)
            t2 = time.perf_counter()
            both = _snapshot(c.meter)
            row["fwd_bytes"] = fwd["tiers"]
            row["bwd_bytes"] = _minus(both["tiers"], fwd["tiers"])
            c.q.grad = c.k.grad = c.v.grad = None
            if it:  # round 0 warms up
                row["fwd_s"].append(t1 - t0)
                row["bwd_s"].append(t2 - t1)
                row["fwd_blocked_s"].append(fwd["blocked"])
                row["bwd_blocked_s"].append(_minus(both["blocked"], fwd["blocked"]))
        if it == 0 and budget_s > 0:
            pace = torch.tensor([time.perf_counter() - t_round])
            dist.all_reduce(pace, op=dist.ReduceOp.MAX)
            rounds = max(iters, min(MAX_ROUNDS, int(budget_s / max(pace.item(), 1e-3))))
        it += 1
    return rows


def _snapshot(meter: CommMeter) -> dict[str, dict[str, Any]]:
    return {"tiers": dict(meter.tier_sent), "blocked": dict(meter.blocked_s)}


def _minus(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    return {k: a.get(k, 0) - b.get(k, 0) for k in a.keys() | b.keys()}


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2
