"""One optimisation step of PPO or GRPO: micro-batches, gradient accumulation, ranks, clipping.

`ppo_step` and `grpo_step` take a whole batch on the (B, T) grid of `rl.py` (ids, masks, stored old log-probs,
advantages), split it into micro-batches (`micro_batches`: by rows, and by padded tokens if asked, each then
cut to its own width), accumulate the gradient of the whole batch's loss over them, sum it over torchrun ranks
(`dist`), clip its norm and step the optimizer, whatever the micro-batch size or the number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from nanoo1 import dist
from nanoo1.rl import completion_logprobs, grpo_loss, ppo_policy_loss


@dataclass
class PPOConfig:
    clip_eps: float = 0.2  # policy ratio clip (Schulman et al. 2017)
    vf_coef: float = 0.5  # weight of value_loss_fn's loss in the total
    max_grad_norm: float = 1.0  # global gradient-norm clip; float("inf") disables it
    micro_batch_size: int = 4  # rows per forward/backward; gradients accumulate over the whole batch
    micro_batch_tokens: int = 0  # > 0: also rows x padded length <= this per forward/backward (`micro_batch_rows`)
    temperature: float = 1.0  # the sampling temperature; log-probs use logits / temperature
    chunk_size: int = 512  # positions per lm-head chunk in completion_logprobs


@dataclass
class GRPOConfig:
    loss_type: str = "grpo"  # one of LOSS_TYPES: how token losses are normalised
    eps_low: float = 0.2  # lower ratio clip
    eps_high: float = 0.2  # upper ratio clip (DAPO: 0.28)
    beta: float = 0.0  # k3 KL weight; 0 needs no reference model
    max_completion_length: int | None = None  # dr_grpo's constant denominator; None: the batch's T
    max_grad_norm: float = 1.0  # global gradient-norm clip; float("inf") disables it
    micro_batch_size: int = 4  # rows per forward/backward; gradients accumulate over the whole batch
    micro_batch_tokens: int = 0  # > 0: also rows x padded length <= this per forward/backward (`micro_batch_rows`)
    temperature: float = 1.0  # the sampling temperature; log-probs use logits / temperature
    chunk_size: int = 512  # positions per lm-head chunk in completion_logprobs


def _require(batch: dict, keys, where: str):
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f"{where}: batch lacks {missing}; it has {sorted(batch)}")


def micro_batch_rows(lengths: list[int], size: int, max_tokens: int = 0) -> list[slice]:
    """Consecutive slices of rows with padded lengths `lengths`: at most `size` rows each, and with max_tokens > 0
    at most max_tokens tokens (rows x the longest length among them), so memory follows tokens, not rows; a row
    longer than max_tokens goes alone. max_tokens 0: slices of `size` rows."""
    out, start, longest = [], 0, 0
    for i, n in enumerate(lengths):
        longest = max(longest, n)
        if i > start and (i - start == size or max_tokens and (i - start + 1) * longest > max_tokens):
            out.append(slice(start, i))
            start, longest = i, n
    return out + [slice(start, len(lengths))] if lengths else out


POSITIONS = ("value_pos", "value_target", "value_mask", "old_value")  # (B, K): per value position, not per token


def micro_batches(batch: dict, size: int, max_tokens: int = 0, multiple: int = 32):
    """The batch's micro-batches (`micro_batch_rows`), each a dict of its rows of every tensor with B rows.

    With a token budget (max_tokens > 0) memory follows each micro-batch's own tokens: a row counts at the
    columns it uses (up to its last attended token, rounded up to `multiple`), and the right padding past the
    widest row of a micro-batch is cut from its (B, T) tensors (all but the POSITIONS ones, whose K may equal T),
    which cannot change a causal model's log-probs. Without one every micro-batch keeps the batch's width T."""
    B, T = batch["input_ids"].shape
    widths = [T] * B
    if max_tokens:
        used = (batch["attention_mask"] != 0).long() * torch.arange(1, T + 1, device=batch["attention_mask"].device)
        widths = [min(T, max(1, -(-int(n) // multiple)) * multiple) for n in used.amax(-1).tolist()]
    for rows in micro_batch_rows(widths, size, max_tokens):
        w = max(widths[rows])
        yield {k: (v[rows, :w] if v.shape == (B, T) and k not in POSITIONS else v[rows])
               if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == B else v for k, v in batch.items()}


def _apply_gradients(optimizer, max_grad_norm: float, stats: dict) -> dict:
    dist.sum_gradients(p for g in optimizer.param_groups for p in g["params"])  # several ranks: the whole batch's
    stats = dist.sum_stats(stats)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)  # norm before clipping
    finite = bool(torch.isfinite(grad_norm))
    if finite:  # a NaN/inf gradient would poison every weight; drop the step instead
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {**{k: float(v) for k, v in stats.items()}, "grad_norm": float(grad_norm), "skipped": float(not finite)}


def ppo_step(model, optimizer, batch: dict, config: PPOConfig,
             value_loss_fn: Callable[[torch.nn.Module, dict, torch.Tensor], torch.Tensor | tuple] | None = None) -> dict:
    """One PPO update: policy loss (+ vf_coef * value loss), accumulated over micro-batches, clipped, stepped.

    batch: input_ids, attention_mask, completion_mask (B, T); old_logp (B, T) stored at collection time;
    advantages (B, T) or (B,), e.g. from `gae`; optionally weights (B,), per-row importance weights.
    Extra tensors with B rows are sliced along with them (under a token budget (B, T) ones are cut to the
    micro-batch's width, `micro_batches`) and handed to `value_loss_fn(model, micro_batch, hidden)` with the
    decoder's output of that forward pass (so the value costs no second forward), which
    returns the micro-batch's mean value loss (for nanoo1 the rating-token value loss): over its value
    positions when the batch has a value_mask (B, K), else over its rows; or (loss, priorities (b,)), e.g.
    `td_priority`. The accumulated gradient equals that of the whole batch (token mean for the policy,
    position or row mean for the value), whatever micro_batch_size is. Returns floats: loss,
    policy_loss, value_loss, clip_frac, approx_kl (measured before the update), grad_norm (before clipping),
    skipped; and row_priority, the priorities value_loss_fn returned (empty without them).
    Under torchrun each rank passes its own rows: the means are over the rows and tokens of all ranks and
    the gradients are summed (`dist.sum_gradients`), so the step is the one of the ranks' batches together.
    """
    _require(batch, ("input_ids", "attention_mask", "completion_mask", "old_logp", "advantages"), "ppo_step")
    B = int(dist.total(batch["input_ids"].shape[0]))  # rows and tokens of the whole batch, over all ranks
    n_tokens = dist.total(batch["completion_mask"].sum()).clamp(min=1)
    n_values = dist.total(batch["value_mask"].sum()).clamp(min=1) if "value_mask" in batch else None
    stats = dict.fromkeys(("loss", "policy_loss", "value_loss", "clip_frac", "approx_kl"), 0.0)
    row_priority = []
    optimizer.zero_grad(set_to_none=True)
    for mb in micro_batches(batch, config.micro_batch_size, config.micro_batch_tokens):
        hidden = model.hidden_states(mb["input_ids"], mb["attention_mask"])  # (b, T, C)
        logp = completion_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["completion_mask"],
                                   config.temperature, config.chunk_size, hidden=hidden)  # (b, T)
        pl, st = ppo_policy_loss(logp, mb["old_logp"], mb["advantages"], mb["completion_mask"], config.clip_eps,
                                 mb.get("weights"))
        w = mb["completion_mask"].sum() / n_tokens  # this micro-batch's share of the batch's tokens
        loss = pl * w
        if value_loss_fn is not None:
            vl = value_loss_fn(model, mb, hidden)
            if isinstance(vl, tuple):
                vl, priorities = vl
                row_priority += priorities.tolist()
            vl = vl * (mb["value_mask"].sum() / n_values if n_values is not None else mb["input_ids"].shape[0] / B)
            loss = loss + config.vf_coef * vl
            stats["value_loss"] += vl.detach()
        if loss.requires_grad:  # a micro-batch without a completion token (or value position) adds nothing
            loss.backward()
        stats["loss"] += loss.detach()
        stats["policy_loss"] += pl.detach() * w
        stats["clip_frac"] += st["clip_frac"] * w
        stats["approx_kl"] += st["approx_kl"] * w
    return {**_apply_gradients(optimizer, config.max_grad_norm, stats), "row_priority": row_priority}


def grpo_step(model, optimizer, batch: dict, config: GRPOConfig) -> dict:
    """One GRPO update with `grpo_loss`, accumulated over micro-batches, clipped, stepped.

    batch: input_ids, attention_mask, completion_mask (B, T); advantages (B,) from `grpo_advantages`;
    old_logp (B, T) from collection time, or absent for a single update per generation batch (then the
    detached current log-probs: ratio 1, same gradient); ref_logp (B, T) when beta != 0; optionally
    num_items_in_batch, the completion tokens of the whole generation batch when it is split over several
    steps (dapo). The accumulated gradient equals that of `grpo_loss` on the whole batch, so here bnpo and
    dapo agree unless num_items_in_batch is given. Returns floats: loss, clip_frac, approx_kl (and kl),
    grad_norm (before clipping), skipped. Several ranks: as `ppo_step` (num_items_in_batch is then all
    ranks' tokens, and dr_grpo needs max_completion_length, the same on every rank).
    """
    _require(batch, ("input_ids", "attention_mask", "completion_mask", "advantages"), "grpo_step")
    if config.beta != 0.0:
        _require(batch, ("ref_logp",), f"grpo_step with beta={config.beta}")
    T = batch["input_ids"].shape[1]
    B = int(dist.total(batch["input_ids"].shape[0]))  # rows and tokens of the whole batch, over all ranks
    n_tokens = dist.total(batch["completion_mask"].sum()).clamp(min=1)
    n_items = batch.get("num_items_in_batch", n_tokens)
    stats = dict.fromkeys(("loss", "clip_frac", "approx_kl") + (("kl",) if config.beta else ()), 0.0)
    optimizer.zero_grad(set_to_none=True)
    for mb in micro_batches(batch, config.micro_batch_size, config.micro_batch_tokens):
        logp = completion_logprobs(model, mb["input_ids"], mb["attention_mask"], mb["completion_mask"],
                                   config.temperature, config.chunk_size)  # (b, T)
        old = mb["old_logp"] if "old_logp" in mb else logp.detach()
        loss, st = grpo_loss(logp, old, mb["advantages"], mb["completion_mask"], config.loss_type,
                             config.eps_low, config.eps_high, mb.get("ref_logp"), config.beta,
                             config.max_completion_length or T, n_items)
        token_share = mb["completion_mask"].sum() / n_tokens
        w = {"grpo": mb["input_ids"].shape[0] / B, "dr_grpo": mb["input_ids"].shape[0] / B,
             "bnpo": token_share, "dapo": 1.0}[config.loss_type]  # dapo's normaliser is already global
        if loss.requires_grad:  # a micro-batch without a completion token adds nothing
            (loss * w).backward()
        stats["loss"] += loss.detach() * w
        for k in stats.keys() - {"loss"}:
            stats[k] += st[k] * token_share
    return _apply_gradients(optimizer, config.max_grad_norm, stats)
