"""`longvila-import`: a checkpoint in VILA's released layout, with VILA's parameter names, becomes
our checkpoint, and our model on it computes VILA's forward.

The VILA side is written here from NVlabs/VILA's source, independently of our modules:
`LlavaMetaModel.save_pretrained` (llava/model/llava_arch.py) for the layout, `VisionTower.
feature_select` (hidden_states[mm_vision_select_layer], "cls_patch" = every token) and
`MultimodalProjector` / `DownSampleBlock.flat_square` (llava/model/multimodal_projector/
base_projector.py) for the forward: the VILA 1.5 `mlp_downsample` ends column-pair-major,
`mlp_downsample_2x2_fix` adds one more permute (row-major).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from longvila_contract import checkpoint as L
from longvila_trainer.checkpoint.s3 import open_storage
from longvila_trainer.checkpoint.store import CheckpointNotFoundError
from longvila_trainer.data.tokenizer import tiny_tokenizer
from longvila_trainer.eval.prefill import prefill
from longvila_trainer.model.longvila import PackedBatch
from longvila_trainer.model.meta import build_from_meta, read_meta
from longvila_trainer.model.presets import TINY
from longvila_trainer.model.weights import load_weights
from longvila_trainer.parallel.groups import single_process_groups
from longvila_trainer.sharding.frames import IGNORE_INDEX
from longvila_trainer.vila_import import main
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

MEDIA = 95  # the tiny tokenizer's <image>
# a 5×5 patch grid: odd, padded to 6×6 → 3×3 tokens; with SigLIP's pooling head, as VILA releases it
VISION = {**{k: v for k, v in TINY.vision.items() if k != "vision_use_head"}, "image_size": 70}
LLM = {**TINY.llm, "rope_theta": 50000.0}


def write_vila(root: Path, kind: str) -> None:
    """A tiny VILA checkpoint as VILA's save_pretrained writes it (transformers 4 key names)."""
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(**LLM)).save_pretrained(root / "llm")
    tiny_tokenizer().save_pretrained(root / "llm")
    tower = SiglipVisionModel(SiglipVisionConfig(**VISION))
    SiglipVisionConfig(**VISION).save_pretrained(root / "vision_tower")
    state = {f"vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()}
    save_file(state, str(root / "vision_tower" / "model.safetensors"), metadata={"format": "pt"})
    c, d = VISION["hidden_size"], LLM["hidden_size"]
    layers = torch.nn.Sequential(torch.nn.Identity(), torch.nn.LayerNorm(4 * c), torch.nn.Linear(4 * c, d),
                                 torch.nn.GELU(), torch.nn.Linear(d, d))  # fmt: skip
    torch.nn.init.normal_(layers[1].weight, 1.0, 0.2)  # a LayerNorm that is not the identity
    torch.nn.init.normal_(layers[1].bias, 0.0, 0.2)
    (root / "mm_projector").mkdir()
    projector = {f"layers.{k}": v.contiguous() for k, v in layers.state_dict().items()}
    save_file(projector, str(root / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    proj_cfg = {
        "mm_projector_type": kind,
        "model_type": "v2l_projector",
        "architectures": ["MultimodalProjector"],
    }
    (root / "mm_projector" / "config.json").write_text(json.dumps(proj_cfg))
    top = {
        "architectures": ["LlavaLlamaModel"], "model_type": "llava_llama", "mm_projector_cfg": proj_cfg,
        "mm_vision_select_layer": -2, "mm_vision_select_feature": "cls_patch", "mm_hidden_size": c,
        "hidden_size": d, "image_aspect_ratio": "resize", "num_video_frames": 8,
    }  # fmt: skip
    (root / "config.json").write_text(json.dumps(top))


def vila_flat_square(x: torch.Tensor, fix: bool) -> torch.Tensor:
    """DownSampleBlock.flat_square as in VILA (the names are VILA's: dim 1 is the grid's rows)."""
    n, w, h, c = x.size()
    if w % 2 == 1:
        x = torch.concat([x, torch.zeros((n, 1, h, c), dtype=x.dtype)], dim=1).contiguous()
        n, w, h, c = x.size()
    if h % 2 == 1:
        x = torch.concat([x, torch.zeros((n, w, 1, c), dtype=x.dtype)], dim=2).contiguous()
        n, w, h, c = x.size()
    x = x.view(n, w, int(h / 2), int(c * 2))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.view(n, int(h / 2), int(w / 2), int(c * 4))
    if fix:  # mlp_downsample_2x2_fix (and VILA's current DownSampleBlock)
        x = x.permute(0, 2, 1, 3).contiguous()
    return x


@torch.no_grad()
def vila_logits(root: Path, kind: str, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """VILA's forward on its own checkpoint: [N_fused, V] logits of the spliced sequence."""
    tower = SiglipVisionModel.from_pretrained(root / "vision_tower").eval()
    feats = tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2]  # [F, 25, C]
    side = int(feats.shape[1] ** 0.5)
    x = vila_flat_square(feats.reshape(feats.shape[0], side, side, -1), fix=kind != "mlp_downsample")
    x = x.reshape(x.shape[0], -1, x.shape[-1])  # [F, 9, 4C]
    p = load_file(str(root / "mm_projector" / "model.safetensors"))
    x = F.layer_norm(x, (x.shape[-1],), p["layers.1.weight"], p["layers.1.bias"])
    x = F.linear(
        F.gelu(F.linear(x, p["layers.2.weight"], p["layers.2.bias"])),
        p["layers.4.weight"],
        p["layers.4.bias"],
    )
    llm = Qwen2ForCausalLM.from_pretrained(root / "llm", attn_implementation="eager").eval()
    embed, parts, frame = llm.get_input_embeddings(), [], 0
    for t in ids:
        if t == MEDIA:
            parts.append(x[frame])
            frame += 1
        else:
            parts.append(embed(torch.tensor([t])))
    seq = torch.cat(parts).unsqueeze(0)  # [1, N, D]
    positions = torch.arange(seq.shape[1]).unsqueeze(0)
    logits: torch.Tensor = llm(inputs_embeds=seq, position_ids=positions, use_cache=False).logits[0]
    return logits


def fused_targets(ids: list[int], tokens_per_frame: int) -> torch.Tensor:
    """Fused positions whose next position is text (what prefill returns rows for). [n]"""
    text = [t != MEDIA for t in ids for _ in range(tokens_per_frame if t == MEDIA else 1)]
    return torch.tensor([i for i in range(len(text) - 1) if text[i + 1]])


@pytest.mark.parametrize(("kind", "order"), [("mlp_downsample", "column"), ("mlp_downsample_2x2_fix", "row")])
def test_imported_vila_checkpoint_computes_vilas_logits(kind: str, order: str, tmp_path: Path) -> None:
    src, dst = tmp_path / "vila", tmp_path / "ours"
    write_vila(src, kind)
    assert main([str(src), f"file://{dst}", "--cache-dir", str(tmp_path / "cache")]) == 0
    storage = open_storage(f"file://{dst}")
    assert L.parse_final(storage.get_bytes(L.FINAL)) == 0  # what spec.model.init accepts
    meta = read_meta(f"file://{dst}", "model.init", tmp_path / "staging")
    assert meta is not None and meta.token_order == order and meta.projector == kind
    assert meta.rope_theta == 50000.0 and meta.media_token == "<image>" and meta.media_token_id == MEDIA

    model = build_from_meta(meta, seed=1).eval()  # other random weights: the load must replace all
    assert load_weights(model, f"file://{dst}") == 0
    ids = [5, 6, 7, MEDIA, 8, 9, MEDIA, 10, 11, 12, 13]
    labels = [IGNORE_INDEX if t == MEDIA else t for t in ids]
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, 70, 70)
    batch = PackedBatch(torch.tensor(ids), torch.tensor(labels), (len(ids),), tuple(pixels))
    ours = prefill(model, batch, single_process_groups(), "contiguous").logits  # [n, V]
    want = vila_logits(src, kind, ids, pixels)[fused_targets(ids, 9)]
    assert ours.shape == want.shape
    assert torch.allclose(ours, want, atol=1e-5), (ours - want).abs().max()


def test_the_token_order_matters(tmp_path: Path) -> None:
    """The same checkpoint imported with the other order computes something else: the test can fail."""
    src, dst = tmp_path / "vila", tmp_path / "ours"
    write_vila(src, "mlp_downsample")
    assert main([str(src), str(dst), "--token-order", "row", "--cache-dir", str(tmp_path / "cache")]) == 0
    meta = read_meta(f"file://{dst}", "model.init", tmp_path / "staging")
    assert meta is not None and meta.token_order == "row"
    model = build_from_meta(meta).eval()
    load_weights(model, f"file://{dst}")
    ids = [5, MEDIA, 6, 7]
    batch = PackedBatch(
        torch.tensor(ids), torch.tensor([5, IGNORE_INDEX, 6, 7]), (4,), (torch.randn(3, 70, 70),)
    )
    ours = prefill(model, batch, single_process_groups(), "contiguous").logits
    want = vila_logits(src, "mlp_downsample", ids, torch.stack(batch.frames))[fused_targets(ids, 9)]
    assert not torch.allclose(ours, want, atol=1e-3)
    assert math.isfinite(float(ours.sum()))


def test_bad_sources_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "vila"
    write_vila(src, "mlp2x_gelu")
    capsys.readouterr()  # save_pretrained's progress bars
    assert main([str(src), str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("longvila-import: error:")
        and "mm_projector_type 'mlp2x_gelu'" in err
        and "\n" not in err
    )
    assert main([str(tmp_path / "nothing"), str(tmp_path / "b")]) == 2
    assert "config.json" in capsys.readouterr().err
    good = tmp_path / "good"
    write_vila(good, "mlp_downsample")
    capsys.readouterr()
    assert main([str(good), str(tmp_path / "c"), "--cache-dir", str(tmp_path / "cache")]) == 0
    capsys.readouterr()
    assert main([str(good), str(tmp_path / "c"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


def test_a_released_checkpoint_named_as_init_asks_for_the_import(tmp_path: Path) -> None:
    """model.init / spec.model.init naming the released layout itself: one line saying to import it."""
    src = tmp_path / "vila"
    write_vila(src, "mlp_downsample")
    with pytest.raises(CheckpointNotFoundError) as err:
        read_meta(f"file://{src}", "model.init", tmp_path / "staging")
    assert str(err.value).startswith(f"model.init=file://{src}: a VILA checkpoint as released")
    assert f"longvila-import file://{src} DST" in str(err.value)
    with pytest.raises(CheckpointNotFoundError, match=r"no final\.json"):  # anything else: as before
        read_meta(f"file://{tmp_path / 'empty'}", "model.init", tmp_path / "staging")
