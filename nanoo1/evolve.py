"""rStar-Math's self-evolution: search with policy k and PPM k, train policy k+1 and PPM k+1 on what it found.

    python -m nanoo1.evolve --tiny --rounds 2     # the tiny task on a CPU (base model: see tiny_base)
    python -m nanoo1.evolve --model DIR --data train.jsonl --test-data test.jsonl --problems 500 --out runs/big
    python -m nanoo1.evolve --model DIR ... --device cuda --dtype bfloat16 --lora-rank 16   # a 2B model on one GPU

One round (Guan et al. 2025, sec. 3.4), on the same training problems every round:
  1. MCTS with policy k over the training problems: UCT (c = 2), the ground truth scores each answer +1 / -1,
     PPM k's score is a new step's value (round 0 has no PPM: terminal rewards alone guide the search).
  2. Coverage: the share of problems whose tree holds a correct answer (the paper's Table 2).
  3. Policy k+1: the base model (every round starts again from it) fine-tuned on the top-2 correct traces
     per problem by mean Q (`rstar.best_traces`), the loss on the steps the model wrote (`rstar.encode_trace`).
  4. PPM k+1: policy k+1's decoder with a scalar head, trained on the sibling pairs of every tree
     (`ppm.preference_pairs`, `ppm.ppm_pair_loss`).
Each row of the printed table (and of OUT/metrics.jsonl) is a round's search and the held-out accuracy of
policy k, greedy and (--beam) beam search scored by PPM k; OUT/policy-k and OUT/ppm-k are the trained pairs.
With --lora-rank every model of the run is the one frozen base (in --dtype) with its own float32 adapters, and
policy-k and ppm-k hold adapters in PEFT's layout (`python -m nanoo1.lora merge` makes a full checkpoint of one).
Under torchrun (`torchrun --nproc_per_node N -m nanoo1.evolve ...`) each rank searches its share of the
problems and of the held-out set; the trees are gathered and every rank trains the next pair on all of them
with the same seed (the same weights on a CPU; GPU kernels may differ in their last bits); rank 0 writes.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from safetensors.torch import save

from nanoo1 import dist
from nanoo1.checkpoint import load_pretrained
from nanoo1.device import process_setup, resolve_device
from nanoo1.config import add_config_flags, add_process_flags, apply_flags, check_settings, entry_parser
from nanoo1.files import atomic_write
from nanoo1.lora import lora_copy, save_trained, unfreeze
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.model import bf16_autocast
from nanoo1.recipe import LoRASettings
from nanoo1.ppm import ProcessPreferenceModel, ppm_pair_loss, ppm_scores, preference_pairs
from nanoo1.rstar import RStarConfig, RStarPolicy, best_traces, encode_trace, ppm_input
from nanoo1.search import SearchConfig, grade, search
from nanoo1.sft import SFTConfig, lr_at, make_batches, set_lr, train_sft
from nanoo1.tasks import TINY_DIR, Problem, load_jsonl
from nanoo1.thoughts import Tree
from nanoo1.tokenizer import batch_ids
from nanoo1.warmstart import WARMSTART_DIR, WARMSTART_SFT, train_warmstart

PPM_HEAD = "ppm_head.safetensors"  # the PPM's scalar head, next to its decoder's model.safetensors


@dataclass
class EvolveConfig:
    # search (every round the same)
    simulations: int = 16  # MCTS simulations per problem (rStar-Math: 8-16 rollouts, 64-128 for hard problems)
    num_candidates: int = 2  # candidate steps per expansion (rStar-Math: 5-16; few keep the tiny trees deep)
    temperature: float = 1.0  # sampling temperature of candidate steps
    max_step_tokens: int = 64  # a step longer than this is invalid (the tiny task's longest is 53 tokens)
    patient: int = 2  # a problem's search stops after this many correct answers (the two traces kept)
    # policy k+1
    traces_per_problem: int = 2  # correct traces kept per problem, best mean Q first
    sft_steps: int = 100  # optimizer steps of the fine-tune from the base model
    sft_batch_size: int = 16  # traces per step
    sft_lr: float = 1e-3  # peak learning rate (linear warm-up, cosine decay)
    # PPM k+1
    ppm_steps: int = 100  # optimizer steps on the preference pairs
    ppm_pairs_per_step: int = 16  # pairs per step (twice as many sequences)
    ppm_lr: float = 3e-4  # peak learning rate
    bf16: bool = True  # with float32 weights: autocast matrix multiplies to bfloat16 while training
    # the run
    rounds: int = 2  # self-evolution rounds
    problems: int = 200  # training problems searched every round, drawn once with the seed
    min_steps: int = 0  # draw only problems of at least this many steps (a harder task)
    eval_problems: int = 200  # held-out problems for greedy accuracy (the first ones of the test file)
    beam: int = 0  # > 0: also held-out accuracy of beam search of this width scored by the PPM
    seed: int = 0  # problem draw, search sampling and training order (round k uses seed + k)
    out: str = "runs/rstar"  # metrics.jsonl, policy-k/, ppm-k/
    device: str = "cpu"  # where the models run: cpu, cuda, cuda:N, or auto (cuda when there is one; --model's default)
    dtype: str = "float32"  # the weights' dtype: float32 or bfloat16 (the base's, under LoRA; adapters stay float32)

    def __post_init__(self):
        check_settings(self, choices={"dtype": ("float32", "bfloat16")})

    @property
    def autocast(self) -> bool:
        """bf16 autocast of the matrix multiplies while training: asked for, and the weights are float32."""
        return self.bf16 and self.dtype == "float32"


def mcts_config(config: EvolveConfig) -> MCTSConfig:
    """rStar-Math's search: UCT with c = 2, rewards +1 / -1 backed up undiscounted, depth 16."""
    k = config.num_candidates
    return MCTSConfig(simulations=config.simulations, num_candidates=k, max_children=k, selection="uct", c=2.0,
                      discount=1.0, patient=config.patient, max_depth=RStarConfig.max_depth, success_value=1.0,
                      failure_value=-1.0, temperature=config.temperature)


def rstar_policy(model, tokenizer, config: EvolveConfig, ppm=None, seed: int = 0) -> RStarPolicy:
    rstar = RStarConfig(max_step_tokens=config.max_step_tokens, temperature=config.temperature)
    return RStarPolicy(model, tokenizer, rstar, ppm, seed=seed)


# -- what a round measures and keeps -------------------------------------------------------------------
def coverage(trees: list[Tree]) -> float:
    """Share of trees holding at least one correct answer (a "success" terminal): rStar-Math's Table 2."""
    if not trees:
        raise ValueError("coverage: no trees")
    return sum(any(node.terminal == "success" for node in tree.nodes) for tree in trees) / len(trees)


def sft_examples(tokenizer, trees: list[Tree], per_problem: int = 2) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of the top `per_problem` correct traces of every tree (`best_traces`), in tree order."""
    return [encode_trace(tokenizer, tree.question, [node.text for node in path[1:]])
            for tree in trees for path in best_traces(tree, per_problem)]


def ppm_pairs(tokenizer, trees: list[Tree]) -> list[tuple[list[int], list[int]]]:
    """(positive, negative) PPM inputs of every tree's preference pairs, in tree order."""
    return [(ppm_input(tokenizer, tree.path(pos)), ppm_input(tokenizer, tree.path(neg)))
            for tree in trees for pos, neg in preference_pairs(tree)]


def pair_accuracy(ppm: ProcessPreferenceModel, pairs, pad_id: int, batch_size: int = 32) -> float | None:
    """Share of pairs the PPM orders right, r(pos) > r(neg) (a tie is wrong); None without pairs."""
    if not pairs:
        return None
    r = ppm_scores(ppm, [p for p, _ in pairs] + [n for _, n in pairs], pad_id, batch_size)  # (2P,)
    return (r[: len(pairs)] > r[len(pairs):]).float().mean().item()


# -- training ------------------------------------------------------------------------------------------
def finetune_policy(base_model, examples, pad_id: int, config: EvolveConfig, seed: int = 0, progress: bool = False):
    """(a copy of base_model fine-tuned on the (ids, mask) examples, its losses); no examples: an untrained copy.
    Under LoRA the copy shares the frozen base and trains its own adapters (`lora.lora_copy`)."""
    model = lora_copy(base_model)
    unfreeze(model)
    losses = []
    if examples:
        sft = SFTConfig(steps=config.sft_steps, batch_size=min(config.sft_batch_size, len(examples)), lr=config.sft_lr,
                        warmup=max(1, config.sft_steps // 10), bf16=config.autocast, seed=seed)
        batches = make_batches(examples, lambda example, rng: example, sft.batch_size, random.Random(seed), pad_id)
        losses = train_sft(model, batches, sft, progress=progress)
    return model.requires_grad_(False).eval(), losses


def train_ppm(ppm: ProcessPreferenceModel, pairs, pad_id: int, config: EvolveConfig, seed: int = 0,
              progress: bool = False) -> list[float]:
    """Train the PPM in place on (positive ids, negative ids) pairs with `ppm_pair_loss`: AdamW, the SFT
    schedule, shuffled passes over the pairs; under LoRA the head and the backbone's adapters train. Returns the
    loss of every step; leaves the PPM frozen, in eval."""
    from tqdm.auto import tqdm

    if not pairs:
        return []
    params = unfreeze(ppm.backbone) + list(ppm.head.requires_grad_(True).parameters())
    ppm.train()
    opt = torch.optim.AdamW(params, lr=config.ppm_lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = SFTConfig(steps=config.ppm_steps, lr=config.ppm_lr, warmup=max(1, config.ppm_steps // 10))
    generator = torch.Generator().manual_seed(seed)
    device = ppm.head.weight.device
    order, losses = [], []
    P = min(config.ppm_pairs_per_step, len(pairs))
    for step in tqdm(range(config.ppm_steps), desc="ppm", disable=not progress, leave=False):
        if len(order) < P:
            order += torch.randperm(len(pairs), generator=generator).tolist()
        chosen, order = order[:P], order[P:]
        ids, mask = batch_ids([pairs[i][0] for i in chosen] + [pairs[i][1] for i in chosen], pad_id, device)  # (2P, T)
        set_lr(opt, lr_at(step, schedule))
        with bf16_autocast(config.autocast, device):
            r = ppm(ids, mask)  # (2P,)
        loss = ppm_pair_loss(r[:P].float(), r[P:].float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ppm.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    ppm.requires_grad_(False).eval()
    return losses


# -- one round -----------------------------------------------------------------------------------------
@dataclass
class RoundReport:
    coverage: float  # share of the training problems with a correct answer in their tree
    traces: int  # correct traces kept for the policy's fine-tune
    pairs: int  # preference pairs for the PPM
    ppm_accuracy_before: float | None  # the searching PPM on this round's pairs (unseen by it); None: no PPM or pairs
    ppm_accuracy_after: float | None  # the new PPM on the same pairs, after training on them
    sft_loss: list[float]  # first and last loss of the policy fine-tune ([] if nothing was kept)
    ppm_loss: list[float]  # first and last loss of the PPM training
    generated_tokens: int  # tokens the policy sampled in the search
    prompt_tokens: int  # prompt tokens it prefilled
    ppm_tokens: int  # tokens the PPM read
    search_seconds: float
    train_seconds: float


def self_evolution_round(base_model, policy_model, ppm, tokenizer, problems: list[Problem], config: EvolveConfig,
                         seed: int = 0, progress: bool = False):
    """Search the problems with (policy_model, ppm), then train the next pair: returns (policy k+1, PPM k+1,
    RoundReport). policy k+1 is base_model fine-tuned on the top correct traces; PPM k+1 is policy k+1's decoder
    with a zero-initialised scalar head, trained on the trees' preference pairs."""
    t0 = time.perf_counter()
    place = dist.place()  # under torchrun each rank searches its share; every rank then trains on all the trees
    policy = rstar_policy(policy_model, tokenizer, config, ppm, dist.rank_seed(seed, place.rank))
    mine = dist.shard(problems, place)
    results = mcts(policy, [p.question for p in mine], mcts_config(config), [p.answer for p in mine])
    trees = [tree for part in dist.gather([r.tree for r in results]) for tree in part]
    examples, pairs = sft_examples(tokenizer, trees, config.traces_per_problem), ppm_pairs(tokenizer, trees)
    before = pair_accuracy(ppm, pairs, tokenizer.pad_id) if ppm is not None else None
    t1 = time.perf_counter()
    new_policy, sft_losses = finetune_policy(base_model, examples, tokenizer.pad_id, config, seed, progress)
    new_ppm = ProcessPreferenceModel(lora_copy(new_policy))  # rStar-Math: the PPM starts from the fine-tuned policy
    ppm_losses = train_ppm(new_ppm, pairs, tokenizer.pad_id, config, seed, progress)
    after = pair_accuracy(new_ppm, pairs, tokenizer.pad_id)
    spent = [sum(getattr(r.spent, kind) for r in results) for kind in ("generated", "prompt", "value")]
    spent = [sum(column) for column in zip(*dist.gather(spent))]
    report = RoundReport(coverage(trees), len(examples), len(pairs), before, after, _ends(sft_losses), _ends(ppm_losses),
                         *spent, round(t1 - t0, 1), round(time.perf_counter() - t1, 1))
    return new_policy, new_ppm, report


def _ends(losses: list[float]) -> list[float]:
    return [round(losses[0], 4), round(losses[-1], 4)] if losses else []


def held_out_accuracy(policy_model, tokenizer, problems: list[Problem], config: EvolveConfig, ppm=None, beam: int = 0,
                      seed: int = 0) -> tuple[float, float]:
    """(accuracy, generated tokens per problem) on problems no search saw: greedy, or with beam > 0 beam search
    of that width with `beam` new steps per beam, the PPM scoring every path."""
    place = dist.place()  # under torchrun each rank searches its share; the figures are the whole set's
    policy = rstar_policy(policy_model, tokenizer, config, ppm, dist.rank_seed(seed, place.rank))
    mine = dist.shard(problems, place)
    method = SearchConfig(method="beam", n=beam, expand=beam, max_depth=RStarConfig.max_depth) if beam else \
        SearchConfig(method="greedy", max_depth=RStarConfig.max_depth)
    results = search(policy, [p.question for p in mine], method, scorer=policy.score if beam else None)
    right, tokens = map(sum, zip(*dist.gather((sum(grade(results, [p.answer for p in mine])),
                                               sum(r.spent.generated for r in results)))))
    return right / len(problems), tokens / len(problems)


# -- the PPM on disk -----------------------------------------------------------------------------------
def save_ppm(ppm: ProcessPreferenceModel, tokenizer, directory, base: str = "") -> Path:
    """The decoder (`lora.save_trained`: the Hugging Face layout, or under LoRA the adapters on `base`) and the
    head as ppm_head.safetensors, each file written under a temporary name and renamed."""
    directory = save_trained(ppm.backbone, tokenizer, directory, base)
    head = {k: v.detach().contiguous().cpu() for k, v in ppm.head.state_dict().items()}
    atomic_write(directory / PPM_HEAD, save(head, metadata={"format": "pt"}))
    return directory


# -- the run -------------------------------------------------------------------------------------------
COLUMNS = ["round", "coverage", "greedy", "beam+PPM", "traces", "pairs", "tokens", "seconds"]


def _line(cells) -> str:
    return "".join(f"{c:>{max(9, len(name) + 2)}}" for c, name in zip(cells, COLUMNS))


def _row_line(row: dict) -> str:
    pct = [("-" if row.get(key) is None else f"{100 * row[key]:.1f}%") for key in ("coverage", "greedy", "beam_ppm")]
    return _line([row["round"], *pct, row.get("traces", "-"), row.get("pairs", "-"), row.get("generated_tokens", "-"),
                  f"{row['seconds']:.0f}"])


def run(config: EvolveConfig, model, data=TINY_DIR / "train.jsonl", test_data=TINY_DIR / "test.jsonl",
        progress: bool = False, lora: LoRASettings | None = None) -> list[dict]:
    """config.rounds rounds from the base checkpoint `model` (with `lora.rank` > 0: frozen, with adapters);
    prints the table, returns its rows (metrics.jsonl).

    Row k: round k's search (coverage, traces, pairs, tokens: policy k and PPM k) and held-out accuracy of
    policy k (greedy) and of beam search scored by PPM k; the last row only evaluates the last pair trained."""
    from tqdm.auto import tqdm

    out = Path(config.out)
    device = dist.setup(resolve_device(config.device))
    main = dist.place().main  # under torchrun rank 0 alone prints and writes
    base, tokenizer = load_pretrained(model, dtype=config.dtype, device=device)
    if lora is not None and lora.rank:
        lora.apply(base, config.seed)
    pool = [p for p in load_jsonl(data) if len(p.steps) >= config.min_steps]
    if len(pool) < config.problems:
        raise ValueError(f"{data}: {len(pool)} problems with >= {config.min_steps} steps, {config.problems} wanted")
    problems = random.Random(config.seed).sample(pool, config.problems)
    test = load_jsonl(test_data)[: config.eval_problems]
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        print(_line(COLUMNS), flush=True)
    policy, ppm, rows = base, None, []
    bar = tqdm(range(config.rounds + 1), desc="rounds", disable=not (progress and main))
    for k in bar:
        t = time.perf_counter()
        bar.set_postfix_str("held-out evaluation")
        accuracy, tokens = held_out_accuracy(policy, tokenizer, test, config, seed=config.seed)
        row = {"round": k, "greedy": accuracy, "greedy_tokens": round(tokens, 1), "beam_ppm": None}
        if config.beam and ppm is not None:  # no PPM before the first round
            row["beam_ppm"] = held_out_accuracy(policy, tokenizer, test, config, ppm, config.beam, seed=config.seed)[0]
        row["eval_seconds"] = round(time.perf_counter() - t, 1)
        if k < config.rounds:
            bar.set_postfix_str(f"MCTS over {len(problems)} problems, then training")
            policy, ppm, report = self_evolution_round(base, policy, ppm, tokenizer, problems, config, config.seed + k,
                                                       progress)
            row.update(asdict(report))
            if main:
                save_trained(policy, tokenizer, out / f"policy-{k + 1}", str(model))
                save_ppm(ppm, tokenizer, out / f"ppm-{k + 1}", str(model))
        row["seconds"] = round(time.perf_counter() - t, 1)
        rows.append(row)
        if main:
            with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            (bar.write if progress else print)(_row_line(row))
    dist.barrier()
    return rows


def tiny_base(out: Path, steps: int = WARMSTART_SFT.steps, seed: int = 0, progress: bool = False) -> Path:
    """The base model of --tiny: data/tiny/warmstart if it exists, else warmstart.py's recipe (all formats, rStar's
    code format among them) run for `steps` steps into `out`, once: a later run finds it there. The default steps
    and seed 0 are data/tiny/warmstart's own recipe."""
    for directory in (WARMSTART_DIR, out):
        if (directory / "model.safetensors").exists():
            return directory
    sft = replace(WARMSTART_SFT, steps=steps, warmup=min(WARMSTART_SFT.warmup, steps))
    train_warmstart(out, sft, seed, progress=progress)
    return out


def main(argv=None):
    p, g = entry_parser(__doc__, "run")
    g.add_argument("--tiny", action="store_true", help="the tiny task, from data/tiny/warmstart or, where that is "
                   "missing, from a warm start trained first into OUT/base")
    g.add_argument("--warmstart-steps", type=int, default=WARMSTART_SFT.steps, help="SFT steps of that warm start "
                   "(fewer than ~1000: the tiny model rarely writes a correct solution)")
    add_process_flags(g)  # --threads: with --tiny 1 by default, the fastest for it
    g = p.add_argument_group("model and data")
    g.add_argument("--model", default=None, help="the base model: checkpoint directory or hub id")
    g.add_argument("--data", default=str(TINY_DIR / "train.jsonl"), help="training problems, GSM8K-style jsonl")
    g.add_argument("--test-data", default=str(TINY_DIR / "test.jsonl"), help="held-out problems, GSM8K-style jsonl")
    add_config_flags(p, EvolveConfig)
    add_config_flags(p, LoRASettings)
    args = p.parse_args(argv)
    if not args.tiny and args.model is None:
        p.error("--model DIR is needed without --tiny")
    process_setup(args.threads or (1 if args.tiny else None))
    run_flags = ("tiny", "warmstart_steps", "threads", "no_progress", "model", "data", "test_data")
    given = {k: v for k, v in vars(args).items() if k not in run_flags}
    lora_flags = {k: given.pop(k) for k in list(given) if k.startswith("lora_")}
    if not args.tiny:  # a real checkpoint runs on the GPU when there is one; the tiny task stays on the CPU
        given.setdefault("device", "auto")
    try:
        config, lora = apply_flags(EvolveConfig(), given), apply_flags(LoRASettings(), lora_flags)
    except ValueError as e:
        p.error(str(e))
    t = time.perf_counter()
    try:
        dist.setup(resolve_device(config.device))
    except ValueError as e:
        p.error(str(e))
    say = print if dist.place().main else (lambda *a: None)
    model = args.model or dist.from_main(tiny_base(Path(config.out) / "base", args.warmstart_steps, config.seed,
                                                   not args.no_progress) if dist.place().main else None)
    say(f"base model: {model}")
    run(config, model, args.data, args.test_data, progress=not args.no_progress, lora=lora)
    say(f"wrote {config.out}/metrics.jsonl, policy-k/ and ppm-k/ in {time.perf_counter() - t:.0f} s")
    dist.finish()


if __name__ == "__main__":
    main()
