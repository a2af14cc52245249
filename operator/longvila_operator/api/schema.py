"""The API types (types.py) as an OpenAPI v3 structural schema with CEL rules.

Structural means: every node has a type (or x-kubernetes-preserve-unknown-fields), so the
API server can prune, default and validate. Defaults are emitted for scalars and as `{}`
for nested objects whose fields all default (so the server fills them in); empty lists and
maps get no default, so stored objects stay as written. The status tree gets no defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .types import JOB_NAME_RULE, JobSpec, JobStatus, Prop, Rule

Schema = dict[str, Any]


def camel(name: str) -> str:
    """gpus_per_node -> gpusPerNode (the JSON name of a Python field)."""
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def validation(rule: Rule) -> Schema:
    """A Rule as an x-kubernetes-validations entry."""
    out: Schema = {"rule": rule.rule, "message": rule.message}
    if rule.got:
        # The static message stays a prefix of what the API server prints.
        out["messageExpression"] = f"{cel_string(rule.message + ' (')} + {rule.got} + ')'"
    if rule.field_path:
        out["fieldPath"] = rule.field_path
    return out


def unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (hint, False) otherwise."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {hint!r}")
        return args[0], True
    return hint, False


def type_schema(hint: Any, p: Prop, *, defaults: bool) -> Schema:
    """The schema of one value of type `hint` (facts in `p` apply to this node)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        out = object_schema(hint, defaults=defaults)
    elif origin is tuple:
        item, ellipsis = typing.get_args(hint)
        if ellipsis is not Ellipsis:
            raise TypeError(f"only tuple[X, ...] is supported, got {hint!r}")
        out = {"type": "array", "items": type_schema(item, Prop(doc=""), defaults=defaults)}
    elif origin is dict:
        _, value = typing.get_args(hint)
        values: Schema = (
            {"x-kubernetes-preserve-unknown-fields": True}
            if value is Any
            else type_schema(value, Prop(doc="", max_length=p.value_max_length), defaults=defaults)
        )
        out = {"type": "object", "additionalProperties": values}
    else:
        names = {str: "string", int: "integer", float: "number", bool: "boolean"}
        if hint not in names:
            raise TypeError(f"unsupported field type {hint!r}")
        out = {"type": names[hint]}
    facts: list[tuple[str, Any]] = [
        ("format", p.format),
        ("enum", list(p.enum) or None),
        ("minimum", p.minimum),
        ("maximum", p.maximum),
        ("pattern", p.pattern),
        ("minLength", p.min_length),
        ("maxLength", p.max_length),
        ("minItems", p.min_items),
        ("maxItems", p.max_items),
        ("maxProperties", p.max_properties),
    ]
    for key, value in facts:
        if value is not None:
            out[key] = int(value) if isinstance(value, float) and value.is_integer() else value
    if p.list_map_keys:
        out["x-kubernetes-list-type"] = "map"
        out["x-kubernetes-list-map-keys"] = list(p.list_map_keys)
    if p.rules:
        out["x-kubernetes-validations"] = [validation(r) for r in p.rules]
    return out


def field_default(f: dataclasses.Field[Any]) -> Any:
    """The schema default of a field, or None when the server should not default it."""
    if f.default is not dataclasses.MISSING:
        return f.default  # None for optional fields: no default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return {} if dataclasses.is_dataclass(value) else None
    return None


def object_schema(cls: Any, *, defaults: bool = True) -> Schema:
    hints = typing.get_type_hints(cls)
    props: Schema = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        p: Prop = f.metadata["prop"]
        hint, optional = unwrap_optional(hints[f.name])
        node = type_schema(hint, p, defaults=defaults)
        if p.doc:  # the field's doc wins over its type's, and comes first
            node = {"description": p.doc} | {k: v for k, v in node.items() if k != "description"}
        default = field_default(f) if defaults else None
        if default is not None:
            node["default"] = default
        props[camel(f.name)] = node
        is_required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if is_required and not optional:
            required.append(camel(f.name))
    out: Schema = {"type": "object"}
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out["description"] = " ".join(cls.__doc__.split())
    out["properties"] = props
    if required:
        out["required"] = required
    rules: tuple[Rule, ...] = getattr(cls, "RULES", ())
    if rules:
        out["x-kubernetes-validations"] = [validation(r) for r in rules]
    return out


def spec_schema() -> Schema:
    return object_schema(JobSpec)


def status_schema() -> Schema:
    return object_schema(JobStatus, defaults=False)


def root_schema() -> Schema:
    """The CRD version's openAPIV3Schema."""
    return {
        "description": "LongVILAJob runs the LongVILA MM-SP training pipeline on GPU nodes placed by "
        "InfiniBand topology, stage after stage, with S3 checkpoints between stages.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(),
            "status": status_schema(),
        },
        "required": ["spec"],
        "x-kubernetes-validations": [validation(JOB_NAME_RULE)],
    }
