"""Projection of the cost model to GPU clusters: one attention layer and a full 7B step.

A MODEL, not a measurement: the device and link figures below are assumptions (stated,
with where they come from), the layouts and byte counts are the ones the simulated runs
checked, and the time model is costmodel.py calibrated on those runs. What only a GPU
cluster can show: real kernel throughput at these block sizes, NCCL's P2P/all-to-all
efficiency and its contention with compute for SMs, stragglers, and whether FSDP's own
traffic really hides behind compute.

Next to our ring, a naive ring (K/V heads repeated to the query heads before the ring, no
overlap): the kind of baseline under which a 2D speed-up like the paper's can appear.

A full training step (one sequence over P GPUs, SP = P, activation checkpointing per
decoder layer as the trainer does): per layer, attention forward twice (the recompute
includes its communication) and backward once, plus the linear layers at 4× their forward
FLOPs (forward, recompute, backward 2×); the LM head and the vision tower (frames split
over the SP ranks) at 3×. FSDP's parameter and gradient traffic is the same for every SP
mode and is assumed hidden behind compute (not in the step time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from longvila_contract.layout import LayoutError, kv_replication

from .costmodel import AttnShape, Device, Layout, Links, attention_time


@dataclass(frozen=True)
class LLM:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    def layer_params(self) -> int:
        attn = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)  # q, o; k, v
        return attn + 3 * self.hidden * self.intermediate  # gate, up, down

    def attn(self, elem: int) -> AttnShape:
        return AttnShape(self.heads, self.kv_heads, self.head_dim, elem)


QWEN2_7B = LLM("Qwen2-7B", 28, 3584, 18944, 28, 4, 128, 152064)  # LongVILA-7B's LLM (config.json)
SIGLIP_PARAMS = 400e6  # SigLIP-so400m vision tower
SIGLIP_TOKENS_PER_FRAME = 729  # 384 px / patch 14 → 27 × 27

# Assumed H100 SXM figures (H200: same GH100 compute and NVLink 4 / NDR links, more and faster
# memory, which this time model does not use). Replace with measured ones when a GPU is at hand
# (python -m longvila_trainer.bench.attention --gpu prints the ring step's TFLOP/s).
H100 = Device("H100/H200 SXM, flash-attn 2 bf16 (assumed)", fwd_flops=330e12, bwd_flops=250e12, call_s=15e-6)
GEMM_FLOPS = 500e12  # bf16 dense matmuls of a 7B layer: about half of the 989 TFLOP/s peak
DGX = Links(
    ranks_per_node=8,
    fast_bps=360e9,  # NVLink 4: 450 GB/s per direction per GPU (900 bidirectional), ~80 % reached
    slow_bps=45e9,  # one 400 Gb/s NDR InfiniBand NIC per GPU: 50 GB/s per direction, ~90 % reached
    fast_lat_s=8e-6,
    slow_lat_s=15e-6,
)

# LongVILA's own claims, for the table (abstract; the 64-GPU figure from secondary paper notes,
# ../shared/research/mmsp.md §3): 2D attention vs ring-style (zigzag) SP.
PAPER = {
    "speedup_over_ring": "2.1-5.7x (abstract)",
    "speedup_over_megatron_cp_tp": "1.1-1.4x (abstract)",
    "h100x64_578k": {"2d_s_per_iter": 16.9, "zigzag_ring_s_per_iter": 77.2, "speedup": 4.57},
}


def layouts(gpus: int, model: LLM, per_node: int) -> dict[str, Layout | str]:
    """The three SP modes over `gpus` ranks, or why one cannot exist (a one-line reason)."""

    def ok(u: int) -> bool:
        try:
            kv_replication(model.heads, model.kv_heads, u)
        except LayoutError:
            return False
        return True

    out: dict[str, Layout | str] = {"ring": Layout(1, gpus)}
    out["ulysses"] = (
        Layout(gpus, 1)
        if ok(gpus)
        else f"{model.heads} heads / {model.kv_heads} kv heads cannot split {gpus} ways"
    )
    u = max(d for d in range(1, min(per_node, gpus) + 1) if per_node % d == 0 and gpus % d == 0 and ok(d))
    out["2d"] = Layout(u, gpus // u)
    return out


def step_time(
    model: LLM, lay: Layout, seq: int, frames: int, dev: Device, links: Links, naive: bool = False
) -> dict[str, float]:
    """One attention layer (forward + backward) and a full training step, in seconds.

    naive: the ring as a baseline without our two savings, K/V heads repeated to the query
    heads before the ring (as code that calls the attention after transformers' repeat_kv
    does; 7× the bytes for Qwen2-7B) and no overlap of hops with compute."""
    shape = AttnShape(model.heads, model.heads, model.head_dim, 2) if naive else model.attn(2)
    att = attention_time(lay, seq, shape, dev, links, overlap=not naive)
    tokens_per_gpu = seq / lay.sp
    linear = model.layers * 4 * 2 * model.layer_params() * tokens_per_gpu / GEMM_FLOPS
    head = 3 * 2 * model.vocab * model.hidden * tokens_per_gpu / GEMM_FLOPS
    vision = 3 * 2 * SIGLIP_PARAMS * SIGLIP_TOKENS_PER_FRAME * frames / lay.sp / GEMM_FLOPS
    attn_step = model.layers * (2 * att.fwd_s + att.bwd_s)
    return {
        "attention_layer_s": att.fwd_s + att.bwd_s,
        "attention_layer_comm_s": att.fwd_comm_s + att.bwd_comm_s,
        "step_s": attn_step + linear + head + vision,
        "step_attention_s": attn_step,
    }


CASES = (("256 frames (64k context)", 65536, 256), ("1M tokens (text)", 1 << 20, 0))


def projection(
    gpus: list[int], model: LLM = QWEN2_7B, dev: Device = H100, links: Links = DGX, extra: bool = True
) -> list[dict[str, Any]]:
    """Rows (case, GPUs, mode): times or the reason a mode cannot run; 2D over ring per case."""
    cases = list(CASES) + ([("paper: 578k tokens", 578 * 1024, 0)] if extra else [])
    rows = []
    for label, seq, frames in cases:
        for n in gpus if not label.startswith("paper") else [64]:
            row: dict[str, Any] = {"case": label, "seq": seq, "gpus": n}
            for mode, lay in layouts(n, model, links.ranks_per_node).items():
                if isinstance(lay, str):
                    row[mode] = {"n/a": lay}
                    continue
                row[mode] = {
                    "ulysses": lay.ulysses,
                    "ring": lay.ring,
                    **step_time(model, lay, seq, frames, dev, links),
                }
            ring = Layout(1, n)
            row["ring_naive"] = {
                "ulysses": 1,
                "ring": n,
                **step_time(model, ring, seq, frames, dev, links, True),
            }
            row["2d_over_ring_naive_step"] = row["ring_naive"]["step_s"] / row["2d"]["step_s"]
            row["2d_over_ring_step"] = row["ring"]["step_s"] / row["2d"]["step_s"]
            row["2d_over_ring_attention"] = row["ring"]["attention_layer_s"] / row["2d"]["attention_layer_s"]
            rows.append(row)
    return rows
