"""The tiny warm start: a 1M-parameter Gemma-2 trained from scratch to write worked solutions.

    python -m nanoo1.warmstart          # regenerate data/tiny/warmstart (about 15 minutes on 2 CPU cores)
    python -m nanoo1.warmstart --think  # data/tiny/warmstart-think, Elastic Reasoning's (--algo grpo; about 10 minutes)

One model learns all three formats of nanoo1 from the tiny task's worked solutions (tasks.py), mixed
per example: the LongCoT thought format with negatively rated corrupted steps (search, MCTS, PPO), the
<think> format and rStar's code format (rstar.py). It is stopped early on purpose, while greedy accuracy is
still climbing: self-play has room to show what it adds.

Elastic Reasoning's budgeted GRPO (`selfplay --algo grpo`) starts from a warm start of its own (`--think`):
the <think> format alone, where each step's equation is followed, with probability THINK_PAUSES, by a line
that carries nothing (tasks.PAUSE, "Let me see."). Its thinking then holds lines a budget can drop without
losing a step, as a reasoning model's long thinking does; the shared warm start's <think> examples have none.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

from nanoo1.checkpoint import save_pretrained
from nanoo1.config import positive_int
from nanoo1.device import process_setup
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
                    progress: bool = True, callback=None, think: bool = False):
    """Train the tiny warm start from scratch (with `think`, Elastic Reasoning's, on the same settings: the <think>
    format alone, steps followed by a pause with probability THINK_PAUSES); save it to `out` when given.
    Returns (model, tokenizer)."""
    tokenizer = Tokenizer.from_file(TINY_DIR)
    model = Gemma2(TINY_MODEL).init_weights(torch.Generator().manual_seed(seed))
    problems = load_jsonl(data)
    example = mixed_example(tokenizer, {"think": 1.0}, pauses=THINK_PAUSES) if think else \
        mixed_example(tokenizer, negative_fraction=config.negative_fraction)
    batches = make_batches(problems, example, config.batch_size, random.Random(seed), tokenizer.pad_id)
    train_sft(model, batches, config, callback=callback, progress=progress)
    model.requires_grad_(False)
    if out is not None:
        save_pretrained(model, tokenizer, out)
    return model, tokenizer


def tiny_base(out: Path, steps: int = WARMSTART_SFT.steps, seed: int = 0, progress: bool = False) -> Path:
    """The base model of `evolve --tiny`: data/tiny/warmstart if it exists, else warmstart.py's recipe (all formats, rStar's
    code format among them) run for `steps` steps into `out`, once: a later run finds it there. The default steps
    and seed 0 are data/tiny/warmstart's own recipe."""
    for directory in (WARMSTART_DIR, out):
        if (directory / "model.safetensors").exists():
            return directory
    sft = replace(WARMSTART_SFT, steps=steps, warmup=min(WARMSTART_SFT.warmup, steps))
    train_warmstart(out, sft, seed, progress=progress)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--think", action="store_true", help="Elastic Reasoning's warm start instead: the <think> format "
                   f"alone, a pause line after each step with probability {THINK_PAUSES} (default --out {THINK_DIR.name})")
    p.add_argument("--out", type=Path, default=None, help="where to save it (default: data/tiny/warmstart)")
    p.add_argument("--steps", type=int, default=WARMSTART_SFT.steps, help="optimizer steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    args = p.parse_args(argv)
    process_setup(args.threads)
    t = time.perf_counter()
    out = args.out or (THINK_DIR if args.think else WARMSTART_DIR)
    train_warmstart(out, replace(WARMSTART_SFT, steps=args.steps), seed=args.seed, think=args.think)
    print(f"wrote {out} in {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
