"""The simulated two-tier network: shaping, gloo bound to it, and nothing left behind.

Needs root (network namespaces and tc): skipped elsewhere, with the one-line reason the
benchmark itself gives. Every test checks afterwards that no process on the machine still
holds one of the namespaces it created (so none exists: they are anonymous).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest
import torch
import torch.distributed as dist
from longvila_trainer.bench.netns import SimulatedNetwork, holders, why_not
from longvila_trainer.bench.netsim import TwoTier
from longvila_trainer.bench.ranks import RankError, RankPool

REASON = why_not()
pytestmark = [pytest.mark.distributed, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]
BENCH = [sys.executable, "-m", "longvila_trainer.bench.network"]


def _gone(inodes: list[int], seconds: float = 15.0) -> dict[int, list[int]]:
    deadline = time.monotonic() + seconds
    while (left := holders(inodes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def _lo_qdisc() -> str:
    return subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout


def kill_self_on(rank: int, world: int, state: dict[Any, Any], victim: int) -> int:
    if rank == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    dist.barrier()  # the others wait for the dead rank here
    return rank


def send_across(rank: int, world: int, state: dict[Any, Any], nbytes: int) -> float:
    x = torch.zeros(nbytes // 4)
    dist.barrier()
    t0 = time.perf_counter()
    if rank == 0:
        dist.send(x, 1)
    else:
        dist.recv(x, 0)
    dist.barrier()
    return time.perf_counter() - t0


def test_shaped_link_and_a_killed_rank_leave_nothing() -> None:
    """Two nodes of one rank: the cross-node link runs at its shaped rate (measured by the
    kernel's own class counters and by time); then a rank SIGKILLed mid-phase fails the call
    at once, and the namespaces are gone after the pool and the network close."""
    lo_before = _lo_qdisc()
    net = TwoTier(2, 1, 8.0, 4)  # 2 MB/s across
    with SimulatedNetwork(net) as sim:
        inodes = sim.inodes()
        with RankPool(sim, timeout=120) as pool:
            seconds = min(pool.run(send_across, 1 << 20)[0] for _ in range(2))
            assert 1.0 / 2.0 * 0.8 < seconds < 1.0 / 2.0 * 1.6  # 1 MiB at ~2 MB/s goodput
            sent = sim.tc_class_bytes(0)
            assert sent["1:20"] > 2 * (1 << 20) and sent["1:10"] < 1 << 16  # it went through the slow class
            t0 = time.monotonic()
            with pytest.raises(RankError, match=r"rank 1 died \(exit code -9\)"):
                pool.run(kill_self_on, 1)
            assert time.monotonic() - t0 < 30
    assert _gone(inodes) == {}
    assert _lo_qdisc() == lo_before  # the host's loopback was never touched


def test_benchmark_short_run() -> None:
    """The short variant of `python -m longvila_trainer.bench.network --json` (as CI runs it)."""
    argv = ["--json", "--nodes", "2", "--seqs", "256", "--table-seq", "256", "--ratios", "1,18",
            "--overlap-ratios", "18", "--iters", "1", "--gpus", "8", "--timeout", "240"]  # fmt: skip
    p = subprocess.run([*BENCH, *argv], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert rep["namespaces_left"] == 0 and rep["bytes_match_model"] is True
    assert _gone(rep["configs"][0]["namespaces"], 1) == {}
    assert {r["ratio"] for r in rep["ratio_table"]} == {1.0, 18.0} and rep["speedup_2d_over_ring"] > 0
    assert {(o["mode"], o["ratio"]) for o in rep["overlap"]} == {("ring", 18.0), ("2d", 18.0)}
    slow = rep["configs"][0]["links"]["18.0"]["slow_bps"]
    assert 0.7 * 30e6 / 18 < slow < 1.1 * 30e6 / 18  # goodput of the shaped link, as measured
    for run in rep["configs"][0]["runs"]:
        if run["mode"] == "2d":  # the all-to-all stays in the node, only the ring crosses
            b = run["bytes_per_rank"]["fwd"]
            assert 0 < b["inter_node"] < b["intra_node"]
    assert rep["calibration"]["runs"] and rep["projection"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_benchmark_killed_leaves_nothing(sig: signal.Signals) -> None:
    """SIGKILL (ranks die with it through PR_SET_PDEATHSIG; the kernel frees the anonymous
    namespaces), Ctrl-C and SIGTERM (unwound): no namespace survives the benchmark."""
    argv = ["--nodes", "2", "--ranks-per-node", "1", "--seqs", "128", "--table-seq", "128", "--ratios", "18",
            "--overlap-ratios", "", "--iters", "50", "--gpus", ""]  # fmt: skip
    p = subprocess.Popen([*BENCH, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    lines = []
    for line in p.stderr:
        lines.append(line)
        if "ranks up" in line:
            break
    else:
        pytest.fail("the benchmark never got its ranks up:\n" + "".join(lines))
    up = next(line for line in lines if "namespaces up: " in line)
    inodes = [int(i) for i in up.split("namespaces up: ")[1].split(",")]
    assert len(inodes) == 3 and holders(inodes)
    p.send_signal(sig)
    # wait for the benchmark, not for EOF on its stderr: a rank still dying holds the pipe
    assert p.wait(timeout=60) != 0
    p.stderr.close()
    assert _gone(inodes, 60) == {}  # a loaded machine may take a while to reap the ranks
