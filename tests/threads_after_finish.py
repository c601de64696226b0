"""A rank that joins the process group, loads a checkpoint, gathers, leaves with `dist.finish` and then writes
the threads it still runs, by name, to OUT/rank{RANK}.txt (for tests/test_dist.py; Linux, /proc/self/task; a file
each, as two ranks printing to one stream can interleave their lines). Run under torchrun:
threads_after_finish.py CHECKPOINT OUT."""

import os
import sys
from pathlib import Path

import torch

from conftest import thread_names
from nanoo1 import dist
from nanoo1.checkpoint import load_pretrained

dist.setup(torch.device("cpu"))
load_pretrained(sys.argv[1])  # builds the model on the meta device, which imports torch._dynamo
dist.gather(dist.place().rank)
dist.finish()
names = thread_names()
Path(sys.argv[2], f"rank{os.environ['RANK']}.txt").write_text(f"rank {os.environ['RANK']}: {names}")
