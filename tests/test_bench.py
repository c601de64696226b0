"""The benchmark's arithmetic and a smoke run (no timing is asserted: speed goals are read off its printout)."""

import importlib.util

import pytest
import torch

from nanoo1.bench_engine import _paired, bench_size, decode_rate
from nanoo1.model import Gemma2Config

SMALL = Gemma2Config.preset("tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16)


def test_decode_rate_counts_the_tokens_after_the_prefill():
    # 8 rows x 65 new tokens: the prefill's logits give token 1, the other 64 per row take 1.0 - 0.2 s
    # -> 8 * 64 / 0.8 = 640 tokens/s
    assert decode_rate(8, 65, 1.0, 0.2) == pytest.approx(640.0)
    # a decode no slower than its prefill (a timer's resolution) counts as 1e-9 s: 1 x 1 / 1e-9, not a division by 0
    assert decode_rate(1, 2, 0.5, 0.5) == pytest.approx(1e9)


def test_paired_runs_every_contender_in_turn_within_each_repeat():
    """One warm-up each, then a and b in every repeat, each timed between two syncs ("|"): a GPU's queued work
    neither leaks into the next contender's time nor escapes its own."""
    calls = []
    times = _paired({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3,
                    sync=lambda: calls.append("|"))
    assert calls == ["a", "b"] + ["|", "a", "|", "|", "b", "|"] * 3
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(t >= 0 for v in times.values() for t in v)


def test_the_one_at_a_time_baseline_asks_for_the_candidates_the_batched_call_asks_for():
    from nanoo1.bench import one_at_a_time
    from nanoo1.policy import Request
    from nanoo1.thoughts import Tree

    class Recorder:  # a policy that records the prompts it is asked to continue
        def __init__(self):
            self.asked = []

        def propose(self, requests):
            self.asked += [r.prompt(j) for r in requests for j in range(r.k)]
            return [[f"thought {len(self.asked)}"] for _ in requests]

        def evaluate(self, paths):  # a value and a token count per path, as LMPolicy.evaluate returns them
            self.asked.append(paths)
            return [len(p) / 10 for p in paths], [len(p) for p in paths]

    policy, tree = one_at_a_time(Recorder)(), Tree("Mia has 7 apples. She buys 5 more. How many now?")
    request = Request(tree, tree.root, ["<expansion>"] * 3, [None] * 3)
    assert policy.propose([request]) == [["thought 1", "thought 2", "thought 3"]]
    assert policy.asked == [request.prompt(j) for j in range(3)]  # each naming its own id, 1, 2, 3
    # one value call per path, the answers gathered back into the batched call's (values, token counts)
    policy.asked, paths = [], [["a"], ["a", "b"], ["a", "b", "c"]]
    assert policy.evaluate(paths) == ([0.1, 0.2, 0.3], [1, 2, 3])
    assert policy.asked == [[p] for p in paths]


def test_search_section_counts_the_nodes_of_both_contenders(monkeypatch, capsys):
    """3 problems x 2 simulations: each simulation expands one node (the root, then one of its children) into 4
    candidates, so each contender expands 6 nodes into 24 thoughts of at most 3 tokens each. The clock reads 0, 2
    for the batched run and 2, 10 for the other: 6 / 2 = 3 and 6 / 8 = 0.75 nodes/s, a speed-up of 4. --cpu keeps it
    on the CPU even where CUDA is (said to be) available."""
    import argparse
    import types

    from nanoo1 import bench

    clock = iter([0.0, 2.0, 2.0, 10.0])
    monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = argparse.Namespace(cpu=True, search_problems=3, search_simulations=2, thought_tokens=3)
    batched, single, last = bench.search_section(args)
    for row, name, seconds in ((batched, "batched", 2.0), (single, "one at a time", 8.0)):
        assert {k: row[k] for k in ("policy", "problems", "expanded", "thoughts", "seconds")} == {
            "policy": name, "problems": 3, "expanded": 6, "thoughts": 24, "seconds": seconds}
        assert 0 < row["generated_tokens"] <= 24 * 3 and row["expanded_per_s"] == pytest.approx(6 / seconds)
    assert last == {"speedup": pytest.approx(4.0)} and "4.0x the nodes expanded per second" in capsys.readouterr().out


def test_bench_size_smoke_on_a_tiny_model():
    config = SMALL
    with_hf = importlib.util.find_spec("transformers") is not None
    r = bench_size("test", 2, 8, 4, "cpu", torch.float32, 2, with_hf, config=config)
    assert r["batch"] == 2 and r["repeats"] == 2 and r["params"] == config.num_parameters
    assert r["ours_prefill_s"] > 0 and r["ours_decode_tok_s"] > 0
    if with_hf:
        assert r["prefill_ratio"] > 0 and r["decode_speedup"] > 0


def test_bench_size_reports_medians_of_the_per_repeat_figures(monkeypatch):
    """Known times for 3 repeats, batch 2 and 5 new tokens (2 x 4 = 8 tokens decoded after the prefill's one):
    nanoo1: prefill 0.1, 0.3, 0.35 s, generate 1.1, 2.3, 0.75 s -> decoding 1.0, 2.0, 0.4 s -> 8, 4, 20 tok/s;
    transformers: prefill 0.2, 0.4, 0.8 s, generate 2.2, 1.4, 1.3 s -> decoding 2.0, 1.0, 0.5 s -> 4, 8, 16 tok/s.
    Medians: nanoo1's prefill 0.3 s (the mean is 0.25), decode 8 tok/s; transformers' prefill 0.4 s, decode 8 tok/s.
    The ratios are medians of the per-repeat ones: prefill 0.5, 0.75, 0.4375 -> 0.5; decode 2, 0.5, 1.25 -> 1.25
    (not 8 / 8 = 1). The calls timed: 2 prompts of 6 ids from 5 up (0-4 are special tokens), nanoo1's generate with
    no stop token and transformers' with exactly 5 new tokens (so every row decodes all 5, as the rate counts),
    transformers' prefill keeping the last logits alone; on "cuda" every time is taken between CUDA syncs."""
    from nanoo1 import bench_engine

    config = SMALL
    model, calls, synced = bench_engine.random_model(config), [], []
    times = {"ours_prefill": [0.1, 0.3, 0.35], "ours_generate": [1.1, 2.3, 0.75],
             "hf_prefill": [0.2, 0.4, 0.8], "hf_generate": [2.2, 1.4, 1.3]}

    def paired(fns, repeats, sync):  # each contender called once, to record what it calls; the known times back
        assert repeats == 3
        synced.append(sync)
        for fn in fns.values():
            fn()
        return {name: times[name] for name in fns}

    class HF:
        def __call__(self, ids, **kw):
            calls.append(("hf", ids.tolist(), kw))

        def generate(self, ids, **kw):
            calls.append(("hf.generate", ids.tolist(), {**kw, "attention_mask": kw["attention_mask"].tolist()}))

    monkeypatch.setattr(bench_engine, "_paired", paired)
    monkeypatch.setattr(bench_engine, "_hf_twin", lambda m: HF())
    monkeypatch.setattr(bench_engine, "feed", lambda m, cache, rows: calls.append(("feed", rows, {})))
    monkeypatch.setattr(bench_engine, "generate",
                        lambda m, rows, n, **kw: calls.append(("generate", rows, {"n": n, **kw})))
    r = bench_engine.bench_size("test", 2, 6, 5, "cpu", torch.float32, 3, True, model=model)
    assert r["size"] == "test" and r["batch"] == 2 and r["repeats"] == 3 and r["params"] == config.num_parameters
    assert r["ours_prefill_s"] == pytest.approx(0.3) and r["ours_decode_tok_s"] == pytest.approx(8.0)
    assert r["hf_prefill_s"] == pytest.approx(0.4) and r["hf_decode_tok_s"] == pytest.approx(8.0)
    assert r["prefill_ratio"] == pytest.approx(0.5) and r["decode_speedup"] == pytest.approx(1.25)
    rows = calls[0][1]
    assert len(rows) == 2 and all(len(row) == 6 and all(5 <= i < 64 for i in row) for row in rows)
    assert calls == [("feed", rows, {}), ("generate", rows, {"n": 5, "stop_token_ids": []}),
                     ("hf", rows, {"use_cache": True, "logits_to_keep": 1}),
                     ("hf.generate", rows, {"attention_mask": [[1] * 6] * 2, "max_new_tokens": 5,
                                            "min_new_tokens": 5, "do_sample": False, "pad_token_id": 0})]
    assert synced[0]() is None  # on the CPU nothing to wait for
    bench_engine.bench_size("test", 1, 6, 5, "cuda", torch.float32, 3, False, model=model)
    assert synced[1] is torch.cuda.synchronize


def test_random_model_is_built_in_its_dtype_and_leaves_the_default_dtype_alone():
    """random_model(config, bf16) has bf16 weights (built so, not cast from float32), in eval mode, and the process's
    default dtype is float32 again afterwards; the same seed gives the same weights, another seed others."""
    from nanoo1.bench_engine import random_model

    config = SMALL
    model = random_model(config, torch.bfloat16)
    assert torch.get_default_dtype() == torch.float32
    assert all(p.dtype == torch.bfloat16 for p in model.parameters()) and not model.training
    weights = [m.model.embed_tokens.weight for m in (model, random_model(config, torch.bfloat16, seed=0),
                                                        random_model(config, torch.bfloat16, seed=1))]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_engine_section_times_each_size_at_batch_1_and_8(monkeypatch, capsys):
    """The plans: tiny in float32 with --new-tokens, 100m with half of them (at least 8), in bf16 on CUDA and float32
    on the CPU, each at batch 1 and 8; --sizes keeps the named ones; a row prints transformers' figures when it
    has them, and transformers runs only where it is installed. --new-tokens 10 -> 100m decodes max(8, 5) = 8;
    --new-tokens 64 -> 32."""
    import argparse
    import importlib.util
    import sys

    from nanoo1 import bench_engine

    calls = []

    def bench_size(name, batch, prompt_len, new_tokens, device, dtype, repeats, with_hf):
        calls.append((name, batch, prompt_len, new_tokens, device, dtype, repeats, with_hf))
        row = {"size": name, "batch": batch, "ours_prefill_s": 0.001, "ours_decode_tok_s": 100.0}
        if batch == 8:  # a row with transformers' figures
            row.update(hf_prefill_s=0.002, hf_decode_tok_s=50.0, prefill_ratio=0.5, decode_speedup=2.0)
        return row

    monkeypatch.setattr(bench_engine, "bench_size", bench_size)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    hf = importlib.util.find_spec("transformers") is not None
    args = argparse.Namespace(sizes=None, cpu=False, prompt_len=16, new_tokens=10, repeats=3)
    rows = bench_engine.engine_section(args)
    assert calls == [("tiny", b, 16, 10, "cuda", torch.float32, 3, hf) for b in (1, 8)] + [
        ("100m", b, 16, 8, "cuda", torch.bfloat16, 3, hf) for b in (1, 8)]
    assert [(r["size"], r["batch"]) for r in rows] == [(c[0], c[1]) for c in calls]
    out = capsys.readouterr().out.splitlines()[-4:]
    assert ["transformers prefill" in line and "decode speedup 2.00x" in line for line in out] == [False, True] * 2
    calls.clear()
    bench_engine.engine_section(argparse.Namespace(sizes=["100m"], cpu=True, prompt_len=16, new_tokens=64, repeats=3))
    assert calls == [("100m", b, 16, 32, "cpu", torch.float32, 3, hf) for b in (1, 8)]
    calls.clear()
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now fails: nanoo1's figures alone
    bench_engine.engine_section(argparse.Namespace(sizes=["tiny"], cpu=True, prompt_len=16, new_tokens=64, repeats=3))
    assert [c[-1] for c in calls] == [False, False] and "transformers is not installed" in capsys.readouterr().out


def test_one_lora_iteration_of_the_2b_preset_runs_its_updates(tmp_path, capsys):
    """The memory section's iteration, on the tiny shape: MCTS, a PPO update and an imitation step through LoRA."""
    import json

    from conftest import random_model
    from nanoo1.bench_iteration import one_lora_iteration
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer
    from nanoo1.warmstart import TINY_MODEL

    save_pretrained(random_model(TINY_MODEL, seed=0, std=0.05), Tokenizer.from_file(TINY_DIR), tmp_path)
    one_lora_iteration(str(tmp_path))
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["chains"] > 0 and row["ppo_updates"] == 1 and row["imitation_solved"] == 1.0
    from nanoo1 import iteration
    from nanoo1.search import grade
    from nanoo1.experience import tree_chains
    assert iteration.grade is grade and iteration.tree_chains is tree_chains  # the stand-ins are gone again


def test_one_lora_iteration_stands_in_for_grading_and_wraps_each_stage(monkeypatch):
    """While the iteration runs, a random model's chains count as what it learns from: tree_chains(tree, n) gives the
    first n of the tree's outcomes (3 failed thoughts under the root, n = 2 -> the paths to the first 2) and grade
    calls a result right when its path holds a thought past the root ([root] -> wrong, [root, thought] -> right);
    each stage is wrapped with its own counters, all 0 before it runs. Afterwards the real functions are back."""
    import types

    from nanoo1 import bench_iteration, iteration
    from nanoo1.thoughts import Tree

    real = {name: getattr(iteration, name) for name in ("tree_chains", "grade") + bench_iteration.STAGES}
    seen = {}

    def inside(checkpoint, device, settings, stages):
        seen.update({name: getattr(iteration, name) for name in real}, stages=stages,
                    args=(checkpoint, device, settings))
        return "counts", "model"

    monkeypatch.setattr(bench_iteration, "_one_lora_iteration", inside)
    assert bench_iteration.one_lora_iteration("ckpt", "cpu", {"simulations": 1}) == ("counts", "model")
    assert seen["args"] == ("ckpt", "cpu", {"simulations": 1})
    tree = Tree("Mia has 7 apples. She buys 5 more. How many now?")
    ends = [tree.add(tree.root, "<expansion>", f"thought {i}") for i in range(3)]
    for node in ends:
        node.terminal = "failure"
    assert seen["tree_chains"](tree, 2) == [[tree.root, ends[0]], [tree.root, ends[1]]]
    assert seen["grade"]([types.SimpleNamespace(path=[0]), types.SimpleNamespace(path=[0, 1])], None) == [False, True]
    assert set(seen["stages"]) == set(bench_iteration.STAGES)
    assert all(seen["stages"][name] == {"calls": 0, "seconds": 0.0, "peak_gb": None} for name in bench_iteration.STAGES)
    assert all(seen[name] is not real[name] for name in real)
    assert all(getattr(iteration, name) is fn for name, fn in real.items())


def test_the_iteration_searches_its_first_problems_and_imitates_the_next(tmp_path, monkeypatch, capsys):
    """With problems_per_iteration 2 over SHORT (imitation_problems 1) the iteration draws the tiny task's first 3
    training problems: PPO searches the first 2, imitation the 3rd, from a memory sampled uniformly (alpha 0); one
    AdamW over the trainable (LoRA) weights alone, at the 2b preset's PPO lr (2e-5). PPO and imitation stood in
    for, the counts printed and returned are theirs: 5 chains, 2 updates, half solved."""
    import json

    from conftest import random_model
    from nanoo1 import iteration
    from nanoo1.bench_iteration import SHORT, one_lora_iteration
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.recipe import PRESETS
    from nanoo1.tasks import TINY_DIR, load_jsonl
    from nanoo1.tokenizer import Tokenizer
    from nanoo1.warmstart import TINY_MODEL

    seen = {}

    def ppo(model, tokenizer, opt, replay, policy, problems, it, config):
        seen.update(ppo=problems, opt=opt, trainable=[p for p in model.parameters() if p.requires_grad])
        return {"chains": 5, "ppo_updates": 2, "solved": 0.0}

    def imitation(model, tokenizer, opt, policy, problems, memory, rng, config):
        seen.update(imitation=problems, alpha=memory.alpha, same_opt=opt is seen["opt"])
        return {"imitation_solved": 0.5}

    monkeypatch.setattr(iteration, "ppo_iteration", ppo)
    monkeypatch.setattr(iteration, "imitation_iteration", imitation)
    save_pretrained(random_model(TINY_MODEL, seed=0, std=0.05), Tokenizer.from_file(TINY_DIR), tmp_path)
    counts, model = one_lora_iteration(str(tmp_path), "cpu", {**SHORT, "problems_per_iteration": 2})
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == counts
    assert {k: counts[k] for k in ("chains", "ppo_updates", "imitation_solved")} == {
        "chains": 5, "ppo_updates": 2, "imitation_solved": 0.5}
    first = load_jsonl(TINY_DIR / "train.jsonl")[:3]
    assert seen["ppo"] == first[:2] and seen["imitation"] == first[2:] and seen["alpha"] == 0.0 and seen["same_opt"]
    (group,) = seen["opt"].param_groups
    assert group["lr"] == PRESETS["2b"].ppo.lr == 2e-5
    assert len(group["params"]) == len(seen["trainable"]) and all(p.requires_grad for p in group["params"])
    assert 0 < len(seen["trainable"]) < len(list(model.parameters()))


def _transformers_checkpoint(directory):
    """A tiny Gemma-2 written by transformers itself (its own save_pretrained), with the tiny task's tokenizer."""
    transformers = pytest.importorskip("transformers")
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer

    config = transformers.Gemma2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16)
    torch.manual_seed(0)
    transformers.Gemma2ForCausalLM(config).save_pretrained(directory)
    Tokenizer.from_file(TINY_DIR).save(directory)
    return directory


def _two_layers_at_2b_width(directory):
    """gemma-2-2b's width (2304, MLP 9216, 8/4 heads of 256) with 2 layers and the tiny vocabulary, in bf16."""
    from conftest import random_model
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer

    config = Gemma2Config.preset("2b", vocab_size=512, num_hidden_layers=2)
    save_pretrained(random_model(config, seed=0, std=0.02, dtype=torch.bfloat16), Tokenizer.from_file(TINY_DIR), directory)
    return directory


@pytest.mark.parametrize("make", [_transformers_checkpoint, _two_layers_at_2b_width], ids=["transformers", "2b-width"])
def test_a_lora_iteration_in_bf16_keeps_every_base_weight_and_trains_the_adapters(tmp_path, make, capsys):
    from nanoo1.bench_iteration import one_lora_iteration
    from nanoo1.checkpoint import load_pretrained

    checkpoint = make(tmp_path)
    counts, model = one_lora_iteration(str(checkpoint))
    assert counts["ppo_updates"] == 1 and counts["imitation_solved"] == 1.0
    base, _ = load_pretrained(checkpoint, dtype="bfloat16")
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.state_dict().items())  # bit for bit, in bf16
    lora_b = [v for k, v in state.items() if k.endswith("lora_B")]
    assert lora_b and all(v.dtype == torch.float32 and v.abs().sum() > 0 for v in lora_b)  # every adapter moved


def test_gpu_figures_run_on_the_cpu_with_a_tiny_shape(capsys):
    """The gpu section's code on a tiny shape: decode against the bound, then the shortened LoRA iteration with
    its stages timed, with the settings given (2 PPO updates); without CUDA the section skips."""
    from nanoo1.bench_iteration import SHORT, STAGES, gpu_figures, gpu_section
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer
    from nanoo1.warmstart import TINY_MODEL

    lines = []
    r = gpu_figures(TINY_MODEL, "cpu", torch.float32, Tokenizer.from_file(TINY_DIR), bandwidth=1e9, batches=(1, 2),
                    prompt_len=8, new_tokens=4, repeats=1, settings={**SHORT, "updates_per_iteration": 2},
                    report=lines.append)
    assert [line.split(":")[0] for line in lines] == ["decode B=1", "decode B=2"]  # a line per decode row
    weight_bytes = TINY_MODEL.num_parameters * 4
    assert r["weight_gb"] == pytest.approx(weight_bytes / 1e9) and r["bandwidth_tb_s"] == pytest.approx(1e-3)  # 1e9 B/s
    for d, b in zip(r["decode"], (1, 2)):
        assert d["batch"] == b and d["tok_s"] > 0 and d["bound_tok_s"] == pytest.approx(b * 1e9 / weight_bytes)
        assert d["fraction_of_bound"] == pytest.approx(d["tok_s"] / d["bound_tok_s"])
    it = r["iteration"]
    assert it["ppo_updates"] == 2 and it["chains"] > 0 and set(it["stages"]) == set(STAGES)  # the settings given
    assert all(st["calls"] >= 1 and st["seconds"] > 0 and st["peak_gb"] is None for st in it["stages"].values())
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert gpu_section(None) == {"skipped": "no CUDA device"} and "skipped" in capsys.readouterr().out


def test_gpu_section_on_cuda_hands_its_flags_to_gpu_figures(monkeypatch, capsys):
    """With CUDA (said to be) available: gemma-2-2b's shape in bf16 on "cuda", --bandwidth 3.35 (TB/s) as 3.35e12
    bytes/s, the decode's prompt, tokens and repeats and the iteration's settings from the flags, each decode line
    printed as it comes. Known figures: B=1 at 10 tok/s (50% of its bound), B=16 at 90 tok/s -> 9.0x; the stages'
    peaks 3.0, 12.5 and None (no CUDA call) GB -> a peak of 12.5 GB. --cpu skips the section even so."""
    import argparse

    from nanoo1 import bench_iteration

    calls = []
    figures = {"decode": [{"batch": 1, "tok_s": 10.0, "fraction_of_bound": 0.5},
                          {"batch": 16, "tok_s": 90.0, "fraction_of_bound": 0.28}],
               "iteration": {"stages": {"mcts": {"peak_gb": 3.0}, "ppo_step": {"peak_gb": 12.5},
                                        "sft_step": {"peak_gb": None}}}}

    def gpu_figures(config, device, dtype, tokenizer, bandwidth, **kw):
        calls.append((config, device, dtype, len(tokenizer), bandwidth, kw))
        kw["report"]("decode B=1: a line")
        return figures

    monkeypatch.setattr(bench_iteration, "gpu_figures", gpu_figures)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = argparse.Namespace(cpu=False, bandwidth=3.35, prompt_len=32, new_tokens=16, repeats=2,
                              gpu_settings={"simulations": 1})
    assert bench_iteration.gpu_section(args) is figures
    (config, device, dtype, vocab, bandwidth, kw), = calls
    assert config == Gemma2Config.preset("2b") and (device, dtype, vocab) == ("cuda", torch.bfloat16, 512)
    assert bandwidth == pytest.approx(3.35e12) and kw.pop("report") is not None
    assert kw == {"prompt_len": 32, "new_tokens": 16, "repeats": 2, "settings": {"simulations": 1}}
    out = capsys.readouterr().out
    assert "decode B=1: a line" in out and "B=16 / B=1: 9.0x" in out and "B=1 at 50% of the bound" in out
    assert "peak 12.5 GB" in out
    args.cpu = True
    assert bench_iteration.gpu_section(args) == {"skipped": "no CUDA device"} and len(calls) == 1


def test_a_stage_keeps_its_calls_seconds_and_highest_cuda_peak(monkeypatch):
    """_staged on CUDA (its calls stood in for): each call resets the peak first, so each reads its own; the stage
    keeps the highest, in GB of 1e9 bytes: peaks of 3e9 then 2e9 bytes -> 3.0. The clock reads 0, 1 and 5, 7: 1 + 2
    = 3 s over 2 calls; the wrapped function's answer and arguments pass through."""
    import types

    from nanoo1 import bench_iteration

    events, peaks, clock = [], iter([3e9, 2e9]), iter([0.0, 1.0, 5.0, 7.0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: events.append("reset"))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: next(peaks))
    monkeypatch.setattr(bench_iteration, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    stage = {"calls": 0, "seconds": 0.0, "peak_gb": None}
    run = bench_iteration._staged(lambda a, b=0: a + b, stage, cuda=True)
    assert run(1, b=2) == 3 and run(4) == 4
    assert stage == {"calls": 2, "seconds": pytest.approx(3.0), "peak_gb": pytest.approx(3.0)}
    assert events == ["sync", "reset", "sync"] * 2
    # a CPU iteration on a machine with a GPU (the memory section's child) touches no CUDA: no peak, no context
    clock, events[:] = iter([0.0, 1.0]), []
    cpu = {"calls": 0, "seconds": 0.0, "peak_gb": None}
    assert bench_iteration._staged(lambda: 5, cpu, cuda=False)() == 5 and events == [] and cpu["peak_gb"] is None


def test_memory_section_weighs_the_peak_rss_against_the_checkpoint(monkeypatch, capsys):
    """The section on a small stand-in for gemma-2-2b's shape, the child process and its rusage stood in for: the
    checkpoint is written in bf16 (its .safetensors are 2 bytes a parameter, give or take the header) and the
    child runs one_lora_iteration on that directory, checked. ru_maxrss is in KiB: 2,000,000 KiB = 2.048 GB; the
    ratio is that over the .safetensors bytes alone. The child prints its counts, then its own peak: the
    section's process may have waited for a larger child before (ru_maxrss of RUSAGE_CHILDREN is the largest of
    all of them, here 9,000,000 KiB), which must not count."""
    import dataclasses
    import json
    import re
    import resource
    import subprocess
    import sys
    import types
    from pathlib import Path

    from nanoo1 import bench_iteration

    config = dataclasses.replace(SMALL, vocab_size=512)  # the tiny tokenizer's, which preset("2b", ...) is given
    presets, seen = [], {}

    class Preset:
        @staticmethod
        def preset(name, **kw):
            presets.append(name)
            return dataclasses.replace(config, **kw)

    def run(cmd, **kw):
        d = Path(re.search(r"one_lora_iteration\('([^']+)'\)", cmd[2]).group(1))
        seen.update(cmd=cmd[:2], kw=kw, files=sorted(f.name for f in d.iterdir()),
                    size=sum(f.stat().st_size for f in d.glob("*.safetensors")))
        counts = {"chains": 3, "ppo_updates": 1, "imitation_solved": 1.0, "stages": {}}
        return types.SimpleNamespace(stdout="loading\n" + json.dumps(counts) + "\n2000000\n")

    monkeypatch.setattr(bench_iteration, "Gemma2Config", Preset)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(resource, "getrusage", lambda who: types.SimpleNamespace(ru_maxrss=9_000_000))
    row = bench_iteration.memory_section(None)
    assert presets == ["2b"] and seen["cmd"] == [sys.executable, "-c"]
    assert seen["kw"] == {"capture_output": True, "text": True, "check": True}
    assert any(f.endswith(".safetensors") for f in seen["files"]) and "config.json" in seen["files"]
    assert seen["size"] == pytest.approx(2 * config.num_parameters, rel=0.05)  # bf16
    assert row["checkpoint_gb"] == pytest.approx(seen["size"] / 1e9) and row["peak_rss_gb"] == pytest.approx(2.048)
    assert row["ratio"] == pytest.approx(2.048e9 / seen["size"])
    assert row["chains"] == 3 and row["ppo_updates"] == 1 and row["stages"] == {}


def test_dist_section_runs_one_process_two_ranks_and_one_thread_side_by_side(capsys, tmp_path, monkeypatch):
    import tempfile

    from nanoo1.bench import main

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the three runs' directories, removed when done

    short = ("--iterations 1 --eval-problems 4 --problems-per-iteration 4 --simulations 2 --imitation-problems 4 "
             "--imitation-batch 2 --minibatch 4 --eval-best-of-n 2 --eval-simulations 1 --eval-every 0 "
             "--max-thought-tokens 8")
    main(["--sections", "dist", "--dist-flags", short])
    out = capsys.readouterr().out
    assert "1 process x 2 threads" in out and "2 ranks x 1 thread" in out and "1 process x 1 thread" in out
    assert "the speed of one process" in out and "at most" in out
    assert "final_greedy" in out
    assert list(tmp_path.iterdir()) == []


def test_dist_section_runs_its_three_commands_and_reads_their_summaries(capsys, tmp_path, monkeypatch):
    """The runs stood in for: one process with --threads 2, torchrun with 2 ranks on 1 thread each
    (OMP_NUM_THREADS), one process with --threads 1, in that order, each with --dist-flags and its own --out in a
    temporary directory removed afterwards. Each prints a log line, then its summary line. The clock gives them 10, 8
    and 15 s: a speed-up of 10 / 8 = 1.25 and a ceiling of 2 x 10 / 15 = 1.33; the table shows the sft_/final_
    accuracies in percent. The wall time is the command's, not the one its summary gives (selfplay's own clock
    leaves out start-up, torchrun's launch and the final save). A run that fails raises naming it, with the last
    3000 characters of its stderr."""
    import json
    import os
    import sys
    import tempfile
    import types
    from pathlib import Path

    from nanoo1 import bench_dist

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the torchrun run alone sets it to 1
    runs, fail = [], {}
    summary = {"sft_greedy": 0.25, "final_greedy": 0.5, "iterations": 1, "wall_s": 7.0}  # selfplay's own clock

    def run(cmd, capture_output, text, env):
        assert capture_output and text
        runs.append((cmd, env))
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps(summary))
        code = fail.get(len(runs), 0)
        return types.SimpleNamespace(returncode=code, stdout="iteration 1\n" + json.dumps(summary) + "\n",
                                     stderr="x" * 4000 + "rank 1 failed" if code else "")

    clock = iter([0.0, 10.0, 10.0, 18.0, 18.0, 33.0])
    monkeypatch.setattr(bench_dist, "subprocess", types.SimpleNamespace(run=run))
    monkeypatch.setattr(bench_dist, "time", types.SimpleNamespace(perf_counter=lambda: next(clock)))
    r = bench_dist.dist_section(types.SimpleNamespace(dist_flags="--iterations 1  --seed 3"))
    selfplay = ["-m", "nanoo1.selfplay", "--tiny", "--no-progress", "--iterations", "1", "--seed", "3"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    outs, inherited = [cmd[-1] for cmd, _ in runs], dict(os.environ)  # OMP_NUM_THREADS=2 among the rest
    assert runs == [([sys.executable, *selfplay, "--threads", "2", "--out", outs[0]], inherited),
                    ([sys.executable, *torchrun, *selfplay, "--out", outs[1]], {**inherited, "OMP_NUM_THREADS": "1"}),
                    ([sys.executable, *selfplay, "--threads", "1", "--out", outs[2]], inherited)]
    assert len(set(outs)) == 3
    assert list(tmp_path.iterdir()) == []
    assert r["speedup"] == pytest.approx(1.25) and r["ceiling"] == pytest.approx(4 / 3)
    assert list(r["runs"]) == ["1 process x 2 threads", "2 ranks x 1 thread", "1 process x 1 thread"]
    assert [row["wall_s"] for row in r["runs"].values()] == [10.0, 8.0, 15.0]
    assert all(row["final_greedy"] == 0.5 for row in r["runs"].values())
    header, *rows, last = capsys.readouterr().out.splitlines()
    assert header.split() == ["wall", "s", "sft_greedy", "final_greedy"]
    assert [row.split()[-3:] for row in rows] == [["10.0", "25.0%", "50.0%"], ["8.0", "25.0%", "50.0%"],
                                                  ["15.0", "25.0%", "50.0%"]]
    assert "1.25x" in last and "at most 1.33x" in last
    runs.clear()
    fail[2], clock = 1, iter([0.0, 1.0, 1.0])  # the torchrun run fails
    with pytest.raises(RuntimeError, match="2 ranks x 1 thread: .*torch.distributed.run") as e:
        bench_dist.dist_section(types.SimpleNamespace(dist_flags=""))
    assert str(e.value).split("failed:\n")[1] == ("x" * 4000 + "rank 1 failed")[-3000:] and len(runs) == 2
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def fake_sections(monkeypatch):
    """bench's sections replaced by stand-ins that record their args; "search" fails after "engine" ran."""
    from nanoo1 import bench

    ran = []

    def engine(args):
        ran.append(args)
        return [{"size": "tiny"}]

    def search(args):
        ran.append(args)
        raise RuntimeError("search broke")

    monkeypatch.setitem(bench.SECTIONS, "engine", engine)
    monkeypatch.setitem(bench.SECTIONS, "search", search)
    return ran


@pytest.mark.parametrize("bad", [
    ["--json", "{tmp}/missing/b.json"], ["--json", "{tmp}"], ["--sections", "engine,serch"],
    ["--sections", "engine,engine"], ["--sizes", "tinny"], ["--repeats", "0"], ["--prompt-len", "0"],
    ["--new-tokens", "1"], ["--search-problems", "0"], ["--search-simulations", "0"], ["--thought-tokens", "0"],
    ["--bandwidth", "0"], ["--bandwidth", "nan"], ["--bandwidth", "inf"], ["--gpu-settings", "{simulations: 1}"],
    ["--gpu-settings", "[1]"], ["--gpu-settings", '{"warmstart": "/tmp"}'],
    ["--gpu-settings", '{"simulatons": 1}'], ["--gpu-settings", '{"simulations": "1"}'],
    ["--gpu-settings", '{"simulations": 0}'], ["--gpu-settings", '{"device": "cpu"}']])
def test_a_bad_flag_is_a_usage_error_naming_it_before_any_section_runs(bad, fake_sections, tmp_path, capsys):
    from nanoo1.bench import main

    bad = [a.replace("{tmp}", str(tmp_path)) for a in bad]
    with pytest.raises(SystemExit) as e:
        main(["--sections", "engine", *bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and bad[0] in err and bad[1] in err
    assert fake_sections == [] and list(tmp_path.iterdir()) == []


def test_good_flags_reach_the_sections_parsed(fake_sections, monkeypatch):
    """Flags at their bounds pass (--new-tokens 2: one token timed after the prefill's), --threads reaches the
    process set-up; with no flags the engine and search sections run, with the defaults (H200's 4.8 TB/s, as the
    help says, and 7 repeats)."""
    from nanoo1 import bench

    setups = []
    monkeypatch.setattr(bench, "process_setup", setups.append)
    bench.main(["--sections", "engine", "--sizes", "tiny,100m", "--gpu-settings", '{"simulations": 1, "lr": 1}',
                "--bandwidth", "3.35", "--new-tokens", "2", "--threads", "3"])
    args, = fake_sections
    assert args.sections == ["engine"] and args.sizes == ["tiny", "100m"] and args.new_tokens == 2
    assert args.gpu_settings == {"simulations": 1, "lr": 1} and args.bandwidth == 3.35 and setups == [3]
    with pytest.raises(RuntimeError, match="search broke"):
        bench.main([])
    assert [a.sections for a in fake_sections] == [["engine"], ["engine", "search"], ["engine", "search"]]
    defaults = fake_sections[1]
    assert (defaults.bandwidth, defaults.gpu_settings, defaults.sizes, defaults.repeats) == (4.8, {}, None, 7)
    assert setups == [3, None]


def test_the_json_is_written_atomically_after_each_section(fake_sections, tmp_path, monkeypatch):
    """A section that fails leaves the figures of the ones before it, written through atomic_write."""
    import json

    from nanoo1 import bench

    writes = []
    monkeypatch.setattr(bench, "atomic_write", lambda path, data: writes.append(path) or path.write_text(data))
    path = tmp_path / "b.json"
    with pytest.raises(RuntimeError, match="search broke"):
        bench.main(["--sections", "engine,search", "--json", str(path)])
    assert writes == [path] and json.loads(path.read_text()) == {"engine": [{"size": "tiny"}]}


@pytest.mark.parametrize("flags", ["--bogus 1", "--iterations x", "--iterations 0", "--iterations", "--temperature -1"])
def test_the_dist_sections_selfplay_flags_are_checked_before_any_section_runs(flags, fake_sections, capsys):
    """--dist-flags are read as each run's selfplay will read them (its parser, then its settings' checks), so a
    bad one is a usage error naming it before the sections before dist have run, not a traceback after them."""
    from nanoo1.bench import main

    with pytest.raises(SystemExit) as e:
        main(["--sections", "engine,dist", f"--dist-flags={flags}"])
    assert e.value.code == 2 and f"--dist-flags {flags}: " in capsys.readouterr().err and fake_sections == []
