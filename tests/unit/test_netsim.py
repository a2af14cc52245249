"""The simulated network as data: addresses, commands, parsing (pure)."""

from __future__ import annotations

import pytest
from longvila_trainer.bench import netns
from longvila_trainer.bench.netsim import (
    IFACE,
    NetSpecError,
    TwoTier,
    parse_class_bytes,
    rank_commands,
    rate_commands,
    veth_command,
)


def test_addresses_follow_torchrun_numbering() -> None:
    net = TwoTier(2, 2, 30.0, 18)
    assert [net.address(r) for r in range(4)] == ["10.77.0.1", "10.77.0.2", "10.77.1.1", "10.77.1.2"]
    assert net.nodes_of_ranks() == (0, 0, 1, 1)
    assert net.slow_mbs == pytest.approx(30 / 18)


def test_rank_commands_shape_two_tiers() -> None:
    net = TwoTier(4, 2, 30.0, 18)
    cmds = rank_commands(net, 5)  # node 2
    assert ["ip", "addr", "add", "10.77.2.2/16", "dev", IFACE] in cmds
    flt = next(c for c in cmds if c[:3] == ["tc", "filter", "add"])
    assert flt[flt.index("dst") + 1] == "10.77.2.0/24" and flt[-1] == "1:10"
    classes = {
        c[c.index("classid") + 1]: c[c.index("rate") + 1] for c in cmds if c[:3] == ["tc", "class", "add"]
    }
    assert classes == {"1:10": "240000000bit", "1:20": "13333333bit"}  # 30 MB/s and 30/18 MB/s
    assert [c[2] for c in rate_commands(net.with_rates(30.0, 4))] == ["change", "change"]
    assert veth_command(5, "/proc/self/fd/7")[-2:] == ["netns", "/proc/self/fd/7"]


@pytest.mark.parametrize(
    ("args", "msg"),
    [
        ((1, 2, 30.0, 18), None),
        ((0, 2, 30.0, 18), "nodes must be in 1..250"),
        ((2, 0, 30.0, 18), "ranks_per_node must be in 1..250"),
        ((2, 2, 0.0, 18), "fast_mbs"),
        ((2, 2, 30.0, 0.5), r"ratio \(fast : slow\) must be in 1..10000"),
    ],
)
def test_bad_specs_name_the_field(args: tuple[int, int, float, float], msg: str | None) -> None:
    if msg is None:
        TwoTier(*args)
    else:
        with pytest.raises(NetSpecError, match=msg):
            TwoTier(*args)


def test_parse_class_bytes() -> None:
    out = """class htb 1:10 root prio 0 rate 240Mbit ceil 240Mbit burst 1500b cburst 1500b
 Sent 9994 bytes 40 pkt (dropped 0, overlimits 0 requeues 0)
 backlog 0b 0p requeues 0
class htb 1:20 root prio 0 rate 13333Kbit ceil 13333Kbit burst 1599b cburst 1599b
 Sent 2220640 bytes 1600 pkt (dropped 0, overlimits 300 requeues 0)
"""
    assert parse_class_bytes(out) == {"1:10": 9994, "1:20": 2220640}


def test_refuses_without_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    reason = netns.why_not()
    assert reason is not None and reason.startswith("needs root")
