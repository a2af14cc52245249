"""What the network benchmark's raw results mean (pure): link and kernel calibration, the
cost model's prediction for every run, the byte check, the ratio table and the overlap.

Input: one dict per simulated cluster as network.run_config returns it (per-rank timings
already reduced by `reduce_run`). Nothing here runs a process or touches the network.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict
from typing import Any

from .costmodel import (
    AttnShape,
    CallPlan,
    Device,
    Layout,
    Links,
    plan_call,
    predict,
    traffic,
)
from .fit import Sample, fit_device
from .network_jobs import Job

PROBE_SECONDS = 0.3  # a probe's larger message takes about this long at the configured rate


def probe_sizes(mb_per_s: float) -> list[int]:
    """Two message sizes for a link of this rate: ~PROBE_SECONDS, and 1/16 of it (4-byte multiples)."""
    big = max(1 << 16, int(mb_per_s * 1e6 * PROBE_SECONDS)) // 4 * 4
    return [big // 16 // 4 * 4, big]


def a2a_probes(world: int, g: int, fast_mbs: float, slow_mbs: float, across: bool) -> list[tuple[int, int]]:
    """(U, bytes per peer) for probe_a2a: the node's ranks (inside only) and, when a job's
    Ulysses group crosses nodes, all ranks; sized to take about PROBE_SECONDS."""
    out = [(g, max(1 << 12, int(fast_mbs * 1e6 * PROBE_SECONDS / (g - 1))) // 4 * 4)] if g > 1 else []
    if across and world > g:
        out.append((world, max(1 << 12, int(slow_mbs * 1e6 * PROBE_SECONDS / (world - g))) // 4 * 4))
    return out


def links_from_probe(
    probe: list[dict[str, list[list[float]]]],
    sizes: dict[str, list[int]],
    a2a: tuple[list[tuple[int, int]], list[list[list[float]]]],
    barrier: list[list[float]],
    g: int,
    fast_bps: float,
) -> Links:
    """Goodput and per-message latency per tier, from rank 0's timings of two message sizes
    (median of the repetitions, less the median time of an empty barrier pair). Goodput from
    the difference of the two sizes when it is clear, else from the larger alone (and then
    no latency); inside a node of one rank, nothing to probe: the configured rate. The
    all-to-all's rate per peer and tier from probe_a2a's (its inside-the-node group alone;
    the all-ranks group is dominated by its cross-node peers)."""
    base = statistics.median(barrier[0])
    fit = {"intra_node": (fast_bps, 0.0)}  # stands when a node has one rank (no pair to probe)
    for tier in probe[0]:
        small, big = sizes[tier]
        t_small, t_big = (max(0.0, statistics.median(ts) - base) for ts in probe[0][tier])
        bw = (big - small) / (t_big - t_small) if t_big > 1.5 * t_small else big / max(t_big, 1e-9)
        fit[tier] = (bw, max(0.0, t_small - small / bw))
    a2a_bps: dict[str, float | None] = {"intra_node": None, "inter_node": None}
    for (u, per_peer), times in zip(a2a[0], a2a[1][0], strict=True):
        t = max(statistics.median(times) - base, 1e-9)
        a2a_bps["intra_node" if u <= g else "inter_node"] = (u - g if u > g else u - 1) * per_peer / t
    return Links(
        g,
        fit["intra_node"][0],
        fit["inter_node"][0],
        fit["intra_node"][1],
        fit["inter_node"][1],
        a2a_bps["intra_node"],
        a2a_bps["inter_node"],
    )


def reduce_run(job: Job, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over iterations of the slowest rank; bytes and blocked seconds: the max rank."""
    fwd = statistics.median(max(x) for x in zip(*(r["fwd_s"] for r in per_rank), strict=True))
    bwd = statistics.median(max(x) for x in zip(*(r["bwd_s"] for r in per_rank), strict=True))
    tot = statistics.median(
        max(f + b for f, b in zip(fs, bs, strict=True))
        for fs, bs in zip(
            zip(*(r["fwd_s"] for r in per_rank), strict=True),
            zip(*(r["bwd_s"] for r in per_rank), strict=True),
            strict=True,
        )
    )

    def blocked(key: str, kind: str) -> float:  # median over iterations, max over ranks
        return statistics.median(  # type: ignore[no-any-return]
            max(it.get(kind, 0.0) for it in its) for its in zip(*(r[key] for r in per_rank), strict=True)
        )

    tiers = ("intra_node", "inter_node")
    return {
        "mode": job.mode,
        "ulysses": job.ulysses,
        "ring": job.ring,
        "seq": job.seq,
        "overlap": job.overlap,
        "fwd_s": fwd,
        "bwd_s": bwd,
        "fwd_bwd_s": tot,
        "bytes_per_rank": {
            d: {t: max(r[f"{d}_bytes"].get(t, 0) for r in per_rank) for t in tiers} for d in ("fwd", "bwd")
        },
        "bytes_by_rank": [{d: r[f"{d}_bytes"] for d in ("fwd", "bwd")} for r in per_rank],
        "blocked_s": {
            d: {k: blocked(f"{d}_blocked_s", k) for k in ("all_to_all", "p2p")} for d in ("fwd", "bwd")
        },
    }


def _samples(cfg: dict[str, Any], shape: AttnShape) -> list[tuple[dict[str, Any], Sample]]:
    g = cfg["ranks_per_node"]
    plans: dict[tuple[int, int, int], CallPlan] = {}
    out = []
    for run in cfg["runs"]:
        key = (run["ulysses"], run["ring"], run["seq"])
        if key not in plans:
            plans[key] = plan_call(Layout(run["ulysses"], run["ring"]), run["seq"], shape, g)
        links = Links(**cfg["links"][str(run["ratio"])])
        out.append((run, (plans[key], links, run["overlap"], run["fwd_bwd_s"])))
    return out


def _rows(nodes: int, samples: list[tuple[dict[str, Any], Sample]], dev: Device) -> list[dict[str, Any]]:
    rows = []
    for run, (plan, links, overlap, seconds) in samples:
        p = predict(plan, dev, links, overlap)
        rows.append(
            {
                "nodes": nodes,
                "mode": run["mode"],
                "seq": run["seq"],
                "ratio": run["ratio"],
                "overlap": overlap,
                "measured_s": seconds,
                "predicted_s": p.fwd_s + p.bwd_s,
                "error": (p.fwd_s + p.bwd_s) / seconds - 1,
            }
        )
    return rows


def calibrate(configs: list[dict[str, Any]], shape: AttnShape) -> dict[str, Any]:
    """The cost model against the runs. Links come from the probes at each ratio; the rank's
    kernel rate and cost per call (one Device for every configuration: a rank gets the same
    share of these shared cores either way) are fitted to the runs of the schedule the trainer
    runs (overlapped). The wait-first runs are predicted, not fitted: on 2 shared cores the
    communication slows the overlapped compute down (gloo's progress thread and the kernel's
    TCP work share the cores), which the model, made for GPUs, does not have. Out of sample,
    a fit on the first configuration alone predicts the others."""
    per_cfg = [(cfg["nodes"], _samples(cfg, shape)) for cfg in configs]
    fitted = [s for _, ss in per_cfg for run, s in ss if run["overlap"]]
    dev = fit_device("CPU rank (fitted on the overlapped runs)", fitted)
    rows = [r for nodes, ss in per_cfg for r in _rows(nodes, ss, dev)]
    out: dict[str, Any] = {
        "device": asdict(dev),
        "runs": rows,
        "max_abs_error": max(abs(r["error"]) for r in rows if r["overlap"]),
        "max_abs_error_wait_first": max((abs(r["error"]) for r in rows if not r["overlap"]), default=None),
    }
    if len(per_cfg) > 1:
        first = fit_device(
            "CPU rank (fitted on the first configuration)", [s for run, s in per_cfg[0][1] if run["overlap"]]
        )
        held = [r for nodes, ss in per_cfg[1:] for r in _rows(nodes, ss, first)]
        out["holdout"] = {
            "device": asdict(first),
            "runs": held,
            "max_abs_error": max(abs(r["error"]) for r in held),
        }
    return out


def check_traffic(configs: list[dict[str, Any]], shape: AttnShape) -> int:
    """Runs whose counted bytes differ from costmodel.traffic's, for any rank (0 = all agree)."""
    bad = 0
    for cfg in configs:
        for run in cfg["runs"]:
            lay = Layout(run["ulysses"], run["ring"])
            for rank, got in enumerate(run["bytes_by_rank"]):
                want = traffic(lay, run["seq"], shape, cfg["ranks_per_node"], rank)
                for d in ("fwd", "bwd"):
                    if {k: v for k, v in got[d].items() if v} != {
                        k: v for k, v in getattr(want, d).items() if v
                    }:
                        bad += 1
    return bad


def summarize(
    configs: list[dict[str, Any]],
    ratios: tuple[float, ...],
    default_ratio: float,
    seqs: tuple[int, ...],
    table_seq: int,
) -> dict[str, Any]:
    """The ratio table, the 2D over ring speed-ups and the overlap measurement, all from the
    default configuration (configs[0])."""
    base = configs[0]
    by = {(r["mode"], r["seq"], r["ratio"], r["overlap"]): r for r in base["runs"]}

    def t(mode: str, seq: int, ratio: float, overlap: bool = True) -> float | None:
        r = by.get((mode, seq, ratio, overlap))
        return r["fwd_bwd_s"] if r else None

    ratio_table = []
    for ratio in ratios:
        row: dict[str, Any] = {"ratio": ratio, "seq": table_seq}
        for mode in ("ring", "ulysses", "2d"):
            row[f"{mode}_s"] = t(mode, table_seq, ratio)
        ring, two_d = row["ring_s"], row["2d_s"]
        row["speedup_2d_over_ring"] = ring / two_d if ring and two_d else None
        ratio_table.append(row)
    by_seq = {str(s): (t("ring", s, default_ratio) or 0) / (t("2d", s, default_ratio) or 1) for s in seqs}
    overlap = []
    for (mode, seq, ratio, ov), r in sorted(by.items(), key=str):
        if ov or (mode, seq, ratio, True) not in by:
            continue
        o = by[(mode, seq, ratio, True)]
        comm = sum(r["blocked_s"][d]["p2p"] for d in ("fwd", "bwd"))
        exposed = sum(o["blocked_s"][d]["p2p"] for d in ("fwd", "bwd"))
        overlap.append(
            {
                "mode": mode,
                "seq": seq,
                "ratio": ratio,
                "wait_first_s": r["fwd_bwd_s"],
                "overlapped_s": o["fwd_bwd_s"],
                "ring_comm_s": comm,
                "ring_comm_exposed_s": exposed,
                "hidden_fraction": 1 - exposed / comm if comm else None,
                "saved_over_comm": (r["fwd_bwd_s"] - o["fwd_bwd_s"]) / comm if comm else None,
            }
        )
    default = next(r for r in ratio_table if r["ratio"] == default_ratio)
    return {
        "speedup_2d_over_ring": default["speedup_2d_over_ring"],
        "speedup_2d_over_ring_by_seq": by_seq,
        "ratio_table": ratio_table,
        "overlap": overlap,
    }
