"""Exercise checks of notebook 07 prioritized replay (notebooks/07_prioritized_replay.ipynb)."""

from __future__ import annotations

import numpy as np

from nanoo1.exercises._common import _Case, _numbers, _run, _callable


def check_sum_tree(tree_cls) -> bool:
    """`tree_cls(capacity, op, neutral)` with update(indices, values), root() and, for a sum tree,
    find_prefix(mass) -> the leaf i with cumsum[i-1] <= mass < cumsum[i], as nanoo1.replay.SegmentTree."""
    _callable(tree_cls, "check_sum_tree")

    def tree(op, neutral, values, *updates):
        tr = tree_cls(5, op, neutral)
        tr.update(np.arange(5), np.array(values, dtype=np.float64))
        for idx, vals in updates:
            tr.update(np.array(idx), np.array(vals, dtype=np.float64))
        return tr

    leaves = [1.0, 0.0, 3.0, 2.0, 4.0]  # cumulative sums 1, 1, 4, 6, 10; leaf 1 is empty
    masses = np.array([0.0, 0.99, 1.0, 3.99, 4.0, 5.5, 6.0, 9.99])
    return _run("sum tree", [
        _Case("a sum tree over [1, 0, 3, 2, 4] (root)", lambda: tree(np.add, 0.0, leaves).root(), 10.0,
              hint="every inner node holds op(left child, right child); the root is node 1"),
        _Case("find_prefix([0, .99, 1, 3.99, 4, 5.5, 6, 9.99])", lambda: tree(np.add, 0.0, leaves).find_prefix(masses),
              [0, 0, 2, 2, 3, 3, 4, 4], tol=0,
              hint="go right when mass >= the left child's sum, subtracting it; an empty leaf is never chosen"),
        # leaf 4 set to 0: total 6
        _Case("after update([4], [0]) (root)", lambda: tree(np.add, 0.0, leaves, ([4], [0.0])).root(), 6.0,
              hint="after changing a leaf, recompute every ancestor up to the root"),
        _Case("after update([4], [0]), find_prefix([5.99, 6.0])", lambda: tree(np.add, 0.0, leaves, ([4], [0.0])).find_prefix(np.array([5.99, 6.0])),
              [3, 3], tol=0, hint="a mass at the total (float rounding) must still land on a leaf with positive value"),
        _Case("a min tree over [3, 1.5, 2, 7, 5]", lambda: tree(np.minimum, np.inf, [3.0, 1.5, 2.0, 7.0, 5.0]).root(), 1.5,
              hint="padding leaves (capacity 5 -> 8 leaves) hold `neutral`"),
        _Case("the min tree after update([1], [9])", lambda: tree(np.minimum, np.inf, [3.0, 1.5, 2.0, 7.0, 5.0], ([1], [9.0])).root(), 2.0),
        _Case("a max tree over [3, 1.5, 2, 7, 5] after update([3], [0])",
              lambda: tree(np.maximum, -np.inf, [3.0, 1.5, 2.0, 7.0, 5.0], ([3], [0.0])).root(), 5.0),
    ])


def check_replay_sample(replay_cls) -> bool:
    """`replay_cls(capacity, alpha=..., eps=...)` with extend(items, priorities) and sample(batch_size, beta,
    generator) -> (items, indices, weights), as nanoo1.replay.PrioritizedReplay: stratified draws in
    proportion to p^alpha, weights (N P(i))^-beta divided by the largest weight any item in the buffer can get."""
    _callable(replay_cls, "check_replay_sample")

    def draw(priorities, batch_size, beta, capacity=4):
        buf = replay_cls(capacity, alpha=0.5, eps=1e-12)
        buf.extend(list("abcd"[: len(priorities)]), priorities)
        return buf.sample(batch_size, beta, generator=np.random.default_rng(0))

    def counts(beta=1.0):
        return np.bincount(np.asarray(draw([1.0, 4.0, 9.0], 60, beta)[1]).astype(np.int64), minlength=4)

    def weight_of_each(priorities, beta, batch_size=60):
        _, idx, w = draw(priorities, batch_size, beta)
        idx, w = np.asarray(idx).astype(np.int64), _numbers(w)
        return [w[np.flatnonzero(idx == i)[0]].item() for i in range(3)]  # items 0, 1, 2 (each is drawn)

    def coin(seed):  # one draw from two equal priorities with a generator seeded `seed`: a fair coin
        buf = replay_cls(4, alpha=0.5, eps=1e-12)
        buf.extend(["a", "b"], [1.0, 1.0])
        return int(np.asarray(buf.sample(1, 1.0, generator=np.random.default_rng(seed))[1]).reshape(-1)[0])

    def seeds_reach():
        drawn = {coin(seed) for seed in range(20)}
        return "both items" if drawn == {0, 1} else f"only item {sorted(drawn)}"

    def repeatable():
        return "same draws" if [coin(s) for s in range(20)] == [coin(s) for s in range(20)] else "different draws"

    def items_match():
        items, idx, _ = draw([1.0, 4.0, 9.0], 60, 1.0)
        return "match" if list(items) == ["abc"[i] for i in np.asarray(idx).astype(np.int64)] else "mismatch"

    # alpha .5: p^alpha = 1, 2, 3 (total 6); P = 1/6, 2/6, 3/6; N = 3 items (slot 3 of 4 is empty)
    return _run("replay sample", [
        # 60 equal slices of 0.1 mass: item 0 covers 10 of them, item 1 20, item 2 30
        _Case("priorities [1, 4, 9], alpha .5: counts in a batch of 60", counts, [10, 20, 30, 0], tol=1,
              hint="stratified: cut the total mass into batch_size equal slices, draw one point in each, find its leaf"),
        _Case("the items returned", items_match, "match", hint="items[k] must be the item at indices[k]"),
        _Case("batch 1 from priorities [1, 1], generators seeded 0..19", seeds_reach, "both items",
              hint="draw the point in each slice at random, from the given generator"),
        _Case("two generators with the same seed", repeatable, "same draws",
              hint="draw with the given generator, not numpy's global one"),
        # beta 1: (N P)^-1 = 2, 1, 2/3; divided by the largest, 2: 1, .5, .3333333
        _Case("the weight of each item at beta 1", lambda: weight_of_each([1.0, 4.0, 9.0], 1.0), [1.0, 0.5, 1 / 3],
              hint="w_i = (N P(i))^-beta, then divide by the largest possible weight"),
        # beta .4: (N P)^-.4 = 2^.4 = 1.3195079, 1, (2/3)^.4 = .8502; over 1.3195079: 1, .7578583, .6443940
        _Case("the weight of each item at beta .4", lambda: weight_of_each([1.0, 4.0, 9.0], 0.4), [1.0, 0.7578583, 0.6443940]),
        _Case("the weight of each item at beta 0", lambda: weight_of_each([1.0, 4.0, 9.0], 0.0), [1.0, 1.0, 1.0]),
        # a 4th item with priority 1e-6 (p^alpha = .001) is rarely drawn but still sets the normaliser:
        # w_i = (p_i^alpha / .001)^-1 = .001 / (1, 2, 3)
        _Case("priorities [1, 4, 9, 1e-6], beta 1 (items 0..2)", lambda: weight_of_each([1.0, 4.0, 9.0, 1e-6], 1.0, 30),
              [1e-3, 5e-4, 1e-3 / 3], tol=1e-7,
              hint="normalise by the largest weight in the buffer (its smallest priority), not in the batch"),
    ])
