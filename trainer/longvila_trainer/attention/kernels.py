"""Attention kernels behind one varlen interface; the choice is made here, lazily, per call.

A call runs several independent problems packed along the rows (varlen): problem i is q rows
[cu_q[i], cu_q[i+1]) against k/v rows [cu_k[i], cu_k[i+1]), all full or all square-causal.
Every kernel returns the log-sum-exp, and every backward takes the *final* merged out and
LSE of its rows (the flash formula dS = P ∘ (dP − rowsum(dO ∘ O)) with P = exp(S − LSE)), so
the ring can run it block by block and still get exact gradients.

Shapes: q [Nq, H, D], k/v [Nk, Hkv, D] with H % Hkv == 0 (query head h uses kv head
h // (H/Hkv), as transformers' repeat_kv); out [Nq, H, D]; lse [Nq, H] float32.

Backends ("auto" picks by device and dtype at call time; nothing is probed at import; the
three GPU ones are in cuda_kernels.py):
- "flash_attn": flash-attn's varlen kernels (GPU, fp16/bf16), one call per pass.
- "sdpa": PyTorch's CUDA flash kernel through its aten op (returns the LSE), per problem;
  fp16/bf16, head dim ≤ 256.
- "sdpa_efficient": PyTorch's CUDA memory-efficient kernel through its aten op (returns
  the LSE, padded to a multiple of 32 rows), per problem; also fp32.
- "cpu_flash": aten._scaled_dot_product_flash_attention_for_cpu and its backward. In this
  torch build it does accept a float attn_mask, but gives LSE 0 (not −inf) for a fully
  masked row and crashes (SIGFPE) on a zero-length sequence, so we never pass a mask or
  an empty problem; the ring schedule is mask-free by construction.
- "math": exact masked math in ≥ fp32; also `masked_attention` for arbitrary masks. It
  materialises [H, Nq, Nk] scores: O(S²) memory, so "auto" never picks it on a GPU (a 64k
  piece would need 16 GB per head); ask for it by name to check the others.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

KERNELS = ("auto", "flash_attn", "sdpa", "sdpa_efficient", "cpu_flash", "math")
FLASH_HEAD_DIM = 256  # the largest head dim of the flash kernels (flash-attn 2, SDPA flash)


@dataclass(frozen=True)
class Varlen:
    cu_q: tuple[int, ...]  # cumulative query rows, len = problems + 1
    cu_k: tuple[int, ...]
    causal: bool

    @property
    def problems(self) -> list[tuple[int, int, int, int]]:
        return [
            (self.cu_q[i], self.cu_q[i + 1], self.cu_k[i], self.cu_k[i + 1])
            for i in range(len(self.cu_q) - 1)
        ]


class Kernel(Protocol):
    name: str

    def forward(
        self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float
    ) -> tuple[Tensor, Tensor]: ...

    def backward(
        self,
        dout: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
        seg: Varlen,
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor]: ...


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _expand_kv(x: Tensor, heads: int) -> Tensor:
    """[N, Hkv, D] -> [N, H, D] by repeating each kv head H/Hkv times (GQA)."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _fold_kv(dx: Tensor, kv_heads: int) -> Tensor:
    """Inverse of _expand_kv for gradients: sums the replicas. [N, H, D] -> [N, Hkv, D]"""
    n, h, d = dx.shape
    return dx if h == kv_heads else dx.view(n, kv_heads, h // kv_heads, d).sum(2)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """Exact attention for any boolean mask [Nq, Nk] (True = may attend), in ≥ fp32.

    A fully masked row gives out 0 and LSE −inf (never NaN). Returns out [Nq, H, D] in the
    accumulation dtype and lse [Nq, H].
    """
    dt = _acc_dtype(q.dtype)
    kx, vx = _expand_kv(k, q.shape[1]).to(dt), _expand_kv(v, q.shape[1]).to(dt)
    s = torch.einsum("qhd,khd->hqk", q.to(dt), kx) * scale  # [H, Nq, Nk]
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [H, Nq]; −inf on fully masked rows
    p = torch.exp(s - lse.clamp_min(torch.finfo(dt).min).unsqueeze(-1))  # exp(−inf) = 0 there
    out = torch.einsum("hqk,khd->qhd", p, vx)
    return out, lse.transpose(0, 1)


def _causal_mask(nq: int, nk: int, causal: bool, device: torch.device) -> Tensor:
    if not causal:
        return torch.ones(nq, nk, dtype=torch.bool, device=device)
    return torch.ones(nq, nk, dtype=torch.bool, device=device).tril()


class MathKernel:
    name = "math"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float) -> tuple[Tensor, Tensor]:
        out = q.new_zeros(q.shape, dtype=_acc_dtype(q.dtype))
        lse = q.new_full((q.shape[0], q.shape[1]), float("-inf"), dtype=torch.float32)
        for q0, q1, k0, k1 in seg.problems:
            mask = _causal_mask(q1 - q0, k1 - k0, seg.causal, q.device)
            o, lse_i = masked_attention(q[q0:q1], k[k0:k1], v[k0:k1], mask, scale)
            out[q0:q1], lse[q0:q1] = o, lse_i.float()
        return out.to(q.dtype), lse

    def backward(
        self,
        dout: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
        seg: Varlen,
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dt = _acc_dtype(q.dtype)
        h = q.shape[1]
        dq = torch.zeros(q.shape, dtype=dt, device=q.device)
        dk = torch.zeros(k.shape, dtype=dt, device=q.device)
        dv = torch.zeros(v.shape, dtype=dt, device=q.device)
        for q0, q1, k0, k1 in seg.problems:
            qi, do, oi = q[q0:q1].to(dt), dout[q0:q1].to(dt), out[q0:q1].to(dt)
            ki, vi = _expand_kv(k[k0:k1], h).to(dt), _expand_kv(v[k0:k1], h).to(dt)
            s = torch.einsum("qhd,khd->hqk", qi, ki) * scale
            mask = _causal_mask(q1 - q0, k1 - k0, seg.causal, q.device)
            # probabilities under the final (merged) normaliser: exactly this block's share
            p = torch.exp(s - lse[q0:q1].to(dt).transpose(0, 1).unsqueeze(-1)).masked_fill(~mask, 0.0)
            dp = torch.einsum("qhd,khd->hqk", do, vi)
            delta = (do * oi).sum(-1).transpose(0, 1).unsqueeze(-1)  # [H, Nq, 1]
            ds = p * (dp - delta) * scale
            dq[q0:q1] = torch.einsum("hqk,khd->qhd", ds, ki)
            dk[k0:k1] += _fold_kv(torch.einsum("hqk,qhd->khd", ds, qi), k.shape[1])
            dv[k0:k1] += _fold_kv(torch.einsum("hqk,qhd->khd", p, do), v.shape[1])
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _bhsd(x: Tensor) -> Tensor:
    """[S, H, D] -> [1, H, S, D] view (the aten SDPA ops take batch-first heads)."""
    return x.transpose(0, 1).unsqueeze(0)


def _shd(x: Tensor) -> Tensor:
    """[1, H, S, D] -> [S, H, D]."""
    return x.squeeze(0).transpose(0, 1)


class CpuFlashKernel:
    """aten's CPU flash attention; handles GQA natively (repeat_kv head mapping)."""

    name = "cpu_flash"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        for q0, q1, k0, k1 in seg.problems:
            o, lse_i = op(_bhsd(q[q0:q1]), _bhsd(k[k0:k1]), _bhsd(v[k0:k1]), 0.0, seg.causal, scale=scale)
            out[q0:q1], lse[q0:q1] = _shd(o), lse_i[0].transpose(0, 1)
        return out, lse

    def backward(
        self,
        dout: Tensor,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        out: Tensor,
        lse: Tensor,
        seg: Varlen,
        scale: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
        for q0, q1, k0, k1 in seg.problems:
            lse_i = lse[q0:q1].transpose(0, 1).unsqueeze(0).contiguous()  # [1, H, Nq]
            g = op(
                _bhsd(dout[q0:q1]),
                _bhsd(q[q0:q1]),
                _bhsd(k[k0:k1]),
                _bhsd(v[k0:k1]),
                _bhsd(out[q0:q1]),
                lse_i,
                0.0,
                seg.causal,
                scale=scale,
            )
            dq[q0:q1] = _shd(g[0])
            dk[k0:k1] += _shd(g[1])
            dv[k0:k1] += _shd(g[2])
        return dq, dk, dv


def _has_flash_attn() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


class KernelChoiceError(ValueError):
    """No attention kernel fits the tensors (device, dtype, head dim); the message says why."""


def auto_kernel(device_type: str, dtype: torch.dtype, head_dim: int, flash_attn: bool) -> str:
    """What "auto" runs (pure). On a GPU never the O(S²) math kernel: flash-attn's varlen
    kernels, else SDPA's flash kernel, else its memory-efficient one, else an error."""
    if device_type != "cuda":
        return "cpu_flash"
    half = dtype in (torch.float16, torch.bfloat16)
    if half and head_dim <= FLASH_HEAD_DIM:
        return "flash_attn" if flash_attn else "sdpa"
    if dtype in (torch.float32, torch.float16, torch.bfloat16):
        return "sdpa_efficient"
    raise KernelChoiceError(
        f"no GPU attention kernel for {dtype} with head dim {head_dim}: flash-attn and SDPA's flash "
        f"kernel take fp16/bf16 up to head dim {FLASH_HEAD_DIM}, SDPA's memory-efficient kernel "
        "fp32/fp16/bf16; train in bf16 (the default on GPU) or name kernel='math' to accept O(S²) memory"
    )


def select_kernel(name: str, q: Tensor) -> Kernel:
    """The one place a kernel is chosen ("auto": `auto_kernel`); a named kernel is checked
    against the device it needs."""
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, got {name!r}")
    if name == "auto":
        name = auto_kernel(q.device.type, q.dtype, q.shape[-1], _has_flash_attn())
    if name in ("flash_attn", "sdpa", "sdpa_efficient"):
        from . import cuda_kernels  # the GPU kernels live apart; they import this module's helpers

        if name == "flash_attn":
            return cuda_kernels.FlashAttnKernel()
        if not q.is_cuda:
            raise ValueError(f"kernel {name!r} needs CUDA tensors")
        return cuda_kernels.SdpaCudaKernel() if name == "sdpa" else cuda_kernels.SdpaEfficientKernel()
    if name == "cpu_flash":
        if q.is_cuda:
            raise ValueError("kernel 'cpu_flash' needs CPU tensors")
        return CpuFlashKernel()
    return MathKernel()
