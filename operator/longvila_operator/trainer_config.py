"""The trainer config of one stage: what the ConfigMap holds (the trainer reads it as YAML).

Only hyper-parameters live here. World size, ranks and URIs of this run are in the env
contract (longvila_contract.env), never in the config. A stage's `overrides` are
dotted keys set into this tree after the spec's own values; a key the spec already sets
(`OWNED`) is refused by validation, so the spec stays the one place to change it.
"""

from __future__ import annotations

from typing import Any

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


def render(spec: JobSpec, stage: Stage) -> dict[str, Any]:
    train = {
        "max_steps": stage.max_steps,
        "context_length": stage.context_length,
        "rope_theta": stage.rope_theta,
        "frames": stage.frames,
    }
    tree: dict[str, Any] = {
        "model": {"llm": spec.model.llm, "vision_tower": spec.model.vision_tower},
        "data": {"uri": stage.data},
        "train": {k: v for k, v in train.items() if v is not None},
        "checkpoint": {"every_steps": spec.checkpoint.every_steps, "keep": spec.checkpoint.keep},
    }
    for key in sorted(stage.overrides):
        set_dotted(tree, key, stage.overrides[key])
    return tree
