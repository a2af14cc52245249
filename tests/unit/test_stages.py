"""The stage-type table (longvila_contract.stages) is the one source both sides read: the
CRD's enum and CEL rules, the operator's preset choice, the trainer's accepted records."""

from __future__ import annotations

import pytest
from longvila_contract.config import load_preset, preset_names
from longvila_contract.stages import STAGE_TABLE, STAGE_TYPES, UnknownStageType, stage_type
from longvila_operator.api.schema import spec_schema
from longvila_operator.api.types import Stage
from longvila_trainer.data.samples import FORMATS

WEIGHTS = ["model.llm=file:///w/llm", "model.vision_tower=file:///w/vit", "data.uri=file:///d"]


def test_every_type_names_an_existing_preset_of_its_own_type() -> None:
    for t in STAGE_TABLE:
        assert t.preset in preset_names(), t
        assert load_preset(t.preset, WEIGHTS).stage.type == t.name


def test_the_crd_enum_and_rules_come_from_the_table() -> None:
    stage = spec_schema()["properties"]["stages"]["items"]
    assert stage["properties"]["type"]["enum"] == list(STAGE_TYPES)
    rules = [v["rule"] for v in stage["x-kubernetes-validations"]]
    for t in STAGE_TABLE:
        for r in t.requires:
            assert any(f"self.type != '{t.name}'" in x and f"has(self.{r.field})" in x for x in rules), (t, r)
        for r in t.forbids:
            assert f"self.type != '{t.name}' || !has(self.{r.field})" in rules
    assert len(Stage.RULES) == sum(bool(t.requires) + len(t.forbids) for t in STAGE_TABLE)


def test_the_trainer_reads_the_tables_data_kinds() -> None:
    assert {t.name: t.data_kinds for t in STAGE_TABLE} == FORMATS


def test_unknown_type_lists_the_known_ones() -> None:
    assert stage_type("long-video-sft").short_mix
    with pytest.raises(UnknownStageType, match="known: alignment, pretraining, short-sft"):
        stage_type("finetune")
