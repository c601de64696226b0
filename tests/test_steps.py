"""The step checker: hand-written cases, GSM8K as it is, the tiny task's steps, bounded cost."""

import random
import re
import time
from pathlib import Path

import pytest

from conftest import gsm8k_rows
from nanoo1.arith import evaluate
from nanoo1.rewards import equations_hold
from nanoo1.steps import _SCAN, MAX_EQUATIONS
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
