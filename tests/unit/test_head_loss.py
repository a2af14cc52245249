"""The fused, chunked head + cross-entropy equals the plain head + F.cross_entropy (sum), in
value and in the gradients of the hidden rows and the head weight, for any chunk size, and
for zero rows (an exact 0 that still reaches the hidden rows)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from longvila_trainer.model.head_loss import chunk_rows, head_ce_sum


@pytest.mark.parametrize("rows", [1, 3, 7, 64])
def test_chunked_head_loss_equals_the_plain_one(rows: int) -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(13, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(21, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 21, (13,), generator=g)
    want = F.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    dh, dw = torch.autograd.grad(want * 1.7, (hidden, weight))
    got = head_ce_sum(hidden, weight, targets, rows)
    gh, gw = torch.autograd.grad(got * 1.7, (hidden, weight))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh, dh, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gw, dw, rtol=1e-6, atol=1e-6)


def test_no_rows_give_an_exact_zero_in_the_graph() -> None:
    hidden = torch.randn(5, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    loss = head_ce_sum(hidden[:0], weight, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and hidden.grad is not None and not hidden.grad.any()


def test_a_chunk_holds_about_the_budgeted_logits() -> None:
    assert chunk_rows(152_064) == 2**27 // 152_064 == 882
    assert chunk_rows(96) == 2**27 // 96 and chunk_rows(2**28) == 1
