import random
import time
from fractions import Fraction

import pytest

from conftest import gsm8k_rows
from nanoo1.answers import (answer_matches, check, extract_answer, final_answer, last_boxed, normalize_answer,
                            parse_number)
from nanoo1.rewards import format_reward  # reads boxes too: the adversarial texts time it


# ---------------------------------------------------------------- extraction and checking


@pytest.mark.parametrize("text, answer", [
    ("Janet sells 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("#### 1,450,000", "1,450,000"),
    (r"So the result is \boxed{\frac{1}{2}}.", r"\frac{1}{2}"),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{\sqrt{2}}{2}"),  # nested braces
    ("The answer is $1,234.", "1,234"),
    ("The final answer is: -3/4.", "-3/4"),
    ("Final Answer: The final answer is $42$. I hope it is correct.", "42"),
    ("The answer is B. Because the others are wrong.", "B"),
    ("Each box holds 12, so 3 boxes hold 36.", "36"),  # bare numbers: the last wins
    ("16-3-4=9", "9"),
    ("The difference is 12-5", "5"),  # a minus between numbers is a subtraction, not a sign
    ("It is \u22127 degrees outside", "-7"),  # unicode minus
    ("The cost is .5 dollars", ".5"),
    (r"First \boxed{5}, then, on reflection, \boxed{7}. Check: 7 + 1 = 8", "7"),  # boxed beats later numbers
    ("The answer is 5.\n#### 6", "6"),  # #### beats "the answer is"
    ("Earlier the answer is 3. Later the answer is 4.", "4"),
    ("I thought 5, but the answer isn't 5. Recomputing: 3 + 3 = 6.", "6"),  # "isn't" states no answer
    ("The answer is 20%.", "20%"),
    ("The answer is:\n\n42.", "42"),  # a colon, then the answer on a later line
    ("Answer:\n**18**", "18"),
    ("The answer is 5. Later the answer is:  \n", "5"),  # "answer is:" with nothing after it states nothing
    ("3 + 4 = 7. The answer is:", "7"),
    (r"so \boxed{12", None),  # a box left open: the response was cut off inside its answer (it may be 125)
    (r"First \boxed{5}, then \boxed{12", None),  # even after a complete one
    (r"\boxed{5} is not \boxed 6", "5"),  # "\boxed" opening no brace is no box
    ("So the answer is 20 + 5 = 25.", "20 + 5 = 25"),  # the statement's value, not its first number
    ("The answer is 16 - 3 - 4 = 9 eggs, as she ate 3.", "16 - 3 - 4 = 9 eggs"),
    ("The answer is 2^{10}.", "2^{10}"),
    ("The answer is 1 1/2 cups; she has 3 left.", "1 1/2 cups"),
    ("The answer is 12 inches, 3 more than 9.", "12"),  # worth its first number: the number, as before
    ("so the total is 3e5", "3e5"),  # the last number with its exponent, not the exponent alone
    ("so the total is 3e5.", "3e5"),
    ("The population grew to 1.5 million.", "1.5 million"),  # with its scale word
    ("小明有5个苹果，现在有很多很多很多很多很多很多很多很多很多很多很多很多很多很多个，１８个", "１８"),  # any script's digits
    ("she had 5 apples and now ١٢ apples", "١٢"),
])
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


@pytest.mark.parametrize("text", ["", "I do not know.", r"\boxed{}", r"\boxed{x", r"The answer is \boxed{}.",
                                  r"The answer is \boxed{ }, 3 + 4 = 7"])
def test_extract_answer_finds_nothing(text):
    assert extract_answer(text) is None


def test_last_boxed_balances_braces():
    assert last_boxed(r"\boxed{a} and \boxed {\frac{1}{\sqrt{4}}} end") == r"\frac{1}{\sqrt{4}}"
    assert last_boxed(r"\box{5}") is None  # LLaMA-O1's \box is not \boxed
    assert last_boxed(r"\boxed{5} \boxed{6") == "5"  # an unclosed box is ignored


@pytest.mark.parametrize("answer, value", [
    ("1,234", 1234), ("-3.5", Fraction(-7, 2)), ("3/4", Fraction(3, 4)), (r"\frac{3}{4}", Fraction(3, 4)),
    (r"-\dfrac{3}{4}", Fraction(-3, 4)), (r"\frac{-3}{4}", Fraction(-3, 4)), (r"\$1,234.50", Fraction(246900, 200)),
    ("50%", 50), (r"72^\circ", 72), (r"5\text{ cm}^2", 5), ("18 dollars", 18), ("x = 5", 5), ("(-2)", -2),
    ("+7", 7), ("0.125", Fraction(1, 8)),
    ("1e5", 100000), ("2.5E-3", Fraction(1, 400)), ("1.0e+2 cm", 100), ("3eggs", 3),  # an exponent is no unit
    # a scale word scales, as the MATH grader (Lightman et al. 2023) reads million, billion and trillion (thousand
    # too, here); other words are units
    (r"\$1.5 million", 1500000), ("12 thousand apples", 12000), ("2 Billion", 2 * 10 ** 9),
    (r"\frac{3}{2} million", 1500000), ("1 trillion", 10 ** 12), ("5 thousandths", 5), ("a million", None),
    ("１８", 18),
    ("x+1", None), ("(3, 4)", None), ("B", None), ("1/0", None), (r"\sqrt{2}", None), ("2x + 1", None),
])
def test_parse_number(answer, value):
    assert parse_number(answer) == value


def test_normalize_answer_gives_voting_keys():
    assert normalize_answer("1,234.0") == normalize_answer("$1234") == "1234"
    assert normalize_answer("0.75") == normalize_answer(r"\frac{3}{4}") == "3/4"
    assert normalize_answer("X + 1") == normalize_answer("x+1") == "x+1"


@pytest.mark.parametrize("response, truth, expected", [
    ("The answer is 72.", "He earns 8 * 9 = 72\n#### 72", True),
    (r"\boxed{72}", 72, True),
    ("The answer is 5", r"so \boxed{5}", True),  # a boxed ground truth
    ("The answer is 0.1", 0.1, True),  # a float ground truth: within 1e-6 of 1/10
    ("1/3", 0.333333, True),  # a float ground truth is the decimal written (exactly 1e-6 from 1/3), not its binary
    ("So the answer is 20 + 5 = 25.", 25, True),
    ("The answer is 16 - 3 - 4 = 9 eggs.", "9", True),
    ("The answer is 3 \\times 10^5.", 300000, True),
    ("The answer is 1.234 \\times 10^3.", 1234, True),
    ("The answer is 20 + 5 = 25.", 20, False),
    ("2", Fraction(4, 2), True),
    (r"\boxed{\frac{1}{2}}", "0.5", True),
    ("0.5", r"\frac{1}{2}", True),
    ("3/4", "0.75", True),
    ("#### 1,234", "1234", True),
    (r"\boxed{\$1,234.00}", "1,234", True),
    (r"\boxed{18 \text{ dollars}}", "18", True),
    ("-3", "3", False),
    ("-3", "-3", True),
    ("0.333333", "1/3", True),  # |0.333333 - 1/3| / (1/3) = 1e-6: within the tolerance
    ("0.3333", "1/3", False),  # relative error 1e-4
    ("1450001", "1450000", False),  # integers compare exactly, however large
    (r"\boxed{x+1}", "x + 1", True),  # non-numbers compare as normalised text
    (r"\boxed{x+1}", "1", False),
    ("The answer is B.", "b", True),
    ("", "5", False),
    ("I give up.", "5", False),
    (r"\box{5}", "5", True),  # \box is not a box, but 5 is still the last number
])
def test_check(response, truth, expected):
    assert check(response, truth) is expected


@pytest.mark.parametrize("response, truth, expected", [
    # \text{}, \mathrm{}, \textbf{} and lettered choices
    (r"So the answer is $\boxed{\text{(B)}}$.", "B", True),
    (r"So the answer is $\boxed{\text{(B)}}$.", "(C)", False),
    (r"\boxed{\textbf{(C)}}", r"\text{(C)}", True),
    (r"\boxed{\mathrm{(D)}\ 12}", "D", True),  # the choice's letter, its text after it
    ("The answer is (b).", "B", True),
    ("The answer is B.", "C", False),
    (r"\boxed{A}", "(A)", True),
    (r"\boxed{\text{Monday}}", "monday", True),
    (r"\boxed{\text{Monday}}", "Tuesday", False),
    # \frac, \dfrac, \tfrac
    (r"\boxed{\dfrac{3}{4}}", "0.75", True),
    (r"\boxed{\tfrac34}", r"\frac{3}{4}", True),
    (r"\boxed{-\dfrac{3}{4}}", "-0.75", True),
    (r"\boxed{\frac{3}{4}}", "0.7", False),
    (r"\boxed{2\frac{1}{2}}", "2.5", True),  # a mixed number
    (r"\boxed{\dfrac{\sqrt{3}}{2}}", r"\frac{\sqrt3}{2}", True),  # not numbers: compared as normalised text
    (r"\boxed{\frac{\sqrt{3}}{2}}", r"\frac{\sqrt{2}}{2}", False),
    # powers, products and simple expressions of numbers
    (r"\boxed{2^{10}}", "1024", True),
    (r"\boxed{2^{10}}", "1000", False),
    (r"\boxed{3 \times 10^5}", "300000", True),
    (r"\boxed{3 \cdot 10^{5}}", "300,000", True),
    (r"\boxed{3 \times 10^4}", "300000", False),
    (r"\boxed{2 \cdot 3 \cdot 5}", "30", True),
    (r"\boxed{10^{-3}}", "0.001", True),
    (r"\boxed{2 + 3}", "5", True),
    (r"\boxed{10^{10^{10}}}", "5", False),  # too big to compute: compared as text, never raised
    # percentages
    (r"\boxed{50\%}", "50", True),
    (r"\boxed{50\%}", "0.5", True),
    ("The answer is 0.5", r"50\%", True),
    (r"\boxed{50\%}", "5", False),
    ("The answer is 50%.", "0.5", True),  # a percent sign counts wherever the answer is read from
    (r"The answer is $50\%$.", "0.5", True),
    ("So 30 of 60 is 50 %.", "0.5", True),
    ("The answer is 50%.", "50", True),
    (r"\boxed{50\%}", r"0.5\%", False),  # both sides in percent: no side is read as a fraction of 100
    (r"\boxed{5000\%}", r"50\%", False),
    (r"\boxed{50\%}", r"50\%", True),
    # units and currency around a number
    (r"\boxed{5\text{ cm}^2}", "5", True),
    (r"\boxed{12 \mathrm{~cm}}", "12", True),
    ("The answer is 12 inches.", "12", True),
    (r"\boxed{\$18.00}", "18", True),
    (r"\boxed{18 \text{ dollars}}", "19", False),
    ("It costs \u20ac7 per day", "7", True),
    # thousands separators, negatives, trailing periods, "x ="
    (r"\boxed{1{,}234}", "1234", True),
    (r"\boxed{1,234}", "1235", False),
    (r"\boxed{-5}", "-5", True),
    ("\\boxed{\u22125}", "-5", True),
    (r"\boxed{- 5}", "-5", True),
    (r"\boxed{-5}", "5", False),
    (r"\boxed{5.}", "5", True),
    (r"\boxed{x = 5}", "5", True),
    (r"\boxed{k = \pi}", r"\pi", True),
    (r"\boxed{k = \pi}", r"2\pi", False),
])
def test_check_math_style_answers(response, truth, expected):
    assert check(response, truth) is expected


def test_check_accepts_every_gsm8k_reference_solution_and_rejects_a_wrong_label():
    rows = gsm8k_rows("train") + gsm8k_rows("test")
    assert len(rows) == 8792
    accepted, rejected = [], []
    for row in rows:
        label = row["answer"].rsplit("####", 1)[1].strip()
        value = int(label.replace(",", ""))  # every GSM8K label is an integer, some "1,450,000"
        accepted.append(check(row["answer"], label) and check(row["answer"], row["answer"])
                        and check(row["answer"], value))
        rejected.append(not check(row["answer"], str(value + 1)) and not check(row["answer"], value - 1))
    assert all(accepted), [rows[i]["answer"][-30:] for i, ok in enumerate(accepted) if not ok][:5]
    assert all(rejected), [rows[i]["answer"][-30:] for i, ok in enumerate(rejected) if not ok][:5]


MB = 1 << 20
ADVERSARIAL = {
    "repeated \\boxed{": "\\boxed{" * (MB // 7),
    "repeated \\boxed{ with braces": ("\\boxed{" + "{}" * 25 + "{") * (MB // 58),
    "repeated answer is": "answer is " * (MB // 10),
    "nested braces": "{" * (MB // 2) + "}" * (MB // 2),
    "a box of nested braces": "\\boxed{" + "{" * (MB // 2) + "1" + "}" * (MB // 2) + "}",
    "digits": "1" * MB,
    "numbers": "1 " * (MB // 2),
    "repeated <output>": "<output>" * (MB // 8),
    "repeated \\frac{": "\\frac{" * (MB // 6),
    "repeated \\text{": "\\text{" * (MB // 6),
    "a 5,000-digit answer": "The answer is \\boxed{" + "9" * 5000 + "}",
    # 12 s a check (quadratic) while "answer is" was tried with each shorter run of the white space after it
    "answer is, then white space": "The answer is" + " \t" * 20000 + "\n",
    "answer is, a colon, then white space": "The answer is" + " \t" * 20000 + ":" + " \n" * 20000,
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_text_is_checked_within_a_second(name):
    text = ADVERSARIAL[name]
    for truth in ("5", "9" * 5000, 10 ** 5000, text[:100000]):
        start = time.process_time()
        assert check(text, truth) in (True, False)
        assert time.process_time() - start < 1.0  # the quadratic reading took 42 s on 28 kB of \boxed{
    start = time.process_time()
    normalize_answer(text), format_reward(text), format_reward(text, "elastic")
    assert time.process_time() - start < 1.0


def test_long_answers_compare_as_text_and_never_raise():
    nines = "9" * 5000
    assert check(f"\\boxed{{{nines}}}", nines) and not check(f"\\boxed{{{nines}}}", nines + "8")
    assert not check(f"\\boxed{{{nines}}}", 10 ** 5000)  # too long to write out: wrong, not an error
    assert not check("The answer is " + nines, float("nan")) and not check("5", None)
    assert extract_answer("The answer is " + "1" * 5000) == "1" * 5000
    assert extract_answer("x " + "1" * 5000) is None  # a last number longer than MAX_ANSWER is no answer


def test_check_never_raises_on_random_text():
    rng = random.Random(0)
    pieces = ["\\boxed{", "{", "}", "\\frac", "\\dfrac{", "\\text{", "answer is", "####", "<output>", "</output>",
              "^", "-", "+", "/", "*", "%", "\\%", "$", ",", ".", "(", ")", "=", " ", "\n", "x", "B", "0", "1", "9",
              "1,000", "\u2212", "\\times", "\\sqrt", "e", "10^{", "\\left(", "{,}"]
    for _ in range(3000):
        response = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        truth = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert check(response, truth) in (True, False)
        assert check(response, rng.choice([0, -7, 2.5, Fraction(1, 3)])) in (True, False)
        normalize_answer(response)


def test_rstar_output_observation_is_the_answer():
    # the comment's "Step 3" must not count: the printed output is the answer (and a word is no number)
    assert extract_answer("# Step 3: the total\nprint(x3)\n<output>9</output>") == "9"
    assert not check('# Step 3: say it\nprint("x")\n<output>x</output>', "3")
    assert check("# Step 3: the total\nprint(x3)\n<output>3</output>", "3")


def test_an_answer_once_extracted_is_compared_not_extracted_again():
    """search.grade and the verifiers compare the answer a result already holds: the same verdict as `check`
    on the whole response, also where a second extraction would read another number out of it."""
    from types import SimpleNamespace

    from nanoo1.search import grade

    for response, truth in [("\\boxed{2^{10}}", "1024"), ("\\boxed{3 \\times 10^5}", "300000"), ("\\boxed{(B)}", "B"),
                            ("\\boxed{\\sqrt{2}}", "\\sqrt{2}")]:
        answer = extract_answer(response)
        assert check(response, truth) and answer_matches(answer, truth)
        assert grade([SimpleNamespace(answer=answer)], [truth]) == [True]
    assert grade([SimpleNamespace(answer=None)], ["12"]) == [False]
    # rStar: the last line the final step printed is its answer, wherever it is read
    assert extract_answer("print(x1)\nprint(x2)\n<end_of_step>\n<output>9\n12\n</output>") == "12"
    assert not check("print(t)\n<end_of_step>\n<output>Total: 12</output>", "12")
    assert not answer_matches("Total: 12", "12")
    assert answer_matches("5.", "5") and answer_matches("5", "5.")  # a trailing period on either side, as documented


def test_the_last_hash_line_the_right_of_the_last_equals_and_the_tolerance_for_a_non_integer():
    """Three rules of the readers' docstrings, each pinned by a case no other test reaches: of several "####" lines
    the last states the answer (a solution that corrects itself); after "=" only the right of the last one counts;
    the relative tolerance applies when one side is not an integer (2.0000001 against 2), never to two integers."""
    assert extract_answer("#### 5\nWait, a slip.\n#### 7") == "7"
    assert parse_number("x = 2 + 3 = 5") == Fraction(5) and check("\\boxed{x = 2 + 3 = 5}", "5")
    assert answer_matches("2.0000001", "2") and not answer_matches("1000001", "1000000")


@pytest.mark.parametrize("answer, value", [
    ("½", Fraction(1, 2)), ("1½", Fraction(3, 2)), ("2½", Fraction(5, 2)), ("-1½", Fraction(-3, 2)),
    ("⅓", Fraction(1, 3)), ("⅒", Fraction(1, 10)), ("½ cup", Fraction(1, 2)), ("1,234½", Fraction(2469, 2)),
    ("2 ½", Fraction(5, 2)), ("3 × ½", Fraction(3, 2)), ("6 ÷ ½", 12), ("2½/5", Fraction(1, 2)),  # as "2 1/2"
    ("⅟", None), ("2.5½", None), ("2^½", None), ("½½", None),
    ("4\n½", None), ("4\u202f½", None),  # a line break or another space is no mixed number ("4 ½" is), nor 4 x ½
])
def test_parse_number_reads_vulgar_fractions_exactly(answer, value):
    assert parse_number(answer) == value


def test_vulgar_fractions_are_read_wherever_an_answer_is():
    assert check("The answer is 2½", "2.5") and check(r"\boxed{⅔}", "2/3") and not check(r"\boxed{⅔}", "0.667")
    assert extract_answer("She had 2 cups and used ½, so she has 3¾ cups") == "3¾"
    assert extract_answer("5 apples and ¾ of a pie, ¾ of a pie, ¾ of a pie left") == "¾"
    assert check("so she has 3¾ cups", "15/4") and normalize_answer("1½") == "3/2"
    # a mixed number with a space, as parse_number reads it, is the last number whole: 4 ½, not ½
    assert extract_answer("so she needs 4 ½ cups") == "4 ½" and not check("so she needs 4 ½ cups", "1/2")
    assert normalize_answer(extract_answer("so 1,234 ½ dollars")) == "2469/2"


def test_final_answer_reads_the_last_box_then_the_last_hash_line_then_the_text():
    """The order of `extract_answer`: a markdown "#### Solution" heading is not the answer a later box holds."""
    assert final_answer("#### Solution\nWe add.\n\\boxed{5}") == "5"
    assert final_answer("He earns 8 * 9 = 72\n#### 72") == "72"
    assert final_answer("#### 72\n####") == final_answer("#### 72\n#### \n") == "72"  # an empty line states none
    assert final_answer("2 + 2 = 4\n#### ") is None  # nor is the work above it the answer
    assert final_answer(r"\boxed{5} \boxed{6") == "5" and final_answer(" 12. ") == "12"
    for text in ("#### Solution\nWe add.\n\\boxed{5}", "#### 72\n####", "x\n#### 7\n\\boxed{8}"):
        assert final_answer(text) == extract_answer(text)
