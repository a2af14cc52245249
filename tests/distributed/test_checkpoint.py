"""The checkpoint store on gloo processes against a real S3 server (versitygw, `s3_server`).

Saved on 4 ranks with the model and optimizer sharded (DTensor, uneven shards), loaded on
2 ranks (sharded) and 1 (full tensors): every tensor equal exactly; an FSDP2 model + AdamW
saved through get_state_dict on 2 ranks loads into a plain model on 1. A crash after shards
went up but before the manifest never yields a loaded checkpoint; keep-K pruning; an
unreachable endpoint fails quickly with a clear error; transient S3 failures are retried.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from longvila_contract import checkpoint as L
from longvila_contract.uri import parse_uri
from longvila_trainer.checkpoint.s3 import MiB, RetryPolicy, S3Config, S3Storage, Storage, StorageError
from longvila_trainer.checkpoint.store import CheckpointNotFoundError, CheckpointStore
from longvila_trainer.parallel.spawn import WorkerError, run_gloo

pytestmark = pytest.mark.distributed

SHAPES = {"embed.weight": (10, 6), "layer.0.weight": (7, 3), "layer.0.bias": (7,), "head.weight": (5, 6)}


def s3_config(server: dict[str, str], **changes: Any) -> S3Config:
    base: dict[str, Any] = {
        "endpoint": server["endpoint"],
        "access_key": server["access_key"],
        "secret_key": server["secret_key"],
        "retry": RetryPolicy(attempts=4, base_s=0.05, cap_s=0.5),
        "part_size": 5 * MiB,  # the S3 minimum, so modest files already go up in parallel parts
    }
    base.update(changes)
    return S3Config(**base)


def open_store(
    server: dict[str, str], prefix: str, staging: str, keep: int = 3, **cfg: Any
) -> CheckpointStore:
    storage = S3Storage(parse_uri(f"s3://{server['bucket']}/{prefix}"), s3_config(server, **cfg))
    return CheckpointStore(storage, Path(staging), keep=keep)


def reference(step: int, scale: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    return {k: torch.randn(*(s[0] * scale, *s[1:]), generator=g) for k, s in SHAPES.items()}


def training_state(
    step: int, world: int, sharded: bool, zeros: bool = False, scale: int = 1
) -> dict[str, Any]:
    """model + optimizer (sharded over a 1-D mesh, Shard(0), or full), data loader, scheduler, metrics."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    full = reference(step, scale)
    if zeros:
        full = {k: torch.zeros_like(v) for k, v in full.items()}
    mesh = init_device_mesh("cpu", (world,)) if sharded else None

    def place(t: torch.Tensor) -> Any:
        return distribute_tensor(t, mesh, [Shard(0)]) if mesh is not None else t.clone()

    return {
        "model": {k: place(v) for k, v in full.items()},
        "optimizer": {"state": {k: {"exp_avg": place(2 * v)} for k, v in full.items()}, "step": step},
        "data": {"epoch": 0 if zeros else 1, "sample": 0 if zeros else 100 * step},
        "scheduler": {"last_epoch": 0 if zeros else step},
        "metrics": {"loss": 0.0 if zeros else 1.0 / (step + 1)},
    }


def full_tensors(state: dict[str, Any]) -> dict[str, Any]:
    def full(t: Any) -> torch.Tensor:
        out: torch.Tensor = t.full_tensor() if hasattr(t, "full_tensor") else t
        return out

    return {
        "model": {k: full(v) for k, v in state["model"].items()},
        "exp_avg": {k: full(v["exp_avg"]) for k, v in state["optimizer"]["state"].items()},
        "rest": {k: state[k] for k in ("data", "scheduler", "metrics")}
        | {"step": state["optimizer"]["step"]},
    }


def expected(step: int) -> dict[str, Any]:
    return full_tensors(training_state(step, 1, sharded=False))


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got["rest"] == want["rest"]
    for part in ("model", "exp_avg"):
        assert got[part].keys() == want[part].keys()
        for k in want[part]:
            assert torch.equal(got[part][k], want[part][k]), f"{part}.{k}"


# ---- workers (module level: pickled into spawned processes)
def save_steps(
    rank: int, world: int, server: dict[str, str], prefix: str, staging: str, steps: list[int], keep: int
) -> int:
    store = open_store(server, prefix, staging, keep)
    for step in steps:
        store.save(step, training_state(step, world, sharded=True), rank_state={"rank": rank, "step": step})
    return len(store.storage.listing())


def save_keep_final(rank: int, world: int, server: dict[str, str], prefix: str, staging: str) -> None:
    """keep=2: after steps 1-4 only 3 and 4 remain; 3 is marked final, and survives steps 5 and 6."""
    import torch.distributed as dist

    store = open_store(server, prefix, staging, keep=2)
    for step in (1, 2, 3, 4):
        store.save(step, training_state(step, world, sharded=True))
    assert store.complete_steps() == [3, 4] and sorted(store.steps()) == [3, 4]
    if rank == 0:
        store.mark_final(3)
    dist.barrier()
    for step in (5, 6):
        store.save(step, training_state(step, world, sharded=True))


def load_latest(
    rank: int, world: int, server: dict[str, str], prefix: str, staging: str, sharded: bool
) -> Any:
    store = open_store(server, prefix, staging)
    state = training_state(0, world, sharded=sharded, zeros=True)
    loaded = store.load(state)
    got = full_tensors(state)  # collective for DTensors: every rank calls it
    return loaded.step, loaded.manifest.world_size, loaded.rank_state, got if rank == 0 else None


class CrashingStorage:
    """Delegates to S3, but raises before writing `crash_at` (a key suffix) on `crash_rank`;
    with kill=True, that rank's process dies (SIGKILL) right after writing it instead."""

    def __init__(self, inner: Storage, rank: int, crash_rank: int, crash_at: str, kill: bool = False) -> None:
        self.inner, self.armed, self.crash_at, self.kill = inner, rank == crash_rank, crash_at, kill

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _maybe_crash(self, key: str) -> None:
        if self.armed and key.endswith(self.crash_at) and not self.kill:
            raise RuntimeError(f"simulated crash before writing {key}")

    def put_file(self, key: str, path: Path) -> tuple[int, str]:
        self._maybe_crash(key)
        sent: tuple[int, str] = self.inner.put_file(key, path)
        if self.armed and key.endswith(self.crash_at) and self.kill:
            os.kill(os.getpid(), signal.SIGKILL)
        return sent

    def put_bytes(self, key: str, data: bytes) -> None:
        self._maybe_crash(key)
        self.inner.put_bytes(key, data)


def save_then_crash(
    rank: int, world: int, server: dict[str, str], prefix: str, staging: str, crash_at: str, kill: bool
) -> str:
    store = open_store(server, prefix, staging)
    store.save(1, training_state(1, world, sharded=True))
    crash_rank = 0 if crash_at == L.MANIFEST else world - 1
    crashing = CrashingStorage(store.storage, rank, crash_rank, crash_at, kill)
    store2 = CheckpointStore(crashing, Path(staging), keep=1)
    try:
        store2.save(2, training_state(2, world, sharded=True))
    except StorageError as e:
        return str(e)
    return "no crash"


def save_with_flaky_s3(rank: int, world: int, server: dict[str, str], prefix: str, staging: str) -> int:
    """Each rank's client fails its first 3 HTTP requests (connection dropped); the save must succeed."""
    from botocore.exceptions import ConnectionClosedError

    store = open_store(server, prefix, staging)
    storage: S3Storage = store.storage  # type: ignore[assignment]
    failures = {"left": 3, "seen": 0}

    def flaky(request: Any, **_: Any) -> None:
        failures["seen"] += 1
        if failures["left"] > 0:
            failures["left"] -= 1
            raise ConnectionClosedError(endpoint_url=server["endpoint"])

    storage.client.meta.events.register("before-send.s3", flaky)
    store.save(1, training_state(1, world, sharded=True, scale=40_000))  # ~ 7 MiB per rank: multipart
    return failures["seen"]


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.ReLU(), torch.nn.Linear(10, 3))


def fsdp2_train_and_save(rank: int, world: int, server: dict[str, str], prefix: str, staging: str) -> Any:
    """The training loop's path: FSDP2 (fully_shard) + AdamW, get_state_dict → store.save."""
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    model = tiny_model()
    fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 6, generator=torch.Generator().manual_seed(rank))).sum().backward()
    opt.step()
    msd, osd = cast(Any, get_state_dict(model, opt))
    open_store(server, prefix, staging).save(1, {"model": msd, "optim": osd})
    full = {k: v.full_tensor() for k, v in msd.items()}
    exp_avg = {k: v["exp_avg"].full_tensor() for k, v in osd["state"].items()}
    return (full, exp_avg) if rank == 0 else None


def plain_load(rank: int, world: int, server: dict[str, str], prefix: str, staging: str) -> Any:
    """One process, no FSDP: get_state_dict → store.load → set_state_dict."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model = tiny_model()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.zeros(1, 6)).sum().backward()
    opt.step()  # materialise the optimizer state the checkpoint fills
    msd, osd = cast(Any, get_state_dict(model, opt))
    state = {"model": msd, "optim": osd}
    open_store(server, prefix, staging).load(state)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    msd, osd = cast(Any, get_state_dict(model, opt))
    return dict(msd), {k: v["exp_avg"].clone() for k, v in osd["state"].items()}


# ---- tests
def test_save_on_4_load_on_2_and_1(s3_server: dict[str, str], tmp_path: Path) -> None:
    args = (s3_server, "reshard", str(tmp_path))
    run_gloo(save_steps, 4, *args, [1, 2], 3)
    for world, sharded in ((2, True), (1, False)):
        results = run_gloo(load_latest, world, *args, sharded)
        step, saved_world, _, got = results[0]
        assert (step, saved_world) == (2, 4)
        assert_same(got, expected(2))
        assert [r[2] for r in results] == [{"rank": r, "step": 2} for r in range(world)]


def test_fsdp2_state_dict_loads_unsharded(s3_server: dict[str, str], tmp_path: Path) -> None:
    saved_model, saved_exp_avg = run_gloo(fsdp2_train_and_save, 2, s3_server, "fsdp2", str(tmp_path))[0]
    got_model, got_exp_avg = run_gloo(plain_load, 1, s3_server, "fsdp2", str(tmp_path))[0]
    assert saved_model.keys() == got_model.keys() and saved_exp_avg.keys() == got_exp_avg.keys()
    assert all(torch.equal(saved_model[k], got_model[k]) for k in saved_model)
    assert all(torch.equal(saved_exp_avg[k], got_exp_avg[k]) for k in saved_exp_avg)


@pytest.mark.parametrize(
    ("crash_at", "kill"),
    [(L.MANIFEST, False), ("__1_0.distcp", False), ("__1_0.distcp", True)],
    ids=["raise-before-manifest", "raise-before-shard", "sigkill-after-shard"],
)
def test_crash_during_write_is_never_loaded(
    s3_server: dict[str, str], tmp_path: Path, crash_at: str, kill: bool
) -> None:
    prefix = f"crash-{crash_at.strip('_.')}-{kill}".lower()
    args = (save_then_crash, 2, s3_server, prefix, str(tmp_path), crash_at, kill)
    if kill:  # rank 1 dies after its shard went up; rank 0 is stopped (as torchrun would)
        with pytest.raises(WorkerError):
            run_gloo(*args, timeout=60)
    else:
        errors = run_gloo(*args)
        assert all("simulated crash" in e for e in errors)  # every rank raised; none hung
    store = open_store(s3_server, prefix, str(tmp_path / "parent"))
    steps = store.steps()
    assert L.MANIFEST not in steps[2] and steps[2]  # some of step 2 went up, its manifest did not
    assert store.latest_complete() == 1
    state = training_state(0, 1, sharded=False, zeros=True)
    assert store.load(state).step == 1
    assert_same(full_tensors(state), expected(1))
    with pytest.raises(CheckpointNotFoundError, match="no manifest"):
        store.load(state, step=2)


def test_keep_last_k_and_final(s3_server: dict[str, str], tmp_path: Path) -> None:
    run_gloo(save_keep_final, 2, s3_server, "keep", str(tmp_path))
    store = open_store(s3_server, "keep", str(tmp_path / "parent"), keep=2)
    assert store.complete_steps() == [3, 5, 6]  # the final checkpoint outlives keep-K
    assert sorted(store.steps()) == [3, 5, 6]  # nothing else left behind
    state = training_state(0, 1, sharded=False, zeros=True)
    assert store.load(state, step="final").step == 3
    assert_same(full_tensors(state), expected(3))


def test_unreachable_endpoint_fails_fast_and_clearly(s3_server: dict[str, str], tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections are refused
    dead = dict(s3_server, endpoint=f"http://127.0.0.1:{port}")
    store = open_store(dead, "nowhere", str(tmp_path), retry=RetryPolicy(attempts=3, base_s=0.05, cap_s=0.1))
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        store.latest_complete()
    assert time.monotonic() - t0 < 10
    msg = str(e.value)
    assert (
        f"http://127.0.0.1:{port}" in msg and "s3://longvila/nowhere" in msg and "after 3 attempt(s)" in msg
    )
    assert s3_server["secret_key"] not in msg
    with pytest.raises(StorageError, match=r"not committed|failed after 3"):
        store.save(1, training_state(1, 1, sharded=False))


def test_transient_s3_errors_are_retried(s3_server: dict[str, str], tmp_path: Path) -> None:
    seen = run_gloo(save_with_flaky_s3, 2, s3_server, "flaky", str(tmp_path))
    assert all(n > 3 for n in seen)
    store = open_store(s3_server, "flaky", str(tmp_path / "parent"))
    manifest = store.manifest(1)
    assert max(f.size for f in manifest.files) > 5 * MiB  # went up as a multipart upload
    state = training_state(0, 1, sharded=False, zeros=True, scale=40_000)
    store.load(state)
    assert torch.equal(state["model"]["embed.weight"], reference(1, 40_000)["embed.weight"])
