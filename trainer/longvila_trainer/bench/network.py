"""2D vs ring vs Ulysses attention on a simulated two-tier network (run as root; by hand, not a test).

    sudo python -m longvila_trainer.bench.network [--json] [--nodes 2,4] [--ratios 1,4,18,50]

Builds simulated nodes on this machine (netsim.py / netns.py: one network namespace per
rank, veths on a bridge, htb per rank: `--fast-mbs` MB/s to its own node's ranks and
fast / ratio across nodes), starts one gloo process per rank inside its namespace and
times causal zigzag usp_attention forward + backward (median over --iters of the slowest
rank) for ring-only (R = all ranks), Ulysses-only (U = all ranks, where the heads split)
and 2D (U = ranks per node, R = nodes), with the bytes each rank sent on each tier as the
comm layer counted them. For the default configuration (2 nodes) it also reshapes the links
to every tier ratio of --ratios and measures the ring's overlap (next K/V block posted
before the current block's compute) against a wait-first variant. Then it calibrates the
cost model (costmodel.py, fit.py) on probes of the links and on the overlapped runs,
reports predicted vs measured for every run, and projects to GPU clusters (projection.py:
a model).

Everything it creates lives in anonymous namespaces that the kernel removes when this
process and its ranks exit, however they exit; `lo` and the host's interfaces are never
touched. Where it cannot run (not root, no namespaces, no iproute2) it says why in one line
and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from longvila_contract.layout import LayoutError, kv_replication

from .costmodel import AttnShape
from .netns import NetnsError, SimulatedNetwork, holders, signals_exit, why_not
from .netsim import NetSpecError, TwoTier
from .network_analysis import (
    a2a_probes,
    calibrate,
    check_traffic,
    links_from_probe,
    probe_sizes,
    reduce_run,
    summarize,
)
from .network_jobs import Job, barrier_seconds, measure, probe_a2a, probe_links
from .network_report import print_tables
from .projection import PAPER, projection
from .ranks import RankError, RankPool

PROG = "python -m longvila_trainer.bench.network"
PROBE_REPS = 5


@dataclass(frozen=True)
class Plan:
    """What to run. The first entry of `nodes` is the default configuration: it alone gets the
    tier-ratio table and the overlap measurement."""

    nodes: tuple[int, ...]
    ranks_per_node: int
    fast_mbs: float
    ratio: float  # the default tier ratio
    ratios: tuple[float, ...]
    overlap_ratios: tuple[float, ...]
    seqs: tuple[int, ...]
    table_seq: int
    iters: int
    budget_s: float  # a phase runs more than `iters` rounds while they fit in this (cheap phases)
    shape: AttnShape
    timeout: float


def _log(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)


def jobs_for(net: TwoTier, seqs: tuple[int, ...], shape: AttnShape) -> tuple[list[Job], dict[str, str]]:
    """Ring-only, Ulysses-only (where the heads split) and 2D for every sequence length."""
    w, g = net.world, net.ranks_per_node
    modes, skipped = [("ring", 1, w), ("ulysses", w, 1), ("2d", g, net.nodes)], {}
    jobs = []
    for name, u, r in modes:
        try:
            kv_replication(shape.heads, shape.kv_heads, u)
        except LayoutError as e:
            skipped[f"{name} U={u}"] = str(e)
            continue
        jobs += [Job(name, u, r, s) for s in seqs]
    return jobs, skipped


def _jobs_at(plan: Plan, net: TwoTier, ratio: float) -> list[Job]:
    """Every mode at every length at the default ratio; the table length at the others; the
    wait-first ring variants where the overlap is measured (default configuration only)."""
    main, _ = jobs_for(net, plan.seqs, plan.shape)
    table, _ = jobs_for(net, (plan.table_seq,), plan.shape)
    default = net.nodes == plan.nodes[0]
    jobs = (main + [j for j in table if j not in main]) if ratio == plan.ratio else table
    if default and ratio in plan.overlap_ratios:
        jobs += [Job(j.mode, j.ulysses, j.ring, j.seq, False) for j in table if j.ring > 1]
    return jobs


def run_config(plan: Plan, nodes: int, t0: float) -> dict[str, Any]:
    """All measurements on one simulated cluster (one set of namespaces and rank processes)."""
    net = TwoTier(nodes, plan.ranks_per_node, plan.fast_mbs, plan.ratio)
    ratios = plan.ratios if nodes == plan.nodes[0] else (plan.ratio,)
    _, skipped = jobs_for(net, plan.seqs, plan.shape)
    out: dict[str, Any] = {"nodes": nodes, "ranks_per_node": net.ranks_per_node, "skipped": skipped}
    out["runs"], out["links"] = [], {}
    with SimulatedNetwork(net) as sim:
        out["namespaces"] = sim.inodes()
        _log(
            t0,
            f"{nodes} nodes × {net.ranks_per_node} ranks: namespaces up: {','.join(map(str, sim.inodes()))}",
        )
        with RankPool(sim, timeout=plan.timeout) as pool:
            _log(t0, "ranks up, gloo bound to each rank's veth")
            g = net.ranks_per_node
            pairs = {"intra_node": (0, 1), "inter_node": (g - 1, g)} if g > 1 else {"inter_node": (0, 1)}
            for ratio in ratios:
                sim.set_rates(plan.fast_mbs, ratio)
                jobs = _jobs_at(plan, net, ratio)
                slow = plan.fast_mbs / ratio
                sizes = {"intra_node": probe_sizes(plan.fast_mbs), "inter_node": probe_sizes(slow)}
                probe = pool.run(probe_links, {t: (*pairs[t], sizes[t]) for t in pairs}, PROBE_REPS)
                a2a = a2a_probes(net.world, g, plan.fast_mbs, slow, any(j.ulysses > g for j in jobs))
                a2a_times = pool.run(probe_a2a, a2a, PROBE_REPS)
                barrier = pool.run(barrier_seconds, PROBE_REPS)
                links = links_from_probe(probe, sizes, (a2a, a2a_times), barrier, g, plan.fast_mbs * 1e6)
                out["links"][str(ratio)] = asdict(links)
                res = pool.run(measure, jobs, plan.shape, plan.iters, net.nodes_of_ranks(), plan.budget_s)
                out["runs"] += [
                    {"ratio": ratio, **reduce_run(j, [r[i] for r in res])} for i, j in enumerate(jobs)
                ]
                _log(
                    t0,
                    f"ratio {ratio:g}: links measured {links.fast_bps / 1e6:.1f} / "
                    f"{links.slow_bps / 1e6:.2f} MB/s per rank, {len(jobs)} runs",
                )
    return out


def _floats(s: str) -> tuple[float, ...]:
    return tuple(float(x) for x in s.split(",") if x)


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, no usage block
        raise NetSpecError(message)


def parse(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    ap = _Parser(prog=PROG, description=__doc__,
                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--nodes", default="2,4", help="simulated node counts; the first is the default configuration"
    )
    ap.add_argument("--ranks-per-node", type=int, default=2)
    ap.add_argument("--fast-mbs", type=float, default=30.0, help="MB/s per rank inside a node")
    ap.add_argument(
        "--ratio", type=float, default=18.0, help="default fast : slow ratio (H100 node: 900 : 50)"
    )
    ap.add_argument("--ratios", default="1,4,18,50", help="tier ratios of the table (default configuration)")
    ap.add_argument(
        "--overlap-ratios", default="1,4,18", help="ratios where the wait-first ring is measured too"
    )
    ap.add_argument("--seqs", default="1024,2048", help="sequence lengths at the default ratio")
    ap.add_argument(
        "--table-seq", type=int, default=1024, help="sequence length of the ratio table and overlap"
    )
    ap.add_argument(
        "--iters", type=int, default=3, help="timed iterations per run, at least (after one warm-up)"
    )
    ap.add_argument(
        "--budget-s", type=float, default=30.0, help="more iterations while a ratio's runs fit in this"
    )
    ap.add_argument("--heads", type=int, default=28, help="Qwen2-7B: 28")
    ap.add_argument("--kv-heads", type=int, default=4, help="Qwen2-7B: 4")
    ap.add_argument("--head-dim", type=int, default=32, help="Qwen2-7B: 128, scaled down for 2 cores")
    ap.add_argument("--gpus", default="8,16,32,64,128,256", help="GPU counts of the projection ('' for none)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a phase may take before it fails")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    a = ap.parse_args(argv)
    try:
        plan = Plan(
            nodes=_ints(a.nodes), ranks_per_node=a.ranks_per_node, fast_mbs=a.fast_mbs, ratio=a.ratio,
            ratios=_floats(a.ratios), overlap_ratios=_floats(a.overlap_ratios), seqs=_ints(a.seqs),
            table_seq=a.table_seq, iters=a.iters, budget_s=a.budget_s,
            shape=AttnShape(a.heads, a.kv_heads, a.head_dim, 4), timeout=a.timeout,
        )  # fmt: skip
        a.gpus = _ints(a.gpus)
    except ValueError as e:
        raise NetSpecError(
            f"--nodes, --ratios, --overlap-ratios, --seqs and --gpus take comma-separated numbers: {e}"
        ) from None
    _validate(plan)
    return plan, a


def _validate(plan: Plan) -> None:
    if not plan.nodes or min(plan.nodes) < 2:
        raise NetSpecError(f"--nodes must list node counts ≥ 2, got {plan.nodes}")
    if plan.ratio not in plan.ratios:
        raise NetSpecError(f"--ratios ({plan.ratios}) must include the default --ratio ({plan.ratio:g})")
    if not set(plan.overlap_ratios) <= set(plan.ratios):
        raise NetSpecError(f"--overlap-ratios ({plan.overlap_ratios}) must be among --ratios ({plan.ratios})")
    if plan.iters < 1 or not plan.seqs or min(plan.seqs) < 1 or plan.table_seq < 1:
        raise NetSpecError("--iters, --seqs and --table-seq must be ≥ 1")
    for n in plan.nodes:
        TwoTier(n, plan.ranks_per_node, plan.fast_mbs, max(plan.ratios))  # names the bad field


def main(argv: list[str] | None = None) -> int:
    try:
        plan, args = parse(argv)
    except NetSpecError as e:
        print(f"bench.network: error: {e}", file=sys.stderr)
        return 2
    reason = why_not()
    if reason:
        print(f"bench.network: cannot run here: {reason}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    configs, created = [], []
    try:
        with signals_exit():
            for nodes in plan.nodes:
                cfg = run_config(plan, nodes, t0)
                created += cfg["namespaces"]
                configs.append(cfg)
    except (NetnsError, RankError) as e:  # a rank's failure carries its traceback
        print(f"bench.network: error: {e}", file=sys.stderr)
        return 1
    finally:
        left = _wait_gone(created)
    _log(t0, f"measured; namespaces left behind: {len(left)}")
    report = {
        "command": " ".join([PROG, *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "torch": torch.__version__,
                    "load_avg_at_end": os.getloadavg()},
        "plan": {**asdict(plan), "shape": asdict(plan.shape)},
        "configs": configs,
        **summarize(configs, plan.ratios, plan.ratio, plan.seqs, plan.table_seq),
        "calibration": calibrate(configs, plan.shape),
        "bytes_match_model": check_traffic(configs, plan.shape) == 0,
        "projection": projection(list(args.gpus)) if args.gpus else [],
        "paper": PAPER,
        "namespaces_left": len(left),
        "elapsed_s": time.monotonic() - t0,
    }  # fmt: skip
    if args.json:
        print(json.dumps(report))
    else:
        print_tables(report)
    return 0 if not left else 1


def _wait_gone(inodes: list[int], seconds: float = 10.0) -> list[int]:
    """Namespaces of `inodes` still held by any process after up to `seconds` (ranks exiting)."""
    deadline = time.monotonic() + seconds
    while True:
        left = sorted({i for found in holders(inodes).values() for i in found})
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
