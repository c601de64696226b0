"""Tasks: a seeded generator of multi-step arithmetic word problems, and a loader for GSM8K-style jsonl.

    Mia has 7 apples. She buys 5 more. She gives 3 to Leo. Then she has 2 times as many.
    How many apples does Mia have now?

    7 + 5 = 12 / 12 - 3 = 9 / 9 * 2 = 18 / the answer is 18

Each sentence after the first is one step (add, subtract, multiply, divide exactly), so a problem of
2-5 steps needs 2-5 correct operations, in the spirit of GSM8K (Cobbe et al. 2021) with exact integer
answers. A Problem keeps its steps, so its solution can be rendered in any format: the LongCoT thought
format (`solution_tree`), rStar's code format, or Elastic Reasoning's <think> format.

    python -m nanoo1.tasks                      # regenerate data/tiny/{train,test}.jsonl and data/tiny/tokenizer.json
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from nanoo1.answers import final_answer, parse_number
from nanoo1.config import entry_parser, positive_int
from nanoo1.files import atomic_write, check_directory
from nanoo1.thoughts import Tree

NAMES = [("Mia", "she", "her"), ("Leo", "he", "him"), ("Ava", "she", "her"), ("Sam", "he", "him"),
         ("Zoe", "she", "her"), ("Max", "he", "him"), ("Ivy", "she", "her"), ("Ben", "he", "him")]
ITEMS = ["apples", "pens", "cards", "books", "coins", "stamps", "shells", "marbles"]
OPS = {"+": lambda x, b: x + b, "-": lambda x, b: x - b, "*": lambda x, b: x * b, "/": lambda x, b: x // b}
SENTENCES = {
    "+": ["{He} buys {b} more.", "{He} finds {b} more.", "{Other} gives {him} {b} more."],
    "-": ["{He} gives {b} to {Other}.", "{He} sells {b}.", "{He} loses {b}."],
    "*": ["Then {he} has {b} times as many."],
    "/": ["{He} splits them into {b} equal piles and keeps one pile."],
}
PAUSE = "Let me see."  # a line of thinking that carries nothing (Problem.think_solution), 9 tokens like an equation
TINY_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny"  # the repository's data/tiny (editable install)


@dataclass
class Step:
    x: int  # the quantity before the step
    op: str  # "+", "-", "*" or "/"
    b: int  # the operand in the sentence
    y: int  # the quantity after

    def equation(self) -> str:
        return f"{self.x} {self.op} {self.b} = {self.y}"


@dataclass
class Problem:
    question: str
    answer: str  # the final answer as text ("18"); checked with answers.check
    steps: list[Step] = field(default_factory=list)  # empty for problems loaded without worked steps

    def thought_steps(self) -> list[str]:
        """The texts of the expansion thoughts, one equation each."""
        return [s.equation() for s in self.steps]

    def code_steps(self) -> list[tuple[str, str]]:
        """(comment, code) per step for rStar's code-augmented format (rstar.py renders them).

            ("Step 1: She buys 5 more.", "x1 = 7 + 5"), ("Step 2: She gives 3 to Leo.", "x2 = x1 - 3"),
            ("Step 3: How many apples does Mia have now?", "print(x2)")

        The comment is the question's sentence for that step, so the result is never in it and Python does
        the arithmetic (division is exact, `//`); the last step prints the answer. A question whose sentences
        do not line up with the steps gets "add 5", "divide by 2", ... instead. No steps: [].
        """
        if not self.steps:
            return []
        sentences = self.question.strip().replace(". ", ".\n").replace("? ", "?\n").split("\n")
        if len(sentences) != len(self.steps) + 2:  # the opening sentence, one per step, the question
            words = {"+": "add", "-": "subtract", "*": "multiply by", "/": "divide by"}
            sentences = [""] + [f"{words[s.op]} {s.b}" for s in self.steps] + ["print the answer"]
        out = []
        for i, s in enumerate(self.steps):
            x = f"x{i}" if i else str(s.x)
            out.append((f"Step {i + 1}: {sentences[i + 1]}", f"x{i + 1} = {x} {'//' if s.op == '/' else s.op} {s.b}"))
        out.append((f"Step {len(self.steps) + 1}: {sentences[-1]}", f"print(x{len(self.steps)})"))
        return out

    def think_solution(self, pauses: list[bool] | None = None) -> str:
        """Elastic Reasoning's format after `think_prompt`: the work inside <think>, then the answer. Where
        pauses[i] is true, step i's equation is followed by the line PAUSE, thinking that says nothing: a
        budget can drop it without losing a step (warmstart.THINK_PAUSES)."""
        lines = []
        for i, text in enumerate(self.thought_steps()):
            lines += [text, PAUSE] if pauses and pauses[i] else [text]
        return "<think>" + "\n".join(lines) + "</think>The answer is \\boxed{" + self.answer + "}"

    def to_json(self) -> dict:
        work = "\n".join(self.thought_steps())
        return {"question": self.question, "answer": (work + "\n" if work else "") + f"#### {self.answer}",
                "steps": [[s.x, s.op, s.b, s.y] for s in self.steps]}


def think_prompt(question: str) -> str:
    """The prompt of the <think> format: the question on its own line."""
    return question + "\n"


def solution_tree(problem: Problem) -> Tree:
    """The worked solution as a chain of thoughts: <problem>, one <expansion> per step, <conclusion>."""
    tree = Tree(problem.question)
    node = tree.root
    for text in problem.thought_steps():
        node = tree.add(node, "<expansion>", text)
    tree.add(node, "<conclusion>", "The answer is \\boxed{" + problem.answer + "}")
    return tree


def _step(rng: random.Random, x: int, max_value: int, max_operand: int, max_factor: int) -> Step | None:
    op = rng.choice("+-*/")
    if op == "+" and x < max_value - 2:
        b = rng.randint(2, min(max_operand, max_value - x))
    elif op == "-" and x > 3:
        b = rng.randint(1, min(max_operand, x - 2))
    elif op == "*" and 2 * x <= max_value:
        b = rng.randint(2, min(max_factor, max_value // x))
    elif op == "/":
        divisors = [d for d in range(2, max_factor + 1) if x % d == 0 and x // d >= 2]
        if not divisors:
            return None
        b = rng.choice(divisors)
    else:
        return None
    return Step(x, op, b, OPS[op](x, b))


def make_problem(rng: random.Random, n_steps: int, max_value: int = 50, max_operand: int = 10, max_factor: int = 3,
                 max_start: int = 20) -> Problem:
    name, he, him = rng.choice(NAMES)
    other = rng.choice([n for n, _, _ in NAMES if n != name])
    item = rng.choice(ITEMS)
    x = rng.randint(2, max_start)
    sentences, steps = [f"{name} has {x} {item}."], []
    while len(steps) < n_steps:
        step = _step(rng, x, max_value, max_operand, max_factor)
        if step is None:
            continue
        template = rng.choice(SENTENCES[step.op])
        sentences.append(template.format(He=he.capitalize(), he=he, him=him, b=step.b, Other=other))
        steps.append(step)
        x = step.y
    sentences.append(f"How many {item} does {name} have now?")
    return Problem(" ".join(sentences), str(x), steps)


def make_problems(n: int, seed: int, min_steps: int = 2, max_steps: int = 5, max_value: int = 50, max_operand: int = 10,
                  max_factor: int = 3, max_start: int = 20) -> list[Problem]:
    """n problems of min_steps..max_steps steps; every quantity an integer in 1..max_value, added or
    subtracted operands at most max_operand, factors and divisors at most max_factor; seeded."""
    rng = random.Random(seed)
    return [make_problem(rng, rng.randint(min_steps, max_steps), max_value, max_operand, max_factor, max_start)
            for _ in range(n)]


def _is_step(s) -> bool:
    """Whether s is a Step as to_json writes it: [x, op, b, y], integers x, b, y and op one of OPS."""
    return (isinstance(s, list) and len(s) == 4 and isinstance(s[1], str) and s[1] in OPS
            and all(type(v) is int for v in (s[0], s[2], s[3])))


def load_jsonl(path) -> list[Problem]:
    """GSM8K-style jsonl: {"question", "answer": "...#### N"} per line, both strings (and nanoo1's optional
    "steps", a list of [x, op, b, y]); the answer is the field's final answer (`answers.final_answer`: a MATH-style
    field's last box, else its last "####" line). A file that is not UTF-8 or a line that breaks this raises
    ValueError naming path:line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start:e.start + 1]!r}: {e.reason})") from e
    problems = []
    for i, line in enumerate(text.split("\n"), 1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as e:  # bad JSON, an int of over 4,300 digits, nesting too deep
            raise ValueError(f"{path}:{i}: invalid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: expected a JSON object with 'question' and 'answer', got {line.strip()[:40]}")
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{path}:{i}: expected keys 'question' and 'answer', got {sorted(row)}")
        for key in ("question", "answer"):
            if not isinstance(row[key], str):
                raise ValueError(f"{path}:{i}: '{key}' must be a string, got {json.dumps(row[key])[:40]}")
            try:
                row[key].encode("utf-8")
            except UnicodeEncodeError as e:  # json reads a lone "\ud83d" (half an escaped emoji) as a surrogate
                raise ValueError(f"{path}:{i}: '{key}' holds half of a \\uXXXX surrogate pair, which is no text") from e
        final = final_answer(row["answer"])  # "#### N", a box or the whole field, as `check` reads a reference
        if final is None:
            raise ValueError(f"{path}:{i}: no final answer in {row['answer'][-40:]!r}")
        steps = row.get("steps", [])
        if not isinstance(steps, list):
            raise ValueError(f"{path}:{i}: 'steps' must be a list of [x, op, b, y], got {json.dumps(steps)[:40]}")
        for k, s in enumerate(steps):  # worked steps chain, hold exactly and end at the answer
            if not _is_step(s):
                raise ValueError(f"{path}:{i}: steps[{k}] must be [x, op, b, y] with integers x, b, y and op one of "
                                 f"{' '.join(OPS)}, got {json.dumps(s)[:40]}")
            x, op, b, y = s
            if (op == "/" and (b == 0 or x % b)) or OPS[op](x, b) != y or (k and x != steps[k - 1][3]):
                raise ValueError(f"{path}:{i}: steps[{k}] {json.dumps(s)} is not exact arithmetic on the "
                                 f"result before it{f' ({steps[k - 1][3]})' if k else ''}")
        value = parse_number(final)  # "1,234" is stored as 1234; "(3, 4)" keeps its comma
        if steps and value != steps[-1][3]:
            raise ValueError(f"{path}:{i}: the last step's result {steps[-1][3]} is not the answer {final!r}")
        problems.append(Problem(row["question"], final.replace(",", "") if value is not None else final,
                                [Step(*s) for s in steps]))
    return problems


def write_jsonl(problems: list[Problem], path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(p.to_json()) + "\n" for p in problems))


def main(argv=None):
    p, _ = entry_parser("nanoo1.tasks", "Regenerate the tiny task splits and the tiny tokenizer.")
    p.add_argument("--out", type=Path, default=TINY_DIR, help="directory for train.jsonl, test.jsonl, tokenizer.json")
    p.add_argument("--train", type=positive_int, default=10000, help="training problems")
    p.add_argument("--test", type=positive_int, default=500, help="held-out problems")
    p.add_argument("--seed", type=int, default=1234, help="seed of the problems drawn")
    p.add_argument("--vocab-size", type=positive_int, default=512, help="tokens in the trained tokenizer, special tokens "
                   "included")
    args = p.parse_args(argv)
    from nanoo1.rstar import rstar_prompt, solution_steps
    from nanoo1.tokenizer import train_tokenizer

    train = make_problems(args.train, args.seed)
    seen = {q.question for q in train}
    test = [q for q in make_problems(args.test * 2, args.seed + 1) if q.question not in seen][: args.test]
    texts = ([solution_tree(q).training_text() for q in train[:4000]] + [q.think_solution() for q in train[:1000]]
             + [rstar_prompt(q.question, solution_steps(q)) for q in train[:1000]])
    try:  # the tokenizer first: a vocabulary too small is refused before a file is written
        tok = train_tokenizer(texts, args.vocab_size)
        check_directory(args.out)
    except (ValueError, NotADirectoryError) as e:
        p.error(str(e))
    write_jsonl(train, args.out / "train.jsonl")
    write_jsonl(test, args.out / "test.jsonl")
    tok.save(args.out)
    print(f"wrote {len(train)} train / {len(test)} test problems and a {len(tok)}-token tokenizer to {args.out}")


if __name__ == "__main__":
    main()
