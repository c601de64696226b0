"""Test-time compute over a model and a list of problems: greedy, best-of-N, beam search and MCTS.

    policy = LMPolicy(model, tokenizer, temperature=1.0)
    results = search(policy, questions, SearchConfig(method="beam", n=4))

`LMPolicy` puts a nanoo1 model behind the policy interface of `mcts` (propose thoughts, evaluate paths):
one `engine.generate` call per round for every request, each prompt prefilled once and forked k ways,
and one value pass in which each parent's lines are prefilled once and forked to its children.

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

import torch

from nanoo1.engine import feed, generate
from nanoo1.mcts import (LOG_HALF, Candidate, MCTSConfig, Request, SearchResult, Spent, add_candidate, answer_of, best_value,
                         expand, judge, majority_vote, mcts, simulate, weighted_vote)
from nanoo1.rewards import check
from nanoo1.thoughts import Node, Tree, header, parse_thought, render_path, value_sequences

METHODS = ("greedy", "best_of_n", "beam", "mcts")
VOTES = ("majority", "weighted", "best_value")


# -- the policy over a nanoo1 model ------------------------------------------------------------------
class LMPolicy:
    """mcts's policy interface over a nanoo1 model and its tokenizer.

    temperature, top_k, top_p: sampling (a request's own temperature wins); max_thought_tokens: a thought
    not finished by <end_of_thought> within this many tokens is cut there; value_batch_size: rows per value
    pass; seed: the torch.Generator all sampling draws from. Thought log-probs are kept under the sampling
    distribution (logits / temperature, what PPO's ratio needs), the prior under the model's own.
    """

    def __init__(self, model, tokenizer, temperature: float = 1.0, max_thought_tokens: int = 64, top_k: int | None = None,
                 top_p: float | None = None, value_batch_size: int = 32, seed: int = 0):
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.max_thought_tokens, self.top_k, self.top_p = temperature, max_thought_tokens, top_k, top_p
        self.value_batch_size = value_batch_size
        self.end_of_thought = tokenizer.token_id("<end_of_thought>")
        self.generator = torch.Generator(device=model.output_embedding.device).manual_seed(seed)

    def propose(self, requests: list[Request]) -> list[list[Candidate]]:
        out = [[None] * r.k for r in requests]
        by_temperature = {}
        for i, r in enumerate(requests):
            by_temperature.setdefault(self.temperature if r.temperature is None else r.temperature, []).append(i)
        for temperature, rows in by_temperature.items():  # one generate call per temperature (usually one)
            self._sample([requests[i] for i in rows], [out[i] for i in rows], temperature)
        return out

    def _sample(self, requests: list[Request], out: list[list], temperature: float) -> None:
        """One generate call: each request's path prefilled once, forked k ways, every fork fed its own
        suffix (hint line, header with its own id, meta tag) before sampling."""
        k = requests[0].k
        if any(r.k != k for r in requests):  # num_samples is one number: unequal requests are not forked
            prefixes = [(i, j) for i, r in enumerate(requests) for j in range(r.k)]
            k = 1
        else:
            prefixes = [(i, None) for i in range(len(requests))]
        heads = [render_path(requests[i].tree.path(requests[i].node)) + "\n" for i, _ in prefixes]
        prompts = [self.tokenizer.encode(h) for h in heads]
        rows_of = [(i, j) for i, j0 in prefixes for j in ([j0] if j0 is not None else range(k))]
        tails = [requests[i].prompt(j)[len(heads[n // k]):] for n, (i, j) in enumerate(rows_of)]
        suffixes = [self.tokenizer.encode(t, add_bos=False) for t in tails]
        rows = generate(self.model, prompts, self.max_thought_tokens, temperature, self.top_k, self.top_p, num_samples=k,
                        stop_token_ids=[self.end_of_thought], tokenizer=self.tokenizer, generator=self.generator,
                        suffixes=suffixes)
        for n, ((i, j), c) in enumerate(zip(rows_of, rows)):
            meta, body = parse_thought(c.text, requests[i].metas[j])
            out[i][j] = Candidate(meta, body, c.tokens, logprobs=c.scaled_logprobs, prior=math.exp(c.mean_logprob),
                                  entropy=sum(c.entropy) / len(c.entropy), varentropy=sum(c.varentropy) / len(c.varentropy),
                                  prompt=heads[n // k] + tails[n],
                                  prompt_tokens=(len(prompts[n // k]) if n % k == 0 else 0) + len(suffixes[n]))

    def rollout(self, requests: list[Request], max_depth: int) -> list[list[list[Candidate]]]:
        """For each request, k chains of thoughts from its node to a <conclusion> (or max_depth), all in ONE
        cached generation: when a thought ends, the rest of its line (rated positive, as after training)
        and the next thought's header are forced, and sampling goes on; nothing is prefilled twice.

        Returns per request k chains, each a list of Candidates whose `node_id` is the id its header named;
        ids follow one counter per tree, so adding every candidate of a tree in id order reproduces them.
        The model writes each thought's meta tag (the requests' metas and hints are not used).
        """
        k = requests[0].k
        if any(r.k != k for r in requests):
            raise ValueError("rollout: every request must ask for the same number of chains")
        next_id, rows = {}, []  # rows: per generated row, [request index, depth, ids of its thoughts]
        for i, r in enumerate(requests):
            first = next_id.get(id(r.tree), r.tree.next_id)
            next_id[id(r.tree)] = first + k
            rows += [[i, r.node.depth + 1, [first + j]] for j in range(k)]
        conclusion = self.tokenizer.token_id("<conclusion>")

        def on_stop(n, completion, token):  # a thought ended (token None: cut at max_thought_tokens)
            i, depth, ids = rows[n]
            opened = max((j for j, f in enumerate(completion.forced) if f), default=-1) + 1  # its first token
            if completion.tokens[opened] == conclusion or depth >= max_depth:
                return None
            tree = requests[i].tree
            new = next_id[id(tree)]
            next_id[id(tree)] += 1
            rows[n][1:] = [depth + 1, ids + [new]]
            close = "<end_of_thought>" if token is None else ""  # a cut thought is closed as the renderer would
            return self.tokenizer.encode(f"{close}<start_of_rating><positive_rating><end_of_rating>\n{header(ids[-1], new)}"
                                         "<start_of_thought>", add_bos=False)

        heads = [render_path(r.tree.path(r.node)) + "\n" for r in requests]
        prompts = [self.tokenizer.encode(h) for h in heads]
        suffixes = [self.tokenizer.encode(header(requests[i].node.id, ids[0]) + "<start_of_thought>", add_bos=False)
                    for i, _, ids in rows]
        temperature = requests[0].temperature if requests[0].temperature is not None else self.temperature
        budget = (max_depth - min(r.node.depth for r in requests)) * (self.max_thought_tokens + 24)
        out = generate(self.model, prompts, budget, temperature, self.top_k, self.top_p, num_samples=k,
                       stop_token_ids=[self.end_of_thought], tokenizer=self.tokenizer, generator=self.generator,
                       suffixes=suffixes, on_stop=on_stop, segment_limit=self.max_thought_tokens)
        chains = [[] for _ in requests]
        for n, ((i, _, ids), c) in enumerate(zip(rows, out)):
            chain, start = [], 0
            for t, forced in enumerate(c.forced + [True]):  # each run of sampled tokens is one thought
                if forced and t > start:
                    meta, body = parse_thought(self.tokenizer.decode(c.tokens[start:t]))
                    part = slice(start, t)
                    chain.append(Candidate(meta, body, c.tokens[part], logprobs=c.scaled_logprobs[part],
                                           prior=math.exp(sum(c.logprobs[part]) / (t - start)),
                                           entropy=sum(c.entropy[part]) / (t - start), varentropy=sum(c.varentropy[part]) / (t - start),
                                           prompt_tokens=(len(prompts[i]) if n % k == 0 else 0) + len(suffixes[n]) if not chain else 0,
                                           node_id=ids[len(chain)]))
                if forced:
                    start = t + 1
            chains[i].append(chain)
        return chains

    @torch.no_grad()
    def evaluate(self, paths: list[list[Node]]) -> tuple[list[float], list[int]]:
        """`thoughts.rating_values` of the paths, each parent's lines prefilled once and forked to its children.

        Siblings' value prompts differ only in their last line, which starts with a special token, so the
        parent's ids are a prefix of each child's ids (checked: a path where that fails runs from <bos>).
        """
        seqs = value_sequences(self.tokenizer, paths)
        prefixes, keys = {}, []  # key (the parent, or the path alone) -> prefix ids; per path: its key
        for i, (path, seq) in enumerate(zip(paths, seqs)):
            key = id(path[-2]) if len(path) > 1 else -1 - i
            if key not in prefixes:
                prefixes[key] = self.tokenizer.encode(render_path(path[:-1]) + "\n") if key >= 0 else seq[:1]
            head = prefixes[key]
            if not (len(head) < len(seq) and seq[:len(head)] == head):
                key = -1 - i
                prefixes[key] = seq[:1]
            keys.append(key)
        rating_ids = [self.tokenizer.token_id("<positive_rating>"), self.tokenizer.token_id("<negative_rating>")]
        values = []
        for s in range(0, len(paths), self.value_batch_size):
            rows = range(s, min(s + self.value_batch_size, len(paths)))
            unique = list(dict.fromkeys(keys[i] for i in rows))
            tails = [seqs[i][len(prefixes[keys[i]]):] for i in rows]  # each path's own last line
            cache = self.model.new_cache(len(unique), max(len(prefixes[k]) for k in unique) + max(map(len, tails)))
            feed(self.model, cache, [prefixes[k] for k in unique])
            cache = cache.fork([unique.index(keys[i]) for i in rows])
            logits = feed(self.model, cache, tails)[:, rating_ids]  # (B, 2) after each row's <start_of_rating>
            values += torch.log_softmax(logits.float(), -1)[:, 0].tolist()
        return values, [len(s) for s in seqs]


@dataclass
class SearchConfig:
    method: str = "greedy"  # one of METHODS
    n: int = 8  # best-of-N: chains; beam: width
    vote: str = "majority"  # best-of-N: "majority", "weighted" (sum of exp(value)) or "best_value"
    expand: int = 4  # beam: new thoughts per beam per step
    max_depth: int = 8  # thoughts after the problem before a chain is abandoned as a failure
    temperature: float | None = None  # best-of-N and beam sampling; None: the policy's own (greedy uses 0)
    success_threshold: float = LOG_HALF  # a <conclusion> with value >= this is labelled a success
    mcts: MCTSConfig = field(default_factory=MCTSConfig)  # method "mcts"

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"SearchConfig.method={self.method!r}, expected one of {METHODS}")
        if self.vote not in VOTES:
            raise ValueError(f"SearchConfig.vote={self.vote!r}, expected one of {VOTES}")


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
    return trees, ends, spent


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
    the chain ends without an answer. A chain also ends at a <conclusion> or at config.max_depth.

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
            chains = [[replace(c, node_id=r.child_id(0))] for (_, r), (c,) in zip(requests, policy.propose([r for _, r in requests]))]
        charge(requests, chains)
        return chains

    def done(i, node) -> bool:
        if node.meta == "<conclusion>" or node.depth >= config.max_depth:
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
        proposed = policy.propose([r for _, r in retry]) if retry else []
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
           scorer: Callable[[list[list[Node]]], list[float]] | None = None, seed: int = 0) -> list[SearchResult]:
    """Answer every question with config.method; one SearchResult per question (see the module docstring).

    scorer: beam search only. seed: MCTS meta-action sampling (token sampling is seeded in the policy).
    """
    config = config or SearchConfig()
    if config.method == "greedy":
        return greedy(policy, questions, config)
    if config.method == "best_of_n":
        return best_of_n(policy, questions, config)
    if config.method == "beam":
        return beam_search(policy, questions, config, scorer)
    return mcts(policy, questions, config.mcts, seed=seed)


def grade(results: list[SearchResult], ground_truths: list[str]) -> list[bool]:
    """Whether each result's answer equals its ground truth (rewards.check); no answer is wrong."""
    return [r.answer is not None and check(r.answer, t) for r, t in zip(results, ground_truths)]
