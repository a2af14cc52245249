"""The stage types of the LongVILA pipeline: one record per type, read by both sides. Pure.

The operator turns each record into the CRD's enum and CEL rules (required and forbidden
spec fields) and picks the trainer preset from it; the trainer checks a dataset's records
against `data_kinds` and the long-short mix against `short_mix`. Adding a stage type is one
`StageType` here plus its preset file (presets/<preset>.yaml), then `longvila crd`.

The five types are the paper's pipeline (LongVILA §3, Table 1): each stage starts from the
previous stage's checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

# Record kinds a dataset may hold (trainer: data/samples.py says how each is tokenized).
CAPTION, INTERLEAVED, CONVERSATION, TEXT = "caption", "interleaved", "conversation", "text"


@dataclass(frozen=True)
class Requirement:
    """A spec field (camelCase JSON name under spec.stages[]) a stage type needs or refuses."""

    field: str
    hint: str  # why, shown in the API server's message


@dataclass(frozen=True)
class StageType:
    name: str
    preset: str  # the trainer preset (presets/<preset>.yaml) the stage's config starts from
    data_kinds: tuple[str, ...]  # record kinds its dataset may hold
    summary: str
    requires: tuple[Requirement, ...] = ()  # spec fields that must be set
    forbids: tuple[Requirement, ...] = ()  # spec fields that must be left out
    grows_context: bool = False  # consecutive stages of this type must grow contextLength and ropeTheta
    short_mix: bool = False  # may mix short data in (data.short_fraction: long-short joint SFT)
    # Presets by context length, ascending: a stage takes the first whose length reaches its
    # contextLength (the reference's per-length recipes: steps, accumulation, RoPE base).
    by_context: tuple[tuple[int, str], ...] = ()

    def preset_for(self, context_length: int | None) -> str:
        """The preset a stage of this type and context length starts from."""
        if context_length is None or not self.by_context:
            return self.preset
        for length, name in self.by_context:
            if context_length <= length:
                return name
        return self.by_context[-1][1]

    def required_message(self) -> str:
        """The one message for the CEL rule and its Python side."""
        names = " and ".join(r.field for r in self.requires)
        hints = "; ".join(r.hint for r in self.requires)
        return f"a {self.name} stage needs {names} ({hints})"

    def forbidden_message(self, r: Requirement) -> str:
        return f"a {self.name} stage {r.hint}: remove {r.field}"


STAGE_TABLE: tuple[StageType, ...] = (
    StageType(
        "alignment",
        preset="alignment",
        data_kinds=(CAPTION,),
        summary="projector only, image and short-video captions, 4k context",
    ),
    StageType(
        "pretraining",
        preset="pretraining",
        data_kinds=(CAPTION, INTERLEAVED),
        summary="projector + LLM, interleaved image-text and captions",
    ),
    StageType(
        "short-sft",
        preset="short-sft",
        data_kinds=(CONVERSATION, CAPTION),
        summary="everything, image and short-video instructions",
    ),
    StageType(
        "context-extension",
        preset="context-extension",
        data_kinds=(TEXT,),
        summary="LLM only, long text, RoPE base raised for the new length",
        requires=(
            Requirement("contextLength", "the new context length"),
            Requirement("ropeTheta", "the RoPE base for the new length"),
        ),
        forbids=(Requirement("frames", "is text-only"),),
        grows_context=True,
        by_context=(
            (65536, "context-extension"),
            (262144, "context-extension-256k"),
            (524288, "context-extension-512k"),
            (1048576, "context-extension-1m"),
        ),
    ),
    StageType(
        "long-video-sft",
        preset="long-video-sft",
        data_kinds=(CONVERSATION,),
        summary="everything, long-video instructions (+ short data mixed in)",
        requires=(Requirement("frames", "video frames per sample, e.g. 256"),),
        short_mix=True,
    ),
)
STAGE_TYPES: tuple[str, ...] = tuple(t.name for t in STAGE_TABLE)
# The kind of dataset the long-short mix draws its short samples from.
SHORT_MIX_SOURCE = "short-sft"


class UnknownStageType(ValueError):
    """A stage type that is not in the table; the message lists the known ones."""


def stage_type(name: str) -> StageType:
    for t in STAGE_TABLE:
        if t.name == name:
            return t
    raise UnknownStageType(f"unknown stage type {name!r}; known: {', '.join(STAGE_TYPES)}")
