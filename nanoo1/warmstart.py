"""The tiny warm start: a 1M-parameter Gemma-2 trained from scratch to write worked solutions.

    python -m nanoo1.warmstart          # regenerate data/tiny/warmstart (about 15 minutes on 2 CPU cores)
    python -m nanoo1.warmstart --think  # data/tiny/warmstart-think, Elastic Reasoning's (--algo grpo; about 10 minutes)
    python -m nanoo1.warmstart --code   # data/tiny/warmstart-code, rStar-Math's (evolve --tiny; about 6 minutes)

One model learns all three formats of nanoo1 from the tiny task's worked solutions (tasks.py), mixed
per example: the LongCoT thought format with negatively rated corrupted steps (search, MCTS, PPO), the
<think> format and rStar's code format (rstar.py). It is stopped early on purpose, while greedy accuracy is
still climbing: self-play has room to show what it adds.

Elastic Reasoning's budgeted GRPO (`selfplay --algo grpo`) starts from a warm start of its own (`--think`):
the <think> format alone, where each step's equation is followed, with probability THINK_PAUSES, by a line
that carries nothing (tasks.PAUSE, "Let me see."). Its thinking then holds lines a budget can drop without
losing a step, as a reasoning model's long thinking does; the shared warm start's <think> examples have none.

rStar-Math's self-evolution (`evolve --tiny`) starts from one of its own too (`--code`): the code format alone,
for CODE_SFT.steps steps. The shared warm start writes code poorly (a fifth of its examples), and rounds
that find few correct traces teach the policy little; rStar-Math's own policy was a strong coder before its
first round.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanoo1.checkpoint import save_pretrained
from nanoo1.config import entry_parser, positive_int
from nanoo1.device import process_setup
from nanoo1.files import check_directory
from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.rstar import code_example
from nanoo1.sft import SFTConfig, make_batches, think_example, thought_example, train_sft
from nanoo1.tasks import TINY_DIR, load_jsonl
from nanoo1.tokenizer import Tokenizer

WARMSTART_DIR = TINY_DIR / "warmstart"
# 1.05M parameters: the tiny preset (4 layers, sliding window on layers 0 and 2 as in every Gemma-2) at width 128
TINY_MODEL = Gemma2Config.preset("tiny", hidden_size=128, intermediate_size=512)
MIXTURE = {"thought": 0.6, "think": 0.2, "code": 0.2}  # share of each format in the warm-start batches
WARMSTART_SFT = SFTConfig(steps=1000, batch_size=32, lr=3e-3, negative_fraction=0.3)
# Elastic Reasoning's warm start (`--algo grpo`): the <think> format alone, each step's equation followed by the
# pause line with probability THINK_PAUSES, so its thinking holds lines a budget can drop
THINK_DIR = TINY_DIR / "warmstart-think"
THINK_PAUSES = 0.5
# rStar-Math's warm start (`evolve --tiny`): the code format alone, trained for fewer steps
CODE_DIR = TINY_DIR / "warmstart-code"
CODE_SFT = replace(WARMSTART_SFT, steps=500)
KINDS = {"mixed": WARMSTART_DIR, "think": THINK_DIR, "code": CODE_DIR}  # each warm start's shipped directory


def mixed_example(tokenizer, mixture=MIXTURE, negative_fraction: float = 0.3, pauses: float = 0.0):
    """example_fn(problem, rng) drawing one of the formats per call, by `mixture`'s weights; <think> examples
    pause after each step with probability `pauses`."""
    names, weights = list(mixture), list(mixture.values())

    def example(problem, rng: random.Random):
        kind = rng.choices(names, weights)[0]
        if kind == "thought":
            return thought_example(problem, tokenizer, rng, negative_fraction)
        if kind == "think":
            return think_example(problem, tokenizer, rng, pauses)
        return code_example(problem, tokenizer, rng)

    return example


def train_warmstart(out: Path | None = None, config: SFTConfig = WARMSTART_SFT, seed: int = 0, data=TINY_DIR / "train.jsonl",
                    progress: bool = True, callback=None, kind: str = "mixed"):
    """Train a tiny warm start from scratch on `kind`'s examples: "mixed" (every format, by MIXTURE), "think"
    (Elastic Reasoning's: the <think> format alone, steps followed by a pause with probability THINK_PAUSES) or
    "code" (rStar-Math's: the code format alone); save it to `out` when given. Returns (model, tokenizer). Data
    with a problem lacking worked steps (GSM8K's) is refused: there is nothing to learn the formats from."""
    if kind not in KINDS:
        raise ValueError(f"warm start kind {kind!r}: expected one of {', '.join(KINDS)}")
    tokenizer = Tokenizer.from_file(TINY_DIR)
    model = Gemma2(TINY_MODEL).init_weights(torch.Generator().manual_seed(seed))
    problems = load_jsonl(data)
    if len(problems) < config.batch_size:
        raise ValueError(f"{data}: {len(problems)} problems, fewer than one batch of {config.batch_size}")
    stepless = sum(not problem.steps for problem in problems)
    if stepless:  # a code example of one has nothing to train on, the other formats only its final answer
        raise ValueError(f"{data}: {stepless} of its {len(problems)} problems have no worked 'steps' (GSM8K's have "
                         "none); the warm start learns its formats from worked solutions, as the tiny task's")
    example = {"mixed": lambda: mixed_example(tokenizer, negative_fraction=config.negative_fraction),
               "think": lambda: mixed_example(tokenizer, {"think": 1.0}, pauses=THINK_PAUSES),
               "code": lambda: mixed_example(tokenizer, {"code": 1.0})}[kind]()
    batches = make_batches(problems, example, config.batch_size, random.Random(seed), tokenizer.pad_id)
    train_sft(model, batches, config, callback=callback, progress=progress)
    model.requires_grad_(False)
    if out is not None:
        save_pretrained(model, tokenizer, out)
    return model, tokenizer


def _for_steps(sft: SFTConfig, steps: int) -> SFTConfig:
    """`sft` run for `steps` steps, its warm-up no longer than them (a short run still reaches its peak rate)."""
    return replace(sft, steps=steps, warmup=min(sft.warmup, steps))


def tiny_base(out: Path, steps: int = CODE_SFT.steps, seed: int = 0, progress: bool = False) -> Path:
    """The base model of `evolve --tiny`: data/tiny/warmstart-code if it exists, else its recipe (the code format
    alone) run for `steps` steps into `out`, once: a later run finds it there. The default steps and seed 0 are
    data/tiny/warmstart-code's own recipe."""
    for directory in (CODE_DIR, out):
        if (directory / "model.safetensors").exists():
            return directory
    train_warmstart(out, _for_steps(CODE_SFT, steps), seed, progress=progress, kind="code")
    return out


def main(argv=None):
    p, _ = entry_parser("nanoo1.warmstart", __doc__)
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--think", action="store_true", help="Elastic Reasoning's warm start instead: the <think> format "
                      f"alone, a pause line after each step with probability {THINK_PAUSES} (default --out {THINK_DIR.name})")
    kind.add_argument("--code", action="store_true", help="rStar-Math's warm start instead: the code format alone, "
                      f"{CODE_SFT.steps} steps by default (default --out {CODE_DIR.name})")
    p.add_argument("--out", type=Path, default=None, help="where to save it (default: data/tiny/warmstart)")
    p.add_argument("--steps", type=positive_int, default=None, help=f"optimizer steps (default {WARMSTART_SFT.steps}; "
                   f"with --code {CODE_SFT.steps})")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's initialisation and the examples drawn")
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    name = "think" if args.think else "code" if args.code else "mixed"
    sft = CODE_SFT if args.code else WARMSTART_SFT
    out = args.out or KINDS[name]
    try:
        check_directory(out)
    except NotADirectoryError as e:
        p.error(str(e))
    process_setup(args.threads)
    t = time.perf_counter()
    train_warmstart(out, _for_steps(sft, args.steps or sft.steps), seed=args.seed, kind=name)
    print(f"wrote {out} in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
