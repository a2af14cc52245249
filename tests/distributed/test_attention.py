"""2D sequence-parallel attention vs exact attention.

Pure tests first (ring schedule, LSE merge, kernels, validation, one process), then the
distributed ones: every world size spawns its gloo processes once (module fixtures) and
runs all of its cases there; each case is then checked on its own.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
from typing import Any

import pytest
import torch
import torch.distributed as dist
from longvila_contract.layout import LayoutError, ParallelLayout
from longvila_trainer.attention import (
    AttentionContext,
    CommMeter,
    ring_attention,
    ulysses_attention,
    usp_attention,
)
from longvila_trainer.attention.context import Piece, block_pieces, ring_schedule
from longvila_trainer.attention.kernels import (
    CpuFlashKernel,
    MathKernel,
    Varlen,
    masked_attention,
    select_kernel,
)
from longvila_trainer.attention.reference import attention_mask
from longvila_trainer.attention.ring import merge_into
from longvila_trainer.attention.ulysses import seq_all_to_all
from longvila_trainer.bench.attention import Shape, max_seq_table
from longvila_trainer.bench.costmodel import AttnShape, Layout, traffic
from longvila_trainer.check_attention import Case, CaseResult, attention_worker, evaluate, run_cases
from longvila_trainer.check_attention import main as check_attention_main
from longvila_trainer.parallel.comm import Group
from longvila_trainer.parallel.groups import SPGroups, build_groups, single_process_groups
from longvila_trainer.parallel.spawn import run_gloo
from longvila_trainer.parallel.token_layout import plan_tokens

DOCS = [(37, 5, 60, 1), (100,), (13, 50, 1, 20), (64,)]
# (docs, heads, kv heads, kernel): GQA, U > kv heads (kv 1), MHA, no padding at all
VARIANTS = [
    (DOCS[0], 4, 2, "auto"),
    (DOCS[1], 8, 1, "math"),
    (DOCS[2], 4, 4, "auto"),
    (DOCS[3], 4, 2, "auto"),
]


def _cases(u: int, r: int, dp: int = 1) -> list[Case]:
    """Both layouts × causal or not, each with a different variant (so every (U,R) sees all)."""
    out = []
    for i, (kind, causal) in enumerate(itertools.product(("zigzag", "contiguous"), (True, False))):
        docs, h, kv, kernel = VARIANTS[(i + u + r) % len(VARIANTS)]
        out.append(Case(u, r, docs, h, kv, 8, kind, causal, dp, seed=i, kernel=kernel))
    return out


# ---------------------------------------------------------------- pure: the ring schedule
SCHEDULE_CASES = list(
    itertools.product(
        [*DOCS, (3, 1, 2)], [(1, 1), (1, 2), (2, 2), (1, 4), (4, 2), (2, 3)], ("zigzag", "contiguous")
    )
)


@pytest.mark.parametrize(("docs", "deg", "kind"), SCHEDULE_CASES)
@pytest.mark.parametrize("causal", [True, False])
def test_schedule_covers_exactly_the_mask(
    docs: tuple[int, ...], deg: tuple[int, int], kind: str, causal: bool
) -> None:
    """Over all steps, a ring rank's pieces cover every allowed (query, key) pair once and no other."""
    t = plan_tokens(docs, *deg, kind)
    mask = attention_mask(t, causal)
    for r in range(t.ring):
        qidx = t.ring_index(r)
        hits = torch.zeros(len(qidx), t.total, dtype=torch.int32)
        steps = ring_schedule(t, r, causal)
        assert [s.source for s in steps] == [(r - i) % t.ring for i in range(t.ring)]
        for step in steps:
            kidx = t.ring_index(step.source)
            for p in step.passes:
                rows = [set(range(c.q_start, c.q_start + c.q_len)) for c in p.pieces]
                assert sum(map(len, rows)) == len(set().union(*rows)), "a pass reuses a query row"
                for c in p.pieces:
                    assert c.q_len > 0 and c.k_len > 0 and c.causal == p.causal
                    block = torch.ones(c.q_len, c.k_len, dtype=torch.int32)
                    if c.causal:
                        assert c.q_len == c.k_len
                        block = block.tril()
                    cols = kidx[c.k_start : c.k_start + c.k_len]
                    hits[c.q_start : c.q_start + c.q_len, cols] += block
        assert hits.max() <= 1
        assert torch.equal(hits.bool(), mask[qidx])


@pytest.mark.parametrize("ring", [2, 4])
def test_zigzag_schedule_is_the_balanced_one(ring: int) -> None:
    """One unpadded document: s == r causal on [front | back]; s < r: all local queries vs the
    sender's front half; s > r: only the local back half vs all of the sender's KV."""
    t = plan_tokens([16 * ring], 1, ring, "zigzag")
    c = t.shard_len // 2
    work = []
    for r in range(ring):
        flops = 0
        for step in ring_schedule(t, r, True):
            pieces = [p for ps in step.passes for p in ps.pieces]
            s = step.source
            if s == r:
                assert any(p.causal for p in pieces)
            elif s < r:
                assert pieces == [Piece(0, 2 * c, 0, c, False)]
            else:
                assert pieces == [Piece(c, c, 0, 2 * c, False)]
            flops += sum(p.q_len * (p.q_len + 1) // 2 if p.causal else p.q_len * p.k_len for p in pieces)
        work.append(flops)
    assert len(set(work)) == 1, f"zigzag should balance causal work, got {work}"


def test_documents_never_meet_across_the_ring() -> None:
    t = plan_tokens([8, 8], 1, 2, "contiguous")  # rank 1 holds the second half of each doc
    for p in block_pieces(t, 1, 0, causal=False):
        assert (p.q_start < 4) == (p.k_start < 4)  # doc 0 rows only see doc 0 keys


# ---------------------------------------------------------------- pure: merge and kernels
def test_merge_never_makes_nan() -> None:
    acc = torch.zeros(3, 1, 2)
    acc_lse = torch.full((3, 1), float("-inf"))
    out = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]], [[5.0, 6.0]]])
    lse = torch.tensor([[0.0], [float("-inf")], [1.0]])
    merge_into(acc, acc_lse, out, lse)
    assert torch.equal(acc[0], out[0]) and torch.equal(acc[2], out[2])
    assert torch.equal(acc[1], torch.zeros(1, 2)) and acc_lse[1].item() == float("-inf")
    merge_into(acc, acc_lse, out, torch.tensor([[0.0], [float("-inf")], [1.0]]))  # equal halves
    assert torch.allclose(acc[0], out[0]) and torch.allclose(acc_lse[0], torch.tensor([2.0]).log())
    assert not acc.isnan().any() and not acc_lse.isnan().any()


def test_masked_attention_fully_masked_row() -> None:
    q, k, v = torch.randn(3, 2, 4), torch.randn(5, 1, 4), torch.randn(5, 1, 4)
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[1] = False
    out, lse = masked_attention(q, k, v, mask, 0.5)
    assert torch.equal(out[1], torch.zeros(2, 4)) and (lse[1] == float("-inf")).all()
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("causal", [True, False])
def test_cpu_flash_matches_math_varlen_gqa(causal: bool) -> None:
    torch.manual_seed(0)
    seg = Varlen((0, 5, 12, 13), (0, 5, 12, 13), causal) if causal else Varlen((0, 5, 12), (0, 9, 10), False)
    q = torch.randn(seg.cu_q[-1], 4, 8)
    k, v = torch.randn(seg.cu_k[-1], 2, 8), torch.randn(seg.cu_k[-1], 2, 8)
    dout = torch.randn_like(q)
    fa, ma = CpuFlashKernel(), MathKernel()
    (o1, l1), (o2, l2) = fa.forward(q, k, v, seg, 0.3), ma.forward(q, k, v, seg, 0.3)
    assert torch.allclose(o1, o2, atol=1e-5) and torch.allclose(l1, l2, atol=1e-5)
    for a, b in zip(
        fa.backward(dout, q, k, v, o1, l1, seg, 0.3),
        ma.backward(dout, q, k, v, o1, l1, seg, 0.3),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-5)


def test_kernel_choice() -> None:
    q = torch.empty(1, 1, 1)
    assert select_kernel("auto", q).name == "cpu_flash"
    assert select_kernel("math", q).name == "math"
    with pytest.raises(ValueError, match="needs CUDA"):
        select_kernel("sdpa", q)
    with pytest.raises(ValueError, match="kernel must be one of"):
        select_kernel("xformers", q)


def test_max_sequence_grows_linearly_with_sp() -> None:
    shape = Shape(28, 4, 128)  # Qwen2-7B attention
    rows = {r["sp"]: r for r in max_seq_table(shape, 80.0, 2, [1, 2, 4, 8, 16], u_node=4)}
    for sp in (2, 4, 8):  # ring: one layout kind for every R ≥ 2, so exactly ∝ SP (up to padding)
        assert abs(rows[2 * sp]["ring"] / rows[sp]["ring"] - 2) < 1e-5
    assert abs(rows[16]["2d"] / rows[8]["2d"] - 2) < 1e-5  # U = 4 fixed, R = 2 -> 4
    assert rows[8]["ulysses"] is None  # 28 heads cannot be split 8 ways
    assert rows[4]["ulysses"] > rows[2]["ulysses"] > rows[1]["ulysses"]


# ---------------------------------------------------------------- one process
def test_single_process() -> None:
    cases = [
        Case(1, 1, docs, h, kv, 8, kind, causal, kernel=kern)
        for (docs, h, kv, kern), kind, causal in itertools.product(
            VARIANTS, ("zigzag", "contiguous"), (True, False)
        )
    ]
    for res in run_cases(cases, 1):
        assert res.ok, (res.case, res.errors)


def _fake_groups(u: int, r: int) -> SPGroups:
    """Rank 0's view of a U×R layout with no process groups: enough for validation paths."""
    return SPGroups(ParallelLayout(u * r, u, r), 0, None, None, None, None, tuple(range(0, u * r, u)))


def test_validation_errors() -> None:
    g, t = _fake_groups(2, 1), plan_tokens([8], 2, 1, "zigzag")
    ctx = AttentionContext(g, t)
    n = t.shard_len
    with pytest.raises(
        LayoutError, match=r"attention heads \(3\) must be divisible by the Ulysses degree \(2\)"
    ):
        usp_attention(torch.randn(n, 3, 4), torch.randn(n, 3, 4), torch.randn(n, 3, 4), ctx)
    with pytest.raises(LayoutError, match="must divide one another"):
        usp_attention(
            torch.randn(n, 6, 4),
            torch.randn(n, 3, 4),
            torch.randn(n, 3, 4),
            AttentionContext(_fake_groups(2, 1), plan_tokens([8], 2, 1, "zigzag")),
        )
    with pytest.raises(LayoutError, match="shard_len = 4"):
        usp_attention(torch.randn(5, 2, 4), torch.randn(5, 2, 4), torch.randn(5, 2, 4), ctx)
    with pytest.raises(LayoutError, match="ring_attention needs ulysses = 1"):
        ring_attention(torch.randn(n, 2, 4), torch.randn(n, 2, 4), torch.randn(n, 2, 4), ctx)
    with pytest.raises(LayoutError, match="ulysses_attention needs ring = 1"):
        ulysses_attention(
            *(torch.randn(4, 2, 4) for _ in range(3)),
            AttentionContext(_fake_groups(1, 2), plan_tokens([8], 1, 2, "zigzag")),
        )
    with pytest.raises(LayoutError, match="token layout is for ulysses=1, ring=2"):
        AttentionContext(g, plan_tokens([8], 1, 2, "zigzag"))


def test_single_process_entry_points_agree() -> None:
    t = plan_tokens([10, 3], 1, 1, "zigzag")
    ctx = AttentionContext(single_process_groups(), t)
    q, k, v = torch.randn(t.total, 4, 8), torch.randn(t.total, 2, 8), torch.randn(t.total, 2, 8)
    a, b, c = (f(q, k, v, ctx) for f in (usp_attention, ring_attention, ulysses_attention))
    assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------- distributed
A2A_SIZES = [3, 5, 0, 2]  # uneven Ulysses shards, one of them empty
TIER_SEQ, TIER_SHAPE = 64, AttnShape(4, 2, 8, 4)


def world_worker(rank: int, world: int, cases: list[Case]) -> dict[str, Any]:
    """All cases of this world size, plus (world 4) the uneven all-to-all round trip."""
    out: dict[str, Any] = {"cases": attention_worker(rank, world, cases)}
    if world == len(A2A_SIZES):
        gen = torch.Generator().manual_seed(7)
        full, weight = (
            torch.randn(sum(A2A_SIZES), 4, 3, generator=gen),
            torch.randn(sum(A2A_SIZES), 4, 3, generator=gen),
        )
        start = sum(A2A_SIZES[:rank])
        x = full[start : start + A2A_SIZES[rank]].clone().requires_grad_()
        meter = CommMeter()
        world_group = Group(dist.group.WORLD, torch.device("cpu"), "world")
        y = seq_all_to_all(x, world_group, rank, to_seq=True, meter=meter)  # sizes by all-gather
        back = seq_all_to_all(y, world_group, rank, to_seq=False, sizes=A2A_SIZES, meter=meter)
        (y * weight[:, rank : rank + 1]).sum().backward()  # d/dx of Σ_u <y_u, W[:, u]> is W
        # ring-only (R = 4) traffic as counted by the comm layer, forward and backward
        t = plan_tokens([64], 1, 4, "zigzag")
        ring_meter = CommMeter()
        ctx = AttentionContext(build_groups(ParallelLayout(4, 1, 4), check_hosts=False), t, meter=ring_meter)
        q, k, v = (torch.randn(t.shard_len, h, 8, requires_grad=True) for h in (4, 2, 2))
        o = usp_attention(q, k, v, ctx)
        fwd = dict(ring_meter.sent)
        torch.autograd.backward(o, torch.randn_like(o))
        out["ring_bytes"] = (fwd, dict(ring_meter.sent), dict(ring_meter.calls))
        # the same split by tier, as if ranks 0-1 and 2-3 were two nodes, for ring-only and 2D
        out["tiers"] = {}
        for u, r in ((1, 4), (2, 2), (4, 1)):
            t = plan_tokens([TIER_SEQ], u, r, "zigzag")
            tm = CommMeter(node_of=(0, 0, 1, 1), rank=rank)
            ctx = AttentionContext(build_groups(ParallelLayout(4, u, r), check_hosts=False), t, meter=tm)
            q, k, v = (
                torch.randn(t.shard_len, h, TIER_SHAPE.head_dim, requires_grad=True) for h in (4, 2, 2)
            )
            o = usp_attention(q, k, v, ctx)
            fwd_tiers = dict(tm.tier_sent)
            torch.autograd.backward(o, torch.randn_like(o))
            bwd_tiers = {n: tm.tier_sent[n] - fwd_tiers.get(n, 0) for n in tm.tier_sent}
            out["tiers"][(u, r)] = (fwd_tiers, bwd_tiers, tm.total, dict(tm.blocked_s))
        out["a2a"] = {
            "y": y.detach(),
            "back": back.detach(),
            "x": x.detach(),
            "grad": x.grad,
            "bytes": meter.sent["all_to_all"],
            "full": full,
            "weight": weight,
        }
    return out


def _spawn(world: int, cases: list[Case]) -> tuple[list[CaseResult], list[dict[str, Any]]]:
    per_rank = run_gloo(world_worker, world, cases)
    return evaluate(cases, [r["cases"] for r in per_rank]), per_rank


# the same problems with the ring waiting for each hop before computing (the wait-first
# baseline of bench.network): exact too, and equal to the overlapped schedule
WAIT_FIRST = [
    Case(2, 2, DOCS[0], 4, 2, 8, "zigzag", True, seed=3),
    Case(1, 4, DOCS[2], 4, 4, 8, "contiguous", False, seed=4),
    Case(1, 4, DOCS[1], 4, 2, 8, "zigzag", True, seed=5),
]
WORLD4 = (
    [c for ur in ((2, 2), (1, 4), (4, 1)) for c in _cases(*ur)]
    + [c for ur in ((1, 2), (2, 1)) for c in _cases(*ur, dp=2)]
    + [Case(2, 2, (21, 30, 2), 4, 2, 8, "zigzag", True, seed=9, pad_kv=float("nan"))]
    + [c for w in WAIT_FIRST for c in (w, dataclasses.replace(w, overlap=False))]
)
WORLD8 = [c for ur in ((2, 4), (4, 2)) for c in _cases(*ur)] + [
    Case(2, 2, (50, 13), 8, 2, 8, "zigzag", True, dp=2)
]


@pytest.fixture(scope="module")
def world4() -> tuple[list[CaseResult], list[dict[str, Any]]]:
    return _spawn(4, WORLD4)


@pytest.fixture(scope="module")
def world8() -> tuple[list[CaseResult], list[dict[str, Any]]]:
    return _spawn(8, WORLD8)


def _case_id(c: Case) -> str:
    mask = "causal" if c.causal else "full"
    pad = "-nanpad" if c.pad_kv != c.pad_kv else ""
    heads = f"h{c.heads}kv{c.kv_heads}"
    wait = "" if c.overlap else "-waitfirst"
    return f"U{c.ulysses}R{c.ring}dp{c.dp}-{c.kind}-{mask}-{heads}-{c.kernel}-docs{len(c.docs)}{pad}{wait}"


def _check(res: CaseResult) -> None:
    assert res.ok, f"{_case_id(res.case)}: errors {res.errors} vs exact magnitude {res.scale}"
    for got in res.got:  # padding K/V get exactly zero gradient; nothing is NaN
        valid = res.case.tokens().valid
        assert (got["dk"][~valid] == 0).all() and (got["dv"][~valid] == 0).all()
        assert all(torch.isfinite(x).all() for x in got.values())


@pytest.mark.distributed
@pytest.mark.parametrize("i", range(len(WORLD4)), ids=[_case_id(c) for c in WORLD4])
def test_world4(world4: tuple[list[CaseResult], list[dict[str, Any]]], i: int) -> None:
    _check(world4[0][i])


@pytest.mark.distributed
@pytest.mark.parametrize("i", range(len(WORLD8)), ids=[_case_id(c) for c in WORLD8])
def test_world8(world8: tuple[list[CaseResult], list[dict[str, Any]]], i: int) -> None:
    _check(world8[0][i])


@pytest.mark.distributed
@pytest.mark.parametrize("w", WAIT_FIRST, ids=_case_id)
def test_wait_first_equals_overlapped(world4: tuple[list[CaseResult], list[dict[str, Any]]], w: Case) -> None:
    """Posting the next hop before the compute (overlap) or waiting for it first changes when
    data moves, not what is computed: same out, dq, dk, dv within fp32 tolerance."""
    res = {r.case: r for r in world4[0]}
    a, b = res[w], res[dataclasses.replace(w, overlap=False)]
    assert a.ok and b.ok
    for x, y in zip(a.got, b.got, strict=True):
        for name in x:
            assert torch.allclose(x[name], y[name], rtol=1e-6, atol=1e-6), name


@pytest.mark.distributed
def test_uneven_all_to_all(world4: tuple[list[CaseResult], list[dict[str, Any]]]) -> None:
    per_rank = world4[1]
    for rank, r in enumerate(per_rank):
        a = r["a2a"]
        assert torch.equal(a["y"], a["full"][:, rank : rank + 1])  # whole sequence, head `rank`
        assert torch.equal(a["back"], a["x"])  # the inverse restores the shard
        start = sum(A2A_SIZES[:rank])
        assert torch.allclose(a["grad"], a["weight"][start : start + A2A_SIZES[rank]])
        row = 1 * 3 * 4  # bytes of one row of one head (H/U = 1, D = 3, fp32)
        sent_fwd = A2A_SIZES[rank] * 3 * row  # our rows' other heads, to the 3 other ranks
        sent_inv = (sum(A2A_SIZES) - A2A_SIZES[rank]) * row  # the other ranks' rows of our head
        assert a["bytes"] == sent_fwd + 2 * sent_inv  # y's backward is an inverse all-to-all too


@pytest.mark.distributed
def test_ring_traffic_is_counted(world4: tuple[list[CaseResult], list[dict[str, Any]]]) -> None:
    kv_block = 2 * 16 * 2 * 8 * 4  # [2, S_local=16, H_kv=2, D=8] fp32
    for r in world4[1]:
        fwd, total, calls = r["ring_bytes"]
        assert fwd == {"p2p": 3 * kv_block}  # R − 1 hops of the KV block
        assert total == {"p2p": 3 * kv_block + 3 * kv_block + 3 * kv_block}  # + KV and fp32 dKV hops
        assert calls == {"p2p": 9}


@pytest.mark.distributed
def test_bytes_per_tier_match_the_cost_model(world4: tuple[list[CaseResult], list[dict[str, Any]]]) -> None:
    """The comm layer's split by tier (2 nodes × 2 ranks) equals costmodel.traffic, which the
    GPU projection uses: the all-to-all of 2D stays inside a node, only its ring crosses."""
    for rank, r in enumerate(world4[1]):
        for (u, ring), (fwd, bwd, total, blocked) in r["tiers"].items():
            want = traffic(Layout(u, ring), TIER_SEQ, TIER_SHAPE, 2, rank)
            assert fwd == {k: v for k, v in want.fwd.items() if v}, (u, ring, rank)
            assert bwd == {k: v for k, v in want.bwd.items() if v}, (u, ring, rank)
            assert sum(fwd.values()) + sum(bwd.values()) == total  # every byte has a tier
            assert ("all_to_all" in blocked) == (u > 1) and ("p2p" in blocked) == (ring > 1)


# ---------------------------------------------------------------- the CLI
@pytest.mark.distributed
def test_check_attention_cli_passes() -> None:
    cmd = [
        sys.executable,
        "-m",
        "longvila_trainer.check_attention",
        "--ulysses",
        "1",
        "--ring",
        "2",
        "--seq",
        "23",
        "--heads",
        "2",
        "--kv-heads",
        "1",
        "--head-dim",
        "4",
        "--varlen",
        "20,3",
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout.strip().splitlines()[-1])
    assert report["ok"] is True and report["world"] == 2 and report["padded_seq"] == 24
    assert (
        set(report["max_abs_err"]) == {"out", "dq", "dk", "dv"} and max(report["max_abs_err"].values()) < 1e-4
    )


def _cli_argv(**over: str) -> list[str]:
    base = {"ulysses": "1", "ring": "1", "seq": "12", "heads": "4", "kv-heads": "4", "head-dim": "4", **over}
    return [x for k, v in base.items() for x in (f"--{k}", v)]


def test_check_attention_cli_rejects_in_a_subprocess() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "longvila_trainer.check_attention", *_cli_argv(ulysses="4", heads="6")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert p.stderr == (
        "check_attention: error: attention heads (6) must be divisible by the Ulysses degree (4); "
        "allowed Ulysses degrees: [1, 2, 3, 6]\n"
    )


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"ulysses": "4", "heads": "8", "kv-heads": "3"}, "must be a multiple of kv heads (3)"),
        ({"ulysses": "2", "world": "3"}, "--world (3) must equal ulysses × ring × dp"),
        ({"varlen": "3,4"}, "--varlen lengths must sum to --seq (12)"),
        ({"layout": "striped"}, "layout must be one of zigzag, contiguous"),
        ({"ring": "0"}, "--ring must be ≥ 1"),
        ({"kernel": "sdpa"}, "argument --kernel: invalid choice"),
    ],
)
def test_check_attention_cli_rejects(over: dict[str, str], needle: str, capsys: Any) -> None:
    assert check_attention_main(_cli_argv(**over)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err


# ---------------------------------------------------------------- opt-in GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["sdpa", "sdpa_efficient", "flash_attn"])
def test_cuda_kernels_match_math(name: str) -> None:
    if name == "flash_attn":
        pytest.importorskip("flash_attn")
    seg = Varlen((0, 64, 128, 200), (0, 64, 128, 200), True)
    q = torch.randn(200, 8, 64, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(200, 2, 64, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    dout = torch.randn_like(q)
    kern, ref = select_kernel(name, q), MathKernel()
    (o1, l1), (o2, l2) = kern.forward(q, k, v, seg, 0.125), ref.forward(q, k, v, seg, 0.125)
    assert (o1.float() - o2.float()).abs().max() < 2e-2 and (l1 - l2).abs().max() < 1e-2
    for a, b in zip(
        kern.backward(dout, q, k, v, o2, l2, seg, 0.125),
        ref.backward(dout, q, k, v, o2, l2, seg, 0.125),
        strict=True,
    ):
        assert (a.float() - b.float()).abs().max() < 5e-2
