"""Both Dockerfiles and their ignore files, read as text (no podman): pins, user, entrypoint.

The trainer image cannot be built here (its NVIDIA base is not reachable), so this is what
holds it to the contracts: the entrypoint is the env contract's ENTRYPOINT, the ports are
the rendezvous ports, versions are exact. Each image installs whole distributions of the
workspace (contract + operator, contract + trainer); import-linter (make test) keeps the
operator from importing the trainer, so nothing more needs copying.
"""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from longvila_contract import env as env_contract
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ("operator", "trainer")


def pyproject(package: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Instruction:
    cmd: str  # upper case: FROM, RUN, COPY...
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped (no heredocs)."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        cmd, _, args = (pending + line).partition(" ")
        out.append(Instruction(cmd.upper(), " ".join(args.split())))
        pending = ""
    assert not pending, f"{path}: dangling line continuation"
    return out


def dockerfile(image: str) -> list[Instruction]:
    return parse(ROOT / "images" / image / "Dockerfile")


def final_stage(instrs: list[Instruction]) -> list[Instruction]:
    last = max(i for i, ins in enumerate(instrs) if ins.cmd == "FROM")
    return instrs[last:]


def ignore_patterns(image: str) -> list[str]:
    text = (ROOT / "images" / image / "Dockerfile.dockerignore").read_text()
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def requirements(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
        assert m, f"{path.name}: {line!r} is not pinned as name==version"
        name = canonicalize_name(m[1])
        assert name not in pins, f"{path.name}: {name} twice"
        pins[name] = m[2]
    return pins


def copy_sources(instrs: list[Instruction]) -> list[str]:
    """Context paths of every COPY/ADD (not --from): the files the build needs."""
    srcs: list[str] = []
    for ins in instrs:
        if ins.cmd not in ("COPY", "ADD"):
            continue
        words = ins.args.split()
        if any(w.startswith("--from") for w in words):
            continue
        srcs += [w for w in words[:-1] if not w.startswith("--")]
    return srcs


def allowed(path: str, patterns: list[str]) -> bool:
    """Whether an allow-list ignore file lets `path` into the context (last match wins)."""
    keep = True
    for pat in patterns:
        neg, pat = pat.startswith("!"), pat.lstrip("!")
        if pat == "*" or path == pat or path.startswith(pat + "/"):
            keep = neg
    return keep


# ---------------------------------------------------------------- both images
@pytest.mark.parametrize("image", IMAGES)
def test_base_is_an_arg_with_a_pinned_tag(image: str) -> None:
    instrs = dockerfile(image)
    assert instrs[0].cmd == "ARG" and instrs[0].args.startswith("BASE="), "the first line sets ARG BASE"
    default = instrs[0].args.removeprefix("BASE=")
    name, _, tag = default.rpartition(":")
    assert name and re.match(r"\d", tag), f"BASE default {default!r} needs a version tag"
    froms = [ins.args.split()[0] for ins in instrs if ins.cmd == "FROM"]
    assert froms and all(f == "${BASE}" for f in froms), froms


@pytest.mark.parametrize("image", IMAGES)
def test_nothing_floats(image: str) -> None:
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    assert not re.search(r":latest\b", text)
    for ins in dockerfile(image):
        assert not (ins.cmd == "ADD" and "://" in ins.args), "remote ADD is not pinned"
        if ins.cmd == "RUN" and "pip" in ins.args and "install" in ins.args:
            # Only from pinned files (or our own source tree, without dependencies).
            assert " -r " in ins.args or "--no-deps" in ins.args, ins.args
    for req in (ROOT / "images" / image).glob("requirements*.txt"):
        assert requirements(req), f"{req.name} is empty"


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_uid_1000(image: str) -> None:
    users = [ins.args for ins in final_stage(dockerfile(image)) if ins.cmd == "USER"]
    assert users == ["1000:1000"], "numeric, so that runAsNonRoot can check it"
    text = (ROOT / "images" / image / "Dockerfile").read_text()
    assert "useradd --uid 1000" in text


@pytest.mark.parametrize("image", IMAGES)
def test_oci_labels(image: str) -> None:
    labels = " ".join(ins.args for ins in final_stage(dockerfile(image)) if ins.cmd == "LABEL")
    for key in ("title", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


@pytest.mark.parametrize("image", IMAGES)
def test_ignore_file_is_an_allow_list_for_what_is_copied(image: str) -> None:
    patterns = ignore_patterns(image)
    assert patterns[0] == "*", "start from nothing, let back in what the Dockerfile copies"
    for out in (".venv", ".localcluster", "tests", ".git", "**/__pycache__"):
        assert out in patterns, out
    for junk in (".venv/bin/python", ".localcluster/run", "tests/conftest.py", "docs/images.md"):
        assert not allowed(junk, patterns), junk
    for src in copy_sources(dockerfile(image)):
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        # A directory may be let in only in part (trainer's `COPY operator` holds longvila_operator).
        inside = any(p.startswith(f"!{src}/") for p in patterns)
        assert allowed(src, patterns) or inside, f"COPY {src}: kept out of the context by the ignore file"


# ---------------------------------------------------------------- operator
def test_operator_entrypoint_is_the_console_script() -> None:
    instrs = final_stage(dockerfile("operator"))
    (entry,) = [json.loads(ins.args) for ins in instrs if ins.cmd == "ENTRYPOINT"]
    assert entry == ["longvila-operator"]
    assert pyproject("operator")["scripts"]["longvila-operator"] == "longvila_operator.main:main"


def test_operator_exposes_its_default_ports() -> None:
    from longvila_operator.main import parse as parse_args

    args = parse_args(["-A"])
    (expose,) = [ins.args.split() for ins in final_stage(dockerfile("operator")) if ins.cmd == "EXPOSE"]
    assert sorted(map(int, expose)) == sorted([args.metrics_port, args.liveness_port])


def test_operator_requirements_pin_its_distributions_dependencies_without_torch() -> None:
    pins = requirements(ROOT / "images/operator/requirements.txt")
    assert "torch" not in pins and "transformers" not in pins
    reqs = [Requirement(d) for pkg in ("contract", "operator") for d in pyproject(pkg)["dependencies"]]
    for r in reqs:
        name = canonicalize_name(r.name)
        if name.startswith("longvila-"):
            continue  # ours, installed from the source tree
        assert name in pins, f"{name}: an operator dependency, not pinned"
        assert r.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {r}"


@pytest.mark.parametrize(("image", "ours"), [("operator", {"contract", "operator"}),
                                              ("trainer", {"contract", "trainer"})])  # fmt: skip
def test_image_installs_whole_distributions(image: str, ours: set[str]) -> None:
    """Each image copies whole package directories and pip-installs them; never single files."""
    copied = {c for c in copy_sources(dockerfile(image)) if not c.startswith("images/")}
    assert copied == ours, copied
    runs = " ".join(ins.args for ins in dockerfile(image) if ins.cmd == "RUN")
    for pkg in ours:
        installed = re.search(rf"pip install [^&]*--no-deps[^&]* /tmp/\S*{pkg}\b", runs)
        assert installed, f"{pkg}: not pip-installed"
    patterns = ignore_patterns(image)
    for out in {"contract", "operator", "trainer", "localcluster"} - ours:
        assert not allowed(f"{out}/pyproject.toml", patterns), f"{out}: in the {image} image's context"
    deps = {canonicalize_name(Requirement(d).name) for pkg in ours for d in pyproject(pkg)["dependencies"]}
    assert {d for d in deps if d.startswith("longvila-")} <= {f"longvila-{p}" for p in ours}


# ---------------------------------------------------------------- trainer
def test_trainer_entrypoint_is_the_env_contract() -> None:
    instrs = final_stage(dockerfile("trainer"))
    (entry,) = [json.loads(ins.args) for ins in instrs if ins.cmd == "ENTRYPOINT"]
    assert entry == list(env_contract.ENTRYPOINT)
    (expose,) = [ins.args.split() for ins in instrs if ins.cmd == "EXPOSE"]
    assert sorted(map(int, expose)) == [env_contract.RDZV_PORT, env_contract.DEFAULT_MASTER_PORT]


def test_trainer_base_is_nvidia_pytorch() -> None:
    base = dockerfile("trainer")[0].args.removeprefix("BASE=")
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d\d\.\d\d-py3", base), base


def test_trainer_requirements_pin_the_gpu_extra_and_never_torch() -> None:
    pins = requirements(ROOT / "images/trainer/requirements.txt")
    gpu = requirements(ROOT / "images/trainer/requirements-gpu.txt")
    assert not {"torch", "torchvision", "triton", "numpy"} & (pins.keys() | gpu.keys()), "from the base"
    extra = [Requirement(r) for r in pyproject("trainer")["optional-dependencies"]["gpu"]]
    assert {canonicalize_name(r.name) for r in extra} == set(gpu)
    for r in extra:
        assert r.specifier.contains(gpu[canonicalize_name(r.name)]), r
    deps = [Requirement(d) for pkg in ("contract", "trainer") for d in pyproject(pkg)["dependencies"]]
    for r in deps:
        name = canonicalize_name(r.name)
        if name in ("torch", "numpy") or name.startswith("longvila-"):  # the base's; ours
            continue
        assert name in pins, f"{name}: a trainer dependency, not pinned"
        assert r.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {r}"


def test_trainer_bakes_in_the_tiny_weights() -> None:
    runs = " ".join(ins.args for ins in dockerfile("trainer") if ins.cmd == "RUN")
    assert "python -m longvila_trainer.model.export --preset tiny /opt/longvila/tiny" in runs


# ---------------------------------------------------------------- base image script
def test_build_base_image_script_parses() -> None:
    script = ROOT / "scripts/build-base-image"
    assert script.stat().st_mode & 0o111, "executable"
    subprocess.run(["bash", "-n", str(script)], check=True)
