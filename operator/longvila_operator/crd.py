"""The LongVILAJob CustomResourceDefinition, rendered from the API types (one source of truth).

It is committed once, where the Helm chart reads it (charts/longvila-operator/files/, which
`.Files.Get` can reach); it must equal `render()`: tests/unit/test_crd_drift.py fails
otherwise and prints REGENERATE.
"""

from __future__ import annotations

from typing import Any

import yaml

from .api import GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION
from .api.schema import root_schema

COMMITTED_PATH = "charts/longvila-operator/files/longvila.io_longvilajobs.yaml"
REGENERATE = f".venv/bin/longvila crd > {COMMITTED_PATH}"
HEADER = (
    "# Generated from operator/longvila_operator/api/types.py by `longvila crd`; do not edit.\n"
    f"# Regenerate: {REGENERATE}\n"
)

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Job phase"},
    {"name": "Stage", "type": "string", "jsonPath": ".status.stage", "description": "Current stage"},
    {
        "name": "Progress",
        "type": "string",
        "jsonPath": ".status.progress.summary",
        "description": "Steps of the current stage: step/maxSteps (percent)",
    },
    {"name": "Nodes", "type": "integer", "jsonPath": ".spec.topology.nodes", "description": "Worker nodes"},
    {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts", "description": "Gang restarts"},
    {
        "name": "Loss",
        "type": "number",
        "jsonPath": ".status.progress.loss",
        "description": "The last step's loss",
        "priority": 1,
    },
    {
        "name": "Last-Failure",
        "type": "string",
        "jsonPath": ".status.lastFailure.class",
        "description": "Class of the last failure",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": list(SHORT_NAMES),
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root_schema()},
                }
            ],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, allow_unicode=True, width=120)
