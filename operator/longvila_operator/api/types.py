"""The LongVILAJob API: spec and status as typed dataclasses, the one source of truth.

Every field carries its documentation, default and bounds (`prop`); classes carry their
cross-field rules (`RULES`), each written twice side by side: as CEL for the API server
(`x-kubernetes-validations`) and as a Python predicate for the operator and the CLI, with
one message for both. `schema.py` turns these classes into the CRD's OpenAPI schema;
`manifest.py` turns a manifest into instances. Python names are snake_case; the JSON
names are their camelCase forms.

Every string and list is bounded (maxLength / maxItems): the API server estimates a CEL
rule's worst-case cost from those bounds and refuses a CRD whose rules could exceed its
per-rule budget.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, dataclass_transform

from longvila_contract.layout import TOKEN_LAYOUTS, sp_divides_world, ulysses_in_node
from longvila_contract.stages import STAGE_TABLE, STAGE_TYPES, StageType
from longvila_contract.status import PHASES, STAGE_PHASES
from longvila_contract.uri import DATA_URI, HTTP_ENDPOINT, MODEL_URI, S3_URI, forms

NODE_FAILURE_POLICIES = ("replace", "shrink", "fail")

# Regexes shared by CEL (RE2) and Python `re`; written without backslashes so the same text
# is valid inside a CEL string literal (`[.]`, not an escaped dot), as the URI regexes of
# longvila_contract.uri are.
DNS_LABEL = "^[a-z]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = (
    "^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    "[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
RESOURCE_NAME = "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
ENV_NAME = "^[A-Za-z_][A-Za-z0-9_]*$"
QUANTITY = "^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"
RESERVED_ENV_PREFIXES = ("PET_", "LONGVILA_", "TORCHELASTIC_")
# Names that hold credentials by convention (AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, HF_TOKEN,
# WANDB_API_KEY, …): a plain value would sit in the job spec and in every pod spec for anyone
# who can read them, so they come from a Secret or not at all.
CREDENTIAL_SUFFIXES = (
    "_TOKEN",
    "_PASSWORD",
    "_SECRET",
    "_SECRET_KEY",
    "_ACCESS_KEY",
    "_API_KEY",
    "_CREDENTIALS",
)


@dataclass(frozen=True)
class Rule:
    """One cross-field constraint: CEL for the API server, `check` for Python, one message.

    `got` is an optional CEL expression naming the offending value; the API server appends
    it to the message through messageExpression, so the message itself stays a stable
    substring that tests and people can search for. Only bounded strings qualify: the
    cost estimator sizes `string(int)` as unbounded and refuses the CRD.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str = ""
    got: str = ""


@dataclass(frozen=True)
class Prop:
    """Schema facts about one field (see `prop`)."""

    doc: str
    minimum: float | None = None
    maximum: float | None = None
    enum: tuple[str, ...] = ()
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min_items: int | None = None
    max_items: int | None = None
    max_properties: int | None = None
    value_max_length: int | None = None
    list_map_keys: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    format: str | None = None


def prop(
    doc: str, *, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING, **facts: Any
) -> Any:
    """A dataclass field with its documentation and schema facts (keywords of `Prop`)."""
    meta = {"prop": Prop(doc=doc, **facts)}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


T = TypeVar("T")


@dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(prop,))
def api_object(cls: type[T]) -> type[T]:
    """An API type: a frozen, keyword-only dataclass whose fields are `prop`s."""
    return dataclass(frozen=True, kw_only=True)(cls)


def uri_rule(regex: str, message: str, *, allow_empty: bool = False) -> Rule:
    if allow_empty:  # the empty default must pass too: the API server checks defaults against rules
        return Rule(
            rule=f"self == '' || self.matches('{regex}')",
            message=message,
            check=lambda v: v == "" or re.fullmatch(regex, v) is not None,
            got="'got ' + self",
        )
    return Rule(
        rule=f"self.matches('{regex}')",
        message=message,
        check=lambda v: re.fullmatch(regex, v) is not None,
        got="'got ' + self",
    )


S3_RULE = uri_rule(
    S3_URI, "must be an S3 URI s3://<bucket>/<prefix> (bucket: 3-63 lowercase letters, digits, dots, hyphens)"
)
MODEL_RULE = uri_rule(MODEL_URI, f"must be {forms(('s3', 'file'))} inside the image or a volume")
DATA_RULE = uri_rule(DATA_URI, f"must be {forms(('s3', 'file', 'synthetic'))}")
ENDPOINT_RULE = uri_rule(
    HTTP_ENDPOINT,
    "must be empty or an http(s)://host[:port] URL of an S3-compatible endpoint",
    allow_empty=True,
)
QUANTITY_RULE = uri_rule(QUANTITY, "must be a Kubernetes quantity such as 500m, 16, 64Gi or 1.5Ti")


JOB_NAME_RULE = Rule(
    rule="self.metadata.name.size() <= 63",
    message="metadata.name must be at most 63 characters: it is a label value on every child object",
    check=lambda name: len(name) <= 63,
)


@api_object
class ModelSpec:
    """Where the weights come from."""

    llm: str = prop(
        "The language model and its tokenizer: a transformers Qwen2 directory "
        "(e.g. a released VILA checkpoint's llm/).",
        max_length=1024,
        rules=(MODEL_RULE,),
    )
    vision_tower: str = prop(
        "The vision tower: a transformers SigLIP directory (e.g. a released VILA checkpoint's "
        "vision_tower/).",
        max_length=1024,
        rules=(MODEL_RULE,),
    )
    init: str | None = prop(
        "Committed checkpoint the first stage starts from: a stage's (a URI of checkpoint.uri/<stage>) or a "
        "released VILA / LongVILA checkpoint imported with longvila-import (e.g. VILA stage 3); later stages "
        "start from the checkpoint the previous stage committed (recorded in status.stages[].checkpoint).",
        default=None,
        max_length=1024,
        rules=(MODEL_RULE,),
    )


@api_object
class SequenceParallel:
    """The MM-SP layout: sp = ulysses × ring ranks share one sequence."""

    ulysses: int = prop(
        "Ulysses (all-to-all) degree. Ulysses groups are U consecutive ranks, so U must divide gpusPerNode "
        "and each all-to-all stays inside one node.",
        default=1,
        minimum=1,
        maximum=16,
    )
    ring: int = prop(
        "Ring-attention degree. Ring neighbours are U ranks apart, so across nodes they are consecutive "
        "node ranks, which placement keeps inside one InfiniBand domain where it can.",
        default=1,
        minimum=1,
        maximum=1024,
    )
    size: int | None = prop(
        "Optional cross-check: the sequence-parallel size, which must equal ulysses × ring.",
        default=None,
        minimum=1,
        maximum=16384,
    )
    layout: str = prop(
        "Token layout over the ring: zigzag balances causal attention; contiguous is plain sharding.",
        default="zigzag",
        enum=TOKEN_LAYOUTS,
        max_length=16,
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="!has(self.size) || self.size == self.ulysses * self.ring",
            message="size must equal ulysses × ring (or be left out)",
            check=lambda s: s.size is None or s.size == s.ulysses * s.ring,
            field_path=".size",
        ),
    )


@api_object
class Toleration:
    """A pod toleration (core/v1 shape), so the workers can run on tainted GPU nodes."""

    key: str = prop(
        "Taint key; empty with operator Exists tolerates every taint.", default="", max_length=317
    )
    operator: str = prop("Equal or Exists.", default="Equal", enum=("Equal", "Exists"), max_length=8)
    value: str = prop("Taint value (Equal only).", default="", max_length=63)
    effect: str = prop(
        "Taint effect; empty tolerates all effects.",
        default="",
        enum=("", "NoSchedule", "PreferNoSchedule", "NoExecute"),
        max_length=16,
    )
    toleration_seconds: int | None = prop(
        "How long a NoExecute taint is tolerated.", default=None, minimum=0, maximum=86400
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="self.operator != 'Exists' || self.value == ''",
            message="a toleration with operator Exists must not set value",
            check=lambda t: t.operator != "Exists" or t.value == "",
            field_path=".value",
        ),
        Rule(
            rule="self.key != '' || self.operator == 'Exists'",
            message="a toleration with an empty key must use operator Exists",
            check=lambda t: t.key != "" or t.operator == "Exists",
            field_path=".operator",
        ),
    )


@api_object
class Topology:
    """How many nodes, and how ranks map onto them."""

    nodes: int = prop("Worker nodes (one pod per node).", minimum=1, maximum=1024)
    gpus_per_node: int = prop("GPUs requested per node (nvidia.com/gpu).", minimum=1, maximum=16)
    sequence_parallel: SequenceParallel = prop("Sequence-parallel layout.", factory=SequenceParallel)
    domain_label: str = prop(
        "Node label naming the InfiniBand domain; empty = auto-detect (nvidia.com/gpu.clique, "
        "fabric.topograph.run/tier-N, network.topology.nvidia.com/*, cloud.google.com/gce-topology-block, "
        "topology.kubernetes.io/zone, kubernetes.io/hostname, in that order).",
        default="",
        max_length=317,
    )
    node_selector: dict[str, str] = prop(
        "Labels a node must carry to be used.", factory=dict, max_properties=32, value_max_length=63
    )
    tolerations: tuple[Toleration, ...] = prop("Taints the workers tolerate.", factory=tuple, max_items=32)
    rdma_resource: str = prop(
        "Extended resource for the InfiniBand HCAs (e.g. rdma/ib, nvidia.com/hostdev); empty = none.",
        default="",
        max_length=317,
    )
    rdma_per_node: int = prop(
        "How many rdmaResource units each pod requests.", default=1, minimum=1, maximum=64
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="self.gpusPerNode % self.sequenceParallel.ulysses == 0",
            message="sequenceParallel.ulysses must divide gpusPerNode (e.g. 1, 2, 4 or 8 on 8-GPU nodes), "
            "so every "
            "Ulysses all-to-all stays inside one node",
            check=lambda t: ulysses_in_node(t.sequence_parallel.ulysses, t.gpus_per_node),
            field_path=".sequenceParallel.ulysses",
        ),
        Rule(
            rule="(self.nodes * self.gpusPerNode)"
            " % (self.sequenceParallel.ulysses * self.sequenceParallel.ring) == 0",
            message="nodes × gpusPerNode (the world size) must be divisible by "
            "sequenceParallel.ulysses × sequenceParallel.ring (the sequence-parallel size)",
            check=lambda t: sp_divides_world(
                t.nodes * t.gpus_per_node, t.sequence_parallel.ulysses, t.sequence_parallel.ring
            ),
        ),
        Rule(
            rule="self.rdmaResource == '' || self.rdmaResource.matches('" + RESOURCE_NAME + "')",
            message="rdmaResource must be empty or an extended resource name such as rdma/ib",
            check=lambda t: t.rdma_resource == "" or re.fullmatch(RESOURCE_NAME, t.rdma_resource) is not None,
            field_path=".rdmaResource",
        ),
        Rule(
            rule="self.domainLabel == '' || self.domainLabel.matches('" + LABEL_KEY + "')",
            message="domainLabel must be empty (auto-detect) or a node label key "
            "such as nvidia.com/gpu.clique",
            check=lambda t: t.domain_label == "" or re.fullmatch(LABEL_KEY, t.domain_label) is not None,
            field_path=".domainLabel",
        ),
    )


@api_object
class Checkpoint:
    """Where stages write checkpoints: <uri>/<stage name>/, read by the next stage."""

    uri: str = prop("S3 prefix for this job's checkpoints.", max_length=1024, rules=(S3_RULE,))
    every_steps: int = prop(
        "Save a checkpoint every N optimizer steps.", default=200, minimum=1, maximum=1000000
    )
    keep: int = prop("How many complete checkpoints to keep per stage.", default=3, minimum=1, maximum=100)
    credentials_secret: str | None = prop(
        "Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optional AWS_SESSION_TOKEN), passed "
        "to the workers by secretKeyRef only; leave out to use the node's or pod's own identity.",
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    endpoint: str = prop(
        "S3-compatible endpoint URL (MinIO, versitygw…); empty = AWS.",
        default="",
        max_length=512,
        rules=(ENDPOINT_RULE,),
    )


@api_object
class Stage:
    """One step of the pipeline; stages run in order, each from the previous one's checkpoint."""

    name: str = prop(
        "Unique name (a DNS label); used in child object names.", max_length=32, pattern=DNS_LABEL
    )
    type: str = prop("What this stage trains (the LongVILA pipeline).", enum=STAGE_TYPES, max_length=32)
    data: str = prop("Training data.", max_length=1024, rules=(DATA_RULE,))
    max_steps: int | None = prop(
        "Optimizer steps; left out = the stage preset's train.epochs passes over the data (long-video "
        "SFT: 6, as the reference).",
        default=None,
        minimum=1,
    )
    context_length: int | None = prop(
        "Tokens per sequence. For context extension it also picks the reference recipe (steps, "
        "accumulation) of the 64k, 256k, 512k or 1M step.",
        default=None,
        minimum=512,
        maximum=4194304,
    )
    rope_theta: float | None = prop(
        "RoPE base for this context length; left out = the previous stage's (weights keep the base "
        "they were trained with), else the stage preset's or the model's.",
        default=None,
        minimum=1,
    )
    frames: int | None = prop("Video frames per sample.", default=None, minimum=1, maximum=8192)
    overrides: dict[str, Any] = prop(
        "Trainer config overrides as dotted keys, e.g. {train.lr: 2.0e-5}; keys the spec sets (model.llm, "
        "data.uri, train.max_steps …) are refused.",
        factory=dict,
        max_properties=64,
    )

    # One rule per required or forbidden field of each type in the stage-type table.
    RULES: ClassVar[tuple[Rule, ...]] = ()


def stage_rules(t: StageType) -> tuple[Rule, ...]:
    """The CEL rules (and their Python side) a stage of type `t` must satisfy."""

    def snake(field: str) -> str:  # contextLength -> context_length: the Python name of a JSON field
        return re.sub("([A-Z])", lambda m: "_" + m.group(1).lower(), field)

    out = []

    def has_all(s: Any) -> bool:
        return bool(s.type != t.name or all(getattr(s, snake(r.field)) is not None for r in t.requires))

    def lacks(field: str) -> Callable[[Any], bool]:
        return lambda s: bool(s.type != t.name or getattr(s, snake(field)) is None)

    if t.requires:
        present = " && ".join(f"has(self.{r.field})" for r in t.requires)
        has = f"({present})" if len(t.requires) > 1 else present
        out.append(
            Rule(rule=f"self.type != '{t.name}' || {has}", message=t.required_message(), check=has_all)
        )
    for r in t.forbids:
        out.append(
            Rule(
                rule=f"self.type != '{t.name}' || !has(self.{r.field})",
                message=t.forbidden_message(r),
                check=lacks(r.field),
                field_path=f".{r.field}",
            )
        )
    return tuple(out)


Stage.RULES = tuple(rule for t in STAGE_TABLE for rule in stage_rules(t))


@api_object
class FailurePolicy:
    """What happens when a worker or a node fails."""

    max_restarts: int = prop(
        "Gang restarts for application faults (worker crash, OOMKilled, hang) before the job fails.",
        default=3,
        minimum=0,
        maximum=1000,
    )
    max_node_loss_restarts: int = prop(
        "Gang restarts after a lost node (NotReady, deleted, or its heartbeat stopped); infrastructure "
        "faults do not spend maxRestarts.",
        default=10,
        minimum=0,
        maximum=1000,
    )
    max_disruption_restarts: int = prop(
        "Gang restarts after a pod was evicted or deleted by someone else (DisruptionTarget, or a Kueue "
        "eviction other than preemption); they do not spend maxRestarts. A preemption spends no budget.",
        default=10,
        minimum=0,
        maximum=1000,
    )
    node_failure: str = prop(
        "On node loss: replace the lost pods (spare node, same domain first), shrink to fewer nodes keeping "
        "the SP layout (data parallelism shrinks), or fail.",
        default="replace",
        enum=NODE_FAILURE_POLICIES,
        max_length=16,
    )
    min_nodes: int | None = prop(
        "Smallest node count a shrink may reach; default: what the SP layout needs.", default=None, minimum=1
    )
    worker_restarts: int = prop(
        "torchrun's in-place restarts of a pod's workers (PET_MAX_RESTARTS) before the pod fails.",
        default=0,
        minimum=0,
        maximum=10,
    )
    hang_timeout_seconds: int = prop(
        "A gang whose rank 0 reports no new step (and no new checkpoint) for this long is restarted as "
        "hung; longer than the slowest step plus a checkpoint save. 0 = no hang check.",
        default=600,
        minimum=0,
        maximum=86400,
    )
    startup_timeout_seconds: int = prop(
        "Before the first step of an attempt: how long the gang may take from its pods running to "
        "its first step (rendezvous, loading weights) before it counts as hung.",
        default=1800,
        minimum=10,
        maximum=86400,
    )
    collective_timeout_seconds: int = prop(
        "The trainer's collective timeout (torch.distributed process-group timeout): a rank waiting this "
        "long for a peer fails. Longer than hangTimeoutSeconds, so the operator sees a hang as a hang.",
        default=1800,
        minimum=60,
        maximum=259200,
    )
    image_pull_grace_seconds: int = prop(
        "A worker that cannot pull its image (ErrImagePull, ImagePullBackOff) or build its container "
        "(CreateContainerConfigError) this long fails the job as a permanent error.",
        default=300,
        minimum=0,
        maximum=86400,
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            # has(): the API server also checks the rule against the spec's default `{}`.
            rule="!has(self.hangTimeoutSeconds) || !has(self.collectiveTimeoutSeconds) "
            "|| self.hangTimeoutSeconds == 0 || self.collectiveTimeoutSeconds > self.hangTimeoutSeconds",
            message="collectiveTimeoutSeconds must exceed hangTimeoutSeconds (or set hangTimeoutSeconds 0): "
            "a hung collective must reach the operator's hang check before the workers' own timeout",
            check=lambda f: (
                f.hang_timeout_seconds == 0 or f.collective_timeout_seconds > f.hang_timeout_seconds
            ),
            field_path=".collectiveTimeoutSeconds",
        ),
    )


@api_object
class Scheduling:
    """Gang scheduling, and queueing through Kueue (docs/kueue.md)."""

    gang_timeout_seconds: int = prop(
        "If not every pod of a stage is scheduled within this time (counted from Kueue's admission when "
        "queued), the job reports the scheduler's reason.",
        default=300,
        minimum=10,
        maximum=86400,
    )
    priority_class_name: str | None = prop(
        "PriorityClass of the workers; under Kueue also their Workload's priority (unless "
        "workloadPriorityClassName is set).",
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    queue_name: str | None = prop(
        "Kueue LocalQueue (in the job's namespace) that admits the job: each stage attempt's pods form one "
        "Kueue pod group, held until Kueue admits it whole. The label kueue.x-k8s.io/queue-name on the "
        "LongVILAJob does the same.",
        default=None,
        max_length=63,
        pattern=DNS_SUBDOMAIN,
    )
    workload_priority_class_name: str | None = prop(
        "Kueue WorkloadPriorityClass of the job's pod groups (label kueue.x-k8s.io/priority-class on the "
        "pods): Kueue's queueing and preemption priority, apart from the pods' PriorityClass.",
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )


@api_object
class Resources:
    """Per-pod CPU, memory and shared memory (GPUs come from topology.gpusPerNode)."""

    cpu: str | None = prop(
        "CPU request and limit per pod.", default=None, max_length=32, rules=(QUANTITY_RULE,)
    )
    memory: str | None = prop(
        "Memory request and limit per pod.", default=None, max_length=32, rules=(QUANTITY_RULE,)
    )
    shared_memory: str = prop(
        "Size of /dev/shm (a memory-backed emptyDir; counts against memory).",
        default="64Gi",
        max_length=32,
        rules=(QUANTITY_RULE,),
    )


@api_object
class SecretKeyRef:
    name: str = prop("Secret name.", max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = prop("Key in the Secret.", max_length=253)


@api_object
class EnvVar:
    """An extra environment variable for the trainer: a plain value or a Secret reference."""

    name: str = prop("Variable name.", max_length=128, pattern=ENV_NAME)
    value: str | None = prop("Plain value.", default=None, max_length=4096)
    secret_key_ref: SecretKeyRef | None = prop("Take the value from a Secret.", default=None)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="!self.name.startsWith('PET_') && !self.name.startsWith('LONGVILA_') "
            "&& !self.name.startsWith('TORCHELASTIC_')",
            message="names starting with PET_, LONGVILA_ or TORCHELASTIC_ are set by the operator "
            "(the env contract)",
            check=lambda e: not e.name.startswith(RESERVED_ENV_PREFIXES),
            field_path=".name",
        ),
        Rule(
            rule="has(self.value) != has(self.secretKeyRef)",
            message="set exactly one of value and secretKeyRef",
            check=lambda e: (e.value is None) != (e.secret_key_ref is None),
        ),
        Rule(
            rule="!has(self.value) || !("
            + " || ".join(f"self.name.upperAscii().endsWith('{x}')" for x in CREDENTIAL_SUFFIXES)
            + ")",
            message="a credential (a name ending in " + ", ".join(CREDENTIAL_SUFFIXES) + ") must come from a "
            "Secret: use secretKeyRef, not value",
            check=lambda e: e.value is None or not e.name.upper().endswith(CREDENTIAL_SUFFIXES),
            field_path=".value",
        ),
    )


# -- volumes -------------------------------------------------------------------------------------
# A bounded, typed subset of core/v1 Volume and VolumeMount, with the core/v1 field names (a pod's
# `volumes` entry is the same YAML): persistentVolumeClaim, hostPath, csi, emptyDir and nfs, the
# sources a training cluster mounts datasets and weights from. Typed rather than
# x-kubernetes-preserve-unknown-fields: the API server prunes and type-checks them at `kubectl
# apply` and `longvila check` runs the same schema, so a typo is refused before any child object
# exists (an opaque volume would first fail when the operator creates the pods, after the Service
# and ConfigMap), and validation.py can check every file:// URI against the mount paths. Copying
# all of core/v1 Volume (about thirty sources) would bloat the CRD for little: other storage is
# reachable through a PVC or CSI. The API server validates them again as core/v1 in the pods.

# Names and paths the operator's own volumes use (children.py): /dev/shm and the config.
RESERVED_VOLUMES = ("dshm", "config")
RESERVED_PATHS = ("/dev/shm", "/etc/longvila")
ABSOLUTE = "^/.*$"
SOURCES = ("persistentVolumeClaim", "hostPath", "csi", "emptyDir", "nfs")


@api_object
class PersistentVolumeClaimSource:
    claim_name: str = prop(
        "A PersistentVolumeClaim in the job's namespace.", max_length=253, pattern=DNS_SUBDOMAIN
    )
    read_only: bool = prop("Mount it read-only.", default=False)


@api_object
class HostPathSource:
    path: str = prop("Directory (or file) on the node.", max_length=4096, pattern=ABSOLUTE)
    type: str = prop(
        "What must be at the path (core/v1 HostPathType); empty checks nothing.",
        default="",
        enum=(
            "",
            "DirectoryOrCreate",
            "Directory",
            "FileOrCreate",
            "File",
            "Socket",
            "CharDevice",
            "BlockDevice",
        ),
        max_length=32,
    )


@api_object
class SecretReference:
    name: str = prop("Secret name.", max_length=253, pattern=DNS_SUBDOMAIN)


@api_object
class CSISource:
    driver: str = prop("CSI driver name, e.g. fsx.csi.aws.com.", max_length=253)
    read_only: bool = prop("Mount it read-only.", default=False)
    fs_type: str | None = prop("Filesystem type, passed to the driver.", default=None, max_length=32)
    volume_attributes: dict[str, str] = prop(
        "Driver-specific attributes.", factory=dict, max_properties=32, value_max_length=1024
    )
    node_publish_secret_ref: SecretReference | None = prop(
        "Secret the driver needs to mount it.", default=None
    )


@api_object
class EmptyDirSource:
    medium: str = prop(
        "Backing medium: node disk (empty) or Memory.", default="", enum=("", "Memory"), max_length=8
    )
    size_limit: str | None = prop(
        "Size limit, e.g. 100Gi.", default=None, max_length=32, rules=(QUANTITY_RULE,)
    )


@api_object
class NFSSource:
    server: str = prop("NFS server host name or address.", max_length=253)
    path: str = prop("Exported path.", max_length=4096, pattern=ABSOLUTE)
    read_only: bool = prop("Mount it read-only.", default=False)


def _one_source(v: Volume) -> bool:
    given = (v.persistent_volume_claim, v.host_path, v.csi, v.empty_dir, v.nfs)
    return sum(s is not None for s in given) == 1


@api_object
class Volume:
    """A pod volume (core/v1 Volume, these five sources)."""

    name: str = prop("Volume name; volumeMounts refer to it.", max_length=63, pattern=DNS_LABEL)
    persistent_volume_claim: PersistentVolumeClaimSource | None = prop(
        "A PersistentVolumeClaim.", default=None
    )
    host_path: HostPathSource | None = prop("A directory of the node.", default=None)
    csi: CSISource | None = prop("A CSI volume (inline).", default=None)
    empty_dir: EmptyDirSource | None = prop("Scratch space living as long as the pod.", default=None)
    nfs: NFSSource | None = prop("An NFS export.", default=None)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule=" + ".join(f"(has(self.{s}) ? 1 : 0)" for s in SOURCES) + " == 1",
            message=f"a volume sets exactly one of {', '.join(SOURCES)}",
            check=_one_source,
        ),
        Rule(
            rule="!(self.name in " + str(list(RESERVED_VOLUMES)) + ")",
            message=f"volume names {', '.join(RESERVED_VOLUMES)} are taken by the operator's own volumes",
            check=lambda v: v.name not in RESERVED_VOLUMES,
            field_path=".name",
        ),
    )


@api_object
class VolumeMount:
    """Where a volume appears in the trainer container (core/v1 VolumeMount)."""

    name: str = prop("The spec.volumes entry to mount.", max_length=63, pattern=DNS_LABEL)
    mount_path: str = prop("Absolute path in the container.", max_length=1024, pattern=ABSOLUTE)
    read_only: bool = prop("Mount it read-only.", default=False)
    sub_path: str = prop("Path inside the volume to mount instead of its root.", default="", max_length=1024)

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule=" && ".join(
                f"self.mountPath != '{p}' && !self.mountPath.startsWith('{p}/')" for p in RESERVED_PATHS
            ),
            message=f"{' and '.join(RESERVED_PATHS)} are the operator's mounts",
            check=lambda m: (
                not any(m.mount_path == p or m.mount_path.startswith(p + "/") for p in RESERVED_PATHS)
            ),
            field_path=".mountPath",
        ),
        Rule(
            rule="!self.subPath.startsWith('/') && !self.subPath.contains('..')",
            message="subPath is a relative path without '..'",
            check=lambda m: not m.sub_path.startswith("/") and ".." not in m.sub_path,
            field_path=".subPath",
        ),
    )


def mounts_name_volumes(volumes: tuple[Volume, ...], mounts: tuple[VolumeMount, ...]) -> bool:
    names = {v.name for v in volumes}
    return all(m.name in names for m in mounts)


MOUNTS_RULE = Rule(
    rule="!has(self.volumeMounts) || self.volumeMounts.all(m, has(self.volumes) && "
    "self.volumes.exists(v, v.name == m.name))",
    message="every volumeMounts[].name must name an entry of spec.volumes",
    check=lambda s: mounts_name_volumes(s.volumes, s.volume_mounts),
    field_path=".volumeMounts",
)


@api_object
class JobSpec:
    """A LongVILA MM-SP training pipeline on a set of GPU nodes."""

    image: str = prop("Trainer image.", min_length=1, max_length=512)
    image_pull_policy: str = prop(
        "Pull policy of the trainer image.",
        default="IfNotPresent",
        enum=("Always", "IfNotPresent", "Never"),
        max_length=16,
    )
    model: ModelSpec = prop("Model weights.")
    topology: Topology = prop("Nodes and the parallel layout.")
    checkpoint: Checkpoint = prop("Checkpoint storage.")
    stages: tuple[Stage, ...] = prop(
        "Pipeline stages, run in order.", min_items=1, max_items=16, list_map_keys=("name",)
    )
    failure_policy: FailurePolicy = prop("Failure handling.", factory=FailurePolicy)
    scheduling: Scheduling = prop("Gang scheduling and queueing (Kueue).", factory=Scheduling)
    suspend: bool = prop("Suspended jobs have no pods; resuming restarts the current stage.", default=False)
    ttl_seconds_after_finished: int | None = prop(
        "Delete the job this long after it succeeds or fails.", default=None, minimum=0, maximum=31536000
    )
    resources: Resources = prop("Per-pod resources besides GPUs.", factory=Resources)
    env: tuple[EnvVar, ...] = prop(
        "Extra trainer environment.", factory=tuple, max_items=64, list_map_keys=("name",)
    )
    volumes: tuple[Volume, ...] = prop(
        "Volumes of every worker pod (core/v1 Volume: persistentVolumeClaim, hostPath, csi, emptyDir or "
        "nfs), e.g. a shared filesystem holding datasets or weights.",
        factory=tuple,
        max_items=16,
        list_map_keys=("name",),
    )
    volume_mounts: tuple[VolumeMount, ...] = prop(
        "Where the trainer container mounts spec.volumes (core/v1 VolumeMount). file:// URIs of the spec "
        "must lie under one of these paths, or inside the trainer image (under /opt/longvila).",
        factory=tuple,
        max_items=16,
        list_map_keys=("mountPath",),
    )

    RULES: ClassVar[tuple[Rule, ...]] = (
        Rule(
            rule="!has(self.failurePolicy.minNodes) || self.failurePolicy.minNodes <= self.topology.nodes",
            message="failurePolicy.minNodes must not exceed topology.nodes",
            check=lambda s: (
                s.failure_policy.min_nodes is None or s.failure_policy.min_nodes <= s.topology.nodes
            ),
            field_path=".failurePolicy.minNodes",
        ),
        Rule(
            rule="!has(self.failurePolicy.minNodes)"
            " || (self.failurePolicy.minNodes * self.topology.gpusPerNode)"
            " % (self.topology.sequenceParallel.ulysses * self.topology.sequenceParallel.ring) == 0",
            message="failurePolicy.minNodes × topology.gpusPerNode must be divisible by the "
            "sequence-parallel size "
            "(a shrink keeps the SP layout)",
            check=lambda s: (
                s.failure_policy.min_nodes is None
                or sp_divides_world(
                    s.failure_policy.min_nodes * s.topology.gpus_per_node,
                    s.topology.sequence_parallel.ulysses,
                    s.topology.sequence_parallel.ring,
                )
            ),
            field_path=".failurePolicy.minNodes",
        ),
        MOUNTS_RULE,
    )


@api_object
class Condition:
    """metav1.Condition."""

    type: str = prop(
        "Condition type, e.g. Running, Succeeded, Failed, Suspended, Unschedulable.", max_length=316
    )
    status: str = prop("True, False or Unknown.", enum=("True", "False", "Unknown"), max_length=8)
    observed_generation: int | None = prop(
        "spec generation this condition was set for.", default=None, minimum=0
    )
    last_transition_time: str = prop("When status last changed.", format="date-time", max_length=64)
    reason: str = prop(
        "CamelCase reason.", max_length=1024, pattern="^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = prop("Human-readable detail.", max_length=32768)


@api_object
class StageStatus:
    name: str = prop("Stage name.", max_length=32)
    phase: str = prop("Stage phase.", enum=STAGE_PHASES, max_length=16)
    start_time: str | None = prop(
        "When the stage's pods were created.", default=None, format="date-time", max_length=64
    )
    completion_time: str | None = prop("When it finished.", default=None, format="date-time", max_length=64)
    checkpoint: str | None = prop("The checkpoint this stage committed.", default=None, max_length=1024)
    restarts: int = prop("Gang restarts of this stage (preemptions included); its attempt number.", default=0,
                         minimum=0)  # fmt: skip


@api_object
class PlacedNodeStatus:
    name: str = prop("Node name.", max_length=253)
    node_rank: int = prop("Node rank (ring order).", minimum=0)
    domain: str = prop("InfiniBand domain.", max_length=253)


@api_object
class PlacementStatus:
    domain_label: str = prop("The label the domains were read from.", max_length=317)
    nodes: tuple[PlacedNodeStatus, ...] = prop("Nodes in ring order.", factory=tuple, max_items=1024)
    domains_spanned: int = prop("Distinct domains used.", minimum=0)


@api_object
class FailureStatus:
    """The last failure the operator classified (longvila_operator.failures)."""

    class_: str = prop(
        "Failure class: NodeLost, Preempted, Disrupted, PermanentError, OOMKilled, Hang or WorkerCrash.",
        max_length=64,
    )
    reason: str = prop("What gave it away, CamelCase (NodeNotReady, TerminationMessage…).", max_length=128)
    message: str = prop("Human-readable detail.", max_length=4096)
    # No `format: date-time` on fields outside lists: the apiserver's published OpenAPI for
    # JSONSchemaProps lacks `format`, so strict schema checks (kubeconform) would refuse the CRD.
    time: str = prop("When the operator classified it (RFC 3339).", max_length=64)
    stage: str = prop("The stage it broke.", max_length=32)
    attempt: int = prop("The stage attempt it broke.", minimum=0)
    action: str = prop(
        "What followed: Restart, Fail, or Requeue (a preempted gang back in the queue, no budget spent).",
        enum=("Restart", "Fail", "Requeue"),
        max_length=16,
    )


@api_object
class ProgressStatus:
    """The current stage's training progress, read from global rank 0's metrics (fields after
    Kubeflow Trainer's trainerStatus), rewritten at most every few seconds."""

    stage: str = prop("The stage it is about.", max_length=32)
    attempt: int = prop("The stage attempt the figures come from.", minimum=0)
    step: int = prop("Optimizer steps completed.", minimum=0)
    max_steps: int = prop("Optimizer steps of the stage (0 until rank 0 knows).", minimum=0)
    percentage: int = prop("step / maxSteps in percent.", minimum=0, maximum=100)
    loss: float | None = prop("The mean loss of the last step read (every few seconds).", default=None)
    tokens_per_second: float | None = prop("The last step's tokens per second.", default=None, minimum=0)
    estimated_remaining_seconds: int | None = prop(
        "(maxSteps - step) × the last step's seconds.", default=None, minimum=0
    )
    last_checkpoint_step: int = prop("Step of the newest complete checkpoint (0: none).", minimum=0)
    summary: str = prop("What `kubectl get lvj` prints: step/maxSteps (percent).", max_length=64)
    last_progress_time: str | None = prop(
        "When the operator last saw a new step or checkpoint (RFC 3339; the hang check counts from here).",
        default=None,
        max_length=64,
    )
    last_updated_time: str = prop("When these figures were written (RFC 3339).", max_length=64)
    error: str | None = prop("Why rank 0's metrics could not be read, when they could not.", default=None,
                             max_length=1024)  # fmt: skip


@api_object
class JobStatus:
    """Observed state, written by the operator through the status subresource."""

    phase: str | None = prop("Job phase.", default=None, enum=PHASES, max_length=16)
    stage: str | None = prop("Current (or last) stage.", default=None, max_length=32)
    stages: tuple[StageStatus, ...] = prop(
        "Per-stage progress.", factory=tuple, max_items=16, list_map_keys=("name",)
    )
    placement: PlacementStatus | None = prop("Where the current stage runs.", default=None)
    restarts: int = prop(
        "Gang restarts so far (all stages, every class, preemptions included; status.failures counts "
        "them by class).",
        default=0,
        minimum=0,
    )
    failures: dict[str, int] = prop(
        "Failures so far by class (NodeLost, Preempted, Disrupted, PermanentError, OOMKilled, Hang, "
        "WorkerCrash); each restarted the gang once, requeued it (Preempted) or failed the job.",
        factory=dict,
        max_properties=32,
    )
    last_failure: FailureStatus | None = prop("The last failure, classified.", default=None)
    progress: ProgressStatus | None = prop("Training progress of the current stage.", default=None)
    conditions: tuple[Condition, ...] = prop(
        "Standard conditions.", factory=tuple, max_items=32, list_map_keys=("type",)
    )
    observed_generation: int | None = prop("Last spec generation acted on.", default=None, minimum=0)
