"""A cost model of sequence-parallel attention on a two-tier network (pure; a model, not a measurement).

Inputs: the layout (U, R, ranks per node), the sequence, the attention shape, a Device
(attention-kernel FLOP/s forward and backward, a fixed cost per kernel call) and Links
(per-rank bandwidth and per-message latency inside a node and across nodes). Outputs: the
bytes each rank sends on each tier (`traffic`, equal to what comm.CommMeter counts; the
tests hold the two together) and the time of one attention call, forward and backward
(`attention_time`), with or without the ring's communication overlapped.

How time is modelled (one rank's view; the slowest rank sets the pace):
- all-to-all (q, k, v before the ring, out after; mirrored in backward): the peers of each
  tier share that tier's link, the tiers run at once: max over tiers of
  peers·bytes_per_peer / bw + latency;
- ring step t: compute c_t = FLOPs_t / rate + kernel calls_t · call cost, over the step's
  pieces (context.ring_schedule, so causal and zigzag skipping are exact); each rank's hop
  takes the time of its own link; a rank moves on when its compute is done (overlapped) or
  after it (wait-first) and when both its receive and its send are through, which is a
  critical path over the ring's ranks (`_ring_pass`); with a slow hop on one side of every
  rank, as in ring-only SP over nodes, the slow tier paces every step;
- backward: dK/dV (fp32) travel with the blocks from the third step, and one last hop
  delivers them (never overlapped): the schedule of ring.RingAttention.backward.
Calibration against measured runs: fit.py.
FLOPs: 4·q·k·h·D per full piece, 2·q·(q+1)·h·D per causal one (forward); backward counts
2.5× forward (flash backward: five matmuls to forward's two). Not modelled: contention for
the copy engines or the CPU, congestion beyond one link per rank, stragglers, kernel
efficiency changing with block size (the call cost absorbs part of it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from longvila_contract.layout import ParallelLayout, kv_replication

from ..attention.context import Step, ring_schedule
from ..parallel.token_layout import plan_tokens

TIERS = ("intra_node", "inter_node")
BWD_FLOPS_FACTOR = 2.5


@dataclass(frozen=True)
class AttnShape:
    heads: int
    kv_heads: int
    head_dim: int
    elem: int  # bytes of q, k, v, out and their gradients (4 fp32 on CPU, 2 bf16 on GPU)
    acc_elem: int = 4  # the travelling dK/dV accumulator is fp32 (ring.py)


@dataclass(frozen=True)
class Device:
    name: str
    fwd_flops: float  # attention-kernel FLOP/s, forward
    bwd_flops: float  # backward, in forward-equivalent units × BWD_FLOPS_FACTOR
    call_s: float  # fixed cost per kernel call (launch, varlen set-up, LSE merge)


@dataclass(frozen=True)
class Links:
    """Per-rank links. The all-to-all may reach a different rate per peer than a lone P2P
    message (a collective's own schedule: gloo's, measured by bench.network's probe; NCCL's,
    assumed equal); left out, it is the P2P rate."""

    ranks_per_node: int
    fast_bps: float  # bytes/s per rank, one direction, inside a node
    slow_bps: float  # across nodes
    fast_lat_s: float
    slow_lat_s: float
    a2a_fast_bps: float | None = None
    a2a_slow_bps: float | None = None

    def bw(self, tier: str) -> float:
        return self.fast_bps if tier == TIERS[0] else self.slow_bps

    def a2a_bw(self, tier: str) -> float:
        got = self.a2a_fast_bps if tier == TIERS[0] else self.a2a_slow_bps
        return got if got is not None else self.bw(tier)

    def lat(self, tier: str) -> float:
        return self.fast_lat_s if tier == TIERS[0] else self.slow_lat_s


@dataclass(frozen=True)
class Layout:
    ulysses: int
    ring: int

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring


def _tier(a: int, b: int, ranks_per_node: int) -> str:
    return TIERS[a // ranks_per_node != b // ranks_per_node]


def _a2a_peers(rank: int, lay: Layout, g: int) -> dict[str, int]:
    """How many of this rank's Ulysses peers are on each tier (groups: U consecutive ranks)."""
    base = rank - rank % lay.ulysses
    out = dict.fromkeys(TIERS, 0)
    for p in range(base, base + lay.ulysses):
        if p != rank:
            out[_tier(rank, p, g)] += 1
    return out


def ring_next(lay: Layout) -> list[int]:
    """next[r]: the rank r sends its ring blocks to (ring groups are strided by U)."""
    nxt = list(range(lay.sp))
    for group in ParallelLayout(lay.sp, lay.ulysses, lay.ring).ring_groups():
        for i, r in enumerate(group):
            nxt[r] = group[(i + 1) % len(group)]
    return nxt


def ring_hop_tiers(lay: Layout, g: int) -> tuple[tuple[str, ...], ...]:
    """Per distinct ring group: the tier of each hop, hop j going from ring rank j to j + 1."""
    if lay.ring == 1:
        return ((),)
    groups = ParallelLayout(lay.sp, lay.ulysses, lay.ring).ring_groups()
    return tuple(
        sorted({tuple(_tier(gr[j], gr[(j + 1) % len(gr)], g) for j in range(len(gr))) for gr in groups})
    )


@dataclass(frozen=True)
class Traffic:
    """Bytes one rank sends per call, by tier, and the sizes the time model needs."""

    fwd: dict[str, int]
    bwd: dict[str, int]
    a2a_per_peer: dict[str, int]  # "q", "kv" (k and v each), per Ulysses peer
    kv_block: int  # one hop of [2, S_ring, Hkv'/U, D]
    dkv_block: int  # one hop of the fp32 dK/dV accumulator


def traffic(
    lay: Layout, seq: int, shape: AttnShape, ranks_per_node: int, rank: int, nxt: list[int] | None = None
) -> Traffic:
    """What comm.CommMeter counts for rank `rank` of one usp_attention call (zigzag, one
    document); `nxt` is ring_next(lay), passed in when calling for every rank."""
    tokens = plan_tokens([seq], lay.ulysses, lay.ring, "zigzag")
    n, u, d = tokens.shard_len, lay.ulysses, shape.head_dim
    kv = shape.kv_heads * kv_replication(shape.heads, shape.kv_heads, u)
    per_peer = {"q": n * shape.heads // u * d * shape.elem, "kv": n * kv // u * d * shape.elem}
    # one call: q, k, v forward + out back; backward: d(out) then dq, dk, dv
    a2a = 2 * per_peer["q"] + 2 * per_peer["kv"]
    kv_block = 2 * n * kv * d * shape.elem  # [2, n·U, kv/U, D]
    dkv_block = 2 * n * kv * d * shape.acc_elem
    fwd, bwd = dict.fromkeys(TIERS, 0), dict.fromkeys(TIERS, 0)
    for tier, peers in _a2a_peers(rank, lay, ranks_per_node).items():
        fwd[tier] += peers * a2a
        bwd[tier] += peers * a2a
    if lay.ring > 1:
        hop = _tier(rank, (nxt or ring_next(lay))[rank], ranks_per_node)
        fwd[hop] += (lay.ring - 1) * kv_block
        bwd[hop] += (lay.ring - 1) * (kv_block + dkv_block)
    return Traffic(fwd, bwd, per_peer, kv_block, dkv_block)


def step_flops(step: Step, heads: int, head_dim: int) -> float:
    """Forward FLOPs of one ring step's pieces, `heads` = heads on this rank (H/U)."""
    hd = heads * head_dim
    return sum(
        2.0 * c.q_len * (c.q_len + 1) * hd if c.causal else 4.0 * c.q_len * c.k_len * hd
        for p in step.passes
        for c in p.pieces
    )


def step_work(lay: Layout, seq: int, shape: AttnShape) -> list[tuple[float, int]]:
    """Per ring step: (forward FLOPs, kernel calls), the max over ring ranks (zigzag balances
    them; a few ranks are sampled for large rings, whose steps are identical by construction)."""
    tokens = plan_tokens([seq], lay.ulysses, lay.ring, "zigzag")
    h = shape.heads // lay.ulysses
    ranks = range(lay.ring) if lay.ring <= 16 else sorted({0, lay.ring // 2, lay.ring - 1})
    work = [(0.0, 0)] * lay.ring
    for r in ranks:
        for t, step in enumerate(ring_schedule(tokens, r, True)):
            f = step_flops(step, h, shape.head_dim)
            work[t] = (max(work[t][0], f), max(work[t][1], len(step.passes)))
    return work


@dataclass(frozen=True)
class CallPlan:
    """Everything about one attention call that does not depend on the hardware: computed once
    (it walks the ring schedule), then timed for any Device and Links by `predict`."""

    lay: Layout
    ranks_per_node: int
    a2a_peers: tuple[tuple[int, int], ...]  # per distinct rank: Ulysses peers (intra, inter)
    a2a_q: int  # bytes per peer of one q-sized all-to-all (q, out and their gradients)
    a2a_kv: int  # of one k- or v-sized all-to-all
    hop_tiers: tuple[tuple[str, ...], ...]  # per distinct ring group, hop j: ring rank j → j + 1
    kv_block: int
    dkv_block: int
    work: tuple[tuple[float, int], ...]  # per ring step: forward FLOPs, kernel calls


def plan_call(lay: Layout, seq: int, shape: AttnShape, ranks_per_node: int) -> CallPlan:
    tr = traffic(lay, seq, shape, ranks_per_node, 0)
    peers = {tuple(_a2a_peers(r, lay, ranks_per_node)[t] for t in TIERS) for r in range(lay.sp)}
    return CallPlan(
        lay,
        ranks_per_node,
        tuple(sorted(peers)),  # type: ignore[arg-type]
        tr.a2a_per_peer["q"],
        tr.a2a_per_peer["kv"],
        ring_hop_tiers(lay, ranks_per_node),
        tr.kv_block,
        tr.dkv_block,
        tuple(step_work(lay, seq, shape)),
    )


@dataclass(frozen=True)
class Prediction:
    fwd_s: float
    bwd_s: float
    fwd_comm_s: float  # communication time the forward would spend with nothing hidden
    bwd_comm_s: float
    fwd_compute_s: float
    bwd_compute_s: float


def _a2a_time(per_peer: int, plan: CallPlan, links: Links) -> float:
    """Slowest rank's all-to-all: each tier's peers share that tier's link, tiers run at once."""

    def rank_time(peers: tuple[int, ...]) -> float:
        tiers = [(t, n) for t, n in zip(TIERS, peers, strict=True) if n]
        return max((n * per_peer / links.a2a_bw(t) + links.lat(t) for t, n in tiers), default=0.0)

    return max((rank_time(p) for p in plan.a2a_peers), default=0.0)


Messages = list[np.ndarray | None]  # per ring step: seconds of each ring rank's incoming message


def _ring_pass(c: list[float], hops: Messages, tail: np.ndarray | None, overlap: bool) -> float:
    """Critical path of one ring pass, for the slowest ring rank.

    c[t]: compute of step t; hops[t][j]: seconds of step t's message from ring rank j − 1 to
    ring rank j (None: no message at step t); tail[j]: a last message to j after the loop
    (the backward's dK/dV delivery) or None. A rank's wait covers its receive and its send
    (gloo's send completes once the data has left through a socket of bounded size, NCCL's
    once the peer has it), and both ends must have posted their side, so with
    in_j = hops[t][j], out_j = hops[t][j + 1]:
        ready_j = max(max(T_{j-1}, T_j) + in_j, max(T_j, T_{j+1}) + out_j)
        overlapped   T_j(t+1) = max(T_j(t) + c_t, ready_j)
        wait-first   T_j(t+1) = max(T_j(t), ready_j) + c_t
    With the fast and slow hops of ring-only SP every rank has a slow hop on one side, so
    the slow tier paces every step, which the runs confirm.
    """
    r = next((len(m) for m in hops if m is not None), 1)
    t_now = np.zeros(r)
    prev, nxt = (np.arange(r) - 1) % r, (np.arange(r) + 1) % r

    def ready(t_now: np.ndarray, msg: np.ndarray) -> np.ndarray:
        recv = np.maximum(t_now[prev], t_now) + msg
        send = np.maximum(t_now, t_now[nxt]) + msg[nxt]
        out: np.ndarray = np.maximum(recv, send)
        return out

    for ct, msg in zip(c, hops, strict=True):
        if msg is None:
            t_now = t_now + ct
        elif overlap:
            t_now = np.maximum(t_now + ct, ready(t_now, msg))
        else:
            t_now = np.maximum(t_now, ready(t_now, msg)) + ct
    if tail is not None:
        t_now = ready(t_now, tail)
    return float(t_now.max())


@dataclass(frozen=True)
class Comm:
    """The communication of one call on given links: the all-to-all seconds and, per distinct
    ring group, the message seconds of each step (what `predict` needs besides compute)."""

    a2a_s: float
    rings: tuple[tuple[Messages, Messages, np.ndarray | None], ...]  # forward, backward, delivery


def comm(plan: CallPlan, links: Links) -> Comm:
    if links.ranks_per_node != plan.ranks_per_node:
        raise ValueError(
            f"plan is for {plan.ranks_per_node} ranks per node, links for {links.ranks_per_node}"
        )
    # q, k, v and out (forward); d(out), dq, dk, dv (backward)
    a2a = 2 * _a2a_time(plan.a2a_q, plan, links) + 2 * _a2a_time(plan.a2a_kv, plan, links)
    last = plan.lay.ring - 1
    rings = []
    for tiers in plan.hop_tiers:
        # hop j arrives at ring rank j from j − 1, over the tier of hop j − 1
        inv_bw = np.array([1 / links.bw(tiers[j - 1]) for j in range(len(tiers))])
        lat = np.array([links.lat(tiers[j - 1]) for j in range(len(tiers))])
        fwd: Messages = [plan.kv_block * inv_bw + lat if t < last else None for t in range(plan.lay.ring)]
        # backward: K/V while t < last, the travelling fp32 dK/dV from t = 2, a delivery at the end
        bwd: Messages = [
            ((plan.kv_block if t < last else 0) + (plan.dkv_block if t >= 2 else 0)) * inv_bw + lat
            if t < last or t >= 2
            else None
            for t in range(plan.lay.ring)
        ]
        rings.append((fwd, bwd, plan.dkv_block * inv_bw + lat if last else None))
    return Comm(a2a, tuple(rings))


def predict(
    plan: CallPlan, dev: Device, links: Links, overlap: bool = True, cm: Comm | None = None
) -> Prediction:
    """Modelled time of one usp_attention call, forward and backward, for the slowest rank
    (`cm`: comm(plan, links), passed in when predicting the same call for many devices)."""
    cm = cm or comm(plan, links)
    c_fwd = [f / dev.fwd_flops + calls * dev.call_s for f, calls in plan.work]
    c_bwd = [BWD_FLOPS_FACTOR * f / dev.bwd_flops + calls * dev.call_s for f, calls in plan.work]
    fwd_ring = bwd_ring = fwd_comm = bwd_comm = 0.0
    for fwd, bwd, tail in cm.rings:
        fwd_ring = max(fwd_ring, _ring_pass(c_fwd, fwd, None, overlap))
        bwd_ring = max(bwd_ring, _ring_pass(c_bwd, bwd, tail, overlap))
        fwd_comm = max(fwd_comm, sum(float(m.max()) for m in fwd if m is not None))
        delivery = float(tail.max()) if tail is not None else 0.0
        bwd_comm = max(bwd_comm, sum(float(m.max()) for m in bwd if m is not None) + delivery)
    a2a = cm.a2a_s
    return Prediction(a2a + fwd_ring, a2a + bwd_ring, a2a + fwd_comm, a2a + bwd_comm, sum(c_fwd), sum(c_bwd))


def attention_time(
    lay: Layout, seq: int, shape: AttnShape, dev: Device, links: Links, overlap: bool = True
) -> Prediction:
    return predict(plan_call(lay, seq, shape, links.ranks_per_node), dev, links, overlap)
