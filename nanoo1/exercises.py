"""Checks for the notebooks' exercises: run a student's function on small inputs with known answers.

Each `check_*` takes the student's version of one nanoo1 function or class (same signature, so
`check_softcap(nanoo1.model.softcap)` passes), runs it on inputs whose answers were computed by hand
(the arithmetic is in the comments), prints a line per check and returns True or False:

    >>> check_softcap(my_softcap)
    ✓ softcap matches the known answers (5 cases)

The answers are written here rather than computed with nanoo1, so a check still works when an instructor
blanks the nanoo1 function for an assignment. A wrong value, a wrong shape or an exception raised inside
the student's code makes a check print what differs and return False; only misuse (passing something that
cannot be called) raises.
"""

from __future__ import annotations

import math
import traceback
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from nanoo1.thoughts import Tree  # a plain data structure: the checks build their inputs with it


class _Case(NamedTuple):
    what: str  # the inputs, as the student should read them
    compute: Callable[[], Any]  # runs the student's code, returns numbers (or a string for yes/no facts)
    expected: Any  # the known answer: numbers (compared within tol) or a string (compared exactly)
    tol: float = 1e-5  # absolute tolerance on numbers
    hint: str = ""  # what the case is about, shown when it fails


def _numbers(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().cpu().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _show(t: torch.Tensor):
    return round(t.item(), 6) if t.dim() == 0 else torch.round(t, decimals=6).tolist()


def _mismatch(got, expected, tol: float) -> str | None:
    """None when `got` matches, else how `got` reads (for the message)."""
    if isinstance(expected, str):
        return None if got == expected else repr(got)
    try:
        g = _numbers(got)
    except (TypeError, ValueError):
        return f"{got!r} (expected numbers or a tensor)"
    e = _numbers(expected)
    if g.shape != e.shape:
        return f"a result of shape {tuple(g.shape)} (expected shape {tuple(e.shape)})"
    return None if torch.allclose(g, e, rtol=0.0, atol=tol) else str(_show(g))


def _run(name: str, cases: list[_Case]) -> bool:
    for case in cases:
        try:
            got = case.compute()
        except Exception as e:  # the student's code failed: report it, never raise
            where = traceback.extract_tb(e.__traceback__)[-1]
            print(f"✗ {name}: for {case.what}, your code raised {type(e).__name__}: {e} "
                  f"(line {where.lineno}: {where.line})")
            return False
        wrong = _mismatch(got, case.expected, case.tol)
        if wrong is not None:
            shown = case.expected if isinstance(case.expected, str) else _show(_numbers(case.expected))
            print(f"✗ {name}: for {case.what}, expected {shown!r}, got {wrong}" + (f"\n  hint: {case.hint}" if case.hint else ""))
            return False
    print(f"✓ {name} matches the known answers ({len(cases)} cases)")
    return True


def _callable(fn, check: str) -> None:
    if not callable(fn):
        raise TypeError(f"{check} expects your function or class, got {type(fn).__name__} {fn!r}")


def _grid(rows: str) -> list[list[int]]:
    """'100 110' -> [[1, 0, 0], [1, 1, 0]]: a 0/1 matrix written one row per word."""
    return [[int(c) for c in row] for row in rows.split()]


def _first(out):
    """A loss function's loss: nanoo1's losses return (loss, stats); a bare tensor is accepted too."""
    return out[0] if isinstance(out, (tuple, list)) else out


# =============================================================================== 01 Gemma-2 from scratch

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


# =============================================================================== 02 the sampling engine

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


# =============================================================================== 03 thought trees and the value head

def _thought_line(parent: int, node: int, meta: str, text: str, rating: str | None = "positive") -> str:
    """One line of the LongCoT format, written out here (not with nanoo1) so the checks keep their own answers;
    rating None stops right after <start_of_rating>."""
    line = (f"<start_of_father_id>{parent}<end_of_father_id><start_of_local_id>{node}<end_of_local_id>"
            f"<start_of_thought>{meta}{text}<end_of_thought><start_of_rating>")
    return line if rating is None else line + f"<{rating}_rating><end_of_rating>"


def _mia_path(rating_of_step: str = "positive"):
    """root 0 (<problem>) -> 1 (<expansion> 7 + 5 = 12) -> 2 (<conclusion>), as nanoo1.thoughts Nodes."""
    tree = Tree("Mia has 7 apples. She buys 5 more. How many?")
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    step.rating = rating_of_step
    end = tree.add(step, "<conclusion>", "The answer is \\boxed{12}")
    return [tree.root, step, end]


_MIA_ROOT = _thought_line(-1, 0, "<problem>", "Mia has 7 apples. She buys 5 more. How many?")


def check_value_prompt(value_prompt) -> bool:
    """`value_prompt(path) -> str` as nanoo1.thoughts.value_prompt: the path's lines, root first, joined by
    newlines, the last one cut right after `<start_of_rating>` (where the value head reads P(positive))."""
    _callable(value_prompt, "check_value_prompt")
    root, step, end = _mia_path()
    step_line = _thought_line(0, 1, "<expansion>", "7 + 5 = 12")
    return _run("value_prompt", [
        _Case("the path [root]", lambda: value_prompt([root]),
              "<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id><start_of_thought><problem>"
              "Mia has 7 apples. She buys 5 more. How many?<end_of_thought><start_of_rating>",
              hint="the last line stops right after <start_of_rating>: its rating is what the value head predicts"),
        _Case("the path [root, step]", lambda: value_prompt([root, step]),
              _MIA_ROOT + "\n" + _thought_line(0, 1, "<expansion>", "7 + 5 = 12", None),
              hint="every line but the last is complete, rating included; lines are joined by '\\n'"),
        _Case("the path [root, step, conclusion]", lambda: value_prompt([root, step, end]),
              _MIA_ROOT + "\n" + step_line + "\n" + _thought_line(1, 2, "<conclusion>", "The answer is \\boxed{12}", None),
              hint="each line names its parent's id, then its own"),
        _Case("the same with the step rated negative", lambda: value_prompt(_mia_path("negative")),
              _MIA_ROOT + "\n" + _thought_line(0, 1, "<expansion>", "7 + 5 = 12", "negative") + "\n"
              + _thought_line(1, 2, "<conclusion>", "The answer is \\boxed{12}", None),
              hint="an earlier line shows its node's own rating (node.rating)"),
    ])


def check_policy_prompt(policy_prompt) -> bool:
    """`policy_prompt(path, child_id, meta=None, hint=None) -> str` as nanoo1.thoughts.policy_prompt: the path's
    complete lines, then `<hint>{hint}</hint>` on a line of its own when a hint is given, then the new child's
    header (parent = the path's last node) up to `<start_of_thought>{meta}` (no meta: the model writes it)."""
    _callable(policy_prompt, "check_policy_prompt")
    root, step, _ = _mia_path()
    head = "<start_of_father_id>{}<end_of_father_id><start_of_local_id>{}<end_of_local_id><start_of_thought>"
    step_line = _thought_line(0, 1, "<expansion>", "7 + 5 = 12")
    return _run("policy_prompt", [
        _Case("the path [root], child 1, meta <expansion>", lambda: policy_prompt([root], 1, "<expansion>"),
              _MIA_ROOT + "\n" + head.format(0, 1) + "<expansion>",
              hint="after the path: a newline and the new child's header, up to <start_of_thought> and its meta tag"),
        _Case("the path [root, step], child 5, no meta", lambda: policy_prompt([root, step], 5),
              _MIA_ROOT + "\n" + step_line + "\n" + head.format(1, 5),
              hint="the child's parent is the last node of the path; without a meta the prompt ends at <start_of_thought>"),
        _Case("the path [root, step], child 2, meta <conclusion>, hint 'Give the answer.'",
              lambda: policy_prompt([root, step], 2, "<conclusion>", "Give the answer."),
              _MIA_ROOT + "\n" + step_line + "\n<hint>Give the answer.</hint>\n" + head.format(1, 2) + "<conclusion>",
              hint="the hint goes on its own line, <hint>...</hint>, between the path and the new header"),
    ])


class _RatingLM:
    """A stand-in for a Gemma2 with hidden size 2 and 10 tokens: the final hidden state of row b at
    position t is (t, b + 1); the output embedding gives <positive_rating> (id 8) the row (1, 0) and
    <negative_rating> (id 9) the row (0, 1), so l_pos = t and l_neg = b + 1 before the soft-cap."""

    def __init__(self, cap):
        self.config = SimpleNamespace(final_logit_softcapping=cap)
        self.output_embedding = torch.tensor([[3.0, -1.0]] * 8 + [[1.0, 0.0], [0.0, 1.0]])  # (V=10, C=2)

    def hidden_states(self, input_ids, attention_mask=None, *args, **kwargs):
        B, T = input_ids.shape
        t = torch.arange(T, dtype=torch.float32).expand(B, T)  # (B, T)
        b = torch.arange(1, B + 1, dtype=torch.float32)[:, None].expand(B, T)  # (B, T)
        return torch.stack([t, b], -1)  # (B, T, 2)

    def logits(self, hidden):
        out = hidden @ self.output_embedding.T  # (..., V)
        cap = self.config.final_logit_softcapping
        return out if cap is None else torch.tanh(out / cap) * cap

    def __call__(self, input_ids, attention_mask=None, *args, **kwargs):
        return self.logits(self.hidden_states(input_ids, attention_mask))  # (B, T, V)

    forward = __call__


def check_rating_logits(rating_logits) -> bool:
    """`rating_logits(model, tokenizer, input_ids, attention_mask) -> (B, 2)` as nanoo1.thoughts.rating_logits:
    the soft-capped logits of <positive_rating> and <negative_rating> at each row's last real token (right
    padding), which must be <start_of_rating> (a ValueError otherwise). The check passes a stand-in model
    (model.hidden_states(ids, mask), model.output_embedding (V, C), model.config.final_logit_softcapping, or
    model(ids, mask) for all logits) and a stand-in tokenizer (tokenizer.token_id(name))."""
    _callable(rating_logits, "check_rating_logits")
    tokenizer = SimpleNamespace(token_id={"<start_of_rating>": 7, "<positive_rating>": 8, "<negative_rating>": 9}.__getitem__)
    ids, mask = torch.tensor([[2, 5, 7], [2, 7, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])

    def run(cap, ids=ids, mask=mask):
        return rating_logits(_RatingLM(cap), tokenizer, ids, mask)

    def refuses(ids, mask):
        try:
            run(None, torch.tensor(ids), torch.tensor(mask))
        except ValueError:
            return "ValueError"
        return "no error"

    # row 0 ends at t = 2: (l_pos, l_neg) = (2, 1); row 1 (one pad) ends at t = 1: (1, 2)
    # cap 5: 5 tanh(2/5) = 1.8997448, 5 tanh(1/5) = .9868766;  cap 30: 30 tanh(2/30) = 1.9970423, 30 tanh(1/30) = .9996298
    return _run("rating_logits", [
        _Case("two rows, the second right-padded, no soft-cap", lambda: run(None), [[2.0, 1.0], [1.0, 2.0]],
              hint="read each row at its last real token (attention_mask.sum(-1) - 1), not at position -1"),
        _Case("the same with a soft-cap of 5", lambda: run(5.0), [[1.8997448, 0.9868766], [0.9868766, 1.8997448]],
              hint="the logits are soft-capped like the model's: tanh(l / cap) * cap"),
        _Case("the same with a soft-cap of 30", lambda: run(30.0), [[1.9970423, 0.9996298], [0.9996298, 1.9970423]]),
        _Case("one row ending in token 5, not <start_of_rating>", lambda: refuses([[2, 7, 5]], [[1, 1, 1]]), "ValueError",
              hint="raise ValueError when a row's last real token is not <start_of_rating>: the value is read there only"),
    ])


# =============================================================================== 04 MCTS

def _node(**fields):
    return SimpleNamespace(**{"value": None, "visits": 0, "prior": 1.0, "varentropy": 0.0, "parent": None, **fields})


def check_puct_score(puct_score) -> bool:
    """`puct_score(parent, child, c=1.4, varentropy_coef=0.0)` as nanoo1.mcts.puct_score (LLaMA-O1):
    V(child) + c * P(child) * sqrt(N(parent)) / (1 + N(child)) + varentropy_coef * varentropy(child).
    Nodes have .value, .visits, .prior, .varentropy."""
    _callable(puct_score, "check_puct_score")

    def score(n_parent, value, prior, visits, varentropy=0.0, **kw):
        return puct_score(_node(visits=n_parent), _node(value=value, prior=prior, visits=visits, varentropy=varentropy), **kw)

    return _run("puct_score", [
        # -.5 + 1.4 * .4 * sqrt(4) / (1 + 1) = -.5 + .56 = .06
        _Case("N(parent)=4, V=-.5, P=.4, N(child)=1", lambda: score(4, -0.5, 0.4, 1), 0.06,
              hint="V + c * P * sqrt(N_parent) / (1 + N_child), with c = 1.4 by default"),
        # -1 + 1 * .5 * sqrt(9) / (1 + 0) = .5
        _Case("N(parent)=9, V=-1, P=.5, N(child)=0, c=1", lambda: score(9, -1.0, 0.5, 0, c=1.0), 0.5,
              hint="an unvisited child divides by 1 + 0: it gets a large but finite bonus"),
        # sqrt(0) = 0: the value alone
        _Case("N(parent)=0, V=-.3, P=.9, N(child)=0", lambda: score(0, -0.3, 0.9, 0), -0.3),
        # .06 + .1 * 2 = .26
        _Case("N(parent)=4, V=-.5, P=.4, N(child)=1, varentropy 2, varentropy_coef .1",
              lambda: score(4, -0.5, 0.4, 1, varentropy=2.0, varentropy_coef=0.1), 0.26,
              hint="+ varentropy_coef * child.varentropy"),
        _Case("the same with varentropy_coef 0 (the default)", lambda: score(4, -0.5, 0.4, 1, varentropy=2.0), 0.06),
    ])


def check_uct_score(uct_score) -> bool:
    """`uct_score(parent, child, c=2.0)` as nanoo1.mcts.uct_score (rStar-Math eq. 1): Q/N + c sqrt(ln N(parent) / N(child)),
    where child.value already holds the mean Q/N; an unvisited child scores +inf."""
    _callable(uct_score, "check_uct_score")

    def score(n_parent, value, visits, **kw):
        return uct_score(_node(visits=n_parent), _node(value=value, visits=visits), **kw)

    return _run("uct_score", [
        # -.5 + 2 sqrt(ln 8 / 2) = -.5 + 2 sqrt(1.0397208) = -.5 + 2 * 1.0196670 = 1.5393340
        _Case("N(parent)=8, V=-.5, N(child)=2", lambda: score(8, -0.5, 2), 1.539334,
              hint="child.value is already the mean Q/N: do not divide it by the visits again"),
        # .4 + 2 sqrt(ln 20 / 5) = .4 + 2 sqrt(.5991465) = .4 + 2 * .7740455 = 1.9480910
        _Case("N(parent)=20, V=.4, N(child)=5", lambda: score(20, 0.4, 5), 1.948091,
              hint="the natural log of the parent's visits, divided by the child's, under the square root"),
        # ln 1 = 0: the value alone
        _Case("N(parent)=1, V=.25, N(child)=1, c=1", lambda: score(1, 0.25, 1, c=1.0), 0.25),
        # c = .5: .4 + .5 * .7740455 = .7870228
        _Case("N(parent)=20, V=.4, N(child)=5, c=.5", lambda: score(20, 0.4, 5, c=0.5), 0.7870228),
        _Case("an unvisited child (N(child)=0)", lambda: score(5, -1.0, 0), float("inf"),
              hint="every child is tried once before any is tried twice: return math.inf"),
    ])


def check_backup(backup) -> bool:
    """`backup(node, value, discount=0.9)` as nanoo1.mcts.backup: walking up to the root, each node gets
    visits += 1 and the running mean value += (v - value) / visits (a value of None counts as no estimate),
    with v multiplied by `discount` per level. Nodes have .parent, .visits, .value."""
    _callable(backup, "check_backup")

    def chain():
        root = _node()
        a = _node(parent=root, value=-0.2)  # the value head's estimate, replaced by the first backup
        b = _node(parent=a, value=math.log(0.5))
        return root, a, b

    def after(*backups):
        root, a, b = chain()
        c = _node(parent=a)  # b's sibling
        for who, value in backups:
            backup({"b": b, "c": c}[who], value, 0.9)
        return [[n.value for n in (b, a, root)], [n.visits for n in (b, a, root)]]

    def one_level(discount):
        leaf = _node(parent=_node(value=-1.0, visits=3), value=-1.0, visits=3)
        backup(leaf, 0.0, discount)
        return [leaf.value, leaf.parent.value]

    return _run("backup", [
        # b gets -1, a .9 * -1 = -.9, the root .81 * -1 = -.81; one visit each
        _Case("backup(b, -1) on root -> a -> b", lambda: after(("b", -1.0)), [[-1.0, -0.9, -0.81], [1, 1, 1]],
              hint="the node gets the value itself, its parent discount * value, the grandparent discount^2 * value"),
        # b: -1 + (-2 + 1) / 2 = -1.5;  a: -.9 + (-1.8 + .9) / 2 = -1.35;  root: -.81 + (-1.62 + .81) / 2 = -1.215
        _Case("backup(b, -1), then backup(b, -2)", lambda: after(("b", -1.0), ("b", -2.0)),
              [[-1.5, -1.35, -1.215], [2, 2, 2]], hint="a running mean: count the visit first, then V += (v - V) / N"),
        # then c (b's sibling) gets 0: a: -1.35 + (0 + 1.35) / 3 = -.9;  root: -1.215 + (0 + 1.215) / 3 = -.81
        _Case("then backup(c, 0) for b's sibling c", lambda: after(("b", -1.0), ("b", -2.0), ("c", 0.0)),
              [[-1.5, -0.9, -0.81], [2, 3, 3]], hint="only the nodes on the path from c to the root change"),
        # value -1 after 3 visits, v = 0: -1 + (0 + 1) / 4 = -.75 at both levels (0 * discount = 0)
        _Case("a node with V=-1 after 3 visits, backup(0, discount .5)", lambda: one_level(0.5), [-0.75, -0.75]),
    ])


def check_rectify(rectify) -> bool:
    """`rectify(tree, discount=0.9, reward_epsilon=1e-6)` as nanoo1.mcts.rectify (LLaMA-O1): every leaf (no
    children) has reward log 1 = 0 if its .terminal is "success", else log(reward_epsilon); each node's
    .rectified = the mean over the leaves below it (itself, for a leaf) of discount^(levels down) * reward."""
    _callable(rectify, "check_rectify")
    def rectified(first, discount=0.9, eps=1e-6):
        tree = Tree("Q")
        a = tree.add(tree.root, "<expansion>", "a", value=-5.0)
        tree.add(tree.root, "<expansion>", "b", value=-0.1)  # never expanded: a failed leaf
        for outcome in (first, {"success": "failure", "failure": "success"}[first]):
            tree.add(a, "<conclusion>", outcome, terminal=outcome, value=-1.0)
        rectify(tree, discount, eps)
        return [n.rectified for n in tree.nodes]  # root, a, b, a's two conclusions

    L = math.log(1e-6)  # -13.8155106
    # root -> a -> (success, failure), root -> b.  Leaves: success 0, failure L, b L.
    # a = mean(.9 * 0, .9 * L) = .45 L;  root = mean(.81 * 0, .81 * L, .9 * L) = .57 L
    return _run("rectify", [
        _Case("root -> a -> (failure, success), root -> b (unexpanded)", lambda: rectified("failure"),
              [0.57 * L, 0.45 * L, L, L, 0.0], hint="a leaf that is not a success (b was never expanded) gets log(reward_epsilon)"),
        _Case("the same with the success first", lambda: rectified("success"), [0.57 * L, 0.45 * L, L, 0.0, L],
              hint="a success's rectified value 0.0 is a value, not 'unset' (LLaMA-O1 tests `if not value`)"),
        # L = ln .01 = -4.6051702; a = mean(.5 * 0, .5 * L) = .25 L; root = mean(.25 * 0, .25 * L, .5 * L) = .25 L
        _Case("the same with discount .5 and reward_epsilon .01", lambda: rectified("success", 0.5, 0.01),
              [0.25 * math.log(0.01), 0.25 * math.log(0.01), math.log(0.01), 0.0, math.log(0.01)],
              hint="discount^levels: the reward of a leaf k levels below is multiplied by discount^k"),
    ])


# =============================================================================== 05 PPO and GRPO

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
              hint="std with Bessel's correction (divide by G - 1), as torch.std does by default"),
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
    ])


# =============================================================================== 07 prioritized replay

def check_sum_tree(tree_cls) -> bool:
    """`tree_cls(capacity, op, neutral)` with update(indices, values), root() and, for a sum tree,
    find_prefix(mass) -> the leaf i with cumsum[i-1] <= mass < cumsum[i], as nanoo1.replay.SegmentTree."""
    _callable(tree_cls, "check_sum_tree")

    def tree(op, neutral, values, *updates):
        tr = tree_cls(5, op, neutral)
        tr.update(np.arange(5), np.array(values, dtype=np.float64))
        for idx, vals in updates:
            tr.update(np.array(idx), np.array(vals, dtype=np.float64))
        return tr

    leaves = [1.0, 0.0, 3.0, 2.0, 4.0]  # cumulative sums 1, 1, 4, 6, 10; leaf 1 is empty
    masses = np.array([0.0, 0.99, 1.0, 3.99, 4.0, 5.5, 6.0, 9.99])
    return _run("sum tree", [
        _Case("a sum tree over [1, 0, 3, 2, 4] (root)", lambda: tree(np.add, 0.0, leaves).root(), 10.0,
              hint="every inner node holds op(left child, right child); the root is node 1"),
        _Case("find_prefix([0, .99, 1, 3.99, 4, 5.5, 6, 9.99])", lambda: tree(np.add, 0.0, leaves).find_prefix(masses),
              [0, 0, 2, 2, 3, 3, 4, 4], tol=0,
              hint="go right when mass >= the left child's sum, subtracting it; an empty leaf is never chosen"),
        # leaf 4 set to 0: total 6
        _Case("after update([4], [0]) (root)", lambda: tree(np.add, 0.0, leaves, ([4], [0.0])).root(), 6.0,
              hint="after changing a leaf, recompute every ancestor up to the root"),
        _Case("after update([4], [0]), find_prefix([5.99, 6.0])", lambda: tree(np.add, 0.0, leaves, ([4], [0.0])).find_prefix([5.99, 6.0]),
              [3, 3], tol=0, hint="a mass at the total (float rounding) must still land on a leaf with positive value"),
        _Case("a min tree over [3, 1.5, 2, 7, 5]", lambda: tree(np.minimum, np.inf, [3.0, 1.5, 2.0, 7.0, 5.0]).root(), 1.5,
              hint="padding leaves (capacity 5 -> 8 leaves) hold `neutral`"),
        _Case("the min tree after update([1], [9])", lambda: tree(np.minimum, np.inf, [3.0, 1.5, 2.0, 7.0, 5.0], ([1], [9.0])).root(), 2.0),
        _Case("a max tree over [3, 1.5, 2, 7, 5] after update([3], [0])",
              lambda: tree(np.maximum, -np.inf, [3.0, 1.5, 2.0, 7.0, 5.0], ([3], [0.0])).root(), 5.0),
    ])


def check_replay_sample(replay_cls) -> bool:
    """`replay_cls(capacity, alpha=..., eps=...)` with extend(items, priorities) and sample(batch_size, beta,
    generator) -> (items, indices, weights), as nanoo1.replay.PrioritizedReplay: stratified draws in
    proportion to p^alpha, weights (N P(i))^-beta divided by the largest weight any item in the buffer can get."""
    _callable(replay_cls, "check_replay_sample")

    def draw(priorities, batch_size, beta, capacity=4):
        buf = replay_cls(capacity, alpha=0.5, eps=1e-12)
        buf.extend(list("abcd"[: len(priorities)]), priorities)
        return buf.sample(batch_size, beta, generator=np.random.default_rng(0))

    def counts(beta=1.0):
        return np.bincount(np.asarray(draw([1.0, 4.0, 9.0], 60, beta)[1]).astype(np.int64), minlength=4)

    def weight_of_each(priorities, beta, batch_size=60):
        _, idx, w = draw(priorities, batch_size, beta)
        idx, w = np.asarray(idx).astype(np.int64), _numbers(w)
        return [w[np.flatnonzero(idx == i)[0]].item() for i in range(3)]  # items 0, 1, 2 (each is drawn)

    def items_match():
        items, idx, _ = draw([1.0, 4.0, 9.0], 60, 1.0)
        return "match" if list(items) == ["abc"[i] for i in np.asarray(idx).astype(np.int64)] else "mismatch"

    # alpha .5: p^alpha = 1, 2, 3 (total 6); P = 1/6, 2/6, 3/6; N = 3 items (slot 3 of 4 is empty)
    return _run("replay sample", [
        # 60 equal slices of 0.1 mass: item 0 covers 10 of them, item 1 20, item 2 30
        _Case("priorities [1, 4, 9], alpha .5: counts in a batch of 60", counts, [10, 20, 30, 0], tol=1,
              hint="stratified: cut the total mass into batch_size equal slices, draw one point in each, find its leaf"),
        _Case("the items returned", items_match, "match", hint="items[k] must be the item at indices[k]"),
        # beta 1: (N P)^-1 = 2, 1, 2/3; divided by the largest, 2: 1, .5, .3333333
        _Case("the weight of each item at beta 1", lambda: weight_of_each([1.0, 4.0, 9.0], 1.0), [1.0, 0.5, 1 / 3],
              hint="w_i = (N P(i))^-beta, then divide by the largest possible weight"),
        # beta .4: (N P)^-.4 = 2^.4 = 1.3195079, 1, (2/3)^.4 = .8502; over 1.3195079: 1, .7578583, .6443940
        _Case("the weight of each item at beta .4", lambda: weight_of_each([1.0, 4.0, 9.0], 0.4), [1.0, 0.7578583, 0.6443940]),
        _Case("the weight of each item at beta 0", lambda: weight_of_each([1.0, 4.0, 9.0], 0.0), [1.0, 1.0, 1.0]),
        # a 4th item with priority 1e-6 (p^alpha = .001) is rarely drawn but still sets the normaliser:
        # w_i = (p_i^alpha / .001)^-1 = .001 / (1, 2, 3)
        _Case("priorities [1, 4, 9, 1e-6], beta 1 (items 0..2)", lambda: weight_of_each([1.0, 4.0, 9.0, 1e-6], 1.0, 30),
              [1e-3, 5e-4, 1e-3 / 3], tol=1e-7,
              hint="normalise by the largest weight in the buffer (its smallest priority), not in the batch"),
    ])


# =============================================================================== 08 rStar

def check_parse_step(parse_step) -> bool:
    """`parse_step(generated) -> (comment, code) | None` as nanoo1.rstar.parse_step: a step is a `#` comment line,
    at least one line of code, then `<end_of_step>`; the comment loses its `#` and surrounding spaces, the code
    its trailing blank lines; whatever follows the delimiter (an observation) is ignored; anything else is None."""
    _callable(parse_step, "check_parse_step")

    def parsed(text):
        return lambda: repr(parse_step(text))

    return _run("parse_step", [
        _Case("'# Step 1: She buys 5 more.\\nx1 = 7 + 5\\n<end_of_step>'",
              parsed("# Step 1: She buys 5 more.\nx1 = 7 + 5\n<end_of_step>"), repr(("Step 1: She buys 5 more.", "x1 = 7 + 5")),
              hint="return (comment without '# ', code) as a tuple of two strings"),
        _Case("the same followed by '\\n<output>12</output>'",
              parsed("# Step 1: She buys 5 more.\nx1 = 7 + 5\n<end_of_step>\n<output>12</output>"),
              repr(("Step 1: She buys 5 more.", "x1 = 7 + 5")), hint="ignore what follows <end_of_step>"),
        _Case("two lines of code", parsed("# add\na = 1\nb = a + 2\n<end_of_step>"), repr(("add", "a = 1\nb = a + 2")),
              hint="the code is every line after the comment, joined by '\\n'"),
        _Case("a leading newline and a blank line before the delimiter", parsed("\n#  c \nx = 1\n\n<end_of_step>"),
              repr(("c", "x = 1")), hint="strip newlines around the body, spaces around the comment, trailing blank lines of the code"),
        _Case("no <end_of_step> (cut at the token limit)", parsed("# Step 1: add\nx1 = 7 + 5\n"), "None",
              hint="a step not closed by <end_of_step> is not a step"),
        _Case("no comment line", parsed("x1 = 7 + 5\n<end_of_step>"), "None", hint="the first line must start with '#'"),
        _Case("a comment and no code", parsed("# Step 1: think hard\n<end_of_step>"), "None",
              hint="a step needs at least one line of code"),
        _Case("a comment and a blank line", parsed("# Step 1: think hard\n   \n<end_of_step>"), "None"),
    ])


def _searched_code_tree():
    """A searched tree with Q values (node.value) and terminals, ids in the comments:

        root 0 ─ s1 (Q .6) ─ t10 success, t11 failure       s5 (Q -.8) ─ t14 failure
               ├ s2 (Q .2) ─ x12 (Q .3) ─ t13 success        s6 (Q -.1) ─ t15, t16 failure
               ├ s3 (Q .9, itself a success)                s7 (no Q, itself a failure)
               ├ s4 (Q -.5, itself a failure)               s8 (Q -.9) ─ t17 success, t18 failure
                                                            s9 (Q .99, never expanded)
    """
    tree = Tree("Q")
    top = {}
    for i, (q, terminal) in enumerate([(0.6, None), (0.2, None), (0.9, "success"), (-0.5, "failure"), (-0.8, None),
                                       (-0.1, None), (None, "failure"), (-0.9, None), (0.99, None)], start=1):
        top[i] = tree.add(tree.root, "<expansion>", f"s{i}", value=q, terminal=terminal)
    tree.add(top[1], "<conclusion>", "t10", value=1.0, terminal="success")
    tree.add(top[1], "<conclusion>", "t11", value=-1.0, terminal="failure")
    x = tree.add(top[2], "<expansion>", "x12", value=0.3)
    tree.add(x, "<conclusion>", "t13", value=1.0, terminal="success")
    tree.add(top[5], "<conclusion>", "t14", value=-1.0, terminal="failure")
    tree.add(top[6], "<conclusion>", "t15", value=-1.0, terminal="failure")
    tree.add(top[6], "<conclusion>", "t16", value=-1.0, terminal="failure")
    tree.add(top[8], "<conclusion>", "t17", value=1.0, terminal="success")
    tree.add(top[8], "<conclusion>", "t18", value=-1.0, terminal="failure")
    return tree


def check_preference_pairs(preference_pairs) -> bool:
    """`preference_pairs(tree, per_side=2) -> [(positive, negative), ...]` as nanoo1.rstar.preference_pairs: per
    parent, the per_side children with the highest Q (.value) among those with a "success" terminal in their
    subtree (themselves included), each paired with the per_side children with the lowest Q among those whose
    subtree has "failure" terminals and no success. Children without a value are skipped. The pairs are
    compared as sorted (positive id, negative id)."""
    _callable(preference_pairs, "check_preference_pairs")

    def pairs(per_side=None):
        tree = _searched_code_tree()
        out = preference_pairs(tree) if per_side is None else preference_pairs(tree, per_side)
        return sorted([p.id, n.id] for p, n in out)

    # root: positives by Q: s3 .9, s1 .6, s2 .2, s8 -.9 (a success below it counts); s9 reached no terminal
    #       negatives by Q: s5 -.8, s4 -.5, s6 -.1 (s7 has no Q);  s1: t10 vs t11;  s8: t17 vs t18
    return _run("preference_pairs", [
        _Case("the tree in nanoo1.exercises._searched_code_tree, per_side=2 (default)", lambda: pairs(),
              [[1, 4], [1, 5], [3, 4], [3, 5], [10, 11], [17, 18]],
              hint="positives: a success anywhere below (the node itself included); negatives: failures below and no success"),
        _Case("per_side=1", lambda: pairs(1), [[3, 5], [10, 11], [17, 18]],
              hint="the best positive is the one with the highest Q, the best negative the one with the lowest"),
        _Case("per_side=4", lambda: pairs(4), [[p, n] for p in (1, 2, 3, 8) for n in (4, 5, 6)] + [[10, 11], [17, 18]],
              hint="s8 has a success below it, so it is a positive (with a low Q), never a negative; s9 reached no terminal"),
    ])


def check_ppm_pair_loss(ppm_pair_loss) -> bool:
    """`ppm_pair_loss(r_pos, r_neg)` as nanoo1.rstar.ppm_pair_loss (rStar-Math sec. 3.3, Bradley-Terry):
    -mean over pairs of log sigmoid(r_pos - r_neg), for scores (P,)."""
    _callable(ppm_pair_loss, "check_ppm_pair_loss")
    t = torch.tensor

    def grad():
        r_pos = t([0.0, 2.0, 0.0], requires_grad=True)
        _first(ppm_pair_loss(r_pos, t([0.0, 0.0, 1.0]))).backward()
        return r_pos.grad

    # differences d = (0, 2, -1): -log sigmoid(d) = log(1 + e^-d) = (.6931472, .1269280, 1.3132617), mean .7111123
    return _run("ppm_pair_loss", [
        _Case("r_pos [0, 2, 0], r_neg [0, 0, 1]", lambda: ppm_pair_loss(t([0.0, 2.0, 0.0]), t([0.0, 0.0, 1.0])), 0.7111123,
              hint="-log sigmoid(r_pos - r_neg), averaged over the pairs (the positive's score comes first)"),
        # d loss / d r_pos = -sigmoid(-d) / 3 = -(.5, .1192029, .7310586) / 3
        _Case("the gradient with respect to r_pos", grad, [-0.1666667, -0.0397343, -0.2436862],
              hint="pairs the model already orders right (large d) get little gradient"),
        _Case("r_pos [.5], r_neg [.5] (a tie)", lambda: ppm_pair_loss(t([0.5]), t([0.5])), 0.6931472),  # log 2
        # d = -120: log(1 + e^120) = 120 (to float precision); sigmoid(-120) is 0 in float32, so log(sigmoid) is -inf
        _Case("r_pos [-60], r_neg [60]", lambda: ppm_pair_loss(t([-60.0]), t([60.0])), 120.0, tol=1e-4,
              hint="compute log sigmoid in one stable step (F.logsigmoid), not log(sigmoid(d))"),
    ])


# =============================================================================== 06 budgeted rollouts

class _ThinkingLM:
    """A stand-in for a Gemma2 that thinks for a scripted number of tokens, for the engine's greedy decoding.

    Vocabulary of 32: <pad> 0, <eos> 1, <bos> 2, </think> 4, thinking words 5..9, answer words 10..12, and
    plan tokens: a prompt holding 20 + n asks for n thinking tokens and then </think>; one holding 30 + n
    asks for n thinking tokens and then <eos> (it gives up while thinking). After a </think> anywhere past
    the plan, the model answers 10, 11, 12, <eos>. The next token depends only on the tokens so far, so a
    forced </think> changes what follows only if it was fed to the model. The cache keeps each row's ids.
    """

    vocab_size, think_end = 32, 4

    def __init__(self):
        self.config = SimpleNamespace(eos_token_id=1, pad_token_id=0, vocab_size=self.vocab_size, final_logit_softcapping=None)
        self.model = SimpleNamespace(embed_tokens=SimpleNamespace(weight=torch.zeros(1)))  # where the engine puts its generator

    def next_token(self, seq: list[int]) -> int:
        plans = [i for i, tok in enumerate(seq) if tok >= 20]
        if not plans:
            return 2
        plan, after = seq[plans[0]], seq[plans[0] + 1:]
        if self.think_end in after:
            answered = len(after) - 1 - after.index(self.think_end)
            return 10 + answered if answered < 3 else 1
        need = plan - 20 if plan < 30 else plan - 30
        if len(after) < need:
            return 5 + len(after) % 5
        return self.think_end if plan < 30 else 1

    class Cache:
        def __init__(self, seqs):
            self.seqs = seqs
            self.lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)  # (B,)

        def fork(self, rows):
            return type(self)([list(self.seqs[int(r)]) for r in rows])

        def keep(self, rows):
            kept = self.fork(rows)
            self.seqs, self.lengths = kept.seqs, kept.lengths

    def new_cache(self, batch_size, max_len):
        return self.Cache([[] for _ in range(batch_size)])

    def hidden_states(self, input_ids, attention_mask=None, positions=None, cache=None):
        B, T = input_ids.shape
        valid = torch.ones(B, T, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        hidden = torch.zeros(B, T, self.vocab_size)  # (B, T, V): one-hot of the next token
        for b in range(B):
            seq = list(cache.seqs[b]) if cache is not None else []
            for t in range(T):
                if valid[b, t]:
                    seq.append(int(input_ids[b, t]))
                hidden[b, t, self.next_token(seq)] = 1.0
            if cache is not None:
                cache.seqs[b] = seq
                cache.lengths[b] = len(seq)
        return hidden

    def logits(self, hidden):
        return 10.0 * hidden  # (..., V)

    def __call__(self, input_ids, attention_mask=None, *args, **kwargs):
        return self.logits(self.hidden_states(input_ids, attention_mask))  # (B, T, V)

    forward = __call__


def check_generate_budgeted(generate_budgeted) -> bool:
    """`generate_budgeted(model, prompts, think_budget, solution_budget, think_end_id, temperature=0.0, ...,
    num_samples=1, stop_token_ids=None, ...)` -> Completions with .tokens and .forced, as
    nanoo1.engine.generate_budgeted (Elastic Reasoning): sample up to think_budget tokens, stopping at
    </think>; if it was not sampled, append it with forced = True; then up to solution_budget more tokens,
    stopping at a stop token. A stop token while thinking ends the row. The check runs it greedily on a
    stand-in model (`nanoo1.exercises._ThinkingLM`, </think> = 4, <eos> = 1) that works with nanoo1.engine."""
    _callable(generate_budgeted, "check_generate_budgeted")

    def rows(prompts, think, solution, **kw):
        out = generate_budgeted(_ThinkingLM(), prompts, think, solution, _ThinkingLM.think_end, stop_token_ids=[1], **kw)
        return "; ".join(f"tokens {list(r.tokens)}, forced at {[j for j, f in enumerate(r.forced) if f]}" for r in out)

    answer = "10, 11, 12, 1"  # the scripted answer after </think>, ended by <eos>
    return _run("generate_budgeted", [
        # plan 23: think 5, 6, 7, then </think> (the 4th token) within the budget of 8
        _Case("a prompt that thinks 3 tokens, think_budget 8", lambda: rows([[2, 23]], 8, 8),
              f"tokens [5, 6, 7, 4, {answer}], forced at []",
              hint="stop thinking when the model samples </think>, then answer after it in the same sequence"),
        # plan 26: 6 thinking tokens wanted, 4 allowed: </think> is forced at index 4
        _Case("a prompt that thinks 6 tokens, think_budget 4", lambda: rows([[2, 26]], 4, 8),
              f"tokens [5, 6, 7, 8, 4, {answer}], forced at [4]",
              hint="out of budget: append </think> with forced = True and feed it to the model before the answer"),
        # budget 3 and 3 thinking tokens: the budget is spent before the model could write </think> itself
        _Case("a prompt that thinks 3 tokens, think_budget 3", lambda: rows([[2, 23]], 3, 8),
              f"tokens [5, 6, 7, 4, {answer}], forced at [3]",
              hint="think_budget counts every thinking token: after 3 tokens without </think> it is forced"),
        _Case("think_budget 0", lambda: rows([[2, 23]], 0, 8), f"tokens [4, {answer}], forced at [0]",
              hint="with no thinking budget, </think> is forced at once"),
        _Case("think_budget 8, solution_budget 2", lambda: rows([[2, 23]], 8, 2), "tokens [5, 6, 7, 4, 10, 11], forced at []",
              hint="solution_budget counts the tokens sampled after </think>"),
        _Case("a prompt that thinks 6 tokens, think_budget 4, solution_budget 2", lambda: rows([[2, 26]], 4, 2),
              "tokens [5, 6, 7, 8, 4, 10, 11], forced at [4]",
              hint="the forced </think> belongs to neither budget: the answer still gets solution_budget tokens"),
        # plan 32: two thinking tokens, then <eos>
        _Case("a prompt that stops (<eos>) after 2 thinking tokens", lambda: rows([[2, 32]], 8, 8), "tokens [5, 6, 1], forced at []",
              hint="a stop token while thinking ends the row: no </think> is forced and there is no answer"),
        _Case("prompts [[2, 23], [2, 2, 26]], num_samples 2, think_budget 4", lambda: rows([[2, 23], [2, 2, 26]], 4, 8, num_samples=2),
              "; ".join([f"tokens [5, 6, 7, 4, {answer}], forced at []"] * 2 + [f"tokens [5, 6, 7, 8, 4, {answer}], forced at [4]"] * 2),
              hint="num_samples rows per prompt, prompt i's at rows i*n .. (i+1)*n - 1; prompts may differ in length"),
    ])


def check_cosine_length_reward(cosine_length_reward) -> bool:
    """`cosine_length_reward(correct, length, max_length, r0_correct=2.0, rL_correct=1.0, r0_wrong=-10.0,
    rL_wrong=0.0, r_exceed=-10.0)` as nanoo1.rewards.cosine_length_reward (Yeo et al. 2025):
    r = r_L + 0.5 (r_0 - r_L)(1 + cos(pi length / max_length)), r_exceed when length >= max_length;
    Python numbers in, a float out; tensors (B,) in, a tensor (B,) out."""
    _callable(cosine_length_reward, "check_cosine_length_reward")
    t = torch.tensor

    def r(correct, length, max_length=100, **kw):
        return cosine_length_reward(correct, length, max_length, **kw)

    # correct: 1 + .5 (2 - 1)(1 + cos(pi l / 100));  wrong: 0 + .5 (-10 - 0)(1 + cos(pi l / 100))
    # cos(pi/4) = .7071068, cos(pi/2) = 0, cos(3pi/4) = -.7071068
    return _run("cosine_length_reward", [
        _Case("correct, length 0, 25, 50, 75 (max 100)", lambda: [r(True, n) for n in (0, 25, 50, 75)],
              [2.0, 1.8535534, 1.5, 1.1464466],
              hint="correct: from r0 = 2 at length 0 down to rL = 1 at max_length (shorter is better)"),
        _Case("wrong, length 0, 25, 50, 75 (max 100)", lambda: [r(False, n) for n in (0, 25, 50, 75)],
              [-10.0, -8.5355339, -5.0, -1.4644661],
              hint="wrong: from r0 = -10 at length 0 up to rL = 0 at max_length (a long try is less bad)"),
        _Case("length 100 and 130 with max 100 (correct and wrong)",
              lambda: [r(True, 100), r(False, 100), r(True, 130), r(False, 130)], [-10.0, -10.0, -10.0, -10.0],
              hint="a response that reaches max_length (length >= max_length) gets r_exceed, correct or not"),
        # max 40: correct, length 10: 1 + .5 (1 + cos(pi/4)) = 1.8535534
        _Case("correct, length 10, max 40", lambda: r(True, 10, 40), 1.8535534, hint="the angle is pi * length / max_length"),
        # r0_correct 4, rL_correct 0, length 50: 0 + .5 * 4 * (1 + 0) = 2;  r_exceed -3 at length 100
        _Case("r0_correct=4, rL_correct=0: length 50, and r_exceed=-3 at length 100",
              lambda: [r(True, 50, r0_correct=4.0, rL_correct=0.0), r(True, 100, r_exceed=-3.0)], [2.0, -3.0]),
        _Case("tensors: correct [True, False, True], lengths [25, 75, 100]",
              lambda: r(t([True, False, True]), t([25, 75, 100])), [1.8535534, -1.4644661, -10.0],
              hint="work elementwise on tensors (torch.cos, torch.where), one reward per response"),
        _Case("a Python float out for Python numbers in", lambda: type(r(True, 25)).__name__, "float",
              hint="return a float (e.g. .item()) when neither argument is a tensor"),
    ])


# =============================================================================== 09 self-play

def _self_play_tree():
    """A searched tree for Mia (7 + 5 - 3 = 9), ids in the comments, terminals checked against 9:

        root 0 ─ 1 "7 + 5 = 12" ─ 3 success, 4 failure, 5 "12 - 3 = 9" (no terminal below), 6 failure
               ├ 2 "7 + 5 = 13" ─ 8 "13 - 4 = 9" ─ 10 success          9 failure
               └ 7 failure (a conclusion right away)
    """
    tree = Tree("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?")
    box = "The answer is \\boxed{{{}}}".format
    a1 = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    a2 = tree.add(tree.root, "<expansion>", "7 + 5 = 13")
    tree.add(a1, "<conclusion>", box(9), terminal="success")
    tree.add(a1, "<conclusion>", box(12), terminal="failure")
    tree.add(a1, "<expansion>", "12 - 3 = 9")
    tree.add(a1, "<conclusion>", box(15), terminal="failure")
    tree.add(tree.root, "<conclusion>", box(7), terminal="failure")
    c = tree.add(a2, "<expansion>", "13 - 4 = 9")
    tree.add(a2, "<conclusion>", box(10), terminal="failure")
    tree.add(c, "<conclusion>", box(9), terminal="success")
    return tree


def check_success_rates(success_rates) -> bool:
    """`success_rates(tree) -> {node id: rate}` as nanoo1.selfplay.success_rates: for every node with judged
    terminals (.terminal "success" or "failure") in its subtree, itself included (the root's own terminal,
    if any, is not counted), (successes + 1/2) / (terminals + 1). Nodes with none below them get no entry."""
    _callable(success_rates, "check_success_rates")

    def rates(tree, ids):
        out = success_rates(tree)
        return [out[i] for i in ids]

    def keys(tree):
        return repr(sorted(success_rates(tree)))

    def single():
        tree = Tree("Q")
        tree.add(tree.root, "<conclusion>", "\\boxed{1}", terminal="success")
        return tree

    # terminals below each node (s = successes, n = all): root s 2 (3, 10) of n 6 (3, 4, 6, 7, 9, 10) -> 2.5/7
    # 1: s 1 of 3 (3, 4, 6) -> 1.5/4 = .375;  2: s 1 of 2 (9, 10) -> 1.5/3 = .5;  8: s 1 of 1 -> 1.5/2 = .75
    # a terminal counts for itself: success 1.5/2 = .75, failure .5/2 = .25
    return _run("success_rates", [
        _Case("nodes 0, 1, 2, 8 of the tree in nanoo1.exercises._self_play_tree", lambda: rates(_self_play_tree(), [0, 1, 2, 8]),
              [2.5 / 7, 0.375, 0.5, 0.75],
              hint="count every terminal in the node's subtree, however deep, then (s + 1/2) / (n + 1)"),
        _Case("the terminals 3, 4, 6, 7, 9, 10 of the same tree", lambda: rates(_self_play_tree(), [3, 4, 6, 7, 9, 10]),
              [0.75, 0.25, 0.25, 0.25, 0.25, 0.75], hint="a terminal's own outcome counts for it: (1 + 1/2) / 2 or (0 + 1/2) / 2"),
        _Case("the ids that get a rate", lambda: keys(_self_play_tree()), repr([0, 1, 2, 3, 4, 6, 7, 8, 9, 10]),
              hint="node 5 has no terminal below it: leave it out (an unjudged leaf is not a failure)"),
        _Case("root -> one success", lambda: rates(single(), [0, 1]), [0.75, 0.75]),
        _Case("a tree without terminals (the ids)", lambda: keys(Tree("Q")), "[]"),
    ])


def _lucky_tree():
    """Mia again (answer 9), successes 3, 6, 8, 10, 12; only 3 and 12 have every equation on their path right:

        root 0 ─ 1 "7 + 5 = 12" ─ 2 "12 - 3 = 9"  ─ 3 success, 8 "12 - 3 = 8, so the answer is 9" success
               │                ├ 9 "12 * 2 = 25" ─ 10 success
               │                └ 11 "12 / 4 = 3" ─ 12 success
               └ 4 "7 + 5 = 13" ─ 5 "13 - 4 = 9"  ─ 6 success
                                └ 7 failure
    """
    tree = Tree("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?")
    box = "The answer is \\boxed{9}"
    a = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    b = tree.add(a, "<expansion>", "12 - 3 = 9")
    tree.add(b, "<conclusion>", box, terminal="success")
    wrong = tree.add(tree.root, "<expansion>", "7 + 5 = 13")
    tree.add(tree.add(wrong, "<expansion>", "13 - 4 = 9"), "<conclusion>", box, terminal="success")
    tree.add(wrong, "<conclusion>", "The answer is \\boxed{13}", terminal="failure")
    tree.add(b, "<conclusion>", "12 - 3 = 8, so the answer is \\boxed{9}", terminal="success")
    tree.add(tree.add(a, "<expansion>", "12 * 2 = 25"), "<conclusion>", box, terminal="success")
    tree.add(tree.add(a, "<expansion>", "12 / 4 = 3"), "<conclusion>", box, terminal="success")
    return tree


def check_relabel_lucky(relabel_lucky) -> bool:
    """`relabel_lucky(tree) -> int` as nanoo1.selfplay.relabel_lucky: every "success" terminal whose
    root-to-leaf path (tree.path(leaf), the leaf included) holds a wrong `a op b = c` equation
    (nanoo1.rewards.equations_hold is False for some node's text) becomes a "failure"; returns how many."""
    _callable(relabel_lucky, "check_relabel_lucky")

    def single_success():
        tree = Tree("Mia has 7 apples. How many?")
        tree.add(tree.root, "<conclusion>", "The answer is \\boxed{7}", terminal="success")
        return tree

    def after():
        tree = _lucky_tree()
        n = relabel_lucky(tree)
        return [n] + [{"success": 1, "failure": 0}.get(tree.node(i).terminal, -1) for i in (3, 6, 7, 8, 10, 12)]

    return _run("relabel_lucky", [
        # lucky: 6 (7 + 5 = 13 above it), 8 (12 - 3 = 8 in itself), 10 (12 * 2 = 25 above it)
        _Case("the tree in nanoo1.exercises._lucky_tree: [count, then 1 = success / 0 = failure for nodes 3, 6, 7, 8, 10, 12]",
              after, [3, 1, 0, 0, 0, 0, 1],
              hint="check every node on the path, the conclusion itself included; a failure stays a failure and is not counted"),
        _Case("root -> a success without equations (count)", lambda: relabel_lucky(single_success()), 0),
    ])
