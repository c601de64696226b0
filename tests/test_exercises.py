"""The exercise checks: each passes on nanoo1's own function and fails on plausible wrong versions."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nanoo1 import exercises as ex
from nanoo1.engine import generate, generate_budgeted, sample_next, token_stats
from nanoo1.model import Gemma2, RMSNorm, softcap
from nanoo1.mcts import backup, puct_score, rectify, uct_score
from nanoo1.replay import PrioritizedReplay, SegmentTree
from nanoo1.rewards import cosine_length_reward
from nanoo1.rl import gae, grpo_advantages, ppo_policy_loss
from nanoo1.ppm import ppm_pair_loss, preference_pairs
from nanoo1.rstar import parse_step
from nanoo1.experience import relabel_lucky, success_rates
from nanoo1.steps import equations_hold
from nanoo1.thoughts import policy_prompt, render_path, value_prompt
from nanoo1.value import rating_logits


def passes(check, fn, capsys):
    ok = check(fn)
    out = capsys.readouterr().out
    assert ok is True and out.startswith("✓"), out
    return out


def fails(check, fn, capsys, expect: str = ""):
    ok = check(fn)
    out = capsys.readouterr().out
    assert ok is False and out.startswith("✗"), out
    assert expect in out, out  # the message names the case that differs
    return out


# ----------------------------------------------------------------------------- 01 Gemma-2

class NoOnePlus(RMSNorm):
    def forward(self, x):
        return (F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * self.weight).type_as(x)


class EpsOutsideRoot(RMSNorm):
    def forward(self, x):
        x32 = x.float()
        return (x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * (1 + self.weight)).type_as(x)


class StaysFloat32(RMSNorm):
    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps) * (1 + self.weight)


class AllBfloat16(RMSNorm):  # every operation in x's dtype: bfloat16 rounds after each one
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight.to(x.dtype))


def test_rms_norm_check(capsys):
    passes(ex.check_rms_norm, RMSNorm, capsys)
    fails(ex.check_rms_norm, NoOnePlus, capsys, "(1 + w)")
    fails(ex.check_rms_norm, EpsOutsideRoot, capsys, "eps=1")
    fails(ex.check_rms_norm, StaysFloat32, capsys, "bfloat16")
    fails(ex.check_rms_norm, AllBfloat16, capsys, "x=[1,1,1,2] in bfloat16")


def test_softcap_check(capsys):
    passes(ex.check_softcap, softcap, capsys)
    fails(ex.check_softcap, lambda x, cap: x.clamp(-cap, cap), capsys, "cap=30")
    fails(ex.check_softcap, lambda x, cap: torch.tanh(x) * cap, capsys, "cap=30")
    fails(ex.check_softcap, lambda x, cap: torch.tanh(x / cap) * cap, capsys, "cap=None")  # crashes on None


def masks_with(visible_fn, neg=None):
    """An attention_masks whose sliding visibility is visible_fn(i, j, W)."""

    def attention_masks(self, q_slots, k_valid, dtype):
        j = torch.arange(k_valid.shape[1])
        i = q_slots[:, :, None]
        full_vis = (j <= i) & k_valid[:, None, :]
        slide_vis = full_vis & visible_fn(i, j, self.config.sliding_window)
        fill = torch.finfo(dtype).min if neg is None else neg
        as_mask = lambda vis: torch.zeros(vis.shape, dtype=dtype).masked_fill(~vis, fill)[:, None]
        return as_mask(full_vis), as_mask(slide_vis)

    return attention_masks


def test_attention_masks_check(capsys):
    passes(ex.check_attention_masks, Gemma2.attention_masks, capsys)
    passes(ex.check_attention_masks, masks_with(lambda i, j, W: j > i - W), capsys)  # the harness itself is right
    fails(ex.check_attention_masks, masks_with(lambda i, j, W: j >= i - W), capsys, "sliding mask, window 3")  # off by one
    fails(ex.check_attention_masks, masks_with(lambda i, j, W: j > i - W, neg=float("-inf")), capsys, "hidden entries")

    def ignores_padding(self, q_slots, k_valid, dtype):
        return Gemma2.attention_masks(self, q_slots, torch.ones_like(k_valid), dtype)

    def by_row_number(self, q_slots, k_valid, dtype):  # compares keys with 0..T-1, not with the slots
        return Gemma2.attention_masks(self, torch.arange(q_slots.shape[1]).expand_as(q_slots), k_valid, dtype)

    fails(ex.check_attention_masks, ignores_padding, capsys, "padding")
    fails(ex.check_attention_masks, by_row_number, capsys, "slots [4, 5]")


# ----------------------------------------------------------------------------- 02 sampling engine

def test_sample_next_check(capsys):
    passes(ex.check_sample_next, sample_next, capsys)

    def nucleus_without_the_crossing_token(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        if top_p is not None:
            sorted_scores, order = logits.float().sort(-1, descending=True)
            drop = sorted_scores.softmax(-1).cumsum(-1) > top_p  # drops the token that crosses top_p
            drop[:, 0] = False
            logits = logits.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
        return sample_next(logits, temperature, top_k, None, generator)

    def temperature_multiplies(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        return sample_next(logits * temperature ** 2 if temperature > 0 else logits, temperature, top_k, top_p, generator)

    def global_rng(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        return sample_next(logits, temperature, top_k, top_p, None)

    def keeps_a_dim(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        return sample_next(logits, temperature, top_k, top_p, generator)[:, None]

    def nucleus_of(logits, top_p):  # the nucleus of softmax(logits), other tokens at -inf
        sorted_scores, order = logits.float().sort(-1, descending=True)
        drop = sorted_scores.softmax(-1).cumsum(-1) - sorted_scores.softmax(-1) >= top_p
        return logits.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))

    def nucleus_before_temperature(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        return sample_next(logits if top_p is None else nucleus_of(logits, top_p), temperature, top_k, None, generator)

    def top_p_before_top_k(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
        if top_p is not None and top_k is not None:
            return sample_next(nucleus_of(logits / temperature, top_p), temperature, top_k, None, generator)
        return sample_next(logits, temperature, top_k, top_p, generator)

    fails(ex.check_sample_next, nucleus_before_temperature, capsys, "temperature 3, top_p=0.7")
    fails(ex.check_sample_next, top_p_before_top_k, capsys, "top_k=2 and top_p=0.6")
    fails(ex.check_sample_next, nucleus_without_the_crossing_token, capsys, "top_p=0.7")
    fails(ex.check_sample_next, temperature_multiplies, capsys, "temperature 2")
    fails(ex.check_sample_next, global_rng, capsys, "same seed")
    fails(ex.check_sample_next, keeps_a_dim, capsys, "shape (2, 1)")


def test_token_stats_check(capsys):
    passes(ex.check_token_stats, token_stats, capsys)

    def entropy_of_scaled(logits, tokens, temperature):
        lp, slp, _, vent = token_stats(logits, tokens, temperature)
        _, _, ent, _ = token_stats(logits / (temperature or 1.0), tokens, 1.0)
        return lp, slp, ent, vent

    def scaled_ignores_temperature(logits, tokens, temperature):
        lp, _, ent, vent = token_stats(logits, tokens, temperature)
        return lp, lp, ent, vent

    def variance_of_p(logits, tokens, temperature):
        lp, slp, ent, _ = token_stats(logits, tokens, temperature)
        p = logits.softmax(-1)
        return lp, slp, ent, p.var(-1)

    def divides_by_zero(logits, tokens, temperature):  # logits / 0 at greedy: NaN
        lp, _, ent, vent = token_stats(logits, tokens, temperature)
        return lp, torch.log_softmax(logits / temperature, -1).gather(-1, tokens[:, None])[:, 0], ent, vent

    fails(ex.check_token_stats, entropy_of_scaled, capsys, "entropy")
    fails(ex.check_token_stats, scaled_ignores_temperature, capsys, "logits / 2")
    fails(ex.check_token_stats, variance_of_p, capsys, "varentropy")
    fails(ex.check_token_stats, divides_by_zero, capsys, "temperature 0")


# ----------------------------------------------------------------------------- 03 thought trees

def test_value_prompt_check(capsys):
    passes(ex.check_value_prompt, value_prompt, capsys)
    fails(ex.check_value_prompt, render_path, capsys, "the path [root]")  # the last line complete, rating and all
    fails(ex.check_value_prompt, lambda path: value_prompt(path).removesuffix("<start_of_rating>"), capsys, "[root]")

    def every_line_positive(path):
        return value_prompt(path).replace("<negative_rating>", "<positive_rating>")

    fails(ex.check_value_prompt, every_line_positive, capsys, "rated negative")


def test_policy_prompt_check(capsys):
    passes(ex.check_policy_prompt, policy_prompt, capsys)

    def hint_inline(path, child_id, meta=None, hint=None):  # no newline after </hint>
        return policy_prompt(path, child_id, meta, hint).replace("</hint>\n", "</hint>")

    def parent_is_previous_id(path, child_id, meta=None, hint=None):
        return policy_prompt(path, child_id, meta, hint).replace(
            f"<start_of_father_id>{path[-1].id}<end_of_father_id><start_of_local_id>{child_id}",
            f"<start_of_father_id>{child_id - 1}<end_of_father_id><start_of_local_id>{child_id}")

    def meta_dropped(path, child_id, meta=None, hint=None):
        return policy_prompt(path, child_id, None, hint)

    fails(ex.check_policy_prompt, hint_inline, capsys, "hint")
    fails(ex.check_policy_prompt, parent_is_previous_id, capsys, "child 5")
    fails(ex.check_policy_prompt, meta_dropped, capsys, "meta <expansion>")


def test_rating_logits_check(capsys):
    passes(ex.check_rating_logits, rating_logits, capsys)

    def read_last_position(model, tokenizer, input_ids, attention_mask):  # lands on padding in a right-padded row
        rows = [tokenizer.token_id("<positive_rating>"), tokenizer.token_id("<negative_rating>")]
        return model(input_ids, attention_mask)[:, -1, rows]

    def no_softcap(model, tokenizer, input_ids, attention_mask):
        last = attention_mask.sum(-1) - 1
        h = model.hidden_states(input_ids, attention_mask)[torch.arange(len(last)), last]
        rows = [tokenizer.token_id("<positive_rating>"), tokenizer.token_id("<negative_rating>")]
        return h @ model.output_embedding[rows].T

    def reads_anywhere(model, tokenizer, input_ids, attention_mask):
        last = attention_mask.sum(-1) - 1
        rows = [tokenizer.token_id("<positive_rating>"), tokenizer.token_id("<negative_rating>")]
        return model(input_ids, attention_mask)[torch.arange(len(last)), last][:, rows]

    fails(ex.check_rating_logits, read_last_position, capsys, "second right-padded")
    fails(ex.check_rating_logits, no_softcap, capsys, "soft-cap of 5")
    fails(ex.check_rating_logits, reads_anywhere, capsys, "not <start_of_rating>")

    def checks_the_first_row(model, tokenizer, input_ids, attention_mask):
        last = attention_mask.sum(-1) - 1
        if input_ids[0, last[0]] != tokenizer.token_id("<start_of_rating>"):
            raise ValueError("not at <start_of_rating>")
        return reads_anywhere(model, tokenizer, input_ids, attention_mask)

    fails(ex.check_rating_logits, checks_the_first_row, capsys, "only the second")

    def via_full_logits(model, tokenizer, input_ids, attention_mask):  # right too: the stand-in model is callable
        last = attention_mask.sum(-1) - 1
        if not (input_ids[torch.arange(len(last)), last] == tokenizer.token_id("<start_of_rating>")).all():
            raise ValueError("not at <start_of_rating>")
        return reads_anywhere(model, tokenizer, input_ids, attention_mask)

    passes(ex.check_rating_logits, via_full_logits, capsys)


# ----------------------------------------------------------------------------- 04 MCTS

def test_puct_score_check(capsys):
    passes(ex.check_puct_score, puct_score, capsys)
    fails(ex.check_puct_score, lambda parent, child, c=1.4, varentropy_coef=0.0:
          child.value + c * child.prior * math.sqrt(parent.visits) / child.visits, capsys, "N(parent)=4")  # 1 + N(child)
    fails(ex.check_puct_score, lambda parent, child, c=1.4, varentropy_coef=0.0: puct_score(parent, child, c), capsys, "varentropy 2")
    fails(ex.check_puct_score, lambda parent, child, c=1.4, varentropy_coef=0.0:
          child.value + c * child.prior * math.sqrt(math.log(max(parent.visits, 1))) / (1 + child.visits), capsys, "N(parent)=4")


def test_uct_score_check(capsys):
    passes(ex.check_uct_score, uct_score, capsys)

    def mean_twice(parent, child, c=2.0):
        return uct_score(parent, child, c) - child.value + (child.value / child.visits if child.visits else 0.0)

    def finite_for_unvisited(parent, child, c=2.0):
        return 1e9 if child.visits == 0 else uct_score(parent, child, c)

    def sqrt_of_parent_visits(parent, child, c=2.0):  # PUCT's sqrt(N) in place of sqrt(ln N)
        return math.inf if child.visits == 0 else child.value + c * math.sqrt(parent.visits / child.visits)

    fails(ex.check_uct_score, mean_twice, capsys, "N(parent)=8")
    fails(ex.check_uct_score, finite_for_unvisited, capsys, "unvisited")
    fails(ex.check_uct_score, sqrt_of_parent_visits, capsys, "N(parent)=8")


def backup_with(update):
    """A backup whose per-node update is update(node, v) -> new value (visits already counted)."""

    def wrong_backup(node, value, discount=0.9):
        while node is not None:
            node.visits += 1
            node.value = update(node, value)
            value *= discount
            node = node.parent

    return wrong_backup


def test_backup_check(capsys):
    passes(ex.check_backup, backup, capsys)
    mean = lambda node, v: v if node.value is None else node.value + (v - node.value) / node.visits
    passes(ex.check_backup, backup_with(mean), capsys)  # the harness itself is right
    fails(ex.check_backup, lambda node, value, discount=0.9: backup(node, value, 1.0), capsys, "backup(b, -1) on")
    fails(ex.check_backup, backup_with(lambda node, v: v if node.value is None else node.value + v), capsys, "backup(b, -1) on")
    # the value head's estimate counted as one more sample: (estimate + v) / 2 at the first backup
    fails(ex.check_backup, backup_with(lambda node, v: v if node.value is None else node.value + (v - node.value) / (node.visits + 1)),
          capsys, "backup(b, -1) on")

    def discount_first(node, value, discount=0.9):
        backup(node, value * discount, discount)

    fails(ex.check_backup, discount_first, capsys, "backup(b, -1) on")


def rectify_with(leaf_reward, unset=lambda r: r is None):
    """A rectify with its own leaf rewards and its own test for a node still without a value."""

    def wrong_rectify(tree, discount=0.9, reward_epsilon=1e-6):
        counts = {}
        for node in tree.nodes:
            node.rectified = None
        for leaf in tree.leaves():
            reward, node = leaf_reward(leaf, reward_epsilon), leaf
            while node is not None:
                counts[node.id] = n = counts.get(node.id, 0) + 1
                node.rectified = reward if unset(node.rectified) else node.rectified + (reward - node.rectified) / n
                reward *= discount
                node = node.parent

    return wrong_rectify


def test_rectify_check(capsys):
    passes(ex.check_rectify, rectify, capsys)
    right = lambda leaf, eps: 0.0 if leaf.terminal == "success" else math.log(eps)
    passes(ex.check_rectify, rectify_with(right), capsys)  # the harness itself is right
    fails(ex.check_rectify, rectify_with(right, unset=lambda r: not r), capsys, "success first")  # LLaMA-O1
    fails(ex.check_rectify, rectify_with(lambda leaf, eps: {"success": 0.0, "failure": math.log(eps)}.get(leaf.terminal, 0.0)),
          capsys, "unexpanded")
    fails(ex.check_rectify, lambda tree, discount=0.9, reward_epsilon=1e-6: rectify(tree, 1.0, reward_epsilon), capsys, "unexpanded")
    fails(ex.check_rectify, lambda tree, discount=0.9, reward_epsilon=1e-6: rectify(tree), capsys, "discount .5")


# ----------------------------------------------------------------------------- 05 PPO and GRPO

def gae_forwards(rewards, values, gamma=0.99, lam=0.95, mask=None, last_value=0.0):
    """The recursion run from the first step to the last (LLaMA-O1 runs it child to parent)."""
    adv = gae(rewards.flip(-1), values.flip(-1), gamma, lam, None if mask is None else mask.flip(-1), last_value)[0].flip(-1)
    return adv, adv + values


def test_gae_check(capsys):
    passes(ex.check_gae, gae, capsys)
    fails(ex.check_gae, gae_forwards, capsys, "gamma=lam=.5 (advantages)")
    fails(ex.check_gae, lambda r, v, gamma, lam, mask=None, last_value=0.0: (gae(r, v, gamma, lam, mask, last_value)[0],) * 2,
          capsys, "returns")
    fails(ex.check_gae, lambda r, v, gamma, lam, mask=None, last_value=0.0: gae(r, v, gamma, lam),
          capsys, "last_value=1")
    fails(ex.check_gae, lambda r, v, gamma, lam, mask=None, last_value=0.0: gae(r, v, gamma, lam, None, last_value),
          capsys, "pads")


def test_grpo_advantages_check(capsys):
    passes(ex.check_grpo_advantages, grpo_advantages, capsys)

    def population_std(rewards, group_size=None, scale_std=True, eps=1e-4):
        g = rewards.float().view(-1, group_size) if rewards.dim() == 1 else rewards.float()
        a = g - g.mean(1, keepdim=True)
        a = a / (g.std(1, keepdim=True, correction=0) + eps) if scale_std else a
        return a.reshape(rewards.shape)

    def no_eps(rewards, group_size=None, scale_std=True, eps=1e-4):
        return grpo_advantages(rewards, group_size, scale_std, eps=0.0)

    def always_scaled(rewards, group_size=None, scale_std=True, eps=1e-4):
        return grpo_advantages(rewards, group_size, True, eps)

    fails(ex.check_grpo_advantages, population_std, capsys, "Bessel")
    fails(ex.check_grpo_advantages, no_eps, capsys, "[[1,0,0,1], [2,2,2,2]]")  # 0/0 for the equal group
    fails(ex.check_grpo_advantages, always_scaled, capsys, "Dr. GRPO")


def test_ppo_loss_check(capsys):
    passes(ex.check_ppo_loss, ppo_policy_loss, capsys)

    def max_not_min(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None):
        adv = advantages[:, None] if advantages.dim() == 1 else advantages
        r = torch.exp(logp - old_logp)
        per = -torch.maximum(r * adv, r.clamp(1 - clip_eps, 1 + clip_eps) * adv)
        return (per * mask).sum() / mask.sum()

    def clipped_only(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None):
        adv = advantages[:, None] if advantages.dim() == 1 else advantages
        per = -torch.exp(logp - old_logp).clamp(1 - clip_eps, 1 + clip_eps) * adv
        return (per * mask).sum() / mask.sum()

    def ignores_mask(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None):
        return ppo_policy_loss(logp, old_logp, advantages, torch.ones_like(mask), clip_eps, weights)

    def weights_scale_the_mean(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None):
        loss, stats = ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps)
        return (loss if weights is None else loss * weights.mean()), stats

    fails(ex.check_ppo_loss, max_not_min, capsys, "eps .2")
    fails(ex.check_ppo_loss, clipped_only, capsys, "eps .2")
    fails(ex.check_ppo_loss, ignores_mask, capsys, "mask [1, 1, 0, 0]")
    def mean_of_row_means(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None):  # TRL's "grpo" normalisation
        adv = advantages[:, None] if advantages.dim() == 1 else advantages
        r = torch.exp(logp - old_logp)
        per = -torch.minimum(r * adv, r.clamp(1 - clip_eps, 1 + clip_eps) * adv)
        per = per * (1 if weights is None else weights[:, None])
        return ((per * mask).sum(-1) / mask.sum(-1)).mean()

    fails(ex.check_ppo_loss, weights_scale_the_mean, capsys, "weights [2, 1]")
    fails(ex.check_ppo_loss, mean_of_row_means, capsys, "mask [[1, 1], [1, 0]]")


# ----------------------------------------------------------------------------- 07 prioritized replay

class StrictGreater(SegmentTree):
    """find_prefix turning right only when mass > the left sum: a mass on a boundary picks the wrong leaf."""

    def find_prefix(self, mass):
        mass, node = np.array(mass, dtype=np.float64), np.ones(np.shape(mass), dtype=np.int64)
        for _ in range(self.n_leaves.bit_length() - 1):
            right = mass > self.tree[2 * node]
            mass, node = np.where(right, mass - self.tree[2 * node], mass), 2 * node + right
        return node - self.n_leaves


class NoGuard(SegmentTree):
    """find_prefix without the check that the right subtree holds mass."""

    def find_prefix(self, mass):
        mass, node = np.array(mass, dtype=np.float64), np.ones(np.shape(mass), dtype=np.int64)
        for _ in range(self.n_leaves.bit_length() - 1):
            right = mass >= self.tree[2 * node]
            mass, node = np.where(right, mass - self.tree[2 * node], mass), 2 * node + right
        return node - self.n_leaves


class LeafOnly(SegmentTree):
    """update builds the inner nodes on its first call only: later updates leave the ancestors stale."""

    def update(self, indices, values):
        self.tree[np.asarray(indices) + self.n_leaves] = values
        if not getattr(self, "built", False):
            for k in range(self.n_leaves - 1, 0, -1):
                self.tree[k] = self.op(self.tree[2 * k], self.tree[2 * k + 1])
            self.built = True


class ArraysOnly(SegmentTree):
    """Right, and reads find_prefix's masses as the array the docstring promises."""

    def find_prefix(self, mass):
        assert isinstance(mass, np.ndarray), f"an array of masses, got {type(mass).__name__}"
        return super().find_prefix(mass)


def test_sum_tree_check(capsys):
    passes(ex.check_sum_tree, SegmentTree, capsys)
    passes(ex.check_sum_tree, ArraysOnly, capsys)
    fails(ex.check_sum_tree, StrictGreater, capsys, "find_prefix")
    fails(ex.check_sum_tree, NoGuard, capsys, "5.99, 6.0")
    fails(ex.check_sum_tree, LeafOnly, capsys, "update([4], [0])")


class BatchMax(PrioritizedReplay):
    """Weights divided by the largest weight in the batch, not in the buffer."""

    def sample(self, batch_size, beta, generator=None):
        items, idx, w = super().sample(batch_size, beta, generator)
        return items, idx, w / w.max()


class Multinomial(PrioritizedReplay):
    """Independent draws instead of one per slice."""

    def sample(self, batch_size, beta, generator=None):
        p = self.priorities()
        idx = (generator or self.rng).choice(len(p), size=batch_size, p=p / p.sum())
        w = (p[idx] / p.min()) ** -beta
        return [self.items[i] for i in idx], torch.from_numpy(idx), torch.from_numpy(w).float()


class NoBeta(PrioritizedReplay):
    def sample(self, batch_size, beta, generator=None):
        return super().sample(batch_size, 1.0, generator)


class Midpoints(PrioritizedReplay):
    """The middle of each slice: the same batch every call, whatever the generator."""

    def sample(self, batch_size, beta, generator=None):
        class Half:
            def random(self, size):
                return np.full(size, 0.5)

        return super().sample(batch_size, beta, Half())


class OwnGenerator(PrioritizedReplay):
    """The buffer's own generator, never the one given."""

    def sample(self, batch_size, beta, generator=None):
        return super().sample(batch_size, beta, None)


class GlobalGenerator(PrioritizedReplay):
    """numpy's global generator, never the one given."""

    def sample(self, batch_size, beta, generator=None):
        return super().sample(batch_size, beta, np.random.mtrand._rand)


def test_replay_sample_check(capsys):
    passes(ex.check_replay_sample, PrioritizedReplay, capsys)
    fails(ex.check_replay_sample, Midpoints, capsys, "seeded 0..19")
    fails(ex.check_replay_sample, OwnGenerator, capsys, "seeded 0..19")
    np.random.seed(0)  # the global generator's draws, fixed for this test
    fails(ex.check_replay_sample, GlobalGenerator, capsys, "same seed")
    fails(ex.check_replay_sample, BatchMax, capsys, "1e-6")
    fails(ex.check_replay_sample, Multinomial, capsys, "counts")
    fails(ex.check_replay_sample, NoBeta, capsys, "beta .4")


# ----------------------------------------------------------------------------- 08 rStar

def test_parse_step_check(capsys):
    passes(ex.check_parse_step, parse_step, capsys)

    def keeps_the_hash(generated):
        out = parse_step(generated)
        return None if out is None else ("# " + out[0], out[1])

    def no_delimiter_needed(generated):
        return parse_step(generated if "<end_of_step>" in generated else generated + "<end_of_step>")

    def code_optional(generated):
        body, end, _ = generated.partition("<end_of_step>")
        first = body.strip("\n").split("\n")[0]
        return parse_step(generated) or ((first.lstrip("#").strip(), "") if end and first.startswith("#") else None)

    fails(ex.check_parse_step, keeps_the_hash, capsys, "She buys 5 more")
    fails(ex.check_parse_step, no_delimiter_needed, capsys, "no <end_of_step>")
    fails(ex.check_parse_step, code_optional, capsys, "no code")

    def strips_each_line(generated):
        out = parse_step(generated)
        return None if out is None else (out[0], "\n".join(line.strip() for line in out[1].split("\n")))

    def drops_blank_lines(generated):
        out = parse_step(generated)
        return None if out is None else (out[0], "\n".join(line for line in out[1].split("\n") if line.strip()))

    fails(ex.check_parse_step, strips_each_line, capsys, "indented code")
    fails(ex.check_parse_step, drops_blank_lines, capsys, "indented code")


def pairs_by(is_positive, is_negative, key=lambda c: c.value):
    """A preference_pairs with its own rules for positives and negatives (each given the tree and the child)."""

    def wrong_pairs(tree, per_side=2):
        out = []
        for parent in tree.nodes:
            kids = [c for c in parent.children if c.value is not None]
            pos = sorted([c for c in kids if is_positive(tree, c)], key=lambda c: -key(c))[:per_side]
            neg = sorted([c for c in kids if is_negative(tree, c)], key=key)[:per_side]
            out += [(p, n) for p in pos for n in neg]
        return out

    return wrong_pairs


def below(tree, node, outcome):
    return any(n.terminal == outcome for n in tree.nodes if node in tree.path(n))


def test_preference_pairs_check(capsys):
    passes(ex.check_preference_pairs, preference_pairs, capsys)
    passes(ex.check_preference_pairs, pairs_by(lambda t, c: below(t, c, "success"),
                                               lambda t, c: below(t, c, "failure") and not below(t, c, "success")), capsys)
    fails(ex.check_preference_pairs, pairs_by(lambda t, c: c.value > 0, lambda t, c: c.value < 0), capsys, "per_side=2")
    fails(ex.check_preference_pairs, pairs_by(lambda t, c: below(t, c, "success"), lambda t, c: below(t, c, "failure")),
          capsys, "per_side=2")  # a child with both outcomes below it is also taken as a negative
    direct = lambda outcome: lambda t, c: c.terminal == outcome or any(k.terminal == outcome for k in c.children)
    fails(ex.check_preference_pairs, pairs_by(direct("success"), lambda t, c: direct("failure")(t, c) and not direct("success")(t, c)),
          capsys, "per_side=4")  # looks one level down only: s2's success two levels below is missed


def test_ppm_pair_loss_check(capsys):
    passes(ex.check_ppm_pair_loss, ppm_pair_loss, capsys)
    fails(ex.check_ppm_pair_loss, lambda r_pos, r_neg: ppm_pair_loss(r_neg, r_pos), capsys, "r_pos [0, 2, 0]")
    fails(ex.check_ppm_pair_loss, lambda r_pos, r_neg: -F.logsigmoid(r_pos - r_neg).sum(), capsys, "r_pos [0, 2, 0]")
    fails(ex.check_ppm_pair_loss, lambda r_pos, r_neg: -torch.log(torch.sigmoid(r_pos - r_neg)).mean(), capsys, "r_pos [-60]")


# ----------------------------------------------------------------------------- 06 budgeted rollouts

def two_phase(extra_think=0, force_always=False, mark_forced=True, feed_forced=True, forced_in_solution=False,
              force_after_stop=False):
    """generate_budgeted written with two plain `generate` calls; the flags make it wrong in one way each."""

    def budgeted(model, prompts, think_budget, solution_budget, think_end_id, temperature=0.0, top_k=None, top_p=None,
                 num_samples=1, stop_token_ids=None, tokenizer=None, generator=None, seed=0):
        stops = list(stop_token_ids) if stop_token_ids is not None else [model.config.eos_token_id]
        rows = generate(model, prompts, think_budget + extra_think, temperature, top_k, top_p, num_samples,
                        stop_token_ids=[think_end_id] + stops, tokenizer=tokenizer, generator=generator, seed=seed)
        for row in rows:
            stopped = bool(row.tokens) and row.tokens[-1] in stops
            if stopped and not force_after_stop:
                continue
            context, force = row.prompt + row.tokens, force_always or stopped or row.tokens[-1:] != [think_end_id]
            if force:
                row.tokens.append(think_end_id)
                row.forced.append(mark_forced)
                context += [think_end_id] if feed_forced else []
            (answer,) = generate(model, [context], solution_budget - (force and forced_in_solution), temperature, top_k, top_p,
                                 stop_token_ids=stops, tokenizer=tokenizer, generator=generator, seed=seed)
            row.tokens += answer.tokens
            row.forced += answer.forced
        return rows

    return budgeted


def test_generate_budgeted_check(capsys):
    passes(ex.check_generate_budgeted, generate_budgeted, capsys)
    passes(ex.check_generate_budgeted, two_phase(), capsys)  # the harness itself is right
    fails(ex.check_generate_budgeted, two_phase(force_always=True), capsys, "thinks 3 tokens, think_budget 8")
    fails(ex.check_generate_budgeted, two_phase(mark_forced=False), capsys, "thinks 6 tokens, think_budget 4")
    fails(ex.check_generate_budgeted, two_phase(feed_forced=False), capsys, "thinks 6 tokens, think_budget 4")
    fails(ex.check_generate_budgeted, two_phase(extra_think=1), capsys, "thinks 6 tokens, think_budget 4")
    fails(ex.check_generate_budgeted, two_phase(forced_in_solution=True), capsys, "think_budget 4, solution_budget 2")
    fails(ex.check_generate_budgeted, two_phase(force_after_stop=True), capsys, "stops (<eos>)")


def cosine_scalar(correct, length, max_length, r0_correct=2.0, rL_correct=1.0, r0_wrong=-10.0, rL_wrong=0.0, r_exceed=-10.0,
                  exceed_at_max=True):
    """The formula on Python numbers only (math.cos)."""
    if length > max_length or (exceed_at_max and length == max_length):
        return r_exceed
    r0, rL = (r0_correct, rL_correct) if correct else (r0_wrong, rL_wrong)
    return rL + 0.5 * (r0 - rL) * (1 + math.cos(math.pi * length / max_length))


def test_cosine_length_reward_check(capsys):
    passes(ex.check_cosine_length_reward, cosine_length_reward, capsys)

    def swapped_ends(correct, length, max_length, *args, **kw):  # longer correct answers rewarded more
        return cosine_length_reward(correct, length, max_length, r0_correct=1.0, rL_correct=2.0, r0_wrong=0.0, rL_wrong=-10.0)

    def without_one_plus(correct, length, max_length, *args, **kw):
        r0, rL = (2.0, 1.0) if correct else (-10.0, 0.0)
        return r_exceed_or(length, max_length, rL + 0.5 * (r0 - rL) * math.cos(math.pi * length / max_length))

    def r_exceed_or(length, max_length, r):
        return -10.0 if length >= max_length else r

    def always_a_tensor(*args, **kw):
        return torch.as_tensor(cosine_length_reward(*args, **kw))

    fails(ex.check_cosine_length_reward, swapped_ends, capsys, "correct, length 0, 25")
    fails(ex.check_cosine_length_reward, without_one_plus, capsys, "correct, length 0, 25")
    fails(ex.check_cosine_length_reward, lambda *a, **kw: cosine_scalar(*a, **kw, exceed_at_max=False), capsys, "length 100 and 130")
    fails(ex.check_cosine_length_reward, cosine_scalar, capsys, "tensors")
    fails(ex.check_cosine_length_reward, always_a_tensor, capsys, "a Python float")


# ----------------------------------------------------------------------------- 09 self-play

def rates_by(counts_for, rate=lambda s, n: (s + 0.5) / (n + 1)):
    """A success_rates whose terminals counted for a node are counts_for(tree, node) and whose rate is rate(s, n)."""

    def wrong_rates(tree):
        out = {}
        for node in tree.nodes:
            ends = counts_for(tree, node)
            if ends:
                out[node.id] = rate(sum(e.terminal == "success" for e in ends), len(ends))
        return out

    return wrong_rates


def subtree(tree, node):
    return [n for n in tree.nodes if n is not tree.root and node in tree.path(n)]


def test_success_rates_check(capsys):
    passes(ex.check_success_rates, success_rates, capsys)
    terminals_below = lambda tree, node: [n for n in subtree(tree, node) if n.terminal is not None]
    passes(ex.check_success_rates, rates_by(terminals_below), capsys)  # the harness itself is right
    fails(ex.check_success_rates, rates_by(terminals_below, rate=lambda s, n: s / n), capsys, "nodes 0, 1, 2, 8")
    leaves_below = lambda tree, node: [n for n in subtree(tree, node) if not n.children]  # an unjudged leaf as a failure
    fails(ex.check_success_rates, rates_by(leaves_below), capsys, "nodes 0, 1, 2, 8")
    children = lambda tree, node: [n for n in node.children if n.terminal is not None]  # one level down only
    fails(ex.check_success_rates, rates_by(children), capsys, "nodes 0, 1, 2, 8")
    below_only = lambda tree, node: [n for n in terminals_below(tree, node) if n is not node]  # not the terminal itself
    fails(ex.check_success_rates, rates_by(below_only), capsys, "terminals 3, 4")

    def everyone(tree):  # nodes without a terminal below get the prior 1/2
        return {n.id: 0.5 for n in tree.nodes} | success_rates(tree)

    fails(ex.check_success_rates, everyone, capsys, "the ids")


def relabel_by(path_of, is_lucky=lambda leaf: leaf.terminal == "success", to="failure"):
    def wrong_relabel(tree):
        lucky = [leaf for leaf in tree.nodes if leaf.terminal is not None and is_lucky(leaf)
                 and not all(equations_hold(n.text) for n in path_of(tree, leaf))]
        for leaf in lucky:
            leaf.terminal = to
        return len(lucky)

    return wrong_relabel


def test_relabel_lucky_check(capsys):
    passes(ex.check_relabel_lucky, relabel_lucky, capsys)
    passes(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: tree.path(leaf)[1:]), capsys)  # the harness itself is right
    fails(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: tree.path(leaf)), capsys, "a question that states")
    fails(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: [leaf]), capsys, "_lucky_tree")
    fails(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: tree.path(leaf)[1:-1]), capsys, "_lucky_tree")
    fails(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: tree.path(leaf)[1:], is_lucky=lambda leaf: True), capsys,
          "_lucky_tree")
    fails(ex.check_relabel_lucky, relabel_by(lambda tree, leaf: tree.path(leaf)[1:], to=None), capsys, "_lucky_tree")


# ----------------------------------------------------------------------------- the harness itself

def test_a_crash_in_student_code_is_reported_not_raised(capsys):
    def unfinished(x, cap):
        raise NotImplementedError("fill in softcap")

    out = fails(ex.check_softcap, unfinished, capsys, "NotImplementedError: fill in softcap")
    assert "line" in out  # where it crashed


def test_a_missing_return_is_named(capsys):
    def no_return(parent, child, c=1.4, varentropy_coef=0.0):
        puct_score(parent, child, c, varentropy_coef)

    fails(ex.check_puct_score, no_return, capsys, "got None (does your function return its result?)")


def test_a_result_the_check_cannot_read_is_not_blamed_on_the_student_code(capsys):
    def keyed_by_node(tree):
        return {tree.node(i): rate for i, rate in success_rates(tree).items()}

    out = fails(ex.check_success_rates, keyed_by_node, capsys, "could not call your function or read what it returned "
                                                                "(KeyError")
    assert "your code raised" not in out
    fails(ex.check_success_rates, lambda tree, extra: {}, capsys,  # a signature the check cannot call
          "could not call your function or read what it returned (TypeError")

    def calls_the_model_with_a_list(model, prompts, think_budget, solution_budget, think_end_id, **kw):
        # raises inside the check's stand-in model, called from this line of the student's
        return model(prompts)

    out = fails(ex.check_generate_budgeted, calls_the_model_with_a_list, capsys,
                "your code raised AttributeError: 'list' object has no attribute 'shape' (line")
    assert out.rstrip().endswith(": return model(prompts))")  # the student's line, not the stand-in model's


def test_misuse_raises():
    with pytest.raises(TypeError, match="check_gae expects your function"):
        ex.check_gae(gae(torch.zeros(1, 2), torch.zeros(1, 2)))  # the result, not the function


def test_wrong_shape_is_named(capsys):
    out = fails(ex.check_softcap, lambda x, cap: softcap(x, cap)[None], capsys, "shape (1, 4)")
    assert "expected shape (4,)" in out


def test_every_check_is_exercised():
    checks = {name for name in dir(ex) if name.startswith("check_")}
    tested = {name for name in checks if f"ex.{name}" in open(__file__, encoding="utf-8").read()}
    assert checks == tested, f"checks without a test: {sorted(checks - tested)}"
