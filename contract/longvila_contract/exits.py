"""How a worker's failure reaches the operator: the termination message. Pure.

torchrun turns every worker's exit code into its own 1, so the code cannot say *why* a
worker stopped. The message can: each worker writes one line to the file named by
LONGVILA_TERMINATION_LOG (env.TERMINATION_LOG, the container's terminationMessagePath),
the kubelet copies it into the pod's `containerStatuses[].state.terminated.message`, and
the operator reads it back with `classify`:

- `longvila-train: error: …` — bad input (config, env contract, layout, weights or data
  that are not there). The same input fails every attempt: the job fails at once.
- `longvila-train: unavailable: …` — a service the run needs (S3) stayed unreachable
  after the trainer's own retries: a restart may help.
- `longvila-train: crashed: …` — anything else the trainer did not expect.

A permanent line always wins over what another rank of the same pod wrote (`write`), so
one pod's message is the root cause, not a peer's reaction to it.
"""

from __future__ import annotations

from pathlib import Path

PROGRAM = "longvila-train"
ERROR = "error"  # permanent: bad input
UNAVAILABLE = "unavailable"  # transient: a dependency stayed down
CRASHED = "crashed"  # unexpected
KINDS = (ERROR, UNAVAILABLE, CRASHED)
EXIT_BAD_INPUT = 2  # the trainer's own exit code (torchrun reports 1 for the pod)
EXIT_UNAVAILABLE = 3
MAX_BYTES = 4096  # the kubelet keeps at most this much of the file


def line(kind: str, text: str) -> str:
    """One line `longvila-train: <kind>: <text>`, whitespace folded, cut to what the kubelet keeps."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: must be one of {', '.join(KINDS)}")
    out = f"{PROGRAM}: {kind}: {' '.join(str(text).split())}"
    return out.encode()[: MAX_BYTES - 1].decode(errors="ignore")


def classify(message: str) -> tuple[str, str] | None:
    """(kind, text) of a termination message the trainer wrote; None for anything else
    (an empty message, or the log tail a kubelet substitutes under FallbackToLogsOnError)."""
    first = message.strip().split("\n", 1)[0]
    for kind in KINDS:
        head = f"{PROGRAM}: {kind}: "
        if first.startswith(head):
            return kind, first[len(head) :]
    return None


def is_permanent(message: str) -> bool:
    found = classify(message)
    return found is not None and found[0] == ERROR


def write(path: str | Path, kind: str, text: str) -> None:
    """Record this worker's line unless the file already holds one that says more.

    Several workers of a pod share the file: the first line stays, except that a permanent
    error replaces anything else (the root cause of a bad input is the same on every rank).
    """
    target = Path(path)
    try:
        held = target.read_text() if target.exists() else ""
    except OSError:
        held = ""
    if classify(held) is not None and (kind != ERROR or is_permanent(held)):
        return
    target.write_text(line(kind, text) + "\n")
