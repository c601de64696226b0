"""Exercise checks of notebook 06 budgeted rollouts (notebooks/06_budgeted_rollouts.ipynb)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nanoo1.exercises._common import _Case, _run, _callable


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
