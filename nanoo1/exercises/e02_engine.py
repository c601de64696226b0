"""Exercise checks of notebook 02 the sampling engine (notebooks/02_sampling_engine.ipynb)."""

from __future__ import annotations

import math

import torch

from nanoo1.exercises._common import _Case, _run, _callable


def _frequencies(sample_next, probs, n=4000, **kwargs) -> torch.Tensor:
    """How often each token is drawn from n rows of log(probs) (a seeded generator)."""
    logits = torch.log(torch.tensor(probs)).expand(n, len(probs))  # (n, V)
    draws = sample_next(logits, generator=torch.Generator().manual_seed(0), **kwargs)
    return torch.bincount(torch.as_tensor(draws).long().flatten(), minlength=len(probs)).double() / n


def check_sample_next(sample_next) -> bool:
    """`sample_next(logits, temperature=0.0, top_k=None, top_p=None, generator=None)` -> tokens (B,), as
    nanoo1.engine.sample_next: argmax at temperature 0, else a draw from softmax(logits / temperature)
    restricted to the top_k tokens and to the nucleus (the smallest set of tokens whose mass reaches top_p)."""
    _callable(sample_next, "check_sample_next")
    p4 = [0.05, 0.5, 0.3, 0.15]  # sorted: .5, .3, .15, .05

    def repeatable():
        x = torch.log(torch.tensor(p4)).expand(64, 4)
        a, b = (sample_next(x, 1.0, generator=torch.Generator().manual_seed(1)) for _ in range(2))
        return "same draws" if torch.equal(torch.as_tensor(a), torch.as_tensor(b)) else "different draws"

    # 4000 draws: a frequency's standard deviation is at most sqrt(.25 / 4000) = .008, so .03 is ~4 sigma
    return _run("sample_next", [
        _Case("temperature 0, logits [[.1, 2, -1, .5], [3, 0, 2.9, -5]]",
              lambda: sample_next(torch.tensor([[0.1, 2.0, -1.0, 0.5], [3.0, 0.0, 2.9, -5.0]]), 0.0), [1, 0],
              tol=0, hint="temperature 0 is greedy: the argmax of each row, one token per row, shape (B,)"),
        _Case("top_k=1 at temperature 1", lambda: _frequencies(sample_next, p4, temperature=1.0, top_k=1), [0, 1, 0, 0], tol=0),
        # temperature 2: p^(1/2) = (.7071, .5, .5) / 1.7071 = (.4142, .2929, .2929)
        _Case("p=[.5, .25, .25] at temperature 2 (frequencies)",
              lambda: _frequencies(sample_next, [0.5, 0.25, 0.25], temperature=2.0), [0.4142, 0.2929, 0.2929], tol=0.03,
              hint="divide the logits by the temperature; temperature > 1 flattens the distribution"),
        # top_k=2 keeps .5 and .3, renormalised by .8: (0, .625, .375, 0)
        _Case("p=[.05, .5, .3, .15], top_k=2 (frequencies)", lambda: _frequencies(sample_next, p4, temperature=1.0, top_k=2),
              [0, 0.625, 0.375, 0], tol=0.03),
        _Case("p=[.05, .5, .3, .15], top_k=2 (tokens outside the top 2)",
              lambda: _frequencies(sample_next, p4, temperature=1.0, top_k=2)[[0, 3]], [0, 0], tol=0),
        # top_p=.7: .5 is kept (mass before it 0), .3 is kept (mass before it .5 < .7), .15 is not (.8 >= .7)
        _Case("p=[.05, .5, .3, .15], top_p=0.7 (frequencies)", lambda: _frequencies(sample_next, p4, temperature=1.0, top_p=0.7),
              [0, 0.625, 0.375, 0], tol=0.03,
              hint="keep a token when the mass of the tokens before it is below top_p (the token that crosses top_p stays)"),
        _Case("p=[.05, .5, .3, .15], top_p=0.7 (tokens outside the nucleus)",
              lambda: _frequencies(sample_next, p4, temperature=1.0, top_p=0.7)[[0, 3]], [0, 0], tol=0),
        # temperature 3: p^(1/3) / 2.3628 = (.1559, .3359, .2833, .2249); the nucleus of .7 drops .1559 (mass before it
        # .8441): (0, .3980, .3356, .2664) -- a nucleus taken before the temperature would keep .5 and .3 alone
        _Case("p=[.05, .5, .3, .15], temperature 3, top_p=0.7 (frequencies)",
              lambda: _frequencies(sample_next, p4, temperature=3.0, top_p=0.7), [0, 0.3980, 0.3356, 0.2664], tol=0.03,
              hint="the nucleus is taken from softmax(logits / temperature), the distribution the draw is made from"),
        # top_k=2 first: (.625, .375) renormalised; the nucleus of .6 of those is the top token alone
        _Case("p=[.05, .5, .3, .15], top_k=2 and top_p=0.6 (frequencies)",
              lambda: _frequencies(sample_next, p4, temperature=1.0, top_k=2, top_p=0.6), [0, 1, 0, 0], tol=0,
              hint="top_k first, then the nucleus of what top_k kept, renormalised (as transformers' warpers do)"),
        _Case("p=[.05, .5, .3, .15], top_p=0.3 (the top token alone)",
              lambda: _frequencies(sample_next, p4, temperature=1.0, top_p=0.3), [0, 1, 0, 0], tol=0),
        _Case("two generators with the same seed", repeatable, "same draws",
              hint="draw with the given generator (torch.multinomial(probs, 1, generator=generator))"),
    ])


def check_token_stats(token_stats) -> bool:
    """`token_stats(logits, tokens, temperature)` -> (log p, log p under logits / temperature, entropy,
    varentropy), each (B,), as nanoo1.engine.token_stats. Entropy and varentropy are of the temperature-1
    distribution; at temperature 0 or 1 the scaled log-prob equals the log-prob."""
    _callable(token_stats, "check_token_stats")
    # row 1: p = (1/2, 1/4, 1/4), token 1; row 2: uniform over 3 tokens, token 2
    logits = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)], [0.0, 0.0, 0.0]])
    tokens = torch.tensor([1, 2])

    def out(i, temperature=2.0):
        return lambda: token_stats(logits, tokens, temperature)[i]

    lp = [-1.3862944, -1.0986123]  # ln(1/4), ln(1/3)
    return _run("token_stats", [
        _Case("log p of tokens [1, 2]", out(0), lp, hint="log_softmax(logits)[token], at temperature 1"),
        # temperature 2: p ∝ sqrt(p) = (.7071, .5, .5) / 1.7071 -> p(1) = .2928932, ln = -1.2279472; uniform stays 1/3
        _Case("log p under logits / 2", out(1), [-1.2279472, -1.0986123], hint="log_softmax(logits / temperature)[token]"),
        _Case("log p under logits / 1", out(1, 1.0), lp),
        _Case("log p at temperature 0 (greedy)", out(1, 0.0), lp, hint="at temperature 0 return the model's log-prob"),
        # H = -sum p ln p: .5 ln2 + 2 * .25 ln4 = 1.5 ln2 = 1.0397208; uniform: ln 3 = 1.0986123
        _Case("entropy", out(2), [1.0397208, 1.0986123], hint="the entropy of softmax(logits) at temperature 1, in nats"),
        # varentropy = sum p (ln p + H)^2: .5 (-.5 ln2)^2 + .5 (.5 ln2)^2 = .25 (ln2)^2 = .1201133; uniform: 0
        _Case("varentropy", out(3), [0.1201133, 0.0], hint="the variance of -log p under p: sum p (log p + H)^2"),
    ])
