"""What `make demo` puts on the cluster's S3 before the job, as a user has it on theirs.

    s3://<bucket>/models/tiny-vila/       a checkpoint in VILA's released layout (config.json,
                                          llm/ with its tokenizer, vision_tower/, mm_projector/)
    s3://<bucket>/imports/tiny-vila/      the same, imported with `longvila-import` (spec.model.init)
    s3://<bucket>/datasets/long-text/     pre-tokenized long text, our manifest.jsonl
    s3://<bucket>/datasets/needle-qa/     needle videos, LLaVA layout (train.json + videos)
    <work>/datasets/video-qa/             short video / image QA, LLaVA layout (the short mix),
                                          on this machine's disk: the job's hostPath volume

The checkpoint is the tiny model pretrained to find the NIAH needle (tiny_needle.py),
cached under the machine's cache directory after its first run. The datasets come from the
trainer's synthetic generators, written in the layouts public datasets use.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.data import synthetic
from longvila_trainer.data.tokenizer import load_tokenizer

from .cluster import ClusterInfo
from .tiny_needle import Recipe
from .versions import cache_root

MODEL = "models/tiny-vila"
IMPORTED = "imports/tiny-vila"
# name → (generator, layout, samples, haystack / video frames, on S3 (else only on the volume))
DATASETS = {
    "long-text": ("long-text", "manifest", 16, 16, True),
    "needle-qa": ("needle-qa", "llava", 24, 8, True),
    "video-qa": ("instructions", "llava", 12, 8, False),
}
VOLUME_PATH = "/srv/longvila-demo/"  # the job file's hostPath prefix, made <work>/datasets/ by the demo


class AssetError(RuntimeError):
    """A demo asset could not be made; the message says which and why."""


def upload_tree(info: ClusterInfo, local: Path, prefix: str) -> int:
    """Every file under `local` to s3://<bucket>/<prefix>/…; the number of objects."""
    storage = open_storage(f"s3://{info.s3_bucket}/{prefix}", environ=info.env())
    files = sorted(p for p in local.rglob("*") if p.is_file())
    for f in files:
        storage.put_file(f.relative_to(local).as_posix(), f)
    return len(files)


RECIPE = Recipe()  # the demo's pretraining (tiny_needle.py)


def export_tiny_weights(out: Path) -> None:
    """The tiny preset as HF directories out/qwen2 and out/siglip (a separate process: torch);
    what the trainer image bakes in at /opt/longvila/tiny (the chaos run's model)."""
    argv = [sys.executable, "-m", "longvila_trainer.model.export", "--preset", "tiny", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise AssetError(f"exporting the tiny weights failed: {done.stderr.strip()[-2000:]}")


def pretrained_tiny(say: Callable[[str], None], recipe: Recipe = RECIPE) -> Path:
    """The VILA-layout tiny needle model, made once per machine (a separate process: torch)."""
    out = cache_root() / "demo" / recipe.key() / "vila"
    if (out / "config.json").is_file():
        say(f"tiny pretrained weights (cached): {out}")
        return out
    say(f"pretraining the tiny model to find the needle (once per machine, cached in {out.parent})")
    tmp = out.with_name(f"vila.tmp-{time.monotonic_ns()}")
    argv = [sys.executable, "-m", "longvila_localcluster.tiny_needle", str(tmp), "--steps", str(recipe.steps),
            "--seed", str(recipe.seed)]  # fmt: skip
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip())
            if line.startswith("step "):
                say(f"  {line.rstrip()}")
    if proc.returncode:
        raise AssetError("pretraining the tiny model failed: " + " | ".join(lines[-5:]))
    tmp.rename(out)
    return out


def stage_assets(info: ClusterInfo, work: Path, say: Callable[[str], None]) -> dict[str, str]:
    """Uploads the checkpoint and the datasets, imports the checkpoint; the S3 URIs by name, and
    "volume": the local directory that holds the volume's datasets."""
    bucket = f"s3://{info.s3_bucket}"
    n = upload_tree(info, pretrained_tiny(say), MODEL)
    say(f"uploaded the VILA-layout checkpoint to {bucket}/{MODEL}/ ({n} objects)")
    cmd = [str(Path(sys.executable).parent / "longvila-import"), f"{bucket}/{MODEL}", f"{bucket}/{IMPORTED}",
           "--cache-dir", str(work / "import-cache")]  # fmt: skip
    say(f"longvila-import {bucket}/{MODEL} {bucket}/{IMPORTED}")
    done = subprocess.run(cmd, env={**os.environ, **info.env()}, capture_output=True, text=True)
    if done.returncode:
        raise AssetError(f"longvila-import failed: {done.stderr.strip()[-2000:]}")
    say(f"  {done.stdout.strip()}")
    codec = load_tokenizer("tiny")
    for name, (generator, layout, samples, frames, on_s3) in DATASETS.items():
        root = work / "datasets" / name
        synthetic.generate(generator, root, samples=samples, seed=1, frames=frames, size=56, codec=codec,
                           text_tokens=200, layout=layout)  # fmt: skip
        kind = "LLaVA layout (train.json + media)" if layout == "llava" else "manifest.jsonl"
        if on_s3:
            n = upload_tree(info, root, f"datasets/{name}")
            say(f"dataset {bucket}/datasets/{name}/: {samples} samples, {kind}, {n} objects")
        else:
            n = sum(1 for p in root.rglob("*") if p.is_file())
            say(f"dataset {root}/ (the job's hostPath volume): {samples} samples, {kind}, {n} files")
    return {"model": f"{bucket}/{MODEL}", "init": f"{bucket}/{IMPORTED}", "volume": str(work / "datasets")}
