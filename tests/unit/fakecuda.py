"""A CUDA device on a machine without one, for the device-discipline tests (`-m device`).

`HostDeviceMode` is torch's FakeTensorMode with one change: an op that touches no fake
tensor and asks for no non-CPU device runs for real. So the host stays real (the planning
code's `nonzero`, `tolist`, its CPU collectives), while everything created on or moved to
"cuda" is a FakeTensor whose device torch tracks exactly as on a GPU: an op that mixes it
with a CPU tensor (other than a 0-dim scalar) raises FakeTensorDeviceMismatchError, as
CUDA would. A device value read on the host (`float(loss)`, `.item()`) cannot be known
without the device; it reads as 1 (the tests assert on devices, never on such values).
Stricter than CUDA in one way: a device tensor indexed with a CPU index tensor fails (CUDA
copies the index over and waits for it: a hidden transfer and sync in the step).

`backward` stands in for `Tensor.backward`: torch's autograd engine needs a CUDA context
to run a graph of CUDA tensors (pytorch#92627), which no CPU machine can create, so it
calls the graph's nodes itself, in dependency order, as the engine would (no hooks: the
tests run without FSDP and activation checkpointing, which rely on them).

`fake_world` is a process group of the "fake" backend: every collective completes at once
without peers; host all-gathers return this rank's value from every rank, reductions this
rank's value. Batches for it are chosen so that every rank would report the same.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorDeviceMismatchError, FakeTensorMode
from torch.testing._internal.distributed.fake_pg import FakeStore
from torch.utils import _pytree as pytree

CUDA = torch.device("cuda", 0)
INDEX_OPS = {
    torch.ops.aten.index.Tensor,
    torch.ops.aten.index_put.default,
    torch.ops.aten.index_put_.default,
    torch.ops.aten._index_put_impl_.default,
}


class HostDeviceMode(FakeTensorMode):
    def __init__(self) -> None:
        super().__init__(allow_non_fake_inputs=True)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        leaves = pytree.arg_tree_leaves(*args, **kwargs)
        fake = any(isinstance(t, FakeTensor) for t in leaves)
        device = kwargs.get("device")
        if not fake and (device is None or torch.device(device).type == "cpu"):
            return func(*args, **kwargs)  # host: real
        if func is torch.ops.aten._local_scalar_dense.default:
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
        if func in INDEX_OPS and _host_index(args):
            raise FakeTensorDeviceMismatchError(func, args[0].device, torch.device("cpu"))
        return super().__torch_dispatch__(func, types, args, kwargs)


def _host_index(args: Any) -> bool:
    """A device tensor indexed with a CPU index tensor: CUDA accepts it by copying the index
    to the device and waiting for it, a host-to-device transfer in the step; refused here."""
    target, indices = args[0], args[1]
    return (
        isinstance(target, FakeTensor)
        and target.device.type != "cpu"
        and any(
            isinstance(i, torch.Tensor) and i.device.type == "cpu" and i.dim() > 0
            for i in indices
            if i is not None
        )
    )


def backward(root: torch.Tensor, grad: torch.Tensor | None = None, **_: Any) -> None:
    """root.backward(grad), node by node (see the module docstring)."""
    start = root.grad_fn
    if start is None:
        raise RuntimeError("element 0 of tensors does not require grad and does not have a grad_fn")
    deps: dict[Any, int] = defaultdict(int)
    stack, seen = [start], {start}
    while stack:
        node = stack.pop()
        for nxt, _ in node.next_functions:
            if nxt is not None:
                deps[nxt] += 1
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
    pending: dict[Any, dict[int, torch.Tensor]] = {
        start: {0: grad if grad is not None else torch.ones_like(root)}
    }
    ready = [start]
    with torch.no_grad():  # as the engine without create_graph: gradients carry no graph
        _run(ready, pending, deps)


def _run(ready: list[Any], pending: dict[Any, dict[int, torch.Tensor]], deps: dict[Any, int]) -> None:
    while ready:
        node = ready.pop()
        got = pending.pop(node, {})
        args = [
            got[i] if got.get(i) is not None else torch.zeros(m.shape, dtype=m.dtype, device=m.device)
            for i, m in enumerate(node._input_metadata)
        ]
        out = node(*args) if callable(node) else node.apply(*args)
        outs = out if isinstance(out, tuple) else (out,)
        for (nxt, slot), g in zip(node.next_functions, outs, strict=False):
            if nxt is None:
                continue
            if g is not None:
                g = _validated(g, nxt._input_metadata[slot])
                have = pending.setdefault(nxt, {})
                have[slot] = g if slot not in have else have[slot] + g
            deps[nxt] -= 1
            if deps[nxt] == 0:
                ready.append(nxt)


def _validated(grad: torch.Tensor, meta: Any) -> torch.Tensor:
    """What the engine's validate_outputs does: sum a broadcast gradient back to the input's
    shape, cast it to the input's dtype, and refuse one on another device."""
    if grad.device != meta.device:
        raise RuntimeError(f"invalid gradient: expected device {meta.device} but got {grad.device}")
    if list(grad.shape) != list(meta.shape):
        grad = grad.sum_to_size(meta.shape)
    return grad if grad.dtype == meta.dtype else grad.to(meta.dtype)


@contextmanager
def fake_world(world: int, rank: int) -> Iterator[None]:
    """The default process group of the fake backend for the duration of the block."""
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()
