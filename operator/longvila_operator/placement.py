"""Topology-aware placement: which nodes, in which ring order. Pure.

Rank arithmetic is the contract's (longvila_contract.layout.ParallelLayout): rank =
nodeRank·gpusPerNode + localRank = dp·sp + ring·U + ulysses, sp = U·R, and U divides
gpusPerNode, so a Ulysses group never leaves its node and ring neighbours are U ranks apart:
on the same node or on the next node rank. Placement therefore only orders nodes:

- The job takes as few InfiniBand domains as possible: domains with the most free nodes
  first (ties by name). Taking the fullest domains also leaves spare nodes next to the
  job, which is where a replacement for a lost node comes from.
- Nodes are cut into SP blocks of `block` consecutive node ranks (the fewest nodes that
  hold whole SP groups); each domain gets whole blocks first, so ring links stay inside a
  domain, and only leftovers may straddle two domains (at one boundary, at the end).
- Inside a domain nodes go in natural name order (gpu-2 before gpu-10).
- `pinned` keeps already-placed node ranks and fills only the others, preferring a free
  node in the domain of the rank's block (a replacement stays next to its ring peers).
- `shrink` re-plans on fewer nodes with the same SP layout: data parallelism shrinks.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from longvila_contract.layout import ParallelLayout, RankCoords

from .api.types import JobSpec, Toleration
from .nodes import GPU, NodeInfo, blocking_taint, detect_domain_label, domain_of, natural_key


@dataclass(frozen=True)
class Request:
    """What placement needs from a spec."""

    nodes: int
    gpus_per_node: int
    ulysses: int = 1
    ring: int = 1
    domain_label: str = ""
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    rdma_resource: str = ""
    rdma_per_node: int = 1

    def __post_init__(self) -> None:
        self.layout()  # raises LayoutError for an impossible request

    def layout(self, nodes: int | None = None) -> ParallelLayout:
        n = self.nodes if nodes is None else nodes
        return ParallelLayout.on_nodes(n, self.gpus_per_node, self.ulysses, self.ring)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Request:
        t = spec.topology
        return cls(
            nodes=t.nodes,
            gpus_per_node=t.gpus_per_node,
            ulysses=t.sequence_parallel.ulysses,
            ring=t.sequence_parallel.ring,
            domain_label=t.domain_label,
            node_selector=dict(t.node_selector),
            tolerations=t.tolerations,
            rdma_resource=t.rdma_resource,
            rdma_per_node=t.rdma_per_node,
        )

    @property
    def block(self) -> int:
        """Nodes per SP block: the fewest consecutive nodes holding whole SP groups."""
        return self.layout().node_block(self.gpus_per_node)

    def describe(self) -> str:
        return (
            f"{self.nodes} nodes × {self.gpus_per_node} GPUs (ulysses {self.ulysses} × ring {self.ring}, "
            f"SP blocks of {self.block} node{'s' if self.block > 1 else ''})"
        )


@dataclass(frozen=True)
class PlacedNode:
    name: str
    node_rank: int
    domain: str


@dataclass(frozen=True, kw_only=True)
class RankInfo(RankCoords):
    """A rank's coordinates (the layout's) and where placement put it."""

    node: str
    local_rank: int


@dataclass(frozen=True)
class Placement:
    request: Request
    domain_label: str
    nodes: tuple[PlacedNode, ...]  # by node rank (ring order)

    @property
    def domains_spanned(self) -> int:
        return len({n.domain for n in self.nodes})

    def layout(self) -> ParallelLayout:
        return self.request.layout(len(self.nodes))

    def ranks(self) -> list[RankInfo]:
        layout, gpn = self.layout(), self.request.gpus_per_node
        out = []
        for node in self.nodes:
            for local in range(gpn):
                c = layout.coords(node.node_rank * gpn + local)
                out.append(RankInfo(**dataclasses.asdict(c), node=node.name, local_rank=local))
        return out

    def cross_domain_ring_links(self) -> int:
        """Distinct node pairs that are ring neighbours and sit in different domains."""
        gpn = self.request.gpus_per_node
        links = set()
        for group in self.layout().ring_groups():
            for a, b in zip(group, group[1:] + group[:1], strict=True):
                na, nb = self.nodes[a // gpn], self.nodes[b // gpn]
                if na.domain != nb.domain:
                    links.add(tuple(sorted((na.node_rank, nb.node_rank))))
        return len(links)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": [{"name": n.name, "nodeRank": n.node_rank, "domain": n.domain} for n in self.nodes],
            "ranks": [
                {
                    "rank": r.rank,
                    "node": r.node,
                    "localRank": r.local_rank,
                    "ulyssesGroup": r.ulysses_group,
                    "ringGroup": r.ring_group,
                    "dpGroup": r.dp_group,
                }
                for r in self.ranks()
            ],
            "domainsSpanned": self.domains_spanned,
        }

    def status(self) -> dict[str, Any]:
        """status.placement of the LongVILAJob."""
        nodes = [{"name": n.name, "nodeRank": n.node_rank, "domain": n.domain} for n in self.nodes]
        return {"domainLabel": self.domain_label, "nodes": nodes, "domainsSpanned": self.domains_spanned}


class Unplaceable(Exception):
    """No placement exists; the message says what was free per domain, what was needed, and
    why the other nodes were left out."""

    def __init__(
        self, message: str, free_by_domain: Mapping[str, int], excluded: Mapping[str, tuple[str, str]]
    ):
        super().__init__(message)
        self.free_by_domain = dict(free_by_domain)
        self.excluded = dict(excluded)  # node -> (category, detail)


def ineligible(
    node: NodeInfo, req: Request, excluded: Collection[str], in_use: int
) -> tuple[str, str] | None:
    """(category, detail) when the node cannot take a worker, else None."""
    if node.name in excluded:
        return "excluded", node.name
    if not node.ready:
        return "not Ready", node.name
    if node.unschedulable:
        return "cordoned", node.name
    free = node.gpus - in_use
    if free < req.gpus_per_node:
        used = f", {in_use} in use" if in_use else ""
        return "too few GPUs", f"{node.name} ({node.gpus} allocatable {GPU}{used}; need {req.gpus_per_node})"
    if req.rdma_resource and node.count(req.rdma_resource) < req.rdma_per_node:
        return f"too little {req.rdma_resource}", f"{node.name} ({node.count(req.rdma_resource)} allocatable)"
    for key, value in sorted(req.node_selector.items()):
        if node.labels.get(key) != value:
            return "nodeSelector", f"{node.name} ({key}={node.labels.get(key, '<unset>')}, want {value})"
    taint = blocking_taint(node, req.tolerations)
    if taint is not None:
        return "untolerated taint", f"{node.name} ({taint})"
    return None


def reason_text(name: str, excluded: Mapping[str, tuple[str, str]]) -> str:
    if name not in excluded:
        return "rank out of range or node unknown"
    category, detail = excluded[name]
    return category if detail == name else f"{category}, {detail}"


def explain(needed: str, free: Mapping[str, str], label: str, excluded: Mapping[str, tuple[str, str]]) -> str:
    per_domain = Counter(free.values())
    domains = ", ".join(f"{d}: {per_domain[d]}" for d in sorted(per_domain, key=natural_key)) or "none"
    lines = [f"{needed}; eligible free nodes per domain ({label}): {domains} ({len(free)} in all)"]
    by_category: dict[str, list[str]] = {}
    for _, (category, detail) in sorted(excluded.items(), key=lambda kv: natural_key(kv[0])):
        by_category.setdefault(category, []).append(detail)
    for category, details in by_category.items():
        shown = ", ".join(details[:8]) + (f", … and {len(details) - 8} more" if len(details) > 8 else "")
        lines.append(f"left out, {category} ({len(details)}): {shown}")
    return "\n".join(lines)


def plan(
    req: Request,
    nodes: Sequence[NodeInfo],
    *,
    exclude: Collection[str] = (),
    pinned: Mapping[int, str] | None = None,
    gpus_in_use: Mapping[str, int] | None = None,
) -> Placement:
    """Choose `req.nodes` nodes in ring order; raises Unplaceable with the reason.

    `exclude`: nodes not to use (e.g. failed ones). `pinned`: node rank -> node to keep; only
    the other ranks are filled. `gpus_in_use`: GPUs held on each node by other workloads'
    pods (not this job's own, whose nodes are pinned).
    """
    pinned = dict(pinned or {})
    in_use = gpus_in_use or {}
    excluded: dict[str, tuple[str, str]] = {}
    eligible = []
    for node in sorted(nodes, key=lambda n: natural_key(n.name)):
        reason = ineligible(node, req, exclude, in_use.get(node.name, 0))
        if reason:
            excluded[node.name] = reason
        else:
            eligible.append(node)
    label = req.domain_label or detect_domain_label(eligible)
    domains: dict[str, str] = {}
    for node in eligible:
        d = domain_of(node, label)
        if d is None:
            excluded[node.name] = ("no domain label", f"{node.name} (no {label} label)")
        else:
            domains[node.name] = d
    bad_pins = {r: n for r, n in pinned.items() if not 0 <= r < req.nodes or n not in domains}
    if bad_pins or len(set(pinned.values())) != len(pinned):
        why = "; ".join(
            f"node rank {r} on {n}: {reason_text(n, excluded)}" for r, n in sorted(bad_pins.items())
        )
        why = why or "a node is pinned to two ranks"
        raise Unplaceable(f"cannot keep the pinned node ranks: {why}", Counter(domains.values()), excluded)
    taken = set(pinned.values())
    free = {n: d for n, d in domains.items() if n not in taken}
    missing = [r for r in range(req.nodes) if r not in pinned]
    if len(free) < len(missing):
        what = f"{len(missing)} more nodes (of {req.describe()})" if pinned else req.describe()
        raise Unplaceable(
            explain(f"cannot place {what}", free, label, excluded), Counter(free.values()), excluded
        )
    order = fill(req, pinned, free, domains) if pinned else fresh(req, free)
    placed = tuple(PlacedNode(name, rank, domains[name]) for rank, name in enumerate(order))
    return Placement(request=req, domain_label=label, nodes=placed)


def by_domain(free: Mapping[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in sorted(free, key=natural_key):
        groups.setdefault(free[name], []).append(name)
    return groups


def fresh(req: Request, free: Mapping[str, str]) -> list[str]:
    """Node names in ring order for a job with nothing placed yet."""
    groups, b, need = by_domain(free), req.block, req.nodes
    ranked = sorted(groups, key=lambda d: (-len(groups[d]), natural_key(d)))
    chosen: list[str] = []
    for d in ranked:
        if sum(len(groups[c]) for c in chosen) >= need:
            break
        chosen.append(d)
    counts = dict.fromkeys(chosen, 0)
    for whole_blocks in (True, False):  # whole SP blocks first, then leftovers
        for d in chosen:
            room = len(groups[d]) - counts[d]
            take = min(room // b * b if whole_blocks else room, need - sum(counts.values()))
            counts[d] += take
    # Domains holding whole blocks first; the ones with a partial block last and adjacent,
    # so at most their boundaries cut a block.
    ordered = [d for d in chosen if counts[d] % b == 0] + [d for d in chosen if counts[d] % b]
    return [name for d in ordered for name in groups[d][: counts[d]]]


def fill(
    req: Request, pinned: Mapping[int, str], free: Mapping[str, str], domains: Mapping[str, str]
) -> list[str]:
    """Keep pinned ranks; give each missing rank a free node near its SP block."""
    groups, b = by_domain(free), req.block
    assign = dict(pinned)
    used = Counter(domains[n] for n in pinned.values())
    for r in range(req.nodes):
        if r in assign:
            continue
        peers = Counter(domains[assign[q]] for q in range(r // b * b, r // b * b + b) if q in assign)
        near = [domains[assign[q]] for q in (r - 1, r + 1) if q in assign]
        prefs = sorted(peers, key=lambda d: (-peers[d], natural_key(d))) + near
        prefs += sorted(used, key=lambda d: (-used[d], natural_key(d)))
        prefs += sorted(groups, key=lambda d: (-len(groups[d]), natural_key(d)))
        d = next(d for d in prefs if groups.get(d))
        assign[r] = groups[d].pop(0)
        used[d] += 1
    return [assign[r] for r in range(req.nodes)]


def shrink(
    req: Request,
    nodes: Sequence[NodeInfo],
    *,
    min_nodes: int | None = None,
    exclude: Collection[str] = (),
    previous: Collection[str] | None = None,
    gpus_in_use: Mapping[str, int] | None = None,
) -> Placement:
    """The largest placement of at most `req.nodes` nodes, same SP layout, ≥ min_nodes.

    With `previous` (the nodes the job ran on), only those are candidates: a shrink gives
    nodes back, it does not pull new ones in (a spare node would mean replace, not shrink).
    """
    b = req.block
    floor = max(b, -(-(min_nodes or b) // b) * b)
    candidates = [n for n in nodes if previous is None or n.name in previous]
    top = min(req.nodes, len(candidates)) // b * b
    last: Unplaceable | None = None
    for count in range(max(top, floor), floor - 1, -b):
        try:
            return plan(
                dataclasses.replace(req, nodes=count), candidates, exclude=exclude, gpus_in_use=gpus_in_use
            )
        except Unplaceable as err:
            last = err
    assert last is not None  # the loop ran at least once, for `floor`
    raise Unplaceable(
        f"cannot shrink to {floor} nodes or more: {last}", last.free_by_domain, last.excluded
    ) from last
