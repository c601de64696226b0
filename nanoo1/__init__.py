"""nanoo1: o1-style reasoning, small enough to read, tested against known answers."""

import os

# An OpenMP thread that runs out of work spins before it sleeps, 300,000 times by default in libgomp (torch's
# OpenMP on Linux). Where another process holds a core, the spinning thread takes the core its partner needs, and
# every parallel region then waits for the thread that was put off it: on 2 cores with one busy elsewhere, the
# tiny model's steps on 2 threads ran 6-10x slower than on 1. 10,000 spins cut that to 1.6-1.8x the 1-thread
# time, at about 5% on an idle machine. libgomp reads this once, when `import torch` loads it, so it is set here,
# before nanoo1 imports torch, and only where the user chose neither setting.
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

from nanoo1.checkpoint import load_pretrained, save_pretrained  # noqa: E402 (after the setting above)
from nanoo1.cache import KVCache  # noqa: E402
from nanoo1.model import Gemma2, Gemma2Config  # noqa: E402

__all__ = ["Gemma2", "Gemma2Config", "KVCache", "load_pretrained", "save_pretrained"]
