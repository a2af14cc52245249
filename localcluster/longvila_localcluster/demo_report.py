"""What the demo prints at the end: the stages of the job and its checkpoints on S3."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from .cluster import ClusterInfo

_STEP = re.compile(r"^(?P<stage>.+)/step-(?P<step>\d{8})/(?P<rest>.+)$")


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


def group_listing(objects: Mapping[str, int], finals: Mapping[str, str]) -> str:
    """`stage/step-N/...` keys → one line per checkpoint: files, bytes, complete, final."""
    steps: dict[tuple[str, int], dict[str, int]] = defaultdict(dict)
    for k, size in objects.items():
        if m := _STEP.match(k):
            steps[(m["stage"], int(m["step"]))][m["rest"]] = size
    lines = ["CHECKPOINT                                FILES  BYTES      STATE"]
    for (stage, step), files in sorted(steps.items()):
        final = finals.get(stage) == str(step)
        state = ("complete" if "manifest.json" in files else "incomplete") + (", final" if final else "")
        lines.append(f"{stage + f'/step-{step:08d}':40}  {len(files):5}  {sum(files.values()):9}  {state}")
    return "\n".join(lines)


def s3_client(info: ClusterInfo) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=info.s3_endpoint,
        aws_access_key_id=info.s3_access_key,
        aws_secret_access_key=info.s3_secret_key,
        region_name="us-east-1",
    )


def list_objects(info: ClusterInfo, prefix: str) -> dict[str, int]:
    """Keys under `prefix/` (relative to it) → sizes."""
    pages = (
        s3_client(info)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=info.s3_bucket, Prefix=prefix.rstrip("/") + "/")
    )
    return {o["Key"][len(prefix) + 1 :]: int(o["Size"]) for page in pages for o in page.get("Contents", [])}


def checkpoint_listing(info: ClusterInfo, prefix: str) -> str:
    s3, objects = s3_client(info), list_objects(info, prefix)
    finals = {}
    for k in objects:
        if k.endswith("/final.json"):
            body = s3.get_object(Bucket=info.s3_bucket, Key=f"{prefix}/{k}")["Body"].read()
            finals[k.rsplit("/", 1)[0]] = str(json.loads(body)["step"])
    head = f"checkpoints in s3://{info.s3_bucket}/{prefix}/ ({info.s3_endpoint})"
    return head + "\n" + group_listing(objects, finals)
