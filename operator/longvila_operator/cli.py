"""`longvila`: the user's CLI.

  longvila plan -f job.yaml --nodes nodes.yaml [-o json|table] [--exclude NODE] [--pin RANK=NODE] [--shrink]
  longvila crd [--docs]

`plan` reads nodes.yaml as `kubectl get nodes -o yaml` prints it. Exit status: 0 placed,
1 unsatisfiable (the reason on stderr), 2 invalid input.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import yaml

from . import crd, reference
from .api import KIND
from .api.manifest import InvalidJob, read_yaml
from .check import check, load_config_file
from .nodes import parse_nodes
from .placement import Placement, Request, Unplaceable, plan, shrink
from .validation import load_job


def ranges(values: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out: list[str] = []
    vs = sorted(set(values))
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        out.append(str(vs[i]) if i == j else f"{vs[i]}-{vs[j]}")
        i = j + 1
    return ",".join(out)


def table(name: str, p: Placement) -> str:
    r = p.request
    dp = p.layout().dp
    head = [
        f"{KIND} {name}: {r.describe()}, data parallel {dp}",
        f"domain label {p.domain_label}; {p.domains_spanned} domain(s) spanned; "
        f"{p.cross_domain_ring_links()} ring link(s) cross domains",
        "",
    ]
    rows = [("NODE RANK", "NODE", "DOMAIN", "RANKS", "ULYSSES GROUPS", "RING GROUPS", "DP GROUPS")]
    ranks = p.ranks()
    for node in p.nodes:
        mine = [x for x in ranks if x.node == node.name]
        rows.append(
            (
                str(node.node_rank),
                node.name,
                node.domain,
                ranges([x.rank for x in mine]),
                ranges([x.ulysses_group for x in mine]),
                ranges([x.ring_group for x in mine]),
                ranges([x.dp_group for x in mine]),
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(head + lines) + "\n"


def first_job(path: str) -> dict[str, Any]:
    with open(path) as f:
        docs = [d for d in read_yaml(f.read()) if isinstance(d, dict)]
    for doc in docs:
        if doc.get("kind") == KIND:
            return doc
    raise InvalidJob([f"{path}: no {KIND} document found"])


def pins(values: Sequence[str]) -> dict[int, str]:
    out = {}
    for v in values:
        rank, sep, node = v.partition("=")
        if not sep or not rank.isdigit() or not node:
            raise InvalidJob([f"--pin {v!r}: expected RANK=NODE, e.g. 3=gpu-node-7"])
        out[int(rank)] = node
    return out


def cmd_plan(args: argparse.Namespace, out: TextIO) -> int:
    job = load_job(first_job(args.file))
    with open(args.nodes) as f:
        docs = read_yaml(f.read())
    nodes = parse_nodes(docs[0] if len(docs) == 1 else docs)
    req = Request.from_spec(job.spec)
    if args.shrink:
        placed = shrink(req, nodes, min_nodes=job.spec.failure_policy.min_nodes, exclude=args.exclude)
    else:
        placed = plan(req, nodes, exclude=args.exclude, pinned=pins(args.pin))
    out.write(
        json.dumps(placed.to_json(), indent=2) + "\n" if args.output == "json" else table(job.name, placed)
    )
    return 0


def cmd_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    manifest = first_job(args.file)
    llm, vision = load_config_file(args.llm_config), load_config_file(args.vision_config)
    summary, problems = check(manifest, llm, vision)
    if summary:
        out.write(summary + "\n")
    if problems:
        err.write("".join(f"{p}\n" for p in problems))
        return 2
    out.write(f"ok: {args.file} would be admitted, and its stages pass the trainer's preflight\n")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="longvila", description="LongVILAJob tools")
    sub = p.add_subparsers(dest="command", required=True)
    pl = sub.add_parser("plan", help="place a LongVILAJob on a node list (kubectl get nodes -o yaml)")
    pl.add_argument("-f", "--file", required=True, help="the LongVILAJob manifest")
    pl.add_argument("--nodes", required=True, help="nodes.yaml: the output of kubectl get nodes -o yaml")
    pl.add_argument("-o", "--output", choices=("json", "table"), default="table")
    pl.add_argument(
        "--exclude", action="append", default=[], metavar="NODE", help="leave this node out (repeat)"
    )
    pl.add_argument(
        "--pin", action="append", default=[], metavar="RANK=NODE", help="keep a node rank (repeat)"
    )
    pl.add_argument(
        "--shrink", action="store_true", help="place fewer nodes (same SP layout) if all do not fit"
    )
    ck = sub.add_parser(
        "check", help="every admission rule plus the trainer's preflight, without a cluster (exit 0 or 2)"
    )
    ck.add_argument("-f", "--file", required=True, help="the LongVILAJob manifest")
    ck.add_argument("--llm-config", help="the LLM's config.json (default: read from spec.model.llm)")
    ck.add_argument(
        "--vision-config", help="the vision tower's config.json (default: read from spec.model.visionTower)"
    )
    cr = sub.add_parser("crd", help="print the CustomResourceDefinition (or, with --docs, its reference)")
    cr.add_argument("--docs", action="store_true", help="print docs/operator-api.md instead")
    cr.add_argument("--summary", action="store_true", help="print the README's resource table instead")
    return p


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    args = parser().parse_args(argv)
    if args.command == "crd":
        if args.summary:
            out.write(reference.summary() + "\n")
        else:
            out.write(reference.render() if args.docs else crd.render())
        return 0
    try:
        if args.command == "check":
            return cmd_check(args, out, err)
        return cmd_plan(args, out)
    except InvalidJob as e:
        err.write(f"invalid input:\n{e}\n")
        return 2
    except (OSError, yaml.YAMLError, ValueError, KeyError) as e:
        err.write(f"invalid input: {e}\n")
        return 2
    except Unplaceable as e:
        err.write(f"unsatisfiable: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
