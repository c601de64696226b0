"""A short self-play run end to end: metrics, checkpoints, the final JSON, exact resume, determinism."""

import json
import math
import re
import shutil
import numpy as np
import pytest
import torch

from conftest import random_model
from nanoo1.checkpoint import load_pretrained, save_pretrained
from nanoo1.replay import PrioritizedReplay
from nanoo1.config import apply_flags
from nanoo1.eval import EvalResult
from nanoo1.recipe import PRESETS, iteration_config
from nanoo1.runs import (append_jsonl, latest_checkpoint, load_trainer_state, prepare_out, resume_settings,
                         rewrite_jsonl, save_checkpoint, saved_settings)
from nanoo1.selfplay import main, run
from nanoo1.tasks import TINY_DIR
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
                    simulations=2, updates_per_iteration=2, minibatch=4, eval_best_of_n=2, eval_simulations=2, eval_every=0,
                    max_thought_tokens=12, imitation_problems=3, imitation_batch=2)
    return apply_flags(PRESETS["tiny"], {**settings, **kw})


class Killed(Exception):
    pass


def killed_after_first_checkpoint(config, monkeypatch):
    """Run `config` and kill it right after its first iteration's checkpoint is written."""
    import nanoo1.selfplay as selfplay

    def save_then_die(*args, **kw):
        real(*args, **kw)
        raise Killed

    real = selfplay.save_checkpoint
    monkeypatch.setattr(selfplay, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        run(config, progress=False)
    monkeypatch.setattr(selfplay, "save_checkpoint", real)


def test_short_run_writes_metrics_checkpoints_and_final_json(tmp_path, warmstart, capsys):
    main(["--tiny", "--model", str(warmstart), "--out", str(tmp_path), "--eval-problems", "3", "--iterations", "2",
          "--problems-per-iteration", "3", "--simulations", "2", "--updates-per-iteration", "1", "--minibatch", "4",
          "--eval-best-of-n", "2", "--eval-simulations", "2", "--eval-every", "1", "--max-thought-tokens", "12", "--imitation-problems", "3",
          "--imitation-batch", "2", "--no-progress"])
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


def test_resume_continues_exactly_and_seeds_repeat(tmp_path, warmstart, monkeypatch):
    straight = run(small(tmp_path / "a", warmstart), progress=False)
    killed_after_first_checkpoint(small(tmp_path / "b", warmstart), monkeypatch)
    leftovers = [tmp_path / "b" / ".metrics.jsonl.k2x9ab_q.tmp", tmp_path / "b" / "iter-0000" / ".model.safetensors.q7w1e0zz.tmp"]
    for p in leftovers + [tmp_path / "b" / ".notes.tmp"]:  # what saves killed before their renames leave, and a file
        p.write_bytes(b"partial")  # of the user's own
    resumed = run(small(tmp_path / "b", warmstart), resume=str(tmp_path / "b"), progress=False)
    assert not any(p.exists() for p in leftovers) and (tmp_path / "b" / ".notes.tmp").exists()
    a, _ = load_pretrained(tmp_path / "a" / "final")
    b, _ = load_pretrained(tmp_path / "b" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    drop = ("wall_s", "checkpoint")
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}
    again = run(small(tmp_path / "c", warmstart), progress=False)
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}


def test_a_resumed_runs_clock_goes_on_from_its_checkpoint(tmp_path, warmstart, monkeypatch):
    """An iteration's seconds and the summary's wall_s count from the run's start: a resumed run (a new process,
    its clock from 0) adds its own time to the seconds its checkpoint's last iteration had reached."""
    import itertools
    from types import SimpleNamespace

    import nanoo1.selfplay as selfplay

    monkeypatch.setattr(selfplay, "time", SimpleNamespace(perf_counter=itertools.count(0, 100).__next__))
    killed_after_first_checkpoint(small(tmp_path, warmstart), monkeypatch)
    reached = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["seconds"]
    monkeypatch.setattr(selfplay, "time", SimpleNamespace(perf_counter=itertools.count(0, 1).__next__))
    summary = run(small(tmp_path, warmstart), resume=str(tmp_path), progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["seconds"] for line in lines[1:-1]] == [reached, reached + 1] and summary["wall_s"] == reached + 2


def test_imitation_steps_resume_exactly(tmp_path, warmstart, monkeypatch):
    """A random model never reaches a right answer: every chain counts as a success here, so imitation steps run."""
    from nanoo1 import iteration

    monkeypatch.setattr(iteration, "grade", lambda results, truths: [len(r.path) > 1 for r in results])
    kw = dict(check_equations=False, problems_per_iteration=2, imitation_problems=4, eval_simulations=1, eval_best_of_n=1,
              imitation_batch=3)
    straight = run(small(tmp_path / "a", warmstart, **kw), progress=False)
    killed_after_first_checkpoint(small(tmp_path / "b", warmstart, **kw), monkeypatch)
    resumed = run(small(tmp_path / "b", warmstart, **kw), resume=str(tmp_path / "b"), progress=False)
    assert {k: v for k, v in straight.items() if k not in ("wall_s", "checkpoint")} == \
        {k: v for k, v in resumed.items() if k not in ("wall_s", "checkpoint")}
    a, _ = load_pretrained(tmp_path / "a" / "final")
    b, _ = load_pretrained(tmp_path / "b" / "final")
    metrics = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[1:-1]]
    # 4 new chains per iteration, and in the second as many replayed from the first (the memory came back
    # with the resumed run: without it the resumed second iteration would replay nothing)
    assert [m["imitation_solved"] for m in metrics] == [1.0, 1.0] and all(m["imitation_loss"] > 0 for m in metrics)
    assert [m["imitation_replayed"] for m in metrics] == [0, 4]
    assert [m["imitation_steps"] for m in metrics] == [2, 3]  # one pass over 4 and 8 chains, 3 a step: the last short
    assert len(PrioritizedReplay.load(tmp_path / "b" / "iter-0001" / "imitation.pt")) == 8
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


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


@pytest.mark.parametrize("flag,checker", [([], "equations_hold"), (["--check-equations", "false"], None)])
def test_eval_command_gives_mcts_the_step_checker(tmp_path, warmstart, monkeypatch, flag, checker):
    from nanoo1 import eval as eval_cli

    seen = []
    monkeypatch.setattr(eval_cli, "evaluate", lambda *a, mcts=None, **kw: seen.append(mcts) or eval_cli.EvalResult("mcts", 1, 0.0, 1.0, 0.0))
    eval_cli.main(["--checkpoint", str(warmstart), "--limit", "1", "--methods", "mcts", "--budgets", "1", "--out", str(tmp_path)] + flag)
    assert len(seen) == 1 and getattr(seen[0].verify, "__name__", None) == checker


def test_learning_rates_fall_along_a_cosine():
    config = apply_flags(PRESETS["tiny"], dict(iterations=5, lr=1e-4, imitation_lr=3e-4, lr_decay=0.1))
    lrs = [iteration_config(config, it) for it in range(5)]
    # full rate first, lr_decay times it last, halfway between in the middle; both rates alike
    assert [c.ppo.lr for c in lrs] == pytest.approx([1e-4, 0.8682e-4, 0.55e-4, 0.2318e-4, 0.1e-4], rel=1e-3)
    assert [c.imitation.lr / c.ppo.lr for c in lrs] == pytest.approx([3.0] * 5)
    assert [c.grpo.grpo_lr / c.ppo.lr for c in lrs] == pytest.approx([PRESETS["tiny"].grpo.grpo_lr / 1e-4] * 5)
    assert iteration_config(apply_flags(config, {"iterations": 1}), 0).ppo.lr == 1e-4  # one iteration: the full rate


def test_grpo_reward_rises_on_a_task_a_stand_in_model_learns(tmp_path, warmstart, monkeypatch, capsys):
    """A one-token answer of even length counts as right: the random model starts near its base rate and
    GRPO moves it onto such tokens within a few iterations."""
    import nanoo1.elastic as elastic

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)
    main(["--tiny", "--model", str(warmstart), "--out", str(tmp_path), "--algo", "grpo", "--iterations", "6",
          "--problems-per-iteration", "4", "--rounds", "1", "--group-size", "8", "--think-budget", "2", "--solution-budget", "1",
          "--grpo-lr", "1e-2", "--eval-problems", "3", "--eval-quick", "3", "--eval-best-of-n", "2",
          "--eval-simulations", "1", "--max-thought-tokens", "4", "--no-progress"])
    rewards = [m["reward"] for m in metrics_of(tmp_path)[1:-1]]
    assert sum(rewards[:2]) / 2 < 0.45 and sum(rewards[-2:]) / 2 > 0.8, rewards
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["think_budget"] == 2 and list(summary["budgets"]) == ["1", "2", "4", "unlimited"]  # t*/4 is t*/2 here
    assert all(set(row) == {"before", "after", "tokens_before", "tokens_after"} for row in summary["budgets"].values())
    assert "thinking budget" in out and summary["budgets"]["unlimited"]["tokens_before"] > summary["budgets"]["4"]["tokens_before"]


@pytest.mark.parametrize("max_rows,calls", [(0, [8]), (4, [4, 4]), (3, [2, 2, 2, 2])])
def test_grpo_rollouts_go_in_whole_groups_of_at_most_max_rows(warmstart, monkeypatch, max_rows, calls):
    import nanoo1.elastic as elastic
    from nanoo1.tasks import load_jsonl

    seen, real = [], elastic.generate_budgeted
    monkeypatch.setattr(elastic, "generate_budgeted",
                        lambda model, prompts, *a, **kw: seen.append(len(prompts) * kw["num_samples"]) or real(model, prompts, *a, **kw))
    config = small(warmstart, warmstart, algo="grpo", group_size=2, think_budget=4, solution_budget=2, problems_per_iteration=4,
                   rounds=1, max_rows=max_rows)
    model, tokenizer = load_pretrained(warmstart)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    m = elastic.grpo_iteration(model, tokenizer, opt, load_jsonl(TINY_DIR / "train.jsonl")[:4], 0, config)
    assert seen == calls and 0 <= m["correct"] <= 1  # a group is never split (3 rows: one group of 2 a call)


def test_dapo_divides_every_minibatch_by_the_whole_generation_batchs_tokens(warmstart, monkeypatch):
    """Split over minibatches, dapo's divisor is the completion tokens of the round's every rollout (Yu et al.
    2025, eq. 8), not the minibatch's own (which is bnpo)."""
    import nanoo1.elastic as elastic
    from nanoo1.tasks import load_jsonl

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)  # rewards differ within a group
    sizes, divisors, real_generate, real_step = [], [], elastic.generate_budgeted, elastic.grpo_step
    monkeypatch.setattr(elastic, "generate_budgeted", lambda *a, **kw: [
        sizes.append(len(row.tokens)) or row for row in real_generate(*a, **kw)])
    monkeypatch.setattr(elastic, "grpo_step", lambda model, opt, batch, cfg: divisors.append(
        (int(batch["num_items_in_batch"]), int(batch["completion_mask"].sum()))) or real_step(model, opt, batch, cfg))
    config = small(warmstart, warmstart, algo="grpo", group_size=4, think_budget=4, solution_budget=2, problems_per_iteration=4,
                   rounds=1, grpo_minibatch=2, loss_type="dapo")
    model, tokenizer = load_pretrained(warmstart)
    model.requires_grad_(True)
    elastic.grpo_iteration(model, tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-4),
                           load_jsonl(TINY_DIR / "train.jsonl")[:4], 0, config)
    assert len(divisors) > 1 and {whole for whole, _ in divisors} == {sum(sizes)}
    assert all(own < sum(sizes) for _, own in divisors)


def test_grpo_minibatch_order_follows_the_run_seed(warmstart, monkeypatch):
    """The same rollouts split into minibatches in an order drawn from the run's seed (and the round): the same
    seed, the same order; another seed, another order."""
    import nanoo1.elastic as elastic
    from nanoo1.tasks import load_jsonl

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)  # rewards differ within a group
    real_generate, real_step = elastic.generate_budgeted, elastic.grpo_step
    monkeypatch.setattr(elastic, "generate_budgeted",  # the same rollouts whatever the seed
                        lambda *a, **kw: real_generate(*a, **{**kw, "generator": torch.Generator().manual_seed(0)}))
    config = small(warmstart, warmstart, algo="grpo", group_size=4, think_budget=4, solution_budget=2, problems_per_iteration=4,
                   rounds=1, grpo_minibatch=2)

    def orders(seed):
        seen = []
        monkeypatch.setattr(elastic, "grpo_step", lambda model, opt, batch, cfg: seen.append(
            batch["input_ids"].tolist()) or real_step(model, opt, batch, cfg))
        model, tokenizer = load_pretrained(warmstart)
        model.requires_grad_(True)
        elastic.grpo_iteration(model, tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-4),
                               load_jsonl(TINY_DIR / "train.jsonl")[:4], 0, config, seed)
        return seen

    def rows(steps):  # every minibatch's rows, in one sorted list
        return sorted(row for batch in steps for row in batch)

    first, second = orders(0), orders(1)
    assert len(first) > 2 and orders(0) == first
    assert second != first and rows(second) == rows(first)  # the same rows, dealt otherwise


def test_grpo_run_repeats_for_a_seed_and_resumes_exactly(tmp_path, warmstart, monkeypatch):
    """Two rounds per iteration, each with two epochs of two minibatches."""
    import nanoo1.elastic as elastic

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)  # rewards differ within a group
    kw = dict(algo="grpo", group_size=2, think_budget=8, solution_budget=4, problems_per_iteration=2, rounds=2, epochs=2,
              grpo_minibatch=2, grpo_lr=1e-3)
    straight = run(small(tmp_path / "a", warmstart, **kw), progress=False)
    killed_after_first_checkpoint(small(tmp_path / "b", warmstart, **kw), monkeypatch)
    resumed = run(small(tmp_path / "b", warmstart, **kw), resume=str(tmp_path / "b"), progress=False)
    again = run(small(tmp_path / "c", warmstart, **kw), progress=False)
    drop = ("wall_s", "checkpoint")
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in again.items() if k not in drop}
    assert metrics_of(tmp_path / "a") == metrics_of(tmp_path / "b") == metrics_of(tmp_path / "c")
    a, _ = load_pretrained(tmp_path / "a" / "final")
    b, _ = load_pretrained(tmp_path / "b" / "final")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    warm, _ = load_pretrained(warmstart)
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), warm.state_dict().values()))  # it learned
    lines = metrics_of(tmp_path / "a")
    assert {"think_2", "think_4", "think_8", "think_16", "think_unlimited"} <= set(lines[0])
    assert "greedy" not in lines[0] and "sft_greedy" not in straight  # GRPO's model is judged in its own format
    for m in lines[1:-1]:
        assert m["updates"] > 0 and 0 <= m["cut"] <= 1 and m["think"] <= 8 and 0 <= m["think_quick"] <= 1
        assert {"reward", "correct", "think_right", "think_wrong", "tokens", "lr"} <= set(m)
    assert not (tmp_path / "a" / "iter-0001" / "replay.pt").exists()  # no MCTS, no buffers


def test_grpo_micro_batches_are_cut_by_tokens_too(tmp_path, warmstart, monkeypatch):
    """--micro-batch-tokens bounds GRPO's forward passes as it does PPO's: the old log-probs' and the updates'."""
    import nanoo1.elastic as elastic
    import nanoo1.updates as updates

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)  # rewards differ within a group
    widest = []
    for module in (elastic, updates):
        def spy(model, ids, *args, real=module.completion_logprobs, **kwargs):
            widest.append(ids.numel())  # rows x padded length of one forward pass
            return real(model, ids, *args, **kwargs)
        monkeypatch.setattr(module, "completion_logprobs", spy)
    kw = dict(algo="grpo", group_size=4, think_budget=8, solution_budget=4, problems_per_iteration=2, rounds=1,
              grpo_minibatch=8, iterations=1, micro_batch_tokens=250)
    run(small(tmp_path, warmstart, **kw), progress=False)
    assert widest and max(widest) <= 250  # rows of about 100 tokens: two at a time, where micro_batch alone takes 8


def test_rollout_rewards_correct_or_cosine_with_the_repetition_penalty():
    from types import SimpleNamespace

    from nanoo1.elastic import rollout_rewards

    rows = [SimpleNamespace(tokens=[5] * 8, finish_reason="stop_token"),
            SimpleNamespace(tokens=[1, 2, 3, 4], finish_reason="stop_token"),
            SimpleNamespace(tokens=list(range(20)), finish_reason="length"),
            SimpleNamespace(tokens=list(range(20)), finish_reason="stop_token"),
            SimpleNamespace(tokens=[1, 2, 3, 4], finish_reason="length")]
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    config = apply_flags(PRESETS["tiny"], dict(algo="grpo", think_budget=12, solution_budget=7, ngram=3))
    assert torch.equal(rollout_rewards(rows, correct, config), correct)
    cosine = rollout_rewards(rows, correct, apply_flags(config, {"reward": "cosine"}))
    # L_max = 12 + 1 + 7 = 20: 8 tokens right, 4 wrong, 20 cut off by the budget (r_exceed) and 20 ending on its
    # own <eos> at the limit (r_L = 1), both right, and 4 wrong whose answer ran out of tokens before L_max (the
    # cosine reward, as for any wrong one); [5]*8 repeats its 3-gram from position 1 on, so 7 of its tokens get -0.05
    short_wrong = -5 * (1 + math.cos(math.pi * 4 / 20))
    expected = [1 + 0.5 * (1 + math.cos(math.pi * 8 / 20)) - 7 * 0.05, short_wrong, -10.0, 1.0, short_wrong]
    assert cosine.tolist() == pytest.approx(expected)


def test_eval_command_takes_an_unlimited_thinking_budget(tmp_path, warmstart, capsys):
    from nanoo1 import eval as eval_cli

    eval_cli.main(["--checkpoint", str(warmstart), "--limit", "2", "--methods", "budget", "--budgets", "2,unlimited",
                   "--out", str(tmp_path)])
    rows = [json.loads(l) for l in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["budget"] for r in rows] == [2, None] and rows[1]["tokens"] > rows[0]["tokens"]
    assert "unlimited" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        eval_cli.main(["--checkpoint", str(warmstart), "--methods", "greedy,budget", "--budgets", "unlimited"])
    assert "for --methods budget alone" in capsys.readouterr().err


def test_budgeted_evaluations_honour_max_rows(monkeypatch, warmstart):
    """The <think> evaluations (eval's budget method, self-play's budget table and t* check) cut their problems
    into generate calls of at most search.max_rows rows, as rollouts do, with the same greedy result."""
    import nanoo1.eval as eval_mod
    from nanoo1.elastic import budget_jobs
    from nanoo1.tasks import load_jsonl

    model, tok = load_pretrained(warmstart)
    problems = load_jsonl(TINY_DIR / "test.jsonl")[:5]
    calls, real = [], eval_mod.generate_budgeted
    monkeypatch.setattr(eval_mod, "generate_budgeted", lambda m, prompts, *a, **kw: calls.append(len(prompts)) or real(m, prompts, *a, **kw))
    whole = eval_mod.evaluate_budgeted(model, tok, problems, 6, solution_budget=4)
    assert calls == [5]
    calls.clear()
    config = apply_flags(PRESETS["tiny"], {"algo": "grpo", "think_budget": 6, "solution_budget": 4, "max_rows": 2})
    split = budget_jobs(model, tok, config, problems)["think_6"](problems)
    assert calls == [2, 2, 1]
    assert (split.accuracy, split.tokens) == (whole.accuracy, whole.tokens)


def untimed(row):
    return {k: untimed(v) if isinstance(v, dict) else v for k, v in row.items() if k != "seconds"}


def metrics_of(run_dir):
    return [untimed(json.loads(line)) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_checkpoints_keep_the_last_k_and_hold_the_run_settings(tmp_path, warmstart):
    from nanoo1.config import to_dict

    config = small(tmp_path, warmstart, iterations=3, keep_checkpoints=2, imitation_problems=0)
    run(config, progress=False)
    assert sorted(p.name for p in tmp_path.glob("iter-*")) == ["iter-0001", "iter-0002"]
    assert json.loads((tmp_path / "iter-0002" / "settings.json").read_text()) == to_dict(config)
    assert json.loads((tmp_path / "summary.json").read_text())["iterations"] == 3


def test_a_run_refuses_fewer_problems_an_iteration_than_ranks(tmp_path, warmstart, monkeypatch, capsys):
    from nanoo1 import dist

    monkeypatch.setattr(dist, "place", lambda: dist.Place(rank=0, world=4))  # as if one of 4 torchrun ranks
    with pytest.raises(ValueError, match="--problems-per-iteration 3: fewer than the 4 ranks"):
        run(small(tmp_path, warmstart), progress=False)
    import nanoo1.selfplay as selfplay

    monkeypatch.setattr(selfplay, "run", lambda *a, **kw: pytest.fail("the run started"))
    monkeypatch.setenv("WORLD_SIZE", "4")  # the command under torchrun: a usage message before any work
    with pytest.raises(SystemExit):
        main(["--tiny", "--problems-per-iteration", "3", "--out", str(tmp_path / "cli")])
    assert "--problems-per-iteration 3: fewer than the 4 ranks" in capsys.readouterr().err


def test_the_last_checkpoints_are_kept_by_iteration_number(tmp_path):

    for it in (9998, 9999, 10000):
        save_checkpoint(tmp_path, it, PRESETS["tiny"], lambda d: d.mkdir(parents=True, exist_ok=True), {}, {}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("iter-*")) == ["iter-10000", "iter-9999"]
    assert latest_checkpoint(tmp_path).name == "iter-10000"


def test_resume_takes_the_saved_settings_and_refuses_conflicting_flags(tmp_path, warmstart, monkeypatch, capsys):
    killed_after_first_checkpoint(small(tmp_path, warmstart), monkeypatch)
    with pytest.raises(SystemExit):
        main(["--resume", str(tmp_path), "--lr", "0.5", "--no-progress"])
    err = capsys.readouterr().err
    assert "--lr: 0.0001 in the run, 0.5 given" in err
    with pytest.raises(ValueError, match="--iterations: 2 in the run, 3 given"):
        run(small(tmp_path, warmstart, iterations=3), resume=str(tmp_path), progress=False)
    # the run's directory is its own --out (given again, or not at all); another is refused, and so are the
    # flags of a new run
    for extra, said in ([["--out", str(tmp_path / "elsewhere")], "a resumed run goes on in its own directory"],
                        [["--overwrite"], "takes no --overwrite or --from-scratch"],
                        [["--from-scratch"], "takes no --overwrite or --from-scratch"]):
        with pytest.raises(SystemExit):
            main(["--resume", str(tmp_path), "--no-progress", *extra])
        assert said in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_tiny_resume_keeps_the_runs_own_warm_start(tmp_path, monkeypatch):
    """`--tiny --resume DIR` of a GRPO run (whose warm start is not --tiny's PPO one) resumes it as it was."""
    from dataclasses import replace

    from nanoo1 import selfplay
    from nanoo1.config import to_dict
    from nanoo1.recipe import tiny_warmstart

    config = apply_flags(PRESETS["tiny"], {"algo": "grpo", "warmstart": tiny_warmstart("grpo")})
    config = replace(config, run=replace(config.run, out=str(tmp_path)))
    (tmp_path / "iter-0001").mkdir()
    (tmp_path / "iter-0001" / "settings.json").write_text(json.dumps(to_dict(config)))
    (tmp_path / "latest").write_text("iter-0001")
    resumed = []
    monkeypatch.setattr(selfplay, "run", lambda config, **kw: resumed.append(config) or {})
    main(["--tiny", "--resume", str(tmp_path), "--no-progress"])
    assert resumed == [config]


def test_a_run_keeps_its_local_paths_absolute_so_a_resume_from_elsewhere_reads_the_same_files(tmp_path, monkeypatch):
    """A run's settings name its data and warm start as absolute paths (a hub id stays as given): resumed from
    another directory, where the same relative names hold other files, it reads its own (it read the others,
    without a word: another held-out set after training than before). The same relative flags given again on a
    resume, from where the run started, are no conflict."""
    import shutil
    from dataclasses import replace

    from nanoo1 import selfplay
    from nanoo1.config import to_dict
    from nanoo1.runs import local_path
    from nanoo1.warmstart import WARMSTART_DIR

    (tmp_path / "data").mkdir()
    for name in ("train.jsonl", "test.jsonl"):
        shutil.copy(TINY_DIR / name, tmp_path / "data" / name)
    shutil.copytree(WARMSTART_DIR, tmp_path / "ws")
    seen = []
    monkeypatch.setattr(selfplay, "run", lambda config, **kw: seen.append(config) or {})
    monkeypatch.chdir(tmp_path)
    relative = ["--data", "data/train.jsonl", "--test-data", "data/test.jsonl"]
    main(["--tiny", "--warmstart", "ws", *relative, "--out", "run", "--no-progress"])
    started = seen[-1].run
    assert (started.data, started.test_data, started.warmstart) == (
        str(tmp_path / "data" / "train.jsonl"), str(tmp_path / "data" / "test.jsonl"), str(tmp_path / "ws"))
    assert local_path("owner/model") == "owner/model"  # no such file here: a hub id
    run_dir = tmp_path / "run"
    (run_dir / "iter-0001").mkdir(parents=True)
    (run_dir / "iter-0001" / "settings.json").write_text(json.dumps(to_dict(replace(seen[-1], run=replace(
        started, out=str(run_dir))))))
    (run_dir / "latest").write_text("iter-0001")
    main(["--resume", str(run_dir), *relative, "--no-progress"])  # the same flags, from where it started
    assert seen[-1].run.data == started.data
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "elsewhere")
    main(["--resume", str(run_dir), "--no-progress"])
    assert seen[-1].run.test_data == str(tmp_path / "data" / "test.jsonl")


def test_a_kill_during_a_save_leaves_no_metrics_line_twice(tmp_path, warmstart, monkeypatch):
    """Iteration 1's metrics line is written, then the run dies before its checkpoint: resume redoes iteration 1."""
    import nanoo1.selfplay as selfplay

    straight = metrics_of(run(small(tmp_path / "a", warmstart), progress=False) and tmp_path / "a")
    calls, real = [], selfplay.save_checkpoint

    def die_on_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise Killed
        real(*args, **kw)

    monkeypatch.setattr(selfplay, "save_checkpoint", die_on_second)
    with pytest.raises(Killed):
        run(small(tmp_path / "b", warmstart), progress=False)
    assert [m.get("iteration") for m in metrics_of(tmp_path / "b")] == [None, 0, 1]
    monkeypatch.setattr(selfplay, "save_checkpoint", real)
    run(small(tmp_path / "b", warmstart), resume=str(tmp_path / "b"), progress=False)
    assert metrics_of(tmp_path / "b") == straight


def test_resuming_a_finished_run_changes_nothing(tmp_path, warmstart):
    summary = run(small(tmp_path, warmstart, imitation_problems=0), progress=False)
    lines = (tmp_path / "metrics.jsonl").read_text()
    assert run(small(tmp_path, warmstart, imitation_problems=0), resume=str(tmp_path), progress=False) == summary
    assert (tmp_path / "metrics.jsonl").read_text() == lines


def test_a_new_run_never_overwrites_another_unless_told(tmp_path, warmstart):
    config = small(tmp_path, warmstart, iterations=1, imitation_problems=0)
    run(config, progress=False)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run(config, progress=False)
    run(config, progress=False, overwrite=True)
    from nanoo1.recipe import default_out
    assert default_out(apply_flags(PRESETS["tiny"], {"algo": "grpo"})) != default_out(PRESETS["tiny"])


def test_overwrite_never_clears_the_base_of_a_lora_run(tmp_path, warmstart):
    """A LoRA run reads its base again after set-up (its adapters name it), so --model OUT/final --overwrite is
    refused before anything is cleared; a full fine-tune reads its start once and may replace it."""
    import shutil

    from nanoo1.runs import prepare_out

    shutil.copytree(warmstart, tmp_path / "run" / "final")
    config = small(tmp_path / "run", tmp_path / "run" / "final", lora_rank=4)
    with pytest.raises(FileExistsError, match=r"the base model .*final lies in .*final, which --overwrite clears"):
        run(config, progress=False, overwrite=True)
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    from nanoo1.evolve import EvolveConfig, run as evolve
    from nanoo1.recipe import LoRASettings

    shutil.copytree(warmstart, tmp_path / "ev" / "policy-2")  # evolve's policy of an earlier run as the base
    with pytest.raises(FileExistsError, match=r"lies in .*policy-2, which --overwrite clears"):
        evolve(EvolveConfig(out=str(tmp_path / "ev")), str(tmp_path / "ev" / "policy-2"), lora=LoRASettings(rank=4),
               overwrite=True)
    assert (tmp_path / "ev" / "policy-2" / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="copy the base out of"):  # a path inside, spelt otherwise
        prepare_out(tmp_path / "run", True, ("final",), base=str(tmp_path / "run" / "final" / "."))
    prepare_out(tmp_path / "run", True, ("final",), clear=False, base=str(tmp_path / "elsewhere"))
    prepare_out(tmp_path / "run", True, ("final",), base=None)  # full fine-tuning: cleared
    assert not (tmp_path / "run" / "final").exists()


def test_tiny_grpo_starts_from_elastic_reasonings_warm_start(monkeypatch):
    import nanoo1.selfplay as selfplay
    from nanoo1.warmstart import THINK_DIR, WARMSTART_DIR

    seen = []
    monkeypatch.setattr(selfplay, "run", lambda config, **kw: seen.append(config) or {})
    for flags in (["--algo", "grpo"], [], ["--algo", "grpo", "--warmstart", str(WARMSTART_DIR)],
                  ["--algo", "grpo", "--model", str(WARMSTART_DIR)]):  # the warm start's tokenizer is read at set-up
        main(["--tiny", *flags])
    assert [c.run.warmstart for c in seen] == [str(THINK_DIR), str(WARMSTART_DIR), str(WARMSTART_DIR), str(WARMSTART_DIR)]


@pytest.mark.parametrize("flags,message", [
    ([], "say what to run"),
    (["--tiny", "--algo", "pp0"], "--algo is 'pp0', expected one of"),
    (["--tiny", "--loss-type", "grpoo"], "--loss-type is 'grpoo'"),
    (["--tiny", "--check-equations", "ture"], "'ture' is not a boolean"),
    (["--tiny", "--iterations", "0"], "--iterations must be > 0"),
    (["--tiny", "--lr", "inf"], "--lr must be finite, got inf"),
    (["--tiny", "--algo", "grpo", "--group-size", "1"], "--group-size must be at least 2"),
    (["--tiny", "--lr-decay", "2"], "--lr-decay must lie in [0, 1]"),
    (["--tiny", "--threads", "0"], "--threads: 0 must be at least 1"),
    (["--tiny", "--data", "SMALL"], "3 problems, but every iteration draws 392"),
    (["--tiny", "--data", "MISSING"], "dataset file not found"),
    (["--tiny", "--from-scratch", "--model", "data/tiny/warmstart"], "--from-scratch trains the tiny warm start itself"),
    (["--tiny", "--from-scratch", "--warmstart", "mine"], "it takes no --model or --warmstart"),
    pytest.param(["--tiny", "--device", "cuda"], "--device cuda: torch sees no CUDA device",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")),
])
def test_bad_settings_and_inputs_are_refused_before_any_work(tmp_path, flags, message, capsys, monkeypatch):
    import nanoo1.selfplay as selfplay

    monkeypatch.setattr(selfplay, "run", lambda *a, **kw: pytest.fail("the run started"))
    small_data = tmp_path / "small.jsonl"
    small_data.write_text("".join(json.dumps({"question": f"q{i}", "answer": "#### 1"}) + "\n" for i in range(3)))
    flags = [str(small_data) if f == "SMALL" else str(tmp_path / "missing.jsonl") if f == "MISSING" else f for f in flags]
    with pytest.raises(SystemExit):
        main(flags + ["--out", str(tmp_path / "run")])
    assert message in capsys.readouterr().err


def test_a_warm_start_without_its_tokenizer_is_refused_before_the_run_it_replaces_is_cleared(tmp_path, warmstart, capsys):
    """--warmstart is checked as --model is, and evolve's --model too: a checkpoint without tokenizer.json is a usage
    error before --overwrite clears the run in --out (it crashed in the policy after clearing it)."""
    import nanoo1.evolve as evolve

    bare = tmp_path / "bare"
    shutil.copytree(warmstart, bare)
    (bare / "tokenizer.json").unlink()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    for command in (lambda: main(["--tiny", "--warmstart", str(bare), "--out", str(tmp_path / "run"), "--overwrite"]),
                    lambda: evolve.main(["--model", str(bare), "--data", str(TINY_DIR / "train.jsonl"), "--test-data",
                                         str(TINY_DIR / "test.jsonl"), "--out", str(tmp_path / "run"), "--overwrite"])):
        with pytest.raises(SystemExit):
            command()
        assert re.search(r"tokenizer.json: tokenizer file not found|no tokenizer.json beside", capsys.readouterr().err)
        assert (tmp_path / "run" / "metrics.jsonl").read_text() == "{}\n"


def test_a_missing_model_or_unfitting_adapters_are_messages_not_tracebacks(tmp_path, warmstart, capsys):
    from nanoo1 import eval as eval_cli
    from nanoo1.adapters import save_lora
    from nanoo1.lora import apply_lora
    from nanoo1.model import Gemma2Config

    with pytest.raises(SystemExit):
        main(["--tiny", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "run")])
    assert "no checkpoint directory at" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")
    with pytest.raises(SystemExit):  # --out under a file
        main(["--tiny", "--model", str(warmstart), "--out", str(tmp_path / "a-file" / "run")])
    assert "a-file" in capsys.readouterr().err
    deeper = Gemma2Config.preset("tiny", vocab_size=512, num_hidden_layers=5)  # the warm start has 4 layers
    save_lora(apply_lora(random_model(deeper), ("q_proj",), rank=2), tmp_path / "adapters")
    with pytest.raises(SystemExit):
        eval_cli.main(["--checkpoint", str(warmstart), "--adapters", str(tmp_path / "adapters"), "--limit", "1"])
    assert "adapter_model.safetensors: key 'base_model.model.model.layers.4." in capsys.readouterr().err


@pytest.mark.parametrize("module,flags,message", [
    ("generate", ["--top-p", "2"], r"--top-p 2.0: expected a number in \(0, 1\]"),
    ("generate", ["--top-k", "-5"], "--top-k -5"), ("generate", ["--temperature", "nan"], "--temperature nan"),
    ("generate", ["--device", "gpu"], "--device is 'gpu', expected cpu, cuda, cuda:N or auto"),
    ("generate", ["--checkpoint", "{ws-no-vocab}"], "config.json: missing key 'vocab_size'"),
    ("eval", ["--checkpoint", "{ws}", "--temperature", "nan"], "--temperature nan"),
    ("eval", ["--checkpoint", "{ws}", "--max-rows", "-1"], "--max-rows -1"),
    ("eval", ["--checkpoint", "{ws}", "--max-thought-tokens", "0"], "--max-thought-tokens: 0 must be at least 1"),
    ("eval", ["--checkpoint", "{ws}", "--out", "{file}/eval"], "is a file, not a directory"),
    ("warmstart", ["--steps", "0"], "--steps: 0 must be at least 1"),
    ("warmstart", ["--out", "{file}/ws"], "is a file, not a directory"),
    ("adapters", ["merge", "--base", "{ws}", "--adapters", "{adapters}", "--out", "{file}"], "is a file, not a directory")])
def test_entry_points_refuse_bad_flags_and_paths_before_any_work(module, flags, message, tmp_path, warmstart, capsys):
    """Each is a usage message naming the flag, value or file, given before a model is trained or evaluated."""
    import importlib
    from nanoo1.adapters import save_lora
    from nanoo1.lora import apply_lora
    from nanoo1.model import Gemma2Config

    (tmp_path / "a-file").write_text("")
    shutil.copytree(warmstart, tmp_path / "ws")
    config = json.loads((tmp_path / "ws" / "config.json").read_text())
    del config["vocab_size"]
    (tmp_path / "ws" / "config.json").write_text(json.dumps(config))
    save_lora(apply_lora(random_model(Gemma2Config.preset("tiny", vocab_size=512)), ("q_proj",), rank=2), tmp_path / "ad")
    names = {"{ws-no-vocab}": tmp_path / "ws", "{ws}": warmstart, "{file}": tmp_path / "a-file", "{adapters}": tmp_path / "ad"}
    for key, path in names.items():
        flags = [f.replace(key, str(path)) for f in flags]
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"nanoo1.{module}").main(flags)
    assert e.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_a_hostile_trainer_state_runs_no_code(tmp_path, warmstart, monkeypatch):
    import pickle

    killed_after_first_checkpoint(small(tmp_path, warmstart), monkeypatch)
    witness = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self):
            return (open, (str(witness), "w"))

    good = torch.load(tmp_path / "iter-0000" / "trainer_state.pt", weights_only=True)
    (tmp_path / "iter-0000" / "trainer_state.pt").write_bytes(pickle.dumps({"iteration": Hostile()}))
    with pytest.raises(ValueError, match="trainer_state.pt: not a readable trainer state"):
        run(small(tmp_path, warmstart), resume=str(tmp_path), progress=False)
    assert not witness.exists()
    # readable but incomplete: each named, not a KeyError or IndexError deep in the resume
    for state, message in (({"iteration": 0}, "no optimizer, policy_rng"), ([1], "no iteration"),
                           ({k: None for k in ("iteration", "optimizer", "policy_rng", "python_rng", "torch_rng")}
                            | {"metrics": []}, "metrics do not start with the evaluation before"),
                           ({**good, "iteration": 1}, "iteration 1 with 1 iterations' metrics"),
                           ({**good, "metrics": good["metrics"][:1] + [{}]}, "its seconds")):
        torch.save(state, tmp_path / "iter-0000" / "trainer_state.pt")
        with pytest.raises(ValueError, match=f"trainer_state.pt: .*{message}"):
            run(small(tmp_path, warmstart), resume=str(tmp_path), progress=False)
    # of another run or version: named, not a traceback from the generator or the optimizer
    for state in ({**good, "torch_rng": torch.zeros(5, dtype=torch.uint8)}, {**good, "optimizer": {"state": {}, "param_groups": []}}):
        torch.save(state, tmp_path / "iter-0000" / "trainer_state.pt")
        with pytest.raises(ValueError, match="iter-0000: its trainer state does not fit this run"):
            run(small(tmp_path, warmstart), resume=str(tmp_path), progress=False)
    (tmp_path / "summary.json").write_text('{"greedy')  # a finished run's summary, cut short
    with pytest.raises(ValueError, match="summary.json: not the summary of a finished run"):
        run(small(tmp_path, warmstart), resume=str(tmp_path), progress=False)


def test_eval_command_refuses_unknown_methods_and_writes_beside_not_into_the_checkpoint(tmp_path, warmstart, monkeypatch, capsys):
    from nanoo1 import eval as eval_cli

    with pytest.raises(SystemExit):
        eval_cli.main(["--checkpoint", str(warmstart), "--methods", "greedy,mtcs"])
    assert "unknown ['mtcs']" in capsys.readouterr().err
    (tmp_path / "empty.jsonl").write_text("")  # a usage error before the model loads, not a division by zero after
    with pytest.raises(SystemExit):
        eval_cli.main(["--checkpoint", str(warmstart), "--data", str(tmp_path / "empty.jsonl"), "--methods", "greedy"])
    assert "empty.jsonl: no problems" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        eval_cli.main(["--checkpoint", str(warmstart), "--limit", "2", "--methods", "greedy", "--max-thought-tokens", "4"])
    name = f"{warmstart.parent.name}-{warmstart.name}"  # the checkpoint's last two path parts
    rows = (tmp_path / "runs" / "eval" / name / "eval.jsonl").read_text().splitlines()
    assert len(rows) == 1 and not (warmstart / "eval.jsonl").exists()  # replaced, not appended
    for run_dir in ("a", "b"):  # two runs' final checkpoints: two folders, not one replaced by the other
        shutil.copytree(warmstart, tmp_path / run_dir / "final")
        eval_cli.main(["--checkpoint", f"{run_dir}/final", "--limit", "1", "--methods", "greedy", "--max-thought-tokens", "4"])
    assert (tmp_path / "runs" / "eval" / "a-final" / "eval.jsonl").exists() and (tmp_path / "runs" / "eval" / "b-final").exists()
    assert [eval_cli.run_name(p) for p in ("/model", "owner/name", "final")] == ["model", "owner-name", "final"]  # no root
    from nanoo1.adapters import save_lora
    from nanoo1.lora import apply_lora

    save_lora(apply_lora(random_model(TINY_MODEL), ("q_proj",), rank=2), tmp_path / "run" / "final")
    eval_cli.main(["--checkpoint", str(warmstart), "--adapters", str(tmp_path / "run" / "final"), "--limit", "1",
                   "--methods", "greedy", "--max-thought-tokens", "4"])
    assert (tmp_path / "runs" / "eval" / f"{name}+run-final" / "eval.jsonl").exists()  # not over the base's


@pytest.mark.parametrize("module,flags,message", [
    ("eval", ["--checkpoint", "X", "--budgets", "1,0"], "every budget must be at least 1"),
    ("eval", ["--checkpoint", "X", "--budgets", "1,two"], "expected comma-separated whole numbers"),
    ("eval", ["--checkpoint", "X", "--check-equations", "ture"], "'ture' is not a boolean"),
    ("eval", ["--checkpoint", "X", "--limit", "0"], "0 must be at least 1"),
    ("eval", ["--checkpoint", "X", "--temperature", "0"], "--temperature 0.0: expected a number above 0"),
    ("evolve", ["--tiny", "--bf16", "ture"], "'ture' is not a boolean"),
    ("evolve", ["--tiny", "--rounds", "x"], "invalid int value"),
    ("generate", ["--max-new-tokens", "0"], "0 must be at least 1"),
])
def test_every_entry_point_refuses_bad_flag_values_at_once(module, flags, message, capsys):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(f"nanoo1.{module}").main(flags)
    assert message in capsys.readouterr().err


def test_a_lora_run_in_bf16_trains_only_the_adapters_and_resumes_exactly(tmp_path, warmstart, monkeypatch):
    """PPO, the value head and the imitation steps all train through the adapters; the base stays bit for bit."""
    import nanoo1.selfplay as selfplay
    from nanoo1 import iteration

    seen = []
    real_eval = selfplay.evaluate_all
    monkeypatch.setattr(selfplay, "evaluate_all", lambda model, *a, **kw: seen.append(model) or real_eval(model, *a, **kw))
    monkeypatch.setattr(iteration, "grade", lambda results, truths: [len(r.path) > 1 for r in results])  # imitation runs
    kw = dict(lora_rank=4, dtype="bfloat16", bf16=False, check_equations=False, imitation_problems=4, eval_best_of_n=1,
              eval_simulations=1)
    straight = run(small(tmp_path / "a", warmstart, **kw), progress=False)
    trained = seen[-1]
    base, _ = load_pretrained(warmstart, dtype="bfloat16")
    frozen = {k: v for k, v in trained.state_dict().items() if "lora_" not in k}
    assert frozen.keys() == base.state_dict().keys()
    assert all(torch.equal(v, base.state_dict()[k]) for k, v in frozen.items())  # the base, bit for bit
    adapters = {k: v for k, v in trained.state_dict().items() if "lora_B" in k}
    assert adapters and all(v.dtype == torch.float32 for v in adapters.values())
    assert sum(int(v.abs().sum() > 0) for v in adapters.values()) == len(adapters)  # every adapter learned
    final = tmp_path / "a" / "final"
    assert (final / "adapter_model.safetensors").exists() and not (final / "model.safetensors").exists()
    killed_after_first_checkpoint(small(tmp_path / "b", warmstart, **kw), monkeypatch)
    resumed = run(small(tmp_path / "b", warmstart, **kw), resume=str(tmp_path / "b"), progress=False)
    drop = ("wall_s", "checkpoint")
    assert {k: v for k, v in straight.items() if k not in drop} == {k: v for k, v in resumed.items() if k not in drop}
    again = (tmp_path / "b" / "final" / "adapter_model.safetensors").read_bytes()
    assert again == (final / "adapter_model.safetensors").read_bytes()


def test_a_model_without_tiny_takes_the_2b_preset_and_needs_its_data(capsys, monkeypatch):
    import nanoo1.selfplay as selfplay

    monkeypatch.setattr(selfplay, "run", lambda *a, **kw: pytest.fail("the run started"))
    with pytest.raises(SystemExit):
        main(["--model", "owner/name"])
    assert "--data: no file given" in capsys.readouterr().err
    two_b = PRESETS["2b"]
    assert (two_b.lora.rank, two_b.run.dtype, two_b.run.device) == (16, "bfloat16", "auto")
    with pytest.raises(SystemExit):  # bf16 weights stepped by AdamW themselves would lose most updates
        main(["--model", "owner/name", "--lora-rank", "0", "--data", str(TINY_DIR / "train.jsonl"),
              "--test-data", str(TINY_DIR / "test.jsonl")])
    assert "--lora-rank 0 (full fine-tuning) with --dtype bfloat16" in capsys.readouterr().err
    full = apply_flags(PRESETS["2b"], {"lora_rank": 0, "dtype": "float32", "bf16": True})  # the way to fine-tune fully
    assert (full.lora.rank, full.run.dtype) == (0, "float32")


def test_a_model_without_the_formats_tokens_is_refused_before_its_weights_are_read(tmp_path, capsys, monkeypatch):
    """google/gemma-2-2b's tokenizer has none of the thought format's tokens: a usage error names them (and the
    checkpoint that has them) before the run loads the model, and GRPO's format, whose token it has, is let
    through."""
    import nanoo1.selfplay as selfplay
    from nanoo1.tasks import make_problems
    from nanoo1.tokenizer import CONTROL_TOKENS, THINK_TOKENS, train_tokenizer

    tok = train_tokenizer([p.question for p in make_problems(200, 0)], 400, special_tokens=CONTROL_TOKENS + THINK_TOKENS)
    save_pretrained(random_model(TINY_MODEL, seed=0), tok, tmp_path / "plain")
    started = []
    monkeypatch.setattr(selfplay, "run", lambda config, **kw: started.append(config.run.algo) or {})
    data = ["--data", str(TINY_DIR / "train.jsonl"), "--test-data", str(TINY_DIR / "test.jsonl"), "--device", "cpu"]
    with pytest.raises(SystemExit):
        main(["--model", str(tmp_path / "plain"), *data, "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "has no <end_of_thought>, <conclusion>, <start_of_rating>" in err and "OpenLongCoT-Base-Gemma2-2B" in err
    main(["--model", str(tmp_path / "plain"), *data, "--out", str(tmp_path / "b"), "--algo", "grpo"])
    assert started == ["grpo"]
    from nanoo1 import eval as eval_cli  # eval likewise, by method, before it reads a weight

    loads, load = [], eval_cli.load_pretrained
    monkeypatch.setattr(eval_cli, "load_pretrained", lambda *a, **k: loads.append(a) or load(*a, **k))
    with pytest.raises(SystemExit):
        eval_cli.main(["--checkpoint", str(tmp_path / "plain"), "--methods", "budget,mcts", "--out", str(tmp_path / "e")])
    assert "has no <end_of_thought>" in capsys.readouterr().err and not (tmp_path / "e").exists() and not loads
    eval_cli.main(["--checkpoint", str(tmp_path / "plain"), "--methods", "budget", "--budgets", "2", "--limit", "1",
                   "--out", str(tmp_path / "e")])
    assert (tmp_path / "e" / "eval.jsonl").exists()


def test_memory_estimate_of_the_2b_preset_fits_a_16_gb_card():
    from nanoo1.model import Gemma2Config
    from nanoo1.recipe import memory_estimate

    need = memory_estimate(PRESETS["2b"], Gemma2Config.preset("2b"))
    assert need["weights"] == pytest.approx(2_614_341_888 * 2 / 2 ** 30, rel=1e-6)  # bf16, tied embeddings
    assert 0 < need["trained + optimizer"] < 1 and sum(need.values()) < 16
    full = memory_estimate(apply_flags(PRESETS["2b"], {"lora_rank": 0, "dtype": "float32"}), Gemma2Config.preset("2b"))
    assert full["trained + optimizer"] == pytest.approx(2_614_341_888 * 12 / 2 ** 30, rel=1e-6)  # grads, 2 moments
    # GRPO: the budget table's unlimited row fills the context, 32 rows (max_rows) of 8192 slots of K and V,
    # 26 layers x 4 heads x 256 in bf16; without max_rows a row for each of the 200 held-out problems
    grpo = memory_estimate(apply_flags(PRESETS["2b"], {"algo": "grpo"}), Gemma2Config.preset("2b"))
    assert grpo["kv cache"] == pytest.approx(32 * 8192 * 2 * 26 * 4 * 256 * 2 / 2 ** 30)
    wide = memory_estimate(apply_flags(PRESETS["2b"], {"algo": "grpo", "max_rows": 0}), Gemma2Config.preset("2b"))
    assert wide["kv cache"] == pytest.approx(200 / 32 * grpo["kv cache"])


def test_grpo_with_lora_takes_its_kl_against_the_base_with_the_adapters_off(tmp_path, warmstart, monkeypatch, capsys):
    import nanoo1.elastic as elastic

    monkeypatch.setattr(elastic, "check", lambda text, truth: len(text) % 2 == 0)  # rewards differ within a group
    kw = dict(algo="grpo", group_size=4, think_budget=8, solution_budget=4, problems_per_iteration=2, rounds=1, lora_rank=4,
              kl_beta=0.1, grpo_lr=1e-2, eval_best_of_n=1, eval_simulations=1)
    run(small(tmp_path, warmstart, **kw), progress=False)
    kl = [m["kl"] for m in metrics_of(tmp_path)[1:-1]]
    assert kl[0] == 0.0 and kl[1] > 0  # the adapters start at zero (the policy is the base), then move away from it
    with pytest.raises(ValueError, match="--kl-beta needs --lora-rank"):
        small(tmp_path, warmstart, algo="grpo", kl_beta=0.1)


def test_the_data_must_hold_one_iterations_draw_and_the_held_out_set_is_its_first_eval_problems(tmp_path, warmstart):
    """A training file of exactly the problems one iteration draws is enough; one fewer is refused, naming the
    flags behind the count (PPO: its search's and its imitation's problems; GRPO: its rounds'). The held-out
    problems are the first --eval-problems (the quick checks' the first --eval-quick, more or fewer) of a file
    that must hold some; an iteration needs a problem per rank, and so do PPO's imitation problems."""
    from dataclasses import replace

    from nanoo1.selfplay import check_shares, load_problems

    def jsonl(name, n):
        rows = [json.dumps({"question": f"q{i}", "answer": "#### 1"}) + "\n" for i in range(n)]
        (tmp_path / name).write_text("".join(rows))
        return str(tmp_path / name)

    config = small(tmp_path, warmstart, data=jsonl("six.jsonl", 6), test_data=jsonl("test.jsonl", 5))  # draws 3 + 3
    train, test, quick = load_problems(config)
    assert len(train) == 6 and [p.question for p in test] == ["q0", "q1", "q2"] and len(quick) == 5  # 3 and 100 asked
    assert [p.question for p in load_problems(replace(config, eval=replace(config.eval, quick=2)))[2]] == ["q0", "q1"]
    with pytest.raises(ValueError, match=r"5 problems, but every iteration draws 6 distinct ones "
                                         r"\(--problems-per-iteration \+ --imitation-problems\)"):
        load_problems(small(tmp_path, warmstart, data=jsonl("five.jsonl", 5), test_data=config.run.test_data))
    with pytest.raises(ValueError, match=r"draws 6 distinct ones \(--problems-per-iteration x --rounds\)"):
        load_problems(small(tmp_path, warmstart, algo="grpo", rounds=2, data=jsonl("five.jsonl", 5),
                            test_data=config.run.test_data))
    with pytest.raises(ValueError, match="empty.jsonl: no held-out problems"):
        load_problems(small(tmp_path, warmstart, data=config.run.data, test_data=jsonl("empty.jsonl", 0)))
    check_shares(config, 3)  # 3 problems an iteration on 3 ranks: one each
    with pytest.raises(ValueError, match="--problems-per-iteration 3: fewer than the 4 ranks"):
        check_shares(config, 4)
    # imitation steps as many as the rank with the fewest chains: a rank without a problem would stop them all
    with pytest.raises(ValueError, match="--imitation-problems 2: fewer than the 3 ranks"):
        check_shares(small(tmp_path, warmstart, imitation_problems=2), 3)
    check_shares(small(tmp_path, warmstart, imitation_problems=0), 3)  # no imitation at all
    check_shares(small(tmp_path, warmstart, imitation_problems=2, algo="grpo"), 3)  # GRPO imitates nothing


def test_a_runs_summary_and_quick_checks_come_from_the_right_evaluations(tmp_path, warmstart, monkeypatch):
    """The summary's sft_* figures are the evaluation before training, final_* the one after; with --eval-every 2
    the quick greedy check runs after the 2nd and 4th iterations, on the first --eval-quick held-out problems;
    without --imitation-problems no imitation step runs; the last --keep-checkpoints checkpoints stay; --overwrite
    clears another run's metrics first."""
    import nanoo1.selfplay as selfplay

    def evaluate_all(model, tokenizer, problems, config, tag, progress, seed):
        accuracy = {"before": 0.25, "after": 0.5}[tag]
        return {name: EvalResult(name, 2, accuracy + i / 100, 1.0, 0.0)
                for i, name in enumerate(("greedy", "best_of_2", "mcts_2"))}

    quick = []
    monkeypatch.setattr(selfplay, "evaluate_all", evaluate_all)
    monkeypatch.setattr(selfplay, "ppo_iteration", lambda *a: {"solved": 0.0})  # draws nothing from the buffers
    monkeypatch.setattr(selfplay, "imitation_iteration", lambda *a: pytest.fail("imitation without its problems"))
    monkeypatch.setattr(selfplay, "evaluate_sharded",
                        lambda job, problems: quick.append(len(problems)) or EvalResult("greedy", 1, 0.125, 1.0, 0.0))
    config = small(tmp_path, warmstart, iterations=4, eval_every=2, eval_quick=2, imitation_problems=0, seed=3,
                   keep_checkpoints=3)
    (tmp_path / "metrics.jsonl").write_text('{"iteration": 9}\n')  # another run's, which --overwrite clears
    summary = run(config, progress=False, overwrite=True)
    assert len(metrics_of(tmp_path)) == 1 + 4 + 1 and metrics_of(tmp_path)[0]["eval"] == "before"
    assert {k: summary[k] for k in ("sft_greedy", "final_greedy", "sft_best_of_n", "final_best_of_n", "sft_mcts",
                                    "final_mcts")} == {"sft_greedy": 0.25, "final_greedy": 0.5, "sft_best_of_n": 0.26,
                                                       "final_best_of_n": 0.51, "sft_mcts": 0.27, "final_mcts": 0.52}
    assert [m["iteration"] for m in metrics_of(tmp_path)[1:-1] if "greedy_quick" in m] == [1, 3] and quick == [2, 2]
    assert sorted(p.name for p in tmp_path.glob("iter-*")) == ["iter-0001", "iter-0002", "iter-0003"]  # the last 3
    # the replay buffer (prioritized by --alpha) and the imitation memory (uniform) draw from generators of their own
    replay = PrioritizedReplay.load(latest_checkpoint(tmp_path) / "replay.pt")
    memory = PrioritizedReplay.load(latest_checkpoint(tmp_path) / "imitation.pt")
    fresh = lambda seed: np.random.default_rng(seed).bit_generator.state
    assert (replay.capacity, replay.alpha, replay.rng.bit_generator.state) == (
        config.ppo.replay_capacity, config.ppo.alpha, fresh(3))
    assert (memory.capacity, memory.alpha, memory.rng.bit_generator.state) == (config.imitation.memory, 0.0, fresh(4))


def test_a_grpo_run_hands_its_seed_to_the_rollouts_and_logs_their_learning_rate(tmp_path, warmstart, monkeypatch):
    """GRPO's rollouts draw from the run's --seed; each iteration's metrics carry GRPO's own learning rate (not
    PPO's --lr); its quick check is greedy at the thinking budget t* on the first --eval-quick problems."""
    import nanoo1.selfplay as selfplay
    from nanoo1.elastic import budget_jobs

    rollouts, quick = [], []
    monkeypatch.setattr(selfplay, "evaluate_all", lambda model, tokenizer, problems, config, *a: {
        name: EvalResult("budget", None, 0.0, 1.0, 0.0) for name in budget_jobs(model, tokenizer, config, problems)})
    monkeypatch.setattr(selfplay, "report_budgets", lambda *a: None)
    monkeypatch.setattr(selfplay, "grpo_iteration", lambda model, tok, opt, problems, it, c, seed:
                        rollouts.append((len(problems), seed, c.grpo.grpo_lr)) or {})
    monkeypatch.setattr(selfplay, "budget_job", lambda model, tok, config, budget: budget)
    monkeypatch.setattr(selfplay, "evaluate_sharded", lambda budget, problems:
                        quick.append((budget, len(problems))) or EvalResult("budget", budget, 0.0, 1.0, 0.0))
    run(small(tmp_path, warmstart, algo="grpo", seed=3, lr=1e-4, grpo_lr=2e-3, think_budget=8, rounds=2,
              problems_per_iteration=2, eval_quick=2), progress=False)
    assert [(n, seed) for n, seed, _ in rollouts] == [(4, 3), (4, 3)] and quick == [(8, 2), (8, 2)]
    assert [m["lr"] for m in metrics_of(tmp_path)[1:-1]] == [lr for *_, lr in rollouts] and rollouts[0][2] == 2e-3


def test_a_resumed_run_never_trains_its_warm_start_again(tmp_path, monkeypatch):
    """--from-scratch trains the warm start of a new run only: resuming one continues from its latest checkpoint
    on the warm start it was started with."""
    from dataclasses import replace

    import nanoo1.selfplay as selfplay
    from nanoo1.config import to_dict

    config = apply_flags(PRESETS["tiny"], {"warmstart": "its-own"})
    config = replace(config, run=replace(config.run, out=str(tmp_path)))
    (tmp_path / "iter-0001").mkdir()
    (tmp_path / "iter-0001" / "settings.json").write_text(json.dumps(to_dict(config)))
    (tmp_path / "latest").write_text("iter-0001")
    loads = []

    def load_model(config, start_dir, device):
        loads.append((config.run.warmstart, start_dir))
        raise Killed

    monkeypatch.setattr(selfplay, "train_warmstart", lambda *a, **kw: pytest.fail("the warm start was trained again"))
    monkeypatch.setattr(selfplay, "load_model", load_model)
    with pytest.raises(Killed):
        run(config, resume=str(tmp_path), from_scratch=True, progress=False)
    assert loads == [("its-own", tmp_path / "iter-0001")]


def test_a_warm_start_trained_into_the_run_is_named_absolutely(tmp_path, monkeypatch):
    """--from-scratch trains the warm start into OUT/warmstart; the run's settings name it absolutely, as they do
    --data and --warmstart, so a resume from another directory loads it (and no other directory's)."""
    from dataclasses import replace

    import nanoo1.selfplay as selfplay

    monkeypatch.chdir(tmp_path)
    config = replace(PRESETS["tiny"], run=replace(PRESETS["tiny"].run, out="rel"))
    loads = []

    def load_model(config, start_dir, device):
        loads.append(config.run.warmstart)
        raise Killed

    monkeypatch.setattr(selfplay, "train_warmstart", lambda *a, **kw: None)
    monkeypatch.setattr(selfplay, "load_model", load_model)
    with pytest.raises(Killed):
        run(config, from_scratch=True, progress=False)
    assert loads == [str(tmp_path / "rel" / "warmstart")]


def test_self_plays_evaluations_sample_as_the_run_does_and_mcts_checks_its_steps(monkeypatch):
    """Greedy, best-of-N and MCTS rows search at the run's temperature, thought length, max_rows and seed, and the
    MCTS row checks every step with the run's step checker (`a op b = c` must hold) and expands the run's number of
    candidates, as the training search does."""
    import nanoo1.selfplay as selfplay
    from nanoo1.steps import equations_hold

    seen = []
    monkeypatch.setattr(selfplay, "evaluate", lambda model, tok, ps, method, budget=1, **kw: seen.append(
        (method, budget, kw)) or EvalResult(method, budget, 0.0, 1.0, 0.0))
    config = apply_flags(PRESETS["tiny"], dict(temperature=0.9, max_thought_tokens=7, max_rows=5, eval_best_of_n=3,
                                               eval_simulations=4, num_candidates=2))
    assert list(selfplay.evaluate_all("model", "tok", ["p"], config, "before", False, 11)) == [
        "greedy", "best_of_3", "mcts_4"]
    sampling = {"temperature": 0.9, "max_thought_tokens": 7, "max_rows": 5, "seed": 11}
    assert [(method, budget, {k: kw[k] for k in sampling}) for method, budget, kw in seen] == [
        ("greedy", 1, sampling), ("best_of_n", 3, sampling), ("mcts", 4, sampling)]
    assert seen[2][2]["mcts"].verify is equations_hold and seen[2][2]["mcts"].answer == "vote"
    assert (seen[2][2]["mcts"].num_candidates, seen[2][2]["mcts"].max_children) == (2, 2)


def test_search_config_carries_the_budget_and_the_callers_mcts_settings():
    """Best-of-N: N chains and a majority vote; beam: N beams; MCTS: `budget` simulations of the caller's MCTS
    settings (self-play hands in its step checker), else of EVAL_MCTS (every simulation runs, the conclusions
    vote)."""
    from dataclasses import replace

    from nanoo1.eval import EVAL_MCTS, search_config
    from nanoo1.steps import equations_hold

    assert (search_config("best_of_n", 3).n, search_config("best_of_n", 3).vote) == (3, "majority")
    assert (search_config("beam", 3).n, search_config("beam", 3).expand) == (3, 4)
    mine = search_config("mcts", 5, replace(EVAL_MCTS, verify=equations_hold)).mcts
    assert (mine.simulations, mine.verify, mine.rollout, mine.answer) == (5, equations_hold, True, "vote")
    default = search_config("mcts", 2).mcts
    assert (default.simulations, default.verify, default.rollout, default.answer) == (2, None, True, "vote")


def test_evaluate_reports_accuracy_and_generated_tokens_per_problem(warmstart, monkeypatch):
    """Over 4 problems, 2 right and 3 + 5 + 10 + 2 tokens generated: accuracy 0.5, 5 tokens a problem."""
    from types import SimpleNamespace

    import nanoo1.eval as eval_mod
    from nanoo1.tasks import load_jsonl

    model, tok = load_pretrained(warmstart)
    monkeypatch.setattr(eval_mod, "search", lambda policy, questions, config: [
        SimpleNamespace(spent=SimpleNamespace(generated=g)) for g in (3, 5, 10, 2)])
    monkeypatch.setattr(eval_mod, "grade", lambda results, truths: [True, False, True, False])
    r = eval_mod.evaluate(model, tok, load_jsonl(TINY_DIR / "test.jsonl")[:4], "best_of_n", 2)
    assert (r.method, r.budget, r.accuracy, r.tokens) == ("best_of_n", 2, 0.5, 5.0)


def test_budgeted_evaluation_grades_what_follows_the_thinking(warmstart, monkeypatch):
    """The <think> format's answer is what comes after </think>: a boxed number inside the thinking is no
    answer. Tokens are counted per problem. Unlimited thinking is all the context leaves: the longest prompt, the
    thinking, the forced </think> and the answer fill it exactly."""
    from types import SimpleNamespace

    import nanoo1.eval as eval_mod
    from nanoo1.tasks import Problem, think_prompt

    model, tok = load_pretrained(warmstart)
    texts, thinks = ["<think>\\boxed{5}</think> the answer is 8", "<think>8</think> the answer is 5"], []
    monkeypatch.setattr(eval_mod, "generate_budgeted", lambda model, prompts, think, *a, **kw: thinks.append(think) or [
        SimpleNamespace(text=t, tokens=[1] * n) for t, n in zip(texts, (6, 2))])
    problems = [Problem("q", "8", []), Problem("a longer question", "8", [])]
    r = eval_mod.evaluate_budgeted(model, tok, problems, 4)
    assert (r.method, r.budget, r.accuracy, r.tokens) == ("budget", 4, 0.5, 4.0)
    assert eval_mod.evaluate_budgeted(model, tok, problems, None, solution_budget=6).budget is None
    longest = len(tok.encode(think_prompt("a longer question")))
    assert thinks == [4, model.config.max_position_embeddings - longest - 1 - 6]
    # a share of a sharded evaluation thinks as long as the whole set would: the room of room_for's longest prompt
    eval_mod.evaluate_budgeted(model, tok, problems[:1], None, solution_budget=6, room_for=problems)
    assert thinks[-1] == model.config.max_position_embeddings - longest - 1 - 6
    context = model.config.max_position_embeddings  # unlimited, with a prompt that leaves no room: refused by name
    with pytest.raises(ValueError, match=f"longest prompt \\(\\d+ tokens\\).*context of {context} tokens"):
        eval_mod.evaluate_budgeted(model, tok, [Problem("7 " * context, "8", [])], None)


def test_run_name_reads_a_relative_checkpoint_from_where_it_lies(tmp_path, monkeypatch):
    """Inside runs/tiny, --checkpoint final is still tiny-final (the path resolved first), not every run's final."""
    from nanoo1.eval import run_name

    (tmp_path / "tiny" / "final").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "tiny")
    assert run_name("final") == "tiny-final" and run_name("final/.") == "tiny-final"


def test_sharded_evaluation_weighs_each_ranks_share(monkeypatch):
    """Rank 0 of 3 evaluates problems 0 and 3 of 4; rank 1 took problem 1, rank 2 problem 2: accuracy and tokens
    are those of the whole set (each rank weighted by its problems), seconds the slowest rank's. A rank left
    without a problem (more ranks than problems) sends nothing that counts."""
    import nanoo1.eval as eval_mod
    from nanoo1.dist import Place

    mine = []
    job = lambda ps: mine.append(ps) or EvalResult("greedy", 1, 1.0, 10.0, 2.0)
    others = [[(EvalResult("greedy", 1, 0.0, 4.0, 5.0), 1), (EvalResult("greedy", 1, 0.0, 2.0, 1.0), 1)],
              [(None, 0), (None, 0)]]
    monkeypatch.setattr(eval_mod.dist, "place", lambda: Place(rank=0, world=3))
    wholes = (EvalResult("greedy", 1, 0.5, 6.5, 5.0), EvalResult("greedy", 1, 1.0, 10.0, 2.0))
    for rest, expected in zip(others, wholes):
        monkeypatch.setattr(eval_mod.dist, "gather", lambda obj: [obj] + rest)
        assert eval_mod.evaluate_sharded(job, [0, 1, 2, 3]) == expected and mine[-1] == [0, 3]


def test_eval_command_hands_its_settings_to_every_evaluation(tmp_path, warmstart, monkeypatch):
    """The searches get --temperature, --max-thought-tokens, --max-rows and the seed, the budget method
    --solution-budget (16 by default, the tiny recipe's; a 2b run's table needs its 256), --max-rows and the seed
    ('unlimited' alone is a budget too), each the first --limit problems; on a CPU the weights are read in float32."""
    from nanoo1 import eval as eval_cli

    seen, dtypes, load = [], [], eval_cli.load_pretrained
    monkeypatch.setattr(eval_cli, "load_pretrained", lambda *a, **kw: dtypes.append(kw["dtype"]) or load(*a, **kw))
    monkeypatch.setattr(eval_cli, "evaluate", lambda model, tok, ps, method, budget, **kw: seen.append(
        (method, budget, len(ps), kw)) or EvalResult(method, budget, 0.0, 1.0, 0.0))
    monkeypatch.setattr(eval_cli, "evaluate_budgeted", lambda model, tok, ps, budget, room_for, **kw: seen.append(
        ("budget", budget, len(ps), kw, room_for == ps)) or EvalResult("budget", budget, 0.0, 1.0, 0.0))
    common = ["--checkpoint", str(warmstart), "--device", "cpu", "--limit", "3", "--max-rows", "4", "--seed", "7"]
    eval_cli.main(common + ["--methods", "beam,budget", "--budgets", "2", "--temperature", "0.3",
                            "--max-thought-tokens", "5", "--out", str(tmp_path / "a")])
    eval_cli.main(common + ["--methods", "budget", "--budgets", "unlimited", "--solution-budget", "256",
                            "--out", str(tmp_path / "b")])
    assert dtypes == ["float32", "float32"]
    (method, budget, n, kw), *budgeted = seen
    assert (method, budget, n) == ("beam", 2, 3)
    assert {k: kw[k] for k in ("temperature", "max_thought_tokens", "max_rows", "seed")} == {
        "temperature": 0.3, "max_thought_tokens": 5, "max_rows": 4, "seed": 7}
    assert budgeted == [("budget", 2, 3, {"solution_budget": 16, "max_rows": 4, "seed": 7}, True),  # room: all of them
                        ("budget", None, 3, {"solution_budget": 256, "max_rows": 4, "seed": 7}, True)]


# -- run directories (nanoo1/runs.py) -------------------------------------------------------------------
def test_latest_names_an_iteration_directory_beside_it(tmp_path):
    """`latest` holds iter-NNNN (a newline after it is fine) of a directory that exists; anything else is refused."""

    with pytest.raises(FileNotFoundError, match=r"is not a run with a finished iteration \(--out DIR --overwrite"):
        latest_checkpoint(tmp_path)
    for name in ("iter-0003", "iter-last", "abcd-0003"):
        (tmp_path / name).mkdir()
    (tmp_path / "latest").write_text("iter-0003\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "iter-0003"
    for bad in ("iter-last", "abcd-0003", "iter-0004"):  # not a number, not iter-, no such directory
        (tmp_path / "latest").write_text(bad)
        with pytest.raises(ValueError, match=f"names '{bad}', expected an iter-NNNN"):
            latest_checkpoint(tmp_path)
    (tmp_path / "latest").write_bytes(b"iter-\xff")  # not UTF-8: named like any other bad name
    with pytest.raises(ValueError, match="latest: names 'iter-\ufffd', expected an iter-NNNN"):
        latest_checkpoint(tmp_path)


def test_saved_settings_errors_name_the_file_and_out_may_move(tmp_path):
    """A damaged settings.json is a ValueError naming it; on resume `out` may differ (the directory moved), other
    settings may not."""

    config = PRESETS["tiny"]
    save_checkpoint(tmp_path, 1, config, lambda d: d.mkdir(parents=True, exist_ok=True), {}, {}, keep=2)
    assert resume_settings(tmp_path, type(config), {"out": str(tmp_path / "moved"), "lr": 1e-4}) == config
    with pytest.raises(ValueError, match=r"--lr: 0.0001 in the run, 0.5 given"):
        resume_settings(tmp_path, type(config), {"lr": 0.5})
    for damaged in (b"{not json", b"\xff\xfe{}"):  # not JSON; not UTF-8
        (tmp_path / "iter-0001" / "settings.json").write_bytes(damaged)
        with pytest.raises(ValueError, match=r"iter-0001/settings.json: cannot read the run's settings"):
            saved_settings(tmp_path, type(config))


def test_each_rank_writes_and_reads_its_own_trainer_state_and_buffers(tmp_path):
    """Rank 1 of 2 writes trainer_state.rank1.pt and replay.rank1.pt and nothing of rank 0's (model, settings,
    latest); the state records world 2, so it reads back on 2 ranks and is refused on 1, and a one-process state
    is refused on 2."""
    from nanoo1.dist import Place

    class Buffer:
        def save(self, path):
            path.write_text("buffer")

    state = {k: 0 for k in ("optimizer", "policy_rng", "python_rng", "torch_rng")}
    state["metrics"] = [{"before": True}] + [{"seconds": 1.0}] * 3  # iterations 0, 1 and 2
    saved = []
    ckpt = save_checkpoint(tmp_path, 2, PRESETS["tiny"], saved.append, state, {"replay.pt": Buffer()}, keep=2,
                           place=Place(1, 2))
    assert sorted(p.name for p in ckpt.iterdir()) == ["replay.rank1.pt", "trainer_state.rank1.pt"] and saved == []
    assert not (tmp_path / "latest").exists()
    loaded = load_trainer_state(ckpt, Place(1, 2))
    assert (loaded["iteration"], loaded["world"], loaded["metrics"]) == (2, 2, state["metrics"])
    (ckpt / "trainer_state.pt").write_bytes((ckpt / "trainer_state.rank1.pt").read_bytes())  # as if rank 0's
    with pytest.raises(ValueError, match=r"written by 2 process\(es\), resumed on 1"):
        load_trainer_state(ckpt, Place(0, 1))
    one = save_checkpoint(tmp_path, 3, PRESETS["tiny"], lambda d: d.mkdir(parents=True, exist_ok=True),
                          {**state, "metrics": state["metrics"] + [{"seconds": 2.0}]}, {}, keep=2)
    (one / "trainer_state.rank1.pt").write_bytes((one / "trainer_state.pt").read_bytes())
    with pytest.raises(ValueError, match=r"written by 1 process\(es\), resumed on 2"):
        load_trainer_state(one, Place(1, 2))


def test_a_trainer_state_must_start_with_the_evaluation_before_training(tmp_path):

    state = {k: 0 for k in ("iteration", "optimizer", "policy_rng", "python_rng", "torch_rng")}
    torch.save({**state, "metrics": [{"iteration": 1}]}, tmp_path / "trainer_state.pt")
    with pytest.raises(ValueError, match="metrics do not start with the evaluation before the first iteration"):
        load_trainer_state(tmp_path)


def test_stray_iter_directories_are_not_checkpoints_and_are_kept(tmp_path):
    """Only iter-<number> directories count toward `keep`: iter-notes stays, iter-0001 goes with keep=1."""

    (tmp_path / "iter-notes").mkdir()
    for it in (1, 2):
        save_checkpoint(tmp_path, it, PRESETS["tiny"], lambda d: d.mkdir(parents=True, exist_ok=True), {}, {}, keep=1)
    assert sorted(p.name for p in tmp_path.glob("iter-*")) == ["iter-0002", "iter-notes"]


def test_load_model_reads_the_checkpoint_or_under_lora_the_base_and_its_adapters(monkeypatch):
    """Full weights: the checkpoint when there is one (else the warm start), trainable. LoRA: always the warm
    start as the base, the adapters applied with the run's seed and read from the checkpoint when there is one."""
    from types import SimpleNamespace

    import nanoo1.runs as runs

    calls = []
    monkeypatch.setattr(runs, "load_pretrained", lambda path, dtype, device, need_tokenizer: (calls.append(
        ("load", path, dtype, device)) or torch.nn.Linear(2, 2).requires_grad_(False), "tok"))
    monkeypatch.setattr(runs, "load_lora", lambda model, path: calls.append(("adapters", path)))

    def config(rank):
        lora = SimpleNamespace(rank=rank, apply=lambda model, seed: calls.append(("apply", seed)))
        return SimpleNamespace(lora=lora, run=SimpleNamespace(warmstart="base", dtype="float32", seed=3))

    model, tok = runs.load_model(config(0), "ckpt", "cpu")
    assert calls == [("load", "ckpt", "float32", "cpu")] and tok == "tok" and model.weight.requires_grad
    calls.clear()
    runs.load_model(config(0), None, "cpu")
    assert calls == [("load", "base", "float32", "cpu")]
    calls.clear()
    runs.load_model(config(4), "ckpt", "cpu")
    assert calls == [("load", "base", "float32", "cpu"), ("apply", 3), ("adapters", "ckpt")]
    calls.clear()
    runs.load_model(config(4), None, "cpu")
    assert calls == [("load", "base", "float32", "cpu"), ("apply", 3)]


def test_prepare_out_makes_a_fresh_directory_and_names_the_way_out(tmp_path):
    """A fresh OUT is made; a file at OUT is NotADirectoryError even when only checking; the refusal offers
    --resume only for a resumable run that finished an iteration (one killed before has none to resume)."""

    prepare_out(tmp_path / "a" / "b", False)
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        prepare_out(tmp_path / "file", True, clear=False)
    (tmp_path / "a" / "b" / "metrics.jsonl").write_text("{}\n")  # a run killed before its first checkpoint
    with pytest.raises(FileExistsError, match=r"holds another run \(metrics.jsonl\); --out DIR starts elsewhere"):
        prepare_out(tmp_path / "a" / "b", False)
    (tmp_path / "a" / "b" / "latest").write_text("iter-0001")
    with pytest.raises(FileExistsError, match="--resume .* continues it, --out DIR starts elsewhere"):
        prepare_out(tmp_path / "a" / "b", False)
    with pytest.raises(FileExistsError, match=r"holds another run \(metrics.jsonl\); --out DIR starts elsewhere"):
        prepare_out(tmp_path / "a" / "b", False, resumable=False)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "budgets.png").write_text("png")  # a GRPO run's plot is its own: refused, then cleared
    with pytest.raises(FileExistsError, match=r"budgets.png"):
        prepare_out(tmp_path / "c", False)
    prepare_out(tmp_path / "c", True)
    assert list((tmp_path / "c").iterdir()) == []


def test_metrics_lines_are_appended_and_rewritten_one_json_object_a_line(tmp_path):

    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, {"before": 1})
    append_jsonl(path, {"iteration": 1})
    assert path.read_text() == '{"before": 1}\n{"iteration": 1}\n'
    rewrite_jsonl(path, [{"before": 1}])
    assert path.read_text() == '{"before": 1}\n'


# -- one iteration's parts (nanoo1/iteration.py) -------------------------------------------------------------
def iteration_parts(warmstart, monkeypatch, **kw):
    """(config, model, tokenizer, policy, training problems) for one PPO or imitation iteration of the random model, with
    every chain its searches end taken as one to learn from (it never answers right: no chain would be kept)."""
    from nanoo1 import iteration
    from nanoo1.experience import outcomes
    from nanoo1.policy import LMPolicy
    from nanoo1.tasks import load_jsonl

    monkeypatch.setattr(iteration, "tree_chains", lambda tree, n: [tree.path(e) for e in outcomes(tree)][:n])
    monkeypatch.setattr(iteration, "grade", lambda results, truths: [len(r.path) > 1 for r in results])
    config = small(warmstart, warmstart, **kw)
    model, tokenizer = load_pretrained(warmstart)
    model.requires_grad_(True)
    policy = LMPolicy(model, tokenizer, temperature=config.search.temperature,
                      max_thought_tokens=config.search.max_thought_tokens)
    return config, model, tokenizer, policy, load_jsonl(TINY_DIR / "train.jsonl")


def as_rank_0_of_2(monkeypatch):
    """This process as rank 0 of 2 whose partner adds nothing: every sum, least and greatest over ranks is its own."""
    import torch.distributed as tdist

    from nanoo1 import dist

    monkeypatch.setattr(dist, "place", lambda: dist.Place(0, 2))
    monkeypatch.setattr(tdist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(tdist, "all_reduce", lambda tensor, op=None: None)


class RecordingReplay(PrioritizedReplay):
    """A replay buffer that records each draw's (size, beta) and the size of each priority write-back."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.drawn, self.written = [], []

    def sample(self, batch_size, beta, generator=None):
        self.drawn.append((batch_size, beta))
        return super().sample(batch_size, beta, generator)

    def update_priorities(self, indices, priorities):
        self.written.append(len(indices))
        super().update_priorities(indices, priorities)


def test_ppo_updates_step_at_ppos_rate_with_beta_annealed_over_the_whole_run(warmstart, monkeypatch):
    """Update u of iteration `it` draws its minibatch with the IS exponent of step it * updates + u of the run's
    iterations * updates, writes the chains' new priorities back, and steps at PPO's learning rate whatever the
    optimizer held (the imitation steps before it leave theirs); a buffer smaller than the minibatch is drawn
    whole."""
    from nanoo1.iteration import ppo_iteration
    from nanoo1.replay import beta_by_step

    config, model, tokenizer, policy, problems = iteration_parts(warmstart, monkeypatch, iterations=3,
                                                                 updates_per_iteration=2, minibatch=3)
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    replay = RecordingReplay(64)
    m = ppo_iteration(model, tokenizer, opt, replay, policy, problems[:2], 1, config)
    assert m["ppo_updates"] == 2 and m["chains"] == len(replay) > 3
    assert replay.drawn == [(3, beta_by_step(2, 6)), (3, beta_by_step(3, 6))] and replay.written == [3, 3]
    assert [g["lr"] for g in opt.param_groups] == [config.ppo.lr]
    big = RecordingReplay(64)
    ppo_iteration(model, tokenizer, opt, big, policy, problems[2:3], 0, apply_flags(config, {"minibatch": 64}))
    assert [n for n, _ in big.drawn] == [len(big)] * 2 and len(big) < 64


def test_each_rank_draws_its_share_of_the_ppo_minibatch_and_of_the_imitation_batch(warmstart, monkeypatch):
    """As rank 0 of 2: a PPO minibatch of 6 chains is 3 from this rank's buffer, an imitation batch of 4 is 2 of
    its chains a step."""
    from nanoo1.iteration import imitation_iteration, ppo_iteration

    config, model, tokenizer, policy, problems = iteration_parts(warmstart, monkeypatch, minibatch=6, imitation_batch=4,
                                                                 updates_per_iteration=1)
    as_rank_0_of_2(monkeypatch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    replay = RecordingReplay(64)
    ppo_iteration(model, tokenizer, opt, replay, policy, problems[:2], 0, config)
    assert len(replay) > 3 and [n for n, _ in replay.drawn] == [3]
    m = imitation_iteration(model, tokenizer, opt, policy, problems[2:5], PrioritizedReplay(64, alpha=0.0),
                            __import__("random").Random(0), config)
    assert m["imitation_replayed"] == 0 and m["imitation_steps"] == 2  # 3 chains, 2 a step: the last short


def test_imitation_replays_its_share_of_earlier_successes_in_the_order_the_rng_deals(warmstart, monkeypatch):
    """With replay 0.5, half as many earlier successes as new ones come from the memory, and all are dealt in the
    order the run's rng shuffles them (here: reversed), batch at a time; with replay 0 none is drawn. Checked
    greedy fixes slips with fix_candidates thoughts under the run's step checker."""
    from nanoo1 import iteration
    from nanoo1.steps import equations_hold

    config, model, tokenizer, policy, problems = iteration_parts(warmstart, monkeypatch, imitation_replay=0.5,
                                                                 imitation_batch=3, imitation_fix_candidates=5)
    searches, batches, real_search, real_step = [], [], iteration.checked_greedy, iteration.sft_step
    monkeypatch.setattr(iteration, "checked_greedy", lambda policy, questions, verify, cfg, k: searches.append(
        (verify, k)) or real_search(policy, questions, verify, cfg, k=k))
    monkeypatch.setattr(iteration, "sft_step", lambda model, opt, batch, *a: batches.append(batch[0].tolist()) or
                        real_step(model, opt, batch, *a))

    class Reversing:
        def shuffle(self, items):
            items.reverse()

    earlier = [([tokenizer.bos_id, 100 + i, tokenizer.eos_id], [0, 1, 1]) for i in range(4)]
    memory = PrioritizedReplay(64, alpha=0.0)
    memory.extend(earlier)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    m = iteration.imitation_iteration(model, tokenizer, opt, policy, problems[:4], memory, Reversing(), config)
    assert searches == [(equations_hold, 5)]
    assert m["imitation_replayed"] == 2 and m["imitation_steps"] == 2 and len(memory) == 8
    replayed = {tuple(ids) for ids, _ in earlier}
    assert [tuple(row[:3]) in replayed for row in batches[0]] == [True, True, False]  # the 2 replayed come first
    m = iteration.imitation_iteration(model, tokenizer, opt, policy, problems[:4], memory, Reversing(),
                                      apply_flags(config, {"imitation_replay": 0.0}))
    assert m["imitation_replayed"] == 0 and m["imitation_steps"] == 2


# -- the recipe's settings (nanoo1/recipe.py) ------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    ({"keep_checkpoints": 0}, "RunSettings: --keep-checkpoints must be > 0, got 0"),
    ({"device": "gpu"}, "--device is 'gpu', expected cpu, cuda, cuda:N or auto"),
    ({"temperature": 0.0}, "SearchSettings: --temperature must be > 0, got 0.0"),
    ({"max_rows": -1}, "SearchSettings: --max-rows must be >= 0, got -1"),
    ({"micro_batch": 0}, "PPOSettings: --micro-batch must be > 0, got 0"),
    ({"imitation_batch": 0}, "ImitationSettings: --imitation-batch must be > 0, got 0"),
    ({"ngram": 0}, "GRPOSettings: --ngram must be > 0, got 0"),
    ({"reward": "length"}, "GRPOSettings: --reward is 'length', expected one of ('correct', 'cosine')"),
    ({"eval_every": -1}, "EvalSettings: --eval-every must be >= 0, got -1"),
    ({"lora_dropout": 1.5}, "LoRASettings: --lora-dropout must lie in [0, 1], got 1.5"),
    ({"lora_targets": " "}, "LoRASettings: --lora-targets names no layer"),
])
def test_each_recipe_setting_out_of_its_range_is_refused_by_name(flags, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        apply_flags(PRESETS["tiny"], flags)


def test_lora_settings_adapt_the_layers_named_and_keep_the_checkpointing_choice():
    """Targets may be written with spaces after the commas; `apply` wraps exactly those layers and sets the model's
    checkpointing to the settings' choice."""
    from nanoo1.lora import LoRALinear
    from nanoo1.model import Gemma2Config
    from nanoo1.recipe import LoRASettings

    for checkpointing in (True, False):
        model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=1))
        LoRASettings(rank=2, targets="q_proj, v_proj", checkpointing=checkpointing).apply(model)
        wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, LoRALinear)}
        assert wrapped == {"q_proj", "v_proj"} and model.checkpointing is checkpointing


def test_autocast_is_asked_for_float32_weights_alone():
    """bf16 autocast needs --bf16 and float32 weights; bf16 weights never autocast, and the 2b preset asks for none
    (its float32 variant, --dtype float32 under LoRA, runs float32 unless --bf16 is given)."""
    from nanoo1.recipe import autocast

    tiny, two_b = PRESETS["tiny"], PRESETS["2b"]
    assert autocast(tiny) and not autocast(apply_flags(tiny, {"bf16": False}))
    assert not autocast(two_b) and not autocast(apply_flags(two_b, {"dtype": "float32"}))
    assert autocast(apply_flags(two_b, {"dtype": "float32", "bf16": True}))


def test_memory_estimate_counts_the_adapters_and_the_widest_ppo_generate_call():
    """Under LoRA the trained parameters are the adapters apply_lora makes (targets with spaces too), 16 bytes each
    (the float32 adapter, its gradient, two moments). PPO's KV cache is the widest generate call: MCTS's row per
    candidate of every problem, checked greedy's row per imitation problem or the evaluation's row per sample of
    every held-out problem (best-of-N's, or its MCTS's candidates), whichever is most, each of 8 lines of
    max_thought_tokens + 24 tokens, K and V over every layer; the logits chunk is a micro-batch of 512 positions.
    At the tiny preset's evaluation settings the evaluation is the widest: 200 problems x best-of-8, 1,600 rows."""
    from nanoo1.lora import apply_lora
    from nanoo1.model import Gemma2Config
    from nanoo1.recipe import memory_estimate

    c = Gemma2Config.preset("tiny", num_hidden_layers=2)
    config = apply_flags(PRESETS["tiny"], {"lora_rank": 4, "lora_targets": "q_proj, k_proj,o_proj, down_proj"})
    model = apply_lora(random_model(c), ("q_proj", "k_proj", "o_proj", "down_proj"), rank=4)
    adapters = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    gib = 2 ** 30
    need = memory_estimate(config, c)
    assert need["trained + optimizer"] == pytest.approx(adapters * 16 / gib)
    kv_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
    small = {"eval_problems": 2, "eval_best_of_n": 2}  # 6 rows: best-of-2's 4, MCTS's 2 x 3 candidates
    for flags, rows in (({"problems_per_iteration": 5, "num_candidates": 3, "imitation_problems": 7, **small}, 15),
                        ({"problems_per_iteration": 5, "num_candidates": 3, "imitation_problems": 40, **small}, 40),
                        ({"problems_per_iteration": 5, "num_candidates": 3, "imitation_problems": 40, "max_rows": 9}, 9),
                        ({"problems_per_iteration": 5, "num_candidates": 3, "imitation_problems": 7}, 200 * 8),
                        ({"problems_per_iteration": 5, "num_candidates": 9, "imitation_problems": 7, "eval_problems": 6,
                          "eval_best_of_n": 4}, 6 * 9)):
        need = memory_estimate(apply_flags(config, {**flags, "max_thought_tokens": 10, "micro_batch": 3}), c)
        assert need["kv cache"] == pytest.approx(rows * 8 * (10 + 24) * kv_bytes / gib), flags
        assert need["logits chunk"] == pytest.approx(3 * 512 * c.vocab_size * 4 / gib)


def test_iteration_seeds_draws_checker_and_run_directories():
    """Iteration seeds differ for every (run seed, iteration) while iterations stay below 1000; a GRPO iteration
    draws problems_per_iteration problems for each of its rounds; the searches check every equation unless
    --check-equations false; each algorithm has its own default directory and --out wins over both."""
    from nanoo1.recipe import default_out, draws_per_iteration, iteration_seed, step_checker
    from nanoo1.steps import equations_hold

    assert len({iteration_seed(seed, it) for seed in range(3) for it in range(1000)}) == 3000
    grpo = apply_flags(PRESETS["tiny"], {"algo": "grpo", "problems_per_iteration": 5, "rounds": 3})
    assert draws_per_iteration(grpo) == 15 and draws_per_iteration(PRESETS["tiny"]) == 32 + 360
    assert default_out(PRESETS["tiny"]) == "runs/tiny" and default_out(grpo) == "runs/tiny-grpo"
    assert step_checker(PRESETS["tiny"]) is equations_hold
    assert step_checker(apply_flags(PRESETS["tiny"], {"check_equations": False})) is None
    assert default_out(apply_flags(grpo, {"out": "mine"})) == "mine"


def test_ppo_iteration_searches_and_scores_with_the_runs_settings(warmstart, monkeypatch):
    """MCTS gets the run's simulations, candidates (also the most children a node keeps), temperature and step
    checker, rolls every new thought out and is patient for candidates x simulations successes; each tree gives
    up to chains_per_tree chains, scored with the run's gamma and lambda; `solved` is the share of trees that hold
    a success (here the first of two, made to hold one)."""
    from nanoo1 import iteration
    from nanoo1.experience import outcomes
    from nanoo1.steps import equations_hold

    config, model, tokenizer, policy, problems = iteration_parts(warmstart, monkeypatch, chains_per_tree=3, gamma=0.9,
                                                                 lam=0.5, temperature=0.8, num_candidates=3)
    searched, chains, scored = [], [], []
    real_mcts, stand_in, real_items = iteration.mcts, iteration.tree_chains, iteration.chain_items

    def search(policy, questions, cfg, truths):
        searched.append(cfg)
        results = real_mcts(policy, questions, cfg, truths)
        outcomes(results[0].tree)[-1].terminal = "success"
        return results

    monkeypatch.setattr(iteration, "mcts", search)
    monkeypatch.setattr(iteration, "tree_chains", lambda tree, n: chains.append(n) or stand_in(tree, n))
    monkeypatch.setattr(iteration, "chain_items", lambda tok, paths, rates, gamma, lam: scored.append((gamma, lam)) or
                        real_items(tok, paths, rates, gamma, lam))
    m = iteration.ppo_iteration(model, tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-4), PrioritizedReplay(64),
                                policy, problems[:2], 0, config)
    (cfg,) = searched
    assert (cfg.simulations, cfg.num_candidates, cfg.max_children, cfg.temperature, cfg.patient) == (2, 3, 3, 0.8, 6)
    assert cfg.rollout and cfg.verify is equations_hold
    assert chains == [3, 3] and scored == [(0.9, 0.5)] * 2 and m["solved"] == 0.5


def test_the_budget_table_is_elastic_reasonings_quarter_half_whole_double_and_unlimited():
    """Xu et al. 2025's budget sweep: t*/4, t*/2, t*, 2 t* and unlimited (None); budgets that round to the same
    number of tokens are listed once, and none is below 1."""
    from nanoo1.elastic import elastic_budgets
    from nanoo1.recipe import SelfPlayConfig

    assert elastic_budgets(SelfPlayConfig()) == [10, 20, 40, 80, None]  # t* = 40
    assert elastic_budgets(apply_flags(SelfPlayConfig(), {"think_budget": 1000})) == [250, 500, 1000, 2000, None]
    assert elastic_budgets(apply_flags(SelfPlayConfig(), {"think_budget": 2})) == [1, 2, 4, None]
