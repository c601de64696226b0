"""rStar-Math's process preference model (PPM): a scalar score of a partial solution, learned from pairs.

Guan et al. 2025, sec. 3.3. Q-values from MCTS are too noisy to regress on step by step, but which of two
sibling steps led to a correct answer more often is a reliable signal: the PPM is trained on such pairs
with the Bradley-Terry loss, and at test time scores each step so search (beam, MCTS) can prefer the
better ones. What it reads for a path is rstar.ppm_input; the pairs come from searched trees.

The outcome reward model (ORM) it is compared with (evolve's verifier table) is the same network trained on
whole solutions instead, each labelled by whether its final answer is correct (`orm_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save

from nanoo1 import dist
from nanoo1.adapters import save_trained
from nanoo1.device import bf16_autocast
from nanoo1.files import atomic_write
from nanoo1.lora import unfreeze
from nanoo1.sft import SFTConfig, lr_at, set_lr
from nanoo1.thoughts import Node, Tree
from nanoo1.tokenizer import batch_ids

PPM_HEAD = "ppm_head.safetensors"  # a scalar-head model's head, next to its decoder's model.safetensors


class ProcessPreferenceModel(nn.Module):
    """r(x, s_1..s_t) = tanh(w . h_last + b) (rStar-Math sec. 3.3: the LM head replaced by a linear head
    and tanh, so scores lie in [-1, 1] like the Q-values they stand in for).

    h_last is the decoder's final normed hidden state at the last real token of the path (either padding
    side). The head starts at zero, so every path first scores 0.
    """

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1, device=backbone.output_embedding.device)  # float32
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask=None) -> torch.Tensor:
        return torch.tanh(self.logit(input_ids, attention_mask))  # (B,)

    def logit(self, input_ids, attention_mask=None) -> torch.Tensor:
        """w . h_last + b (B,), the score before its tanh."""
        B, T = input_ids.shape
        h = self.backbone.hidden_states(input_ids, attention_mask)  # (B, T, C)
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=input_ids.device)
        else:
            last = attention_mask.long().cumsum(-1).argmax(-1)  # (B,) first index of the full count: the last real token
        h_last = h[torch.arange(B, device=h.device), last]  # (B, C)
        return self.head(h_last.to(self.head.weight.dtype)).squeeze(-1)


def ppm_pair_loss(r_pos: torch.Tensor, r_neg: torch.Tensor) -> torch.Tensor:
    """rStar-Math's PPM loss (sec. 3.3, Bradley-Terry): L = -mean_pairs log sigmoid(r(x, y_pos) - r(x, y_neg)).

    r_pos, r_neg: (P,) scores of the pairs' two paths. With 2 positives x 2 negatives per step this is the
    paper's -1/(2 x 2) sum over a step's four pairs.
    """
    return -F.logsigmoid(r_pos - r_neg).mean()


def orm_loss(z: torch.Tensor, correct: torch.Tensor) -> torch.Tensor:
    """The ORM's loss: binary cross-entropy of p = (1 + r) / 2, r = tanh(z) the score, against the outcome (1.0
    correct, 0.0 wrong), from the head's logit z (`ProcessPreferenceModel.logit`).

    Since tanh(z) = 2 sigmoid(2z) - 1, p = sigmoid(2z): logistic regression of the outcome on 2z, computed from
    the logit, where it stays finite and has a gradient even when r rounds to +-1 (as a bf16 tanh does from
    z of about 3.5), and autocast runs it in float32 (CUDA autocast refuses binary_cross_entropy of p).
    """
    return F.binary_cross_entropy_with_logits(2 * z.float(), correct.float())


@torch.no_grad()
def ppm_scores(ppm: ProcessPreferenceModel, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """PPM scores (N,) of token-id sequences (`ppm_input` of each path), in right-padded batches; a sequence given
    more than once (a step sampled twice, a path under two held-out slips) is scored once."""
    device = ppm.head.weight.device
    distinct, where = _distinct(sequences)
    out = [ppm(*batch_ids(distinct[i:i + batch_size], pad_id, device)) for i in range(0, len(distinct), batch_size)]
    return torch.cat(out).float().cpu()[where] if out else torch.zeros(0)


def _distinct(sequences: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """(the distinct sequences in first-seen order, each given sequence's index among them)."""
    row = {}  # sequence -> its index among the distinct ones
    where = [row.setdefault(tuple(s), len(row)) for s in sequences]
    return [list(s) for s in row], where


def preference_pairs(tree: Tree, per_side: int = 2, usable: Callable[[Node], bool] | None = None) -> list[tuple[Node, Node]]:
    """(positive, negative) sibling steps of a searched tree, the PPM's training pairs (rStar-Math sec. 3.3).

    Per parent: the `per_side` children with the highest Q (`node.value`) among those with a correct answer
    below them (a "success" terminal in their subtree, themselves included), against the `per_side` with the
    lowest Q among those with only wrong endings below ("failure" terminals and no success); every positive
    is paired with every negative. A step is its path's text: sampling writes the same step twice under a
    parent, and the search grows each copy's subtree apart, so nodes whose paths read the same are one step.
    It reaches what any of them reaches, its Q is their mean weighted by visits, its first node stands for
    it, and its children are theirs together (a step against a copy of itself orders nothing, and the pairs
    under two copies are taken once). Children without a value are skipped, and so are those `usable`
    rejects (rStar: `lambda n: rstar.step_ran(n.text)`, as its tree holds only steps that ran); ties
    keep the children's order.
    """
    reach = {}  # node id -> (a success below, a failure below)
    for node in reversed(tree.nodes):  # a child's id is larger than its parent's
        good, bad = node.terminal == "success", node.terminal == "failure"
        for child in node.children:
            good, bad = good or reach[child.id][0], bad or reach[child.id][1]
        reach[node.id] = (good, bad)
    path, number = {tree.root.id: 0}, {}  # node id -> its path's number; (the parent's path, text) -> number
    children = {}  # a path's number -> text -> the valued, usable nodes of that text below it
    for node in tree.nodes[1:]:  # a parent comes before its children
        under = path[node.parent.id]
        path[node.id] = number.setdefault((under, node.text), len(number) + 1)
        if node.value is not None and (usable is None or usable(node)):
            children.setdefault(under, {}).setdefault(node.text, []).append(node)
    pairs = []
    for copies in children.values():
        steps = []  # (the first copy, Q, a success below any copy, a failure below any copy)
        for same in copies.values():
            weights = [max(1, c.visits) for c in same]
            q = sum(w * c.value for w, c in zip(weights, same)) / sum(weights)
            steps.append((same[0], q, any(reach[c.id][0] for c in same), any(reach[c.id][1] for c in same)))
        pos = sorted([s for s in steps if s[2]], key=lambda s: -s[1])[:per_side]
        neg = sorted([s for s in steps if s[3] and not s[2]], key=lambda s: s[1])[:per_side]
        pairs += [(p[0], n[0]) for p in pos for n in neg]
    return pairs


def fit(model: ProcessPreferenceModel, items: list, loss_of, pad_id: int, steps: int, per_step: int, lr: float,
        bf16: bool = False, seed: int = 0, desc: str = "ppm", progress: bool = False, size=None) -> list[float]:
    """Train a scalar-head model in place on `items`, `per_step` a step in shuffled passes: AdamW, the SFT
    schedule (linear warm-up over a tenth of the steps, cosine decay), gradients clipped to norm 1. A step's
    items go through `loss_of(model, items, pad_id) -> mean loss` in one batch; under torchrun the ranks split
    them by size (`size(item)`, what an item holds: a tree's pairs; 1 each without; `dist.shard_by_size`), each
    weighs its mean by its share of the step's size, and the gradients are summed over ranks, so every rank
    makes the one-process step. Under LoRA the head and the backbone's adapters train. Returns every step's
    loss; leaves the model frozen, in eval."""
    from tqdm.auto import tqdm

    if not items:
        return []
    params = unfreeze(model.backbone) + list(model.head.requires_grad_(True).parameters())
    model.train()
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = SFTConfig(steps=steps, lr=lr, warmup=max(1, steps // 10))
    generator = torch.Generator().manual_seed(seed)
    device, place = model.head.weight.device, dist.place()
    order, losses = [], []
    P, weigh = min(per_step, len(items)), size or (lambda item: 1)
    for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if len(order) < P:
            order += torch.randperm(len(items), generator=generator).tolist()
        chosen, order = order[:P], order[P:]
        sizes = [weigh(items[i]) for i in chosen]
        picked = dist.shard_by_size(sizes, place)  # this rank's positions in `chosen`
        mine = [chosen[j] for j in picked]
        set_lr(opt, lr_at(step, schedule))
        opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=device)
        if mine:
            share = sum(sizes[j] for j in picked) / sum(sizes)
            with bf16_autocast(bf16, device):
                loss = loss_of(model, [items[i] for i in mine], pad_id) * share
            loss.backward()
        dist.sum_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(dist.total(loss.detach())))
    model.requires_grad_(False).eval()
    return losses


def pair_batch_loss(model: ProcessPreferenceModel, groups: list[list[tuple[list[int], list[int]]]],
                    pad_id: int) -> torch.Tensor:
    """`ppm_pair_loss` of every (positive ids, negative ids) pair of the groups (lists of pairs: one tree's each,
    `rounds.ppm_pairs`), in one batch that scores each distinct path once: a tree's pairs share paths (each of
    its final-step pairs' two right trajectories meets two wrong ones)."""
    distinct, where = _distinct([ids for group in groups for pair in group for ids in pair])  # pos, neg, pos, ...
    r = model(*batch_ids(distinct, pad_id, model.head.weight.device)).float()[where]  # (2P,)
    return ppm_pair_loss(r[0::2], r[1::2])


def outcome_batch_loss(model: ProcessPreferenceModel, examples: list[tuple[list[int], bool]], pad_id: int) -> torch.Tensor:
    """`orm_loss` of (ids of a whole solution, whether its answer is correct) examples, in one batch."""
    device = model.head.weight.device
    ids, mask = batch_ids([ids for ids, _ in examples], pad_id, device)
    return orm_loss(model.logit(ids, mask), torch.tensor([float(ok) for _, ok in examples], device=device))


def pair_accuracy(model: ProcessPreferenceModel, pairs, pad_id: int, batch_size: int = 32) -> float | None:
    """Share of (positive ids, negative ids) pairs ordered right, r(pos) > r(neg) (a tie is wrong); None
    without pairs."""
    if not pairs:
        return None
    r = ppm_scores(model, [p for p, _ in pairs] + [n for _, n in pairs], pad_id, batch_size)  # (2P,)
    return (r[: len(pairs)] > r[len(pairs):]).float().mean().item()


def save_scorer(model: ProcessPreferenceModel, tokenizer, directory, base: str = "") -> Path:
    """The decoder (`adapters.save_trained`: the Hugging Face layout, or under LoRA the adapters on `base`) and the
    head as ppm_head.safetensors, each file written under a temporary name and renamed."""
    directory = save_trained(model.backbone, tokenizer, directory, base)
    head = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    atomic_write(directory / PPM_HEAD, save(head, metadata={"format": "pt"}))
    return directory
