"""The policy interface between the searches and a model, and its implementation over a nanoo1 model.

Searches (grow.py, mcts.py, search.py, rstar.py) reach the model only through two batched calls, so a scripted
fake can stand in for it in tests:

    policy.propose(requests) -> one list of request.k Candidates per Request     (batched sampling)
    policy.evaluate(paths)   -> (values, tokens read per path)                   (batched value head)

and optionally `policy.rollout(requests, max_depth)`, which writes whole chains in one cached generation.
A Request asks for k new thoughts under a node; a Candidate is one sampled thought with what search and
RL keep of it (`add_candidate` puts it into the tree); Spent counts the tokens a search spends.

`LMPolicy` implements the interface over a nanoo1 model: one `engine.generate` call per round for every
request (or one per max_rows sequences), each prompt prefilled once and forked k ways, and one value pass
in which each parent's lines are prefilled once and forked to its children.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nanoo1.engine import feed, generate, row_parts, seeded_generator
from nanoo1.thoughts import Node, Tree, header, parse_thought, policy_prompt, render_path, value_sequences
from nanoo1.value import rating_head


# -- the policy interface ------------------------------------------------------------------------------
@dataclass
class Request:
    """k new thoughts wanted under `node`; candidate j is sampled after `prompt(j)`."""

    tree: Tree
    node: Node  # the parent of the new thoughts
    metas: list[str | None]  # per candidate: the meta tag ending the prompt; None: the model writes it
    hints: list[str | None]  # per candidate: the <hint> text, None for no hint line
    temperature: float | None = None  # None: the policy's own; 0: greedy
    first_id: int | None = None  # the id candidate 0 will get (expand sets it); None: the tree's next id

    @property
    def k(self) -> int:
        return len(self.metas)

    def child_id(self, j: int) -> int:
        return (self.tree.next_id if self.first_id is None else self.first_id) + j

    def prompt(self, j: int) -> str:
        """Candidate j's prompt: its header carries the id it will have in the tree. The candidates share
        everything up to their headers, which a policy prefills once (engine.generate's suffixes)."""
        return policy_prompt(self.tree.path(self.node), self.child_id(j), self.metas[j], self.hints[j])


# tokens a rolled-out line adds around each thought: its rating, the next header, <start_of_thought> (a bound)
LINE_OVERHEAD = 24

@dataclass
class Candidate:
    """One sampled thought and what search and RL need from it."""

    meta: str  # its meta-action (from the prompt, or parsed from what the model wrote)
    text: str  # the thought without its meta tag and <end_of_thought>
    tokens: list[int]  # the generated ids (the meta tag if the model wrote it, ..., <end_of_thought>)
    logprobs: list[float]  # their log-probs under the sampling distribution (logits / temperature)
    prior: float  # LLaMA-O1's policy probability: exp(mean token log-prob under the model)
    entropy: float = 0.0  # mean entropy of the model's distribution over the sampled positions
    varentropy: float = 0.0  # mean varentropy over the same positions
    prompt: str = ""  # the text it was sampled after
    prompt_tokens: int = 0  # prompt tokens prefilled for it (0 for a fork of a prompt already counted)
    terminal: str | None = None  # set by a policy that knows the thought ends its branch (rStar: a failed step)
    node_id: int | None = None  # rollouts: the id its header named (chains are added to the tree in id order)


@dataclass
class Spent:
    """Tokens spent on one problem, what accuracy is plotted against."""

    generated: int = 0  # tokens sampled by the policy
    prompt: int = 0  # prompt tokens prefilled for sampling (a forked prompt counts once)
    value: int = 0  # tokens read by the value head

    def add(self, other: "Spent") -> None:
        self.generated += other.generated
        self.prompt += other.prompt
        self.value += other.value

    def charge(self, candidates) -> "Spent":
        """Add what sampling these candidates cost: their tokens, and the prompt tokens prefilled for them."""
        for c in candidates:
            self.generated += len(c.tokens)
            self.prompt += c.prompt_tokens
        return self


def add_candidate(tree: Tree, parent: Node, c: Candidate, node_id: int | None = None) -> Node:
    """Put a sampled thought into the tree under `parent`, with what search and RL keep of it; its id is
    the tree's next one, or `node_id` (the id its header named)."""
    return tree.add(parent, c.meta, c.text, node_id=node_id, prior=c.prior, varentropy=c.varentropy, tokens=list(c.tokens),
                    terminal=c.terminal)


# -- the policy over a nanoo1 model ------------------------------------------------------------------
def generate_calls(requests: list[Request], max_rows: int, default: float | None = None):
    """The generate calls of a round: (temperature, indices of its requests), the requests grouped by their
    temperature (`default` where a request has none; usually one group), each group cut into runs of at most
    max_rows candidates by `engine.row_parts` (0: no limit; a request is never cut)."""
    groups = {}
    for i, r in enumerate(requests):
        groups.setdefault(default if r.temperature is None else r.temperature, []).append(i)
    return [(temperature, [group[n] for n in part]) for temperature, group in groups.items()
            for part in row_parts([requests[i].k for i in group], max_rows)]


class LMPolicy:
    """The policy interface over a nanoo1 model and its tokenizer.

    temperature, top_k, top_p: sampling (a request's own temperature wins; a rollout's requests share one);
    max_thought_tokens: a thought not finished by <end_of_thought> within this many tokens is cut there;
    value_batch_size: rows per value pass; max_rows: at most this many sequences in one generate call, more
    requests going in several calls in order (0: no limit), which bounds the KV cache (a 2B model's 8 rolled-out
    192-token thoughts hold 0.2 GB a row); seed: the torch.Generator all sampling draws from. Thought log-probs
    are kept under the sampling distribution (logits / temperature, what PPO's ratio needs), the prior under the
    model's own.
    """

    def __init__(self, model, tokenizer, temperature: float = 1.0, max_thought_tokens: int = 64, top_k: int | None = None,
                 top_p: float | None = None, value_batch_size: int = 32, max_rows: int = 0, seed: int = 0):
        if max_thought_tokens < 1:
            raise ValueError(f"LMPolicy: max_thought_tokens must be at least 1, got {max_thought_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.max_thought_tokens, self.top_k, self.top_p = temperature, max_thought_tokens, top_k, top_p
        self.value_batch_size, self.max_rows = value_batch_size, max_rows
        self.end_of_thought = tokenizer.token_id("<end_of_thought>")
        self.generator = seeded_generator(model, seed)

    def propose(self, requests: list[Request]) -> list[list[Candidate]]:
        out = [[None] * r.k for r in requests]
        for temperature, rows in generate_calls(requests, self.max_rows, self.temperature):
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
        cached generation (one per max_rows chains): when a thought ends, the rest of its line (rated positive,
        as after training) and the next thought's header are forced, and sampling goes on; nothing is
        prefilled twice.

        Returns per request k chains, each a list of Candidates whose `node_id` is the id its header named;
        ids follow one counter per tree, so adding every candidate of a tree in id order reproduces them.
        The model writes each thought's meta tag (the requests' metas and hints are not used).
        """
        if any(r.k != requests[0].k for r in requests):
            raise ValueError("rollout: every request must ask for the same number of chains")
        if any(r.temperature != requests[0].temperature for r in requests):
            raise ValueError("rollout: every request must sample at the same temperature")
        next_id = {}  # tree -> the id its next thought gets, carried from one generate call to the next
        return [chains for part in row_parts([r.k for r in requests], self.max_rows)
                for chains in self._rollout([requests[n] for n in part], max_depth, next_id)]

    def _rollout(self, requests: list[Request], max_depth: int, next_id: dict) -> list[list[list[Candidate]]]:
        k, rows = requests[0].k, []  # rows: per generated row, [request index, depth, ids of its thoughts]
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
        budget = (max_depth - min(r.node.depth for r in requests)) * (self.max_thought_tokens + LINE_OVERHEAD)
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
        """`value.rating_values` of the paths, each parent's lines prefilled once and forked to its children, the
        two rating logits read by `value.rating_head` from the last hidden state (no full-vocabulary logits).

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
        values = []
        for s in range(0, len(paths), self.value_batch_size):
            rows = range(s, min(s + self.value_batch_size, len(paths)))
            unique = list(dict.fromkeys(keys[i] for i in rows))
            tails = [seqs[i][len(prefixes[keys[i]]):] for i in rows]  # each path's own last line
            cache = self.model.new_cache(len(unique), max(len(prefixes[k]) for k in unique) + max(map(len, tails)))
            feed(self.model, cache, [prefixes[k] for k in unique])
            cache = cache.fork([unique.index(keys[i]) for i in rows])
            logits = feed(self.model, cache, tails, lambda h: rating_head(self.model, self.tokenizer, h))  # (B, 2)
            values += torch.log_softmax(logits.float(), -1)[:, 0].tolist()
        return values, [len(s) for s in seqs]
