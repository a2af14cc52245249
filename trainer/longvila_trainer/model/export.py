"""A model preset as HF weight directories, for tests and the demo.

    python -m longvila_trainer.model.export --preset tiny OUT_DIR     # OUT_DIR/qwen2, OUT_DIR/siglip

The weights are the preset's own random ones (`build_longvila(preset, seed)` draws the same
SigLIP and Qwen2 from the same seed), written with `save_pretrained`. A config then uses
them with `model.preset: ""`, `model.llm: file://OUT_DIR/qwen2` (or an s3:// copy),
`model.vision_tower: file://OUT_DIR/siglip` and `model.tokenizer: tiny`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from .presets import PRESETS

LLM_DIR, TOWER_DIR = "qwen2", "siglip"


def export(preset: str, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Writes out/qwen2 and out/siglip; returns both paths."""
    p = PRESETS[preset]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the draw order of build_longvila: tower first, then the LLM
        siglip = SiglipVisionModel(SiglipVisionConfig(**p.vision))
        llm = Qwen2ForCausalLM(Qwen2Config(**p.llm))
    llm_dir, tower_dir = out / LLM_DIR, out / TOWER_DIR
    llm.save_pretrained(llm_dir)
    siglip.save_pretrained(tower_dir)
    return llm_dir, tower_dir


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m longvila_trainer.model.export", description=__doc__.splitlines()[0]
    )
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("out", type=Path, help="directory for qwen2/ and siglip/")
    a = ap.parse_args(argv)
    for path in export(a.preset, a.out, a.seed):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
