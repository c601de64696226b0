"""Growing thought trees: what every search method shares.

    expand    one batched propose call adds k candidate thoughts under each request's node, one batched
              evaluate call rates them with the value head
    judge     whether a thought ends its chain: success, failure, or None (search may continue)
    simulate  roll nodes out to terminal thoughts (MCTS's simulation phase, best-of-N's chains)
    votes     pick the answer of a set of chains (majority, value-weighted, best value)

Greedy, best-of-N, beam search (search.py) and MCTS (mcts.py) are compositions of these. They reach the
model only through the policy interface of policy.py, so a scripted fake can stand in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from nanoo1.answers import check, extract_answer, normalize_answer
from nanoo1.policy import Candidate, Request, Spent, add_candidate
from nanoo1.thoughts import Node, Tree

LOG_HALF = math.log(0.5)  # P(positive) = 1/2: the rating the model would write greedily flips here


def expand(policy, requests: list[Request]) -> tuple[list[list[Node]], list[Spent]]:
    """Add every request's candidates as children (one propose call) and rate them all (one evaluate call).

    Each child gets its value and the rating the model would write greedily (positive iff V >= log 1/2),
    which prompts below it render, so they look like the training text.
    """
    if not requests:
        return [], []
    next_id = {}  # per tree: the ids are handed out in request order, as the children are added below
    for r in requests:
        r.first_id = next_id.get(id(r.tree), r.tree.next_id)
        next_id[id(r.tree)] = r.first_id + r.k
    children, spent = [], []
    for r, candidates in zip(requests, propose(policy, requests)):
        kids = [add_candidate(r.tree, r.node, c) for c in candidates]
        if [k.id for k in kids] != [r.child_id(j) for j in range(r.k)]:
            raise RuntimeError(f"children got ids {[k.id for k in kids]}, their prompts named {[r.child_id(j) for j in range(r.k)]}")
        children.append(kids)
        spent.append(Spent().charge(candidates))
    flat = [(i, child) for i, kids in enumerate(children) for child in kids]
    values, tokens = policy.evaluate([requests[i].tree.path(child) for i, child in flat])
    for (i, child), value, n in zip(flat, values, tokens):
        child.value = float(value)
        child.rating = "positive" if child.value >= LOG_HALF else "negative"
        spent[i].value += n
    return children, spent


def propose(policy, requests: list[Request]) -> list[list]:
    """policy.propose(requests), checked: one list of request.k candidates per request, or a RuntimeError naming
    what the policy returned."""
    proposed = [list(candidates) for candidates in policy.propose(requests)]  # a policy may yield them
    if len(proposed) != len(requests):
        raise RuntimeError(f"policy.propose returned candidates for {len(proposed)} of {len(requests)} requests")
    for r, candidates in zip(requests, proposed):
        if len(candidates) != r.k:
            raise RuntimeError(f"policy.propose returned {len(candidates)} candidates for a request of {r.k}")
    return proposed


def judge(node: Node, ground_truth: str | None, max_depth: int, success_threshold: float = LOG_HALF,
          verify: Callable[[str], bool] | None = None) -> str | None:
    """"success" / "failure" for a terminal thought, None for one that search may continue.

    A thought whose text fails `verify` (a step checker, e.g. steps.equations_hold) is a failure, as
    rStar-Math drops a step whose code does not run. A <conclusion> is terminal: with a ground truth
    (training) its extracted answer is checked against it, without one (test time) it succeeds when its
    value is at least `success_threshold`. Any other thought at `max_depth` is a failure.
    """
    if verify is not None and not verify(node.text):
        return "failure"
    if node.meta == "<conclusion>":
        ok = check(node.text, ground_truth) if ground_truth is not None else node.value >= success_threshold
        return "success" if ok else "failure"
    return "failure" if node.depth >= max_depth else None


def add_chains(requests: list[Request], chains: list[list[list[Candidate]]]) -> tuple[list[list[Node]], list[Spent]]:
    """Add rolled-out chains (per request, its chains of candidates) under each request's node.

    Each candidate's node_id is the id its header named, drawn from one counter per tree, so all the
    candidates of a tree are added in id order (a parent always has a smaller id than its children).
    Returns per request its chain ends and the tokens spent.
    """
    placed = {}  # (tree, node_id) -> (request index, parent's node_id or None, candidate)
    for i, per_request in enumerate(chains):
        for chain in per_request:
            for j, c in enumerate(chain):
                placed[(id(requests[i].tree), c.node_id)] = (i, chain[j - 1].node_id if j else None, c)
    nodes, spent = {}, [Spent() for _ in requests]
    for key in sorted(placed, key=lambda k: k[1]):
        i, parent_id, c = placed[key]
        r = requests[i]
        parent = nodes[(key[0], parent_id)] if parent_id is not None else r.node
        node = add_candidate(r.tree, parent, c)
        if node.id != c.node_id:
            raise RuntimeError(f"a rolled-out thought named id {c.node_id} in its header but became node {node.id}")
        nodes[key] = node
        spent[i].charge([c])
    ends = [[nodes[(id(r.tree), chain[-1].node_id)] for chain in per_request if chain] for r, per_request in zip(requests, chains)]
    return ends, spent


def simulate(policy, requests: list[Request], max_depth: int) -> tuple[list[list[Node]], list[Spent]]:
    """Roll each request's node out to terminal thoughts, request.k chains each (MCTS's simulation phase).

    With `policy.rollout` the chains are written in one cached generation; otherwise they grow one thought
    per round with `expand`. A chain ends at a <conclusion>, at max_depth, or at a thought the policy marked
    terminal. Returns per request its chain ends (not yet judged) and the tokens spent.
    """
    if hasattr(policy, "rollout"):
        return add_chains(requests, policy.rollout(requests, max_depth))
    ends, spent = [[] for _ in requests], [Spent() for _ in requests]
    live = [(i, Request(r.tree, r.node, r.metas, r.hints, r.temperature)) for i, r in enumerate(requests)]
    while live:
        children, costs = expand(policy, [r for _, r in live])
        next_live = []
        for (i, r), kids, cost in zip(live, children, costs):
            spent[i].add(cost)
            for child in kids:
                if child.terminal is None and child.meta != "<conclusion>" and child.depth < max_depth:
                    next_live.append((i, Request(r.tree, child, [None], [None], r.temperature)))
                else:
                    ends[i].append(child)
        live = next_live
    return ends, spent


@dataclass
class SearchResult:
    """What a search returns for one problem: plain data a notebook can print."""

    method: str  # "greedy", "best_of_n", "beam" or "mcts"
    answer: str | None  # the chosen conclusion's answer (answers.extract_answer); None if none was reached
    tree: Tree  # the trace: every thought generated, with its statistics
    path: list[int]  # ids of the chain the answer comes from, root first
    spent: Spent  # tokens spent on this problem
    simulations: int = 0  # MCTS: rounds run
    successes: int = 0  # MCTS: successful paths found (paths that read the same once)


def answer_of(node: Node) -> str | None:
    return extract_answer(node.text) if node.meta == "<conclusion>" else None


# -- voting (best-of-N and MCTS's "vote" answer): each returns the index of the chain whose answer wins, or None when no chain has one ------
def majority_vote(answers: list[str | None]) -> int | None:
    """The most frequent answer (by `normalize_answer`, so "1,234" and "1234.0" agree); ties go to the
    answer seen first. Chains without an answer abstain."""
    return weighted_vote(answers, [1.0] * len(answers))


def weighted_vote(answers: list[str | None], weights: list[float]) -> int | None:
    """The answer with the largest total weight (the value-weighted vote uses weights exp(V))."""
    totals, first = {}, {}
    for i, (answer, w) in enumerate(zip(answers, weights)):
        if answer is not None:
            key = normalize_answer(answer)
            totals[key] = totals.get(key, 0.0) + w
            first.setdefault(key, i)
    return first[max(totals, key=totals.get)] if totals else None


def best_value(answers: list[str | None], values: list[float]) -> int | None:
    """The chain with an answer whose value is the highest (the first of equals)."""
    scored = [i for i, a in enumerate(answers) if a is not None]
    return max(scored, key=lambda i: values[i]) if scored else None
