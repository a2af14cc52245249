"""Benchmark of the sequence-parallel attention (by hand; not a timed test).

    python -m longvila_trainer.bench.attention [--world 4] [--seqs 1024,2048,4096] [--json]
    python -m longvila_trainer.bench.attention --gpu            # kernel part, needs CUDA

CPU part: `world` gloo processes run Ulysses-only (U = world), ring-only zigzag (R = world)
and 2D (U × R = world) causal attention, forward + backward, on one sequence per length,
and report per-rank time and the bytes each rank sent, counted by the comm layer's
CommMeter (not estimated). Then the largest sequence that fits --budget-gb per rank for
SP = 1, 2, 4, 8, from an *analytical* model of the attention op's own buffers (see
`bytes_per_token`); it is linear in the local shard, so the maximum grows linearly with SP
(Ulysses-only stops where U no longer divides the heads).

GPU part (--gpu): TFLOP/s of one zigzag ring step (our kernel layer: pieces + LSE merge)
against full-sequence causal SDPA, bf16, 8k–128k tokens, with a correctness check first.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from longvila_contract.layout import LayoutError, ParallelLayout, kv_replication
from torch import Tensor

from ..attention.comm import CommMeter
from ..attention.context import AttentionContext, Step, ring_schedule
from ..attention.kernels import Kernel, select_kernel
from ..attention.reference import exact_attention
from ..attention.ring import pass_backward, pass_forward
from ..attention.usp import usp_attention
from ..parallel.groups import SPGroups, build_groups
from ..parallel.spawn import run_gloo
from ..parallel.token_layout import plan_tokens


@dataclass(frozen=True)
class Mode:
    name: str
    ulysses: int
    ring: int


@dataclass(frozen=True)
class Shape:
    heads: int
    kv_heads: int
    head_dim: int


def modes(world: int, u2d: int) -> list[Mode]:
    return [Mode("ulysses", world, 1), Mode("ring", 1, world), Mode("2d", u2d, world // u2d)]


def _why_not(mode: Mode, shape: Shape) -> str | None:
    try:
        kv_replication(shape.heads, shape.kv_heads, mode.ulysses)
    except LayoutError as e:
        return str(e)
    return None


def bench_worker(
    rank: int, world: int, all_modes: list[Mode], seqs: list[int], shape: Shape, iters: int
) -> list[dict[str, Any]]:
    """Times fwd and bwd of usp_attention on this rank; counts its bytes per direction."""
    rows = []
    for mode in all_modes:
        if _why_not(mode, shape):
            continue
        groups: SPGroups = build_groups(ParallelLayout(world, mode.ulysses, mode.ring), check_hosts=False)
        for seq in seqs:
            tokens = plan_tokens([seq], mode.ulysses, mode.ring, "zigzag")
            meter = CommMeter()
            ctx = AttentionContext(groups, tokens, meter=meter)
            gen = torch.Generator().manual_seed(rank)
            n, h, hk, d = tokens.shard_len, shape.heads, shape.kv_heads, shape.head_dim
            q, k, v = (torch.randn(n, x, d, generator=gen).requires_grad_() for x in (h, hk, hk))
            dout = torch.randn(n, h, d, generator=gen)
            fwd_t, bwd_t, fwd_b, bwd_b = [], [], 0, 0
            for it in range(iters + 1):  # iteration 0 warms up
                meter.reset()
                t0 = time.perf_counter()
                out = usp_attention(q, k, v, ctx, causal=True)
                t1 = time.perf_counter()
                fwd_b = meter.total
                torch.autograd.backward(out, dout)
                t2 = time.perf_counter()
                bwd_b = meter.total - fwd_b
                if it:
                    fwd_t.append(t1 - t0)
                    bwd_t.append(t2 - t1)
            rows.append(
                {
                    "mode": mode.name,
                    "ulysses": mode.ulysses,
                    "ring": mode.ring,
                    "seq": seq,
                    "rank": rank,
                    "fwd_s": statistics.median(fwd_t),
                    "bwd_s": statistics.median(bwd_t),
                    "fwd_bytes": fwd_b,
                    "bwd_bytes": bwd_b,
                }
            )
    return rows


def summarize(per_rank: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per (mode, seq): the slowest rank's times (the step waits for it) and max bytes sent."""
    out = []
    for i, row in enumerate(per_rank[0]):
        rs = [r[i] for r in per_rank]
        out.append(
            {
                **{k: row[k] for k in ("mode", "ulysses", "ring", "seq")},
                "fwd_s": max(r["fwd_s"] for r in rs),
                "bwd_s": max(r["bwd_s"] for r in rs),
                "fwd_MB_per_rank": max(r["fwd_bytes"] for r in rs) / 2**20,
                "bwd_MB_per_rank": max(r["bwd_bytes"] for r in rs) / 2**20,
            }
        )
    return out


def bytes_per_token(mode: Mode, shape: Shape, elem: int) -> float:
    """Analytical bytes per *local* token that one attention call holds at its backward peak.

    H heads, K kv heads after GQA replication for U, D head dim, e element bytes. A gathered
    (post all-to-all) tensor has U·S_l rows of H/U heads: the same bytes per local token.
      saved for backward: q, k, v, out  (2H + 2K)·D·e,  lse  H·4
      dout (and its gathered copy when U > 1)          H·D·e  (×2)
      dq accumulator, fp32                             H·D·4
      KV block in hand (and one in flight when R > 1)  2K·D·e (×2)
      dKV fp32: own, step (and travelling, arriving)   2K·D·4 (×2, ×4 when R > 1)
    Flash kernels keep no S² scores, so the peak is linear in S_l = S / SP and the largest
    sequence is SP × budget / this. The caller's projections and the rest of the model are
    not included; KV replication (U > kv heads) is why Ulysses grows slower than SP.
    """
    h, d = shape.heads, shape.head_dim
    k = shape.kv_heads * kv_replication(h, shape.kv_heads, mode.ulysses)
    u, r = mode.ulysses > 1, mode.ring > 1
    saved = (2 * h + 2 * k) * d * elem + h * 4
    dout = h * d * elem * (2 if u else 1)
    ring = 2 * k * d * elem * (2 if r else 1) + 2 * k * d * 4 * (4 if r else 2)
    return float(saved + dout + h * d * 4 + ring)


def max_seq_table(
    shape: Shape, budget_gb: float, elem: int, sps: list[int], u_node: int
) -> list[dict[str, Any]]:
    """Largest zigzag-padded sequence per layout; 2D uses U = min(SP, u_node) (one node's GPUs)."""
    rows = []
    for sp in sps:
        row: dict[str, Any] = {"sp": sp}
        u2d = min(sp, u_node)
        for mode in (Mode("ulysses", sp, 1), Mode("ring", 1, sp), Mode("2d", u2d, sp // u2d)):
            if _why_not(mode, shape):
                row[mode.name] = None  # heads cannot be split U ways (Ulysses' cap)
                continue
            unit = 2 * sp  # zigzag padding unit
            per_token = bytes_per_token(mode, shape, elem)
            n = int(budget_gb * 2**30 / per_token) * sp
            row[mode.name] = n // unit * unit
            row[f"{mode.name}_bytes_per_local_token"] = per_token
        rows.append(row)
    return rows


def _print_tables(timing: list[dict[str, Any]], mem: list[dict[str, Any]], args: Any) -> None:
    print(
        f"# CPU gloo, world {args.world}, causal zigzag, heads {args.heads}/{args.kv_heads}, "
        f"head dim {args.head_dim}, fp32; median of {args.iters}, slowest rank"
    )
    print(f"{'mode':8} {'U':>2} {'R':>2} {'seq':>7} {'fwd s':>8} {'bwd s':>8} {'fwd MB':>9} {'bwd MB':>9}")
    for r in timing:
        print(
            f"{r['mode']:8} {r['ulysses']:>2} {r['ring']:>2} {r['seq']:>7} {r['fwd_s']:>8.3f} "
            f"{r['bwd_s']:>8.3f} {r['fwd_MB_per_rank']:>9.2f} {r['bwd_MB_per_rank']:>9.2f}"
        )
    print(
        f"\n# largest sequence per rank budget {args.budget_gb} GB (analytical model, "
        f"{args.mem_bytes}-byte elements, attention buffers only)"
    )
    two_d = f"2d (U<={args.ulysses_2d})"
    print(f"{'SP':>3} {'ulysses':>12} {'B/tok':>6} {'ring':>12} {'B/tok':>6} {two_d:>12} {'B/tok':>6}")
    for r in mem:
        cells = [
            f"{r[m]:>12,} {r[m + '_bytes_per_local_token']:>6.0f}" if r[m] else f"{'n/a':>12} {'':>6}"
            for m in ("ulysses", "ring", "2d")
        ]
        print(f"{r['sp']:>3} " + " ".join(cells))
    print(
        "# max seq = SP x budget / B/tok (bytes per local token, fixed per layout kind). Ulysses grows\n"
        "# slower once U > kv heads (KV replicated U/kv times) and is n/a where U does not divide the heads."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m longvila_trainer.bench.attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--world", type=int, default=4, help="processes (SP degree) for the timing runs")
    ap.add_argument("--ulysses-2d", type=int, default=2, help="U of the 2D run (R = world / U)")
    ap.add_argument("--seqs", default="1024,2048,4096", help="comma-separated sequence lengths")
    ap.add_argument("--heads", type=int, default=None, help="default 8 (CPU), 32 (--gpu)")
    ap.add_argument("--kv-heads", type=int, default=None, help="default 2 (CPU), 8 (--gpu)")
    ap.add_argument("--head-dim", type=int, default=None, help="default 64 (CPU), 128 (--gpu)")
    ap.add_argument("--iters", type=int, default=2)
    ap.add_argument("--budget-gb", type=float, default=80.0, help="per-rank memory for the max-seq table")
    ap.add_argument("--mem-bytes", type=int, default=2, help="element bytes in the memory model (bf16 = 2)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    ap.add_argument("--gpu", action="store_true", help="run the CUDA kernel benchmark instead")
    ap.add_argument("--gpu-seqs", default="8192,16384,32768,65536,131072")
    ap.add_argument("--gpu-ring", type=int, default=8, help="ring size R of the measured ring step")
    args = ap.parse_args(argv)
    for name, cpu, gpu in (("heads", 8, 32), ("kv_heads", 2, 8), ("head_dim", 64, 128)):
        if getattr(args, name) is None:
            setattr(args, name, gpu if args.gpu else cpu)
    shape = Shape(args.heads, args.kv_heads, args.head_dim)
    if args.gpu:
        return gpu_main(args)
    if args.world < 1 or args.world % args.ulysses_2d:
        print(
            f"bench: error: --ulysses-2d ({args.ulysses_2d}) must divide --world ({args.world})",
            file=sys.stderr,
        )
        return 2
    seqs = [int(s) for s in args.seqs.split(",")]
    all_modes = modes(args.world, args.ulysses_2d)
    skipped = {m.name: w for m in all_modes if (w := _why_not(m, shape))}
    per_rank = run_gloo(bench_worker, args.world, all_modes, seqs, shape, args.iters)
    timing = summarize(per_rank)
    mem = max_seq_table(shape, args.budget_gb, args.mem_bytes, [1, 2, 4, 8], args.ulysses_2d)
    if args.json:
        print(
            json.dumps(
                {
                    "config": vars(args),
                    "shape": asdict(shape),
                    "skipped": skipped,
                    "timing": timing,
                    "max_seq": mem,
                }
            )
        )
    else:
        _print_tables(timing, mem, args)
        for name, why in skipped.items():
            print(f"# {name} skipped: {why}")
    return 0


# ---- GPU kernel part (--gpu) ----


def seconds(fn: Any, device: torch.device, iters: int = 5, warmup: int = 2) -> float:
    """Mean seconds of fn() on `device`: CUDA events on a GPU, the wall clock on the CPU."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end)) / iters / 1e3


def step_flops(step: Step, shape: Shape) -> float:
    """Forward FLOPs of a step's pieces (2 matmuls; a causal square counts its half)."""
    hd = shape.heads * shape.head_dim
    total = 0.0
    for p in step.passes:
        for c in p.pieces:
            total += 2 * c.q_len * (c.q_len + 1) * hd if c.causal else 4 * c.q_len * c.k_len * hd
    return total


def run_step(kernel: Kernel, step: Step, x: dict[str, Tensor], scale: float, backward: bool) -> None:
    acc = torch.zeros(x["q"].shape, dtype=torch.float32, device=x["q"].device)
    lse = torch.full(x["q"].shape[:2], float("-inf"), device=x["q"].device)
    for p in step.passes:
        pass_forward(kernel, x["q"], x["k"], x["v"], p, scale, acc, lse)
    if backward:
        dq = torch.zeros_like(acc)
        dkv = torch.zeros((2, *x["k"].shape), dtype=torch.float32, device=acc.device)
        saved = (x["q"], x["q"], acc.to(x["q"].dtype), lse)  # dout: any tensor of q's shape
        for p in step.passes:
            pass_backward(kernel, saved, x["k"], x["v"], p, scale, dq, dkv)


def ring_forward_error(
    kernel: Kernel, ring: int, device: str = "cuda", dtype: torch.dtype = torch.bfloat16
) -> float:
    """Max |error| on real tokens of every ring rank's merged forward (all steps of the causal
    zigzag schedule, packed documents) vs exact attention, with no process group."""
    tokens = plan_tokens([300, 77, 515], 1, ring, "zigzag")
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(tokens.total, h, 64, generator=gen) for h in (8, 2, 2))
    want = exact_attention(q.double(), k.double(), v.double(), tokens, True).float()
    err = 0.0
    for r in range(ring):
        idx = tokens.ring_index(r)
        xq = q[idx].to(device, dtype)
        acc = torch.zeros(xq.shape, dtype=torch.float32, device=device)
        lse = torch.full(xq.shape[:2], float("-inf"), device=device)
        for s in ring_schedule(tokens, r, True):
            kv = tokens.ring_index(s.source)
            xk, xv = k[kv].to(device, dtype), v[kv].to(device, dtype)
            for p in s.passes:
                pass_forward(kernel, xq, xk, xv, p, 64**-0.5, acc, lse)
        real = tokens.valid[idx]
        err = max(err, (acc.cpu()[real] - want[idx][real]).abs().max().item())
    return err


def ring_step_rows(
    kernel: Kernel, shape: Shape, ring: int, seqs: list[int], device: torch.device, dtype: torch.dtype
) -> list[dict[str, Any]]:
    """TFLOP/s of full-sequence causal SDPA and of the three kinds of zigzag ring step of a
    middle ring rank (diagonal, sender < r, sender > r), forward and forward + backward."""
    rows: list[dict[str, Any]] = []
    scale = shape.head_dim**-0.5
    for n in seqs:
        full = {
            name: torch.randn(n, h, shape.head_dim, device=device, dtype=dtype, requires_grad=True)
            for name, h in (("q", shape.heads), ("k", shape.kv_heads), ("v", shape.kv_heads))
        }
        f = 2 * n * n * shape.heads * shape.head_dim  # causal forward FLOPs

        def sdpa(full: dict[str, Tensor] = full) -> Tensor:
            q, k, v = (full[x].transpose(0, 1)[None] for x in ("q", "k", "v"))
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

        t_f = seconds(lambda: sdpa(), device)
        t_fb = seconds(lambda: torch.autograd.backward(sdpa().sum()), device)
        rows.append({"what": "full-seq SDPA causal", "seq": n, "fwd_tflops": f / t_f / 1e12,
                     "fwd_bwd_tflops": 3.5 * f / t_fb / 1e12})  # fmt: skip
        del full
        tokens = plan_tokens([n], 1, ring, "zigzag")
        r = ring // 2  # a middle rank has all three step kinds
        local = {
            name: torch.randn(tokens.shard_len, h, shape.head_dim, device=device, dtype=dtype)
            for name, h in (("q", shape.heads), ("k", shape.kv_heads), ("v", shape.kv_heads))
        }
        steps = ring_schedule(tokens, r, True)
        for label, step in (("diagonal", steps[0]), ("sender<r", steps[1]), ("sender>r", steps[-1])):
            sf = step_flops(step, shape)
            t_f = seconds(lambda step=step, x=local: run_step(kernel, step, x, scale, False), device)
            t_fb = seconds(lambda step=step, x=local: run_step(kernel, step, x, scale, True), device)
            rows.append({"what": f"ring step R={ring} {label}", "seq": n, "fwd_tflops": sf / t_f / 1e12,
                         "fwd_bwd_tflops": 3.5 * sf / t_fb / 1e12})  # fmt: skip
    return rows


def gpu_main(args: Any) -> int:
    if not torch.cuda.is_available():
        print("bench: error: --gpu needs a CUDA device (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    shape, ring, device = Shape(args.heads, args.kv_heads, args.head_dim), args.gpu_ring, torch.device("cuda")
    kernel = select_kernel("auto", torch.empty(1, 1, args.head_dim, device=device, dtype=torch.bfloat16))
    seqs = [int(s) for s in args.gpu_seqs.split(",")]
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(),
        "kernel": kernel.name,
        "check_max_abs_err_bf16": ring_forward_error(kernel, ring),
        "rows": ring_step_rows(kernel, shape, ring, seqs, device, torch.bfloat16),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(
            f"# {report['device']}, kernel {kernel.name}, bf16, heads {shape.heads}/{shape.kv_heads}, "
            f"dim {shape.head_dim}; check max|err| {report['check_max_abs_err_bf16']:.3g}"
        )
        for row in report["rows"]:
            print(
                f"{row['what']:28} {row['seq']:>7} fwd {row['fwd_tflops']:7.1f} TFLOP/s  "
                f"fwd+bwd {row['fwd_bwd_tflops']:7.1f} TFLOP/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
