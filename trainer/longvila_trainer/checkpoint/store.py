"""CheckpointStore: sharded save/load of the whole training state through a Storage backend.

save(): torch.distributed.checkpoint (DCP) writes each rank's shard to a local staging
directory, each rank uploads its own files in parallel (multipart for large ones), rank 0
collects sizes and sha256 from every rank and writes the manifest LAST, then prunes to the
newest `keep` complete checkpoints. load(): rank 0 picks a complete checkpoint and shares
its manifest; each rank downloads only the shard files its part of the state needs (DCP's
load plan says which) and DCP reshards into the given state, so a checkpoint written by 4
ranks loads on 2 or 1 (dp shrinks after a node is lost). The layout is owned by layout.py.

Collective methods (save, load) must be called by every rank of `group`; the others are
plain reads any rank may call. Nothing here reads a global process group: `group` is passed
in (None = the default group when one is initialised, else a single process).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from longvila_contract import checkpoint as L
from longvila_contract.layout import ParallelLayout
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ..parallel import comm
from .s3 import Storage, StorageError, file_digest, open_storage

log = logging.getLogger(__name__)


class CheckpointNotFoundError(RuntimeError):
    """No complete checkpoint matches the request (step, 'latest' or 'final')."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    step: int
    manifest: L.Manifest
    rank_state: Any  # this rank's own state as saved (None if the writer had no such rank)


class _FetchingReader(FileSystemReader):
    """DCP's file reader that first downloads the shard files this rank's load plan reads."""

    def __init__(self, path: Path, fetch: Callable[[list[str]], None]) -> None:
        super().__init__(path)
        self._fetch = fetch

    def read_data(self, plan: Any, planner: Any) -> Any:
        needed = {self.storage_data[item.storage_index].relative_path for item in plan.items}
        self._fetch(sorted(needed))
        return super().read_data(plan, planner)


class CheckpointStore:
    def __init__(
        self,
        storage: Storage,
        staging: Path,
        keep: int = 3,
        group: dist.ProcessGroup | None = None,
        layout: ParallelLayout | None = None,
        threads: int = 4,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be ≥ 1, got {keep}")
        self.storage, self.staging, self.keep = storage, Path(staging), keep
        self.group, self.layout, self.threads = group, layout, threads

    @staticmethod
    def from_uri(uri: str, staging: Path, **kwargs: Any) -> CheckpointStore:
        """Store for s3://… (config from the environment) or file:///…; kwargs as for __init__."""
        return CheckpointStore(open_storage(uri), staging, **kwargs)

    # ---- process-group helpers (no group initialised = one process)
    def _rank_world(self) -> tuple[int, int]:
        if not dist.is_initialized():
            return 0, 1
        return dist.get_rank(self.group), dist.get_world_size(self.group)

    def _gather(self, obj: Any) -> list[Any]:
        if not dist.is_initialized():
            return [obj]
        return comm.all_gather_object(obj, self.group)

    def _from_rank0(self, obj: Any) -> Any:
        if not dist.is_initialized():
            return obj
        return comm.broadcast_object(obj, self.group, src=0)

    def _check_all(self, error: str | None) -> None:
        """Raises on every rank if any rank failed, so nobody waits in a later collective."""
        errors = [e for e in self._gather(error) if e]
        if errors:
            raise StorageError("; ".join(errors))

    # ---- reads (any rank)
    def steps(self) -> dict[int, dict[str, int]]:
        return L.group_by_step(self.storage.listing("").items())

    def manifest(self, step: int, files: dict[str, int] | None = None) -> L.Manifest:
        """The step's manifest, checked against the stored files; CheckpointNotFoundError if incomplete."""
        if files is None:
            root = L.step_dir(step) + "/"
            files = {k[len(root) :]: v for k, v in self.storage.listing(root).items()}
        try:
            return L.check_step(step, files, self.storage.get_bytes)
        except L.IncompleteCheckpoint as err:
            raise CheckpointNotFoundError(f"{self.storage.describe(L.step_dir(step))}: {err}") from None

    def complete_steps(self) -> list[int]:
        """Steps whose manifest matches their files (the contract's one idea of complete)."""
        return L.read_checkpoints(self.storage.listing(""), self.storage.get_bytes).complete_steps()

    def latest_complete(self) -> int | None:
        done = self.complete_steps()
        return done[-1] if done else None

    def final_step(self) -> int | None:
        if L.FINAL not in self.storage.listing(L.FINAL):
            return None
        return L.parse_final(self.storage.get_bytes(L.FINAL))

    def mark_final(self, step: int) -> None:
        """Commits `step` as the stage's result (the next stage's init); call on one rank."""
        self.manifest(step)  # only a complete checkpoint can be final
        self.storage.put_bytes(L.FINAL, L.final_json(step).encode())

    # ---- save (collective)
    def save(
        self, step: int, state: dict[str, Any], rank_state: Any = None, meta: dict[str, Any] | None = None
    ) -> L.Manifest:
        rank, _ = self._rank_world()
        sdir = L.step_dir(step)
        local = self.staging / f"save-rank{rank}" / sdir
        shutil.rmtree(local, ignore_errors=True)
        (local / L.DCP_DIR).mkdir(parents=True)
        try:
            return self._save(step, state, rank_state, meta, local)
        finally:
            shutil.rmtree(local, ignore_errors=True)

    def _save(
        self, step: int, state: dict[str, Any], rank_state: Any, meta: dict[str, Any] | None, local: Path
    ) -> L.Manifest:
        rank, world = self._rank_world()
        sdir = L.step_dir(step)
        try:
            dcp_save(
                state,
                storage_writer=FileSystemWriter(local / L.DCP_DIR, sync_files=False),
                process_group=self.group,
                no_dist=not dist.is_initialized(),
            )
            if rank_state is not None:
                (local / L.RANK_DIR).mkdir()
                torch.save(rank_state, local / L.rank_file(rank))
            entries, error = self._upload(local, sdir), None
        except Exception as e:
            entries, error = [], f"rank {rank}: {type(e).__name__}: {e}"
        self._check_all(error)
        everything = [e for part in self._gather(entries) for e in part]
        manifest = L.Manifest(
            step=step,
            world_size=world,
            layout=self._layout_dict(world),
            files=tuple(sorted(everything, key=lambda f: f.path)),
            meta=dict(meta or {}),
        )
        status = None
        if rank == 0:
            try:  # the manifest goes up only after every rank's files are in place
                self.storage.put_bytes(L.manifest_key(step), manifest.to_json().encode())
            except Exception as e:
                status = f"rank 0: {type(e).__name__}: {e}"
            else:
                try:  # committed; a failed prune only leaves old checkpoints for the next save
                    self.prune(protect={step})
                except Exception as e:
                    log.warning("pruning old checkpoints failed (kept for the next save): %s", e)
        status = self._from_rank0(status)
        if status:
            raise StorageError(f"checkpoint {sdir} not committed: {status}")
        return manifest

    def _layout_dict(self, world: int) -> dict[str, int]:
        lay = self.layout or ParallelLayout(world)
        return {"world": lay.world, "ulysses": lay.ulysses, "ring": lay.ring, "dp": lay.dp}

    def _upload(self, local: Path, sdir: str) -> list[L.FileEntry]:
        files = sorted(p for p in local.rglob("*") if p.is_file())

        def one(p: Path) -> L.FileEntry:
            rel = p.relative_to(local).as_posix()
            size, digest = self.storage.put_file(f"{sdir}/{rel}", p)
            return L.FileEntry(rel, size, digest)

        with ThreadPoolExecutor(self.threads) as pool:
            return list(pool.map(one, files))

    def prune(self, protect: set[int] | None = None) -> list[int]:
        """Deletes what layout.prune_plan says; manifests first, so a half-deleted step is incomplete."""
        steps = self.steps()
        final = self.final_step()
        keepers = set(protect or ()) | ({final} if final is not None else set())
        doomed = L.prune_plan({s: L.MANIFEST in f for s, f in steps.items()}, self.keep, keepers)
        if doomed:
            self.storage.delete([L.manifest_key(s) for s in doomed if L.MANIFEST in steps[s]])
            self.storage.delete([f"{L.step_dir(s)}/{k}" for s in doomed for k in steps[s] if k != L.MANIFEST])
        return doomed

    # ---- load (collective)
    def load(self, state: dict[str, Any], step: int | str = "latest") -> LoadedCheckpoint:
        """Loads a complete checkpoint into `state` in place, on any world size.

        step: an int, "latest" (newest complete) or "final" (the committed one)."""
        rank, _ = self._rank_world()
        found: tuple[int, str] | str
        if rank == 0:
            try:
                s = self._resolve(step)
                found = (s, self.manifest(s).to_json())
            except Exception as e:
                found = f"{type(e).__name__}: {e}"
        else:
            found = ""
        found = self._from_rank0(found)
        if isinstance(found, str):
            raise CheckpointNotFoundError(f"cannot load {step!r} from {self.storage.describe()}: {found}")
        s, text = found
        manifest = L.Manifest.from_json(text)
        sizes = {f.path: f for f in manifest.files}
        sdir = L.step_dir(s)
        local = self.staging / f"load-rank{rank}" / sdir
        shutil.rmtree(local, ignore_errors=True)

        def fetch(paths: list[str]) -> None:
            def one(rel: str) -> None:
                dest = local / rel
                self.storage.get_file(f"{sdir}/{rel}", dest)
                if file_digest(dest) != (sizes[rel].size, sizes[rel].sha256):
                    raise StorageError(f"{sdir}/{rel}: size or sha256 differs from the manifest")

            with ThreadPoolExecutor(self.threads) as pool:
                list(pool.map(one, [p for p in paths if not (local / p).exists()]))

        try:
            fetch([L.DCP_METADATA])
            error = None
        except Exception as e:
            error = f"rank {rank}: {type(e).__name__}: {e}"
        self._check_all(error)
        try:
            reader = _FetchingReader(
                local / L.DCP_DIR, lambda names: fetch([f"{L.DCP_DIR}/{n}" for n in names])
            )
            single = not dist.is_initialized()
            dcp_load(state, storage_reader=reader, process_group=self.group, no_dist=single)
            rank_state = None
            if L.rank_file(rank) in sizes:
                fetch([L.rank_file(rank)])
                # Our own file from our own bucket (RNG states include numpy arrays).
                rank_state = torch.load(local / L.rank_file(rank), weights_only=False)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        return LoadedCheckpoint(s, manifest, rank_state)

    def _resolve(self, step: int | str) -> int:
        if isinstance(step, int):
            return step
        if step == "latest":
            latest = self.latest_complete()
            if latest is None:
                raise CheckpointNotFoundError("no complete checkpoint")
            return latest
        if step == "final":
            final = self.final_step()
            if final is None:
                raise CheckpointNotFoundError(f"no {L.FINAL} (the stage did not commit a checkpoint)")
            return final
        raise ValueError(f"step must be an int, 'latest' or 'final', got {step!r}")
