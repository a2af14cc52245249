"""A real Kubernetes control plane on 127.0.0.1, with KWOK GPU nodes and an S3 server.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler (one pinned release, built
from Go modules), KWOK managing fake GPU nodes, and versitygw as S3. Everything binds to
127.0.0.1 on free ports; the run directory holds certificates, the kubeconfig, every log
and the state needed to stop it all again (../shared/design/localcluster.md).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .nodes import KWOK_ANNOTATION, KWOK_ANNOTATION_VALUE, NodeSpec, fleet
from .probes import free_ports, wait_for
from .processes import Supervisor
from .s3 import S3Server, restart_versitygw, start_versitygw

STAGES_FILE = Path(__file__).resolve().parent / "stages" / "kwok-stages.yaml"
S3_SECRET_NAME = "longvila-s3"

# Node loss must evict pods in seconds, not the defaults' 40 s + 300 s: KWOK renews each
# node's Lease every lease/4 s; the node lifecycle controller marks a node NotReady after
# the grace period without a renewal; pods tolerate the resulting taint for 2 s.
NODE_LEASE_SECONDS = 4
NODE_MONITOR_GRACE_SECONDS = 6
TOLERATION_SECONDS = 2
# The operator's --node-heartbeat-grace-seconds here: KWOK renews about every second (2-3 s
# on a loaded machine), so a node silent for 4 s is lost, 2 s before it turns NotReady.
NODE_HEARTBEAT_GRACE_SECONDS = 4


@dataclass(frozen=True)
class ClusterInfo:
    """What clients need, also written to <run_dir>/cluster.json."""

    run_dir: str
    kubeconfig: str
    server: str
    token: str
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str
    s3_bucket: str
    bin_path: list[str]
    nodes: list[str]
    domain_label: str
    gpus_per_node: int

    def env(self) -> dict[str, str]:
        """Environment for kubectl, helm, boto3 and our tools."""
        return {
            "KUBECONFIG": self.kubeconfig,
            "PATH": os.pathsep.join([*self.bin_path, os.environ.get("PATH", "")]),
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_ENDPOINT_URL_S3": self.s3_endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
            "LONGVILA_S3_BUCKET": self.s3_bucket,
        }

    @staticmethod
    def load(run_dir: Path) -> ClusterInfo:
        return ClusterInfo(**json.loads((run_dir / "cluster.json").read_text()))


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certs(pki: Path) -> None:
    """A CA, an apiserver serving cert for 127.0.0.1, and the service-account key pair."""
    pki.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "3650",
        "-subj",
        "/CN=longvila-local-ca",
        cwd=pki,
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    (pki / "san.ext").write_text(
        "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "apiserver.crt",
        "-days",
        "3650",
        "-extfile",
        "san.ext",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def kubeconfig_text(server: str, ca: Path, token: str) -> str:
    import yaml

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "longvila-local", "cluster": {"server": server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "longvila-local", "context": {"cluster": "longvila-local", "user": "admin"}}],
        "current-context": "longvila-local",
    }
    return str(yaml.safe_dump(cfg, sort_keys=False))


def write_token_kubeconfig(info: ClusterInfo, token: str, path: Path) -> Path:
    """A kubeconfig for this cluster that authenticates with `token` (mode 0600); returns path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(kubeconfig_text(info.server, Path(info.run_dir) / "pki" / "ca.crt", token))
    path.chmod(0o600)
    return path


class LocalCluster:
    def __init__(self, run_dir: Path, binaries: dict[str, Path], die_with_parent: bool = False) -> None:
        self.run_dir = run_dir.resolve()
        self.bin = binaries
        self.sup = Supervisor(self.run_dir, die_with_parent=die_with_parent)

    # ---- lifecycle ----
    def up(self, spec: NodeSpec, progress: Callable[[str], None] = print, kueue: bool = False) -> ClusterInfo:
        if any(self.sup.recorded()):
            raise RuntimeError(f"a cluster is already recorded in {self.run_dir}; run `down` first")
        start = time.monotonic()
        for sub in ("etcd", "pki", "s3", "logs"):
            shutil.rmtree(self.run_dir / sub, ignore_errors=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            return self._up(spec, progress, start, kueue)
        except BaseException:
            progress(
                f"cluster start failed; stopping what was started (logs kept in {self.run_dir / 'logs'})"
            )
            self.down(remove_data=False)
            raise

    def _up(self, spec: NodeSpec, progress: Callable[[str], None], start: float, kueue: bool) -> ClusterInfo:
        d = self.run_dir
        pki = d / "pki"
        make_certs(pki)
        token = secrets.token_hex(16)
        (pki / "tokens.csv").write_text(f"{token},admin,admin,system:masters\n")
        etcd_c, etcd_p, api, kcm, sched, kwok, s3 = free_ports(7)
        server = f"https://127.0.0.1:{api}"
        kubeconfig = d / "kubeconfig"
        kubeconfig.write_text(kubeconfig_text(server, pki / "ca.crt", token))
        kubeconfig.chmod(0o600)
        alive = self.sup.check_alive

        progress(f"starting etcd on 127.0.0.1:{etcd_c}")
        self.sup.start(
            "etcd",
            [
                str(self.bin["etcd"]),
                "--name=local",
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_c}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_c}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_p}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_p}",
                f"--initial-cluster=local=http://127.0.0.1:{etcd_p}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_for(
            "etcd",
            lambda: b"true" in urllib.request.urlopen(f"http://127.0.0.1:{etcd_c}/health", timeout=2).read(),
            30,
            alive,
        )

        progress(f"starting kube-apiserver on {server}")
        self.sup.start(
            "kube-apiserver",
            [
                str(self.bin["kube-apiserver"]),
                f"--etcd-servers=http://127.0.0.1:{etcd_c}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                f"--default-not-ready-toleration-seconds={TOLERATION_SECONDS}",
                f"--default-unreachable-toleration-seconds={TOLERATION_SECONDS}",
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))

        def api_ready() -> bool:
            req = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {token}"})
            status: int = urllib.request.urlopen(req, context=ctx, timeout=2).status
            return status == 200

        wait_for("kube-apiserver /readyz", api_ready, 90, alive)

        admin = ["--kubeconfig", str(kubeconfig), "--leader-elect=false", "--bind-address=127.0.0.1"]
        progress("starting kube-controller-manager, kube-scheduler and kwok")
        self.sup.start(
            "kube-controller-manager",
            [
                str(self.bin["kube-controller-manager"]),
                *admin,
                f"--secure-port={kcm}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'ca.crt'}",
                "--node-monitor-period=1s",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE_SECONDS}s",
                "--profiling=false",
            ],
        )
        self.sup.start("kube-scheduler", [str(self.bin["kube-scheduler"]), *admin, f"--secure-port={sched}"])
        self.sup.start(
            "kwok",
            [
                str(self.bin["kwok"]),
                "--kubeconfig",
                str(kubeconfig),
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION}={KWOK_ANNOTATION_VALUE}",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
                "--cidr=10.0.0.1/16",
                "--node-ip=10.0.0.1",
                f"--server-address=127.0.0.1:{kwok}",
                "-c",
                str(STAGES_FILE),
            ],
        )
        progress(f"starting versitygw (S3) on 127.0.0.1:{s3}")
        store = start_versitygw(self.sup, self.bin["versitygw"], d / "s3", s3, "longvila")
        access, secret = store.access_key, store.secret_key

        info = ClusterInfo(
            run_dir=str(d),
            kubeconfig=str(kubeconfig),
            server=server,
            token=token,
            s3_endpoint=store.endpoint,
            s3_access_key=access,
            s3_secret_key=secret,
            s3_bucket=store.bucket,
            bin_path=sorted({str(p.parent) for p in self.bin.values()}),
            nodes=[spec.name(i) for i in range(spec.nodes)],
            domain_label=spec.domain_label,
            gpus_per_node=spec.gpus_per_node,
        )
        core = core_api(info)
        progress(
            f"creating {spec.nodes} KWOK nodes × {spec.gpus_per_node} nvidia.com/gpu"
            f" in {spec.domains} domains"
        )
        for body in fleet(spec):
            core.create_node(body)
        wait_for(f"{spec.nodes} nodes Ready", lambda: self._ready_count(core) == spec.nodes, 60, alive)
        wait_for(
            "the default ServiceAccount",
            lambda: bool(core.list_namespaced_service_account("default").items),
            60,
            alive,
        )
        core.create_namespaced_secret(
            "default",
            {
                "metadata": {"name": S3_SECRET_NAME},
                "stringData": {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret},
            },
        )
        if kueue:
            from .kueue import start_kueue

            start_kueue(self.sup, info.kubeconfig, self.bin, d, progress)
        (d / "cluster.json").write_text(json.dumps(asdict(info), indent=1))
        (d / "cluster.json").chmod(0o600)
        env = info.env()
        (d / "env").write_text("".join(f"export {k_}={json.dumps(v)}\n" for k_, v in env.items()))
        progress(f"cluster up in {time.monotonic() - start:.1f}s")
        return info

    def restart_s3(self, info: ClusterInfo) -> float:
        """Kill the S3 server and start it again (same port, data, keys); seconds it was gone."""
        server = S3Server(info.s3_endpoint, info.s3_access_key, info.s3_secret_key, info.s3_bucket)
        return restart_versitygw(self.sup, self.bin["versitygw"], self.run_dir / "s3", server)

    def down(self, remove_data: bool = True) -> list[str]:
        stopped = self.sup.stop_recorded()
        if remove_data:
            for sub in ("etcd", "s3"):
                shutil.rmtree(self.run_dir / sub, ignore_errors=True)
            (self.run_dir / "cluster.json").unlink(missing_ok=True)
        return stopped

    # ---- helpers ----
    @staticmethod
    def client(info: ClusterInfo) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=info.kubeconfig)  # type: ignore[no-untyped-call]

    @staticmethod
    def _ready_count(core: Any) -> int:
        n = 0
        for node in core.list_node().items:
            for c in node.status.conditions or []:
                if c.type == "Ready" and c.status == "True":
                    n += 1
        return n


FAILED_HOLDER = "longvila-cluster/failed-node"
HOLDER_ANNOTATION = "longvila.io/kwok-holder"


def set_node_managed(info: ClusterInfo, node: str, managed: bool) -> None:
    """fail-node / restore-node: the node's heartbeats stop (or resume), as with a dead kubelet.

    Two things keep a KWOK node alive, and a failure must stop both: KWOK's stages (which
    would reset Ready to True) stop once its annotation is gone, and its Lease renewals stop
    once another holder owns the node's Lease (KWOK v0.8 keeps renewing a lease after the
    annotation is removed; it never takes over a lease held by someone else). The node
    lifecycle controller then sees no renewal for the grace period, marks the node NotReady
    (Unknown) and taints it, and the taint manager evicts its pods.
    """
    core = core_api(info)
    from kubernetes import client as k

    leases: Any = k.CoordinationV1Api(LocalCluster.client(info))
    lease = leases.read_namespaced_lease(node, "kube-node-lease")
    if managed:
        holder = (lease.metadata.annotations or {}).get(HOLDER_ANNOTATION)
        if lease.spec.holder_identity == FAILED_HOLDER and holder:
            leases.patch_namespaced_lease(
                node,
                "kube-node-lease",
                {
                    "metadata": {"annotations": {HOLDER_ANNOTATION: None}},
                    "spec": {"holderIdentity": holder, "leaseDurationSeconds": NODE_LEASE_SECONDS},
                },
            )
        core.patch_node(node, {"metadata": {"annotations": {KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE}}})
        return
    core.patch_node(node, {"metadata": {"annotations": {KWOK_ANNOTATION: None}}})
    if lease.spec.holder_identity != FAILED_HOLDER:
        leases.patch_namespaced_lease(
            node,
            "kube-node-lease",
            {
                "metadata": {"annotations": {HOLDER_ANNOTATION: lease.spec.holder_identity}},
                "spec": {"holderIdentity": FAILED_HOLDER, "leaseDurationSeconds": 86400},
            },
        )


def core_api(info: ClusterInfo) -> Any:
    """A CoreV1Api for the cluster (typed Any: this shell passes plain-dict manifests)."""
    from kubernetes import client as k

    return k.CoreV1Api(LocalCluster.client(info))
