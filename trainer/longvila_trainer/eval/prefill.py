"""Sequence-parallel prefill: next-token logits of one packed sequence at chosen positions.

The reference has no SP inference path (NVlabs/VILA #130; ../../../docs/eval.md). This is
the training forward of `model/longvila.py` without the loss, run under `no_grad`, through
the same `LongVILA.shard_inputs` and `lm_logits`:

  1. stage 1: each SP rank encodes its divmod share of the frames (vision tower,
     projector); the measured per-frame token counts are all-gathered;
  2. the fused sequence is planned with the same TokenLayout as training (zigzag or
     contiguous, padded per document), so position ids, document boundaries and the
     attention schedule are the training ones;
  3. stage 2: text rows embedded where they live, visual rows moved by the all-to-all;
  4. the LLM runs on the shard with usp_attention; the LM head runs only on the rows
     whose next token is wanted (`logits_to_keep`);
  5. the wanted rows are all-gathered over the SP group and put back in sequence order,
     so every rank returns the same [n, V] logits.

"Wanted" means: positions t whose label at t + 1 is not IGNORE, i.e. exactly the rows the
training loss reads (teacher forcing). Row i of the result predicts the i-th labelled token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.longvila import LongVILA, PackedBatch
from ..parallel import comm
from ..parallel.comm import Group
from ..parallel.groups import SPGroups
from ..parallel.token_layout import Kind, TokenLayout
from ..sharding.frames import IGNORE_INDEX
from ..sharding.targets import shard


@dataclass(frozen=True)
class Prefill:
    """Logits at every labelled position of a packed batch, in sequence order (same on all ranks)."""

    logits: torch.Tensor  # [n, V] fp32: row i predicts `targets[i]`
    targets: torch.Tensor  # [n] long: the labelled token ids (teacher-forced answer)
    owners: tuple[int, ...]  # [n] SP rank that computed each row
    length: int  # tokens of the fused sequence (text + visual rows, no SP padding)

    def argmax(self) -> torch.Tensor:
        """Greedy prediction of every labelled token. [n]"""
        return self.logits.argmax(dim=-1)


def wanted_rows(targets: torch.Tensor, tokens: TokenLayout) -> list[torch.Tensor]:
    """For each SP rank, the local rows with a target, in its local order (pure). [n_s] each

    Every rank derives every rank's rows from metadata, so the gather needs no sizes.
    """
    return [torch.nonzero(shard(targets, tokens, s) != IGNORE_INDEX).squeeze(1) for s in range(tokens.sp)]


@torch.no_grad()
def prefill(model: LongVILA, batch: PackedBatch, groups: SPGroups, kind: Kind = "zigzag") -> Prefill:
    """Runs the SP prefill on every rank of `groups.sp`; all of them get the same result."""
    x = model.shard_inputs(batch, groups, kind)
    tokens, targets = x.tokens, x.targets
    rows = wanted_rows(targets, tokens)
    local = model.lm_logits(x, groups, rows[groups.sp_rank]).float()  # [n_mine, V], device
    per_rank = _gather_rows(local, [len(r) for r in rows], groups.sp)  # sp × [n_s, V]

    # Back to sequence order (on the host, where the scoring reads it): each row's padded
    # global position, sorted.
    where = torch.cat([tokens.shard_index(s)[r] for s, r in enumerate(rows)])  # [n]
    owner = torch.cat([torch.full((len(r),), s) for s, r in enumerate(rows)])  # [n]
    order = torch.argsort(where)
    logits = torch.cat(per_rank).cpu()[order]  # [n, V]
    return Prefill(
        logits,
        targets[where[order]],
        tuple(int(o) for o in owner[order].tolist()),
        x.fused_len,
    )


def _gather_rows(local: torch.Tensor, counts: list[int], group: Group | None) -> list[torch.Tensor]:
    """All-gather of [n_s, V] row blocks of known, unequal sizes (padded to the largest)."""
    if group is None:
        return [local]
    width = max(max(counts), 1)
    padded = local.new_zeros(width, local.shape[1])  # [width, V]
    padded[: local.shape[0]] = local
    everyone = comm.all_gather(padded, group)
    return [block[:n] for block, n in zip(everyone, counts, strict=True)]
