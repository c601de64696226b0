"""Exercise checks of notebook 01 Gemma-2 from scratch (notebooks/01_gemma2_from_scratch.ipynb)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nanoo1.exercises._common import _Case, _run, _callable, _grid


def check_rms_norm(rms_norm_cls) -> bool:
    """`rms_norm_cls(dim, eps=...)` is a module with a `.weight` (dim,), like nanoo1.model.RMSNorm:
    y = x * rsqrt(mean(x^2 over the last dim) + eps) * (1 + w), computed in float32, returned in x's dtype."""
    _callable(rms_norm_cls, "check_rms_norm")

    def run(x, w=(0.0, 1.0, -1.0, 0.5), eps=1e-6, dtype=torch.float32):
        norm = rms_norm_cls(len(w), eps=eps)
        with torch.no_grad():
            norm.weight.copy_(torch.tensor(w))
        return norm(torch.tensor(x, dtype=dtype))

    # w = (0, 1, -1, .5) -> 1 + w = (1, 2, 0, 1.5).  x = (1, 2, 3, 4): mean x^2 = 30/4 = 7.5, 1/sqrt(7.5) = .3651484
    # x / rms = (.3651484, .7302967, 1.0954451, 1.4605935), times (1 + w) -> (.3651484, 1.4605935, 0, 2.1908902)
    one = [0.3651484, 1.4605935, 0.0, 2.1908902]
    return _run("RMSNorm", [
        _Case("x=[1,2,3,4], w=[0,1,-1,.5]", lambda: run([1.0, 2.0, 3.0, 4.0]), one,
              hint="Gemma stores w zero-centred: the scale is (1 + w), not w"),
        # second row (3, 4, 0, 0): mean x^2 = 25/4, rms 2.5 -> (1.2, 1.6, 0, 0) * (1 + w) = (1.2, 3.2, 0, 0)
        _Case("the rows [[1,2,3,4], [3,4,0,0]]", lambda: run([[1.0, 2.0, 3.0, 4.0], [3.0, 4.0, 0.0, 0.0]]),
              [one, [1.2, 3.2, 0.0, 0.0]], hint="normalise each row over the last dimension only"),
        # eps = 1, x = 1s, w = 0: 1 / sqrt(1 + 1) = .7071068 (eps outside the root would give 1 / (1 + 1) = .5)
        _Case("x=[1,1,1,1], w=0, eps=1", lambda: run([1.0] * 4, w=(0.0,) * 4, eps=1.0), [0.7071068] * 4,
              hint="eps goes inside the square root: rsqrt(mean(x^2) + eps)"),
        _Case("x=0 (eps keeps it finite)", lambda: run([0.0] * 4), [0.0] * 4),
        _Case("x=[1,2,3,4] in bfloat16 (output dtype)", lambda: str(run([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16).dtype),
              "torch.bfloat16", hint="compute in float32, then cast back to x's dtype"),
        _Case("x=[1,2,3,4] in bfloat16 (values)", lambda: run([1.0, 2.0, 3.0, 4.0], dtype=torch.bfloat16), one, tol=0.02),
        # x = (1, 1, 1, 2): mean x^2 = 7/4, 1/sqrt(1.75) = .7559289 -> (.7559289, 1.5118579, 0, 2.2677868), rounded
        # once to bfloat16 (8 significant bits): (.7578125, 1.515625, 0, 2.265625). Rounding at every step instead:
        # bf16(.7559289) = .7578125, * 2 = 1.515625, * 1.5 = 2.2734375, halfway between 2.265625 and 2.28125 -> 2.28125
        _Case("x=[1,1,1,2] in bfloat16 (one rounding)", lambda: run([1.0, 1.0, 1.0, 2.0], dtype=torch.bfloat16),
              [0.7578125, 1.515625, 0.0, 2.265625], tol=0,
              hint="compute in float32 and round to bfloat16 once, at the end, not after every operation"),
    ])


def check_softcap(softcap) -> bool:
    """`softcap(x, cap)` = tanh(x / cap) * cap, and x itself when cap is None (nanoo1.model.softcap)."""
    _callable(softcap, "check_softcap")
    t = torch.tensor
    return _run("softcap", [
        # 30 tanh(0) = 0; 30 tanh(.5) = 13.8635147; 30 tanh(-2) = -28.9208274; 30 tanh(33.3) = 30.0
        _Case("x=[0, 15, -60, 1000], cap=30", lambda: softcap(t([0.0, 15.0, -60.0, 1000.0]), 30.0),
              [0.0, 13.8635147, -28.9208274, 30.0], hint="tanh(x / cap) * cap: near 0 the slope is 1, far out it flattens at +-cap"),
        _Case("x=[[15, -60], [0, 1000]], cap=30", lambda: softcap(t([[15.0, -60.0], [0.0, 1000.0]]), 30.0),
              [[13.8635147, -28.9208274], [0.0, 30.0]]),
        # 50 tanh(1) = 38.0797078
        _Case("x=[50, -50], cap=50", lambda: softcap(t([50.0, -50.0]), 50.0), [38.0797078, -38.0797078]),
        _Case("x=[0.03], cap=30 (slope 1 near 0)", lambda: softcap(t([0.03]), 30.0), [0.03], tol=1e-6),
        _Case("cap=None (no cap)", lambda: softcap(t([1.0, -200.0, 3000.0]), None), [1.0, -200.0, 3000.0]),
    ])


def check_attention_masks(attention_masks) -> bool:
    """`attention_masks(self, q_slots, k_valid, dtype) -> (full, slide)` as nanoo1.model.Gemma2.attention_masks:
    additive masks (B, 1, T, S), 0 where key j is visible to the query at slot i, a large finite negative
    number elsewhere. Visible: j <= i and k_valid[j]; in the sliding mask also i - W < j, where
    W = self.config.sliding_window (here 3)."""
    _callable(attention_masks, "check_attention_masks")
    model = SimpleNamespace(config=SimpleNamespace(sliding_window=3))

    def visible(which, q_slots, k_valid):
        mask = attention_masks(model, torch.tensor(q_slots), torch.tensor(k_valid), torch.float32)[which]
        return (mask[:, 0] == 0).int()  # (B, T, S)

    def hidden_values(q_slots, k_valid):
        full = attention_masks(model, torch.tensor(q_slots), torch.tensor(k_valid), torch.float32)[0]
        hidden = full[full != 0]
        if not torch.isfinite(full).all():
            return "-inf or NaN entries"
        return "large finite negative" if (hidden <= -1e4).all() else f"hidden entries as large as {hidden.max().item()}"

    steps = [list(range(6))]  # one row, queries at slots 0..5 over keys 0..5
    everyone, padded = [[True] * 6], [[True] * 6, [False, False, True, True, True, True]]
    causal = _grid("100000 110000 111000 111100 111110 111111")
    # window 3: query i sees i-2, i-1, i (j > i - 3)
    window = _grid("100000 110000 111000 011100 001110 000111")
    return _run("attention_masks", [
        _Case("6 queries at slots 0..5 (shape)", lambda: list(attention_masks(model, torch.tensor(steps), torch.tensor(everyone),
                                                                             torch.float32)[0].shape), [1, 1, 6, 6],
              hint="return masks of shape (B, 1, T, S)"),
        _Case("the full (causal) mask, 6 queries", lambda: visible(0, steps, everyone), [causal]),
        _Case("the sliding mask, window 3, 6 queries", lambda: visible(1, steps, everyone), [window],
              hint="key j is visible iff i - W < j <= i: the window holds W keys, the query's own included"),
        # row 2 has two padding keys on the left: queries 0 and 1 see nothing, the others start at key 2
        _Case("the full mask with keys 0, 1 of row 2 padding", lambda: visible(0, steps * 2, padded),
              [causal, _grid("000000 000000 001000 001100 001110 001111")], hint="a key is visible only where k_valid is True"),
        _Case("the sliding mask with keys 0, 1 of row 2 padding", lambda: visible(1, steps * 2, padded),
              [window, _grid("000000 000000 001000 001100 001110 000111")]),
        # decoding with a cache: 2 new queries at slots 4 and 5 over 6 keys
        _Case("queries at slots [4, 5] (full)", lambda: visible(0, [[4, 5]], everyone), [_grid("111110 111111")]),
        _Case("queries at slots [4, 5] (sliding)", lambda: visible(1, [[4, 5]], everyone), [_grid("001110 000111")],
              hint="compare keys with the query's slot, not with its row number in the batch"),
        _Case("the value of hidden entries", lambda: hidden_values(steps * 2, padded), "large finite negative",
              hint="use torch.finfo(dtype).min, not -inf: a padding query that sees no key would give NaN"),
    ])
