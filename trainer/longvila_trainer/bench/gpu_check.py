"""`make gpu-check`: what only a GPU can show, in one run of under 8 minutes on one H100/H200.

  1. kernels: every GPU attention kernel the trainer may pick (flash-attn when installed,
     SDPA's flash kernel, SDPA's memory-efficient kernel) against the exact math kernel
     (fp32), on the pieces ring steps run: a varlen pass of non-square full problems and one
     of square causal problems, bf16 (and fp32 for the efficient kernel): forward out and
     LSE, backward dq/dk/dv from a given final LSE; then every ring rank's merged causal
     zigzag forward against exact attention (bench/attention.py ring_forward_error).
  2. training: world-1 steps of the real Qwen2-7B + SigLIP-so400m architecture (random
     weights drawn on the GPU, bf16 parameters, activation checkpointing, the MM-SP model
     with 8 frames of 384 px per sequence, chunked head/loss) through the trainer's own
     train_step, at 16k, 32k and 64k tokens, or as many as fit: tokens/s, MFU, peak memory.
     One GPU cannot hold fp32 master weights, gradients and AdamW state of 7.6B parameters
     (91 GB before activations), so these steps keep bf16 parameters and gradients with SGD
     (--optimizer adamw adds bf16 AdamW state); FSDP2's sharded fp32 layout at W GPUs is
     what `python -m longvila_trainer.bench.memory` models.
  3. ring step: TFLOP/s of one zigzag ring step (pieces + LSE merge) against causal SDPA
     over the full sequence, 16k–64k tokens, R = 8.

The report is one JSON object (--out, default gpu-check.json) plus a summary on stdout;
exit 1 when a kernel check fails, 2 without a GPU. --dry-run runs the same code on the CPU
with the tiny model, short sequences and the CPU kernel (no CUDA call): it checks the script,
not the GPU. Never part of CI.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import Qwen2Config, SiglipVisionConfig

from ..attention.kernels import KERNELS, MathKernel, Varlen, select_kernel
from ..loop import train_step
from ..model.longvila import LongVILA, PackedBatch
from ..model.materialize import fresh_parameters, materialize
from ..model.presets import ARCHITECTURES, TINY, ModelPreset
from ..model.weights import build_on_meta
from ..parallel.groups import single_process_groups
from ..parallelize import ParallelizeOptions, parallelize
from ..sharding.frames import IGNORE_INDEX
from .attention import Shape, ring_forward_error, ring_step_rows

PEAK_BF16 = {"H100": 989e12, "H200": 989e12}  # dense bf16 FLOP/s (SXM)
TOLERANCE = {torch.bfloat16: 2e-2, torch.float32: 1e-3}  # max |err| / max |exact|


def kernel_checks(device: torch.device, dry: bool) -> list[dict[str, Any]]:
    """Each kernel vs MathKernel in fp32 on a full (non-square) and a causal varlen pass."""
    names = ["cpu_flash"] if dry else [k for k in ("flash_attn", "sdpa", "sdpa_efficient") if _available(k)]
    passes = {"full": Varlen((0, 96, 160, 300), (0, 160, 224, 300), False),
              "causal": Varlen((0, 128, 198, 300), (0, 128, 198, 300), True)}  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    rows = []
    for name in names:
        for dtype in (
            (torch.bfloat16, torch.float32) if name == "sdpa_efficient" or dry else (torch.bfloat16,)
        ):
            for label, seg in passes.items():
                q, dout = (torch.randn(seg.cu_q[-1], 8, 128, generator=gen) for _ in range(2))
                k, v = (torch.randn(seg.cu_k[-1], 2, 128, generator=gen) for _ in range(2))
                ref = MathKernel()
                out, lse = ref.forward(q, k, v, seg, 128**-0.5)
                grads = ref.backward(dout, q, k, v, out, lse, seg, 128**-0.5)
                x = [t.to(device, dtype) for t in (q, k, v, dout)]
                kern = select_kernel(name, x[0])
                o, lo = kern.forward(x[0], x[1], x[2], seg, 128**-0.5)
                g = kern.backward(
                    x[3], x[0], x[1], x[2], out.to(device, dtype), lse.to(device), seg, 128**-0.5
                )
                errs = {n: _rel(a, b) for n, a, b in zip(("out", "lse", "dq", "dk", "dv"), (o, lo, *g),
                                                         (out, lse, *grads), strict=True)}  # fmt: skip
                ok = max(errs.values()) <= TOLERANCE[dtype]
                rows.append({"kernel": name, "dtype": str(dtype), "pass": label, "rel_err": errs, "ok": ok})
    return rows


def _available(name: str) -> bool:
    if name == "flash_attn":
        import importlib.util

        return importlib.util.find_spec("flash_attn") is not None
    return name in KERNELS


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.float()
    return float((got.float().cpu() - want).abs().max() / want.abs().max().clamp_min(1e-6))


def device_model(arch: ModelPreset, device: torch.device, dtype: torch.dtype) -> LongVILA:
    """The architecture built on meta, each parameter drawn on `device` (no host copy)."""
    model = build_on_meta(Qwen2Config(**arch.llm), SiglipVisionConfig(**arch.vision), arch.media_token_id, 0)
    model = parallelize(model, single_process_groups(device), ParallelizeOptions(fsdp=False))
    fresh = fresh_parameters(model)
    materialize(model, device, fresh, {}, None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in fresh:
                continue
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    return model.to(dtype).train()


def batch(arch: ModelPreset, tokens: int, frames: int) -> PackedBatch:
    """One document of `tokens` LLM rows: 16 prompt tokens, `frames` frames, then answer text."""
    side = int(arch.vision["image_size"])
    per_frame = ((side // int(arch.vision["patch_size"]) + 1) // 2) ** 2
    answer = tokens - 16 - frames * per_frame
    gen = torch.Generator().manual_seed(tokens)
    text = torch.randint(0, arch.media_token_id, (16 + answer,), generator=gen)
    ids = torch.cat([text[:16], torch.full((frames,), arch.media_token_id), text[16:]])
    labels = torch.cat([torch.full((16 + frames,), IGNORE_INDEX), text[16:]])
    pixels = tuple(torch.randn(3, side, side, generator=gen) for _ in range(frames))
    return PackedBatch(ids, labels, (int(ids.numel()),), pixels)


def model_flops(arch: ModelPreset, model: LongVILA, tokens: int, frames: int) -> float:
    """Training FLOPs of one sequence as MFU counts them (no recompute): 6·P per token for the
    decoder layers and head, causal attention 3 × 2·S²·D per layer, the tower 6·P per patch."""
    llm = arch.llm
    d, layers = int(llm["hidden_size"]), int(llm["num_hidden_layers"])
    dense = sum(p.numel() for p in model.llm.model.layers.parameters()) + int(llm["vocab_size"]) * d
    tower = sum(p.numel() for p in model.vision.parameters())
    patches = (int(arch.vision["image_size"]) // int(arch.vision["patch_size"])) ** 2
    return float(6 * dense * tokens + 3 * 2 * tokens**2 * d * layers + 6 * tower * patches * frames)


def training_rows(args: Any, device: torch.device, dry: bool, deadline: float) -> Iterator[dict[str, Any]]:
    arch = TINY if dry else ARCHITECTURES["qwen2-7b+siglip-so400m"]
    dtype = torch.float32 if dry else torch.bfloat16
    model = device_model(arch, device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-6) if args.optimizer == "sgd" else torch.optim.AdamW(params, lr=1e-6)
    groups = single_process_groups(device)
    peak = None if dry else next((f for n, f in PEAK_BF16.items() if n in torch.cuda.get_device_name()), None)
    for tokens in (int(t) for t in args.tokens.split(",")):
        if time.monotonic() > deadline:
            yield {"tokens": tokens, "skipped": "time budget spent"}
            continue
        b = batch(arch, tokens, args.frames)
        row: dict[str, Any] = {"tokens": tokens, "frames": args.frames, "optimizer": args.optimizer}
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times = []
            for i in range(1 + args.steps):  # the first step warms up
                t0 = time.perf_counter()
                train_step(model, opt, iter([b]), groups, kind="zigzag", accum=1, clip=1.0, lr=1e-6,
                           tokens_per_frame=0)  # fmt: skip
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - t0)
            step = min(times)
            flops = model_flops(arch, model, tokens, args.frames)
            mfu = None if peak is None else flops / step / peak
            row |= {"fits": True, "step_s": step, "tokens_per_s": tokens / step, "mfu": mfu,
                    "peak_memory_gib": _peak(device)}  # fmt: skip
        except torch.OutOfMemoryError:
            row |= {"fits": False, "peak_memory_gib": _peak(device)}
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        yield row


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB (host RSS)


def run(args: Any) -> dict[str, Any]:
    dry = args.dry_run
    device = torch.device("cpu") if dry else torch.device("cuda", 0)
    deadline = time.monotonic() + args.budget_s
    report: dict[str, Any] = {"dry_run": dry, "device": "cpu" if dry else torch.cuda.get_device_name(),
                              "torch": torch.__version__}  # fmt: skip
    report["kernels"] = kernel_checks(device, dry)
    ring_kernel = select_kernel("auto", torch.empty(1, 1, 128, device=device, dtype=torch.bfloat16))
    dtype = torch.float32 if dry else torch.bfloat16
    report["ring_merge_max_abs_err"] = ring_forward_error(ring_kernel, 4, str(device), dtype)
    report["training"] = list(training_rows(args, device, dry, deadline))
    seqs = [int(s) for s in args.ring_seqs.split(",")]
    shape = Shape(8, 2, 64) if dry else Shape(28, 4, 128)
    report["ring_step"] = ring_step_rows(ring_kernel, shape, args.ring, seqs, device, dtype)
    report["ok"] = all(r["ok"] for r in report["kernels"])
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m longvila_trainer.bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--out", type=Path, default=Path("gpu-check.json"), help="JSON report (default gpu-check.json)"
    )
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny model, short sequences: checks the script"
    )
    ap.add_argument(
        "--tokens", default=None, help="training lengths (default 16384,32768,65536; dry 256,512)"
    )
    ap.add_argument("--frames", type=int, default=None, help="frames per sequence (default 8; dry 2)")
    ap.add_argument("--steps", type=int, default=2, help="measured steps per length, after one warm-up")
    ap.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    ap.add_argument(
        "--ring-seqs", default=None, help="ring-step lengths (default 16384,32768,65536; dry 512)"
    )
    ap.add_argument("--ring", type=int, default=8, help="ring size R of the measured ring step")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip further training lengths after this")
    a = ap.parse_args(argv)
    a.tokens = a.tokens or ("256,512" if a.dry_run else "16384,32768,65536")
    a.frames = a.frames if a.frames is not None else (2 if a.dry_run else 8)
    a.ring_seqs = a.ring_seqs or ("512" if a.dry_run else "16384,32768,65536")
    if not a.dry_run and not torch.cuda.is_available():
        print("gpu-check: error: no CUDA device (torch.cuda.is_available() is False); "
              "--dry-run runs on the CPU", file=sys.stderr)  # fmt: skip
        return 2
    report = run(a)
    a.out.write_text(json.dumps(report, indent=1))
    for r in report["kernels"]:
        print(f"kernel {r['kernel']:15} {r['dtype']:15} {r['pass']:7} max rel err "
              f"{max(r['rel_err'].values()):.2e} {'ok' if r['ok'] else 'FAIL'}")  # fmt: skip
    for r in report["training"]:
        print("train", json.dumps(r))
    for r in report["ring_step"]:
        print(
            f"{r['what']:28} {r['seq']:>7} fwd {r['fwd_tflops']:7.2f} TFLOP/s  "
            f"fwd+bwd {r['fwd_bwd_tflops']:7.2f}"
        )
    print(f"gpu-check: report in {a.out}; kernels {'ok' if report['ok'] else 'FAILED'}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
