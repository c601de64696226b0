"""A rank that joins the process group, loads a checkpoint, gathers, leaves with `dist.finish` and then prints
the threads it still runs, by name (for tests/test_dist.py; Linux, /proc/self/task). Run under torchrun:
threads_after_finish.py CHECKPOINT."""

import os
import sys

import torch

from nanoo1 import dist
from nanoo1.checkpoint import load_pretrained

dist.setup(torch.device("cpu"))
load_pretrained(sys.argv[1])  # builds the model on the meta device, which imports torch._dynamo
dist.gather(dist.place().rank)
dist.finish()
names = sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
print(f"rank {os.environ['RANK']}: {names}")
