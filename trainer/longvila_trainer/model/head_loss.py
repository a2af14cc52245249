"""The LM head and the cross-entropy, fused and computed a chunk of rows at a time.

At long context the logits are the largest tensor of a step: a shard of 32k rows against
Qwen2's 152,064-token vocabulary is 10 GB in bf16 and 20 GB in the fp32 the loss is taken
in, on every rank, on top of the gradient of both. `head_ce_sum` never holds more than one
chunk of them: the forward keeps only the summed loss, the backward recomputes each
chunk's logits from the saved hidden rows and head weight and turns them into the
gradients of both (the approach of Liger-Kernel's fused linear cross-entropy and of
torchtune's chunked loss, written here with torch ops only).

Shapes: hidden [n, D] (the rows with a target), weight [V, D], targets [n]; the loss is
the fp32 SUM over rows (the divisor is the step's global target count, model/longvila.py).
With n = 0 the result is an exact 0 that still depends on `hidden`, so the backward runs
through this rank's graph and its collectives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOGIT_CHUNK_ELEMENTS = 2**27  # fp32 logits of one chunk: 512 MiB, whatever the vocabulary


def chunk_rows(vocab: int, elements: int = LOGIT_CHUNK_ELEMENTS) -> int:
    """Rows per chunk so one chunk's logits hold about `elements` values."""
    return max(1, elements // max(vocab, 1))


class HeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: Tensor, weight: Tensor, targets: Tensor, rows: int) -> Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], rows):
            logits = F.linear(hidden[start : start + rows], weight).float()  # [c, V]
            total += F.cross_entropy(logits, targets[start : start + rows], reduction="sum")
        ctx.save_for_backward(hidden, weight, targets)
        ctx.rows = rows
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, targets = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)  # [n, D]
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)  # [V, D]
        for start in range(0, hidden.shape[0], ctx.rows):
            h = hidden[start : start + ctx.rows]  # [c, D]
            t = targets[start : start + ctx.rows]  # [c]
            # d(Σ CE)/d logits = softmax − one-hot(target), scaled by the incoming gradient
            d = torch.softmax(F.linear(h, weight).float(), dim=-1)  # [c, V]
            d[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            d = (d * grad).to(hidden.dtype)
            grad_hidden[start : start + ctx.rows] = d @ weight  # [c, D]
            grad_weight += (d.t() @ h).float()  # [V, D]
        return grad_hidden, grad_weight.to(weight.dtype), None, None


def head_ce_sum(hidden: Tensor, weight: Tensor, targets: Tensor, rows: int | None = None) -> Tensor:
    """Σ CE(hidden @ weightᵀ, targets) in fp32, a chunk of `rows` at a time (default: by vocab)."""
    if hidden.shape[0] != targets.shape[0]:
        raise ValueError(f"{hidden.shape[0]} hidden rows for {targets.shape[0]} targets")
    out: Tensor = HeadCrossEntropy.apply(hidden, weight, targets, rows or chunk_rows(weight.shape[0]))
    return out
