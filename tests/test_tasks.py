"""The tiny task generator, its renderings, and the GSM8K-style loader."""

import json

import pytest

from conftest import gsm8k_path
from nanoo1.answers import check, final_answer
from nanoo1.steps import equations_hold
from nanoo1.tasks import OPS, TINY_DIR, Problem, load_jsonl, make_problems, solution_tree, think_prompt, write_jsonl
from nanoo1.thoughts import parse_tree


def test_problems_are_seeded_and_within_bounds():
    a, b, c = make_problems(200, seed=3), make_problems(200, seed=3), make_problems(200, seed=4)
    assert [p.question for p in a] == [p.question for p in b] != [p.question for p in c]
    for p in a:
        assert 2 <= len(p.steps) <= 5
        x = p.steps[0].x
        for s in p.steps:
            assert s.x == x and s.y == OPS[s.op](s.x, s.b) and 1 <= s.y <= 50  # each step starts where the last ended
            if s.op == "/":
                assert s.x % s.b == 0  # exact division
            x = s.y
        assert p.answer == str(x)
        assert len(p.question.split(". ")) == len(p.steps) + 2  # the start, one sentence per step, the question


def test_known_problem_and_its_three_renderings():
    (p,) = make_problems(1, seed=0)
    assert p.question.startswith("Ivy has 18 coins.") and p.answer == "11"
    assert p.thought_steps() == ["18 / 3 = 6", "6 / 3 = 2", "2 * 2 = 4", "4 * 2 = 8", "8 + 3 = 11"]
    tree = solution_tree(p)
    assert [n.meta for n in tree.nodes] == ["<problem>"] + ["<expansion>"] * 5 + ["<conclusion>"]
    assert tree.nodes[-1].text == "The answer is \\boxed{11}" and check(tree.nodes[-1].text, p.answer)
    assert parse_tree(tree.training_text()).training_text() == tree.training_text()
    assert p.think_solution() == "<think>18 / 3 = 6\n6 / 3 = 2\n2 * 2 = 4\n4 * 2 = 8\n8 + 3 = 11</think>The answer is \\boxed{11}"
    assert think_prompt(p.question) == p.question + "\n"
    assert p.think_solution([True, False, False, False, True]) == ("<think>18 / 3 = 6\nLet me see.\n6 / 3 = 2\n2 * 2 = 4\n"
                                                                   "4 * 2 = 8\n8 + 3 = 11\nLet me see.</think>The answer is \\boxed{11}")
    code = p.code_steps()
    assert code[0] == ("Step 1: She splits them into 3 equal piles and keeps one pile.", "x1 = 18 // 3")
    assert code[-1][1] == "print(x5)"
    scope = {}
    exec("\n".join(c for _, c in code[:-1]), scope)  # the code computes the answer
    assert scope["x5"] == 11


def test_jsonl_round_trip_and_gsm8k_format(tmp_path):
    problems = make_problems(5, seed=1)
    write_jsonl(problems, tmp_path / "p.jsonl")
    again = load_jsonl(tmp_path / "p.jsonl")
    assert [(p.question, p.answer, p.steps) for p in again] == [(p.question, p.answer, p.steps) for p in problems]
    row = json.loads((tmp_path / "p.jsonl").read_text().splitlines()[0])
    assert row["answer"].endswith("#### " + problems[0].answer)
    (tmp_path / "g.jsonl").write_text(json.dumps({"question": "q?", "answer": "2 + 2 = 4\n#### 1,004"}) + "\n")
    assert load_jsonl(tmp_path / "g.jsonl") == [Problem("q?", "1004")]
    (tmp_path / "m.jsonl").write_text(json.dumps({"question": "q?", "answer": "(3, 4)"}) + "\n")  # not a number: as written
    assert load_jsonl(tmp_path / "m.jsonl") == [Problem("q?", "(3, 4)")]


def test_a_problem_without_steps_is_written_as_gsm8k_writes_it(tmp_path):
    """No worked steps: the answer field is "#### 4" alone, with no empty line of work before it."""
    assert Problem("q?", "4").to_json() == {"question": "q?", "answer": "#### 4", "steps": []}
    write_jsonl([Problem("q?", "4")], tmp_path / "p.jsonl")
    assert json.loads((tmp_path / "p.jsonl").read_text())["answer"] == "#### 4"


def test_loader_skips_white_space_lines_and_strips_a_bare_answer(tmp_path):
    """A line of white space only (a blank line of a CRLF file is "\\r") is skipped like an empty one, and an
    answer without "####" is read with its surrounding white space stripped: " 12 \\n" is 12."""
    path = tmp_path / "crlf.jsonl"
    path.write_text('{"question": "a", "answer": "#### 1"}\r\n\r\n   \n{"question": "q?", "answer": " 12 \\n"}\r\n')
    assert load_jsonl(path) == [Problem("a", "1"), Problem("q?", "12")]


def test_loader_reads_the_final_answer_as_check_reads_a_reference(tmp_path):
    """One reading of a reference solution (`answers.final_answer`) for the loader and `check`: a MATH-style
    solution's last box, else the rest of the last "####" line (text on later lines is not the answer), else the
    field."""
    fields = ["He earns 8 * 9 = 72\n#### 72", "#### 72\nmore on the next line", r"so $x = \boxed{\frac{1}{2}}$.", "12."]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"question": "q?", "answer": a}) + "\n" for a in fields))
    assert [p.answer for p in load_jsonl(path)] == ["72", "72", r"\frac{1}{2}", "12"]
    assert [final_answer(a) for a in fields] == ["72", "72", r"\frac{1}{2}", "12"]
    assert check("The answer is 72.", fields[1]) and check(r"\boxed{0.5}", fields[2])


def test_main_writes_test_problems_apart_from_the_training_ones(tmp_path, monkeypatch):
    """`python -m nanoo1.tasks` drops a drawn test problem that is also a training one and keeps --test of the
    rest: here the draw for the test split (seed 6) starts with the first training problem (seed 5)."""
    import nanoo1.tasks as tasks

    real = tasks.make_problems
    train = real(6, 5)

    def drawn(n, seed):
        return real(n, seed) if seed == 5 else [train[0]] + real(n - 1, seed)

    monkeypatch.setattr(tasks, "make_problems", drawn)
    tasks.main(["--out", str(tmp_path), "--train", "6", "--test", "3", "--seed", "5", "--vocab-size", "320"])
    assert [p.question for p in load_jsonl(tmp_path / "train.jsonl")] == [p.question for p in train]
    assert [p.question for p in load_jsonl(tmp_path / "test.jsonl")] == [p.question for p in real(5, 6)[:3]]
    assert (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("flags, message", [(["--vocab-size", "256"], "vocab_size=256 leaves no room"),
                                            (["--train", "-3"], "--train: -3 must be at least 1"),
                                            (["--test", "0"], "--test: 0 must be at least 1")])
def test_main_refuses_bad_flags_before_it_writes_a_file(flags, message, tmp_path, capsys):
    """Its default --out is the repository's data/tiny: a bad flag is a usage error that leaves the splits there."""
    import nanoo1.tasks as tasks

    (tmp_path / "train.jsonl").write_text("kept\n")
    with pytest.raises(SystemExit):
        tasks.main(["--out", str(tmp_path), "--train", "6", *flags])
    assert message in capsys.readouterr().err and [p.name for p in tmp_path.iterdir()] == ["train.jsonl"]
    assert (tmp_path / "train.jsonl").read_text() == "kept\n"


def test_loader_errors_name_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_jsonl(tmp_path / "nope.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "#### 1"}\n{"question": "b"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected keys 'question' and 'answer'"):
        load_jsonl(bad)
    bad.write_text('{"question": "a", "answer": "#### 1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
        load_jsonl(bad)
    for line in ('{"id": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000):  # past int() and recursion limits
        bad.write_text('{"question": "a", "answer": "#### 1"}\n' + line + "\n")
        with pytest.raises(ValueError, match=r"bad.jsonl:2: invalid JSON"):
            load_jsonl(bad)


@pytest.mark.parametrize("line, message", [
    ('5', r"expected a JSON object with 'question' and 'answer', got 5"),
    ('"question and answer"', r"expected a JSON object .*, got \"question and answer\""),
    ('{"question": null, "answer": "#### 3"}', r"'question' must be a string, got null"),
    ('{"question": "q?", "answer": 3}', r"'answer' must be a string, got 3"),
    ('{"question": "Mia has 7 apples \\ud83d", "answer": "#### 7"}', r"'question' holds half of a \\uXXXX surrogate pair"),
    ('{"question": "q?", "answer": "#### 3", "steps": 3}', r"'steps' must be a list of \[x, op, b, y\], got 3"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[1]]}', r"steps\[0\] must be \[x, op, b, y\] .*, got \[1\]"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[1, "+", 2, 3], [3, "^", 1, 3]]}', r"steps\[1\] must be .* op one of \+ - \* /"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[1, "+", "2", 3]]}', r"steps\[0\] must be .*, got \[1, \"\+\", \"2\", 3\]"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[1, "+", 2, 3, 0]]}', r"steps\[0\] must be .*, got \[1, "),
    # worked steps that do not hold, do not chain or do not end at the answer: every format would teach them
    ('{"question": "q?", "answer": "#### 13", "steps": [[7, "+", 5, 13]]}', r"steps\[0\] \[7, \"\+\", 5, 13\] is not exact"),
    ('{"question": "q?", "answer": "#### 9", "steps": [[7, "+", 5, 12], [11, "-", 2, 9]]}', r"steps\[1\] .* before it \(12\)"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[7, "/", 2, 3]]}', r"steps\[0\] \[7, \"/\", 2, 3\] is not exact"),
    ('{"question": "q?", "answer": "#### 3", "steps": [[7, "/", 0, 3]]}', r"steps\[0\] \[7, \"/\", 0, 3\] is not exact"),
    ('{"question": "q?", "answer": "#### 12", "steps": [[12, "*", 2, 24]]}', r"the last step's result 24 is not the answer '12'"),
    # an empty answer, or an empty last "####" line: no final answer (not one read from the work above it)
    *[(json.dumps({"question": "q?", "answer": a}), "no final answer in")
      for a in ["", "   ", "#### ", "2 + 2 = 4\n#### ", "#### 4\n#### ."]],
])
def test_loader_rejects_bad_rows_naming_file_and_line(tmp_path, line, message):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "a", "answer": "#### 1"}\n\n' + line + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3: " + message):
        load_jsonl(bad)


def test_loader_rejects_a_file_that_is_not_utf8(tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"question": "a", "answer": "#### 1"}\n{"question": "caf\xe9?", "answer": "#### 2"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl:2: not UTF-8 text \(byte b'\\xe9'"):
        load_jsonl(bad)


def test_shipped_splits_are_disjoint_and_regenerable():
    train, test = load_jsonl(TINY_DIR / "train.jsonl"), load_jsonl(TINY_DIR / "test.jsonl")
    assert len(train) == 10000 and len(test) == 500
    assert not {p.question for p in train} & {p.question for p in test}
    assert [p.question for p in train[:50]] == [p.question for p in make_problems(50, seed=1234)]


def test_gsm8k_is_read_as_it_is():
    """eval's and selfplay's --data read GSM8K's files through load_jsonl, with no conversion step."""
    for split, n in (("train", 7473), ("test", 1319)):
        path = gsm8k_path(split)
        problems = load_jsonl(path)
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert len(problems) == len(rows) == n
        for p, row in zip(problems, rows):
            assert p.question == row["question"] and p.steps == []
            assert p.answer.lstrip("-").isdigit()  # "#### 1,450,000" -> "1450000"
            assert check(row["answer"], p.answer) and equations_hold(row["answer"])
    commas = [p for p in load_jsonl(gsm8k_path("test")) if p.answer == "1450000"]
    assert commas  # written "#### 1,450,000" in the file
