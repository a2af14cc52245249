"""The chaos run as a benchmark: more rounds than CI's, figures per fault for docs/benchmarks.md.

    python -m longvila_localcluster.benches.chaos [--rounds 3] [--seed 1] [--hang-timeout 15] [--json]

Each round injects one fault of every kind (longvila_localcluster.chaos) into one job on a
fresh local cluster; prints, per fault, the seconds to detect it (fault → the operator
counted its class in status.failures) and to train again (fault → the next step), then the
verdict (restarts per class, losses against an uninterrupted run, resumes, leftovers).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from longvila_localcluster import chaos
from longvila_localcluster.chaos_run import ChaosOptions, run_chaos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longvila_localcluster.benches.chaos", description=__doc__.split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--hang-timeout", type=int, default=15)
    p.add_argument("--work", type=Path, help="keep the run's directory (logs) here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lvchaos-") as tmp:
        opts = ChaosOptions(
            work=a.work or Path(tmp), seed=a.seed, rounds=a.rounds, hang_timeout=a.hang_timeout
        )
        report, planned = run_chaos(opts, say=lambda s: print(s, file=sys.stderr, flush=True))
    rows = chaos.figures(report)
    problems = chaos.verdict(report, planned)
    summary = {}
    for fault in (*chaos.FAULTS, "bad-override"):
        mine = [r for r in rows if r["fault"] == fault]
        detect = [r["detect_s"] for r in mine if r["detect_s"] is not None]
        again = [r["training_again_s"] for r in mine if r["training_again_s"] is not None]
        summary[fault] = {
            "class": chaos.EXPECTED[fault] or "-", "n": len(mine),
            "detect_s_median": round(statistics.median(detect), 1) if detect else None,
            "detect_s_max": max(detect, default=None),
            "training_again_s_median": round(statistics.median(again), 1) if again else None,
            "training_again_s_max": max(again, default=None),
        }  # fmt: skip
    out = {
        "seed": a.seed, "rounds": a.rounds, "seconds": round(report.seconds, 1), "failures": report.failures,
        "restarts": report.restarts, "faults": rows, "summary": summary, "problems": problems,
    }  # fmt: skip
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print("| fault | class | n | detect s (median / max) | fault → training again s (median / max) |")
        print("|---|---|---|---|---|")
        for fault, s in summary.items():
            print(f"| {fault} | {s['class']} | {s['n']} | {s['detect_s_median']} / {s['detect_s_max']} | "
                  f"{s['training_again_s_median']} / {s['training_again_s_max']} |")  # fmt: skip
        print(f"restarts {report.restarts}, failures {report.failures}, {report.seconds:.0f}s; "
              f"verdict: {problems or 'ok'}")  # fmt: skip
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
