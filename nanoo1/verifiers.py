"""Generator and verifier: best-of-N over one policy's solutions, picked by a vote, a PRM or an ORM.

    python -m nanoo1.evolve --tiny --verifiers 16     # after the last round, N = 4, 8, 16 on the held-out set

The o1 survey's comparison (Zeng et al. 2024, "Scaling of Search and Learning"; Lightman et al. 2023, "Let's
Verify Step by Step"): the policy samples N whole solutions per problem (temperature 1, one code step at a
time, each step run in the sandbox) and one of them is chosen

- by majority vote over their printed answers (self-consistency; no verifier),
- by the process reward model: the PPM's score of the solution's last step, which reads the whole path
  (rStar-Math scores a finished solution this way),
- by an outcome reward model: the same network trained on the same trees to tell a correct final answer
  from a wrong one (`ppm.orm_loss`), its score of the whole solution.

The first N of the same samples serve every N, so the columns differ only by how they choose; `pass@N` (some
sample is right) is the ceiling every chooser is under. A solution that printed no answer is never chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

from nanoo1 import dist
from nanoo1.answers import answer_matches, extract_answer
from nanoo1.files import atomic_write
from nanoo1.lora import lora_copy
from nanoo1.grow import majority_vote
from nanoo1.ppm import ProcessPreferenceModel, fit, outcome_batch_loss, ppm_scores, save_scorer
from nanoo1.rstar import OUTPUT, RStarConfig, RStarPolicy, encode_trace, ppm_input, step_failed
from nanoo1.search import SearchConfig, sample_chains
from nanoo1.sft import passes
from nanoo1.thoughts import Node, Tree

CHOOSERS = ("vote", "PRM", "ORM")
ROWS = 256  # chains sampled in one batch


def printed_answer(node: Node) -> str | None:
    """The answer of a chain that ends on a final step that ran and printed (`<output>` after its code); else None."""
    if node.meta != "<conclusion>" or step_failed(node.text) or OUTPUT not in node.text:
        return None
    return extract_answer(node.text)


def outcome_examples(tokenizer, trees: list[Tree]) -> list[tuple[list[int], bool]]:
    """(ids of the whole solution, its answer is correct) for every path of the trees that ends in a printed
    answer: the ORM's training set. The label is the search's own (a "success" terminal)."""
    return [(encode_trace(tokenizer, tree.question, [n.text for n in tree.path(node)[1:]], close=False)[0],
             node.terminal == "success")
            for tree in trees for node in tree.nodes if node.terminal and printed_answer(node) is not None]


def train_orm(orm: ProcessPreferenceModel, examples, pad_id: int, steps: int, per_step: int, lr: float,
              bf16: bool = False, seed: int = 0, progress: bool = False) -> list[float]:
    """Train the ORM in place on (ids, correct) examples with `ppm.orm_loss` (`ppm.fit`); every step's loss."""
    return fit(orm, examples, outcome_batch_loss, pad_id, steps, per_step, lr, bf16, seed, "orm", progress)


def choose(answers: list[str | None], scores: list[float] | None) -> int | None:
    """Index of the chosen solution: the highest score among those with an answer (the first of equals), or
    with scores None the majority vote; None when no solution has an answer."""
    if scores is None:
        return majority_vote(answers)
    valid = [i for i, a in enumerate(answers) if a is not None]
    return max(valid, key=lambda i: (scores[i], -i)) if valid else None


def verifier_table(policy, tokenizer, problems, ppm: ProcessPreferenceModel, orm: ProcessPreferenceModel,
                   ns: list[int], max_depth: int = 16) -> list[dict]:
    """Held-out accuracy of best-of-N for every N in ns (one row each: vote, PRM, ORM, pass@N), from
    max(ns) solutions per problem sampled by `policy` (an `rstar.RStarPolicy`). Under torchrun each rank
    samples its share of the problems; the rows are the whole set's."""
    mine = dist.shard(problems, dist.place())
    n_max, chunk = max(ns), max(1, ROWS // max(ns))  # a few problems at a time: their chains are one batch
    ends, scores = [], {"PRM": [], "ORM": []}
    for at in range(0, len(mine), chunk):
        questions = [p.question for p in mine[at: at + chunk]]
        trees, chain_ends, _ = sample_chains(policy, questions, n_max, SearchConfig(max_depth=max_depth), temperature=None,
                                             rate=False)
        chain_ends = [sorted(e, key=lambda node: tree.path(node)[1].id) for tree, e in zip(trees, chain_ends)]  # by sample
        seqs = [ppm_input(tokenizer, tree.path(e)) for tree, es in zip(trees, chain_ends) for e in es]
        ends += chain_ends
        scores["PRM"] += ppm_scores(ppm, seqs, tokenizer.pad_id).tolist()
        scores["ORM"] += ppm_scores(orm, seqs, tokenizer.pad_id).tolist()
    right = {(n, c): 0 for n in ns for c in (*CHOOSERS, "pass@N")}
    at = 0
    for problem, chain_ends in zip(mine, ends):
        answers = [printed_answer(e) for e in chain_ends]
        correct = [answer_matches(a, problem.answer) for a in answers]
        for n in ns:
            for c in CHOOSERS:
                pick = choose(answers[:n], None if c == "vote" else scores[c][at: at + n])
                right[n, c] += pick is not None and correct[pick]
            right[n, "pass@N"] += any(correct[:n])
        at += len(chain_ends)
    totals = [sum(column) for column in zip(*dist.gather(list(right.values())))]
    right = dict(zip(right, totals))
    return [{"n": n, **{c: right[n, c] / len(problems) for c in (*CHOOSERS, "pass@N")}} for n in ns]


def compare_verifiers(sampler: RStarPolicy, ppm, examples, problems, config, model_name: str = "",
                      progress: bool = False) -> list[dict]:
    """The verifier table of evolve's last pair (`sampler`: the last policy at the search's temperature;
    `config`: the run's EvolveConfig): an ORM from that policy's decoder, trained on the `outcome_examples` of
    every round's trees (the trees the PPM's pairs came from) for as many passes as the PPM, then best-of-N for
    N = 4, 8, ... up to config.verifiers; printed and written to OUT/verifiers.json (the ORM to OUT/orm)."""
    tokenizer = sampler.tokenizer
    orm = ProcessPreferenceModel(lora_copy(sampler.model))
    train_orm(orm, examples, tokenizer.pad_id, passes(config.ppm_epochs, len(examples), 2 * config.ppm_pairs_per_step),
              2 * config.ppm_pairs_per_step, config.ppm_lr, config.autocast, config.seed, progress)
    ns = [n for n in (4 * 2 ** i for i in range(40)) if n <= config.verifiers] or [config.verifiers]  # 4, 8, 16, ...
    rows = verifier_table(sampler, tokenizer, problems, ppm, orm, ns, RStarConfig.max_depth)
    if dist.place().main:
        out = Path(config.out)
        save_scorer(orm, tokenizer, out / "orm", model_name)
        atomic_write(out / "verifiers.json", json.dumps({"orm_examples": len(examples), "rows": rows}, indent=1))
        print(f"best-of-N on {len(problems)} held-out problems (ORM: {len(examples)} solutions)")
        print("".join(f"{c:>9}" for c in ("N", *CHOOSERS, "pass@N")))
        for row in rows:
            print(f"{row['n']:>9}" + "".join(f"{100 * row[c]:>8.1f}%" for c in (*CHOOSERS, "pass@N")))
    return rows
