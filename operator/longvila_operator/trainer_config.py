"""The trainer config of one stage: what the ConfigMap holds (the trainer reads it as YAML).

Only hyper-parameters live here. World size, ranks and URIs of this run are in the env
contract (longvila_contract.env), never in the config. The config is complete: the stage's
preset (the stage-type table picks it by type and context length, e.g. the 256k recipe of
context extension) ⊕ the spec's own values ⊕ the stage's `overrides` (dotted keys; a key
the spec already sets, `OWNED`, is refused by validation, so the spec stays the one place
to change it). A stage without ropeTheta inherits the base of the stage before it: after
context extension, long-video SFT keeps the extended RoPE (LongVILA §3.4).
"""

from __future__ import annotations

from typing import Any

from longvila_contract.config import merge, preset_tree
from longvila_contract.stages import stage_type

from .api.types import JobSpec, Stage

# config key -> the spec field it is rendered from
OWNED = {
    "model.llm": "model.llm",
    "model.vision_tower": "model.visionTower",
    "data.uri": "stages[].data",
    "train.max_steps": "stages[].maxSteps",
    "train.context_length": "stages[].contextLength",
    "train.rope_theta": "stages[].ropeTheta",
    "train.frames": "stages[].frames",
    "checkpoint.every_steps": "checkpoint.everySteps",
    "checkpoint.keep": "checkpoint.keep",
    "train.collective_timeout_s": "failurePolicy.collectiveTimeoutSeconds",
}


def owner_of(key: str) -> str | None:
    """The spec field an override key would overwrite (itself, a parent or a child), or None."""
    for owned, field in OWNED.items():
        if key == owned or owned.startswith(key + ".") or key.startswith(owned + "."):
            return field
    return None


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(
                f"override {key!r} goes through {'.'.join(parents[: i + 1])!r}, which is a value"
            )
        node = child
    if isinstance(node.get(leaf), dict):
        raise ValueError(f"override {key!r} would replace the section {key!r}")
    node[leaf] = value


def own_tree(spec: JobSpec, stage: Stage, inherited_rope: float | None) -> dict[str, Any]:
    """One stage's config, given the RoPE base it would inherit."""
    train = {
        "max_steps": stage.max_steps,
        "context_length": stage.context_length,
        "rope_theta": stage.rope_theta,
        "frames": stage.frames,
        "collective_timeout_s": spec.failure_policy.collective_timeout_seconds,
    }
    tree: dict[str, Any] = {
        "model": {"llm": spec.model.llm, "vision_tower": spec.model.vision_tower},
        "data": {"uri": stage.data},
        "train": {k: v for k, v in train.items() if v is not None},
        "checkpoint": {"every_steps": spec.checkpoint.every_steps, "keep": spec.checkpoint.keep},
    }
    for key in sorted(stage.overrides):
        set_dotted(tree, key, stage.overrides[key])
    preset = stage_type(stage.type).preset_for(stage.context_length)
    out = merge(preset_tree(preset), tree)
    if stage.rope_theta is None and inherited_rope is not None:
        out["train"]["rope_theta"] = inherited_rope  # over the preset's: the weights were trained with it
    return out


def render_all(spec: JobSpec) -> dict[str, tuple[dict[str, Any], str]]:
    """Every stage's complete config, with where its RoPE base came from: the stage's own
    name when the stage or its preset sets it, an earlier stage's when inherited, "" when
    it is the model's own."""
    out: dict[str, tuple[dict[str, Any], str]] = {}
    inherited: float | None = None
    source = ""
    for stage in spec.stages:
        tree = own_tree(spec, stage, inherited)
        own = stage.rope_theta is not None or "rope_theta" in own_tree(spec, stage, None)["train"]
        source = stage.name if own else source
        out[stage.name] = (tree, source)
        rope = tree["train"].get("rope_theta")
        inherited = float(rope) if isinstance(rope, int | float) else inherited
    return out


def render(spec: JobSpec, stage: Stage) -> dict[str, Any]:
    """The complete trainer config of `stage` (earlier stages are rendered for their RoPE base)."""
    return render_all(spec)[stage.name][0]
