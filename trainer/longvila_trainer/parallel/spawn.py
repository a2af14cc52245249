"""Runs a function on N local gloo processes (CPU stand-ins for GPUs) and collects results.

Used by tests, `check_attention` and the benchmarks. Each worker initialises the default
process group over TCP on a free loopback port; results come back pickled through a
multiprocessing queue; a worker failure raises in the parent with that worker's traceback.
Results are pickled to bytes by the worker: torch's multiprocessing queue would otherwise
pass tensors through shared memory that dies with the worker (EOFError in the parent).
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import socket
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _worker(
    rank: int,
    world: int,
    port: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    queue: Any,
    threads: int,
) -> None:
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        try:
            result = fn(rank, world, *args)
        finally:
            dist.destroy_process_group()
        queue.put((rank, True, pickle.dumps(result)))
    except BaseException:
        queue.put((rank, False, traceback.format_exc()))
        raise


class WorkerError(RuntimeError):
    pass


def run_gloo(fn: Callable[..., Any], world: int, *args: Any, timeout: float = 600.0) -> list[Any]:
    """Calls fn(rank, world, *args) on `world` gloo processes; returns results by rank.

    fn must be a module-level function (it is pickled into spawned processes).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    threads = max(1, (os.cpu_count() or 1) // world)
    procs = [
        ctx.Process(target=_worker, args=(r, world, port, fn, args, queue, threads), daemon=False)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: list[str] = []
    try:
        for _ in range(world):
            rank, ok, payload = queue.get(timeout=timeout)
            if ok:
                results[rank] = pickle.loads(payload)
            else:
                errors.append(f"rank {rank}:\n{payload}")
                break  # the others are likely blocked in a collective with the failed rank
    except queue_module.Empty:
        errors.append(f"timed out after {timeout}s waiting for workers")
    except Exception as e:
        errors.append(f"lost contact with the workers: {type(e).__name__}: {e}")
    finally:
        if errors:
            for p in procs:
                if p.is_alive():
                    p.kill()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise WorkerError("\n".join(errors))
    return [results[r] for r in range(world)]
