"""Exact arithmetic as people write it: a small safe evaluator for answers (answers.py) and steps (steps.py).

`evaluate("3 \\times 10^5")` is Fraction(300000): numbers (decimals, thousands separators "1,234" and
"1 234", currency signs, a percent sign as /100, mixed numbers "1 1/2"), + - * / ^ and brackets with the
usual precedence (^ binds tightest and to the right, a unary minus below it: -2^2 = -4; a number before
a bracket multiplies: 2(3 + 4) = 14; // is floor division, as in GSM8K's calculator lines), and `x`,
`×`, `·`, `÷`, `\\times`, `\\cdot`, `\\div`, `\\frac{a}{b}` (`\\dfrac`, `\\tfrac`). `normalize`
spells the notation plainly, `tokenize` and `value` parse it by hand and compute with ints and
`fractions.Fraction` (never `eval`). Anything else (letters, `\\sqrt`, a fractional power, a division
by zero) has no value: None.

Every step is bounded, so no text makes it slow: a number of more than MAX_DIGITS digits, an expression
of more than MAX_TOKENS tokens or MAX_DEPTH nested brackets, and a power whose exponent times the bits of
its base exceeds MAX_BITS (a bound on the bits of its value: 2^10^10 is never computed, and 3^2049 is
refused though it needs 3,248) have no value; 0, 1 and -1 raised to any integer power do.
"""

from __future__ import annotations

import re
from fractions import Fraction

MAX_DIGITS = 100  # digits of one number
MAX_TOKENS = 256  # tokens of one expression
MAX_DEPTH = 32  # nested brackets in one expression
MAX_BITS = 4096  # bits of a numerator or denominator (about 1,200 digits)

_NUM = r"\d+(?:\.\d+)?|\.\d+"
# one piece of arithmetic as written: a number, an operator, a bracket, a percent or currency sign
ATOM = rf"(?:{_NUM}|[-+*/^()\[\]{{}}%$€£¥])"
_TOKEN = re.compile(rf"\s*(?:({_NUM})|(//|[-+*/^()\[\]{{}}%])|[$€£¥])")
OPENING = {")": "(", "]": "[", "}": "{"}  # the opening bracket of each closing one
OPERATORS = ("+", "-", "*", "/", "//", "^", "(", "[", "{")  # what an operand follows

# LaTeX and typography that only spell an operator or decorate a number
_SYMBOLS = re.compile(r"\\(?:times|cdot|div|left|right|boxed|fbox|[dt]?frac)(?![A-Za-z])|\\[$%!,;: ]|\^\s*\{?\\circ\}?"
                      r"|[\u2212×·⋅÷°\u00a0\u2009]| \u2013 |\{,\}")
_SYMBOL = {"\\times": "*", "\\cdot": "*", "\\div": "/", "\\left": "", "\\right": "", "\\boxed": "", "\\fbox": "",
           "\\frac": "\\frac", "\\dfrac": "\\frac", "\\tfrac": "\\frac", "\\$": "$", "\\%": "%", "\\!": "",
           "\u2212": "-", " \u2013 ": " - ", "×": "*", "·": "*", "⋅": "*", "÷": "/", "°": "", "{,}": ","}
_TEXT = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_FRAC = re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}|\\frac\s*(\d)\s*(\d)")
# 2\frac{1}{2}: two and a half
_MIXED_FRAC = re.compile(r"(?<![\d.])(\d+)[ \t]*\\frac\s*(?:\{(\d+)\}\s*\{(\d+)\}|(\d)\s*(\d))")
_TIMES_X = re.compile(r"(?<=[\d)\]}%])[ \t]*[xX][ \t]*(?=[\d(\[{$]|\.\d)")  # "4 x 5", "3x(2)": x between operands
_THOUSANDS = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?!\d)|(?<![\d.,/])\d{1,3}(?: \d{3})+(?![\d/]|\.\d)")
# "1 1/2", "5 and 2/3", "16 and (2/3)": a whole number and a proper fraction; a ")" only closing a "(" of its own
_MIXED = re.compile(r"(?<![\d./])(\d+)[ \t]+(?:and[ \t]+)?\$?(\()?(\d+)/(\d+)(?(2)\))(?![\d./^])")
_SPACED_OVER = re.compile(r"(?<=/)[ \t]+(\d+/\d+)(?![\d./^])")  # "25 / 1/3": a tight fraction after a spaced "/"


def normalize(text: str) -> str:
    """Spell the arithmetic of `text` in plain characters: `\\times`, `\\cdot`, `×`, `·` and `x` between
    operands become `*`, `\\div` and `÷` become `/`, `\\frac{a}{b}` (also `\\dfrac`, `\\tfrac`, `\\frac12`)
    becomes `((a)/(b))`, the unicode minus `-` and a spaced en dash " – " a minus; a whole number and a
    proper fraction ("1 1/2", "5 and 2/3", "2\\frac{1}{2}") become one value "(1+1/2)", and a fraction
    written tight after a spaced "/" ("25 / 1/3") is bracketed; thousands separators ("1,234", "1 234",
    "1{,}234"), degree signs, `\\left`, `\\right`, `\\boxed`, LaTeX spacing and `\\text{...}` around
    words are dropped. Each step is one pass of a regex (nested fractions one pass per level)."""
    text = _SYMBOLS.sub(lambda m: _SYMBOL.get(m.group(0), " "), text)
    text = _TEXT.sub(r" \1 ", text)
    text = _MIXED_FRAC.sub(lambda m: _mixed(m[1], m[2] or m[4], m[3] or m[5], m[0]), text)
    for _ in range(MAX_DEPTH):  # innermost fractions first
        text, n = _FRAC.subn(lambda m: f"(({m.group(1) or m.group(3)})/({m.group(2) or m.group(4)}))", text)
        if not n:
            break
    text = _TIMES_X.sub("*", text)
    text = _THOUSANDS.sub(lambda m: m.group(0).replace(",", "").replace(" ", ""), text)
    text = _MIXED.sub(lambda m: _mixed(m[1], m[3], m[4], m[0]), text)
    return _SPACED_OVER.sub(r" (\1)", text)


def _mixed(whole: str, num: str, den: str, written: str) -> str:
    """A whole number and a proper fraction as one value, "(1+1/2)"; anything else as written."""
    if len(num) > MAX_DIGITS or len(den) > MAX_DIGITS or int(num) >= int(den):
        return written
    return f"({whole}+{num}/{den})"


def tokenize(expr: str) -> list | None:
    """Tokens of a normalized expression: (value, decimals shown) per number (an int, or a Fraction for a
    decimal), else the operator or bracket as a string; currency signs are dropped. None if anything else
    is in it, a sign stands apart from its operand ("- - 3") or it is longer than MAX_TOKENS."""
    out, pos = [], 0
    # each token right where the last one ended (searching instead would rescan a run of white space before
    # something else from each of its characters: quadratic)
    while (m := _TOKEN.match(expr, pos)) is not None:
        if len(out) >= MAX_TOKENS:
            return None
        pos = m.end()
        number, op = m.group(1), m.group(2)
        if number is not None:
            if len(number) - ("." in number) > MAX_DIGITS:
                return None
            whole, _, decimals = number.partition(".")
            out.append((Fraction(number) if decimals else int(whole), len(decimals)))
        elif op is not None:
            if op in "+-" and (not out or out[-1] in OPERATORS) and expr[pos:pos + 1].isspace():
                return None  # a sign apart from its operand: "- - 3", "= + 5"
            out.append(op)
    return out if expr[pos:].strip() == "" else None


# Values are ints while they are whole (Python's ints are fast) and Fractions otherwise: both exact.
def _bounded(v):
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise OverflowError
    return v


def _quotient(a, b):
    if isinstance(a, int) and isinstance(b, int):
        q, r = divmod(a, b)  # ZeroDivisionError for b = 0
        return q if r == 0 else Fraction(a, b)
    return Fraction(a) / b


def _power(base, exponent):
    if exponent.denominator != 1:
        raise ValueError  # a root: not exact arithmetic
    bits = max(base.numerator.bit_length(), base.denominator.bit_length(), 1)
    if abs(exponent.numerator) * bits > MAX_BITS and base not in (0, 1, -1):
        raise OverflowError
    return base ** exponent.numerator if exponent >= 0 else Fraction(base) ** exponent.numerator


def value(tokens: list, percent: bool = True) -> Fraction:
    """The exact value of tokenized arithmetic (see `tokenize`); `percent` reads "20%" as 1/5, else 20.

    Raises ZeroDivisionError for a division by zero, ValueError when the tokens are not one expression (or
    hold a fractional power or brackets nested deeper than MAX_DEPTH), OverflowError past MAX_BITS.
    A number or a closing bracket right before an opening one multiplies: 2(3 + 4) = 14; // is floor
    division. Recursive descent, one function per precedence level.
    """
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def expression(depth):
        nonlocal pos
        v = term(depth)
        while peek() in ("+", "-"):
            op = tokens[pos]
            pos += 1
            v = _bounded(v + term(depth) if op == "+" else v - term(depth))
        return v

    def term(depth):
        nonlocal pos
        v = unary(depth)
        while peek() in ("*", "/", "//", "(", "[", "{"):
            op = tokens[pos]
            if op in ("*", "/", "//"):
                pos += 1
            if op in ("*", "(", "[", "{"):
                v = _bounded(v * unary(depth))
            else:
                v = _bounded(_quotient(v, unary(depth)) if op == "/" else v // unary(depth))
        return v

    def unary(depth):
        nonlocal pos
        sign = 1
        while peek() in ("+", "-"):
            sign = -sign if tokens[pos] == "-" else sign
            pos += 1
        return power(depth) if sign == 1 else -power(depth)

    def power(depth):
        nonlocal pos
        base = atom(depth)
        if peek() != "^":
            return base
        pos += 1
        return _bounded(_power(base, unary(depth)))

    def atom(depth):
        nonlocal pos
        t = peek()
        pos += 1
        if isinstance(t, tuple):
            v = t[0]
        elif t in ("(", "[", "{") and depth < MAX_DEPTH:
            v = expression(depth + 1)
            if peek() not in OPENING or OPENING[tokens[pos]] != t:
                raise ValueError
            pos += 1
        else:
            raise ValueError
        if peek() == "%":
            pos += 1
            v = _quotient(v, 100) if percent else v
        return v

    v = expression(0)
    if pos != len(tokens):
        raise ValueError
    return Fraction(v)


def evaluate(expr: str) -> Fraction | None:
    """The exact value of an arithmetic expression written in text ("1,200 + 300", "\\frac{3}{4}",
    "2^{10}", "50%"), or None when it is not one, is too big, or divides by zero."""
    tokens = tokenize(normalize(expr))
    if not tokens:
        return None
    try:
        return value(tokens)
    except (ArithmeticError, ValueError):
        return None
