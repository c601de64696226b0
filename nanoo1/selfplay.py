"""`python -m nanoo1.selfplay --tiny`: the whole o1 loop, learning on a laptop CPU.

    warm start (SFT)  ->  repeat: MCTS over training problems (ground truth checks the conclusions)
                                  -> root-to-outcome chains with GAE advantages and value targets (experience.py)
                                  -> prioritized replay -> PPO on policy and rating-token value
                                  -> checked greedy over more training problems -> imitation of its successes,
                                     beside as many successes of earlier iterations (the imitation memory)
                      ->  held-out accuracy of greedy, best-of-N and MCTS, before and after

This file is the loop around the iterations (set-up or resume, evaluation before and after, checkpoints, the
summary); one iteration's stages are `iteration.ppo_iteration` and `iteration.imitation_iteration`.

`--algo grpo` replaces MCTS + PPO by Elastic Reasoning's budgeted GRPO rollouts (the <think> format, elastic.py),
and best-of-N and MCTS in the tables by accuracy and tokens against the thinking budget (t*/4 .. 2t*, unlimited).
Every iteration writes a checkpoint (Hugging Face layout + the run's settings + replay buffer + imitation
memory + optimizer + random states; the last `--keep-checkpoints` stay); `--resume DIR` continues a run
exactly with the settings it was started with. Metrics go to DIR/metrics.jsonl; the last line printed is
one JSON object with the headline figures, also kept in DIR/summary.json.

    python -m nanoo1.selfplay --tiny                       # about 6 minutes on 2 CPU cores
    python -m nanoo1.selfplay --tiny --from-scratch        # redo the warm start too
    python -m nanoo1.selfplay --tiny --algo grpo           # about 2 minutes (--reward cosine: the length reward)
    python -m nanoo1.selfplay --model qq8933/OpenLongCoT-Base-Gemma2-2B --data train.jsonl --test-data test.jsonl
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from nanoo1 import dist
from nanoo1.checkpoint import read_tokenizer
from nanoo1.config import add_config_flags, add_process_flags, apply_flags, entry_parser, flat_settings
from nanoo1.device import process_setup, resolve_device
from nanoo1.elastic import budget_job, budget_jobs, budget_summary, grpo_iteration, report_budgets
from nanoo1.eval import EVAL_MCTS, EvalResult, evaluate, evaluate_sharded
from nanoo1.files import atomic_write, remove_leftovers
from nanoo1.iteration import imitation_iteration, ppo_iteration
from nanoo1.policy import LMPolicy
from nanoo1.replay import PrioritizedReplay
from nanoo1.recipe import (PRESETS, SelfPlayConfig, default_out, draws_per_iteration, iteration_config, memory_estimate,
                           step_checker, tiny_warmstart, warmstart_kind)
from nanoo1.runs import (append_jsonl, latest_checkpoint, load_model, load_trainer_state, local_path, prepare_out,
                         resume_settings, rewrite_jsonl, save_checkpoint, save_model)
from nanoo1.tasks import load_jsonl
from nanoo1.warmstart import train_warmstart


def load_problems(config: SelfPlayConfig):
    """(training problems, the held-out problems of the before/after tables, those of the quick greedy checks),
    checked against what the run will draw from them: the first --eval-problems and --eval-quick of the test file."""
    for flag, path in (("--data", config.run.data), ("--test-data", config.run.test_data)):
        if not path:
            raise ValueError(f"{flag}: no file given (GSM8K-style jsonl: question, answer ending in '#### N')")
    train, test = load_jsonl(config.run.data), load_jsonl(config.run.test_data)
    per_iteration = draws_per_iteration(config)
    if len(train) < per_iteration:
        raise ValueError(f"{config.run.data}: {len(train)} problems, but every iteration draws {per_iteration} distinct "
                         f"ones (--problems-per-iteration{' + --imitation-problems' if config.run.algo == 'ppo' else ' x --rounds'})")
    if not test:
        raise ValueError(f"{config.run.test_data}: no held-out problems")
    return train, test[: config.eval.problems], test[: config.eval.quick]


def _table(rows: list[tuple[str, EvalResult, EvalResult]]) -> str:
    lines = [f"{'method':<22}{'before':>9}{'after':>9}{'tokens/problem':>16}"]
    for name, before, after in rows:
        lines.append(f"{name:<22}{100 * before.accuracy:8.1f}%{100 * after.accuracy:8.1f}%{after.tokens:16.1f}")
    return "\n".join(lines)


def evaluate_all(model, tokenizer, problems, config: SelfPlayConfig, tag: str, progress: bool, seed: int) -> dict[str, EvalResult]:
    """The before/after table's rows: for PPO greedy, best-of-N and MCTS in the thought format (MCTS expanding
    the run's `num_candidates` thoughts, with the step checker as a tool like rStar's code execution: no ground
    truth needed); for GRPO greedy in the <think> format at each of `elastic_budgets`.
    Under torchrun each rank evaluates its share of the problems (`eval.evaluate_sharded`)."""
    from tqdm.auto import tqdm

    s, e = config.search, config.eval
    kw = dict(temperature=s.temperature, max_thought_tokens=s.max_thought_tokens, max_rows=s.max_rows, seed=seed)
    tree = replace(EVAL_MCTS, verify=step_checker(config), num_candidates=s.num_candidates, max_children=s.num_candidates)
    jobs = {}
    if config.run.algo == "ppo":
        jobs["greedy"] = lambda ps: evaluate(model, tokenizer, ps, "greedy", **kw)
        jobs[f"best_of_{e.best_of_n}"] = lambda ps: evaluate(model, tokenizer, ps, "best_of_n", e.best_of_n, **kw)
        jobs[f"mcts_{e.simulations}"] = lambda ps: evaluate(model, tokenizer, ps, "mcts", e.simulations, mcts=tree, **kw)
    else:
        jobs.update(budget_jobs(model, tokenizer, config, problems))
    results = {}
    bar = tqdm(jobs.items(), desc=f"evaluate {tag}", disable=not progress, unit="method")
    for name, job in bar:
        bar.set_postfix_str(f"{name} on {len(problems)} problems")
        results[name] = evaluate_sharded(job, problems)
    return results


def check_shares(config: SelfPlayConfig, world: int) -> None:
    """Every rank searches a share of an iteration's problems (of each GRPO round), and of PPO's imitation
    problems (the ranks take as many imitation steps as the one with the fewest chains): at least one each."""
    if config.search.problems_per_iteration < world:
        raise ValueError(f"--problems-per-iteration {config.search.problems_per_iteration}: fewer than the {world} "
                         f"ranks, each of which needs a problem")
    if config.run.algo == "ppo" and 0 < config.imitation.problems < world:
        raise ValueError(f"--imitation-problems {config.imitation.problems}: fewer than the {world} ranks, each of "
                         f"which needs a problem (0: no imitation)")


def run(config: SelfPlayConfig, resume: str | None = None, from_scratch: bool = False, progress: bool = True,
        overwrite: bool = False) -> dict:
    """The whole loop: set-up (or resume), evaluation before, the iterations, evaluation after, the summary.

    Under torchrun (`dist`) every rank runs this: rank 0 draws each iteration's problems and every rank
    searches and trains on its own share, with its own generators, replay buffer and imitation memory
    (saved per rank, so --resume continues every rank exactly); the gradients are summed over ranks, so
    the weights are the same everywhere; rank 0 alone writes checkpoints, metrics and the summary."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    # -- set-up: every setting and input is checked before any work starts
    out = Path(resume or default_out(config))
    device = dist.setup(resolve_device(config.run.device))
    place = dist.place()
    check_shares(config, place.world)
    if resume:
        resume_settings(out, SelfPlayConfig, flat_settings(config))
        if (out / "summary.json").exists():  # finished: nothing left to run
            try:
                return json.loads((out / "summary.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{out / 'summary.json'}: not the summary of a finished run ({e})") from e
    train, test, quick = load_problems(config)
    progress = progress and place.main
    if not resume and place.main:  # refused before any work, cleared once the model is read
        prepare_out(out, overwrite, clear=False, base=config.run.warmstart if config.lora.rank else None)
    seed = dist.rank_seed(config.run.seed, place.rank)  # this rank's generators (rank 0: the run seed)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    start_dir = latest_checkpoint(out) if resume else None
    if from_scratch and not resume:  # the run's base is the warm start it trains first
        def warm_start() -> None:  # on rank 0 for all; the other ranks wait for it and load what it wrote
            train_warmstart(out / "warmstart", seed=config.run.seed, progress=progress, kind=warmstart_kind(config.run.algo))

        dist.on_main(warm_start)
        config = replace(config, run=replace(config.run, warmstart=str((out / "warmstart").resolve())))
    model, tokenizer = load_model(config, start_dir, device)
    dist.barrier()  # every rank has read the warm start before rank 0 may clear it (--model OUT/final --overwrite)
    if not resume and place.main:
        prepare_out(out, overwrite)  # the warm start may be one of the files it clears
    need = memory_estimate(config, model.config)
    if place.main:
        print(f"memory on {device}{f' (each of {place.world} ranks)' if place.world > 1 else ''}, estimated: "
              + ", ".join(f"{k} {v:.2f}" for k, v in need.items()) + f" GiB; about {sum(need.values()):.1f} GiB in all")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.ppo.lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    ppo = config.run.algo == "ppo"
    replay = PrioritizedReplay(config.ppo.replay_capacity, alpha=config.ppo.alpha, seed=seed) if ppo else None
    memory = PrioritizedReplay(config.imitation.memory, alpha=0.0, seed=seed + 1) if ppo else None
    policy = LMPolicy(model, tokenizer, temperature=config.search.temperature,
                      max_thought_tokens=config.search.max_thought_tokens, max_rows=config.search.max_rows, seed=seed)
    metrics, first = [], 0
    if resume:
        state = load_trainer_state(start_dir, place)
        try:  # a state of another run or version: named here, not a traceback from the optimizer or a generator
            opt.load_state_dict(state["optimizer"])
            policy.generator.set_state(state["policy_rng"])
            rng.setstate(state["python_rng"])
            torch.set_rng_state(state["torch_rng"])
        except (ValueError, RuntimeError, TypeError) as e:
            raise ValueError(f"{start_dir}: its trainer state does not fit this run ({type(e).__name__}: {e})") from e
        if state.get("cuda_rng") is not None and device.type == "cuda":  # what LoRA's dropout draws from there
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        metrics, first = state["metrics"], state["iteration"] + 1
        t0 -= metrics[-1]["seconds"]  # the clock goes on from the checkpoint's: seconds and wall_s count the whole run
        if ppo:
            replay = PrioritizedReplay.load(start_dir / dist.rank_file("replay.pt", place.rank))
            memory = PrioritizedReplay.load(start_dir / dist.rank_file("imitation.pt", place.rank))
        if place.main:  # metrics.jsonl back to this checkpoint: lines a killed run wrote after it are dropped
            remove_leftovers(out)  # and the partial files of a save it was killed in (a model's can be gigabytes)
            rewrite_jsonl(out / "metrics.jsonl", [{"eval": "before", **metrics[0]["before"]}] + metrics[1:])

    # -- evaluation before
    evals = {}
    if not resume:
        evals["before"] = evaluate_all(model, tokenizer, test, config, "before", progress, seed)
        metrics.append({"before": {k: asdict(v) for k, v in evals["before"].items()}})
        if place.main:
            append_jsonl(out / "metrics.jsonl", {"eval": "before", **metrics[0]["before"]})
    else:
        evals["before"] = {k: EvalResult(**v) for k, v in metrics[0]["before"].items()}

    # -- the loop
    bar = tqdm(range(first, config.run.iterations), desc=f"self-play ({config.run.algo})", disable=not progress,
               initial=first, total=config.run.iterations, unit="iteration")
    k = config.search.problems_per_iteration
    for it in bar:
        problems = dist.from_main(rng.sample(train, draws_per_iteration(config)) if place.main else None)
        c = iteration_config(config, it)
        if ppo:
            m = ppo_iteration(model, tokenizer, opt, replay, policy, dist.shard(problems[:k], place), it, c)
            if config.imitation.problems:
                m.update(imitation_iteration(model, tokenizer, opt, policy, dist.shard(problems[k:], place),
                                             memory, rng, c))
        else:
            m = grpo_iteration(model, tokenizer, opt, problems, it, c, seed)
            m["think_quick"] = evaluate_sharded(budget_job(model, tokenizer, config, config.grpo.think_budget),
                                                quick).accuracy  # held out, greedy at t*
        m = dist.combine(m, summed=("chains", "restamped", "imitation_replayed"))
        m["lr"] = c.ppo.lr if ppo else c.grpo.grpo_lr
        if ppo and config.eval.every and (it + 1) % config.eval.every == 0:
            m["greedy_quick"] = evaluate_sharded(lambda ps: evaluate(model, tokenizer, ps, "greedy", seed=seed,
                                                                     max_thought_tokens=config.search.max_thought_tokens,
                                                                     max_rows=config.search.max_rows),
                                                 quick).accuracy
        m.update(iteration=it, seconds=round(time.perf_counter() - t0, 1))
        metrics.append(m)
        if place.main:
            append_jsonl(out / "metrics.jsonl", m)
        bar.set_postfix({k: f"{v:.3f}" for k, v in m.items() if k in ("solved", "imitation_solved", "reward", "greedy_quick",
                                                                     "think_quick")})
        state = {"optimizer": opt.state_dict(), "policy_rng": policy.generator.get_state(), "python_rng": rng.getstate(),
                 "torch_rng": torch.get_rng_state(), "metrics": metrics,
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        save_checkpoint(out, it, config, lambda d: save_model(model, tokenizer, d, config), state,
                        {"replay.pt": replay, "imitation.pt": memory} if ppo else {}, config.run.keep_checkpoints, place)

    # -- evaluation after, and the summary
    evals["after"] = evaluate_all(model, tokenizer, test, config, "after", progress, seed)
    before, after = evals["before"], evals["after"]
    best, tree = f"best_of_{config.eval.best_of_n}", f"mcts_{config.eval.simulations}"  # evaluate_all's rows
    summary = {}
    if ppo:
        summary.update(sft_greedy=before["greedy"].accuracy, final_greedy=after["greedy"].accuracy,
                       sft_best_of_n=before[best].accuracy, final_best_of_n=after[best].accuracy,
                       sft_mcts=before[tree].accuracy, final_mcts=after[tree].accuracy)
    summary.update(iterations=config.run.iterations, algo=config.run.algo, seed=config.run.seed,
                   wall_s=round(time.perf_counter() - t0, 1), checkpoint=str(out / "final"))
    if not ppo:  # Elastic Reasoning's table: accuracy and tokens against the thinking budget, before and after
        summary.update(budget_summary(before, after, config))
    if place.main:
        append_jsonl(out / "metrics.jsonl", {"eval": "after", **{k: asdict(v) for k, v in evals["after"].items()}})
        save_model(model, tokenizer, out / "final", config)
        if ppo:
            print("\n" + _table([(k, before[k], after[k]) for k in after if k in before]))
        else:
            report_budgets(before, after, config, out / "budgets.png")
        atomic_write(out / "summary.json", json.dumps(summary))
    dist.barrier()  # the run is whole on disk before any rank returns
    return summary


RUN_FLAGS = ("tiny", "model", "resume", "from_scratch", "overwrite", "threads", "no_progress")  # no setting of the run


def parser():
    """The command line: RUN_FLAGS, then one flag per setting (bench's dist section checks its --dist-flags on it)."""
    p, g = entry_parser("nanoo1.selfplay", __doc__, "what to run")
    g.add_argument("--tiny", action="store_true", help="the laptop-CPU recipe on the tiny task: the shipped warm start "
                   "data/tiny/warmstart and the tiny problems, with the settings below at their defaults")
    g.add_argument("--model", default=None, help="warm start: checkpoint directory or hub id (overrides --warmstart); "
                   "without --tiny the 2b preset's settings apply (recipe.PRESETS): bf16, LoRA rank 16, --device auto")
    g.add_argument("--resume", default=None, help="continue the run in this directory from its latest checkpoint, with "
                   "its saved settings (a flag that contradicts them is an error)")
    g.add_argument("--from-scratch", action="store_true", help="train the tiny warm start again (SFT on the tiny "
                   "task's problems, as `python -m nanoo1.warmstart` does) instead of loading one; no --model or --warmstart")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out directory that holds another run")
    add_process_flags(g)
    add_config_flags(p, SelfPlayConfig)
    return p


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in RUN_FLAGS}
    if args.resume and (args.overwrite or args.from_scratch):
        p.error("--resume goes on with the run's own checkpoints: it takes no --overwrite or --from-scratch")
    if args.resume and "out" in flags and Path(flags["out"]).resolve() != Path(args.resume).resolve():
        p.error(f"--out {flags['out']}: a resumed run goes on in its own directory, {args.resume}")
    if args.from_scratch and (args.model or "warmstart" in flags):  # it would train another and drop the one named
        p.error("--from-scratch trains the tiny warm start itself: it takes no --model or --warmstart")
    if args.model:
        flags["warmstart"] = args.model
    elif args.tiny and not args.resume:  # a resumed run keeps its own warm start (a --tiny run may have had another)
        flags.setdefault("warmstart", tiny_warmstart(flags.get("algo", "ppo")))
    # a run's settings name its files absolutely, so a resume from another directory reads the same ones
    flags.update({k: local_path(flags[k]) for k in ("data", "test_data", "warmstart") if k in flags})
    if not (args.tiny or args.model or args.resume):
        p.error("say what to run: --tiny (the tiny recipe), --model DIR_OR_HUB_ID with --data and --test-data, "
                "or --resume RUN_DIR")
    try:
        if args.resume:
            config = resume_settings(Path(args.resume), SelfPlayConfig, flags)
        else:
            config = apply_flags(PRESETS["tiny" if args.tiny else "2b"], flags)
            config = replace(config, run=replace(config.run, out=default_out(config)))
            load_problems(config)  # a data file too small for the run fails now, not after the first evaluation
        resolve_device(config.run.device)  # e.g. --device cuda without one: said now, as a usage error
        if not (args.resume or args.from_scratch):  # the warm start's tokenizer and format's tokens, before a run is
            # cleared or a weight read: google/gemma-2-2b has none of PPO's
            read_tokenizer(config.run.warmstart).require("think" if config.run.algo == "grpo" else "thought",
                                                         f"--algo {config.run.algo}")
        check_shares(config, int(os.environ.get("WORLD_SIZE", 1)))
    except (ValueError, OSError, KeyError) as e:
        p.error(str(e))
    process_setup(args.threads)
    try:
        summary = run(config, resume=args.resume, from_scratch=args.from_scratch, progress=not args.no_progress,
                      overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, NotADirectoryError) as e:  # a path in the way or missing, named
        p.error(str(e))
    if dist.place().main:
        print(json.dumps(summary))
    dist.finish()


if __name__ == "__main__":
    main()
