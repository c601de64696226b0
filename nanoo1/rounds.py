"""What `evolve` keeps of each round's trees (coverage, the policy's traces, the PPM's pairs), what it measures
of each round's policy and PPM on held-out problems, the round table, and which training problems each round
searches (`draw_rounds`).

Row k of the table is round k: policy k's held-out accuracy, greedy and by beam search scored by PPM k
(`ppm_search`), PPM k's accuracy on held-out sibling steps (`slip_pairs`), then round k's search (coverage,
traces, pairs, tokens) and its seconds; `plot_rounds` draws it (with matplotlib).
"""

from __future__ import annotations

import random
from pathlib import Path

from nanoo1 import dist
from nanoo1.ppm import pair_accuracy, preference_pairs
from nanoo1.rstar import (END_OUTPUT, OUTPUT, RStarConfig, RStarPolicy, encode_trace, format_step, parse_step,
                          ppm_input, prints, step_failed, step_ran)
from nanoo1.search import SearchConfig, grade, search
from nanoo1.tasks import Problem
from nanoo1.thoughts import Node, Tree

COLUMNS = ["round", "coverage", "greedy", "ppm_search", "pair_acc", "traces", "pairs", "tokens", "seconds"]


# -- what a round keeps of its trees --------------------------------------------------------------------
def coverage(trees: list[Tree]) -> float:
    """Share of trees holding at least one correct answer (a "success" terminal): rStar-Math's Table 2."""
    if not trees:
        raise ValueError("coverage: no trees")
    return sum(tree.solved() for tree in trees) / len(trees)


def sft_examples(tokenizer, trees: list[Tree], per_problem: int = 2) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of the top `per_problem` correct traces of every tree (`best_traces`), in tree order."""
    return [encode_trace(tokenizer, tree.question, [node.text for node in path[1:]])
            for tree in trees for path in best_traces(tree, per_problem)]


def ppm_pairs(tokenizer, trees: list[Tree]) -> list[list[tuple[list[int], list[int]]]]:
    """The (positive, negative) PPM inputs of each tree's pairs, a list per tree that has any, in tree order: its
    sibling pairs of steps that ran (`ppm.preference_pairs`), then its final-step pairs of whole trajectories
    (`final_pairs`), each pair of paths once (a final-step pair may be a sibling pair, or read the same as
    another under a step's copies). A tree's pairs train together (`ppm.pair_batch_loss` reads each path once)."""
    out = []
    for tree in trees:
        pairs = preference_pairs(tree, usable=lambda node: step_ran(node.text)) + final_pairs(tree)
        ids = {node.id: ppm_input(tokenizer, tree.path(node)) for pair in pairs for node in pair}  # each path once
        encoded = [(ids[p.id], ids[n.id]) for p, n in pairs]
        if encoded:
            out.append(list({(tuple(p), tuple(n)): (p, n) for p, n in encoded}.values()))
    return out


def best_traces(tree: Tree, n: int = 2) -> list[list[Node]]:
    """Up to n root-to-answer paths for policy SFT (rStar-Math sec. 3.4 keeps the top 2 per problem): those
    ending in a correct answer, highest mean Q first, each solution once (`_ranked_paths`)."""
    return _ranked_paths(tree, lambda node: node.terminal == "success", highest=True)[:n]


def final_pairs(tree: Tree, per_side: int = 2) -> list[tuple[Node, Node]]:
    """(positive, negative) answer steps for the PPM, whole trajectories rather than siblings: rStar-Math
    sec. 3.3 relaxes the sibling rule at the final step, where the same steps rarely end in different
    answers. The `per_side` correct trajectories of `best_traces` against the `per_side` that printed a wrong
    answer with the lowest mean Q (`_ranked_paths`, as there); each positive against each negative."""
    printed_wrong = lambda node: node.terminal == "failure" and node.meta == "<conclusion>" and _printed(node.text)
    wrong = _ranked_paths(tree, printed_wrong, highest=False)[:per_side]
    return [(pos[-1], neg[-1]) for pos in best_traces(tree, per_side) for neg in wrong]


def _ranked_paths(tree: Tree, ends, highest: bool) -> list[list[Node]]:
    """The root-to-node paths of the nodes `ends` accepts whose every step ran and is valued, by the mean Q of
    their steps (highest or lowest first, ties in tree order), each once: of paths that read the same (a
    solution sampled twice), the first."""
    paths = [tree.path(node) for node in tree.nodes if ends(node)]
    paths = [p for p in paths if all(s.value is not None and not step_failed(s.text) for s in p[1:])]
    sign = -1 if highest else 1
    first = {}
    for path in sorted(paths, key=lambda p: sign * sum(s.value for s in p[1:]) / (len(p) - 1)):
        first.setdefault(tuple(node.text for node in path[1:]), path)
    return list(first.values())


def _printed(text: str) -> bool:
    """Whether a step's code prints (an answer step) and it ran to an output."""
    parsed = parse_step(text)
    return parsed is not None and prints(parsed[1]) and OUTPUT in text


# -- the held-out measurements --------------------------------------------------------------------------
def rstar_policy(model, tokenizer, config, ppm=None, seed: int = 0, temperature: float | None = None) -> RStarPolicy:
    """The rStar policy with the run's step settings (`config`: an evolve.EvolveConfig); candidate steps at
    config.temperature unless `temperature` is given."""
    rstar = RStarConfig(max_step_tokens=config.max_step_tokens, max_rows=config.max_rows,
                        temperature=config.temperature if temperature is None else temperature)
    return RStarPolicy(model, tokenizer, rstar, ppm, seed=seed)


def draw_rounds(problems: list[Problem], config, source: str = "the training problems") -> list[list[Problem]]:
    """Each round's `config.problems` training problems (`config`: an evolve.EvolveConfig), none drawn twice:
    the problems in one order shuffled with the seed; round 0 takes the first of at least `min_steps` steps,
    each later round the next of at least `later_min_steps`. Problems without worked steps (GSM8K's) are
    drawn whatever those bounds. Raises ValueError, naming `source`, when there are too few."""
    order = random.Random(config.seed).sample(problems, len(problems))
    taken, rounds = set(), []
    for k in range(config.rounds):
        least = config.min_steps if k == 0 else max(config.min_steps, config.later_min_steps)
        chosen = [i for i, p in enumerate(order) if i not in taken and (not p.steps or len(p.steps) >= least)]
        chosen = chosen[: config.problems]
        if len(chosen) < config.problems:
            raise ValueError(f"{source}: round {k} wants {config.problems} problems of at least {least} steps not "
                             f"drawn before, {len(chosen)} left ({len(problems)} problems in all)")
        taken.update(chosen)
        rounds.append([order[i] for i in chosen])
    return rounds


def stepless_notes(config, train: list[Problem], pair_problems: list[Problem], data, test_data) -> list[str]:
    """What a run on problems without worked steps (GSM8K's) leaves out, one line each: the steps bounds of
    `draw_rounds` (config: an evolve.EvolveConfig) draw nothing apart, and there are no held-out slip pairs."""
    notes = []
    if (config.min_steps or config.later_min_steps) and not any(p.steps for p in train):
        notes.append(f"note: {data} has no worked steps (GSM8K's have none): --min-steps {config.min_steps} and "
                     f"--later-min-steps {config.later_min_steps} leave its problems as they are drawn")
    if pair_problems and not any(p.steps for p in pair_problems):
        notes.append(f"note: the held-out problems of {test_data} have no worked steps: there are no slip pairs to "
                     "measure the PPMs on (pair_acc -)")
    return notes


SLIPS = ("operand", "skip", "early")  # the kinds of held-out slips `slip_pairs` makes


def slip_pairs(tokenizer, problems: list[Problem], seed: int = 0) -> dict[str, list[tuple[list[int], list[int]]]]:
    """Held-out sibling steps whose order is known without a search, by kind of slip: under the first j steps
    of each worked solution, its step j + 1 (positive) against that step gone wrong the ways the tiny
    policies go wrong (negative), PPM inputs:
      operand  the same step with its operand miscopied, off by 1 or 2 (every step before the final print);
      skip     the next sentence's step written instead, so one sentence is never used (steps before the
               last one);
      early    the answer printed now, with what it prints, a step too soon (from the second step on).
    A slip that is no slip is left out: a skip whose next sentence asks for the same operation (the same code
    under another comment) or an early print of a value that is already the answer. Problems without worked
    steps give none."""
    rng, pairs = random.Random(seed), {kind: [] for kind in SLIPS}
    for problem in (p for p in problems if p.steps):
        steps = problem.code_steps()
        question, n = steps[-1][0].partition(": ")[2], len(steps) - 1  # the closing question; arithmetic steps
        rendered = [format_step(comment, code) for comment, code in steps]
        values = [problem.steps[0].x] + [s.y for s in problem.steps]  # values[j]: x_j (x_0 the start)
        for j, (comment, code) in enumerate(steps[:-1]):
            head, _, b = code.rpartition(" ")
            wrong = int(b) + rng.choice([-2, -1, 1, 2])
            slips = {"operand": format_step(comment, f"{head} {wrong if wrong > 0 else int(b) + 1}")}
            if j + 1 < n:  # step j + 2's sentence and operation, numbered j + 1, on what step j + 1 starts from
                target, _, expression = code.partition(" = ")  # "x2", "x1 - 3"
                sentence = steps[j + 1][0].partition(": ")[2]
                operation = steps[j + 1][1].partition(" = ")[2].split(" ", 1)[1]  # "+ 5" of "x3 = x2 + 5"
                start = expression.split(" ", 1)[0]  # "x1"
                skipped = f"{target} = {start} {operation}"
                if skipped != code:  # the same operation either way is no slip
                    slips["skip"] = format_step(f"Step {j + 1}: {sentence}", skipped)
            if j > 0 and values[j] != values[-1]:
                slips["early"] = format_step(f"Step {j + 1}: {question}", f"print(x{j})") + \
                    f"\n{OUTPUT}{values[j]}{END_OUTPUT}"
            for kind, step in slips.items():
                pairs[kind].append(tuple(encode_trace(tokenizer, problem.question, rendered[:j] + [s], close=False)[0]
                                         for s in (rendered[j], step)))
    return pairs


def held_out_accuracy(policy_model, tokenizer, problems: list[Problem], config, ppm=None, beam: int = 0,
                      seed: int = 0) -> tuple[float, float]:
    """(accuracy, generated tokens per problem) on problems no search saw: greedy, or with beam > 0 beam search
    of that width, `beam` new steps per beam sampled at config.beam_temperature, the PPM scoring every path."""
    place = dist.place()  # under torchrun each rank searches its share; the figures are the whole set's
    policy = rstar_policy(policy_model, tokenizer, config, ppm, dist.rank_seed(seed, place.rank),
                          config.beam_temperature if beam else None)
    mine = dist.shard(problems, place)
    method = SearchConfig(method="beam", n=beam, expand=beam, max_depth=RStarConfig.max_depth) if beam else \
        SearchConfig(method="greedy", max_depth=RStarConfig.max_depth)
    results = search(policy, [p.question for p in mine], method)  # the beam ranks by the values: PPM scores
    right, tokens = map(sum, zip(*dist.gather((sum(grade(results, [p.answer for p in mine])),
                                               sum(r.spent.generated for r in results)))))
    return right / len(problems), tokens / len(problems)


def measure(policy_model, ppm, tokenizer, problems: list[Problem], pairs, config) -> dict:
    """The held-out cells of a row: policy greedy (and its tokens per problem); with a PPM, beam search scored by
    it (when config.beam) and its accuracy on the held-out `pairs` (`slip_pairs`: all of them, and by kind). None
    where there is no PPM yet, or no pairs."""
    accuracy, tokens = held_out_accuracy(policy_model, tokenizer, problems, config, seed=config.seed)
    row = {"greedy": accuracy, "greedy_tokens": round(tokens, 1), "ppm_search": None, "ppm_pair_accuracy": None}
    if ppm is not None:  # no PPM before the first round
        if config.beam:
            row["ppm_search"] = held_out_accuracy(policy_model, tokenizer, problems, config, ppm, config.beam,
                                                  config.seed)[0]
        right = {kind: ordered_right(ppm, pairs[kind], tokenizer.pad_id) for kind in SLIPS}
        n = sum(len(pairs[kind]) for kind in SLIPS)
        row["ppm_pair_accuracy"] = sum(right.values()) / n if n else None
        row["ppm_slip_accuracy"] = {kind: right[kind] / len(pairs[kind]) if pairs[kind] else None for kind in SLIPS}
    return row


def ordered_right(ppm, pairs, pad_id: int) -> int:
    """How many (positive, negative) pairs the PPM orders right (`ppm.pair_accuracy`); under torchrun each rank
    scores its share."""
    mine = dist.shard(pairs, dist.place())
    return int(dist.total(round((pair_accuracy(ppm, mine, pad_id) or 0.0) * len(mine))))


def line(cells) -> str:
    """One line of the table: the cells right-aligned under COLUMNS."""
    return "".join(f"{c:>{max(9, len(name) + 2)}}" for c, name in zip(cells, COLUMNS))


def row_line(row: dict) -> str:
    pct = [("-" if row.get(key) is None else f"{100 * row[key]:.1f}%")
           for key in ("coverage", "greedy", "ppm_search", "ppm_pair_accuracy")]
    return line([row["round"], *pct, row.get("traces", "-"), row.get("pairs", "-"), row.get("generated_tokens", "-"),
                 f"{row['seconds']:.0f}"])


def plot_rounds(rows: list[dict], path: Path) -> bool:
    """The round table drawn: held-out greedy and PPM-guided accuracy, coverage and PPM pair accuracy by round;
    False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in [("greedy", "held-out greedy"), ("ppm_search", "held-out beam + PPM"),
                       ("coverage", "coverage (training problems)"), ("ppm_pair_accuracy", "held-out PPM pair accuracy")]:
        points = [(row["round"], 100 * row[key]) for row in rows if row.get(key) is not None]
        if points:
            ax.plot(*zip(*points), "o-", label=label)
    ax.set(xlabel="round", ylabel="%", title="rStar-Math self-evolution", xticks=[row["round"] for row in rows])
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
