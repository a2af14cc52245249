"""The pure pieces of the training loop: LR schedule, accumulation on a smaller world, trainable sets."""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
from longvila_contract.config import LoraConfig, TrainConfig
from longvila_trainer.loop import accumulation, lr_at, set_trainable
from longvila_trainer.model.longvila import build_longvila
from longvila_trainer.model.lora import LoraLinear, apply_lora
from longvila_trainer.model.presets import TINY


def test_warmup_then_constant() -> None:
    t = TrainConfig(lr=1.0, schedule="constant_with_warmup", warmup_steps=4)
    assert [lr_at(s, t, 10) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_with_warmup_ratio() -> None:
    t = TrainConfig(lr=2.0, schedule="cosine", warmup_ratio=0.1)  # 1 warmup step of 10
    lrs = [lr_at(s, t, 10) for s in range(10)]
    assert lrs[0] == 2.0 and lrs[1] == 2.0  # end of warmup, start of the cosine
    assert all(a > b for a, b in itertools.pairwise(lrs[1:]))
    assert lrs[-1] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 8 / 9)))


def test_accumulation_keeps_the_global_batch() -> None:
    assert accumulation(4, 2) == 2 and accumulation(4, 4) == 1 and accumulation(4, 1) == 4
    with pytest.raises(ValueError, match="cannot split evenly"):
        accumulation(4, 3)


@pytest.mark.parametrize(
    ("trainable", "trained", "frozen"),
    [
        ("projector", {"projector"}, {"vision", "llm"}),
        ("projector+llm", {"projector", "llm"}, {"vision"}),
        ("llm", {"llm"}, {"vision", "projector"}),
        ("all", {"vision", "projector", "llm"}, set()),
    ],
)
def test_trainable_sets(trainable: str, trained: set[str], frozen: set[str]) -> None:
    model = build_longvila(TINY, seed=0)
    set_trainable(model, TrainConfig(trainable=trainable))
    by_part: dict[str, set[bool]] = {}
    for name, p in model.named_parameters():
        by_part.setdefault(name.split(".")[0], set()).add(p.requires_grad)
    assert {k for k, v in by_part.items() if v == {True}} == trained
    assert {k for k, v in by_part.items() if v == {False}} == frozen


def test_lora_starts_at_the_base_model_and_trains_only_adapters_and_saved_modules() -> None:
    model = build_longvila(TINY, seed=0)
    x = torch.randn(3, 32)
    q = model.llm.model.layers[0].self_attn.q_proj
    before = q(x)
    cfg = LoraConfig(enabled=True, rank=4, alpha=8.0)
    assert apply_lora(model.llm, cfg, seed=0) == 4 * len(model.llm.model.layers)
    wrapped = model.llm.model.layers[0].self_attn.q_proj
    assert isinstance(wrapped, LoraLinear)
    assert torch.equal(wrapped(x), before)  # B = 0 at init
    set_trainable(model, dataclasses.replace(TrainConfig(trainable="llm"), lora=cfg))
    on = {n for n, p in model.named_parameters() if p.requires_grad}
    assert on and all("lora_" in n or "embed_tokens" in n or "norm" in n for n in on)
    assert any("lora_B" in n for n in on) and any("embed_tokens" in n for n in on)
    assert not any(n.startswith(("vision", "projector")) for n in on)
    assert "llm.model.layers.0.self_attn.q_proj.base.weight" not in on
