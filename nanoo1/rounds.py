"""What `evolve` measures of each round's policy and PPM on held-out problems, and the round table.

Row k of the table is round k: policy k's held-out accuracy, greedy and by beam search scored by PPM k
(`ppm_search`), PPM k's accuracy on held-out sibling steps (`slip_pairs`), then round k's search (coverage,
traces, pairs, tokens) and its seconds; `plot_rounds` draws it (with matplotlib).
"""

from __future__ import annotations

import random
from pathlib import Path

from nanoo1 import dist
from nanoo1.ppm import pair_accuracy
from nanoo1.rstar import RStarConfig, RStarPolicy, encode_trace, format_step
from nanoo1.search import SearchConfig, grade, search
from nanoo1.tasks import Problem

COLUMNS = ["round", "coverage", "greedy", "ppm_search", "pair_acc", "traces", "pairs", "tokens", "seconds"]


def rstar_policy(model, tokenizer, config, ppm=None, seed: int = 0, temperature: float | None = None) -> RStarPolicy:
    """The rStar policy with the run's step settings (`config`: an evolve.EvolveConfig); candidate steps at
    config.temperature unless `temperature` is given."""
    rstar = RStarConfig(max_step_tokens=config.max_step_tokens,
                        temperature=config.temperature if temperature is None else temperature)
    return RStarPolicy(model, tokenizer, rstar, ppm, seed=seed)


def slip_pairs(tokenizer, problems: list[Problem], seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Held-out sibling steps whose order is known without a search: under the first j steps of each worked
    solution, its step j + 1 (positive) against the same step with its operand miscopied, off by 1 or 2
    (negative), the slip the tiny policy makes most. One pair per step before the final print; PPM inputs."""
    rng, pairs = random.Random(seed), []
    for problem in problems:
        steps = problem.code_steps()[:-1]
        rendered = [format_step(comment, code) for comment, code in steps]
        for j, (comment, code) in enumerate(steps):
            head, _, b = code.rpartition(" ")
            wrong = int(b) + rng.choice([-2, -1, 1, 2])
            wrong = wrong if wrong > 0 else int(b) + 1
            slipped = format_step(comment, f"{head} {wrong}")
            pairs.append(tuple(encode_trace(tokenizer, problem.question, rendered[:j] + [step], close=False)[0]
                               for step in (rendered[j], slipped)))
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
    results = search(policy, [p.question for p in mine], method, scorer=policy.score if beam else None)
    right, tokens = map(sum, zip(*dist.gather((sum(grade(results, [p.answer for p in mine])),
                                               sum(r.spent.generated for r in results)))))
    return right / len(problems), tokens / len(problems)


def measure(policy_model, ppm, tokenizer, problems: list[Problem], pairs, config) -> dict:
    """The held-out cells of a row: policy greedy (and its tokens per problem); with a PPM, beam search scored by
    it (when config.beam) and its accuracy on the held-out `pairs`. None where there is no PPM yet."""
    accuracy, tokens = held_out_accuracy(policy_model, tokenizer, problems, config, seed=config.seed)
    row = {"greedy": accuracy, "greedy_tokens": round(tokens, 1), "ppm_search": None, "ppm_pair_accuracy": None}
    if ppm is not None:  # no PPM before the first round
        if config.beam:
            row["ppm_search"] = held_out_accuracy(policy_model, tokenizer, problems, config, ppm, config.beam,
                                                  config.seed)[0]
        row["ppm_pair_accuracy"] = pair_accuracy(ppm, pairs, tokenizer.pad_id)
    return row


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
