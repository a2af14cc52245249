"""Stage 2 of MM-SP: build each rank's LLM shard, moving only the visual rows that change rank.

After stage 1, rank s holds the projector output of its frames: rows `rows_by_rank(sp)[s]`
of the global visual rows. The LLM shard of rank s is `TokenLayout.shard_index(s)` of the
padded global sequence. Its rows are of three kinds:

  text     embedded locally from the token id (an embedding lookup needs no exchange);
  visual   received from the rank that encoded the frame;
  padding  zeros (never a key for a real query, never a target).

The visual rows travel in one all-to-all whose backward is the reverse all-to-all, so the
gradient of every visual row returns to the rank (and frame) that produced it. The
reference instead rebuilds the whole sequence by all-reducing into a zero tensor, an op
with no autograd kernel, which silently drops the gradient of every row that changed rank
(2–8% of the vision/projector gradient in long-video SFT; ../../../docs/mmsp.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from ..parallel import comm
from ..parallel.comm import Group
from ..parallel.token_layout import TokenLayout
from .frames import FusedSequence


@dataclass(frozen=True)
class ShardPlan:
    """Where every row of one rank's LLM shard comes from (pure metadata). L = total / sp."""

    global_index: torch.Tensor  # [L] padded global position of each local row
    position_ids: torch.Tensor  # [L] position inside its document (RoPE), global
    text_slots: torch.Tensor  # [n_text] local rows that are text
    text_ids: torch.Tensor  # [n_text] their token ids
    visual_slots: torch.Tensor  # [n_in] local rows filled by received visual rows, receive order
    send_rows: torch.Tensor  # [n_out] rows of this rank's encoder output to send, send order
    send_counts: tuple[int, ...]  # [sp] rows sent to each SP rank
    recv_counts: tuple[int, ...]  # [sp] rows received from each SP rank

    @property
    def length(self) -> int:
        return int(self.global_index.numel())

    def to(self, device: torch.device) -> ShardPlan:
        """The plan with every index on `device`: it is planned on the host (data-dependent
        index arithmetic) and used there by the embedding, the row exchange and RoPE."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)
                 if isinstance(getattr(self, f.name), torch.Tensor)}  # fmt: skip
        return replace(self, **moved)


def plan_shard(seq: FusedSequence, tokens: TokenLayout, sp_rank: int) -> ShardPlan:
    """The shard of `sp_rank` and the visual-row traffic it takes part in.

    Send order (rank s → d) is by destination rank, then destination row; receive order
    is by source rank, then destination row. Both sides derive the same order from the
    same metadata, so no index travels with the rows.
    """
    if sum(seq.doc_lens) != int(tokens.valid.sum()) or seq.doc_lens != tokens.doc_lens:
        raise ValueError(f"sequence documents {seq.doc_lens} differ from the layout's {tokens.doc_lens}")
    sp = tokens.sp
    index = tokens.shard_index(sp_rank)  # [L]
    real = tokens.real_index[index]  # [L], −1 on padding
    is_real = real >= 0
    ids = torch.where(is_real, seq.token_ids[real.clamp(min=0)], torch.full_like(real, -1))
    text_slots = torch.nonzero(is_real & (ids >= 0)).squeeze(1)

    # Every visual row: who encoded it (src), who owns its LLM position (dst) and where.
    padded_of_real = torch.nonzero(tokens.valid).squeeze(1)  # [M]
    vis_real = torch.nonzero(seq.visual_row >= 0).squeeze(1)  # [V] real positions of visual rows
    vis_row = seq.visual_row[vis_real]  # [V] global visual row
    vis_pos = padded_of_real[vis_real]  # [V] padded global position
    dst = tokens.owner[vis_pos]
    dst_off = tokens.local_offset[vis_pos]
    rows_by_rank = seq.rows_by_rank(sp)
    src = torch.bucketize(vis_row, torch.tensor([r.stop for r in rows_by_rank]), right=True)
    L = tokens.shard_len

    out = src == sp_rank
    order = torch.argsort(dst[out] * L + dst_off[out])
    send_rows = (vis_row[out] - rows_by_rank[sp_rank].start)[order]
    send_counts = torch.bincount(dst[out], minlength=sp)

    into = dst == sp_rank
    order = torch.argsort(src[into] * L + dst_off[into])
    visual_slots = dst_off[into][order]
    recv_counts = torch.bincount(src[into], minlength=sp)

    return ShardPlan(
        global_index=index,
        position_ids=tokens.position[index],
        text_slots=text_slots,
        text_ids=ids[text_slots],
        visual_slots=visual_slots,
        send_rows=send_rows,
        send_counts=tuple(int(c) for c in send_counts.tolist()),
        recv_counts=tuple(int(c) for c in recv_counts.tolist()),
    )


class _ExchangeRows(torch.autograd.Function):
    """All-to-all of rows [n, C]; backward is the same exchange with the counts swapped."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        send_counts: tuple[int, ...],
        recv_counts: tuple[int, ...],
        group: Group,
    ) -> torch.Tensor:
        ctx.counts = (send_counts, recv_counts)
        ctx.group = group
        return _all_to_all(rows, send_counts, recv_counts, group)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        send_counts, recv_counts = ctx.counts
        return _all_to_all(grad, recv_counts, send_counts, ctx.group), None, None, None


def _all_to_all(
    rows: torch.Tensor, send_counts: tuple[int, ...], recv_counts: tuple[int, ...], group: Group
) -> torch.Tensor:
    out = rows.new_empty((sum(recv_counts), *rows.shape[1:]))  # [n_in, C]
    return comm.all_to_all_single(out, rows.contiguous(), list(recv_counts), list(send_counts), group)


def exchange_rows(
    encoded: torch.Tensor, plan: ShardPlan, group: Group | None, needs_grad: bool
) -> torch.Tensor:
    """This rank's encoder rows [n_local, C] → the visual rows of its shard [n_in, C].
    `plan` must be on the rows' device (ShardPlan.to).

    `needs_grad` must be the same on every rank of the group (derive it from which
    parameters train, not from this rank's data): a rank that encoded no frames still has
    to run the backward all-to-all, so its (empty) input is made part of the graph.
    """
    send = encoded[plan.send_rows]  # [n_out, C]; its backward scatters into `encoded`
    if group is None:
        return send
    if needs_grad and not send.requires_grad:
        send = send.detach().requires_grad_(True)
    out: torch.Tensor = _ExchangeRows.apply(send, plan.send_counts, plan.recv_counts, group)
    return out


def assemble_shard(
    plan: ShardPlan, text_embeds: torch.Tensor, visual: torch.Tensor, hidden: int
) -> torch.Tensor:
    """The LLM input of this rank [L, hidden]: text rows, received visual rows, zero padding."""
    dtype = text_embeds.dtype if text_embeds.numel() else visual.dtype
    out = torch.zeros(plan.length, hidden, dtype=dtype, device=text_embeds.device)
    out = out.index_copy(0, plan.text_slots, text_embeds)
    return out.index_copy(0, plan.visual_slots, visual.to(dtype))
