"""THE checkpoint layout contract: where each file of a checkpoint lives, the manifest, and
what makes a checkpoint complete.

Pure (no I/O, no torch): readers pass in a listing and a function that reads one key. The
trainer's writer and reader (longvila_trainer.checkpoint.store) and tools such as the demo
(`read_checkpoints`) go through these functions only; tests/unit/test_checkpoint_layout.py
holds both sides. docs/checkpoints.md describes the same layout for people.

    <uri>/step-<NNNNNNNN>/dcp/.metadata           torch.distributed.checkpoint metadata (rank 0)
    <uri>/step-<NNNNNNNN>/dcp/__<rank>_0.distcp   each rank's shard of the global state
    <uri>/step-<NNNNNNNN>/rank/rank-<RRRRR>.pt    each rank's own state (RNG, …), torch.save
    <uri>/step-<NNNNNNNN>/manifest.json           written LAST: every file with size + sha256
    <uri>/final.json                              {"step": N}: the stage's committed checkpoint

A step directory without a valid manifest, or whose files do not match it, is incomplete
and is never loaded (a crash mid-write leaves exactly that).

Every checkpoint says what model its weights belong to: the manifest's `meta.model`
(`ModelMeta`) holds the LLM's and the vision tower's config.json trees, the RoPE base the
weights were trained with, the tokenizer's media token and its id, the vision feature
layer and the projector's type and token order. A stage that starts from a checkpoint
builds that model (the RoPE base included), so nothing of it lives only in a job spec.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "longvila-checkpoint/1"
MANIFEST = "manifest.json"
FINAL = "final.json"
DCP_DIR = "dcp"
DCP_METADATA = f"{DCP_DIR}/.metadata"
RANK_DIR = "rank"
_STEP_DIR = re.compile(r"^step-([0-9]{8})$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MODEL_META = "model"  # the manifest meta key of ModelMeta
TOKEN_ORDERS = ("row", "column")  # the projector's merged-token order (trainer model/projector.py)


class ManifestError(ValueError):
    """A manifest that is not valid JSON of this format; the message says which field."""


class IncompleteCheckpoint(ValueError):
    """A step directory that must not be loaded: no manifest, or files that do not match it."""


def step_dir(step: int) -> str:
    if not isinstance(step, int) or not 0 <= step < 10**8:
        raise ValueError(f"step must be an integer in [0, 1e8), got {step!r}")
    return f"step-{step:08d}"


def parse_step_dir(name: str) -> int | None:
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def manifest_key(step: int) -> str:
    return f"{step_dir(step)}/{MANIFEST}"


def dcp_shard(rank: int) -> str:
    """DCP's FileSystemWriter names each rank's file `__<rank>_0.distcp` (single_file_per_rank)."""
    return f"{DCP_DIR}/__{rank}_0.distcp"


def rank_file(rank: int) -> str:
    return f"{RANK_DIR}/rank-{rank:05d}.pt"


@dataclass(frozen=True)
class FileEntry:
    path: str  # relative to the step directory
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    step: int
    world_size: int
    layout: dict[str, int]  # {"world", "ulysses", "ring", "dp"} of the run that wrote it
    files: tuple[FileEntry, ...]
    meta: dict[str, Any] = field(default_factory=dict)  # stage name, wall time …: informational

    def to_json(self) -> str:
        body = {
            "format": FORMAT,
            "step": self.step,
            "world_size": self.world_size,
            "layout": self.layout,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in self.files],
            "meta": self.meta,
        }
        return json.dumps(body, indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str | bytes) -> Manifest:
        try:
            d = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"manifest is not JSON: {e}") from e
        if not isinstance(d, dict):
            raise ManifestError("manifest must be a JSON object")
        if d.get("format") != FORMAT:
            raise ManifestError(f"manifest format {d.get('format')!r}: expected {FORMAT!r}")
        for name in ("step", "world_size"):
            if not isinstance(d.get(name), int) or d[name] < 0:
                raise ManifestError(f"manifest field {name!r} must be a non-negative integer")
        layout = d.get("layout")
        if not isinstance(layout, dict) or not all(isinstance(v, int) for v in layout.values()):
            raise ManifestError("manifest field 'layout' must be an object of integers")
        files = d.get("files")
        if not isinstance(files, list):
            raise ManifestError("manifest field 'files' must be a list")
        entries = []
        for i, f in enumerate(files):
            ok = (
                isinstance(f, dict)
                and isinstance(f.get("path"), str)
                and isinstance(f.get("size"), int)
                and isinstance(f.get("sha256"), str)
                and _HEX64.match(f["sha256"])
            )
            if not ok:
                raise ManifestError(f"manifest files[{i}] must be {{path: str, size: int, sha256: hex64}}")
            entries.append(FileEntry(f["path"], f["size"], f["sha256"]))
        meta = d.get("meta", {})
        return Manifest(
            d["step"], d["world_size"], layout, tuple(entries), meta if isinstance(meta, dict) else {}
        )

    def problems(self, step: int, listing: Mapping[str, int]) -> list[str]:
        """What makes this manifest unusable for `step`, given the step directory's {path: size}."""
        p = []
        if self.step != step:
            p.append(f"manifest says step {self.step}, found in {step_dir(step)}")
        paths = {f.path for f in self.files}
        if DCP_METADATA not in paths:
            p.append(f"manifest does not list {DCP_METADATA}")
        for r in range(self.world_size):
            if dcp_shard(r) not in paths:
                p.append(f"manifest does not list {dcp_shard(r)}")
        for f in self.files:
            if f.path not in listing:
                p.append(f"{f.path}: listed in the manifest but missing")
            elif listing[f.path] != f.size:
                p.append(f"{f.path}: {listing[f.path]} bytes, the manifest says {f.size}")
        return p


@dataclass(frozen=True)
class ModelMeta:
    """The model a checkpoint's weights belong to (manifest `meta.model`)."""

    llm: dict[str, Any]  # the LLM's config.json (a transformers Qwen2Config as a dict)
    vision: dict[str, Any]  # the vision tower's config.json (a SigLIP vision config)
    rope_theta: float  # the RoPE base the weights were trained with
    media_token: str  # the tokenizer's media placeholder ("<image>")
    media_token_id: int  # its id; the data path puts one per frame into input_ids
    select_layer: int = -2  # SigLIP hidden state the projector reads (VILA's mm_vision_select_layer)
    projector: str = "mlp_downsample"  # VILA's projector type name
    token_order: str = "row"  # merged-token order of the 2×2 downsample: "row" or "column"

    def to_dict(self) -> dict[str, Any]:
        return {
            "llm": self.llm, "vision": self.vision, "rope_theta": self.rope_theta,
            "media_token": self.media_token, "media_token_id": self.media_token_id,
            "select_layer": self.select_layer, "projector": self.projector, "token_order": self.token_order,
        }  # fmt: skip

    @staticmethod
    def from_meta(meta: Mapping[str, Any], where: str = "manifest") -> ModelMeta | None:
        """The `model` entry of a manifest's meta; None when absent; ManifestError naming the field."""
        d = meta.get(MODEL_META)
        if d is None:
            return None
        if not isinstance(d, Mapping):
            raise ManifestError(f"{where}: meta.model must be an object")
        kinds: dict[str, tuple[type, ...]] = {
            "llm": (dict,), "vision": (dict,), "rope_theta": (int, float), "media_token": (str,),
            "media_token_id": (int,), "select_layer": (int,), "projector": (str,), "token_order": (str,),
        }  # fmt: skip
        for key, kind in kinds.items():
            if key not in d or not isinstance(d[key], kind) or isinstance(d[key], bool):
                names = " or ".join(k.__name__ for k in kind)
                raise ManifestError(f"{where}: meta.model.{key} must be a {names}, got {d.get(key)!r}")
        if d["token_order"] not in TOKEN_ORDERS:
            raise ManifestError(f"{where}: meta.model.token_order must be one of {', '.join(TOKEN_ORDERS)}")
        if d["rope_theta"] <= 0:
            raise ManifestError(f"{where}: meta.model.rope_theta must be > 0, got {d['rope_theta']}")
        return ModelMeta(
            dict(d["llm"]), dict(d["vision"]), float(d["rope_theta"]), d["media_token"], d["media_token_id"],
            d["select_layer"], d["projector"], d["token_order"],
        )  # fmt: skip


def group_by_step(keys: Iterable[tuple[str, int]]) -> dict[int, dict[str, int]]:
    """Keys relative to the checkpoint root with sizes → {step: {path in step dir: size}}."""
    out: dict[int, dict[str, int]] = {}
    for key, size in keys:
        head, _, rest = key.partition("/")
        step = parse_step_dir(head)
        if step is not None and rest:
            out.setdefault(step, {})[rest] = size
    return out


def prune_plan(steps: Mapping[int, bool], keep: int, protect: Iterable[int] = ()) -> list[int]:
    """Steps to delete, given {step: complete}: complete ones older than the newest `keep`
    complete ones, and incomplete ones older than the newest complete one (left by a crash;
    a newer incomplete one may be a write in progress). `protect` (the final step) stays."""
    if keep < 1:
        raise ValueError(f"keep must be ≥ 1, got {keep}")
    complete = sorted((s for s, ok in steps.items() if ok), reverse=True)
    if not complete:
        return []
    doomed = set(complete[keep:])
    doomed |= {s for s, ok in steps.items() if not ok and s < complete[0]}
    return sorted(doomed - set(protect))


def final_json(step: int) -> str:
    return json.dumps({"format": FORMAT, "step": step})


def parse_final(text: str | bytes) -> int:
    try:
        d = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{FINAL} is not JSON: {e}") from e
    if not isinstance(d, dict) or d.get("format") != FORMAT or not isinstance(d.get("step"), int):
        raise ManifestError(f"{FINAL} must be {{format: {FORMAT!r}, step: int}}")
    return int(d["step"])


# ---- reading a stage's checkpoints: one idea of "complete" for every reader

Read = Callable[[str], bytes]  # key relative to the stage's checkpoint root → its bytes


def check_step(step: int, files: Mapping[str, int], read: Read) -> Manifest:
    """The step's manifest, checked against the step directory's {path: size}; raises
    IncompleteCheckpoint (or ManifestError for a manifest that is not this format)."""
    if MANIFEST not in files:
        raise IncompleteCheckpoint(f"{step_dir(step)}: no manifest (incomplete)")
    m = Manifest.from_json(read(manifest_key(step)))
    problems = m.problems(step, files)
    if problems:
        raise IncompleteCheckpoint(f"{step_dir(step)} is incomplete: " + "; ".join(problems))
    return m


@dataclass(frozen=True)
class StepSummary:
    step: int
    files: int
    bytes: int
    manifest: Manifest | None  # None when incomplete
    problem: str = ""  # why it is incomplete

    @property
    def complete(self) -> bool:
        return self.manifest is not None


@dataclass(frozen=True)
class StageCheckpoints:
    """Every step directory of one stage's checkpoint root, and its committed final step."""

    steps: tuple[StepSummary, ...]  # by step
    final: int | None

    def complete_steps(self) -> list[int]:
        return [s.step for s in self.steps if s.complete]


def read_checkpoints(listing: Mapping[str, int], read: Read) -> StageCheckpoints:
    """A stage's checkpoints from a listing of its root ({relative key: size}) and `read`."""
    out = []
    for step, files in sorted(group_by_step(listing.items()).items()):
        try:
            m: Manifest | None = check_step(step, files, read)
            problem = ""
        except (IncompleteCheckpoint, ManifestError) as err:
            m, problem = None, str(err)
        out.append(StepSummary(step, len(files), sum(files.values()), m, problem))
    final = parse_final(read(FINAL)) if FINAL in listing else None
    return StageCheckpoints(tuple(out), final)
