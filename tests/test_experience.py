"""From searched trees to training items: outcomes, success rates, chains, advantages, value targets."""

import pytest
import torch

from conftest import random_model
from nanoo1.experience import (chain_items, collate_chains, imitation_items, outcomes, relabel_lucky, restamp_stale,
                               row_priorities, stamp_old, success_rates, tree_chains)
from nanoo1.rl import completion_logprobs
from nanoo1.value import rating_values
from nanoo1.warmstart import TINY_MODEL
from nanoo1.tasks import TINY_DIR, make_problems
from nanoo1.thoughts import Tree, chain_tokens, render_node, render_path
from nanoo1.tokenizer import Tokenizer


def test_chains_advantages_and_value_targets():
    """A hand-built tree: a success chain and a failure chain sharing the root's first child."""
    tok = Tokenizer.from_file(TINY_DIR)
    (p,) = make_problems(1, seed=0)
    tree = Tree(p.question)
    a = tree.add(tree.root, "<expansion>", "18 / 3 = 6", value=-0.1)
    win = tree.add(a, "<conclusion>", "The answer is \\boxed{11}", value=0.0, terminal="success")
    lose = tree.add(a, "<conclusion>", "The answer is \\boxed{12}", value=-5.0, terminal="failure")
    tree.add(a, "<expansion>", "6 / 3 = 2", value=-0.7)  # unexpanded, not terminal: no chain
    tree.root.value = -0.2
    paths = tree_chains(tree, 4)
    assert [q[-1] for q in paths] == [win, lose]
    items = chain_items(tok, paths, gamma=1.0, lam=1.0)
    # gamma = lam = 1: A_k = R - V(before k). V before a = exp(-0.2), before the conclusion = exp(-0.1);
    # the shared `a` gets the mean over its two chains, (1 - exp(-0.2) + 0 - exp(-0.2)) / 2
    adv_a, adv_win = 0.5 - torch.exp(torch.tensor(-0.2)).item(), 1 - torch.exp(torch.tensor(-0.1)).item()
    adv_lose = 0 - torch.exp(torch.tensor(-0.1)).item()
    first, second = items
    trained = sorted({round(x, 5) for x, m in zip(first["advantages"], first["mask"]) if m})
    assert trained == sorted({round(adv_a, 5), round(adv_win, 5)})
    # the shared thought `a` is trained once (in the first chain); the second chain trains only its conclusion
    assert {round(x, 5) for x, m in zip(second["advantages"], second["mask"]) if m} == {round(adv_lose, 5)}
    # without success rates a thought's value target is its own value, exp(-0.1); a terminal's is its reward
    assert first["value_target"] == pytest.approx([0.904837, 1.0]) and second["value_target"] == pytest.approx([0.904837, 0.0])
    # with the tree's success rates (s + 1/2) / (n + 1): root and a see 1 of 2 -> 1.5 / 3 = 0.5
    rates = success_rates(tree)
    assert rates == {tree.root.id: 0.5, a.id: 0.5, win.id: 0.75, lose.id: 0.25}
    first, second = chain_items(tok, paths, rates, gamma=1.0, lam=1.0)
    # along the winning chain A_a = 0 + V(a) - V(root) + A_win = 0 + 0.5 - 0.5 + (1 - 0.5) = 0.5, along the
    # losing one 0 + (0 - 0.5) = -0.5: a thought as likely to succeed as its parent has the mean, 0
    by_thought = [round(first["advantages"][s], 5) for s, _, _ in chain_tokens(tok, paths[0])[1]]
    assert by_thought == [0.0, 0.5]
    assert {round(x, 5) for x, m in zip(second["advantages"], second["mask"]) if m} == {-0.5}
    assert first["value_target"] == [0.5, 1.0] and second["value_target"] == [0.5, 0.0]
    # value positions hold <start_of_rating>; trained tokens end with <end_of_thought>
    start = tok.token_id("<start_of_rating>")
    assert all(first["ids"][i] == start for i in first["value_pos"])
    batch = collate_chains(items, tok.pad_id)
    assert batch["input_ids"].shape[1] % 32 == 0 and batch["value_mask"].tolist() == [[1, 1], [1, 1]]


def test_lucky_successes_become_failures():
    tree = Tree("Mia has 11 apples. She buys 7 more. She splits them into 3 equal piles and keeps one pile. How many?")
    a = tree.add(tree.root, "<expansion>", "11 + 7 = 20", value=0.0)  # wrong: 18
    lucky = tree.add(tree.add(a, "<expansion>", "20 - 14 = 6"), "<conclusion>", "The answer is \\boxed{6}", terminal="success")
    b = tree.add(tree.root, "<expansion>", "11 + 7 = 18")
    right = tree.add(tree.add(b, "<expansion>", "18 / 3 = 6"), "<conclusion>", "The answer is \\boxed{6}", terminal="success")
    assert relabel_lucky(tree) == 1 and (lucky.terminal, right.terminal) == ("failure", "success")


def test_a_rollout_with_a_rejected_step_counts_once_and_ends_there():
    # mcts marks the first rejected thought of a rolled-out chain terminal (and the chain's end too): the outcome
    # is the rejected thought, counted once, and the training chain stops there, not at the steps computed from it
    tree = Tree("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many?")
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    bad = tree.add(a, "<expansion>", "12 - 3 = 8", terminal="failure")
    end = tree.add(bad, "<conclusion>", "The answer is \\boxed{8}", terminal="failure")
    b = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    win = tree.add(tree.add(b, "<expansion>", "12 - 3 = 9"), "<conclusion>", "The answer is \\boxed{9}", terminal="success")
    assert outcomes(tree) == [bad, win]
    rates = success_rates(tree)
    assert rates[a.id] == rates[bad.id] == 0.25 and rates[tree.root.id] == (1 + 0.5) / (2 + 1) and end.id not in rates
    assert [path[-1] for path in tree_chains(tree, 4)] == [win, bad]


def test_imitation_items_train_every_line_after_the_question_and_the_eos():
    tok = Tokenizer.from_file(TINY_DIR)
    (p,) = make_problems(1, seed=0)
    tree = Tree(p.question)
    a = tree.add(tree.root, "<expansion>", "18 / 3 = 6")
    end = tree.add(a, "<conclusion>", "The answer is \\boxed{11}", terminal="success")
    (ids, mask), = imitation_items(tok, [tree.path(end)])
    question = tok.encode(render_node(tree.root) + "\n")
    assert ids == tok.encode(render_path(tree.path(end))) + [tok.eos_id]  # the rendered chain, then <eos>
    assert ids[:len(question)] == question and mask == [0] * len(question) + [1] * (len(ids) - len(question))


def test_failures_come_in_the_order_the_search_found_them_whatever_their_values():
    tree = Tree("q")
    win = tree.add(tree.root, "<conclusion>", "w", terminal="success")
    first = tree.add(tree.root, "<conclusion>", "x", value=-3.0, terminal="failure")
    second = tree.add(tree.root, "<conclusion>", "y", value=0.0, terminal="failure")  # 0.0 is a value, not "unset"
    third = tree.add(tree.root, "<conclusion>", "z", value=-1.0, terminal="failure")
    assert [p[-1] for p in tree_chains(tree, 8)] == [win, first, second, third]


def test_tree_chains_take_half_successes_and_half_failures():
    tree = Tree("q")
    wins = [tree.add(tree.root, "<conclusion>", f"w{i}", terminal="success") for i in range(3)]
    losses = [tree.add(tree.root, "<conclusion>", f"l{i}", terminal="failure") for i in range(3)]
    assert [p[-1] for p in tree_chains(tree, 4)] == wins[:2] + losses[:2]
    assert [p[-1] for p in tree_chains(tree, 3)] == wins[:2] + losses[:1]  # the odd one is a success


def replay_items(tok, n=3):
    (p,) = make_problems(1, seed=0)
    tree = Tree(p.question)
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=-0.1)
    tree.add(a, "<conclusion>", "The answer is \\boxed{12}", terminal="success")
    return [dict(it) for it in chain_items(tok, tree_chains(tree, 2), success_rates(tree)) for _ in range(n)]


def test_stamp_old_holds_tempered_logprobs_and_the_value_search_reads():
    """old_logp: the chain's log-probs at the sampling temperature; old_value: P(positive) = exp(V) of each
    thought's path, V as search reads it (`rating_values`)."""
    tok = Tokenizer.from_file(TINY_DIR)
    model = random_model(TINY_MODEL, seed=0, std=0.05)
    (p,) = make_problems(1, seed=0)
    tree = Tree(p.question)
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=-0.1)
    end = tree.add(a, "<conclusion>", "The answer is \\boxed{12}", terminal="success")
    (item,) = chain_items(tok, tree_chains(tree, 2), success_rates(tree))
    stamp_old(model, tok, [item], 0.7)
    with torch.no_grad():
        logp = completion_logprobs(model, torch.tensor([item["ids"]]), None, torch.tensor([item["mask"]]), 0.7)[0]
    assert item["old_logp"] == pytest.approx(logp.tolist(), abs=1e-5)
    values = rating_values(model, tok, [tree.path(a), tree.path(end)]).exp()
    assert item["old_value"] == pytest.approx(values.tolist(), abs=1e-5)


def test_stale_replayed_chains_are_restamped_by_the_current_policy():
    tok = Tokenizer.from_file(TINY_DIR)
    old_model, new_model = random_model(TINY_MODEL, seed=0, std=0.05), random_model(TINY_MODEL, seed=1, std=0.05)
    items = replay_items(tok)
    for it, iteration in zip(items, (0, 2, 3)):
        stamp_old(old_model, tok, [it], 1.0, iteration=iteration)
    before = [list(it["old_logp"]) for it in items]
    # at iteration 3 with max_age 1: the chain of iteration 0 is re-stamped, those of 2 and 3 keep their stamps
    assert restamp_stale(new_model, tok, items + items[:1], 3, 1, 1.0) == 1  # a repeated draw counts once
    assert [it["iteration"] for it in items] == [3, 2, 3]
    assert items[0]["old_logp"] != before[0] and items[1:] and [it["old_logp"] for it in items[1:]] == before[1:]
    fresh = dict(items[0])
    stamp_old(new_model, tok, [fresh], 1.0, iteration=3)
    assert fresh["old_logp"] == items[0]["old_logp"] and fresh["old_value"] == items[0]["old_value"]


def test_priority_at_insertion_is_the_stamped_value_error():
    tok = Tokenizer.from_file(TINY_DIR)
    (item,) = replay_items(tok, 1)
    stamp_old(random_model(TINY_MODEL, seed=0, std=0.05), tok, [item], 1.0)
    expected = sum(abs(t - v) for t, v in zip(item["value_target"], item["old_value"])) / len(item["value_target"])
    assert row_priorities([item]) == pytest.approx([expected])


def test_stamps_do_not_depend_on_the_token_budget():
    tok = Tokenizer.from_file(TINY_DIR)
    model = random_model(TINY_MODEL, seed=0, std=0.05)
    whole, alone = replay_items(tok, 3), replay_items(tok, 3)
    stamp_old(model, tok, whole, 1.0)
    stamp_old(model, tok, alone, 1.0, max_tokens=1)  # every item over the budget: one forward pass each
    for a, b in zip(whole, alone):
        assert a["old_logp"] == pytest.approx(b["old_logp"], abs=1e-5) and a["old_value"] == pytest.approx(b["old_value"], abs=1e-5)


# -- edge cases: bounds, defaults and what each step leaves behind ---------------------------------------------
def test_a_rejected_first_thought_is_the_outcome_and_a_tree_without_success_gives_no_chains():
    """The rejected thought may be the root's child: what was generated below it is not an outcome. A tree with
    failures only gives no training chains."""
    tree = Tree("q")
    bad = tree.add(tree.root, "<expansion>", "2 + 2 = 5", terminal="failure")
    tree.add(bad, "<conclusion>", "The answer is \\boxed{5}", terminal="failure")
    assert outcomes(tree) == [bad]
    assert tree_chains(tree, 4) == []


def test_a_wrong_equation_in_the_successful_conclusion_itself_is_lucky():
    tree = Tree("q")
    end = tree.add(tree.root, "<conclusion>", "So 3 + 4 = 8. The answer is \\boxed{8}", terminal="success")  # 3 + 4 = 7
    assert relabel_lucky(tree) == 1 and end.terminal == "failure"


def test_a_wrong_equation_in_the_question_is_not_the_chains():
    """The chain is the thoughts below the root; a question may state a wrong equation on purpose, and a right
    answer to it stays a success (as MCTS's step checker, which checks each new thought, lets it through)."""
    tree = Tree("Tom wrote 2 + 2 = 5 on the board. What is 3 + 4?")
    end = tree.add(tree.root, "<conclusion>", "3 + 4 = 7. The answer is \\boxed{7}", terminal="success")
    assert relabel_lucky(tree) == 0 and end.terminal == "success"


def test_default_gamma_and_lambda_and_values_without_rates():
    """chain_items' defaults gamma = 0.99, lam = 0.95; without success rates a thought's V is exp(min(0, value)),
    exp(log 0.5) = 0.5 for a thought with no value."""
    tok = Tokenizer.from_file(TINY_DIR)
    (p,) = make_problems(1, seed=0)
    tree = Tree(p.question)
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=-0.1)
    end = tree.add(a, "<conclusion>", "The answer is \\boxed{12}", terminal="success")
    paths = tree_chains(tree, 2)
    (item,) = chain_items(tok, paths, success_rates(tree))
    # every node sees 1 success of 1: V = 1.5 / 2 = 0.75. delta_end = 1 - 0.75 = 0.25 = A_end;
    # delta_a = 0.99 * 0.75 - 0.75 = -0.0075, A_a = -0.0075 + 0.99 * 0.95 * 0.25 = 0.227625
    starts = [s for s, _, _ in chain_tokens(tok, paths[0])[1]]
    assert [item["advantages"][s] for s in starts] == pytest.approx([0.227625, 0.25], abs=1e-6)
    # no rates: `b` has no value (V = 0.5), `c` a positive one (V = exp(min(0, 0.3)) = 1)
    b = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    c = tree.add(b, "<expansion>", "12 - 0 = 12", value=0.3)
    won = tree.add(c, "<conclusion>", "The answer is \\boxed{12}", terminal="success")
    (item,) = chain_items(tok, [tree.path(won)])
    assert item["value_target"] == pytest.approx([0.5, 1.0, 1.0])


def test_collate_pads_to_the_multiple_and_carries_stamps_and_weights():
    one = {"ids": [5] * 10, "mask": [0] * 4 + [1] * 6, "advantages": [0.0] * 4 + [0.5] * 6, "value_pos": [3, 9],
           "value_target": [0.5, 1.0], "old_logp": [-1.0] * 10, "old_value": [0.4, 0.6]}
    two = {"ids": [6] * 3, "mask": [0, 1, 1], "advantages": [0.0, -0.5, -0.5], "value_pos": [2], "value_target": [0.0],
           "old_logp": [-2.0] * 3, "old_value": [0.3]}
    batch = collate_chains([one, two], pad_id=0, weights=[0.5, 2.0], multiple=8)
    with pytest.raises(ValueError, match="collate_chains: no chain items"):
        collate_chains([], pad_id=0)
    assert batch["input_ids"].shape == (2, 16) and batch["old_logp"].shape == (2, 16)  # 10 tokens -> 16
    assert batch["value_mask"].tolist() == [[1, 1], [1, 0]]  # per value position, (B, K)
    torch.testing.assert_close(batch["old_value"], torch.tensor([[0.4, 0.6], [0.3, 0.0]]))  # (B, K), not (B, T)
    assert batch["weights"].dtype == torch.float32 and batch["weights"].tolist() == [0.5, 2.0]
