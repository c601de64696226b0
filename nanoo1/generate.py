"""`python -m nanoo1.generate`: sample from a checkpoint (a directory or a hub id), or from a tiny random model.

    python -m nanoo1.generate --prompt "Hello I am"                                  # tiny random Gemma-2
    python -m nanoo1.generate --checkpoint google/gemma-2-2b --prompt "Hello I am" --max-new-tokens 20
    python -m nanoo1.generate --checkpoint DIR --chat --prompt "Why is the sky blue?" --temperature 0.7

Prints each sample (without the stop token it ended on) with its finish reason, mean token log-prob and mean entropy.
"""

from __future__ import annotations

import math
import time

import torch

from nanoo1.checkpoint import load_pretrained
from nanoo1.config import entry_parser, error_text, positive_int
from nanoo1.device import process_setup, resolve_device
from nanoo1.engine import generate
from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.tokenizer import train_tokenizer

DEMO_TEXT = [
    "Hello I am a tiny Gemma-2 with random weights, so what I write is noise.",
    "Tom has 12 apples and buys 35 more. How many apples does he have now? 12 + 35 = 47.",
]


def tiny_random(seed: int):
    """A tiny random Gemma-2 and a tokenizer trained on two sentences: enough to exercise the whole path."""
    tokenizer = train_tokenizer(DEMO_TEXT * 10, vocab_size=320)
    config = Gemma2Config.preset("tiny", vocab_size=len(tokenizer))
    model = Gemma2(config).init_weights(torch.Generator().manual_seed(seed), std=0.1).eval()
    return model, tokenizer


def main(argv=None):
    p, _ = entry_parser("nanoo1.generate", __doc__)
    g = p.add_argument_group("model")
    g.add_argument("--checkpoint", default=None, help="checkpoint directory or hub id (default: a tiny random model)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="default: the checkpoint's")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when there is one)")
    g = p.add_argument_group("prompt")
    g.add_argument("--prompt", default="Hello I am", help="text to continue")
    g.add_argument("--chat", action="store_true", help="wrap the prompt in Gemma's chat turn (for -it models)")
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=positive_int, default=32, help="tokens to generate at most, per sample")
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="sample among the k likeliest tokens (0: no limit)")
    g.add_argument("--top-p", type=float, default=None, help="sample among the likeliest tokens whose probabilities "
                   "sum to p, in (0, 1] (1: no limit)")
    g.add_argument("--num-samples", type=positive_int, default=1, help="samples forked from one prefill of the prompt")
    g.add_argument("--seed", type=int, default=0, help="seed of the sampling (and of the tiny random model)")
    args = p.parse_args(argv)
    if not 0 <= args.temperature < math.inf:
        p.error(f"--temperature {args.temperature}: expected a number >= 0 (0: greedy)")
    if args.top_k is not None and args.top_k < 0:
        p.error(f"--top-k {args.top_k}: expected 0 (no limit) or more")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        p.error(f"--top-p {args.top_p}: expected a number in (0, 1]")
    process_setup()
    try:
        device = resolve_device(args.device)
        if args.checkpoint is None:
            model, tokenizer = tiny_random(args.seed)
            model.to(device, getattr(torch, args.dtype or "float32"))
            print("(no --checkpoint: a tiny random Gemma-2, so the text is noise)")
        else:
            model, tokenizer = load_pretrained(args.checkpoint, dtype=args.dtype, device=device)
    except (OSError, ValueError, KeyError) as e:  # KeyError: a key missing from a checkpoint's file
        p.error(error_text(e))
    if tokenizer is None:
        p.error(f"{args.checkpoint} has no tokenizer.json")
    text = tokenizer.chat_prompt(args.prompt) if args.chat else args.prompt
    stops = [tokenizer.eos_id] + ([tokenizer.token_id("<end_of_turn>")] if tokenizer.has_token("<end_of_turn>") else [])
    t = time.perf_counter()
    results = generate(model, [tokenizer.encode(text)], args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, num_samples=args.num_samples, stop_token_ids=stops, tokenizer=tokenizer, seed=args.seed)
    elapsed = time.perf_counter() - t
    for i, r in enumerate(results):
        mean_entropy = sum(r.entropy) / max(len(r.entropy), 1)
        print(f"--- sample {i}: {len(r.tokens)} tokens, {r.finish_reason}, mean log-prob {r.mean_logprob:.3f}, "
              f"mean entropy {mean_entropy:.3f}")
        print(args.prompt + (tokenizer.decode(r.tokens[:-1]) if r.finish_reason == "stop_token" else r.text))
    n = sum(len(r.tokens) for r in results)
    print(f"{n} tokens in {elapsed:.2f} s ({n / elapsed:.1f} tokens/s)")


if __name__ == "__main__":
    main()
