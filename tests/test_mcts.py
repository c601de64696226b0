"""MCTS: selection rules, backup and rectification by hand; search on a scripted fake; a real model end to end."""

import math
import re
from dataclasses import replace

import pytest

from conftest import ScriptedPolicy, decoy_script, path_key, random_model
from nanoo1.grow import judge
from nanoo1.mcts import MCTSConfig, backup, max_reward_path, mcts, puct_score, rectify, select_leaf, uct_score
from nanoo1.model import Gemma2Config
from nanoo1.policy import LMPolicy
from nanoo1.search import SearchConfig, search
from nanoo1.thoughts import Tree, parse_tree

QUESTION = "Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?"
# answer 15, and "15" occurs nowhere in the question
LEAK_QUESTION = ("Max has 8 pens. He gives 2 to Ivy. He splits them into 2 equal piles and keeps one pile. "
                 "Then he has 5 times as many. How many pens does Max have now?")
LOG_EPS = math.log(1e-6)  # -13.815511


def decoy_config(**overrides) -> MCTSConfig:
    return MCTSConfig(**{"num_candidates": 3, "max_children": 3, "patient": 1, "simulations": 20, **overrides})


# -- selection, backup, rectification by hand ----------------------------------------------------------
def test_puct_and_uct_scores_known_values():
    tree = Tree(QUESTION)
    child = tree.add(tree.root, "<expansion>", "x", value=-0.5, prior=0.4, visits=1, varentropy=2.0)
    tree.root.visits = 4
    # -0.5 + 1.4 * 0.4 * sqrt(4) / (1 + 1) = 0.06, plus 0.1 * varentropy 2.0 = 0.26
    assert puct_score(tree.root, child) == pytest.approx(0.06)
    assert puct_score(tree.root, child, varentropy_coef=0.1) == pytest.approx(0.26)
    tree.root.visits, child.visits = 8, 2
    # -0.5 + 2 * sqrt(ln 8 / 2) = -0.5 + 2 * sqrt(1.0397208) = 1.539334
    assert uct_score(tree.root, child) == pytest.approx(1.539334, abs=1e-6)
    # MCTSConfig's defaults: c = 2 for UCT (rStar-Math), 1.4 for PUCT
    assert MCTSConfig(selection="uct").score(tree.root, child) == pytest.approx(1.539334, abs=1e-6)
    assert MCTSConfig().score(tree.root, child) == pytest.approx(puct_score(tree.root, child, 1.4))
    child.visits = 0
    assert uct_score(tree.root, child) == math.inf  # rStar: every child is tried once


def test_select_leaf_descends_only_through_fully_expanded_nodes():
    tree = Tree(QUESTION)
    low = tree.add(tree.root, "<expansion>", "low", value=-1.0, prior=0.5)
    high = tree.add(tree.root, "<expansion>", "high", value=-0.1, prior=0.5)
    tree.root.visits = 1
    assert select_leaf(tree.root, MCTSConfig(max_children=3)) is tree.root  # room for more children
    assert select_leaf(tree.root, MCTSConfig(max_children=2)) is high  # -0.1 + 0.7 > -1.0 + 0.7
    tree.add(high, "<expansion>", "a", value=0.0)
    tree.add(high, "<expansion>", "b", value=0.0)
    high.terminal = "failure"  # a terminal is returned, never descended into or expanded
    assert select_leaf(tree.root, MCTSConfig(max_children=2)) is high
    assert low.children == []


def test_backup_is_a_discounted_running_mean():
    tree = Tree(QUESTION)
    a = tree.add(tree.root, "<expansion>", "a", value=-0.2)
    b = tree.add(a, "<expansion>", "b", value=math.log(0.5))
    backup(b, -1.0, 0.9)  # the first backup replaces the value head's estimate
    assert (b.value, a.value, tree.root.value) == pytest.approx((-1.0, -0.9, -0.81))
    backup(b, -2.0, 0.9)
    # b: -1 + (-2 + 1) / 2 = -1.5;  a: -0.9 + (-1.8 + 0.9) / 2 = -1.35;  root: -0.81 + (-1.62 + 0.81) / 2 = -1.215
    assert (b.value, a.value, tree.root.value) == pytest.approx((-1.5, -1.35, -1.215))
    assert (b.visits, a.visits, tree.root.visits) == (2, 2, 2)


@pytest.mark.parametrize("success_first", [True, False])
def test_rectify_known_values_and_a_success_zero_is_kept(success_first):
    tree = Tree(QUESTION)
    a = tree.add(tree.root, "<expansion>", "a", value=-5.0)
    b = tree.add(tree.root, "<expansion>", "b", value=-0.1)  # never expanded: a failed leaf
    outcomes = ["success", "failure"] if success_first else ["failure", "success"]
    leaves = {t: tree.add(a, "<conclusion>", t, terminal=t, value=-1.0) for t in outcomes}
    rectify(tree, discount=0.9, reward_epsilon=1e-6)
    # leaves: success log 1 = 0, failure log 1e-6 = L = -13.815511; b: L
    # a = mean(0.9 * 0, 0.9 * L) = 0.45 L = -6.216980 (LLaMA-O1: 0.0 reads as unset, a = 0.9 L if success came first)
    # root = mean(0.81 * 0, 0.81 * L, 0.9 * L) = 0.57 L = -7.874841
    assert leaves["success"].rectified == 0.0 and leaves["failure"].rectified == pytest.approx(LOG_EPS)
    assert b.rectified == pytest.approx(LOG_EPS)
    assert a.rectified == pytest.approx(0.45 * LOG_EPS)
    assert tree.root.rectified == pytest.approx(0.57 * LOG_EPS)
    assert [n.id for n in max_reward_path(tree)] == [0, a.id, leaves["success"].id]
    single = Tree(QUESTION)
    tree_success = single.add(single.root, "<conclusion>", "s", terminal="success", value=-3.0)
    rectify(single)
    assert single.root.rectified == 0.0 and tree_success.rectified == 0.0


def test_judge_terminals():
    tree = Tree(QUESTION)
    done = tree.add(tree.root, "<conclusion>", "The answer is \\boxed{9}", value=math.log(0.4))
    assert judge(done, "9", max_depth=8) == "success"  # training: the checker decides
    assert judge(done, "8", max_depth=8) == "failure"
    assert judge(done, None, max_depth=8) == "failure"  # test time: log 0.4 < log 0.5
    done.value = math.log(0.6)
    assert judge(done, None, max_depth=8) == "success"
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=0.0)
    assert judge(step, "9", max_depth=2) is None
    assert judge(tree.add(step, "<expansion>", "x"), "9", max_depth=2) == "failure"


def test_simulate_stops_a_chain_at_max_depth():
    from nanoo1.grow import simulate
    from nanoo1.policy import Request
    # a policy that only ever writes expansions: the chain ends at depth 2 (root, 2 thoughts)
    policy = ScriptedPolicy(lambda key: [("<expansion>", f"step {len(key)}", 0.5)], lambda key: 0.0)
    tree = Tree(QUESTION)
    (ends,), _ = simulate(policy, [Request(tree, tree.root, [None], [None])], max_depth=2)
    assert [n.depth for n in ends] == [2] and len(tree.nodes) == 3


def test_judge_at_test_time_succeeds_from_the_threshold_up():
    """Without a ground truth a conclusion succeeds when V >= success_threshold (default log 1/2): equal counts."""
    tree = Tree(QUESTION)
    at = tree.add(tree.root, "<conclusion>", "The answer is 9", value=math.log(0.5))
    assert judge(at, None, max_depth=8) == "success"
    assert judge(at, None, max_depth=8, success_threshold=math.log(0.5) + 1e-9) == "failure"


def test_expand_rates_positive_from_log_half_up_and_charges_every_token():
    """Two children valued log 0.5 (exactly the flip: "positive") and log 0.49 ("negative"); each thought is
    2 tokens (one word and <end_of_thought>), the prompt is charged once, and each value read costs its prompt's
    words."""
    from nanoo1.grow import expand
    from nanoo1.policy import Request

    values = {"<expansion>a": math.log(0.5), "<expansion>b": math.log(0.49)}
    policy = ScriptedPolicy(lambda key: [("<expansion>", "a", 0.6), ("<expansion>", "b", 0.4)],
                            lambda key: values[key[-1]])
    tree = Tree(QUESTION)
    (kids,), (spent,) = expand(policy, [Request(tree, tree.root, [None, None], [None, None])])
    assert [(k.text, k.rating) for k in kids] == [("a", "positive"), ("b", "negative")]
    assert spent.generated == 4 and spent.prompt == len(policy.prompts[0].split())
    assert spent.value == sum(len(p.split()) for p in policy.value_prompts)


class _EndingPolicy:
    """Writes one 3-token expansion per request (2 prompt tokens), marked terminal ("failure") at depth 2, as a
    policy that knows a step failed does; every value 0.0, read in 5 tokens. Records each request's temperature."""

    def __init__(self):
        self.temperatures = []

    def propose(self, requests):
        from nanoo1.policy import Candidate

        self.temperatures += [r.temperature for r in requests]
        return [[Candidate("<expansion>", f"s{r.node.depth + 1}", [1, 2, 3], [0.0] * 3, 1.0, prompt_tokens=2,
                           terminal="failure" if r.node.depth + 1 == 2 else None)] for r in requests]

    def evaluate(self, paths):
        return [0.0] * len(paths), [5] * len(paths)


def test_simulate_ends_a_chain_at_a_thought_the_policy_marked_terminal():
    """The chain s1 -> s2 ends at s2, marked terminal, far above max_depth 5; both rounds sample at the
    request's temperature 0.3; spent: 2 thoughts of 3 tokens, 2 prompts of 2 tokens, 2 value reads of 5."""
    from nanoo1.grow import simulate
    from nanoo1.policy import Request

    policy, tree = _EndingPolicy(), Tree(QUESTION)
    (ends,), (spent,) = simulate(policy, [Request(tree, tree.root, [None], [None], temperature=0.3)], max_depth=5)
    assert [(n.text, n.depth, n.terminal) for n in ends] == [("s2", 2, "failure")] and len(tree.nodes) == 3
    assert policy.temperatures == [0.3, 0.3]
    assert (spent.generated, spent.prompt, spent.value) == (6, 4, 10)


def test_add_chains_links_each_thought_under_the_one_before_it():
    """Rolled-out chains [1, 2, 3] and [4] under the root: 3 hangs under 2 under 1, 4 under the root; the chain
    ends are 3 and 4, and the 4 thoughts of 2 tokens each are charged to the request."""
    from nanoo1.grow import add_chains
    from nanoo1.policy import Candidate, Request

    tree = Tree(QUESTION)
    chain = lambda *ids: [Candidate("<expansion>", f"t{i}", [i, i], [0.0, 0.0], 1.0, node_id=i) for i in ids]
    (ends,), (spent,) = add_chains([Request(tree, tree.root, [None, None], [None, None])], [[chain(1, 2, 3), chain(4)]])
    assert [n.id for n in ends] == [3, 4]
    assert {n.id: n.parent.id for n in tree.nodes if n.parent is not None} == {1: 0, 2: 1, 3: 2, 4: 0}
    assert spent.generated == 8


def test_judge_fails_a_thought_its_step_checker_rejects():
    from nanoo1.steps import equations_hold

    tree = Tree(QUESTION)
    right = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=0.0)
    wrong = tree.add(tree.root, "<expansion>", "7 + 5 = 13", value=0.0)
    assert judge(right, "9", max_depth=8, verify=equations_hold) is None
    assert judge(wrong, "9", max_depth=8, verify=equations_hold) == "failure"
    assert judge(wrong, "9", max_depth=8) is None  # no checker: search may go on from it
    lucky = tree.add(wrong, "<conclusion>", "The answer is \\boxed{9}", value=0.0)  # right answer, 9 = 13 - 4
    assert judge(lucky, "9", max_depth=8, verify=lambda text: "boxed" not in text) == "failure"


@pytest.mark.parametrize("rollout", [False, True])
def test_mcts_verify_makes_rejected_thoughts_failed_terminals(rollout):
    script, value, _ = decoy_script()
    config = decoy_config(patient=100, simulations=10, rollout=rollout)
    (plain,) = mcts(ScriptedPolicy(script, value), [QUESTION], config, ["9"])
    assert any(n.text.startswith("wrong") and n.terminal is None for n in plain.tree.nodes)
    policy = ScriptedPolicy(script, value)  # fails the test if a terminal thought is expanded
    (checked,) = mcts(policy, [QUESTION], replace(config, verify=lambda text: not text.startswith("wrong")), ["9"])
    wrong = [n for n in checked.tree.nodes if n.text.startswith("wrong")]
    assert wrong and all(n.terminal == "failure" and n.value == LOG_EPS and not n.children for n in wrong)


def test_an_expansion_of_no_thought_is_refused_with_the_setting_named():
    for name in ("num_candidates", "max_children"):  # max() of no children, before
        with pytest.raises(ValueError, match=f"MCTSConfig.{name}=0, expected at least 1"):
            MCTSConfig(**{name: 0})


@pytest.mark.parametrize("rollout", [False, True])
def test_at_test_time_a_dead_end_is_a_failure_whatever_the_value_head_thinks_of_it(rollout):
    """No ground truth, no checker: a thought at max_depth that is no <conclusion> fails for certain, so it takes
    failure_value, not the value head's estimate (V = log .95 under the tempting first step, against log .55
    under the plain one, whose path concludes). Kept at log .95, the dead ends drew the simulations back to them
    (selection backs a terminal's value up again) and the search ended without an answer; only a conclusion is
    judged by its value."""
    def script(key):
        if not key:
            return [("<expansion>", "tempting", 0.5), ("<expansion>", "plain", 0.5)]
        if key[0].endswith("tempting"):
            return [("<expansion>", f"more {len(key)} a", 0.5), ("<expansion>", f"more {len(key)} b", 0.5)]
        if len(key) == 1:
            return [("<expansion>", "plain step a", 0.5), ("<expansion>", "plain step b", 0.5)]
        return [("<conclusion>", "The answer is \\boxed{9}", 0.5), ("<conclusion>", "The answer is \\boxed{9}!", 0.5)]

    def value(key):
        return math.log(0.95) if key[0].endswith("tempting") else math.log(0.55)

    config = MCTSConfig(num_candidates=2, max_children=2, max_depth=3, simulations=5, patient=99, rollout=rollout,
                        reward_epsilon=1e-6)
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], config)
    dead = [n for n in result.tree.nodes if n.terminal == "failure"]
    assert dead and all(n.meta == "<expansion>" and n.value == LOG_EPS for n in dead)
    tempting, plain = result.tree.root.children
    assert result.answer == "9" and plain.visits >= tempting.visits


@pytest.mark.parametrize("ground_truths", [["9"], None], ids=["training", "test time"])
def test_mcts_verify_checks_every_step_of_a_rolled_out_chain(ground_truths):
    steps = ("7 + 5 = 12", "12 - 3 = 9")

    def script(key):  # one path only: two steps, then the right answer
        return [("<expansion>", steps[len(key)], 1.0)] if len(key) < 2 else [("<conclusion>", "The answer is \\boxed{9}", 1.0)]

    config = decoy_config(simulations=2, num_candidates=1, max_children=1, rollout=True, patient=1)
    (plain,) = mcts(ScriptedPolicy(script, lambda key: math.log(0.9)), [QUESTION], config, ground_truths)
    end = plain.tree.nodes[3]
    assert end.meta == "<conclusion>" and end.terminal == "success" and plain.answer == "9"
    # the checker rejects the middle step, which the rollout wrote below the expanded thought: the chain's end fails
    checker = replace(config, verify=lambda text: text != steps[1])
    # a second simulation descends to the rejected step; ScriptedPolicy fails the test if it is expanded
    (checked,) = mcts(ScriptedPolicy(script, lambda key: math.log(0.9)), [QUESTION], checker, ground_truths)
    assert checked.simulations == 2 and len(checked.tree.nodes) == 4
    end = checked.tree.nodes[3]
    assert [n.text for n in checked.tree.path(end)[1:3]] == list(steps)
    assert end.terminal == "failure" and end.value == LOG_EPS and checked.successes == 0
    middle = checked.tree.path(end)[2]
    assert middle.terminal == "failure" and middle.value == LOG_EPS


# -- search on the scripted fake -----------------------------------------------------------------------
@pytest.mark.parametrize("ground_truths", [["9"], None], ids=["checker", "value"])
def test_mcts_finds_the_only_correct_path_where_greedy_does_not(ground_truths):
    script, value, correct = decoy_script()
    greedy = search(ScriptedPolicy(script, value), [QUESTION], SearchConfig(method="greedy"))[0]
    assert greedy.answer == "10"  # decoy, decoy, \boxed{9 + 1}
    # PUCT, c = 1.4, discount 0.9, k = 3. Simulation 1 expands the root: decoy V = log .95 = -0.051, wrong
    # log .2 = -1.609, step log .9 = -0.105. 2: root N = 1, children N = 0, score V + 1.4 P: decoy 1.069 >
    # step 0.315 > wrong -0.909; the decoy's children are all log .05, its value becomes 0.9 * -2.996 = -2.696.
    # 3: root N = 2: step -0.105 + 1.4 * .3 * sqrt 2 = 0.489 > wrong -0.619 > decoy -2.696 + 0.792 = -1.904.
    # 4: step (0.269) again, under it the next step (0.315 > decoy -0.489 > wrong -0.909): \boxed{9} is found.
    policy = ScriptedPolicy(script, value)
    (result,) = mcts(policy, [QUESTION], decoy_config(), ground_truths)
    assert (result.successes, result.simulations, result.answer) == (1, 4, "9")
    assert path_key(result.tree.path(result.tree.node(result.path[-1]))) == correct
    decoy = result.tree.node(1)
    assert decoy.text == "decoy step 0" and decoy.visits == 1 and all(not c.children for c in decoy.children)
    assert decoy.value == pytest.approx(0.9 * math.log(0.05))  # -2.696, discounted from its best child's log .05
    (short,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(simulations=3), ground_truths)
    assert short.successes == 0 and short.answer != "9"


@pytest.mark.parametrize("ground_truths,simulations", [(["9"], 11), (None, 8)], ids=["checker", "value"])
def test_mcts_with_rstar_uct_finds_the_correct_path(ground_truths, simulations):
    # UCT tries every child once before it trusts values, so it needs more simulations than PUCT here
    script, value, correct = decoy_script()
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(selection="uct"), ground_truths)
    assert (result.successes, result.simulations, result.answer) == (1, simulations, "9")
    assert path_key(result.tree.path(result.tree.node(result.path[-1]))) == correct


def test_patience_counts_a_solution_sampled_twice_once():
    """Under A the policy can only write one conclusion, so an expansion of A writes it twice: one solution, not
    the two that patient = 2 waits for. The search goes on to B's, then stops."""
    import math

    def script(key):
        if not key:
            return [("<expansion>", "A", 0.6), ("<expansion>", "B", 0.4)]
        return [("<conclusion>", "The answer is \\boxed{9}", 0.9)]

    config = MCTSConfig(simulations=12, num_candidates=2, max_children=2, patient=2, max_depth=4)
    (result,) = mcts(ScriptedPolicy(script, lambda key: math.log(0.5)), [QUESTION], config, ["9"])
    a, b = result.tree.root.children
    assert [c.terminal for c in a.children + b.children] == ["success"] * 4 and a.children[0].text == a.children[1].text
    assert (result.successes, result.simulations) == (2, 5)


def test_checked_terminal_values_and_rectified_path():
    script, value, correct = decoy_script()
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(patient=3, simulations=12), ["9"])
    tree = result.tree
    for node in tree.nodes:
        if node.terminal == "success":
            assert node.value == 0.0 and node.rectified == 0.0  # log 1, kept
        elif node.terminal == "failure":
            assert node.value == pytest.approx(LOG_EPS)
    assert [tree.node(i) for i in result.path] == max_reward_path(tree)


def test_policy_marked_terminals_and_rstar_style_rewards():
    # a policy may mark a thought terminal itself (rStar: a failed code step); rStar scores terminals +1 / -1
    script, value, _ = decoy_script()

    class Marking(ScriptedPolicy):
        def propose(self, requests):
            out = super().propose(requests)
            for candidate in (c for cs in out for c in cs if c.text.startswith("wrong")):
                candidate.terminal = "failure"
            return out

    config = decoy_config(patient=100, simulations=10, success_value=1.0, failure_value=-1.0)
    (result,) = mcts(Marking(script, value), [QUESTION], config, ["9"])
    wrong = [n for n in result.tree.nodes if n.text.startswith("wrong")]
    assert wrong and all(n.terminal == "failure" and n.value == -1.0 and not n.children for n in wrong)
    judged = [n for n in result.tree.nodes if n.meta == "<conclusion>"]
    assert {(n.terminal, n.value) for n in judged} == {("success", 1.0), ("failure", -1.0)}


def test_terminal_thoughts_are_never_expanded():
    script, value, _ = decoy_script()
    policy = ScriptedPolicy(script, value)  # it fails the test if asked to expand a terminal thought
    (result,) = mcts(policy, [QUESTION], decoy_config(patient=100, simulations=30), ["9"])
    terminals = [n for n in result.tree.nodes if n.terminal is not None]
    assert terminals and all(not n.children for n in terminals)
    assert result.simulations == 30 and len(policy.propose_calls) < 30  # some rounds only re-visited terminals
    assert sum(n.visits for n in terminals) > 0


def test_progressive_widening_expands_a_node_until_max_children():
    script, value, _ = decoy_script()
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(num_candidates=2, max_children=3, simulations=2))
    # simulation 1 adds 2 children to the root, simulation 2 adds 2 more (2 < 3); the script has 3, so one repeats
    assert len(result.tree.root.children) == 4 and result.tree.root.visits == 2


def test_problems_run_in_lockstep_and_match_solo_runs():
    script, value, _ = decoy_script()
    policy = ScriptedPolicy(script, value)
    truths = ["9", None, "9"]  # UCT needs 11 simulations with the checker, 8 by value (see above)
    config = decoy_config(selection="uct")
    results = mcts(policy, [QUESTION + " A", QUESTION + " B", QUESTION + " C"], config, truths)
    assert policy.propose_calls == [[3, 3, 3]] * 8 + [[3, 3]] * 3  # one batched call per round
    assert policy.evaluate_calls == [9] * 8 + [6] * 3
    for result, q, truth in zip(results, "ABC", truths):
        (solo,) = mcts(ScriptedPolicy(script, value), [QUESTION + " " + q], config, None if truth is None else [truth])
        assert result.tree.to_json() == solo.tree.to_json() and result.spent == solo.spent


def test_ids_unique_and_the_tree_round_trips():
    script, value, _ = decoy_script()
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(patient=100, simulations=10), ["9"])
    tree = result.tree
    assert [n.id for n in tree.nodes] == list(range(len(tree.nodes))) and len(tree.nodes) > 20
    assert parse_tree(tree.training_text()).training_text() == tree.training_text()
    assert result.spent.generated == sum(len(n.tokens) for n in tree.nodes)


def test_candidates_keep_their_own_priors():
    # LLaMA-O1 rebinds its list of candidate probabilities inside the loop that fills it
    script, value, _ = decoy_script()
    (result,) = mcts(ScriptedPolicy(script, value), [QUESTION], decoy_config(simulations=1))
    assert [c.prior for c in result.tree.root.children] == [0.8, 0.5, 0.3]
    assert [c.text for c in result.tree.root.children] == ["decoy step 0", "wrong step 0", "7 + 5 = 12"]


def test_ratings_follow_values():
    script, value, _ = decoy_script()
    policy = ScriptedPolicy(script, value)
    (result,) = mcts(policy, [QUESTION], decoy_config(simulations=2))
    ratings = {c.text: c.rating for c in result.tree.root.children}
    assert ratings == {"decoy step 0": "positive", "wrong step 0": "negative", "7 + 5 = 12": "positive"}
    assert [c.rating for c in result.tree.node(1).children] == ["negative"] * 3  # log .05 < log .5
    # the prompt under the decoy renders the decoy's rating, as in the training text
    assert any("decoy step 0<end_of_thought><start_of_rating><positive_rating><end_of_rating>\n" in p for p in policy.prompts)


def test_no_ground_truth_in_any_prompt():
    assert "15" not in LEAK_QUESTION
    script, value, _ = decoy_script(steps=("8 - 2 = 6", "6 / 2 = 3"), answer="3")  # no text holds "15"
    policy = ScriptedPolicy(script, value)
    mcts(policy, [LEAK_QUESTION], decoy_config(patient=100, simulations=8), ["15"])
    ids = re.compile(r"<start_of_father_id>-?\d+<end_of_father_id><start_of_local_id>\d+<end_of_local_id>")
    assert len(policy.prompts) >= 20 and all("15" not in ids.sub("", p) for p in policy.prompts + policy.value_prompts)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="selection"):
        MCTSConfig(selection="ucb")
    with pytest.raises(ValueError, match="2 ground truths for 1"):
        mcts(ScriptedPolicy(*decoy_script()[:2]), [QUESTION], MCTSConfig(), ["9", "9"])


# -- a real (tiny, random) model -----------------------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=2), seed=1, std=0.1)


def test_mcts_end_to_end_on_a_real_model_is_deterministic(model, tiny_tokenizer):
    def run():
        policy = LMPolicy(model, tiny_tokenizer, max_thought_tokens=5, seed=4)
        config = MCTSConfig(simulations=3, num_candidates=2, max_children=2, max_depth=3)
        return mcts(policy, ["Tom has 12 apples.", "A box holds 6 pens."], config, ["47", "24"])

    first, second = run(), run()
    for a, b in zip(first, second):
        assert a.tree.to_json() == b.tree.to_json() and a.spent == b.spent and a.path == b.path
    for r in first:
        assert r.simulations == 3 and r.spent.prompt > 0 and r.spent.value > 0
        for node in r.tree.nodes[1:]:
            assert node.value is not None and len(node.tokens) > 0 and node.rectified is not None


def test_rollouts_reach_terminals_in_one_simulation():
    """With rollout=True a simulation rolls every new thought out to a terminal and backs the outcome up.

    Script: the root has a likely wrong step A (prior .8) and an unlikely right step B (.2); under each, one
    conclusion (A's wrong, B's right). Values say nothing (log .5 everywhere). One simulation without
    rollouts only expands the root; with rollouts it reaches both conclusions and finds B's answer.
    """
    import math

    def script(key):
        if not key:
            return [("<expansion>", "A", 0.8), ("<expansion>", "B", 0.2)]
        return [("<conclusion>", "The answer is \\boxed{" + ("9" if key[0] == "<expansion>B" else "8") + "}", 0.9)]

    config = MCTSConfig(simulations=1, num_candidates=2, max_children=2, patient=5, max_depth=4)
    (plain,) = mcts(ScriptedPolicy(script, lambda key: math.log(0.5)), [QUESTION], config, ["9"])
    assert plain.successes == 0 and len(plain.tree.nodes) == 3
    policy = ScriptedPolicy(script, lambda key: math.log(0.5))
    (rolled,) = mcts(policy, [QUESTION], replace(config, rollout=True), ["9"])
    a, b = rolled.tree.root.children
    assert (a.text, b.text) == ("A", "B") and rolled.successes == 1 and rolled.answer == "9"
    assert [c.terminal for c in a.children + b.children] == ["failure", "success"]
    # two backups (one per rollout): the root is visited twice, each step once; B's success value is log 1 = 0,
    # backed up discounted: B gets 0.9 * 0 = 0; A gets 0.9 * log(1e-6)
    assert (rolled.tree.root.visits, a.visits, b.visits) == (2, 1, 1)
    assert b.value == 0.0 and a.value == pytest.approx(0.9 * math.log(1e-6))
    assert policy.propose_calls == [[2], [1, 1]]  # the expansion, then both rollouts in one round
    # a checker that rejects A makes it a failed terminal at expansion: not rolled out, its outcome backed up once
    (checked,) = mcts(ScriptedPolicy(script, lambda key: math.log(0.5)), [QUESTION],
                      replace(config, rollout=True, verify=lambda text: text != "A"), ["9"])
    a, b = checked.tree.root.children
    assert a.terminal == "failure" and not a.children and a.value == pytest.approx(math.log(1e-6))
    assert (checked.tree.root.visits, a.visits, b.visits) == (2, 1, 1)  # A's backup and B's rollout


def test_mcts_vote_answer_weighs_every_conclusion_by_exp_value():
    """Three conclusions under the root: \\boxed{10} with V = log .5 and \\boxed{9} twice with log .3.
    The max-reward path takes 10 (.5 is the best single value); the vote sums exp(V): 9 gets .3 + .3 = .6
    > .5, so it answers 9."""
    import math

    def script(key):
        return [("<conclusion>", "The answer is \\boxed{10}", 0.5), ("<conclusion>", "So \\boxed{9}", 0.3),
                ("<conclusion>", "The answer is \\boxed{9}", 0.2)]

    def value(key):
        return math.log(0.5) if "10" in key[-1] else math.log(0.3)

    config = MCTSConfig(simulations=1, num_candidates=3, max_children=3, patient=10)
    (best,) = mcts(ScriptedPolicy(script, value), [QUESTION], config)
    (voted,) = mcts(ScriptedPolicy(script, value), [QUESTION], replace(config, answer="vote"))
    assert (best.answer, voted.answer) == ("10", "9")
    assert voted.tree.node(voted.path[-1]).text == "So \\boxed{9}"  # the first chain of the winning answer
    with pytest.raises(ValueError, match="answer='best'"):
        MCTSConfig(answer="best")
