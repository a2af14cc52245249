"""What the local cluster installs for Kueue, as plain dicts. Pure.

Kueue normally runs as a Deployment behind a Service; here it is a local process on
127.0.0.1 and there is no service networking, so the API server reaches its webhooks by URL:
every webhook and CRD conversion `clientConfig.service` of Kueue's own manifests (copied from
the pinned module's config/components at build time, build.py) becomes
`url: https://127.0.0.1:<port><path>` with the CA the cluster generated (kueue.py).

Kueue's internal certificate management stays on, as in its default install: it checks the
certificate in its Secret, waits for it in the webhook server's directory (where a Secret
volume puts it in-cluster) and keeps the caBundles of its webhooks and CRDs in sync. The
cluster pre-fills that Secret, and the directory, with a certificate valid for both the
Service name Kueue checks and 127.0.0.1, so Kueue keeps it instead of making its own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

import yaml

NAMESPACE = "kueue-system"
SERVICE = "kueue-webhook-service"  # Kueue derives its webhook configuration names from it
SECRET = "kueue-webhook-server-cert"
CA_NAME = "kueue-ca"  # the CA's DNS name Kueue's certificate check expects
PREFIX = "kueue-"  # config/default's namePrefix
# Pods in namespaces with this label are Kueue's (managedJobsNamespaceSelector); every other
# namespace of the local cluster, and every test that does not opt in, is left alone.
NAMESPACE_LABEL = "longvila.io/kueue"
NAMESPACE_LABEL_VALUE = "enabled"
# The CRDs whose conversion webhook config/components/crd/kustomization.yaml enables (the same
# five Kueue injects its CA into).
CONVERTED = frozenset(
    f"{plural}.kueue.x-k8s.io"
    for plural in ("localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters")
)
# API groups whose webhooks we install: Kueue's own and the core group (the pod integration).
# Webhooks of integrations left disabled (Jobs, Deployments, JobSets …) are not installed.
GROUPS = frozenset({"kueue.x-k8s.io", ""})


def server_name() -> str:
    """The DNS name Kueue's certificate check requires: <service>.<namespace>.svc."""
    return f"{SERVICE}.{NAMESPACE}.svc"


def namespace_selector() -> dict[str, Any]:
    return {"matchLabels": {NAMESPACE_LABEL: NAMESPACE_LABEL_VALUE}}


def config(webhook_port: int, health_port: int, cert_dir: str) -> dict[str, Any]:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for one local process."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},  # off: nothing scrapes it here
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": cert_dir},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {
            "enable": True,
            "webhookServiceName": SERVICE,
            "webhookSecretName": SECRET,
        },
        "clientConnection": {"qps": 100, "burst": 200},
        "managedJobsNamespaceSelector": namespace_selector(),
        "integrations": {"frameworks": ["pod"]},
        # The visibility API is an aggregated API server of its own (a Service in-cluster).
        "featureGates": {"VisibilityOnDemand": False},
    }


def _client_config(service: dict[str, Any], base_url: str, ca_pem: bytes) -> dict[str, Any]:
    return {"url": base_url + str(service.get("path") or "/"), "caBundle": base64.b64encode(ca_pem).decode()}


def crds(text: str, base_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """Kueue's CRDs; those with stored-version conversion call Kueue's /convert by URL."""
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        if doc["metadata"]["name"] in CONVERTED:
            doc["spec"]["conversion"] = {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": _client_config({"path": "/convert"}, base_url, ca_pem),
                    "conversionReviewVersions": ["v1"],
                },
            }
        out.append(doc)
    return out


def _groups(webhook: dict[str, Any]) -> set[str]:
    return {g for rule in webhook.get("rules") or [] for g in rule.get("apiGroups") or []}


def webhooks(text: str, base_url: str, ca_pem: bytes) -> list[dict[str, Any]]:
    """Kueue's Mutating/ValidatingWebhookConfigurations, by URL, for its API and the pod integration."""
    out = []
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        kept = []
        for hook in doc.get("webhooks") or []:
            groups = _groups(hook)
            if not groups or not groups <= GROUPS:
                continue
            hook = dict(hook, clientConfig=_client_config(hook["clientConfig"]["service"], base_url, ca_pem))
            if groups == {""}:  # pods: only in namespaces Kueue manages (as config/components/webhook)
                hook["namespaceSelector"] = namespace_selector()
            kept.append(hook)
        if kept:
            meta = dict(doc["metadata"], name=PREFIX + doc["metadata"]["name"])
            out.append(dict(doc, metadata=meta, webhooks=kept))
    return out


def dump(docs: Iterable[dict[str, Any]]) -> str:
    return "".join("---\n" + yaml.safe_dump(d, sort_keys=False) for d in docs)


def ca_config() -> str:
    """`openssl req -x509` config of the webhook CA: Kueue checks the CA against the DNS name kueue-ca."""
    return (
        "[req]\ndistinguished_name = dn\nx509_extensions = v3\nprompt = no\n"
        f"[dn]\nO = kueue\nCN = {CA_NAME}\n"
        f"[v3]\nsubjectAltName = DNS:{CA_NAME}\nbasicConstraints = critical,CA:TRUE\n"
        "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
    )


def server_ext() -> str:
    """openssl extensions of the serving certificate: Kueue's Service name and 127.0.0.1."""
    return (
        f"subjectAltName=DNS:{server_name()},IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    )
