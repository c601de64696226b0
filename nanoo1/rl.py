"""Policy-gradient RL on token sequences: completion log-probs, advantages (GAE, GRPO's), PPO and GRPO losses.

Every tensor lives on the (B, T) grid of `input_ids`: position t holds the quantity of token
input_ids[:, t] (its log-prob, advantage, value, ...). A `completion_mask` (B, T) marks the generated
tokens that are trained; prompt and padding positions are 0 in it and 0 in every returned tensor.
Advantages are per token (B, T) or per sequence (B,), the latter broadcast over the sequence's tokens.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")


# ---------------------------------------------------------------------------- log-probs

def _chunk_logprobs(model, hidden, targets, temperature: float, with_entropy: bool):
    logits = model.logits(hidden).float() / temperature  # (B, c, V)
    logz = torch.logsumexp(logits, dim=-1)  # (B, c)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz  # (B, c)
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    entropy = logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # H = log Z - E_p[logit]  (B, c)
    return logp, entropy


def completion_logprobs(model, input_ids, attention_mask, completion_mask, temperature: float = 1.0,
                        chunk_size: int = 512, return_entropy: bool = False, hidden=None):
    """Per-token log-probs of the completion tokens under `model`, sampled at `temperature`.

    logp[b, t] = log softmax(logits[b, t-1] / temperature)[input_ids[b, t]]  where completion_mask[b, t] = 1,
    the logits at position t-1 predicting token t.
    Dividing by the temperature matches TRL: the ratio is taken against the distribution that sampled.
    The lm head and log-softmax run on `chunk_size` positions at a time, and under autograd each chunk is
    recomputed in backward (activation checkpointing), so no full (B, T, V) tensor is ever kept.
    Returns logp (B, T), or (logp, entropy) with entropy[b, t] = H(softmax(logits[b, t-1] / temperature)).
    `hidden` (B, T, C): the decoder's output for these ids, when the caller already has it (one forward
    can then serve the policy and the rating-token value).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mask = completion_mask.bool()  # (B, T)
    if mask[:, 0].any():
        raise ValueError("completion_mask[:, 0] is set, but the first token has no logits before it to score "
                         "it; the mask must cover generated tokens only")
    B, T = input_ids.shape
    if hidden is None:
        hidden = model.hidden_states(input_ids, attention_mask)  # (B, T, C)
    scored = mask.any(dim=0).nonzero()
    start = int(scored[0]) - 1 if len(scored) else T - 1  # skip the lm head over prompt-only columns
    zeros = torch.zeros(B, start + 1, device=hidden.device)
    logps, entropies = [zeros], [zeros]
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    for s in range(start, T - 1, chunk_size):
        e = min(s + chunk_size, T - 1)
        args = (model, hidden[:, s:e], input_ids[:, s + 1:e + 1], temperature, return_entropy)
        lp, ent = checkpoint(_chunk_logprobs, *args, use_reentrant=False) if use_ckpt else _chunk_logprobs(*args)
        logps.append(lp)
        entropies.append(ent)
    logp = torch.where(mask, torch.cat(logps, dim=1), 0.0)  # (B, T)
    if not return_entropy:
        return logp
    return logp, torch.where(mask, torch.cat(entropies, dim=1), 0.0)


# ---------------------------------------------------------------------------- advantages

@torch.no_grad()
def gae(rewards, values, gamma: float = 0.99, lam: float = 0.95, mask=None, last_value=0.0):
    """Generalized advantage estimation over (B, T) steps (Schulman et al. 2016, eq. 16; as in CleanRL).

    delta_t = r_t + gamma V_{t+1} - V_t,   A_t = delta_t + gamma lam A_{t+1},   returns_t = A_t + V_t,
    run backwards from the last step. Steps where `mask` is 0 are skipped (advantage 0; V_{t+1} and A_{t+1}
    come from the next unmasked step), so left or right padding needs no special care. `last_value`
    (scalar or (B,)) bootstraps the value after the last step: 0 when the episode ended there.
    """
    B, T = rewards.shape
    mask = torch.ones_like(rewards, dtype=torch.bool) if mask is None else mask.bool()
    values = values.to(rewards.dtype)
    next_value = torch.as_tensor(last_value, dtype=rewards.dtype, device=rewards.device).expand(B).clone()  # (B,)
    next_adv = torch.zeros_like(next_value)  # (B,)
    adv = torch.zeros_like(rewards)  # (B, T)
    for t in reversed(range(T)):
        a = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * next_adv  # (B,)
        m = mask[:, t]
        adv[:, t] = torch.where(m, a, 0.0)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, a, next_adv)
    return adv, torch.where(mask, adv + values, 0.0)


def path_gae(rewards, values, gamma: float = 0.99, lam: float = 0.95, last_value=0.0):
    """GAE along one root-to-node path of a thought tree: `gae` on a single 1-D trajectory.

    Entry k is the k-th step down from the root (root first): V_k the value of the state before it, r_k its
    reward. A_k looks forward to the descendants, so credit for a success at the leaf flows up to the root,
    discounted by (gamma lam) per level.
    Returns (advantages (L,), returns (L,)).
    """
    if rewards.dim() != 1 or values.shape != rewards.shape:
        raise ValueError(f"path_gae expects 1-D rewards and values of equal length, got {tuple(rewards.shape)} "
                         f"and {tuple(values.shape)}")
    adv, ret = gae(rewards[None], values[None], gamma, lam, last_value=last_value)
    return adv[0], ret[0]


@torch.no_grad()
def grpo_advantages(rewards, group_size: int | None = None, scale_std: bool = True, eps: float = 1e-4):
    """Group-relative advantages (Shao et al. 2024, DeepSeekMath, sec. 4.1.2; TRL GRPOTrainer).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps), std with Bessel's correction as in TRL;
    scale_std=False gives Dr. GRPO's A_i = r_i - mean(r_group) (Liu et al. 2025). `rewards` is
    (num_groups, G), or flat (num_groups * G,) with `group_size` G. A group whose rewards are all equal (a
    group of one too) gets advantage exactly 0, though the float mean of equal rewards may miss them by a
    rounding step, so a caller can leave such groups out by `adv != 0`.
    """
    flat = rewards.dim() == 1
    if flat:
        if group_size is None or group_size < 1 or rewards.numel() % group_size:
            raise ValueError(f"flat rewards of length {rewards.numel()} need a group_size dividing it, "
                             f"got {group_size}")
        grouped = rewards.view(-1, group_size)  # (num_groups, G)
    else:
        grouped = rewards
    grouped = grouped if grouped.is_floating_point() else grouped.float()
    G = grouped.shape[1]
    adv = grouped - grouped.mean(dim=1, keepdim=True)  # (num_groups, G)
    adv = adv.masked_fill((grouped == grouped[:, :1]).all(dim=1, keepdim=True), 0.0)
    if scale_std:
        adv = adv / (grouped.std(dim=1, keepdim=True, correction=1 if G > 1 else 0) + eps)
    return adv.reshape(-1) if flat else adv


# ---------------------------------------------------------------------------- losses

def _masked_mean(x, mask):
    return torch.where(mask, x, 0.0).sum() / mask.sum().clamp(min=1)


def _clipped_surrogate(logp, old_logp, advantages, eps_low: float, eps_high: float):
    """Per-token -min(ratio A, clip(ratio, 1 - eps_low, 1 + eps_high) A), which tokens the clip holds, approx KL."""
    if old_logp.requires_grad:
        raise ValueError("old_logp requires grad: it must be stored at collection time (under torch.no_grad), "
                         "not recomputed from the live model, or the ratio is always 1")
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    log_ratio = logp - old_logp  # (B, T)
    ratio = torch.exp(log_ratio)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    per_token = -torch.minimum(ratio * adv, clipped * adv)  # the clipped term, used (cf. Elastic Reasoning)
    is_clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))  # zero gradient
    approx_kl = (ratio - 1) - log_ratio  # k3 estimator of KL(old || new), always >= 0
    return per_token, is_clipped, approx_kl.detach()


def ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps: float = 0.2, weights=None):
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), averaged over the masked tokens.

    L = mean_t -min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t),  r_t = exp(logp_t - old_logp_t).
    `old_logp` comes from the policy that collected the batch (never the live model). `weights` (B,),
    e.g. prioritized replay's importance weights, scale each row's tokens.
    Returns (loss, stats) with stats clip_frac (share of tokens whose gradient the clip removes) and
    approx_kl = mean((r - 1) - log r) (CleanRL), both detached.
    """
    mask = mask.bool()
    per_token, is_clipped, approx_kl = _clipped_surrogate(logp, old_logp, advantages, clip_eps, clip_eps)
    stats = {"clip_frac": _masked_mean(is_clipped.float(), mask), "approx_kl": _masked_mean(approx_kl, mask)}
    # each row's own mean loss, before any weights (detached)
    stats["row_loss"] = (torch.where(mask, per_token, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)).detach()
    if weights is not None:
        per_token = per_token * weights[:, None]  # (B, T)
    return _masked_mean(per_token, mask), stats


def td_priority(values, returns, mask=None):
    """Each row's prioritized-replay priority |delta|: the mean |R - V| over its value positions (B,), detached.

    Schaul et al. (2016) key an item by the magnitude of its TD error; here delta is the value head's
    error against its target at each thought: the same quantity when an item enters the buffer (V
    stamped at collection) and after each update (V of that update's forward pass). No importance
    weight enters it: the weights correct the loss for how items were drawn, not how surprising they are.
    """
    mask = torch.ones_like(values, dtype=torch.bool) if mask is None else mask.bool()
    err = torch.where(mask, (returns - values).abs(), 0.0)
    return (err.sum(-1) / mask.sum(-1).clamp(min=1)).detach()


def k3_kl(logp, ref_logp):
    """Unbiased, non-negative per-token estimate of KL(pi || pi_ref) (Schulman 2020 "k3"; DeepSeekMath eq. 4).

    kl = exp(ref - logp) - (ref - logp) - 1.
    """
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp, old_logp, advantages, mask, loss_type: str = "grpo", eps_low: float = 0.2,
              eps_high: float = 0.2, ref_logp=None, beta: float = 0.0, max_completion_length: int | None = None,
              num_items_in_batch=None):
    """GRPO clipped surrogate plus beta k3 KL, normalised by `loss_type` (TRL GRPOTrainer conventions).

    l_t = -min(r_t A, clip(r_t, 1 - eps_low, 1 + eps_high) A) + beta k3(logp_t, ref_t), summed over masked t:
      grpo:    mean over sequences of (sum_t l_t / |o_i|)               (Shao et al. 2024, eq. 3)
      bnpo:    sum l / tokens in this batch
      dr_grpo: sum l / (B * max_completion_length), default T           (Liu et al. 2025)
      dapo:    sum l / num_items_in_batch, the tokens of the whole generation batch, default this batch's
               (Yu et al. 2025, eq. 8; DAPO also sets eps_high = 0.28)
    Returns (loss, stats): clip_frac, approx_kl, and kl when beta != 0 (detached).
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    mask = mask.bool()
    per_token, is_clipped, approx_kl = _clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    stats = {"clip_frac": _masked_mean(is_clipped.float(), mask), "approx_kl": _masked_mean(approx_kl, mask)}
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError(f"beta={beta} needs ref_logp, the reference model's log-probs")
        kl = k3_kl(logp, ref_logp)  # (B, T)
        per_token = per_token + beta * kl
        stats["kl"] = _masked_mean(kl.detach(), mask)
    per_token = torch.where(mask, per_token, 0.0)  # (B, T)
    if loss_type == "grpo":
        loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    elif loss_type == "bnpo":
        loss = per_token.sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = per_token.sum() / (mask.shape[0] * (max_completion_length or mask.shape[1]))
    else:
        n = mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token.sum() / torch.as_tensor(n, dtype=per_token.dtype, device=per_token.device).clamp(min=1)
    return loss, stats
