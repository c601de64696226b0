"""One iteration of `selfplay --algo ppo` (LLaMA-O1's self-play): MCTS, PPO from prioritized replay, imitation.

    ppo_iteration:        MCTS over training problems (the ground truth checks the conclusions)
                          -> root-to-outcome chains with GAE advantages and value targets (experience.py)
                          -> prioritized replay -> PPO on the policy and the rating-token value (updates.py)
    imitation_iteration:  checked greedy over more training problems -> supervised steps on its successes,
                          beside as many successes of earlier iterations (the imitation memory)

`selfplay.run` calls both every iteration; `elastic.grpo_iteration` is the `--algo grpo` counterpart.
"""

from __future__ import annotations

import random

import torch

from nanoo1 import dist
from nanoo1.device import bf16_autocast
from nanoo1.experience import (chain_items, collate_chains, imitation_items, restamp_stale, row_priorities,
                               stamp_old, success_rates, tree_chains)
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.recipe import SelfPlayConfig, autocast, step_checker
from nanoo1.replay import PrioritizedReplay, beta_by_step
from nanoo1.rl import td_priority
from nanoo1.search import SearchConfig, checked_greedy, grade
from nanoo1.sft import collate, set_lr, sft_step
from nanoo1.updates import PPOConfig, ppo_step
from nanoo1.value import rating_at, rating_bce


def ppo_iteration(model, tokenizer, opt, replay, policy, problems, it: int, config: SelfPlayConfig) -> dict:
    """MCTS over `problems` (this rank's share), their chains into the replay buffer, PPO updates from it.
    Under torchrun each rank draws its part of minibatch (`dist.share`) from its own buffer for each update."""
    s, c = config.search, config.ppo
    mcfg = MCTSConfig(simulations=s.simulations, num_candidates=s.num_candidates, max_children=s.num_candidates,
                      temperature=s.temperature, patient=s.num_candidates * s.simulations, rollout=True,
                      verify=step_checker(config))
    # with the checker, no success has a wrong step above it (mcts checks rolled-out chains whole)
    results = mcts(policy, [p.question for p in problems], mcfg, [p.answer for p in problems])
    solved = dist.ratio(sum(r.tree.solved() for r in results), len(results))
    items = [item for r in results
             for item in chain_items(tokenizer, tree_chains(r.tree, s.chains_per_tree), success_rates(r.tree), c.gamma, c.lam)]
    stamp_old(model, tokenizer, items, s.temperature, autocast(config), c.micro_batch, it, c.micro_batch_tokens)
    replay.extend(items, row_priorities(items))
    cfg = PPOConfig(clip_eps=c.clip_eps, vf_coef=c.vf_coef, micro_batch_size=c.micro_batch,
                    micro_batch_tokens=c.micro_batch_tokens, temperature=s.temperature)
    device = model.output_embedding.device

    def value_fn(model, mb, hidden):  # the rating-token value's loss at each thought's <start_of_rating>
        logits = rating_at(model, tokenizer, hidden, mb["value_pos"])  # (b, K, 2)
        loss = rating_bce(logits, mb["value_target"], mb["value_mask"], mb.get("weights"))
        probs = torch.softmax(logits, -1)[..., 0].detach()  # (b, K) P(positive)
        return loss, td_priority(probs, mb["value_target"], mb["value_mask"])  # the replay priority, as at insertion

    stats = []  # each update's losses
    set_lr(opt, c.lr)
    restamped = 0
    updates = c.updates_per_iteration if dist.smallest(len(replay)) else 0  # a rank has nothing to learn from yet
    minibatch = dist.share(c.minibatch, dist.place())  # this rank's part of each update's chains
    for u in range(updates):
        beta = beta_by_step(it * c.updates_per_iteration + u, config.run.iterations * c.updates_per_iteration)
        chosen, idx, w = replay.sample(min(minibatch, len(replay)), beta)
        restamped += restamp_stale(model, tokenizer, chosen, it, c.replay_max_age, s.temperature, autocast(config),
                                   c.micro_batch, c.micro_batch_tokens)
        model.train()
        batch = {k: v.to(device) for k, v in collate_chains(chosen, tokenizer.pad_id, w).items()}
        with bf16_autocast(autocast(config), device):
            st = ppo_step(model, opt, batch, cfg, value_loss_fn=value_fn)
        model.eval()
        replay.update_priorities(idx, st.pop("row_priority"))
        stats.append(st)
    losses = ("policy_loss", "value_loss", "clip_frac", "approx_kl")  # the updates' means; without updates 0.0
    mean = {k: sum(st[k] for st in stats) / max(1, len(stats)) for k in losses}
    return {"solved": solved, "chains": len(items), "restamped": restamped, "ppo_updates": updates, **mean}


def imitation_iteration(model, tokenizer, opt, policy, problems, memory: PrioritizedReplay, rng: random.Random,
                        config: SelfPlayConfig) -> dict:
    """Expert iteration on a cheap search: `checked_greedy` over the problems, then one pass of supervised
    steps (whole lines, as the warm start was trained) over the chains whose conclusion the ground truth
    accepts, shuffled with `replay` times as many successes drawn from earlier iterations. The model's own
    greedy chains, fixed where the step checker caught a slip, show the policy what it would have written
    had it not slipped, on many more problems per second than MCTS reaches; the memory (a replay buffer
    with uniform priorities) keeps the problems of earlier iterations in play. Under torchrun each rank
    gives its part of batch (`dist.share`) of its own chains to every step, and all ranks take as many steps
    as the one with the fewest chains can."""
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
    batch = dist.share(c.batch, dist.place())
    losses = [sft_step(model, opt, collate(items[s * batch:(s + 1) * batch], tokenizer.pad_id), c.lr, autocast(config))
              for s in range(dist.smallest(-(-len(items) // batch)))]  # the last batch may be short
    model.eval()
    return {"imitation_solved": dist.ratio(len(wins), len(problems)), "imitation_replayed": len(old),
            "imitation_steps": len(losses), "imitation_loss": sum(losses) / max(1, len(losses))}
