"""Where the model's weights come from: a tiny random preset, HF directories, or a checkpoint.

`model.llm` / `model.vision_tower` name HF-layout directories: local (`/dir`, `file:///dir`)
or `s3://bucket/prefix`, fetched once into the cache dir (fetch.py). Nothing is ever
downloaded from a hub. A prefix or directory without config.json fails with one line naming
the field. The projector is new in stage 1 and seeded with `train.seed`, so every rank
builds the same initial weights (FSDP shards each rank's own copy).

`load_weights(model, source)` puts a stage's checkpoint into an unsharded model (the NIAH
eval's `--weights`).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from longvila_contract.checkpoint import ModelMeta
from longvila_contract.config import LoraConfig, TrainerConfig
from longvila_contract.uri import URIError, local_path, parse_uri
from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from ..checkpoint.s3 import open_storage
from ..checkpoint.store import CheckpointNotFoundError, CheckpointStore
from ..fetch import local_copy
from ..hf_attention import register_usp_attention
from .longvila import LongVILA, build_longvila
from .lora import apply_lora, merge_lora
from .materialize import parameters_on_meta
from .presets import PRESETS
from .projector import Projector
from .vision import VisionTower


class WeightsError(ValueError):
    """Weights that are missing or cannot be used; the message names the config field."""


def model_config(field: str, uri: str) -> dict[str, Any]:
    """Before any process group: the config.json of an HF directory or S3 prefix (only that
    file is read; the weights are copied later, once the ranks of a node share a cache)."""
    try:
        u = parse_uri("file://" + uri if uri.startswith("/") else uri, field)
    except URIError as err:
        raise WeightsError(str(err)) from None
    if not u.is_s3:
        text = (weights_dir(field, uri) / "config.json").read_text()
    elif "config.json" not in open_storage(u).listing("config.json"):
        expected = "an HF directory is expected"
        raise WeightsError(f"{field}={uri!r}: no config.json under that S3 prefix ({expected})")
    else:
        text = open_storage(u).get_bytes("config.json").decode()
    try:
        tree = json.loads(text)
    except ValueError as err:
        raise WeightsError(f"{field}={uri!r}: config.json is not JSON ({err})") from None
    if not isinstance(tree, dict):
        raise WeightsError(f"{field}={uri!r}: config.json is not a JSON object")
    return tree


def weights_dir(field: str, uri: str, cache: Path | None = None) -> Path:
    """The local HF directory of `uri`; an s3:// prefix is first copied under `cache` (its
    config.json was read by `model_config` before any process group; the copy is checked
    here like any local directory, without listing the prefix again)."""
    try:
        path = local_path(uri, None if cache is None else (lambda u: local_copy(u, cache)), field)
    except URIError as err:
        raise WeightsError(f"{err} (s3:// weights are fetched into the cache directory)") from None
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"{field}={uri!r}: no config.json in {path} (weights are never downloaded; "
            "give a local HF directory or an s3:// prefix)"
        )
    return path


@dataclass(frozen=True)
class BuiltModel:
    """The model as built, and where its parameters' values come from."""

    model: LongVILA  # real (a preset) or with parameters on meta (from weights directories)
    files: dict[str, Path]  # submodule prefix → HF safetensors directory (materialize reads them)


def build_model(
    cfg: TrainerConfig, media_token_id: int, cache: Path | None = None, init: ModelMeta | None = None
) -> BuiltModel:
    """Random tiny weights (`model.preset`, seeded by train.seed, real on the CPU), or the
    weights directories' architecture on the meta device: its values are read later, shard
    by shard, by materialize.py (after parallelize), never whole on a rank. The vision
    feature layer and the projector's token order are the init checkpoint's (`init`)."""
    rope: dict[str, Any] = {"rope_theta": cfg.train.rope_theta} if cfg.train.rope_theta else {}
    select, order = (init.select_layer, init.token_order) if init else (-2, "row")
    if cfg.model.preset:
        if cfg.model.preset not in PRESETS:
            raise WeightsError(f"model.preset={cfg.model.preset!r}: unknown; available: {', '.join(PRESETS)}")
        preset = PRESETS[cfg.model.preset]
        preset = dataclasses.replace(
            preset, llm={**preset.llm, **rope}, select_layer=select, token_order=order
        )
        return BuiltModel(build_longvila(preset, seed=cfg.train.seed), {})
    llm_dir = weights_dir("model.llm", cfg.model.llm, cache)
    tower_dir = weights_dir("model.vision_tower", cfg.model.vision_tower, cache)
    config = Qwen2Config.from_pretrained(llm_dir, local_files_only=True)
    if cfg.train.rope_theta:  # transformers 5 keeps the base in rope_parameters, not a kwarg
        config.rope_parameters = {**(config.rope_parameters or {}), "rope_theta": cfg.train.rope_theta}
    tower_config = SiglipVisionConfig.from_pretrained(tower_dir, local_files_only=True)
    tower_config.vision_use_head = False  # VILA reads patch features; the head's tensors stay unread
    for directory, field in ((llm_dir, "model.llm"), (tower_dir, "model.vision_tower")):
        if not any(directory.glob("*.safetensors")):
            raise WeightsError(
                f"{field}: no *.safetensors in {directory} (convert .bin weights to safetensors)"
            )
    model = build_on_meta(config, tower_config, media_token_id, cfg.train.seed, select, order)
    return BuiltModel(model, {"llm": llm_dir, "vision.model": tower_dir})


def build_on_meta(
    llm_config: Qwen2Config, tower_config: SiglipVisionConfig, media_token_id: int, seed: int,
    select_layer: int = -2, token_order: str = "row",
) -> LongVILA:  # fmt: skip
    """The architecture with the HF parts' parameters on meta (buffers real) and the projector,
    which no file holds, drawn for real from `seed` (the same on every rank)."""
    impl = register_usp_attention()
    with parameters_on_meta():
        llm = Qwen2ForCausalLM(llm_config)
        tower = VisionTower(SiglipVisionModel(tower_config), select_layer)
    llm.set_attn_implementation(impl)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # stage 1 trains it; the same on every rank
        projector = Projector(tower.hidden_size, int(llm.config.hidden_size), token_order=token_order)
    return LongVILA(tower, projector, llm, media_token_id)


def load_weights(model: LongVILA, source: str, staging: Path | None = None) -> int:
    """A stage's weights (s3:// or file:// checkpoint URI) into an unsharded model, in place.

    Loads the step `final.json` names, else the newest complete checkpoint; an intermediate
    checkpoint of a LoRA stage (manifest meta `lora`) is loaded with its adapters, which are
    then merged. Collective when a process group is initialised. Returns the step loaded.
    """
    with tempfile.TemporaryDirectory(prefix="longvila-weights-") as tmp:
        store = CheckpointStore.from_uri(source, staging=staging or Path(tmp))
        step = weights_step(store, source)
        lora = store.manifest(step).meta.get("lora")
        if lora:
            adapters = LoraConfig(
                True, int(lora["rank"]), float(lora["alpha"]), targets=tuple(lora["targets"])
            )
            apply_lora(model.llm, adapters, seed=0)
        state = {"model": get_model_state_dict(model)}
        store.load(state, step=step)
        set_model_state_dict(model, state["model"])
        if lora:
            merge_lora(model.llm)
    return step


def weights_step(store: CheckpointStore, source: str) -> int:
    """The step load_weights reads: the committed final one, else the newest complete one."""
    step = store.final_step()
    step = store.latest_complete() if step is None else step
    if step is None:
        raise CheckpointNotFoundError(f"weights {source}: no final.json and no complete checkpoint there")
    return step
