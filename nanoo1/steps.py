"""The step checker `equations_hold`: is the arithmetic written in a thought true?

Search drops a thought whose written arithmetic is false, as rStar-Math drops a step whose code fails to
run. The checker reads GSM8K's calculator annotations and the equations of prose and LaTeX with the
evaluator of arith.py, judges only what it can read, and never rejects correct arithmetic as people write
it: all 8,792 GSM8K reference solutions hold (tests/test_steps.py; the hand-written cases are in
tests/equation_cases.txt). Its work is bounded whatever the text (MAX_SIDE, MAX_EQUATIONS and arith's
bounds): a megabyte of anything is judged in well under a second.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from nanoo1.arith import ATOM, OPENING, OPERATORS, normalize, tokenize, value

MAX_SIDE = 200  # characters read on each side of an "=" (a longer side is not read)
MAX_EQUATIONS = 1000  # "=" signs (or annotations) read per text; the text after them is not checked
_ANNOTATION = re.compile(rf"<<([^<>]{{1,{MAX_SIDE}}})>>")
_MARGIN = 16  # characters of context a side needs around it (see _LEAD, _TRAIL)
# runs of arithmetic and "=" signs; a line may break after an operator or "=". An "=" with the spaces before it
# is tried only where they begin, so a run of spaces is scanned once, not again from each of its characters.
_SCAN = re.compile(rf"(?P<run>{ATOM}(?:(?<=[-+*/^(\[{{])\s*{ATOM}|[ \t]*{ATOM})*)"
                   r"|(?P<eq>(?:(?<![ \t])[ \t]+)?(?<![<>!=:])=(?![=>])\s*)")
_CODE = re.compile(r"(?<![\d.])0\d")  # a number with a leading zero is a code or a time: "0900 - 0130"
_SIGNED = re.compile(r"-[\d.(\[{]")  # a leading minus written against its operand is a sign
# before a left side: a word that multiplies what follows ("20% of 50 + 10"), a function ("log 8 + 1",
# "\lfloor 3.5"), a lone letter (a variable, "x -3 + 5")
_LEAD = re.compile(r"(?:\b(?:of|times|half|twice|double|triple|thrice|quarter|third|per|log|ln|sin|cos|tan|exp|sqrt)"
                   r"|\\[A-Za-z]+|(?<![A-Za-z])[A-Za-z][ \t])[ \t]*\Z", re.IGNORECASE)
# written against a run: "a_1 + 2", "\log_2 8 + 1", "2:30 + 15", "14,400", "f(2) + 1", "\binom{6}{2}"
_GLUED = re.compile(r"(?:[_\\',]|\d:).\Z|[A-Za-z][(\[{]\Z")  # matched on what is before + the run's first character
# after a right side: a word that scales it ("5 * 3 = 15 thousand", "$1 / 2 = 50 cents"), a lone letter
# written against it (a variable, "= 5A / 5"), or a character that binds to it ("= 2\sqrt{3}", "= 5!", "= 2:30")
_TRAIL = re.compile(r"[ \t]*(?i:of|times|per|cents?|hundred|thousand|million|billion|dozen)\b"
                    r"|[A-Z](?![A-Za-z])|[\\!²³√π_]|:\d")


def _operand_end(t) -> bool:
    return isinstance(t, tuple) or t in ("%", ")", "]", "}")


def _left_start(tokens: list) -> int:
    """Where the left side of "=" begins in the run before it: after the last bracket left open or
    closed unopened, and after the last number written right after another operand ("Step 1 2 + 3")."""
    cut, stack = 0, []
    for i, t in enumerate(tokens):
        if t in ("(", "[", "{"):
            stack.append((t, i))
        elif t in OPENING:
            if stack and stack[-1][0] == OPENING[t]:
                stack.pop()
            else:
                cut, stack = i + 1, []
    cut = max(cut, stack[-1][1] + 1) if stack else cut
    for i in range(len(tokens) - 1, cut, -1):
        if isinstance(tokens[i], tuple) and _operand_end(tokens[i - 1]):
            return i if tokens[i - 1] not in OPENING else len(tokens)  # "(1/2) 18": a product, or not?
    return cut


def _right_end(tokens: list) -> int:
    """Where the right side of "=" ends in the run after it: before the first bracket closed unopened,
    the first bracket left open, and the first number written right after another operand."""
    stack = []
    for i, t in enumerate(tokens):
        if t in ("(", "[", "{"):
            stack.append((t, i))
        elif t in OPENING:
            if not stack or stack[-1][0] != OPENING[t]:
                return stack[0][1] if stack else i
            stack.pop()
        elif i and isinstance(t, tuple) and _operand_end(tokens[i - 1]):
            return 0 if tokens[i - 1] in OPENING else stack[0][1] if stack else i
    return stack[0][1] if stack else len(tokens)


def _values(tokens: list, plain_percent: bool) -> set:
    """The value, and with plain_percent also the value reading "20%" as 20."""
    return {value(tokens), value(tokens, percent=False)} if plain_percent else {value(tokens)}


def _shown(tokens: list) -> list:
    """(value, decimals) of the number a right side starts with, signs and a percent sign included."""
    i, sign = 0, 1
    while i < len(tokens) and tokens[i] in ("+", "-"):
        sign, i = (-sign if tokens[i] == "-" else sign), i + 1
    if i == len(tokens) or not isinstance(tokens[i], tuple):
        return []
    v, decimals = tokens[i]
    if i + 1 < len(tokens) and tokens[i + 1] == "%":
        return [(Fraction(sign * v, 100), decimals + 2), (sign * v, decimals)]
    return [(sign * v, decimals)]


def _rounds_to(v: Fraction, shown: Fraction, decimals: int) -> bool:
    """v written with `decimals` digits after the point, rounded either way (a whole number must be exact)."""
    if v == shown:
        return True
    scale = 10 ** decimals
    return decimals > 0 and shown * scale in (math.floor(v * scale), math.ceil(v * scale))


def _equation(text: str, left, right, calculator: bool, chained: bool) -> bool | None:
    """True or False for the equation between the runs `left` and `right` of `text`, None when skipped.
    calculator: `left` is a calculator line, read whole (a left side that is one number is judged, a
    leading sign is a sign); chained: the run `left` is the right side of the "=" before it."""
    if _CODE.search(left.group()) or _CODE.search(right.group()):
        return None
    lt, rt = tokenize(left.group()), tokenize(right.group())
    if not lt or not rt:
        return None
    start, end = _left_start(lt), _right_end(rt)
    lhs, rhs = lt[start:], rt[:end]
    if not lhs or not rhs:
        return None
    if rhs[0] in ("*", "/", "//", "^", "%", "+") or (rhs[0] == "-" and not _SIGNED.match(right.group())):
        return None  # "= + 5", "= - 3": an operand is missing
    before = text[max(0, left.start() - 12):left.start()]
    if _GLUED.search(before + left.group()[:1]) or (start == 0 and _LEAD.search(before)):
        return None  # what is written before the run may belong to it
    signed = calculator or (lt[start - 1] in ("(", "[", "{") if start else _SIGNED.match(left.group()))
    if lhs[0] in ("*", "/", "//", "^", "%") or (lhs[0] in ("+", "-") and not signed):
        return None  # an operator with its left operand out of sight
    if end == len(rt) and _TRAIL.match(text, right.end()):
        return None
    binary = any(_operand_end(a) and (b in OPERATORS) for a, b in zip(lhs, lhs[1:]))
    if not binary and not calculator and not (chained and start == 0):
        return None
    try:
        # "20%" is 1/5, or 20 as people also write it ("0.2 * 100 = 20%", "$7500/75% = $100")
        left_values, right_values = _values(lhs, "%" in lhs), _values(rhs, "%" in rhs)
    except ZeroDivisionError:
        return False
    except (ValueError, OverflowError):
        return None
    if left_values & right_values:
        return True
    return any(_rounds_to(v, s, d) for v in left_values for s, d in _shown(rhs))


def _runs_hold(text: str, calculator: bool, cut_before: bool = False, cut_after: bool = False) -> bool:
    """Every equation between two arithmetic runs of a normalized text holds (or is skipped).
    cut_before / cut_after: the text is a piece cut out of a longer one, so a side within _MARGIN
    characters of that end may be cut short (or miss its context) and is not read."""
    first, last = (_MARGIN if cut_before else 0), (len(text) - _MARGIN if cut_after else len(text))
    prev = pending = None  # the previous match; an "=" still waiting for its right side
    chained = False  # the previous run was the right side of an equation
    for m in _SCAN.finditer(text):
        if m.lastgroup == "eq":
            left = prev if prev is not None and prev.lastgroup == "run" and prev.end() == m.start() else None
            left = left if left is not None and left.start() >= first and len(left.group()) <= MAX_SIDE else None
            pending = (left, m, chained and left is not None)
        else:
            chained = pending is not None and pending[1].end() == m.start()
            right = m.end() <= last and len(m.group()) <= MAX_SIDE
            if chained and right and pending[0] is not None:
                if _equation(text, pending[0], m, calculator, pending[2]) is False:
                    return False
            pending = None
        prev = m
    return True


def _annotation_holds(text: str, m) -> bool:
    """GSM8K's `<<expr=result>>` holds, and so does the number written right after it (`>>18.00`)."""
    if not _runs_hold(normalize(m.group(1)), calculator=True):
        return False
    after = normalize(text[m.end():m.end() + 64])
    shown = _SCAN.match(after)
    cut = m.end() + 64 < len(text)  # the window ends before the text does
    if shown is None or shown.lastgroup != "run" or (cut and shown.end() == len(after)):
        return True  # nothing written after it, or more than the window holds
    tail = after[shown.end():shown.end() + 16].replace("=", " ")  # what follows the number, as context only
    return _runs_hold(normalize(m.group(1).rpartition("=")[2]) + "=" + shown.group() + tail, calculator=True)


def equations_hold(text: str) -> bool:
    """False when an equation written in `text` is false arithmetic, else True (text without equations too).

    Read:
    - GSM8K's calculator annotations `<<expr=result>>`: each must hold, and so must the number written
      right after it (`= $<<9*2=18>>18`). A text that has them is judged by them alone: GSM8K's prose
      around them converts units ("5 thousand dollars ... 5 * 3 = $15,000") and has its authors' slips,
      while the annotation is the computation.
    - in any other text, every `left = right` whose sides are arithmetic (arith.normalize and
      arith.evaluate: decimals, signs, thousands separators, currency and percent signs, mixed numbers;
      + - * / ^, `x`, `×`, `÷`, `\\times`, `\\cdot`, `\\frac{a}{b}`, brackets). The left side is
      the arithmetic written right before "=" (after the last bracket left open, or number written
      after another: "Step 1 2 + 3 = 5" reads 2 + 3), the right side what is written right after it;
      `a - b - c = d = e` is read "=" by "=", and a line may break after an operator or "=".

    An equation holds when its sides have the same exact value; when the right side starts with the
    left side's value (a running chain: `2 * 3 = 6 + 1 = 7`); when that number has d > 0 decimals and is
    the value rounded up or down to d of them (1/3 = 0.33, 2/3 = 0.67, 22/7 = 3.14; a whole number must
    be exact: 26 / 3 = 9 fails); a percent sign counts as /100 or as nothing (20% * 50 = 10,
    0.2 * 100 = 20%, $7500/75% = $100). A division by zero fails.

    Skipped, so they hold:
    - a left side that is one number (`1 hour = 60 minutes`, `x = 5`), unless it is the right side of
      the "=" before it (`3 + 4 = 7 = 8` fails);
    - a side that cannot be read (letters, `\\sqrt`, a fractional power, a number with a leading zero
      such as "0130", a sign apart from its operand "- - 3", anything past arith's bounds or longer than
      MAX_SIDE characters);
    - a left side after a word that scales it ("20% of 50 + 10", "half", "twice"), a function ("log",
      "\\lfloor"), a lone letter (`x -3 + 2 = 5`), or written against `_`, `\\`, `'`, `,`, a time's
      ":" or, for a bracket, a letter (`a_1 + 2`, `f(2) + 1`, `\\binom{6}{2}`); a left side that starts
      with an operator (`x - 3 = 5`, `2 hours * 60 = 120`);
    - a right side that starts with an operator or a spaced sign (`= + 5`), or is followed by a word that
      scales it ("thousand", "cents", "times", "of", "per"), a capital letter written against it (an
      unknown: `= 5A / 5`), `\\`, `!`, `²`, `√`, `π`, `_` or a time's ":";
    - `<=`, `>=`, `==`, `!=`, `:=`, `=>`; an annotation longer than MAX_SIDE characters; everything after
      the first MAX_EQUATIONS "=" signs (or annotations);
    - a side that starts or ends within _MARGIN characters of where a piece is cut out of the text: the
      text is read in pieces of MAX_SIDE + _MARGIN characters on each side of an "=" (pieces that touch
      are one), so a side that reaches that far from its "=" (past runs of spaces) may lack its context.
    The work is bounded by MAX_EQUATIONS * MAX_SIDE characters, whatever the length of the text.
    """
    if "=" not in text:
        return True
    annotations = 0
    for m in _ANNOTATION.finditer(text):
        if "=" in m.group(1):
            annotations += 1
            if annotations > MAX_EQUATIONS:
                return True
            if not _annotation_holds(text, m):
                return False
    return annotations > 0 or _prose_holds(text)


def _prose_holds(text: str) -> bool:
    """`_runs_hold` on the neighbourhoods of the first MAX_EQUATIONS "=" signs of the text (MAX_SIDE
    characters each way, merged where they overlap, up to the next "=" sign), so the work is bounded
    whatever the text."""
    pieces = []
    for i, m in enumerate(re.finditer("=", text)):
        if i == MAX_EQUATIONS:  # the text from here on is not read
            pieces[-1][1] = min(pieces[-1][1], m.start())
            break
        lo, hi = max(0, m.start() - MAX_SIDE - _MARGIN), m.end() + MAX_SIDE + _MARGIN
        if pieces and lo <= pieces[-1][1]:
            pieces[-1][1] = hi
        else:
            pieces.append([lo, hi])
    return all(_runs_hold(normalize(text[lo:hi]), False, lo > 0, hi < len(text)) for lo, hi in pieces)
