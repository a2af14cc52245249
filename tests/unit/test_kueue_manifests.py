"""What the local cluster installs for Kueue (pure): webhooks and conversion by URL with our CA,
only Kueue's own API and the pod integration, pods only in namespaces that opt in."""

from __future__ import annotations

import base64

import yaml
from longvila_localcluster import kueue_manifests as M

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
BASE = "https://127.0.0.1:39443"

# The shape of config/components/webhook/manifests.yaml (controller-gen output), abridged.
WEBHOOKS = """
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  failurePolicy: Fail
  name: mjob.kb.io
  rules:
  - apiGroups: [batch]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [jobs]
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - apiGroups: [""]
    apiVersions: [v1]
    operations: [CREATE]
    resources: [pods]
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate-kueue-x-k8s-io-v1beta2-clusterqueue}
  failurePolicy: Fail
  name: vclusterqueue.kb.io
  rules:
  - apiGroups: [kueue.x-k8s.io]
    apiVersions: [v1beta2]
    operations: [CREATE, UPDATE]
    resources: [clusterqueues]
  sideEffects: None
"""

CRDS = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: workloads.kueue.x-k8s.io}
spec: {group: kueue.x-k8s.io, versions: [{name: v1beta1}, {name: v1beta2}]}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: resourceflavors.kueue.x-k8s.io}
spec: {group: kueue.x-k8s.io, versions: [{name: v1beta2}]}
"""


def test_webhooks_are_called_by_url_with_our_ca_and_only_for_what_we_run() -> None:
    docs = M.webhooks(WEBHOOKS, BASE, CA)
    assert [d["metadata"]["name"] for d in docs] == [
        "kueue-mutating-webhook-configuration",  # the names Kueue keeps its CA in
        "kueue-validating-webhook-configuration",
    ]
    mutating, validating = docs
    assert [h["name"] for h in mutating["webhooks"]] == ["mpod.kb.io"]  # no Job integration here
    pod = mutating["webhooks"][0]
    assert pod["clientConfig"] == {"url": f"{BASE}/mutate--v1-pod", "caBundle": base64.b64encode(CA).decode()}
    assert pod["namespaceSelector"] == {"matchLabels": {"longvila.io/kueue": "enabled"}}
    cq = validating["webhooks"][0]
    assert cq["clientConfig"]["url"] == f"{BASE}/validate-kueue-x-k8s-io-v1beta2-clusterqueue"
    assert "namespaceSelector" not in cq  # cluster-scoped: every ClusterQueue is checked


def test_converted_crds_call_convert_by_url() -> None:
    workloads, flavors = M.crds(CRDS, BASE, CA)
    conversion = workloads["spec"]["conversion"]
    assert conversion["strategy"] == "Webhook"
    assert conversion["webhook"]["clientConfig"]["url"] == f"{BASE}/convert"
    assert conversion["webhook"]["conversionReviewVersions"] == ["v1"]
    assert "conversion" not in flavors["spec"]


def test_config_enables_the_pod_integration_for_opted_in_namespaces_on_loopback() -> None:
    cfg = M.config(39443, 38081, "/run/certs")
    assert cfg["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert cfg["integrations"] == {"frameworks": ["pod"]}
    assert cfg["managedJobsNamespaceSelector"] == M.namespace_selector()
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 39443, "certDir": "/run/certs"}
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:38081"
    assert cfg["internalCertManagement"]["webhookSecretName"] == M.SECRET
    assert yaml.safe_load(M.dump([cfg])) == cfg


def test_the_serving_certificate_names_the_service_kueue_checks_and_loopback() -> None:
    assert "DNS:kueue-webhook-service.kueue-system.svc,IP:127.0.0.1" in M.server_ext()
    assert "DNS:kueue-ca" in M.ca_config()
