"""`python -m nanoo1.selfplay --tiny`: the whole o1 loop, learning on a laptop CPU.

    warm start (SFT)  ->  repeat: MCTS over training problems (ground truth checks the conclusions)
                                  -> root-to-outcome chains with GAE advantages and value targets (experience.py)
                                  -> prioritized replay -> PPO on policy and rating-token value
                                  -> checked greedy over more training problems -> imitation of its successes,
                                     beside as many successes of earlier iterations (the imitation memory)
                      ->  held-out accuracy of greedy, best-of-N and MCTS, before and after

`--algo grpo` replaces MCTS + PPO by Elastic Reasoning's budgeted GRPO rollouts (the <think> format).
Every iteration writes a checkpoint (Hugging Face layout + replay buffer + imitation memory + optimizer +
random states); `--resume DIR` continues a run exactly. Metrics go to DIR/metrics.jsonl; the last line
printed is one JSON object with the headline figures.

    python -m nanoo1.selfplay --tiny                       # about 7 minutes on 2 CPU cores
    python -m nanoo1.selfplay --tiny --from-scratch        # redo the warm start too
    python -m nanoo1.selfplay --model qq8933/OpenLongCoT-Base-Gemma2-2B --data train.jsonl --test-data test.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

from nanoo1.checkpoint import load_pretrained, save_pretrained
from nanoo1.engine import generate_budgeted, hold_freed_memory
from nanoo1.experience import chain_items, collate_chains, imitation_items, rating_probs, stamp_old, success_rates, tree_chains
from nanoo1.eval import EVAL_MCTS, EvalResult, add_config_flags, evaluate, evaluate_budgeted
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.replay import PrioritizedReplay, beta_by_step
from nanoo1.rewards import check, equations_hold
from nanoo1.rl import GRPOConfig, PPOConfig, grpo_advantages, grpo_step, ppo_step, value_loss
from nanoo1.policy import LMPolicy
from nanoo1.search import SearchConfig, checked_greedy, grade
from nanoo1.sft import collate, cosine, set_lr, sft_step
from nanoo1.tasks import TINY_DIR, load_jsonl, think_prompt
from nanoo1.thoughts import batch_ids
from nanoo1.warmstart import WARMSTART_DIR, train_warmstart


@dataclass
class SelfPlayConfig:
    out: str = "runs/tiny"  # run directory: metrics.jsonl, checkpoints, final/
    seed: int = 0  # every random choice of the run derives from it
    algo: str = "ppo"  # "ppo": MCTS + PPO (LLaMA-O1); "grpo": budgeted GRPO rollouts (Elastic Reasoning)
    warmstart: str = str(WARMSTART_DIR)  # the SFT checkpoint self-play starts from (directory or hub id)
    data: str = str(TINY_DIR / "train.jsonl")  # training problems (GSM8K-style jsonl)
    test_data: str = str(TINY_DIR / "test.jsonl")  # held-out problems
    eval_problems: int = 200  # held-out problems in the before/after tables
    iterations: int = 10  # self-play iterations
    problems_per_iteration: int = 32  # problems searched by MCTS per iteration
    simulations: int = 3  # MCTS simulations per training problem (each rolls its new thoughts out)
    num_candidates: int = 4  # thoughts per expansion
    temperature: float = 0.7  # sampling temperature during self-play and search
    max_thought_tokens: int = 32  # a thought is cut after this many tokens
    check_equations: bool = True  # every `a op b = c` must hold: a wrong thought (expanded or rolled out) is a failed
    #                               terminal in the search, and so is the end of a rolled-out chain with one
    chains_per_tree: int = 4  # root-to-outcome chains trained per tree (`experience.outcomes`): successes first, then failures
    lr: float = 1e-4  # AdamW learning rate (higher rates sharpen the tiny policy onto its own samples and cost greedy accuracy)
    lr_decay: float = 0.1  # both learning rates fall along a cosine to this fraction of themselves by the last iteration
    updates_per_iteration: int = 4  # PPO minibatch updates per iteration
    minibatch: int = 32  # chains per PPO update
    clip_eps: float = 0.2  # PPO ratio clip
    vf_coef: float = 0.5  # weight of the rating-token value loss
    gamma: float = 0.99  # GAE discount along a chain
    lam: float = 0.95  # GAE lambda
    replay_capacity: int = 1024  # chains kept in the prioritized replay buffer
    imitation_problems: int = 360  # per iteration, more training problems for `search.checked_greedy` (greedy whose
    #                                rejected steps are resampled); the policy imitates its successes (0: PPO alone)
    imitation_lr: float = 3e-4  # learning rate of the imitation steps (one pass over each iteration's successes)
    imitation_batch: int = 32  # chains per imitation step
    imitation_replay: float = 1.0  # per new success, this many earlier successes replayed from the imitation memory
    imitation_memory: int = 8192  # successful chains the imitation memory keeps (the oldest go first)
    alpha: float = 0.6  # replay priority exponent
    group_size: int = 8  # GRPO: samples per problem
    think_budget: int = 48  # GRPO: thinking tokens before </think> is forced
    solution_budget: int = 16  # GRPO: answer tokens after </think>
    loss_type: str = "dr_grpo"  # GRPO loss normalisation
    eval_every: int = 4  # greedy accuracy on 100 held-out problems every this many iterations (0: never)
    best_of_n: int = 8  # N of the best-of-N evaluation
    eval_simulations: int = 2  # MCTS simulations per held-out problem (each rolls its new thoughts out; the conclusions vote)
    bf16: bool = True  # autocast matrix multiplies to bfloat16 on a CPU


def iteration_config(config: SelfPlayConfig, it: int) -> SelfPlayConfig:
    """The settings of iteration `it`: lr and imitation_lr on a cosine from their full value at the first
    iteration down to lr_decay times it at the last, so the policy settles instead of ending on the swing of
    its last updates (greedy accuracy moves by several points between neighbouring iterations at a fixed rate)."""
    f = cosine(it / max(1, config.iterations - 1), config.lr_decay)
    return replace(config, lr=config.lr * f, imitation_lr=config.imitation_lr * f)


def step_checker(config: SelfPlayConfig):
    """The search's step checker (MCTSConfig.verify): every `a op b = c` in a thought must hold, or none."""
    return equations_hold if config.check_equations else None


def _autocast(config: SelfPlayConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16) if config.bf16 else nullcontext()


def ppo_iteration(model, tokenizer, opt, replay, policy, problems, it: int, config: SelfPlayConfig) -> dict:
    mcfg = MCTSConfig(simulations=config.simulations, num_candidates=config.num_candidates, max_children=config.num_candidates,
                      temperature=config.temperature, patient=config.num_candidates * config.simulations, rollout=True,
                      verify=step_checker(config))
    # with the checker, no success has a wrong step above it (mcts checks rolled-out chains whole): no experience.relabel_lucky
    results = mcts(policy, [p.question for p in problems], mcfg, [p.answer for p in problems], seed=config.seed * 1000 + it)
    solved = sum(any(n.terminal == "success" for n in r.tree.nodes) for r in results) / len(results)
    items = [item for r in results
             for item in chain_items(tokenizer, tree_chains(r.tree, config.chains_per_tree), success_rates(r.tree),
                                     config.gamma, config.lam)]
    stamp_old(model, tokenizer, items, config.temperature, config.bf16)
    replay.extend(items, [sum(abs(a) for a in it["advantages"]) / max(1, sum(it["mask"])) for it in items])
    cfg = PPOConfig(clip_eps=config.clip_eps, vf_coef=config.vf_coef, micro_batch_size=16, temperature=config.temperature)

    def value_fn(model, mb, hidden):  # clipped value loss on P(positive) at each thought's rating position
        probs = rating_probs(model, tokenizer, hidden, mb["value_pos"])
        return value_loss(probs, mb["old_value"], mb["value_target"], mb["value_mask"], clip_eps=0.2)

    stats = [dict.fromkeys(("policy_loss", "value_loss", "clip_frac", "approx_kl"), 0.0)]
    set_lr(opt, config.lr)
    model.train()
    for u in range(config.updates_per_iteration if len(replay) else 0):  # nothing to learn from yet: no update
        beta = beta_by_step(it * config.updates_per_iteration + u, config.iterations * config.updates_per_iteration)
        chosen, idx, w = replay.sample(min(config.minibatch, len(replay)), beta)
        with _autocast(config):
            st = ppo_step(model, opt, collate_chains(chosen, tokenizer.pad_id, w), cfg, value_loss_fn=value_fn)
        replay.update_priorities(idx, [abs(x) for x in st.pop("row_loss")])
        stats = stats[1:] if u == 0 else stats
        stats.append(st)
    model.eval()
    mean = {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}
    return {"solved": solved, "chains": len(items), **{k: mean[k] for k in ("policy_loss", "value_loss", "clip_frac", "approx_kl")}}


def imitation_iteration(model, tokenizer, opt, policy, problems, memory: PrioritizedReplay, rng: random.Random,
                        config: SelfPlayConfig) -> dict:
    """Expert iteration on a cheap search: `checked_greedy` over the problems, then one pass of supervised
    steps (whole lines, as the warm start was trained) over the chains whose conclusion the ground truth
    accepts, shuffled with `imitation_replay` times as many successes drawn from earlier iterations. The
    model's own greedy chains, fixed where the step checker caught a slip, are the densest lesson self-play
    has: they show the policy what it would have written had it not slipped, on many more problems per
    second than MCTS reaches. What it learns grows with the number of distinct problems it imitates, so
    the memory (a replay buffer with uniform priorities) keeps the problems of earlier iterations in play."""
    results = checked_greedy(policy, [p.question for p in problems], step_checker(config), SearchConfig(),
                             k=2 * config.num_candidates)
    wins = [r.tree.path(r.tree.node(r.path[-1])) for r, ok in zip(results, grade(results, [p.answer for p in problems])) if ok]
    new = imitation_items(tokenizer, wins)
    replayed = round(config.imitation_replay * len(new))
    # uniform priorities (alpha 0): stratified draws spread over the whole memory, early successes and recent alike
    old = memory.sample(replayed, beta=0.0)[0] if replayed and len(memory) else []
    memory.extend(new)
    items = new + old
    rng.shuffle(items)
    model.train()
    losses = [sft_step(model, opt, collate(items[s:s + config.imitation_batch], tokenizer.pad_id), config.imitation_lr, config.bf16)
              for s in range(0, len(items) - config.imitation_batch + 1, config.imitation_batch)]
    model.eval()
    return {"imitation_solved": len(wins) / max(1, len(problems)), "imitation_replayed": len(old),
            "imitation_loss": sum(losses) / max(1, len(losses))}


def grpo_iteration(model, tokenizer, opt, problems, it: int, config: SelfPlayConfig) -> dict:
    """G budgeted rollouts per problem, reward = correct (0 without </think>), group advantages, one step."""
    prompts = [tokenizer.encode(think_prompt(p.question)) for p in problems]
    rows = generate_budgeted(model, prompts, config.think_budget, config.solution_budget, tokenizer.token_id("</think>"),
                             temperature=config.temperature, num_samples=config.group_size,
                             stop_token_ids=[tokenizer.eos_id], tokenizer=tokenizer, seed=config.seed * 1000 + it)
    rewards = torch.tensor([float("</think>" in r.text and check(r.text.split("</think>")[-1], problems[i // config.group_size].answer))
                            for i, r in enumerate(rows)])
    adv = grpo_advantages(rewards, config.group_size, scale_std=False)
    ids, attn = batch_ids([r.prompt + r.tokens for r in rows], tokenizer.pad_id)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        mask[i, len(r.prompt):len(r.prompt) + len(r.tokens)] = 1  # sampled and forced tokens alike
    cfg = GRPOConfig(loss_type=config.loss_type, micro_batch_size=16, temperature=config.temperature,
                     max_completion_length=config.think_budget + config.solution_budget + 1)
    set_lr(opt, config.lr)
    model.train()
    with _autocast(config):
        st = grpo_step(model, opt, {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "advantages": adv}, cfg)
    model.eval()
    return {"reward": rewards.mean().item(), "clip_frac": st["clip_frac"], "tokens": mask.sum().item() / len(rows)}


# -- checkpoints ----------------------------------------------------------------------------------------
def save_state(out: Path, it: int, model, tokenizer, opt, replay, memory, policy, rng, metrics) -> Path:
    """Write iteration `it`'s checkpoint next to the last one, then point `latest` at it (atomic rename)."""
    ckpt = out / f"iter-{it:04d}"
    save_pretrained(model, tokenizer, ckpt)
    if replay is not None:
        replay.save(ckpt / "replay.pt")
        memory.save(ckpt / "imitation.pt")
    state = {"iteration": it, "optimizer": opt.state_dict(), "policy_rng": policy.generator.get_state(),
             "python_rng": rng.getstate(), "torch_rng": torch.get_rng_state(), "metrics": metrics}
    tmp = ckpt / ".trainer_state.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(ckpt / "trainer_state.pt")
    (out / ".latest.tmp").write_text(ckpt.name)
    (out / ".latest.tmp").replace(out / "latest")
    for old in out.glob("iter-*"):
        if old != ckpt and old.is_dir():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    return ckpt


def _table(rows: list[tuple[str, EvalResult, EvalResult]]) -> str:
    lines = [f"{'method':<22}{'before':>9}{'after':>9}{'tokens/problem':>16}"]
    for name, before, after in rows:
        lines.append(f"{name:<22}{100 * before.accuracy:8.1f}%{100 * after.accuracy:8.1f}%{after.tokens:16.1f}")
    return "\n".join(lines)


def run(config: SelfPlayConfig, resume: str | None = None, from_scratch: bool = False, progress: bool = True) -> dict:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    train, test = load_jsonl(config.data), load_jsonl(config.test_data)[: config.eval_problems]
    if resume:
        start_dir = Path(resume) / (Path(resume) / "latest").read_text().strip()
        model, tokenizer = load_pretrained(start_dir, dtype="float32")
    elif from_scratch:
        model, tokenizer = train_warmstart(out / "warmstart", seed=config.seed, progress=progress)
    else:
        model, tokenizer = load_pretrained(config.warmstart, dtype="float32")
    model.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    replay = PrioritizedReplay(config.replay_capacity, alpha=config.alpha, seed=config.seed) if config.algo == "ppo" else None
    memory = PrioritizedReplay(config.imitation_memory, alpha=0.0, seed=config.seed + 1) if config.algo == "ppo" else None
    policy = LMPolicy(model, tokenizer, temperature=config.temperature, max_thought_tokens=config.max_thought_tokens, seed=config.seed)
    metrics, first = [], 0
    if resume:
        state = torch.load(start_dir / "trainer_state.pt", weights_only=False)
        opt.load_state_dict(state["optimizer"])
        policy.generator.set_state(state["policy_rng"])
        rng.setstate(state["python_rng"])
        torch.set_rng_state(state["torch_rng"])
        metrics, first = state["metrics"], state["iteration"] + 1
        if replay is not None:
            replay = PrioritizedReplay.load(start_dir / "replay.pt", weights_only=False)
            memory = PrioritizedReplay.load(start_dir / "imitation.pt")
    quick = test[:100]
    evals = {}
    # test-time MCTS checks each step's equations too (a tool, like rStar's code execution: no ground truth needed)
    test_mcts = replace(EVAL_MCTS, verify=step_checker(config))

    def eval_all(tag):
        kw = dict(temperature=config.temperature, max_thought_tokens=config.max_thought_tokens, seed=config.seed)
        e = {"greedy": evaluate(model, tokenizer, test, "greedy", **kw),
             f"best_of_{config.best_of_n}": evaluate(model, tokenizer, test, "best_of_n", config.best_of_n, **kw),
             f"mcts_{config.eval_simulations}": evaluate(model, tokenizer, test, "mcts", config.eval_simulations, mcts=test_mcts, **kw)}
        if config.algo == "grpo":
            e[f"think_{config.think_budget}"] = evaluate_budgeted(model, tokenizer, test, config.think_budget, config.solution_budget)
        evals[tag] = e
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"eval": tag, **{k: asdict(v) for k, v in e.items()}}) + "\n")

    if not resume:
        (out / "metrics.jsonl").unlink(missing_ok=True)
        eval_all("before")
        metrics.append({"before": {k: asdict(v) for k, v in evals["before"].items()}})
    else:
        evals["before"] = {k: EvalResult(**v) for k, v in metrics[0]["before"].items()}
    bar = tqdm(range(first, config.iterations), desc=f"self-play ({config.algo})", disable=not progress,
               initial=first, total=config.iterations)
    for it in bar:
        problems = rng.sample(train, config.problems_per_iteration + (config.imitation_problems if config.algo == "ppo" else 0))
        c = iteration_config(config, it)
        if config.algo == "ppo":
            m = ppo_iteration(model, tokenizer, opt, replay, policy, problems[:config.problems_per_iteration], it, c)
            if config.imitation_problems:
                m.update(imitation_iteration(model, tokenizer, opt, policy, problems[config.problems_per_iteration:], memory, rng, c))
        else:
            m = grpo_iteration(model, tokenizer, opt, problems, it, c)
        m["lr"] = c.lr
        if config.eval_every and (it + 1) % config.eval_every == 0:
            m["greedy_quick"] = evaluate(model, tokenizer, quick, "greedy", max_thought_tokens=config.max_thought_tokens).accuracy
        m.update(iteration=it, seconds=round(time.perf_counter() - t0, 1))
        metrics.append(m)
        with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(m) + "\n")
        bar.set_postfix({k: f"{v:.3f}" for k, v in m.items() if k in ("solved", "imitation_solved", "reward", "greedy_quick")})
        save_state(out, it, model, tokenizer, opt, replay, memory, policy, rng, metrics)
    eval_all("after")
    final = save_pretrained(model, tokenizer, out / "final")
    before, after = evals["before"], evals["after"]
    print("\n" + _table([(k, before[k], after[k]) for k in after if k in before]))
    summary = {"sft_greedy": before["greedy"].accuracy, "final_greedy": after["greedy"].accuracy,
               "sft_best_of_n": before[f"best_of_{config.best_of_n}"].accuracy,
               "final_best_of_n": after[f"best_of_{config.best_of_n}"].accuracy,
               "sft_mcts": before[f"mcts_{config.eval_simulations}"].accuracy,
               "final_mcts": after[f"mcts_{config.eval_simulations}"].accuracy,
               "iterations": config.iterations, "algo": config.algo, "seed": config.seed,
               "wall_s": round(time.perf_counter() - t0, 1), "checkpoint": str(final)}
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("run")
    g.add_argument("--tiny", action="store_true", help="the laptop-CPU recipe on the tiny task (the default settings)")
    g.add_argument("--from-scratch", action="store_true", help="redo the warm start (SFT) instead of loading data/tiny/warmstart")
    g.add_argument("--resume", default=None, help="continue the run in this directory from its latest checkpoint")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g = p.add_argument_group("model and data (without --tiny)")
    g.add_argument("--model", default=None, help="warm start: hub id or directory (default: data/tiny/warmstart)")
    g.add_argument("--data", default=None, help="training problems, GSM8K-style jsonl")
    g.add_argument("--test-data", default=None, help="held-out problems, GSM8K-style jsonl")
    add_config_flags(p.add_argument_group("settings (see SelfPlayConfig for each)"), SelfPlayConfig,
                     skip=("data", "test_data", "warmstart"))
    args = p.parse_args(argv)
    hold_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {f.name: getattr(args, f.name) for f in fields(SelfPlayConfig)
                 if f.name not in ("data", "test_data", "warmstart")}
    config = SelfPlayConfig(**overrides)
    if args.model:
        config.warmstart = args.model
    if args.data:
        config.data = args.data
    if args.test_data:
        config.test_data = args.test_data
    if config.algo not in ("ppo", "grpo"):
        p.error(f"--algo {config.algo!r}: expected 'ppo' or 'grpo'")
    if args.resume:
        config.out = args.resume
    summary = run(config, resume=args.resume, from_scratch=args.from_scratch, progress=not args.no_progress)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
