"""What the parallel layout and the preflight need to know about a model, read from the
config.json files of its parts (Hugging Face layout). Pure: the caller reads the files.

    llm:    a Qwen2 config (num_attention_heads, num_key_value_heads, rope_theta, …)
    vision: a SigLIP config, either the vision model's own (`siglip_vision_model`) or the
            full SigLIP one, whose vision part is under `vision_config`

The projector merges 2×2 patches (VILA 1.5's mlp_downsample), so a frame of side S with
patch P gives ceil((S // P) / 2)² visual tokens: SigLIP-so400m-patch14-384 → 27 patches a
side → 14² = 196 tokens, LongVILA's figure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class ModelConfigError(ValueError):
    """A config.json that lacks what the layout needs; the message names the file's field."""


def tokens_per_frame(image_size: int, patch_size: int) -> int:
    """Visual tokens per frame after the 2×2 projector (odd grids are padded to even)."""
    side = (image_size // patch_size + 1) // 2
    return side * side


def _field(config: Mapping[str, Any], key: str, where: str, kind: type = int) -> Any:
    value = config.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelConfigError(f"{where}: config.json has no numeric {key!r}")
    return kind(value)


def rope_theta_of(config: Mapping[str, Any]) -> float:
    """RoPE base: `rope_theta` (transformers ≤ 4) or `rope_parameters.rope_theta` (5), else 10000."""
    params = config.get("rope_parameters")
    if isinstance(params, Mapping) and isinstance(params.get("rope_theta"), int | float):
        return float(params["rope_theta"])
    value = config.get("rope_theta")
    return float(value) if isinstance(value, int | float) else 10000.0


@dataclass(frozen=True)
class ModelFacts:
    heads: int  # LLM query heads
    kv_heads: int  # LLM key/value heads (GQA)
    layers: int
    hidden: int
    max_positions: int  # the LLM's trained context (max_position_embeddings)
    rope_theta: float  # the LLM's own RoPE base
    image_size: int  # the vision tower's input side in pixels
    patch_size: int

    @property
    def tokens_per_frame(self) -> int:
        return tokens_per_frame(self.image_size, self.patch_size)

    @staticmethod
    def from_configs(
        llm: Mapping[str, Any], vision: Mapping[str, Any], llm_where: str = "model.llm",
        vision_where: str = "model.vision_tower",
    ) -> ModelFacts:  # fmt: skip
        """Facts from the two config.json trees; raises ModelConfigError naming the field."""
        inner = vision.get("vision_config")
        v = inner if isinstance(inner, Mapping) else vision
        heads = _field(llm, "num_attention_heads", llm_where)
        return ModelFacts(
            heads=heads,
            kv_heads=int(llm.get("num_key_value_heads") or heads),
            layers=_field(llm, "num_hidden_layers", llm_where),
            hidden=_field(llm, "hidden_size", llm_where),
            max_positions=_field(llm, "max_position_embeddings", llm_where),
            rope_theta=rope_theta_of(llm),
            image_size=_field(v, "image_size", vision_where),
            patch_size=_field(v, "patch_size", vision_where),
        )

    def describe(self) -> str:
        return (
            f"{self.heads} query / {self.kv_heads} KV heads, {self.layers} layers, hidden {self.hidden}, "
            f"max positions {self.max_positions}, RoPE base {self.rope_theta:g}; vision {self.image_size} px "
            f"/ patch {self.patch_size} → {self.tokens_per_frame} tokens per frame"
        )
