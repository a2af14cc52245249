"""The real path on CPU: a VILA-layout checkpoint on S3, imported, and a LLaVA-layout video dataset on
S3 train with `longvila-train`; a stage after context extension keeps its RoPE base."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from longvila_contract import checkpoint as L
from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.data import synthetic
from longvila_trainer.data.tokenizer import load_tokenizer
from longvila_trainer.model.longvila import build_longvila
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.vila import save_vila
from test_train import REPO, direct_env, losses, records, run_ok, s3_env, train_cmd

pytestmark = pytest.mark.distributed


def upload_tree(local: Path, uri: str, env: dict[str, str]) -> None:
    storage = open_storage(uri, environ=env)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.put_file(f.relative_to(local).as_posix(), f)


def llava_dataset(root: Path, samples: int) -> Path:
    """Synthetic long videos in the LLaVA / VILA layout: videos/…, train.json; sample 1's video is
    corrupt and sample 2's is missing."""
    synthetic.generate("long-video", root / "gen", samples=samples, seed=0, frames=16, size=56)
    out = []
    for i, line in enumerate((root / "gen" / synthetic.MANIFEST).read_text().splitlines()):
        ours = json.loads(line)
        (root / "llava" / "videos").mkdir(parents=True, exist_ok=True)
        name = f"videos/clip_{i:03d}.mp4"
        if i == 1:
            (root / "llava" / name).write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
        elif i != 2:
            (root / "gen" / ours["media"][0]["path"]).rename(root / "llava" / name)
        out.append({"id": f"clip-{i}", "video": name, "conversations": ours["conversations"]})
    (root / "llava" / "train.json").write_text(json.dumps(out, indent=1))
    return root / "llava"


def test_vila_checkpoint_and_llava_videos_on_s3(s3_server: dict[str, str], tmp_path: Path) -> None:
    env = s3_env(s3_server)
    base = f"s3://{s3_server['bucket']}/real-{uuid.uuid4().hex[:6]}"
    save_vila(build_longvila(TINY, seed=5), load_tokenizer("tiny"), tmp_path / "vila")
    upload_tree(tmp_path / "vila", f"{base}/models/tiny-vila", env)
    upload_tree(llava_dataset(tmp_path, samples=8), f"{base}/data/videos-qa", env)

    imp = subprocess.run(
        [str(Path(sys.executable).parent / "longvila-import"), f"{base}/models/tiny-vila", f"{base}/imported",
         "--cache-dir", str(tmp_path / "import-cache")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert imp.returncode == 0, imp.stderr[-3000:]
    assert "projector mlp_downsample_2x2_fix (row token order); media token <image>=95" in imp.stdout
    assert L.parse_final(open_storage(f"{base}/imported", environ=env).get_bytes(L.FINAL)) == 0

    def train(cache: str, *extra: str) -> list[str]:
        return train_cmd(
            "--preset", "tiny-long-video-sft", "--cache-dir", str(tmp_path / cache),
            "--set", "model.preset=", "--set", "model.tokenizer=",  # the tokenizer of the checkpoint's llm/
            "--set", f"model.llm={base}/models/tiny-vila/llm",
            "--set", f"model.vision_tower={base}/models/tiny-vila/vision_tower",
            "--set", f"model.init={base}/imported", "--set", f"data.uri={base}/data/videos-qa/train.json",
            "--set", "data.short_fraction=0", "--set", "train.max_steps=3", "--set", "train.frames=4",
            "--set", f"checkpoint.uri=file://{tmp_path / cache}-ck", *extra,
        )  # fmt: skip

    p = run_ok(train("cache"), env)
    assert f"initialised weights from step 0 of {base}/imported" in p.stderr
    assert f"longvila-train: data {base}/data/videos-qa/train.json: 8 samples\n" in p.stderr
    recs = records(p.stdout)
    assert [r["step"] for r in recs] == [1, 2, 3] and all(0 < r["loss"] < 10 for r in recs)
    assert recs[-1]["skipped_samples"] >= 1  # counted in the step log
    warned = [ln for ln in p.stderr.splitlines() if "longvila-train: warning: skipped sample" in ln]
    assert warned and all("clip_001.mp4" in w or "clip_002.mp4" in w for w in warned)
    # media came one object at a time into the bounded cache; the dataset prefix was never copied
    fetched = list((tmp_path / "cache" / "media" / "objects").iterdir())
    assert 1 <= len([f for f in fetched if f.name.endswith(".mp4")]) <= 8
    assert not any("videos-qa" in d.name for d in (tmp_path / "cache" / "s3").iterdir())

    stop = subprocess.run(train("cache2", "--set", "data.max_skipped_fraction=0"), env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    errors = [ln for ln in stop.stderr.splitlines() if ln.startswith("longvila-train: error:")]
    assert stop.returncode == 2 and len(errors) == 1, stop.stderr[-3000:]
    assert "samples skipped for unreadable media, more than data.max_skipped_fraction=0 allows" in errors[0]
    assert "NoSuchKey" in errors[0] or "clip_001.mp4" in errors[0]


def test_long_video_sft_keeps_the_rope_base_of_context_extension(tmp_path: Path) -> None:
    """Context extension (RoPE base 1e5) then long-video SFT that sets no ropeTheta: the second stage
    trains with 1e5, exactly as if it set it, and not with the model's own base (1e4)."""
    ce, cache = tmp_path / "ce", str(tmp_path / "cache")
    run_ok(train_cmd("--preset", "tiny-context-extension", "--cache-dir", cache, "--set", "train.max_steps=2",
                     "--set", f"checkpoint.uri=file://{ce}"), direct_env())  # fmt: skip

    def sft(name: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_ok(
            train_cmd("--preset", "tiny-long-video-sft", "--cache-dir", cache, "--set", "train.max_steps=1",
                      "--set", f"model.init=file://{ce}", "--set", f"checkpoint.uri=file://{tmp_path / name}",
                      *extra),
            direct_env(),
        )  # fmt: skip

    inherited = sft("inherit")
    assert f"RoPE base 100000 (inherited from file://{ce})" in inherited.stderr
    meta = L.ModelMeta.from_meta(
        L.Manifest.from_json((tmp_path / "inherit" / L.manifest_key(1)).read_bytes()).meta
    )
    assert meta is not None and meta.rope_theta == 100000.0  # and the next stage inherits it again
    explicit = sft("explicit", "--set", "train.rope_theta=100000")
    own_base = sft("own", "--set", f"train.rope_theta={TINY.llm.get('rope_theta', 10000.0)}")
    assert losses(inherited.stdout) == losses(explicit.stdout)
    assert losses(inherited.stdout)[1] != losses(own_base.stdout)[1]


def test_webdataset_shards_on_s3_are_indexed_once_and_read_by_range(
    s3_server: dict[str, str], tmp_path: Path
) -> None:
    """Pre-training shards on S3: one index per shard and node, each sample's video by one ranged GET."""
    import io
    import tarfile

    from longvila_contract.config import SyntheticConfig
    from longvila_trainer.data.media import MediaCache, MediaReader
    from longvila_trainer.data.samples import open_dataset, pixels_of
    from longvila_trainer.data.sources import open_source

    env = s3_env(s3_server)
    synthetic.generate("captions", tmp_path / "gen", samples=4, seed=0, frames=8, size=56)
    shards = tmp_path / "shards"
    shards.mkdir()
    for n in range(2):
        with tarfile.open(shards / f"pretrain-{n:03d}.tar", "w") as tar:
            for i in (2 * n, 2 * n + 1):
                ours = json.loads((tmp_path / "gen" / synthetic.MANIFEST).read_text().splitlines()[i])
                media = tmp_path / "gen" / ours["media"][0]["path"]
                for name, data in ((f"s/{i:04d}.json", json.dumps({"caption": ours["caption"]}).encode()),
                                   (f"s/{i:04d}{media.suffix}", media.read_bytes())):  # fmt: skip
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    uri = f"s3://{s3_server['bucket']}/wds-{uuid.uuid4().hex[:6]}"
    upload_tree(shards, uri, env)
    reader = MediaReader(MediaCache(tmp_path / "cache", 64 << 20), lambda u: open_storage(u, environ=env))
    codec = load_tokenizer("tiny")
    ds = open_source(uri, "data.uri", root_setting="", cache_dir=tmp_path, synthetic=SyntheticConfig(),
                     codec=codec, reader=reader)  # fmt: skip
    samples = open_dataset(ds.records, ds.where, ds.root, "pretraining", codec, 2)
    assert len(samples) == 4 and ds.where[0].endswith("pretrain-000.tar: sample s/0000")
    assert len(list((tmp_path / "cache" / "wds-index").glob("*.json"))) == 2
    for cached in (tmp_path / "cache" / "objects").glob("*pretrain-*"):
        cached.unlink()  # the indexing pass's copies gone: members now come by ranged GET
    px = [pixels_of(ref, 56, reader) for s in samples for ref in s.media]
    assert [p.shape[0] for p in px] == [1, 2, 1, 2]  # images and videos alternate
    ranged = [p for p in (tmp_path / "cache" / "objects").iterdir() if ".tar_" in p.name]
    assert len(ranged) == 4 and all(p.stat().st_size < 200_000 for p in ranged)
