"""`python -m nanoo1.eval`: accuracy against test-time compute (the scaling curve) of a checkpoint.

    python -m nanoo1.eval --checkpoint runs/tiny/final --methods greedy,best_of_n,beam,mcts --budgets 1,4,16
    python -m nanoo1.eval --checkpoint runs/tiny-grpo/final --methods budget --budgets 10,20,40,80,unlimited
    torchrun --nproc_per_node 2 -m nanoo1.eval --checkpoint runs/tiny/final    # each rank a share of the problems

For each method and budget (best-of-N: N chains; beam: beam width; mcts: simulations; budget: thinking
tokens of the <think> format, `unlimited` for all the context holds) it prints the held-out accuracy and
the tokens spent per problem, writes them to JSONL, and draws accuracy against tokens to a PNG when
matplotlib is installed. `evaluate` and `evaluate_budgeted` are what self-play calls for its tables.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from nanoo1 import dist
from nanoo1.adapters import load_lora
from nanoo1.answers import check
from nanoo1.checkpoint import load_pretrained, read_tokenizer
from nanoo1.config import entry_parser, error_text, parse_bool, positive_int
from nanoo1.device import process_setup, resolve_device
from nanoo1.engine import generate_budgeted, row_parts
from nanoo1.mcts import MCTSConfig
from nanoo1.policy import LMPolicy
from nanoo1.files import atomic_write, check_directory
from nanoo1.search import METHODS, SearchConfig, grade, search
from nanoo1.steps import equations_hold
from nanoo1.tasks import TINY_DIR, Problem, load_jsonl, think_prompt


@dataclass
class EvalResult:
    method: str
    budget: int | None  # N chains, beam width, MCTS simulations, or the thinking budget in tokens (None: unlimited)
    accuracy: float  # share of problems answered correctly
    tokens: float  # tokens generated per problem (prompt tokens not counted)
    seconds: float


# test-time MCTS: every simulation runs (no early stop on value-judged successes) and the tree's conclusions vote
EVAL_MCTS = MCTSConfig(rollout=True, answer="vote", patient=1 << 30)


def search_config(method: str, budget: int, mcts: MCTSConfig | None = None) -> SearchConfig:
    """The SearchConfig of a method at a budget (greedy ignores the budget)."""
    if method == "greedy":
        return SearchConfig(method="greedy")
    if method == "best_of_n":
        return SearchConfig(method="best_of_n", n=budget, vote="majority")
    if method == "beam":
        return SearchConfig(method="beam", n=budget, expand=4)
    return SearchConfig(method="mcts", mcts=replace(mcts or EVAL_MCTS, simulations=budget))


def evaluate(model, tokenizer, problems: list[Problem], method: str, budget: int = 1, mcts: MCTSConfig | None = None,
             temperature: float = 0.7, max_thought_tokens: int = 32, max_rows: int = 0, seed: int = 0) -> EvalResult:
    """Accuracy of one search method at one budget on `problems` (no ground truth reaches the search); max_rows:
    at most this many sequences in one generate call (`LMPolicy`; 0: no limit)."""
    t = time.perf_counter()
    policy = LMPolicy(model, tokenizer, temperature=temperature, max_thought_tokens=max_thought_tokens,
                      max_rows=max_rows, seed=seed)
    results = search(policy, [p.question for p in problems], search_config(method, budget, mcts))
    correct = grade(results, [p.answer for p in problems])
    tokens = sum(r.spent.generated for r in results) / len(problems)
    return EvalResult(method, budget, sum(correct) / len(problems), tokens, time.perf_counter() - t)


def evaluate_sharded(job: Callable[[list[Problem]], EvalResult], problems: list[Problem]) -> EvalResult:
    """`job` on this rank's share of `problems` (`dist.shard`), the result that of the whole set: accuracy and
    tokens per problem weighted by each rank's share, seconds those of the slowest rank. Alone: job(problems)."""
    p = dist.place()
    mine = dist.shard(problems, p)
    if p.world == 1:
        return job(mine)
    parts = [(r, k) for r, k in dist.gather((job(mine) if mine else None, len(mine))) if k]  # more ranks than problems
    n = sum(k for _, k in parts)
    return replace(parts[0][0], accuracy=sum(r.accuracy * k for r, k in parts) / n,
                   tokens=sum(r.tokens * k for r, k in parts) / n, seconds=max(r.seconds for r, _ in parts))


def evaluate_budgeted(model, tokenizer, problems: list[Problem], think_budget: int | None, solution_budget: int = 16,
                      max_rows: int = 0, seed: int = 0, room_for: list[Problem] | None = None) -> EvalResult:
    """Greedy accuracy of Elastic Reasoning's <think> format under a thinking budget (None: unlimited, all
    the room the model's context leaves after the answer and the longest prompt of `room_for`, by default
    `problems`: a rank's share of a sharded evaluation passes the whole set's, to think as long as one process);
    max_rows: at most this many problems in one generate call, which bounds the KV cache (0: no limit)."""
    t = time.perf_counter()
    def encoded(ps: list[Problem]) -> list[list[int]]:
        return [tokenizer.encode(think_prompt(p.question)) for p in ps]

    prompts = encoded(problems)
    think, end = think_budget, tokenizer.token_id("</think>")
    if think_budget is None:
        context = model.config.max_position_embeddings
        longest = max(map(len, prompts if room_for is None else encoded(room_for)))
        think = context - longest - solution_budget - 1
        if think < 0:
            raise ValueError(f"unlimited thinking: the longest prompt ({longest} tokens), </think> and the "
                             f"{solution_budget}-token answer do not fit the model's context of {context} tokens")
    rows = [row for part in row_parts([1] * len(prompts), max_rows)
            for row in generate_budgeted(model, prompts[part.start:part.stop], think, solution_budget, end,
                                         stop_token_ids=[tokenizer.eos_id], tokenizer=tokenizer, seed=seed)]
    correct = [check(r.text.split("</think>")[-1], p.answer) for r, p in zip(rows, problems)]
    tokens = sum(len(r.tokens) for r in rows) / len(problems)
    return EvalResult("budget", think_budget, sum(correct) / len(problems), tokens, time.perf_counter() - t)


def run_name(path: str) -> str:
    """A checkpoint's name for its evaluation's folder: its last two path parts ("runs/tiny/final": tiny-final,
    not the final of every run; a hub id: owner-name)."""
    p = Path(path)
    p = p.resolve() if p.exists() else p
    return "-".join(p.relative_to(p.anchor).parts[-2:])  # without the root: /model is model, not /-model


def budget_name(budget: int | None) -> str:
    return "unlimited" if budget is None else str(budget)


def plot(results: list[EvalResult], path: Path, title: str = "test-time compute") -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in dict.fromkeys(r.method for r in results):
        rs = sorted((r for r in results if r.method == method), key=lambda r: r.tokens)
        ax.plot([r.tokens for r in rs], [100 * r.accuracy for r in rs], "o-", label=method)
        if method.startswith("budget"):  # each point named by its thinking budget
            for r in rs:
                ax.annotate(budget_name(r.budget), (r.tokens, 100 * r.accuracy), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("tokens generated per problem")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv=None):
    p, g = entry_parser("nanoo1.eval", __doc__, "what to evaluate")
    g.add_argument("--checkpoint", required=True, help="checkpoint directory (or hub id) with a tokenizer")
    g.add_argument("--adapters", default=None, help="LoRA adapters (PEFT's layout, e.g. a LoRA self-play run's final/) "
                   "to put on the checkpoint")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when there is one)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="the weights' dtype (default: float32 "
                   "on a CPU, bfloat16 on a GPU)")
    g.add_argument("--data", type=Path, default=TINY_DIR / "test.jsonl", help="GSM8K-style jsonl")
    g.add_argument("--limit", type=positive_int, default=200, help="first N problems")
    g = p.add_argument_group("compute")
    g.add_argument("--methods", default="greedy,best_of_n,beam,mcts", help="comma-separated; also 'budget' (<think> format)")
    g.add_argument("--budgets", default="1,2,4,8,16", help="N / beam width / MCTS simulations / thinking tokens "
                   "('unlimited': all the context holds, for budget only)")
    g.add_argument("--solution-budget", type=positive_int, default=16, help="budget: answer tokens after </think> (the "
                   "tiny recipe's 16; the 2b preset trains with 256)")
    g.add_argument("--temperature", type=float, default=0.7, help="sampling temperature of the searches")
    g.add_argument("--max-thought-tokens", type=positive_int, default=32, help="a thought is cut after this many tokens (the "
                   "tiny task's 32; the 2b preset trains with 192)")
    g.add_argument("--max-rows", type=int, default=0, help="at most this many sequences in one generate call (0: no "
                   "limit); bounds the KV cache (e.g. 32 for gemma-2-2b's searches on a 16 GB GPU, as the 2b preset; "
                   "a row of the unlimited thinking budget may fill the context: 32 of gemma-2-2b's take 26 GiB)")
    g.add_argument("--seed", type=int, default=0, help="seed of the searches' sampling")
    g.add_argument("--check-equations", type=parse_bool, default=True,
                   help="mcts: a thought with a false `a op b = c` is a failed terminal (the step checker self-play uses)")
    g.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, default=None, help="directory for eval.jsonl and scaling.png, replaced on each "
                   "run (default: runs/eval/NAME, NAME the checkpoint's last two path parts, RUN-final for runs/RUN/final, "
                   "or owner-name for a hub id, with +RUN-final of --adapters)")
    args = p.parse_args(argv)
    if not 0 < args.temperature < math.inf:
        p.error(f"--temperature {args.temperature}: expected a number above 0")
    if args.max_rows < 0:
        p.error(f"--max-rows {args.max_rows}: expected 0 (no limit) or more")
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS + ("budget",)]
    if unknown:
        p.error(f"--methods: unknown {unknown}; expected a comma-separated list of {METHODS + ('budget',)}")
    try:
        budgets = [None if b == "unlimited" else int(b) for b in args.budgets.split(",")]
    except ValueError:
        p.error(f"--budgets {args.budgets!r}: expected comma-separated whole numbers, e.g. 1,2,4,8 (or 'unlimited')")
    if min((b for b in budgets if b is not None), default=1) < 1:
        p.error(f"--budgets {args.budgets!r}: every budget must be at least 1")
    if None in budgets and methods != ["budget"]:
        p.error(f"--budgets {args.budgets!r}: 'unlimited' is a thinking budget, for --methods budget alone")
    name = run_name(args.checkpoint)
    if args.adapters:  # the base with adapters is another model: runs/eval/BASE+RUN-final, beside the base's own
        name += "+" + run_name(args.adapters)
    out = args.out or Path("runs") / "eval" / name
    try:
        problems = load_jsonl(args.data)[: args.limit]
        if not problems:
            raise ValueError(f"{args.data}: no problems")
        check_directory(out)
    except (OSError, ValueError) as e:
        p.error(str(e))
    process_setup(args.threads)
    try:
        device = dist.setup(resolve_device(args.device))
        dtype = args.dtype or ("float32" if device.type == "cpu" else "bfloat16")
        tokenizer = read_tokenizer(args.checkpoint)  # each method's format tokens, before a weight is read
        for method in methods:
            tokenizer.require("think" if method == "budget" else "thought", f"--methods {method}")
        model, _ = load_pretrained(args.checkpoint, dtype=dtype, device=device)
        if args.adapters:
            load_lora(model, args.adapters)
    except (OSError, ValueError, KeyError) as e:  # KeyError: a key missing from a file, adapters that do not fit
        p.error(error_text(e))
    place = dist.place()
    seed = dist.rank_seed(args.seed, place.rank)
    results = []
    mcts = replace(EVAL_MCTS, verify=equations_hold if args.check_equations else None)
    dist.say(f"{'method':>10} {'budget':>9} {'accuracy':>9} {'tokens/problem':>15} {'seconds':>8}")
    for method in methods:
        for budget in ([1] if method == "greedy" else budgets):
            if method == "budget":
                job = lambda ps, b=budget: evaluate_budgeted(model, tokenizer, ps, b, solution_budget=args.solution_budget,
                                                             max_rows=args.max_rows, seed=seed, room_for=problems)
            else:
                job = lambda ps, m=method, b=budget: evaluate(model, tokenizer, ps, m, b, mcts=mcts, seed=seed,
                                                              temperature=args.temperature,
                                                              max_thought_tokens=args.max_thought_tokens,
                                                              max_rows=args.max_rows)
            r = evaluate_sharded(job, problems)
            results.append(r)
            dist.say(f"{r.method:>10} {budget_name(r.budget):>9} {100 * r.accuracy:8.1f}% {r.tokens:15.1f} {r.seconds:8.1f}",
                     flush=True)
    if place.main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / "eval.jsonl", "".join(json.dumps(r.__dict__) + "\n" for r in results))
        print(f"wrote {out / 'eval.jsonl'}")
        if plot(results, out / "scaling.png"):
            print(f"wrote {out / 'scaling.png'}")
    dist.finish()


if __name__ == "__main__":
    main()
