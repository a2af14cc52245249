"""Opt-in: builds the operator image on a local debootstrap base and starts it with podman.

    LONGVILA_IMAGE_TESTS=1 .venv/bin/python -m pytest tests/images -s     # or -m image

No registry is needed: scripts/build-base-image makes localhost/longvila-base:bookworm
from Debian's mirror (cached in podman's storage after the first run), and the build's pip
reaches PyPI over the host's network. Containers run as on a restricted machine and as the
Helm chart runs the pod: cgroupfs, low nofile/nproc limits, read-only root, no capabilities.
Extra podman global flags (e.g. `--storage-driver vfs`) come from LONGVILA_PODMAN_FLAGS.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
BASE = "localhost/longvila-base:bookworm"
IMAGE = "localhost/longvila-operator:test"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
APT = "apt-get install -y podman buildah debootstrap runc uidmap fuse-overlayfs slirp4netns"
MAX_SIZE_MB = 400  # ~320 MB: 150 the Debian base, 165 the venv (kubernetes, pydantic-core, aiohttp)


def podman(*args: str) -> list[str]:
    flags = os.environ.get("LONGVILA_PODMAN_FLAGS", "").split()
    return ["podman", "--cgroup-manager", "cgroupfs", *flags, *args]


def run_flags() -> list[str]:
    """A pod under the chart's securityContext, on a machine with a low open-files limit."""
    return [
        "--rm",
        "--ulimit=nofile=1024:1024",
        "--ulimit=nproc=512:512",
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        "--network=none",
    ]


def timed(
    cmd: Sequence[str], what: str, timeout: float, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, text=True, capture_output=True, timeout=timeout)
    print(f"[image] {what}: {time.monotonic() - t0:.1f}s (rc {proc.returncode}): {' '.join(cmd)}")
    return proc


@pytest.fixture(scope="module")
def operator_image() -> str:
    missing = [t for t in ("podman", "debootstrap", "runc") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: {APT}")
    if os.geteuid() != 0:
        pytest.skip("debootstrap needs root (scripts/build-base-image)")
    base = timed([str(ROOT / "scripts/build-base-image")], "base image", 1800)
    assert base.returncode == 0, base.stdout + base.stderr
    print(base.stdout.strip().splitlines()[-1])
    build = podman(
        "build",
        "--network=host",  # pip needs PyPI
        f"--build-arg=BASE={BASE}",
        f"--build-arg=REVISION={_revision()}",
        "-f",
        "images/operator/Dockerfile",
        "-t",
        IMAGE,
    )
    if HOST_CA.exists():  # a TLS-intercepting proxy's CA is in the host's bundle, not the base's
        build[-5:-5] = [f"--volume={HOST_CA}:/run/host-ca.crt:ro", "--build-arg=PIP_CERT=/run/host-ca.crt"]
    if os.environ.get("PIP_INDEX_URL"):
        build[-5:-5] = [f"--build-arg=PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    proc = timed([*build, "."], "operator image build", 1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return IMAGE


def _revision() -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True, capture_output=True)
    return proc.stdout.strip() or "unknown"


def inspect(image: str) -> dict[str, Any]:
    out = subprocess.run(podman("image", "inspect", image), text=True, capture_output=True, check=True)
    info: dict[str, Any] = json.loads(out.stdout)[0]
    return info


def test_help_prints_the_usage(operator_image: str) -> None:
    proc = timed(podman("run", *run_flags(), operator_image, "--help"), "run --help", 120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: longvila-operator")
    for flag in ("--all-namespaces", "--metrics-port", "--liveness-port", "--kubeconfig"):
        assert flag in proc.stdout


def test_runs_as_uid_1000(operator_image: str) -> None:
    config = inspect(operator_image)["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["longvila-operator"]
    assert set(config["ExposedPorts"]) == {"9090/tcp", "8080/tcp"}
    proc = timed(podman("run", *run_flags(), "--entrypoint=id", operator_image), "run id", 120)
    assert proc.stdout.startswith("uid=1000(longvila) gid=1000(longvila)"), proc.stdout + proc.stderr


def test_without_a_cluster_it_exits_with_the_reason(operator_image: str) -> None:
    """No in-cluster service account, no kubeconfig: it must exit (not hang) and say why."""
    args = ["--all-namespaces", "--metrics-port=0", "--liveness-port=0"]
    proc = timed(podman("run", *run_flags(), operator_image, *args), "run against no cluster", 120)
    assert proc.returncode != 0
    assert "Service host/port is not set" in proc.stderr  # in-cluster config, tried first
    assert "No configuration found" in proc.stderr  # then $KUBECONFIG / ~/.kube/config


def test_holds_only_the_operator(operator_image: str) -> None:
    probe = (
        "import importlib.util as u, importlib.metadata as m; "
        "print(u.find_spec('torch'), u.find_spec('longvila_trainer'), u.find_spec('longvila_localcluster'), "
        "u.find_spec('pip')); "
        "print(m.version('longvila-contract'), m.version('longvila-operator'))"
    )
    cmd = podman("run", *run_flags(), "--entrypoint=python", operator_image, "-c", probe)
    proc = timed(cmd, "run import probe", 120)
    assert proc.returncode == 0, proc.stderr
    specs, versions = proc.stdout.splitlines()
    assert specs == "None None None None", "no torch, no trainer, no local-cluster code, no pip at run time"
    assert versions == "0.1.0 0.1.0", "the contract and the operator, installed as distributions"
    size_mb = int(inspect(operator_image)["Size"]) // 10**6
    print(f"[image] {operator_image}: {size_mb} MB")
    assert size_mb < MAX_SIZE_MB


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.cluster
def test_watches_the_local_cluster(
    operator_image: str, cluster_env: dict[str, str], repo_root: Path, tmp_path: Path
) -> None:
    """The container, read-only and as uid 1000, logs in with a kubeconfig and turns healthy."""
    crd = repo_root / "charts/longvila-operator/files/longvila.io_longvilajobs.yaml"
    subprocess.run(["kubectl", "apply", "--server-side", "-f", str(crd)], env=cluster_env, check=True)
    # One self-contained file (CA inline) that uid 1000 can read; the cluster's own is 0600 root.
    flat = subprocess.run(
        ["kubectl", "config", "view", "--raw", "--flatten", "--minify"],
        env=cluster_env,
        text=True,
        capture_output=True,
        check=True,
    )
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(flat.stdout)
    kubeconfig.chmod(0o644)
    liveness, metrics = _free_port(), _free_port()
    flags = [f for f in run_flags() if f not in ("--network=none", "--rm")]  # keep its logs
    args = ["-A", "--kubeconfig=/etc/longvila/kubeconfig", f"--liveness-port={liveness}"]
    args.append(f"--metrics-port={metrics}")
    cmd = podman(
        "run", *flags, "--detach", "--network=host", f"--volume={kubeconfig}:/etc/longvila/kubeconfig:ro"
    )
    started = timed([*cmd, operator_image, *args], "run against the local cluster", 120)
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 60:
            state = subprocess.run(
                podman("inspect", "--format={{.State.Running}}", container), text=True, capture_output=True
            ).stdout.strip()
            assert state == "true", "the operator exited: " + _logs(container)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{liveness}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail("no /healthz in 60 s: " + _logs(container))
        print(f"[image] /healthz answered {time.monotonic() - t0:.1f}s after the container started")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
            assert r.status == 200
        logs = _logs(container)
        assert "Traceback" not in logs, logs
    finally:
        subprocess.run(podman("rm", "--force", "--time=5", container), capture_output=True)


def _logs(container: str) -> str:
    proc = subprocess.run(podman("logs", container), text=True, capture_output=True)
    return proc.stdout + proc.stderr
