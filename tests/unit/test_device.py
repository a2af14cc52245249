"""Device discipline without a GPU: a whole training step, the prefill and the attention run
with the compute groups on a fake CUDA device (fakecuda.py), so any tensor of the step left
on the CPU, and any collective handed a tensor off its group's device, fails here.

World 8 = dp 2 × ring 2 × Ulysses 2 on the "fake" backend, seen from rank 5 (dp rank 1,
ring rank 0, Ulysses rank 1): every kind of group has peers. The host side (planning,
metadata collectives) runs for real on the CPU. What these tests cannot reach is listed in
docs/training.md ("Device discipline").
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from fakecuda import CUDA, HostDeviceMode, backward, fake_world
from longvila_contract.layout import ParallelLayout
from longvila_trainer import loop
from longvila_trainer.attention import AttentionContext, usp_attention
from longvila_trainer.attention.kernels import KernelChoiceError, auto_kernel, select_kernel
from longvila_trainer.eval.prefill import prefill
from longvila_trainer.model.longvila import LongVILA, PackedBatch, build_longvila
from longvila_trainer.model.presets import TINY
from longvila_trainer.parallel import comm
from longvila_trainer.parallel.groups import SPGroups, build_groups
from longvila_trainer.parallel.token_layout import plan_tokens
from longvila_trainer.sharding.frames import IGNORE_INDEX
from torch._subclasses.fake_tensor import FakeTensor

pytestmark = pytest.mark.device

WORLD, RANK = 8, 5
LAYOUT = ParallelLayout(WORLD, ulysses=2, ring=2)  # dp 2


@pytest.fixture
def world() -> Iterator[SPGroups]:
    with fake_world(WORLD, RANK):
        yield build_groups(LAYOUT, check_hosts=False, device=CUDA)


def video_batch(seed: int = 1) -> PackedBatch:
    """A video of 4 equal frames (one per SP rank, so every rank reports the same counts over
    the fake backend) with a question and an answer, and a text document."""
    g = torch.Generator().manual_seed(seed)
    m = TINY.media_token_id
    prompt = [*torch.randint(0, m, (3,), generator=g).tolist(), *[m] * 4, 5]
    answer = torch.randint(0, m, (6,), generator=g).tolist()
    text = torch.randint(0, m, (13,), generator=g).tolist()
    ids = torch.tensor(prompt + answer + text)
    labels = torch.tensor([IGNORE_INDEX] * len(prompt) + answer + text)
    frames = tuple(torch.randn(3, 56, 56, generator=g) for _ in range(4))
    return PackedBatch(ids, labels, (len(prompt) + len(answer), len(text)), frames)


def text_batch(seed: int = 2) -> PackedBatch:
    ids = torch.randint(0, TINY.media_token_id, (29,), generator=torch.Generator().manual_seed(seed))
    return PackedBatch(ids, ids.clone(), (17, 12), ())


def on_device(t: torch.Tensor | None) -> bool:
    return isinstance(t, FakeTensor) and t.device == CUDA


def device_model() -> LongVILA:
    model = build_longvila(TINY, seed=0)  # the host builds it, as train.py does; then to the device
    return model.to(CUDA)


def test_a_training_step_keeps_every_tensor_on_the_device(
    world: SPGroups, monkeypatch: pytest.MonkeyPatch
) -> None:
    """loop.train_step as train.py runs it without FSDP: two micro-steps (video, text only),
    backward, gradient sum over the world, clipping, AdamW, the logged figures."""
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    with HostDeviceMode():
        model = device_model()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        batches = iter([video_batch(), text_batch()])
        stats = loop.train_step(
            model, optimizer, batches, world, kind="zigzag", accum=2, clip=1.0, lr=1e-3, tokens_per_frame=4
        )
        memory = loop.max_over_ranks({"rss_peak_mib": 100.0}, world)
    # the fake backend's all-gather hands this rank's counts back for both dp ranks
    assert stats.n_targets == 2 * (video_batch().n_targets + text_batch().n_targets)
    assert memory == {"rss_peak_mib": 100.0}
    for name, p in model.named_parameters():
        assert on_device(p), name
        assert on_device(p.grad), name
        assert all(on_device(v) for k, v in optimizer.state[p].items() if k != "step"), name


def test_a_rank_without_frames_runs_the_tower_on_the_device(world: SPGroups) -> None:
    """A text-only pack while another dp group's pack has frames: the tower runs on a zero frame."""
    with HostDeviceMode():
        model = device_model()
        x = model.shard_inputs(text_batch(), world, "zigzag", calls=1)
    assert on_device(x.idle) and on_device(x.embeds) and on_device(x.position_ids)
    assert not isinstance(x.targets, FakeTensor)  # planning metadata stays on the host


def test_prefill_runs_on_the_device_and_returns_host_logits(world: SPGroups) -> None:
    with HostDeviceMode(), torch.no_grad():
        out = prefill(device_model(), video_batch(), world, "zigzag")
    assert out.logits.device.type == "cpu" and out.logits.shape[1] == TINY.llm["vocab_size"]


@pytest.mark.parametrize(("dtype", "kernel"), [(torch.bfloat16, "sdpa"), (torch.float32, "sdpa_efficient")])
def test_attention_on_the_device_uses_a_gpu_kernel(
    world: SPGroups, dtype: torch.dtype, kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 2D attention forward and backward (all-to-alls, ring P2P, kernel pieces, LSE merge)
    with CUDA tensors, bf16 through SDPA's flash kernel and fp32 through its efficient one."""
    tokens = plan_tokens([37, 60], 2, 2, "zigzag")
    ctx = AttentionContext(world, tokens)
    with HostDeviceMode():
        q, k, v = (
            torch.randn(tokens.shard_len, h, 16, device=CUDA, dtype=dtype, requires_grad=True)
            for h in (4, 2, 2)
        )
        assert select_kernel("auto", q).name == kernel
        out = usp_attention(q, k, v, ctx)
        backward(out.float().sum())
    assert on_device(out) and all(on_device(t.grad) for t in (q, k, v))


def test_auto_never_picks_the_math_kernel_on_a_gpu() -> None:
    assert auto_kernel("cuda", torch.bfloat16, 128, flash_attn=True) == "flash_attn"
    assert auto_kernel("cuda", torch.bfloat16, 128, flash_attn=False) == "sdpa"
    assert auto_kernel("cuda", torch.float32, 128, flash_attn=True) == "sdpa_efficient"
    assert auto_kernel("cuda", torch.bfloat16, 512, flash_attn=True) == "sdpa_efficient"
    assert auto_kernel("cpu", torch.float32, 128, flash_attn=False) == "cpu_flash"
    with pytest.raises(KernelChoiceError, match="float64"):
        auto_kernel("cuda", torch.float64, 128, flash_attn=True)


def test_a_collective_refuses_a_tensor_off_its_groups_device(world: SPGroups) -> None:
    assert world.sp is not None and world.host.sp is not None
    with pytest.raises(comm.DeviceMismatchError, match=r"all_reduce over the sp group.*on cpu.*cuda:0"):
        comm.all_reduce(torch.zeros(3), world.sp)
    with pytest.raises(comm.DeviceMismatchError, match="host metadata goes over a CPU group, not the sp"):
        comm.host_all_reduce([1.0], world.sp)
    assert comm.host_all_reduce([2.0, 3.0], world.host.sp) == [2.0, 3.0]  # fake backend: this rank's


TENSOR_COLLECTIVES = {
    "all_reduce", "all_gather", "all_gather_into_tensor", "all_to_all", "all_to_all_single", "broadcast",
    "reduce", "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "isend", "irecv", "send",
    "recv", "batch_isend_irecv", "P2POp", "all_gather_object", "broadcast_object_list", "barrier",
}  # fmt: skip


def test_every_collective_goes_through_the_comm_layer() -> None:
    """No module of the trainer but parallel/comm.py calls torch.distributed's collectives.

    One exception: the network benchmark's probes (bench/network_jobs.py) time raw gloo
    collectives on CPU tensors by design; they never run on a GPU."""
    root = Path(__file__).resolve().parents[2] / "trainer" / "longvila_trainer"
    exempt = {root / "parallel" / "comm.py", root / "bench" / "network_jobs.py"}
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path in exempt:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in TENSOR_COLLECTIVES
                and isinstance(node.value, ast.Name)
                and node.value.id == "dist"
            ):
                offenders.append(f"{path.relative_to(root)}:{node.lineno} dist.{node.attr}")
    assert not offenders, offenders


def test_the_fake_world_is_gone_afterwards() -> None:
    """The fixture tears its process group down: later tests start without one."""
    with fake_world(2, 0):
        assert dist.is_initialized()
    assert not dist.is_initialized()
