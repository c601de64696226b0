"""nanoo1: o1-style reasoning, small enough to read, tested against known answers."""

from nanoo1.checkpoint import load_pretrained, save_pretrained
from nanoo1.cache import KVCache
from nanoo1.model import Gemma2, Gemma2Config

__all__ = ["Gemma2", "Gemma2Config", "KVCache", "load_pretrained", "save_pretrained"]
