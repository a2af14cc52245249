"""The trainer config: typed, frozen dataclasses read from YAML, strictly validated.

Layers, later wins: a preset (`presets/<name>.yaml`, chosen by the caller, normally the
stage type's preset from stages.py), then the config file (the operator's rendered
ConfigMap, `longvila_operator.trainer_config.render`), then `--set a.b=c` overrides
(values parsed as YAML scalars). World size, ranks and this run's URIs are never here:
they come from the env contract.

Every mistake is one line naming the field: an unknown key lists the allowed ones, a
wrong type names the expected one. The operator renders the stage's `contextLength`,
`ropeTheta` and `frames` under `train.` (see OWNED there), so they live in TrainConfig.
Pure: no torch, nothing read at import.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .stages import STAGE_TYPES

SCHEDULES = ("constant_with_warmup", "cosine")
ENGINES = ("fsdp", "deepspeed")  # FSDP2 (parallelize.py) or DeepSpeed ZeRO 1/2 (zero.py)
ZERO_STAGES = (1, 2)
TRAINABLE = ("projector", "projector+llm", "all", "llm")
PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A bad config; the message is one line that names the field."""


@dataclass(frozen=True)
class ModelConfig:
    llm: str = ""  # Qwen2 weights: file:///dir or s3://bucket/prefix (HF layout); "" with a preset
    vision_tower: str = ""  # SigLIP weights, same forms
    preset: str = ""  # "tiny": random weights of that shape (model/presets.py), for tests and the demo
    init: str = ""  # checkpoint to start from when the env contract gives none
    tokenizer: str = ""  # "tiny", a dir or s3 prefix; "" = the llm's


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic:// dataset (data/synthetic.py)."""

    samples: int = 32
    seed: int = 0
    video_frames: int = 16  # frames encoded per video file (sampled down to train.frames)
    size: int = 56  # frame side in pixels
    text_tokens: int = 512  # tokens per pre-tokenized long-text document


@dataclass(frozen=True)
class DataConfig:
    # file:///dir or s3://bucket/prefix (manifest.jsonl or webdataset *.tar shards), a LLaVA / VILA
    # annotation file (…/x.json or .jsonl), or synthetic://<generator>
    uri: str = ""
    media_root: str = ""  # where data.uri's relative media paths start; "" = the annotation file's dir
    short_uri: str = ""  # long-video-sft only: short data mixed in (long-short joint SFT)
    short_fraction: float = 0.0  # share of short samples in the mix, [0, 1)
    short_frames: int = 8  # frames per short video
    image_size: int = 0  # frame side for the vision tower; 0 = the tower's own
    shuffle: bool = True
    cache_mib: int = 20480  # per-node cache of media fetched from S3 (MiB), shared by the node's ranks
    max_skipped_fraction: float = 0.05  # of samples whose media cannot be read, before the stage fails
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class LoraConfig:
    """LongLoRA-style adapters (stage 4 reference: r 8, α 16, q/k/v/o, full embed and norm)."""

    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    modules_to_save: tuple[str, ...] = ("embed_tokens", "norm")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int | None = None  # optimizer steps; None = `epochs` passes over the data
    epochs: int = 1  # passes over the data when max_steps is None (stage 5's reference: 6)
    micro_batch_tokens: int | None = None  # packing budget per micro-batch; None = context_length
    grad_accum: int = 1
    lr: float = 1e-4
    schedule: str = "cosine"  # one of SCHEDULES
    warmup_steps: int = 0
    warmup_ratio: float = 0.0  # of max_steps; used when warmup_steps is 0
    weight_decay: float = 0.0
    clip: float = 1.0  # max global grad norm; 0 = off
    seed: int = 0
    trainable: str = "all"  # one of TRAINABLE
    lora: LoraConfig = field(default_factory=LoraConfig)
    context_length: int | None = None  # tokens per sequence (rendered from stages[].contextLength)
    rope_theta: float | None = None  # RoPE base (stages[].ropeTheta); None = the model's
    frames: int | None = None  # frames sampled per video (stages[].frames)
    engine: str = "fsdp"  # one of ENGINES: who shards optimizer state and reduces gradients
    zero_stage: int = 2  # engine deepspeed: ZeRO stage (1 optimizer state, 2 + gradients)
    # How long a collective waits for a peer before the rank fails (the process group's
    # timeout); rendered from failurePolicy.collectiveTimeoutSeconds under the operator.
    collective_timeout_s: int = 1800

    @property
    def budget(self) -> int:
        """Tokens per packed micro-batch."""
        out = self.micro_batch_tokens or self.context_length
        if out is None:
            raise ConfigError("train.micro_batch_tokens: set it or train.context_length (the packing budget)")
        return out


@dataclass(frozen=True)
class CheckpointConfig:
    uri: str = ""  # normally from the env contract (LONGVILA_CHECKPOINT_URI); for direct runs
    every_steps: int = 200
    keep: int = 3


@dataclass(frozen=True)
class StageConfig:
    name: str = ""  # the env contract's LONGVILA_STAGE wins when set
    type: str = ""  # one of stages.STAGE_TYPES; must match LONGVILA_STAGE_TYPE


@dataclass(frozen=True)
class TrainerConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    stage: StageConfig = field(default_factory=StageConfig)


# -- parsing ------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _convert(value, arm, where)
            except ConfigError:
                continue
    elif dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_convert(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: Any, data: Any, where: str) -> Any:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"{path}: unknown field; allowed: {', '.join(names)}")
        kwargs[key] = _convert(value, hints[key], path)
    return cls(**kwargs)


def _problems(cfg: TrainerConfig) -> list[str]:
    t, d, c = cfg.train, cfg.data, cfg.checkpoint
    p = []
    if t.schedule not in SCHEDULES:
        p.append(f"train.schedule: {t.schedule!r} is not one of {', '.join(SCHEDULES)}")
    if t.engine not in ENGINES:
        p.append(f"train.engine: {t.engine!r} is not one of {', '.join(ENGINES)}")
    if t.zero_stage not in ZERO_STAGES:
        p.append(
            f"train.zero_stage: {t.zero_stage} is not one of 1, 2 "
            "(for parameters sharded too, use train.engine fsdp: FSDP2 shards all three)"
        )
    if t.trainable not in TRAINABLE:
        p.append(f"train.trainable: {t.trainable!r} is not one of {', '.join(TRAINABLE)}")
    if cfg.stage.type and cfg.stage.type not in STAGE_TYPES:
        p.append(f"stage.type: {cfg.stage.type!r} is not one of {', '.join(STAGE_TYPES)}")
    for name, value in (("train.lr", t.lr), ("train.grad_accum", t.grad_accum), ("train.epochs", t.epochs)):
        if value <= 0:
            p.append(f"{name}: must be > 0, got {value}")
    for name, opt in (
        ("train.max_steps", t.max_steps),
        ("train.micro_batch_tokens", t.micro_batch_tokens),
        ("train.context_length", t.context_length),
        ("train.rope_theta", t.rope_theta),
        ("train.frames", t.frames),
    ):
        if opt is not None and opt <= 0:
            p.append(f"{name}: must be > 0, got {opt}")
    if t.micro_batch_tokens and t.context_length and t.micro_batch_tokens > t.context_length:
        p.append(
            f"train.micro_batch_tokens: {t.micro_batch_tokens} exceeds "
            f"train.context_length {t.context_length}"
        )
    if t.micro_batch_tokens is None and t.context_length is None:
        p.append("train.micro_batch_tokens: set it or train.context_length (the packing budget)")
    if not 0.0 <= t.warmup_ratio < 1.0:
        p.append(f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    if t.collective_timeout_s < 1:
        p.append(f"train.collective_timeout_s: must be ≥ 1 second, got {t.collective_timeout_s}")
    if t.warmup_steps < 0 or t.weight_decay < 0 or t.clip < 0:
        p.append("train.warmup_steps, train.weight_decay, train.clip: must be ≥ 0")
    if d.cache_mib < 1:
        p.append(f"data.cache_mib: must be ≥ 1, got {d.cache_mib}")
    if not 0.0 <= d.max_skipped_fraction <= 1.0:
        p.append(f"data.max_skipped_fraction: must be in [0, 1], got {d.max_skipped_fraction}")
    if not 0.0 <= d.short_fraction < 1.0:
        p.append(f"data.short_fraction: must be in [0, 1), got {d.short_fraction}")
    if d.short_fraction > 0 and not d.short_uri:
        p.append("data.short_uri: needed when data.short_fraction > 0")
    if not d.uri:
        p.append(
            "data.uri: required (file:///dir, s3://bucket/prefix, an annotation file …/x.json[l] "
            "or synthetic://<generator>)"
        )
    if not cfg.model.preset and not (cfg.model.llm and cfg.model.vision_tower):
        p.append("model.llm: set model.llm and model.vision_tower (weights) or model.preset (random weights)")
    if c.every_steps < 1 or c.keep < 1:
        p.append("checkpoint.every_steps, checkpoint.keep: must be ≥ 1")
    return p


def from_dict(tree: Mapping[str, Any]) -> TrainerConfig:
    """A validated config from a plain tree; raises ConfigError (the first problem)."""
    cfg: TrainerConfig = _build(TrainerConfig, tree, "")
    problems = _problems(cfg)
    if problems:
        raise ConfigError(problems[0])
    return cfg


# -- layering -----------------------------------------------------------------------------


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, recursively for mappings; neither is modified."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """'a.b=c' → {'a': {'b': c}}, c parsed as a YAML scalar ('2e-5' → 2e-05, 'true' → True)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _looks_float(raw):
        value = float(raw)  # YAML 1.1 reads '2e-5' (no dot) as a string
    tree: dict[str, Any] = {}
    node = tree
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return tree


def _looks_float(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        tree = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"config {path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top, got {type(tree).__name__}")
    return tree


def preset_tree(name: str) -> dict[str, Any]:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"preset {name!r}: unknown; available: {', '.join(preset_names())}")
    return read_yaml(path)


def load_config(
    path: str | Path | None, overrides: Iterable[str] = (), preset: str | None = None
) -> TrainerConfig:
    """preset ⊕ file ⊕ overrides, validated. `path` None = the preset alone."""
    tree = preset_tree(preset) if preset else {}
    if path is not None:
        tree = merge(tree, read_yaml(Path(path)))
    for text in overrides:
        tree = merge(tree, parse_override(text))
    return from_dict(tree)


def with_stage(cfg: TrainerConfig, name: str, stage_type: str) -> TrainerConfig:
    """The config of the stage the env contract names; refuses a preset of another stage type."""
    if cfg.stage.type and cfg.stage.type != stage_type:
        raise ConfigError(
            f"stage.type: the config is for {cfg.stage.type!r}, the env contract says {stage_type!r}"
        )
    return dataclasses.replace(cfg, stage=StageConfig(name=name, type=stage_type))


def load_preset(name: str, overrides: Iterable[str] = ()) -> TrainerConfig:
    return load_config(None, overrides, preset=name)
