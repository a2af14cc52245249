"""The committed CRD and API reference equal what the API types generate."""

from __future__ import annotations

import difflib
import io
from pathlib import Path

import yaml
from longvila_operator import crd, reference
from longvila_operator.cli import main

ROOT = Path(__file__).resolve().parents[2]


def drift(committed: Path, generated: str, regenerate: str) -> str:
    if committed.exists() and committed.read_text() == generated:
        return ""
    old = committed.read_text().splitlines() if committed.exists() else []
    diff = "\n".join(
        list(difflib.unified_diff(old, generated.splitlines(), "committed", "generated", lineterm=""))[:40]
    )
    return f"{committed.relative_to(ROOT)} is stale; regenerate it with:\n  {regenerate}\n{diff}"


def test_committed_crd_is_generated() -> None:
    problem = drift(ROOT / crd.COMMITTED_PATH, crd.render(), crd.REGENERATE)
    assert not problem, problem


def test_committed_api_reference_is_generated() -> None:
    problem = drift(ROOT / reference.COMMITTED_PATH, reference.render(), reference.REGENERATE)
    assert not problem, problem


def test_cli_prints_what_is_committed() -> None:
    out = io.StringIO()
    assert main(["crd"], out=out) == 0
    assert out.getvalue() == crd.render()
    doc = yaml.safe_load(out.getvalue())
    assert doc["kind"] == "CustomResourceDefinition" and doc["metadata"]["name"] == "longvilajobs.longvila.io"
    docs = io.StringIO()
    assert main(["crd", "--docs"], out=docs) == 0
    assert docs.getvalue() == reference.render()
    assert "spec.topology.sequenceParallel.ulysses" in docs.getvalue()


def test_drift_message_names_the_command() -> None:
    stale = ROOT / crd.COMMITTED_PATH
    message = drift(stale, crd.render() + "# edited by hand\n", crd.REGENERATE)
    assert ".venv/bin/longvila crd > charts/longvila-operator/files/longvila.io_longvilajobs.yaml" in message


def test_readme_resource_table_is_generated() -> None:
    readme = (ROOT / "README.md").read_text()
    begin, end = readme.find(reference.README_BEGIN), readme.find(reference.README_END)
    assert begin >= 0 and end > begin, "README.md lost its generated resource table markers"
    committed = readme[begin : end + len(reference.README_END)]
    problem = "" if committed == reference.summary() else "README.md's resource table is stale"
    assert not problem, f"{problem}; replace it with the output of: .venv/bin/longvila crd --summary"
