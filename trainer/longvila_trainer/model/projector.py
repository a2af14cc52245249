"""The multimodal projector: 2×2 spatial downsample, then a 2-layer MLP (VILA 1.5 `mlp_downsample`).

Each 2×2 block of patch features is concatenated into one token of 4·C channels, then
LayerNorm(4C) → Linear(4C, D) → GELU → Linear(D, D) maps it into the LLM's hidden size D.
An odd grid side is zero-padded to even first, as VILA does: a 384 px SigLIP frame has a
27×27 grid, padded to 28×28, giving 14×14 = 196 tokens per frame.

Token order. Inside a merged token the channels are the block's patches in row order
(top-left, top-right, bottom-left, bottom-right), in every VILA version. The order of the
merged tokens is not: VILA's `DownSampleBlock.flat_square` as the VILA 1.5 / LongVILA
models were trained with it (NVlabs/VILA before the NVILA release) ends on a permute that
leaves them column-pair-major (`"column"`: for each pair of columns, the row pairs top to
bottom), while `mlp_downsample_2x2_fix` and the current VILA code add one more permute
and give row-major order (`"row"`). A trained model expects the order it was trained with,
so the projector carries it (and checkpoints record it, model/meta.py); new models use "row".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TOKEN_ORDERS = ("row", "column")


def downsample_2x2(feats: torch.Tensor, grid: tuple[int, int], order: str = "row") -> torch.Tensor:
    """[B, h·w, C] row-major patch features → [B, ⌈h/2⌉·⌈w/2⌉, 4C] in `order` over the new grid."""
    b, n, c = feats.shape
    h, w = grid
    if n != h * w:
        raise ValueError(f"{n} patches do not fill a {h}×{w} grid")
    if order not in TOKEN_ORDERS:
        raise ValueError(f"token order {order!r} is not one of {', '.join(TOKEN_ORDERS)}")
    x = feats.view(b, h, w, c)
    x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))  # [B, H2·2, W2·2, C], zero rows/cols at the far edge
    h2, w2 = x.shape[1] // 2, x.shape[2] // 2
    x = x.view(b, h2, 2, w2, 2, c)  # [B, h2, dy, w2, dx, C]
    # row: [B, h2, w2, dy, dx, C]; column: [B, w2, h2, dy, dx, C] (VILA 1.5's flat_square)
    x = x.permute(0, 1, 3, 2, 4, 5) if order == "row" else x.permute(0, 3, 1, 2, 4, 5)
    return x.reshape(b, h2 * w2, 4 * c)


def tokens_after_downsample(grid: tuple[int, int]) -> int:
    h, w = grid
    return ((h + 1) // 2) * ((w + 1) // 2)


class Projector(nn.Module):
    def __init__(
        self, vision_hidden: int, llm_hidden: int, eps: float = 1e-5, token_order: str = "row"
    ) -> None:
        super().__init__()
        if token_order not in TOKEN_ORDERS:
            raise ValueError(f"token order {token_order!r} is not one of {', '.join(TOKEN_ORDERS)}")
        self.token_order = token_order
        self.norm = nn.LayerNorm(4 * vision_hidden, eps=eps)
        self.fc1 = nn.Linear(4 * vision_hidden, llm_hidden)
        self.fc2 = nn.Linear(llm_hidden, llm_hidden)

    def forward(self, feats: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Patch features [B, h·w, C] → LLM tokens [B, ⌈h/2⌉·⌈w/2⌉, D]."""
        x = downsample_2x2(feats, grid, self.token_order)
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(self.norm(x))))
        return out
