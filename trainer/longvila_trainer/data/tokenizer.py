"""Text ↔ token ids: the tiny offline tokenizer for tests and a real HF one, behind one type.

`load_tokenizer("tiny")` builds a character-level `PreTrainedTokenizerFast` in code (no
file, no hub): 96 ids, the tiny model preset's vocabulary, with the media placeholder at
id 95 (`model.presets.TINY.media_token_id`). Any other source is a local directory in HF
layout (`/path` or `file:///path`), loaded with `local_files_only`; an `s3://` source is
first copied to a local directory by the `fetch` callable the caller passes in (the
checkpoint/S3 shell owns credentials and retries, this module stays pure).

The chat template is Qwen2's (ChatML); `samples.py` renders it turn by turn so that labels
can be placed on assistant turns only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from longvila_contract.uri import URI, local_path
from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

TINY = "tiny"
TINY_VOCAB_SIZE = 96
EOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
UNK = "<unk>"
MEDIA = "<image>"  # one per frame in input_ids; a video's `<video>` in text becomes N of these
VIDEO = "<video>"  # text-side marker only, never a token id
_TINY_CHARS = " \nabcdefghijklmnopqrstuvwxyz0123456789.,?!:;'\"-()/"


@dataclass(frozen=True)
class TextCodec:
    """A tokenizer plus the ids the data path needs."""

    tokenizer: PreTrainedTokenizerBase
    media_token_id: int
    eos_id: int
    im_start_id: int
    im_end_id: int

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Plain text → ids, no BOS/EOS added; `<image>` in the text maps to the media id."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=False))


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level, lower-cased, 96 ids; `<image>` = 95. Deterministic, built in code."""
    specials = [EOS, IM_START, IM_END, UNK]
    vocab = {tok: i for i, tok in enumerate(specials + list(_TINY_CHARS))}
    for i in range(len(vocab), TINY_VOCAB_SIZE - 1):
        vocab[f"<|unused_{i}|>"] = i
    vocab[MEDIA] = TINY_VOCAB_SIZE - 1
    # BPE without merges: every character is its own token; no pre-tokenizer needed.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.decoder = decoders.Fuse()
    core.add_special_tokens([EOS, IM_START, IM_END, UNK, MEDIA])
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, eos_token=EOS, pad_token=EOS, unk_token=UNK, model_max_length=1 << 30
    )


def codec_of(tokenizer: PreTrainedTokenizerBase) -> TextCodec:
    """Wraps a tokenizer; adds `<image>` as a special token when it lacks one."""
    if MEDIA not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [MEDIA]})  # type: ignore[dict-item]
    ids = {}
    for name in (MEDIA, IM_START, IM_END):
        i = tokenizer.convert_tokens_to_ids(name)
        if not isinstance(i, int) or i == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {name!r} token (a Qwen2 / ChatML tokenizer is expected)")
        ids[name] = i
    eos = tokenizer.eos_token_id
    if not isinstance(eos, int):
        raise ValueError("tokenizer has no EOS token")
    return TextCodec(tokenizer, ids[MEDIA], eos, ids[IM_START], ids[IM_END])


def load_tokenizer(source: str, fetch: Callable[[URI], Path] | None = None) -> TextCodec:
    """`tiny`, a local HF directory (`/dir` or `file:///dir`), or `s3://…` through `fetch`."""
    if source == TINY:
        return codec_of(tiny_tokenizer())
    local = local_path(source, fetch, "model.tokenizer")
    if not (local / "tokenizer_config.json").is_file() and not (local / "tokenizer.json").is_file():
        raise FileNotFoundError(f"tokenizer {source}: no tokenizer.json or tokenizer_config.json in {local}")
    return codec_of(AutoTokenizer.from_pretrained(str(local), local_files_only=True))
