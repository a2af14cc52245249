"""Checkpoint save/load throughput: the S3 store against the same store on local disk.

python -m longvila_localcluster.benches.checkpoint [--mib 256] [--trials 3] [--json]

Uses the S3 server named by AWS_ENDPOINT_URL_S3 / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
LONGVILA_S3_BUCKET (e.g. `eval $(longvila-cluster env)`); without one it starts a private
versitygw (the local cluster's binary) for the run. One process; the state is `--mib` of
float32 tensors. Figures: GiB/s for save (DCP staging + upload + manifest) and load (download
+ sha256 + DCP read) through S3 and through the local-filesystem backend, and a raw
write/read of the same bytes to local disk; ratio = S3 throughput / local-store throughput.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from longvila_contract.uri import parse_uri
from longvila_trainer.checkpoint.s3 import LocalStorage, S3Config, S3Storage, Storage
from longvila_trainer.checkpoint.store import CheckpointStore

from ..s3 import private_s3

GiB = float(1 << 30)


def make_state(mib: int) -> dict[str, Any]:
    n = mib * (1 << 20) // 4 // 8  # 8 float32 tensors
    g = torch.Generator().manual_seed(0)
    return {"model": {f"w{i}": torch.randn(n, generator=g) for i in range(8)}, "data": {"sample": 1}}


def time_store(
    storage: Storage, staging: Path, state: dict[str, Any], trials: int
) -> tuple[float, float, int]:
    """Median save and load seconds, and the checkpoint's bytes."""
    store = CheckpointStore(storage, staging, keep=1, threads=4)
    saves, loads, size = [], [], 0
    target: dict[str, Any] = {
        "model": {k: torch.empty_like(v) for k, v in state["model"].items()},
        "data": {"sample": 0},
    }
    for t in range(trials):
        t0 = time.perf_counter()
        m = store.save(t, state)
        saves.append(time.perf_counter() - t0)
        size = sum(f.size for f in m.files)
        t0 = time.perf_counter()
        store.load(target, step=t)
        loads.append(time.perf_counter() - t0)
    assert all(torch.equal(target["model"][k], v) for k, v in state["model"].items())
    return statistics.median(saves), statistics.median(loads), size


def time_raw_disk(path: Path, nbytes: int, trials: int) -> tuple[float, float]:
    """Median seconds to write (with fsync) and read back `nbytes` as one file."""
    data = os.urandom(min(nbytes, 64 << 20))
    writes, reads = [], []
    for _ in range(trials):
        t0 = time.perf_counter()
        with path.open("wb") as f:
            left = nbytes
            while left > 0:
                left -= f.write(data[: min(left, len(data))])
            f.flush()
            os.fsync(f.fileno())
        writes.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with path.open("rb") as f:
            while f.read(16 << 20):
                pass
        reads.append(time.perf_counter() - t0)
    path.unlink()
    return statistics.median(writes), statistics.median(reads)


def run(s3: dict[str, str], mib: int, trials: int, work: Path) -> dict[str, Any]:
    state = make_state(mib)
    cfg = S3Config(endpoint=s3["endpoint"], access_key=s3["access_key"], secret_key=s3["secret_key"])
    s3_storage = S3Storage(parse_uri(f"s3://{s3['bucket']}/bench-{secrets.token_hex(4)}"), cfg)
    s3_save, s3_load, size = time_store(s3_storage, work / "staging-s3", state, trials)
    local_save, local_load, _ = time_store(
        LocalStorage(work / "local"), work / "staging-local", state, trials
    )
    raw_write, raw_read = time_raw_disk(work / "raw.bin", size, trials)
    gbps = {
        "s3_save": size / s3_save / GiB,
        "s3_load": size / s3_load / GiB,
        "local_save": size / local_save / GiB,
        "local_load": size / local_load / GiB,
        "raw_disk_write": size / raw_write / GiB,
        "raw_disk_read": size / raw_read / GiB,
    }
    return {
        "bytes": size,
        "trials": trials,
        "gib_per_s": {k: round(v, 3) for k, v in gbps.items()},
        "ratio_save_s3_vs_local": round(gbps["s3_save"] / gbps["local_save"], 2),
        "ratio_load_s3_vs_local": round(gbps["s3_load"] / gbps["local_load"], 2),
        "ratio_save_s3_vs_raw_write": round(gbps["s3_save"] / gbps["raw_disk_write"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=256, help="state size in MiB")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(max(1, (os.cpu_count() or 1)))
    with tempfile.TemporaryDirectory(dir=os.environ.get("LONGVILA_BENCH_DIR")) as tmp:
        work = Path(tmp)
        env = os.environ
        with contextlib.ExitStack() as stack:
            if env.get("AWS_ENDPOINT_URL_S3"):
                s3 = {
                    "endpoint": env["AWS_ENDPOINT_URL_S3"],
                    "access_key": env.get("AWS_ACCESS_KEY_ID", ""),
                    "secret_key": env.get("AWS_SECRET_ACCESS_KEY", ""),
                    "bucket": env.get("LONGVILA_S3_BUCKET", "longvila"),
                }
            else:
                s3 = stack.enter_context(private_s3(work / "s3")).as_dict()
            result = run(s3, a.mib, a.trials, work)
    if a.json:
        print(json.dumps(result, indent=1))
    else:
        print(f"checkpoint of {result['bytes'] / (1 << 20):.0f} MiB, median of {a.trials} trials")
        for k, v in result["gib_per_s"].items():
            print(f"  {k:16s} {v:7.3f} GiB/s")
        for k in ("ratio_save_s3_vs_local", "ratio_load_s3_vs_local", "ratio_save_s3_vs_raw_write"):
            print(f"  {k:28s} {result[k]:.2f}  (target ≥ 0.5)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
