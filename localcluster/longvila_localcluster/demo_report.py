"""What the demo prints at the end: the stages of the job and its checkpoints on S3."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from longvila_contract import checkpoint as L
from longvila_trainer.checkpoint.s3 import Storage, open_storage

from .cluster import ClusterInfo


def stage_table(stages: Sequence[Mapping[str, Any]]) -> str:
    rows = [("STAGE", "PHASE", "RESTARTS", "STARTED", "COMPLETED", "CHECKPOINT")]
    for s in stages:
        rows.append(
            (
                str(s.get("name", "")),
                str(s.get("phase", "")),
                str(s.get("restarts", 0)),
                str(s.get("startTime") or "-"),
                str(s.get("completionTime") or "-"),
                str(s.get("checkpoint") or "-"),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def storage(info: ClusterInfo, prefix: str) -> Storage:
    """The job's checkpoints on the cluster's S3 server, through the trainer's own storage
    (one S3 client implementation, with its retries and errors)."""
    return open_storage(f"s3://{info.s3_bucket}/{prefix}", environ=info.env())


def stage_checkpoints(info: ClusterInfo, prefix: str) -> L.StageCheckpoints:
    """A stage's checkpoints (s3://bucket/prefix), complete as the trainer means it."""
    store = storage(info, prefix)
    return L.read_checkpoints(store.listing(""), store.get_bytes)


def checkpoint_listing(info: ClusterInfo, prefix: str) -> str:
    """One line per checkpoint of every stage under s3://bucket/prefix: files, bytes, state."""
    stages = sorted({k.split("/", 1)[0] for k in storage(info, prefix).listing("") if "/" in k})
    lines = [f"checkpoints in s3://{info.s3_bucket}/{prefix}/ ({info.s3_endpoint})"]
    lines.append("CHECKPOINT                                FILES  BYTES      STATE")
    for stage in stages:
        found = stage_checkpoints(info, f"{prefix}/{stage}")
        for st in found.steps:
            state = ("complete" if st.complete else "incomplete") + (
                ", final" if found.final == st.step else ""
            )
            name = f"{stage}/{L.step_dir(st.step)}"
            lines.append(f"{name:40}  {st.files:5}  {st.bytes:9}  {state}")
    return "\n".join(lines)
