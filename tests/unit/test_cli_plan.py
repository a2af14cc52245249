"""`longvila plan` on a sample `kubectl get nodes -o yaml`: JSON shape, table, exit codes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from longvila_operator.cli import main, ranges

ROOT = Path(__file__).resolve().parents[2]
NODES = ROOT / "tests/data/nodes/two-domains.yaml"
TINY = ROOT / "tests/data/jobs/two-nodes-sp16.yaml"
BIG = ROOT / "examples/jobs/longvila-7b-256f.yaml"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_plan_json_shape() -> None:
    code, out, err = run("plan", "-f", str(TINY), "--nodes", str(NODES), "-o", "json")
    assert code == 0, err
    plan = json.loads(out)
    assert list(plan) == ["nodes", "ranks", "domainsSpanned"]
    # gpu-node-1 is NotReady and gpu-node-4 cordoned: two usable nodes per spine; tie -> spine-0
    assert plan["nodes"] == [
        {"name": "gpu-node-0", "nodeRank": 0, "domain": "spine-0"},
        {"name": "gpu-node-2", "nodeRank": 1, "domain": "spine-0"},
    ]
    assert plan["domainsSpanned"] == 1
    assert len(plan["ranks"]) == 16
    assert all(
        set(r) == {"rank", "node", "localRank", "ulyssesGroup", "ringGroup", "dpGroup"} for r in plan["ranks"]
    )
    assert plan["ranks"][13] == {
        "rank": 13,
        "node": "gpu-node-2",
        "localRank": 5,
        "ulyssesGroup": 3,
        "ringGroup": 1,
        "dpGroup": 13,
    }


def test_plan_spans_domains_when_it_must() -> None:
    code, out, err = run("plan", "-f", str(BIG), "--nodes", str(NODES), "-o", "json")
    assert code == 0, err
    plan = json.loads(out)
    assert [n["domain"] for n in plan["nodes"]] == ["spine-0", "spine-0", "spine-1", "spine-1"]
    assert plan["domainsSpanned"] == 2


def test_plan_table_for_people() -> None:
    code, out, _ = run("plan", "-f", str(TINY), "--nodes", str(NODES))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("LongVILAJob tiny-demo: 2 nodes × 8 GPUs (ulysses 4 × ring 4")
    assert "domain label network.topology.nvidia.com/spine; 1 domain(s) spanned" in lines[1]
    header = lines[3].split()
    assert header[:2] == ["NODE", "RANK"] and "DOMAIN" in header
    assert lines[4].split() == ["0", "gpu-node-0", "spine-0", "0-7", "0-1", "0-3", "0-7"]
    assert lines[5].split() == ["1", "gpu-node-2", "spine-0", "8-15", "2-3", "0-3", "8-15"]


def test_plan_pin_and_exclude() -> None:
    code, out, err = run(
        "plan",
        "-f",
        str(TINY),
        "--nodes",
        str(NODES),
        "-o",
        "json",
        "--exclude",
        "gpu-node-2",
        "--pin",
        "0=gpu-node-0",
    )
    assert code == 0, err
    assert [n["name"] for n in json.loads(out)["nodes"]] == ["gpu-node-0", "gpu-node-3"]


def test_unsatisfiable_exits_non_zero_with_the_reason() -> None:
    code, out, err = run("plan", "-f", str(BIG), "--nodes", str(NODES), "--exclude", "gpu-node-0")
    assert code == 1 and out == ""
    assert "unsatisfiable: cannot place 4 nodes × 8 GPUs" in err
    assert "spine-0: 1, spine-1: 2 (3 in all)" in err
    assert (
        "not Ready (1): gpu-node-1" in err
        and "cordoned (1): gpu-node-4" in err
        and "excluded (1): gpu-node-0" in err
    )


def test_shrink_flag_places_fewer_nodes() -> None:
    code, out, err = run(
        "plan", "-f", str(BIG), "--nodes", str(NODES), "-o", "json", "--exclude", "gpu-node-0", "--shrink"
    )
    assert code == 0, err
    assert len(json.loads(out)["nodes"]) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "-f", "missing.yaml", "--nodes", str(NODES)], "invalid input"),
        (
            ["plan", "-f", str(ROOT / "tests/data/invalid_jobs/zero-nodes.yaml"), "--nodes", str(NODES)],
            "should be greater than or equal to 1",
        ),
        (["plan", "-f", str(TINY), "--nodes", str(NODES), "--pin", "zero=gpu-node-0"], "expected RANK=NODE"),
    ],
)
def test_invalid_input_exits_2(argv: list[str], message: str) -> None:
    code, _, err = run(*argv)
    assert code == 2 and message in err, err


def test_console_script_entry_point() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "longvila_operator.cli",
            "plan",
            "-f",
            str(TINY),
            "--nodes",
            str(NODES),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["domainsSpanned"] == 1


def test_ranges() -> None:
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and ranges([]) == "" and ranges([3]) == "3"
