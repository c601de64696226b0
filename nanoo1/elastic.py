"""Elastic Reasoning's budgeted GRPO (Xu et al. 2025), the iteration `selfplay --algo grpo` runs, and its table.

Rollouts think in the <think> format until a budget t* cuts them (</think> forced, then the answer); the reward
is 1 for a right answer (or Yeo et al.'s cosine length reward, `--reward cosine`); advantages are group-relative;
updates are `updates.grpo_step`. At the end of a run the held-out accuracy and tokens against the thinking
budget (`elastic_budgets`: t*/4, t*/2, t*, 2t*, unlimited) show what the budgeted training changed.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from nanoo1 import dist
from nanoo1.answers import check
from nanoo1.device import bf16_autocast
from nanoo1.engine import generate_budgeted, row_parts, seeded_generator
from nanoo1.eval import EvalResult, budget_name, evaluate_budgeted, plot
from nanoo1.lora import adapters_off
from nanoo1.recipe import SelfPlayConfig, autocast, iteration_seed
from nanoo1.rewards import cosine_length_reward, repetition_penalty
from nanoo1.rl import completion_logprobs, grpo_advantages
from nanoo1.sft import set_lr
from nanoo1.tasks import think_prompt
from nanoo1.tokenizer import batch_ids
from nanoo1.updates import GRPOConfig, grpo_step, micro_batches


def grpo_iteration(model, tokenizer, opt, problems, it: int, config: SelfPlayConfig, seed: int = 0) -> dict:
    """Elastic Reasoning's budgeted GRPO (Xu et al. 2025, sec. 3.2), `rounds` times over as many slices of
    `problems`: group_size rollouts per problem whose thinking is cut at think_budget (</think> forced,
    then the answer), rewarded by `rollout_rewards`, group-relative advantages, then `_grpo_updates`. A
    group whose rewards all agree has advantage 0 and is left out of the updates. Returns the rollouts'
    mean reward, share correct, share cut by the budget, thinking tokens (of all, of the right and of the
    wrong ones) and tokens, over every rank's rollouts, and the updates' statistics. With search.max_rows
    a generate call holds at most that many rows (whole groups, one at the least), all drawn from the round's
    one generator. Under torchrun `problems` is the iteration's whole draw, the same on every rank, and each
    rank rolls out its share of each round's slice (`dist.shard`) with `seed` its own (`dist.rank_seed`);
    every rank takes the same number of update steps."""
    g = config.grpo
    end = tokenizer.token_id("</think>")
    per_round = len(problems) // g.rounds
    seen, steps = {k: [] for k in ("reward", "correct", "cut", "think", "tokens")}, []
    for r in range(g.rounds):
        chunk = dist.shard(problems[r * per_round:(r + 1) * per_round], dist.place())
        prompts = [tokenizer.encode(think_prompt(p.question)) for p in chunk]
        round_seed = iteration_seed(seed, it * g.rounds + r)  # the rollouts' draws and the minibatches' order
        generator = seeded_generator(model, round_seed)
        rows = [row for part in row_parts([g.group_size] * len(prompts), config.search.max_rows)
                for row in generate_budgeted(model, prompts[part.start:part.stop], g.think_budget, g.solution_budget,
                                             end, temperature=g.grpo_temperature, num_samples=g.group_size,
                                             stop_token_ids=[tokenizer.eos_id], tokenizer=tokenizer, generator=generator)]
        correct = torch.tensor([float(end in row.tokens and check(row.text.split("</think>")[-1], chunk[i // g.group_size].answer))
                                for i, row in enumerate(rows)])  # (B,) 1 or 0; no </think>: 0
        rewards = rollout_rewards(rows, correct, config)
        adv = grpo_advantages(rewards, g.group_size, scale_std=g.loss_type != "dr_grpo")
        keep = [i for i in range(len(rows)) if adv[i] != 0]
        tokens = dist.total(sum(len(row.tokens) for row in rows))  # the generation batch's, every rank's: dapo's divisor
        if dist.largest(len(keep)):  # a rank whose groups all agree joins the others' updates with no rows
            steps += _grpo_updates(model, tokenizer, opt, [rows[i] for i in keep], adv[keep], round_seed, config,
                                   tokens)
        seen["reward"].append(rewards)
        seen["correct"].append(correct)
        seen["cut"].append(torch.tensor([float(any(row.forced)) for row in rows]))
        seen["think"].append(torch.tensor([float(row.tokens.index(end) if end in row.tokens else len(row.tokens)) for row in rows]))
        seen["tokens"].append(torch.tensor([float(len(row.tokens)) for row in rows]))
    seen = {k: torch.cat(v) for k, v in seen.items()}
    seen = {k: torch.cat([part[k] for part in dist.gather(seen)]) for k in seen}  # every rank's: the whole set's figures
    right = seen["correct"].bool()
    stats = ("clip_frac", "approx_kl") + (("kl",) if g.kl_beta else ())
    return {**{k: v.mean().item() for k, v in seen.items()},
            "think_right": seen["think"][right].mean().item() if right.any() else 0.0,
            "think_wrong": seen["think"][~right].mean().item() if not right.all() else 0.0,
            "updates": len(steps), **{k: sum(st[k] for st in steps) / max(1, len(steps)) for k in stats}}


def rollout_rewards(rows, correct, config: SelfPlayConfig):
    """Each rollout's reward: `correct` (1 or 0; 0 without </think>), or with --reward cosine Yeo et al.'s
    cosine length reward over its tokens (L_max is the longest possible rollout, `GRPOSettings.max_rollout`;
    r_exceed goes to the rollouts that reached it unfinished, not to one whose <eos> came exactly there) plus the
    sum of its n-gram repetition penalties."""
    g = config.grpo
    if g.reward == "correct":
        return correct
    L = g.max_rollout
    lengths = torch.tensor([len(r.tokens) for r in rows])
    cut = torch.tensor([len(r.tokens) >= L and r.finish_reason == "length" for r in rows])  # at L_max, unfinished
    penalty = torch.stack([repetition_penalty(r.tokens, g.ngram).sum() for r in rows])
    return cosine_length_reward(correct.bool(), lengths, L, exceeded=cut) + penalty


def _grpo_updates(model, tokenizer, opt, rows, adv, seed: int, config: SelfPlayConfig, tokens) -> list[dict]:
    """`epochs` passes of `grpo_step` over minibatches of the rollouts, shuffled by `seed`, against their
    log-probs under the policy that sampled them (stored first, PPO-style); `tokens`, the completion tokens of
    the whole generation batch (all ranks), is dapo's divisor in every minibatch. Under torchrun each rank puts
    its part of grpo_minibatch (`dist.share`) of its own rollouts in each step. Returns each step's statistics."""
    g, device = config.grpo, model.output_embedding.device
    ids, attn = batch_ids([r.prompt + r.tokens for r in rows], tokenizer.pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        mask[i, len(r.prompt):len(r.prompt) + len(r.tokens)] = 1  # sampled and forced tokens alike
    ids, attn, mask, adv = ids.to(device), attn.to(device), mask.to(device), adv.to(device)
    cfg = GRPOConfig(loss_type=g.loss_type, micro_batch_size=config.ppo.micro_batch, temperature=g.grpo_temperature,
                     max_completion_length=g.max_rollout, beta=g.kl_beta,
                     micro_batch_tokens=config.ppo.micro_batch_tokens)

    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "advantages": adv}

    def logprobs():  # no grad, micro-batch by micro-batch, as the updates cut them (no rows: an empty (0, 0) grid)
        if not rows:
            return torch.zeros(ids.shape, device=device)
        parts = [completion_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["completion_mask"], cfg.temperature)
                 for mb in micro_batches(batch, cfg.micro_batch_size, cfg.micro_batch_tokens)]
        return torch.cat([F.pad(logp, (0, ids.shape[1] - logp.shape[1])) for logp in parts])  # back to the grid

    with torch.no_grad(), bf16_autocast(autocast(config), device):
        batch["old_logp"] = logprobs()
        if g.kl_beta:  # the reference: the same model with its adapters off, never a second copy
            with adapters_off(model):
                batch["ref_logp"] = logprobs()
    set_lr(opt, g.grpo_lr)
    shuffle = torch.Generator().manual_seed(seed)
    steps = []
    model.train()
    minibatch = dist.share(g.grpo_minibatch, dist.place())  # this rank's part of each step's rollouts
    n = dist.largest(-(-len(rows) // minibatch))  # steps per epoch, the same on every rank
    for _ in range(g.epochs):
        order = torch.randperm(len(rows), generator=shuffle).to(device)
        for s in range(0, n * minibatch, minibatch):
            with bf16_autocast(autocast(config), device):
                part = {k: v[order[s:s + minibatch]] for k, v in batch.items()}
                steps.append(grpo_step(model, opt, {**part, "num_items_in_batch": tokens}, cfg))
    model.eval()
    return steps


def elastic_budgets(config: SelfPlayConfig) -> list[int | None]:
    """The thinking budgets of Elastic Reasoning's table: t*/4, t*/2, t*, 2 t* and unlimited (None)."""
    t = config.grpo.think_budget
    return list(dict.fromkeys([max(1, t // 4), max(1, t // 2), t, 2 * t])) + [None]


def budget_job(model, tokenizer, config: SelfPlayConfig, budget: int | None, room_for: list | None = None):
    """job(problems) -> EvalResult: greedy in the <think> format under a thinking budget (None: unlimited, the room
    left by room_for's longest prompt), with the run's solution budget and row limit (`eval.evaluate_budgeted`)."""
    return lambda ps: evaluate_budgeted(model, tokenizer, ps, budget, config.grpo.solution_budget, config.search.max_rows,
                                        room_for=room_for)


def budget_jobs(model, tokenizer, config: SelfPlayConfig, problems: list) -> dict:
    """The table's evaluations of `problems` (whole, though a job may get a rank's share), {"think_<t>":
    job(problems) -> EvalResult}: `budget_job` under each of `elastic_budgets`."""
    return {f"think_{budget_name(b)}": budget_job(model, tokenizer, config, b, problems) for b in elastic_budgets(config)}


def budget_table(rows: dict[str, dict]) -> str:
    """The printed table of `budget_summary`'s rows."""
    lines = [f"{'thinking budget':<18}{'before':>9}{'after':>9}{'tokens before':>15}{'tokens after':>14}"]
    for name, r in rows.items():
        lines.append(f"{name:<18}{100 * r['before']:8.1f}%{100 * r['after']:8.1f}%{r['tokens_before']:15.1f}{r['tokens_after']:14.1f}")
    return "\n".join(lines)


def budget_summary(before: dict[str, EvalResult], after: dict[str, EvalResult], config: SelfPlayConfig) -> dict:
    """The table in the run's JSON: {"think_budget": t*, "budgets": {"<t>" or "unlimited": {"before", "after",
    "tokens_before", "tokens_after"}}}."""
    rows = {}
    for b in elastic_budgets(config):
        x, y = before[f"think_{budget_name(b)}"], after[f"think_{budget_name(b)}"]
        rows[budget_name(b)] = {"before": x.accuracy, "after": y.accuracy, "tokens_before": x.tokens, "tokens_after": y.tokens}
    return {"think_budget": config.grpo.think_budget, "budgets": rows}


def report_budgets(before: dict[str, EvalResult], after: dict[str, EvalResult], config: SelfPlayConfig, png: Path):
    """Print the table and draw it to `png` (accuracy against the thinking budget, before and after; with matplotlib)."""
    print("\n" + budget_table(budget_summary(before, after, config)["budgets"]))
    curves = [replace(r, method=f"budget, {tag}") for tag, ev in (("before", before), ("after", after))
              for k, r in ev.items() if k.startswith("think_")]
    if plot(curves, png, title=f"thinking budget, GRPO trained at {config.grpo.think_budget}"):
        print(f"wrote {png}")
