import math

import pytest
import torch
import torch.nn as nn

from nanoo1.value import rating_bce
from nanoo1.rl import (LOSS_TYPES, completion_logprobs, gae, grpo_advantages, grpo_loss, k3_kl, path_gae,
                       ppo_policy_loss, td_priority)
from nanoo1.updates import GRPOConfig, PPOConfig, grpo_step, micro_batch_rows, ppo_step


class TinyLM(nn.Module):
    """Stand-in for the decoder: embedding, a causal running mean, one MLP, an lm head (same three calls)."""

    def __init__(self, vocab=13, dim=16, seed=0):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.up = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def hidden_states(self, input_ids, attention_mask=None):
        h = self.embed(input_ids)  # (B, T, C)
        h = h.cumsum(1) / torch.arange(1, h.shape[1] + 1)[:, None]  # position t sees tokens <= t
        return h + torch.tanh(self.up(h))

    def logits(self, hidden):
        return self.lm_head(hidden)

    def forward(self, input_ids, attention_mask=None):
        return self.logits(self.hidden_states(input_ids, attention_mask))


class NextTokenModel(nn.Module):
    """Scripted: the logits at position t put 10 on token (input_ids[t] + 1) % V and 0 elsewhere."""

    def __init__(self, vocab=5):
        super().__init__()
        self.vocab = vocab

    def hidden_states(self, input_ids, attention_mask=None):
        return nn.functional.one_hot(input_ids, self.vocab).float()

    def logits(self, hidden):
        return 10.0 * hidden.roll(1, dims=-1)


def naive_logprobs(model, ids, mask, temperature=1.0):
    logp_all = torch.log_softmax(model(ids).float() / temperature, dim=-1)  # (B, T, V)
    out = torch.zeros(ids.shape)
    out[:, 1:] = logp_all[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    return out * mask


def make_batch(B=4, T=9, vocab=13, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (B, T), generator=g)
    starts, lengths = [2, 3, 4, 2][:B], [5, 2, 4, 7][:B]  # different completion lengths
    mask = torch.zeros(B, T)
    for b in range(B):
        mask[b, starts[b]:starts[b] + lengths[b]] = 1
    return ids, torch.ones(B, T, dtype=torch.long), mask


# ----------------------------------------------------------------------------- log-probs

def test_logprobs_aligned_to_the_previous_position():
    model = NextTokenModel(vocab=5)
    ids = torch.tensor([[0, 1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    logp = completion_logprobs(model, ids, None, mask)
    # the logits at t-1 give token t score 10, the 4 others 0: logp = 10 - log(e^10 + 4) = -log1p(4 e^-10)
    expected = -math.log1p(4 * math.exp(-10))
    torch.testing.assert_close(logp, torch.tensor([[0, 0, expected, expected, expected]]))
    # scoring with the logits at t itself (LLaMA-O1's shift) would give 0 - log(e^10 + 4), about -10
    assert logp[0, 2:].min() > -1e-3


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_naive_full_log_softmax(temperature):
    model = TinyLM()
    ids, attn, mask = make_batch()
    expected = naive_logprobs(model, ids, mask, temperature)
    for chunk in (1, 2, 3, 100):
        logp, ent = completion_logprobs(model, ids, attn, mask, temperature, chunk_size=chunk, return_entropy=True)
        torch.testing.assert_close(logp, expected)
        p = torch.softmax(model(ids) / temperature, -1)[:, :-1]  # (B, T-1, V)
        naive_ent = torch.zeros(ids.shape)
        naive_ent[:, 1:] = -(p * p.log()).sum(-1)
        torch.testing.assert_close(ent, naive_ent * mask)
    assert (logp[mask == 0] == 0).all()


def test_logprobs_temperature_changes_the_distribution():
    model = TinyLM()
    ids, attn, mask = make_batch()
    a = completion_logprobs(model, ids, attn, mask, 1.0)
    b = completion_logprobs(model, ids, attn, mask, 2.0)
    assert (a - b).abs().max() > 1e-2
    # at temperature 2 the logits are halved: log softmax(z / 2) computed directly on position 1 of row 0
    z = model(ids)[0, 1] / 2.0
    torch.testing.assert_close(b[0, 2], torch.log_softmax(z, -1)[ids[0, 2]])


def test_logprobs_chunked_gradient_equals_naive():
    ids, attn, mask = make_batch()
    m1, m2 = TinyLM(), TinyLM()
    completion_logprobs(m1, ids, attn, mask, chunk_size=2).sum().backward()
    naive_logprobs(m2, ids, mask).sum().backward()
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad)


def test_logprobs_reject_mask_on_first_token_and_handle_empty_mask():
    model = TinyLM()
    ids, attn, _ = make_batch()
    bad = torch.zeros(ids.shape)
    bad[:, 0] = 1
    with pytest.raises(ValueError, match="first token"):
        completion_logprobs(model, ids, attn, bad)
    assert (completion_logprobs(model, ids, attn, torch.zeros(ids.shape)) == 0).all()


# ----------------------------------------------------------------------------- advantages

def test_gae_hand_computed():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(r, v, gamma=0.5, lam=0.5)
    # t=2: delta = 1 + 0.5*0 - 0.7 = 0.3;                 A2 = 0.3
    # t=1: delta = 0 + 0.5*0.7 - 0.6 = -0.25;             A1 = -0.25 + 0.25*0.3 = -0.175
    # t=0: delta = 0 + 0.5*0.6 - 0.5 = -0.2;              A0 = -0.2 + 0.25*(-0.175) = -0.24375
    torch.testing.assert_close(adv, torch.tensor([[-0.24375, -0.175, 0.3]]))
    torch.testing.assert_close(ret, torch.tensor([[0.25625, 0.425, 1.0]]))  # A + V
    # gamma = lam = 1: A_t = sum of future rewards - V_t = [1 - 0.5, 1 - 0.6, 1 - 0.7]
    torch.testing.assert_close(gae(r, v, 1.0, 1.0)[0], torch.tensor([[0.5, 0.4, 0.3]]))
    # lam = 0: A_t = delta_t
    torch.testing.assert_close(gae(r, v, 0.5, 0.0)[0], torch.tensor([[-0.2, -0.25, 0.3]]))
    # bootstrapping: last_value 1 -> t=2: delta = 1 + 0.5*1 - 0.7 = 0.8; A1 = -0.25 + 0.25*0.8 = -0.05;
    # A0 = -0.2 + 0.25*(-0.05) = -0.2125
    torch.testing.assert_close(gae(r, v, 0.5, 0.5, last_value=1.0)[0], torch.tensor([[-0.2125, -0.05, 0.8]]))


def test_gae_skips_masked_steps():
    # the same trajectory with a pad on the left and one in the middle gives the same advantages
    r = torch.tensor([[9.0, 0.0, 9.0, 0.0, 1.0, 9.0]])
    v = torch.tensor([[9.0, 0.5, 9.0, 0.6, 0.7, 9.0]])
    mask = torch.tensor([[0, 1, 0, 1, 1, 0]])
    adv, ret = gae(r, v, 0.5, 0.5, mask=mask)
    torch.testing.assert_close(adv, torch.tensor([[0.0, -0.24375, 0.0, -0.175, 0.3, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[0.0, 0.25625, 0.0, 0.425, 1.0, 0.0]]))


def test_path_gae_runs_root_first():
    # root -> child -> leaf, success reward only at the leaf, values 0, gamma 0.5, lam 1:
    # A = [0.5^2 * 1, 0.5 * 1, 1] = [0.25, 0.5, 1]; child-to-parent (LLaMA-O1) would give [1, 0.5, 0.25]
    adv, ret = path_gae(torch.tensor([0.0, 0.0, 1.0]), torch.zeros(3), gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([0.25, 0.5, 1.0]))
    torch.testing.assert_close(ret, adv)
    with pytest.raises(ValueError, match="1-D"):
        path_gae(torch.zeros(1, 3), torch.zeros(1, 3))


def test_grpo_advantages_hand_computed():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    adv = grpo_advantages(rewards)
    # group 1: mean 0.5, unbiased std = sqrt((4 * 0.25) / 3) = sqrt(1/3); A = +-0.5 / (sqrt(1/3) + 1e-4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]]))  # equal rewards -> 0
    torch.testing.assert_close(grpo_advantages(rewards.flatten(), group_size=4), adv.flatten())
    # Dr. GRPO: no std -> r - mean
    torch.testing.assert_close(grpo_advantages(rewards, scale_std=False)[0], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    # groups of one: no baseline to compare with, advantage 0 (not NaN)
    single = grpo_advantages(torch.tensor([3.0, -1.0]), group_size=1)
    assert torch.equal(single, torch.zeros(2))
    with pytest.raises(ValueError, match="group_size"):
        grpo_advantages(torch.zeros(6), group_size=4)


def test_a_group_of_equal_float_rewards_gets_advantage_exactly_zero():
    """The float32 mean of eight rewards of 0.3 (a cosine reward) is 0.3 less a rounding step; unguarded, the
    group got advantages of 3e-8 (Dr. GRPO) or, divided by std + eps, of 3e-4, and `adv != 0` kept it."""
    rewards = torch.tensor([[0.3] * 8, [0.1] * 8, [0.7] * 4 + [0.0] * 4])
    assert rewards[0].mean() != rewards[0, 0]  # the rounding the guard is for
    for scale_std in (True, False):
        adv = grpo_advantages(rewards, scale_std=scale_std)
        assert torch.equal(adv[:2], torch.zeros(2, 8)) and (adv[2] != 0).all()


# ----------------------------------------------------------------------------- losses

def clip_case():
    """4 tokens of one sequence: ratios 1.5, 0.5, 0.5, 1.5 against advantages 2, 2, -1, -1."""
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]])).requires_grad_()
    return logp, old, torch.tensor([[2.0, 2.0, -1.0, -1.0]]), torch.ones(1, 4)


def test_ppo_policy_loss_hand_computed():
    logp, old, adv, mask = clip_case()
    loss, stats = ppo_policy_loss(logp, old, adv, mask, clip_eps=0.2)
    # -min(r A, clip(r, 0.8, 1.2) A):
    #   r 1.5, A  2: min(3.0, 2.4)  = 2.4  -> -2.4  (clipped)
    #   r 0.5, A  2: min(1.0, 1.6)  = 1.0  -> -1.0
    #   r 0.5, A -1: min(-0.5, -0.8) = -0.8 -> 0.8  (clipped)
    #   r 1.5, A -1: min(-1.5, -1.2) = -1.5 -> 1.5
    # mean = (-2.4 - 1.0 + 0.8 + 1.5) / 4 = -0.275
    torch.testing.assert_close(loss, torch.tensor(-0.275))
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # token by token: the clip holds tokens 0 (r > 1.2, A > 0) and 2 (r < 0.8, A < 0), not 1 (r < 0.8, A > 0)
    one_hot = torch.eye(4)[:, None, :]  # (4, 1, 4): a mask per token
    assert [ppo_policy_loss(logp, old, adv, m)[1]["clip_frac"].item() for m in one_hot] == [1, 0, 1, 0]
    # approx KL per token (r - 1) - log r: 0.5 - log 1.5 = 0.0945349, -0.5 + log 2 = 0.1931472; mean of 2 each
    assert stats["approx_kl"].item() == pytest.approx((0.5 - math.log(1.5) - 0.5 + math.log(2)) / 2, rel=1e-5)
    loss.backward()
    # d/dlogp of -r A / 4 is -r A / 4 where unclipped, 0 where the clip holds: [0, -0.25, 0, 0.375]
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -0.25, 0.0, 0.375]]))


def test_grpo_loss_uses_the_clipped_term():
    # Elastic Reasoning's public loss computes the clipped term and then uses the unclipped one
    logp = torch.log(torch.tensor([[1.5]])).requires_grad_()
    loss, stats = grpo_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), eps_high=0.28)
    torch.testing.assert_close(loss, torch.tensor(-1.28))  # -min(1.5, 1.28), not -1.5
    assert stats["clip_frac"].item() == 1.0
    loss.backward()
    assert logp.grad.abs().max() == 0  # clipping engaged: no gradient pushes the ratio further


def test_grpo_loss_clips_below_at_eps_low_and_above_at_eps_high():
    # eps_low 0.2, eps_high 0.28 (DAPO): the ratio is clipped to [0.8, 1.28]
    logp = torch.log(torch.tensor([[0.5, 1.25]]))
    loss, stats = grpo_loss(logp, torch.zeros(1, 2), torch.tensor([[-1.0, 1.0]]), torch.ones(1, 2), "bnpo",
                            eps_low=0.2, eps_high=0.28)
    # token 0, r 0.5, A -1: -min(-0.5, 0.8 * -1) = 0.8 (clipped); token 1, r 1.25 < 1.28, A 1: -min(1.25, 1.25) = -1.25
    assert loss.item() == pytest.approx((0.8 - 1.25) / 2)
    assert stats["clip_frac"].item() == pytest.approx(0.5)  # token 0 only


def test_old_logp_from_the_live_model_is_refused():
    logp = torch.zeros(1, 3, requires_grad=True)
    with pytest.raises(ValueError, match="collection time"):
        ppo_policy_loss(logp, logp * 1, torch.ones(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError, match="collection time"):
        grpo_loss(logp, logp * 1, torch.ones(1), torch.ones(1, 3))


def test_k3_kl():
    # logp = log 0.5, ref = log 0.25: d = log 0.5; exp(d) - d - 1 = 0.5 + log 2 - 1 = 0.1931472
    kl = k3_kl(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert kl.item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)
    assert k3_kl(torch.tensor(-1.3), torch.tensor(-1.3)).item() == 0.0


def test_grpo_loss_normalisations_differ_as_documented():
    # row 0: one token, A = 1; row 1: three tokens, A = -1; ratio 1, so each token's loss is -A
    mask = torch.tensor([[0, 1, 0, 0], [0, 1, 1, 1]])
    logp = torch.zeros(2, 4)
    adv = torch.tensor([1.0, -1.0])
    losses = {t: grpo_loss(logp, logp, adv, mask, t)[0].item() for t in LOSS_TYPES}
    assert losses["grpo"] == pytest.approx(0.0)  # mean(-1 / 1, 3 / 3) = (-1 + 1) / 2
    assert losses["bnpo"] == pytest.approx(0.5)  # (-1 + 3) / 4 tokens
    assert losses["dapo"] == pytest.approx(0.5)  # default normaliser: this batch's 4 tokens
    assert losses["dr_grpo"] == pytest.approx(0.25)  # (-1 + 3) / (2 rows * T 4)
    assert grpo_loss(logp, logp, adv, mask, "dr_grpo", max_completion_length=8)[0].item() == pytest.approx(0.125)
    assert grpo_loss(logp, logp, adv, mask, "dapo", num_items_in_batch=10)[0].item() == pytest.approx(0.2)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(logp, logp, adv, mask, "ppo")


def test_grpo_loss_adds_beta_k3():
    logp = torch.full((1, 2), math.log(0.5))
    ref = torch.full((1, 2), math.log(0.25))
    loss, stats = grpo_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 2), ref_logp=ref, beta=0.1)
    # per token: -1 (ratio 1, A 1) + 0.1 * (log 2 - 0.5)
    assert loss.item() == pytest.approx(-1 + 0.1 * (math.log(2) - 0.5), rel=1e-6)
    assert stats["kl"].item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)
    # the kl stat is over the masked tokens: the second token (ref = logp, k3 = 0) is masked out
    ref[0, 1] = math.log(0.5)
    _, stats = grpo_loss(logp, logp, torch.tensor([1.0]), torch.tensor([[1, 0]]), ref_logp=ref, beta=0.1)
    assert stats["kl"].item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)  # not half of it
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 2), beta=0.1)


def test_degenerate_inputs_stay_finite():
    logp = torch.randn(2, 3, requires_grad=True)
    empty = torch.zeros(2, 3)
    for t in LOSS_TYPES:
        loss, stats = grpo_loss(logp, torch.zeros(2, 3), torch.ones(2), empty, t)
        assert loss.item() == 0 and all(torch.isfinite(v) for v in stats.values())
    loss, stats = ppo_policy_loss(logp, torch.zeros(2, 3), torch.ones(2, 3), empty)
    assert loss.item() == 0 and stats["clip_frac"].item() == 0
    adv = grpo_advantages(torch.full((2, 4), 0.7))  # all rewards equal: nothing to learn
    loss, _ = grpo_loss(logp, logp.detach(), adv.flatten()[:2], torch.ones(2, 3))
    assert loss.item() == 0
    loss.backward()
    assert torch.isfinite(logp.grad).all()


# ----------------------------------------------------------------------------- one optimisation step

def ppo_batch(model, temperature=1.0):
    ids, attn, mask = make_batch()
    with torch.no_grad():
        old = completion_logprobs(model, ids, attn, mask, temperature)  # stored at collection time
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])[:, None] * mask  # (B, T) per-token advantages
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "old_logp": old, "advantages": adv}


def test_ppo_update_moves_the_ratio_and_clipping_engages():
    model = TinyLM()
    batch = ppo_batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    first = ppo_step(model, opt, batch, PPOConfig(micro_batch_size=2))
    assert first["clip_frac"] == 0 and first["approx_kl"] == pytest.approx(0, abs=1e-7)  # ratio 1 before it
    with torch.no_grad():
        logp = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    m = batch["completion_mask"].bool()
    log_ratio = (logp - batch["old_logp"])[m]
    assert log_ratio.abs().max() > 0.1  # the ratio is no longer 1
    # the update raised the probability of positive-advantage tokens relative to negative ones
    pos, neg = batch["advantages"][m] > 0, batch["advantages"][m] < 0
    assert log_ratio[pos].mean() > log_ratio[neg].mean()
    second = ppo_step(model, opt, batch, PPOConfig(micro_batch_size=2))
    assert second["clip_frac"] > 0 and second["approx_kl"] > 0


def test_micro_batch_rows_by_rows_and_by_tokens():
    assert micro_batch_rows([10] * 5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]  # no budget: rows alone
    assert micro_batch_rows([32] * 5, 4, max_tokens=64) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    # the longest row of a slice sets its padded length; a row over the budget goes alone
    assert micro_batch_rows([32, 32, 96, 32, 32], 8, max_tokens=128) == [slice(0, 2), slice(2, 3), slice(3, 5)]
    assert micro_batch_rows([200, 10], 4, max_tokens=100) == [slice(0, 1), slice(1, 2)]
    assert micro_batch_rows([], 4, 100) == []


def sgd_update(step_fn, batch, config, **kw):
    model = TinyLM()
    before = [p.detach().clone() for p in model.parameters()]
    stats = step_fn(model, torch.optim.SGD(model.parameters(), lr=1.0), batch, config, **kw)
    return [b - p.detach() for b, p in zip(before, model.parameters())], stats  # = lr * clipped gradient


def test_ppo_step_accumulation_and_grad_clipping():
    batch = ppo_batch(TinyLM())
    batch["old_logp"] = batch["old_logp"] + 0.1 * torch.randn(batch["old_logp"].shape,
                                                              generator=torch.Generator().manual_seed(0))
    batch["old_logp"] *= batch["completion_mask"]
    inf = float("inf")
    full, s_full = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=4, max_grad_norm=inf))
    micro, s_micro = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=1, max_grad_norm=inf))
    T = batch["input_ids"].shape[1]  # a token budget of 3 rows: micro-batches of 3 and 1 rows
    budget, _ = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=4, micro_batch_tokens=3 * T + 1, max_grad_norm=inf))
    for a, b, c in zip(full, micro, budget):
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a, c)
    for k in ("loss", "clip_frac", "approx_kl", "grad_norm"):
        assert s_full[k] == pytest.approx(s_micro[k], rel=1e-5, abs=1e-7)
    # the same gradient from ppo_policy_loss on the whole batch at once
    model = TinyLM()
    logp = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], batch["completion_mask"])[0].backward()
    for a, p in zip(full, model.parameters()):
        torch.testing.assert_close(a, p.grad)
    # clipping the norm to 1e-3: the SGD (lr 1) update has norm exactly 1e-3
    clipped, s = sgd_update(ppo_step, batch, PPOConfig(max_grad_norm=1e-3))
    assert s["grad_norm"] == pytest.approx(s_full["grad_norm"]) and s["grad_norm"] > 1e-3
    assert torch.sqrt(sum((d ** 2).sum() for d in clipped)).item() == pytest.approx(1e-3, rel=1e-4)


def test_a_token_budget_cuts_each_micro_batch_to_the_columns_its_rows_use():
    """Under micro_batch_tokens a micro-batch is as wide as its own longest row (right padding cut, rounded up to
    32 columns) and rows pack by those widths; the step is the same as without the budget."""
    T, used = 96, [10, 40, 90, 20]  # widths 32, 64, 96, 32: micro-batches [0, 1] at 64, [2] at 96, [3] at 32
    g = torch.Generator().manual_seed(0)
    ids, attn, mask = torch.randint(0, 13, (4, T), generator=g), torch.zeros(4, T, dtype=torch.long), torch.zeros(4, T)
    for b, n in enumerate(used):
        attn[b, :n], mask[b, n // 2:n] = 1, 1
    with torch.no_grad():
        old = completion_logprobs(TinyLM(), ids, attn, mask)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "old_logp": old + 0.1 * mask,
             "advantages": torch.tensor([1.0, -1.0, 0.5, -0.5])[:, None] * mask,
             "returns": mask.clone(), "value_pos": torch.arange(T).repeat(4, 1) % 8}  # a value loss's own (B, T) and
    #                                                                      (B, K) tensors, K = T: cut and kept whole
    shapes, real = [], TinyLM.hidden_states

    def value_fn(model, mb, hidden):  # a token-level stand-in: hidden and the micro-batch's own tensors line up
        assert mb["returns"].shape == hidden.shape[:2] and mb["value_pos"].shape[1] == T
        return ((hidden.mean(-1) - mb["returns"]) ** 2 * mb["attention_mask"]).mean()

    def recording(self, input_ids, attention_mask=None):
        shapes.append(tuple(input_ids.shape))
        return real(self, input_ids, attention_mask)

    inf = float("inf")
    whole, s_whole = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=4, max_grad_norm=inf))
    TinyLM.hidden_states = recording
    try:
        cut, s_cut = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=4, micro_batch_tokens=128, max_grad_norm=inf))
        sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=4, micro_batch_tokens=128), value_loss_fn=value_fn)
    finally:
        TinyLM.hidden_states = real
    assert shapes == [(2, 64), (1, 96), (1, 32)] * 2
    for a, b in zip(whole, cut):
        torch.testing.assert_close(a, b)
    assert s_cut["loss"] == pytest.approx(s_whole["loss"], rel=1e-5)


def test_ppo_step_value_loss_fn_plugs_in():
    batch = ppo_batch(TinyLM())
    batch["advantages"] = torch.zeros_like(batch["advantages"])  # no policy gradient: only the value term
    batch["value_pos"] = torch.tensor([3, 4, 5, 6])  # extra per-row tensors travel with the micro-batch
    batch["value_target"] = torch.tensor([1.0, 0.0, 1.0, 1.0])

    def rating_value_loss(model, mb, hidden=None):  # stand-in for the rating-token value: token 0 vs 1 at value_pos
        hidden = model.hidden_states(mb["input_ids"], None) if hidden is None else hidden  # ppo_step hands its own
        logits = model.logits(hidden)[torch.arange(len(mb["value_pos"])), mb["value_pos"]]  # (b, V)
        v = torch.log_softmax(logits[:, :2], -1)[:, 0]  # log P(positive)
        return nn.functional.binary_cross_entropy(v.exp(), mb["value_target"])

    cfg = PPOConfig(micro_batch_size=3, max_grad_norm=float("inf"), vf_coef=0.5)
    update, stats = sgd_update(ppo_step, batch, cfg, value_loss_fn=rating_value_loss)
    model = TinyLM()
    vl = rating_value_loss(model, batch)
    (0.5 * vl).backward()
    assert stats["value_loss"] == pytest.approx(vl.item(), rel=1e-5)
    assert stats["policy_loss"] == 0
    for a, p in zip(update, model.parameters()):
        torch.testing.assert_close(a, p.grad)


def test_ppo_step_value_loss_is_the_batch_mean_over_value_positions_whatever_the_micro_batches():
    """Rows hold different numbers of value positions (value_mask): the value loss and its gradient are those
    of `rating_bce` over the whole batch's positions, in micro-batches of 1, 3 or 4 rows alike."""
    batch = ppo_batch(TinyLM())
    batch["advantages"] = torch.zeros_like(batch["advantages"])  # only the value term
    batch["value_pos"] = torch.tensor([[3, 4, 5], [4, 0, 0], [5, 6, 0], [6, 0, 0]])
    batch["value_mask"] = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    batch["value_target"] = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0, 0], [1.0, 0.5, 0], [1.0, 0, 0]])

    def value_fn(model, mb, hidden):  # the rating-token value's loss, averaged over the micro-batch's positions
        rows = torch.arange(len(mb["value_pos"]))[:, None]
        return rating_bce(model.logits(hidden)[rows, mb["value_pos"], :2], mb["value_target"], mb["value_mask"])

    model = TinyLM()
    whole = value_fn(model, batch, model.hidden_states(batch["input_ids"], batch["attention_mask"]))
    (0.5 * whole).backward()
    for size in (1, 3, 4):
        update, stats = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=size, max_grad_norm=float("inf"), vf_coef=0.5),
                                   value_loss_fn=value_fn)
        assert stats["value_loss"] == pytest.approx(whole.item(), rel=1e-5)
        for a, p in zip(update, model.parameters()):
            torch.testing.assert_close(a, p.grad)


def grpo_batch():
    ids, attn, mask = make_batch()
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": mask,
            "advantages": grpo_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0]), group_size=4)}


def test_a_micro_batch_without_a_completion_token_adds_nothing_to_the_step():
    """A response of no tokens (its completion mask all 0) alone in a micro-batch: completion_logprobs scores no
    column and builds no graph, and the step is the same as with the row in a micro-batch of others."""
    batch = ppo_batch(TinyLM())
    batch["completion_mask"][1] = 0
    batch["old_logp"][1] = batch["advantages"][1] = 0
    grpo = {k: batch[k] for k in ("input_ids", "attention_mask", "completion_mask")}
    grpo["advantages"] = torch.tensor([1.0, -1.0, 0.5, -0.5])
    inf = float("inf")
    for step, b, config in [(ppo_step, batch, PPOConfig), (grpo_step, grpo, GRPOConfig)]:
        whole, s_whole = sgd_update(step, b, config(micro_batch_size=4, max_grad_norm=inf))
        alone, s_alone = sgd_update(step, b, config(micro_batch_size=1, max_grad_norm=inf))
        for x, y in zip(whole, alone):
            torch.testing.assert_close(x, y)
        assert s_alone["loss"] == pytest.approx(s_whole["loss"], rel=1e-5) and s_alone["grad_norm"] > 0


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_step_gradient_equals_whole_batch_loss(loss_type):
    batch = grpo_batch()
    inf = float("inf")
    full, _ = sgd_update(grpo_step, batch, GRPOConfig(loss_type=loss_type, micro_batch_size=4, max_grad_norm=inf))
    micro, _ = sgd_update(grpo_step, batch, GRPOConfig(loss_type=loss_type, micro_batch_size=3, max_grad_norm=inf))
    model = TinyLM()
    logp = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    grpo_loss(logp, logp.detach(), batch["advantages"], batch["completion_mask"], loss_type)[0].backward()
    for a, b, p in zip(full, micro, model.parameters()):
        torch.testing.assert_close(a, p.grad)
        torch.testing.assert_close(b, p.grad)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_grpo_step_stats_equal_whole_batch_loss(loss_type):
    batch = grpo_batch()
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    noise = 0.3 * torch.randn(args[2].shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # a stale stamp: ratios off 1, some clipped
        batch["old_logp"] = completion_logprobs(TinyLM(), *args) + noise * args[2]
    loss, whole = grpo_loss(completion_logprobs(TinyLM(), *args), batch["old_logp"], batch["advantages"], args[2], loss_type)
    _, stats = sgd_update(grpo_step, batch, GRPOConfig(loss_type=loss_type, micro_batch_size=1, max_grad_norm=float("inf")))
    assert 0 < whole["clip_frac"] < 1 and whole["approx_kl"] > 0
    for k, v in (("loss", loss), ("clip_frac", whole["clip_frac"]), ("approx_kl", whole["approx_kl"])):
        assert stats[k] == pytest.approx(v.item(), rel=1e-5)  # one row per micro-batch, the whole batch's numbers


def test_grpo_step_raises_probability_of_better_completions_and_needs_ref_for_beta():
    batch = grpo_batch()
    model = TinyLM()
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    with torch.no_grad():
        before = completion_logprobs(model, *args)
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    stats = grpo_step(model, opt, batch, GRPOConfig(loss_type="dapo", eps_high=0.28, micro_batch_size=2))
    assert stats["clip_frac"] == 0 and stats["skipped"] == 0
    with torch.no_grad():
        seq_gain = ((completion_logprobs(model, *args) - before).sum(1))  # (B,) change of sequence log-prob
    assert seq_gain[0] > 0 and seq_gain[3] > 0 and seq_gain[1] < 0 and seq_gain[2] < 0  # A = [+, -, -, +]
    with pytest.raises(KeyError, match="ref_logp"):
        grpo_step(model, opt, batch, GRPOConfig(beta=0.04))
    with torch.no_grad():
        batch["ref_logp"] = before
    stats = grpo_step(model, opt, batch, GRPOConfig(beta=0.04))
    assert stats["kl"] > 0 and math.isfinite(stats["loss"])


def test_non_finite_gradient_skips_the_step():
    batch = ppo_batch(TinyLM())
    batch["advantages"][0, 3] = float("nan")  # one poisoned advantage on a completion token
    update, stats = sgd_update(ppo_step, batch, PPOConfig())
    assert stats["skipped"] == 1 and all((d == 0).all() for d in update)


def test_logprobs_on_the_real_decoder_with_left_padding():
    model_mod = pytest.importorskip("nanoo1.model")
    cfg = model_mod.Gemma2Config.preset("tiny")
    model = model_mod.Gemma2(cfg).init_weights(torch.Generator().manual_seed(0), std=0.1)
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    attn = torch.ones(2, 12, dtype=torch.long)
    attn[1, :3] = 0  # row 1 is left-padded
    mask = torch.zeros(2, 12)
    mask[:, 6:] = 1
    expected = torch.zeros(2, 12)
    logp_all = torch.log_softmax(model(ids, attn).float() / 0.8, -1)  # (B, T, V), soft-capped then tempered
    expected[:, 1:] = logp_all[:, :-1].gather(-1, ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(completion_logprobs(model, ids, attn, mask, 0.8, chunk_size=4), expected * mask)


def test_ppo_policy_loss_importance_weights_scale_each_row():
    # two rows, one token each, ratio 1 (logp == old): per-token loss = -A; A = (1, -2)
    logp = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[0, 1], [0, 1]])
    unweighted, _ = ppo_policy_loss(logp, logp.clone(), adv, mask)
    assert unweighted.item() == pytest.approx((-1.0 + 2.0) / 2)
    # weights (0.5, 1): (-1 * 0.5 + 2 * 1) / 2 = 0.75, each row scaled on its own
    weighted, _ = ppo_policy_loss(logp, logp.clone(), adv, mask, weights=torch.tensor([0.5, 1.0]))
    assert weighted.item() == pytest.approx(0.75)


def test_ppo_step_applies_importance_weights():
    batch = ppo_batch(TinyLM())
    batch["weights"] = torch.tensor([1.0, 0.1, 0.5, 0.2])
    update, _ = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=3, max_grad_norm=float("inf")))
    model = TinyLM()  # the gradient of the weighted loss on the whole batch at once
    logp = completion_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    loss, _ = ppo_policy_loss(logp, batch["old_logp"], batch["advantages"], batch["completion_mask"], weights=batch["weights"])
    loss.backward()
    for a, p in zip(update, model.parameters()):
        torch.testing.assert_close(a, p.grad)


@pytest.mark.parametrize("step, config", [(ppo_step, PPOConfig), (grpo_step, GRPOConfig)], ids=["ppo", "grpo"])
def test_steps_score_at_the_sampling_temperature(step, config):
    batch = ppo_batch(TinyLM(), temperature=0.7)  # old_logp stamped at 0.7 by the same weights
    assert sgd_update(step, batch, config(temperature=0.7))[1]["approx_kl"] == pytest.approx(0, abs=1e-7)  # ratio 1
    assert sgd_update(step, batch, config())[1]["approx_kl"] > 1e-3  # scored at 1.0 the ratio is off 1


# ----------------------------------------------------------------------------- prioritized replay's inputs

def test_row_loss_and_priorities_ignore_importance_weights():
    """Replay priorities measure how surprising an item is, not how it was drawn: no importance weight enters them."""
    logp = torch.zeros(2, 2)
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[0, 1], [0, 1]])
    _, plain = ppo_policy_loss(logp, logp.clone(), adv, mask)
    _, weighted = ppo_policy_loss(logp, logp.clone(), adv, mask, weights=torch.tensor([0.5, 0.25]))
    torch.testing.assert_close(weighted["row_loss"], plain["row_loss"])  # (-1, 2), before the weights
    torch.testing.assert_close(plain["row_loss"], torch.tensor([-1.0, 2.0]))
    # |delta| = mean |R - V| over each row's value positions, padding excluded
    v, r, m = torch.tensor([[0.2, 0.9], [0.5, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 1.0]]), torch.tensor([[1, 1], [1, 0]])
    torch.testing.assert_close(td_priority(v, r, m), torch.tensor([(0.8 + 0.1) / 2, 0.5]))


def test_ppo_step_returns_the_value_functions_priorities_whatever_the_weights():
    batch = ppo_batch(TinyLM())
    batch["value_pos"] = torch.tensor([3, 4, 5, 6])
    batch["value_target"] = torch.tensor([1.0, 0.0, 1.0, 1.0])

    def value_fn(model, mb, hidden):
        logits = model.logits(hidden)[torch.arange(len(mb["value_pos"])), mb["value_pos"]][:, None, :2]  # (b, 1, 2)
        p = torch.softmax(logits, -1)[..., 0]  # (b, 1)
        return rating_bce(logits, mb["value_target"][:, None], weights=mb.get("weights")), td_priority(p, mb["value_target"][:, None])

    _, plain = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=3), value_loss_fn=value_fn)
    _, weighted = sgd_update(ppo_step, {**batch, "weights": torch.tensor([1.0, 0.1, 0.5, 0.2])}, PPOConfig(micro_batch_size=3),
                             value_loss_fn=value_fn)
    assert len(plain["row_priority"]) == 4 and plain["row_priority"] == pytest.approx(weighted["row_priority"])
    assert weighted["value_loss"] < plain["value_loss"]  # the weights scale the value loss too


# ----------------------------------------------------------------------------- hand-computed steps

def stale_batch(ratios, advantages, B=4):
    """make_batch's rows (completion lengths 5, 2, 4, 7) with old_logp stored so that every completion token of
    row b has the ratio ratios[b] under TinyLM(), the model sgd_update steps; advantages (B,)."""
    ids, attn, mask = make_batch(B=B)
    with torch.no_grad():
        logp = completion_logprobs(TinyLM(), ids, attn, mask)
    old = (logp - torch.tensor(ratios).log()[:, None]) * mask
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "old_logp": old,
            "advantages": torch.tensor(advantages)}


def test_ppo_step_clips_at_its_clip_eps_and_averages_the_policy_loss_over_all_tokens():
    """Ratio 1.1 on every token, A = (1, 1, -1, -1), clip_eps 0.05: the 5 + 2 tokens with A > 0 are clipped
    (1.1 > 1.05), so clip_frac = 7/18 and L = (7 x -1.05 + 11 x 1.1) / 18; with the default 0.2 nothing is."""
    batch = stale_batch([1.1] * 4, [1.0, 1.0, -1.0, -1.0])
    for size in (1, 4):  # the whole batch's token mean, whatever the micro-batches
        _, s = sgd_update(ppo_step, batch, PPOConfig(clip_eps=0.05, micro_batch_size=size))
        assert s["clip_frac"] == pytest.approx(7 / 18, rel=1e-5)
        assert s["policy_loss"] == pytest.approx((7 * -1.05 + 11 * 1.1) / 18, rel=1e-5)
    _, s = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=1))
    assert s["clip_frac"] == 0 and s["policy_loss"] == pytest.approx((7 * -1.1 + 11 * 1.1) / 18, rel=1e-5)


def test_ppo_step_policy_loss_is_the_token_mean_in_micro_batches_of_one_row():
    """Ratio 1, A = (1, 2, 3, 4) per row, lengths (5, 2, 4, 7): L = -(5 + 4 + 12 + 28) / 18 = -49/18, not the sum
    of the rows' shares' unweighted means."""
    batch = stale_batch([1.0] * 4, [1.0, 2.0, 3.0, 4.0])
    _, s = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=1))
    assert s["policy_loss"] == pytest.approx(-49 / 18, rel=1e-5) and s["loss"] == pytest.approx(-49 / 18, rel=1e-5)


def test_ppo_step_without_completion_tokens_steps_on_the_value_loss_alone():
    """Rows with value targets but no completion token (the policy term's share is 0 of 0 tokens): the policy
    loss is 0, not NaN, and the loss is vf_coef x the value loss, here a constant 2.0 per row: 0.5 x 2 = 1."""
    batch = stale_batch([1.0] * 4, [1.0, 2.0, 3.0, 4.0])
    batch["completion_mask"] = torch.zeros_like(batch["completion_mask"])
    update, s = sgd_update(ppo_step, batch, PPOConfig(micro_batch_size=2, vf_coef=0.5),
                           value_loss_fn=lambda model, mb, hidden: (0 * hidden).sum() + 2.0)
    assert s["skipped"] == 0 and s["policy_loss"] == 0 and s["value_loss"] == pytest.approx(2.0)
    assert s["loss"] == pytest.approx(1.0) and all((d == 0).all() for d in update)


def test_grpo_step_clips_below_at_eps_low_and_above_at_eps_high():
    """Two rows (lengths 5 and 2), ratios (1.25, 0.85), A = (1, -1), eps_low 0.1, eps_high 0.3: row 0 stays
    under 1.3 (l = -1.25), row 1 is clipped at 0.9 (l = +0.9 per token): clip_frac 2/7, grpo loss
    (-1.25 + 0.9) / 2 = -0.175. Swapped bounds would clip row 0 instead (-0.125, 5/7)."""
    batch = stale_batch([1.25, 0.85], [1.0, -1.0], B=2)
    _, s = sgd_update(grpo_step, batch, GRPOConfig(loss_type="grpo", eps_low=0.1, eps_high=0.3, micro_batch_size=1))
    assert s["clip_frac"] == pytest.approx(2 / 7, rel=1e-5)
    assert s["loss"] == pytest.approx(-0.175, rel=1e-4)


def test_grpo_step_dr_grpo_and_dapo_take_their_given_denominators():
    """Ratio 1, A = (1, 2, 0, -1), lengths (5, 2, 4, 7): sum_t l_t = -(5 + 4 + 0 - 7) = -2. dr_grpo divides by
    B x max_completion_length = 4 x 20 (not 4 x T = 36); dapo by num_items_in_batch = 40 (not the 18 tokens here)."""
    batch = stale_batch([1.0] * 4, [1.0, 2.0, 0.0, -1.0])
    _, s = sgd_update(grpo_step, batch, GRPOConfig(loss_type="dr_grpo", max_completion_length=20, micro_batch_size=3))
    assert s["loss"] == pytest.approx(-2 / 80, rel=1e-5)
    _, s = sgd_update(grpo_step, {**batch, "num_items_in_batch": torch.tensor(40)},
                      GRPOConfig(loss_type="dapo", micro_batch_size=3))
    assert s["loss"] == pytest.approx(-2 / 40, rel=1e-5)


# ----------------------------------------------------------------------------- Elastic Reasoning's iteration

def test_grpo_iteration_rewards_and_figures_on_scripted_rollouts(monkeypatch):
    """Two rounds of two problems, two scripted rollouts each (</think> is token 99); the reward is 1 for the
    right answer after </think>, 0 without one. Known figures: correct 5/8; cut (any forced token) 2/8; think
    tokens (before </think>, or all without it) 3,1,2,2 | 1,4,1,2: mean 2, of the right ones 12/5, of the wrong
    ones 4/3; tokens 30/8. dr_grpo advantages are r - mean (no std): round 0 (+.5, -.5, -.5, +.5); round 1's
    first group agrees (both right) and is left out. The updates' statistics are averaged over their steps."""
    from types import SimpleNamespace

    import nanoo1.elastic as elastic
    from nanoo1.config import apply_flags
    from nanoo1.recipe import PRESETS

    def row(tokens, text, forced):
        return SimpleNamespace(tokens=tokens, text=text, forced=forced, finish_reason="stop_token", prompt=[0])

    script = {  # question -> its two rollouts
        "q0": [row([5, 5, 5, 99, 7], "5 5 5 </think> 7", [False] * 5),  # right, think 3
               row([5, 99, 9], "5 </think> 9", [False, True, False])],  # wrong (q1's answer), cut, think 1
        "q1": [row([9, 9], "9 9", [False, False]),  # no </think>: wrong, though it ends with 9; think 2
               row([6, 6, 99, 9], "6 6 </think> 9", [True, True, False, False])],  # right, cut, think 2
        "q2": [row([1, 99, 3], "1 </think> 3", [False] * 3), row([1, 1, 1, 1, 99, 3], "1 1 1 1 </think> 3", [False] * 6)],
        "q3": [row([2, 99, 5], "2 </think> 5", [False] * 3), row([2, 2, 99, 4], "2 2 </think> 4", [False] * 4)],
    }
    problems = [SimpleNamespace(question=f"q{i}", answer=a) for i, a in enumerate(["7", "9", "3", "4"])]
    tokenizer = SimpleNamespace(token_id=lambda s: 99, encode=lambda text: text, eos_id=1, pad_id=0)
    asked, updated = [], []
    monkeypatch.setattr(elastic, "seeded_generator", lambda model, seed: None)
    monkeypatch.setattr(elastic, "generate_budgeted", lambda model, prompts, *a, **kw: asked.append(
        [p.strip() for p in prompts]) or [r for p in prompts for r in script[p.strip()]])
    monkeypatch.setattr(elastic, "_grpo_updates", lambda model, tok, opt, rows, adv, seed, config, tokens: updated.append(
        (len(rows), adv.tolist(), int(tokens))) or [{"clip_frac": 0.1, "approx_kl": 0.0}, {"clip_frac": 0.3, "approx_kl": 0.2}])
    config = apply_flags(PRESETS["tiny"], dict(algo="grpo", group_size=2, rounds=2, think_budget=4, solution_budget=2))
    assert config.grpo.loss_type == "dr_grpo"
    m = elastic.grpo_iteration(None, tokenizer, None, problems, 0, config)
    assert asked == [["q0", "q1"], ["q2", "q3"]]
    assert updated[0][0] == 4 and updated[0][1] == pytest.approx([0.5, -0.5, -0.5, 0.5]) and updated[0][2] == 14
    assert updated[1][0] == 2 and updated[1][1] == pytest.approx([-0.5, 0.5]) and updated[1][2] == 16
    assert m["reward"] == pytest.approx(5 / 8) and m["correct"] == pytest.approx(5 / 8) and m["cut"] == pytest.approx(2 / 8)
    assert m["think"] == pytest.approx(2.0) and m["tokens"] == pytest.approx(30 / 8)
    assert m["think_right"] == pytest.approx(12 / 5) and m["think_wrong"] == pytest.approx(4 / 3)
    assert m["updates"] == 4 and m["clip_frac"] == pytest.approx(0.2) and m["approx_kl"] == pytest.approx(0.1)


def test_grpo_updates_run_every_epoch_over_every_rollout_at_the_rollout_length_bound(monkeypatch):
    """Three rollouts, grpo_minibatch 2, epochs 2: ceil(3/2) = 2 steps an epoch, 4 in all, each epoch dealing
    every rollout once, each step's completion mask its sampled tokens, dr_grpo's constant
    max_completion_length = L_max = think_budget + 1 + solution_budget = 4 + 1 + 2 = 7 (not the batch's width), the
    generation batch's 11 tokens dapo's divisor, old_logp the rollouts' log-probs (at the sampling temperature)
    before any step, at grpo_lr."""
    from types import SimpleNamespace

    import nanoo1.elastic as elastic
    from nanoo1.config import apply_flags
    from nanoo1.recipe import PRESETS

    model = TinyLM()
    model.output_embedding = model.lm_head.weight  # where elastic finds the device
    rows = [SimpleNamespace(prompt=[1, 2], tokens=[3, 4, 5]), SimpleNamespace(prompt=[1], tokens=[6, 7]),
            SimpleNamespace(prompt=[2, 3, 4], tokens=[8])]
    config = apply_flags(PRESETS["tiny"], dict(algo="grpo", epochs=2, grpo_minibatch=2, think_budget=4, solution_budget=2,
                                               bf16=False))  # float32 throughout: old_logp compares exactly
    steps = []
    monkeypatch.setattr(elastic, "grpo_step", lambda model, opt, batch, cfg: steps.append((batch, cfg)) or {"clip_frac": 0.0})
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    out = elastic._grpo_updates(model, SimpleNamespace(pad_id=0), opt, rows, torch.tensor([1.0, -1.0, 0.5]), 0, config, 11)
    assert len(out) == len(steps) == 4 and opt.param_groups[0]["lr"] == config.grpo.grpo_lr
    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 6, 7, 0, 0], [2, 3, 4, 8, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]])
    old = completion_logprobs(TinyLM(), ids, (ids != 0).long(), mask, config.grpo.grpo_temperature)  # as sampled
    for epoch in (steps[:2], steps[2:]):
        dealt = sorted(i for batch, _ in epoch for i in batch["advantages"].tolist())
        assert dealt == [-1.0, 0.5, 1.0]  # every rollout once an epoch
    for batch, cfg in steps:
        assert cfg.max_completion_length == 7 and cfg.loss_type == "dr_grpo" and int(batch["num_items_in_batch"]) == 11
        for r, a in enumerate(batch["advantages"].tolist()):
            k = [1.0, -1.0, 0.5].index(a)  # which rollout this row is
            assert batch["input_ids"][r].tolist() == ids[k].tolist()
            assert batch["completion_mask"][r].tolist() == mask[k].tolist()
            torch.testing.assert_close(batch["old_logp"][r], old[k])


def test_budget_summary_pairs_each_budgets_before_and_after():
    """think_budget 8: the budgets 2, 4, 8, 16 and unlimited, each row the accuracy and tokens of the evaluation
    before training and after it, as given."""
    from nanoo1.config import apply_flags
    from nanoo1.elastic import budget_summary
    from nanoo1.eval import EvalResult
    from nanoo1.recipe import PRESETS

    config = apply_flags(PRESETS["tiny"], dict(algo="grpo", think_budget=8))
    names = ["2", "4", "8", "16", "unlimited"]
    before = {f"think_{n}": EvalResult("budget", None, 0.1 * i, 10.0 * i, 0.0) for i, n in enumerate(names)}
    after = {f"think_{n}": EvalResult("budget", None, 0.1 * i + 0.05, 10.0 * i + 3, 0.0) for i, n in enumerate(names)}
    summary = budget_summary(before, after, config)
    assert summary["think_budget"] == 8 and list(summary["budgets"]) == names
    assert summary["budgets"]["16"] == {"before": pytest.approx(0.3), "after": pytest.approx(0.35), "tokens_before": 30.0,
                                        "tokens_after": 33.0}
    assert summary["budgets"]["unlimited"]["tokens_after"] == 43.0
