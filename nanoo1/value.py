"""The rating-token value head (LLaMA-O1 / OpenLongCoT): the model's own rating tokens read as a value.

After a thought's line `...<end_of_thought><start_of_rating>`, the next-token logits of <positive_rating>
and <negative_rating> give

    V = log softmax([l_pos, l_neg])[0] = log P(positive)

No extra parameters: the two rating rows of the output embedding are the head. The value is read, and
trained, at exactly that position (`thoughts.value_prompt`, `thoughts.chain_tokens` build both), with one
loss, the binary cross-entropy of P(positive) against a target probability (`rating_bce`): in notebook 3,
in self-play's PPO updates, everywhere. `policy.LMPolicy.evaluate` reads them with the same `rating_head` from
the KV-cached decoder (tested equal to `rating_values`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanoo1.model import softcap
from nanoo1.thoughts import Node, value_sequences
from nanoo1.tokenizer import batch_ids


def rating_head(model, tokenizer, hidden):
    """(l_pos, l_neg) (..., 2) of final hidden states (..., C): the two rating rows of the output embedding,
    in hidden's dtype, then the final soft-cap (elementwise, so equal to two columns of the full logits)."""
    rows = [tokenizer.token_id("<positive_rating>"), tokenizer.token_id("<negative_rating>")]
    return softcap(F.linear(hidden, model.output_embedding[rows].to(hidden.dtype)), model.config.final_logit_softcapping)


def rating_logits(model, tokenizer, input_ids, attention_mask):
    """(l_pos, l_neg) (B, 2) at each row's last real token, which must be <start_of_rating>.

    Only the two rating rows of the output embedding are multiplied (the final soft-cap is elementwise,
    so this equals picking two columns of the full logits).
    """
    last = attention_mask.long().sum(-1) - 1  # (B,) right padding
    start = tokenizer.token_id("<start_of_rating>")
    if not bool((input_ids[torch.arange(len(last)), last] == start).all()):
        raise ValueError("every value sequence must end with <start_of_rating> (build it with value_prompt)")
    h = model.hidden_states(input_ids, attention_mask)  # (B, T, C)
    return rating_head(model, tokenizer, h[torch.arange(len(last)), last])  # (B, 2)


def rating_at(model, tokenizer, hidden, positions):
    """(l_pos, l_neg) (B, K, 2), read at positions (B, K) of the decoder's output hidden (B, T, C): every thought's
    <start_of_rating> of a training chain, from the forward pass that also scores its tokens. In float32, but under
    bf16 autocast (the tiny recipe's training step) its matrix multiply runs in bf16, as the token logits' does."""
    h = hidden[torch.arange(len(positions), device=hidden.device)[:, None], positions]  # (B, K, C)
    return rating_head(model, tokenizer, h.float())


@torch.no_grad()
def rating_values(model, tokenizer, paths: list[list[Node]], batch_size: int = 64) -> torch.Tensor:
    """V = log softmax([l_pos, l_neg])[0] for the last node of each path, in batched forward passes."""
    device = model.output_embedding.device
    out = []
    seqs = value_sequences(tokenizer, paths)
    for i in range(0, len(seqs), batch_size):
        ids, mask = batch_ids(seqs[i:i + batch_size], tokenizer.pad_id, device)
        out.append(F.log_softmax(rating_logits(model, tokenizer, ids, mask).float(), -1)[:, 0])
    return torch.cat(out) if out else torch.zeros(0)


def rating_value_loss(model, tokenizer, input_ids, attention_mask, target_prob):
    """`rating_bce` of each value prompt's V against target_prob (B,), at the position V is read from."""
    return rating_bce(rating_logits(model, tokenizer, input_ids, attention_mask), target_prob)


def rating_bce(logits, target, mask=None, weights=None):
    """Binary cross-entropy of P(positive) against target probabilities, the value head's one loss.

    logits (..., 2) = (l_pos, l_neg); -[t log p + (1 - t) log(1 - p)] with log p = log softmax(logits)[..., 0],
    averaged over the positions where mask is 1; `weights` (B,) scale each row's terms (prioritized replay's
    importance weights, as in `rl.ppo_policy_loss`).
    """
    logp = F.log_softmax(logits.float(), -1)  # (..., 2)
    t = target.to(logp.dtype)
    per = -(t * logp[..., 0] + (1 - t) * logp[..., 1])  # (...)
    mask = torch.ones_like(per, dtype=torch.bool) if mask is None else mask.bool()
    if weights is not None:
        per = per * weights.reshape(-1, *[1] * (per.dim() - 1))
    return torch.where(mask, per, 0.0).sum() / mask.sum().clamp(min=1)
