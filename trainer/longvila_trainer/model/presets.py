"""Model shapes as data: the transformers config fields of each part, plus VILA's glue.

Nothing here downloads anything. A real run loads the same structure from local or S3
weights; tests build these tiny shapes with random weights.
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
