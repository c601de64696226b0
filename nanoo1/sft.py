"""Supervised warm start: teach a tiny Gemma-2, from scratch, to write worked solutions.

An example is (token ids, loss mask): next-token cross-entropy is taken where the mask is 1. Examples of
the thought format are built here; `think_example` is Elastic Reasoning's <think> format and
`rstar.code_example` rStar's code format, so one warm start can serve every algorithm in nanoo1.

A thought-format example is one root-to-leaf path in the LongCoT format (thoughts.py):

    positive: <problem>question / <expansion>7 + 5 = 12 / ... / <conclusion>\\boxed{18}, all rated positive
    negative: the same path with one step's result corrupted (7 + 5 = 13) and the later steps computed
              from it to a wrong conclusion, rated <negative_rating> from the corrupted step on

The mask covers everything after the question, except that from the corrupted step on only the rating
tokens are trained, never the text: the policy learns correct steps, and the rating-token value head
learns to tell a path with a wrong step from a right one at the very position where search reads it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanoo1 import dist
from nanoo1.device import bf16_autocast
from nanoo1.tasks import OPS, Problem, Step, solution_tree, think_prompt
from nanoo1.thoughts import RATINGS, render_node
from nanoo1.tokenizer import batch_ids, right_pad


@dataclass
class SFTConfig:
    steps: int = 600  # optimizer steps
    batch_size: int = 64  # sequences per step
    lr: float = 3e-3  # peak learning rate (tiny models like it high)
    warmup: int = 30  # linear warm-up steps, then cosine decay to lr * min_lr_ratio
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max gradient norm
    negative_fraction: float = 0.3  # share of thought-format sequences that end in a corrupted, negative step
    bf16: bool = True  # autocast matmuls to bfloat16 on CPU (about 2x faster where AVX512-BF16 exists)


def _corrupt(value: int, rng: random.Random) -> int:
    """A plausible wrong result: off by a little, or a slip in the tens digit."""
    delta = rng.choice([1, 1, 2, 3, 10]) * rng.choice([-1, 1])
    return value + delta if value + delta >= 0 else value + abs(delta)


def tree_ids(n: int, rng: random.Random) -> list[int]:
    """Ids for a chain of n nodes as they come out of a search tree: 0 for the root, then increasing by
    1 (a first child) or by more (siblings and other branches took the ids in between). A model trained
    only on 0, 1, 2, ... learns to read the step number off the id, and is lost inside a real tree."""
    ids = [0]
    for _ in range(n - 1):
        ids.append(ids[-1] + (1 if rng.random() < 0.3 else rng.randint(2, 12)))
    return ids


def thought_example(problem: Problem, tokenizer, rng: random.Random, negative_fraction: float = 0.0):
    """(token ids, loss mask) of one thought-format path, ids as in a search tree, ending with <eos>.

    With probability negative_fraction one step's result is corrupted and the error propagates: later
    steps compute from the wrong number, to a wrong conclusion. From the corrupted step on, every thought
    is rated negative and only the rating tokens are trained, so the rating-token value head learns that a
    path with a mistake anywhere is a bad path (what search needs from it), and the policy never learns
    a mistake.
    """
    steps = list(problem.steps)
    bad = rng.randrange(len(steps)) if steps and rng.random() < negative_fraction else None
    if bad is not None:
        steps = _propagate_error(steps, bad, rng)
    tree = solution_tree(Problem(problem.question, str(steps[-1].y) if steps else problem.answer, steps))
    path = tree.nodes  # a chain: root, expansions, conclusion
    for node, node_id in zip(path, tree_ids(len(path), rng)):
        node.id = node_id  # rendering only: headers read node.id and node.parent.id
    for node in path[bad + 1:] if bad is not None else []:
        node.rating = "negative"
    ids = tokenizer.encode(render_node(path[0]) + "\n")
    mask = [0] * len(ids)
    for i, node in enumerate(path[1:], start=1):
        last = i == len(path) - 1
        if node.rating == "negative":  # the thought is context; its rating (negative) is trained
            head = tokenizer.encode(render_node(node, upto="rating"), add_bos=False)
            tail = tokenizer.encode(RATINGS["negative"] + "<end_of_rating>" + ("" if last else "\n"), add_bos=False)
            ids += head + tail
            mask += [0] * len(head) + [1] + [0] * (len(tail) - 1)
        else:
            line = tokenizer.encode(render_node(node) + ("" if last else "\n"), add_bos=False)
            ids += line
            mask += [1] * len(line)
    ids.append(tokenizer.eos_id)  # the tree ends after its conclusion
    mask.append(1)
    return ids, mask


def _propagate_error(steps: list[Step], bad: int, rng: random.Random) -> list[Step]:
    """Corrupt step `bad`'s result, then redo the later steps from it; stop early where a division would
    no longer be exact (the chain then ends in a conclusion of the last number)."""
    out = steps[:bad] + [Step(steps[bad].x, steps[bad].op, steps[bad].b, _corrupt(steps[bad].y, rng))]
    for s in steps[bad + 1:]:
        x = out[-1].y
        if s.op == "/" and x % s.b or s.op == "-" and x - s.b < 0:
            break
        out.append(Step(x, s.op, s.b, OPS[s.op](x, s.b)))
    return out


def think_example(problem: Problem, tokenizer, rng: random.Random | None = None, pauses: float = 0.0):
    """(ids, mask) of Elastic Reasoning's format: the question, then <think>work</think>answer<eos> (trained);
    each step's equation followed by the pause line with probability `pauses` (drawn from rng)."""
    prompt = tokenizer.encode(think_prompt(problem.question))
    lines = [rng.random() < pauses for _ in problem.steps] if pauses else None
    answer = tokenizer.encode(problem.think_solution(lines), add_bos=False) + [tokenizer.eos_id]
    return prompt + answer, [0] * len(prompt) + [1] * len(answer)


def make_batches(problems: list[Problem], example_fn, batch_size: int, rng: random.Random, pad_id: int):
    """Endless (ids, attention mask, loss mask) batches of example_fn(problem, rng), a pass over the problems in
    a new random order each time; examples of similar length go together (within chunks of 16 batches) so
    little is spent on padding. A pass leaves out its last len(problems) % batch_size problems in that order,
    so which ones is random, never the longest. Fewer problems than one batch is a ValueError (a pass would
    hold no batch, and the generator would never yield)."""
    if len(problems) < batch_size:
        raise ValueError(f"make_batches: {len(problems)} examples, fewer than one batch of {batch_size}")
    chunk = batch_size * 16
    while True:
        order = list(range(len(problems)))
        rng.shuffle(order)
        order = order[:len(order) - len(order) % batch_size]  # whole batches only
        for start in range(0, len(order), chunk):
            pool = [example_fn(problems[i], rng) for i in order[start:start + chunk]]
            pool.sort(key=lambda ex: len(ex[0]))
            batches = [pool[i:i + batch_size] for i in range(0, len(pool), batch_size)]
            rng.shuffle(batches)
            for batch in batches:
                yield collate(batch, pad_id)


def collate(examples, pad_id: int, multiple: int = 32):
    """Right-padded (ids, attention mask, loss mask). Lengths are rounded up to a multiple of `multiple`:
    a few shapes recur, so the memory allocator reuses its blocks (every new length fragments the heap)."""
    ids, attn = batch_ids([x for x, _ in examples], pad_id, multiple=multiple)  # (B, T)
    return ids, attn, right_pad([m for _, m in examples], 0, ids.shape[1])


LOSS_CHUNK = 1 << 26  # logits per lm-head chunk of lm_loss: 256 MiB in float32, 262 positions of a 256k vocabulary


def _summed_nll(model, hidden, targets, mask):
    """Summed cross-entropy of the positions where mask is set: hidden (n, C), targets and mask (n,)."""
    return F.cross_entropy(model.logits(hidden)[mask].float(), targets[mask], reduction="sum")


def lm_loss(model, ids, attn, loss_mask, bf16: bool = False):
    """Mean cross-entropy of the tokens where loss_mask is 1, each predicted from the position before.

    The lm head runs on LOSS_CHUNK logits' worth of positions at a time, each chunk recomputed in backward
    (activation checkpointing), so no (B, T, V) logits are built: with a 256,000-token vocabulary a batch's
    would take gigabytes. bf16 autocasts the matrix multiplies (weights and the optimizer keep their dtype)."""
    B, T = ids.shape
    # on the flattened (B, T) grid position t predicts token t + 1; a row's last position predicts nothing
    targets = torch.cat([ids[:, 1:], ids[:, :1]], dim=1).reshape(-1)  # (B*T,)
    mask = torch.cat([loss_mask[:, 1:].bool(), torch.zeros_like(loss_mask[:, :1], dtype=torch.bool)], 1).reshape(-1)
    step = max(1, LOSS_CHUNK // model.config.vocab_size)
    with bf16_autocast(bf16, ids.device):
        hidden = model.hidden_states(ids, attn).reshape(B * T, -1)  # (B*T, C)
        total = sum(checkpoint(_summed_nll, model, hidden[s:s + step], targets[s:s + step], mask[s:s + step],
                               use_reentrant=False) for s in range(0, B * T, step))
    return total / mask.sum().clamp(min=1)  # no token to train: 0


def cosine(progress: float, floor: float) -> float:
    """A cosine from 1 at progress 0 down to `floor` at progress 1: the factor of a decaying learning rate."""
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_at(step: int, config: SFTConfig) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * cosine(progress, config.min_lr_ratio)


def passes(epochs: float, items: int, per_step: int) -> int:
    """Optimizer steps for `epochs` passes over `items` at `per_step` a step (at least one)."""
    return max(1, round(epochs * items / max(1, min(per_step, items))))


def set_lr(opt, lr: float) -> None:
    """Set the learning rate of every parameter group of `opt`."""
    for group in opt.param_groups:
        group["lr"] = lr


def sft_step(model, opt, batch, lr: float, bf16: bool = False, grad_clip: float = 1.0) -> float:
    """One optimizer step of lm_loss on a batch (ids, attention mask, loss mask) at learning rate lr,
    the gradient clipped to norm grad_clip; returns the loss. Under torchrun each rank passes its own
    batch: the loss is the token mean over all ranks' batches and the gradients are summed over ranks."""
    set_lr(opt, lr)
    ids, attn, mask = (x.to(model.output_embedding.device) for x in batch)
    tokens = mask[:, 1:].sum()
    share = tokens / dist.total(tokens).clamp(min=1)  # this rank's share of the tokens of all ranks' batches (1 alone)
    loss = lm_loss(model, ids, attn, mask, bf16) * share
    opt.zero_grad(set_to_none=True)
    loss.backward()
    dist.sum_gradients(p for p in model.parameters() if p.requires_grad)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return float(dist.total(loss.detach()))


def train_sft(model, batches, config: SFTConfig, callback=None, progress: bool = True) -> list[float]:
    """Train `model` in place on batches from make_batches; callback(step, loss) runs after every step
    (logging, evaluation). AdamW, linear warm-up then cosine decay, gradient clipping. Returns the losses."""
    from tqdm.auto import tqdm

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.95))
    model.train()
    losses = []
    bar = tqdm(range(config.steps), desc="sft", disable=not progress)
    for step in bar:
        losses.append(sft_step(model, opt, next(batches), lr_at(step, config), config.bf16, config.grad_clip))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if callback is not None:
            callback(step, losses[-1])
    model.eval()
    return losses
