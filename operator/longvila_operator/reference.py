"""docs/operator-api.md: the resource reference, generated from the CRD schema (`longvila crd --docs`)."""

from __future__ import annotations

import json
from typing import Any

from .api import API_VERSION, KIND, PLURAL, SHORT_NAMES
from .crd import PRINTER_COLUMNS, crd

COMMITTED_PATH = "docs/operator-api.md"
REGENERATE = f".venv/bin/longvila crd --docs > {COMMITTED_PATH}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def type_name(s: dict[str, Any]) -> str:
    if "type" not in s:
        return "any"
    if s["type"] == "array":
        return f"[]{type_name(s['items'])}"
    if s["type"] == "object" and "additionalProperties" in s:
        return f"map[string]{type_name(s['additionalProperties'])}"
    return str(s["type"])


def constraints(s: dict[str, Any], required: bool) -> str:
    out = ["required"] if required else []
    if "enum" in s:
        out.append("one of " + ", ".join(f"`{v}`" if v else '`""`' for v in s["enum"]))
    for key, word in (("minimum", "≥"), ("maximum", "≤")):
        if key in s:
            out.append(f"{word} {s[key]}")
    for key, word in (
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("maxProperties", "max entries"),
        ("format", "format"),
    ):
        if key in s:
            out.append(f"{word} {s[key]}")
    if "pattern" in s:
        out.append(f"matches `{s['pattern']}`")
    if "x-kubernetes-list-map-keys" in s:
        out.append("unique by " + ", ".join(s["x-kubernetes-list-map-keys"]))
    return "; ".join(out)


def rows(s: dict[str, Any], path: str, out: list[str], rules: list[str]) -> None:
    for r in s.get("x-kubernetes-validations", []):
        where = (path + r.get("fieldPath", "")) or "(the whole object)"
        rules.append(f"| `{where}` | `{cell(r['rule'])}` | {cell(r['message'])} |")
    if s.get("type") == "array":
        rows(s["items"], path + "[]", out, rules)
        return
    required = set(s.get("required", ()))
    for name, sub in s.get("properties", {}).items():
        default = json.dumps(sub["default"]) if "default" in sub else ""
        desc = sub.get("description", "")
        facts = cell(constraints(sub, name in required))
        out.append(f"| `{path}.{name}` | {type_name(sub)} | {cell(default)} | {facts} | {cell(desc)} |")
        rows(sub, f"{path}.{name}", out, rules)


README_BEGIN = "<!-- BEGIN generated: longvila crd --summary -->"
README_END = "<!-- END generated -->"


def summary(depth: int = 3) -> str:
    """The README's resource table: spec fields down to `depth` dots below spec, typed and
    described; the full reference (constraints, CEL rules, status) is docs/operator-api.md."""
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    lines: list[str] = []
    rows(schema["properties"]["spec"], "spec", lines, [])
    keep = []
    for line in lines:
        path, typ, default, facts, desc = (c.strip() for c in line.strip("|").split(" | "))
        if path.strip("`").count(".") <= depth:
            req = " (required)" if facts.startswith("required") else ""
            dflt = f" Default {default}." if default else ""
            keep.append(f"| {path} | {typ}{req} | {desc}{dflt} |")
    body = "\n".join(["| Field | Type | Description |", "|---|---|---|", *keep])
    return f"{README_BEGIN}\n{body}\n{README_END}"


def render() -> str:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    head = "| Field | Type | Default | Constraints | Description |\n|---|---|---|---|---|"
    spec_rows: list[str] = []
    status_rows: list[str] = []
    rules: list[str] = []
    rows({k: v for k, v in schema.items() if k != "properties"}, "", [], rules)
    rows(schema["properties"]["spec"], "spec", spec_rows, rules)
    rows(schema["properties"]["status"], "status", status_rows, [])
    columns = "\n".join(f"| {c['name']} | `{c['jsonPath']}` |" for c in PRINTER_COLUMNS)
    return f"""# {KIND} API reference

<!-- Generated from operator/longvila_operator/api/types.py; do not edit. Regenerate: {REGENERATE} -->

`apiVersion: {API_VERSION}`, `kind: {KIND}`, plural `{PLURAL}`, short name `{", ".join(SHORT_NAMES)}`,
namespaced, with a status subresource. {schema["description"]}

The API server rejects a spec that breaks the schema or a rule below. What CEL cannot
express (image references, trainer-config override keys, context extension that must grow,
/dev/shm within the memory limit, env names the operator owns) is checked by the operator
(`longvila_operator.validation.validate`) and reported as a condition and an Event.

## Printer columns

| Column | JSONPath |
|---|---|
{columns}

## spec

{head}
{chr(10).join(spec_rows)}

## Validation rules (CEL)

| Where | Rule | Message |
|---|---|---|
{chr(10).join(rules)}

## status

Written by the operator through the status subresource.

{head}
{chr(10).join(status_rows)}
"""
