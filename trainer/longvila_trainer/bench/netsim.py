"""A two-tier network on one machine, as data: addresses, links and the ip/tc commands (pure).

Every simulated rank (a GPU) gets its own network namespace with one veth, `lv0`, whose
other end is a port of a bridge in a switch namespace. Node n's ranks have the addresses
10.77.n.1, 10.77.n.2, … (one /16 for the whole cluster), so "same node" is "same /24".
Each rank's egress on lv0 is shaped by an htb qdisc with two classes:

    1:10  to its own node's /24 (u32 filter on the destination)   the fast tier (NVLink)
    1:20  everything else (the default class)                     the slow tier (InfiniBand)

so each rank has its own fast and its own slow link, like a GPU with its NVLink ports and
its own InfiniBand NIC (DGX H100: one 400 Gb/s NIC per GPU). The tier ratio is
fast / slow per rank. Nothing here touches a device outside these namespaces; the
namespaces themselves are created by netns.py.

The kernels of these machines have no sch_netem (CONFIG_NET_SCH_NETEM is not set), so the
links are rate-limited, not delayed; a latency term is a cost-model input (costmodel.py).
"""

from __future__ import annotations

from dataclasses import dataclass

IFACE = "lv0"  # the rank's interface, same name in every namespace (gloo: GLOO_SOCKET_IFNAME)
BRIDGE = "lvbr"
PREFIX = "10.77"
HTB_QUANTUM = "60000"  # bytes; > MTU, and explicit so tc does not warn about r2q at high rates


class NetSpecError(ValueError):
    """A two-tier network that cannot be built (names the field and what is allowed)."""


@dataclass(frozen=True)
class TwoTier:
    """`nodes` × `ranks_per_node` ranks; per-rank egress `fast_mbs` MB/s inside a node and
    fast_mbs / ratio MB/s across nodes (1 MB = 10^6 bytes)."""

    nodes: int
    ranks_per_node: int
    fast_mbs: float
    ratio: float

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 250:
            raise NetSpecError(f"nodes must be in 1..250 (one /24 each), got {self.nodes}")
        if not 1 <= self.ranks_per_node <= 250:
            raise NetSpecError(f"ranks_per_node must be in 1..250, got {self.ranks_per_node}")
        if not 0.01 <= self.fast_mbs <= 10_000:
            raise NetSpecError(
                f"fast_mbs (MB/s per rank inside a node) must be in 0.01..10000, got {self.fast_mbs}"
            )
        if not 1 <= self.ratio <= 10_000:
            raise NetSpecError(f"ratio (fast : slow) must be in 1..10000, got {self.ratio}")

    @property
    def world(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def slow_mbs(self) -> float:
        return self.fast_mbs / self.ratio

    def node_of(self, rank: int) -> int:
        """torchrun numbering: node-major, so node n holds ranks n·G … n·G + G − 1."""
        return rank // self.ranks_per_node

    def nodes_of_ranks(self) -> tuple[int, ...]:
        return tuple(self.node_of(r) for r in range(self.world))

    def address(self, rank: int) -> str:
        return f"{PREFIX}.{self.node_of(rank)}.{rank % self.ranks_per_node + 1}"

    def with_rates(self, fast_mbs: float, ratio: float) -> TwoTier:
        return TwoTier(self.nodes, self.ranks_per_node, fast_mbs, ratio)


def _bits(mb_per_s: float) -> str:
    return f"{round(mb_per_s * 8e6)}bit"


def switch_commands() -> list[list[str]]:
    """In the switch namespace: the bridge every rank's veth plugs into."""
    return [
        ["ip", "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "link", "set", BRIDGE, "up"],
    ]


def port_name(rank: int) -> str:
    return f"p{rank}"


def veth_command(rank: int, switch_ns: str) -> list[str]:
    """In the rank's namespace: its veth, the peer end created straight in the switch's."""
    return ["ip", "link", "add", IFACE, "type", "veth", "peer", "name", port_name(rank), "netns", switch_ns]


def port_commands(rank: int) -> list[list[str]]:
    """In the switch namespace: plug the rank's port into the bridge."""
    return [["ip", "link", "set", port_name(rank), "master", BRIDGE, "up"]]


def rank_commands(net: TwoTier, rank: int) -> list[list[str]]:
    """In the rank's namespace, after veth_command: address, links up, the two-tier shaper."""
    node = net.node_of(rank)
    return [
        ["ip", "addr", "add", f"{net.address(rank)}/16", "dev", IFACE],
        ["ip", "link", "set", IFACE, "up"],
        ["ip", "link", "set", "lo", "up"],
        ["tc", "qdisc", "add", "dev", IFACE, "root", "handle", "1:", "htb", "default", "20"],
        *_class_commands(net, "add"),
        # u32 on the destination address: this node's /24 goes to the fast class
        ["tc", "filter", "add", "dev", IFACE, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "dst", f"{PREFIX}.{node}.0/24", "flowid", "1:10"],
    ]  # fmt: skip


def _class_commands(net: TwoTier, verb: str) -> list[list[str]]:
    out = []
    for cls, mbs in (("1:10", net.fast_mbs), ("1:20", net.slow_mbs)):
        rate = _bits(mbs)  # ceil = rate: no borrowing, each tier is a link of its own
        out.append(["tc", "class", verb, "dev", IFACE, "parent", "1:", "classid", cls, "htb",
                    "rate", rate, "ceil", rate, "quantum", HTB_QUANTUM])  # fmt: skip
    return out


def rate_commands(net: TwoTier) -> list[list[str]]:
    """In each rank's namespace: new rates for both tiers (the qdisc and filter stay)."""
    return _class_commands(net, "change")


def parse_class_bytes(tc_output: str) -> dict[str, int]:
    """`tc -s class show` → bytes sent per class id, e.g. {"1:10": 1234, "1:20": 99}."""
    out: dict[str, int] = {}
    cls = None
    for line in tc_output.splitlines():
        words = line.split()
        if words[:2] == ["class", "htb"]:
            cls = words[2]
        elif words[:1] == ["Sent"] and cls is not None:
            out[cls] = int(words[1])
            cls = None
    return out
