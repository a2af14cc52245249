"""Manifests (plain dicts) to typed API objects and back, checked against the generated schema.

The operator and the CLI see what the API server would see: `apply_defaults` and
`schema_errors` walk the same schema the CRD carries (schema.py), and `rule_errors` runs
the Python side of every CEL rule. Error lines follow the API server's (1.36) field-error
format (`spec.topology.nodes: Invalid value: 0: … should be greater than or equal to 1`), so
one expected substring matches both; as there, rules are not run on a spec that already
breaks the schema.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .schema import Schema, camel, spec_schema, unwrap_optional
from .types import JOB_NAME_RULE, JobSpec, Prop, Rule


class KubeYamlLoader(yaml.SafeLoader):
    """YAML read as kubectl reads it: PyYAML (YAML 1.1) takes `15.3e6` for a string."""


KubeYamlLoader.add_implicit_resolver(  # copies the resolver table: SafeLoader is untouched
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?([0-9]+([.][0-9]*)?|[.][0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> list[Any]:
    """Every document of a YAML stream (empty documents dropped)."""
    return [d for d in yaml.load_all(text, Loader=KubeYamlLoader) if d is not None]


@dataclass(frozen=True)
class Job:
    """A LongVILAJob as the pure core sees it: identity plus the typed, defaulted spec."""

    name: str
    namespace: str
    uid: str
    spec: JobSpec
    generation: int = 0
    queue: str = ""  # Kueue LocalQueue: spec.scheduling.queueName, else the kueue.x-k8s.io/queue-name label


class InvalidJob(ValueError):
    """A manifest the API server (or the operator's own checks) would refuse; one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def apply_defaults(schema: Schema, value: Any) -> Any:
    """A copy of `value` with the schema's defaults filled in, as the API server does on decode."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def quote(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def json_type(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if type_ok(name, value):
            return name
    return "null"


def type_ok(kind: str, value: Any) -> bool:
    checks: dict[str, Any] = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    return bool(checks[kind](value))


def schema_errors(schema: Schema, value: Any, path: str) -> list[str]:
    """Problems with `value` against the OpenAPI facts of `schema` (no CEL), API-server style."""
    if schema.get("x-kubernetes-preserve-unknown-fields") and "type" not in schema:
        return []
    kind = schema["type"]
    if not type_ok(kind, value):
        got = json_type(value)
        return [f'{path}: Invalid value: "{got}": {path} in body must be of type {kind}: "{got}"']
    bad = f"{path}: Invalid value: {quote(value)}: {path} in body"
    errs: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(json.dumps(v) for v in schema["enum"])
        errs.append(f"{path}: Unsupported value: {quote(value)}: supported values: {allowed}")
    if "minimum" in schema and value < schema["minimum"]:
        errs.append(f"{bad} should be greater than or equal to {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errs.append(f"{bad} should be less than or equal to {schema['maximum']}")
    if "minLength" in schema and len(value) < schema["minLength"]:
        errs.append(f"{bad} should be at least {schema['minLength']} chars long")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errs.append(f"{path}: Too long: may not be more than {schema['maxLength']} bytes")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        errs.append(f"{bad} should match '{schema['pattern']}'")
    if "minItems" in schema and len(value) < schema["minItems"]:
        errs.append(f"{bad} should have at least {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errs.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxItems']} items")
    if "maxProperties" in schema and len(value) > schema["maxProperties"]:
        errs.append(f"{path}: Too many: {len(value)}: must have at most {schema['maxProperties']} items")
    if kind == "object":
        errs += object_errors(schema, value, path)
    if kind == "array":
        for i, item in enumerate(value):
            errs += schema_errors(schema["items"], item, f"{path}[{i}]")
        errs += duplicate_errors(schema, value, path)
    return errs


def object_errors(schema: Schema, value: dict[str, Any], path: str) -> list[str]:
    errs = [f"{path}.{key}: Required value" for key in schema.get("required", ()) if key not in value]
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    for key, item in value.items():
        if key in props:
            errs += schema_errors(props[key], item, f"{path}.{key}")
        elif extra is not None:
            errs += schema_errors(extra, item, f"{path}.{key}")
        else:  # kubectl's default field validation is Strict
            errs.append(f'{path}: unknown field "{path}.{key}"')
    return errs


def duplicate_errors(schema: Schema, value: list[Any], path: str) -> list[str]:
    keys = schema.get("x-kubernetes-list-map-keys")
    if not keys:
        return []
    seen: set[str] = set()
    errs = []
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            continue
        key = json.dumps({k: item.get(k) for k in keys}, separators=(",", ":"))
        if key in seen:
            errs.append(f"{path}[{i}]: Duplicate value: {key}")
        seen.add(key)
    return errs


def decode(cls: Any, value: Mapping[str, Any]) -> Any:
    """A schema-valid, defaulted dict as an instance of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        key = camel(f.name)
        if key in value:
            kwargs[f.name] = decode_value(hints[f.name], value[key])
    return cls(**kwargs)


def decode_value(hint: Any, value: Any) -> Any:
    hint, _ = unwrap_optional(hint)
    if value is None:
        return None
    if dataclasses.is_dataclass(hint):
        return decode(hint, value)
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return tuple(decode_value(item, v) for v in value)
    if hint is float:
        return float(value)
    return copy.deepcopy(value)


def encode(obj: Any) -> Any:
    """A typed API object as a JSON-ready dict (camelCase keys; unset optionals and empty
    lists and maps left out, as the API server stores them)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        values = {camel(f.name): getattr(obj, f.name) for f in dataclasses.fields(obj)}
        return {k: encode(v) for k, v in values.items() if v is not None and v not in ((), {})}
    if isinstance(obj, tuple | list):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    return obj


def rule_errors(obj: Any, path: str) -> list[str]:
    """The Python side of every CEL rule on `obj` and below."""
    if not (dataclasses.is_dataclass(obj) and not isinstance(obj, type)):
        return []
    errs: list[str] = []
    rules: tuple[Rule, ...] = getattr(type(obj), "RULES", ())
    errs += [f"{path}{r.field_path}: Invalid value: {r.message}" for r in rules if not r.check(obj)]
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        child = f"{path}.{camel(f.name)}"
        p: Prop = f.metadata["prop"]
        if value is not None:
            errs += [
                f"{child}: Invalid value: {quote(value)}: {r.message}" for r in p.rules if not r.check(value)
            ]
        if isinstance(value, tuple):
            for i, item in enumerate(value):
                errs += rule_errors(item, f"{child}[{i}]")
        else:
            errs += rule_errors(value, child)
    return errs


def load_spec(spec: Mapping[str, Any]) -> tuple[JobSpec | None, list[str]]:
    """Default, check and decode a spec; (None, errors) when the schema or a rule refuses it."""
    schema = spec_schema()
    value = apply_defaults(schema, dict(spec))
    errs = schema_errors(schema, value, "spec")
    if errs:  # a spec with type or required errors cannot be decoded for the rules
        return None, errs
    typed: JobSpec = decode(JobSpec, value)
    errs = rule_errors(typed, "spec")
    return (None, errs) if errs else (typed, [])


def name_errors(name: str) -> list[str]:
    rule: Rule = JOB_NAME_RULE
    return [] if rule.check(name) else [f"<nil>: Invalid value: {rule.message}"]
