"""Tables of the network benchmark's report (the same content as its --json)."""

from __future__ import annotations

from typing import Any


def _mb(b: int) -> str:
    return f"{b / 1e6:.2f}"


def print_tables(rep: dict[str, Any]) -> None:
    plan = rep["plan"]
    sh = plan["shape"]
    print(
        f"# simulated two-tier network: {plan['fast_mbs']:g} MB/s per rank inside a node, fast/ratio across; "
        f"heads {sh['heads']}/{sh['kv_heads']}, head dim {sh['head_dim']}, fp32, causal zigzag; "
        f"median of {plan['iters']}, slowest rank"
    )
    for cfg in rep["configs"]:
        print(f"\n## {cfg['nodes']} nodes × {cfg['ranks_per_node']} ranks")
        for ratio, links in cfg["links"].items():
            print(
                f"#   ratio {float(ratio):g}: measured goodput {links['fast_bps'] / 1e6:.1f} / "
                f"{links['slow_bps'] / 1e6:.2f} MB/s, latency {links['fast_lat_s'] * 1e3:.2f} / "
                f"{links['slow_lat_s'] * 1e3:.2f} ms"
            )
        print(
            f"{'mode':8} {'U':>2} {'R':>2} {'seq':>6} {'ratio':>5} {'ovl':>3} {'fwd s':>7} {'bwd s':>7} "
            f"{'f+b s':>7} {'intra MB':>9} {'inter MB':>9}"
        )
        for r in cfg["runs"]:
            b = r["bytes_per_rank"]
            intra = b["fwd"]["intra_node"] + b["bwd"]["intra_node"]
            inter = b["fwd"]["inter_node"] + b["bwd"]["inter_node"]
            print(
                f"{r['mode']:8} {r['ulysses']:>2} {r['ring']:>2} {r['seq']:>6} {r['ratio']:>5g} "
                f"{'yes' if r['overlap'] else 'no':>3} {r['fwd_s']:>7.3f} {r['bwd_s']:>7.3f} "
                f"{r['fwd_bwd_s']:>7.3f} {_mb(intra):>9} {_mb(inter):>9}"
            )
        for name, why in cfg["skipped"].items():
            print(f"#   {name} skipped: {why}")
    print(f"\n## tier ratio table (first configuration, seq {rep['ratio_table'][0]['seq']}), fwd+bwd seconds")
    print(f"{'ratio':>5} {'ring':>7} {'ulysses':>7} {'2d':>7} {'2d over ring':>12}")
    for r in rep["ratio_table"]:
        cells = [f"{r[k]:>7.3f}" if r[k] else f"{'-':>7}" for k in ("ring_s", "ulysses_s", "2d_s")]
        sp = r["speedup_2d_over_ring"]
        print(
            f"{r['ratio']:>5g} {' '.join(cells)} {sp:>11.2f}x"
            if sp
            else f"{r['ratio']:>5g} {' '.join(cells)}"
        )
    by_seq = ", ".join(f"{s}: {x:.2f}x" for s, x in rep["speedup_2d_over_ring_by_seq"].items())
    print(
        f"speedup_2d_over_ring (default configuration): {rep['speedup_2d_over_ring']:.2f}x; by seq {by_seq}"
    )
    print("\n## ring overlap: next K/V block posted before the current block's compute vs waited for first")
    print(f"{'mode':5} {'seq':>5} {'ratio':>5} {'wait-first s':>12} {'overlapped s':>12} {'ring comm s':>11} "
          f"{'exposed s':>9} {'hidden':>6}")  # fmt: skip
    for o in rep["overlap"]:
        print(
            f"{o['mode']:5} {o['seq']:>5} {o['ratio']:>5g} {o['wait_first_s']:>12.3f} "
            f"{o['overlapped_s']:>12.3f} {o['ring_comm_s']:>11.3f} {o['ring_comm_exposed_s']:>9.3f} "
            f"{o['hidden_fraction']:>6.0%}"
        )
    cal = rep["calibration"]
    wf = cal["max_abs_error_wait_first"]
    print(f"\n## cost model vs measured: max |error| {cal['max_abs_error']:.0%} (overlapped, fitted), "
          f"{'-' if wf is None else f'{wf:.0%}'} (wait-first, predicted); bytes match the model: "
          f"{rep['bytes_match_model']}")  # fmt: skip
    d = cal["device"]
    print(
        f"#   fitted per rank: kernels {d['fwd_flops'] / 1e9:.1f} GFLOP/s fwd, "
        f"{d['bwd_flops'] / 1e9:.1f} bwd, "
        f"{d['call_s'] * 1e3:.2f} ms per call"
    )
    for r in cal["runs"]:
        print(
            f"{r['nodes']} nodes {r['mode']:8} seq {r['seq']:>5} ratio {r['ratio']:>4g} "
            f"{'ovl ' if r['overlap'] else 'wait'} measured {r['measured_s']:7.3f} predicted "
            f"{r['predicted_s']:7.3f} ({r['error']:+.0%})"
        )
    if "holdout" in cal:
        h = cal["holdout"]
        print(f"#   out of sample: fitted on the first configuration only, the others' max |error| is "
              f"{h['max_abs_error']:.0%}")  # fmt: skip
    if rep["projection"]:
        print_projection(rep["projection"])
    print(f"\nnamespaces left: {rep['namespaces_left']}; elapsed {rep['elapsed_s']:.0f} s")


def print_projection(rows: list[dict[str, Any]]) -> None:
    print("\n## projection to H100/H200 clusters: A MODEL (see projection.py for every assumption)")
    print("# ring_naive: K/V heads repeated to the query heads before the ring, no overlap")
    print(f"{'case':26} {'GPUs':>4} {'mode':10} {'U':>3} {'R':>3} {'attn layer ms':>13} {'step s':>8}")
    for row in rows:
        for mode in ("ring", "ring_naive", "ulysses", "2d"):
            m = row[mode]
            if "n/a" in m:
                print(f"{row['case']:26} {row['gpus']:>4} {mode:10} n/a: {m['n/a']}")
                continue
            print(
                f"{row['case']:26} {row['gpus']:>4} {mode:10} {m['ulysses']:>3} {m['ring']:>3} "
                f"{m['attention_layer_s'] * 1e3:>13.2f} {m['step_s']:>8.2f}"
            )
        print(f"{'':26} {'':>4} 2d over ring: step {row['2d_over_ring_step']:.2f}x, "
              f"attention {row['2d_over_ring_attention']:.2f}x; over the naive ring: step "
              f"{row['2d_over_ring_naive_step']:.2f}x")  # fmt: skip
