"""rStar-Math: code-augmented reasoning steps, judged by running them, and the policy that writes them.

Guan et al. 2025, "rStar-Math: Small LLMs Can Master Math Reasoning with Self-Evolved Deep Thinking".
A solution is a Python program written one step at a time: a comment line of reasoning, code, the step
delimiter. The comment never holds a result, so Python does the arithmetic; the last step prints the answer.

    Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?
    # Step 1: She buys 5 more.
    x1 = 7 + 5
    <end_of_step>
    # Step 2: She gives 3 to Leo.
    x2 = x1 - 3
    <end_of_step>
    # Step 3: How many apples does Mia have now?
    print(x2)
    <end_of_step>
    <output>9</output>

Each new step is judged by running the code of all steps so far, joined, from scratch in the sandbox. A
step that runs is kept. One that fails is shown its error (`<error>NameError: ...</error>`, truncated) and
left out of the programs below it, so the next step can try again, until `error_threshold` failures in a
row end the branch. A step that prints is final: the last line it printed is its answer (+1 / -1 against
the ground truth in training, judged by the PPM at test time). A step that does not parse, or a non-final
step at `max_depth`, ends its branch as a failure. A node's text in the search tree is the rendered step
(what the model wrote, then the observation), so a path's texts are all a prompt or the PPM needs.

The process preference model (ppm.py) scores a path from what `ppm_input` renders of it. `RStarPolicy` is
the search policy (policy.py's propose / evaluate interface) with the PPM as the value.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass
from itertools import takewhile

from nanoo1.answers import MAX_ANSWER, answer_matches, extract_answer
from nanoo1.engine import generate, seeded_generator
from nanoo1.policy import Candidate, generate_calls
from nanoo1.ppm import ProcessPreferenceModel, ppm_scores
from nanoo1.sandbox import SandboxResult, run_many
from nanoo1.thoughts import Node, Tree
from nanoo1.tokenizer import batch_ids
from nanoo1.tokenizer import CODE_TOKENS

RSTAR_TOKENS = CODE_TOKENS  # one token each in a tokenizer trained with tokenizer.SPECIAL_TOKENS
STEP_END, OUTPUT, END_OUTPUT, ERROR, END_ERROR = CODE_TOKENS
CACHED_CHARS = 4096  # execute_steps keeps runs that printed at most this much: 16k programs a round stay under 64 MB


@dataclass
class RStarConfig:
    max_step_tokens: int = 64  # a step not finished within this many tokens is invalid
    temperature: float = 1.0  # sampling temperature of candidate steps (a request may override it)
    top_k: int | None = None  # sample from the k most likely tokens only
    top_p: float | None = None  # nucleus sampling
    max_depth: int = 16  # a non-final step this deep ends its branch as a failure (rStar-Math: 16)
    error_threshold: int = 2  # this many steps in a row that fail to run end the branch as a failure
    max_output_chars: int = 128  # observations shown to the model are cut to this (an output keeps its last line)
    timeout: float = 2.0  # sandbox wall-clock seconds per program
    memory_mb: int = 256  # sandbox address-space limit per program
    ppm_batch_size: int = 32  # paths per PPM forward pass
    max_rows: int = 0  # at most this many candidate steps in one generate call (0: no limit): bounds the KV cache
    step_prefix: str = "#"  # forced at the start of every step: a model that also knows other formats after the same
    # question line (the tiny warm start's <think>) writes this one; "" lets the model choose


# -- the step format ---------------------------------------------------------------------------------
def format_step(comment: str, code: str) -> str:
    """What the model writes for one step: `# comment`, the code, the delimiter."""
    return f"# {comment}\n{code}\n{STEP_END}"


def solution_steps(problem) -> list[str]:
    """A tasks.Problem's worked solution as rendered steps, the printed answer shown after the last."""
    steps = [format_step(comment, code) for comment, code in problem.code_steps()]
    if steps:
        steps[-1] += f"\n{OUTPUT}{problem.answer}{END_OUTPUT}"
    return steps


def rstar_prompt(question: str, steps: list[str]) -> str:
    """The question and every step so far, each step on its own lines: the text the policy continues.
    `rstar_prompt(p.question, solution_steps(p))` is a whole worked solution, the policy's SFT text."""
    return question + "\n" + "".join(step + "\n" for step in steps)


def encode_trace(tokenizer, question: str, steps: list[str], close: bool = True) -> tuple[list[int], list[int]]:
    """Token ids of `rstar_prompt(question, steps)` and a mask, 1 on the tokens the model writes.

    Encoded piece by piece (the question line; each step's own text; its observation and newline), so a
    prompt is tokenized exactly like the SFT text it was trained on, and every step starts on a token
    boundary, as it does when the model generates it after a prompt. The mask (0 on the question and on
    observations) is the SFT loss mask. close=False leaves out the newline after the last step.
    """
    ids = tokenizer.encode(question + "\n")
    mask = [0] * len(ids)
    for i, step in enumerate(steps):
        body, end, tail = step.partition(STEP_END)
        newline = "\n" if close or i < len(steps) - 1 else ""
        for piece, written in ((body + end, 1), (tail + newline, 0)):
            piece_ids = tokenizer.encode(piece, add_bos=False)
            ids += piece_ids
            mask += [written] * len(piece_ids)
    return ids, mask


def code_example(problem, tokenizer, rng=None) -> tuple[list[int], list[int]]:
    """A tasks.Problem's worked solution as an SFT example (ids, mask) of the code format."""
    return encode_trace(tokenizer, problem.question, solution_steps(problem))


def parse_step(generated: str) -> tuple[str, str] | None:
    """(comment, code) of a step, or None if it is not one: a `#` comment line, at least one line of code,
    then STEP_END. Whatever follows the delimiter (an observation) is ignored."""
    body, end, _ = generated.partition(STEP_END)
    lines = body.strip("\n").split("\n")
    if not end or len(lines) < 2 or not lines[0].startswith("#"):
        return None
    code = "\n".join(lines[1:]).rstrip()
    return (lines[0].lstrip("#").strip(), code) if code.strip() else None


def prints(code: str) -> bool:
    """Whether a step's code calls `print`, which makes it the last step: a call in its syntax tree, so a "print("
    in a comment or a string is none. Code that does not parse alone (a step inside an earlier one's block) is
    read as text."""
    try:
        return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "print" for n in ast.walk(ast.parse(code)))
    except Exception:  # SyntaxError; ValueError (a null byte); RecursionError, MemoryError (deep nesting)
        return re.search(r"\bprint\s*\(", code) is not None


def step_failed(step: str) -> bool:
    """Whether a rendered step did not run: its observation is an error."""
    return step.partition(STEP_END)[2].startswith("\n" + ERROR)


def step_ran(step: str) -> bool:
    """Whether a rendered step ran to its end: it is a step (`parse_step`; one cut off at max_step_tokens is
    not, and nothing ran) and its observation is no error."""
    return parse_step(step) is not None and not step_failed(step)


def joined_program(steps: list[str], code: str) -> str:
    """The code of every step so far that ran, then `code`: the program whose run decides on `code`."""
    kept = [(step, parse_step(step)) for step in steps if not step_failed(step)]
    for step, parsed in kept:
        if parsed is None:
            raise ValueError(f"joined_program: {step[:60]!r} is not a step that ran, so nothing can follow it")
    return "\n".join([parsed[1] for _, parsed in kept] + [code]) + "\n"


def consecutive_errors(steps: list[str]) -> int:
    return len(list(takewhile(step_failed, reversed(steps))))


# -- keep or reject ----------------------------------------------------------------------------------
@dataclass
class CodeStep:
    """A generated step after its program ran: what search adds to the tree."""

    text: str  # rendered: what the model wrote, then "\n<output>...</output>" or "\n<error>...</error>" if any
    status: str  # "ok" (ran: kept), "error" (failed: shown, not kept), "answer" (printed: final), or a failed
    # terminal: "invalid" (not a step), "errors" (error_threshold failures in a row), "depth" (max_depth reached)
    answer: str | None = None  # status "answer": the last line printed (None if it printed nothing)

    @property
    def terminal(self) -> bool:
        return self.status not in ("ok", "error")


def _clip(text: str, limit: int, last_line: bool = False) -> str:
    """`text` cut to its first `limit` characters and "..."; with last_line the cut is followed by the text's
    last line (up to answers.MAX_ANSWER characters of it), so an answer printed last is still in what is shown."""
    if len(text) <= limit:
        return text
    return text[:limit] + "..." + ("\n" + text.rpartition("\n")[2][-MAX_ANSWER:] if last_line else "")


def judge_step(steps: list[str], generated: str, result: SandboxResult | None, config: RStarConfig) -> CodeStep:
    """Keep or reject `generated` under the rendered `steps`, given the run of its joined program (None:
    it did not parse, nothing ran). See the module docstring for the rules."""
    parsed = parse_step(generated)
    if parsed is None:
        return CodeStep(generated, "invalid")
    text = generated[: generated.index(STEP_END) + len(STEP_END)]
    deep = len(steps) + 1 >= config.max_depth
    if not result.ok:
        shown = _clip(f"{result.error}: {result.message}", config.max_output_chars)
        failed = consecutive_errors(steps) + 1 >= config.error_threshold
        return CodeStep(f"{text}\n{ERROR}{shown}{END_ERROR}", "errors" if failed else "depth" if deep else "error")
    out = result.stdout.strip()
    if out:
        text += f"\n{OUTPUT}{_clip(out, config.max_output_chars, last_line=True)}{END_OUTPUT}"
    if prints(parsed[1]):  # the answer is read from the text, as every search and judge reads it
        return CodeStep(text, "answer", extract_answer(text) if out else None)
    return CodeStep(text, "depth" if deep else "ok")


def execute_steps(parents: list[list[str]], generated: list[str], config: RStarConfig,
                  cache: dict[str, SandboxResult] | None = None) -> list[CodeStep]:
    """Judge generated[i] under the steps parents[i]; each distinct program runs once, all in one sandbox batch.

    cache: program -> result of earlier batches (a search tree repeats programs on sibling branches), read
    and filled; runs that timed out or failed in the sandbox itself are not kept, they may go otherwise, nor
    runs that printed more than CACHED_CHARS (run again if met again), so a round's cache stays small."""
    cache = {} if cache is None else cache
    parsed = [parse_step(g) for g in generated]
    programs = [None if p is None else joined_program(steps, p[1]) for steps, p in zip(parents, parsed)]
    distinct = list(dict.fromkeys(p for p in programs if p is not None and p not in cache))
    results = dict(zip(distinct, run_many(distinct, timeout=config.timeout, memory_mb=config.memory_mb) if distinct else []))
    cache.update((p, r) for p, r in results.items() if r.error not in ("Timeout", "SandboxError")
                 and len(r.stdout) + len(r.stderr) + len(r.message) <= CACHED_CHARS)
    results.update((p, cache[p]) for p in programs if p in cache and p not in results)
    return [judge_step(steps, g, results.get(p), config) for steps, g, p in zip(parents, generated, programs)]


def step_reward(step: CodeStep, ground_truth) -> float | None:
    """rStar's terminal reward: +1 for a correct answer, -1 for a wrong one or a failed branch; None if not terminal."""
    if not step.terminal:
        return None
    return 1.0 if step.status == "answer" and answer_matches(step.answer, ground_truth) else -1.0


# -- the policy --------------------------------------------------------------------------------------
@dataclass
class StepCandidate(Candidate):
    """policy.Candidate plus what the sandbox decided. `terminal` is "failure" for a step that ends its branch
    without an answer; a step with an answer is left for search to judge (checker or PPM)."""

    status: str = "ok"  # CodeStep.status
    answer: str | None = None  # a final step's printed answer


class RStarPolicy:
    """rStar's search policy over a nanoo1 model: policy.py's `propose(requests)` and `evaluate(paths)`.

    All candidate steps of a round come from one `generate` call (one per config.max_rows steps; each prompt
    prefilled once and forked k ways, `step_prefix` forced, stopping at STEP_END) and each call's steps are
    judged in one batched sandbox call (a program that already ran is not run again). A node's value is its
    PPM score, or 0 without a PPM (rStar-Math's first rounds, where terminal rewards alone guide the search).
    A step that printed an answer has the <conclusion> meta, any other <expansion> (one that ends its branch
    without an answer is a "failure" terminal, so no search takes an answer from it); requests' metas and
    hints are unused.
    """

    def __init__(self, model, tokenizer, config: RStarConfig | None = None, ppm: ProcessPreferenceModel | None = None,
                 seed: int = 0):
        self.model, self.tokenizer, self.ppm = model, tokenizer, ppm
        self.config = config or RStarConfig()
        self.generator = seeded_generator(model, seed)
        self.prefix_ids = tokenizer.encode(self.config.step_prefix, add_bos=False) if self.config.step_prefix else []
        self.ran: dict[str, SandboxResult] = {}  # program -> its run, shared by every search this policy does
        eos = model.config.eos_token_id
        self.stop_ids, self.stop_strings = list(eos) if isinstance(eos, list) else [eos], None
        if tokenizer.has_token(STEP_END):  # one token: stop on its id, no decoding per step
            self.stop_ids.append(tokenizer.token_id(STEP_END))
        else:
            self.stop_strings = [STEP_END]

    def sample_steps(self, questions: list[str], paths: list[list[str]], ks: list[int], temperature: float | None = None):
        """ks[i] candidate steps under the rendered steps paths[i] of questions[i], generated and judged:
        per path, a list of (CodeStep, engine.Completion); a CodeStep's text starts with the forced prefix,
        the Completion's tokens and text are the sampled ones after it."""
        n = _fork_width(ks)  # samples per prefilled prompt; with unequal ks every prompt is repeated instead
        prompts = [encode_trace(self.tokenizer, q, steps)[0] for q, steps in zip(questions, paths)]
        owners = [i for i, k in enumerate(ks) for _ in range(k)]
        prefix = self.config.step_prefix
        suffixes = [self.prefix_ids] * len(owners) if prefix else None  # fed to every fork before it samples
        rows = generate(self.model, [prompts[i] for i in owners[::n]], self.config.max_step_tokens,
                        self.config.temperature if temperature is None else temperature, self.config.top_k,
                        self.config.top_p, num_samples=n, stop_token_ids=self.stop_ids, stop_strings=self.stop_strings,
                        tokenizer=self.tokenizer, generator=self.generator, suffixes=suffixes)
        steps = execute_steps([paths[i] for i in owners], [prefix + row.text for row in rows], self.config, self.ran)
        out = [[] for _ in paths]
        for i, step, row in zip(owners, steps, rows):
            out[i].append((step, row))
        return out

    def propose(self, requests) -> list[list[StepCandidate]]:
        out = [None] * len(requests)
        for temperature, rows in generate_calls(requests, self.config.max_rows):
            self._propose(rows, requests, temperature, out)
        return out

    def _propose(self, rows: list[int], requests, temperature, out: list) -> None:
        """One sample_steps call for requests[i] of every i in rows, their candidates into out[i]."""
        reqs = [requests[i] for i in rows]
        paths = [[node.text for node in r.tree.path(r.node)[1:]] for r in reqs]
        sampled = self.sample_steps([r.tree.question for r in reqs], paths, [r.k for r in reqs], temperature)
        n = _fork_width([r.k for r in reqs])
        for i, r, steps, pairs in zip(rows, reqs, paths, sampled):
            prompt = rstar_prompt(r.tree.question, steps) + self.config.step_prefix
            out[i] = [_candidate(step, row, prompt, len(row.prompt) if j % n == 0 else len(self.prefix_ids))
                      for j, (step, row) in enumerate(pairs)]

    def evaluate(self, paths: list[list[Node]]) -> tuple[list[float], list[int]]:
        """(PPM score of each root-to-node path, tokens the PPM read for it); 0 and 0 without a PPM. A path that
        reads the same as an earlier one of the call is scored once (`ppm.ppm_scores`) and counts no tokens."""
        if self.ppm is None:
            return [0.0] * len(paths), [0] * len(paths)
        seqs = [ppm_input(self.tokenizer, path) for path in paths]
        seen, tokens = set(), []
        for seq in seqs:
            tokens.append(0 if tuple(seq) in seen else len(seq))
            seen.add(tuple(seq))
        return ppm_scores(self.ppm, seqs, self.tokenizer.pad_id, self.config.ppm_batch_size).tolist(), tokens


def _fork_width(ks: list[int]) -> int:
    return ks[0] if ks and len(set(ks)) == 1 else 1


def _candidate(step: CodeStep, row, prompt: str, prompt_tokens: int) -> StepCandidate:
    n = max(1, len(row.entropy))
    answered = step.status == "answer" and step.answer is not None
    return StepCandidate("<conclusion>" if answered else "<expansion>", step.text, list(row.tokens),
                         list(row.scaled_logprobs), math.exp(row.mean_logprob), sum(row.entropy) / n,
                         sum(row.varentropy) / n, prompt, prompt_tokens, status=step.status, answer=step.answer,
                         terminal="failure" if step.terminal and not answered else None)


# -- what the process preference model (ppm.py) reads ---------------------------------------------------
def ppm_input(tokenizer, path: list[Node]) -> list[int]:
    """What the PPM reads for a root-to-node path: the question and the steps, ending on the last step's
    last token (its delimiter, or the end of its observation)."""
    return encode_trace(tokenizer, path[0].text, [node.text for node in path[1:]], close=False)[0]


def pair_batch(tree: Tree, pairs: list[tuple[Node, Node]], tokenizer, device=None):
    """(ids, mask) (2P, T), right-padded: the positives' paths in rows 0..P-1, the negatives' in P..2P-1,
    so `r = ppm(ids, mask); ppm_pair_loss(r[:P], r[P:])` is one training step's loss."""
    nodes = [p for p, _ in pairs] + [n for _, n in pairs]
    return batch_ids([ppm_input(tokenizer, tree.path(node)) for node in nodes], tokenizer.pad_id, device)
