"""`python -m nanoo1.selfplay` whose every rank dies right after the first checkpoint is whole (a kill, for
tests/test_dist.py): run it under torchrun with selfplay's flags."""

import os
import sys

import nanoo1.selfplay as selfplay
from nanoo1.dist import barrier

real = selfplay.save_checkpoint


def save_then_die(*args, **kw):
    real(*args, **kw)  # returns once every rank has written its part (and rank 0 `latest`)
    barrier()  # no rank dies, and has torchrun stop the others, before rank 0 has pointed `latest` at it
    sys.stdout.flush()
    os._exit(3)


selfplay.save_checkpoint = save_then_die
selfplay.main(sys.argv[1:])
