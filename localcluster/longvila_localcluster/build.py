"""Builds the local cluster's binaries from Go modules and caches them by version.

Nothing is downloaded but Go modules (through the module proxy). Each component is built
into a temporary folder and renamed into place only when complete, so an interrupted build
never leaves a half-filled cache entry behind. Progress is printed while a build runs,
because a cold Kubernetes build takes many minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .versions import Versions, cache_root


@dataclass(frozen=True)
class Component:
    """One cached build: a name, a version, the binaries it provides and other files it keeps."""

    name: str
    version: str
    binaries: tuple[str, ...]
    files: tuple[str, ...] = ()  # besides binaries, e.g. manifests copied from the module

    def bin_dir(self, root: Path) -> Path:
        return root / "bin" / f"{self.name}-{self.version}"

    def is_built(self, root: Path) -> bool:
        d = self.bin_dir(root)
        return all((d / b).is_file() for b in (*self.binaries, *self.files))


def components(v: Versions) -> list[Component]:
    return [
        Component("etcd", v.etcd, ("etcd",)),
        Component(
            "kubernetes",
            v.kubernetes,
            ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl"),
        ),
        Component("kwok", v.kwok, ("kwok",)),
        Component("helm", v.helm, ("helm",)),
        Component("versitygw", v.versitygw, ("versitygw",)),
        Component("kubeconform", v.kubeconform, ("kubeconform",)),
        Component("kueue", v.kueue, ("kueue",), (KUEUE_CRDS, KUEUE_WEBHOOKS)),
    ]


def go_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    # A dependency whose go line is newer than ours must fail fast, never fetch a toolchain.
    env["GOTOOLCHAIN"] = "local"
    env["CGO_ENABLED"] = "0"
    env.setdefault("GOFLAGS", "-buildvcs=false")
    return env


def _run(cmd: Sequence[str], cwd: Path, env: dict[str, str], log: Path, label: str) -> None:
    """Runs one build command, printing a heartbeat so a long build is visibly alive."""
    start = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            print(f"  … {label}: {time.monotonic() - start:.0f}s", flush=True)

    t = threading.Thread(target=heartbeat, daemon=True)
    t.start()
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT)
    done.set()
    t.join()
    if proc.returncode != 0:
        tail = log.read_text().splitlines()[-30:]
        raise RuntimeError(
            f"{label} failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail)
        )


def _go_json(args: Sequence[str], cwd: Path, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["go", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout
    data: dict[str, str] = json.loads(out)
    return data


def staging_modules(kubernetes_gomod: str) -> list[str]:
    """Module paths that k8s.io/kubernetes replaces with ./staging/ (read from its go.mod)."""
    return sorted(
        set(re.findall(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/", kubernetes_gomod, re.M))
    )


def go_directives(gomod: str) -> list[str]:
    """The go and godebug lines of a go.mod, copied into a wrapper so runtime defaults match."""
    return [ln.strip() for ln in gomod.splitlines() if re.match(r"^(go|godebug)\s", ln.strip())]


def kubernetes_ldflags(version: str, build_date: str) -> str:
    minor = version.split(".")[1]
    v = f"v{version}"
    pairs = {
        "k8s.io/component-base/version.gitVersion": v,
        "k8s.io/component-base/version.gitMajor": "1",
        "k8s.io/component-base/version.gitMinor": minor,
        "k8s.io/component-base/version.gitTreeState": "clean",
        "k8s.io/component-base/version.buildDate": build_date,
        "k8s.io/client-go/pkg/version.gitVersion": v,
        "k8s.io/client-go/pkg/version.gitMajor": "1",
        "k8s.io/client-go/pkg/version.gitMinor": minor,
        "k8s.io/client-go/pkg/version.gitTreeState": "clean",
        "k8s.io/client-go/pkg/version.buildDate": build_date,
    }
    return "-s -w " + " ".join(f"-X {k}={val}" for k, val in pairs.items())


def _build_kubernetes(c: Component, work: Path, out: Path, env: dict[str, str], log: Path) -> None:
    v = f"v{c.version}"
    info = _go_json(["mod", "download", "-json", f"k8s.io/kubernetes@{v}"], work, env)
    upstream = Path(info["GoMod"]).read_text()
    staging = staging_modules(upstream)
    if not staging:
        raise RuntimeError(f"no staging replaces found in k8s.io/kubernetes@{v} go.mod")
    minor = c.version.split(".")[1]
    lines = ["module local/k8swrap", "", *go_directives(upstream), "", f"require k8s.io/kubernetes {v}", ""]
    lines += [f"replace {m} => {m} v0.{minor}.{c.version.split('.')[2]}" for m in staging]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    print(f"  wrapper module: {len(staging)} staging replaces read from k8s.io/kubernetes {v}", flush=True)
    pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in c.binaries]
    _run(["go", "get", *[f"{p}@{v}" for p in pkgs]], work, env, log, "resolving k8s.io/kubernetes modules")
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-tags=selinux,notest",
            "-ldflags",
            kubernetes_ldflags(c.version, date),
            "-o",
            str(out) + "/",
            *pkgs,
        ],
        work,
        env,
        log,
        f"compiling {', '.join(c.binaries)}",
    )


def _build_etcd(c: Component, work: Path, out: Path, env: dict[str, str], log: Path) -> None:
    # server/v3's go.mod has ../ replaces, so `go install` refuses it; a wrapper that
    # requires it resolves the sibling modules at the same tag instead.
    (work / "go.mod").write_text("module local/etcdwrap\n\ngo 1.25.0\n")
    _run(["go", "get", f"go.etcd.io/etcd/server/v3@v{c.version}"], work, env, log, "resolving etcd modules")
    _run(
        [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            "-s -w",
            "-o",
            str(out / "etcd"),
            "go.etcd.io/etcd/server/v3",
        ],
        work,
        env,
        log,
        "compiling etcd",
    )


# Kueue's manifests at the pinned version, copied from the module next to its binary: the CRD
# bases and the webhook list the API server needs (config/components, as its kustomize reads).
KUEUE_CRDS = "config/crds.yaml"
KUEUE_WEBHOOKS = "config/webhooks.yaml"


def _build_kueue(c: Component, work: Path, out: Path, env: dict[str, str], log: Path) -> None:
    _build_go_install(c, work, out, env, log)
    info = _go_json(["mod", "download", "-json", f"sigs.k8s.io/kueue@v{c.version}"], work, env)
    config = Path(info["Dir"]) / "config" / "components"
    bases = sorted((config / "crd" / "bases").glob("*.yaml"))
    if not bases:
        raise RuntimeError(f"no CRDs under {config / 'crd' / 'bases'} in sigs.k8s.io/kueue@v{c.version}")
    (out / "config").mkdir()
    (out / KUEUE_CRDS).write_text("".join(f"---\n{p.read_text()}" for p in bases))
    shutil.copyfile(config / "webhook" / "manifests.yaml", out / KUEUE_WEBHOOKS)


_GO_INSTALL = {
    "kwok": ("sigs.k8s.io/kwok/cmd/kwok", ""),
    "helm": ("helm.sh/helm/v3/cmd/helm", "-X helm.sh/helm/v3/internal/version.version=v{v}"),
    "versitygw": ("github.com/versity/versitygw/cmd/versitygw", ""),
    "kubeconform": ("github.com/yannh/kubeconform/cmd/kubeconform", ""),
    "kueue": ("sigs.k8s.io/kueue/cmd/kueue", "-X sigs.k8s.io/kueue/pkg/version.GitVersion=v{v}"),
}


def _build_go_install(c: Component, work: Path, out: Path, env: dict[str, str], log: Path) -> None:
    pkg, ldf = _GO_INSTALL[c.name]
    env = dict(env, GOBIN=str(out))
    cmd = [
        "go",
        "install",
        "-trimpath",
        "-ldflags",
        ("-s -w " + ldf.format(v=c.version)).strip(),
        f"{pkg}@v{c.version}",
    ]
    _run(cmd, work, env, log, f"compiling {c.name}")


def build(c: Component, root: Path) -> Path:
    """Builds one component unless its cache entry exists; returns its bin folder."""
    final = c.bin_dir(root)
    if c.is_built(root):
        return final
    logs = root / "build-logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{c.name}-{c.version}.log"
    tmp = root / "bin" / f".{c.name}-{c.version}.partial-{os.getpid()}"
    work = root / "build" / f"{c.name}-{c.version}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    print(f"building {c.name} {c.version} (first use; cached afterwards; log: {log})", flush=True)
    start = time.monotonic()
    env = go_env(root)
    try:
        if c.name == "kubernetes":
            _build_kubernetes(c, work, tmp, env, log)
        elif c.name == "etcd":
            _build_etcd(c, work, tmp, env, log)
        elif c.name == "kueue":
            _build_kueue(c, work, tmp, env, log)
        else:
            _build_go_install(c, work, tmp, env, log)
        missing = [b for b in (*c.binaries, *c.files) if not (tmp / b).is_file()]
        if missing:
            raise RuntimeError(f"{c.name} build produced no {', '.join(missing)}")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    took = time.monotonic() - start
    (logs / f"{c.name}-{c.version}.seconds").write_text(f"{took:.0f}\n")
    print(f"built {c.name} {c.version} in {took:.0f}s", flush=True)
    return final


def ensure_all(v: Versions, root: Path | None = None) -> dict[str, Path]:
    """Builds every missing component; returns binary name -> path."""
    root = root or cache_root()
    paths: dict[str, Path] = {}
    for c in components(v):
        d = build(c, root)
        for b in c.binaries:
            paths[b] = d / b
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    from .versions import load_versions

    paths = ensure_all(load_versions())
    for name, p in sorted(paths.items()):
        print(f"{name:24} {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
