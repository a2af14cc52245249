"""`longvila check -f JOB.yaml`: every admission rule plus the trainer's preflight, no cluster.

The admission rules are the CRD's (schema and CEL, run in Python) and the operator's own
(validation.py). The preflight (longvila_contract.preflight, the same code the trainer runs
before it loads any weights) needs the model's config.json files: `--llm-config` and
`--vision-config`, else read from the spec's model URIs (file:// on this machine, or s3://
with boto3 and the usual AWS_* variables; the spec's checkpoint.endpoint is used when set).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from longvila_contract.config import from_dict
from longvila_contract.model import ModelConfigError, ModelFacts
from longvila_contract.preflight import Fields, Preflight, StageInput, preflight, table
from longvila_contract.uri import URIError, parse_uri

from .api.manifest import InvalidJob, Job
from .placement import Request
from .trainer_config import render_all
from .validation import load_job


def read_model_config(uri: str, field: str, endpoint: str = "") -> dict[str, Any]:
    """config.json under a model URI; raises ModelConfigError naming the field."""
    try:
        u = parse_uri(uri, field)
    except URIError as err:
        raise ModelConfigError(str(err)) from None
    try:
        if u.scheme == "file":
            text = (u.path / "config.json").read_text()
        else:
            text = s3_text(u.bucket, u.key("config.json"), endpoint)
        tree = json.loads(text)
    except (OSError, ValueError) as err:
        raise ModelConfigError(f"{field}: cannot read {uri}/config.json ({err}); pass it as a file") from None
    if not isinstance(tree, dict):
        raise ModelConfigError(f"{field}: {uri}/config.json is not a JSON object")
    return tree


def s3_text(bucket: str, key: str, endpoint: str) -> str:
    try:
        import boto3  # optional: `pip install longvila-operator[s3]`; the operator itself never reads S3
    except ImportError:
        raise OSError("reading s3:// needs boto3 (pip install 'longvila-operator[s3]')") from None
    client = boto3.client("s3", endpoint_url=endpoint or None)
    try:
        return str(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    except Exception as err:  # botocore's errors: credentials, network, missing key
        raise OSError(f"s3://{bucket}/{key}: {err}") from None


def job_preflight(job: Job, facts: ModelFacts) -> Preflight:
    """The trainer's preflight for every stage of the job, in the spec's field names."""
    layout = Request.from_spec(job.spec).layout()
    stages = []
    for i, (stage, (tree, rope_from)) in enumerate(
        zip(job.spec.stages, render_all(job.spec).values(), strict=True)
    ):
        at = f"spec.stages[{i}]"
        fields = Fields(context=f"{at}.contextLength", rope=f"{at}.ropeTheta", frames=f"{at}.frames")
        inherited = rope_from if rope_from != stage.name else ""
        stages.append(StageInput(stage.name, stage.type, from_dict(tree).train, fields, inherited))
    return preflight(layout, facts, stages, "spec.topology.sequenceParallel.ulysses")


def check(
    manifest: Mapping[str, Any], llm_config: Mapping[str, Any] | None, vision_config: Mapping[str, Any] | None
) -> tuple[str, list[str]]:
    """(summary, problems): problems empty when the job would be admitted and would train."""
    try:
        job = load_job(manifest)
    except InvalidJob as err:
        return "", list(err.errors)
    spec, problems = job.spec, list[str]()
    try:
        llm = llm_config or read_model_config(spec.model.llm, "spec.model.llm", spec.checkpoint.endpoint)
        vision = vision_config or read_model_config(
            spec.model.vision_tower, "spec.model.visionTower", spec.checkpoint.endpoint
        )
        facts = ModelFacts.from_configs(llm, vision, "spec.model.llm", "spec.model.visionTower")
    except ModelConfigError as err:
        return "", [str(err)]
    result = job_preflight(job, facts)
    problems += result.problems
    t, sp = spec.topology, spec.topology.sequence_parallel
    layout = Request.from_spec(spec).layout()
    head = [
        f"LongVILAJob {job.name}: {t.nodes} nodes × {t.gpus_per_node} GPUs = {layout.world} ranks; "
        f"ulysses {sp.ulysses} × ring {sp.ring} = sp {layout.sp} ({sp.layout}), data parallel {layout.dp}",
        f"model: {facts.describe()}",
    ]
    if result.kv_replication:
        kv = facts.kv_heads * result.kv_replication // sp.ulysses
        head.append(
            f"per Ulysses rank: query heads {facts.heads // sp.ulysses}, KV heads {kv}"
            + (f" (KV heads replicated ×{result.kv_replication})" if result.kv_replication > 1 else "")
        )
    return "\n".join([*head, "", table(result)]), problems


def load_config_file(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    tree = json.loads(Path(path).read_text())
    if not isinstance(tree, dict):
        raise ValueError(f"{path}: not a JSON object (a config.json is expected)")
    return tree
