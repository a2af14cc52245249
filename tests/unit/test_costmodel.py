"""The attention cost model and its projection (pure: no process, no network)."""

from __future__ import annotations

import pytest
from longvila_trainer.bench.costmodel import (
    AttnShape,
    Device,
    Layout,
    Links,
    plan_call,
    predict,
    ring_next,
    traffic,
)
from longvila_trainer.bench.fit import fit_device
from longvila_trainer.bench.projection import QWEN2_7B, layouts, projection

SHAPE = AttnShape(28, 4, 32, 4)  # the benchmark's: Qwen2-7B heads, head dim scaled down, fp32
CPU = Device("cpu", 5e9, 5e9, 1e-3)


def links(ratio: float, g: int = 2) -> Links:
    return Links(g, 30e6, 30e6 / ratio, 1e-4, 1e-4)


def test_ring_next_is_strided_by_ulysses() -> None:
    assert ring_next(Layout(1, 4)) == [1, 2, 3, 0]
    assert ring_next(Layout(2, 2)) == [2, 3, 0, 1]  # ring groups {0, 2} and {1, 3}
    assert ring_next(Layout(4, 1)) == [0, 1, 2, 3]


def test_traffic_by_tier_on_two_nodes_of_two() -> None:
    n = 256  # 1024 tokens over 4 ranks
    kv = 2 * n * 4 * 32 * 4  # one hop of [2, n·U, 4/U, 32] fp32 is the same for every U
    # ring-only: hops 0→1 and 2→3 stay in a node, 1→2 and 3→0 cross
    for rank, tier in ((0, "intra_node"), (1, "inter_node"), (2, "intra_node"), (3, "inter_node")):
        t = traffic(Layout(1, 4), 1024, SHAPE, 2, rank)
        assert t.fwd == {"intra_node": 0, "inter_node": 0, tier: 3 * kv}
        assert t.bwd[tier] == 3 * kv + 3 * kv  # KV and fp32 dK/dV, R − 1 hops each
    # 2D: the all-to-all inside the node, one ring hop across
    t = traffic(Layout(2, 2), 1024, SHAPE, 2, 0)
    q_peer = n * 14 * 32 * 4  # our rows of the peer's 14 heads
    kv_peer = n * 2 * 32 * 4
    assert t.fwd == {"intra_node": 2 * q_peer + 2 * kv_peer, "inter_node": kv}
    assert t.bwd == {"intra_node": 2 * q_peer + 2 * kv_peer, "inter_node": 2 * kv}
    # Ulysses over both nodes: one peer in the node, two across
    t = traffic(Layout(4, 1), 1024, SHAPE, 2, 1)
    per_peer = 2 * n * 7 * 32 * 4 + 2 * n * 1 * 32 * 4
    assert t.fwd == {"intra_node": per_peer, "inter_node": 2 * per_peer}


def test_overlap_never_slower_and_hides_at_most_the_compute() -> None:
    for lay in (Layout(1, 4), Layout(2, 2), Layout(1, 8), Layout(2, 4)):
        plan = plan_call(lay, 1024, SHAPE, 2)
        for ratio in (1, 4, 18, 50):
            o, w = predict(plan, CPU, links(ratio), True), predict(plan, CPU, links(ratio), False)
            assert o.fwd_s <= w.fwd_s and o.bwd_s <= w.bwd_s
            assert w.fwd_s - o.fwd_s <= o.fwd_compute_s + 1e-12
            assert w.fwd_s <= w.fwd_comm_s + w.fwd_compute_s + 1e-12  # nothing hidden at worst
            assert w.bwd_s <= w.bwd_comm_s + w.bwd_compute_s + 1e-12
            assert o.fwd_s >= max(o.fwd_compute_s, o.fwd_comm_s * 0.999) * 0.5


def test_every_ring_step_is_paced_by_its_slow_hop() -> None:
    """Ring-only on 2 nodes × 2: hops alternate inside / across, and every rank waits for its
    send as well as its receive, so with free compute each of the R − 1 forward steps takes a
    slow hop (what the runs measure: 3 × 262 kB at 18:1 took 3 slow hops, not 2 + 1)."""
    free = Device("free", 1e18, 1e18, 0.0)
    plan = plan_call(Layout(1, 4), 1024, SHAPE, 2)
    lk = Links(2, 30e6, 30e6 / 18, 0.0, 0.0)
    assert predict(plan, free, lk).fwd_s == pytest.approx(3 * plan.kv_block / lk.slow_bps)
    assert plan.hop_tiers == (("intra_node", "inter_node", "intra_node", "inter_node"),)


def test_2d_gains_grow_with_the_tier_ratio_and_saturate() -> None:
    """Communication-bound (tiny compute): 2D sends (R−1) hops across where the ring sends
    (P−1), so the gain tends to (P−1)/(R−1) = 3 on 2 nodes × 2 and never passes it."""
    fast = Device("fast", 1e15, 1e15, 0.0)
    ring, two_d = plan_call(Layout(1, 4), 1024, SHAPE, 2), plan_call(Layout(2, 2), 1024, SHAPE, 2)
    gains = []
    for ratio in (1, 4, 18, 50, 1000):
        r, d = predict(ring, fast, links(ratio), True), predict(two_d, fast, links(ratio), True)
        gains.append((r.fwd_s + r.bwd_s) / (d.fwd_s + d.bwd_s))
    assert gains == sorted(gains) and gains[0] < 1 < gains[1]  # at 1:1 the all-to-all costs more
    assert 2.5 < gains[-1] < 3.0


def test_fit_recovers_a_known_device() -> None:
    true = Device("true", 7e9, 7e9, 2e-3)
    samples = []
    for lay, seq, ratio, overlap in [
        (Layout(1, 4), 1024, 1, True),
        (Layout(2, 2), 2048, 4, True),
        (Layout(4, 1), 512, 1, True),
        (Layout(1, 4), 4096, 18, False),
        (Layout(2, 2), 1024, 50, False),
    ]:
        plan = plan_call(lay, seq, SHAPE, 2)
        p = predict(plan, true, links(ratio), overlap)
        samples.append((plan, links(ratio), overlap, p.fwd_s + p.bwd_s))
    got = fit_device("fit", samples)
    assert got.fwd_flops == pytest.approx(true.fwd_flops, rel=0.05)
    assert got.call_s == pytest.approx(true.call_s, rel=0.1)
    with pytest.raises(ValueError, match="no samples"):
        fit_device("empty", [])


def test_projection_layouts_for_qwen2_7b() -> None:
    got = layouts(64, QWEN2_7B, 8)
    assert got["ring"] == Layout(1, 64)
    assert got["2d"] == Layout(4, 16)  # 28 heads / 4 kv heads: U = 8 does not split them
    assert "cannot split 64 ways" in str(got["ulysses"])


def test_projection_rows() -> None:
    rows = projection([8, 256])
    cases = {(r["case"], r["gpus"]) for r in rows}
    assert ("paper: 578k tokens", 64) in cases and len(rows) == 5
    for r in rows:
        assert r["ring"]["step_s"] > r["ring"]["step_attention_s"] > 0
        assert "n/a" in r["ulysses"]
    short = next(r for r in rows if r["gpus"] == 256 and r["seq"] == 65536)
    assert short["2d_over_ring_attention"] > 2  # 255 latency-bound ring steps against 63
