"""The trainer config: presets, the operator's rendered ConfigMap, overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from builders import BASE_JOB
from longvila_contract.config import (
    ConfigError,
    TrainerConfig,
    from_dict,
    load_config,
    load_preset,
    preset_names,
)
from longvila_contract.stages import STAGE_TYPES
from longvila_operator import trainer_config
from longvila_operator.api.manifest import load_spec

WEIGHTS = ["data.uri=file:///data", "model.llm=file:///llm", "model.vision_tower=file:///siglip"]
MINIMAL: dict[str, Any] = {
    "model": {"preset": "tiny"},
    "data": {"uri": "synthetic://captions"},
    "train": {"context_length": 1024},
}


def error_of(tree: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(tree)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_every_stage_type_has_a_preset_and_a_tiny_one() -> None:
    names = preset_names()
    for stage in STAGE_TYPES:
        assert stage in names and f"tiny-{stage}" in names
        assert load_preset(stage, WEIGHTS).stage.type == stage
        assert load_preset(f"tiny-{stage}").stage.type == stage


@pytest.mark.parametrize(
    ("preset", "trainable", "lr"),
    [
        ("alignment", "projector", 1e-3),
        ("pretraining", "projector+llm", 5e-5),
        ("short-sft", "all", 1e-4),
        ("context-extension", "llm", 2e-5),
        ("long-video-sft", "all", 2e-5),
    ],
)
def test_reference_hyper_parameters(preset: str, trainable: str, lr: float) -> None:
    cfg = load_preset(preset, WEIGHTS)
    assert (cfg.train.trainable, cfg.train.lr) == (trainable, lr)


@pytest.mark.parametrize(
    ("preset", "length", "theta"),
    [
        ("context-extension", 65536, 15_300_000.0),
        ("context-extension-256k", 262144, 207_112_184.0),
        ("context-extension-512k", 524288, 1_062_356_830.0),
        ("context-extension-1m", 1048576, 3_580_165_449.0),
    ],
)
def test_context_extension_rope_bases(preset: str, length: int, theta: float) -> None:
    t = load_preset(preset, WEIGHTS).train
    assert (t.context_length, t.rope_theta, t.schedule, t.warmup_steps) == (
        length,
        theta,
        "constant_with_warmup",
        2,
    )
    assert t.lora.enabled and (t.lora.rank, t.lora.alpha) == (8, 16.0)


def test_operator_rendered_config_loads_over_the_stage_preset(tmp_path: Path) -> None:
    """Both sides of the ConfigMap: operator render → YAML file → load_config(preset=stage type)."""
    job = dict(BASE_JOB["spec"])
    job["stages"] = [dict(s, overrides={}) for s in job["stages"]]
    job["stages"][1]["overrides"] = {"train.lr": 3e-5, "train.grad_accum": 8}
    spec, errs = load_spec(job)
    assert spec is not None, errs
    for stage in spec.stages:
        path = tmp_path / f"{stage.name}.yaml"
        path.write_text(yaml.safe_dump(trainer_config.render(spec, stage)))
        cfg = load_config(path, preset=stage.type)
        assert (cfg.model.llm, cfg.data.uri) == (spec.model.llm, stage.data)
        assert cfg.checkpoint.every_steps == spec.checkpoint.every_steps
        assert cfg.stage.type == stage.type
        if stage.type == "context-extension":
            assert (cfg.train.context_length, cfg.train.rope_theta) == (65536, 15.3e6)
        else:
            assert (cfg.train.frames, cfg.train.lr, cfg.train.grad_accum) == (256, 3e-5, 8)


def test_demo_job_stages_load(tmp_path: Path) -> None:
    demo = yaml.safe_load((Path(__file__).parents[2] / "examples/jobs/tiny-demo.yaml").read_text())
    spec, errs = load_spec(demo["spec"])
    assert spec is not None, errs
    for stage in spec.stages:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(trainer_config.render(spec, stage)))
        cfg = load_config(path, preset=stage.type)
        assert (cfg.train.frames, cfg.train.context_length) == (stage.frames, stage.context_length)
        assert cfg.train.budget == stage.overrides["train.micro_batch_tokens"]
        # the tokenizer of the VILA-layout llm/ directory; long-sft keeps context-ext's RoPE base
        assert cfg.model.tokenizer == "" and cfg.model.llm.endswith("/tiny-vila/llm")
        assert cfg.train.grad_accum == 1 and cfg.train.rope_theta == 100000.0


def test_operator_example_override_key_is_refused_by_name(tmp_path: Path) -> None:
    # A job once used {optim.lr: …}; the trainer's learning rate is train.lr.
    with pytest.raises(
        ConfigError, match=r"^optim: unknown field; allowed: model, data, train, checkpoint, stage$"
    ):
        load_config(None, ["optim.lr=2e-5", *WEIGHTS], preset="long-video-sft")


def test_overrides_parse_yaml_scalars() -> None:
    cfg = load_preset(
        "tiny-alignment",
        [
            "train.lr=2e-5",
            "train.max_steps=7",
            "data.shuffle=false",
            "train.lora.targets=[q_proj]",
            "train.rope_theta=1e6",
        ],
    )
    assert (cfg.train.lr, cfg.train.max_steps, cfg.data.shuffle) == (2e-5, 7, False)
    assert (cfg.train.lora.targets, cfg.train.rope_theta) == (("q_proj",), 1e6)


def test_minimal_config_and_defaults() -> None:
    cfg = from_dict(MINIMAL)
    assert isinstance(cfg, TrainerConfig)
    assert cfg.train.budget == 1024 and cfg.train.schedule == "cosine" and cfg.checkpoint.keep == 3


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"trian": {}}, "trian: unknown field; allowed: model, data, train, checkpoint, stage"),
        (
            {"train": {"lr_max": 1.0}},
            "train.lr_max: unknown field; allowed: max_steps, epochs, micro_batch_tokens,",
        ),
        ({"train": {"lora": {"r": 8}}}, "train.lora.r: unknown field; allowed: enabled, rank, alpha,"),
        ({"train": {"lr": "fast"}}, "train.lr: expected float, got str 'fast'"),
        ({"train": {"max_steps": 2.5}}, "train.max_steps: expected int or null, got float 2.5"),
        ({"train": {"grad_accum": True}}, "train.grad_accum: expected int, got bool True"),
        ({"data": {"shuffle": "yes"}}, "data.shuffle: expected bool, got str 'yes'"),
        ({"train": {"lora": {"targets": "q_proj"}}}, "train.lora.targets: expected list of str, got str"),
        ({"train": 5}, "train: expected a mapping, got int 5"),
        (
            {"train": {"schedule": "linear"}},
            "train.schedule: 'linear' is not one of constant_with_warmup, cosine",
        ),
        (
            {"train": {"trainable": "vision"}},
            "train.trainable: 'vision' is not one of projector, projector+llm",
        ),
        ({"stage": {"type": "sft"}}, "stage.type: 'sft' is not one of alignment, pretraining"),
        ({"train": {"engine": "megatron"}}, "train.engine: 'megatron' is not one of fsdp, deepspeed"),
        ({"train": {"zero_stage": 3}}, "train.zero_stage: 3 is not one of 1, 2 (for parameters sharded"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0, got 0.0"),
        ({"data": {"uri": ""}}, "data.uri: required"),
        ({"model": {"preset": ""}}, "model.llm: set model.llm and model.vision_tower"),
        ({"data": {"short_fraction": 0.5}}, "data.short_uri: needed when data.short_fraction > 0"),
        (
            {"train": {"micro_batch_tokens": 4096}},
            "train.micro_batch_tokens: 4096 exceeds train.context_length 1024",
        ),
    ],
)
def test_bad_config_is_one_line_naming_the_field(tree: dict[str, Any], message: str) -> None:
    from longvila_contract.config import merge

    assert error_of(merge(MINIMAL, tree)).startswith(message)


def test_bad_files_and_overrides(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_preset("tiny-alignment", ["train.lr"])
    with pytest.raises(ConfigError, match="preset 'nope': unknown; available: alignment,"):
        load_preset("nope")


def test_with_stage_takes_the_env_contract_and_refuses_a_mismatch() -> None:
    from longvila_contract.config import with_stage

    cfg = with_stage(load_preset("tiny-alignment"), "align", "alignment")
    assert (cfg.stage.name, cfg.stage.type) == ("align", "alignment")
    with pytest.raises(
        ConfigError, match=r"^stage\.type: the config is for 'alignment', the env contract says"
    ):
        with_stage(cfg, "x", "short-sft")
