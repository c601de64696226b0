"""`python -m nanoo1.bench`: speed side by side with transformers, on the same random weights, in one run.

For each model size and batch size it times a prefill (prompt -> KV cache + next-token logits) and greedy
decoding, for nanoo1's engine and for transformers' `generate` (eager attention), and prints the ratios.
Every repeat runs all contenders in turn and each figure is the median over repeats, so a burst of load
on a shared machine moves both sides of a ratio together instead of skewing it.
The gpu section (`gpu_figures`) measures gemma-2-2b's shape in bf16 with the 2b preset's settings: decode at
batch 1 and 16 against the memory-bandwidth bound (every step reads all weight bytes once: tokens/s <=
bandwidth / weight bytes), and one whole self-play iteration of the 2b preset through LoRA (MCTS, PPO updates,
checked greedy and imitation), each stage with its seconds and peak GPU memory.
Like every entry point it first has glibc keep freed memory (`device.hold_freed_memory`); both
contenders run in this one process, so both get it. Other sections (search; dist, whole runs as processes, in
bench_dist.py) register themselves in SECTIONS.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

from nanoo1.checkpoint import save_pretrained
from nanoo1.config import entry_parser, positive_int
from nanoo1.device import process_setup
from nanoo1.engine import feed, generate
from nanoo1.files import atomic_write
from nanoo1.bench_dist import dist_section
from nanoo1.bench_iteration import one_lora_iteration
from nanoo1.model import Gemma2, Gemma2Config

SIZES = {
    # ~1.5M parameters: per-step overhead dominates, the engine's bookkeeping is what is measured
    "tiny": Gemma2Config.preset("tiny", vocab_size=4096, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32),
    # ~110M parameters: matrix multiplies dominate
    "100m": Gemma2Config.preset("tiny", vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=10,
                                num_attention_heads=12, num_key_value_heads=4, head_dim=64, query_pre_attn_scalar=64,
                                sliding_window=4096, max_position_embeddings=8192),
}


def _paired(fns: dict, repeats: int, sync) -> dict[str, list[float]]:
    """Wall times in seconds of every fn, `repeats` each, all of them run in turn within each repeat (after
    one warm-up each). A burst of load on a shared machine then slows every contender of that repeat
    alike, so per-repeat ratios are steadier than ratios of separately taken times."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            t = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def decode_rate(batch: int, new_tokens: int, generate_s: float, prefill_s: float) -> float:
    """Decode tokens/s: the tokens after the first (which the prefill's logits give) over the time after it."""
    return batch * (new_tokens - 1) / max(generate_s - prefill_s, 1e-9)


def random_model(config: Gemma2Config, dtype=torch.float32, device="cpu", seed: int = 0) -> Gemma2:
    """A Gemma2 of `config` with random weights, built in `dtype` on `device` (never a float32 copy of them)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return Gemma2(config).init_weights(torch.Generator(device=device).manual_seed(seed)).eval()
    finally:
        torch.set_default_dtype(default)


def bench_size(name: str, batch: int, prompt_len: int, new_tokens: int, device: str, dtype, repeats: int, with_hf: bool,
               config: Gemma2Config | None = None, model: Gemma2 | None = None):
    """Prefill seconds and decode tokens/s of nanoo1 (and transformers when with_hf), the median over repeats;
    the ratios are medians of the per-repeat ratios (`_paired`). `model`: time this one instead of a new one."""
    model = random_model(config or SIZES[name], dtype, device) if model is None else model
    config = model.config
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    prompts = torch.randint(5, config.vocab_size, (batch, prompt_len), generator=torch.Generator().manual_seed(1))
    rows = prompts.tolist()

    def ours_prefill():
        with torch.no_grad():
            feed(model, model.new_cache(batch, prompt_len + 1), rows)

    def ours_generate():
        generate(model, rows, new_tokens, stop_token_ids=[])

    fns = {"ours_prefill": ours_prefill, "ours_generate": ours_generate}
    if with_hf:
        hf = _hf_twin(model)
        ids = prompts.to(device)

        def hf_prefill():
            with torch.no_grad():
                hf(ids, use_cache=True, logits_to_keep=1)

        def hf_generate():
            with torch.no_grad():
                hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                            do_sample=False, pad_token_id=0)

        fns.update(hf_prefill=hf_prefill, hf_generate=hf_generate)
    t = _paired(fns, repeats, sync)
    ours_rates = [decode_rate(batch, new_tokens, g, p) for g, p in zip(t["ours_generate"], t["ours_prefill"])]
    out = {"size": name, "batch": batch, "params": config.num_parameters, "repeats": repeats,
           "ours_prefill_s": statistics.median(t["ours_prefill"]), "ours_decode_tok_s": statistics.median(ours_rates)}
    if with_hf:
        hf_rates = [decode_rate(batch, new_tokens, g, p) for g, p in zip(t["hf_generate"], t["hf_prefill"])]
        out["hf_prefill_s"] = statistics.median(t["hf_prefill"])
        out["hf_decode_tok_s"] = statistics.median(hf_rates)
        # < 1: nanoo1 faster
        out["prefill_ratio"] = statistics.median(o / h for o, h in zip(t["ours_prefill"], t["hf_prefill"]))
        # > 1: nanoo1 faster
        out["decode_speedup"] = statistics.median(o / h for o, h in zip(ours_rates, hf_rates))
        del hf
    return out


def _hf_twin(model: Gemma2):
    import transformers

    with tempfile.TemporaryDirectory() as d:
        save_pretrained(model, None, d)
        dtype = model.model.embed_tokens.weight.dtype
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, attn_implementation="eager", dtype=dtype)
    return hf.to(model.model.embed_tokens.weight.device).eval()


def engine_section(args) -> list[dict]:
    try:
        import transformers  # noqa: F401
        with_hf = True
    except ImportError:
        with_hf = False
        print("transformers is not installed: printing nanoo1's figures alone")
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    plans = [("tiny", torch.float32), ("100m", torch.float32 if device == "cpu" else torch.bfloat16)]
    results = []
    for name, dtype in plans:
        if args.sizes and name not in args.sizes:
            continue
        for batch in (1, 8):
            new_tokens = args.new_tokens if name == "tiny" else max(8, args.new_tokens // 2)
            r = bench_size(name, batch, args.prompt_len, new_tokens, device, dtype, args.repeats, with_hf)
            results.append(r)
            _print_row(r)
    return results


def _print_row(r: dict):
    line = f"{r['size']:>10} B={r['batch']:<2} prefill {r['ours_prefill_s'] * 1e3:8.2f} ms  decode {r['ours_decode_tok_s']:9.1f} tok/s"
    if "hf_prefill_s" in r:
        line += (f" | transformers prefill {r['hf_prefill_s'] * 1e3:8.2f} ms  decode {r['hf_decode_tok_s']:9.1f} tok/s"
                 f" | prefill time ratio {r['prefill_ratio']:.2f}x  decode speedup {r['decode_speedup']:.2f}x")
    print(line, flush=True)


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


def memory_section(args) -> dict:
    """Peak resident memory of `one_lora_iteration` on gemma-2-2b's whole decoder (26 layers, width 2304, MLP 9216,
    8/4 heads of 256) with the tiny task's 512-token vocabulary, written in bf16, against the checkpoint's
    bytes. The iteration runs in a process of its own, so the peak is its own (ru_maxrss)."""
    import resource
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
        code = f"from nanoo1.bench_iteration import one_lora_iteration; one_lora_iteration({d!r})"
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    row = {"checkpoint_gb": size / 1e9, "peak_rss_gb": peak / 1e9, "ratio": peak / size, "seconds": seconds,
           **json.loads(out.stdout.strip().splitlines()[-1])}
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
    from nanoo1.config import apply_flags
    from nanoo1.recipe import PRESETS

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


def main(argv=None):
    p, g = entry_parser(__doc__, "what to run")
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
