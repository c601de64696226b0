"""nanoo1: o1-style reasoning, small enough to read, tested against known answers."""

from nanoo1.model import Gemma2, Gemma2Config, KVCache

__all__ = ["Gemma2", "Gemma2Config", "KVCache"]
