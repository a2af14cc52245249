"""Checks the 2D sequence-parallel attention against exact attention, on CPU gloo processes.

    python -m longvila_trainer.check_attention --ulysses 2 --ring 2 --seq 100 --heads 4 \
        --kv-heads 2 --head-dim 8 --layout zigzag [--varlen 60,40] [--dp 2] [--no-causal]

spawns U·R·dp processes, runs usp_attention forward and backward on random inputs (each dp
group its own sequence) and prints one JSON line: the max |error| of out, dq, dk, dv against
float64 exact attention on the whole sequence, and "ok". Exit 0 if ok, 1 if not, 2 for an
invalid request (one line on stderr naming the field). The tests reuse `run_cases`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from longvila_contract.layout import LayoutError, ParallelLayout, kv_replication
from torch import Tensor

from .attention.context import AttentionContext
from .attention.reference import Problem, exact_grads, max_errors, random_problem, shard, unshard
from .attention.usp import usp_attention
from .parallel.groups import SPGroups, build_groups
from .parallel.spawn import run_gloo
from .parallel.token_layout import KINDS, TokenLayout, plan_tokens

TOLERANCE = 1e-5  # fp32, relative to max(1, max |exact|)
CPU_KERNELS = ("auto", "cpu_flash", "math")  # the check runs on CPU gloo processes


@dataclass(frozen=True)
class Case:
    ulysses: int
    ring: int
    docs: tuple[int, ...]
    heads: int
    kv_heads: int
    head_dim: int
    kind: str = "zigzag"
    causal: bool = True
    dp: int = 1
    seed: int = 0
    kernel: str = "auto"
    pad_kv: float = 1e4  # scale of the garbage in padding K/V rows (nan allowed)
    overlap: bool = True  # False: the ring waits for each hop before computing (same result)

    @property
    def world(self) -> int:
        return self.ulysses * self.ring * self.dp

    def tokens(self) -> TokenLayout:
        return plan_tokens(self.docs, self.ulysses, self.ring, self.kind)

    def problem(self, dp_rank: int) -> Problem:
        """Each dp group gets its own sequence (seed + dp_rank), identical on all its ranks."""
        return random_problem(
            self.tokens(),
            self.heads,
            self.kv_heads,
            self.head_dim,
            self.seed + 1000 * dp_rank,
            pad_kv=self.pad_kv,
        )

    def validate(self) -> None:
        """Raises LayoutError naming the field for any request the layout cannot serve."""
        ParallelLayout(self.world, self.ulysses, self.ring)
        for name in ("heads", "kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise LayoutError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        kv_replication(self.heads, self.kv_heads, self.ulysses)
        self.tokens()
        if self.kernel not in CPU_KERNELS:
            raise LayoutError(f"kernel must be one of {', '.join(CPU_KERNELS)} on CPU, got {self.kernel!r}")


def attention_worker(rank: int, world: int, cases: list[Case]) -> list[dict[str, Tensor]]:
    """Runs every case on this rank (run_gloo worker); returns its local out, dq, dk, dv per case."""
    # new_group is collective and slow: once per layout. World 1 runs with no process group.
    groups: dict[tuple[int, int], SPGroups] = {}
    results = []
    for case in cases:
        key = (case.ulysses, case.ring)
        if key not in groups:
            groups[key] = build_groups(ParallelLayout(world, *key), check_hosts=False)
        g = groups[key]
        p = case.problem(g.dp_rank)
        ctx = AttentionContext(g, p.tokens, kernel=case.kernel, overlap=case.overlap)
        q, k, v = (shard(x, p.tokens, g.sp_rank).requires_grad_() for x in (p.q, p.k, p.v))
        out = usp_attention(q, k, v, ctx, causal=case.causal)
        torch.autograd.backward(out, shard(p.dout, p.tokens, g.sp_rank))
        assert q.grad is not None and k.grad is not None and v.grad is not None
        results.append({"out": out.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad})
    return results


@dataclass(frozen=True)
class CaseResult:
    case: Case
    errors: dict[str, float]  # max over dp groups of max |parallel − exact|
    scale: dict[str, float]  # max over dp groups of max |exact|
    got: list[dict[str, Tensor]]  # per dp group, global [T, ...] tensors
    group_errors: list[dict[str, float]]  # per dp group
    ok: bool


def run_cases(cases: list[Case], world: int) -> list[CaseResult]:
    """Spawns `world` processes once for all cases (each case's U·R·dp must equal world)."""
    for c in cases:
        c.validate()
        if c.world != world:
            raise LayoutError(f"case {c} needs world {c.world}, not {world}")
    per_rank = run_gloo(attention_worker, world, cases) if world > 1 else [attention_worker(0, 1, cases)]
    return evaluate(cases, per_rank)


def evaluate(cases: list[Case], per_rank: list[list[dict[str, Tensor]]]) -> list[CaseResult]:
    """Compares each case's results (per_rank[rank][case]) with exact attention, per dp group."""
    results = []
    for i, case in enumerate(cases):
        sp = case.ulysses * case.ring
        errors: dict[str, float] = {}
        scale: dict[str, float] = {}
        got_all, group_errors = [], []
        for d in range(case.dp):
            p = case.problem(d)
            got = {
                n: unshard([per_rank[d * sp + s][i][n] for s in range(sp)], p.tokens) for n in per_rank[0][i]
            }
            want = exact_grads(p, case.causal)
            group_errors.append(max_errors(got, want))
            for n, e in group_errors[-1].items():
                errors[n] = max(errors.get(n, 0.0), e)
                scale[n] = max(scale.get(n, 0.0), want[n].abs().max().item())
            got_all.append(got)
        ok = all(errors[n] <= TOLERANCE * max(1.0, scale[n]) for n in errors)
        results.append(CaseResult(case, errors, scale, got_all, group_errors, ok))
    return results


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage block
        raise LayoutError(message)


def _parse(argv: list[str] | None) -> Case:
    ap = _Parser(
        prog="python -m longvila_trainer.check_attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--ulysses", type=int, required=True, help="Ulysses degree U (all-to-all group)")
    ap.add_argument("--ring", type=int, required=True, help="ring degree R (P2P group)")
    ap.add_argument("--dp", type=int, default=1, help="data-parallel groups, each with its own sequence")
    ap.add_argument("--world", type=int, default=None, help="if given, must equal ulysses × ring × dp")
    ap.add_argument("--seq", type=int, required=True, help="real tokens in the packed sequence")
    ap.add_argument("--heads", type=int, required=True)
    ap.add_argument("--kv-heads", type=int, required=True)
    ap.add_argument("--head-dim", type=int, required=True)
    ap.add_argument("--layout", default="zigzag", help=f"token layout: {' or '.join(KINDS)}")
    ap.add_argument("--varlen", default=None, help="comma-separated document lengths summing to --seq")
    ap.add_argument("--no-causal", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kernel", choices=CPU_KERNELS, default="auto", help="CPU kernel (auto = cpu_flash)")
    a = ap.parse_args(argv)
    if a.varlen is None:
        docs: tuple[int, ...] = (a.seq,)
    else:
        try:
            docs = tuple(int(x) for x in a.varlen.split(","))
        except ValueError:
            raise LayoutError(f"--varlen must be comma-separated integers, got {a.varlen!r}") from None
        if sum(docs) != a.seq:
            raise LayoutError(
                f"--varlen lengths must sum to --seq ({a.seq}), got {sum(docs)} from {a.varlen}"
            )
    for name in ("ulysses", "ring", "dp", "seq"):
        if getattr(a, name) < 1:
            raise LayoutError(f"--{name} must be ≥ 1, got {getattr(a, name)}")
    if a.world is not None and a.world != a.ulysses * a.ring * a.dp:
        raise LayoutError(
            f"--world ({a.world}) must equal ulysses × ring × dp = {a.ulysses} × {a.ring} × {a.dp} "
            f"= {a.ulysses * a.ring * a.dp}"
        )
    return Case(
        a.ulysses,
        a.ring,
        docs,
        a.heads,
        a.kv_heads,
        a.head_dim,
        a.layout,
        not a.no_causal,
        a.dp,
        a.seed,
        a.kernel,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        case = _parse(argv)
        case.validate()
    except LayoutError as e:
        print(f"check_attention: error: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    (res,) = run_cases([case], case.world)
    report: dict[str, Any] = {
        **{("layout" if k == "kind" else k): v for k, v in asdict(case).items() if k != "pad_kv"},
        "world": case.world,
        "padded_seq": case.tokens().total,
        "max_abs_err": res.errors,
        **({"max_abs_err_per_dp": res.group_errors} if case.dp > 1 else {}),
        "max_abs_exact": res.scale,
        "tolerance": f"{TOLERANCE:g} x max(1, max_abs_exact)",
        "seconds": round(time.perf_counter() - t0, 2),
        "ok": res.ok,
    }
    print(json.dumps(report))
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
