"""MM-SP attention for stock transformers models, through the public attention registry.

`register_usp_attention()` adds one entry to `transformers.AttentionInterface` (a
class-level registry, so every model sees it); a model built or switched with
`attn_implementation=USP_ATTENTION` then calls `usp_attention_forward` from each of its
attention layers. Nothing is patched and nothing happens at import.

How the SP context reaches the layers (transformers 5.x, Qwen2): extra keyword arguments
of `Qwen2ForCausalLM.forward` travel unchanged through `Qwen2Model.forward`, each decoder
layer and `Qwen2Attention.forward` into the attention function's **kwargs. So the caller
passes `mmsp_context=AttentionContext(...)` to the model's forward.

No 4D mask is built: `create_causal_mask` returns None for an implementation that is not
in `AttentionMaskInterface`, and we do not register one there. Document boundaries,
validity and causality come from the context's TokenLayout instead, for the whole
sequence, not just this rank's rows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface

from .attention.context import AttentionContext
from .attention.usp import usp_attention

USP_ATTENTION = "longvila_usp"
CONTEXT_KWARG = "mmsp_context"


def usp_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The AttentionInterface signature: q [1, H, S, D], k/v [1, H_kv, S, D] → ([1, S, H, D], None).

    S is this rank's shard (B = 1, one packed sequence); RoPE was already applied with the
    global position ids. K/V arrive with their H_kv heads (HF repeats KV inside eager/sdpa,
    not before the interface), so the Ulysses exchange moves H_kv heads, not H.
    """
    ctx = kwargs.get(CONTEXT_KWARG)
    if not isinstance(ctx, AttentionContext):
        raise TypeError(
            f"attention implementation {USP_ATTENTION!r} needs `{CONTEXT_KWARG}=AttentionContext(...)` "
            f"in the model's forward kwargs, got {type(ctx).__name__}"
        )
    if attention_mask is not None:
        raise ValueError("MM-SP takes document boundaries from the TokenLayout; pass attention_mask=None")
    if dropout:
        raise ValueError(f"attention dropout {dropout} is not supported under MM-SP")
    if sliding_window is not None:
        raise ValueError("sliding-window attention is not supported under MM-SP")
    if query.shape[0] != 1:
        raise ValueError(f"MM-SP packs one sequence per step (batch 1), got batch {query.shape[0]}")
    q = query[0].transpose(0, 1)  # [S, H, D]
    k = key[0].transpose(0, 1)  # [S, H_kv, D]
    v = value[0].transpose(0, 1)  # [S, H_kv, D]
    is_causal = kwargs.get("is_causal")
    causal = bool(getattr(module, "is_causal", True) if is_causal is None else is_causal)
    out = usp_attention(q, k, v, ctx, causal=causal, scale=scaling)  # [S, H, D]
    return out.unsqueeze(0), None  # [1, S, H, D], as the layer reshapes it to [1, S, H·D]


def register_usp_attention() -> str:
    """Registers the MM-SP attention with transformers (idempotent); returns its name."""
    AttentionInterface.register(USP_ATTENTION, usp_attention_forward)
    return USP_ATTENTION
