"""The pod runner's pure half: what a pod spec becomes as a local process (podspec.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from longvila_contract.labels import LABEL_NODE_RANK
from longvila_localcluster import podspec
from longvila_localcluster.podrunner import ENTRYPOINTS


def pod(name: str, rank: int, *, command: list[str] | None = None, env: list[dict[str, Any]] | None = None,
        image: str = "longvila/trainer:0.1.0", subdomain: str = "demo-w") -> dict[str, Any]:  # fmt: skip
    container: dict[str, Any] = {"name": "trainer", "image": image, "env": env or []}
    if command is not None:
        container["command"] = command
    container["volumeMounts"] = [
        {"name": "config", "mountPath": "/etc/longvila", "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": {LABEL_NODE_RANK: str(rank)},
        },
        "spec": {
            "hostname": name,
            "subdomain": subdomain,
            "containers": [container],
            "volumes": [
                {"name": "config", "configMap": {"name": "demo-cfg"}},
                {"name": "dshm", "emptyDir": {"medium": "Memory"}},
            ],
        },
    }


CONFIG_MAPS = {"ns/demo-cfg": {"config.yaml": "train: {}\n"}}


def test_addresses_sort_in_node_rank_order_and_differ_per_job() -> None:
    pods = [pod(f"demo-a0-n{r:02d}", r) for r in range(12)]
    addrs = [podspec.pod_address(p) for p in pods]
    assert sorted(addrs) == addrs  # torchrun's c10d sorts PET_LOCAL_ADDR strings
    assert len(set(addrs)) == 12
    assert all(a.startswith("127.0.") for a in addrs)
    other = podspec.pod_address(pod("x-a0-n00", 0, subdomain="other-w"))
    assert other.rsplit(".", 1)[0] != addrs[0].rsplit(".", 1)[0]
    no_subdomain = pod("op", 0)
    no_subdomain["spec"].pop("subdomain")
    assert podspec.pod_address(no_subdomain) == "127.0.0.1"


def test_node_rank_beyond_the_address_space_is_refused() -> None:
    with pytest.raises(podspec.PodSpecError, match="node rank 155"):
        podspec.pod_address(pod("big", 155))


def test_pod_dns_names_become_their_addresses_in_env_and_args(tmp_path: Path) -> None:
    env = [
        {"name": "PET_RDZV_ENDPOINT", "value": "demo-a0-n0.demo-w.ns.svc:29400"},
        {"name": "PET_LOCAL_ADDR", "value": "demo-a0-n1.demo-w.ns.svc"},
        {"name": "OTHER", "value": "http://minio.storage.svc.cluster.local:9000"},
        {"name": "LONGVILA_CONFIG", "value": "/etc/longvila/config.yaml"},
        {"name": "INIT", "value": "file:///etc/longvila/x"},
        {"name": "KEEP", "value": "/etc/longvilaX/other"},
    ]
    p0, p1 = (
        pod("demo-a0-n0", 0),
        pod("demo-a0-n1", 1, command=["torchrun", "--x=demo-a0-n0.demo-w.ns.svc"], env=env),
    )
    launch = podspec.launch(
        p1, [p0, p1], pod_dir=tmp_path, path="/venv/bin", secrets={}, config_maps=CONFIG_MAPS
    )
    a0, a1 = podspec.pod_address(p0), podspec.pod_address(p1)
    assert launch.env["PET_RDZV_ENDPOINT"] == f"{a0}:29400"
    assert launch.env["PET_LOCAL_ADDR"] == a1
    assert launch.env["OTHER"] == "http://127.0.0.1:9000"  # a Service, not a pod: loopback
    assert launch.env["LONGVILA_CONFIG"] == f"{tmp_path}/volumes/config/config.yaml"
    assert launch.env["INIT"] == f"file://{tmp_path}/volumes/config/x"
    assert launch.env["KEEP"] == "/etc/longvilaX/other"
    assert launch.argv == ("torchrun", f"--x={a0}")
    assert launch.env["PATH"] == "/venv/bin" and launch.env["TMPDIR"] == f"{tmp_path}/tmp"
    mounts = {m.path: m for m in launch.mounts}
    assert mounts["/etc/longvila"].files == {"config.yaml": "train: {}\n"}
    assert mounts["/dev/shm"].local == Path("/dev/shm")


def test_secret_and_field_refs_resolve_and_missing_ones_name_the_variable(tmp_path: Path) -> None:
    env = [
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}},
        },
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "NOPE", "optional": True}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    p = pod("a", 0, command=["true"], env=env)
    launch = podspec.launch(
        p,
        [p],
        pod_dir=tmp_path,
        path="/bin",
        secrets={"ns/s3": {"AWS_ACCESS_KEY_ID": "AK"}},
        config_maps=CONFIG_MAPS,
    )
    assert launch.env["AWS_ACCESS_KEY_ID"] == "AK" and launch.env["NS"] == "ns" and "TOKEN" not in launch.env
    env[1]["valueFrom"]["secretKeyRef"]["optional"] = False
    with pytest.raises(podspec.PodSpecError, match="env TOKEN: secretKeyRef s3/NOPE not found"):
        podspec.launch(
            p, [p], pod_dir=tmp_path, path="/bin", secrets={"ns/s3": {"AWS_ACCESS_KEY_ID": "AK"}},
            config_maps=CONFIG_MAPS,
        )  # fmt: skip


def test_a_container_without_command_runs_its_images_entrypoint(tmp_path: Path) -> None:
    p = pod("op", 0, image="longvila/operator:0.1.0")
    p["spec"]["containers"][0]["args"] = ["-n", "default"]
    launch = podspec.launch(p, [p], pod_dir=tmp_path, path="/bin", secrets={}, config_maps=CONFIG_MAPS,
                            entrypoints=ENTRYPOINTS)  # fmt: skip
    assert launch.argv == ("longvila-operator", "-n", "default")
    unknown = pod("x", 0, image="registry.example:5000/other@sha256:abc")
    with pytest.raises(
        podspec.PodSpecError, match=re.escape("image 'registry.example:5000/other@sha256:abc' has no known")
    ):
        podspec.launch(unknown, [unknown], pod_dir=tmp_path, path="/bin", secrets={}, config_maps=CONFIG_MAPS)


def test_repository_strips_tag_and_digest() -> None:
    assert podspec.repository("longvila/trainer:0.1.0") == "longvila/trainer"
    assert podspec.repository("host:5000/a/b@sha256:ff") == "host:5000/a/b"
    assert podspec.repository("host:5000/a/b") == "host:5000/a/b"


def test_entrypoints_match_the_images() -> None:
    root = Path(__file__).resolve().parents[2] / "images"
    for repo, argv in ENTRYPOINTS.items():
        dockerfile = (root / repo.split("/")[1] / "Dockerfile").read_text()
        line = next(ln for ln in dockerfile.splitlines() if ln.startswith("ENTRYPOINT"))
        assert line.split(None, 1)[1].strip() == str(list(argv)).replace("'", '"'), repo


@pytest.mark.parametrize(("code", "phase", "reason"), [(0, "Succeeded", "Completed"), (1, "Failed", "Error")])
def test_exit_becomes_a_terminated_status(code: int, phase: str, reason: str) -> None:
    patch = podspec.terminated(pod("a", 0, command=["x"]), code, "t0", "t1")["status"]
    assert patch["phase"] == phase
    state = patch["containerStatuses"][0]["state"]["terminated"]
    assert state == {"exitCode": code, "reason": reason, "startedAt": "t0", "finishedAt": "t1"}


def test_the_termination_message_file_is_the_pods_own_and_read_back_as_a_kubelet_does(tmp_path: Path) -> None:
    p = pod("demo-a0-n01", 1, env=[{"name": "LONGVILA_TERMINATION_LOG", "value": "/dev/termination-log"}])
    p["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    plan = podspec.launch(
        p, [p], pod_dir=tmp_path, path="/bin", secrets={}, config_maps=CONFIG_MAPS, entrypoints=ENTRYPOINTS
    )
    assert (
        plan.env["LONGVILA_TERMINATION_LOG"] == str(tmp_path / "termination-log") == str(plan.termination_log)
    )
    assert plan.fallback_to_logs and plan.env["LONGVILA_METRICS_ADDR"] == podspec.pod_address(p)
    line = b"longvila-train: error: data.uri: nope\n"
    assert podspec.termination_message(line, b"log", 1, True) == line.decode()  # the file wins
    assert podspec.termination_message(b"x" * 5000, b"", 1, True) == "x" * 4096  # kubelet's cut
    log = b"".join(f"line {i}\n".encode() for i in range(500))
    tail = podspec.termination_message(b"", log[-2049:], 1, True)
    assert tail.splitlines()[-1] == "line 499" and len(tail.splitlines()) == 80 and len(tail) <= 2048
    assert podspec.termination_message(b"", log, 0, True) == ""  # only a failed container falls back
    assert podspec.termination_message(b"", log, 1, False) == ""  # File policy: the file or nothing


def test_host_paths_mount_at_their_own_path_and_other_volumes_are_refused(tmp_path: Path) -> None:
    p = pod("demo-s1-a0-n0", 0, command=["true"])
    data = str(tmp_path / "data")
    p["spec"]["volumes"].append({"name": "data", "hostPath": {"path": data}})
    p["spec"]["containers"][0]["volumeMounts"].append({"name": "data", "mountPath": data})
    mounts = podspec.mounts(p, tmp_path, {"ns/demo-cfg": {"config.yaml": "x: 1"}})
    assert podspec.Mount(data, Path(data)) in mounts
    p["spec"]["containers"][0]["volumeMounts"][-1]["mountPath"] = "/data"
    with pytest.raises(podspec.PodSpecError, match="hostPath only at its own path"):
        podspec.mounts(p, tmp_path, {"ns/demo-cfg": {}})
    p["spec"]["volumes"][-1] = {"name": "data", "persistentVolumeClaim": {"claimName": "d"}}
    with pytest.raises(podspec.PodSpecError, match="volume data: only configMap, emptyDir and hostPath run"):
        podspec.mounts(p, tmp_path, {"ns/demo-cfg": {}})
