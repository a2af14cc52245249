"""Placement: eligibility, domain detection, fewest domains, ring locality, pins, shrink, reasons."""

from __future__ import annotations

import random
from typing import Any

import pytest
from builders import SPINE, fleet, node, node_list
from longvila_contract.layout import ParallelLayout
from longvila_operator.api.types import Toleration
from longvila_operator.nodes import DOMAIN_KEYS, detect_domain_label, parse_nodes
from longvila_operator.placement import Placement, Request, Unplaceable, plan, shrink


def req(nodes: int, gpus: int = 8, ulysses: int = 8, ring: int = 2, **kw: Any) -> Request:
    return Request(nodes=nodes, gpus_per_node=gpus, ulysses=ulysses, ring=ring, **kw)


def place(request: Request, nodes: list[dict[str, Any]], **kw: Any) -> Placement:
    return plan(request, parse_nodes(node_list(*nodes)), **kw)


def names(p: Placement) -> list[str]:
    return [n.name for n in p.nodes]


def domains(p: Placement) -> list[str]:
    return [n.domain for n in p.nodes]


def test_homogeneous_two_domains_fits_in_one() -> None:
    p = place(req(4), fleet({"spine-0": 4, "spine-1": 4}))
    assert p.domain_label == SPINE
    assert names(p) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]  # tie on free nodes: by domain name
    assert p.domains_spanned == 1 and p.cross_domain_ring_links() == 0


def test_prefers_the_domain_with_most_free_nodes() -> None:
    p = place(req(2), fleet({"spine-0": 3, "spine-1": 5}))
    assert set(domains(p)) == {"spine-1"}


@pytest.mark.parametrize(
    ("per_domain", "nodes", "ulysses", "ring", "spanned", "cross_links"),
    [
        ({"a": 4, "b": 4}, 6, 8, 2, 2, 0),  # 4 + 2, both whole SP blocks
        ({"a": 3, "b": 3, "c": 2}, 4, 8, 2, 2, 0),  # 2 + 2, not 3 + 1 (which would split a block)
        ({"a": 3, "b": 3, "c": 2}, 6, 8, 2, 2, 1),  # 3 + 3: one block has to straddle
        ({"a": 8, "b": 8, "c": 8}, 16, 8, 4, 2, 0),  # blocks of 4 nodes
        ({"a": 2, "b": 2, "c": 2, "d": 2}, 8, 8, 2, 4, 0),
        ({"a": 6, "b": 9}, 6, 4, 3, 1, 0),  # sp 12 on 8 GPUs: blocks of 3 nodes
        ({"a": 5, "b": 5}, 8, 8, 4, 2, 0),  # 4 + 4, not 5 + 3
    ],
)
def test_fewest_domains_and_whole_blocks(
    per_domain: dict[str, int], nodes: int, ulysses: int, ring: int, spanned: int, cross_links: int
) -> None:
    r = req(nodes, ulysses=ulysses, ring=ring)
    p = place(r, fleet(per_domain))
    assert len(p.nodes) == nodes and p.domains_spanned == spanned
    free = sum(per_domain.values())
    assert p.domains_spanned == min(
        k for k in range(1, len(per_domain) + 1) if sum(sorted(per_domain.values())[-k:]) >= nodes
    ), f"not the fewest domains for {per_domain} (free {free})"
    # Consecutive node ranks change domain at most spanned-1 times: domains are contiguous runs.
    changes = sum(a != b for a, b in zip(domains(p), domains(p)[1:], strict=False))
    assert changes == p.domains_spanned - 1
    assert p.cross_domain_ring_links() == cross_links


def test_ring_neighbours_stay_in_domain_when_blocks_fit() -> None:
    p = place(req(4), fleet({"a": 3, "b": 3, "c": 2}))
    assert p.cross_domain_ring_links() == 0
    assert domains(p) == ["a", "a", "b", "b"]


def test_ranks_follow_the_layout() -> None:
    p = place(req(4, ulysses=4, ring=4), fleet({"a": 2, "b": 2}))
    lay = ParallelLayout(world=32, ulysses=4, ring=4)
    ranks = p.ranks()
    assert [r.rank for r in ranks] == list(range(32))
    by_node = {n.name: n.node_rank for n in p.nodes}
    for r in ranks:
        assert r.rank == by_node[r.node] * 8 + r.local_rank
        assert r.rank in lay.ulysses_groups()[r.ulysses_group]
        assert r.rank in lay.ring_groups()[r.ring_group]
        assert r.rank in lay.dp_groups()[r.dp_group]
    for group in lay.ulysses_groups():  # every Ulysses group inside one node
        assert len({ranks[x].node for x in group}) == 1


def test_heterogeneous_gpu_counts() -> None:
    nodes = [
        node("big-0", "a"),
        node("small-0", "a", gpus=4),
        node("small-1", "a", gpus=4),
        node("big-1", "b"),
    ]
    p = place(req(2), nodes)
    assert names(p) == ["big-0", "big-1"]  # the only two with 8 GPUs, across domains
    p4 = place(req(2, gpus=4, ulysses=4, ring=2), nodes)
    assert set(domains(p4)) == {"a"}  # three 4-GPU-capable nodes in a


def test_partly_failed_cluster_uses_only_healthy_nodes() -> None:
    nodes = [
        node("gpu-0", "a", ready=False),
        node("gpu-1", "a", cordoned=True),
        node("gpu-2", "a", taints=(("maintenance", "true", "NoSchedule"),)),
        node("gpu-3", "a", taints=(("nvidia.com/gpu", "present", "NoExecute"),)),
        node("gpu-4", "a", taints=(("soft", "x", "PreferNoSchedule"),)),  # never blocks
        node("gpu-5", "a", gpus=2),
        node("gpu-6", "a"),
        node("gpu-7", "b"),
    ]
    tolerate_gpu = (Toleration(key="nvidia.com/gpu", operator="Exists"),)
    p = place(req(2, tolerations=tolerate_gpu), nodes)
    assert names(p) == ["gpu-3", "gpu-4"]  # a has three usable nodes: 3 (tolerated), 4, 6
    with pytest.raises(Unplaceable) as err:
        place(req(4), nodes)
    excluded = err.value.excluded
    assert {n: c for n, (c, _) in excluded.items()} == {
        "gpu-0": "not Ready",
        "gpu-1": "cordoned",
        "gpu-2": "untolerated taint",
        "gpu-3": "untolerated taint",
        "gpu-5": "too few GPUs",
    }


def test_selector_rdma_gpus_in_use_and_exclude() -> None:
    nodes = [
        node("gpu-0", "a", labels={"gpu": "h100"}),
        node("gpu-1", "a", labels={"gpu": "a100"}),
        node("gpu-2", "a", labels={"gpu": "h100"}, rdma=0),
        node("gpu-3", "b", labels={"gpu": "h100"}),
        node("gpu-4", "b", labels={"gpu": "h100"}),
        node("gpu-5", "b", labels={"gpu": "h100"}),
    ]
    r = req(2, node_selector={"gpu": "h100"}, rdma_resource="rdma/ib", rdma_per_node=8)
    assert names(place(r, nodes)) == ["gpu-3", "gpu-4"]
    assert names(place(r, nodes, gpus_in_use={"gpu-4": 1})) == ["gpu-3", "gpu-5"]
    assert names(place(r, nodes, exclude={"gpu-3"})) == ["gpu-4", "gpu-5"]
    with pytest.raises(Unplaceable) as err:
        place(r, nodes, exclude={"gpu-3", "gpu-4", "gpu-5"})
    reasons = {n: c for n, (c, _) in err.value.excluded.items()}
    assert reasons == {"gpu-1": "nodeSelector", "gpu-2": "too little rdma/ib"} | dict.fromkeys(
        ["gpu-3", "gpu-4", "gpu-5"], "excluded"
    )


@pytest.mark.parametrize("key", [k.replace("*", "1") for k in DOMAIN_KEYS])
def test_domain_auto_detection_per_key(key: str) -> None:
    nodes = [node(f"n-{i}", f"d{i // 2}", label=key) for i in range(4)]
    if key != "kubernetes.io/hostname":
        assert detect_domain_label(parse_nodes(nodes)) == key
        p = place(req(2), nodes)
        assert p.domain_label == key and p.domains_spanned == 1
    else:  # builders set hostname to the node name: each node is its own domain
        p = place(req(2), [node(f"n-{i}", None) for i in range(4)])
        assert p.domain_label == key and p.domains_spanned == 2


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"nvidia.com/gpu.clique": "c1", "topology.kubernetes.io/zone": "z"}, "nvidia.com/gpu.clique"),
        (
            {"fabric.topograph.run/tier-2": "s", "fabric.topograph.run/tier-1": "l"},
            "fabric.topograph.run/tier-1",
        ),
        (
            {"network.topology.nvidia.com/spine": "s", "network.topology.nvidia.com/leaf": "l"},
            "network.topology.nvidia.com/leaf",
        ),
        (
            {"cloud.google.com/gce-topology-block": "b", "topology.kubernetes.io/zone": "z"},
            "cloud.google.com/gce-topology-block",
        ),
        ({}, "kubernetes.io/hostname"),
    ],
)
def test_domain_detection_precedence(labels: dict[str, str], expected: str) -> None:
    nodes = [node(f"n-{i}", None, labels=labels) for i in range(3)]
    assert detect_domain_label(parse_nodes(nodes)) == expected


def test_detection_skips_a_key_missing_on_some_nodes_and_configured_label_wins() -> None:
    zone = "topology.kubernetes.io/zone"
    partial = [
        node("n-0", "z1", label=zone, labels={"nvidia.com/gpu.clique": "c"}),
        node("n-1", "z1", label=zone),
    ]
    assert detect_domain_label(parse_nodes(partial)) == zone
    both = [node(f"n-{i}", f"z{i}", label=zone, labels={"nvidia.com/gpu.clique": "c"}) for i in range(2)]
    assert place(req(2), both).domains_spanned == 1  # auto: the clique
    configured = place(req(2, domain_label=zone), both)
    assert configured.domain_label == zone and configured.domains_spanned == 2


def test_configured_label_missing_on_nodes_is_a_reason() -> None:
    nodes = [
        node("n-0", "c", label="nvidia.com/gpu.clique"),
        node("n-1", "z1", label="topology.kubernetes.io/zone"),
    ]
    with pytest.raises(Unplaceable) as err:
        place(req(2, domain_label="nvidia.com/gpu.clique"), nodes)
    assert err.value.excluded["n-1"][0] == "no domain label"
    assert "no nvidia.com/gpu.clique label" in str(err.value)


def test_natural_name_order_and_determinism() -> None:
    nodes = [node(f"gpu-node-{i}", "a") for i in range(12)]
    p = place(req(4), nodes)
    assert names(p) == ["gpu-node-0", "gpu-node-1", "gpu-node-2", "gpu-node-3"]
    shuffled = nodes[:]
    random.Random(7).shuffle(shuffled)
    assert place(req(12, ulysses=8, ring=2), shuffled) == place(req(12, ulysses=8, ring=2), nodes)
    assert names(place(req(12), nodes))[9:] == ["gpu-node-9", "gpu-node-10", "gpu-node-11"]


@pytest.mark.parametrize(
    ("lost", "spare"),
    [
        ("gpu-6", "gpu-9"),  # node rank 5 in b: b's spare
        ("gpu-5", "gpu-9"),  # node rank 4: its neighbour rank 3 is in a, but its SP block is in b
        ("gpu-0", "gpu-4"),  # node rank 0 in a: a's spare
    ],
)
def test_replacement_keeps_other_ranks_and_prefers_same_domain(lost: str, spare: str) -> None:
    nodes = fleet({"a": 5, "b": 5})  # gpu-0..4 in a, gpu-5..9 in b
    first = place(req(8), nodes)
    assert names(first) == ["gpu-0", "gpu-1", "gpu-2", "gpu-3", "gpu-5", "gpu-6", "gpu-7", "gpu-8"]
    rank = names(first).index(lost)
    pinned = {n.node_rank: n.name for n in first.nodes if n.name != lost}
    again = place(req(8), nodes, exclude={lost}, pinned=pinned)
    assert names(again) == [spare if n == lost else n for n in names(first)]
    assert again.nodes[rank].domain == first.nodes[rank].domain
    assert again.cross_domain_ring_links() == 0


def test_replacement_falls_back_to_another_domain() -> None:
    nodes = fleet({"a": 4, "b": 1})
    first = place(req(4), nodes)
    pinned = {n.node_rank: n.name for n in first.nodes if n.node_rank != 2}
    again = place(req(4), nodes, exclude={first.nodes[2].name}, pinned=pinned)
    assert names(again)[2] == "gpu-4" and again.domains_spanned == 2
    assert [again.nodes[r].name for r in pinned] == list(pinned.values())


def test_pinning_an_unusable_node_is_refused() -> None:
    nodes = fleet({"a": 4})
    with pytest.raises(Unplaceable, match="node rank 1 on gpu-1: excluded"):
        place(req(2), nodes, exclude={"gpu-1"}, pinned={0: "gpu-0", 1: "gpu-1"})


def test_shrink_keeps_sp_layout_and_drops_data_parallelism() -> None:
    nodes = fleet({"a": 4, "b": 4})
    first = place(req(8), nodes)
    lost = {"gpu-2"}
    with pytest.raises(Unplaceable):
        place(req(8), nodes, exclude=lost)
    small = shrink(req(8), parse_nodes(nodes), exclude=lost, previous=names(first), min_nodes=4)
    assert len(small.nodes) == 6  # blocks of 2 nodes: 7 survivors -> 6
    assert small.layout().sp == 16 and small.layout().dp == 3
    assert set(names(small)) <= set(names(first)) - lost
    assert small.cross_domain_ring_links() == 0
    with pytest.raises(Unplaceable, match="cannot shrink to 8 nodes or more"):
        shrink(req(8), parse_nodes(nodes), exclude=lost, previous=names(first), min_nodes=8)


def test_shrink_rounds_min_nodes_up_to_whole_blocks() -> None:
    nodes = fleet({"a": 5})
    small = shrink(req(6, ulysses=4, ring=6), parse_nodes(nodes), min_nodes=1)  # sp 24 = blocks of 3
    assert len(small.nodes) == 3


def test_unsatisfiable_reason_names_free_nodes_per_domain_and_exclusions() -> None:
    nodes = [
        node("gpu-0", "spine-0"),
        node("gpu-1", "spine-0", ready=False),
        node("gpu-2", "spine-1"),
        node("gpu-3", "spine-1", cordoned=True),
        node("gpu-4", "spine-1", gpus=4),
        node("gpu-5", "spine-1", taints=(("dedicated", "infra", "NoSchedule"),)),
    ]
    with pytest.raises(Unplaceable) as err:
        place(req(4), nodes)
    text = str(err.value)
    assert "cannot place 4 nodes × 8 GPUs (ulysses 8 × ring 2, SP blocks of 2 nodes)" in text
    assert f"eligible free nodes per domain ({SPINE}): spine-0: 1, spine-1: 1 (2 in all)" in text
    assert "not Ready (1): gpu-1" in text and "cordoned (1): gpu-3" in text
    assert "too few GPUs (1): gpu-4 (4 allocatable nvidia.com/gpu; need 8)" in text
    assert "untolerated taint (1): gpu-5 (dedicated=infra:NoSchedule)" in text
    assert err.value.free_by_domain == {"spine-0": 1, "spine-1": 1}


def test_block_size_and_request_validation() -> None:
    assert req(3, ulysses=4, ring=3).block == 3  # sp 12 on 8 GPUs
    assert req(2, ulysses=8, ring=2).block == 2
    assert req(1, ulysses=2, ring=2).block == 1  # two SP groups per node
    with pytest.raises(ValueError, match="must divide the GPUs per node"):
        req(2, ulysses=3, ring=1)
    with pytest.raises(ValueError, match="not divisible"):
        req(3, ulysses=8, ring=2)


def test_status_and_json_shape() -> None:
    p = place(req(2, ulysses=4, ring=4), fleet({"a": 2}))
    js = p.to_json()
    assert list(js) == ["nodes", "ranks", "domainsSpanned"]
    assert js["nodes"][1] == {"name": "gpu-1", "nodeRank": 1, "domain": "a"}
    assert js["ranks"][9] == {
        "rank": 9,
        "node": "gpu-1",
        "localRank": 1,
        "ulyssesGroup": 2,
        "ringGroup": 1,
        "dpGroup": 9,
    }
    assert p.status() == {"domainLabel": SPINE, "nodes": js["nodes"], "domainsSpanned": 1}
