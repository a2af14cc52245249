"""The GPU attention kernels behind kernels.py's varlen interface (shapes and contract there).

- SdpaCudaKernel: PyTorch's CUDA flash kernel through its aten op (returns the LSE), per
  problem; fp16/bf16, head dim ≤ 256.
- SdpaEfficientKernel: PyTorch's CUDA memory-efficient kernel through its aten op (also
  fp32; the LSE comes padded to a multiple of 32 rows and its backward reads it that way).
- FlashAttnKernel: flash-attn's varlen internals, one call per pass, native GQA.

Chosen by kernels.select_kernel only. Their numerics need a GPU (`make gpu-check`); their
device handling runs on the CPU under a fake CUDA device (`pytest -m device`).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
from typing import Any

import torch
from torch import Tensor

from .kernels import Varlen, _bhsd, _expand_kv, _fold_kv, _shd


class SdpaCudaKernel:
    """PyTorch's CUDA flash kernel via aten (fp16/bf16, head dim ≤ 256), per problem.

    The aten op has no GQA, so kv heads are expanded here and their gradients summed.
    """

    name = "sdpa"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
        h = q.shape[1]
        for q0, q1, k0, k1 in seg.problems:
            res = torch.ops.aten._scaled_dot_product_flash_attention(
                _bhsd(q[q0:q1]),
                _bhsd(_expand_kv(k[k0:k1], h)),
                _bhsd(_expand_kv(v[k0:k1], h)),
                0.0,
                seg.causal,
                False,
                scale=scale,
            )
            out[q0:q1], lse[q0:q1] = _shd(res[0]), res[1][0, :, : q1 - q0].transpose(0, 1)
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
        h = q.shape[1]
        no_rng = torch.empty(0, dtype=torch.int64, device=q.device)  # dropout 0: never read
        for q0, q1, k0, k1 in seg.problems:
            g = torch.ops.aten._scaled_dot_product_flash_attention_backward(
                _bhsd(dout[q0:q1]).contiguous(),
                _bhsd(q[q0:q1]).contiguous(),
                _bhsd(_expand_kv(k[k0:k1], h)).contiguous(),
                _bhsd(_expand_kv(v[k0:k1], h)).contiguous(),
                _bhsd(out[q0:q1]).contiguous(),
                lse[q0:q1].transpose(0, 1).unsqueeze(0).contiguous(),
                None,
                None,
                q1 - q0,
                k1 - k0,
                0.0,
                seg.causal,
                no_rng,
                no_rng,
                scale=scale,
            )
            dq[q0:q1] = _shd(g[0])
            dk[k0:k1] += _fold_kv(_shd(g[1]), k.shape[1])
            dv[k0:k1] += _fold_kv(_shd(g[2]), v.shape[1])
        return dq, dk, dv


class SdpaEfficientKernel:
    """PyTorch's CUDA memory-efficient kernel via aten (fp32/fp16/bf16), per problem.

    Its LSE comes back as [1, H, ⌈Nq/32⌉·32] (rows padded for the kernel's alignment); the
    backward takes it in that layout, so the final LSE of the ring is padded the same way.
    The aten op has no GQA, so kv heads are expanded here and their gradients summed.
    """

    name = "sdpa_efficient"
    ALIGN = 32

    def forward(self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float) -> tuple[Tensor, Tensor]:
        out = torch.empty_like(q)
        lse = q.new_empty((q.shape[0], q.shape[1]), dtype=torch.float32)
        h = q.shape[1]
        for q0, q1, k0, k1 in seg.problems:
            res = torch.ops.aten._scaled_dot_product_efficient_attention(
                _bhsd(q[q0:q1]),
                _bhsd(_expand_kv(k[k0:k1], h)),
                _bhsd(_expand_kv(v[k0:k1], h)),
                None,
                True,
                0.0,
                seg.causal,
                scale=scale,
            )
            out[q0:q1], lse[q0:q1] = _shd(res[0]), res[1][0, :, : q1 - q0].transpose(0, 1)
        return out, lse

    def _padded_lse(self, lse: Tensor) -> Tensor:
        """[n, H] → [1, H, ⌈n/32⌉·32], the layout the backward reads."""
        n = lse.shape[0]
        pad = -(-n // self.ALIGN) * self.ALIGN - n
        return torch.nn.functional.pad(lse.transpose(0, 1), (0, pad)).unsqueeze(0).contiguous()

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
        h = q.shape[1]
        no_rng = torch.empty(0, dtype=torch.int64, device=q.device)  # dropout 0: never read
        for q0, q1, k0, k1 in seg.problems:
            g = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
                _bhsd(dout[q0:q1]).contiguous(),
                _bhsd(q[q0:q1]).contiguous(),
                _bhsd(_expand_kv(k[k0:k1], h)).contiguous(),
                _bhsd(_expand_kv(v[k0:k1], h)).contiguous(),
                None,
                _bhsd(out[q0:q1]).contiguous(),
                self._padded_lse(lse[q0:q1].float()),
                no_rng,
                no_rng,
                0.0,
                [True, True, True, False],
                seg.causal,
                scale=scale,
            )
            dq[q0:q1] = _shd(g[0])
            dk[k0:k1] += _fold_kv(_shd(g[1]), k.shape[1])
            dv[k0:k1] += _fold_kv(_shd(g[2]), v.shape[1])
        return dq, dk, dv


def _call(fn: Any, **kwargs: Any) -> Any:
    """Calls a flash-attn internal with the keyword arguments its version knows about (they
    gained and renamed arguments across 2.x: window_size became window_size_left/right).
    From 2.7 they are torch custom ops, whose own signature is (*args, **kwargs): read the
    wrapped function's."""
    params = inspect.signature(getattr(fn, "_init_fn", fn)).parameters
    if "window_size" in kwargs and "window_size" not in params:
        left, right = kwargs.pop("window_size")
        kwargs["window_size_left"], kwargs["window_size_right"] = left, right
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


class FlashAttnKernel:
    """flash-attn ≥ 2.4 varlen internals: one call per pass, native GQA, LSE [H, Nq]."""

    name = "flash_attn"

    def __init__(self) -> None:
        self._fa = importlib.import_module("flash_attn.flash_attn_interface")

    @staticmethod
    def _cu(cu: tuple[int, ...], device: torch.device) -> Tensor:
        return torch.tensor(cu, dtype=torch.int32, device=device)

    @staticmethod
    def _max(cu: tuple[int, ...]) -> int:
        return max(b - a for a, b in itertools.pairwise(cu))

    def _segments(self, seg: Varlen, device: torch.device, scale: float) -> dict[str, Any]:
        """The arguments flash-attn's varlen forward and backward share."""
        return {
            "cu_seqlens_q": self._cu(seg.cu_q, device),
            "cu_seqlens_k": self._cu(seg.cu_k, device),
            "max_seqlen_q": self._max(seg.cu_q),
            "max_seqlen_k": self._max(seg.cu_k),
            "dropout_p": 0.0,
            "softmax_scale": scale,
            "causal": seg.causal,
            "window_size": (-1, -1),
            "softcap": 0.0,
            "alibi_slopes": None,
        }

    def forward(self, q: Tensor, k: Tensor, v: Tensor, seg: Varlen, scale: float) -> tuple[Tensor, Tensor]:
        res = _call(
            self._fa._flash_attn_varlen_forward,
            q=q,
            k=k,
            v=v,
            **self._segments(seg, q.device, scale),
            return_softmax=False,
            block_table=None,
        )
        # 2.4–2.6 return (out, q, k, v, out_padded, lse, S, rng); ≥ 2.7 return (out, lse, S, rng)
        out, lse = (res[0], res[5]) if len(res) == 8 else (res[0], res[1])
        if lse.dim() != 2:
            raise RuntimeError(f"flash-attn returned a padded LSE {tuple(lse.shape)}; need flash-attn ≥ 2.4")
        return out, lse.transpose(0, 1).float()

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
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        _call(
            self._fa._flash_attn_varlen_backward,
            dout=dout.contiguous(),
            q=q,
            k=k,
            v=v,
            out=out.contiguous(),
            softmax_lse=lse.transpose(0, 1).contiguous(),
            dq=dq,
            dk=dk,
            dv=dv,
            **self._segments(seg, q.device, scale),
            deterministic=False,
            rng_state=None,
        )
        return dq, dk, dv
