"""The engine section of `python -m nanoo1.bench`: speed side by side with transformers, on the same random weights.

For each model size and batch size it times a prefill (prompt -> KV cache + next-token logits) and greedy
decoding, for nanoo1's engine and for transformers' `generate` (eager attention), and prints the ratios.
Every repeat runs all contenders in turn and each figure is the median over repeats, so a burst of load
on a shared machine moves both sides of a ratio together instead of skewing it.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import torch

from nanoo1.checkpoint import save_pretrained
from nanoo1.engine import feed, generate
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

