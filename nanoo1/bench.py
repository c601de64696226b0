"""`python -m nanoo1.bench`: the benchmark's command line, and its search section.

--sections picks the sections, run in that order, each printing its figures (--json: all of them written again
after each section):
  engine  prefill and greedy decoding side by side with transformers, on the same random weights (bench_engine.py)
  search  MCTS nodes expanded per second, batched against one candidate and one value call at a time (this module)
  memory  peak resident memory of one LoRA self-play iteration of the 2b preset on the CPU (bench_iteration.py)
  gpu     gemma-2-2b's shape in bf16: decode against the bandwidth bound, one LoRA iteration (bench_iteration.py)
  dist    whole `selfplay --tiny` runs as processes: one process against 2 torchrun ranks (bench_dist.py)
Like every entry point it first has glibc keep freed memory (`device.hold_freed_memory`); the contenders of a
section run in this one process, so all of them get it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from nanoo1.bench_dist import dist_section
from nanoo1.bench_engine import SIZES, engine_section, random_model
from nanoo1.bench_iteration import gpu_section, memory_section
from nanoo1.config import apply_flags, entry_parser, positive_int
from nanoo1.device import process_setup
from nanoo1.files import atomic_write
from nanoo1.recipe import PRESETS


def one_at_a_time(policy_class):
    """`policy_class` made to work as LLaMA-O1 does: one engine call per candidate (each prompt naming the id its
    candidate gets, as the batched call's do) and one value call per thought."""
    from nanoo1.policy import Request

    class OneAtATime(policy_class):
        def propose(self, requests):
            one = super().propose
            return [[one([Request(r.tree, r.node, [m], [h], r.temperature, r.child_id(j))])[0][0]
                     for j, (m, h) in enumerate(zip(r.metas, r.hints))] for r in requests]

        def evaluate(self, paths):
            one = super().evaluate
            rated = [one([p]) for p in paths]
            return [v[0] for v, _ in rated], [t[0] for _, t in rated]

    return OneAtATime


def search_section(args) -> list[dict]:
    """MCTS nodes expanded per second: lockstep, batched expansion (`LMPolicy`: one engine call per round
    for every tree, each prompt prefilled once and forked k ways, one batched value pass) against LLaMA-O1's
    way (one engine call per candidate, one value call per thought), on the same tiny random model. Its
    thoughts almost never sample <end_of_thought>, so both runs generate the same number of tokens."""
    from dataclasses import replace

    from nanoo1.mcts import MCTSConfig, mcts
    from nanoo1.policy import LMPolicy
    from nanoo1.tasks import make_problems, solution_tree
    from nanoo1.tokenizer import train_tokenizer

    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    tokenizer = train_tokenizer([solution_tree(p).training_text() for p in make_problems(300, seed=1)], 512)
    config = replace(SIZES["tiny"], vocab_size=len(tokenizer))
    model = random_model(config, device=device)
    questions = [p.question for p in make_problems(args.search_problems, seed=2)]
    mcts_config = MCTSConfig(simulations=args.search_simulations, num_candidates=4, max_children=4, patient=10**9)
    results = []
    for name, policy_class in (("batched", LMPolicy), ("one at a time", one_at_a_time(LMPolicy))):
        mcts(policy_class(model, tokenizer, max_thought_tokens=4), questions[:2], replace(mcts_config, simulations=1))  # warm-up
        policy = policy_class(model, tokenizer, temperature=1.0, max_thought_tokens=args.thought_tokens, seed=0)
        start = time.perf_counter()
        trees = mcts(policy, questions, mcts_config)
        seconds = time.perf_counter() - start
        expanded = sum(sum(1 for n in r.tree.nodes if n.children) for r in trees)
        nodes = sum(len(r.tree.nodes) - 1 for r in trees)
        tokens = sum(r.spent.generated for r in trees)
        results.append({"policy": name, "problems": len(questions), "expanded": expanded, "thoughts": nodes,
                        "generated_tokens": tokens, "seconds": seconds, "expanded_per_s": expanded / seconds})
        print(f"{name:>14}: {expanded} nodes expanded into {nodes} thoughts ({tokens} tokens) over {len(questions)} "
              f"problems in {seconds:.2f} s = {expanded / seconds:6.1f} nodes expanded/s", flush=True)
    speedup = results[0]["expanded_per_s"] / results[1]["expanded_per_s"]
    results.append({"speedup": speedup})
    print(f"batched expansion: {speedup:.1f}x the nodes expanded per second of one candidate and one value call at a time")
    return results


SECTIONS = {"engine": engine_section, "search": search_section, "memory": memory_section, "gpu": gpu_section,
            "dist": dist_section}


def _names(known, what: str):
    """A command-line parser of a comma-separated list of distinct names from `known`."""
    def parse(text: str) -> list[str]:
        names = text.split(",")
        if not set(names) <= set(known) or len(set(names)) < len(names):
            raise argparse.ArgumentTypeError(f"{text!r}: expected distinct {what} names from {sorted(known)}")
        return names
    return parse


def _checked(p: argparse.ArgumentParser, args) -> None:
    """The flags that argparse's types cannot check alone, each refused by name before any section runs."""
    if args.new_tokens < 2:
        p.error(f"--new-tokens {args.new_tokens}: expected at least 2 (decode is timed over the tokens after the first)")
    if not 0 < args.bandwidth < math.inf:
        p.error(f"--bandwidth {args.bandwidth}: expected the GPU's memory bandwidth in TB/s, above 0")
    if args.json and (args.json.is_dir() or not args.json.parent.is_dir()):
        p.error(f"--json {args.json}: expected a file path in an existing directory")
    text = args.gpu_settings
    try:  # unknown names, wrong types and values out of range, as the iteration will apply them
        args.gpu_settings = json.loads(text)
        if not isinstance(args.gpu_settings, dict) or {"warmstart", "device"} & args.gpu_settings.keys():
            raise ValueError("expected a JSON object without warmstart and device, which the gpu section sets")
        apply_flags(PRESETS["2b"], args.gpu_settings)
    except (ValueError, TypeError) as e:
        p.error(f"--gpu-settings {text}: {e}; settings go by flag name, e.g. '{{\"simulations\": 1}}'")
    if "dist" in args.sections:  # the runs' flags, read as each run's selfplay will read them
        from nanoo1.selfplay import RUN_FLAGS, parser

        runs = parser()
        runs.exit_on_error = False
        try:
            given, unknown = runs.parse_known_args(["--tiny", *args.dist_flags.split()])
            if unknown:
                raise ValueError(f"unknown selfplay flags {unknown}")
            apply_flags(PRESETS["tiny"], {k: v for k, v in vars(given).items() if k not in RUN_FLAGS})
        except (argparse.ArgumentError, ValueError) as e:
            p.error(f"--dist-flags {args.dist_flags}: {e}")


def main(argv=None):
    p, g = entry_parser("nanoo1.bench", __doc__, "what to run")
    g.add_argument("--sections", type=_names(SECTIONS, "section"), default="engine,search", help=f"comma-separated, "
                   f"from {sorted(SECTIONS)} (memory: minutes, one LoRA self-play iteration on gemma-2-2b's decoder; gpu: "
                   "the 2b preset on a CUDA device; dist: --tiny as 1 process against 2 torchrun ranks and 1 thread, about "
                   "20 minutes)")
    g.add_argument("--prompt-len", type=positive_int, default=64, help="prompt tokens per row")
    g.add_argument("--new-tokens", type=positive_int, default=64, help="greedy tokens per row, at least 2 (halved for "
                   "the larger models)")
    g.add_argument("--repeats", type=positive_int, default=7, help="timed repeats, each running every contender in turn; "
                   "medians are reported")
    g.add_argument("--sizes", type=_names(SIZES, "size"), default=None, help=f"engine section: comma-separated model "
                   f"sizes from {sorted(SIZES)} (default: all)")
    g.add_argument("--cpu", action="store_true", help="stay on the CPU even when a GPU is present")
    g.add_argument("--threads", type=positive_int, default=None, help="torch.set_num_threads")
    g.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file (rewritten "
                   "after each section)")
    g.add_argument("--bandwidth", type=float, default=4.8, help="gpu section: the GPU's memory bandwidth in "
                   "TB/s for the decode bound (default: H200's 4.8; H100 SXM 3.35, A100 2.0)")
    g.add_argument("--gpu-settings", default="{}", help="gpu section: the iteration's settings over "
                   "the 2b preset, as JSON with flag names, e.g. '{\"simulations\": 1}' (default: the preset as it is)")
    g.add_argument("--dist-flags", default="", help="dist section: selfplay flags added to every run")
    g = p.add_argument_group("search section")
    g.add_argument("--search-problems", type=positive_int, default=8, help="problems searched in lockstep")
    g.add_argument("--search-simulations", type=positive_int, default=4, help="MCTS simulations per problem")
    g.add_argument("--thought-tokens", type=positive_int, default=16, help="tokens per thought")
    args = p.parse_args(argv)
    _checked(p, args)
    process_setup(args.threads)  # as in every entry point; both contenders run in this process and share it
    results = {}
    for name in args.sections:
        print(f"== {name} ==", flush=True)
        results[name] = SECTIONS[name](args)
        if args.json:  # after each section: one that fails later leaves the figures before it
            atomic_write(args.json, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
