"""The 2b preset's self-play iteration through LoRA, and the memory and gpu sections of `python -m nanoo1.bench`.

`one_lora_iteration` runs one iteration, timed stage by stage with each stage's peak memory: MCTS, stamping the
old log-probs, the PPO update, checked greedy and the imitation step, as `iteration.ppo_iteration` and
`imitation_iteration` call them. The memory section runs it on gemma-2-2b's decoder in a process of its own and
weighs that process's peak resident memory against the checkpoint's bytes. The gpu section (`gpu_figures`)
measures gemma-2-2b's shape in bf16 with the 2b preset's settings: decode at batch 1 and 16 against the
memory-bandwidth bound (every step reads all weight bytes once: tokens/s <= bandwidth / weight bytes), and one
whole iteration (MCTS, PPO updates, checked greedy and imitation), each stage with its seconds and peak GPU memory.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

import torch

from nanoo1.bench_engine import bench_size, random_model
from nanoo1.checkpoint import save_pretrained
from nanoo1.model import Gemma2Config

# the CPU's iteration: MCTS over one problem, one PPO update, checked greedy and an imitation step on another
SHORT = dict(problems_per_iteration=1, simulations=1, num_candidates=2, max_thought_tokens=4, updates_per_iteration=1,
             minibatch=2, micro_batch=1, imitation_problems=1, imitation_batch=1, imitation_replay=0.0)
STAGES = ("mcts", "stamp_old", "ppo_step", "checked_greedy", "sft_step")  # what iteration.py calls, timed


def one_lora_iteration(checkpoint: str, device: str = "cpu", settings: dict = SHORT):
    """One self-play iteration of the 2b preset (LoRA rank 16, bf16) on `device`, with `settings` (flag names) over
    the preset: MCTS, PPO updates, checked greedy and imitation steps on the tiny task's problems. A random model
    never answers right, so a stand-in counts its chains as the outcomes to learn from (as the tests do): the
    updates then run. Prints and returns the iteration's counts with each stage's calls, seconds and peak
    torch.cuda.max_memory_allocated in GB (None off CUDA), and returns the trained model."""
    from nanoo1 import iteration
    from nanoo1.experience import outcomes

    real = {name: getattr(iteration, name) for name in ("tree_chains", "grade") + STAGES}  # restored after this call
    iteration.tree_chains = lambda tree, n: [tree.path(e) for e in outcomes(tree)][:n]
    iteration.grade = lambda results, truths: [len(r.path) > 1 for r in results]
    stages = {}
    for name in STAGES:
        stage = stages.setdefault(name, {"calls": 0, "seconds": 0.0, "peak_gb": None})
        setattr(iteration, name, _staged(real[name], stage, torch.device(device).type == "cuda"))
    try:
        return _one_lora_iteration(checkpoint, device, settings, stages)
    finally:
        for name, fn in real.items():
            setattr(iteration, name, fn)


def _staged(fn, stage: dict, cuda: bool):
    """`fn` timed into `stage` (calls, seconds) and, on CUDA alone, its peak GPU memory (a CPU run touches no CUDA)."""

    def run(*args, **kwargs):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
            stage["peak_gb"] = max(stage["peak_gb"] or 0.0, torch.cuda.max_memory_allocated() / 1e9)
        stage["calls"], stage["seconds"] = stage["calls"] + 1, stage["seconds"] + time.perf_counter() - t
        return out
    return run


def _one_lora_iteration(checkpoint: str, device: str, settings: dict, stages: dict):
    from nanoo1 import iteration  # its stages are the timed stand-ins while one_lora_iteration runs
    from nanoo1.config import apply_flags
    from nanoo1.policy import LMPolicy
    from nanoo1.recipe import PRESETS, draws_per_iteration
    from nanoo1.replay import PrioritizedReplay
    from nanoo1.runs import load_model
    from nanoo1.tasks import TINY_DIR, load_jsonl

    config = apply_flags(PRESETS["2b"], dict(warmstart=checkpoint, device=device, **settings))
    model, tokenizer = load_model(config, None, torch.device(device))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.ppo.lr)
    s = config.search
    policy = LMPolicy(model, tokenizer, temperature=s.temperature, max_thought_tokens=s.max_thought_tokens,
                      max_rows=s.max_rows)
    problems = load_jsonl(TINY_DIR / "train.jsonl")[:draws_per_iteration(config)]
    n = s.problems_per_iteration
    m = iteration.ppo_iteration(model, tokenizer, opt, PrioritizedReplay(64), policy, problems[:n], 0, config)
    m.update(iteration.imitation_iteration(model, tokenizer, opt, policy, problems[n:], PrioritizedReplay(64, alpha=0.0),
                                           random.Random(0), config))
    counts = {**{k: m[k] for k in ("chains", "ppo_updates", "imitation_solved")}, "stages": stages}
    print(json.dumps(counts))
    return counts, model


def memory_section(args) -> dict:
    """Peak resident memory of `one_lora_iteration` on gemma-2-2b's whole decoder (26 layers, width 2304, MLP 9216,
    8/4 heads of 256) with the tiny task's 512-token vocabulary, written in bf16, against the checkpoint's
    bytes. The iteration runs in a process of its own, which reports its own peak (ru_maxrss)."""
    import subprocess
    import sys

    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(TINY_DIR)
    with tempfile.TemporaryDirectory() as d:
        model = random_model(Gemma2Config.preset("2b", vocab_size=len(tokenizer)), torch.bfloat16)
        save_pretrained(model, tokenizer, Path(d))
        del model
        size = sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
        # the child prints its counts, then its own peak: RUSAGE_CHILDREN here would be the largest of every child
        # this process has waited for (the dist section's runs, say)
        code = (f"from nanoo1.bench_iteration import one_lora_iteration; one_lora_iteration({d!r}); "
                "import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t
    *_, counts, peak = out.stdout.strip().splitlines()
    peak = int(peak) * 1024  # KiB on Linux
    row = {"checkpoint_gb": size / 1e9, "peak_rss_gb": peak / 1e9, "ratio": peak / size, "seconds": seconds,
           **json.loads(counts)}
    print(f"checkpoint {row['checkpoint_gb']:.2f} GB, peak RSS {row['peak_rss_gb']:.2f} GB ({row['ratio']:.2f}x), "
          f"{seconds:.0f} s; {row}")
    return row


def gpu_figures(config: Gemma2Config, device: str, dtype, tokenizer, bandwidth: float, batches=(1, 16),
                prompt_len: int = 64, new_tokens: int = 64, repeats: int = 3, settings: dict | None = None,
                report=lambda line: None) -> dict:
    """A random model of `config` on `device`: decode tokens/s at each batch size against the bandwidth bound
    (batch x bandwidth in bytes/s / weight bytes, as if every step only read the weights once), then, from its
    checkpoint, `one_lora_iteration` with `settings` over the 2b preset (None: the preset as it is), with each
    stage's seconds and peak GPU memory. `report(line)` gets each decode row's line as soon as it is measured."""
    model = random_model(config, dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"weight_gb": weight_bytes / 1e9, "bandwidth_tb_s": bandwidth / 1e12, "decode": []}
    for b in batches:
        rate = bench_size("gpu", b, prompt_len, new_tokens, device, dtype, repeats, False, model=model)["ours_decode_tok_s"]
        d = {"batch": b, "tok_s": rate, "bound_tok_s": b * bandwidth / weight_bytes,
             "fraction_of_bound": rate * weight_bytes / (b * bandwidth)}
        out["decode"].append(d)
        report(f"decode B={b}: {rate:.1f} tok/s, {d['fraction_of_bound']:.0%} of the bound ({d['bound_tok_s']:.0f} "
               f"tok/s: {weight_bytes / 1e9:.2f} GB of weights at {bandwidth / 1e12} TB/s)")
    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, tokenizer, Path(d))
        del model  # the iteration loads its own copy: this one must not count in its peak memory
        out["iteration"] = one_lora_iteration(d, device, {} if settings is None else settings)[0]
    return out


def gpu_section(args) -> dict:
    """`gpu_figures` for gemma-2-2b's shape in bf16 (the whole 256,000-token vocabulary) and one default iteration
    of the 2b preset; skipped without a CUDA device."""
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer

    if not torch.cuda.is_available() or args.cpu:
        print("no CUDA device: the gpu section is skipped (gemma-2-2b's shape in bf16 needs a GPU)")
        return {"skipped": "no CUDA device"}
    r = gpu_figures(Gemma2Config.preset("2b"), "cuda", torch.bfloat16, Tokenizer.from_file(TINY_DIR), args.bandwidth * 1e12,
                    prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                    settings=args.gpu_settings, report=lambda line: print(line, flush=True))
    one, many = r["decode"][0], r["decode"][-1]
    peak = max(st["peak_gb"] or 0.0 for st in r["iteration"]["stages"].values())
    print(f"B={many['batch']} / B=1: {many['tok_s'] / one['tok_s']:.1f}x (goal >= 8x); B=1 at {one['fraction_of_bound']:.0%} "
          f"of the bound (goal >= 40%); one 2b-preset iteration with LoRA: peak {peak:.1f} GB (goal < 16 GB)", flush=True)
    return r

