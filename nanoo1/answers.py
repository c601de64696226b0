"""Final answers of math responses: reading them out of a text, and checking them against the ground truth.

`check(response, ground_truth)` is the verifiable reward: True when the final answer of the response
(`extract_answer`) equals the ground truth, compared as MATH-style graders do: numbers by exact value
(non-integers also within 1e-6 relative), so "1,234", "$1234.00", "\\frac{2468}{2}" and "1.234 \\times 10^3" are
all 1234; lettered choices by letter; anything else as normalised text (`normalize_answer`, also the key of
majority votes). A reward reads every sampled text, so extraction and checking take time linear in the text and
never raise on it. The step checker, which judges the equations along the way, is `steps.equations_hold`.
"""

import math
import re
import unicodedata
from fractions import Fraction

from nanoo1.arith import evaluate, normalize

_VULGAR = "¼½¾⅐⅑⅒⅓⅔⅕⅖⅗⅘⅙⅚⅛⅜⅝⅞"  # Unicode's vulgar fractions (denominators at most 10; "⅟" is none)
# An unsigned number: "1,234" (groups of three only, so "1,2,3" is a list), "12", "3.5", ".5", "2½", "½".
_NUM = rf"(?:\d{{1,3}}(?:,\d{{3}})+(?!\d)|\d+)(?:\.\d+|[ \t]*[{_VULGAR}])?|\.\d+|[{_VULGAR}]"
# A sign counts only where it cannot be a binary minus: not after a letter, digit or closing bracket.
_SIGN = r"(?:(?<![\w)}\]])[-+])?"
_TOKEN = re.compile(
    rf"{_SIGN}\\[dt]?frac\s*\{{\s*[-+]?(?:{_NUM})\s*\}}\s*\{{\s*[-+]?(?:{_NUM})\s*\}}"  # \frac{3}{4}
    rf"|{_SIGN}(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?"  # 12, -3.5, 1,234, 3/4
)
MAX_ANSWER = 1000  # characters of an answer read as a number (longer ones compare as text)
BOX_DEPTH = 5  # brace levels of a \boxed{...}, its own included (\boxed{\frac{\sqrt{3}}{2}} has 3)


def _balanced(depth: int) -> str:
    """A regex for text whose braces are balanced and nested at most `depth` deep. Each character has one
    way to match, so a failed match backs off in linear time."""
    inner = r"[^{}]*"
    for _ in range(depth):
        inner = rf"(?:[^{{}}]|\{{{inner}\}})*"
    return inner


_BOX_OPEN = re.compile(r"\\boxed\s*\{")
_BOX_BODY = re.compile(rf"({_balanced(BOX_DEPTH - 1)})\}}")  # the content and the closing brace
# "answer is" / "answer:", then white space, a colon and white space (line breaks included), and something
# other than a colon must follow. Where nothing does, each shorter run of the white space fails at its first
# character, so a failed match takes linear time.
_ANSWER_IS = re.compile(r"answer\s*(?:is\b|:)\s*(?::\s*)?(?=[^\s:])", re.IGNORECASE)
_HASHES = re.compile(r"####([^\n]*)")
# LaTeX and currency decoration that never changes a value (percent signs: _PERCENT)
_DROP = re.compile(r"\\[!,]|\\left|\\right|\\\$|\$|\^\s*\{?\\circ\}?|°")
_PERCENT = re.compile(r"\\?%")
_SCALE_WORD = r"(?i:thousand|million|billion|trillion)\b"
# a number as an answer: with its exponent ("3e5", "3e5."), and its percent sign or scale word ("1.5 million"), if any
_NUMBER = re.compile(rf"(?:{_TOKEN.pattern})(?:[eE][+-]?\d+(?!\w|\.\d))?(?:\s*%|\s*{_SCALE_WORD})?")
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_EXPONENT = re.compile(r"(?<=\d)[eE]([+-]?\d+)(?!\w|\.\d)")  # scientific notation: 1e5, 2.5E-3
# a number's scale word: "1.5 million" is 1500000, as the MATH grader of Lightman et al. (2023) reads million,
# billion and trillion (and here thousand too)
_SCALE = re.compile(rf"(?<=[\d}})])\s*({_SCALE_WORD})")
_POWER = {"thousand": 3, "million": 6, "billion": 9, "trillion": 12}
_UNIT = re.compile(r"[A-Za-z][A-Za-z\s^/.\d]*")  # "cm", "cm^2", "m/s", "of the pie", "dollars."
# a vulgar fraction after a whole number ("2½", "1,234 ½"), or after no number or bracket (" ½"; "2.5½" is none)
_MIXED_VULGAR = re.compile(rf"(?<![\d.,])(\d+(?:,\d{{3}})*)[ \t]*([{_VULGAR}])"
                           rf"|(?<![\d.,)\]}}%{_VULGAR}\s])([ \t]*)([{_VULGAR}])")
_CHOICE = re.compile(r"\(([A-Za-z])\)(?:\s.*)?|([A-Za-z])[.):]?", re.DOTALL)  # "(B)", "(b) 12", "B", "b.", "B)"


def _clean(text: str, percent: bool = False) -> str:
    """`text` without decoration: percent signs dropped, or with `percent` kept as a plain "%"."""
    text = text.replace("\u2212", "-")  # unicode minus
    text = _TEXT.sub(r" \1 ", text)  # "5\text{ cm}" -> "5  cm "
    text = re.sub(r"\\[;:]|\\quad|~", " ", text)
    return _PERCENT.sub("%" if percent else "", _DROP.sub("", text))


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` in text (braces balanced, at most BOX_DEPTH levels of
    them with its own), or None.

    Boxes are tried from the last one back. A box that does not close before the next box (the nearest
    later one that did not close) never closes, or nests too deep, so each part of the text is read once.
    """
    search, end = text.rfind("}"), len(text)  # a box opens before the last "}"; one open at `end` never closes
    while search > 0:
        search = text.rfind("\\boxed", 0, search)
        opening = _BOX_OPEN.match(text, search) if search >= 0 else None
        if opening is not None:
            body = _BOX_BODY.match(text, opening.end(), end)
            if body is not None:
                return body.group(1)
            end = search
    return None


def _last_output(text: str) -> str | None:
    """The content of rStar's last `<output>...</output>`: between the last `</output>` and the nearest
    `<output>` before it."""
    end = text.rfind("</output>")
    start = text.rfind("<output>", 0, end) if end >= 0 else -1
    return text[start + len("<output>"):end] if start >= 0 else None


def _last_hashes(text: str) -> str | None:
    """The rest of the last GSM8K `#### ...` line with text on it, or None."""
    hashes = [m.group(1) for m in _HASHES.finditer(text) if m.group(1).strip()]
    return hashes[-1] if hashes else None


def _trim(answer: str) -> str | None:
    return answer.strip().rstrip(".").strip() or None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, as written, or None when it states none.

    Tried in order, the last match in the text winning within each kind:
    0. rStar's `<output>...</output>` observation (what the final code step printed): its last line;
    1. `\\boxed{...}` (nested braces allowed): its content;
    2. a GSM8K `#### ...` line: the rest of the line;
    3. "answer is ..." / "answer: ...": the first number on the rest of its line, or on the next line
       with text when nothing follows on its own (else the words up to the end of the sentence); the
       statement up to the end of its clause when it is worth another value ("20 + 5 = 25", "2^{10}",
       "1 1/2 cups"); "answer isn't" states none, nor does "answer is:" with nothing after it;
    4. the last number anywhere: "1,234", "-3.5", "3/4", "\\frac{3}{4}", "3e5", "3¾".
    A number keeps its percent sign ("50%"). A trailing period is dropped. An empty last box states none,
    and so does a `\\boxed{` left open after it (the response was cut off inside its answer).
    `parse_number` turns the result into a value. Linear in the text.
    """
    if not text:
        return None
    output = _last_output(text)
    if output is not None:
        return _trim(output.strip().rpartition("\n")[2])
    opened = text.rfind("\\boxed")
    if opened >= 0 and _BOX_OPEN.match(text, opened):  # the last box, read once: left open, it states none
        boxed = last_boxed(text[opened:])
        if boxed is None:
            return None
    else:
        boxed = last_boxed(text)
    if boxed is not None:  # an empty box states none
        return _trim(boxed)
    hashes = _last_hashes(text)
    if hashes is not None:
        return _trim(hashes)
    stated = None
    for stated in _ANSWER_IS.finditer(text):
        pass
    if stated is not None:
        end = text.find("\n", stated.end())
        line = text[stated.end():end if end >= 0 else len(text)]
        number = _NUMBER.search(_clean(line, percent=True))
        clause = _trim(re.split(r"[.,;]\s", line, maxsplit=1)[0]) or ""  # "16 - 3 - 4 = 9 eggs": 9, not 16
        if parse_number(clause) not in (None, number and parse_number(number.group(0))):  # worth another value
            return clause
        return number.group(0).strip() if number else _trim(line.split(". ")[0])
    return _last_number(text)


def _last_number(text: str) -> str | None:
    """The last number of the text ("1,234", "-3.5", "3/4", "\\frac{3}{4}", "3¾"), read around its last digit or
    vulgar fraction; None when it has none, or when the last number is longer than MAX_ANSWER characters."""
    digit = re.search(rf"[\d{_VULGAR}]", text[::-1])  # any script's digits, as _NUMBER reads them ("１８")
    if digit is None:
        return None
    last = len(text) - 1 - digit.start()
    lo = max(0, last - MAX_ANSWER)
    numbers = list(_NUMBER.finditer(_clean(text[lo:last + 16], percent=True)))  # "\\frac{3}{4}": the brace after the 4
    if not numbers or (lo > 0 and numbers[-1].start() == 0):
        return None
    return numbers[-1].group(0).strip()


def parse_number(answer: str) -> Fraction | None:
    """The exact value of a numeric answer, or None if the answer is not a number.

    Currency, percent and degree signs, LaTeX spacing and `\\text{...}` are dropped, and after an "="
    only the right-hand side counts ("x = 5" is 5). What is left must be arithmetic on numbers
    (`arith.evaluate`: "1,234", "-3.5", "\\frac{3}{4}", "\\dfrac{3}{4}", "2^{10}", "3 \\times 10^5", "2.5e3",
    "1.5 million", "2 + 3", "1 1/2"; vulgar fractions: "⅓" is 1/3, "2½" and "2 ½" 5/2), followed at most by a
    unit made of words, digits, "^" and "/" ("5 cm^2", "3/4 of the pie"). "x+1", "(3, 4)", "\\sqrt{2}", "B",
    "2.5½" and answers longer than MAX_ANSWER characters are not numbers.
    """
    if len(answer) > MAX_ANSWER:
        return None
    text = _MIXED_VULGAR.sub(_vulgar, _clean(answer).rsplit("=", 1)[-1])
    text = re.sub(r"^\s*([-+])\s+", r"\1", normalize(text))  # "- 5" is -5
    text = _EXPONENT.sub(r"*10^(\1)", text)  # "2.5e3" is 2500, not 2.5 with a unit "e3"
    text = _SCALE.sub(lambda m: f"*10^{_POWER[m.group(1).lower()]}", text)  # "1.5 million" is 1500000, not 1.5
    unit = re.search(r"[A-Za-z]", text)
    if unit is not None and not _UNIT.fullmatch(text, unit.start()):
        return None
    return evaluate(text[:unit.start()] if unit is not None else text)


def _vulgar(match: re.Match) -> str:
    """A vulgar fraction as arithmetic: "2½" -> "(2+1/2)", " ½" -> " (1/2)"."""
    whole, fraction, space, alone = match.groups()
    value = Fraction(unicodedata.numeric(fraction or alone)).limit_denominator(10)  # exact: ⅓ is 1/3
    return f"({whole}+{value})" if whole else f"{space}({value})"


def _choice(answer: str) -> str | None:
    """The letter of a lettered choice ("(B)", "B", "B.", "\\text{(B)}", "(b) 12"), upper-cased, or None."""
    match = _CHOICE.fullmatch(_clean(answer).strip())
    return (match.group(1) or match.group(2)).upper() if match else None


def normalize_answer(answer: str) -> str:
    """A canonical key for an answer, for majority voting and for `check`: a number as its exact fraction
    ("1,234.0" -> "1234", "0.75" -> "3/4", "2^{3}" -> "8"), a lettered choice as "(B)", anything else
    lower-cased without spaces or decoration, with `\\dfrac` and `\\tfrac` read as `\\frac`, `\\frac12`
    as `\\frac{1}{2}`, `\\sqrt2` as `\\sqrt{2}` and a variable's name before "=" dropped ("k = \\pi" -> "\\pi")."""
    value = parse_number(answer)
    if value is not None:
        return str(value)
    letter = _choice(answer)
    if letter is not None:
        return f"({letter})"
    text = re.sub(r"\s+", "", _clean(answer)).rstrip(".").lower()
    text = re.sub(r"\\[dt]frac", r"\\frac", text)
    text = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\sqrt(\d)", r"\\sqrt{\1}", text)
    name, equals, rest = text.partition("=")
    return rest if equals and re.fullmatch(r"[a-z]\w?", name) and rest else text


def _reference_answer(ground_truth) -> str | None:
    if isinstance(ground_truth, (int, float, Fraction)):
        if isinstance(ground_truth, float) and not math.isfinite(ground_truth):
            return None
        value = Fraction(repr(ground_truth) if isinstance(ground_truth, float) else ground_truth)  # 0.1 is 1/10
        if max(value.numerator.bit_length(), value.denominator.bit_length()) > 4 * MAX_ANSWER:
            return None  # too long to write out (and to be a number parse_number reads)
        return str(value)  # exact, and never in scientific notation
    return final_answer(ground_truth) if isinstance(ground_truth, str) else None


def final_answer(solution: str) -> str | None:
    """The final answer a reference solution states (None: an empty one), in `extract_answer`'s order: the content
    of its last complete `\\boxed{}` (MATH), else the rest of its last `#### ...` line with text on it (GSM8K; none
    if all are empty), else the whole text; stripped, a trailing period dropped. How `check` reads a string ground
    truth and `tasks.load_jsonl` an answer field."""
    answer = last_boxed(solution)
    if answer is None and "####" in solution:
        answer = _last_hashes(solution) or ""  # empty "####" lines: no answer, not the work above them
    return _trim(answer if answer is not None else solution)


def _candidates(answer: str, value: Fraction, other: str) -> set:
    """The values an answer may mean beside `other`: its number, and that / 100 if only the answer has a "%"."""
    return {value, value / 100} if "%" in answer and "%" not in other else {value}


def check(response: str, ground_truth, rel_tol: float = 1e-6) -> bool:
    """Whether the final answer of `response` (`extract_answer`) equals `ground_truth` (`answer_matches`)."""
    return answer_matches(extract_answer(response), ground_truth, rel_tol)


def answer_matches(predicted: str | None, ground_truth, rel_tol: float = 1e-6) -> bool:
    """Whether an answer already taken from a response (`extract_answer`; None: there was none) equals
    `ground_truth`; never raises, and an answer that cannot be read is wrong. Nothing more is extracted
    from `predicted`: "Total: 12" is not 12.

    ground_truth: a bare answer ("72", "3/4", 72, "\\text{(B)}"), a text with a `\\boxed{}` answer, or a
    whole GSM8K solution ending in "#### 72".
    Equivalences, as MATH-style graders use them (Hendrycks et al. 2021's answer normalisation; Lightman
    et al. 2023's grader evaluates numeric expressions):
    - numbers (`parse_number`): "1,234", "1{,}234", "$1,234.00", "1234 dollars", "1234\\text{ cm}" and
      "\\frac{2468}{2}" are all 1234; "\\dfrac{3}{4}", "\\tfrac34", "0.75" and "3/4" are equal; so are
      "2^{10}" and 1024, "3 \\times 10^5" and 300000, "-5", "−5" and "- 5", "5." and "5";
    - a percent sign is dropped (50% is 50, as Hendrycks's normaliser does); when the other side has
      none it may also divide by 100 ("50%" matches 50 and 0.5, not "0.5%");
    - two numbers are equal when their exact values are, or when one is not an integer and they agree
      within rel_tol (0.333333 matches 1/3, while 1450000 and 1450001 stay apart);
    - lettered choices compare by letter: "(B)", "B", "B.", "\\text{(B)}", "\\textbf{B}" and "(b)";
    - anything else compares as `normalize_answer` keys; a number never equals a non-number.
    """
    truth = _reference_answer(ground_truth)
    predicted = _trim(predicted) if isinstance(predicted, str) else None
    if predicted is None or truth is None:
        return False
    x, y = parse_number(predicted), parse_number(truth)
    if x is not None and y is not None:
        tolerance = Fraction(str(rel_tol))  # 1e-6 exactly, not the binary float nearest to it
        for a in _candidates(predicted, x, truth):
            for b in _candidates(truth, y, predicted):
                both_integers = a.denominator == 1 and b.denominator == 1
                if a == b or (not both_integers and abs(a - b) <= tolerance * max(abs(a), abs(b))):
                    return True
        return False
    if x is not None or y is not None:
        return False
    return normalize_answer(predicted) == normalize_answer(truth)
