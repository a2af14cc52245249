"""LongVILA: SigLIP vision tower + projector + a stock Qwen2 causal LM, trained under MM-SP.

One step on one SP rank (every rank of the group holds the same packed batch):

  1. stage 1: encode this rank's share of the frames (vision tower, projector);
     all-gather each frame's measured token count;
  2. lay the fused sequence out in metadata (placeholder → frame rows), plan the tokens
     over the SP group (TokenLayout), and shift the labels globally;
  3. stage 2: embed the text rows this rank owns, receive its visual rows through the
     autograd all-to-all, zero the padding;
  4. run the LLM on the shard with global position ids; attention is `usp_attention`,
     reached through transformers' attention registry with the context in the kwargs;
  5. CE summed over the local targets; the divisor is the global target count.

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
from ..sharding.frames import IGNORE_INDEX, expand_media, gather_frame_tokens, split_frames
from ..sharding.targets import count_targets, global_target_count, loss_sum, shard, shift_targets, to_padded
from .presets import ModelPreset
from .projector import Projector
from .vision import VisionTower


@dataclass(frozen=True)
class PackedBatch:
    """One packed sequence of documents, identical on every rank of an SP group."""

    input_ids: torch.Tensor  # [N] long; one media placeholder per frame
    labels: torch.Tensor  # [N] long; label of each position (unshifted), IGNORE where untrained
    doc_lens: tuple[int, ...]  # documents' lengths in input_ids
    frames: tuple[torch.Tensor, ...]  # [3, H, W] per placeholder, in order; sizes may differ


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
    targets: torch.Tensor  # [total] long: labels shifted globally, over the padded sequence
    embeds: torch.Tensor  # [L, D] this rank's shard
    position_ids: torch.Tensor  # [L] global RoPE positions
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

    def encode(self, frames: Sequence[torch.Tensor]) -> tuple[torch.Tensor, list[int]]:
        """Frames → their LLM tokens concatenated in frame order [Σ T_f, D], and each T_f.

        Runs of same-sized frames go through the tower as one batch.
        """
        parts: list[torch.Tensor] = []
        counts: list[int] = []
        start = 0
        while start < len(frames):
            stop = start + 1
            while stop < len(frames) and frames[stop].shape == frames[start].shape:
                stop += 1
            pixels = torch.stack(list(frames[start:stop]))  # [B, 3, H, W]
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

    def shard_inputs(self, batch: PackedBatch, groups: SPGroups, kind: Kind = "zigzag") -> ShardInputs:
        """Stages 1 and 2 for this rank: its LLM inputs, shared by training and prefill."""
        layout = groups.layout
        sp, sp_rank = layout.sp, groups.sp_rank
        n_frames = len(batch.frames)

        # Stage 1: this rank's frames only; counts measured, then shared.
        mine = split_frames(n_frames, sp)[sp_rank]
        encoded, counts = self.encode(batch.frames[mine.start : mine.stop])  # [n_local, D]
        idle = self._idle_vision(batch) if mine.start == mine.stop else None
        frame_tokens = gather_frame_tokens(counts, n_frames, sp, groups.sp)

        # The global sequence, in metadata, identical on every rank.
        seq = expand_media(batch.input_ids, batch.labels, batch.doc_lens, self.media_token_id, frame_tokens)
        tokens = plan_tokens(seq.doc_lens, layout.ulysses, layout.ring, kind)
        plan = plan_shard(seq, tokens, sp_rank)
        targets = to_padded(shift_targets(seq.labels, seq.doc_lens), tokens, IGNORE_INDEX)  # [total]

        # Stage 2: text embedded where it lives; visual rows moved with their gradient.
        visual = exchange_rows(encoded, plan, groups.sp, self.visual_needs_grad())  # [n_in, D]
        text = self.llm.get_input_embeddings()(plan.text_ids)  # [n_text, D]
        embeds = assemble_shard(plan, text, visual, self.hidden_size)  # [L, D]
        return ShardInputs(tokens, targets, embeds, plan.position_ids, sum(seq.doc_lens), idle)

    def lm_logits(self, x: ShardInputs, groups: SPGroups, keep: torch.Tensor) -> torch.Tensor:
        """The LLM on this rank's shard; the LM head only on local rows `keep`. [n_keep, V]"""
        out = self.llm(
            inputs_embeds=x.embeds.unsqueeze(0),  # [1, L, D]
            position_ids=x.position_ids.unsqueeze(0),  # [1, L], global RoPE positions
            logits_to_keep=keep,
            use_cache=False,
            **{CONTEXT_KWARG: AttentionContext(groups=groups, tokens=x.tokens)},
        )
        logits: torch.Tensor = out.logits[0]
        return logits

    def forward(self, batch: PackedBatch, groups: SPGroups, kind: Kind = "zigzag") -> LossParts:
        x = self.shard_inputs(batch, groups, kind)
        local_targets = shard(x.targets, x.tokens, groups.sp_rank)  # [L]
        keep = torch.nonzero(local_targets != IGNORE_INDEX).squeeze(1)  # [n_keep]: rows with a target
        logits = self.lm_logits(x, groups, keep)  # [n_keep, V]
        n_targets = global_target_count(count_targets(x.targets), groups)
        total = loss_sum(logits, local_targets[keep])
        if x.idle is not None:
            total = total + x.idle
        return LossParts(total, n_targets, int(keep.numel()))

    def _idle_vision(self, batch: PackedBatch) -> torch.Tensor | None:
        """A rank without frames still runs the tower and projector once, on a zero frame,
        and adds 0 × its output to the loss (an exact zero, in the graph).

        With more ranks than frames some ranks encode nothing; under FSDP every rank must
        run the same sharded modules forward and backward (their all-gathers and
        reduce-scatters are collectives), or the others wait forever.
        """
        if not batch.frames:
            return None
        dummy, _ = self.encode([torch.zeros_like(batch.frames[0])])
        return (dummy * 0.0).sum()


def build_longvila(preset: ModelPreset, seed: int = 0, attn_implementation: str | None = None) -> LongVILA:
    """Random weights from `seed` (same on every rank); MM-SP attention unless told otherwise."""
    if attn_implementation is None:
        attn_implementation = register_usp_attention()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = VisionTower(SiglipVisionModel(SiglipVisionConfig(**preset.vision)), preset.select_layer)
        llm = Qwen2ForCausalLM(Qwen2Config(**preset.llm))
        projector = Projector(tower.hidden_size, int(llm.config.hidden_size))
    llm.set_attn_implementation(attn_implementation)
    return LongVILA(tower, projector, llm, preset.media_token_id)
