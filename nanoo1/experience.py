"""Experience: from searched thought trees to PPO's training items.

    tree -> outcomes (where each chain ended) -> success_rates (Monte Carlo P(success) per node)
         -> tree_chains (the root-to-outcome paths to train) -> chain_items (ids, trained tokens, GAE
            advantages, value positions and targets) -> stamp_old (the collecting policy's log-probs and
            values) -> collate_chains (padded batches for updates.ppo_step)
    successful chains of any search -> imitation_items (whole lines, for sft.lm_loss)

A searched tree records what the search learned about each thought: which chains succeeded (the ground
truth judged their conclusions) and, with a step checker, where a chain first went wrong. iteration.py
composes these functions into its PPO stage; each can be called alone on a hand-built tree.
"""

from __future__ import annotations

import math

import torch

from nanoo1.device import bf16_autocast
from nanoo1.rl import completion_logprobs, path_gae, td_priority
from nanoo1.steps import equations_hold
from nanoo1.updates import micro_batch_rows
from nanoo1.thoughts import chain_tokens, render_node
from nanoo1.tokenizer import batch_ids, right_pad
from nanoo1.value import rating_at


def outcomes(tree) -> list:
    """The nodes where the search's chains ended: terminal nodes with no terminal node above them.

    A rolled-out chain with a rejected thought ends at that thought (mcts marks it the failed terminal):
    what the rollout generated after it is in the tree but is not an outcome, so each rollout counts once
    and a training chain ends at its first wrong step, not at steps computed on from a wrong number.
    """
    return [n for n in tree.nodes if n.terminal is not None and n is not tree.root
            and not any(a.terminal is not None for a in tree.path(n)[1:-1])]


def success_rates(tree) -> dict[int, float]:
    """P(success) of every node that has outcomes below it: (successes + 1/2) / (outcomes + 1).

    A Monte Carlo estimate from the search's own outcomes (rStar-Math's Q is the same count with +-1).
    """
    counts = {}
    for end in outcomes(tree):
        node = end
        while node is not None:
            s, n = counts.get(node.id, (0, 0))
            counts[node.id] = (s + (end.terminal == "success"), n + 1)
            node = node.parent
    return {k: (s + 0.5) / (n + 1) for k, (s, n) in counts.items()}


def relabel_lucky(tree) -> int:
    """Mark a success whose chain (the thoughts below the root, its conclusion included) holds a wrong equation
    (`equations_hold`) as a failure; returns how many. The question is not checked: it may state a wrong equation
    on purpose ("Tom wrote 2 + 2 = 5").

    For trees grown without a step checker (best-of-N chains, MCTS without `verify`); MCTS with
    `verify=equations_hold`, which checks each new thought, never lets such a success through."""
    lucky = [leaf for leaf in tree.nodes if leaf.terminal == "success"
             and not all(equations_hold(node.text) for node in tree.path(leaf)[1:])]
    for leaf in lucky:
        leaf.terminal = "failure"
    return len(lucky)


def tree_chains(tree, n: int) -> list[list]:
    """Up to n root-to-outcome paths (`outcomes`), half successes and half failures, each in the order the search
    found them, from a tree with at least one success (a tree without one teaches mostly noise to a small model).
    The search has already set every failure's value to its reward, so no value orders them."""
    ends = outcomes(tree)
    wins = [e for e in ends if e.terminal == "success"]
    if not wins:
        return []
    losses = sorted((e for e in ends if e.terminal != "success"), key=lambda e: e.id)
    return [tree.path(e) for e in wins[: n - n // 2] + losses[: n // 2]]


def chain_items(tokenizer, paths: list[list], rates: dict[int, float] | None = None, gamma: float = 0.99,
                lam: float = 0.95) -> list[dict]:
    """One replay item per chain: token ids, which tokens train the policy (each thought once per tree),
    per-token advantages, and value positions with their targets.

    GAE runs root first along each chain (Schulman et al. 2016, eq. 16): V after thought k is its success
    rate in the tree (`success_rates`), r = 1 at a successful terminal, else 0. A thought on several chains
    (a shared prefix) trains once, in the first, with the mean of its advantages over all of them: along any
    one chain its advantage holds that chain's later TD errors, which would credit a shared thought with
    the outcome of whichever chain came first. A thought's value target is its success rate; a terminal's is r.
    """
    rate = {} if rates is None else rates
    chains, advantage_of = [], {}  # id(node) -> its advantage along every chain through it
    for path in paths:
        reward = 1.0 if path[-1].terminal == "success" else 0.0
        after = [rate.get(n.id, math.exp(min(0.0, n.value if n.value is not None else math.log(0.5)))) for n in path]
        values = torch.tensor(after[:-1])  # entry k: the state before thought k+1 (the root's rate first)
        rewards = torch.zeros(len(path) - 1)
        rewards[-1] = reward
        adv, _ = path_gae(rewards, values, gamma, lam)
        for node, a in zip(path[1:], adv.tolist()):
            advantage_of.setdefault(id(node), []).append(a)
        chains.append((path, reward, after))
    items, trained = [], set()
    for path, reward, after in chains:
        ids, spans = chain_tokens(tokenizer, path)
        mask, advantages = [0] * len(ids), [0.0] * len(ids)
        value_pos, value_target = [], []
        for k, (node, (start, end, rating)) in enumerate(zip(path[1:], spans)):
            value_pos.append(rating)
            value_target.append(reward if k == len(path) - 2 else after[k + 1])
            if id(node) in trained:  # shared prefix: context here, trained in its first chain
                continue
            trained.add(id(node))
            a = sum(advantage_of[id(node)]) / len(advantage_of[id(node)])
            for t in range(start, end):
                mask[t], advantages[t] = 1, a
        items.append({"ids": ids, "mask": mask, "advantages": advantages, "value_pos": value_pos,
                      "value_target": value_target})
    return items


def imitation_items(tokenizer, paths: list[list]) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of successful chains to imitate, as the warm start was trained (sft.thought_example):
    every line after the question (headers, thoughts, ratings) and the closing <eos>. The thoughts' ids
    are those they were sampled as (`chain_tokens`)."""
    items = []
    for path in paths:
        ids, _ = chain_tokens(tokenizer, path)
        question = len(tokenizer.encode(render_node(path[0]) + "\n"))
        items.append((ids + [tokenizer.eos_id], [0] * question + [1] * (len(ids) - question + 1)))
    return items


def collate_chains(items: list[dict], pad_id: int, weights=None, multiple: int = 32) -> dict:
    """Padded (B, T) and (B, K) tensors of chain items for `updates.ppo_step` (lengths rounded up to `multiple`)."""
    if not items:
        raise ValueError("collate_chains: no chain items to collate")
    ids, attn = batch_ids([it["ids"] for it in items], pad_id, multiple=multiple)
    T = ids.shape[1]
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": right_pad([it["mask"] for it in items], 0, T),
             "advantages": right_pad([it["advantages"] for it in items], 0.0, T),
             "value_pos": right_pad([it["value_pos"] for it in items], 0),
             "value_target": right_pad([it["value_target"] for it in items], 0.0),
             "value_mask": right_pad([[1] * len(it["value_pos"]) for it in items], 0)}
    if "old_logp" in items[0]:
        batch["old_logp"] = right_pad([it["old_logp"] for it in items], 0.0, T)
        batch["old_value"] = right_pad([it["old_value"] for it in items], 0.0)
    if weights is not None:
        batch["weights"] = torch.as_tensor(weights, dtype=torch.float32)
    return batch


@torch.no_grad()
def stamp_old(model, tokenizer, items: list[dict], temperature: float, bf16: bool = False, batch_size: int = 16,
              iteration: int = 0, max_tokens: int = 0) -> None:
    """Log-probs and values P(positive) of the collecting policy, stored with each item before any update
    (PPO's old), with the iteration that stamped them; batch_size items a forward pass, and with max_tokens > 0
    at most that many padded tokens (`updates.micro_batch_rows`)."""
    for rows in micro_batch_rows([-(-len(it["ids"]) // 32) * 32 for it in items], batch_size, max_tokens):
        chunk = items[rows]
        b = {k: v.to(model.output_embedding.device) for k, v in collate_chains(chunk, tokenizer.pad_id).items()}
        with bf16_autocast(bf16, model.output_embedding.device):
            hidden = model.hidden_states(b["input_ids"], b["attention_mask"])
            logp = completion_logprobs(model, b["input_ids"], b["attention_mask"], b["completion_mask"],
                                       temperature, hidden=hidden)
            probs = torch.softmax(rating_at(model, tokenizer, hidden, b["value_pos"]), -1)[..., 0]  # (B, K) P(positive)
        for i, it in enumerate(chunk):
            it["old_logp"] = logp[i, :len(it["ids"])].float().tolist()
            it["old_value"] = probs[i, :len(it["value_pos"])].float().tolist()
            it["iteration"] = iteration


def row_priorities(items: list[dict]) -> list[float]:
    """Each stamped item's replay priority |delta| (`rl.td_priority`): mean |value target - stamped value|."""
    return [float(td_priority(torch.tensor(it["old_value"]), torch.tensor(it["value_target"]))) for it in items]


def restamp_stale(model, tokenizer, items: list[dict], iteration: int, max_age: int, temperature: float,
                  bf16: bool = False, batch_size: int = 16, max_tokens: int = 0) -> int:
    """Re-stamp (`stamp_old`) the items stamped more than `max_age` iterations before `iteration`; returns how many.

    PPO's ratio exp(logp - old_logp) assumes old_logp is the policy that collected the batch, a few updates
    ago. A replayed chain's stamp falls behind by every later PPO and imitation update; past max_age its
    ratio measures mostly that drift (clipped or, for negative advantages, unbounded), so its old
    log-probs and values are taken again from the current policy before it is trained on."""
    stale = list({id(it): it for it in items if iteration - it["iteration"] > max_age}.values())
    if stale:
        stamp_old(model, tokenizer, stale, temperature, bf16, batch_size, iteration, max_tokens)
    return len(stale)
