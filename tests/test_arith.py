"""The arithmetic evaluator: known values of every notation it reads, and None for what it does not."""

import time
from fractions import Fraction

import pytest

from nanoo1.arith import evaluate, normalize, tokenize


@pytest.mark.parametrize("expr, value", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("100 - 50 - 30 - 15", 5), ("2^3^2", 512), ("-2^2", -4), ("(-2)^2", 4),
    ("2^-2", Fraction(1, 4)), ("1/3", Fraction(1, 3)), ("0.1 + 0.2", Fraction(3, 10)), (".5", Fraction(1, 2)),
    ("1,234.5", Fraction(2469, 2)), ("$1,200 + $300", 1500), ("50%", Fraction(1, 2)), ("2(3 + 4)", 14),
    (r"3 \times 10^5", 300000), (r"\frac{3}{4}", Fraction(3, 4)), (r"\dfrac{-3}{4}", Fraction(-3, 4)),
    (r"\tfrac12", Fraction(1, 2)), (r"\frac{\frac{1}{2}}{3}", Fraction(1, 6)), (r"2^{10}", 1024),
    (r"6 \div 4", Fraction(3, 2)),
    (r"2 \cdot 3", 6), ("4 x 5", 20), ("4×5", 20), ("12 ÷ 3", 4), ("−7", -7), ("1 1/2", Fraction(3, 2)),
    (r"2\frac{1}{2}", Fraction(5, 2)), ("7 // 2", 3), ("[1 + {2 * (3)}]", 7),
    ("(1 1/2) * 4", 6), ("4 * (1 1/2)", 6), ("(5 and 2/3) * 3", 17), ("16 and (2/3)", Fraction(50, 3)),  # a bracket
    ("(16 and (2/3))", Fraction(50, 3)), ("16 and (2/3", None), ("2 1/2)", None),  # around it, or of its own
    ("1^5000", 1), ("(-1)^5001", -1), ("0^5000", 0), ("1^10^10", 1),  # exact at any power, however large
    # not arithmetic, undefined or too big: None, never an exception
    ("x + 1", None), ("1/0", None), ("0^-1", None), ("4^0.5", None), ("2^10^10", None), ("10^10^10", None),
    ("2^4097", None), ("3^2049", None),  # past MAX_BITS: exponent x the base's bits
    ("(1 + 2", None), ("1 + 2)", None), ("(1 + 2]", None), ("1 2", None), ("", None), ("+", None), (r"\sqrt{4}", None),
    ("1" * 101, None), ("(" * 40 + "1" + ")" * 40, None), ("1+" * 300 + "1", None), ("0130", 130),
])
def test_evaluate(expr, value):
    assert evaluate(expr) == value


def test_normalize_spells_arithmetic_plainly():
    assert normalize(r"\$1{,}200 \times \left(3\right) \div 2") == "$1200 * (3) / 2"
    assert normalize("80,000 + 1 000 000") == "80000 + 1000000"
    assert normalize("1,2,3 and 14, 400") == "1,2,3 and 14, 400"  # lists and typos keep their commas
    assert normalize("25 / 1/3 and 5 and 2/3 and 3 1/2") == "25 / (1/3) and (5+2/3) and (3+1/2)"
    assert normalize("a box of 4x5 and 2x + 3") == "a box of 4*5 and 2x + 3"


def test_white_space_is_read_once():
    for expr, v in [(" \t\n" * 7000 + "a", None), ("1" + " " * 21000 + "a", None), (" " * 21000 + "1 + 2", 3)]:
        start = time.process_time()
        assert evaluate(expr) == v and (tokenize(expr) is None) == (v is None)
        assert time.process_time() - start < 1.0  # 11 s (quadratic) while a token was searched for from each space


def test_the_bounds_are_inclusive_at_their_limits():
    """MAX_TOKENS = 256 tokens, MAX_DIGITS = 100 digits (a decimal point is no digit) and MAX_DEPTH = 32 nested
    brackets are read; one more of each is not."""
    assert evaluate("-" + "1+" * 127 + "1") == 126  # 256 tokens: "-", 128 ones, 127 pluses; -1 + 127 ones
    assert evaluate("1+" * 128 + "1") is None  # 257 tokens
    assert evaluate("1" * 100) == int("1" * 100)  # 100 digits
    assert evaluate("1" * 99 + ".5") == Fraction("1" * 99 + ".5")  # 100 digits and a point
    assert evaluate("1" * 100 + ".5") is None  # 101 digits
    assert evaluate("(" * 32 + "7" + ")" * 32) == 7 and evaluate("(" * 33 + "7" + ")" * 33) is None


def test_power_bound_counts_the_exponents_sign_and_the_bases_denominator():
    """A power is refused when |exponent| x max(bits of the base's numerator, denominator) > MAX_BITS = 4096:
    3 has 2 bits, so 3^2048 (4096) is computed and 3^-2049 and (1/3)^2049 (4098) are not, though their values
    (3,248 bits) would fit. A value past MAX_BITS in its numerator or its denominator has no value either."""
    assert evaluate("3^2048") == 3 ** 2048
    assert evaluate("3^-2048") == Fraction(1, 3 ** 2048)
    assert evaluate("3^-2049") is None and evaluate("(1/3)^2049") is None
    assert evaluate("3^2000 * 3^2000") is None  # 3^4000: 6,340 bits
    assert evaluate("(1/3)^2000 / 3^2000") is None  # 1/3^4000: a denominator of 6,340 bits
    assert evaluate("(1/3)^2000 * 3^2000") == 1


def test_signs_brackets_and_mixed_numbers():
    """Each unary minus flips the sign (--3 = 3, ---3 = -3); a number before a curly bracket multiplies like
    one before a round one (2{3 + 4} = 14); "1 2/2" is no mixed number (2/2 is not a proper fraction), so it
    stays two numbers side by side: no value."""
    assert evaluate("--3") == 3 and evaluate("---3") == -3 and evaluate("5 - -3") == 8
    assert evaluate("2{3 + 4}") == 14 and evaluate("2[3 + 4]") == 14
    assert normalize("1 2/2") == "1 2/2" and evaluate("1 2/2") is None
    assert normalize("1 1/2") == "(1+1/2)"
