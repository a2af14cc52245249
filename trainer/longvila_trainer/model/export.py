"""A model shape as HF weight directories of random weights, for tests, the demo and benchmarks.

    python -m longvila_trainer.model.export --preset tiny OUT_DIR     # OUT_DIR/qwen2, OUT_DIR/siglip
    python -m longvila_trainer.model.export --preset qwen2-0.5b+siglip-so400m --dtype bfloat16 OUT_DIR

The tiny preset's weights are its own random ones (`build_longvila(preset, seed)` draws the
same SigLIP and Qwen2 from the same seed); a config then uses them with `model.preset: ""`,
`model.llm: file://OUT_DIR/qwen2`, `model.vision_tower: file://OUT_DIR/siglip` and
`model.tokenizer: tiny`. The real-size shapes (model/presets.py ARCHITECTURES) are written
the way published checkpoints are, in bf16 safetensors; the loading benchmark
(`python -m longvila_trainer.bench.loading`) reads them. Nothing here is ever committed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from .presets import ARCHITECTURES, PRESETS

LLM_DIR, TOWER_DIR = "qwen2", "siglip"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export(preset: str, out: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """Writes out/qwen2 and out/siglip; returns both paths."""
    p = {**PRESETS, **ARCHITECTURES}[preset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the draw order of build_longvila: tower first, then the LLM
        siglip = SiglipVisionModel(SiglipVisionConfig(**p.vision))
        llm = Qwen2ForCausalLM(Qwen2Config(**p.llm))
    llm_dir, tower_dir = out / LLM_DIR, out / TOWER_DIR
    for model, path in ((llm, llm_dir), (siglip, tower_dir)):
        torch.nn.Module.to(model, dtype)  # (transformers' own .to is typed for other uses)
        model.save_pretrained(path)
    return llm_dir, tower_dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m longvila_trainer.model.export", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--preset", default="tiny", choices=sorted({**PRESETS, **ARCHITECTURES}))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("out", type=Path, help="directory for qwen2/ and siglip/")
    a = ap.parse_args(argv)
    for path in export(a.preset, a.out, a.seed, DTYPES[a.dtype]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
