"""Real-size loading on the tiny shape: built on meta, sharded by FSDP2, each rank reading only
its rows from the safetensors files, gives exactly the weights `save_pretrained` wrote, at
world 1 and 2, with and without LoRA; buffers that no file holds (RoPE frequencies, SigLIP
position ids) are the ones a normally built model computes; a missing tensor is one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from longvila_contract.config import from_dict
from longvila_contract.layout import ParallelLayout
from longvila_trainer.build import model_for_run
from longvila_trainer.model.export import export
from longvila_trainer.model.longvila import build_longvila
from longvila_trainer.model.materialize import MissingWeightsError, load_safetensors
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.projector import Projector
from longvila_trainer.parallel.groups import build_groups
from longvila_trainer.parallel.spawn import run_gloo
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

pytestmark = pytest.mark.distributed

SEED = 3  # train.seed: draws the projector (and adapters); the files hold the preset's seed-0 weights


def config(out: Path, lora: bool) -> Any:
    return from_dict(
        {
            "model": {"llm": str(out / "qwen2"), "vision_tower": str(out / "siglip"), "tokenizer": "tiny"},
            "data": {"uri": "synthetic://long-video"},
            "train": {"context_length": 256, "seed": SEED, "lora": {"enabled": lora, "rank": 4}},
        }
    )


def expected(lora: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Parameters and buffers of the same model built whole, the normal way."""
    ref = build_longvila(TINY, seed=0)  # export() writes this draw's tower and LLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        ref.projector = Projector(ref.vision.hidden_size, ref.hidden_size)
    if lora:
        from longvila_trainer.model.lora import apply_lora

        apply_lora(ref.llm, config(Path("/x"), True).train.lora, SEED)
    return dict(ref.state_dict()), {n: b.clone() for n, b in ref.named_buffers()}


def _worker(rank: int, world: int, out: str, lora: bool) -> dict[str, Any]:
    groups = build_groups(ParallelLayout(world), check_hosts=False)
    model = model_for_run(config(Path(out), lora), groups, TINY.media_token_id)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    params, buffers = expected(lora)
    bad = [k for k, v in params.items() if not torch.equal(full[k].cpu(), v)]
    wrong_buffers = [n for n, b in model.named_buffers() if not torch.equal(b.cpu(), buffers[n])]
    sharded = [n for n, p in model.named_parameters() if type(p).__name__ == "DTensor"]
    return {"bad": bad, "buffers": wrong_buffers, "sharded": len(sharded), "n": len(params)}


@pytest.mark.parametrize(("world", "lora"), [(1, False), (2, False), (2, True)])
def test_sharded_load_reads_exactly_the_saved_weights(tmp_path: Path, world: int, lora: bool) -> None:
    export("tiny", tmp_path, seed=0)
    for rank, r in enumerate(run_gloo(_worker, world, str(tmp_path), lora)):
        assert not r["bad"] and not r["buffers"], (rank, r)
        assert (r["sharded"] > 0) == (world > 1), r  # FSDP2 shards at world > 1 only


def test_a_tensor_missing_from_the_files_is_named(tmp_path: Path) -> None:
    export("tiny", tmp_path, seed=0)
    model = build_longvila(TINY, seed=0)
    model.llm.model.norm.register_parameter("extra", torch.nn.Parameter(torch.zeros(2)))
    with pytest.raises(MissingWeightsError, match=r"no tensor 'model\.norm\.extra'"):
        load_safetensors(model.llm, tmp_path / "qwen2", ("",), None)
