"""The checkpoint layout contract (longvila_contract.checkpoint), both sides, plus the S3 retry policy.

Pure tests, except `test_store_writes_exactly_the_layout`: a one-process CheckpointStore on
the local backend, whose files must be exactly what layout.py names and what its reader accepts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError, EndpointConnectionError
from longvila_contract import checkpoint as L
from longvila_contract.uri import parse_uri
from longvila_trainer.checkpoint.s3 import LocalStorage, RetryPolicy, S3Config, S3Storage, StorageError
from longvila_trainer.checkpoint.store import CheckpointNotFoundError, CheckpointStore

SHA = "ab" * 32


def manifest(step: int = 7, world: int = 2, **changes: Any) -> L.Manifest:
    files = [L.FileEntry(L.DCP_METADATA, 10, SHA)] + [
        L.FileEntry(L.dcp_shard(r), 100, SHA) for r in range(world)
    ]
    base: dict[str, Any] = {
        "step": step,
        "world_size": world,
        "layout": {"world": world, "ulysses": 1, "ring": world, "dp": 1},
        "files": tuple(files),
        "meta": {"stage": "sft"},
    }
    base.update(changes)
    return L.Manifest(**base)


# ---- names
def test_names() -> None:
    assert L.step_dir(42) == "step-00000042"
    assert L.parse_step_dir("step-00000042") == 42
    assert L.parse_step_dir("step-42") is None
    assert L.manifest_key(3) == "step-00000003/manifest.json"
    assert L.dcp_shard(5) == "dcp/__5_0.distcp"
    assert L.rank_file(5) == "rank/rank-00005.pt"
    with pytest.raises(ValueError, match="step"):
        L.step_dir(-1)


# ---- manifest
def test_manifest_round_trip() -> None:
    m = manifest()
    assert L.Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(format="other/9"), "format"),
        (lambda d: d.update(step="7"), "'step'"),
        (lambda d: d.update(layout=[1]), "'layout'"),
        (lambda d: d["files"][0].update(sha256="xyz"), "files[0]"),
        (lambda d: d.update(files={}), "'files'"),
    ],
)
def test_manifest_rejects(mutate: Any, needle: str) -> None:
    import json

    d = json.loads(manifest().to_json())
    mutate(d)
    with pytest.raises(L.ManifestError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        L.Manifest.from_json(json.dumps(d))
    with pytest.raises(L.ManifestError, match="not JSON"):
        L.Manifest.from_json("{truncated")


def test_manifest_problems() -> None:
    m = manifest(step=7, world=2)
    listing = {f.path: f.size for f in m.files}
    assert m.problems(7, listing) == []
    assert "says step 7" in m.problems(8, listing)[0]
    missing = dict(listing)
    del missing[L.dcp_shard(1)]
    assert m.problems(7, missing) == [f"{L.dcp_shard(1)}: listed in the manifest but missing"]
    short = dict(listing, **{L.dcp_shard(0): 99})
    assert "99 bytes" in m.problems(7, short)[0]
    lacking = manifest(files=(L.FileEntry(L.DCP_METADATA, 10, SHA),))
    assert any("does not list dcp/__1_0.distcp" in p for p in lacking.problems(7, listing))


def test_group_by_step() -> None:
    keys = [
        ("step-00000001/manifest.json", 5),
        ("step-00000001/dcp/.metadata", 3),
        ("final.json", 1),
        ("junk", 2),
    ]
    assert L.group_by_step(keys) == {1: {"manifest.json": 5, "dcp/.metadata": 3}}


@pytest.mark.parametrize(
    ("steps", "keep", "protect", "doomed"),
    [
        ({1: True, 2: True, 3: True}, 2, (), [1]),
        ({1: True, 2: True, 3: True}, 3, (), []),
        ({1: True, 2: False, 3: True, 4: False}, 1, (), [1, 2]),  # 4 may be in progress
        ({1: True, 2: True, 3: True}, 1, (1,), [2]),  # the final step is kept
        ({5: False}, 1, (), []),  # nothing complete: touch nothing
    ],
)
def test_prune_plan(steps: dict[int, bool], keep: int, protect: tuple[int, ...], doomed: list[int]) -> None:
    assert L.prune_plan(steps, keep, protect) == doomed


def test_final_round_trip() -> None:
    assert L.parse_final(L.final_json(12)) == 12
    with pytest.raises(L.ManifestError):
        L.parse_final('{"step": 1}')


# ---- both sides: the store writes what layout.py names and reads only what it accepts
def test_store_writes_exactly_the_layout(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "ckpt")
    store = CheckpointStore(storage, tmp_path / "staging", keep=2)
    for step in (1, 2, 3):
        state = {"model": {"w": torch.full((3, 5), float(step))}, "data": {"sample": 10 * step}}
        store.save(step, state, rank_state={"rng": torch.get_rng_state()}, meta={"stage": "t"})
    keys = storage.listing()
    expected = {
        f"{L.step_dir(s)}/{name}"
        for s in (2, 3)
        for name in (L.MANIFEST, L.DCP_METADATA, L.dcp_shard(0), L.rank_file(0))
    }
    assert set(keys) == expected  # step 1 pruned (keep=2), no staging debris
    m = L.Manifest.from_json(storage.get_bytes(L.manifest_key(3)))
    assert m.step == 3 and m.world_size == 1 and m.meta == {"stage": "t"}
    assert m.problems(3, L.group_by_step(keys.items())[3]) == []
    assert store.latest_complete() == 3

    # a shard that does not match its manifest makes the step incomplete: never loaded
    (tmp_path / "ckpt" / L.step_dir(3) / L.dcp_shard(0)).write_bytes(b"torn")
    assert store.complete_steps() == [2]
    target: dict[str, Any] = {"model": {"w": torch.zeros(3, 5)}, "data": {"sample": 0}}
    loaded = store.load(target)
    assert loaded.step == 2 and target["data"] == {"sample": 20}
    assert torch.equal(target["model"]["w"], torch.full((3, 5), 2.0))
    assert isinstance(loaded.rank_state["rng"], torch.Tensor)
    with pytest.raises(CheckpointNotFoundError, match="incomplete"):
        store.load(target, step=3)
    with pytest.raises(CheckpointNotFoundError, match="final"):
        store.load(target, step="final")
    store.mark_final(2)
    assert store.final_step() == 2 and storage.listing(L.FINAL) == {L.FINAL: len(L.final_json(2))}


# ---- S3 retries with a fake client (no network)
class FlakyClient:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures, self.calls = failures, 0

    def put_object(self, **kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return {}


def s3(client: Any, attempts: int = 4) -> tuple[S3Storage, list[float]]:
    slept: list[float] = []
    cfg = S3Config(endpoint="http://s3.test:9", access_key="AKIDEXAMPLE", secret_key="s3cr3t-value",
                   retry=RetryPolicy(attempts=attempts, base_s=0.5, cap_s=3.0))  # fmt: skip
    return S3Storage(parse_uri("s3://bkt/run"), cfg, client=client, sleep=slept.append, seed=0), slept


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def test_transient_errors_are_retried_with_backoff() -> None:
    client = FlakyClient(
        [EndpointConnectionError(endpoint_url="http://s3.test:9"), client_error("SlowDown", 503)]
    )
    storage, slept = s3(client)
    storage.put_bytes("k", b"x")
    assert client.calls == 3 and len(slept) == 2
    assert 0 <= slept[0] <= 0.5 and 0 <= slept[1] <= 1.0


def test_retries_end_in_a_clear_error_without_credentials() -> None:
    client = FlakyClient([EndpointConnectionError(endpoint_url="http://s3.test:9")] * 9)
    storage, slept = s3(client, attempts=3)
    with pytest.raises(StorageError) as e:
        storage.put_bytes("step-00000001/manifest.json", b"x")
    msg = str(e.value)
    assert "s3://bkt/run/step-00000001/manifest.json" in msg and "http://s3.test:9" in msg
    assert "after 3 attempt(s)" in msg and "EndpointConnectionError" in msg
    assert "s3cr3t-value" not in msg and "s3cr3t-value" not in repr(storage.config)
    assert client.calls == 3 and len(slept) == 2


def test_permanent_errors_are_not_retried() -> None:
    client = FlakyClient([client_error("AccessDenied", 403)])
    storage, slept = s3(client)
    with pytest.raises(StorageError, match="after 1 attempt"):
        storage.put_bytes("k", b"x")
    assert slept == []


def test_backoff_is_capped_full_jitter() -> None:
    policy, rng = RetryPolicy(attempts=10, base_s=1.0, cap_s=4.0), random.Random(1)
    delays = [policy.delay(a, rng) for a in range(10) for _ in range(50)]
    assert max(delays) <= 4.0 and min(delays) >= 0.0


def test_config_from_env() -> None:
    env = {"AWS_ENDPOINT_URL_S3": "http://x:1", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"}
    cfg = S3Config.from_env(env, max_concurrency=2)
    assert (cfg.endpoint, cfg.access_key, cfg.secret_key, cfg.max_concurrency) == ("http://x:1", "a", "b", 2)
    assert "b" not in repr(cfg).replace("base_s", "").replace("max_concurrency", "") or "secret" not in repr(
        cfg
    )


# ---- the reader every tool uses (the demo's listing, the store's complete steps)
def test_read_checkpoints_agrees_with_the_store(tmp_path: Path) -> None:
    store = CheckpointStore(LocalStorage(tmp_path / "ck"), tmp_path / "staging", keep=5)
    state = {"model": {"w": torch.arange(4.0)}}
    for step in (1, 2, 3):
        store.save(step, state)
    store.mark_final(2)
    (tmp_path / "ck" / L.step_dir(3) / L.DCP_METADATA).write_bytes(b"torn")  # size no longer matches
    (tmp_path / "ck" / L.step_dir(4) / "dcp").mkdir(parents=True)  # a crash before the manifest
    (tmp_path / "ck" / L.step_dir(4) / L.dcp_shard(0)).write_bytes(b"x")
    storage = LocalStorage(tmp_path / "ck")
    found = L.read_checkpoints(storage.listing(""), storage.get_bytes)
    assert [s.step for s in found.steps] == [1, 2, 3, 4]
    assert found.complete_steps() == store.complete_steps() == [1, 2]
    assert found.final == 2
    torn, crashed = found.steps[2], found.steps[3]
    assert "bytes, the manifest says" in torn.problem and "no manifest" in crashed.problem
    assert found.steps[0].files == 3 and found.steps[0].bytes > 0  # metadata, shard, manifest
