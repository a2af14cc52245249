"""Rank processes inside the simulated network, kept alive across benchmark phases.

Each rank is a spawned process that first arranges to die with the benchmark
(PR_SET_PDEATHSIG), enters its own network namespace, and initialises gloo bound to its
namespace's interface (GLOO_SOCKET_IFNAME=lv0, so every connection it makes goes through
its shaped veth; 127.0.0.1 of its namespace reaches no other rank, so there is no silent
fallback to an unshaped path). The process group stays up between phases, so the
benchmark can reshape the links (SimulatedNetwork.set_rates) and run again without paying
for torch's start-up and gloo's connections each time.

`RankPool.run(fn, *args)` calls fn(rank, world, state, *args) on every rank (state: a dict
that lives as long as the rank, e.g. for process groups built once) and returns the results
by rank. A rank that raises or dies (even by SIGKILL) fails the call at once with its
traceback or exit code; the pool is then torn down.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from multiprocessing import connection
from multiprocessing.connection import Connection
from typing import Any, cast

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .netns import SimulatedNetwork, die_with_parent, enter
from .netsim import IFACE

PORT = 29500  # the store's port on rank 0's address: a namespace of our own, so always free


class RankError(RuntimeError):
    pass


def _rank_main(
    rank: int, world: int, ns_path: str, master: str, conn: Any, threads: int, timeout: float
) -> None:
    die_with_parent()
    enter(ns_path)
    os.environ["GLOO_SOCKET_IFNAME"] = IFACE  # bind gloo to this namespace's shaped interface
    torch.set_num_threads(threads)
    state: dict[Any, Any] = {}
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://{master}:{PORT}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=timeout),
        )
    except Exception:
        conn.send((False, traceback.format_exc()))
        return
    conn.send((True, b""))
    try:
        while (msg := conn.recv()) is not None:
            fn, args = msg
            try:
                result = pickle.dumps(fn(rank, world, state, *args))
            except Exception:
                conn.send((False, traceback.format_exc()))
                return  # the other ranks may be stuck in a collective with us: the parent kills them
            conn.send((True, result))
    finally:
        dist.destroy_process_group()


class RankPool:
    """world = net.world processes, rank r inside namespace r of a SimulatedNetwork."""

    def __init__(self, sim: SimulatedNetwork, timeout: float = 600.0) -> None:
        self.sim, self.timeout = sim, timeout
        self.world = sim.net.world
        self._procs: list[Any] = []
        self._conns: list[Any] = []

    def __enter__(self) -> RankPool:
        # forkserver: one fresh process imports torch once (preload) and forks every rank from
        # it, also for the next pool; importing torch in 8 spawned processes took 40-130 s on
        # 2 loaded cores. The server exits when this process does, and the ranks with it.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        threads = max(1, (os.cpu_count() or 1) // self.world)
        master = self.sim.net.address(0)
        try:
            for r in range(self.world):
                mine, theirs = ctx.Pipe()
                args = (r, self.world, self.sim.path(r), master, theirs, threads, self.timeout)
                p = ctx.Process(target=_rank_main, args=args, daemon=True)
                p.start()
                theirs.close()
                self._procs.append(p)
                self._conns.append(mine)
            self._collect()  # every rank reports its process group up
        except BaseException:
            self.close(grace=0.0)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """fn(rank, world, state, *args) on every rank (fn must be module-level, to pickle)."""
        try:
            for c in self._conns:
                c.send((fn, args))
            return [pickle.loads(b) for b in self._collect()]
        except BaseException:
            self.close(grace=0.0)
            raise

    def _collect(self) -> list[bytes]:
        results: dict[int, bytes] = {}
        by_conn = {id(c): r for r, c in enumerate(self._conns)}
        by_sentinel = {p.sentinel: r for r, p in enumerate(self._procs)}
        while len(results) < self.world:
            waiting = [r for r in range(self.world) if r not in results]
            ready = connection.wait(
                [self._conns[r] for r in waiting] + [self._procs[r].sentinel for r in waiting],
                timeout=self.timeout,
            )
            if not ready:
                raise RankError(f"no answer from the ranks within {self.timeout:.0f} s")
            for obj in ready:
                r = by_sentinel[obj] if isinstance(obj, int) else by_conn[id(obj)]
                if r not in results:
                    results[r] = self._answer(r)
        return [results[r] for r in range(self.world)]

    def _answer(self, r: int) -> bytes:
        """Rank r's result; RankError if it failed (its traceback) or died (its exit code)."""
        try:
            ok, payload = cast(Connection, self._conns[r]).recv()
        except EOFError:  # it exited without a word: killed
            self._procs[r].join(1)
            raise RankError(self._dead(f"rank {r} exited without an answer")) from None
        if not ok:  # a peer's death often surfaces first as a reset connection here
            raise RankError(self._dead(f"rank {r} failed:\n{payload}"))
        return cast(bytes, payload)

    def _dead(self, then: str, wait_s: float = 2.0) -> str:
        """Names the ranks that died (the cause) before `then` (what another rank saw)."""
        connection.wait([p.sentinel for p in self._procs], timeout=wait_s)
        dead = [f"rank {r} died (exit code {p.exitcode})" for r, p in enumerate(self._procs) if p.exitcode]
        return "; ".join(dead) + f"; then {then}" if dead else then

    def close(self, grace: float = 10.0) -> None:
        """Stops every rank: asks it to leave, then SIGKILL after `grace` seconds in all."""
        for c in self._conns:
            with contextlib.suppress(OSError):
                c.send(None)
        deadline = time.monotonic() + grace
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self._conns:
            c.close()
        self._procs, self._conns = [], []
