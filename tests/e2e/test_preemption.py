"""Kueue preempts a training job for a higher-priority one; the preempted job queues again and
resumes from its checkpoint with the same losses (longvila_localcluster.preemption_run, on the
session's cluster with the real Kueue controller, the pod runner and S3):

- `preempt-low` (WorkloadPriorityClass 100) trains; after two steps `preempt-high` (1000, the
  same job otherwise) is created in the same queue, which has room for one of them;
- Kueue preempts low: its status counts one `Preempted` (lastFailure action Requeue, Kueue's
  "Preempted to accommodate …"), no restart budget spent, phase `Queued` with condition
  Admitted=False reason Preempted and Kueue's current reason in the message;
- high trains to the end uninterrupted; then low is admitted again and resumes from its last
  complete checkpoint; every step low logged, before and after, has high's loss (≤ 1e-6);
- no pod, gate or process of either job is left.

The same run with figures for docs/benchmarks.md: `python -m longvila_localcluster.benches.kueue_preemption`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from longvila_localcluster import preemption
from longvila_localcluster.cluster import ClusterInfo
from longvila_localcluster.preemption_run import PreemptionOptions, run_preemption

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1200)]


def test_preempted_job_queues_again_and_resumes_with_the_same_losses(
    kueue: ClusterInfo, tmp_path: Path
) -> None:
    lines: list[str] = []
    report = run_preemption(kueue, PreemptionOptions(work=tmp_path / "preempt", steps=6, preempt_after=2),
                            say=lines.append)  # fmt: skip
    print("\n".join(lines))
    for row in preemption.figures(report):
        print(f"FIGURE {row['figure']}: {row['seconds']}s")
    print(f"low preempted after step {report.preempted_at_step}, resumed {report.resumes}")
    assert preemption.verdict(report) == []
    assert report.low["lastFailure"]["class"] == "Preempted"
