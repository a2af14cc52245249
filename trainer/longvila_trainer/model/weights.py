"""The model a config asks for: a tiny random preset, or real weights from local HF directories.

Nothing is ever downloaded from a hub: `model.llm` / `model.vision_tower` must name local
directories (`/dir` or `file:///dir`) holding config.json and the weights, or the run fails
with one line naming the field. s3:// weight prefixes are not supported yet (they need the
same fetch-to-local-dir step the data path uses).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from transformers import Qwen2ForCausalLM, SiglipVisionModel

from ..config import TrainerConfig
from ..hf_attention import register_usp_attention
from .longvila import LongVILA, build_longvila
from .presets import PRESETS
from .projector import Projector
from .vision import VisionTower


class WeightsError(ValueError):
    """Weights that are missing or cannot be used; the message names the config field."""


def weights_dir(field: str, uri: str) -> Path:
    if uri.startswith("s3://"):
        raise WeightsError(f"{field}={uri!r}: s3:// weights are not supported yet; copy them to a local dir")
    path = Path(uri.removeprefix("file://"))
    if not (path / "config.json").is_file():
        raise WeightsError(
            f"{field}={uri!r}: no config.json in {path} (weights are never downloaded; "
            "give a local HF directory)"
        )
    return path


def build_model(cfg: TrainerConfig, media_token_id: int) -> LongVILA:
    """Random tiny weights (`model.preset`, seeded by train.seed) or the weights directories."""
    rope: dict[str, Any] = {"rope_theta": cfg.train.rope_theta} if cfg.train.rope_theta else {}
    if cfg.model.preset:
        if cfg.model.preset not in PRESETS:
            raise WeightsError(f"model.preset={cfg.model.preset!r}: unknown; available: {', '.join(PRESETS)}")
        preset = PRESETS[cfg.model.preset]
        preset = dataclasses.replace(preset, llm={**preset.llm, **rope})
        return build_longvila(preset, seed=cfg.train.seed)
    llm_dir = weights_dir("model.llm", cfg.model.llm)
    tower_dir = weights_dir("model.vision_tower", cfg.model.vision_tower)
    impl = register_usp_attention()
    llm = Qwen2ForCausalLM.from_pretrained(llm_dir, local_files_only=True, attn_implementation=impl, **rope)
    siglip = SiglipVisionModel.from_pretrained(tower_dir, local_files_only=True)
    tower = VisionTower(siglip)
    projector = Projector(tower.hidden_size, int(llm.config.hidden_size))  # stage 1 trains it
    return LongVILA(tower, projector, llm, media_token_id)
