"""Prioritized experience replay (Schaul et al. 2016, "Prioritized Experience Replay").

An item i is drawn with probability (eq. 1)

    P(i) = p_i^alpha / sum_k p_k^alpha,      p_i = |delta_i| + eps

and its loss term is scaled by the importance-sampling weight (section 3.4)

    w_i = (N * P(i))^-beta / max_j w_j  =  (p_i^alpha / min_k p_k^alpha)^-beta

so the rarest item in the buffer has weight 1 and every other weight is <= 1. beta is annealed from
beta0 to 1 over training (`beta_by_step`). New items enter with the largest priority in the buffer, so
each is likely to be replayed soon after it arrives.

Three array-backed segment trees over p^alpha give the total (sampling), the minimum (the weight
normaliser) and the maximum (the priority of a new item) in O(1), and each update in O(log N).
"""

import math
import os
import pickle
import reprlib
import zipfile

import numpy as np
import torch

from nanoo1.files import atomic_write

_FORMAT = "nanoo1.replay"
_VERSION = 1


class SegmentTree:
    """A complete binary tree over `capacity` leaves whose inner nodes hold op(left, right).

    Stored in one array: the root is node 1, node k has children 2k and 2k+1, and leaf i is node
    n_leaves + i, where n_leaves is capacity rounded up to a power of two. The padding leaves hold
    `neutral`, so they never change a reduction (0 for a sum, +inf for a min, -inf for a max).
    """

    def __init__(self, capacity: int, op: np.ufunc, neutral: float):
        self.capacity = capacity
        self.op = op
        self.n_leaves = 1 << max(capacity - 1, 0).bit_length()
        self.tree = np.full(2 * self.n_leaves, neutral, dtype=np.float64)

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaves `indices` to `values` and recompute their ancestors, one numpy call per level.

        Parents are recomputed from their children rather than patched with a difference, so the
        float sums never drift. Indices must be distinct (the caller deduplicates).
        """
        node = np.asarray(indices, dtype=np.int64) + self.n_leaves
        self.tree[node] = values
        while node[0] > 1:
            # every leaf sits at the same depth, so `node` stays within one level of the tree;
            # repeated parents compute the same value, so duplicates here are harmless
            node = node >> 1
            self.tree[node] = self.op(self.tree[2 * node], self.tree[2 * node + 1])

    def root(self) -> float:
        """op over all leaves."""
        return float(self.tree[1])

    def leaves(self, n: int | None = None) -> np.ndarray:
        """The first n leaf values (all `capacity` by default)."""
        return self.tree[self.n_leaves : self.n_leaves + (self.capacity if n is None else n)]

    def find_prefix(self, mass: np.ndarray) -> np.ndarray:
        """For a sum tree: the leaf i with cumsum[i-1] <= mass < cumsum[i], for each mass at once.

        The walk turns right only into a subtree that holds mass, so a value pushed past the total by
        rounding still lands on a leaf with a positive value, never on an empty or padding leaf.
        """
        if self.op is not np.add:
            raise ValueError(f"find_prefix needs a sum tree, this tree reduces with {self.op.__name__}")
        mass = np.array(mass, dtype=np.float64)  # a copy: the walk subtracts from it
        node = np.ones(mass.shape, dtype=np.int64)
        for _ in range(self.n_leaves.bit_length() - 1):  # one level per step, root to leaves
            left = 2 * node
            go_right = (mass >= self.tree[left]) & (self.tree[left + 1] > 0)
            mass = np.where(go_right, mass - self.tree[left], mass)
            node = left + go_right
        return node - self.n_leaves


def beta_by_step(step: int, total: int, beta0: float = 0.4) -> float:
    """The IS exponent annealed linearly from beta0 at step 0 to 1 at step `total` (and after)."""
    if total <= 0:
        raise ValueError(f"beta_by_step: total must be positive, got {total}")
    if step < 0:
        raise ValueError(f"beta_by_step: step must be >= 0, got {step}")
    return beta0 + (1.0 - beta0) * min(step / total, 1.0)


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class PrioritizedReplay:
    """A fixed-capacity ring of items sampled in proportion to p^alpha (Schaul et al. 2016).

    Items are any Python objects (dicts of tensors and lists, typically). When the buffer is full a new
    item overwrites the oldest slot. Indices returned by `sample` are slot numbers; pass them back to
    `update_priorities` unchanged. Memory follows the items held, not the capacity: the item list and
    the trees double as items arrive, up to `capacity` slots.
    """

    def __init__(self, capacity: int, alpha: float = 0.6, eps: float = 1e-6, seed: int = 0):
        if capacity <= 0:
            raise ValueError(f"PrioritizedReplay: capacity must be positive, got {capacity}")
        if not 0 <= alpha < math.inf:
            raise ValueError(f"PrioritizedReplay: alpha must be finite and >= 0, got {alpha}")
        if not 0 < eps < math.inf:
            raise ValueError(f"PrioritizedReplay: eps must be > 0 (it keeps every P(i) > 0), got {eps}")
        self.capacity = capacity
        self.alpha = alpha
        self.eps = eps
        self.rng = np.random.default_rng(seed)
        self.items: list = []  # one entry per tree leaf (see _reserve); slots 0 .. size-1 hold the items
        self.size = 0  # slots in use
        self.next = 0  # slot the next `add` writes (the oldest item once the ring is full)
        self._reserve(1)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        if not 0 <= index < self.size:
            raise IndexError(f"PrioritizedReplay: index {index} out of range for {self.size} items")
        return self.items[index]

    def priorities(self) -> np.ndarray:
        """p_i^alpha for slots 0 .. len-1 (a copy)."""
        return self.sum_tree.leaves(self.size).copy()

    def _reserve(self, n: int) -> None:
        """Room for n slots: the trees and the item list grow to at least twice their size, at most
        `capacity`. The trees are rebuilt from the leaves held, so every sum is computed as before."""
        if n <= len(self.items):
            return
        n = min(self.capacity, max(n, 2 * len(self.items)))
        scaled = self.priorities() if self.size else None
        self.sum_tree = SegmentTree(n, np.add, 0.0)
        self.min_tree = SegmentTree(n, np.minimum, np.inf)
        self.max_tree = SegmentTree(n, np.maximum, -np.inf)
        self.items += [None] * (n - len(self.items))
        if self.size:
            self._write(np.arange(self.size), scaled)

    def _write(self, indices: np.ndarray, scaled: np.ndarray) -> None:
        for tree in (self.sum_tree, self.min_tree, self.max_tree):
            tree.update(indices, scaled)

    def add(self, item, priority: float | None = None) -> int:
        """Store `item` and return its slot. `priority` is |delta| as in `update_priorities`; by default
        the item gets the largest p^alpha now in the buffer (1.0 for the first item)."""
        return int(self.extend([item], None if priority is None else [priority])[0])

    def extend(self, items: list, priorities=None) -> np.ndarray:
        """`add` for a list of items at once (one tree update for all); returns the slots written.

        Without priorities every item gets the largest p^alpha in the buffer before the call. When more
        items than `capacity` arrive, only the last `capacity` of them stay, as with repeated `add`.
        """
        n = len(items)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        if priorities is None:
            scaled = np.full(n, self.max_tree.root() if self.size else 1.0)  # (n,)
        else:
            delta = _to_numpy(priorities).astype(np.float64).reshape(-1)  # (n,)
            if delta.size != n or not np.isfinite(delta).all():
                raise ValueError(f"PrioritizedReplay.extend: expected {n} finite priorities, got {delta}")
            scaled = (np.abs(delta) + self.eps) ** self.alpha  # (n,)
        self._reserve(min(self.size + n, self.capacity))  # until the ring is full, next == size
        slots = (self.next + np.arange(n)) % self.capacity  # (n,)
        keep = slice(max(n - self.capacity, 0), n)  # earlier items would be overwritten in this call
        for slot, item in zip(slots[keep], items[keep]):
            self.items[slot] = item
        self._write(slots[keep], scaled[keep])
        self.next = int((self.next + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)
        return slots[keep]

    def sample(self, batch_size: int, beta: float, generator=None):
        """Draw `batch_size` items by stratified sampling: the total mass is cut into batch_size equal
        slices and one point is drawn uniformly in each, then found by a prefix-sum walk of the tree.

        Returns (items, indices (B,) int64 tensor, weights (B,) float32 tensor). `generator` may be a
        numpy.random.Generator or a torch.Generator; by default the buffer's own seeded generator.
        An index can appear twice when one item holds more than a slice of the mass.
        """
        if self.size == 0:
            raise ValueError("PrioritizedReplay.sample: the buffer is empty; add items first")
        if batch_size <= 0:
            raise ValueError(f"PrioritizedReplay.sample: batch_size must be positive, got {batch_size}")
        if beta < 0:
            raise ValueError(f"PrioritizedReplay.sample: beta must be >= 0, got {beta}")
        if isinstance(generator, torch.Generator):
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64).numpy()
        else:
            u = (self.rng if generator is None else generator).random(batch_size)
        total = self.sum_tree.root()
        mass = (np.arange(batch_size) + u) * (total / batch_size)  # (B,) one point per slice
        indices = self.sum_tree.find_prefix(mass)  # (B,) never an empty slot: eps keeps every p > 0
        scaled = self.sum_tree.tree[indices + self.sum_tree.n_leaves]  # (B,) p_i^alpha
        # (N P(i))^-beta / (N P_min)^-beta: N and the total cancel, leaving a ratio of priorities
        weights = (scaled / self.min_tree.root()) ** -beta  # (B,)
        items = [self.items[i] for i in indices]
        return items, torch.from_numpy(indices), torch.from_numpy(weights).float()

    def update_priorities(self, indices, priorities) -> None:
        """Set p_i = |delta_i| + eps for exactly the slots `indices` (tensors, arrays or lists).

        When a slot repeats in `indices` the last priority given for it wins.
        """
        idx = _to_numpy(indices).astype(np.int64).reshape(-1)  # (B,)
        delta = _to_numpy(priorities).astype(np.float64).reshape(-1)  # (B,)
        if idx.shape != delta.shape:
            raise ValueError(f"update_priorities: {idx.size} indices but {delta.size} priorities")
        if idx.size == 0:
            return
        if idx.min() < 0 or idx.max() >= self.size:
            raise IndexError(f"update_priorities: indices must lie in [0, {self.size}), got {idx.min()}..{idx.max()}")
        if not np.isfinite(delta).all():
            raise ValueError(f"update_priorities: priorities must be finite, got {delta[~np.isfinite(delta)][:5]}")
        # keep the last occurrence of each slot: numpy leaves repeated fancy assignment unordered
        _, last_from_end = np.unique(idx[::-1], return_index=True)
        keep = idx.size - 1 - last_from_end
        self._write(idx[keep], (np.abs(delta[keep]) + self.eps) ** self.alpha)

    def state_dict(self) -> dict:
        """Everything `load` needs to continue exactly: settings, the items held, p^alpha, the generator."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "capacity": self.capacity,
            "alpha": self.alpha,
            "eps": self.eps,
            "size": self.size,
            "next": self.next,
            "items": self.items[: self.size],
            "priorities": torch.from_numpy(self.priorities()),  # p^alpha per slot
            "rng_state": self.rng.bit_generator.state,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the buffer to `path` atomically: a temp file in the same directory, flushed to disk,
        then renamed over `path`, so a crash leaves either the old file or the new one, never half."""
        atomic_write(path, lambda tmp: torch.save(self.state_dict(), tmp))

    @classmethod
    def load(cls, path: str | os.PathLike, weights_only: bool = True) -> "PrioritizedReplay":
        """Read a buffer written by `save`. With weights_only=True (the default) torch's restricted
        unpickler is used, which reads tensors, numbers, strings, lists, tuples and dicts; items of other
        types need weights_only=False, which runs arbitrary pickle code: only for files you trust."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such replay file")
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path}: not a replay file (expected the zip archive torch.save writes)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=weights_only)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: cannot unpickle it; if it holds items of types the weights_only "
                             f"unpickler rejects and you trust the file, pass weights_only=False ({e})") from e
        except Exception as e:  # torch raises RuntimeError, KeyError, EOFError... for a damaged file
            raise ValueError(f"{path}: not a readable replay file ({type(e).__name__}: {e})") from e
        cls._validate(path, state)
        buf = cls(state["capacity"], alpha=state["alpha"], eps=state["eps"])
        buf._reserve(state["size"])
        buf.size, buf.next = state["size"], state["next"]
        buf.items[: buf.size] = state["items"]
        if buf.size:
            buf._write(np.arange(buf.size), state["priorities"].numpy())
        buf.rng.bit_generator.state = state["rng_state"]
        return buf

    @staticmethod
    def _validate(path: str, state) -> None:
        """Check every key of a loaded state, and each against the others, before anything is built from it."""
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path}: not a {_FORMAT} file (expected a dict with format={_FORMAT!r})")
        if state.get("version") != _VERSION:
            raise ValueError(f"{path}: version {state.get('version')!r}, expected {_VERSION}")
        missing = {"capacity", "alpha", "eps", "size", "next", "items", "priorities", "rng_state"} - state.keys()
        if missing:
            raise ValueError(f"{path}: missing keys {sorted(missing)}")

        def bad(key: str, expected: str) -> ValueError:
            return ValueError(f"{path}: {key}={reprlib.repr(state[key])}, expected {expected}")

        cap, size, nxt, pri = state["capacity"], state["size"], state["next"], state["priorities"]
        if type(cap) is not int or cap < 1:  # type, not isinstance: bool is an int
            raise bad("capacity", "an integer >= 1")
        if type(size) is not int or not 0 <= size <= cap:
            raise bad("size", f"an integer in [0, {cap}]")
        if type(nxt) is not int or not 0 <= nxt < cap:
            raise bad("next", f"an integer in [0, {cap})")
        if size < cap and nxt != size:
            raise bad("next", f"{size} (the size) until the ring is full")
        if type(state["alpha"]) not in (int, float) or not 0 <= state["alpha"] < math.inf:
            raise bad("alpha", "a finite number >= 0")
        if type(state["eps"]) not in (int, float) or not 0 < state["eps"] < math.inf:
            raise bad("eps", "a finite number > 0")
        if not isinstance(state["items"], list) or len(state["items"]) != size:
            raise bad("items", f"a list of {size} items")
        if not isinstance(pri, torch.Tensor) or pri.dtype != torch.float64 or pri.shape != (size,):
            raise bad("priorities", f"a float64 tensor of shape ({size},)")
        if not (torch.isfinite(pri).all() and (pri > 0).all()):
            raise bad("priorities", "finite values > 0")
        try:
            np.random.PCG64(0).state = state["rng_state"]
        except Exception as e:  # numpy raises TypeError, ValueError or KeyError by what is wrong
            raise bad("rng_state", "the state of a numpy PCG64 generator") from e
