"""Kueue preemption with real training, as a benchmark: preempted → queued → admitted again → training.

    python -m longvila_localcluster.benches.kueue_preemption [--steps 6] [--preempt-after 2] [--json]

Starts its own local cluster (4 KWOK nodes × 8 GPUs in 2 domains) with the real Kueue, then
runs longvila_localcluster.preemption_run (the e2e test's run): `preempt-low` trains, a
higher-priority copy is created in the same one-job queue, Kueue preempts low, high trains to
the end, low is admitted again and resumes from its checkpoint. Prints the seconds between
those events and the verdict (one Preempted requeue, no budget spent, the same losses as the
uninterrupted high, one resume from a complete checkpoint, nothing left behind).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from longvila_localcluster import preemption
from longvila_localcluster.build import ensure_all
from longvila_localcluster.cluster import LocalCluster
from longvila_localcluster.nodes import NodeSpec
from longvila_localcluster.preemption_run import PreemptionOptions, run_preemption
from longvila_localcluster.versions import load_versions


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m longvila_localcluster.benches.kueue_preemption", description=__doc__.split("\n")[0]
    )
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--preempt-after", type=int, default=2, help="low's steps before high is created")
    p.add_argument("--work", type=Path, help="keep the run's directory (logs) here")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)

    def say(s: str) -> None:
        print(s, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="lvpreempt-") as tmp:
        work = a.work or Path(tmp)
        cluster = LocalCluster(work / "cluster", ensure_all(load_versions()), die_with_parent=True)
        try:
            info = cluster.up(NodeSpec(nodes=4, gpus_per_node=8, domains=2), progress=say, kueue=True)
            opts = PreemptionOptions(work=work / "run", steps=a.steps, preempt_after=a.preempt_after)
            report = run_preemption(info, opts, say=say)
        finally:
            cluster.down()
    rows = preemption.figures(report)
    problems = preemption.verdict(report)
    out = {
        "steps": a.steps, "preempted_after_step": report.preempted_at_step, "resumes": report.resumes,
        "seconds": round(report.seconds, 1), "figures": rows, "problems": problems,
    }  # fmt: skip
    if a.json:
        print(json.dumps(out, indent=2))
    else:
        print("| figure | seconds |")
        print("|---|---|")
        for r in rows:
            print(f"| {r['figure']} | {r['seconds']} |")
        print(f"low preempted after step {report.preempted_at_step}, resumed {report.resumes}; "
              f"{report.seconds:.0f}s; verdict: {problems or 'ok'}")  # fmt: skip
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
