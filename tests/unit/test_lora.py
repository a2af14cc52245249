"""LoRA merge: the merged plain model computes what the adapter model computes, with the plain names."""

from __future__ import annotations

import torch
from longvila_contract.config import LoraConfig
from longvila_trainer.model.lora import LoraLinear, apply_lora, merge_lora, merge_lora_state, plain_names
from longvila_trainer.model.presets import TINY
from transformers import Qwen2Config, Qwen2ForCausalLM

CFG = LoraConfig(enabled=True, rank=4, alpha=8.0)


def tiny_llm(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(Qwen2Config(**TINY.llm, attn_implementation="eager")).eval()


def adapted(seed: int = 0) -> Qwen2ForCausalLM:
    """The tiny LLM with adapters whose B is non-zero (as after training)."""
    llm = tiny_llm(seed)
    assert apply_lora(llm, CFG, seed=1) == 4 * TINY.llm["num_hidden_layers"]
    torch.manual_seed(2)
    for m in llm.modules():
        if isinstance(m, LoraLinear):
            torch.nn.init.normal_(m.lora_B.weight, std=0.1)
    return llm


def logits(llm: Qwen2ForCausalLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = llm(input_ids=ids, use_cache=False).logits
    return out


def test_merged_state_loads_into_the_plain_model_and_computes_the_same() -> None:
    ids = torch.randint(0, 90, (2, 12))
    lora = adapted()
    want = logits(lora, ids)
    sd = lora.state_dict()
    merged = merge_lora_state(sd, CFG.alpha / CFG.rank)
    plain = tiny_llm(seed=5)  # different weights: every one must come from the merged state
    assert set(merged) == set(plain.state_dict())  # plain names, no adapter keys
    assert not any("lora_" in k or ".base." in k for k in merged)
    plain.load_state_dict(merged, strict=True)
    got = logits(plain, ids)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # untouched entries are the same tensors; merged ones are W + (α/r) B A
    key = "model.layers.0.self_attn.q_proj"
    a, b = sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"]
    assert torch.equal(merged[f"{key}.weight"], sd[f"{key}.base.weight"] + (b @ a) * 2.0)
    assert torch.equal(merged[f"{key}.bias"], sd[f"{key}.base.bias"])
    assert merged["model.layers.0.mlp.up_proj.weight"] is sd["model.layers.0.mlp.up_proj.weight"]


def test_fresh_adapters_merge_to_the_base_weights() -> None:
    """B = 0 at init: merging changes nothing."""
    base = tiny_llm().state_dict()
    llm = tiny_llm()
    apply_lora(llm, CFG, seed=1)
    merged = merge_lora_state(llm.state_dict(), CFG.alpha / CFG.rank)
    assert set(merged) == set(base)
    assert all(torch.equal(merged[k], base[k]) for k in base)


def test_merge_in_place() -> None:
    ids = torch.randint(0, 90, (1, 9))
    llm = adapted()
    want = logits(llm, ids)
    assert merge_lora(llm) == 8
    assert not any(isinstance(m, LoraLinear) for m in llm.modules())
    assert set(llm.state_dict()) == set(tiny_llm().state_dict())
    assert torch.allclose(logits(llm, ids), want, atol=1e-5)


def test_a_lora_model_takes_plain_weights_into_its_base_layers() -> None:
    plain = tiny_llm(seed=3).state_dict()
    llm = adapted()
    own = llm.state_dict()
    names = plain_names(own)
    assert set(names) == set(plain)  # every plain weight has a place; adapters are left out
    assert names["model.layers.1.self_attn.v_proj.weight"] == "model.layers.1.self_attn.v_proj.base.weight"
    assert names["model.layers.1.mlp.down_proj.weight"] == "model.layers.1.mlp.down_proj.weight"
    llm.load_state_dict({**own, **{mine: plain[p] for p, mine in names.items()}})
    merged = merge_lora_state(llm.state_dict(), CFG.alpha / CFG.rank)
    assert torch.equal(
        merged["model.layers.1.mlp.down_proj.weight"], plain["model.layers.1.mlp.down_proj.weight"]
    )
