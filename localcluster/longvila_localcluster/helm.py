"""The operator's Helm chart on the local cluster: install, service-account kubeconfigs, schemas.

    install_operator_chart(info, "longvila", "longvila-system", {"watchNamespaces": ["team-a"]})
    service_account_kubeconfig(info, "longvila-system", "longvila-longvila-operator", path)
    uninstall_operator_chart(info, "longvila", "longvila-system")

helm and kubeconform are the pinned binaries (localcluster/versions.toml), built from Go
modules on first use. kubeconform has no internet here, so `openapi_schemas` converts the
running apiserver's OpenAPI v3 documents into kubeconform's strict JSON-schema files
(docs/helm.md).
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .cluster import ClusterInfo, write_token_kubeconfig

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
CHART_DIR = REPO_ROOT / "charts" / "longvila-operator"
CRD_NAME = "longvilajobs.longvila.io"
# kubeconform's -schema-location template; .Group is "v1" for the core group (kubeconform's
# own naming), so the file of a core Service is v1_v1_service-strict.json.
SCHEMA_TEMPLATE = "{{ .Group }}_{{ .ResourceAPIVersion }}_{{ .ResourceKind }}{{ .StrictSuffix }}.json"


def tool(name: str) -> Path:
    """A pinned binary (helm, kubeconform, kubectl …), built on first use."""
    from .build import build, components
    from .versions import cache_root, load_versions

    root = cache_root()
    for c in components(load_versions()):
        if name in c.binaries:
            return build(c, root) / name
    raise KeyError(f"no pinned component provides {name!r}")


def kube_version() -> str:
    """The pinned Kubernetes version, for `helm template --kube-version` (no cluster asked)."""
    from .versions import load_versions

    return load_versions().kubernetes


def _run(
    cmd: list[str], check: bool, timeout: float, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}{proc.stdout}")
    return proc


def helm(
    info: ClusterInfo | None, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs helm (against the cluster's kubeconfig when info is given); raises on failure if check."""
    cmd = [str(tool("helm"))]
    if info is not None:
        cmd += ["--kubeconfig", info.kubeconfig]
    return _run([*cmd, *args], check, timeout)


def kubectl(
    info: ClusterInfo, *args: str, check: bool = True, timeout: float = 120, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the pinned kubectl as the cluster admin; raises on failure if check."""
    return _run([str(tool("kubectl")), "--kubeconfig", info.kubeconfig, *args], check, timeout, stdin)


def _values_file(values: Mapping[str, Any], directory: Path) -> Path:
    path = directory / "values.yaml"
    path.write_text(yaml.safe_dump(dict(values), sort_keys=False))
    return path


def template(
    values: Mapping[str, Any] | None = None,
    release: str = "longvila",
    namespace: str = "longvila-system",
    chart: Path = CHART_DIR,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """`helm template` offline, for the pinned Kubernetes version."""
    with tempfile.TemporaryDirectory() as d:
        vf = _values_file(values or {}, Path(d))
        return helm(
            None,
            "template",
            release,
            str(chart),
            "-n",
            namespace,
            "--kube-version",
            kube_version(),
            "-f",
            str(vf),
            check=check,
        )


def adopt_crd(info: ClusterInfo, release: str, namespace: str) -> bool:
    """Lets `release` take over a LongVILAJob CRD that no installed Helm release owns.

    That is a CRD applied with kubectl, or one kept by `helm uninstall` of another release.
    Helm refuses to install over an object without matching ownership metadata; this
    rewrites it (docs/helm.md, "Adopting an existing CRD"). A CRD owned by another
    installed release is left alone: install the second release with crd.install=false.
    Returns whether it annotated.
    """
    got = kubectl(info, "get", "crd", CRD_NAME, "-o", "json", check=False)
    if got.returncode != 0:
        return False  # not there: the release creates it
    annotations = json.loads(got.stdout)["metadata"].get("annotations") or {}
    owner = annotations.get("meta.helm.sh/release-name")
    owner_ns = annotations.get("meta.helm.sh/release-namespace", "")
    if (owner, owner_ns) == (release, namespace):
        return False
    if owner and helm(info, "status", owner, "-n", owner_ns, check=False).returncode == 0:
        return False  # owned by a release that is still installed
    kubectl(
        info,
        "annotate",
        "--overwrite",
        "crd",
        CRD_NAME,
        f"meta.helm.sh/release-name={release}",
        f"meta.helm.sh/release-namespace={namespace}",
    )
    kubectl(info, "label", "--overwrite", "crd", CRD_NAME, "app.kubernetes.io/managed-by=Helm")
    return True


def install_operator_chart(
    info: ClusterInfo,
    release: str,
    namespace: str,
    values: Mapping[str, Any] | None = None,
    chart: Path = CHART_DIR,
    timeout_s: int = 180,
) -> dict[str, Any]:
    """`helm upgrade --install --wait` of the operator chart; returns `helm status -o json`.

    Creates the release namespace if missing and adopts an unowned LongVILAJob CRD (see
    adopt_crd). The namespaces in values["watchNamespaces"] must exist already. The same
    call upgrades an installed release (new values, or a changed chart).
    """
    values = dict(values or {})
    if (values.get("crd") or {}).get("install", True):
        adopt_crd(info, release, namespace)
    with tempfile.TemporaryDirectory() as d:
        vf = _values_file(values, Path(d))
        helm(
            info,
            "upgrade",
            "--install",
            release,
            str(chart),
            "-n",
            namespace,
            "--create-namespace",
            "-f",
            str(vf),
            "--wait",
            "--timeout",
            f"{timeout_s}s",
            timeout=timeout_s + 60,
        )
    status: dict[str, Any] = json.loads(helm(info, "status", release, "-n", namespace, "-o", "json").stdout)
    return status


def uninstall_operator_chart(info: ClusterInfo, release: str, namespace: str, timeout_s: int = 120) -> None:
    """`helm uninstall --wait`; the CRD (and so every LongVILAJob) stays by design."""
    helm(info, "uninstall", release, "-n", namespace, "--wait", "--timeout", f"{timeout_s}s")


def service_account_kubeconfig(
    info: ClusterInfo, namespace: str, service_account: str, path: Path, duration: str = "2h"
) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount (a `kubectl create token` token).

    Runs anything (the operator as a local process, kubectl) with exactly the RBAC the chart
    granted that account. Written with mode 0600; returns path.
    """
    token = kubectl(
        info, "create", "token", service_account, "-n", namespace, "--duration", duration
    ).stdout.strip()
    return write_token_kubeconfig(info, token, Path(path))


# ---- kubeconform schemas from the apiserver's OpenAPI v3 ----

_REF = "#/components/schemas/"


def _fetch(info: ClusterInfo, path: str) -> Any:
    ctx = ssl.create_default_context(cafile=str(Path(info.run_dir) / "pki" / "ca.crt"))
    req = urllib.request.Request(
        info.server + path, headers={"Authorization": f"Bearer {info.token}", "Accept": "application/json"}
    )
    with urllib.request.urlopen(req, context=ctx, timeout=60) as r:
        return json.loads(r.read())


def strict_schema(node: Any) -> Any:
    """One OpenAPI v3 schema node as strict JSON schema: local $refs, no unknown fields.

    Objects with properties and no additionalProperties get additionalProperties: false
    (kubeconform's "-strict" schemas), unless x-kubernetes-preserve-unknown-fields says the
    API keeps unknown fields; nullable becomes a null type; formats are dropped (Kubernetes
    formats such as int-or-string are not JSON-schema formats).
    """
    if isinstance(node, list):
        return [strict_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_schema(v) for k, v in node.items() if k not in ("format", "nullable")}
    ref = out.get("$ref")
    if isinstance(ref, str) and ref.startswith(_REF):
        out["$ref"] = "#/definitions/" + ref[len(_REF) :]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def _closure(name: str, schemas: Mapping[str, Any]) -> dict[str, Any]:
    """The named schema and every schema it references, transitively."""
    seen: dict[str, Any] = {}
    todo = [name]
    while todo:
        n = todo.pop()
        if n in seen or n not in schemas:
            continue
        seen[n] = schemas[n]
        todo += [r[len(_REF) :] for r in re.findall(r'"\$ref": "([^"]+)"', json.dumps(schemas[n]))]
    return seen


def schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's path for SCHEMA_TEMPLATE with -strict."""
    group, _, version = api_version.rpartition("/")
    return f"{group or version}_{version}_{kind.lower()}-strict.json"


def openapi_schemas(info: ClusterInfo, out_dir: Path, api_versions: Iterable[str]) -> Path:
    """Writes a strict kubeconform schema per kind of each apiVersion, from the live apiserver.

    Every kind the apiserver serves in those group-versions is written (CRD-backed ones too,
    once their CRD is installed), with the definitions it references inlined under
    `definitions`. Returns out_dir, for kubeconform's -schema-location.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    for av in sorted(set(api_versions)):
        doc_path = "/openapi/v3/api/v1" if av == "v1" else f"/openapi/v3/apis/{av}"
        schemas: dict[str, Any] = _fetch(info, doc_path)["components"]["schemas"]
        group, _, version = av.rpartition("/")
        for name, schema in schemas.items():
            for gvk in schema.get("x-kubernetes-group-version-kind") or []:
                if gvk.get("group", "") != group or gvk.get("version") != version:
                    continue
                defs = {k: strict_schema(v) for k, v in _closure(name, schemas).items()}
                body = {"$ref": f"#/definitions/{name}", "definitions": defs}
                (out_dir / schema_file_name(av, gvk["kind"])).write_text(json.dumps(body))
    return out_dir


def api_versions_of(manifests: str) -> set[str]:
    return {d["apiVersion"] for d in yaml.safe_load_all(manifests) if d}


def kubeconform(manifests: str, schema_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Validates a multi-document YAML strictly against the schemas in schema_dir (no internet)."""
    cmd = [
        str(tool("kubeconform")),
        "-strict",
        "-summary",
        "-output",
        "text",
        "-schema-location",
        str(schema_dir / SCHEMA_TEMPLATE),
        "-",
    ]
    return subprocess.run(cmd, input=manifests, capture_output=True, text=True, timeout=timeout)


# ---- the values table in docs/helm.md ----


def _rows(schema: Mapping[str, Any], values: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    rows: list[tuple[str, str, str, str]] = []
    for key, sub in schema.get("properties", {}).items():
        if key == "global":
            continue
        path = f"{prefix}{key}"
        value = values.get(key) if isinstance(values, dict) else None
        if sub.get("type") == "object" and "description" not in sub and "properties" in sub:
            rows += _rows(sub, value, path + ".")
            continue
        typ = sub.get("type", "object")
        typ = " or ".join(typ) if isinstance(typ, list) else typ
        if "enum" in sub:
            typ += " (" + ", ".join(f"`{e}`" for e in sub["enum"]) + ")"
        default = json.dumps(value, separators=(", ", ": ")) if value is not None else ""
        rows.append((path, typ, default, str(sub.get("description", ""))))
    return rows


def values_table(chart: Path = CHART_DIR) -> str:
    """The Markdown values table: keys, types and descriptions from values.schema.json,
    defaults from values.yaml. docs/helm.md embeds it; a test keeps the two equal."""
    schema = json.loads((chart / "values.schema.json").read_text())
    values = yaml.safe_load((chart / "values.yaml").read_text())
    lines = ["| Key | Type | Default | Description |", "|---|---|---|---|"]
    for key, typ, default, desc in _rows(schema, values, ""):
        cell, text = default.replace("|", "\\|"), desc.replace("|", "\\|")
        lines.append(f"| `{key}` | {typ} | `{cell}` | {text} |")
    return "\n".join(lines) + "\n"
