"""One self-play iteration of the 2b preset through LoRA, timed stage by stage with each stage's peak memory.

The memory and gpu sections of `python -m nanoo1.bench` run it: MCTS, stamping the old log-probs, the PPO
update, checked greedy and the imitation step, as `iteration.ppo_iteration` and `imitation_iteration` call them.
"""

from __future__ import annotations

import json
import random
import time

import torch

# the CPU's iteration: MCTS over one problem, one PPO update, checked greedy and an imitation step on another
SHORT = dict(problems_per_iteration=1, simulations=1, num_candidates=2, max_thought_tokens=4, updates_per_iteration=1,
             minibatch=2, micro_batch=1, imitation_problems=1, imitation_batch=1, imitation_replay=0.0)
STAGES = ("mcts", "stamp_old", "ppo_step", "checked_greedy", "sft_step")  # what iteration.py calls, timed


def one_lora_iteration(checkpoint: str, device: str = "cpu", settings: dict = SHORT):
    """One self-play iteration of the 2b preset (LoRA rank 16, bf16) on `device`, with `settings` (flag names) over
    the preset: MCTS, PPO updates, checked greedy and imitation steps on the tiny task's problems. A random model
    never answers right, so a stand-in counts its chains as the outcomes to learn from (as the tests do): the
    updates then run. Prints and returns the iteration's counts with each stage's calls, seconds and peak
    torch.cuda.max_memory_allocated in GB (None off CUDA), and returns the trained model."""
    from nanoo1 import iteration
    from nanoo1.experience import outcomes

    real = {name: getattr(iteration, name) for name in ("tree_chains", "grade") + STAGES}  # restored after this call
    iteration.tree_chains = lambda tree, n: [tree.path(e) for e in outcomes(tree)][:n]
    iteration.grade = lambda results, truths: [len(r.path) > 1 for r in results]
    stages = {}
    for name in STAGES:
        setattr(iteration, name, _staged(real[name], stages.setdefault(name, {"calls": 0, "seconds": 0.0, "peak_gb": None})))
    try:
        return _one_lora_iteration(checkpoint, device, settings, stages)
    finally:
        for name, fn in real.items():
            setattr(iteration, name, fn)


def _staged(fn, stage: dict):
    cuda = torch.cuda.is_available()

    def run(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
            stage["peak_gb"] = max(stage["peak_gb"] or 0.0, torch.cuda.max_memory_allocated() / 1e9)
        stage["calls"], stage["seconds"] = stage["calls"] + 1, stage["seconds"] + time.perf_counter() - t
        return out
    return run


def _one_lora_iteration(checkpoint: str, device: str, settings: dict, stages: dict):
    from nanoo1 import iteration  # its stages are the timed stand-ins while one_lora_iteration runs
    from nanoo1.config import apply_flags
    from nanoo1.policy import LMPolicy
    from nanoo1.recipe import PRESETS, draws_per_iteration
    from nanoo1.replay import PrioritizedReplay
    from nanoo1.runs import load_model
    from nanoo1.tasks import TINY_DIR, load_jsonl

    config = apply_flags(PRESETS["2b"], dict(warmstart=checkpoint, device=device, **settings))
    model, tokenizer = load_model(config, None, torch.device(device))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.ppo.lr)
    s = config.search
    policy = LMPolicy(model, tokenizer, temperature=s.temperature, max_thought_tokens=s.max_thought_tokens,
                      max_rows=s.max_rows)
    problems = load_jsonl(TINY_DIR / "train.jsonl")[:draws_per_iteration(config)]
    n = s.problems_per_iteration
    m = iteration.ppo_iteration(model, tokenizer, opt, PrioritizedReplay(64), policy, problems[:n], 0, config)
    m.update(iteration.imitation_iteration(model, tokenizer, opt, policy, problems[n:], PrioritizedReplay(64, alpha=0.0),
                                           random.Random(0), config))
    counts = {**{k: m[k] for k in ("chains", "ppo_updates", "imitation_solved")}, "stages": stages}
    print(json.dumps(counts))
    return counts, model
