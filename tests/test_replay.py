import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from nanoo1 import replay
from nanoo1.replay import PrioritizedReplay, SegmentTree, beta_by_step

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:  # an item type torch's weights_only unpickler does not know
    reward: float


def filled(deltas, alpha=1.0, eps=1e-12, capacity=None):
    buf = PrioritizedReplay(capacity or len(deltas), alpha=alpha, eps=eps, seed=0)
    for k, d in enumerate(deltas):
        buf.add({"id": k}, priority=d)
    return buf


# ---------------------------------------------------------------- sum tree


@pytest.mark.parametrize("capacity", [1, 5, 8, 13])
def test_segment_trees_match_brute_force(capacity):
    rng = np.random.default_rng(0)
    trees = {op: SegmentTree(capacity, op, neutral) for op, neutral in
             [(np.add, 0.0), (np.minimum, np.inf), (np.maximum, -np.inf)]}
    values = np.zeros(capacity)
    for tree in trees.values():
        tree.update(np.arange(capacity), values)
    for _ in range(20):
        # integer values keep every sum exact, so the checks below can use ==
        idx = rng.choice(capacity, size=rng.integers(1, capacity + 1), replace=False)
        values[idx] = rng.integers(0, 10, size=idx.size)
        for tree in trees.values():
            tree.update(idx, values[idx])
        assert trees[np.add].root() == values.sum()
        assert trees[np.minimum].root() == values.min()
        assert trees[np.maximum].root() == values.max()
        np.testing.assert_array_equal(trees[np.add].leaves(), values)
        total = values.sum()
        if total == 0:
            continue
        # every boundary k and every midpoint k + 1/2 of the total mass
        mass = np.arange(0, total, 0.5)
        expected = np.searchsorted(np.cumsum(values), mass, side="right")
        np.testing.assert_array_equal(trees[np.add].find_prefix(mass), expected)
        # a point pushed past the total by rounding lands on the last leaf with mass, not on padding
        last_positive = np.flatnonzero(values)[-1]
        assert trees[np.add].find_prefix(np.array([total * (1 + 1e-12)]))[0] == last_positive


def test_find_prefix_needs_a_sum_tree():
    with pytest.raises(ValueError, match="sum tree"):
        SegmentTree(4, np.minimum, np.inf).find_prefix(np.array([0.5]))


# ---------------------------------------------------------------- sampling


def test_sampling_frequencies_chi_square():
    deltas = np.array([0.1, 0.5, 1.0, 2.0, 5.0])
    buf = filled(deltas, alpha=0.6, eps=1e-6)
    p = (deltas + 1e-6) ** 0.6
    probs = p / p.sum()  # eq. 1: about [0.070, 0.185, 0.281, 0.426, 0.738] / 1.70
    rng = np.random.default_rng(1)
    n = 20000
    counts = np.zeros(5)
    for _ in range(n):  # batches of one: plain proportional sampling, a multinomial
        _, idx, _ = buf.sample(1, beta=0.4, generator=rng)
        counts[idx.item()] += 1

    def chi2(probs):
        expected = n * probs
        return ((counts - expected) ** 2 / expected).sum()

    # 4 degrees of freedom, significance 0.001: critical value 18.467
    assert chi2(probs) < 18.467
    # the same counts reject sampling by p instead of p^alpha, so the test has power
    assert chi2(deltas / deltas.sum()) > 18.467


def test_stratified_batch_counts_are_close_to_expected():
    deltas = np.array([0.1, 0.5, 1.0, 2.0, 5.0])
    buf = filled(deltas, alpha=0.6, eps=1e-6)
    p = (deltas + 1e-6) ** 0.6
    B = 1000
    _, idx, _ = buf.sample(B, beta=0.4, generator=np.random.default_rng(0))
    counts = np.bincount(idx.numpy(), minlength=5)
    # one draw per slice: an item covering B*P(i) slices gets that many draws, give or take the two
    # slices at its ends; a multinomial batch would be off by about sqrt(B P) ~ 14
    assert np.all(np.abs(counts - B * p / p.sum()) < 2)


def test_importance_weights_hand_computed():
    # alpha 0.5: p^alpha = sqrt(1), sqrt(4), sqrt(9) = 1, 2, 3; P = 1/6, 2/6, 3/6; N = 3
    buf = filled([1.0, 4.0, 9.0], alpha=0.5)
    _, idx, w = buf.sample(60, beta=1.0)
    # beta 1: (N P)^-1 = 2, 1, 2/3; divided by the largest, 2: 1, 1/2, 1/3
    np.testing.assert_allclose(w.numpy(), np.array([1.0, 0.5, 1 / 3])[idx.numpy()], rtol=1e-6)
    assert set(idx.tolist()) == {0, 1, 2}
    _, idx, w = buf.sample(60, beta=0.4)
    # beta 0.4: 0.5^-0.4 = 1.31951, 1^-0.4 = 1, 1.5^-0.4 = 0.85028; over 1.31951: 1, 0.75786, 0.64439
    np.testing.assert_allclose(w.numpy(), np.array([1.0, 0.75786, 0.64439])[idx.numpy()], rtol=1e-4)
    assert w.dtype == torch.float32 and idx.dtype == torch.int64


def test_new_items_get_the_current_max_priority():
    buf = PrioritizedReplay(4, alpha=0.5, eps=1e-12)
    buf.add("a")
    assert buf.priorities()[0] == 1.0  # the first item gets 1.0
    buf.update_priorities([0], [9.0])  # sqrt(9) = 3
    buf.add("b")
    buf.add("c", priority=0.0)  # sqrt(1e-12) = 1e-6
    np.testing.assert_allclose(buf.priorities(), [3.0, 3.0, 1e-6], rtol=1e-9)


def test_sampling_is_reproducible_with_either_generator():
    buf = filled([1.0, 2.0, 3.0, 4.0])
    runs = [buf.sample(8, 0.5, generator=torch.Generator().manual_seed(3))[1] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    runs = [buf.sample(8, 0.5, generator=np.random.default_rng(3))[1] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    a, b = filled([1.0, 2.0, 3.0]), filled([1.0, 2.0, 3.0])  # same seed, own generators
    assert torch.equal(a.sample(5, 0.4)[1], b.sample(5, 0.4)[1])


def test_beta_schedule():
    assert beta_by_step(0, 100) == 0.4
    assert beta_by_step(50, 100) == pytest.approx(0.7)  # 0.4 + 0.6 * 0.5
    assert beta_by_step(100, 100) == 1.0
    assert beta_by_step(150, 100) == 1.0  # stays at 1 after the end
    assert beta_by_step(25, 100, beta0=0.5) == pytest.approx(0.625)  # 0.5 + 0.5 * 0.25
    with pytest.raises(ValueError, match="total"):
        beta_by_step(1, 0)


# ---------------------------------------------------------------- updates and the ring


def test_update_priorities_writes_exactly_the_given_rows():
    buf = filled([0.0] * 8, alpha=1.0)
    before = buf.priorities()
    buf.update_priorities(torch.tensor([5, 2]), torch.tensor([7.0, -3.0]))  # |delta| + eps
    expected = before.copy()
    expected[5], expected[2] = 7.0, 3.0
    np.testing.assert_allclose(buf.priorities(), expected, rtol=1e-9)
    assert buf.sum_tree.root() == pytest.approx(expected.sum())
    # a slot given twice takes the last priority
    buf.update_priorities([1, 1], [2.0, 4.0])
    assert buf.priorities()[1] == pytest.approx(4.0)

    # the training loop: sample, then write new priorities back to the sampled rows
    items, idx, _ = buf.sample(4, beta=0.4)
    assert [it["id"] for it in items] == idx.tolist()
    buf.update_priorities(idx, torch.full((4,), 100.0))
    untouched = np.setdiff1d(np.arange(8), idx.numpy())
    assert np.all(buf.priorities()[idx.numpy()] == pytest.approx(100.0))
    assert np.all(buf.priorities()[untouched] < 100.0)


def test_update_priorities_rejects_bad_input():
    buf = filled([1.0, 2.0, 3.0])
    with pytest.raises(IndexError, match=r"\[0, 3\)"):
        buf.update_priorities([3], [1.0])
    with pytest.raises(ValueError, match="2 indices but 1 priorities"):
        buf.update_priorities([0, 1], [1.0])
    with pytest.raises(ValueError, match="finite"):
        buf.update_priorities([0], [float("nan")])


def test_ring_overwrites_the_oldest():
    buf = PrioritizedReplay(3, alpha=1.0, eps=1e-12)
    for k, name in enumerate("abcde"):
        buf.add(name, priority=k + 1.0)
    # a->0, b->1, c->2, then d overwrites a in slot 0 and e overwrites b in slot 1
    assert len(buf) == 3
    assert [buf[i] for i in range(3)] == ["d", "e", "c"]
    np.testing.assert_allclose(buf.priorities(), [4.0, 5.0, 3.0])
    items, _, _ = buf.sample(300, beta=1.0)
    assert set(items) == {"c", "d", "e"}
    # extend with more items than capacity leaves the same state as one add per item
    other = PrioritizedReplay(3, alpha=1.0, eps=1e-12)
    other.extend(list("abcde"), priorities=[1.0, 2.0, 3.0, 4.0, 5.0])
    assert [other[i] for i in range(3)] == ["d", "e", "c"]
    np.testing.assert_allclose(other.priorities(), buf.priorities())
    assert other.next == buf.next == 2


def test_degenerate_inputs():
    buf = PrioritizedReplay(4, alpha=0.6, eps=1e-6)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2, beta=0.4)
    buf.extend(["a", "b", "c", "d"])
    buf.update_priorities([0, 1, 2, 3], [0.0, 0.0, 0.0, 0.0])  # every p = eps: uniform, weights 1
    _, idx, w = buf.sample(400, beta=1.0)
    assert torch.isfinite(w).all() and torch.all(w == 1.0)
    assert np.all(np.bincount(idx.numpy(), minlength=4) == 100)  # stratified over 4 equal masses
    with pytest.raises(ValueError, match="batch_size"):
        buf.sample(0, beta=0.4)
    with pytest.raises(ValueError, match="eps"):
        PrioritizedReplay(4, eps=0.0)


# ---------------------------------------------------------------- save and load


def test_save_load_round_trip(tmp_path):
    buf = PrioritizedReplay(5, alpha=0.5, eps=1e-3, seed=7)  # not the defaults 0.6, 1e-6: load must restore them
    for k in range(7):  # wraps the ring
        buf.add({"ids": torch.arange(k + 1), "rewards": [0.5 * k], "text": f"step {k}"}, priority=k)
    buf.sample(3, beta=0.4)  # move the generator away from its seed
    path = tmp_path / "replay.pt"
    buf.save(path)
    new = PrioritizedReplay.load(path)
    assert (len(new), new.next, new.capacity, new.alpha, new.eps) == (5, 2, 5, 0.5, 1e-3)
    np.testing.assert_array_equal(new.priorities(), buf.priorities())
    for i in range(5):
        assert torch.equal(new[i]["ids"], buf[i]["ids"]) and new[i]["text"] == buf[i]["text"]
    # the generator state travels too: both draw the same batch next
    assert torch.equal(new.sample(4, 0.5)[1], buf.sample(4, 0.5)[1])
    assert new.add("x") == buf.add("x") == 2


def test_save_is_atomic_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "replay.pt"
    buf = filled([1.0, 2.0], capacity=4)
    buf.save(path)
    buf.add({"id": 99})

    def crash(obj, tmp):  # the temp file's path (files.atomic_write)
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(replay.torch, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        buf.save(path)
    monkeypatch.undo()
    old = PrioritizedReplay.load(path)
    assert len(old) == 2 and old[1] == {"id": 1}
    assert os.listdir(tmp_path) == ["replay.pt"]  # the temp file was removed


def test_save_is_atomic_when_the_process_is_killed(tmp_path):
    path = tmp_path / "replay.pt"
    filled([1.0, 2.0], capacity=4).save(path)
    # a second process rewrites the file and dies the hard way after writing, before the rename
    script = (
        "import os, sys\n"
        "from nanoo1.replay import PrioritizedReplay\n"
        "buf = PrioritizedReplay(4)\n"
        "buf.extend([1, 2, 3, 4])\n"
        "os.fsync = lambda fd: os._exit(9)\n"
        "buf.save(sys.argv[1])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=120)
    assert proc.returncode == 9
    old = PrioritizedReplay.load(path)
    assert len(old) == 2 and old[0] == {"id": 0}


def test_load_rejects_bad_files(tmp_path):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(ValueError, match="other.pt: not a nanoo1.replay file"):
        PrioritizedReplay.load(other)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a replay file"):
        PrioritizedReplay.load(garbage)
    truncated = tmp_path / "truncated.pt"
    filled([1.0, 2.0]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(ValueError, match="truncated.pt: not a replay file"):
        PrioritizedReplay.load(truncated)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        PrioritizedReplay.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    state = filled([1.0, 2.0]).state_dict()
    state["priorities"] = torch.tensor([1.0])
    torch.save(state, bad)
    with pytest.raises(ValueError, match=r"bad.pt: priorities=.*expected a float64 tensor of shape \(2,\)"):
        PrioritizedReplay.load(bad)


def test_items_of_custom_types_need_weights_only_false(tmp_path):
    path = tmp_path / "steps.pt"
    buf = PrioritizedReplay(2)
    buf.add(Step(reward=1.5))
    buf.save(path)
    with pytest.raises(ValueError, match="steps.pt: .*weights_only=False"):
        PrioritizedReplay.load(path)
    assert PrioritizedReplay.load(path, weights_only=False)[0] == Step(reward=1.5)


def test_load_allocates_for_the_items_stored_not_the_capacity_claimed(tmp_path):
    path = tmp_path / "huge.pt"
    state = filled([1.0, 2.0], capacity=4).state_dict()
    state["capacity"] = 2**40  # 8 TiB of item slots and 48 TiB of trees, were they allocated up front
    torch.save(state, path)
    buf = PrioritizedReplay.load(path)
    assert (len(buf), buf.capacity, buf.next) == (2, 2**40, 2)
    held = [buf.sum_tree.tree.nbytes, buf.min_tree.tree.nbytes, buf.max_tree.tree.nbytes, 8 * len(buf.items)]
    assert sum(held) < 1024
    np.testing.assert_allclose(buf.priorities(), [1.0, 2.0])
    buf.extend(list(range(100)), priorities=np.ones(100))  # storage grows with what is added
    assert len(buf) == 102 and buf[101] == 99 and buf.sum_tree.root() == pytest.approx(103.0)
    assert sum(t.tree.nbytes for t in (buf.sum_tree, buf.min_tree, buf.max_tree)) < 16 * 1024
    assert len(PrioritizedReplay(2**40).items) <= 1  # a fresh buffer does not allocate its capacity either


@pytest.mark.parametrize("key, value, expected", [
    ("capacity", True, "expected an integer >= 1"),
    ("capacity", "4", "expected an integer >= 1"),
    ("size", -1, r"expected an integer in \[0, 4\]"),
    ("next", 1, r"expected 2 \(the size\) until the ring is full"),
    ("next", 4, r"expected an integer in \[0, 4\)"),
    ("alpha", float("nan"), "expected a finite number >= 0"),
    ("alpha", -1.0, "expected a finite number >= 0"),
    ("eps", 0.0, "expected a finite number > 0"),
    ("eps", "1e-6", "expected a finite number > 0"),
    ("items", "ab", "expected a list of 2 items"),
    ("items", [1], "expected a list of 2 items"),
    ("priorities", torch.tensor([1, 2]), r"expected a float64 tensor of shape \(2,\)"),
    ("priorities", [1.0, 2.0], r"expected a float64 tensor of shape \(2,\)"),
    ("priorities", torch.tensor([1.0, -2.0], dtype=torch.float64), "expected finite values > 0"),
    ("priorities", torch.tensor([1.0, float("inf")], dtype=torch.float64), "expected finite values > 0"),
    ("rng_state", {"bit_generator": "MT19937"}, "expected the state of a numpy PCG64 generator"),
    ("rng_state", "seed", "expected the state of a numpy PCG64 generator"),
])
def test_load_names_the_key_of_an_inconsistent_state(tmp_path, key, value, expected):
    path = tmp_path / "bad.pt"
    state = filled([1.0, 2.0], capacity=4).state_dict()
    state[key] = value
    torch.save(state, path)
    with pytest.raises(ValueError, match=rf"bad.pt: {key}=.*{expected}"):
        PrioritizedReplay.load(path)


def test_save_load_is_exact_through_wrapping_and_growth(tmp_path):
    """A loaded buffer and the original behave identically afterwards, bit for bit."""
    buf = PrioritizedReplay(100, alpha=0.5, eps=1e-3, seed=3)  # not the defaults: new priorities use the loaded ones
    buf.extend([{"k": k} for k in range(37)], priorities=np.linspace(0.1, 3.0, 37))
    buf.sample(8, beta=0.4)
    buf.save(tmp_path / "replay.pt")
    new = PrioritizedReplay.load(tmp_path / "replay.pt")
    for step in range(4):
        for b in (buf, new):
            b.extend([{"k": 100 * step + k} for k in range(29)], priorities=np.arange(29) * 0.37 + step)
            b.update_priorities([3, 50, 3], [9.0, 0.25, 4.0])
        (items_a, idx_a, w_a), (items_b, idx_b, w_b) = buf.sample(16, beta=0.7), new.sample(16, beta=0.7)
        assert items_a == items_b and torch.equal(idx_a, idx_b) and torch.equal(w_a, w_b)
        np.testing.assert_array_equal(buf.priorities(), new.priorities())
        assert (buf.sum_tree.root(), buf.min_tree.root(), buf.max_tree.root(), buf.next, len(buf)) == \
               (new.sum_tree.root(), new.min_tree.root(), new.max_tree.root(), new.next, len(new))
        assert [buf[i] for i in range(len(buf))] == [new[i] for i in range(len(new))]


def test_the_default_alpha_is_schauls_and_extend_returns_the_slots_it_kept():
    """alpha defaults to 0.6 (Schaul et al. 2016's proportional variant): |delta| 9 is kept as 9^0.6 = 3.7371928.
    `extend` with more items than the capacity returns the slots of the items it kept, the last `capacity`."""
    buf = PrioritizedReplay(4, eps=1e-12)
    buf.add("a")
    buf.update_priorities([0], [9.0])
    assert buf.priorities()[0] == pytest.approx(3.7371928, rel=1e-7)
    two = PrioritizedReplay(2)
    assert two.extend(["a", "b", "c"]).tolist() == [1, 0] and two.items == ["c", "b"]
