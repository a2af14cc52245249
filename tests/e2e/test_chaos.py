"""The chaos run, short (CI): one job through one fault of every kind on the local cluster with
the pod runner (longvila_localcluster.chaos_run), then the verdict of chaos.verdict:

- restarts counted per class equal the faults injected (node loss → NodeLost, worker
  SIGKILL → WorkerCrash, a SIGSTOPped worker → Hang, the bad override → PermanentError
  without a restart; an operator SIGKILL and an S3 restart during an upload → none);
- the job ends Failed with the trainer's message; every step's loss equals the
  uninterrupted run's (≤ 1e-6); every resume loaded a complete checkpoint;
- no pod or process of the job is left.

The longer variant (more rounds, figures for docs/benchmarks.md) is
`python -m longvila_localcluster.benches.chaos`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from longvila_localcluster import chaos
from longvila_localcluster.chaos_run import ChaosOptions, run_chaos

pytestmark = [pytest.mark.cluster, pytest.mark.distributed, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_one_fault_of_every_kind_one_restart_each_and_the_same_losses(tmp_path: Path) -> None:
    lines: list[str] = []
    opts = ChaosOptions(
        work=tmp_path / "chaos", seed=14, rounds=1, hang_timeout=10, most_steps=1
    )  # short: CI
    report, planned = run_chaos(opts, say=lines.append)
    print("\n".join(lines))
    for row in chaos.figures(report):
        print(row)
    assert {p.fault for p in planned} == set(chaos.FAULTS)
    assert chaos.verdict(report, planned) == []
    assert len(report.resumes) == 3 and all(ok for _, ok in report.resumes)  # one per restart
    assert {i.fault for i in report.injected} == {*chaos.FAULTS, "bad-override"}
