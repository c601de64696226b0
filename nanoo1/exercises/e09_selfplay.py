"""Exercise checks of notebook 09 self-play (notebooks/09_selfplay_end_to_end.ipynb)."""

from __future__ import annotations


from nanoo1.exercises._common import _Case, _run, _callable
from nanoo1.thoughts import Tree  # a plain data structure: the checks build their inputs with it


def _self_play_tree():
    """A searched tree for Mia (7 + 5 - 3 = 9), ids in the comments, terminals checked against 9:

        root 0 ─ 1 "7 + 5 = 12" ─ 3 success, 4 failure, 5 "12 - 3 = 9" (no terminal below), 6 failure
               ├ 2 "7 + 5 = 13" ─ 8 "13 - 4 = 9" ─ 10 success          9 failure
               └ 7 failure (a conclusion right away)
    """
    tree = Tree("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?")
    box = "The answer is \\boxed{{{}}}".format
    a1 = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    a2 = tree.add(tree.root, "<expansion>", "7 + 5 = 13")
    tree.add(a1, "<conclusion>", box(9), terminal="success")
    tree.add(a1, "<conclusion>", box(12), terminal="failure")
    tree.add(a1, "<expansion>", "12 - 3 = 9")
    tree.add(a1, "<conclusion>", box(15), terminal="failure")
    tree.add(tree.root, "<conclusion>", box(7), terminal="failure")
    c = tree.add(a2, "<expansion>", "13 - 4 = 9")
    tree.add(a2, "<conclusion>", box(10), terminal="failure")
    tree.add(c, "<conclusion>", box(9), terminal="success")
    return tree


def check_success_rates(success_rates) -> bool:
    """`success_rates(tree) -> {node id: rate}` as nanoo1.experience.success_rates: for every node with outcomes
    in its subtree, itself included, (successes + 1/2) / (outcomes + 1). An outcome (experience.outcomes) is a
    terminal node (.terminal "success" or "failure") other than the root with no terminal node above it: where
    a chain of the search ended. The trees checked here hold no terminal below another, so each of their
    terminals is an outcome. Nodes with no outcome below them get no entry."""
    _callable(success_rates, "check_success_rates")

    def rates(tree, ids):
        out = success_rates(tree)
        return [out[i] for i in ids]

    def keys(tree):
        return repr(sorted(success_rates(tree)))

    def single():
        tree = Tree("Q")
        tree.add(tree.root, "<conclusion>", "\\boxed{1}", terminal="success")
        return tree

    # terminals below each node (s = successes, n = all): root s 2 (3, 10) of n 6 (3, 4, 6, 7, 9, 10) -> 2.5/7
    # 1: s 1 of 3 (3, 4, 6) -> 1.5/4 = .375;  2: s 1 of 2 (9, 10) -> 1.5/3 = .5;  8: s 1 of 1 -> 1.5/2 = .75
    # a terminal counts for itself: success 1.5/2 = .75, failure .5/2 = .25
    return _run("success_rates", [
        _Case("nodes 0, 1, 2, 8 of the tree in nanoo1.exercises._self_play_tree", lambda: rates(_self_play_tree(), [0, 1, 2, 8]),
              [2.5 / 7, 0.375, 0.5, 0.75],
              hint="count every outcome in the node's subtree, however deep, then (s + 1/2) / (n + 1)"),
        _Case("the terminals 3, 4, 6, 7, 9, 10 of the same tree", lambda: rates(_self_play_tree(), [3, 4, 6, 7, 9, 10]),
              [0.75, 0.25, 0.25, 0.25, 0.25, 0.75], hint="a terminal's own outcome counts for it: (1 + 1/2) / 2 or (0 + 1/2) / 2"),
        _Case("the ids that get a rate", lambda: keys(_self_play_tree()), repr([0, 1, 2, 3, 4, 6, 7, 8, 9, 10]),
              hint="node 5 has no outcome below it: leave it out (an unjudged leaf is not a failure)"),
        _Case("root -> one success", lambda: rates(single(), [0, 1]), [0.75, 0.75]),
        _Case("a tree without terminals (the ids)", lambda: keys(Tree("Q")), "[]"),
    ])


def _lucky_tree():
    """Mia again (answer 9), successes 3, 6, 8, 10, 12; only 3 and 12 have every equation on their path right:

        root 0 ─ 1 "7 + 5 = 12" ─ 2 "12 - 3 = 9"  ─ 3 success, 8 "12 - 3 = 8, so the answer is 9" success
               │                ├ 9 "12 * 2 = 25" ─ 10 success
               │                └ 11 "12 / 4 = 3" ─ 12 success
               └ 4 "7 + 5 = 13" ─ 5 "13 - 4 = 9"  ─ 6 success
                                └ 7 failure
    """
    tree = Tree("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?")
    box = "The answer is \\boxed{9}"
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    b = tree.add(a, "<expansion>", "12 - 3 = 9")
    tree.add(b, "<conclusion>", box, terminal="success")
    wrong = tree.add(tree.root, "<expansion>", "7 + 5 = 13")
    tree.add(tree.add(wrong, "<expansion>", "13 - 4 = 9"), "<conclusion>", box, terminal="success")
    tree.add(wrong, "<conclusion>", "The answer is \\boxed{13}", terminal="failure")
    tree.add(b, "<conclusion>", "12 - 3 = 8, so the answer is \\boxed{9}", terminal="success")
    tree.add(tree.add(a, "<expansion>", "12 * 2 = 25"), "<conclusion>", box, terminal="success")
    tree.add(tree.add(a, "<expansion>", "12 / 4 = 3"), "<conclusion>", box, terminal="success")
    return tree


def check_relabel_lucky(relabel_lucky) -> bool:
    """`relabel_lucky(tree) -> int` as nanoo1.experience.relabel_lucky, for trees grown without a step checker:
    every "success" terminal whose chain (the thoughts below the root down to the leaf, tree.path(leaf)[1:])
    holds a wrong `a op b = c` equation (nanoo1.steps.equations_hold is False for some node's text) becomes a
    "failure"; returns how many. The question at the root is not checked."""
    _callable(relabel_lucky, "check_relabel_lucky")

    def single_success():
        tree = Tree("Mia has 7 apples. How many?")
        tree.add(tree.root, "<conclusion>", "The answer is \\boxed{7}", terminal="success")
        return tree

    def question_says():
        tree = Tree("Tom wrote 2 + 2 = 5 on the board. What is 3 + 4?")
        tree.add(tree.root, "<conclusion>", "3 + 4 = 7, so the answer is \\boxed{7}", terminal="success")
        return tree

    def after():
        tree = _lucky_tree()
        n = relabel_lucky(tree)
        return [n] + [{"success": 1, "failure": 0}.get(tree.node(i).terminal, -1) for i in (3, 6, 7, 8, 10, 12)]

    return _run("relabel_lucky", [
        # lucky: 6 (7 + 5 = 13 above it), 8 (12 - 3 = 8 in itself), 10 (12 * 2 = 25 above it)
        _Case("the tree in nanoo1.exercises._lucky_tree: [count, then 1 = success / 0 = failure for nodes 3, 6, 7, 8, 10, 12]",
              after, [3, 1, 0, 0, 0, 0, 1],
              hint="check every node below the root (tree.path(leaf)[1:]), the conclusion itself included; a failure "
                   "stays a failure and is not counted"),
        _Case("root -> a success without equations (count)", lambda: relabel_lucky(single_success()), 0),
        _Case("a question that states 2 + 2 = 5 -> a right success (count)", lambda: relabel_lucky(question_says()), 0,
              hint="the question at the root is not part of the chain: check tree.path(leaf)[1:]"),
    ])
