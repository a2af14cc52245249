"""The DeepSpeed engine's pure parts: its config, the target count it scales by, and the
error when DeepSpeed is missing (the training itself: tests/distributed/test_zero.py)."""

from __future__ import annotations

import sys

import pytest
import torch
from longvila_contract.config import ConfigError, TrainConfig
from longvila_trainer.model.longvila import PackedBatch
from longvila_trainer.sharding.frames import IGNORE_INDEX
from longvila_trainer.zero import BUCKET_ELEMENTS, batch_targets, ds_config, import_deepspeed


def test_config_lets_the_loop_own_accumulation_and_clips_like_fsdp() -> None:
    cfg = ds_config(TrainConfig(clip=0.5, zero_stage=1), bf16=False)
    assert cfg["zero_optimization"]["stage"] == 1 and cfg["gradient_clipping"] == 0.5
    assert cfg["gradient_accumulation_steps"] == 1 and cfg["train_micro_batch_size_per_gpu"] == 1
    assert cfg["bf16"] == {"enabled": False}
    assert ds_config(TrainConfig(), bf16=True)["bf16"] == {"enabled": True}


def test_buckets_never_exceed_the_trainable_parameters() -> None:
    zero = ds_config(TrainConfig(), bf16=False, trainable=1234)["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == 1234
    big = ds_config(TrainConfig(), bf16=False, trainable=7_000_000_000)["zero_optimization"]
    assert big["reduce_bucket_size"] == BUCKET_ELEMENTS  # DeepSpeed's default caps a large model


def test_targets_counted_from_labels_skip_each_documents_first_token() -> None:
    x = IGNORE_INDEX
    # two documents of 4 and 3 tokens; the second starts with a media placeholder (label ignored)
    labels = torch.tensor([5, 6, x, 7, x, 8, 9])
    batch = PackedBatch(torch.zeros(7, dtype=torch.long), labels, (4, 3), ())
    # targets are labels[t + 1] inside a document: 6, (x), 7 | 8, 9
    assert batch_targets(batch) == 4


def test_missing_deepspeed_is_one_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # import deepspeed → ImportError
    with pytest.raises(ConfigError, match=r"^train.engine: deepspeed is not installed .*use engine fsdp"):
        import_deepspeed()
