"""Exercise checks of notebook 04 MCTS (notebooks/04_mcts.ipynb)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from nanoo1.exercises._common import _Case, _run, _callable
from nanoo1.thoughts import Tree  # a plain data structure: the checks build their inputs with it


def _node(**fields):
    return SimpleNamespace(**{"value": None, "visits": 0, "prior": 1.0, "varentropy": 0.0, "parent": None, **fields})


def check_puct_score(puct_score) -> bool:
    """`puct_score(parent, child, c=1.4, varentropy_coef=0.0)` as nanoo1.mcts.puct_score (LLaMA-O1):
    V(child) + c * P(child) * sqrt(N(parent)) / (1 + N(child)) + varentropy_coef * varentropy(child).
    Nodes have .value, .visits, .prior, .varentropy."""
    _callable(puct_score, "check_puct_score")

    def score(n_parent, value, prior, visits, varentropy=0.0, **kw):
        return puct_score(_node(visits=n_parent), _node(value=value, prior=prior, visits=visits, varentropy=varentropy), **kw)

    return _run("puct_score", [
        # -.5 + 1.4 * .4 * sqrt(4) / (1 + 1) = -.5 + .56 = .06
        _Case("N(parent)=4, V=-.5, P=.4, N(child)=1", lambda: score(4, -0.5, 0.4, 1), 0.06,
              hint="V + c * P * sqrt(N_parent) / (1 + N_child), with c = 1.4 by default"),
        # -1 + 1 * .5 * sqrt(9) / (1 + 0) = .5
        _Case("N(parent)=9, V=-1, P=.5, N(child)=0, c=1", lambda: score(9, -1.0, 0.5, 0, c=1.0), 0.5,
              hint="an unvisited child divides by 1 + 0: it gets a large but finite bonus"),
        # sqrt(0) = 0: the value alone
        _Case("N(parent)=0, V=-.3, P=.9, N(child)=0", lambda: score(0, -0.3, 0.9, 0), -0.3),
        # .06 + .1 * 2 = .26
        _Case("N(parent)=4, V=-.5, P=.4, N(child)=1, varentropy 2, varentropy_coef .1",
              lambda: score(4, -0.5, 0.4, 1, varentropy=2.0, varentropy_coef=0.1), 0.26,
              hint="+ varentropy_coef * child.varentropy"),
        _Case("the same with varentropy_coef 0 (the default)", lambda: score(4, -0.5, 0.4, 1, varentropy=2.0), 0.06),
    ])


def check_uct_score(uct_score) -> bool:
    """`uct_score(parent, child, c=2.0)` as nanoo1.mcts.uct_score (rStar-Math eq. 1): Q/N + c sqrt(ln N(parent) / N(child)),
    where child.value already holds the mean Q/N; an unvisited child scores +inf."""
    _callable(uct_score, "check_uct_score")

    def score(n_parent, value, visits, **kw):
        return uct_score(_node(visits=n_parent), _node(value=value, visits=visits), **kw)

    return _run("uct_score", [
        # -.5 + 2 sqrt(ln 8 / 2) = -.5 + 2 sqrt(1.0397208) = -.5 + 2 * 1.0196670 = 1.5393340
        _Case("N(parent)=8, V=-.5, N(child)=2", lambda: score(8, -0.5, 2), 1.539334,
              hint="child.value is already the mean Q/N: do not divide it by the visits again"),
        # .4 + 2 sqrt(ln 20 / 5) = .4 + 2 sqrt(.5991465) = .4 + 2 * .7740455 = 1.9480910
        _Case("N(parent)=20, V=.4, N(child)=5", lambda: score(20, 0.4, 5), 1.948091,
              hint="the natural log of the parent's visits, divided by the child's, under the square root"),
        # ln 1 = 0: the value alone
        _Case("N(parent)=1, V=.25, N(child)=1, c=1", lambda: score(1, 0.25, 1, c=1.0), 0.25),
        # c = .5: .4 + .5 * .7740455 = .7870228
        _Case("N(parent)=20, V=.4, N(child)=5, c=.5", lambda: score(20, 0.4, 5, c=0.5), 0.7870228),
        _Case("an unvisited child (N(child)=0)", lambda: score(5, -1.0, 0), float("inf"),
              hint="every child is tried once before any is tried twice: return math.inf"),
    ])


def check_backup(backup) -> bool:
    """`backup(node, value, discount=0.9)` as nanoo1.mcts.backup: walking up to the root, each node gets
    visits += 1 and the running mean value += (v - value) / visits (a value of None counts as no estimate),
    with v multiplied by `discount` per level. Nodes have .parent, .visits, .value."""
    _callable(backup, "check_backup")

    def chain():
        root = _node()
        a = _node(parent=root, value=-0.2)  # the value head's estimate, replaced by the first backup
        b = _node(parent=a, value=math.log(0.5))
        return root, a, b

    def after(*backups):
        root, a, b = chain()
        c = _node(parent=a)  # b's sibling
        for who, value in backups:
            backup({"b": b, "c": c}[who], value, 0.9)
        return [[n.value for n in (b, a, root)], [n.visits for n in (b, a, root)]]

    def one_level(discount):
        leaf = _node(parent=_node(value=-1.0, visits=3), value=-1.0, visits=3)
        backup(leaf, 0.0, discount)
        return [leaf.value, leaf.parent.value]

    return _run("backup", [
        # b gets -1, a .9 * -1 = -.9, the root .81 * -1 = -.81; one visit each
        _Case("backup(b, -1) on root -> a -> b", lambda: after(("b", -1.0)), [[-1.0, -0.9, -0.81], [1, 1, 1]],
              hint="the node gets the value itself, its parent discount * value, the grandparent discount^2 * value"),
        # b: -1 + (-2 + 1) / 2 = -1.5;  a: -.9 + (-1.8 + .9) / 2 = -1.35;  root: -.81 + (-1.62 + .81) / 2 = -1.215
        _Case("backup(b, -1), then backup(b, -2)", lambda: after(("b", -1.0), ("b", -2.0)),
              [[-1.5, -1.35, -1.215], [2, 2, 2]], hint="a running mean: count the visit first, then V += (v - V) / N"),
        # then c (b's sibling) gets 0: a: -1.35 + (0 + 1.35) / 3 = -.9;  root: -1.215 + (0 + 1.215) / 3 = -.81
        _Case("then backup(c, 0) for b's sibling c", lambda: after(("b", -1.0), ("b", -2.0), ("c", 0.0)),
              [[-1.5, -0.9, -0.81], [2, 3, 3]], hint="only the nodes on the path from c to the root change"),
        # value -1 after 3 visits, v = 0: -1 + (0 + 1) / 4 = -.75 at both levels (0 * discount = 0)
        _Case("a node with V=-1 after 3 visits, backup(0, discount .5)", lambda: one_level(0.5), [-0.75, -0.75]),
    ])


def check_rectify(rectify) -> bool:
    """`rectify(tree, discount=0.9, reward_epsilon=1e-6)` as nanoo1.mcts.rectify (LLaMA-O1): every leaf (no
    children) has reward log 1 = 0 if its .terminal is "success", else log(reward_epsilon); each node's
    .rectified = the mean over the leaves below it (itself, for a leaf) of discount^(levels down) * reward."""
    _callable(rectify, "check_rectify")
    def rectified(first, discount=0.9, eps=1e-6):
        tree = Tree("Q")
        a = tree.add(tree.root, "<expansion>", "a", value=-5.0)
        tree.add(tree.root, "<expansion>", "b", value=-0.1)  # never expanded: a failed leaf
        for outcome in (first, {"success": "failure", "failure": "success"}[first]):
            tree.add(a, "<conclusion>", outcome, terminal=outcome, value=-1.0)
        rectify(tree, discount, eps)
        return [n.rectified for n in tree.nodes]  # root, a, b, a's two conclusions

    L = math.log(1e-6)  # -13.8155106
    # root -> a -> (success, failure), root -> b.  Leaves: success 0, failure L, b L.
    # a = mean(.9 * 0, .9 * L) = .45 L;  root = mean(.81 * 0, .81 * L, .9 * L) = .57 L
    return _run("rectify", [
        _Case("root -> a -> (failure, success), root -> b (unexpanded)", lambda: rectified("failure"),
              [0.57 * L, 0.45 * L, L, L, 0.0], hint="a leaf that is not a success (b was never expanded) gets log(reward_epsilon)"),
        _Case("the same with the success first", lambda: rectified("success"), [0.57 * L, 0.45 * L, L, 0.0, L],
              hint="a success's rectified value 0.0 is a value, not 'unset' (LLaMA-O1 tests `if not value`)"),
        # L = ln .01 = -4.6051702; a = mean(.5 * 0, .5 * L) = .25 L; root = mean(.25 * 0, .25 * L, .5 * L) = .25 L
        _Case("the same with discount .5 and reward_epsilon .01", lambda: rectified("success", 0.5, 0.01),
              [0.25 * math.log(0.01), 0.25 * math.log(0.01), math.log(0.01), 0.0, math.log(0.01)],
              hint="discount^levels: the reward of a leaf k levels below is multiplied by discount^k"),
    ])
