"""Several processes (torch.distributed, gloo on this CPU) against one: the same update, disjoint problems.

Each test spawns 2 ranks. An update of 2 ranks, each on half of a batch (their rows of different lengths,
so their token counts differ), must leave the same weights as one process's update on the whole batch.
"""

import json
import os
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from conftest import random_model, thread_names
from nanoo1 import dist
from nanoo1.model import Gemma2Config
from nanoo1.runs import load_trainer_state
from nanoo1.rl import LOSS_TYPES, completion_logprobs
from nanoo1.updates import GRPOConfig, PPOConfig, grpo_step, ppo_step
from nanoo1.sft import sft_step
from nanoo1.value import rating_bce

CONFIG = Gemma2Config(vocab_size=48, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8)
B, T = 6, 14


def batch():
    """Six rows with completions of different starts and lengths, old log-probs of the model, advantages."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, CONFIG.vocab_size, (B, T), generator=g)
    mask = torch.zeros(B, T)
    for b, (s, n) in enumerate([(2, 9), (5, 3), (3, 10), (4, 2), (6, 7), (2, 11)]):
        mask[b, s:s + n] = 1
    attn = torch.ones(B, T, dtype=torch.long)
    with torch.no_grad():
        old = completion_logprobs(random_model(CONFIG), ids, attn, mask) + 0.05 * mask
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": mask, "old_logp": old,
            "advantages": torch.randn(B, generator=g), "value_pos": torch.randint(0, T, (B, 3), generator=g),
            "value_target": torch.rand(B, 3, generator=g),  # 6 value positions in the first half's rows, 3 in the second's
            "value_mask": torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]])}


def value_fn(model, mb, hidden):  # the value loss averaged over the micro-batch's value positions, as selfplay's
    logits = model.logits(hidden)[torch.arange(len(mb["value_pos"]))[:, None], mb["value_pos"], :2]  # (b, 3, 2)
    return rating_bce(logits, mb["value_target"], mb["value_mask"])


def updates(rows: slice, names=None) -> dict:
    """Weights after one step of each update on `rows` of the batch, with AdamW at the recipe's learning rates
    (PPO and GRPO 1e-4, imitation 3e-4; gradient clip at 1) and with SGD (the update is the gradient itself)."""
    full = batch()
    part = {k: v[rows] for k, v in full.items()}
    steps = {"ppo": (1e-4, lambda m, o: ppo_step(m, o, part, PPOConfig(micro_batch_size=2), value_loss_fn=value_fn)),
             "imitation": (3e-4, lambda m, o: sft_step(m, o, (part["input_ids"], part["attention_mask"],
                                                                part["completion_mask"]), lr=3e-4))}
    for loss_type in LOSS_TYPES:
        steps[f"grpo_{loss_type}"] = (1e-4, lambda m, o, t=loss_type: grpo_step(
            m, o, part, GRPOConfig(loss_type=t, micro_batch_size=2, max_completion_length=T)))
    out = {}
    for name, (lr, step) in ((k, v) for k, v in steps.items() if names is None or k in names):
        for opt_cls in (torch.optim.AdamW, torch.optim.SGD):
            model = random_model(CONFIG)
            model.train()
            step(model, opt_cls(model.parameters(), lr=lr))
            out[f"{name} {opt_cls.__name__}"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def gloo_threads() -> list:
    return [n for n in thread_names() if "gloo" in n]


def _rank(rank: int, world: int, init: str, out: str, target) -> None:
    torch.set_num_threads(1)
    dist.join("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        torch.save(target(rank, world), f"{out}/rank{rank}.pt")
    finally:
        if tdist.is_initialized():  # a target may have left already (dist.finish)
            tdist.destroy_process_group()
    # a gloo thread alive at the interpreter's exit can abort the process (SIGABRT; dist.finish says how)
    assert not gloo_threads(), f"rank {rank}: gloo threads outlive the group: {gloo_threads()}"


def run_ranks(target, tmp_path, world: int = 2) -> list:
    """target(rank, world) run in `world` spawned processes joined by gloo; their results in rank order."""
    mp.spawn(_rank, args=(world, str(tmp_path / "init"), str(tmp_path), target), nprocs=world)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def test_setup_gives_each_rank_its_own_gpu_and_waits_an_hour(monkeypatch):
    """Under torchrun a cuda device becomes cuda:LOCAL_RANK, also when the group exists already (evolve's main
    joins it and its run asks again: --device cuda:0 put every rank on GPU 0), and the group waits an hour in a
    collective (nccl's default 10 minutes is shorter than rank 0 training a warm start alone)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    joined = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: bool(joined))
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    assert dist.setup(torch.device("cpu")) == torch.device("cpu")
    assert joined == [("gloo", {"timeout": dist.GROUP_TIMEOUT})] and dist.GROUP_TIMEOUT.total_seconds() == 3600
    for asked in (torch.device("cuda"), torch.device("cuda", 0), torch.device("cuda", 1)):
        assert dist.setup(asked) == torch.device("cuda", 1)
    assert len(joined) == 1
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process: the device as asked
    assert dist.setup(torch.device("cuda", 0)) == torch.device("cuda", 0)


class Stop(Exception):
    pass


def reads_its_start_in_out(entry: str, out: str, rank: int, world: int) -> list:
    """selfplay.run (its warm start OUT/final) or evolve.run (its base OUT/policy-1) with --overwrite: every rank
    reads its start (rank 1 late), then stops."""
    from types import SimpleNamespace

    import nanoo1.evolve as evolve
    import nanoo1.selfplay as selfplay
    from nanoo1.config import apply_flags
    from nanoo1.recipe import PRESETS

    start, seen = Path(out) / ("final" if entry == "selfplay" else "policy-1") / "model.safetensors", []

    def read(*args, **kwargs):
        time.sleep(1.5 * rank)
        seen.append(start.exists())
        return SimpleNamespace(config=None), None

    def stop(*args):
        raise Stop

    with pytest.raises(Stop):
        if entry == "selfplay":
            selfplay.load_model, selfplay.memory_estimate = read, stop
            selfplay.run(apply_flags(PRESETS["tiny"], {"out": out, "warmstart": str(start.parent)}), overwrite=True,
                         progress=False)
        else:
            evolve.load_pretrained, evolve.slip_pairs = read, stop
            evolve.run(evolve.EvolveConfig(out=out), str(start.parent), overwrite=True)
    return seen


@pytest.mark.parametrize("entry, start", [("selfplay", "final"), ("evolve", "policy-1")])
def test_a_run_over_its_own_output_clears_it_after_every_rank_has_read_its_start(tmp_path, entry, start):
    """--model OUT/final (evolve: OUT/policy-1) --overwrite: rank 0 clears OUT only once every rank has read the
    model it starts from."""
    from functools import partial

    (tmp_path / "run" / start).mkdir(parents=True)
    (tmp_path / "run" / start / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    assert run_ranks(partial(reads_its_start_in_out, entry, str(tmp_path / "run")), tmp_path) == [[True], [True]]
    assert not (tmp_path / "run" / start).exists()  # cleared, as --overwrite asks


def halves(rank: int, world: int):
    assert dist.place().world == 2 and dist.place().rank == rank
    return updates(slice(rank * B // world, (rank + 1) * B // world))


def test_two_ranks_on_halves_update_as_one_process_on_the_whole_batch(tmp_path):
    ranks = run_ranks(halves, tmp_path)
    alone = updates(slice(None))
    start = random_model(CONFIG).state_dict()
    for name, weights in alone.items():
        assert any(not torch.equal(weights[k], start[k]) for k in weights), name  # the step moved the weights
        for k in weights:
            for r in ranks:  # every rank holds the one-process weights
                torch.testing.assert_close(r[name][k], weights[k], rtol=0, atol=1e-6, msg=f"{name} {k}")


def all_on_rank_0(rank: int, world: int):  # GRPO drops groups whose rewards agree: a rank may have no rows left
    return updates(slice(None) if rank == 0 else slice(0, 0), names=[f"grpo_{t}" for t in LOSS_TYPES])


def test_a_rank_without_rows_joins_the_update_and_changes_nothing(tmp_path):
    ranks = run_ranks(all_on_rank_0, tmp_path)
    alone = updates(slice(None), names=[f"grpo_{t}" for t in LOSS_TYPES])
    for name, weights in alone.items():
        for k in weights:
            for r in ranks:
                torch.testing.assert_close(r[name][k], weights[k], rtol=0, atol=1e-6, msg=f"{name} {k}")


def draws(rank: int, world: int):
    p = dist.place()
    items = dist.from_main(list(range(100, 123)) if p.main else None)  # rank 0's draw reaches every rank
    return {"mine": dist.shard(items, p), "all": items, "seed": dist.rank_seed(7, rank),
            "total": int(dist.total(rank + 1)), "least": dist.smallest(rank + 5),
            "gathered": dist.gather(rank * 10),
            "combined": dist.combine({"acc": float(rank), "chains": 3, "x": "s", "solved": 0.4, "updates": 2},
                                     summed=("chains",)),
            "ratio": dist.ratio(1 if rank == 0 else 2, 3 if rank == 0 else 2),  # 1 of 3 and 2 of 2 solved: 3 of 5
            "no_gradients": dist.sum_gradients(torch.nn.Linear(2, 2).parameters()),  # nothing to sum: nothing done
            "on_main": dist.on_main(lambda: (dist.place().world, float(dist.total(rank + 3)))),  # no collective waits
            "nested": dist.on_main(lambda: (dist.on_main(lambda: "inner"), dist.place().world))}


def test_ranks_take_disjoint_shares_and_combine_their_numbers(tmp_path):
    r0, r1 = run_ranks(draws, tmp_path)
    assert r0["all"] == r1["all"] == list(range(100, 123))
    assert not set(r0["mine"]) & set(r1["mine"]) and sorted(r0["mine"] + r1["mine"]) == r0["all"]
    assert r0["seed"] == 7 and r1["seed"] != 7
    assert r0["total"] == r1["total"] == 3 and r0["least"] == r1["least"] == 5
    assert r0["gathered"] == r1["gathered"] == [0, 10]
    assert r0["combined"] == r1["combined"] == {"acc": 0.5, "chains": 6, "x": "s", "solved": 0.4, "updates": 2}
    # a count stays a count in metrics.jsonl, and a figure the same on every rank stays it, as on one process
    assert type(r0["combined"]["chains"]) is int and type(r0["combined"]["updates"]) is int
    assert r0["ratio"] == r1["ratio"] == 0.6
    assert [dist.share(n, dist.Place(r, 3)) for n in (7, 2) for r in range(3)] == [3, 2, 2, 1, 1, 1]  # 7 = 3+2+2
    assert r0["on_main"] == r1["on_main"] == (1, 3.0)  # rank 0's work for all, as one process
    assert r0["nested"] == r1["nested"] == ("inner", 1)  # still one process after an inner call


def grpo_shares(rank: int, world: int):
    """One GRPO iteration of 2 rounds of 3 problems: which questions each round rolls out, and the rows of each
    update step, with rewards made to differ within every group."""
    import nanoo1.elastic as elastic
    from nanoo1.checkpoint import load_pretrained
    from nanoo1.config import apply_flags
    from nanoo1.recipe import PRESETS
    from nanoo1.tasks import TINY_DIR, load_jsonl

    model, tokenizer = load_pretrained(TINY_DIR / "warmstart-think")
    model.requires_grad_(True)
    rounds, steps, real = [], [], (elastic.generate_budgeted, elastic.grpo_step, elastic.rollout_rewards)
    generate, step, _ = real
    elastic.generate_budgeted = lambda model, prompts, *a, **k: rounds.append(
        [tokenizer.decode(p) for p in prompts]) or generate(model, prompts, *a, **k)
    elastic.grpo_step = lambda model, opt, batch, cfg: steps.append(len(batch["input_ids"])) or step(model, opt, batch, cfg)
    elastic.rollout_rewards = lambda rows, correct, config: (torch.arange(len(rows)) % 2).float()
    config = apply_flags(PRESETS["tiny"], dict(algo="grpo", group_size=2, think_budget=4, solution_budget=2,
                                               problems_per_iteration=3, rounds=2, grpo_minibatch=4))
    try:
        elastic.grpo_iteration(model, tokenizer, torch.optim.AdamW(model.parameters(), lr=1e-4),
                               load_jsonl(TINY_DIR / "train.jsonl")[:6], 0, config, dist.rank_seed(0, rank))
    finally:
        elastic.generate_budgeted, elastic.grpo_step, elastic.rollout_rewards = real
    return {"rounds": rounds, "steps": steps}


def test_grpo_ranks_share_each_round_and_each_step_as_one_process(tmp_path):
    """Every round's problems are rolled out, split over the ranks, and each update step holds grpo_minibatch
    rollouts over all ranks, as in one process."""
    alone = grpo_shares(0, 1)
    ranks = run_ranks(grpo_shares, tmp_path)
    assert [len(r) for r in alone["rounds"]] == [3, 3]
    for k, questions in enumerate(alone["rounds"]):
        assert sorted(ranks[0]["rounds"][k] + ranks[1]["rounds"][k]) == sorted(questions)
    assert max(alone["steps"]) == 4 and max(ranks[0]["steps"] + ranks[1]["steps"]) == 2
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) >= len(alone["steps"])


def leave_late_on_rank_0(rank: int, world: int) -> float:
    start = time.monotonic()
    if rank == 0:
        time.sleep(1.0)  # still at work (writing the run) when rank 1 is done
    dist.finish()
    return time.monotonic() - start


def test_ranks_leave_the_process_group_together(tmp_path):
    # finish waits for every rank before the group is destroyed: no rank leaves while a peer still works
    r0, r1 = run_ranks(leave_late_on_rank_0, tmp_path)
    assert r0 >= 1.0 and r1 >= 0.9, (r0, r1)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from /proc (Linux)")
def test_finish_stops_the_process_groups_threads(tmp_path, warmstart):
    # a gloo worker thread still alive when the interpreter exits can abort the process (dist.finish says how)
    run = torchrun([warmstart, tmp_path], script=[str(Path(__file__).parent / "threads_after_finish.py")])
    assert run.returncode == 0, run.stderr[-3000:]
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*.txt"))
    assert len(lines) == 2 and not any("gloo" in l for l in lines), lines


def test_shard_by_size_balances_the_ranks_totals_and_goes_round_for_equal_sizes():
    two = [dist.Place(rank, 2) for rank in (0, 1)]
    assert [dist.shard_by_size([1, 3, 1, 1], p) for p in two] == [[1], [0, 2, 3]]  # 3 against 1 + 1 + 1
    assert [dist.shard_by_size([2, 2, 1, 1, 1, 1], p) for p in two] == [[0, 2, 4], [1, 3, 5]]
    assert [dist.shard_by_size([1] * 5, p) for p in two] == [dist.shard(list(range(5)), p) for p in two]
    assert dist.shard_by_size([1, 4, 2], dist.Place()) == [0, 1, 2]
    assert [dist.shard_by_size([0] * 4, p) for p in two] == [[0, 2], [1, 3]]  # sizes 0 go round too, not all to rank 0


def test_one_process_is_rank_0_of_1_and_untouched():
    assert "WORLD_SIZE" not in os.environ or os.environ["WORLD_SIZE"] == "1"
    p = dist.place()
    assert (p.rank, p.world, p.main) == (0, 1, True)
    assert dist.shard([1, 2, 3], p) == [1, 2, 3] and dist.rank_seed(5, 0) == 5
    assert dist.from_main("x") == "x" and dist.gather(4) == [4] and dist.combine({"a": 1}) == {"a": 1}
    assert dist.rank_file("replay.pt", 0) == "replay.pt" and dist.rank_file("replay.pt", 1) == "replay.rank1.pt"
    assert dist.setup(torch.device("cpu")) == torch.device("cpu") and not tdist.is_initialized()


# ----------------------------------------------------------------------------- self-play under torchrun

def torchrun(args: list, world: int = 2, script: list | None = None):
    """`torchrun --nproc_per_node world` of selfplay (or of `script`) with these flags, 1 thread per rank."""
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(here.parent), str(here), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    cmd += script or ["-m", "nanoo1.selfplay"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)


SHORT = ["--eval-problems", "4", "--iterations", "2", "--problems-per-iteration", "4", "--simulations", "2",
         "--updates-per-iteration", "2", "--minibatch", "4", "--eval-best-of-n", "2", "--eval-simulations", "2",
         "--eval-every", "1", "--eval-quick", "4", "--max-thought-tokens", "12", "--imitation-problems", "4",
         "--imitation-batch", "2", "--no-progress"]


def summary_of(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints the summary
    return {k: v for k, v in json.loads(lines[0]).items() if k not in ("wall_s", "checkpoint")}


@pytest.fixture(scope="module")
def warmstart(tmp_path_factory):
    from conftest import random_model as rm
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.tasks import TINY_DIR
    from nanoo1.tokenizer import Tokenizer
    from nanoo1.warmstart import TINY_MODEL

    d = tmp_path_factory.mktemp("warm")
    save_pretrained(rm(TINY_MODEL, seed=0, std=0.05), Tokenizer.from_file(TINY_DIR), d)
    return d


def test_a_two_rank_run_writes_one_run_repeats_and_resumes_exactly(tmp_path, warmstart):
    flags = ["--tiny", "--model", warmstart] + SHORT
    first = summary_of(torchrun(flags + ["--out", tmp_path / "a"]))
    again = summary_of(torchrun(flags + ["--out", tmp_path / "b"]))
    assert first == again  # the same seed, the same JSON
    a = tmp_path / "a"
    assert sorted(p.name for p in a.iterdir()) == ["final", "iter-0000", "iter-0001", "latest", "metrics.jsonl",
                                                   "summary.json"]
    rows = [json.loads(l) for l in (a / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("iteration") for r in rows] == [None, 0, 1, None]  # one metrics file, each line once
    assert {p.name for p in (a / "iter-0001").glob("*.pt")} >= {"replay.pt", "replay.rank1.pt", "imitation.pt",
                                                               "imitation.rank1.pt", "trainer_state.rank1.pt"}
    # killed after the first checkpoint, then resumed on 2 ranks: the same end as the uninterrupted run
    killed = torchrun(flags + ["--out", tmp_path / "c"], script=[str(Path(__file__).parent / "selfplay_killed.py")])
    assert killed.returncode != 0 and (tmp_path / "c" / "latest").read_text() == "iter-0000"
    assert summary_of(torchrun(["--resume", tmp_path / "c", "--no-progress"])) == first
    assert untimed_metrics(tmp_path / "c") == untimed_metrics(a)
    with pytest.raises(ValueError, match="torchrun --nproc_per_node 2"):  # one process cannot resume 2 ranks
        load_trainer_state(a / "iter-0001")


def untimed(row):
    return {k: untimed(v) if isinstance(v, dict) else v for k, v in row.items() if k != "seconds"}


def untimed_metrics(run_dir) -> list:
    return [untimed(json.loads(l)) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sharded_evaluation_gives_the_whole_sets_greedy_figures(tmp_path, warmstart, capsys):
    from nanoo1 import eval as eval_cli

    flags = ["--checkpoint", warmstart, "--limit", "7", "--methods", "greedy,best_of_n", "--budgets", "2",
             "--max-thought-tokens", "8"]
    two = torchrun(flags + ["--out", tmp_path / "two"], script=["-m", "nanoo1.eval"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote") == 1 + two.stdout.count("scaling.png")  # rank 0 alone prints and writes
    eval_cli.main([str(f) for f in flags + ["--out", tmp_path / "one"]])
    one, two = ([json.loads(l) for l in (tmp_path / d / "eval.jsonl").read_text().splitlines()] for d in ("one", "two"))
    assert [r["method"] for r in one] == [r["method"] for r in two] == ["greedy", "best_of_n"]
    assert two[0]["accuracy"] == pytest.approx(one[0]["accuracy"]) and two[0]["tokens"] == pytest.approx(one[0]["tokens"])


def test_sharded_evolve_writes_one_table_and_the_whole_sets_greedy(tmp_path, capsys):
    from nanoo1 import evolve

    flags = ["--tiny", "--rounds", "1", "--problems", "4", "--simulations", "2", "--eval-problems", "5",
             "--sft-epochs", "1", "--ppm-epochs", "1", "--pair-problems", "4", "--beam", "0", "--no-progress"]
    two = torchrun(flags + ["--out", tmp_path / "two"], script=["-m", "nanoo1.evolve"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("base model:") == 1 and two.stdout.count("wrote") == 1 + two.stdout.count("rounds.png")  # rank 0
    evolve.main([str(f) for f in flags + ["--out", tmp_path / "one", "--procs", "1"]])
    one, two = ([json.loads(l) for l in (tmp_path / d / "metrics.jsonl").read_text().splitlines()] for d in ("one", "two"))
    assert [r["round"] for r in two] == [0, 1] and (tmp_path / "two" / "policy-1").is_dir()
    assert two[0]["greedy"] == one[0]["greedy"] and two[0]["greedy_tokens"] == one[0]["greedy_tokens"]
    assert round(4 * two[0]["coverage"], 6).is_integer()  # a share of all 4 problems' trees, gathered


def scorer_fits(rank: int = 0, world: int = 1):
    """Weights of a PPM and an ORM after 3 `ppm.fit` steps of 3 items each (2 on rank 0, 1 on rank 1): the ORM's
    items are solutions, the PPM's trees of 1 to 3 pairs that share paths, a rank's share weighed by its pairs."""
    from nanoo1.ppm import ProcessPreferenceModel, fit, outcome_batch_loss, pair_batch_loss

    g = torch.Generator().manual_seed(5)
    s = [torch.randint(1, CONFIG.vocab_size, (n,), generator=g).tolist() for n in (5, 9, 4, 7, 11, 6, 8, 3, 10)]
    trees = [[(s[0], s[1]), (s[0], s[2]), (s[3], s[1])], [(s[4], s[5])], [(s[6], s[7]), (s[8], s[7])],
             [(s[2], s[5]), (s[1], s[4])], [(s[3], s[8])]]
    jobs = {"ppm": (pair_batch_loss, trees, len),
            "orm": (outcome_batch_loss, [(x, i % 3 == 0) for i, x in enumerate(s)], None)}
    out = {}
    for name, (loss_of, items, size) in jobs.items():
        model = ProcessPreferenceModel(random_model(CONFIG))
        torch.nn.init.normal_(model.head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
        out[name] = fit(model, items, loss_of, 0, steps=3, per_step=3, lr=1e-3, size=size), {
            k: v.detach().clone() for k, v in model.state_dict().items()}
    return out


def test_ranks_fitting_a_ppm_or_orm_make_the_one_process_steps(tmp_path):
    ranks, alone = run_ranks(scorer_fits, tmp_path), scorer_fits()
    for name, (losses, weights) in alone.items():
        for r in ranks:
            assert r[name][0] == pytest.approx(losses, abs=1e-6), name
            # 1e-5 on the weights: AdamW divides each gradient by its own size, so where a weight's gradient is a
            # near-cancelling sum, float32 rounding in another summation order (2 ranks, or another CPU's kernels)
            # moves it by up to 2e-6 after 3 steps at lr 1e-3; ranks that weigh their means wrongly (each by 1/2)
            # move weights by 5e-3 and the losses by 0.3.
            for k in weights:
                torch.testing.assert_close(r[name][1][k], weights[k], rtol=0, atol=1e-5, msg=f"{name} {k}")


def test_setup_on_cuda_binds_the_process_to_its_gpu_and_joins_over_nccl(monkeypatch):
    """Joining on a cuda device: the process's current GPU becomes cuda:LOCAL_RANK before the group is made (nccl
    binds each rank's communicator to the current device; without it every rank would share GPU 0), and the
    backend is nccl, which reduces CUDA tensors (gloo is for the CPU)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    calls = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: any(c[0] == "join" for c in calls))
    monkeypatch.setattr(tdist, "init_process_group", lambda backend, **kw: calls.append(("join", backend)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set_device", device)))
    assert dist.setup(torch.device("cuda")) == torch.device("cuda", 1)
    assert calls == [("set_device", torch.device("cuda", 1)), ("join", "nccl")]


def test_place_and_barrier_in_a_group(monkeypatch):
    """In a group, the place is the group's rank and size and torchrun's LOCAL_RANK (rank 3 of 4 is rank 1 on its
    machine of 2), and `barrier` waits on the group, 2 processes or more (one barrier per call); alone it waits on
    nothing."""
    waits = []
    monkeypatch.setattr(tdist, "barrier", lambda: waits.append(1))
    dist.barrier()
    assert waits == []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_rank", lambda: 3)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 4)
    assert dist.place() == dist.Place(rank=3, world=4, local_rank=1) and not dist.place().main
    dist.barrier()
    monkeypatch.setattr(tdist, "get_rank", lambda: 1)
    monkeypatch.setattr(tdist, "get_world_size", lambda: 2)
    dist.barrier()
    assert waits == [1, 1]


def test_one_process_edge_cases_of_ratios_files_and_seeds():
    """A ratio of nothing is 0.0; a rank's file name splits at the last dot and a name without one gains a suffix;
    the seeds of different ranks and run seeds stay apart (rank 1 of seed 0 is not rank 0 of seed 1)."""
    assert dist.ratio(0, 0) == 0.0 and dist.ratio(1, 4) == 0.25
    assert dist.rank_file("iter.0001.replay.pt", 2) == "iter.0001.replay.rank2.pt"
    assert dist.rank_file("state", 3) == "state.rank3"
    seeds = {dist.rank_seed(seed, rank) for seed in range(100) for rank in range(8)}
    assert len(seeds) == 800


def contracts(rank: int, world: int):
    """What the collectives leave alone: on_main's function runs on rank 0 alone, `total` returns a new tensor and
    leaves its argument as it was, and sum_gradients adds zeros for a rank without a parameter's gradient but
    gives none to a parameter no rank has one for; sum_stats adds every rank's statistics."""
    ran = []
    result = dist.on_main(lambda: ran.append(rank) or "made on rank 0")
    x = torch.tensor([1.0, 2.0])
    summed = dist.total(x)
    stats = dist.sum_stats({"loss": 0.5 * (rank + 1), "tokens": 3.0})  # each rank's share: the whole batch's sum
    both, rank_0_only, neither = (torch.nn.Parameter(torch.zeros(2)) for _ in range(3))
    both.grad = torch.full((2,), float(rank + 1))
    if rank == 0:
        rank_0_only.grad = torch.tensor([5.0, 7.0])
    dist.sum_gradients([both, rank_0_only, neither])
    return {"ran": ran, "result": result, "x": x.tolist(), "summed": summed.tolist(), "both": both.grad.tolist(),
            "rank_0_only": rank_0_only.grad.tolist(), "neither": neither.grad, "largest": dist.largest(rank + 5),
            "stats": stats}


def test_collectives_leave_their_inputs_and_other_ranks_alone(tmp_path):
    r0, r1 = run_ranks(contracts, tmp_path)
    assert r0["ran"] == [0] and r1["ran"] == [] and r0["result"] == r1["result"] == "made on rank 0"
    assert r0["x"] == r1["x"] == [1.0, 2.0] and r0["summed"] == r1["summed"] == [2.0, 4.0]
    assert r0["both"] == r1["both"] == [3.0, 3.0] and r0["rank_0_only"] == r1["rank_0_only"] == [5.0, 7.0]
    assert r0["neither"] is None and r1["neither"] is None
    assert r0["largest"] == r1["largest"] == 6 and r0["stats"] == r1["stats"] == {"loss": 1.5, "tokens": 6.0}


def test_an_interrupted_launch_ends_as_an_interrupted_rank_does(monkeypatch, capsys):
    """torchrun's launcher turns Ctrl-C or SIGTERM into its own SignalException once it has stopped the ranks;
    `dist.launch` raises KeyboardInterrupt instead, which `device.quiet_interrupts` prints as one line rather than a
    traceback through torchrun's agent, and takes the launcher's mark out of the environment."""
    import sys

    import torch.distributed.run
    from torch.distributed.elastic.multiprocessing.api import SignalException

    from nanoo1 import device

    def stopped(args):
        assert os.environ[dist.LAUNCHER] == str(os.getpid())
        raise SignalException("got signal: 2", sigval=2)

    monkeypatch.setattr(torch.distributed.run, "main", stopped)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    with pytest.raises(KeyboardInterrupt):
        dist.launch("nanoo1.evolve", 2, ["--tiny"])
    assert dist.LAUNCHER not in os.environ
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)  # what Python does with it at the top
    assert capsys.readouterr().err == device.INTERRUPTED + "\n"
    installed = sys.excepthook
    device.quiet_interrupts()  # process_setup calls it again in a process that launched: nothing more to wrap
    assert sys.excepthook is installed


def test_ranks_a_command_started_end_with_it(tmp_path):
    """evolve starts its own ranks under torchrun (`dist.launch`); a rank calls `end_with_launcher`, so when the
    command is killed (SIGKILL: nothing of it runs to stop them) the rank gets SIGTERM and unwinds, its cleanups
    run, rather than run the whole run on alone, writing into its directory."""
    import signal
    import subprocess
    import sys

    marker = tmp_path / "cleaned"
    rank = ("import sys, time\nfrom nanoo1.device import process_setup\nfrom nanoo1 import dist\nprocess_setup()\n"
            "dist.end_with_launcher()\ntry:\n    print('ready', flush=True)\n    time.sleep(60)\nfinally:\n"
            "    open(sys.argv[1], 'w').write('cleaned')\n")
    launcher = ("import os, subprocess, sys, time\nfrom nanoo1 import dist\nos.environ[dist.LAUNCHER] = str(os.getpid())\n"
                "subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2]])\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher, rank, str(marker)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"  # the rank's line, through the launcher's pipe
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.exists() and marker.read_text() == "cleaned"
    assert dist.LAUNCHER not in os.environ  # set only for the ranks a launch starts
