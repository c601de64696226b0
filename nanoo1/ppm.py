"""rStar-Math's process preference model (PPM): a scalar score of a partial solution, learned from pairs.

Guan et al. 2025, sec. 3.3. Q-values from MCTS are too noisy to regress on step by step, but which of two
sibling steps led to a correct answer more often is a reliable signal: the PPM is trained on such pairs
with the Bradley-Terry loss, and at test time scores each step so search (beam, MCTS) can prefer the
better ones. What it reads for a path is rstar.ppm_input; the pairs come from searched trees.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanoo1.thoughts import Node, Tree
from nanoo1.tokenizer import batch_ids


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
        B, T = input_ids.shape
        h = self.backbone.hidden_states(input_ids, attention_mask)  # (B, T, C)
        if attention_mask is None:
            last = torch.full((B,), T - 1, device=input_ids.device)
        else:
            last = attention_mask.long().cumsum(-1).argmax(-1)  # (B,) first index of the full count: the last real token
        h_last = h[torch.arange(B, device=h.device), last]  # (B, C)
        return torch.tanh(self.head(h_last.to(self.head.weight.dtype)).squeeze(-1))  # (B,)


def ppm_pair_loss(r_pos: torch.Tensor, r_neg: torch.Tensor) -> torch.Tensor:
    """rStar-Math's PPM loss (sec. 3.3, Bradley-Terry): L = -mean_pairs log sigmoid(r(x, y_pos) - r(x, y_neg)).

    r_pos, r_neg: (P,) scores of the pairs' two paths. With 2 positives x 2 negatives per step this is the
    paper's -1/(2 x 2) sum over a step's four pairs.
    """
    return -F.logsigmoid(r_pos - r_neg).mean()


@torch.no_grad()
def ppm_scores(ppm: ProcessPreferenceModel, sequences: list[list[int]], pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """PPM scores (N,) of token-id sequences (`ppm_input` of each path), in right-padded batches."""
    device = ppm.head.weight.device
    out = [ppm(*batch_ids(sequences[i:i + batch_size], pad_id, device)) for i in range(0, len(sequences), batch_size)]
    return torch.cat(out).float().cpu() if out else torch.zeros(0)


def preference_pairs(tree: Tree, per_side: int = 2) -> list[tuple[Node, Node]]:
    """(positive, negative) sibling steps of a searched tree, the PPM's training pairs (rStar-Math sec. 3.3).

    Per parent: the `per_side` children with the highest Q (`node.value`) among those with a correct answer
    below them (a "success" terminal in their subtree, themselves included), against the `per_side` with the
    lowest Q among those with only wrong endings below ("failure" terminals and no success); every positive
    is paired with every negative. Children without a value are skipped; ties keep the children's order.
    """
    reach = {}  # node id -> (a success below, a failure below)
    for node in reversed(tree.nodes):  # a child's id is larger than its parent's
        good, bad = node.terminal == "success", node.terminal == "failure"
        for child in node.children:
            good, bad = good or reach[child.id][0], bad or reach[child.id][1]
        reach[node.id] = (good, bad)
    pairs = []
    for parent in tree.nodes:
        kids = [c for c in parent.children if c.value is not None]
        pos = sorted([c for c in kids if reach[c.id][0]], key=lambda c: -c.value)[:per_side]
        neg = sorted([c for c in kids if reach[c.id][1] and not reach[c.id][0]], key=lambda c: c.value)[:per_side]
        pairs += [(p, n) for p in pos for n in neg]
    return pairs
