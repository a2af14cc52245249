"""Training benchmark of the tiny model on CPU: tokens/s and peak memory per rank for SP = 1, 2, 4,
and the time from a SIGKILLed worker to training resumed (torchrun restart + S3 load).

python -m longvila_localcluster.benches.train [--steps 5] [--sp 1 2 4] [--engine fsdp|deepspeed]
    [--no-kill] [--json]

Every run is the real entry point under torchrun with the env contract (longvila_contract.env),
checkpointing to a private versitygw (longvila_localcluster.s3.private_s3). tokens/s is the median
over steps after the first (the first pays for the data cache and lazy init); memory is the
peak RSS of the largest rank (ru_maxrss), or the CUDA peak on GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from longvila_contract import checkpoint as L
from longvila_contract import env as E
from longvila_contract.config import merge, preset_tree
from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.parallel.spawn import free_port

from ..s3 import private_s3

PRESET = "tiny-long-video-sft"
LAYOUTS = {1: (1, 1), 2: (2, 1), 4: (2, 2)}  # sp → (ulysses, ring)


def write_config(path: Path, steps: int, every: int, engine: str = "fsdp") -> Path:
    train = {"max_steps": steps, "grad_accum": 1, "warmup_ratio": 0.0, "engine": engine}
    tree = merge(preset_tree(PRESET), {"train": train, "checkpoint": {"every_steps": every}})
    path.write_text(yaml.safe_dump(tree))
    return path


def worker_env(
    nproc: int, sp: int, uri: str, cfg: Path, s3: dict[str, str], cache: Path, restarts: int
) -> dict[str, str]:
    """The operator's env contract for one loopback node (longvila_contract.env.render), plus credentials."""
    u, r = LAYOUTS[sp]
    w = E.WorkerEnv(
        nnodes=1,
        nproc_per_node=nproc,
        node_rank=0,
        master_addr="127.0.0.1",
        local_addr="127.0.0.1",
        rdzv_id=f"bench-{uuid.uuid4().hex[:8]}",
        ulysses=u,
        ring=r,
        token_layout="zigzag",
        stage="bench",
        stage_type="long-video-sft",
        checkpoint_uri=uri,
        config_path=str(cfg),
        s3_endpoint=s3["endpoint"],
        max_restarts=restarts,
        master_port=free_port(),
        rdzv_port=free_port(),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "LONGVILA_"))}
    env.update(E.render(w))
    env.update(AWS_ACCESS_KEY_ID=s3["access_key"], AWS_SECRET_ACCESS_KEY=s3["secret_key"])
    env.update(LONGVILA_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    return env


def torchrun(nproc: int, restarts: int = 0) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            f"--max-restarts={restarts}", "-m", "longvila_trainer.train"]  # fmt: skip


def throughput(sp: int, steps: int, s3: dict[str, str], work: Path, engine: str = "fsdp") -> dict[str, Any]:
    cfg = write_config(work / f"sp{sp}-{engine}.yaml", steps, every=1000, engine=engine)
    uri = f"s3://{s3['bucket']}/bench-sp{sp}-{uuid.uuid4().hex[:6]}"
    env = worker_env(sp, sp, uri, cfg, s3, work / "cache", 0)
    t0 = time.perf_counter()
    p = subprocess.run(torchrun(sp), env=env, capture_output=True, text=True, timeout=1200)
    if p.returncode:
        raise RuntimeError(f"sp={sp} failed:\n{p.stderr[-3000:]}")
    recs = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    later = recs[1:] or recs
    return {
        "sp": sp,
        "engine": engine,
        "ulysses_ring": LAYOUTS[sp],
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
        "step_s": statistics.median(r["step_s"] for r in later),
        "rss_peak_mib_max_rank": max(r["rss_peak_mib"] for r in recs),
        "cuda_peak_mib": max((r.get("cuda_peak_mib", 0.0) for r in recs), default=0.0),
        "losses": [r["loss"] for r in recs],
        "wall_s": time.perf_counter() - t0,
    }


def kill_to_resume(s3: dict[str, str], work: Path, nproc: int = 2) -> dict[str, Any]:
    """SIGKILL one worker after the step-2 checkpoint; seconds until the restarted group has
    loaded the checkpoint and until it has finished its first step."""
    cfg = write_config(work / "kill.yaml", 6, every=2)
    uri = f"s3://{s3['bucket']}/bench-kill-{uuid.uuid4().hex[:6]}"
    env = worker_env(nproc, nproc, uri, cfg, s3, work / "cache", 1)
    storage = open_storage(uri, environ=env)
    proc = subprocess.Popen(
        torchrun(nproc, 1), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    events: list[tuple[float, str]] = []

    def pump(stream: Any) -> None:
        for line in stream:
            events.append((time.monotonic(), line))

    threads = [threading.Thread(target=pump, args=(s,), daemon=True) for s in (proc.stdout, proc.stderr)]
    for t in threads:
        t.start()
    while L.manifest_key(2) not in storage.listing("step-00000002/"):
        if proc.poll() is not None:
            raise RuntimeError("training ended before the step-2 checkpoint")
        time.sleep(0.1)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    killed = time.monotonic()
    os.kill(int(children[-1]), signal.SIGKILL)
    rc = proc.wait(timeout=900)
    for t in threads:
        t.join(timeout=10)
    after = [(ts, line) for ts, line in events if ts > killed]
    loaded = next(ts for ts, line in after if "resumed from step" in line)
    first = next(ts for ts, line in after if line.startswith("{") and ts > loaded)
    return {
        "world": nproc,
        "exit": rc,
        "kill_to_loaded_s": loaded - killed,
        "kill_to_first_step_s": first - killed,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--sp", type=int, nargs="*", default=[1, 2, 4])
    p.add_argument("--engine", choices=("fsdp", "deepspeed"), default="fsdp", help="train.engine")
    p.add_argument("--no-kill", action="store_true", help="skip the kill → resumed measurement")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        with private_s3(work / "s3") as server:
            s3 = server.as_dict()
            rows = [throughput(sp, args.steps, s3, work, args.engine) for sp in args.sp]
            kill = None if args.no_kill else kill_to_resume(s3, work)
    if args.json:
        print(json.dumps({"throughput": rows, "kill": kill}, indent=1))
        return 0
    print("| engine | SP (U×R) | tokens/s | tokens/s per rank | step s | peak RSS, largest rank (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        u, ring = r["ulysses_ring"]
        figures = f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / r['sp']:.0f} | {r['step_s']:.2f}"
        print(f"| {r['engine']} | {r['sp']} ({u}×{ring}) | {figures} | {r['rss_peak_mib_max_rank']:.0f} |")
    if kill is None:
        return 0
    print(f"kill → checkpoint loaded {kill['kill_to_loaded_s']:.1f} s, → first step done "
          f"{kill['kill_to_first_step_s']:.1f} s (world {kill['world']}, exit {kill['exit']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
