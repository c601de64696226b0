"""Exercise checks of notebook 08 rStar (notebooks/08_rstar.ipynb)."""

from __future__ import annotations

import torch

from nanoo1.exercises._common import _Case, _run, _callable, _first
from nanoo1.thoughts import Tree  # a plain data structure: the checks build their inputs with it


def check_parse_step(parse_step) -> bool:
    """`parse_step(generated) -> (comment, code) | None` as nanoo1.rstar.parse_step: a step is a `#` comment line,
    at least one line of code, then `<end_of_step>`; the comment loses its `#` and surrounding spaces, the code
    its trailing blank lines; whatever follows the delimiter (an observation) is ignored; anything else is None."""
    _callable(parse_step, "check_parse_step")

    def parsed(text):
        return lambda: repr(parse_step(text))

    return _run("parse_step", [
        _Case("'# Step 1: She buys 5 more.\\nx1 = 7 + 5\\n<end_of_step>'",
              parsed("# Step 1: She buys 5 more.\nx1 = 7 + 5\n<end_of_step>"), repr(("Step 1: She buys 5 more.", "x1 = 7 + 5")),
              hint="return (comment without '# ', code) as a tuple of two strings"),
        _Case("the same followed by '\\n<output>12</output>'",
              parsed("# Step 1: She buys 5 more.\nx1 = 7 + 5\n<end_of_step>\n<output>12</output>"),
              repr(("Step 1: She buys 5 more.", "x1 = 7 + 5")), hint="ignore what follows <end_of_step>"),
        _Case("two lines of code", parsed("# add\na = 1\nb = a + 2\n<end_of_step>"), repr(("add", "a = 1\nb = a + 2")),
              hint="the code is every line after the comment, joined by '\\n'"),
        _Case("a leading newline and a blank line before the delimiter", parsed("\n#  c \nx = 1\n\n<end_of_step>"),
              repr(("c", "x = 1")), hint="strip newlines around the body, spaces around the comment, trailing blank lines of the code"),
        _Case("indented code with a blank line inside", parsed("# loop\nfor i in range(3):\n    x = i\n\ny = x\n<end_of_step>"),
              repr(("loop", "for i in range(3):\n    x = i\n\ny = x")),
              hint="keep the code's lines as written (indentation is Python); only trailing blank lines go"),
        _Case("no <end_of_step> (cut at the token limit)", parsed("# Step 1: add\nx1 = 7 + 5\n"), "None",
              hint="a step not closed by <end_of_step> is not a step"),
        _Case("no comment line", parsed("x1 = 7 + 5\n<end_of_step>"), "None", hint="the first line must start with '#'"),
        _Case("a comment and no code", parsed("# Step 1: think hard\n<end_of_step>"), "None",
              hint="a step needs at least one line of code"),
        _Case("a comment and a blank line", parsed("# Step 1: think hard\n   \n<end_of_step>"), "None"),
    ])


def _searched_code_tree():
    """A searched tree with Q values (node.value) and terminals, ids in the comments:

        root 0 ─ s1 (Q .6) ─ t10 success, t11 failure       s5 (Q -.8) ─ t14 failure
               ├ s2 (Q .2) ─ x12 (Q .3) ─ t13 success        s6 (Q -.1) ─ t15, t16 failure
               ├ s3 (Q .9, itself a success)                s7 (no Q, itself a failure)
               ├ s4 (Q -.5, itself a failure)               s8 (Q -.9) ─ t17 success, t18 failure
                                                            s9 (Q .99, never expanded)
    """
    tree = Tree("Q")
    top = {}
    for i, (q, terminal) in enumerate([(0.6, None), (0.2, None), (0.9, "success"), (-0.5, "failure"), (-0.8, None),
                                       (-0.1, None), (None, "failure"), (-0.9, None), (0.99, None)], start=1):
        top[i] = tree.add(tree.root, "<expansion>", f"s{i}", value=q, terminal=terminal)
    tree.add(top[1], "<conclusion>", "t10", value=1.0, terminal="success")
    tree.add(top[1], "<conclusion>", "t11", value=-1.0, terminal="failure")
    x = tree.add(top[2], "<expansion>", "x12", value=0.3)
    tree.add(x, "<conclusion>", "t13", value=1.0, terminal="success")
    tree.add(top[5], "<conclusion>", "t14", value=-1.0, terminal="failure")
    tree.add(top[6], "<conclusion>", "t15", value=-1.0, terminal="failure")
    tree.add(top[6], "<conclusion>", "t16", value=-1.0, terminal="failure")
    tree.add(top[8], "<conclusion>", "t17", value=1.0, terminal="success")
    tree.add(top[8], "<conclusion>", "t18", value=-1.0, terminal="failure")
    return tree


def check_preference_pairs(preference_pairs) -> bool:
    """`preference_pairs(tree, per_side=2) -> [(positive, negative), ...]` as nanoo1.ppm.preference_pairs: per
    parent, the per_side children with the highest Q (.value) among those with a "success" terminal in their
    subtree (themselves included), each paired with the per_side children with the lowest Q among those whose
    subtree has "failure" terminals and no success. Children without a value are skipped. The pairs are
    compared as sorted (positive id, negative id). (nanoo1's also counts nodes whose paths read the same as one
    step, a step sampled twice and what grew below its copies; the check's tree has no such copies.)"""
    _callable(preference_pairs, "check_preference_pairs")

    def pairs(per_side=None):
        tree = _searched_code_tree()
        out = preference_pairs(tree) if per_side is None else preference_pairs(tree, per_side)
        return sorted([p.id, n.id] for p, n in out)

    # root: positives by Q: s3 .9, s1 .6, s2 .2, s8 -.9 (a success below it counts); s9 reached no terminal
    #       negatives by Q: s5 -.8, s4 -.5, s6 -.1 (s7 has no Q);  s1: t10 vs t11;  s8: t17 vs t18
    return _run("preference_pairs", [
        _Case("the tree in nanoo1.exercises._searched_code_tree, per_side=2 (default)", lambda: pairs(),
              [[1, 4], [1, 5], [3, 4], [3, 5], [10, 11], [17, 18]],
              hint="positives: a success anywhere below (the node itself included); negatives: failures below and no success"),
        _Case("per_side=1", lambda: pairs(1), [[3, 5], [10, 11], [17, 18]],
              hint="the best positive is the one with the highest Q, the best negative the one with the lowest"),
        _Case("per_side=4", lambda: pairs(4), [[p, n] for p in (1, 2, 3, 8) for n in (4, 5, 6)] + [[10, 11], [17, 18]],
              hint="s8 has a success below it, so it is a positive (with a low Q), never a negative; s9 reached no terminal"),
    ])


def check_ppm_pair_loss(ppm_pair_loss) -> bool:
    """`ppm_pair_loss(r_pos, r_neg)` as nanoo1.ppm.ppm_pair_loss (rStar-Math sec. 3.3, Bradley-Terry):
    -mean over pairs of log sigmoid(r_pos - r_neg), for scores (P,)."""
    _callable(ppm_pair_loss, "check_ppm_pair_loss")
    t = torch.tensor

    def grad():
        r_pos = t([0.0, 2.0, 0.0], requires_grad=True)
        _first(ppm_pair_loss(r_pos, t([0.0, 0.0, 1.0]))).backward()
        return r_pos.grad

    # differences d = (0, 2, -1): -log sigmoid(d) = log(1 + e^-d) = (.6931472, .1269280, 1.3132617), mean .7111123
    return _run("ppm_pair_loss", [
        _Case("r_pos [0, 2, 0], r_neg [0, 0, 1]", lambda: ppm_pair_loss(t([0.0, 2.0, 0.0]), t([0.0, 0.0, 1.0])), 0.7111123,
              hint="-log sigmoid(r_pos - r_neg), averaged over the pairs (the positive's score comes first)"),
        # d loss / d r_pos = -sigmoid(-d) / 3 = -(.5, .1192029, .7310586) / 3
        _Case("the gradient with respect to r_pos", grad, [-0.1666667, -0.0397343, -0.2436862],
              hint="pairs the model already orders right (large d) get little gradient"),
        _Case("r_pos [.5], r_neg [.5] (a tie)", lambda: ppm_pair_loss(t([0.5]), t([0.5])), 0.6931472),  # log 2
        # d = -120: log(1 + e^120) = 120 (to float precision); sigmoid(-120) is 0 in float32, so log(sigmoid) is -inf
        _Case("r_pos [-60], r_neg [60]", lambda: ppm_pair_loss(t([-60.0]), t([60.0])), 120.0, tol=1e-4,
              hint="compute log sigmoid in one stable step (F.logsigmoid), not log(sigmoid(d))"),
    ])
