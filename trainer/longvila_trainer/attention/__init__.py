"""Sequence-parallel attention: Ulysses, ring (zigzag/contiguous, varlen) and their 2D composition."""

from .comm import CommMeter
from .context import AttentionContext
from .ring import ring_attention
from .ulysses import ulysses_attention
from .usp import usp_attention

__all__ = ["AttentionContext", "CommMeter", "ring_attention", "ulysses_attention", "usp_attention"]
