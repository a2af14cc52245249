"""`validate(spec) -> list[str]`: what the API server checks, plus what CEL cannot say.

The first part mirrors the CRD (schema facts and the Python side of each CEL rule, see
api/manifest.py), so the CLI, which reads files that never met an API server, refuses
the same specs. The second part is checked only here, and the operator reports it as a
condition and an Event instead of creating pods: image references, trainer-config
override keys against the keys the spec owns, context extension that must grow stage
after stage, /dev/shm that must fit in the memory limit, env names the operator sets.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from longvila_contract import env as contract
from longvila_contract.config import ConfigError, from_dict
from longvila_contract.labels import KUEUE_QUEUE
from longvila_contract.stages import stage_type as stage_table_entry
from longvila_contract.uri import IMAGE_DIR, SCHEMES, Scheme, URIError, parse_uri

from .api import API_VERSION, KIND
from .api.manifest import InvalidJob, Job, load_spec, name_errors
from .api.types import JobSpec
from .trainer_config import owner_of, render

IMAGE = re.compile(
    r"^([A-Za-z0-9.-]+(:[0-9]+)?/)?[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*$")
UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
UNITS |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity(text: str) -> float:
    m = re.fullmatch(r"([0-9]+(?:[.][0-9]+)?)([A-Za-z]*)", text)
    if not m or m.group(2) not in UNITS:
        raise ValueError(f"not a quantity: {text!r}")
    return float(m.group(1)) * UNITS[m.group(2)]


def validate(spec: Mapping[str, Any]) -> list[str]:
    """Every problem with a LongVILAJob spec, one line each, naming the field; [] when valid."""
    typed, errors = load_spec(spec)
    return errors if typed is None else semantic_errors(typed)


def semantic_errors(spec: JobSpec) -> list[str]:
    errs: list[str] = []
    if not IMAGE.match(spec.image):
        errs.append(
            f'spec.image: Invalid value: "{spec.image}": not an image reference '
            "([registry[:port]/]name[:tag][@sha256:digest], lower-case name)"
        )
    for i, stage in enumerate(spec.stages):
        at = f"spec.stages[{i}].overrides"
        for key in sorted(stage.overrides):
            owner = owner_of(key)
            if not DOTTED.match(key):
                errs.append(f'{at}: Invalid value: "{key}": keys are dotted identifiers such as train.lr')
            elif owner:
                errs.append(f'{at}: Invalid value: "{key}": set by the spec; change spec.{owner} instead')
        if not any(e.startswith(at) for e in errs):
            try:
                rendered = render(spec, stage)
            except ValueError as err:
                errs.append(f"{at}: Invalid value: {err}")
            else:
                errs += trainer_config_errors(at, rendered)
    errs += uri_errors(spec)
    errs += mount_errors(spec)
    errs += extension_errors(spec)
    if spec.resources.memory and quantity(spec.resources.shared_memory) > quantity(spec.resources.memory):
        errs.append(
            f'spec.resources.sharedMemory: Invalid value: "{spec.resources.shared_memory}": /dev/shm is '
            f"memory-backed and counts against resources.memory ({spec.resources.memory}); make it smaller"
        )
    owned = {contract.S3_ENDPOINT: "spec.checkpoint.endpoint"} if spec.checkpoint.endpoint else {}
    if spec.checkpoint.credentials_secret:
        keys = contract.S3_CREDENTIAL_KEYS + contract.S3_OPTIONAL_KEYS
        owned |= dict.fromkeys(keys, "spec.checkpoint.credentialsSecret")
    for i, var in enumerate(spec.env):
        if var.name in owned:
            errs.append(
                f'spec.env[{i}].name: Invalid value: "{var.name}": set by the operator from {owned[var.name]}'
            )
    return errs


def uri_errors(spec: JobSpec) -> list[str]:
    """The contract's parser is stricter than the CRD's regexes (no empty, '.' or '..' path
    parts): what it refuses, the trainer would refuse in every pod, so refuse it here."""
    uris: list[tuple[str, str | None, tuple[Scheme, ...]]] = [
        ("spec.model.llm", spec.model.llm, ("s3", "file")),
        ("spec.model.visionTower", spec.model.vision_tower, ("s3", "file")),
        ("spec.model.init", spec.model.init, ("s3", "file")),
        ("spec.checkpoint.uri", spec.checkpoint.uri, ("s3",)),
    ]
    uris += [(f"spec.stages[{i}].data", st.data, SCHEMES) for i, st in enumerate(spec.stages)]
    errs = []
    for field, text, schemes in uris:
        if text is None:
            continue
        try:
            parse_uri(text, field, schemes)
        except URIError as err:
            errs.append(f"{field}: Invalid value: {err}")
    return errs


URI_OVERRIDES = ("data.media_root", "data.short_uri", "model.tokenizer")  # config keys that hold URIs


def file_uris(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, path) of every file:// URI the pods will open."""
    model = (
        ("spec.model.llm", spec.model.llm),
        ("spec.model.visionTower", spec.model.vision_tower),
        ("spec.model.init", spec.model.init or ""),
    )
    out = [(f, u) for f, u in model if u.startswith("file://")]
    for i, st in enumerate(spec.stages):
        out += [(f"spec.stages[{i}].data", st.data)] if st.data.startswith("file://") else []
        for key in URI_OVERRIDES:
            value = st.overrides.get(key)
            if isinstance(value, str) and (value.startswith("file://") or value.startswith("/")):
                out.append((f"spec.stages[{i}].overrides[{key}]", value))
    return [(f, u.removeprefix("file://")) for f, u in out]


def under(path: str, mount: str) -> bool:
    """Whether `path` lies in the directory `mount` (component-wise, not by string prefix)."""
    mount = "/" + mount.strip("/")
    return mount == "/" or path == mount or path.startswith(mount + "/")


def mount_errors(spec: JobSpec) -> list[str]:
    """A file:// path must exist in every pod: on a volume (spec.volumeMounts) or in the image."""
    mounts = [m.mount_path for m in spec.volume_mounts]
    errs = []
    for field, path in file_uris(spec):
        if not any(under(path, m) for m in (*mounts, IMAGE_DIR)):
            where = (
                f"any of spec.volumeMounts ({', '.join(mounts)})"
                if mounts
                else "a spec.volumeMounts[].mountPath"
            )
            errs.append(
                f'{field}: Invalid value: "file://{path}": not under {where} nor inside the trainer image '
                f"({IMAGE_DIR}/); mount the volume that holds it (spec.volumes, spec.volumeMounts)"
            )
    return errs


def extension_errors(spec: JobSpec) -> list[str]:
    """Context extension grows the context (and the RoPE base) stage after stage (LongVILA §3.4):
    consecutive stages of a type with `grows_context` in the stage table."""
    errs, prev = [], None
    for i, stage in enumerate(spec.stages):
        if not stage_table_entry(stage.type).grows_context:
            continue
        if prev is not None:
            j, before = prev
            if (stage.context_length or 0) <= (before.context_length or 0):
                errs.append(
                    f"spec.stages[{i}].contextLength: Invalid value: {stage.context_length}: "
                    "context-extension "
                    f"stages must grow the context; spec.stages[{j}] already reaches {before.context_length}"
                )
            if (stage.rope_theta or 0) < (before.rope_theta or 0):
                errs.append(
                    f"spec.stages[{i}].ropeTheta: Invalid value: {stage.rope_theta}: must not be below "
                    f"spec.stages[{j}].ropeTheta ({before.rope_theta})"
                )
        prev = (i, stage)
    return errs


def load_job(manifest: Mapping[str, Any]) -> Job:
    """A LongVILAJob manifest as a Job; raises InvalidJob listing every problem."""
    errs = []
    if manifest.get("apiVersion") != API_VERSION or manifest.get("kind") != KIND:
        errs.append(
            f"not a {KIND}: apiVersion must be {API_VERSION} and kind {KIND}, "
            f"got {manifest.get('apiVersion')!r} / {manifest.get('kind')!r}"
        )
    meta = manifest.get("metadata") or {}
    name = str(meta.get("name", ""))
    if not name:
        errs.append("metadata.name: Required value")
    errs += name_errors(name)
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        raise InvalidJob([*errs, "spec: Required value"])
    errs += validate(spec)
    if errs:
        raise InvalidJob(errs)
    typed, _ = load_spec(spec)
    assert typed is not None
    labelled = str((meta.get("labels") or {}).get(KUEUE_QUEUE) or "")
    queue = typed.scheduling.queue_name or labelled
    if labelled and queue != labelled:
        raise InvalidJob(
            [
                f'spec.scheduling.queueName: Invalid value: "{queue}": the label {KUEUE_QUEUE} names another '
                f'queue ("{labelled}"); set one of them, or both to the same LocalQueue'
            ]
        )
    return Job(
        name=name,
        namespace=str(meta.get("namespace") or "default"),
        uid=str(meta.get("uid") or ""),
        spec=typed,
        generation=int(meta.get("generation") or 0),
        queue=queue,
    )


def trainer_config_errors(at: str, rendered: dict[str, Any]) -> list[str]:
    """The stage's rendered config (complete: preset ⊕ spec ⊕ overrides) must load in the trainer.

    The config schema is the contract's (longvila_contract.config, what the trainer loads);
    checking here turns a typo in an override (say optim.lr for train.lr) into a rejected job, not
    a crash-looping pod.
    """
    try:
        from_dict(rendered)
    except ConfigError as err:
        return [f"{at}: Invalid value: the trainer rejects the stage config: {err}"]
    return []
