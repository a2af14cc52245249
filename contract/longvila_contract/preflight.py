"""The preflight: can this layout train these stages of this model? Pure, before any weights.

Run twice with the same code: by `longvila check` (and the operator's admission) on the
whole job before any pod exists, and by the trainer on its own stage before it loads any
weights or opens a process group. Each problem is one line that names the field, in the
caller's naming (`spec.stages[1].frames` for a job, `train.frames` for the trainer).

What is checked (LongVILA §3 and the MM-SP layout, ../shared/design/mmsp.md §1):
- the Ulysses degree against the model's heads: U divides the query heads, and the KV
  heads and U divide one another (KV heads are replicated when U > KV heads);
- every stage's context: a video stage's frames × tokens per frame fit in it;
- RoPE: a context beyond the model's trained length needs a raised RoPE base (set on the
  stage or inherited from an earlier one), as LongVILA's context extension does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .config import TrainConfig
from .layout import LayoutError, ParallelLayout, kv_replication
from .model import ModelFacts


@dataclass(frozen=True)
class Fields:
    """What the caller calls each checked value, so a message names the field it can fix."""

    context: str
    rope: str
    frames: str


@dataclass(frozen=True)
class StageInput:
    name: str
    type: str
    train: TrainConfig  # the stage's effective train section (preset ⊕ spec ⊕ overrides)
    fields: Fields
    rope_from: str = ""  # where an inherited RoPE base came from ("" = set on the stage or the model's)


@dataclass(frozen=True)
class StagePlan:
    name: str
    type: str
    context: int  # tokens per packed sequence
    rope_theta: float  # the base the stage trains with
    rope_from: str
    frames: int | None
    visual_tokens: int  # frames × tokens per frame (0 for text-only)
    tokens_per_rank: int  # ⌈context / sp⌉: what one GPU's attention holds


@dataclass(frozen=True)
class Preflight:
    kv_replication: int
    stages: tuple[StagePlan, ...]
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def preflight(
    layout: ParallelLayout, facts: ModelFacts, stages: Sequence[StageInput], ulysses_field: str
) -> Preflight:
    problems: list[str] = []
    try:
        replication = kv_replication(facts.heads, facts.kv_heads, layout.ulysses)
    except LayoutError as err:
        problems.append(f"{ulysses_field}: Invalid value: {layout.ulysses}: {err}")
        replication = 0
    plans = []
    for s in stages:
        t, f = s.train, s.fields
        context = t.context_length or t.micro_batch_tokens or 0
        rope = t.rope_theta or facts.rope_theta
        visual = (t.frames or 0) * facts.tokens_per_frame
        if t.frames and visual >= context:
            problems.append(
                f"{f.frames}: Invalid value: {t.frames}: {t.frames} frames × {facts.tokens_per_frame} tokens "
                f"= {visual} visual tokens do not fit in a context of {context} tokens ({f.context})"
            )
        if context > facts.max_positions and rope <= facts.rope_theta:
            problems.append(
                f"{f.context}: Invalid value: {context}: beyond the model's {facts.max_positions} positions "
                f"with its own RoPE base {facts.rope_theta:g}; set {f.rope} (LongVILA raises it with the "
                "context: 15.3e6 at 64k, 207.1e6 at 256k, 1.06e9 at 512k, 3.58e9 at 1M) or extend the "
                "context in an earlier context-extension stage"
            )
        per_rank = -(-context // layout.sp)
        plans.append(StagePlan(s.name, s.type, context, rope, s.rope_from, t.frames, visual, per_rank))
    return Preflight(replication, tuple(plans), tuple(problems))


def table(result: Preflight) -> str:
    """The stages as a fixed-width table (the `longvila check` summary)."""
    rows = [("STAGE", "TYPE", "CONTEXT", "ROPE BASE", "FRAMES", "VISUAL", "TOKENS/RANK")]
    for p in result.stages:
        rope = f"{p.rope_theta:.4g}" + (f" (from {p.rope_from})" if p.rope_from else "")
        frames = str(p.frames) if p.frames else "-"
        visual = str(p.visual_tokens) if p.visual_tokens else "-"
        rows.append((p.name, p.type, str(p.context), rope, frames, visual, str(p.tokens_per_rank)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
