"""The dist section of `python -m nanoo1.bench`: whole `selfplay --tiny` runs timed side by side as processes.

One process on 2 threads, 2 torchrun ranks on 1 thread each, and one process on 1 thread, one after the other:
what data parallelism gains on a machine whose one process already spreads over its cores, and the most it
could gain (two ranks can at best halve the 1-thread time).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def dist_section(args) -> dict:
    """`selfplay --tiny` as one process on 2 threads against `torchrun --nproc_per_node 2` on 1 thread a rank,
    then as one process on 1 thread, one after the other on this machine (about 20 minutes on 2 cores): wall
    time and the before/after table of each, the speed-up, and its ceiling, 2 x (2 threads) / (1 thread): two
    1-thread ranks can at best halve the 1-thread time. --dist-flags adds selfplay flags to every run."""
    with tempfile.TemporaryDirectory(prefix="nanoo1-dist-") as d:  # the runs go when they are timed
        out = Path(d)
        flags = ["-m", "nanoo1.selfplay", "--tiny", "--no-progress", *args.dist_flags.split()]
        one_proc = [sys.executable, *flags]
        two_ranks = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *flags]
        runs = {"1 process x 2 threads": ([*one_proc, "--threads", "2", "--out", str(out / "one")], {}),
                "2 ranks x 1 thread": ([*two_ranks, "--out", str(out / "two")], {"OMP_NUM_THREADS": "1"}),
                "1 process x 1 thread": ([*one_proc, "--threads", "1", "--out", str(out / "single")], {})}
        rows = {}
        for name, (cmd, env) in runs.items():
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
            if proc.returncode:
                raise RuntimeError(f"{name}: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
            last = json.loads(proc.stdout.strip().splitlines()[-1])  # selfplay's summary line
            # the command's wall time replaces the summary's (selfplay's clock starts after the imports and stops
            # before the final save; under torchrun it is rank 0's alone, without the launch)
            rows[name] = {**last, "wall_s": round(time.perf_counter() - t, 1)}
    keys = [k for k in rows[name] if k.startswith(("sft_", "final_"))]
    print(f"{'':<24}{'wall s':>8}" + "".join(f"{k:>17}" for k in keys))
    for name, r in rows.items():
        print(f"{name:<24}{r['wall_s']:8.1f}" + "".join(f"{100 * r[k]:16.1f}%" for k in keys))
    one, two, single = rows.values()
    speedup, ceiling = one["wall_s"] / two["wall_s"], 2 * one["wall_s"] / single["wall_s"]
    print(f"2 ranks: {speedup:.2f}x the speed of one process on 2 threads; at most {ceiling:.2f}x (half the 1-thread time)")
    return {"runs": rows, "speedup": speedup, "ceiling": ceiling}
