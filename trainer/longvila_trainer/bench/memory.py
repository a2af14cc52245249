"""Memory and time model of LongVILA-7B training per GPU (a model: no GPU is touched).

    python -m longvila_trainer.bench.memory [--jobs examples/jobs/*.yaml] [--json]

For each stage of the example jobs, on 80 GB (H100) and 141 GB (H200) GPUs: the bytes one
GPU holds at the backward peak, by piece, under what the trainer does (FSDP2 over every
rank, fp32 master shards, bf16 compute, activation checkpointing of every layer, the 2D
attention, the chunked head/loss); then the longest context that fits per SP size, next to
the paper's 2M tokens on 256 GPUs; and a compute-bound step time at an assumed efficiency.

Parameter counts come from the real modules (built on the meta device, with the stage's
LoRA and trainable set applied by the trainer's own code). Everything else is arithmetic,
written next to each term; the attention op's own buffers are bench/attention.py's
`bytes_per_token`. Assumptions, stated in the output: a fixed 5 GiB per GPU for the CUDA
context, NCCL buffers and allocator fragmentation; compute at --efficiency of the bf16
dense peak, no communication time (issue 15 models the network).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from longvila_contract.config import TrainConfig, load_preset
from longvila_contract.layout import LayoutError, kv_replication
from longvila_contract.stages import stage_type
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from ..loop import set_trainable
from ..model.head_loss import LOGIT_CHUNK_ELEMENTS
from ..model.longvila import LongVILA
from ..model.lora import apply_lora
from ..model.presets import ARCHITECTURES, ModelPreset
from ..model.projector import Projector
from ..model.vision import VisionTower
from .attention import Mode, Shape, bytes_per_token

GIB = 2**30
GPUS = {"H100 80GB": (81559 * 2**20, 989e12), "H200 141GB": (143771 * 2**20, 989e12)}  # bytes, bf16 FLOP/s
FIXED = 5 * GIB  # CUDA context, NCCL buffers, allocator fragmentation (assumed)
PAPER = {"context": 2**21, "gpus": 256}  # LongVILA: 2M-token training on 256 GPUs
PLACEHOLDERS = ("data.uri=s3://unused/data", "model.preset=tiny")  # a preset needs them to validate


@dataclass(frozen=True)
class Counts:
    """Parameter counts of one configuration (trainable ones after the stage's LoRA/trainable)."""

    total: int
    trainable: int
    root: int  # parameters outside the per-layer FSDP units (embed, head, norm, projector, tower stem)
    root_trainable: int
    llm_layer: int  # one decoder layer
    llm_layer_trainable: int
    tower_layers: int  # encoder layers kept (VILA reads layer −2)
    tower_tokens: int  # patches per frame
    tower_hidden: int
    tower: int  # tower parameters (every kept layer and the stem)
    projector: int


def count(arch: ModelPreset, t: TrainConfig) -> Counts:
    with torch.device("meta"):
        llm = Qwen2ForCausalLM(Qwen2Config(**arch.llm))
        tower = VisionTower(SiglipVisionModel(SiglipVisionConfig(**arch.vision)), arch.select_layer)
        projector = Projector(tower.hidden_size, int(llm.config.hidden_size))
    model = LongVILA(tower, projector, llm, arch.media_token_id)
    if t.lora.enabled:
        apply_lora(model.llm, t.lora, t.seed)
    set_trainable(model, t)
    layers = [*model.llm.model.layers, *model.vision.model.encoder.layers]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    params = list(model.parameters())
    root = [p for p in params if id(p) not in in_layers]
    layer0 = list(model.llm.model.layers[0].parameters())
    side = int(arch.vision["image_size"]) // int(arch.vision["patch_size"])
    return Counts(
        total=sum(p.numel() for p in params),
        trainable=sum(p.numel() for p in params if p.requires_grad),
        root=sum(p.numel() for p in root),
        root_trainable=sum(p.numel() for p in root if p.requires_grad),
        llm_layer=sum(p.numel() for p in layer0),
        llm_layer_trainable=sum(p.numel() for p in layer0 if p.requires_grad),
        tower_layers=len(model.vision.model.encoder.layers),
        tower_tokens=side * side,
        tower_hidden=tower.hidden_size,
        tower=sum(p.numel() for p in model.vision.parameters()),
        projector=sum(p.numel() for p in model.projector.parameters()),
    )


@dataclass(frozen=True)
class Setup:
    world: int
    ulysses: int
    ring: int
    context: int  # tokens per packed sequence
    frames: int  # frames per sequence (0: text only)
    tower_trains: bool


def per_gpu(arch: ModelPreset, c: Counts, s: Setup) -> dict[str, float]:
    """Bytes on one GPU at the backward peak, by piece (see the module docstring)."""
    llm = arch.llm
    d, inter, layers = int(llm["hidden_size"]), int(llm["intermediate_size"]), int(llm["num_hidden_layers"])
    heads, kv = int(llm["num_attention_heads"]), int(llm["num_key_value_heads"])
    vocab, hd = int(llm["vocab_size"]), d // int(llm["num_attention_heads"])
    sp = s.ulysses * s.ring
    local = s.context / sp  # S_l: tokens of this rank's shard
    frames = -(-s.frames // sp)  # frames this rank encodes
    attn = bytes_per_token(Mode("2d", s.ulysses, s.ring), Shape(heads, kv, hd), 2)
    return {
        "parameters (fp32 shards)": 4 * c.total / s.world,
        "gradients (fp32 shards)": 4 * c.trainable / s.world,
        "AdamW state (fp32 shards)": 8 * c.trainable / s.world,
        # FSDP root unit (embed, head, norm, projector, tower stem) unsharded in bf16 for the whole
        # step, with its bf16 gradients; two decoder layers in flight (current + prefetched).
        "unsharded bf16 params and grads": 2 * (c.root + c.root_trainable)
        + 2 * 2 * (c.llm_layer + c.llm_layer_trainable),
        # activation checkpointing: each decoder layer keeps its input [S_l, D] bf16, plus the
        # final hidden for the head; the tower keeps each kept layer's input per local frame.
        "layer checkpoints": (layers + 1) * local * d * 2
        + (c.tower_layers * frames * c.tower_tokens * c.tower_hidden * 2 if s.tower_trains else 0),
        # one decoder layer recomputed in the backward: MLP gate/up/act and two of their
        # gradients [S_l, I], q/k/v/o and gradients, norms and residuals [S_l, D], all bf16
        "recomputed layer": local * (5 * inter + 2 * (heads + 2 * kv) * hd * 2 + 4 * d) * 2,
        "attention op (2D ring/Ulysses buffers)": local * attn,
        # the head: one chunk of fp32 logits and its softmax, the fp32 weight-gradient accumulator
        "head and loss (chunked)": 2 * 4 * LOGIT_CHUNK_ELEMENTS + 4 * vocab * d,
        "fixed (context, NCCL, fragmentation)": FIXED,
    }


def longest_context(arch: ModelPreset, c: Counts, sp: int, budget: float, tower: bool) -> int:
    """Longest multiple of 2·SP tokens that fits `budget` at dp = 1 (world = SP), U ≤ 4."""
    u = max(x for x in (1, 2, 4) if sp % x == 0 and _heads_ok(arch, x))
    lo, hi = 0, 2**26
    while hi - lo > 2 * sp:
        mid = (lo + hi) // 2
        fits = sum(per_gpu(arch, c, Setup(sp, u, sp // u, mid, 0, tower)).values()) <= budget
        lo, hi = (mid, hi) if fits else (lo, mid)
    return lo // (2 * sp) * (2 * sp)


def _heads_ok(arch: ModelPreset, u: int) -> bool:
    try:
        kv_replication(int(arch.llm["num_attention_heads"]), int(arch.llm["num_key_value_heads"]), u)
    except LayoutError:
        return False
    return True


def step_seconds(arch: ModelPreset, c: Counts, s: Setup, packs: int, peak: float, efficiency: float) -> float:
    """Compute-bound seconds per optimizer step: `packs` sequences over `world` GPUs.

    Matmul FLOPs 2·P per token forward (P: decoder layers + head; embedding lookups are
    free), causal attention 2·S²·H·d per layer forward (one document per pack: the worst
    case); the tower 2·P_tower per patch and the projector 2·P_proj per token; training =
    forward + 2× backward + 1× recompute (activation checkpointing) = 4× forward.
    """
    llm = arch.llm
    d, layers, vocab = int(llm["hidden_size"]), int(llm["num_hidden_layers"]), int(llm["vocab_size"])
    dense = c.llm_layer * layers + vocab * d
    fwd = 2 * dense * s.context + 2 * s.context**2 * d * layers
    vision = s.frames * (2 * c.tower * c.tower_tokens + 2 * c.projector * c.tower_tokens / 4)
    return packs * 4 * (fwd + vision) / (s.world * peak * efficiency)


def stages(path: Path) -> list[dict[str, Any]]:
    """The stages of an example LongVILAJob, with what the trainer would train in each."""
    spec = yaml.safe_load(path.read_text())["spec"]
    topo, sp = spec["topology"], spec["topology"].get("sequenceParallel", {})
    out = []
    for st in spec["stages"]:
        overrides = [f"{k}={v}" for k, v in st.get("overrides", {}).items()]
        preset = stage_type(st["type"]).preset_for(st.get("contextLength"))  # as the operator picks it
        cfg = load_preset(preset, [*PLACEHOLDERS, *overrides])
        accum = cfg.train.grad_accum
        out.append({
            "job": spec.get("name", path.stem), "stage": st["name"], "train": cfg.train,
            "nodes": int(topo["nodes"]), "gpus_per_node": int(topo["gpusPerNode"]),
            "ulysses": int(sp.get("ulysses", 1)), "ring": int(sp.get("ring", 1)),
            "context": int(st.get("contextLength") or cfg.train.context_length or 0),
            "frames": int(st.get("frames") or 0), "accum": accum,
        })  # fmt: skip
    return out


def report(jobs: list[Path], arch_name: str, efficiency: float) -> dict[str, Any]:
    arch = ARCHITECTURES[arch_name]
    rows = []
    for path in jobs:
        for st in stages(path):
            world = st["nodes"] * st["gpus_per_node"]
            setup = Setup(
                world, st["ulysses"], st["ring"], st["context"], st["frames"], st["train"].trainable == "all"
            )
            row = {k: v for k, v in st.items() if k != "train"}
            row["trainable"] = st["train"].trainable + (" + LoRA" if st["train"].lora.enabled else "")
            if not _heads_ok(arch, setup.ulysses):
                row["error"] = f"Ulysses {setup.ulysses} cannot split {arch.llm['num_attention_heads']} heads"
                rows.append(row)
                continue
            c = count(arch, st["train"])
            pieces = per_gpu(arch, c, setup)
            packs = st["accum"] * world // (setup.ulysses * setup.ring)
            row |= {"bytes": pieces, "total_gib": sum(pieces.values()) / GIB, "packs_per_step": packs}
            row["fits"] = {g: sum(pieces.values()) <= b for g, (b, _) in GPUS.items()}
            row["step_s"] = {
                g: step_seconds(arch, c, setup, packs, f, efficiency) for g, (_, f) in GPUS.items()
            }
            rows.append(row)
    lora = count(arch, load_preset("context-extension-1m", PLACEHOLDERS).train)
    full = count(arch, load_preset("context-extension-1m", [*PLACEHOLDERS, "train.lora.enabled=false"]).train)
    longest = [
        {
            "sp": sp,
            **{f"{g} LoRA": longest_context(arch, lora, sp, b, False) for g, (b, _) in GPUS.items()},
            **{f"{g} full": longest_context(arch, full, sp, b, False) for g, (b, _) in GPUS.items()},
        }
        for sp in (1, 2, 4, 8, 16, 32, 64, 128, 256)
    ]
    return {"architecture": arch_name, "efficiency": efficiency, "fixed_gib": FIXED / GIB,
            "stages": rows, "longest_context": longest, "paper": PAPER}  # fmt: skip


def print_report(r: dict[str, Any]) -> None:
    print(f"# {r['architecture']}: per-GPU bytes at the backward peak (model; fixed {r['fixed_gib']:.0f} GiB "
          f"assumed; step time compute-bound at {r['efficiency']:.0%} of the bf16 peak)")  # fmt: skip
    for row in r["stages"]:
        head = (f"\n## {row['job']} / {row['stage']}: {row['nodes']}×{row['gpus_per_node']} GPUs, "
                f"U {row['ulysses']} × R {row['ring']}, {row['context']:,} tokens, {row['frames']} frames, "
                f"trains {row['trainable']}")  # fmt: skip
        print(head)
        if "error" in row:
            print(f"   impossible: {row['error']}")
            continue
        for name, b in row["bytes"].items():
            print(f"   {name:42} {b / GIB:8.2f} GiB")
        fits = ", ".join(f"{g}: {'fits' if ok else 'does NOT fit'}" for g, ok in row["fits"].items())
        print(f"   {'total':42} {row['total_gib']:8.2f} GiB   ({fits})")
        steps = ", ".join(f"{g} {s:.1f} s" for g, s in row["step_s"].items())
        print(f"   step ({row['packs_per_step']} packs): {steps}")
    print(
        "\n# longest text context that fits, dp = 1 (world = SP), U ≤ 4 as 28 heads allow: the LLM with\n"
        "# LoRA + embeddings + norms trained (the context-extension stages), or every LLM parameter (full)"
    )
    cols = [k for k in r["longest_context"][0] if k != "sp"]
    print(f"{'SP':>5} " + " ".join(f"{c:>22}" for c in cols))
    for row in r["longest_context"]:
        print(f"{row['sp']:>5} " + " ".join(f"{row[c]:>22,}" for c in cols))
    p = r["paper"]
    print(f"# paper: {p['context']:,} tokens on {p['gpus']} GPUs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longvila_trainer.bench.memory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    root = Path(__file__).resolve().parents[3]
    default = sorted((root / "examples" / "jobs").glob("longvila-7b-*.yaml"))
    ap.add_argument("--jobs", nargs="*", type=Path, default=default, help="LongVILAJob YAML files")
    ap.add_argument("--arch", default="qwen2-7b+siglip-so400m", choices=sorted(ARCHITECTURES))
    ap.add_argument("--efficiency", type=float, default=0.4, help="fraction of the bf16 peak (default 0.4)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    missing = [str(p) for p in a.jobs if not p.is_file()]
    if missing:
        print(f"memory: error: no such job file: {', '.join(missing)}", file=sys.stderr)
        return 2
    r = report(a.jobs, a.arch, a.efficiency)
    if a.json:
        print(json.dumps(r, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)))
    else:
        print_report(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
