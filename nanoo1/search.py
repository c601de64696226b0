"""Test-time compute over a model and a list of problems: greedy, best-of-N, beam search and MCTS.

    policy = LMPolicy(model, tokenizer, temperature=1.0)          # nanoo1.policy
    results = search(policy, questions, SearchConfig(method="beam", n=4))

The methods reach the model only through the policy interface of policy.py (propose thoughts, evaluate
paths); `policy.LMPolicy` puts a nanoo1 model behind it.

Every method grows one thought tree per problem and returns a `SearchResult` (the answer, the tree as the
trace, the path the answer came from, the tokens spent), so accuracy can be plotted against compute. All
run the problems in lockstep: one batched propose call and one batched evaluate call per step for every
problem at once. None of them sees a ground truth: a <conclusion> ends a chain and is judged by its value
alone. The policy writes the meta tag of each thought itself.

- greedy: one chain, the most likely thought at each step (temperature 0).
- best-of-N: N chains (the problem prompt prefilled once and forked N ways, each chain sampled on its
  own afterwards); the answer by majority vote (self-consistency, Wang et al. 2023), by value-weighted
  vote (sum of exp(V) of each answer's conclusions), or of the conclusion with the best value.
- beam: step-level beam search guided by a scorer, the value head by default; a process preference
  model plugs in as `scorer(paths) -> scores`. Every beam is expanded into `expand` thoughts, the best
  `n` of all of them are kept; a kept conclusion leaves the beam as finished, the best finished wins.
- mcts: `mcts.mcts` without ground truths.

`checked_greedy` (not one of the methods above: it needs a step checker) is greedy with the checker as a
tool; self-play uses it to collect chains to imitate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable

from nanoo1.answers import answer_matches
from nanoo1.grow import (LOG_HALF, SearchResult, answer_of, best_value, expand, judge, majority_vote, propose, simulate,
                         weighted_vote)
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.policy import Request, Spent, add_candidate
from nanoo1.thoughts import Node, Tree

METHODS = ("greedy", "best_of_n", "beam", "mcts")
VOTES = ("majority", "weighted", "best_value")


@dataclass
class SearchConfig:
    method: str = "greedy"  # one of METHODS
    n: int = 8  # best-of-N: chains; beam: width
    vote: str = "majority"  # best-of-N: "majority", "weighted" (sum of exp(value)) or "best_value"
    expand: int = 4  # beam: new thoughts per beam per step
    max_depth: int = 8  # thoughts after the problem before a chain is abandoned as a failure (not MCTS's: mcts.*)
    temperature: float | None = None  # best-of-N and beam sampling; None: the policy's own (greedy uses 0)
    success_threshold: float = LOG_HALF  # a <conclusion> with value >= this is labelled a success (not MCTS's)
    mcts: MCTSConfig = field(default_factory=MCTSConfig)  # method "mcts", which reads these settings alone

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"SearchConfig.method={self.method!r}, expected one of {METHODS}")
        if self.vote not in VOTES:
            raise ValueError(f"SearchConfig.vote={self.vote!r}, expected one of {VOTES}")
        for name in ("n", "expand", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"SearchConfig.{name}={getattr(self, name)}, expected at least 1")


# -- the methods ---------------------------------------------------------------------------------------
def _request(tree: Tree, node: Node, k: int, temperature: float | None) -> Request:
    return Request(tree, node, [None] * k, [None] * k, temperature)


def _grow(policy, spent, requests, config) -> list[list[Node]]:
    """Expand, charge the tokens to each request's problem, label terminals; children per request."""
    children, costs = expand(policy, [r for _, r in requests])
    for (i, _), kids, cost in zip(requests, children, costs):
        spent[i].add(cost)
        for child in kids:
            child.terminal = child.terminal or judge(child, None, config.max_depth, config.success_threshold)
    return children


def sample_chains(policy, questions: list[str], n: int, config: SearchConfig, temperature: float | None,
                  rate: bool = True):
    """n chains per question, each followed to a terminal thought; returns (trees, chain ends, spent).

    A policy with `rollout` writes whole chains in one cached generation, and rates the chain ends only
    when `rate` (a vote that reads values); otherwise chains grow one thought per round (one propose and
    one evaluate call per round) and every thought is rated.
    """
    trees, spent = [Tree(q) for q in questions], [Spent() for _ in questions]
    if hasattr(policy, "rollout"):
        return _rollout_chains(policy, trees, spent, n, config, temperature, rate)
    live = [(i, _request(t, t.root, n, temperature)) for i, t in enumerate(trees)]  # the first thought forked n ways
    ends = [[] for _ in questions]
    while live:
        children = _grow(policy, spent, live, config)
        next_live = []
        for (i, _), kids in zip(live, children):
            for child in kids:
                if child.terminal is None:
                    next_live.append((i, _request(trees[i], child, 1, temperature)))
                else:
                    ends[i].append(child)
        live = next_live
    # in the chains' order (of their first thoughts), as a rollout lists them, not the order they ended in
    return trees, [sorted(es, key=lambda e, t=t: t.path(e)[1].id) for t, es in zip(trees, ends)], spent


def _rollout_chains(policy, trees, spent, n, config, temperature, rate):
    requests = [_request(t, t.root, n, temperature) for t in trees]
    ends, costs = simulate(policy, requests, config.max_depth)
    for s, cost in zip(spent, costs):
        s.add(cost)
    flat = [(i, e) for i, es in enumerate(ends) for e in es]
    if not rate:  # unrated: a conclusion stays unjudged (its answer still counts), a chain cut short fails
        for _, e in flat:
            e.terminal = None if e.meta == "<conclusion>" else "failure"
        return trees, ends, spent
    values, tokens = policy.evaluate([trees[i].path(e) for i, e in flat])
    for (i, e), value, t in zip(flat, values, tokens):
        e.value, spent[i].value = float(value), spent[i].value + t
        e.rating = "positive" if e.value >= LOG_HALF else "negative"
        e.terminal = judge(e, None, config.max_depth, config.success_threshold) or "failure"  # a chain cut short fails
    return trees, ends, spent


def _result(method, tree, node, spent) -> SearchResult:
    return SearchResult(method, None if node is None else answer_of(node), tree,
                        [n.id for n in tree.path(node or tree.root)], spent)


def greedy(policy, questions: list[str], config: SearchConfig) -> list[SearchResult]:
    trees, ends, spent = sample_chains(policy, questions, 1, config, temperature=0.0, rate=False)
    return [_result("greedy", t, e[0] if e else None, s) for t, e, s in zip(trees, ends, spent)]


def best_of_n(policy, questions: list[str], config: SearchConfig) -> list[SearchResult]:
    trees, ends, spent = sample_chains(policy, questions, config.n, config, config.temperature,
                                       rate=config.vote != "majority")
    results = []
    for tree, chain_ends, cost in zip(trees, ends, spent):
        answers, values = [answer_of(e) for e in chain_ends], [e.value for e in chain_ends]
        if config.vote == "majority":
            win = majority_vote(answers)
        elif config.vote == "weighted":
            win = weighted_vote(answers, [math.exp(v) for v in values])
        else:
            win = best_value(answers, values)
        results.append(_result("best_of_n", tree, None if win is None else chain_ends[win], cost))
    return results


def beam_search(policy, questions: list[str], config: SearchConfig,
                scorer: Callable[[list[list[Node]]], list[float]] | None = None) -> list[SearchResult]:
    """Step-level beam search; `scorer(paths)` scores each path's last thought (default: its value)."""
    trees, spent = [Tree(q) for q in questions], [Spent() for _ in questions]
    beams = [[t.root] for t in trees]
    finished = [[] for _ in questions]  # (score, node) of kept conclusions
    while any(beams):
        requests = [(i, _request(trees[i], node, config.expand, config.temperature))
                    for i in range(len(trees)) for node in beams[i]]
        flat = [(i, child) for (i, _), kids in zip(requests, _grow(policy, spent, requests, config)) for child in kids]
        scores = [c.value for _, c in flat] if scorer is None else scorer([trees[i].path(c) for i, c in flat])
        pool = [[] for _ in questions]  # (score, thought) per problem
        for (i, child), score in zip(flat, scores):
            pool[i].append((float(score), child))
        for i, candidates in enumerate(pool):
            kept = sorted(candidates, key=lambda sc: -sc[0])[: config.n]  # stable: the first of equals wins
            finished[i] += [(s, c) for s, c in kept if c.meta == "<conclusion>"]
            beams[i] = [c for _, c in kept if c.terminal is None]
    return [_result("beam", t, max(f, key=lambda sc: sc[0])[1] if f else None, s) for t, f, s in zip(trees, finished, spent)]


def checked_greedy(policy, questions: list[str], verify: Callable[[str], bool] | None, config: SearchConfig | None = None,
                   k: int = 8, temperature: float = 1.0) -> list[SearchResult]:
    """Greedy decoding with a step checker as a tool: a greedy thought that `verify` rejects is replaced by
    the most probable (by prior) of k thoughts sampled at `temperature` that it accepts; where none does,
    the chain ends without an answer. A chain also ends at a <conclusion>, at a thought the policy marked
    terminal (rStar: a failed step) or at config.max_depth.

    The model's own greedy chain, fixed only where it slipped: self-play's cheapest search (no value pass),
    whose successful chains show the policy what it would have written had it not slipped. A policy with
    `rollout` writes the greedy chain in one cached generation, checked afterwards: the thoughts after the
    first rejected one are dropped, and greedy goes on from the fix in a new rollout. Otherwise it grows one
    thought per round. verify None: plain greedy.
    """
    config = config or SearchConfig()
    trees, spent = [Tree(q) for q in questions], [Spent() for _ in questions]
    ends = [None] * len(questions)

    def charge(requests, proposed):
        for (i, _), candidates in zip(requests, proposed):
            spent[i].charge(candidates)

    def greedy_chains(requests):  # per request, the greedy thoughts from its node on, with the ids they will get
        if hasattr(policy, "rollout"):
            chains = [chain for (chain,) in policy.rollout([r for _, r in requests], config.max_depth)]
        else:
            proposed = propose(policy, [r for _, r in requests])
            chains = [[replace(c, node_id=r.child_id(0))] for (_, r), (c,) in zip(requests, proposed)]
        charge(requests, chains)
        return chains

    def done(i, node) -> bool:
        if node.meta == "<conclusion>" or node.terminal is not None or node.depth >= config.max_depth:
            ends[i] = node
            return True
        return False

    live = [(i, t.root) for i, t in enumerate(trees)]
    while live:
        requests = [(i, _request(trees[i], node, 1, 0.0)) for i, node in live]
        next_live, retry = [], []
        for (i, r), chain in zip(requests, greedy_chains(requests)):
            node = r.node
            for c in chain or [None]:
                if c is None:  # nothing generated (a spent budget): the chain ends without an answer
                    break
                if verify is not None and not verify(c.text):
                    retry.append((i, _request(trees[i], node, k, temperature)))
                    break
                node = add_candidate(trees[i], node, c, c.node_id)
                if done(i, node):
                    break
            else:
                next_live.append((i, node))
        proposed = propose(policy, [r for _, r in retry]) if retry else []
        charge(retry, proposed)
        for (i, r), candidates in zip(retry, proposed):
            passed = [j for j, c in enumerate(candidates) if verify(c.text)]
            if passed:
                j = max(passed, key=lambda j: candidates[j].prior)  # the first of equals
                node = add_candidate(trees[i], r.node, candidates[j], r.child_id(j))
                if not done(i, node):
                    next_live.append((i, node))
        live = next_live
    return [_result("checked_greedy", t, e, s) for t, e, s in zip(trees, ends, spent)]


def search(policy, questions: list[str], config: SearchConfig | None = None,
           scorer: Callable[[list[list[Node]]], list[float]] | None = None) -> list[SearchResult]:
    """Answer every question with config.method; one SearchResult per question (see the module docstring).

    scorer: beam search only. Every random draw is the policy's (its seeded generator).
    """
    config = config or SearchConfig()
    if config.method == "greedy":
        return greedy(policy, questions, config)
    if config.method == "best_of_n":
        return best_of_n(policy, questions, config)
    if config.method == "beam":
        return beam_search(policy, questions, config, scorer)
    return mcts(policy, questions, config.mcts)


def grade(results: list[SearchResult], ground_truths: list[str]) -> list[bool]:
    """Whether each result's answer equals its ground truth (`answers.answer_matches`); no answer is wrong."""
    return [answer_matches(r.answer, t) for r, t in zip(results, ground_truths)]
