"""The benchmark's arithmetic and a smoke run (no timing is asserted: speed goals are read off its printout)."""

import importlib.util

import pytest
import torch

from nanoo1.bench_engine import _paired, bench_size, decode_rate
from nanoo1.model import Gemma2Config


def test_decode_rate_counts_the_tokens_after_the_prefill():
    # 8 rows x 65 new tokens: the prefill's logits give token 1, the other 64 per row take 1.0 - 0.2 s
    # -> 8 * 64 / 0.8 = 640 tokens/s
    assert decode_rate(8, 65, 1.0, 0.2) == pytest.approx(640.0)


def test_paired_runs_every_contender_in_turn_within_each_repeat():
    calls = []
    times = _paired({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, sync=lambda: None)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # one warm-up each, then a, b in every repeat
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

    policy, tree = one_at_a_time(Recorder)(), Tree("Mia has 7 apples. She buys 5 more. How many now?")
    request = Request(tree, tree.root, ["<expansion>"] * 3, [None] * 3)
    assert policy.propose([request]) == [["thought 1", "thought 2", "thought 3"]]
    assert policy.asked == [request.prompt(j) for j in range(3)]  # each naming its own id, 1, 2, 3


def test_bench_size_smoke_on_a_tiny_model():
    config = Gemma2Config.preset("tiny", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16)
    with_hf = importlib.util.find_spec("transformers") is not None
    r = bench_size("test", 2, 8, 4, "cpu", torch.float32, 2, with_hf, config=config)
    assert r["batch"] == 2 and r["repeats"] == 2 and r["params"] == config.num_parameters
    assert r["ours_prefill_s"] > 0 and r["ours_decode_tok_s"] > 0
    if with_hf:
        assert r["prefill_ratio"] > 0 and r["decode_speedup"] > 0


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
    its stages timed; without CUDA the section skips."""
    from nanoo1.bench_iteration import SHORT, STAGES, gpu_figures, gpu_section
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer
    from nanoo1.warmstart import TINY_MODEL

    lines = []
    r = gpu_figures(TINY_MODEL, "cpu", torch.float32, Tokenizer.from_file(TINY_DIR), bandwidth=1e9, batches=(1, 2),
                    prompt_len=8, new_tokens=4, repeats=1, settings=SHORT, report=lines.append)
    assert [line.split(":")[0] for line in lines] == ["decode B=1", "decode B=2"]  # a line per decode row
    weight_bytes = TINY_MODEL.num_parameters * 4
    assert r["weight_gb"] == pytest.approx(weight_bytes / 1e9)
    for d, b in zip(r["decode"], (1, 2)):
        assert d["batch"] == b and d["tok_s"] > 0 and d["bound_tok_s"] == pytest.approx(b * 1e9 / weight_bytes)
        assert d["fraction_of_bound"] == pytest.approx(d["tok_s"] / d["bound_tok_s"])
    it = r["iteration"]
    assert it["ppo_updates"] == 1 and it["chains"] > 0 and set(it["stages"]) == set(STAGES)
    assert all(st["calls"] >= 1 and st["seconds"] > 0 and st["peak_gb"] is None for st in it["stages"].values())
    if not torch.cuda.is_available():
        capsys.readouterr()
        assert gpu_section(None) == {"skipped": "no CUDA device"} and "skipped" in capsys.readouterr().out


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
    ["--bandwidth", "0"], ["--bandwidth", "nan"], ["--gpu-settings", "{simulations: 1}"], ["--gpu-settings", "[1]"],
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


def test_good_flags_reach_the_sections_parsed(fake_sections):
    from nanoo1.bench import main

    main(["--sections", "engine", "--sizes", "tiny,100m", "--gpu-settings", '{"simulations": 1, "lr": 1}',
          "--bandwidth", "3.35"])
    args, = fake_sections
    assert args.sections == ["engine"] and args.sizes == ["tiny", "100m"]
    assert args.gpu_settings == {"simulations": 1, "lr": 1} and args.bandwidth == 3.35


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
