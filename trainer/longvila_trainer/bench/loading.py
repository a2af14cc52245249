"""Peak host memory per rank while loading real-size weights (by hand; not a timed test).

    python -m longvila_trainer.model.export --preset qwen2-0.5b+siglip-so400m --dtype bfloat16 W
    python -m longvila_trainer.bench.loading --weights W [--worlds 1,2,4] [--modes sharded,whole] [--json]

For each world size, `world` gloo processes on this machine each load the model the way
the trainer does (`--modes sharded`: built on meta, FSDP2, each rank reading only its rows
of the safetensors files, build.py) or the way it did before (`whole`: every rank reads
the whole model with from_pretrained in fp32, then FSDP2 shards it). Each rank reports its
resident memory before the model (torch and transformers imported), its peak (ru_maxrss)
after the model is ready, and the bytes of parameters it keeps; the figures are the
largest over the ranks.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

from longvila_contract.config import from_dict
from longvila_contract.layout import ParallelLayout

from ..build import model_for_run, parameter_bytes
from ..parallel.groups import build_groups
from ..parallel.spawn import run_gloo

MIB = 2**20


def rss_now() -> int:
    """Resident bytes of this process now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _config(weights: str) -> Any:
    return from_dict(
        {
            "model": {"llm": f"{weights}/qwen2", "vision_tower": f"{weights}/siglip", "tokenizer": "tiny"},
            "data": {"uri": "synthetic://unused"},
            "train": {"context_length": 1024},
        }
    )


def _whole(weights: str, groups: Any) -> Any:
    """The previous path: every rank reads the whole model (fp32), then FSDP2 shards it."""
    import torch
    from transformers import Qwen2ForCausalLM, SiglipVisionModel

    from ..hf_attention import register_usp_attention
    from ..model.longvila import LongVILA
    from ..model.projector import Projector
    from ..model.vision import VisionTower
    from ..parallelize import ParallelizeOptions, parallelize

    llm = Qwen2ForCausalLM.from_pretrained(
        f"{weights}/qwen2", dtype=torch.float32, attn_implementation=register_usp_attention()
    )
    tower = VisionTower(SiglipVisionModel.from_pretrained(f"{weights}/siglip", dtype=torch.float32))
    model = LongVILA(tower, Projector(tower.hidden_size, int(llm.config.hidden_size)), llm, 0)
    return parallelize(model, groups, ParallelizeOptions())


def _worker(rank: int, world: int, weights: str, mode: str) -> dict[str, Any]:
    before, t0 = rss_now(), time.perf_counter()
    groups = build_groups(ParallelLayout(world), check_hosts=False)
    if mode == "sharded":
        model = model_for_run(_config(weights), groups, media_token_id=0)
    else:
        model = _whole(weights, groups)
    return {
        "rss_before": before,
        "rss_peak": rss_peak(),
        "rss_after": rss_now(),
        "param_bytes": parameter_bytes(model),
        "seconds": time.perf_counter() - t0,
    }


def measure(weights: Path, world: int, mode: str) -> dict[str, Any]:
    ranks = run_gloo(_worker, world, str(weights), mode, timeout=1800)
    return {
        "world": world,
        "mode": mode,
        "rss_before_mib": max(r["rss_before"] for r in ranks) / MIB,
        "rss_peak_mib": max(r["rss_peak"] for r in ranks) / MIB,
        "peak_minus_before_mib": max(r["rss_peak"] - r["rss_before"] for r in ranks) / MIB,
        "params_per_rank_mib": max(r["param_bytes"] for r in ranks) / MIB,
        "seconds": max(r["seconds"] for r in ranks),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longvila_trainer.bench.loading", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--weights", type=Path, required=True, help="directory with qwen2/ and siglip/ (model.export)"
    )
    ap.add_argument("--worlds", default="1,2,4")
    ap.add_argument("--modes", default="sharded,whole")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    for sub in ("qwen2", "siglip"):
        if not (a.weights / sub / "config.json").is_file():
            print(
                f"loading: error: --weights {a.weights}: no {sub}/config.json (run model.export)",
                file=sys.stderr,
            )
            return 2
    rows = []
    for mode in a.modes.split(","):
        for world in (int(w) for w in a.worlds.split(",")):
            rows.append(measure(a.weights, world, mode))
            if not a.json:
                r = rows[-1]
                print(f"{mode:8} world {world}: RSS before {r['rss_before_mib']:7.0f} MiB, peak "
                      f"{r['rss_peak_mib']:7.0f} MiB (+{r['peak_minus_before_mib']:6.0f}), parameters kept "
                      f"{r['params_per_rank_mib']:7.0f} MiB, {r['seconds']:.1f} s", flush=True)  # fmt: skip
    if a.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
