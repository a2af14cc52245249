"""The API schema: structural, bounded for CEL cost, and enforced alike by the CRD and by Python.

tests/data/invalid_jobs/*.yaml each carry `# expect: <substring>`; here the Python side must
refuse each with that substring, and a cluster test applies the same files to a real API
server. Every CEL rule must be covered by one of them.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from builders import BASE_JOB, job_manifest, topology
from longvila_operator.api.manifest import (
    InvalidJob,
    apply_defaults,
    decode,
    encode,
    load_spec,
    read_yaml,
)
from longvila_operator.api.schema import root_schema, spec_schema
from longvila_operator.api.types import JobSpec
from longvila_operator.crd import PRINTER_COLUMNS, crd
from longvila_operator.validation import load_job, validate

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests/data/invalid_jobs").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples/jobs").glob("*.yaml"))

CEL_FUNCTIONS = {"matches", "startsWith", "endsWith", "upperAscii", "size", "all", "exists", "contains"}


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}{{}}")
    return out


def expectation(path: Path) -> str:
    found = [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]
    assert len(found) == 1, f"{path.name}: needs exactly one '# expect:' line"
    return found[0]


def test_schema_is_structural() -> None:
    for path, node in walk(root_schema()):
        if node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        assert node.get("type") in {"object", "array", "string", "integer", "number", "boolean"}, path
        if node["type"] == "array":
            assert "items" in node, path
        if node["type"] == "object" and path != ".metadata":
            assert "properties" in node or "additionalProperties" in node, path
        for key in node.get("required", ()):
            assert key in node["properties"], f"{path}: required {key} is not a property"


def test_spec_is_bounded_for_cel_cost() -> None:
    for path, node in walk(spec_schema(), "spec"):
        kind = node.get("type")
        if kind == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: unbounded string"
        if kind == "array":
            assert "maxItems" in node, f"{path}: unbounded list"
        if kind == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: unbounded map"
        if "x-kubernetes-list-map-keys" in node:
            assert set(node["x-kubernetes-list-map-keys"]) <= set(node["items"]["required"]), path


def test_defaults_only_in_spec_and_valid() -> None:
    status = root_schema()["properties"]["status"]
    assert not [p for p, n in walk(status, "status") if "default" in n]
    defaulted = apply_defaults(spec_schema(), BASE_JOB["spec"])
    assert defaulted["failurePolicy"] == {
        "maxRestarts": 3,
        "maxNodeLossRestarts": 10,
        "maxDisruptionRestarts": 10,
        "nodeFailure": "replace",
        "workerRestarts": 0,
        "hangTimeoutSeconds": 600,
        "startupTimeoutSeconds": 1800,
        "collectiveTimeoutSeconds": 1800,
        "imagePullGraceSeconds": 300,
    }
    assert defaulted["topology"]["sequenceParallel"]["layout"] == "zigzag"
    assert "env" not in defaulted and "nodeSelector" not in defaulted["topology"]


def cel_fields(rule: str) -> list[list[str]]:
    return [m.split(".")[1:] for m in re.findall(r"self(?:\.[A-Za-z_]\w*)+", rule)]


def test_cel_rules_name_existing_fields() -> None:
    for path, node in walk(root_schema()):
        for entry in node.get("x-kubernetes-validations", []):
            for expr in (entry["rule"], entry.get("messageExpression", "")):
                for chain in cel_fields(expr):
                    cursor = node
                    for part in chain:
                        if part in CEL_FUNCTIONS:
                            break
                        if path == "" and chain[0] == "metadata":
                            break  # the API server exposes metadata.name to root rules
                        assert part in cursor.get("properties", {}), f"{path}: {expr} names unknown {part}"
                        cursor = cursor["properties"][part]
            if "fieldPath" in entry:
                cursor = node
                for part in entry["fieldPath"].strip(".").split("."):
                    cursor = cursor["properties"][part]


def test_printer_columns() -> None:
    version = crd()["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase",
        "Stage",
        "Progress",
        "Nodes",
        "Restarts",
        "Loss",
        "Last-Failure",
        "Age",
    ]
    assert version["subresources"] == {"status": {}}
    schema = version["schema"]["openAPIV3Schema"]
    for column in PRINTER_COLUMNS[:-1]:
        cursor = schema
        for part in column["jsonPath"].strip(".").split("."):
            cursor = cursor["properties"][part]
        assert cursor["type"] == column["type"], column
    names = crd()["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("LongVILAJob", "longvilajobs", ["lvj"])
    assert crd()["spec"]["scope"] == "Namespaced" and crd()["spec"]["group"] == "longvila.io"


def test_kept_topology_fields() -> None:
    topo = spec_schema()["properties"]["topology"]["properties"]
    assert {"nodes", "gpusPerNode", "sequenceParallel", "domainLabel"} <= set(topo)
    assert {"ulysses", "ring"} <= set(topo["sequenceParallel"]["properties"])


def test_at_least_ten_invalid_manifests() -> None:
    assert len(INVALID) >= 10


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_manifests_are_refused_with_the_expected_message(path: Path) -> None:
    expected = expectation(path)
    (manifest,) = read_yaml(path.read_text())
    with pytest.raises(InvalidJob) as err:
        load_job(manifest)
    assert expected in str(err.value), f"{path.name}: {err.value}"


def test_every_cel_rule_is_exercised_by_an_invalid_manifest() -> None:
    expectations = [expectation(p) for p in INVALID]
    for path, node in walk(root_schema()):
        for entry in node.get("x-kubernetes-validations", []):
            head = entry["message"][:40]
            assert any(head in e or e in entry["message"] for e in expectations), (
                f"{path}: no manifest for {head!r}"
            )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid_and_round_trip(path: Path) -> None:
    (manifest,) = read_yaml(path.read_text())
    job = load_job(manifest)
    defaulted = apply_defaults(spec_schema(), manifest["spec"])
    assert encode(job.spec) == defaulted
    assert decode(JobSpec, encode(job.spec)) == job.spec


def spec_with(**changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = job_manifest(**changes)["spec"]
    return spec


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (spec_with(image="Registry.Example.com/Trainer:latest:x"), "spec.image: Invalid value"),
        (
            spec_with(
                stages=[
                    {
                        "name": "s",
                        "type": "short-sft",
                        "data": "s3://data/x",
                        "overrides": {"train.max_steps": 3},
                    }
                ]
            ),
            'Invalid value: "train.max_steps": set by the spec; change spec.stages[].maxSteps instead',
        ),
        (
            spec_with(
                stages=[{"name": "s", "type": "short-sft", "data": "s3://data/x", "overrides": {"model": {}}}]
            ),
            "set by the spec; change spec.model.llm instead",
        ),
        (
            spec_with(
                stages=[
                    {"name": "s", "type": "short-sft", "data": "s3://data/x", "overrides": {"bad key": 1}}
                ]
            ),
            "keys are dotted identifiers",
        ),
        (
            spec_with(
                stages=[
                    {
                        "name": "s",
                        "type": "short-sft",
                        "data": "s3://data/x",
                        "overrides": {"optim": 1, "optim.lr": 2},
                    }
                ]
            ),
            "goes through 'optim', which is a value",
        ),
        (
            spec_with(
                stages=[
                    {
                        "name": "e1",
                        "type": "context-extension",
                        "contextLength": 262144,
                        "ropeTheta": 2e8,
                        "data": "s3://data/a",
                    },
                    {
                        "name": "e2",
                        "type": "context-extension",
                        "contextLength": 65536,
                        "ropeTheta": 1e8,
                        "data": "s3://data/b",
                    },
                ]
            ),
            "context-extension stages must grow the context; spec.stages[0] already reaches 262144",
        ),
        (
            spec_with(
                stages=[
                    {
                        "name": "e1",
                        "type": "context-extension",
                        "contextLength": 65536,
                        "ropeTheta": 2e8,
                        "data": "s3://data/a",
                    },
                    {
                        "name": "e2",
                        "type": "context-extension",
                        "contextLength": 131072,
                        "ropeTheta": 1e8,
                        "data": "s3://data/b",
                    },
                ]
            ),
            "ropeTheta: Invalid value: 100000000.0: must not be below spec.stages[0].ropeTheta",
        ),
        (
            spec_with(resources={"memory": "64Gi", "sharedMemory": "128Gi"}),
            "counts against resources.memory (64Gi)",
        ),
        (
            spec_with(env=[{"name": "AWS_SECRET_ACCESS_KEY", "secretKeyRef": {"name": "s", "key": "k"}}]),
            "set by the operator from spec.checkpoint.credentialsSecret",
        ),
        (spec_with(topology=topology(4, 8, 8, 2, extra=1)), 'unknown field "spec.topology.extra"'),
        (  # the CRD's regex admits it; the contract's parser (what the trainer runs) does not
            spec_with(stages=[{"name": "s", "type": "short-sft", "data": "s3://data/a/../b"}]),
            "spec.stages[0].data: Invalid value: spec.stages[0].data='s3://data/a/../b': prefix must not",
        ),
        (
            spec_with(checkpoint={"uri": "s3://ckpt/a//job"}),
            "spec.checkpoint.uri: Invalid value: spec.checkpoint.uri='s3://ckpt/a//job'",
        ),
    ],
)
def test_checks_cel_cannot_express(spec: dict[str, Any], message: str) -> None:
    errors = validate(spec)
    assert any(message in e for e in errors), errors


def test_valid_spec_has_no_errors_and_validate_does_not_mutate() -> None:
    spec = copy.deepcopy(BASE_JOB["spec"])
    assert validate(spec) == []
    assert spec == BASE_JOB["spec"]
    typed, errors = load_spec(spec)
    assert errors == [] and typed is not None and typed.topology.sequence_parallel.layout == "zigzag"


def test_an_override_the_trainer_would_reject_is_refused_by_the_operator() -> None:
    from longvila_operator.validation import validate

    spec = spec_with(
        stages=[{"name": "s", "type": "short-sft", "data": "s3://data/x", "overrides": {"optim.lr": 2e-5}}]
    )
    errors = validate(spec)
    assert any("spec.stages[0].overrides" in e and "optim: unknown field" in e for e in errors), errors
    spec["stages"][0]["overrides"] = {"train.lr": 2e-5}
    assert validate(spec) == []
