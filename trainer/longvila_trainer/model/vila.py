"""VILA / LongVILA checkpoints as NVlabs/VILA releases them, read into our model.

The released layout (`LlavaMetaModel.save_pretrained` in NVlabs/VILA llava/model/llava_arch.py):

    config.json      LlavaConfig: mm_projector_cfg.mm_projector_type, mm_vision_select_layer,
                     mm_vision_select_feature, llm_cfg, vision_tower_cfg, …
    llm/             the LLM (transformers save_pretrained) and its tokenizer
    vision_tower/    a SiglipVisionModel (save_pretrained)
    mm_projector/    MultimodalProjector: config.json {mm_projector_type} and model.safetensors,
                     an nn.Sequential `layers` = [DownSampleBlock, LayerNorm(4C), Linear(4C, D),
                     GELU, Linear(D, D)], so its parameters are layers.{1,2,4}.{weight,bias}

Our Projector holds the same three modules as norm / fc1 / fc2 (`PROJECTOR_KEYS`). The
merged-token order of the 2×2 downsample depends on the VILA code that trained the model
(model/projector.py): `mlp_downsample` as VILA 1.5 and LongVILA were trained is
column-pair-major ("column"); `mlp_downsample_2x2_fix` is row-major ("row"). A checkpoint
trained with VILA's current code, whose `mlp_downsample` also ends row-major, is imported
with token_order="row".

SigLIP has no CLS token, so VILA's "cls_patch" feature selection keeps every patch (what
the projector's square grid needs); "patch" would drop the first patch and is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2ForCausalLM, SiglipVisionConfig, SiglipVisionModel

from ..data.tokenizer import TextCodec, load_tokenizer
from ..hf_attention import register_usp_attention
from .longvila import LongVILA
from .projector import TOKEN_ORDERS, Projector
from .vision import VisionTower

# VILA's projector types we hold, and the merged-token order each was trained with.
PROJECTOR_ORDERS = {"mlp_downsample": "column", "mlp_downsample_2x2_fix": "row"}
# VILA's parameter names (mm_projector/) → ours (LongVILA.projector).
PROJECTOR_KEYS = {
    "layers.1.weight": "norm.weight", "layers.1.bias": "norm.bias",
    "layers.2.weight": "fc1.weight", "layers.2.bias": "fc1.bias",
    "layers.4.weight": "fc2.weight", "layers.4.bias": "fc2.bias",
}  # fmt: skip
PARTS = ("llm", "vision_tower", "mm_projector")


class VilaFormatError(ValueError):
    """A directory that is not a VILA checkpoint we can hold; the message names the file and field."""


@dataclass(frozen=True)
class VilaLayout:
    """What config.json and mm_projector/config.json say, checked."""

    root: Path
    projector: str  # VILA's mm_projector_type
    token_order: str
    select_layer: int

    @property
    def llm(self) -> Path:
        return self.root / "llm"

    @property
    def vision_tower(self) -> Path:
        return self.root / "vision_tower"

    @property
    def mm_projector(self) -> Path:
        return self.root / "mm_projector"


def _json(path: Path) -> dict[str, Any]:
    try:
        tree = json.loads(path.read_text())
    except OSError as err:
        raise VilaFormatError(
            f"{path}: cannot read ({err.strerror}); a VILA checkpoint has config.json, {', '.join(PARTS)}"
        ) from None
    except ValueError as err:
        raise VilaFormatError(f"{path}: not JSON ({err})") from None
    if not isinstance(tree, dict):
        raise VilaFormatError(f"{path}: not a JSON object")
    return tree


def read_layout(root: Path, token_order: str | None = None) -> VilaLayout:
    """Checks a released VILA directory; `token_order` overrides the projector type's."""
    top = _json(root / "config.json")
    for part in PARTS:
        if not (root / part / "config.json").is_file():
            raise VilaFormatError(f"{root}: no {part}/config.json (a VILA checkpoint has {', '.join(PARTS)})")
    proj_cfg = top.get("mm_projector_cfg")
    kind = proj_cfg.get("mm_projector_type") if isinstance(proj_cfg, dict) else None
    kind = kind or _json(root / "mm_projector" / "config.json").get("mm_projector_type")
    if kind not in PROJECTOR_ORDERS:
        raise VilaFormatError(
            f"{root / 'mm_projector' / 'config.json'}: mm_projector_type {kind!r}; supported: "
            f"{', '.join(PROJECTOR_ORDERS)} (VILA 1.5 and LongVILA)"
        )
    feature = top.get("mm_vision_select_feature", "cls_patch")
    if feature != "cls_patch":
        raise VilaFormatError(
            f"{root / 'config.json'}: mm_vision_select_feature {feature!r}: only 'cls_patch' (every SigLIP "
            "patch) fits the 2×2 projector"
        )
    layer = top.get("mm_vision_select_layer", -2)
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise VilaFormatError(
            f"{root / 'config.json'}: mm_vision_select_layer must be an integer, got {layer!r}"
        )
    for part, want in (("llm", "qwen2"), ("vision_tower", "siglip_vision_model")):
        got = _json(root / part / "config.json").get("model_type")
        if got != want:
            raise VilaFormatError(
                f"{root / part / 'config.json'}: model_type {got!r}; LongVILA's is {want!r}"
            )
    order = token_order or PROJECTOR_ORDERS[kind]
    if order not in TOKEN_ORDERS:
        raise VilaFormatError(f"token order {order!r}: one of {', '.join(TOKEN_ORDERS)}")
    return VilaLayout(root, kind, order, layer)


def projector_state(layout: VilaLayout) -> dict[str, torch.Tensor]:
    """mm_projector/'s weights under our Projector's names."""
    files = [layout.mm_projector / n for n in ("model.safetensors", "pytorch_model.bin")]
    found = next((f for f in files if f.is_file()), None)
    if found is None:
        raise VilaFormatError(f"{layout.mm_projector}: no model.safetensors or pytorch_model.bin")
    raw = load_file(found) if found.suffix == ".safetensors" else torch.load(found, weights_only=True)
    if set(raw) != set(PROJECTOR_KEYS):
        raise VilaFormatError(
            f"{found}: parameters {sorted(raw)}; an mlp_downsample projector has {sorted(PROJECTOR_KEYS)}"
        )
    return {PROJECTOR_KEYS[k]: v for k, v in raw.items()}


def load_vila(layout: VilaLayout, dtype: torch.dtype = torch.float32) -> tuple[LongVILA, TextCodec]:
    """Our model holding the checkpoint's weights, and its tokenizer (from llm/)."""
    codec = load_tokenizer(str(layout.llm))
    impl = register_usp_attention()
    llm = Qwen2ForCausalLM.from_pretrained(
        layout.llm, local_files_only=True, dtype=dtype, attn_implementation=impl
    )
    tower_cfg = SiglipVisionConfig.from_pretrained(layout.vision_tower, local_files_only=True)
    tower_cfg.vision_use_head = False  # VILA reads patch features; the released head stays unread
    siglip = SiglipVisionModel.from_pretrained(
        layout.vision_tower, config=tower_cfg, local_files_only=True, dtype=dtype
    )
    tower = VisionTower(siglip, layout.select_layer)
    projector = Projector(tower.hidden_size, int(llm.config.hidden_size), token_order=layout.token_order)
    state = projector_state(layout)
    for name, tensor in state.items():
        want = projector.state_dict()[name].shape
        if tensor.shape != want:
            raise VilaFormatError(
                f"{layout.mm_projector}: {name} has shape {tuple(tensor.shape)}, the vision tower and LLM "
                f"need {tuple(want)}"
            )
    projector.load_state_dict(state)
    return LongVILA(tower, projector.to(dtype), llm, codec.media_token_id), codec


def save_vila(model: LongVILA, codec: TextCodec, root: Path) -> Path:
    """Our model in VILA's released layout (what `load_vila` reads, and VILA's own tools).

    The vision tower is written whole, as VILA keeps it: the layers after `select_layer`,
    which our tower drops, come back with fresh weights that no forward reads. The
    projector type follows the token order (column: mlp_downsample, row: _2x2_fix)."""
    kind = next(k for k, order in PROJECTOR_ORDERS.items() if order == model.projector.token_order)
    model.llm.save_pretrained(root / "llm")
    codec.tokenizer.save_pretrained(root / "llm")
    tower_cfg = model.vision.model.config
    full = SiglipVisionModel(tower_cfg)
    missing = full.load_state_dict(model.vision.model.state_dict(), strict=False).missing_keys
    if not all(k.startswith(("encoder.layers.", "post_layernorm.", "head.")) for k in missing):
        raise VilaFormatError(f"the vision tower lacks weights VILA's reads: {missing}")
    full.save_pretrained(root / "vision_tower")
    (root / "mm_projector").mkdir(parents=True, exist_ok=True)
    ours = {v: k for k, v in PROJECTOR_KEYS.items()}
    state = {ours[k]: v.detach().contiguous() for k, v in model.projector.state_dict().items()}
    save_file(state, str(root / "mm_projector" / "model.safetensors"), metadata={"format": "pt"})
    proj_cfg = {
        "mm_projector_type": kind,
        "model_type": "v2l_projector",
        "architectures": ["MultimodalProjector"],
    }
    (root / "mm_projector" / "config.json").write_text(json.dumps(proj_cfg, indent=2))
    top = {
        "architectures": ["LlavaLlamaModel"],
        "model_type": "llava_llama",
        "llm_cfg": model.llm.config.to_dict(),
        "vision_tower_cfg": tower_cfg.to_dict(),
        "mm_projector_cfg": proj_cfg,
        "mm_vision_select_layer": model.vision.select_layer,
        "mm_vision_select_feature": "cls_patch",
        "mm_hidden_size": model.vision.hidden_size,
        "hidden_size": model.hidden_size,
        "image_aspect_ratio": "resize",
    }
    (root / "config.json").write_text(json.dumps(top, indent=2))
    return root
