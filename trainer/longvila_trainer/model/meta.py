"""What model a checkpoint holds (longvila_contract.checkpoint.ModelMeta), both ways.

Every checkpoint the trainer writes carries the model's configs, the RoPE base it trained
with, the tokenizer's media token and the projector's token order (`meta_of`). A stage
that starts from a checkpoint reads it before building anything (`read_meta`): the RoPE
base is inherited unless the stage sets its own, the projector keeps the token order the
weights were trained with, and the tokenizer must put the media token where the model
expects it. The NIAH eval builds the model from the checkpoint alone (`build_from_meta`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from longvila_contract.checkpoint import MODEL_META, ManifestError, ModelMeta
from longvila_contract.config import TrainerConfig
from longvila_contract.model import rope_theta_of
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from ..checkpoint.store import CheckpointNotFoundError, CheckpointStore
from ..data.tokenizer import MEDIA
from ..hf_attention import register_usp_attention
from .longvila import LongVILA
from .projector import Projector
from .vision import VisionTower

# Config fields that decide the shapes of the weights: a checkpoint loads only into a model
# that agrees on all of them.
SHAPE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "vocab_size")  # fmt: skip


RELEASED_VILA = "mm_projector/config.json"  # what marks NVlabs/VILA's released layout (model/vila.py)


class MetaError(ValueError):
    """A checkpoint's model does not fit the run; the message names the config field."""


def meta_of(model: LongVILA, projector: str = "mlp_downsample") -> ModelMeta:
    """The meta of a (not yet parallelized) model, for every checkpoint it writes. The
    vision config keeps the full layer count: the tower drops the layers after
    `select_layer` when it is built, from this config as from the original."""
    llm = model.llm.config.to_dict()
    return ModelMeta(
        llm=llm, vision=model.vision.model.config.to_dict(), rope_theta=rope_theta_of(llm), media_token=MEDIA,
        media_token_id=model.media_token_id, select_layer=model.vision.select_layer, projector=projector,
        token_order=model.projector.token_order,
    )  # fmt: skip


def checkpoint_meta_entry(meta: ModelMeta) -> dict[str, Any]:
    return {MODEL_META: meta.to_dict()}


def read_meta(uri: str, field: str, staging: Path, step: int | str = "final") -> ModelMeta | None:
    """The model meta of a checkpoint URI's final (or given) step; None for a checkpoint
    written without one. Reads the manifest only."""
    store = CheckpointStore.from_uri(uri, staging=staging)
    at = store.final_step() if step == "final" else step
    if at is None:
        if RELEASED_VILA in store.storage.listing(RELEASED_VILA):  # the commonest slip: not imported yet
            raise CheckpointNotFoundError(
                f"{field}={uri}: a VILA checkpoint as released (config.json, llm/, mm_projector/), not one "
                f"of ours; import it once with `longvila-import {uri} DST` and name DST here"
            )
        raise CheckpointNotFoundError(f"{field}={uri}: no final.json (the stage did not commit a checkpoint)")
    try:
        return ModelMeta.from_meta(store.manifest(int(at)).meta, f"{field}={uri}")
    except ManifestError as err:
        raise MetaError(str(err)) from None


def inherit(cfg: TrainerConfig, meta: ModelMeta | None) -> TrainerConfig:
    """The run's config with the init checkpoint's RoPE base when the stage sets none: weights
    keep the base they were trained with (after context extension, LongVILA §3.4)."""
    if meta is None or cfg.train.rope_theta is not None:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, rope_theta=meta.rope_theta))


def check_shapes(meta: ModelMeta, llm: Mapping[str, Any], field: str) -> None:
    """Before any weights are loaded: the checkpoint's weights fit the model about to be built."""
    for key in SHAPE_FIELDS:
        if key in meta.llm and meta.llm.get(key) != llm.get(key):
            raise MetaError(
                f"{field}: the checkpoint's LLM has {key} {meta.llm.get(key)}, the model being built "
                f"has {llm.get(key)} (model.llm / model.preset must be the checkpoint's architecture)"
            )


def check_media(meta: ModelMeta, media_token_id: int, field: str) -> None:
    """The tokenizer puts the media placeholder where the checkpoint's model expects it."""
    if meta.media_token_id != media_token_id:
        raise MetaError(
            f"model.tokenizer: puts {meta.media_token} at id {media_token_id}, the checkpoint at "
            f"{field} was trained with id {meta.media_token_id}; use the checkpoint's tokenizer"
        )


def build_from_meta(meta: ModelMeta, seed: int = 0, attn_implementation: str | None = None) -> LongVILA:
    """The checkpoint's model with random weights of its shapes (load the weights next)."""
    if attn_implementation is None:
        attn_implementation = register_usp_attention()
    vision_cfg = meta.vision.get("vision_config", meta.vision)  # a full SigLIP config nests it
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower_cfg = SiglipVisionConfig(**{**vision_cfg, "vision_use_head": False})  # patch features only
        tower = VisionTower(SiglipVisionModel(tower_cfg), meta.select_layer)
        llm = Qwen2ForCausalLM(Qwen2Config(**meta.llm))
        projector = Projector(tower.hidden_size, int(llm.config.hidden_size), token_order=meta.token_order)
    llm.set_attn_implementation(attn_implementation)
    return LongVILA(tower, projector, llm, meta.media_token_id)
