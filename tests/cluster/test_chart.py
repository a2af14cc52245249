"""The operator's Helm chart (charts/longvila-operator): lint, schemas, least privilege, lifecycle.

Pure checks (CRD copy, values documentation) need nothing; the `cluster` ones need the
pinned helm/kubeconform binaries and most need the local cluster. The lifecycle tests run
in file order on one release: install → the real operator under the chart's RBAC →
upgrade (CRD and values change) → uninstall.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from longvila_contract import env as contract
from longvila_localcluster import helm as h
from longvila_localcluster.cluster import ClusterInfo
from longvila_localcluster.nodes import NodeSpec, fleet
from longvila_operator import children
from longvila_operator.crd import PRINTER_COLUMNS
from longvila_operator.nodes import parse_node
from longvila_operator.placement import Request, plan
from longvila_operator.validation import load_job
from operator_harness import OperatorProcess, job_manifest, wait

CHART = h.CHART_DIR
CHART_CRD = CHART / "files/longvila.io_longvilajobs.yaml"
DOCS = h.REPO_ROOT / "docs/helm.md"
TABLE_BEGIN, TABLE_END = "<!-- values-table:begin -->", "<!-- values-table:end -->"
NAMESPACED_KINDS = "deployment,replicaset,pod,service,serviceaccount,role,rolebinding,configmap"


def docs_of(manifests: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifests) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


# ---- pure: the chart's copies stay equal to their sources ----


def test_the_values_table_in_the_docs_is_generated_from_the_chart() -> None:
    text = DOCS.read_text()
    table = text.split(TABLE_BEGIN)[1].split(TABLE_END)[0].strip() + "\n"
    assert table == h.values_table(), (
        "docs/helm.md's values table is stale; regenerate with: .venv/bin/python -c "
        "'from longvila_localcluster.helm import values_table; print(values_table(), end=\"\")'"
    )


def test_every_value_has_its_schema_description_as_a_comment_in_values_yaml() -> None:
    """values.yaml's `# --` comment above each value equals its description in values.schema.json."""
    comments: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    last_comment = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        if m := re.match(r"^(\s*)# -- (.*)$", line):
            last_comment = m.group(2)
            continue
        if m := re.match(r"^(\s*)([A-Za-z][\w-]*):", line):
            indent = len(m.group(1))
            stack = [(i, k) for i, k in stack if i < indent] + [(indent, m.group(2))]
            comments[".".join(k for _, k in stack)] = last_comment
        last_comment = "" if line.strip() else last_comment
    table = h.values_table().splitlines()[2:]
    assert len(table) >= 30
    for row in table:
        key, desc = row.split("|")[1].strip().strip("`"), row.split("|")[4].strip()
        assert comments.get(key) == desc.replace("\\|", "|"), key


# ---- helm only: lint, template, the schema rejects bad values ----


@pytest.mark.cluster
@pytest.mark.parametrize("values", [[], ["--set", "clusterWide=true"], ["--set", "watchNamespaces={a,b}"]])
def test_helm_lint_passes_strict(values: list[str]) -> None:
    out = h.helm(None, "lint", "--strict", str(CHART), *values).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicas": 2}, "replicas"),
        ({"metrics": {"port": "9090"}}, "/metrics/port"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0"),
        ({"clusterWide": "yes"}, "/clusterWide"),
        ({"resources": {"limits": {"cpu": "lots"}}}, "/resources/limits/cpu"),
    ],
)
def test_a_bad_value_fails_helm_template_naming_the_field(values: dict[str, Any], named: str) -> None:
    proc = h.template(values, check=False)
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert named in proc.stderr, proc.stderr


@pytest.mark.cluster
def test_namespaced_mode_renders_a_role_per_namespace_and_only_cluster_reads_cluster_wide() -> None:
    docs = docs_of(h.template({"watchNamespaces": ["team-a", "team-b"]}, namespace="ops").stdout)
    leases = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "kube-node-lease"]
    assert [r["rules"] for r in leases] == [
        [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["list", "watch"]}]
    ]  # node heartbeats, read-only, in their own namespace only
    roles = [r for r in by_kind(docs, "Role") if r not in leases]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding"))
    assert bindings == ["kube-node-lease", "team-a", "team-b"]
    (cluster_role,) = by_kind(docs, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert cluster_resources == {"nodes", "customresourcedefinitions", "namespaces"}
    assert all(set(rule["verbs"]) <= {"list", "watch"} for rule in cluster_role["rules"])
    verbs = {r: set(rule["verbs"]) for rule in roles[0]["rules"] for r in rule["resources"]}
    assert verbs == {
        "longvilajobs": {"list", "watch", "delete"},
        "longvilajobs/status": {"patch"},
        "pods": {"list", "watch", "create", "patch", "delete"},
        "configmaps": {"create", "patch"},
        "services": {"create", "patch"},
        "events": {"create"},
        "workloads": {"list", "watch"},
    }
    (dep,) = by_kind(docs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["args"][:2] == ["--namespace=team-a", "--namespace=team-b"]

    wide = docs_of(h.template({"clusterWide": True}).stdout)
    assert [r["metadata"]["namespace"] for r in by_kind(wide, "Role")] == ["kube-node-lease"]
    assert [b["metadata"]["namespace"] for b in by_kind(wide, "RoleBinding")] == ["kube-node-lease"]
    (cluster_role,) = by_kind(wide, "ClusterRole")
    wide_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert wide_resources == (set(verbs) | {"nodes", "customresourcedefinitions"})
    (dep,) = by_kind(wide, "Deployment")
    assert dep["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--all-namespaces"


@pytest.mark.cluster
def test_the_deployment_is_one_recreated_non_root_replica_with_probes() -> None:
    docs = docs_of(h.template().stdout)
    (dep,) = by_kind(docs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "longvila/operator:0.1.0" and c["imagePullPolicy"] == "IfNotPresent"
    assert c["args"] == [
        "--namespace=longvila-system",
        "--liveness-port=8080",
        "--metrics-port=9090",
        "--resync-seconds=10",
        "--node-heartbeat-grace-seconds=20",
        "--progress-seconds=5",
    ]
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"healthz": 8080, "metrics": 9090}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 1000
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["limits"] == {"cpu": "1", "memory": "512Mi"}
    (svc,) = by_kind(docs, "Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"
    (crd,) = by_kind(docs, "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    no_metrics = docs_of(h.template({"metrics": {"enabled": False}, "crd": {"install": False}}).stdout)
    assert not by_kind(no_metrics, "Service") and not by_kind(no_metrics, "CustomResourceDefinition")
    (dep,) = by_kind(no_metrics, "Deployment")
    assert "--metrics-port=0" in dep["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.cluster
def test_the_pod_monitor_is_off_by_default_and_selects_what_the_trainer_serves() -> None:
    assert not [d for d in docs_of(h.template().stdout) if d["kind"] == "PodMonitor"]
    on = {"enabled": True, "interval": "15s", "labels": {"release": "prom"}}
    cases = (
        ({"watchNamespaces": ["team-a"]}, {"matchNames": ["team-a"]}),
        ({"clusterWide": True}, {"any": True}),
    )
    for values, where in cases:
        lint = h.helm(
            None, "lint", "--strict", str(CHART), "--set-json", f"podMonitor={json.dumps(on)}"
        ).stdout
        assert "0 chart(s) failed" in lint, lint
        (pm,) = [
            d for d in docs_of(h.template({**values, "podMonitor": on}).stdout) if d["kind"] == "PodMonitor"
        ]
        assert (
            pm["apiVersion"] == "monitoring.coreos.com/v1" and pm["metadata"]["labels"]["release"] == "prom"
        )
        assert pm["spec"]["namespaceSelector"] == where
        (endpoint,) = pm["spec"]["podMetricsEndpoints"]
        assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s"}
    # It selects node rank 0's trainer pod (where global rank 0 serves), on the port the operator names.
    job = load_job(job_manifest("pm", "team-a", nodes=2))
    nodes = [parse_node({**n, "status": {**n["status"], "conditions": [{"type": "Ready", "status": "True"}]}})
             for n in fleet(NodeSpec(nodes=2, domains=1))]  # fmt: skip
    pods = children.pods(job, job.spec.stages[0], plan(Request.from_spec(job.spec), nodes), attempt=0)
    wanted = pm["spec"]["selector"]["matchLabels"]
    chosen = [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
    assert [p["metadata"]["labels"]["longvila.io/node-rank"] for p in chosen] == ["0"]
    ports = {p["name"]: p["containerPort"] for p in chosen[0]["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == contract.METRICS_PORT


# ---- the local cluster: schemas, install, least privilege, upgrade, uninstall ----


@pytest.mark.cluster
@pytest.mark.parametrize("values", [{"watchNamespaces": ["team-a", "team-b"]}, {"clusterWide": True}])
def test_helm_template_is_valid_against_the_clusters_schemas(
    local_cluster: ClusterInfo, tmp_path: Path, values: dict[str, Any]
) -> None:
    out = h.template(values).stdout
    schemas = h.openapi_schemas(local_cluster, tmp_path / "schemas", h.api_versions_of(out))
    proc = h.kubeconform(out, schemas)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in proc.stdout, proc.stdout
    # The schemas are strict: an unknown field fails.
    bad = out.replace("  strategy:\n", "  replicaz: 2\n  strategy:\n")
    proc = h.kubeconform(bad, schemas)
    assert proc.returncode != 0 and "replicaz" in proc.stdout, proc.stdout


def namespace(info: ClusterInfo, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    h.kubectl(info, "create", "namespace", name)
    return name


@pytest.fixture(scope="module")
def release(local_cluster: ClusterInfo) -> Iterator[dict[str, str]]:
    """A namespaced release in ops-*, watching jobs-*; uninstalled at the end if a test did not."""
    rel = {
        "name": f"lvop-{uuid.uuid4().hex[:4]}",
        "ns": namespace(local_cluster, "ops"),
        "jobs": namespace(local_cluster, "jobs"),
    }
    h.install_operator_chart(local_cluster, rel["name"], rel["ns"], {"watchNamespaces": [rel["jobs"]]})
    try:
        yield rel
    finally:
        if h.helm(local_cluster, "status", rel["name"], "-n", rel["ns"], check=False).returncode == 0:
            h.uninstall_operator_chart(local_cluster, rel["name"], rel["ns"])
        h.kubectl(local_cluster, "delete", "namespace", rel["ns"], rel["jobs"], "--wait=false")


def operator_pod(info: ClusterInfo, ns: str) -> dict[str, Any]:
    pods = json.loads(h.kubectl(info, "get", "pods", "-n", ns, "-o", "json").stdout)["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    assert len(live) == 1, [p["metadata"]["name"] for p in pods]
    return dict(live[0])


def crd_columns(info: ClusterInfo) -> list[str]:
    crd = json.loads(h.kubectl(info, "get", "crd", h.CRD_NAME, "-o", "json").stdout)
    return [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]


@pytest.mark.cluster
def test_install_binds_the_operator_pod_to_a_fake_node_and_it_runs(
    local_cluster: ClusterInfo, release: dict[str, str], tmp_path: Path
) -> None:
    pod = wait(
        "the operator pod Running",
        lambda: (p := operator_pod(local_cluster, release["ns"]))["status"].get("phase") == "Running" and p,
    )
    assert pod["spec"]["nodeName"] in local_cluster.nodes  # bound by the real scheduler to a KWOK node
    assert pod["spec"]["serviceAccountName"] == f"{release['name']}-longvila-operator"
    assert pod["spec"]["containers"][0]["args"][0] == f"--namespace={release['jobs']}"
    status = h.helm(local_cluster, "status", release["name"], "-n", release["ns"], "-o", "json")
    notes = json.loads(status.stdout)["info"]["notes"]
    for command in (
        f"kubectl -n {release['ns']} rollout status deployment/{release['name']}-longvila-operator",
        f"kubectl -n {release['jobs']} apply -f examples/jobs/tiny-demo.yaml",
    ):
        assert command in notes, notes
    h.kubectl(local_cluster, "wait", "--for=condition=Established", f"crd/{h.CRD_NAME}", "--timeout=60s")
    # With the CRD installed, the apiserver publishes its schema: the example job validates.
    schemas = h.openapi_schemas(local_cluster, tmp_path / "schemas", ["longvila.io/v1alpha1"])
    example = (h.REPO_ROOT / "examples/jobs/tiny-demo.yaml").read_text()
    proc = h.kubeconform(example, schemas)
    assert proc.returncode == 0 and "Valid: 1" in proc.stdout, proc.stdout


def names(info: ClusterInfo, kind: str, ns: str, selector: str) -> str:
    return h.kubectl(info, "get", kind, "-n", ns, "-l", selector, "-o", "name").stdout.strip()


def run_as_service_account(
    info: ClusterInfo, kubeconfig: Path, log: Path, namespaces: list[str] | None, jobs_ns: str
) -> str:
    """The real operator, authenticated as the chart's ServiceAccount, runs a one-pod job.

    Returns the operator's log. No $KUBECONFIG: --kubeconfig alone must give both the
    operator's client and kopf's watches the ServiceAccount's identity.
    """
    env = {k: v for k, v in info.env().items() if k != "KUBECONFIG"}
    op = OperatorProcess(env, log, namespaces=namespaces, extra_args=("--kubeconfig", str(kubeconfig)))
    name = f"rbac-{uuid.uuid4().hex[:4]}"
    body = job_manifest(name, jobs_ns, nodes=1, gpus=8, ulysses=4, ring=2, stages=1)
    op.start()
    try:
        h.kubectl(info, "apply", "-f", "-", stdin=yaml.safe_dump(body))
        selector = f"longvila.io/job={name}"
        wait(
            f"{name}'s pod created by the operator",
            lambda: h.kubectl(
                info, "get", "pods", "-n", jobs_ns, "-l", selector, "-o", "name"
            ).stdout.strip(),
            60,
        )
        wait(
            f"{name}'s status written",
            lambda: h.kubectl(
                info, "get", "lvj", name, "-n", jobs_ns, "-o", "jsonpath={.status.phase}"
            ).stdout.strip(),
            60,
        )
        for kind in ("configmap", "service"):
            assert names(info, kind, jobs_ns, selector), kind
    finally:
        op.stop()
        h.kubectl(info, "delete", "lvj", name, "-n", jobs_ns, "--wait=false", check=False)
        h.kubectl(info, "delete", "pods", "-n", jobs_ns, "-l", f"longvila.io/job={name}", "--grace-period=0")
    return log.read_text()


# A 403 status anywhere (HTTP 403, status=403, 'code': 403), not a timestamp's ",403" milliseconds.
DENIED = re.compile(r"(?<![,\d])403\b|[Ff]orbidden|Not enough permissions")


def assert_no_permission_errors(text: str) -> None:
    denied = [ln for ln in text.splitlines() if DENIED.search(ln)]
    assert not denied, "\n".join(denied[:5])


def test_the_permission_check_sees_a_403_and_not_a_timestamp() -> None:
    assert_no_permission_errors("2026-11-22 07:42:47,403 INFO kopf.activities.cleanup: done")
    denied = ("PATCH /api/v1/x: HTTP 403: {}", "APIForbiddenError(..., status=403)", "Not enough permissions")
    for line in denied:
        with pytest.raises(AssertionError):
            assert_no_permission_errors(line)


@pytest.mark.cluster
def test_the_real_operator_works_with_exactly_the_charts_namespaced_rbac(
    local_cluster: ClusterInfo, release: dict[str, str], tmp_path: Path
) -> None:
    sa = f"{release['name']}-longvila-operator"
    kubeconfig = h.service_account_kubeconfig(local_cluster, release["ns"], sa, tmp_path / "sa.kubeconfig")
    # The token is the ServiceAccount's and nothing more: another namespace is refused.
    denied = subprocess.run(
        [str(h.tool("kubectl")), "--kubeconfig", str(kubeconfig), "get", "pods", "-n", "default"],
        capture_output=True,
        text=True,
    )
    assert denied.returncode != 0 and "forbidden" in denied.stderr, denied.stderr
    log = run_as_service_account(
        local_cluster, kubeconfig, tmp_path / "operator.log", [release["jobs"]], release["jobs"]
    )
    assert "reconciled" in log
    assert_no_permission_errors(log)


@pytest.mark.cluster
def test_a_verb_taken_away_shows_up_as_a_403_in_the_operators_log(
    local_cluster: ClusterInfo, release: dict[str, str], tmp_path: Path
) -> None:
    """The check above has teeth: without `create` on Services the operator is refused."""
    info, jobs = local_cluster, release["jobs"]
    role_name = f"{release['name']}-longvila-operator"
    saved = h.kubectl(info, "get", "role", role_name, "-n", jobs, "-o", "json").stdout
    role = json.loads(saved)
    for rule in role["rules"]:
        if "services" in rule["resources"]:
            rule["verbs"] = ["patch"]
    h.kubectl(info, "replace", "-f", "-", stdin=json.dumps(role))
    kubeconfig = h.service_account_kubeconfig(info, release["ns"], role_name, tmp_path / "sa.kubeconfig")
    log = tmp_path / "operator.log"
    op = OperatorProcess({**info.env(), "KUBECONFIG": str(kubeconfig)}, log, namespaces=[jobs])
    name = f"denied-{uuid.uuid4().hex[:4]}"
    op.start()
    try:
        body = job_manifest(name, jobs, nodes=1, gpus=8, ulysses=4, ring=2, stages=1)
        h.kubectl(info, "apply", "-f", "-", stdin=yaml.safe_dump(body))
        wait("a 403 in the operator's log", lambda: DENIED.search(log.read_text()), 60)
        assert 'cannot create resource \\"services\\"' in log.read_text()
        assert not names(info, "pods", jobs, f"longvila.io/job={name}")  # Services go before pods
    finally:
        op.stop()
        h.kubectl(info, "delete", "lvj", name, "-n", jobs, "--wait=false", check=False)
        restored = json.loads(saved)
        restored["metadata"].pop("resourceVersion", None)
        h.kubectl(info, "replace", "-f", "-", stdin=json.dumps(restored))


@pytest.mark.cluster
def test_the_real_operator_works_with_exactly_the_charts_cluster_wide_rbac(
    local_cluster: ClusterInfo, release: dict[str, str], tmp_path: Path
) -> None:
    name, ns = f"lvwide-{uuid.uuid4().hex[:4]}", namespace(local_cluster, "wide")
    jobs = namespace(local_cluster, "jobs")
    try:
        # The namespaced release owns the CRD; a second release must not install it.
        h.install_operator_chart(local_cluster, name, ns, {"clusterWide": True, "crd": {"install": False}})
        kubeconfig = h.service_account_kubeconfig(
            local_cluster, ns, f"{name}-longvila-operator", tmp_path / "sa.kubeconfig"
        )
        log = run_as_service_account(local_cluster, kubeconfig, tmp_path / "operator.log", None, jobs)
        assert "reconciled" in log
        assert_no_permission_errors(log)
    finally:
        h.helm(local_cluster, "uninstall", name, "-n", ns, "--wait", check=False)
        h.kubectl(local_cluster, "delete", "namespace", ns, jobs, "--wait=false")


def chart_with_extra_column(tmp_path: Path) -> Path:
    """A copy of the chart whose CRD has one more printer column (a CRD change to upgrade to)."""
    chart = tmp_path / "longvila-operator"
    shutil.copytree(CHART, chart)
    crd_file = chart / "files/longvila.io_longvilajobs.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Ring", "type": "integer", "jsonPath": ".spec.topology.sequenceParallel.ring"}
    )
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return chart


@pytest.mark.cluster
def test_upgrade_updates_the_crd_and_the_deployment(
    local_cluster: ClusterInfo, release: dict[str, str], tmp_path: Path
) -> None:
    before = operator_pod(local_cluster, release["ns"])["metadata"]["name"]
    assert "Ring" not in crd_columns(local_cluster)
    values = {"watchNamespaces": [release["jobs"]], "resyncSeconds": 5}
    status = h.install_operator_chart(
        local_cluster, release["name"], release["ns"], values, chart=chart_with_extra_column(tmp_path)
    )
    assert status["version"] == 2
    assert crd_columns(local_cluster)[-1] == "Ring"  # helm upgrade changed the CRD in the cluster
    pod = wait(
        "the new operator pod Running",
        lambda: (
            (p := operator_pod(local_cluster, release["ns"]))["metadata"]["name"] != before
            and p["status"].get("phase") == "Running"
            and p
        ),
    )
    assert "--resync-seconds=5" in pod["spec"]["containers"][0]["args"]
    assert pod["spec"]["nodeName"] in local_cluster.nodes
    # Upgrading back to the real chart takes the column away again: the chart owns the CRD.
    h.install_operator_chart(local_cluster, release["name"], release["ns"], values)
    assert "Ring" not in crd_columns(local_cluster)


@pytest.mark.cluster
def test_uninstall_leaves_only_the_crd(local_cluster: ClusterInfo, release: dict[str, str]) -> None:
    h.uninstall_operator_chart(local_cluster, release["name"], release["ns"])
    selector = f"app.kubernetes.io/instance={release['name']}"
    for ns in (release["ns"], release["jobs"]):
        left = h.kubectl(local_cluster, "get", NAMESPACED_KINDS, "-n", ns, "-l", selector, "-o", "name")
        assert left.stdout.strip() == "", left.stdout
    left = h.kubectl(local_cluster, "get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name")
    assert left.stdout.strip() == "", left.stdout
    left = h.kubectl(
        local_cluster, "get", "role,rolebinding", "-n", "kube-node-lease", "-l", selector, "-o", "name"
    )
    assert left.stdout.strip() == "", left.stdout  # the node-lease Role goes with the release
    wait(
        "the operator pod gone",
        lambda: not h.kubectl(local_cluster, "get", "pods", "-n", release["ns"], "-o", "name").stdout.strip(),
    )
    # By design (helm.sh/resource-policy: keep) the CRD, and with it every job, stays.
    crd = json.loads(h.kubectl(local_cluster, "get", "crd", h.CRD_NAME, "-o", "json").stdout)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd_columns(local_cluster) == [c["name"] for c in PRINTER_COLUMNS]
