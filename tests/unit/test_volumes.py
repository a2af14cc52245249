"""spec.volumes / spec.volumeMounts: into every worker pod as core/v1 objects; file:// URIs must lie
under a mount or inside the trainer image."""

from __future__ import annotations

from typing import Any

import pytest
from builders import fleet, job_manifest, node_list
from longvila_operator import children
from longvila_operator.api.manifest import InvalidJob
from longvila_operator.nodes import parse_nodes
from longvila_operator.placement import Request, plan
from longvila_operator.validation import load_job

VOLUMES = [
    {"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True}},
    {
        "name": "lustre",
        "csi": {"driver": "fsx.csi.aws.com", "volumeAttributes": {"dnsname": "fs-1.example.com"}},
    },
    {"name": "weights", "hostPath": {"path": "/mnt/weights", "type": "Directory"}},
    {"name": "scratch", "emptyDir": {"sizeLimit": "200Gi"}},
    {"name": "nfs", "nfs": {"server": "nfs.example.com", "path": "/export/llava"}},
]
MOUNTS = [
    {"name": "datasets", "mountPath": "/data", "readOnly": True},
    {"name": "lustre", "mountPath": "/lustre"},
    {"name": "weights", "mountPath": "/weights", "readOnly": True},
    {"name": "scratch", "mountPath": "/scratch"},
    {"name": "nfs", "mountPath": "/data/nfs", "subPath": "videos"},
]


def pods(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    job = load_job(manifest)
    placement = plan(Request.from_spec(job.spec), parse_nodes(node_list(*fleet({"a": 4, "b": 4}))))
    return children.pods(job, job.spec.stages[0], placement, attempt=0)


def test_every_worker_pod_mounts_the_volumes_as_core_v1_objects() -> None:
    spec = {"volumes": VOLUMES, "volumeMounts": MOUNTS}
    for pod in pods(job_manifest(**spec)):
        vols = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert {"dshm", "config"} | {v["name"] for v in VOLUMES} == set(vols)
        assert vols["datasets"] == {
            "name": "datasets",
            "persistentVolumeClaim": {"claimName": "datasets", "readOnly": True},
        }
        attrs = {"dnsname": "fs-1.example.com"}
        assert vols["lustre"]["csi"] == {
            "driver": "fsx.csi.aws.com",
            "readOnly": False,
            "volumeAttributes": attrs,
        }
        assert vols["weights"]["hostPath"] == {"path": "/mnt/weights", "type": "Directory"}
        assert vols["scratch"]["emptyDir"] == {"medium": "", "sizeLimit": "200Gi"}
        assert vols["nfs"]["nfs"] == {"server": "nfs.example.com", "path": "/export/llava", "readOnly": False}
        mounts = pod["spec"]["containers"][0]["volumeMounts"]
        paths = ["/dev/shm", "/etc/longvila", "/data", "/lustre", "/weights", "/scratch", "/data/nfs"]
        assert [m["mountPath"] for m in mounts] == paths
        assert mounts[-1] == {"name": "nfs", "mountPath": "/data/nfs", "readOnly": False, "subPath": "videos"}


def test_no_volumes_no_change() -> None:
    pod = pods(job_manifest())[0]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["dshm", "config"]


@pytest.mark.parametrize(
    ("field", "uri", "ok"),
    [
        ("data", "file:///data/llava/train.json", True),
        ("data", "file:///data/nfs/more.jsonl", True),
        ("data", "file:///database/x.json", False),  # a string prefix of /data is not inside it
        ("data", "file:///opt/longvila/tiny/data", True),  # inside the trainer image
        ("llm", "file:///weights/qwen2", True),
        ("llm", "file:///models/qwen2", False),
        ("init", "file:///lustre/ckpt/import", True),
        ("media_root", "file:///lustre/videos", True),
        ("media_root", "/elsewhere/videos", False),
    ],
)
def test_file_uris_must_lie_under_a_mount_or_in_the_image(field: str, uri: str, ok: bool) -> None:
    m = job_manifest(volumes=VOLUMES, volumeMounts=MOUNTS)
    spec = m["spec"]
    where = {
        "data": ("spec.stages[0].data", lambda: spec["stages"][0].update(data=uri)),
        "llm": ("spec.model.llm", lambda: spec["model"].update(llm=uri)),
        "init": ("spec.model.init", lambda: spec["model"].update(init=uri)),
        "media_root": (
            "spec.stages[0].overrides[data.media_root]",
            lambda: spec["stages"][0].setdefault("overrides", {}).update({"data.media_root": uri}),
        ),
    }
    name, change = where[field]
    change()
    if ok:
        load_job(m)
        return
    with pytest.raises(InvalidJob) as err:
        load_job(m)
    (line,) = [e for e in err.value.errors if e.startswith(name)]
    assert "not under any of spec.volumeMounts (/data, /lustre, /weights, /scratch, /data/nfs)" in line
    assert "nor inside the trainer image (/opt/longvila/)" in line


def test_without_mounts_the_message_says_to_mount_one() -> None:
    m = job_manifest()
    m["spec"]["stages"][0]["data"] = "file:///data/x.json"
    with pytest.raises(
        InvalidJob, match=r"spec.stages\[0\].data: .*not under a spec.volumeMounts\[\].mountPath"
    ):
        load_job(m)
