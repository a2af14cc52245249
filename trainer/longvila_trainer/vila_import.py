"""`longvila-import SRC DST`: a released VILA / LongVILA checkpoint as a stage's committed checkpoint.

    longvila-import s3://models/LongVILA-7B-1M s3://ckpt/imports/longvila-7b-1m
    longvila-import /data/VILA1.5-7b file:///ckpt/vila15-7b [--token-order row] [--cache-dir DIR]

SRC is the released layout (config.json, llm/, vision_tower/, mm_projector/; model/vila.py),
a directory or an s3:// prefix (copied once into the cache directory). DST gets our layout
(longvila_contract.checkpoint): step 0 with the whole model's weights under our names, the
model meta (configs, RoPE base, media token, projector token order) and `final.json`, so a
job's `spec.model.init` (or `model.init`) starts from it. DST must hold no checkpoint yet;
a failed import leaves no final.json (the manifest is written last). Weights are stored in
float32, what training keeps; a 7B model needs ~32 GB of memory and of --cache-dir space.
Bad input: one `longvila-import: error: …` line, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from longvila_contract.uri import URIError, parse_uri
from torch.distributed.checkpoint.state_dict import get_model_state_dict

from .checkpoint.s3 import StorageError
from .checkpoint.store import CheckpointStore
from .fetch import local_copy
from .model.meta import checkpoint_meta_entry, meta_of
from .model.vila import VilaFormatError, load_vila, read_layout
from .model.weights import WeightsError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="longvila-import", description=__doc__.splitlines()[0])
    p.add_argument("src", help="the VILA checkpoint: a directory or s3://bucket/prefix")
    p.add_argument("dst", help="where our checkpoint goes: file:///dir, a directory, or s3://bucket/prefix")
    p.add_argument(
        "--token-order", choices=("column", "row"), default=None,
        help="merged-token order of the projector (default: the projector type's; 'row' for mlp_downsample "
        "checkpoints trained with VILA's current code)",
    )  # fmt: skip
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("LONGVILA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "longvila-cache")),
        help="where an s3:// SRC is copied and the checkpoint is staged",
    )
    return p.parse_args(argv)


def as_uri(text: str) -> str:
    return text if "://" in text else f"file://{Path(text).resolve()}"


def run(args: argparse.Namespace) -> str:
    src, dst, cache = as_uri(args.src), as_uri(args.dst), Path(args.cache_dir)
    source = parse_uri(src, "SRC")
    parse_uri(dst, "DST")
    store = CheckpointStore.from_uri(dst, staging=cache / "staging")
    if store.steps() or store.final_step() is not None:
        raise VilaFormatError(f"DST={dst}: already holds checkpoints; import into an empty prefix")
    root = local_copy(source, cache) if source.is_s3 else source.path
    layout = read_layout(root, args.token_order)
    model, codec = load_vila(layout)
    meta = meta_of(model, projector=layout.projector)
    store.save(0, {"model": get_model_state_dict(model)}, meta={"stage": "import", "source": src,
                                                                **checkpoint_meta_entry(meta)})  # fmt: skip
    store.mark_final(0)
    llm = model.llm.config
    return (
        f"imported {src} → {dst} (step 0, final): Qwen2 {llm.num_hidden_layers} layers, "
        f"hidden {llm.hidden_size}, "
        f"RoPE base {meta.rope_theta:g}; SigLIP layer {layout.select_layer}; projector {layout.projector} "
        f"({layout.token_order} token order); media token {meta.media_token}={codec.media_token_id}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        print(run(args))
    except (VilaFormatError, WeightsError, URIError, StorageError, FileNotFoundError, ValueError) as err:
        print(f"longvila-import: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
