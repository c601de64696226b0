"""The step checker: hand-written cases, GSM8K as it is, the tiny task's steps, bounded cost."""

import random
import re
import time
from pathlib import Path

import pytest

from conftest import gsm8k_rows
from nanoo1.arith import evaluate
from nanoo1.steps import _SCAN, MAX_EQUATIONS
from nanoo1.steps import equations_hold
from nanoo1.tasks import TINY_DIR, load_jsonl

CASES = Path(__file__).resolve().parent / "equation_cases.txt"


def hand_written_cases():
    """(line number, text, must hold) from tests/equation_cases.txt."""
    out = []
    for i, line in enumerate(CASES.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(("+ ", "- ")) or line in ("+", "-"):
            out.append(pytest.param(line[2:].replace("\\n", "\n"), line[0] == "+", id=f"line{i}"))
    return out


@pytest.mark.parametrize("text, holds", hand_written_cases())
def test_hand_written_cases(text, holds):
    assert equations_hold(text) is holds


def test_the_case_list_has_both_verdicts_for_each_form():
    cases = hand_written_cases()
    assert len(cases) > 200
    assert sum(c.values[1] for c in cases) > 100 and sum(not c.values[1] for c in cases) > 80


# -- GSM8K as it is ------------------------------------------------------------------------------------
def corrupt_first_annotation(solution: str) -> str | None:
    """The solution with the result of its first `<<expr=result>>` plus one, in the annotation and in the
    number written right after it; None without an annotation."""
    m = re.search(r"<<([^<>]*)=([^<>=]*)>>", solution)
    if m is None:
        return None
    result = evaluate(m.group(2))
    new = result + 1
    decimals = len(m.group(2).partition(".")[2])
    written = f"{float(new):.{decimals}f}" if decimals else str(new)
    after = re.match(r"\$?([\d,]*\.?\d+(?:/\d+)?)", solution[m.end():])
    rest = solution[m.end():]
    if after and evaluate(after.group(1)) == result:
        rest = rest[:after.start(1)] + written + rest[after.end(1):]
    return solution[:m.start()] + f"<<{m.group(1)}={written}>>" + rest


def test_every_gsm8k_reference_solution_holds():
    rows = gsm8k_rows("train") + gsm8k_rows("test")
    assert len(rows) == 8792
    failed = [r["answer"] for r in rows if not equations_hold(r["answer"])]
    assert not failed, failed[:3]


def test_gsm8k_solutions_with_a_wrong_first_annotation_fail():
    rows = gsm8k_rows("train") + gsm8k_rows("test")
    corrupted = [c for c in (corrupt_first_annotation(r["answer"]) for r in rows) if c is not None]
    assert len(corrupted) > 8600  # 113 solutions carry no annotation
    passed = [c for c in corrupted if equations_hold(c)]
    assert len(passed) <= 0.01 * len(corrupted), passed[:3]


def test_the_number_written_after_an_annotation_is_checked_where_the_text_ends():
    assert not equations_hold("She has 5 * 3 = <<5*3=15>>16") and equations_hold("She has 5 * 3 = <<5*3=15>>15")
    lines = [line for r in gsm8k_rows("train") + gsm8k_rows("test") for line in r["answer"].split("\n")[:-1]]
    ending = [(line, m) for line in lines for m in [re.search(r"<<[^<>]*>>(\d+)$", line)] if m]
    assert len(ending) > 3000  # a thought of one line ends on the number after its annotation
    wrong = [line[:m.start(1)] + str(int(m.group(1)) + 1) for line, m in ending]
    assert not [line for line in wrong if equations_hold(line)]


def test_corruption_changes_the_annotation_and_the_number_after_it():
    text = "She makes 9 * 2 = $<<9*2=18>>18 every day.\nThen <<18+1=19>>19."
    assert corrupt_first_annotation(text) == "She makes 9 * 2 = $<<9*2=19>>19 every day.\nThen <<18+1=19>>19."
    assert corrupt_first_annotation("It is <<1/4=.25>>.25 of it") == "It is <<1/4=1.25>>1.25 of it"
    assert corrupt_first_annotation("no annotation") is None


def test_gsm8k_style_thoughts():
    """A GSM8K solution as thoughts, one line each: a line with an annotation is judged by it, and the prose
    of every line, annotations taken out, is read as arithmetic. GSM8K's prose has slips of its authors
    (nothing checks it): the checker must reject those and hardly anything else."""
    rows = gsm8k_rows("train") + gsm8k_rows("test")
    lines = [line for r in rows for line in r["answer"].split("\n")[:-1]]
    annotated = [line for line in lines if "<<" in line]
    assert len(annotated) > 25000 and all(equations_hold(line) for line in annotated)
    prose = [re.sub(r"<<[^<>]*>>", "", line) for line in lines]
    rejected = [line for line in prose if not equations_hold(line)]
    slips = ["Therefore, over 100 acts, 70 + 40 = 100 people have reappeared in all.",  # the answer is 110
             "Jerry took 2*8 = 24 hours fixing the broken kitchen counter",
             "The team season record is 11,480 because 10 x 1,248 = 11,480"]
    assert all(s in rejected for s in slips)
    assert len(rejected) <= 40, rejected  # 33 of 31,545 lines, each a slip or a typo as written


def test_tiny_task_steps_are_judged_as_exact_integer_arithmetic():
    problems = load_jsonl(TINY_DIR / "train.jsonl")[:2000]
    for p in problems:
        for s in p.steps:
            assert equations_hold(s.equation()), s.equation()
            assert not equations_hold(f"{s.x} {s.op} {s.b} = {s.y + 1}")
            assert not equations_hold(f"{s.x + 1} {s.op} {s.b} = {s.y}")
        assert equations_hold(p.think_solution())


# -- bounded cost --------------------------------------------------------------------------------------
MB = 1 << 20
ADVERSARIAL = {
    "nested braces": "{" * (MB // 2) + "1 = 2" + "}" * (MB // 2),
    "digits": "1" * MB + " + 1 = 2",
    "a 5,000-digit result": "1 + 1 = " + "2" * 5000,
    "repeated \\boxed{": "\\boxed{" * (MB // 7) + "= 1",
    "repeated answer is": "answer is 1 = 2 " * (MB // 16),
    "equals signs": "=" * MB,
    "1 = 1 = ...": "1 = " * (MB // 4),
    "long sums": ("1+" * 90 + "= 5 ") * (MB // 184),
    "calculator lines": ("<<" + "1+" * 90 + "1=91>>91 ") * (MB // 200),
    "power towers": "10^10^10 = 5 " * (MB // 13),
    "fractions": "\\frac{" * (MB // 6) + "1}{2} = 1",
    "spaces after an operator": ("=+" + " " * 420 + "a") * (MB // 423),  # 2 s while each space began a search for "="
}


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_adversarial_text_is_judged_within_a_second(name):
    text = ADVERSARIAL[name]
    start = time.process_time()
    equations_hold(text)
    assert time.process_time() - start < 1.0  # a quadratic reading takes minutes on these


def test_a_run_of_spaces_is_scanned_once():
    start = time.process_time()
    assert [m.group() for m in _SCAN.finditer("1 +" + " " * 30000 + "a")] == ["1 +"]
    assert time.process_time() - start < 1.0  # 9 s (quadratic) while each space began a search for "="


def test_only_the_first_equations_of_a_long_text_are_read():
    assert not equations_hold("1 + 1 = 2\n" * (MAX_EQUATIONS - 1) + "1 + 1 = 3")
    assert equations_hold("1 + 1 = 2\n" * MAX_EQUATIONS + "1 + 1 = 3")
    assert not equations_hold("<<1+1=2>>2 " * (MAX_EQUATIONS - 1) + "<<1+1=3>>3")
    assert equations_hold("<<1+1=2>>2 " * MAX_EQUATIONS + "<<1+1=3>>3")
    assert not equations_hold("<<no equation>>" * (2 * MAX_EQUATIONS) + "2 + 2 = 5")  # only equations count


def test_never_raises_on_random_arithmetic():
    rng = random.Random(0)
    pieces = ["1", "0", "9", "12", ".5", "1,000", " ", "\n", "+", "-", "*", "/", "//", "^", "(", ")", "[", "]", "{", "}", "=",
              "%", "$", "x", "\\frac{", "\\times", "<<", ">>", "of", "a", "_", ":", "!", "1 1/2", "10^10^", "\u2212", "="]
    for _ in range(5000):
        assert equations_hold("".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))) in (True, False)


# -- bounds, sides and context of the cases above --------------------------------------------------------------
SIDE = "100" + " + 1" * 49  # 199 characters: 100 + 49 = 149


def test_a_side_longer_than_max_side_is_not_read():
    """MAX_SIDE = 200: a false left side of 199 characters is read, one of 201 is not."""
    long = "1" + " + 1" * 50  # 201 characters: 51
    assert len(SIDE) == 199 and len(long) == 201
    assert not equations_hold(SIDE + " = 150") and equations_hold(SIDE + " = 149")
    assert equations_hold(long + " = 52")  # false (51 != 52), but too long to be read


def test_a_side_within_the_margin_of_a_cut_piece_is_not_read():
    """A long text is read in pieces MAX_SIDE + _MARGIN (216) characters each side of an "="; a side that starts or
    ends within _MARGIN characters of a cut may have lost its context there, so it is not read."""
    assert not equations_hold(SIDE + " = 447")  # read alone: 149 != 447
    # the text starts 208 characters before "=": "3 times" lies in the piece, 3 * 149 = 447
    assert equations_hold("3 times " + SIDE + " = 447")
    # 17 spaces before "=" (aligned columns): "twice" falls before the piece, the side at its start; 2 * 149 = 298
    assert equations_hold("She noted the sums in a table. Then twice " + SIDE + " " * 17 + "= 298")
    # 14 spaces after "=": "thousand" falls past the piece's end, the side ends within 16 characters of it;
    # 149 * 1000 = 149 thousand
    assert equations_hold("So 149 * 1000 =" + " " * 14 + SIDE + " thousand dollars in all, as the table shows.")


def test_where_sides_begin_and_end_around_brackets():
    """The left side starts after the last bracket left open; the right side ends before a bracket closed unopened
    or left open; a number written right after a bracket may be a product, so the equation is not read."""
    assert not equations_hold("Total: (2 + 3 = 6)")  # 2 + 3 = 5, read after the open "("
    assert not equations_hold("2 + 3 = 6 (3]")  # right side 6, before the stray "]"
    assert not equations_hold("2 + 3 = 6 (3 + 4")  # right side 6, before the "(" left open
    assert equations_hold("1 + 2 = (1/2) 6")  # (1/2) * 6 = 3: the right side is not read as 1/2
    assert equations_hold("(1/2) 18 + 2 = 11")  # (1/2) * 18 + 2 = 11: the left side is not read as 18 + 2 = 20


def test_context_belongs_to_the_run_it_is_written_against():
    """A word before the run scales the run only where the left side starts it; a word after the run scales the
    right side only where that side ends the run; a lone number is read only as the right side of the "=" before."""
    assert not equations_hold("half (3 + 4 = 8)")  # 3 + 4 = 7; "half" is before the "(", not before 3 + 4
    assert not equations_hold("2 + 2 = 5 (3 thousand left)")  # 2 + 2 = 4; "thousand" follows 3, not 5
    assert equations_hold("2 + 3 = 5 6 = 7")  # "6 = 7": 6 is one number, not the right side (5) of the "=" before
    assert equations_hold("It took 1 + 1/2 = 1:30 hours")  # 1.5 hours is 1:30; a time's ":" is context, not 1
    assert equations_hold("He pays 1/2 = <<1/2=0.5>>50 cents")  # $0.5 is 50 cents: the word after the number counts


def test_annotation_bounds():
    """An annotation is at most MAX_SIDE characters (a longer one is prose), and the number after it is read
    within a window of 64 characters: one that fills the window as the text ends is still checked."""
    assert not equations_hold("<<" + "1+" * 110 + "1=111>>111. Then 2 + 2 = 5.")  # 225 characters: prose, 4 != 5
    after = "1001" + " + 0" * 15  # exactly 64 characters; 10 * 100 = 1000, not 1001
    assert len(after) == 64
    assert not equations_hold("<<10*100=1000>>" + after) and equations_hold("<<10*100=1000>>1000" + " + 0" * 15)


def test_pieces_that_touch_are_read_as_one():
    """Pieces around two "=" signs 2 * 216 + 1 = 433 characters apart touch ([0, 228] and [228, ...]) and are read
    as one, so nothing is cut between them: the first equation's right side, 14 spaces after its "=", is read whole."""
    first = "149 * 1000 =" + " " * 14 + SIDE + " dollars"  # "=" at 11; 149000 != 149
    text = first + " " * 205 + "2 + 2 = 4"  # second "=" at 233 + 205 + 6 = 444 = 11 + 433
    assert text.index("=", 12) - text.index("=") == 433
    assert not equations_hold(text)


def test_equations_hold_checks_every_equation():
    assert equations_hold("11 + 7 = 18") and equations_hold("18 / 3 = 6") and equations_hold("4 x 5 = 20")
    assert not equations_hold("11 + 7 = 19")  # 18
    assert not equations_hold("26 / 3 = 9")  # 26 is not 3 * 9 = 27: a division must be exact
    assert not equations_hold("20 - 4 = 16, then 16 * 2 = 30")  # the second one is wrong: 32
    assert not equations_hold("5 / 0 = 0")
    assert equations_hold("The answer is \\boxed{6}") and equations_hold("")  # nothing to check
