"""Model shapes as data: the transformers config fields of each part, plus VILA's glue.

Nothing here downloads anything. A real run loads the same structure from local or S3
weights; tests build the tiny shape with random weights (`PRESETS`, `model.preset`). The
real-size shapes (`ARCHITECTURES`: LongVILA-7B's Qwen2-7B + SigLIP-so400m, and a 0.5B
LLM with the same tower) are read by the memory model, the GPU check and the loading
benchmark; their configs are those of the published checkpoints (Qwen/Qwen2-7B-Instruct,
Qwen/Qwen2-0.5B, google/siglip-so400m-patch14-384), written out here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelPreset:
    name: str
    vision: dict[str, Any]  # SiglipVisionConfig fields
    llm: dict[str, Any]  # Qwen2Config fields
    select_layer: int = -2  # VILA reads the second-to-last SigLIP layer
    token_order: str = "row"  # the projector's merged-token order (model/projector.py)
    # Id of the one-per-frame media placeholder in input_ids; never embedded, never a target.
    media_token_id: int = field(default=-1)

    def __post_init__(self) -> None:
        vocab = int(self.llm["vocab_size"])
        if not 0 <= self.media_token_id < vocab:
            raise ValueError(f"{self.name}: media_token_id {self.media_token_id} outside vocab of {vocab}")


# Small enough for 8 gloo processes on 2 CPU cores. 4 query / 2 KV heads exercises GQA and
# Ulysses degrees up to 4 (with KV replication at U = 4). Patch 14 as in SigLIP-so400m.
TINY = ModelPreset(
    name="tiny",
    vision={
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 3,
        "num_attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
        "vision_use_head": False,
    },
    llm={
        "vocab_size": 96,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
        "tie_word_embeddings": False,
        "use_cache": False,
        # Larger than the usual 0.02 so attention is far from uniform and a wrong mask shows.
        "initializer_range": 0.1,
    },
    select_layer=-2,
    media_token_id=95,
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (TINY,)}


# SigLIP-so400m at 384 px: 27 × 27 patches of 14 px, padded to 28 × 28 by the projector → 196
# tokens per frame. VILA reads layer −2 of 27, so the tower keeps 26 layers.
SIGLIP_SO400M: dict[str, Any] = {
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}

QWEN2_7B: dict[str, Any] = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "use_cache": False,
}

QWEN2_05B: dict[str, Any] = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "use_cache": False,
}

ARCHITECTURES: dict[str, ModelPreset] = {
    p.name: p
    for p in (
        ModelPreset("qwen2-7b+siglip-so400m", SIGLIP_SO400M, QWEN2_7B, media_token_id=151646),
        ModelPreset("qwen2-0.5b+siglip-so400m", SIGLIP_SO400M, QWEN2_05B, media_token_id=151646),
    )
}
