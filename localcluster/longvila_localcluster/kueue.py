"""Starts the real Kueue controller against a running local cluster (`up --kueue`, the fixture).

In order: a webhook CA and serving certificate (openssl), Kueue's CRDs at the pinned version,
its namespace and certificate Secret, its webhook configurations (by URL on 127.0.0.1,
kueue_manifests.py), then the controller itself as a supervised process, and a check that
the API server really reaches its webhooks before anyone relies on them.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import kueue_manifests as M
from .build import KUEUE_CRDS, KUEUE_WEBHOOKS
from .probes import free_ports, poll, wait_for
from .processes import Supervisor

READY_TIMEOUT_S = 120.0
GROUP = "kueue.x-k8s.io"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_webhook_certs(pki: Path) -> None:
    """ca.crt/ca.key (PKCS#1, as Kueue's certificate rotator parses it) and tls.crt/tls.key."""
    pki.mkdir(parents=True, exist_ok=True)
    (pki / "ca.cnf").write_text(M.ca_config())
    (pki / "server.ext").write_text(M.server_ext())
    _openssl("genrsa", "-traditional", "-out", "ca.key", "2048", cwd=pki)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt", "-days", "3650", "-config", "ca.cnf",
             cwd=pki)  # fmt: skip
    _openssl("genrsa", "-traditional", "-out", "tls.key", "2048", cwd=pki)
    _openssl("req", "-new", "-key", "tls.key", "-out", "tls.csr", "-subj", f"/CN={M.server_name()}", cwd=pki)
    _openssl(
        "x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "tls.crt", "-days", "3650", "-extfile", "server.ext",
        cwd=pki,
    )  # fmt: skip


def kubectl_apply(kubectl: Path, kubeconfig: str, text: str, timeout: float = 120) -> None:
    cmd = [str(kubectl), "--kubeconfig", kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", "-"]
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl apply failed ({proc.returncode}): {proc.stderr.strip()}")


def start_kueue(
    sup: Supervisor,
    kubeconfig: str,
    binaries: Mapping[str, Path],
    run_dir: Path,
    progress: Callable[[str], None] = print,
) -> int:
    """Installs and starts Kueue; returns its webhook port once the API server reaches it."""
    from kubernetes import client as k
    from kubernetes import config

    kueue, kubectl = binaries["kueue"], binaries["kubectl"]
    home = run_dir / "kueue"
    pki, certs = home / "pki", home / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    make_webhook_certs(pki)
    for name in ("ca.crt", "tls.crt", "tls.key"):  # where the Secret's volume would put them
        shutil.copyfile(pki / name, certs / name)
    ca = (pki / "ca.crt").read_bytes()
    webhook_port, health_port = free_ports(2)
    base = f"https://127.0.0.1:{webhook_port}"
    manifests = kueue.parent

    progress(f"installing Kueue {kueue.parent.name.split('-', 1)[1]}: CRDs, namespace, webhooks on {base}")
    kubectl_apply(kubectl, kubeconfig, M.dump(M.crds((manifests / KUEUE_CRDS).read_text(), base, ca)))
    api = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    ext = k.ApiextensionsV1Api(api)

    def established() -> bool:
        for crd in ext.list_custom_resource_definition().items:
            if crd.spec.group == "kueue.x-k8s.io":
                status: Any = crd.status
                conds = {c.type: c.status for c in (status.conditions if status else None) or []}
                if conds.get("Established") != "True":
                    return False
        return True

    poll("Kueue's CRDs Established", established, 60, interval=0.5)
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": M.NAMESPACE}}
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": M.SECRET, "namespace": M.NAMESPACE},
        "data": {
            name: _b64((pki / name).read_bytes()) for name in ("ca.crt", "ca.key", "tls.crt", "tls.key")
        },
    }
    kubectl_apply(kubectl, kubeconfig, M.dump([namespace, secret]))
    kubectl_apply(kubectl, kubeconfig, M.dump(M.webhooks((manifests / KUEUE_WEBHOOKS).read_text(), base, ca)))
    (home / "config.yaml").write_text(M.dump([M.config(webhook_port, health_port, str(certs))]))

    progress(f"starting Kueue (webhooks {base}, health 127.0.0.1:{health_port})")
    sup.start(
        "kueue",
        [str(kueue), f"--config={home / 'config.yaml'}", "--zap-log-level=2"],
        env={"KUBECONFIG": kubeconfig, "PATH": "/usr/bin:/bin"},
    )

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    wait_for("Kueue /readyz", ready, READY_TIMEOUT_S, sup.check_alive)
    # The API server reaches Kueue the ways the tests need, seen the way they will see it: a
    # dry-run ResourceFlavor passes its mutating and validating webhooks, and a dry-run v1beta1
    # Cohort is converted to the stored v1beta2 by its /convert.
    custom = k.CustomObjectsApi(api)
    probes = [("v1beta2", "resourceflavors", "ResourceFlavor"), ("v1beta1", "cohorts", "Cohort")]

    def webhooks_answer() -> bool:
        sup.check_alive()
        try:
            for version, plural, kind in probes:
                body = {"apiVersion": f"{GROUP}/{version}", "kind": kind, "metadata": {"name": "probe"}}
                custom.create_cluster_custom_object(GROUP, version, plural, body, dry_run="All")
        except k.ApiException as e:
            last["error"] = f"HTTP {e.status}: {_message(e)}"
            return False
        return True

    last: dict[str, str] = {}
    try:
        poll("the API server to reach Kueue's webhooks", webhooks_answer, READY_TIMEOUT_S, interval=0.5)
    except TimeoutError as e:
        raise TimeoutError(f"{e}; last error: {last.get('error', '')}") from None
    return webhook_port


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _message(e: Any) -> str:
    try:
        return str(json.loads(e.body).get("message", e.body))
    except (TypeError, ValueError):
        return str(e.body)[:300]


def enable_namespace(core: Any, namespace: str) -> None:
    """Opts a namespace in: Kueue manages the pods created there (they need a queue-name label)."""
    core.patch_namespace(namespace, {"metadata": {"labels": {M.NAMESPACE_LABEL: M.NAMESPACE_LABEL_VALUE}}})
