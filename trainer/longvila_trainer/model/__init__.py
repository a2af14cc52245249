"""The LongVILA model: SigLIP vision tower, VILA-1.5 projector, stock Qwen2 causal LM."""
