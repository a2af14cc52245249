"""LongVILA: SigLIP vision tower + projector + a stock Qwen2 causal LM, trained under MM-SP.

One step on one SP rank (every rank of the group holds the same packed batch):

  0. host metadata over the dp group's CPU twin: the step's target count and how many
     vision-tower calls every rank makes (the tower's FSDP collectives span every rank);
  1. stage 1: encode this rank's share of the frames (vision tower, projector);
     all-gather each frame's measured token count (host metadata);
  2. lay the fused sequence out in metadata (placeholder → frame rows), plan the tokens
     over the SP group (TokenLayout), and shift the labels globally; this is index
     arithmetic on the host, moved to the rank's device in one place (ShardPlan.to);
  3. stage 2: embed the text rows this rank owns, receive its visual rows through the
     autograd all-to-all, zero the padding;
  4. run the LLM on the shard with global position ids; attention is `usp_attention`,
     reached through transformers' attention registry with the context in the kwargs;
  5. CE summed over the local targets (head and loss fused, chunked: head_loss.py); the
     divisor is the global target count.

Every tensor of steps 1 and 3–5 lives on `groups.device`; the batch arrives on the host.
The returned loss of each rank is a partial: the step's loss is the sum over ranks, and
so is the gradient (`sharding.targets.sum_gradients`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from ..attention.context import AttentionContext
from ..hf_attention import CONTEXT_KWARG, register_usp_attention
from ..parallel.groups import SPGroups
from ..parallel.token_layout import Kind, TokenLayout, plan_tokens
from ..sharding.exchange import assemble_shard, exchange_rows, plan_shard
from ..sharding.frames import (
    IGNORE_INDEX,
    expand_media,
    frame_runs,
    gather_frame_tokens,
    split_frames,
    tower_calls,
)
from ..sharding.targets import count_targets, loss_sum, shard, shift_targets, step_counts, to_padded
from .head_loss import head_ce_sum
from .presets import ModelPreset
from .projector import Projector
from .vision import VisionTower


@dataclass(frozen=True)
class PackedBatch:
    """One packed sequence of documents, identical on every rank of an SP group. It stays on
    the host: ids and labels are planning metadata, and each rank moves only the frames it
    encodes to its device."""

    input_ids: torch.Tensor  # [N] long; one media placeholder per frame
    labels: torch.Tensor  # [N] long; label of each position (unshifted), IGNORE where untrained
    doc_lens: tuple[int, ...]  # documents' lengths in input_ids
    frames: tuple[torch.Tensor, ...]  # [3, H, W] per placeholder, in order; sizes may differ

    @property
    def n_targets(self) -> int:
        """Targets of the batch from its labels alone (expanding a placeholder into its frame's
        rows adds only IGNORE labels, so this equals the fused sequence's count)."""
        return count_targets(shift_targets(self.labels, self.doc_lens))


@dataclass(frozen=True)
class LossParts:
    loss_sum: torch.Tensor  # scalar fp32: this rank's summed CE, always in the graph
    n_targets: int  # targets in the whole step (all SP ranks, all dp groups)
    n_local: int  # targets in this rank's shard (0 is normal: e.g. a shard of video only)

    @property
    def loss(self) -> torch.Tensor:
        """This rank's share of the step's mean loss (shares add up over ranks)."""
        return self.loss_sum / max(self.n_targets, 1)


@dataclass(frozen=True)
class ShardInputs:
    """One rank's LLM inputs for a packed batch, after stages 1 and 2."""

    tokens: TokenLayout  # where every token of the fused sequence lives
    targets: torch.Tensor  # [total] long, host: labels shifted globally, over the padded sequence
    embeds: torch.Tensor  # [L, D] this rank's shard, on the device
    position_ids: torch.Tensor  # [L] global RoPE positions, on the device
    fused_len: int  # tokens of the fused sequence (text + visual rows, no SP padding)
    idle: torch.Tensor | None  # 0 × the tower's output on a rank without frames (see _idle_vision)


class LongVILA(nn.Module):
    def __init__(self, vision: VisionTower, projector: Projector, llm: Qwen2ForCausalLM, media_token_id: int):
        super().__init__()
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.media_token_id = media_token_id

    @property
    def hidden_size(self) -> int:
        return int(self.llm.config.hidden_size)

    def encode(
        self, frames: Sequence[torch.Tensor], device: torch.device | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """Frames (host) → their LLM tokens concatenated in frame order [Σ T_f, D] on `device`
        (default: the projector's), and each T_f (from the output's shape: no wait for the device).

        Runs of same-sized frames go through the tower as one batch, in the tower's compute
        dtype (bf16 under FSDP2 mixed precision: its embedding is not a sharded layer, whose
        inputs FSDP would cast).
        """
        parts: list[torch.Tensor] = []
        counts: list[int] = []
        dtype, device = self.vision.dtype, device or self.projector.fc2.weight.device
        start = 0
        while start < len(frames):
            stop = start + 1
            while stop < len(frames) and frames[stop].shape == frames[start].shape:
                stop += 1
            pixels = torch.stack(list(frames[start:stop])).to(device, dtype)  # [B, 3, H, W]
            grid = self.vision.grid(pixels)
            tokens = self.projector(self.vision(pixels), grid)  # [B, T, D]
            parts += list(tokens)
            counts += [tokens.shape[1]] * tokens.shape[0]
            start = stop
        if not parts:
            weight = self.projector.fc2.weight
            return weight.new_zeros(0, self.hidden_size), counts
        return torch.cat(parts), counts  # [Σ T_f, D]

    def visual_needs_grad(self) -> bool:
        """Whether visual rows carry gradient; the same on every rank (parameters, not data)."""
        trainable = any(p.requires_grad for p in (*self.vision.parameters(), *self.projector.parameters()))
        return torch.is_grad_enabled() and trainable

    def shard_inputs(
        self, batch: PackedBatch, groups: SPGroups, kind: Kind = "zigzag", calls: int | None = None
    ) -> ShardInputs:
        """Stages 1 and 2 for this rank: its LLM inputs, shared by training and prefill.

        `calls`: vision-tower calls this rank makes (the ones its frames do not need run on a
        zero frame); default: what the SP group needs for this batch (`tower_calls`).
        """
        layout, device = groups.layout, groups.device
        sp, sp_rank = layout.sp, groups.sp_rank
        n_frames = len(batch.frames)
        shapes = [tuple(f.shape) for f in batch.frames]

        # Stage 1: this rank's frames only; counts measured, then shared (host metadata).
        mine = split_frames(n_frames, sp)[sp_rank]
        encoded, counts = self.encode(batch.frames[mine.start : mine.stop], device)  # [n_local, D]
        spare = (tower_calls(shapes, sp) if calls is None else calls) - frame_runs(
            shapes[mine.start : mine.stop]
        )
        idle = self._idle_vision(batch, device, spare) if spare > 0 else None
        frame_tokens = gather_frame_tokens(counts, n_frames, sp, groups.host.sp)

        # The global sequence, in metadata, identical on every rank; then its indices to the device.
        seq = expand_media(batch.input_ids, batch.labels, batch.doc_lens, self.media_token_id, frame_tokens)
        tokens = plan_tokens(seq.doc_lens, layout.ulysses, layout.ring, kind)
        plan = plan_shard(seq, tokens, sp_rank).to(device)
        targets = to_padded(shift_targets(seq.labels, seq.doc_lens), tokens, IGNORE_INDEX)  # [total]

        # Stage 2: text embedded where it lives; visual rows moved with their gradient.
        visual = exchange_rows(encoded, plan, groups.sp, self.visual_needs_grad())  # [n_in, D]
        text = self.llm.get_input_embeddings()(plan.text_ids)  # [n_text, D]
        embeds = assemble_shard(plan, text, visual, self.hidden_size)  # [L, D]
        return ShardInputs(tokens, targets, embeds, plan.position_ids, sum(seq.doc_lens), idle)

    def _llm_kwargs(self, x: ShardInputs, groups: SPGroups) -> dict[str, object]:
        return {
            "inputs_embeds": x.embeds.unsqueeze(0),  # [1, L, D]
            "position_ids": x.position_ids.unsqueeze(0),  # [1, L], global RoPE positions
            "use_cache": False,
            CONTEXT_KWARG: AttentionContext(groups=groups, tokens=x.tokens),
        }

    def lm_logits(self, x: ShardInputs, groups: SPGroups, keep: torch.Tensor) -> torch.Tensor:
        """The LLM on this rank's shard; the LM head only on local rows `keep`. [n_keep, V]"""
        out = self.llm(**self._llm_kwargs(x, groups), logits_to_keep=keep.to(x.embeds.device))
        logits: torch.Tensor = out.logits[0]
        return logits

    def forward(self, batch: PackedBatch, groups: SPGroups, kind: Kind = "zigzag") -> LossParts:
        # One host exchange over dp: the step's divisor, and the tower calls of every rank.
        shapes = [tuple(f.shape) for f in batch.frames]
        n_targets, calls = step_counts(batch.n_targets, tower_calls(shapes, groups.layout.sp), groups)
        x = self.shard_inputs(batch, groups, kind, calls)
        local_targets = shard(x.targets, x.tokens, groups.sp_rank)  # [L], host
        keep = torch.nonzero(local_targets != IGNORE_INDEX).squeeze(1)  # [n_keep]: rows with a target
        hidden = self.llm.model(**self._llm_kwargs(x, groups)).last_hidden_state[0]  # [L, D]
        rows = hidden.index_select(0, keep.to(groups.device))  # [n_keep, D]
        total = self._head_loss(rows, local_targets[keep].to(groups.device))
        if x.idle is not None:
            total = total + x.idle
        return LossParts(total, n_targets, int(keep.numel()))

    def _head_loss(self, rows: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Σ CE of the head on `rows` [n, D] against `targets` [n]: fused and chunked for the
        plain head, unfused for a wrapped one (LoRA on lm_head)."""
        head = self.llm.lm_head
        if isinstance(head, nn.Linear) and head.bias is None:
            return head_ce_sum(rows, head.weight, targets)
        return loss_sum(head(rows), targets)

    def _idle_vision(self, batch: PackedBatch, device: torch.device, calls: int) -> torch.Tensor:
        """`calls` extra runs of the tower and projector on a zero frame, whose output enters
        the loss × 0 (an exact zero, in the graph).

        With more ranks than frames, frames of several sizes (one tower call per size run),
        or a text-only pack while another dp group's pack has frames, ranks differ in how
        often they call the tower; under FSDP each call is a round of all-gathers (and, in
        the backward, reduce-scatters) over every rank, so every rank makes the same number
        of calls, or the others wait forever.
        """
        if batch.frames:
            frame = torch.zeros_like(batch.frames[0])  # [3, H, W]
        else:
            side = self.vision.image_size
            frame = torch.zeros(3, side, side)
        total = torch.zeros((), device=device)
        for _ in range(calls):
            dummy, _ = self.encode([frame], device)
            total = total + (dummy * 0.0).sum()
        return total


def build_longvila(preset: ModelPreset, seed: int = 0, attn_implementation: str | None = None) -> LongVILA:
    """Random weights from `seed` (same on every rank); MM-SP attention unless told otherwise."""
    if attn_implementation is None:
        attn_implementation = register_usp_attention()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = VisionTower(SiglipVisionModel(SiglipVisionConfig(**preset.vision)), preset.select_layer)
        llm = Qwen2ForCausalLM(Qwen2Config(**preset.llm))
        projector = Projector(tower.hidden_size, int(llm.config.hidden_size), token_order=preset.token_order)
    llm.set_attn_implementation(attn_implementation)
    return LongVILA(tower, projector, llm, preset.media_token_id)
