"""rStar-Math's self-evolution: search with policy k and PPM k, train policy k+1 and PPM k+1 on what it found.

    python -m nanoo1.evolve --tiny                # the tiny task on a CPU, both cores (base model: see tiny_base)
    python -m nanoo1.evolve --tiny --verifiers 16 --out runs/rstar-16   # then best-of-N: vote, PRM, ORM (verifiers.py)
    python -m nanoo1.evolve --model DIR --data train.jsonl --test-data test.jsonl --problems 500 --out runs/big
    python -m nanoo1.evolve --model DIR ... --device cuda --dtype bfloat16 --lora-rank 16 --max-rows 32   # 2B, one GPU

One round (Guan et al. 2025, sec. 3.4):
  1. MCTS with policy k over this round's training problems (new ones every round, as the paper's rounds reach
     problems earlier rounds left unsolved; from round 1 on only those of 3 or more steps, see `draw_rounds`):
     UCT (c = 2), the ground truth scores each answer +1 / -1; a problem left unsolved is searched once more in
     a fresh, larger tree (`retry_simulations`, the paper's round 4). Like the paper, the first rounds are
     terminal-guided (rStar-Math's rounds 1 and 2, whose PPM-r1 is not yet reliable); from round `guided_from`
     on (default 2, the paper's round 3) PPM k's score is also a new step's value (PPM-augmented MCTS).
  2. Coverage: the share of those problems whose tree holds a correct answer (the paper's Table 2).
  3. Policy k+1: the base model fine-tuned on the top-2 distinct correct traces per problem by mean Q
     (`rounds.best_traces`) of every round so far, the loss on the steps the model wrote (`rstar.encode_trace`),
     for `sft_epochs` passes. Like the paper, every round starts again from the base: the data grows and
     the fine-tune never compounds on its own drift.
  4. PPM k+1: policy k+1's decoder with a scalar head, trained with `ppm.ppm_pair_loss` on the pairs of every
     tree so far: sibling steps (`ppm.preference_pairs`) and at the last step whole trajectories (`rounds.final_pairs`).
The README gives the measurements behind these choices.

Each row of the printed table (and of OUT/metrics.jsonl) is round k: policy k and PPM k measured on held-out problems
(rounds.py), then round k's search; OUT/policy-k and OUT/ppm-k are the trained pairs, OUT/rounds.png the table drawn
(with matplotlib). With --lora-rank every model is the one frozen base (in --dtype) with its own float32 adapters,
and policy-k and ppm-k hold adapters in PEFT's layout (`python -m nanoo1.adapters merge` makes a full checkpoint of
one). Under torchrun (`torchrun --nproc_per_node N -m nanoo1.evolve ...`; --tiny starts its own, `--procs`) each rank
searches its share of the problems and of the held-out set; the trees are gathered, and every rank takes its share of
each training batch, the gradients summed over ranks, so every rank holds the same next pair; rank 0 writes.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from nanoo1 import dist
from nanoo1.adapters import save_trained
from nanoo1.checkpoint import load_pretrained
from nanoo1.config import add_config_flags, add_process_flags, apply_flags, check_settings, entry_parser, positive_int
from nanoo1.device import check_device, process_setup, resolve_device
from nanoo1.lora import lora_copy, unfreeze
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.ppm import ProcessPreferenceModel, fit, pair_batch_loss, save_scorer
from nanoo1.recipe import BF16_FULL_FINETUNE, LoRASettings
from nanoo1.rounds import (COLUMNS, coverage, draw_rounds, line, measure, plot_rounds, ppm_pairs, row_line, rstar_policy,
                           sft_examples, slip_pairs, stepless_notes)
from nanoo1.rstar import RStarConfig
from nanoo1.runs import append_jsonl, local_path, prepare_out
from nanoo1.sandbox import check_platform
from nanoo1.sft import SFTConfig, make_batches, passes, train_sft
from nanoo1.tasks import TINY_DIR, Problem, load_jsonl
from nanoo1.verifiers import compare_verifiers, outcome_examples
from nanoo1.warmstart import CODE_SFT, tiny_base


OUT_FILES = ("metrics.jsonl", "rounds.png", "policy-*", "ppm-*", "verifiers.json", "orm")  # what a run writes in --out


@dataclass
class EvolveConfig:
    # search (every round the same)
    simulations: int = 16  # MCTS simulations per problem (rStar-Math: 8-16 rollouts, 64-128 for hard problems)
    num_candidates: int = 2  # candidate steps per expansion (rStar-Math: 5-16; few keep the tiny trees deep)
    temperature: float = 1.0  # sampling temperature of candidate steps
    max_step_tokens: int = 64  # a step longer than this is invalid (the tiny task's longest is 53 tokens)
    max_rows: int = 0  # at most this many candidate steps in one generate call (0: no limit): bounds the KV cache
    #                    of a large model searching many problems in lockstep (e.g. 32 for gemma-2-2b on 16 GB)
    patient: int = 2  # a problem's search stops after this many distinct correct answers (the two traces kept)
    retry_simulations: int = 32  # each problem left unsolved is searched again in a fresh tree of this many; 0: never
    guided_from: int = 2  # the first round whose search PPM k guides, valuing new steps (rStar-Math: round 3 of 4;
    #                       earlier rounds are terminal-guided); --tiny's 2 rounds never are
    # policy k+1
    traces_per_problem: int = 2  # correct traces kept per problem, best mean Q first
    sft_epochs: float = 4.0  # passes over the traces of every round so far, fine-tuning the base model
    sft_batch_size: int = 16  # traces per step
    sft_lr: float = 1e-4  # peak learning rate (linear warm-up, cosine decay)
    # PPM k+1
    ppm_epochs: float = 3.0  # passes over the preference pairs of every round so far (and the ORM's over its solutions)
    ppm_pairs_per_step: int = 16  # pairs per step, on average: a step takes whole trees' pairs (train_ppm)
    ppm_lr: float = 3e-4  # peak learning rate
    bf16: bool = True  # with float32 weights: autocast matrix multiplies to bfloat16 while training
    # the run
    rounds: int = 2  # self-evolution rounds
    problems: int = 350  # training problems searched per round, new ones every round (one draw with the seed)
    min_steps: int = 0  # round 0 draws problems of at least this many steps (problems without worked steps, as
    #                     GSM8K's, are drawn whatever the bounds say)
    later_min_steps: int = 3  # later rounds draw problems of at least this many steps: the policy already solves most
    #                           shorter ones, whose traces would tilt its fine-tune toward short solutions
    eval_problems: int = 200  # held-out problems for greedy and PPM-guided accuracy (the first of the test file)
    pair_problems: int = 150  # the next held-out problems, whose steps and slips every PPM is scored on (slip_pairs;
    #                           none from problems without worked steps, GSM8K's)
    beam: int = 2  # beam width of the PPM-guided search (each beam expanded into as many steps); 0: none
    beam_temperature: float = 0.5  # sampling temperature of the beam's candidate steps
    verifiers: int = 0  # > 0: after the last round, best-of-N by vote, PRM and ORM for N = 4, 8, ... up to this
    verifier_problems: int = 100  # the held-out problems of that table (the first ones)
    seed: int = 0  # problem draw, search sampling and training order (round k uses seed + k)
    out: str = "runs/rstar"  # metrics.jsonl, rounds.png, policy-k/, ppm-k/ (verifiers.json, orm/)
    device: str = "cpu"  # where the models run: cpu, cuda, cuda:N, or auto (cuda when there is one; --model's default)
    dtype: str = "float32"  # the weights' dtype: float32 or bfloat16 (the base's, under LoRA; adapters stay float32)

    def __post_init__(self):
        check_settings(self, positive=("simulations", "num_candidates", "temperature", "max_step_tokens", "patient",
                                       "traces_per_problem", "sft_epochs", "sft_batch_size", "sft_lr", "ppm_epochs",
                                       "ppm_pairs_per_step", "ppm_lr", "problems", "eval_problems", "beam_temperature",
                                       "verifier_problems"),
                       non_negative=("max_rows", "retry_simulations", "guided_from", "rounds", "min_steps",
                                     "later_min_steps", "pair_problems", "beam", "verifiers"),
                       choices={"dtype": ("float32", "bfloat16")}, seeds=("seed",))
        check_device(self.device)

    @property
    def autocast(self) -> bool:
        """bf16 autocast of the matrix multiplies while training: asked for, and the weights are float32."""
        return self.bf16 and self.dtype == "float32"


def mcts_config(config: EvolveConfig, simulations: int | None = None) -> MCTSConfig:
    """rStar-Math's search: UCT with c = 2, rewards +1 / -1 backed up undiscounted, depth 16."""
    k = config.num_candidates
    return MCTSConfig(simulations=simulations or config.simulations, num_candidates=k, max_children=k, selection="uct",
                      c=2.0, discount=1.0, patient=config.patient, max_depth=RStarConfig.max_depth, success_value=1.0,
                      failure_value=-1.0, temperature=config.temperature)


def search_trees(policy_model, ppm, tokenizer, problems: list[Problem], config: EvolveConfig, seed: int = 0):
    """MCTS with the ground truths over the problems: (their trees, [generated, prompt, PPM] tokens spent). A
    problem left without a correct answer is searched again in a fresh tree of config.retry_simulations, which
    takes its place (rStar-Math's round 4; a tree of wrong answers alone gives no trace and no pair)."""
    policy = rstar_policy(policy_model, tokenizer, config, ppm, dist.rank_seed(seed, dist.place().rank))
    trees, spent = _search(policy, problems, mcts_config(config))
    unsolved = [i for i, tree in enumerate(trees) if not tree.solved()]
    if config.retry_simulations and unsolved:
        again, more = _search(policy, [problems[i] for i in unsolved], mcts_config(config, config.retry_simulations))
        for i, tree in zip(unsolved, again):
            trees[i] = tree
        spent = [a + b for a, b in zip(spent, more)]
    return trees, spent


def _search(policy, problems: list[Problem], config: MCTSConfig):
    """One MCTS pass, each rank over every world-th problem: every tree, in order, and the tokens of every rank."""
    mine = dist.shard(problems, dist.place())
    results = mcts(policy, [p.question for p in mine], config, [p.answer for p in mine])
    parts = dist.gather([r.tree for r in results])
    trees = [parts[i % len(parts)][i // len(parts)] for i in range(len(problems))]  # shard i of world: i, i + world, ...
    spent = [sum(getattr(r.spent, kind) for r in results) for kind in ("generated", "prompt", "value")]
    return trees, [sum(column) for column in zip(*dist.gather(spent))]


# -- training ------------------------------------------------------------------------------------------
def finetune_policy(base_model, examples, pad_id: int, config: EvolveConfig, seed: int = 0, progress: bool = False):
    """(a copy of base_model fine-tuned on the (ids, mask) examples for config.sft_epochs passes, its losses); no
    examples: an untrained copy. Under LoRA the copy shares the frozen base and trains its own adapters."""
    model = lora_copy(base_model)
    unfreeze(model)
    losses = []
    if examples:
        steps = passes(config.sft_epochs, len(examples), config.sft_batch_size)
        sft = SFTConfig(steps=steps, batch_size=min(config.sft_batch_size, len(examples)), lr=config.sft_lr,
                        warmup=max(1, steps // 10), bf16=config.autocast)
        batches = make_batches(examples, lambda example, rng: example, sft.batch_size, random.Random(seed), pad_id)
        place = dist.place()  # under torchrun each rank takes every world-th row of a batch (sft_step sums them)
        if sft.batch_size >= place.world > 1:
            batches = ([x[place.rank::place.world] for x in batch] for batch in batches)
        losses = train_sft(model, batches, sft, progress=progress)
    return model.requires_grad_(False).eval(), losses


def train_ppm(ppm: ProcessPreferenceModel, trees: list[list], pad_id: int, config: EvolveConfig, seed: int = 0,
              progress: bool = False) -> list[float]:
    """Train the PPM in place with `ppm_pair_loss` (`ppm.fit`), config.ppm_epochs passes over the trees' pairs
    (`rounds.ppm_pairs`: (positive ids, negative ids) by tree). A step takes whole trees, as many as hold
    config.ppm_pairs_per_step pairs on average, and reads each path once (`ppm.pair_batch_loss`)."""
    per_step = max(1, round(config.ppm_pairs_per_step * len(trees) / max(1, sum(map(len, trees)))))
    return fit(ppm, trees, pair_batch_loss, pad_id, passes(config.ppm_epochs, len(trees), per_step), per_step,
               config.ppm_lr, config.autocast, seed, "ppm", progress, size=len)


# -- one round -----------------------------------------------------------------------------------------
@dataclass
class RoundReport:
    coverage: float  # share of the round's training problems with a correct answer in their tree
    traces: int  # correct traces the round found (kept for every later policy's fine-tune)
    pairs: int  # preference pairs the round found (kept for every later PPM)
    sft_loss: list[float]  # first and last loss of the policy fine-tune ([] if nothing was kept)
    ppm_loss: list[float]  # first and last loss of the PPM training
    generated_tokens: int  # tokens the policy sampled in the search
    prompt_tokens: int  # prompt tokens it prefilled
    ppm_tokens: int  # tokens the PPM read
    search_seconds: float
    train_seconds: float


@dataclass
class Pool:
    """What the rounds so far found (token ids): the policy's SFT examples, the PPM's pairs by tree, the ORM's solutions."""
    examples: list = field(default_factory=list)
    pairs: list = field(default_factory=list)
    outcomes: list = field(default_factory=list)


def self_evolution_round(base_model, policy_model, ppm, tokenizer, problems: list[Problem], config: EvolveConfig,
                         seed: int = 0, progress: bool = False, pool: Pool | None = None):
    """Search the problems with (policy_model, ppm), add what it found to `pool`, train the next pair on the
    pool: returns (policy k+1, PPM k+1, RoundReport, trees). Policy k+1 is base_model fine-tuned on the pool's
    traces; PPM k+1 is policy k+1's decoder with a zero-initialised scalar head, trained on its pairs."""
    t0 = time.perf_counter()
    pool = Pool() if pool is None else pool
    trees, spent = search_trees(policy_model, ppm, tokenizer, problems, config, seed)
    examples, pairs = sft_examples(tokenizer, trees, config.traces_per_problem), ppm_pairs(tokenizer, trees)
    pool.examples += examples
    pool.pairs += pairs
    if config.verifiers:  # the ORM's training set, for the verifier table alone
        pool.outcomes += outcome_examples(tokenizer, trees)
    t1 = time.perf_counter()
    new_policy, sft_losses = finetune_policy(base_model, pool.examples, tokenizer.pad_id, config, seed, progress)
    new_ppm = ProcessPreferenceModel(lora_copy(new_policy))  # rStar-Math: the PPM starts from the fine-tuned policy
    ppm_losses = train_ppm(new_ppm, pool.pairs, tokenizer.pad_id, config, seed, progress)
    report = RoundReport(coverage(trees), len(examples), sum(map(len, pairs)), _ends(sft_losses), _ends(ppm_losses),
                         *spent, round(t1 - t0, 1), round(time.perf_counter() - t1, 1))
    return new_policy, new_ppm, report, trees


def _ends(losses: list[float]) -> list[float]:
    return [round(losses[0], 4), round(losses[-1], 4)] if losses else []


# -- the run -------------------------------------------------------------------------------------------
def run(config: EvolveConfig, model, data=TINY_DIR / "train.jsonl", test_data=TINY_DIR / "test.jsonl",
        progress: bool = False, lora: LoRASettings | None = None, overwrite: bool = False) -> list[dict]:
    """config.rounds rounds from the base checkpoint `model` (with `lora.rank` > 0: frozen, with adapters);
    prints the table, returns its rows (metrics.jsonl). An out directory that holds another run's files is
    refused, or with `overwrite` cleared once the inputs are read (`runs.prepare_out`: a base may lie in it).

    Row k: held-out accuracy of policy k, greedy and by beam search scored by PPM k, PPM k's accuracy on the
    held-out pairs, then round k's search (coverage, traces, pairs, tokens); the last row only evaluates the
    last pair trained. With config.verifiers, the verifier table of the last pair follows (verifiers.json)."""
    from tqdm.auto import tqdm

    out = Path(config.out)
    device = dist.setup(resolve_device(config.device))
    main = dist.place().main  # under torchrun rank 0 alone prints and writes
    torch.manual_seed(dist.rank_seed(config.seed, dist.place().rank))  # what draws from it: LoRA's dropout
    # a base without a tokenizer is refused before the out directory is cleared (main: a usage error)
    base, tokenizer = load_pretrained(model, dtype=config.dtype, device=device, need_tokenizer=True)
    if lora is not None and lora.rank:
        lora.apply(base, config.seed)
    train, test = load_jsonl(data), load_jsonl(test_data)
    drawn = draw_rounds(train, config, str(data))
    dist.barrier()  # every rank has read the base before rank 0 may clear it (--model OUT/policy-2 --overwrite)
    prepare_out(out, overwrite, OUT_FILES, resumable=False, clear=main, base=str(model) if lora and lora.rank else None)
    held_out = test[: config.eval_problems]
    pair_problems = test[config.eval_problems:][: config.pair_problems]
    held_out_pairs = slip_pairs(tokenizer, pair_problems, config.seed)
    if main:
        print(*stepless_notes(config, train, pair_problems, data, test_data), line(COLUMNS), sep="\n", flush=True)
    policy, ppm, found, rows = base, None, Pool(), []
    bar = tqdm(range(config.rounds + 1), desc="rounds", disable=not (progress and main))
    for k in bar:
        t = time.perf_counter()
        bar.set_postfix_str("held-out evaluation")
        row = {"round": k, **measure(policy, ppm, tokenizer, held_out, held_out_pairs, config)}
        if k == 0:
            row["held_out_pairs"] = {kind: len(pairs) for kind, pairs in held_out_pairs.items()}
        row["eval_seconds"] = round(time.perf_counter() - t, 1)
        if k < config.rounds:
            bar.set_postfix_str(f"MCTS over {config.problems} problems, then training")
            guide = ppm if k >= config.guided_from else None  # terminal-guided before round guided_from
            policy, ppm, report, _ = self_evolution_round(base, policy, guide, tokenizer, drawn[k], config,
                                                          config.seed + k, progress, found)
            row.update(asdict(report))
            if main:
                save_trained(policy, tokenizer, out / f"policy-{k + 1}", str(model))
                save_scorer(ppm, tokenizer, out / f"ppm-{k + 1}", str(model))
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        if main:
            append_jsonl(out / "metrics.jsonl", row)
            (bar.write if progress else print)(row_line(row))
    if main and plot_rounds(rows, out / "rounds.png"):
        print(f"wrote {out / 'rounds.png'}")
    if config.verifiers and config.rounds:
        sampler = rstar_policy(policy, tokenizer, config, seed=dist.rank_seed(config.seed, dist.place().rank))
        compare_verifiers(sampler, ppm, found.outcomes, held_out[: config.verifier_problems], config, str(model), progress)
    dist.barrier()
    return rows


def main(argv=None):
    p, g = entry_parser("nanoo1.evolve", __doc__, "run")
    g.add_argument("--tiny", action="store_true", help="the tiny task, from data/tiny/warmstart-code (rStar-Math's "
                   "warm start: the code format alone) or, where that is missing, from one trained first into OUT/base")
    g.add_argument("--warmstart-steps", type=positive_int, default=CODE_SFT.steps, help="SFT steps of that warm start")
    add_process_flags(g, "1 with --tiny, the fastest for it; else torch's choice")
    g.add_argument("--procs", type=positive_int, default=None, help="processes on this machine, one per core (per GPU "
                   "on CUDA): with more than 1 the run starts itself under torchrun (default: 2 with --tiny on the CPU "
                   "of a machine of 2 or more cores, else 1; under torchrun its own count)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="the base model: checkpoint directory or hub id")
    g.add_argument("--data", help="training problems, GSM8K-style jsonl (--tiny: data/tiny/train.jsonl)")
    g.add_argument("--test-data", help="held-out problems, GSM8K-style jsonl (--tiny: data/tiny/test.jsonl)")
    g.add_argument("--overwrite", action="store_true", help="start over in an --out directory that holds another run")
    add_config_flags(p, EvolveConfig)
    add_config_flags(p, LoRASettings)
    args = p.parse_args(argv)
    if not args.tiny and None in (args.model, args.data, args.test_data):
        p.error("--model DIR, --data FILE and --test-data FILE are needed without --tiny")
    args.data, args.test_data = args.data or str(TINY_DIR / "train.jsonl"), args.test_data or str(TINY_DIR / "test.jsonl")
    run_flags = ("tiny", "warmstart_steps", "threads", "procs", "no_progress", "model", "data", "test_data", "overwrite")
    given = {k: v for k, v in vars(args).items() if k not in run_flags}
    lora_flags = {k: given.pop(k) for k in list(given) if k.startswith("lora_")}
    if not args.tiny:  # a real checkpoint runs on the GPU when there is one; the tiny task stays on the CPU
        given.setdefault("device", "auto")
    try:  # every setting and path is checked before any work starts
        check_platform()  # the rounds run the model's code steps in the sandbox
        config, lora = apply_flags(EvolveConfig(), given), apply_flags(LoRASettings(), lora_flags)
        if config.dtype == "bfloat16" and not lora.rank:
            raise ValueError(BF16_FULL_FINETUNE)
        device = resolve_device(config.device)  # e.g. --device cuda without one
        procs = args.procs or (min(2, os.cpu_count() or 1) if args.tiny and device.type == "cpu" else 1)  # GPU: 1
        if device.type == "cuda" and procs > torch.cuda.device_count():  # a rank per GPU
            raise ValueError(f"--procs {procs}: one process per GPU, and torch sees {torch.cuda.device_count()}")
        draw_rounds(load_jsonl(args.data), config, args.data)  # each error names the file (and line)
        if not load_jsonl(args.test_data):
            raise ValueError(f"{args.test_data}: no held-out problems")
        prepare_out(Path(config.out), args.overwrite, OUT_FILES, resumable=False, clear=False)
    except (ValueError, OSError) as e:  # OSError: a path missing, in the way, or a directory where a file belongs
        p.error(str(e))
    if procs > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start `procs` ranks of this command
        return dist.launch("nanoo1.evolve", procs, sys.argv[1:] if argv is None else [str(a) for a in argv])
    process_setup(args.threads or (1 if args.tiny else None))
    dist.end_with_launcher()
    t = time.perf_counter()
    try:
        dist.setup(resolve_device(config.device))
        model = local_path(str(args.model or dist.on_main(lambda: tiny_base(  # absolute: the adapters name their base
            Path(config.out) / "base", args.warmstart_steps, config.seed, not args.no_progress))))
        dist.say(f"base model: {model}")
        run(config, model, args.data, args.test_data, progress=not args.no_progress, lora=lora, overwrite=args.overwrite)
    except (FileExistsError, FileNotFoundError, NotADirectoryError) as e:  # a path in the way or missing, named
        p.error(str(e))
    dist.say(f"wrote {config.out}/metrics.jsonl, policy-k/ and ppm-k/ in {time.perf_counter() - t:.0f} s")
    dist.finish()


if __name__ == "__main__":
    main()
