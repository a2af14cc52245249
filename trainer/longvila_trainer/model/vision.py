"""The vision tower: a transformers SiglipVisionModel read at VILA's feature layer.

VILA takes the SigLIP hidden state of the second-to-last encoder layer (select layer −2),
before the final layer and the post-layernorm. We drop the layers after the selected one
and the post-layernorm at construction instead of computing and discarding them, so the
tower has no parameter without a gradient (FSDP and the gradient checks want none). The
output is then exactly `hidden_states[select_layer]` of the full model.

Frames of any size whose sides are multiples of the patch size are accepted; position
embeddings are interpolated when the grid differs from the pre-training grid, so the token
count per frame depends on the frame and is read from the output, never assumed.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from transformers import SiglipVisionModel


class VisionTower(nn.Module):
    def __init__(self, model: SiglipVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        if getattr(model.config, "vision_use_head", False):
            raise ValueError("build the SigLIP tower with vision_use_head=False (VILA uses patch features)")
        layers = _layers(model)
        n = len(layers)
        # hidden_states has n + 1 entries (embeddings, then each layer); keep the layers that
        # produce entry `select_layer`.
        keep = select_layer + n + 1 if select_layer < 0 else select_layer
        if not 1 <= keep <= n:
            raise ValueError(f"select_layer {select_layer} outside the {n}-layer encoder's layers")
        _encoder(model).layers = layers[:keep]
        _set_post_layernorm(model, nn.Identity())
        self.model = model
        self.select_layer = select_layer
        patch = model.config.patch_size
        if not isinstance(patch, int):
            if len(set(patch)) != 1:
                raise ValueError(f"only square patches are supported, got {patch}")
            patch = int(patch[0])
        self.patch_size = patch
        self.hidden_size = int(model.config.hidden_size)
        self.image_size = int(model.config.image_size)  # type: ignore[arg-type]  # pre-training side

    @property
    def dtype(self) -> torch.dtype:
        """The dtype frames enter in: the patch embedding's (bf16 inside an FSDP2 mixed-precision
        forward, where the parameters are the all-gathered compute copies)."""
        inner = getattr(self.model, "vision_model", self.model)
        weight: torch.Tensor = inner.embeddings.patch_embedding.weight
        return weight.dtype

    def grid(self, frames: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of frames [B, 3, H, W]."""
        _, _, height, width = frames.shape
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"frame size {height}×{width} is not a multiple of the patch size {p}")
        return height // p, width // p

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames [B, 3, H, W] of one size → patch features [B, h·w, C], row-major over the grid."""
        h, w = self.grid(frames)
        out = self.model(pixel_values=frames, interpolate_pos_encoding=True)
        feats: torch.Tensor = out.last_hidden_state  # [B, h·w, C]
        if feats.shape[1] != h * w:
            raise RuntimeError(f"vision tower returned {feats.shape[1]} patches for a {h}×{w} grid")
        return feats


def _encoder(model: SiglipVisionModel) -> nn.Module:
    # transformers 5 puts the encoder on the vision model itself; 4.x wrapped it in `vision_model`.
    inner = getattr(model, "vision_model", model)
    return cast(nn.Module, inner.encoder)


def _layers(model: SiglipVisionModel) -> nn.ModuleList:
    return cast(nn.ModuleList, _encoder(model).layers)


def _set_post_layernorm(model: SiglipVisionModel, module: nn.Module) -> None:
    inner = getattr(model, "vision_model", model)
    inner.post_layernorm = module
