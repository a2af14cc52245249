"""The environment contract between the operator (render) and the trainer (parse).

One module owns every variable name and its meaning; the operator renders a `WorkerEnv`
into each pod, the trainer parses `os.environ` back into the same dataclass, and
tests/unit/test_env_contract.py holds both sides together. Pure: no torch, nothing read
at import.

torchrun reads each of its options from `PET_<OPTION>` (torch.distributed.run's `env`
action), so the pod's command is plain `torchrun --module longvila_trainer.train`.
Decisions worth knowing:

- PET_RDZV_ID is unique per job, stage and restart attempt: torchrun's default id is the
  same for every job, so unrelated jobs sharing an endpoint share rendezvous state
  (pytorch#82160).
- With the c10d rendezvous, torchrun ignores PET_NODE_RANK and numbers nodes by sorting
  the participants' addresses (dynamic_rendezvous: `sorted(state.participants)`). We set
  PET_LOCAL_ADDR to each pod's own DNS name, and those names sort in node-rank order
  (zero-padded `-n<rank>` suffix, see longvila_operator.naming), so the planned node
  ranks are the ranks torchrun assigns; `check_group_rank` lets the trainer verify it.
- PET_RDZV_CONF carries `is_host` explicitly (1 on node rank 0): torchrun's own guess
  compares the endpoint with the machine's hostname, which a pod's DNS name does not match.
- S3 credentials never appear as values: `secret_env` builds secretKeyRef entries.
- The layout is LONGVILA_ULYSSES and LONGVILA_RING; the SP size is their product
  (layout.ParallelLayout owns that arithmetic), so it is not a variable of its own.
- LONGVILA_TERMINATION_LOG is the container's terminationMessagePath (the pod spec sets
  both from TERMINATION_LOG): a worker's one-line error survives torchrun, which turns
  every worker exit code into 1, through that file (exits.py has the format).
- LONGVILA_METRICS_PORT: global rank 0 serves its progress there (progress.py has the
  metric names); the operator scrapes it at the pod's IP. Both are optional when parsing
  (0 / empty = off), so a hand-run trainer needs neither.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .layout import TOKEN_LAYOUTS, LayoutError, ParallelLayout
from .stages import STAGE_TYPES
from .uri import Scheme, URIError, check_endpoint, parse_uri

NNODES = "PET_NNODES"
NPROC_PER_NODE = "PET_NPROC_PER_NODE"
NODE_RANK = "PET_NODE_RANK"
MASTER_ADDR = "PET_MASTER_ADDR"
MASTER_PORT = "PET_MASTER_PORT"
RDZV_ENDPOINT = "PET_RDZV_ENDPOINT"
RDZV_BACKEND = "PET_RDZV_BACKEND"
RDZV_ID = "PET_RDZV_ID"
RDZV_CONF = "PET_RDZV_CONF"
LOCAL_ADDR = "PET_LOCAL_ADDR"
MAX_RESTARTS = "PET_MAX_RESTARTS"
ULYSSES = "LONGVILA_ULYSSES"
RING = "LONGVILA_RING"
LAYOUT = "LONGVILA_LAYOUT"
STAGE = "LONGVILA_STAGE"
STAGE_TYPE = "LONGVILA_STAGE_TYPE"
CHECKPOINT_URI = "LONGVILA_CHECKPOINT_URI"
INIT_CHECKPOINT = "LONGVILA_INIT_CHECKPOINT"
CONFIG = "LONGVILA_CONFIG"
S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"  # read natively by boto3 (≥ 1.28)
S3_CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
METRICS_PORT_VAR = "LONGVILA_METRICS_PORT"
METRICS_ADDR_VAR = "LONGVILA_METRICS_ADDR"  # bind address; only the local pod runner sets it
TERMINATION_LOG_VAR = "LONGVILA_TERMINATION_LOG"
GROUP_RANK = "GROUP_RANK"  # set by torchrun for each worker process

RDZV_BACKEND_C10D = "c10d"
RDZV_PORT = 29400  # torchrun's default c10d port
DEFAULT_MASTER_PORT = 29500
CONFIG_PATH = "/etc/longvila/config.yaml"
METRICS_PORT = 9400  # rank 0's Prometheus /metrics (the pod's port named "metrics")
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's default terminationMessagePath
ENTRYPOINT = ("torchrun", "--module", "longvila_trainer.train")

_HOST_PORT = re.compile(r"^([A-Za-z0-9.-]+):([0-9]{1,5})$")


class EnvContractError(ValueError):
    """The environment breaks the contract; one line per variable, naming what is allowed."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid LongVILA worker environment:\n  " + "\n  ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class WorkerEnv:
    """Everything one node's torchrun and trainer need to know; validates itself."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str  # node rank 0's DNS name
    local_addr: str  # this pod's DNS name
    rdzv_id: str
    ulysses: int
    ring: int
    token_layout: str  # zigzag | contiguous (LONGVILA_LAYOUT)
    stage: str
    stage_type: str
    checkpoint_uri: str  # where this stage writes
    init_checkpoint: str = ""  # where it starts from; "" = the model's own weights
    config_path: str = CONFIG_PATH
    s3_endpoint: str = ""
    max_restarts: int = 0
    master_port: int = DEFAULT_MASTER_PORT
    rdzv_port: int = RDZV_PORT
    metrics_port: int = METRICS_PORT  # 0 = no metrics endpoint
    termination_log: str = TERMINATION_LOG  # "" = no termination message

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise EnvContractError(problems)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    def layout(self) -> ParallelLayout:
        """The run's dp × ring × ulysses layout (checked by `problems` on construction)."""
        return ParallelLayout.on_nodes(self.nnodes, self.nproc_per_node, self.ulysses, self.ring)

    @property
    def rdzv_endpoint(self) -> str:
        return f"{self.master_addr}:{self.rdzv_port}"

    @property
    def is_rdzv_host(self) -> bool:
        return self.node_rank == 0

    def problems(self) -> list[str]:
        p = []
        for name, value in (
            (NNODES, self.nnodes),
            (NPROC_PER_NODE, self.nproc_per_node),
            (ULYSSES, self.ulysses),
            (RING, self.ring),
        ):
            if value < 1:
                p.append(f"{name}={value}: must be a positive integer")
        if not 0 <= self.node_rank < max(self.nnodes, 1):
            p.append(f"{NODE_RANK}={self.node_rank}: must be in [0, {NNODES}={self.nnodes})")
        if min(self.nnodes, self.nproc_per_node, self.ulysses, self.ring) >= 1:
            try:
                self.layout()
            except LayoutError as err:
                p.append(f"{ULYSSES}={self.ulysses}, {RING}={self.ring} on {NNODES}={self.nnodes} × "
                         f"{NPROC_PER_NODE}={self.nproc_per_node}: {err}")  # fmt: skip
        if self.token_layout not in TOKEN_LAYOUTS:
            p.append(f"{LAYOUT}={self.token_layout!r}: must be one of {', '.join(TOKEN_LAYOUTS)}")
        if self.stage_type not in STAGE_TYPES:
            p.append(f"{STAGE_TYPE}={self.stage_type!r}: must be one of {', '.join(STAGE_TYPES)}")
        if not self.stage:
            p.append(f"{STAGE}: must be the stage name, got an empty value")
        if not self.rdzv_id or self.rdzv_id == "none":
            p.append(f"{RDZV_ID}={self.rdzv_id!r}: must be unique per job and restart (pytorch#82160)")
        for name, host in ((MASTER_ADDR, self.master_addr), (LOCAL_ADDR, self.local_addr)):
            if not re.fullmatch(r"[A-Za-z0-9.-]+", host):
                p.append(f"{name}={host!r}: must be a DNS name")
        for name, port in ((MASTER_PORT, self.master_port), (RDZV_ENDPOINT, self.rdzv_port)):
            if not 1 <= port <= 65535:
                p.append(f"{name}: port {port} must be in 1-65535")
        if not 0 <= self.metrics_port <= 65535:
            p.append(f"{METRICS_PORT_VAR}={self.metrics_port}: must be in 1-65535 (0 = off)")
        if self.termination_log and not self.termination_log.startswith("/"):
            p.append(f"{TERMINATION_LOG_VAR}={self.termination_log!r}: must be an absolute path")
        if self.max_restarts < 0:
            p.append(f"{MAX_RESTARTS}={self.max_restarts}: must be ≥ 0")
        uris: list[tuple[str, str, tuple[Scheme, ...]]] = [(CHECKPOINT_URI, self.checkpoint_uri, ("s3",))]
        if self.init_checkpoint:
            uris.append((INIT_CHECKPOINT, self.init_checkpoint, ("s3", "file")))
        for name, text, schemes in uris:
            try:
                parse_uri(text, name, schemes)
            except URIError as err:
                p.append(str(err))
        try:
            check_endpoint(self.s3_endpoint, S3_ENDPOINT)
        except URIError as err:
            p.append(str(err))
        if not self.config_path.startswith("/"):
            p.append(f"{CONFIG}={self.config_path!r}: must be an absolute path")
        return p


def render(env: WorkerEnv) -> dict[str, str]:
    """The variables for one pod, in a fixed order (values are strings, as env values are)."""
    out = {
        NNODES: str(env.nnodes),
        NPROC_PER_NODE: str(env.nproc_per_node),
        NODE_RANK: str(env.node_rank),
        MASTER_ADDR: env.master_addr,
        MASTER_PORT: str(env.master_port),
        RDZV_BACKEND: RDZV_BACKEND_C10D,
        RDZV_ENDPOINT: env.rdzv_endpoint,
        RDZV_ID: env.rdzv_id,
        RDZV_CONF: f"is_host={int(env.is_rdzv_host)}",
        LOCAL_ADDR: env.local_addr,
        MAX_RESTARTS: str(env.max_restarts),
        ULYSSES: str(env.ulysses),
        RING: str(env.ring),
        LAYOUT: env.token_layout,
        STAGE: env.stage,
        STAGE_TYPE: env.stage_type,
        CHECKPOINT_URI: env.checkpoint_uri,
        INIT_CHECKPOINT: env.init_checkpoint,
        CONFIG: env.config_path,
    }
    if env.metrics_port:
        out[METRICS_PORT_VAR] = str(env.metrics_port)
    if env.termination_log:
        out[TERMINATION_LOG_VAR] = env.termination_log
    if env.s3_endpoint:
        out[S3_ENDPOINT] = env.s3_endpoint
    return out


def parse(environ: Mapping[str, str]) -> WorkerEnv:
    """The contract read back from an environment; raises EnvContractError naming each bad variable."""
    problems: list[str] = []

    def need(name: str) -> str:
        value = environ.get(name)
        if value is None:
            problems.append(f"{name}: not set (the LongVILA operator sets it on every worker pod)")
            return ""
        return value

    def integer(name: str) -> int:
        text = need(name)
        if text and not re.fullmatch(r"-?[0-9]+", text):
            problems.append(f"{name}={text!r}: must be an integer")
            return 0
        return int(text) if text else 0

    nnodes, nproc, node_rank = integer(NNODES), integer(NPROC_PER_NODE), integer(NODE_RANK)
    ulysses, ring = integer(ULYSSES), integer(RING)
    master_port, max_restarts = integer(MASTER_PORT), integer(MAX_RESTARTS)
    metrics_port = integer(METRICS_PORT_VAR) if METRICS_PORT_VAR in environ else 0
    master_addr = need(MASTER_ADDR)
    backend = need(RDZV_BACKEND)
    endpoint = need(RDZV_ENDPOINT)
    conf = need(RDZV_CONF)
    fields: dict[str, Any] = {
        "local_addr": need(LOCAL_ADDR),
        "rdzv_id": need(RDZV_ID),
        "token_layout": need(LAYOUT),
        "stage": need(STAGE),
        "stage_type": need(STAGE_TYPE),
        "checkpoint_uri": need(CHECKPOINT_URI),
        "init_checkpoint": environ.get(INIT_CHECKPOINT, ""),
        "config_path": need(CONFIG),
        "s3_endpoint": environ.get(S3_ENDPOINT, ""),
        "termination_log": environ.get(TERMINATION_LOG_VAR, ""),
    }
    if backend and backend != RDZV_BACKEND_C10D:
        problems.append(f"{RDZV_BACKEND}={backend!r}: must be {RDZV_BACKEND_C10D}")
    rdzv_port = 0
    match = _HOST_PORT.match(endpoint)
    if endpoint and not match:
        problems.append(f"{RDZV_ENDPOINT}={endpoint!r}: must be host:port")
    elif match:
        rdzv_port = int(match.group(2))
        if match.group(1) != master_addr:
            problems.append(
                f"{RDZV_ENDPOINT}={endpoint!r}: host must be {MASTER_ADDR}={master_addr!r} (node rank 0)"
            )
    expected_conf = f"is_host={int(node_rank == 0)}"
    if conf and conf != expected_conf:
        problems.append(f"{RDZV_CONF}={conf!r}: must be {expected_conf!r} on node rank {node_rank}")
    if problems:
        raise EnvContractError(problems)
    return WorkerEnv(
        nnodes=nnodes,
        nproc_per_node=nproc,
        node_rank=node_rank,
        master_addr=master_addr,
        ulysses=ulysses,
        ring=ring,
        max_restarts=max_restarts,
        master_port=master_port,
        rdzv_port=rdzv_port,
        metrics_port=metrics_port,
        **fields,
    )


def check_group_rank(env: WorkerEnv, environ: Mapping[str, str]) -> None:
    """Fails unless torchrun's GROUP_RANK equals the planned node rank (see the module doc)."""
    got = environ.get(GROUP_RANK)
    if got != str(env.node_rank):
        raise EnvContractError(
            [
                f"{GROUP_RANK}={got!r}: torchrun numbered this node differently from the plan "
                f"({NODE_RANK}={env.node_rank}); {LOCAL_ADDR} names must sort in node-rank order"
            ]
        )


def secret_env(secret_name: str) -> list[dict[str, Any]]:
    """S3 credentials as secretKeyRef env entries (never values); the session token is optional."""
    keys = [(k, False) for k in S3_CREDENTIAL_KEYS] + [(k, True) for k in S3_OPTIONAL_KEYS]
    return [
        {"name": k, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": k, "optional": optional}}}
        for k, optional in keys
    ]
