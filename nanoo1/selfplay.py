"""`python -m nanoo1.selfplay --tiny`: the whole o1 loop, learning on a laptop CPU.

    warm start (SFT)  ->  repeat: MCTS over training problems (ground truth checks the conclusions)
                                  -> root-to-outcome chains with GAE advantages and value targets (experience.py)
                                  -> prioritized replay -> PPO on policy and rating-token value
                                  -> checked greedy over more training problems -> imitation of its successes,
                                     beside as many successes of earlier iterations (the imitation memory)
                      ->  held-out accuracy of greedy, best-of-N and MCTS, before and after

`--algo grpo` replaces MCTS + PPO by Elastic Reasoning's budgeted GRPO rollouts (the <think> format), and
best-of-N and MCTS in the tables by accuracy and tokens against the thinking budget (t*/4 .. 2t*, unlimited).
Every iteration writes a checkpoint (Hugging Face layout + the run's settings + replay buffer + imitation
memory + optimizer + random states; the last `--keep-checkpoints` stay); `--resume DIR` continues a run
exactly with the settings it was started with. Metrics go to DIR/metrics.jsonl; the last line printed is
one JSON object with the headline figures, also kept in DIR/summary.json.

    python -m nanoo1.selfplay --tiny                       # about 7 minutes on 2 CPU cores
    python -m nanoo1.selfplay --tiny --from-scratch        # redo the warm start too
    python -m nanoo1.selfplay --tiny --algo grpo           # about 2 minutes (--reward cosine: the length reward)
    python -m nanoo1.selfplay --model qq8933/OpenLongCoT-Base-Gemma2-2B --data train.jsonl --test-data test.jsonl
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nanoo1.config import add_config_flags, add_process_flags, apply_flags, entry_parser, flat_settings
from nanoo1.device import process_setup, resolve_device
from nanoo1.engine import generate_budgeted
from nanoo1.eval import EVAL_MCTS, EvalResult, budget_name, evaluate, evaluate_budgeted, plot
from nanoo1.experience import (chain_items, collate_chains, imitation_items, restamp_stale, row_priorities,
                               stamp_old, success_rates, tree_chains)
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.model import bf16_autocast
from nanoo1.policy import LMPolicy
from nanoo1.replay import PrioritizedReplay, beta_by_step
from nanoo1.rewards import check, cosine_length_reward, repetition_penalty
from nanoo1.recipe import (PRESETS, SelfPlayConfig, autocast, default_out, draws_per_iteration, iteration_config,
                           iteration_seed, memory_estimate, step_checker)
from nanoo1.runs import (append_jsonl, latest_checkpoint, load_model, load_trainer_state, prepare_out, rewrite_jsonl,
                         resume_settings, save_checkpoint, save_model)
from nanoo1.files import atomic_write
from nanoo1.lora import adapters_off
from nanoo1.rl import GRPOConfig, PPOConfig, completion_logprobs, grpo_advantages, grpo_step, ppo_step, td_priority
from nanoo1.search import SearchConfig, checked_greedy, grade
from nanoo1.sft import collate, set_lr, sft_step
from nanoo1.tasks import load_jsonl, think_prompt
from nanoo1.tokenizer import batch_ids
from nanoo1.value import rating_at, rating_bce
from nanoo1.warmstart import train_warmstart


def ppo_iteration(model, tokenizer, opt, replay, policy, problems, it: int, config: SelfPlayConfig) -> dict:
    s, c = config.search, config.ppo
    mcfg = MCTSConfig(simulations=s.simulations, num_candidates=s.num_candidates, max_children=s.num_candidates,
                      temperature=s.temperature, patient=s.num_candidates * s.simulations, rollout=True,
                      verify=step_checker(config))
    # with the checker, no success has a wrong step above it (mcts checks rolled-out chains whole)
    results = mcts(policy, [p.question for p in problems], mcfg, [p.answer for p in problems],
                   seed=iteration_seed(config.run.seed, it))
    solved = sum(any(n.terminal == "success" for n in r.tree.nodes) for r in results) / len(results)
    items = [item for r in results
             for item in chain_items(tokenizer, tree_chains(r.tree, s.chains_per_tree), success_rates(r.tree), c.gamma, c.lam)]
    stamp_old(model, tokenizer, items, s.temperature, autocast(config), c.micro_batch, iteration=it)
    replay.extend(items, row_priorities(items))
    cfg = PPOConfig(clip_eps=c.clip_eps, vf_coef=c.vf_coef, micro_batch_size=c.micro_batch, temperature=s.temperature)
    device = model.output_embedding.device

    def value_fn(model, mb, hidden):  # the rating-token value's loss at each thought's <start_of_rating>
        logits = rating_at(model, tokenizer, hidden, mb["value_pos"])  # (b, K, 2)
        loss = rating_bce(logits, mb["value_target"], mb["value_mask"], mb.get("weights"))
        probs = torch.softmax(logits, -1)[..., 0].detach()  # (b, K) P(positive)
        return loss, td_priority(probs, mb["value_target"], mb["value_mask"])  # the replay priority, as at insertion

    stats = [dict.fromkeys(("policy_loss", "value_loss", "clip_frac", "approx_kl"), 0.0)]
    set_lr(opt, c.lr)
    restamped = 0
    updates = c.updates_per_iteration if len(replay) else 0  # nothing to learn from yet: no update
    for u in range(updates):
        beta = beta_by_step(it * c.updates_per_iteration + u, config.run.iterations * c.updates_per_iteration)
        chosen, idx, w = replay.sample(min(c.minibatch, len(replay)), beta)
        restamped += restamp_stale(model, tokenizer, chosen, it, c.replay_max_age, s.temperature, autocast(config), c.micro_batch)
        model.train()
        batch = {k: v.to(device) for k, v in collate_chains(chosen, tokenizer.pad_id, w).items()}
        with bf16_autocast(autocast(config), device):
            st = ppo_step(model, opt, batch, cfg, value_loss_fn=value_fn)
        model.eval()
        replay.update_priorities(idx, st.pop("row_priority"))
        stats = stats[1:] if u == 0 else stats
        stats.append(st)
    mean = {k: sum(st[k] for st in stats) / len(stats) for k in stats[0]}
    return {"solved": solved, "chains": len(items), "restamped": restamped, "ppo_updates": updates,  # 0: losses read 0.0
            **{k: mean[k] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl")}}


def imitation_iteration(model, tokenizer, opt, policy, problems, memory: PrioritizedReplay, rng: random.Random,
                        config: SelfPlayConfig) -> dict:
    """Expert iteration on a cheap search: `checked_greedy` over the problems, then one pass of supervised
    steps (whole lines, as the warm start was trained) over the chains whose conclusion the ground truth
    accepts, shuffled with `replay` times as many successes drawn from earlier iterations. The model's own
    greedy chains, fixed where the step checker caught a slip, show the policy what it would have written
    had it not slipped, on many more problems per second than MCTS reaches; the memory (a replay buffer
    with uniform priorities) keeps the problems of earlier iterations in play."""
    c = config.imitation
    results = checked_greedy(policy, [p.question for p in problems], step_checker(config), SearchConfig(), k=c.fix_candidates)
    wins = [r.tree.path(r.tree.node(r.path[-1])) for r, ok in zip(results, grade(results, [p.answer for p in problems])) if ok]
    new = imitation_items(tokenizer, wins)
    replayed = round(c.replay * len(new))
    # uniform priorities (alpha 0): stratified draws spread over the whole memory, early successes and recent alike
    old = memory.sample(replayed, beta=0.0)[0] if replayed and len(memory) else []
    memory.extend(new)
    items = new + old
    rng.shuffle(items)
    model.train()
    losses = [sft_step(model, opt, collate(items[s:s + c.batch], tokenizer.pad_id), c.lr, autocast(config))
              for s in range(0, len(items) - c.batch + 1, c.batch)]
    model.eval()
    return {"imitation_solved": len(wins) / max(1, len(problems)), "imitation_replayed": len(old),
            "imitation_loss": sum(losses) / max(1, len(losses))}


def grpo_iteration(model, tokenizer, opt, problems, it: int, config: SelfPlayConfig) -> dict:
    """Elastic Reasoning's budgeted GRPO (Xu et al. 2025, sec. 3.2), `rounds` times over as many slices of
    `problems`: group_size rollouts per problem whose thinking is cut at think_budget (</think> forced,
    then the answer), rewarded by `rollout_rewards`, group-relative advantages, then `_grpo_updates`. A
    group whose rewards all agree has advantage 0 and is left out of the updates. Returns the rollouts'
    mean reward, share correct, share cut by the budget, thinking tokens (of all, of the right and of the
    wrong ones) and tokens, and the updates' statistics."""
    g = config.grpo
    end = tokenizer.token_id("</think>")
    per_round = len(problems) // g.rounds
    seen, steps = {k: [] for k in ("reward", "correct", "cut", "think", "tokens")}, []
    for r in range(g.rounds):
        chunk = problems[r * per_round:(r + 1) * per_round]
        rows = generate_budgeted(model, [tokenizer.encode(think_prompt(p.question)) for p in chunk], g.think_budget,
                                 g.solution_budget, end, temperature=g.grpo_temperature, num_samples=g.group_size,
                                 stop_token_ids=[tokenizer.eos_id], tokenizer=tokenizer,
                                 seed=iteration_seed(config.run.seed, it * g.rounds + r))
        correct = torch.tensor([float(end in row.tokens and check(row.text.split("</think>")[-1], chunk[i // g.group_size].answer))
                                for i, row in enumerate(rows)])  # (B,) 1 or 0; no </think>: 0
        rewards = rollout_rewards(rows, correct, config)
        adv = grpo_advantages(rewards, g.group_size, scale_std=g.loss_type != "dr_grpo")
        keep = [i for i in range(len(rows)) if adv[i] != 0]
        if keep:
            steps += _grpo_updates(model, tokenizer, opt, [rows[i] for i in keep], adv[keep], it * g.rounds + r, config)
        seen["reward"].append(rewards)
        seen["correct"].append(correct)
        seen["cut"].append(torch.tensor([float(any(row.forced)) for row in rows]))
        seen["think"].append(torch.tensor([float(row.tokens.index(end) if end in row.tokens else len(row.tokens)) for row in rows]))
        seen["tokens"].append(torch.tensor([float(len(row.tokens)) for row in rows]))
    seen = {k: torch.cat(v) for k, v in seen.items()}
    right = seen["correct"].bool()
    stats = ("clip_frac", "approx_kl") + (("kl",) if g.kl_beta else ())
    return {**{k: v.mean().item() for k, v in seen.items()},
            "think_right": seen["think"][right].mean().item() if right.any() else 0.0,
            "think_wrong": seen["think"][~right].mean().item() if not right.all() else 0.0,
            "updates": len(steps), **{k: sum(st[k] for st in steps) / max(1, len(steps)) for k in stats}}


def rollout_rewards(rows, correct, config: SelfPlayConfig):
    """Each rollout's reward: `correct` (1 or 0; 0 without </think>), or with --reward cosine Yeo et al.'s
    cosine length reward over its tokens (the longest possible rollout, think + 1 + solution budget, is
    L_max: a rollout that reaches it never finished its answer) plus the sum of its n-gram repetition
    penalties."""
    g = config.grpo
    if g.reward == "correct":
        return correct
    lengths = torch.tensor([len(r.tokens) for r in rows])
    penalty = torch.stack([repetition_penalty(r.tokens, g.ngram).sum() for r in rows])
    return cosine_length_reward(correct.bool(), lengths, g.think_budget + 1 + g.solution_budget) + penalty


def _grpo_updates(model, tokenizer, opt, rows, adv, seed: int, config: SelfPlayConfig) -> list[dict]:
    """`epochs` passes of `grpo_step` over minibatches of the rollouts, shuffled by `seed`, against their
    log-probs under the policy that sampled them (stored first, PPO-style). Returns each step's statistics."""
    g, device = config.grpo, model.output_embedding.device
    ids, attn = batch_ids([r.prompt + r.tokens for r in rows], tokenizer.pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        mask[i, len(r.prompt):len(r.prompt) + len(r.tokens)] = 1  # sampled and forced tokens alike
    ids, attn, mask, adv = ids.to(device), attn.to(device), mask.to(device), adv.to(device)
    cfg = GRPOConfig(loss_type=g.loss_type, micro_batch_size=config.ppo.micro_batch, temperature=g.grpo_temperature,
                     max_completion_length=g.think_budget + g.solution_budget + 1, beta=g.kl_beta)

    def logprobs():  # no grad, micro-batch by micro-batch
        n = cfg.micro_batch_size
        return torch.cat([completion_logprobs(model, ids[s:s + n], attn[s:s + n], mask[s:s + n], cfg.temperature)
                          for s in range(0, len(rows), n)])

    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "advantages": adv}
    with torch.no_grad(), bf16_autocast(autocast(config), device):
        batch["old_logp"] = logprobs()
        if g.kl_beta:  # the reference: the same model with its adapters off, never a second copy
            with adapters_off(model):
                batch["ref_logp"] = logprobs()
    set_lr(opt, g.grpo_lr)
    shuffle = torch.Generator().manual_seed(seed)
    steps = []
    model.train()
    for _ in range(g.epochs):
        order = torch.randperm(len(rows), generator=shuffle).to(device)
        for s in range(0, len(rows), g.grpo_minibatch):
            with bf16_autocast(autocast(config), device):
                steps.append(grpo_step(model, opt, {k: v[order[s:s + g.grpo_minibatch]] for k, v in batch.items()}, cfg))
    model.eval()
    return steps


def load_problems(config: SelfPlayConfig):
    """The training and held-out problems, checked against what the run will draw from them."""
    for flag, path in (("--data", config.run.data), ("--test-data", config.run.test_data)):
        if not path:
            raise ValueError(f"{flag}: no file given (GSM8K-style jsonl: question, answer ending in '#### N')")
    train, test = load_jsonl(config.run.data), load_jsonl(config.run.test_data)
    per_iteration = draws_per_iteration(config)
    if len(train) < per_iteration:
        raise ValueError(f"{config.run.data}: {len(train)} problems, but every iteration draws {per_iteration} distinct "
                         f"ones (--problems-per-iteration{' + --imitation-problems' if config.run.algo == 'ppo' else ' x --rounds'})")
    if not test:
        raise ValueError(f"{config.run.test_data}: no held-out problems")
    return train, test[: config.eval.problems]


def elastic_budgets(config: SelfPlayConfig) -> list[int | None]:
    """The thinking budgets of Elastic Reasoning's table: t*/4, t*/2, t*, 2 t* and unlimited (None)."""
    t = config.grpo.think_budget
    return list(dict.fromkeys([max(1, t // 4), max(1, t // 2), t, 2 * t])) + [None]


def _budget_table(before: dict[str, EvalResult], after: dict[str, EvalResult], budgets) -> str:
    lines = [f"{'thinking budget':<18}{'before':>9}{'after':>9}{'tokens before':>15}{'tokens after':>14}"]
    for b in budgets:
        x, y = before[f"think_{budget_name(b)}"], after[f"think_{budget_name(b)}"]
        lines.append(f"{budget_name(b):<18}{100 * x.accuracy:8.1f}%{100 * y.accuracy:8.1f}%{x.tokens:15.1f}{y.tokens:14.1f}")
    return "\n".join(lines)


def _table(rows: list[tuple[str, EvalResult, EvalResult]]) -> str:
    lines = [f"{'method':<22}{'before':>9}{'after':>9}{'tokens/problem':>16}"]
    for name, before, after in rows:
        lines.append(f"{name:<22}{100 * before.accuracy:8.1f}%{100 * after.accuracy:8.1f}%{after.tokens:16.1f}")
    return "\n".join(lines)


def evaluate_all(model, tokenizer, problems, config: SelfPlayConfig, tag: str, progress: bool) -> dict[str, EvalResult]:
    """The before/after table's rows: greedy, then for PPO best-of-N and MCTS (with the step checker as a tool,
    like rStar's code execution: no ground truth needed), for GRPO the <think> format at `elastic_budgets`."""
    from tqdm.auto import tqdm

    s, e = config.search, config.eval
    kw = dict(temperature=s.temperature, max_thought_tokens=s.max_thought_tokens, seed=config.run.seed)
    jobs = {"greedy": lambda: evaluate(model, tokenizer, problems, "greedy", **kw)}
    if config.run.algo == "ppo":
        jobs[f"best_of_{e.best_of_n}"] = lambda: evaluate(model, tokenizer, problems, "best_of_n", e.best_of_n, **kw)
        jobs[f"mcts_{e.simulations}"] = lambda: evaluate(model, tokenizer, problems, "mcts", e.simulations,
                                                         mcts=replace(EVAL_MCTS, verify=step_checker(config)), **kw)
    else:
        for b in elastic_budgets(config):
            jobs[f"think_{budget_name(b)}"] = lambda b=b: evaluate_budgeted(model, tokenizer, problems, b, config.grpo.solution_budget)
    results = {}
    bar = tqdm(jobs.items(), desc=f"evaluate {tag}", disable=not progress, unit="method")
    for name, job in bar:
        bar.set_postfix_str(f"{name} on {len(problems)} problems")
        results[name] = job()
    return results


def run(config: SelfPlayConfig, resume: str | None = None, from_scratch: bool = False, progress: bool = True,
        overwrite: bool = False) -> dict:
    """The whole loop: set-up (or resume), evaluation before, the iterations, evaluation after, the summary."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    # -- set-up: every setting and input is checked before any work starts
    out = Path(resume or default_out(config))
    if resume:
        resume_settings(out, SelfPlayConfig, flat_settings(config))
        if (out / "summary.json").exists():  # finished: nothing left to run
            return json.loads((out / "summary.json").read_text(encoding="utf-8"))
    train, test = load_problems(config)
    if not resume:
        prepare_out(out, overwrite)
    torch.manual_seed(config.run.seed)
    rng = random.Random(config.run.seed)
    device = resolve_device(config.run.device)
    start_dir = latest_checkpoint(out) if resume else None
    if from_scratch and not resume:  # the run's base is the warm start it trains first
        train_warmstart(out / "warmstart", seed=config.run.seed, progress=progress)
        config = replace(config, run=replace(config.run, warmstart=str(out / "warmstart")))
    model, tokenizer = load_model(config, start_dir, device)
    need = memory_estimate(config, model.config)
    print(f"memory on {device}, estimated: " + ", ".join(f"{k} {v:.2f}" for k, v in need.items())
          + f" GiB; about {sum(need.values()):.1f} GiB in all")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.ppo.lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    ppo = config.run.algo == "ppo"
    replay = PrioritizedReplay(config.ppo.replay_capacity, alpha=config.ppo.alpha, seed=config.run.seed) if ppo else None
    memory = PrioritizedReplay(config.imitation.memory, alpha=0.0, seed=config.run.seed + 1) if ppo else None
    policy = LMPolicy(model, tokenizer, temperature=config.search.temperature,
                      max_thought_tokens=config.search.max_thought_tokens, seed=config.run.seed)
    metrics, first = [], 0
    if resume:
        state = load_trainer_state(start_dir)
        opt.load_state_dict(state["optimizer"])
        policy.generator.set_state(state["policy_rng"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        metrics, first = state["metrics"], state["iteration"] + 1
        if ppo:
            replay = PrioritizedReplay.load(start_dir / "replay.pt")
            memory = PrioritizedReplay.load(start_dir / "imitation.pt")
        # metrics.jsonl back to this checkpoint: lines a killed run wrote after it are dropped, not repeated
        rewrite_jsonl(out / "metrics.jsonl", [{"eval": "before", **metrics[0]["before"]}] + metrics[1:])

    # -- evaluation before
    evals = {}
    if not resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        evals["before"] = evaluate_all(model, tokenizer, test, config, "before", progress)
        metrics.append({"before": {k: asdict(v) for k, v in evals["before"].items()}})
        append_jsonl(out / "metrics.jsonl", {"eval": "before", **metrics[0]["before"]})
    else:
        evals["before"] = {k: EvalResult(**v) for k, v in metrics[0]["before"].items()}

    # -- the loop
    bar = tqdm(range(first, config.run.iterations), desc=f"self-play ({config.run.algo})", disable=not progress,
               initial=first, total=config.run.iterations, unit="iteration")
    for it in bar:
        problems = rng.sample(train, draws_per_iteration(config))
        c = iteration_config(config, it)
        if ppo:
            m = ppo_iteration(model, tokenizer, opt, replay, policy, problems[:config.search.problems_per_iteration], it, c)
            if config.imitation.problems:
                m.update(imitation_iteration(model, tokenizer, opt, policy, problems[config.search.problems_per_iteration:],
                                             memory, rng, c))
        else:
            m = grpo_iteration(model, tokenizer, opt, problems, it, c)
            m["think_quick"] = evaluate_budgeted(model, tokenizer, test[:config.eval.quick], config.grpo.think_budget,
                                                 config.grpo.solution_budget).accuracy  # held out, at t*
        m["lr"] = c.ppo.lr if ppo else c.grpo.grpo_lr
        if config.eval.every and (it + 1) % config.eval.every == 0:
            m["greedy_quick"] = evaluate(model, tokenizer, test[:config.eval.quick], "greedy",
                                         max_thought_tokens=config.search.max_thought_tokens).accuracy
        m.update(iteration=it, seconds=round(time.perf_counter() - t0, 1))
        metrics.append(m)
        append_jsonl(out / "metrics.jsonl", m)
        bar.set_postfix({k: f"{v:.3f}" for k, v in m.items() if k in ("solved", "imitation_solved", "reward", "greedy_quick",
                                                                     "think_quick")})
        state = {"optimizer": opt.state_dict(), "policy_rng": policy.generator.get_state(), "python_rng": rng.getstate(),
                 "torch_rng": torch.get_rng_state(), "metrics": metrics}
        save_checkpoint(out, it, config, lambda d: save_model(model, tokenizer, d, config), state,
                        {"replay.pt": replay, "imitation.pt": memory} if ppo else {}, config.run.keep_checkpoints)

    # -- evaluation after, and the summary
    evals["after"] = evaluate_all(model, tokenizer, test, config, "after", progress)
    append_jsonl(out / "metrics.jsonl", {"eval": "after", **{k: asdict(v) for k, v in evals["after"].items()}})
    final = save_model(model, tokenizer, out / "final", config)
    before, after = evals["before"], evals["after"]
    print("\n" + _table([(k, before[k], after[k]) for k in after if k in before and not k.startswith("think_")]))
    e = config.eval
    summary = {"sft_greedy": before["greedy"].accuracy, "final_greedy": after["greedy"].accuracy}
    if ppo:
        summary.update(sft_best_of_n=before[f"best_of_{e.best_of_n}"].accuracy,
                       final_best_of_n=after[f"best_of_{e.best_of_n}"].accuracy,
                       sft_mcts=before[f"mcts_{e.simulations}"].accuracy, final_mcts=after[f"mcts_{e.simulations}"].accuracy)
    summary.update(iterations=config.run.iterations, algo=config.run.algo, seed=config.run.seed,
                   wall_s=round(time.perf_counter() - t0, 1), checkpoint=str(final))
    if not ppo:  # Elastic Reasoning's table: accuracy and tokens against the thinking budget, before and after
        budgets = elastic_budgets(config)
        print("\n" + _budget_table(before, after, budgets))
        summary["think_budget"] = config.grpo.think_budget
        summary["budgets"] = {}
        for b in budgets:
            x, y = before[f"think_{budget_name(b)}"], after[f"think_{budget_name(b)}"]
            summary["budgets"][budget_name(b)] = {"before": x.accuracy, "after": y.accuracy, "tokens_before": x.tokens,
                                                  "tokens_after": y.tokens}
        curves = [replace(r, method=f"budget, {tag}") for tag, ev in (("before", before), ("after", after))
                  for k, r in ev.items() if k.startswith("think_")]
        if plot(curves, out / "budgets.png", title=f"thinking budget, GRPO trained at {config.grpo.think_budget}"):
            print(f"wrote {out / 'budgets.png'}")
    atomic_write(out / "summary.json", json.dumps(summary))
    return summary


def main(argv=None):
    p, g = entry_parser(__doc__, "what to run")
    g.add_argument("--tiny", action="store_true", help="the laptop-CPU recipe on the tiny task: the shipped warm start "
                   "data/tiny/warmstart and the tiny problems, with the settings below at their defaults")
    g.add_argument("--model", default=None, help="warm start: checkpoint directory or hub id (overrides --warmstart); "
                   "without --tiny the 2b preset's settings apply (recipe.PRESETS): bf16, LoRA rank 16, --device auto")
    g.add_argument("--resume", default=None, help="continue the run in this directory from its latest checkpoint, with "
                   "its saved settings (a flag that contradicts them is an error)")
    g.add_argument("--from-scratch", action="store_true", help="redo the warm start (SFT) instead of loading it")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out directory that holds another run")
    add_process_flags(g)
    add_config_flags(p, SelfPlayConfig)
    args = p.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("tiny", "model", "resume", "from_scratch", "overwrite",
                                                               "threads", "no_progress")}
    if args.model:
        flags["warmstart"] = args.model
    if not (args.tiny or args.model or args.resume):
        p.error("say what to run: --tiny (the tiny recipe), --model DIR_OR_HUB_ID with --data and --test-data, "
                "or --resume RUN_DIR")
    try:
        if args.resume:
            config = resume_settings(Path(args.resume), SelfPlayConfig, flags)
        else:
            config = apply_flags(PRESETS["tiny" if args.tiny else "2b"], flags)
            config = replace(config, run=replace(config.run, out=default_out(config)))
            load_problems(config)  # a data file too small for the run fails now, not after the first evaluation
    except (ValueError, OSError, KeyError) as e:
        p.error(str(e))
    process_setup(args.threads)
    try:
        summary = run(config, resume=args.resume, from_scratch=args.from_scratch, progress=not args.no_progress,
                      overwrite=args.overwrite)
    except FileExistsError as e:
        p.error(str(e))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
