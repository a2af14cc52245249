"""The termination-message agreement (longvila_contract.exits): what the trainer writes, what the
operator reads, and which line wins when several workers of a pod write."""

from __future__ import annotations

from pathlib import Path

import pytest
from longvila_contract import exits


def test_a_line_is_one_line_and_classifies_back() -> None:
    text = exits.line(exits.ERROR, "train.lr: must be > 0,\n   got -1")
    assert text == "longvila-train: error: train.lr: must be > 0, got -1"
    assert exits.classify(text + "\n") == (exits.ERROR, "train.lr: must be > 0, got -1")
    assert exits.is_permanent(text) and not exits.is_permanent(exits.line(exits.UNAVAILABLE, "S3 down"))
    assert (
        exits.classify("Traceback (most recent call last):\n  longvila-train: error: x") is None
    )  # a log tail
    assert len(exits.line(exits.CRASHED, "é" * 5000).encode()) < exits.MAX_BYTES
    with pytest.raises(ValueError, match="kind 'fatal'"):
        exits.line("fatal", "x")


def test_the_first_line_stays_but_a_permanent_error_wins(tmp_path: Path) -> None:
    log = tmp_path / "termination-log"
    log.write_text("")  # the kubelet creates it empty
    exits.write(log, exits.CRASHED, "RuntimeError: connection reset by peer")
    exits.write(log, exits.CRASHED, "RuntimeError: a later reaction")
    assert exits.classify(log.read_text()) == (exits.CRASHED, "RuntimeError: connection reset by peer")
    exits.write(log, exits.ERROR, "model.llm: no config.json")
    exits.write(log, exits.CRASHED, "RuntimeError: after the error")
    exits.write(log, exits.ERROR, "a second rank's copy")
    assert exits.classify(log.read_text()) == (exits.ERROR, "model.llm: no config.json")
