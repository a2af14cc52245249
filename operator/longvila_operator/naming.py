"""Deterministic names of child objects, each a DNS label of at most 63 characters.

A name is `<prefix parts>-<suffix>`; when the prefix is too long or had to be cleaned up
(a job name with dots, or one that starts with a digit), the prefix is cut and an 8-hex
hash of the original prefix is added: `<cut prefix>-<hash>-<suffix>`. The suffix always
survives, so the pods of one gang share a prefix and differ only in `n<rank>`, zero-padded
to one width: their names, and so their DNS names, sort in node-rank order, which is the
order torchrun's c10d rendezvous numbers nodes in (see longvila_contract.env).
"""

from __future__ import annotations

import hashlib
import re

MAX_LABEL = 63
HASH_LEN = 8


def clean(text: str) -> str:
    """Lower case, runs of characters a DNS label cannot hold as one '-', no edge dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def dns_label(parts: list[str], suffix: str) -> str:
    """A DNS-1035 label (starts with a letter) from prefix `parts` and a short `suffix`."""
    raw = "-".join(parts)
    prefix = "-".join(clean(p) for p in parts if clean(p))
    if not prefix[:1].isalpha():
        prefix = "x-" + prefix
    tail = "-" + suffix if suffix else ""
    if prefix == raw and len(prefix) + len(tail) <= MAX_LABEL:
        return prefix + tail
    digest = hashlib.sha256(raw.encode()).hexdigest()[:HASH_LEN]
    room = MAX_LABEL - len(tail) - HASH_LEN - 1
    return f"{prefix[:room].rstrip('-')}-{digest}{tail}"


def rank_suffix(node_rank: int, nnodes: int) -> str:
    """`n<rank>` zero-padded to the width of the largest rank, so names sort by rank."""
    return f"n{node_rank:0{len(str(max(nnodes - 1, 0)))}d}"


def pod_name(job: str, stage: str, attempt: int, node_rank: int, nnodes: int) -> str:
    return dns_label([job, stage, f"a{attempt}"], rank_suffix(node_rank, nnodes))


def service_name(job: str) -> str:
    return dns_label([job], "workers")


def config_map_name(job: str, stage: str) -> str:
    return dns_label([job, stage], "config")


def group_name(job: str, stage: str, attempt: int) -> str:
    """A stage attempt's Kueue pod group, and so its Workload: `<job>-<stage>-a<attempt>`."""
    return dns_label([job, stage, f"a{attempt}"], "")
