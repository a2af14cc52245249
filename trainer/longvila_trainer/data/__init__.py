"""Training data: synthetic media, decoding, tokenization, per-stage samples, packing, the loader.

Entry points for the trainer (loader.py): `open_stage_data(cfg, codec, cache_dir)` →
samples, `build_loader(cfg, samples, …)` → an iterator of `model.longvila.PackedBatch`
with `state_dict()` / `load_state_dict()`. Nothing is imported or run here.
"""
