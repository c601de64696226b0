"""Exercise checks of notebook 05 PPO and GRPO (notebooks/05_ppo_and_grpo.ipynb)."""

from __future__ import annotations

import torch

from nanoo1.exercises._common import _Case, _run, _callable, _first


def check_gae(gae) -> bool:
    """`gae(rewards, values, gamma, lam, mask=None, last_value=0.0)` -> (advantages, returns), each (B, T),
    as nanoo1.rl.gae: delta_t = r_t + gamma V_{t+1} - V_t, A_t = delta_t + gamma lam A_{t+1} (backwards),
    returns = A + V; masked steps get 0 and are skipped by the recursion."""
    _callable(gae, "check_gae")
    t = torch.tensor
    r, v = t([[0.0, 0.0, 1.0]]), t([[0.5, 0.6, 0.7]])
    # gamma = lam = .5:  t=2: delta = 1 + .5*0 - .7 = .3, A2 = .3
    #   t=1: delta = 0 + .5*.7 - .6 = -.25, A1 = -.25 + .25*.3 = -.175
    #   t=0: delta = 0 + .5*.6 - .5 = -.2,  A0 = -.2 + .25*(-.175) = -.24375;  returns = A + V
    adv = [-0.24375, -0.175, 0.3]
    # a padded copy: pads (value 9) on the left and in the middle must change nothing
    r_pad, v_pad, m_pad = t([[9.0, 0.0, 9.0, 0.0, 1.0, 9.0]]), t([[9.0, 0.5, 9.0, 0.6, 0.7, 9.0]]), t([[0, 1, 0, 1, 1, 0]])
    return _run("gae", [
        _Case("r=[0,0,1], V=[.5,.6,.7], gamma=lam=.5 (advantages)", lambda: gae(r, v, gamma=0.5, lam=0.5)[0], [adv],
              hint="run t from the last step back to the first"),
        _Case("the same (returns)", lambda: gae(r, v, gamma=0.5, lam=0.5)[1], [[0.25625, 0.425, 1.0]], hint="returns = A + V"),
        # lam = 0: A_t = delta_t
        _Case("the same with lam=0", lambda: gae(r, v, gamma=0.5, lam=0.0)[0], [[-0.2, -0.25, 0.3]]),
        # gamma = lam = 1: A_t = (sum of future rewards) - V_t = (1 - .5, 1 - .6, 1 - .7)
        _Case("the same with gamma=lam=1", lambda: gae(r, v, gamma=1.0, lam=1.0)[0], [[0.5, 0.4, 0.3]]),
        # last_value 1: t=2: delta = 1 + .5*1 - .7 = .8; A1 = -.25 + .25*.8 = -.05; A0 = -.2 + .25*(-.05) = -.2125
        _Case("the same with last_value=1", lambda: gae(r, v, gamma=0.5, lam=0.5, last_value=1.0)[0], [[-0.2125, -0.05, 0.8]],
              hint="last_value is V after the last step (bootstrapping)"),
        # second row r = (1, 0, 0), V = 0: deltas (1, 0, 0) -> A = (1, 0, 0)
        _Case("a batch of two rows", lambda: gae(t([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]), t([[0.5, 0.6, 0.7], [0.0, 0.0, 0.0]]),
                                                 gamma=0.5, lam=0.5)[0], [adv, [1.0, 0.0, 0.0]]),
        _Case("the first example with pads at steps 0, 2, 5 (advantages)", lambda: gae(r_pad, v_pad, 0.5, 0.5, mask=m_pad)[0],
              [[0.0, -0.24375, 0.0, -0.175, 0.3, 0.0]],
              hint="a masked step gets 0, and the step before it takes V and A from the next unmasked step"),
        _Case("the same (returns)", lambda: gae(r_pad, v_pad, 0.5, 0.5, mask=m_pad)[1], [[0.0, 0.25625, 0.0, 0.425, 1.0, 0.0]]),
    ])


def check_grpo_advantages(grpo_advantages) -> bool:
    """`grpo_advantages(rewards, group_size=None, scale_std=True, eps=1e-4)` as nanoo1.rl.grpo_advantages:
    A_i = (r_i - mean) / (std + eps) per group (std with Bessel's correction); scale_std=False: r_i - mean.
    rewards (num_groups, G), or flat with group_size G; a group of one gets 0."""
    _callable(grpo_advantages, "check_grpo_advantages")
    t = torch.tensor
    # group (1, 0, 0, 1): mean .5, std = sqrt(4 * .25 / 3) = .5773503; .5 / (.5773503 + 1e-4) = .8658754
    # group (2, 2, 2, 2): every reward equals the mean -> 0
    a = 0.8658754
    two_groups = [[a, -a, -a, a], [0.0, 0.0, 0.0, 0.0]]
    return _run("grpo_advantages", [
        _Case("rewards [[1,0,0,1], [2,2,2,2]]", lambda: grpo_advantages(t([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])), two_groups,
              hint="(r - mean) / (std + eps): eps added to the std, not inside its root, and the std with Bessel's "
                   "correction (divide by G - 1), as torch.std does by default"),
        # (0, 1, 2): mean 1, std = sqrt((1 + 0 + 1) / 2) = 1 -> (-1, 0, 1) / 1.0001
        _Case("rewards [[0, 1, 2]]", lambda: grpo_advantages(t([[0.0, 1.0, 2.0]])), [[-0.9999, 0.0, 0.9999]]),
        _Case("flat rewards [1,0,0,1,2,2,2,2], group_size=4",
              lambda: grpo_advantages(t([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0]), group_size=4), two_groups[0] + two_groups[1]),
        _Case("rewards [[1,0,0,1], [2,2,2,2]], scale_std=False (Dr. GRPO)",
              lambda: grpo_advantages(t([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]]), scale_std=False),
              [[0.5, -0.5, -0.5, 0.5], [0.0, 0.0, 0.0, 0.0]]),
        _Case("integer rewards [[1, 0]]", lambda: grpo_advantages(t([[1, 0]])), [[0.7070068, -0.7070068]],  # std .7071068: .5 / .7072068
              hint="turn integer rewards into floats first"),
        _Case("flat rewards [3, -1], group_size=1", lambda: grpo_advantages(t([3.0, -1.0]), group_size=1), [0.0, 0.0],
              hint="a group of one has nothing to compare with: advantage 0, not NaN"),
    ])


def check_ppo_loss(ppo_policy_loss) -> bool:
    """`ppo_policy_loss(logp, old_logp, advantages, mask, clip_eps=0.2, weights=None)` -> loss (or (loss, stats)),
    as nanoo1.rl.ppo_policy_loss: mean over masked tokens of -min(r A, clip(r, 1 - eps, 1 + eps) A),
    r = exp(logp - old_logp); advantages (B, T) or (B,) per row; weights (B,) scale each row's tokens."""
    _callable(ppo_policy_loss, "check_ppo_loss")
    t = torch.tensor
    old, ones = torch.zeros(1, 4), torch.ones(1, 4)
    adv = t([[2.0, 2.0, -1.0, -1.0]])

    def logp(ratios):
        return torch.log(t(ratios)).requires_grad_()

    def loss(ratios=((1.5, 0.5, 0.5, 1.5),), old=old, a=adv, mask=ones, **kw):
        return _first(ppo_policy_loss(logp(ratios), old, a, mask, **kw))

    def grad():
        lp = logp([[1.5, 0.5, 0.5, 1.5]])
        _first(ppo_policy_loss(lp, old, adv, ones, clip_eps=0.2)).backward()
        return lp.grad

    # ratios (1.5, .5, .5, 1.5), A (2, 2, -1, -1), eps .2 -> -min(r A, clip(r, .8, 1.2) A):
    #   -min(3, 2.4) = -2.4;  -min(1, 1.6) = -1;  -min(-.5, -.8) = .8;  -min(-1.5, -1.2) = 1.5;  mean = -1.1 / 4 = -.275
    # two rows, A per row (1, -1), ratios ((1.5, 1), (.5, 1)): -min(1.5, 1.2) = -1.2, -1; -min(-.5, -.8) = .8, 1 -> -.1
    rows = dict(ratios=((1.5, 1.0), (0.5, 1.0)), old=torch.zeros(2, 2), a=t([1.0, -1.0]), mask=torch.ones(2, 2))
    return _run("ppo_policy_loss", [
        _Case("ratios [1.5, .5, .5, 1.5], A [2, 2, -1, -1], eps .2", lambda: loss(clip_eps=0.2), -0.275,
              hint="the pessimistic bound: -min(r A, clip(r, 1 - eps, 1 + eps) A), averaged over the tokens"),
        # d/dlogp of -r A / 4 where the unclipped term is the min, 0 where the clip holds: (0, -.25, 0, .375)
        _Case("the gradient with respect to logp", grad, [[0.0, -0.25, 0.0, 0.375]],
              hint="where the clipped term is the smaller one, no gradient flows"),
        _Case("the same with mask [1, 1, 0, 0]", lambda: loss(mask=t([[1, 1, 0, 0]]), clip_eps=0.2), -1.7,  # (-2.4 - 1) / 2
              hint="average over the masked-in tokens only"),
        # eps .6: clip(r, .4, 1.6) leaves every ratio alone -> (-3 - 1 + .5 + 1.5) / 4 = -.5
        _Case("the same with eps .6", lambda: loss(clip_eps=0.6), -0.5),
        _Case("two rows, advantages [1, -1] of shape (B,)", lambda: loss(**rows, clip_eps=0.2), -0.1,
              hint="an advantage of shape (B,) applies to every token of its row"),
        # weights (2, 1): row 1's losses double: (-2.4 - 2 + .8 + 1) / 4 = -.65
        _Case("the same with weights [2, 1]", lambda: loss(**rows, clip_eps=0.2, weights=t([2.0, 1.0])), -0.65,
              hint="multiply each row's token losses by its weight before averaging"),
        # mask ((1, 1), (1, 0)): the tokens -1.2, -1, .8 -> -1.4 / 3 = -.4666667 (a mean per row first: -.15)
        _Case("two rows, mask [[1, 1], [1, 0]]", lambda: loss(**{**rows, "mask": t([[1, 1], [1, 0]])}, clip_eps=0.2),
              -0.4666667, hint="one mean over every masked-in token of the batch, not a mean of each row's mean"),
    ])
