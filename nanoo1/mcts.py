"""MCTS over thought trees (LLaMA-O1), with rStar-Math's UCT as a second selection rule.

One simulation selects a leaf by descending from the root with a selection rule, expands it into k new
thoughts, rates them with the value head, and backs the best new value up the path as a discounted
running mean. Trees of several problems run in lockstep: each round selects one leaf per unfinished tree
and expands all of them in one batched sampling call and one batched value call. After the search,
values are rectified from the leaves (success log 1, failure log 1e-6) and the max-reward path gives
the answer. Values are log-probabilities (<= 0), so a discount pulls them toward log 1 = 0, as in LLaMA-O1.

Expansion, terminal judging and rollouts are grow.py's, shared with every other search; this file is the
algorithm: selection, backup, rectification and the lockstep loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from nanoo1.grow import LOG_HALF, SearchResult, answer_of, expand, judge, simulate, weighted_vote
from nanoo1.policy import Request, Spent
from nanoo1.thoughts import Node, Tree
# -- selection rules -----------------------------------------------------------------------------------
def puct_score(parent: Node, child: Node, c: float = 1.4, varentropy_coef: float = 0.0) -> float:
    """LLaMA-O1's rule: V(child) + c * P(child) * sqrt(N(parent)) / (1 + N(child)) [+ lambda * varentropy(child)].

    P is the policy probability exp(mean token log-prob). The first of equal scores wins, so search is
    deterministic.
    """
    return child.value + c * child.prior * math.sqrt(parent.visits) / (1 + child.visits) + varentropy_coef * child.varentropy


def uct_score(parent: Node, child: Node, c: float = 2.0) -> float:
    """rStar-Math's UCT (Guan et al. 2025, eq. 1): Q(child)/N(child) + c * sqrt(ln N(parent) / N(child)).

    `child.value` is already the running mean Q/N of its backups; an unvisited child scores +inf.
    """
    if child.visits == 0:
        return math.inf
    return child.value + c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)


SELECTION_RULES = ("puct", "uct")


@dataclass
class MCTSConfig:
    simulations: int = 16  # rounds of select / expand / back up per problem
    num_candidates: int = 4  # k new thoughts per expansion
    max_children: int = 4  # a node is expanded (again) while it has fewer children than this
    selection: str = "puct"  # "puct" (LLaMA-O1) or "uct" (rStar-Math)
    c: float | None = None  # exploration constant; None: 1.4 for puct, 2.0 for uct
    discount: float = 0.9  # a value backed up one level is multiplied by this
    patient: int = 2  # stop a problem after this many successful terminals whose paths read differently
    max_depth: int = 8  # a thought this deep that is not a <conclusion> is a failed terminal
    success_threshold: float = LOG_HALF  # without a ground truth, a <conclusion> with value >= this succeeds
    reward_epsilon: float = 1e-6  # rectification: success log 1, failure log reward_epsilon
    success_value: float = 0.0  # with a ground truth, a success's value: log 1 (rStar-Math: +1)
    failure_value: float | None = None  # a checked failure's value (ground truth or step checker); None: log reward_epsilon (rStar: -1)
    temperature: float | None = None  # sampling temperature; None: the policy's own
    rollout: bool = False  # simulate: roll every new thought out to a terminal and back up its outcome
    verify: Callable[[str], bool] | None = None  # step checker: a thought whose text fails it is a failed terminal
    #                                              with failure_value, as is the end of a rolled-out chain with such a thought
    answer: str = "max_reward"  # "max_reward": the max-reward path's answer (LLaMA-O1); "vote": the value-weighted
    #                             vote, weights exp(V), over every <conclusion> in the tree (self-consistency over the search)

    def __post_init__(self):
        if self.selection not in SELECTION_RULES:
            raise ValueError(f"MCTSConfig.selection={self.selection!r}, expected one of {SELECTION_RULES}")
        if self.answer not in ("max_reward", "vote"):
            raise ValueError(f"MCTSConfig.answer={self.answer!r}, expected 'max_reward' or 'vote'")
        for name in ("num_candidates", "max_children"):  # an expansion that adds nothing has no value to back up
            if getattr(self, name) < 1:
                raise ValueError(f"MCTSConfig.{name}={getattr(self, name)!r}, expected at least 1")

    def score(self, parent: Node, child: Node) -> float:
        if self.selection == "uct":
            return uct_score(parent, child, 2.0 if self.c is None else self.c)
        return puct_score(parent, child, 1.4 if self.c is None else self.c)


def select_leaf(root: Node, config: MCTSConfig) -> Node:
    """Descend from the root through fully expanded nodes, to the child with the best score each time."""
    node = root
    while node.terminal is None and len(node.children) >= config.max_children:
        parent = node
        node = max(parent.children, key=lambda child: config.score(parent, child))
    return node


def expansion_request(tree: Tree, node: Node, config: MCTSConfig) -> Request:
    """The request for node's next k thoughts: the model writes each meta tag, and no hint (so no ground truth)
    reaches a prompt."""
    k = config.num_candidates
    return Request(tree, node, [None] * k, [None] * k, config.temperature)


# -- backup, rectification, the answer -----------------------------------------------------------------
def backup(node: Node, value: float, discount: float = 0.9) -> None:
    """Discounted running mean up to the root: node gets `value`, its parent discount * value, and so on,
    each as N += 1, V += (v - V) / N (a node's first backup replaces the value head's estimate)."""
    while node is not None:
        node.visits += 1
        node.value = value if node.value is None else node.value + (value - node.value) / node.visits
        value *= discount
        node = node.parent


def rectify(tree: Tree, discount: float = 0.9, reward_epsilon: float = 1e-6) -> None:
    """LLaMA-O1's value rectification after search: set every node's `rectified` from the leaves.

    A leaf (a terminal, or a thought never expanded) has reward log 1 = 0 on success, log(reward_epsilon)
    otherwise; a node's rectified value is the mean over the leaves below it of discount^levels * reward.
    A success's 0.0 is a value like any other, not "unset".
    """
    counts = {}
    for node in tree.nodes:
        node.rectified = None
    for leaf in tree.leaves():
        reward, node = (0.0 if leaf.terminal == "success" else math.log(reward_epsilon)), leaf
        while node is not None:
            counts[node.id] = n = counts.get(node.id, 0) + 1
            node.rectified = reward if n == 1 else node.rectified + (reward - node.rectified) / n
            reward *= discount
            node = node.parent


def max_reward_path(tree: Tree) -> list[Node]:
    """From the root, follow the child with the highest rectified value (the value before rectify) to a leaf."""
    path = [tree.root]
    while path[-1].children:
        path.append(max(path[-1].children, key=lambda n: n.value if n.rectified is None else n.rectified))
    return path


def _rejected(config: MCTSConfig, node: Node) -> bool:
    """True when the step checker rejects this thought."""
    return config.verify is not None and not config.verify(node.text)


def _judge(p, node: Node, config: MCTSConfig, failure_value: float, rejected: bool = False) -> None:
    """Label a thought terminal if it is one; with a ground truth its value becomes the outcome's reward.

    rejected: the step checker failed this thought or a rolled-out thought above it; it is a failure with
    failure_value at test time too (the checker is a tool that knows, not a guess of the value head), and so
    is a dead end (a failure that is no <conclusion>: max_depth reached, or a step the policy ended); only a
    conclusion is judged by its value."""
    if rejected:  # the caller ran the checker (_rejected): judge does not run it again
        node.terminal = "failure"
    node.terminal = node.terminal or judge(node, p.ground_truth, config.max_depth, config.success_threshold)
    known = p.ground_truth is not None or rejected or node.terminal == "failure" and node.meta != "<conclusion>"
    if node.terminal is not None and known:
        node.value = config.success_value if node.terminal == "success" else failure_value
    if node.terminal == "success":
        p.solved.add(tuple(n.text for n in p.tree.path(node)[1:]))


@dataclass
class _Problem:
    tree: Tree
    ground_truth: str | None
    spent: Spent
    simulations: int = 0
    solved: set = field(default_factory=set)  # texts of the successful paths found; a solution sampled twice is one


def mcts(policy, questions: list[str], config: MCTSConfig | None = None,
         ground_truths: list[str] | None = None) -> list[SearchResult]:
    """Run MCTS on every question in lockstep; one SearchResult per question.

    ground_truths (training; a None entry: that problem at test time): conclusions are checked against them,
    and a checked terminal's value becomes its reward (success_value, failure_value) so the search learns from
    it at once; without them (test time) conclusions are judged by their value. A thought the policy already
    marked terminal stays so. Every random draw is the policy's (its seeded generator).
    """
    config = config or MCTSConfig()
    truths = [None] * len(questions) if ground_truths is None else list(ground_truths)
    if len(truths) != len(questions):
        raise ValueError(f"mcts: {len(truths)} ground truths for {len(questions)} questions")
    failure_value = math.log(config.reward_epsilon) if config.failure_value is None else config.failure_value
    problems = [_Problem(Tree(q), t, Spent()) for q, t in zip(questions, truths)]
    for _ in range(config.simulations):
        live = [p for p in problems if len(p.solved) < config.patient]
        if not live:
            break
        jobs = []
        for p in live:
            p.simulations += 1
            leaf = select_leaf(p.tree.root, config)
            if leaf.terminal is not None:  # never expanded: its outcome is backed up once more
                backup(leaf, leaf.value, config.discount)
            else:
                jobs.append((p, leaf))
        requests = [expansion_request(p.tree, leaf, config) for p, leaf in jobs]
        children, spent_per_job = expand(policy, requests)
        for (p, leaf), kids, spent in zip(jobs, children, spent_per_job):
            p.spent.add(spent)
            for child in kids:
                _judge(p, child, config, failure_value, _rejected(config, child))
            if not config.rollout:
                backup(leaf, config.discount * max(child.value for child in kids), config.discount)
        if config.rollout:  # simulation: every new thought rolled out to a terminal, each outcome backed up
            todo = [(p, child) for (p, _), kids in zip(jobs, children) for child in kids if child.terminal is None]
            for p, child in ((p, c) for (p, _), kids in zip(jobs, children) for c in kids if c.terminal is not None):
                backup(child, child.value, config.discount)
            ends, costs = simulate(policy, [Request(p.tree, c, [None], [None], config.temperature) for p, c in todo],
                                   config.max_depth)
            # a rolled-out chain is checked whole: its first rejected thought below the expanded one is a failed
            # terminal (selection never expands it later; it keeps failure_value, set after the backup below), and
            # so is the chain's end; the rejected thought is where the chain failed (experience.outcomes counts it)
            flat = []
            for (p, c), es in zip(todo, ends):
                for e in es:
                    bad = next((n for n in p.tree.path(e)[c.depth + 1:-1] if _rejected(config, n)), None)
                    if bad is not None:
                        bad.terminal = "failure"
                    flat.append((p, e, bad, bad is not None or _rejected(config, e)))
            unrated = [(p, e) for p, e, _, rejected in flat
                       if p.ground_truth is None and e.value is None and not rejected and e.meta == "<conclusion>"]
            if unrated:  # test time: a conclusion is judged by its value
                values, tokens = policy.evaluate([p.tree.path(e) for p, e in unrated])
                for (p, e), v, n in zip(unrated, values, tokens):
                    e.value = float(v)
                    p.spent.value += n
            for (p, _), cost in zip(todo, costs):
                p.spent.add(cost)
            for p, e, bad, rejected in flat:
                _judge(p, e, config, failure_value, rejected)
                e.terminal = e.terminal or "failure"  # a chain cut short
                if e.value is None:
                    e.value = failure_value
                backup(e, e.value, config.discount)
                if bad is not None:
                    bad.value = failure_value
    results = []
    for p in problems:
        rectify(p.tree, config.discount, config.reward_epsilon)
        path = max_reward_path(p.tree)
        if config.answer == "vote":
            ends = [n for n in p.tree.nodes if answer_of(n) is not None]
            best = weighted_vote([answer_of(n) for n in ends], [math.exp(n.value or 0.0) for n in ends])
            path = path if best is None else p.tree.path(ends[best])
        results.append(SearchResult("mcts", answer_of(path[-1]), p.tree, [n.id for n in path], p.spent, p.simulations, len(p.solved)))
    return results
