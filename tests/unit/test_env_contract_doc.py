"""docs/env-contract.md names every variable the contract module owns."""

from __future__ import annotations

from pathlib import Path

from longvila_contract import env as E

DOC = Path(__file__).resolve().parents[2] / "docs" / "env-contract.md"


def test_every_contract_variable_is_documented() -> None:
    text = DOC.read_text()
    names = [v for k, v in vars(E).items() if k.isupper() and isinstance(v, str) and v.isupper() and "_" in v]
    names += list(E.S3_CREDENTIAL_KEYS + E.S3_OPTIONAL_KEYS)
    missing = sorted(n for n in set(names) if f"`{n}`" not in text)
    assert not missing, f"docs/env-contract.md does not document {missing}"
