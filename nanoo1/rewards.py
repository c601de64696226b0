"""Rewards for math reasoning: answer extraction and checking, format, cosine length reward, repetition.

`check(response, ground_truth)` is the verifiable reward: 1 when the final answer of the response equals
the ground truth. Numbers compare by exact value (non-integers also within 1e-6 relative), so "1,234",
"$1234.00" and "\\frac{2468}{2}" are all 1234. The shaping terms follow Yeo et al. 2025, "Demystifying Long
Chain-of-Thought Reasoning in LLMs": a cosine length reward per response and an n-gram repetition
penalty per token.
"""

import math
import re
from fractions import Fraction

import torch

from nanoo1.steps import equations_hold  # the step checker, in its own module; its public name is here

# An unsigned number: "1,234" (groups of three only, so "1,2,3" is a list), "12", "3.5", ".5".
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+"
# A sign counts only where it cannot be a binary minus: not after a letter, digit or closing bracket.
_SIGN = r"(?:(?<![\w)}\]])[-+])?"
_TOKEN = re.compile(
    rf"{_SIGN}\\[dt]?frac\s*\{{\s*[-+]?(?:{_NUM})\s*\}}\s*\{{\s*[-+]?(?:{_NUM})\s*\}}"  # \frac{3}{4}
    rf"|{_SIGN}(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?"  # 12, -3.5, 1,234, 3/4
)
# a whole numeric answer: brackets, one number, an optional unit
_NUMERIC = re.compile(rf"[\s(\[{{]*(?P<number>{_TOKEN.pattern})[\s)\]}}]*(?:[A-Za-z][A-Za-z\s^/.\d]*)?")
_BOXED = re.compile(r"\\boxed\s*\{")
# the lookahead reads to the end of the line without consuming it, so a later "answer is" still matches
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)\s*:?(?=([^\n]*))", re.IGNORECASE)
_OUTPUT = re.compile(r"<output>(.*?)</output>", re.DOTALL)
_HASHES = re.compile(r"####([^\n]*)")
# LaTeX and currency decoration that never changes a value
_DROP = re.compile(r"\\[!,]|\\left|\\right|\\\$|\$|\\%|%|\^\s*\{?\\circ\}?|°")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\s*\{([^{}]*)\}")


def _clean(text: str) -> str:
    text = text.replace("\u2212", "-")  # unicode minus
    text = _TEXT.sub(r" \1 ", text)  # "5\text{ cm}" -> "5  cm "
    text = re.sub(r"\\[;:]|\\quad|~", " ", text)
    return _DROP.sub("", text)


def _token_value(token: str) -> Fraction | None:
    # one number, or a numerator and a denominator; each "-" in the token flips the sign
    parts = [Fraction(p.replace(",", "")) for p in re.findall(_NUM, token)]
    if len(parts) == 2 and parts[1] == 0:
        return None
    value = parts[0] / parts[1] if len(parts) == 2 else parts[0]
    return -value if token.count("-") % 2 else value


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` in text (braces balanced), or None."""
    found = None
    for m in _BOXED.finditer(text):
        depth = 1
        for j in range(m.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                found = text[m.end() : j]
                break
    return found


def _trim(answer: str) -> str | None:
    answer = answer.strip().rstrip(".").strip()
    return answer or None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, as written, or None when it states none.

    Tried in order, the last match in the text winning within each kind:
    0. rStar's `<output>...</output>` observation (what the final code step printed): its content;
    1. `\\boxed{...}` (nested braces allowed): its content;
    2. a GSM8K `#### ...` line: the rest of the line;
    3. "answer is ..." / "answer: ...": the first number after it on that line (else the words up to
       the end of the sentence);
    4. the last number anywhere: "1,234", "-3.5", "3/4", "\\frac{3}{4}".
    A trailing period is dropped. `parse_number` turns the result into a value.
    """
    if not text:
        return None
    outputs = _OUTPUT.findall(text)
    if outputs:
        return _trim(outputs[-1]) if outputs[-1].strip() else None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return _trim(boxed)
    hashes = [m.group(1) for m in _HASHES.finditer(text) if m.group(1).strip()]
    if hashes:
        return _trim(hashes[-1])
    stated = [m.group(1) for m in _ANSWER_IS.finditer(text) if m.group(1).strip()]
    if stated:
        number = _TOKEN.search(_clean(stated[-1]))
        return number.group(0).strip() if number else _trim(stated[-1].split(". ")[0])
    numbers = _TOKEN.findall(_clean(text))
    return numbers[-1].strip() if numbers else None


def parse_number(answer: str) -> Fraction | None:
    """The exact value of a numeric answer, or None if the answer is not a number.

    Currency, percent and degree signs, LaTeX spacing and `\\text{...}` are ignored, and after an "="
    only the right-hand side counts ("x = 5" is 5). What is left must be one number, in brackets or
    not, followed at most by a unit made of words, digits, "^" and "/" ("5 cm^2", "3/4 of the pie"):
    "2 + 3", "x+1" and "(3, 4)" are not numbers.
    """
    match = _NUMERIC.fullmatch(_clean(answer).rsplit("=", 1)[-1])
    return _token_value(match.group("number")) if match else None


def normalize_answer(answer: str) -> str:
    """A canonical key for an answer, for majority voting: a number as its exact fraction ("1,234.0" ->
    "1234", "0.75" -> "3/4"), anything else lower-cased without spaces or decoration."""
    value = parse_number(answer)
    if value is not None:
        return str(value)
    return re.sub(r"\s+", "", _clean(answer)).rstrip(".").lower()


def _reference_answer(ground_truth) -> str | None:
    if isinstance(ground_truth, (int, float, Fraction)):
        return str(Fraction(ground_truth))  # exact, and never in scientific notation
    if "####" in ground_truth:  # a whole GSM8K solution
        return _trim(ground_truth.rsplit("####", 1)[1])
    boxed = last_boxed(ground_truth)
    return _trim(boxed if boxed is not None else ground_truth)


def check(response: str, ground_truth, rel_tol: float = 1e-6) -> bool:
    """Whether the final answer of `response` (see `extract_answer`) equals `ground_truth`.

    ground_truth: a bare answer ("72", "3/4", 72), a text with a `\\boxed{}` answer, or a whole GSM8K
    solution ending in "#### 72".
    Two numbers are equal when their exact values are, or when one is not an integer and they agree
    within rel_tol (0.333333 matches 1/3, while 1450000 and 1450001 stay apart); two non-numbers when
    their `normalize_answer` keys are; a number never equals a non-number.
    """
    predicted, truth = extract_answer(response), _reference_answer(ground_truth)
    if predicted is None or truth is None:
        return False
    x, y = parse_number(predicted), parse_number(truth)
    if x is not None and y is not None:
        both_integers = x.denominator == 1 and y.denominator == 1
        return x == y or (not both_integers and math.isclose(x, y, rel_tol=rel_tol))
    if x is not None or y is not None:
        return False
    return normalize_answer(predicted) == normalize_answer(truth)


def _has_boxed_answer(text: str) -> bool:
    boxed = last_boxed(text)
    return boxed is not None and boxed.strip() != ""


def format_reward(response: str, style: str = "longcot") -> float:
    """1.0 if `response` is well-formed in the given response format, else 0.0.

    style="longcot", the thought-tree format: the `<start_of_thought>` / `<end_of_thought>` tags
      alternate, starting with a start tag (a response may open with an end tag when the prompt opened
      its first thought) and the last thought may be left open (generation stops at the end tag); the
      last thought begins with `<conclusion>` and holds a non-empty `\\boxed{...}`. A response without
      tags is read as the text of one thought. `\\box{...}` is not `\\boxed{...}`.
    style="elastic", Elastic Reasoning: exactly one `</think>`; before it at most one `<think>`, which
      must open the response; after it a solution with no think tags and a non-empty `\\boxed{...}`.
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
                         r0_wrong: float = -10.0, rL_wrong: float = 0.0, r_exceed: float = -10.0):
    """The cosine length-scaling reward (Yeo et al. 2025):

        r = r_L + 0.5 (r_0 - r_L) (1 + cos(pi * length / max_length))

    with (r_0, r_L) = (2, 1) when correct (shorter is better) and (-10, 0) when wrong (longer is less
    bad, so the model keeps thinking when unsure), and r_exceed = -10 when length >= max_length (the
    response hit the limit). Python numbers in, a float out; tensors in, a float tensor out (B,).
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
    r = torch.where(length >= max_length, torch.full_like(r, r_exceed), r)  # (B,)
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
