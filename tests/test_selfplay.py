"""A short self-play run end to end: metrics, checkpoints, the final JSON, exact resume, determinism."""

import json

import pytest
import torch

from conftest import random_model
from nanoo1.checkpoint import load_pretrained, save_pretrained
from nanoo1.selfplay import SelfPlayConfig, chain_items, collate_chains, main, outcomes, relabel_lucky, run, success_rates, tree_chains
from nanoo1.tasks import TINY_DIR, make_problems
from nanoo1.thoughts import Tree
from nanoo1.tokenizer import Tokenizer
from nanoo1.warmstart import TINY_MODEL


@pytest.fixture(scope="module")
def warmstart(tmp_path_factory):
    """A random model in the tiny shape with the shipped tokenizer, saved as a checkpoint."""
    d = tmp_path_factory.mktemp("warm")
    tok = Tokenizer.from_file(TINY_DIR)
    save_pretrained(random_model(TINY_MODEL, seed=0, std=0.05), tok, d)
    return d


def small(out, warmstart, **kw):
    settings = dict(out=str(out), warmstart=str(warmstart), eval_problems=3, iterations=2, problems_per_iteration=3,
                    simulations=2, updates_per_iteration=2, minibatch=4, best_of_n=2, eval_simulations=2, eval_every=0,
                    max_thought_tokens=12)
    return SelfPlayConfig(**{**settings, **kw})


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
    items = chain_items(tok, paths, SelfPlayConfig(gamma=1.0, lam=1.0))
    # gamma = lam = 1: A_k = R - V(before k). V before a = exp(-0.2), before the conclusion = exp(-0.1)
    adv_a, adv_win = 1 - torch.exp(torch.tensor(-0.2)).item(), 1 - torch.exp(torch.tensor(-0.1)).item()
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
    first, second = chain_items(tok, paths, SelfPlayConfig(gamma=1.0, lam=1.0), rates)
    # A_a = 0 + V(a) - V(root) + A_win = 0 + 0.5 - 0.5 + (1 - 0.5) = 0.5; A_lose = 0 - 0.5
    assert {round(x, 5) for x, m in zip(first["advantages"], first["mask"]) if m} == {0.5}
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


def test_short_run_writes_metrics_checkpoints_and_final_json(tmp_path, warmstart, capsys):
    main(["--tiny", "--model", str(warmstart), "--out", str(tmp_path), "--eval-problems", "3", "--iterations", "2",
          "--problems-per-iteration", "3", "--simulations", "2", "--updates-per-iteration", "1", "--minibatch", "4",
          "--best-of-n", "2", "--eval-simulations", "2", "--eval-every", "1", "--max-thought-tokens", "12", "--no-progress"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in ("sft_greedy", "final_greedy", "final_mcts", "wall_s", "checkpoint"):
        assert key in summary
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["eval"] == "before" and lines[-1]["eval"] == "after"
    assert [l["iteration"] for l in lines[1:-1]] == [0, 1] and "greedy_quick" in lines[1]
    model, tok = load_pretrained(summary["checkpoint"])
    assert tok is not None and model.config == TINY_MODEL
    assert (tmp_path / "latest").read_text() == "iter-0001" and (tmp_path / "iter-0001" / "replay.pt").exists()


def test_resume_continues_exactly_and_seeds_repeat(tmp_path, warmstart):
    straight = run(small(tmp_path / "a", warmstart), progress=False)
    run(small(tmp_path / "b", warmstart, iterations=1), progress=False)
    resumed = run(small(tmp_path / "b", warmstart), resume=str(tmp_path / "b"), progress=False)
    a, _ = load_pretrained(tmp_path / "a" / "final")
    b, _ = load_pretrained(tmp_path / "b" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    drop = ("wall_s", "checkpoint")
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}
    again = run(small(tmp_path / "c", warmstart), progress=False)
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}


def test_eval_command_writes_one_row_per_method_and_budget(tmp_path, warmstart, capsys):
    from nanoo1 import eval as eval_cli

    eval_cli.main(["--checkpoint", str(warmstart), "--limit", "3", "--methods", "greedy,best_of_n,mcts", "--budgets", "1,2",
                   "--max-thought-tokens", "8", "--out", str(tmp_path)])
    rows = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [(r["method"], r["budget"]) for r in rows] == [("greedy", 1), ("best_of_n", 1), ("best_of_n", 2), ("mcts", 1), ("mcts", 2)]
    assert all(0.0 <= r["accuracy"] <= 1.0 and r["tokens"] > 0 for r in rows)
    by = {(r["method"], r["budget"]): r["tokens"] for r in rows}
    assert by[("best_of_n", 2)] > by[("best_of_n", 1)] and by[("mcts", 2)] > by[("mcts", 1)]  # more budget, more tokens
    assert "mcts" in capsys.readouterr().out


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


@pytest.mark.parametrize("flag,checker", [([], "equations_hold"), (["--check-equations", "false"], None)])
def test_eval_command_gives_mcts_the_step_checker(tmp_path, warmstart, monkeypatch, flag, checker):
    from nanoo1 import eval as eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, mcts=None, **kw: seen.append(mcts) or eval_cli.EvalResult("mcts", 1, 0.0, 1.0, 0.0))
    eval_cli.main(["--checkpoint", str(warmstart), "--limit", "1", "--methods", "mcts", "--budgets", "1", "--out", str(tmp_path)] + flag)
    assert len(seen) == 1 and getattr(seen[0].verify, "__name__", None) == checker
