"""Data: real encoded media, uniform sampling, the tiny tokenizer, per-stage samples, packing."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from longvila_contract.config import SyntheticConfig
from longvila_contract.model import tokens_per_frame
from longvila_trainer.data import synthetic
from longvila_trainer.data.media import MediaCache, MediaReader
from longvila_trainer.data.packing import build_packed_batch, expanded_length, pack_greedy
from longvila_trainer.data.samples import (
    LongShortMix,
    MediaRef,
    Sample,
    SampleSet,
    encode_record,
    open_dataset,
    pixels_of,
)
from longvila_trainer.data.sources import open_source
from longvila_trainer.data.tokenizer import TextCodec, load_tokenizer
from longvila_trainer.data.video import decode_video, load_image, to_pixels, uniform_indices
from longvila_trainer.model.presets import TINY
from longvila_trainer.sharding.frames import IGNORE_INDEX as I


@pytest.fixture(scope="module")
def codec() -> TextCodec:
    return load_tokenizer("tiny")


def local_dataset(
    root: Path, stage: str, codec: TextCodec, frames: int, max_tokens: int | None = None
) -> SampleSet:
    """A local dataset directory (manifest.jsonl) through sources.py, as the trainer opens it."""
    reader = MediaReader(MediaCache(root / ".cache", 1 << 20))
    ds = open_source(str(root), "data.uri", root_setting="", cache_dir=root, synthetic=SyntheticConfig(),
                     codec=codec, reader=reader)  # fmt: skip
    return open_dataset(ds.records, ds.where, ds.root, stage, codec, frames, max_tokens)


# -- tokenizer ------------------------------------------------------------------------------


def test_tiny_tokenizer_matches_the_tiny_model(codec: TextCodec) -> None:
    assert codec.vocab_size == TINY.llm["vocab_size"] and codec.media_token_id == TINY.media_token_id
    assert (codec.eos_id, codec.im_start_id, codec.im_end_id) == (0, 1, 2)
    # ids: ' ' 4, '\n' 5, 'a' 6, 'b' 7; upper case folds to lower case
    assert codec.encode("Ab <image>\nb") == [6, 7, 4, 95, 5, 7]
    assert codec.decode(codec.encode("<|im_start|>hi<|im_end|>")) == "<|im_start|>hi<|im_end|>"


def test_load_tokenizer_from_a_directory_and_through_fetch(codec: TextCodec, tmp_path: Path) -> None:
    codec.tokenizer.save_pretrained(tmp_path / "tok")
    for source in (str(tmp_path / "tok"), f"file://{tmp_path / 'tok'}"):
        assert load_tokenizer(source).encode("abc <image>") == codec.encode("abc <image>")
    fetched = load_tokenizer("s3://models/tok", fetch=lambda uri: tmp_path / "tok")
    assert fetched.media_token_id == 95
    with pytest.raises(ValueError, match="s3:// is not supported here"):
        load_tokenizer("s3://models/tok")
    with pytest.raises(FileNotFoundError, match=r"no tokenizer\.json"):
        load_tokenizer(str(tmp_path))


# -- video ----------------------------------------------------------------------------------


def test_uniform_indices() -> None:
    assert uniform_indices(16, 4) == [0, 5, 10, 15]
    assert uniform_indices(16, 1) == [0]
    assert uniform_indices(3, 5) == [0, 0, 1, 2, 2]  # short video: frames repeat, N is kept
    with pytest.raises(ValueError):
        uniform_indices(0, 4)


def test_decode_samples_the_right_frames_of_a_real_file(tmp_path: Path) -> None:
    frames = np.stack([np.full((56, 56, 3), 15 * t, np.uint8) for t in range(16)])  # gray ramp
    synthetic.write_video(tmp_path / "ramp.mp4", frames)
    with av.open(str(tmp_path / "ramp.mp4")) as c:
        assert (c.streams.video[0].codec_context.name, c.streams.video[0].frames) == ("mpeg4", 16)
    got = decode_video(tmp_path / "ramp.mp4", 4)
    assert got.shape == (4, 56, 56, 3) and got.dtype == np.uint8
    assert np.allclose(got.mean(axis=(1, 2, 3)), [0, 75, 150, 225], atol=3)


def test_to_pixels_resizes_and_normalizes() -> None:
    frames = np.zeros((2, 40, 40, 3), np.uint8)
    frames[1] = 255
    px = to_pixels(frames, 28)
    assert px.shape == (2, 3, 28, 28) and px.dtype == torch.float32
    assert torch.allclose(px[0], torch.tensor(-1.0)) and torch.allclose(px[1], torch.tensor(1.0))


def test_synthetic_is_deterministic_by_seed(codec: TextCodec, tmp_path: Path) -> None:
    a = synthetic.generate("captions", tmp_path / "a", samples=2, seed=3, frames=16, size=56)
    b = synthetic.generate("captions", tmp_path / "b", samples=2, seed=3, frames=16, size=56)
    c = synthetic.generate("captions", tmp_path / "c", samples=2, seed=4, frames=16, size=56)
    assert a.read_text() == b.read_text() != c.read_text()
    va, vb = (decode_video(p.parent / "video_00001.mp4", 16) for p in (a, b))
    d = synthetic.generate("video-qa", tmp_path / "d", samples=2, seed=3, frames=16, size=56)
    assert d.read_text() == synthetic.generate("instructions", tmp_path / "e", samples=2, seed=3).read_text()
    assert np.array_equal(va, vb) and load_image(a.parent / "image_00000.png").shape == (1, 56, 56, 3)
    for name in synthetic.GENERATORS:
        root = tmp_path / name
        synthetic.generate(name, root, samples=2, seed=0, frames=8, size=56, codec=codec, text_tokens=32)
        assert len(local_dataset(root, _stage_of(name), codec, frames=4, max_tokens=32)) == 2


def _stage_of(generator: str) -> str:
    return {
        "captions": "alignment",
        "interleaved": "pretraining",
        "instructions": "short-sft",
        "long-text": "context-extension",
        "long-video": "long-video-sft",
        "needle-qa": "long-video-sft",
    }[generator]


def test_needle_frame_lands_at_its_depth(tmp_path: Path) -> None:
    hay, needle = synthetic.haystack_frames(0, 16, 56), synthetic.make_needle(0, 56)
    assert needle.answer == "red" and needle.question.endswith("?")
    assert [synthetic.make_needle(v, 56).answer for v in range(5)] == list(synthetic.NEEDLE_COLORS)
    assert not set(synthetic.NEEDLE_COLORS) & set(synthetic.HAYSTACK_COLORS)
    for depth, at in ((0.0, 0), (0.5, 8), (1.0, 16)):
        assert synthetic.needle_video(tmp_path / "n.mp4", hay, needle, depth) == at
        got = decode_video(tmp_path / "n.mp4", 17).astype(float)
        errors = np.abs(got - needle.frame).mean(axis=(1, 2, 3))
        assert int(errors.argmin()) == at and errors[at] < 30 < np.delete(errors, at).min()


# -- samples --------------------------------------------------------------------------------


def test_caption_ids_and_labels_by_hand(codec: TextCodec, tmp_path: Path) -> None:
    record = {"media": [{"type": "video", "path": "v.mp4"}], "caption": "ab"}
    s = encode_record(record, tmp_path, codec, frames=3)
    assert s.input_ids == (95, 95, 95, 5, 6, 7, 0)  # 3 frames, '\n', 'a', 'b', EOS
    assert s.labels == (I, I, I, I, 6, 7, 0)
    assert s.media == (MediaRef(str(tmp_path / "v.mp4"), "video", 3),)


def test_conversation_labels_only_on_assistant_turns(codec: TextCodec, tmp_path: Path) -> None:
    record = {
        "media": [{"type": "image", "path": "i.png"}],
        "conversations": [
            {"from": "human", "value": "<image>\nq?"},
            {"from": "gpt", "value": "ok"},
            {"from": "human", "value": "b?"},
            {"from": "gpt", "value": "no"},
        ],
    }
    s = encode_record(record, tmp_path, codec, frames=8)
    text = (
        "<|im_start|>system\nyou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\nq?<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
        "<|im_start|>user\nb?<|im_end|>\n<|im_start|>assistant\nno<|im_end|>\n"
    )
    assert list(s.input_ids) == codec.encode(text)
    trained = [(i, t) for i, t in enumerate(s.labels) if t != I]
    ok = text.index("ok<|im_end|>")
    no = text.index("no<|im_end|>")
    # char-level: a text offset before the first special token equals the token index
    ok_at = len(codec.encode(text[:ok]))
    no_at = len(codec.encode(text[:no]))
    assert trained == [
        (ok_at, 20),
        (ok_at + 1, 16),
        (ok_at + 2, 2),
        (no_at, 19),
        (no_at + 1, 20),
        (no_at + 2, 2),
    ]
    assert all(s.input_ids[i] == t for i, t in trained)


def test_video_marker_expands_to_frames_and_unmarked_media_go_first(codec: TextCodec, tmp_path: Path) -> None:
    turns = [{"from": "human", "value": "what?"}, {"from": "gpt", "value": "x"}]
    s = encode_record(
        {"media": [{"type": "video", "path": "v.mp4"}], "conversations": turns}, tmp_path, codec, 4
    )
    assert s.n_frames == 4 and s.input_ids.count(95) == 4
    first = s.input_ids.index(95)
    assert codec.decode(s.input_ids[:first]).endswith("<|im_start|>user\n")
    bad = [{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]
    with pytest.raises(ValueError, match="stands for a video"):
        encode_record(
            {"media": [{"type": "video", "path": "v.mp4"}], "conversations": bad}, tmp_path, codec, 4
        )


def test_long_text_is_trained_everywhere_and_cut_to_the_budget(codec: TextCodec, tmp_path: Path) -> None:
    s = encode_record({"input_ids": list(range(10, 30))}, tmp_path, codec, frames=1, max_tokens=8)
    assert s.input_ids == s.labels == tuple(range(10, 18)) and s.media == ()


def test_stage_refuses_other_formats(codec: TextCodec, tmp_path: Path) -> None:
    synthetic.generate("instructions", tmp_path, samples=1, seed=0)
    with pytest.raises(ValueError, match="a conversation record; a alignment stage reads caption"):
        local_dataset(tmp_path, "alignment", codec, frames=4)


def test_long_short_mix(codec: TextCodec) -> None:
    long = [Sample((1,), (1,), ())] * 6
    short = [Sample((2, i), (2, i), ()) for i in range(5)]
    mix = LongShortMix(long, short, short_fraction=0.25, seed=0)
    assert len(mix) == 8 and list(mix[:6]) == long
    assert len({mix[6], mix[7]}) == 2 and all(m in short for m in mix[6:])
    assert list(LongShortMix(long, short, 0.25, seed=0)) == list(mix)
    with pytest.raises(ValueError, match="short_fraction"):
        LongShortMix(long, short, 1.0, seed=0)


# -- packing --------------------------------------------------------------------------------


def test_pack_greedy_respects_the_budget_and_never_splits() -> None:
    assert pack_greedy([3, 4, 2, 5, 1], budget=6) == [range(0, 1), range(1, 3), range(3, 5)]
    lengths = [int(x) for x in np.random.default_rng(0).integers(1, 50, 200)]
    packs = pack_greedy(lengths, 64)
    assert [i for p in packs for i in p] == list(range(200))
    assert all(sum(lengths[i] for i in p) <= 64 for p in packs)
    with pytest.raises(ValueError, match="needs 7 tokens, more than the budget of 6"):
        pack_greedy([3, 7], budget=6)


def test_expanded_length_counts_visual_tokens() -> None:
    assert (
        tokens_per_frame(56, 14) == 4
        and tokens_per_frame(384, 14) == 196
        and tokens_per_frame(448, 14) == 256
    )
    s = Sample((95, 95, 5, 6), (I, I, I, 6), (MediaRef("v", "video", 2),))
    assert expanded_length(s, 196) == 4 + 2 * 195


def test_build_packed_batch_by_hand(codec: TextCodec, tmp_path: Path) -> None:
    synthetic.generate("captions", tmp_path, samples=2, seed=0, frames=16, size=56)
    a = encode_record(
        {"media": [{"type": "image", "path": "image_00000.png"}], "caption": "a"}, tmp_path, codec, 2
    )
    b = encode_record(
        {"media": [{"type": "video", "path": "video_00001.mp4"}], "caption": "b"}, tmp_path, codec, 2
    )
    batch = build_packed_batch([a, b], lambda ref: pixels_of(ref, 56))
    assert batch.input_ids.tolist() == [95, 5, 6, 0, 95, 95, 5, 7, 0]
    assert batch.labels.tolist() == [I, I, 6, 0, I, I, I, 7, 0]
    assert batch.doc_lens == (4, 5) and len(batch.frames) == 3
    assert all(f.shape == (3, 56, 56) for f in batch.frames)
    with pytest.raises(ValueError, match="decoded 1 frames, the text has 2"):
        build_packed_batch([b], lambda ref: torch.zeros(1, 3, 56, 56))
