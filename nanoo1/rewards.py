"""Shaping rewards for math reasoning (Yeo et al. 2025, "Demystifying Long Chain-of-Thought Reasoning in
LLMs"): whether a response keeps its format, a cosine length reward per response, and an n-gram repetition
penalty per token. The verifiable reward, whether the final answer is right, is `answers.check`.
"""

import math
import re

import torch

from nanoo1.answers import last_boxed


def _has_boxed_answer(text: str) -> bool:
    return bool((last_boxed(text) or "").strip())


def format_reward(response: str, style: str = "longcot") -> float:
    """1.0 if `response` is well-formed in the given response format, else 0.0.

    style="longcot", the thought-tree format: the `<start_of_thought>` / `<end_of_thought>` tags
      alternate, starting with a start tag (a response may open with an end tag when the prompt opened
      its first thought) and the last thought may be left open (generation stops at the end tag); the
      last thought begins with `<conclusion>` and holds a non-empty `\\boxed{...}`. A response without
      tags is read as the text of one thought. `\\box{...}` is not `\\boxed{...}`.
    style="elastic", Elastic Reasoning: exactly one `</think>`; before it at most one `<think>`, which
      must open the response (whitespace before it aside); after it a solution with no think tags and a
      non-empty `\\boxed{...}`.
    """
    if style == "longcot":
        tags = re.findall(r"<(start|end)_of_thought>", response)
        if tags[:1] == ["end"]:
            tags = ["start"] + tags
        if any(tag != ("start", "end")[i % 2] for i, tag in enumerate(tags)):
            return 0.0
        opened = response.rfind("<start_of_thought>")
        begin = 0 if opened < 0 else opened + len("<start_of_thought>")
        end = response.find("<end_of_thought>", begin)
        thought = response[begin : end if end >= 0 else len(response)]
        return float(thought.lstrip().startswith("<conclusion>") and _has_boxed_answer(thought))
    if style == "elastic":
        if response.count("</think>") != 1:
            return 0.0
        thinking, solution = response.split("</think>")
        opens = thinking.count("<think>")
        if "<think>" in solution or opens > 1 or (opens == 1 and not thinking.lstrip().startswith("<think>")):
            return 0.0
        return float(_has_boxed_answer(solution))
    raise ValueError(f"format_reward: style must be 'longcot' or 'elastic', got {style!r}")


def cosine_length_reward(correct, length, max_length: int, r0_correct: float = 2.0, rL_correct: float = 1.0,
                         r0_wrong: float = -10.0, rL_wrong: float = 0.0, r_exceed: float = -10.0, exceeded=None):
    """The cosine length-scaling reward (Yeo et al. 2025):

        r = r_L + 0.5 (r_0 - r_L) (1 + cos(pi * length / max_length))

    with (r_0, r_L) = (2, 1) when correct (shorter is better) and (-10, 0) when wrong (longer is less
    bad, so the model keeps thinking when unsure), and r_exceed = -10 when the response hit the limit:
    `exceeded` (B,) bool where the caller knows which responses were cut off unfinished (one that stopped
    on its own at exactly max_length tokens did not exceed it), else length >= max_length. Python numbers
    in, a float out; tensors in, a float tensor out (B,).
    """
    if max_length <= 0:
        raise ValueError(f"cosine_length_reward: max_length must be positive, got {max_length}")
    scalar = not isinstance(correct, torch.Tensor) and not isinstance(length, torch.Tensor)
    device = next((x.device for x in (correct, length) if isinstance(x, torch.Tensor)), None)
    correct = torch.as_tensor(correct, dtype=torch.bool, device=device)  # (B,)
    length = torch.as_tensor(length, dtype=torch.float64, device=device)  # (B,)
    if (length < 0).any():
        raise ValueError(f"cosine_length_reward: lengths must be >= 0, got {length.min().item()}")
    c = correct.double()  # (B,) 1 or 0, so the blends below pick one value exactly
    r0 = c * r0_correct + (1 - c) * r0_wrong  # (B,)
    rL = c * rL_correct + (1 - c) * rL_wrong  # (B,)
    r = rL + 0.5 * (r0 - rL) * (1 + torch.cos(math.pi * length / max_length))  # (B,)
    cut = length >= max_length if exceeded is None else torch.as_tensor(exceeded, dtype=torch.bool, device=device)
    r = torch.where(cut, torch.full_like(r, r_exceed), r)  # (B,)
    return r.item() if scalar else r.to(torch.get_default_dtype())


def repetition_penalty(token_ids, n: int = 40, penalty: float = -0.05) -> torch.Tensor:
    """Per-token repetition penalty (Yeo et al. 2025): (T,) float, `penalty` or 0 at each position.

    The n-gram starting at position s, ids[s : s+n], is a repeat when the same n tokens also start at
    some earlier position s' < s (the two may overlap). Every token of every repeat, positions
    s .. s+n-1, gets `penalty`, once however many repeats cover it. The first occurrence is never
    marked, and a sequence shorter than n gets no penalty.
    """
    if n <= 0:
        raise ValueError(f"repetition_penalty: n must be positive, got {n}")
    device = token_ids.device if isinstance(token_ids, torch.Tensor) else None
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    T = len(ids)
    cover = [0] * (T + 1)  # +1 at a repeat's start, -1 just past its end; the running sum counts covers
    seen = set()
    for s in range(T - n + 1):
        gram = tuple(ids[s : s + n])
        if gram in seen:
            cover[s] += 1
            cover[s + n] -= 1
        seen.add(gram)
    covered = torch.tensor(cover[:T], device=device).cumsum(0) > 0  # (T,)
    return torch.where(covered, penalty, 0.0).to(torch.get_default_dtype())
