#!/usr/bin/env python3
"""Re-introduces each device mistake of issue 12, one at a time, and runs `pytest -m device`.

    .venv/bin/python scripts/device_mutations.py [--only NAME ...] [--json]

Each mutation edits one line of a copy of trainer/longvila_trainer (in a temporary
directory, put first on PYTHONPATH; the checkout is never touched) and runs the device
tests against it. A mutation the tests do not catch is a hole: the script exits 1. The
table it prints is the one in docs/training.md ("Device discipline").
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "trainer" / "longvila_trainer"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to longvila_trainer/
    old: str
    new: str
    what: str


MUTATIONS = (
    Mutation("frame-counts", "model/longvila.py",
             "gather_frame_tokens(counts, n_frames, sp, groups.host.sp)",
             "gather_frame_tokens(counts, n_frames, sp, groups.sp)",
             "frame token counts: a CPU all-gather over the SP compute group"),
    Mutation("step-stats", "loop.py",
             "[loss_sum, tokens / groups.layout.sp], groups.host.world)",
             "[loss_sum, tokens / groups.layout.sp], groups.world)",
             "logged loss/tokens: a CPU all-reduce over the compute world"),
    Mutation("max-over-ranks", "loop.py",
             'groups.host.world, "max")', 'groups.world, "max")',
             "logged memory: a CPU all-reduce (max) over the compute world"),
    Mutation("loss-accumulator", "loop.py",
             "torch.zeros((), dtype=torch.float64, device=groups.device)",
             "torch.zeros((), dtype=torch.float64)",
             "the step's loss accumulated in a CPU float64 tensor"),
    Mutation("dp-target-count", "sharding/targets.py",
             "[n_targets, tower_calls], 2, groups.host.dp)", "[n_targets, tower_calls], 2, groups.dp)",
             "target count (and tower calls): a CPU exchange over the dp compute group"),
    Mutation("ce-targets", "model/longvila.py",
             "local_targets[keep].to(groups.device)", "local_targets[keep]",
             "cross-entropy of device logits against CPU targets"),
    Mutation("keep-rows", "model/longvila.py",
             "hidden.index_select(0, keep.to(groups.device))", "hidden.index_select(0, keep)",
             "the rows with a target selected with a CPU index"),
    Mutation("position-ids", "sharding/exchange.py",
             'if isinstance(getattr(self, f.name), torch.Tensor)}',
             'if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "position_ids"}',
             "RoPE position ids left on the CPU"),
    Mutation("text-ids", "sharding/exchange.py",
             'if isinstance(getattr(self, f.name), torch.Tensor)}',
             'if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "text_ids"}',
             "token ids of the text rows left on the CPU (embedding lookup)"),
    Mutation("text-slots", "sharding/exchange.py",
             'if isinstance(getattr(self, f.name), torch.Tensor)}',
             'if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "text_slots"}',
             "slot indices of the text rows left on the CPU (assemble_shard)"),
    Mutation("visual-slots", "sharding/exchange.py",
             'if isinstance(getattr(self, f.name), torch.Tensor)}',
             'if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "visual_slots"}',
             "slot indices of the received visual rows left on the CPU"),
    Mutation("send-rows", "sharding/exchange.py",
             'if isinstance(getattr(self, f.name), torch.Tensor)}',
             'if isinstance(getattr(self, f.name), torch.Tensor) and f.name != "send_rows"}',
             "rows of the encoder output to send, indexed on the CPU"),
    Mutation("frames", "model/longvila.py",
             "torch.stack(list(frames[start:stop])).to(device, dtype)",
             "torch.stack(list(frames[start:stop])).to(dtype=dtype)",
             "frames left on the CPU for the vision tower"),
    Mutation("idle-frame", "model/longvila.py",
             "dummy, _ = self.encode([frame], device)", 'dummy, _ = self.encode([frame], torch.device("cpu"))',
             "the zero frame of a rank without frames encoded on the CPU"),
    Mutation("ring-backward", "attention/ring.py",
             "dkv = torch.zeros(kv.shape, dtype=acc_dtype, device=q.device)",
             "dkv = torch.zeros(kv.shape, dtype=acc_dtype)",
             "ring attention's dK/dV accumulator on the CPU (backward)"),
    Mutation("head-backward", "model/head_loss.py",
             "torch.arange(t.shape[0], device=t.device)", "torch.arange(t.shape[0])",
             "the fused head/loss backward indexing with a CPU range"),
    Mutation("comm-check", "parallel/comm.py",
             "        if not _same_device(t, group.device):", "        if False:",
             "the comm layer's device check itself switched off"),
)  # fmt: skip


def apply(copy: Path, m: Mutation) -> None:
    path = copy / m.file
    text = path.read_text()
    if text.count(m.old) < 1:
        raise SystemExit(f"device_mutations: {m.name}: {m.old!r} not found in {m.file} (update the table)")
    path.write_text(text.replace(m.old, m.new, 1))


def run(m: Mutation, pytest_args: list[str]) -> list[str]:
    """The device tests that fail with `m` applied (empty: not caught)."""
    with tempfile.TemporaryDirectory(prefix="device-mutation-") as tmp:
        copy = Path(tmp) / "longvila_trainer"
        shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
        apply(copy, m)
        env = {**os.environ, "PYTHONPATH": tmp + os.pathsep + os.environ.get("PYTHONPATH", "")}
        out = subprocess.run(
            [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "device", "-rf",
             "tests/unit/test_device.py", *pytest_args],
            cwd=ROOT, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if str(copy) not in subprocess.run(
            [sys.executable, "-c", "import longvila_trainer; print(longvila_trainer.__file__)"],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True,
        ).stdout:  # fmt: skip
            raise SystemExit("device_mutations: the mutated copy does not shadow the installed package")
        return sorted(set(re.findall(r"^FAILED (\S+?)(?: - |$)", out.stdout, re.M)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="mutation names (default: all)")
    ap.add_argument("--json", action="store_true")
    a, rest = ap.parse_known_args(argv)
    chosen = [m for m in MUTATIONS if not a.only or m.name in a.only]
    rows = []
    for m in chosen:
        failed = run(m, rest)
        rows.append({"mutation": m.name, "file": m.file, "what": m.what, "failing_tests": failed})
        if not a.json:
            tests = ", ".join(f.split("::")[-1] for f in failed) or "NOT CAUGHT"
            print(f"{m.name:17} {m.file:22} {tests}", flush=True)
    if a.json:
        print(json.dumps(rows, indent=1))
    return 1 if any(not r["failing_tests"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
