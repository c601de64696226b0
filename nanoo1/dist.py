"""Several processes on torch.distributed, launched by torchrun; one process alone needs none of it.

    torchrun --nproc_per_node 2 -m nanoo1.selfplay --tiny          # 2 processes on one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m nanoo1.selfplay ...

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them in a
process group (nccl on cuda, gloo on cpu). The recipe then follows nanochat's: each rank takes every
world-th problem (`shard`), searches it with generators seeded from the run seed and its rank
(`rank_seed`), and trains on its own experience; the gradients are summed across ranks (`sum_gradients`)
before every optimizer step, so the weights stay the same on every rank. Without torchrun (WORLD_SIZE
unset) the place is rank 0 of 1 and every function here returns its input untouched, so one process runs
the same code path.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from nanoo1.device import quiet_interrupts


@dataclass(frozen=True)
class Place:
    """Where this process is: its rank among `world` processes, and its rank on its own machine."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:  # rank 0 alone writes checkpoints, metrics and what is printed
        return self.rank == 0


_alone = False  # inside `on_main`'s call: rank 0 acts as one process


LAUNCHER = "NANOO1_LAUNCHER"  # the pid of a command that started its own ranks under torchrun (evolve --procs)


def launch(module: str, procs: int, argv: list[str]):
    """Run `python -m module *argv` as `procs` ranks under torchrun on this machine, one thread each unless
    OMP_NUM_THREADS says otherwise; the ranks end with this process (`end_with_launcher`), and an interrupt of it
    stops them and ends it in one line (`device.quiet_interrupts`), as in one process."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    quiet_interrupts()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ[LAUNCHER] = str(os.getpid())
    try:
        return torchrun(["--standalone", "--nproc_per_node", str(procs), "-m", module, *argv])
    except SignalException:  # Ctrl-C or SIGTERM, after torchrun has stopped the ranks: one line, as in a rank
        raise KeyboardInterrupt from None
    finally:
        del os.environ[LAUNCHER]


def end_with_launcher(poll: float = 1.0) -> None:
    """In a rank a command started itself: stop (SIGTERM, which unwinds as Ctrl-C does) once that command has died,
    as by SIGKILL, rather than run on alone. A daemon thread checks every `poll` seconds that this process's parent
    is still the command."""
    launcher = os.environ.get(LAUNCHER)
    if launcher is None:
        return

    def watch():
        while os.getppid() == int(launcher):
            time.sleep(poll)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="nanoo1-launcher-watch", daemon=True).start()


def place() -> Place:
    """This process's place: from torchrun's environment once `setup` has run, else rank 0 of 1."""
    if _alone or not (dist.is_available() and dist.is_initialized()):
        return Place()
    return Place(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


# how long a rank waits in a collective before the group aborts: rank 0 alone may train a tiny warm start on the
# CPU meanwhile (`on_main`, about 15 minutes on 2 cores), past nccl's default of 10 minutes
GROUP_TIMEOUT = timedelta(minutes=60)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group when there is one (WORLD_SIZE > 1): nccl on cuda, gloo on cpu.
    Returns the device of this rank (cuda:LOCAL_RANK for any cuda device, one GPU per process), also when the
    group exists already (an entry point joins it, then its run asks again)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if dist.is_initialized():
        return device
    if device.type == "cuda":
        torch.cuda.set_device(device)
    join("nccl" if device.type == "cuda" else "gloo")
    return device


def join(backend: str, **init) -> None:
    """init_process_group(backend, timeout=GROUP_TIMEOUT, **init) (torchrun's environment when `init` is empty;
    tests pass a file and ranks). torch 2.13: importing torch._dynamo once a process group exists (building a
    model on the meta device does it, through torch._compile) leaves references to the group that
    destroy_process_group does not drop, so the group's threads would outlive `finish`; imported before the group,
    it leaves none."""
    import torch._dynamo as _dynamo  # noqa: F401  (a name of its own: `import torch._dynamo` makes `torch` local)
    dist.init_process_group(backend, timeout=GROUP_TIMEOUT, **init)


def shard(items: list, p: Place) -> list:
    """This rank's share of `items`: every world-th one from its rank on (disjoint, together all of them)."""
    return items[p.rank::p.world]


def shard_by_size(sizes: list[float], p: Place) -> list[int]:
    """The indices of this rank's share of items of these sizes, the ranks' totals balanced: the largest first,
    each to the rank that holds least so far (of equals, the one with fewest items, then the lowest), so items of
    one size, 0 included, go round as in `shard`."""
    loads, counts, mine = [0.0] * p.world, [0] * p.world, []
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        r = min(range(p.world), key=lambda r: (loads[r], counts[r]))
        loads[r] += sizes[i]
        counts[r] += 1
        if r == p.rank:
            mine.append(i)
    return sorted(mine)


def share(n: int, p: Place) -> int:
    """This rank's part of n items split over the ranks (a step's minibatch): n // world, one more on the first
    n % world ranks, so the parts add up to n when n >= world; below that every rank still takes 1."""
    return max(1, n // p.world + (p.rank < n % p.world))


def rank_seed(seed: int, rank: int) -> int:
    """The seed of a rank's own generators: the run seed itself on rank 0, so one process is unchanged."""
    return seed + 1_000_003 * rank


def _wire() -> torch.device:
    """Where a tensor must be to be reduced: nccl reduces CUDA tensors only, gloo CPU ones."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def total(x) -> torch.Tensor:
    """x summed over ranks, as a tensor (e.g. the tokens or rows of the whole batch)."""
    t = torch.as_tensor(x).clone()
    if place().world > 1:
        t = t.to(_wire())
        dist.all_reduce(t)
    return t


def ratio(count, of) -> float:
    """count / of with both summed over ranks first (e.g. problems solved over problems searched): the whole set's
    figure, however unevenly the set was shared out; 0.0 when `of` is 0 everywhere."""
    count, of = total(torch.tensor([count, of], dtype=torch.float64)).tolist()
    return count / of if of else 0.0


def smallest(n: int) -> int:
    """The least of an integer over ranks (e.g. a number of steps every rank can take)."""
    if place().world == 1:
        return n
    t = torch.tensor(n, device=_wire())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t)


def largest(n: int) -> int:
    """The greatest of an integer over ranks (e.g. the steps all ranks take when some have fewer rows)."""
    return -smallest(-n)


def sum_gradients(params) -> None:
    """Sum every parameter's gradient over ranks (a rank without one adds zeros; one no rank has stays None).

    Why an explicit all-reduce and not DistributedDataParallel: each rank's loss is already its share of
    the whole batch's loss (normalised by the tokens or rows of all ranks together, `total`), so the
    summed gradient is exactly the one-process gradient of the whole batch; and ranks take different
    numbers of micro-batches (their chains differ in number and length), which DDP, reducing inside
    every backward pass, does not allow. Gradients are flattened into one buffer, one all-reduce."""
    if place().world == 1:
        return
    params = list(params)
    has = total(torch.tensor([q.grad is not None for q in params], dtype=torch.int32))
    params = [q for q, h in zip(params, has.tolist()) if h]
    if not params:
        return
    for q in params:
        if q.grad is None:
            q.grad = torch.zeros_like(q)
    flat = torch.cat([q.grad.reshape(-1).float() for q in params]).to(_wire())
    dist.all_reduce(flat)
    for q, g in zip(params, flat.split([q.numel() for q in params])):
        q.grad.copy_(g.view_as(q.grad))


def sum_stats(stats: dict) -> dict:
    """Scalar statistics summed over ranks (each rank's already weighted by its share of the batch)."""
    if place().world == 1:
        return stats
    keys = sorted(stats)
    t = total(torch.tensor([float(stats[k]) for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


def combine(metrics: dict, summed: tuple = ()) -> dict:
    """An iteration's metrics over ranks: the `summed` keys (counts) added, every other number averaged; a number
    the same on every rank (a figure the iteration already made the whole set's, e.g. its share solved, or a count
    of updates) is kept as it is, and an integer count stays an integer, as on one process."""
    if place().world == 1:
        return metrics
    keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
    ranks = list(zip(*gather([metrics[k] for k in keys])))  # per key, every rank's value
    return {**metrics, **{k: sum(vs) if k in summed else vs[0] if len(set(vs)) == 1 else sum(vs) / len(vs)
                          for k, vs in zip(keys, ranks)}}


def from_main(obj):
    """Rank 0's `obj` on every rank (e.g. the problems drawn for an iteration)."""
    if place().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn):
    """fn() run by rank 0 alone, as one process, its result sent to every rank. Inside it every function here
    acts as rank 0 of 1, so work rank 0 does for all (training a missing warm start) waits in no collective
    for ranks that are not in it."""
    global _alone
    result, outer = None, _alone
    if place().main:
        _alone = True
        try:
            result = fn()
        finally:
            _alone = outer
    return from_main(result)


def gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    if place().world == 1:
        return [obj]
    out = [None] * place().world
    dist.all_gather_object(out, obj)
    return out


def say(*args, **kwargs) -> None:
    """print on rank 0 alone (every rank of one run would print the same line)."""
    if place().main:
        print(*args, **kwargs)


def barrier() -> None:
    if place().world > 1:
        dist.barrier()


def finish() -> None:
    """Leave the process group (at the end of an entry point; nothing to do alone): every rank waits at a
    barrier for the others, then destroys the group, which stops its worker threads. They must be stopped
    before the interpreter exits: a gloo worker that releases a finished collective's tensors (allocated in
    Python) during the interpreter's finalization cannot take the GIL, and the process aborts (SIGABRT,
    "terminate called without an active exception"); `join` keeps torch from holding the group past the destroy."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_file(name: str, rank: int) -> str:
    """A per-rank file's name: rank 0 keeps `name` (a one-process run's checkpoint is unchanged); rank r
    writes e.g. replay.rank1.pt."""
    if rank == 0:
        return name
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.rank{rank}.{suffix}" if dot else f"{name}.rank{rank}"
