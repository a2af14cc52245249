"""Datasets as published: LLaVA / VILA annotations, webdataset shards, our manifest; the media cache;
samples whose media cannot be read (sources.py, llava.py, webdataset.py, media.py, loader.py)."""

from __future__ import annotations

import io
import json
import os
import tarfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from longvila_contract.config import SyntheticConfig
from longvila_trainer.checkpoint.s3 import StorageError
from longvila_trainer.data import synthetic
from longvila_trainer.data.llava import RecordError, normalize, parse_annotations
from longvila_trainer.data.loader import DataError, PackedLoader, skip_problem
from longvila_trainer.data.media import MediaCache, MediaReader
from longvila_trainer.data.samples import MediaRef, SampleSet, open_dataset, pixels_of
from longvila_trainer.data.sources import open_source
from longvila_trainer.data.tokenizer import TextCodec, load_tokenizer

QA = [{"from": "human", "value": "<video>\nwhat color?"}, {"from": "gpt", "value": "red."}]


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    return load_tokenizer("tiny")


def reader(tmp_path: Path, mib: int = 8) -> MediaReader:
    return MediaReader(MediaCache(tmp_path / "cache", mib << 20))


def dataset(
    uri: str, stage: str, codec: TextCodec, tmp_path: Path, frames: int = 4, root: str = ""
) -> SampleSet:
    ds = open_source(uri, "data.uri", root_setting=root, cache_dir=tmp_path, synthetic=SyntheticConfig(),
                     codec=codec, reader=reader(tmp_path))  # fmt: skip
    return open_dataset(ds.records, ds.where, ds.root, stage, codec, frames, max_tokens=512)


def write_clip(path: Path, seed: int, frames: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic.write_video(path, synthetic.moving_square(np.random.default_rng(seed), frames, 56).frames)


# -- LLaVA / VILA annotations -----------------------------------------------------------------


def test_llava_json_array_with_media_under_the_media_root(codec: TextCodec, tmp_path: Path) -> None:
    write_clip(tmp_path / "media" / "videos" / "a.mp4", 0)
    (tmp_path / "media" / "imgs").mkdir()
    synthetic.write_image(tmp_path / "media" / "imgs" / "b.png", np.zeros((56, 56, 3), np.uint8))
    two = [{"from": "human", "value": "<image> and <image>\nsame?"}, {"from": "gpt", "value": "yes"}]
    chat = [{"from": "user", "value": "hi"}, {"from": "assistant", "value": "hello"}]
    records = [
        {"id": "v1", "video": "videos/a.mp4", "conversations": QA},
        {"id": "i1", "image": ["imgs/b.png", "imgs/b.png"], "conversations": two},
        {"id": "t1", "conversations": chat},
    ]
    ann = tmp_path / "ann" / "train.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(records, indent=2))
    ds = dataset(f"file://{ann}", "short-sft", codec, tmp_path, root=f"file://{tmp_path / 'media'}")
    assert len(ds) == 3
    video, images, text = ds[0], ds[1], ds[2]
    assert [(m.path, m.kind, m.frames) for m in video.media] == [
        (f"{tmp_path}/media/videos/a.mp4", "video", 4)
    ]
    assert video.input_ids.count(95) == 4 and len(images.media) == 2 and images.input_ids.count(95) == 2
    assert text.media == () and 95 not in text.input_ids
    px = pixels_of(video.media[0], 56, reader(tmp_path))
    assert px.shape == (4, 3, 56, 56)


def test_jsonl_media_default_to_the_files_directory_and_image_marks_a_video(
    codec: TextCodec, tmp_path: Path
) -> None:
    write_clip(tmp_path / "v.mp4", 1)
    marked = [
        {"from": "human", "value": "<image>\nwhat?"},
        {"from": "gpt", "value": "x"},
    ]  # LLaVA-Video's habit
    (tmp_path / "d.jsonl").write_text(json.dumps({"video": "v.mp4", "conversations": marked}) + "\n\n")
    s = dataset(str(tmp_path / "d.jsonl"), "long-video-sft", codec, tmp_path, frames=3)[0]
    assert s.media[0].path == f"{tmp_path}/v.mp4" and s.n_frames == 3


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ('[\n {"video": "a.mp4", "conversations": []},\n {}\n]', 2,
         "conversations: expected a non-empty list"),
        ('[\n {"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}]},\n\n {"x": 1\n]', 4,
         "not JSON"),
        ('{"image": 3, "conversations": []}\n', 1, "image: expected a path or a list of paths"),
        ('{"conversations": [{"from": "bot", "value": "x"}]}\n', 1, "conversations[0].from: 'bot'"),
        ('{"conversations": [{"from": "human"}]}\n', 1, "conversations[0].value: expected a string"),
        ('{"video": "a.mp4", "conversations": [{"from": "human", "value": "q"}]}\n[1]\n', 2,
         "must be a JSON object"),
    ],
)  # fmt: skip
def test_a_malformed_record_names_the_file_and_line(
    text: str, line: int, needle: str, tmp_path: Path
) -> None:
    path = tmp_path / ("a.json" if text.startswith("[") else "a.jsonl")
    path.write_text(text)
    with pytest.raises(RecordError) as err:
        for raw, where in parse_annotations(text, str(path)):
            normalize(raw, where)
    assert str(err.value).startswith(f"{path}:{line}: ") and needle in str(err.value)
    assert "\n" not in str(err.value)


def test_an_encoding_error_names_the_record(codec: TextCodec, tmp_path: Path) -> None:
    two = [{"from": "human", "value": "<video> <video>"}, {"from": "gpt", "value": "x"}]
    (tmp_path / "a.jsonl").write_text(json.dumps({"video": "v.mp4", "conversations": two}) + "\n")
    ds = dataset(str(tmp_path / "a.jsonl"), "long-video-sft", codec, tmp_path)
    with pytest.raises(RecordError, match=rf"^{tmp_path}/a.jsonl:1: text has more <video> markers"):
        ds[0]


def test_a_caption_stage_reads_llava_pretraining_records_as_captions(
    codec: TextCodec, tmp_path: Path
) -> None:
    turns = [{"from": "human", "value": "<image>\nDescribe briefly."}, {"from": "gpt", "value": "a cat"}]
    (tmp_path / "p.json").write_text(json.dumps([{"image": "c.png", "conversations": turns}]))
    s = dataset(str(tmp_path / "p.json"), "alignment", codec, tmp_path)[0]
    assert s.input_ids == (95, *codec.encode("\na cat"), codec.eos_id)  # VILA's "plain": media, caption


@pytest.mark.parametrize(
    ("name", "stage"),
    [("long-video", "long-video-sft"), ("needle-qa", "long-video-sft"), ("captions", "alignment")],
)
def test_synthetic_data_in_the_llava_layout_reads_as_its_manifest(
    name: str, stage: str, codec: TextCodec, tmp_path: Path
) -> None:
    synthetic.generate(name, tmp_path / "m", samples=3, seed=0, frames=8)
    ann = synthetic.generate(name, tmp_path / "l", samples=3, seed=0, frames=8, layout="llava")
    assert ann.name == "train.json" and isinstance(json.loads(ann.read_text()), list)
    ours = dataset(str(tmp_path / "m"), stage, codec, tmp_path)
    theirs = dataset(str(ann), stage, codec, tmp_path)
    assert [s.input_ids for s in ours] == [s.input_ids for s in theirs]
    assert [[r.path.rsplit("/", 1)[1] for r in s.media] for s in ours] == [
        [r.path.rsplit("/", 1)[1] for r in s.media] for s in theirs
    ]


# -- webdataset shards ------------------------------------------------------------------------


def write_shard(path: Path, samples: list[tuple[str, dict[str, object], dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, text, media in samples:
            for name, data in [
                (f"{key}.json", json.dumps(text).encode()),
                *((f"{key}{e}", b) for e, b in media.items()),
            ]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(codec: TextCodec, tmp_path: Path) -> None:
    write_clip(tmp_path / "src.mp4", 2)
    clip = (tmp_path / "src.mp4").read_bytes()
    root = tmp_path / "shards"
    root.mkdir()
    write_shard(root / "shard-000.tar", [("s/000", {"caption": "a red square."}, {".mp4": clip}),
                                         ("s/001", {"caption": "no media."}, {})])  # fmt: skip
    write_shard(root / "shard-001.tar", [("s/002", {"caption": "again."}, {".mp4": clip})])
    ds = dataset(f"file://{root}", "pretraining", codec, tmp_path, frames=2)
    assert len(ds) == 3 and [len(s.media) for s in ds] == [1, 0, 1]
    ref = ds[0].media[0]
    assert ref.path.startswith(f"{root}/shard-000.tar#") and ref.kind == "video"
    px = pixels_of(ref, 56, reader(tmp_path))
    assert px.shape == (2, 3, 56, 56) and torch.isfinite(px).all()
    assert (tmp_path / "cache" / "wds-index").is_dir()  # indexed once per node
    write_shard(
        root / "shard-002.tar", [("s/003", {"caption": "x"}, {".mp4": clip}), ("s/004", {}, {".png": b"x"})]
    )
    with pytest.raises(RecordError, match=r"shard-002.tar: sample s/004: unrecognized record"):
        dataset(f"file://{root}", "pretraining", codec, tmp_path)


def test_no_dataset_there_says_what_is_expected(codec: TextCodec, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.uri=file://.*: no manifest.jsonl, no \*.tar shards"):
        dataset(f"file://{tmp_path}", "pretraining", codec, tmp_path)


# -- the media cache --------------------------------------------------------------------------


def test_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    cache = MediaCache(tmp_path, max_bytes=2500)
    for key in ("a", "b", "c"):
        with cache.open(key, lambda p: p.write_bytes(b"x" * 1000)) as f:
            assert len(f.read()) == 1000
        time.sleep(0.01)
    assert cache.usage() <= 2500 and not cache.path_of("a").exists()
    os.utime(cache.path_of("b"))  # b used again: c is now the oldest
    with cache.open("d", lambda p: p.write_bytes(b"y" * 1000)):
        pass
    assert cache.path_of("b").exists() and not cache.path_of("c").exists()


def test_the_ranks_of_a_node_fetch_an_object_once(tmp_path: Path) -> None:
    """flock excludes every other open file description: threads here, the node's ranks in a pod."""
    fetches: list[int] = []

    def fetch(path: Path) -> None:
        fetches.append(1)
        time.sleep(0.3)
        path.write_bytes(b"video bytes")

    def rank(_: int) -> bytes:
        with MediaCache(tmp_path / "c", 1 << 20).open("s3://b/v.mp4", fetch) as f:
            return f.read()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(rank, range(4))) == [b"video bytes"] * 4
    assert len(fetches) == 1


# -- unreadable media -------------------------------------------------------------------------


def test_unreadable_media_are_skipped_counted_and_replaced(codec: TextCodec, tmp_path: Path) -> None:
    for i in (0, 2, 3):
        write_clip(tmp_path / f"v{i}.mp4", i)
    (tmp_path / "v1.mp4").write_bytes(b"not a video at all")  # corrupt; v4.mp4 is missing
    lines = [json.dumps({"id": f"s{i}", "video": f"v{i}.mp4", "conversations": QA}) for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    ds = dataset(str(tmp_path / "d.jsonl"), "long-video-sft", codec, tmp_path)
    warnings: list[str] = []
    n = len(ds[0].input_ids)
    media = reader(tmp_path)
    ld = PackedLoader(ds, budget=n + 3 * 4, tokens_per_frame=4, shuffle=False,
                      pixels=lambda ref: pixels_of(ref, 56, media), warn=warnings.append)  # fmt: skip
    batches = [next(ld) for _ in range(5)]  # one sample per pack
    assert all(len(b.frames) == 4 and b.doc_lens == (n,) for b in batches)
    assert ld.skipped == 2 and ld.attempted == 7  # 5 packs + the two tries that replaced the bad ones
    assert "sample 1 (" in warnings[0] and "v1.mp4" in warnings[0] and "[1 of 2 so far]" in warnings[0]
    assert "v4.mp4" in warnings[1] and "FileNotFoundError" in warnings[1]
    assert ld.state_dict()["cursor"] == 5  # the stream did not move: a resume stays exact
    assert skip_problem(2, 7, 0.05, ld.last_failure) is None  # judged over at least 100 samples
    problem = skip_problem(6, 110, 0.05, ld.last_failure)
    assert (
        problem is not None and problem.startswith("data: 6 of 110 samples skipped") and "v4.mp4" in problem
    )


def test_a_pack_with_nothing_readable_fails_with_one_line(codec: TextCodec, tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps({"video": "gone.mp4", "conversations": QA}))
    ds = dataset(str(tmp_path / "d.jsonl"), "long-video-sft", codec, tmp_path)
    ld = PackedLoader(
        ds, budget=200, tokens_per_frame=4, pixels=lambda ref: pixels_of(ref, 56, reader(tmp_path))
    )
    with pytest.raises(
        DataError, match=r"every sample of a packed batch failed to decode; last: sample 0 \("
    ):
        next(ld)


def test_a_store_that_is_down_is_not_a_skipped_sample(codec: TextCodec, tmp_path: Path) -> None:
    """A transient StorageError (S3 unreachable after the store's retries) ends the step: the run
    exits 'unavailable' and is restarted; a store that refuses the object (transient=False) is the
    sample's problem and is skipped."""
    for i in range(2):
        write_clip(tmp_path / f"v{i}.mp4", i)
    lines = [json.dumps({"id": f"s{i}", "video": f"v{i}.mp4", "conversations": QA}) for i in range(2)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    ds = dataset(str(tmp_path / "d.jsonl"), "long-video-sft", codec, tmp_path)
    n, media = len(ds[0].input_ids), reader(tmp_path)

    def pixels(transient: bool) -> Callable[[MediaRef], torch.Tensor]:
        def read(ref: MediaRef) -> torch.Tensor:
            if ref.path.endswith("v0.mp4"):
                raise StorageError(f"S3 download of {ref.path} failed", transient=transient)
            return pixels_of(ref, 56, media)

        return read

    down = PackedLoader(ds, budget=n + 3 * 4, tokens_per_frame=4, shuffle=False, pixels=pixels(True))
    with pytest.raises(StorageError, match=r"v0\.mp4"):
        next(down)
    assert down.skipped == 0  # not counted: the process ends and resumes from its last checkpoint
    refused = PackedLoader(ds, budget=n + 3 * 4, tokens_per_frame=4, shuffle=False, pixels=pixels(False))
    assert len(next(refused).frames) == 4 and refused.skipped == 1  # v1 took v0's place
