"""Test-time search: votes by hand, greedy / best-of-N / beam / MCTS on scripted fakes; LMPolicy on a real tiny model."""

import re
import math

import pytest
import torch

import nanoo1.policy as policy_module  # LMPolicy looks up generate and feed here
from conftest import ScriptedPolicy, decoy_script, path_key, random_model
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.policy import LMPolicy, Request
from nanoo1.model import Gemma2Config
from nanoo1.search import (SearchConfig, best_value, checked_greedy, grade, majority_vote, search,
                           weighted_vote)
from nanoo1.engine import generate
from nanoo1.steps import equations_hold
from nanoo1.thoughts import Tree, policy_prompt, render_path, value_prompt
from nanoo1.value import rating_values

QUESTION = "Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?"


# -- votes ---------------------------------------------------------------------------------------------
def test_majority_vote_counts_equal_answers_and_abstentions():
    assert majority_vote(["7", "1,234", None, "1234.0", "7", "1234"]) == 1  # three votes for 1234, first at 1
    assert majority_vote(["7", "9", "9", "7"]) == 0  # a tie goes to the answer seen first
    assert majority_vote([None, None]) is None


def test_weighted_vote_and_best_value():
    answers = ["7", "7", "9", "9", "9", "5"]
    weights = [0.9, 0.8, 0.3, 0.3, 0.3, 0.95]
    assert weighted_vote(answers, weights) == 0  # 7: 1.7 > 5: 0.95 > 9: 0.9
    assert best_value(answers, [math.log(w) for w in weights]) == 5
    assert best_value([None, "3"], [0.0, -5.0]) == 1  # a chain without an answer cannot win


def test_best_value_takes_the_first_of_equal_values():
    """Chains 1 and 2 tie at the highest value 0.9: the first of them, 1, wins."""
    assert best_value(["1", "2", "3", None], [0.5, 0.9, 0.9, 2.0]) == 1


# -- best-of-N on six scripted chains -------------------------------------------------------------------
CHAINS = {"a": ("7", 0.9), "b": ("7", 0.8), "c": ("9", 0.3), "d": ("9", 0.3), "e": ("9", 0.3), "f": ("5", 0.95)}


def chains_script(key):
    if not key:  # the first thought of six chains
        return [("<expansion>", f"chain {name}", 0.5) for name in CHAINS]
    answer, _ = CHAINS[key[0][-1]]
    return [("<conclusion>", "The answer is \\boxed{" + answer + "}", 0.9)]


def chains_value(key):
    return math.log(0.5) if len(key) == 1 else math.log(CHAINS[key[0][-1]][1])


@pytest.mark.parametrize("vote,answer", [("majority", "9"), ("weighted", "7"), ("best_value", "5")])
def test_best_of_n_answers_by_its_vote(vote, answer):
    # majority: 9 has three votes; weighted by exp(V): 7 has 0.9 + 0.8 = 1.7, 5 has 0.95, 9 has 0.9; best value: 5
    policy = ScriptedPolicy(chains_script, chains_value)
    (result,) = search(policy, [QUESTION], SearchConfig(method="best_of_n", n=6, vote=vote))
    assert result.answer == answer and result.method == "best_of_n"
    tree = result.tree
    assert len(tree.root.children) == 6 and all(len(c.children) == 1 for c in tree.root.children)
    assert policy.propose_calls == [[6], [1] * 6]  # the root forked six ways, then each chain on its own
    assert tree.node(result.path[-1]).text == "The answer is \\boxed{" + answer + "}"
    assert result.spent.generated == sum(len(n.tokens) for n in tree.nodes)
    assert result.spent.value == sum(len(p.split()) for p in policy.value_prompts)


def test_best_of_n_ties_go_to_the_first_chain_not_to_the_first_chain_to_end():
    """Chain 0 answers 5 after two thoughts, chain 1 answers 7 at once: a 1-1 majority tie goes to the answer seen
    first, chain 0's, as with a policy that rolls chains out whole (which lists the ends in chain order)."""
    def script(key):
        if not key:
            return [("<expansion>", "chain zero", 0.5), ("<conclusion>", "The answer is \\boxed{7}", 0.5)]
        return [("<conclusion>", "The answer is \\boxed{5}", 0.5)]

    (result,) = search(ScriptedPolicy(script, lambda key: math.log(0.8)), [QUESTION],
                       SearchConfig(method="best_of_n", n=2, vote="majority"))
    assert result.answer == "5" and len(result.path) == 3


# -- greedy and MCTS on the decoy script ----------------------------------------------------------------
def test_greedy_follows_the_most_likely_thoughts_and_mcts_does_better():
    script, value, correct = decoy_script()
    policy = ScriptedPolicy(script, value)
    greedy, = search(policy, [QUESTION], SearchConfig(method="greedy"))
    assert policy.propose_calls == [[1], [1], [1]]  # one thought per step
    assert path_key(greedy.tree.path(greedy.tree.node(greedy.path[-1]))) == (
        "<expansion>decoy step 0", "<expansion>decoy step 1", "<conclusion>The answer is \\boxed{10}")
    assert greedy.answer == "10" and grade([greedy], ["9"]) == [False]
    best, = search(ScriptedPolicy(script, value), [QUESTION],
                   SearchConfig(method="mcts", mcts=MCTSConfig(num_candidates=3, max_children=3, patient=1)))
    assert best.answer == "9" and grade([best], ["9"]) == [True] and best.simulations == 4


def test_greedy_stops_at_max_depth_without_an_answer():
    def endless(key):
        return [("<expansion>", f"step {len(key)}", 0.5)]

    result, = search(ScriptedPolicy(endless, lambda key: 0.0), [QUESTION], SearchConfig(method="greedy", max_depth=3))
    assert result.answer is None and len(result.tree.nodes) == 4 and result.tree.nodes[-1].terminal == "failure"


# -- beam search ---------------------------------------------------------------------------------------
BEAM = {  # thought -> (children, value); a name starting with "=" is a conclusion with that answer
    "": (["A", "B", "C"], None),
    "A": (["A1", "A2", "=1"], 0.9), "B": (["B1", "B2", "B3"], 0.3), "C": (["=2", "C2", "C3"], 0.6),
    "A1": (["=3", "A1b", "A1c"], 0.5), "A2": ([], 0.4), "=1": ([], 0.2),
    "=2": ([], 0.7), "C2": ([], 0.1), "C3": ([], 0.35),
    "=3": ([], 0.8), "A1b": (["=4", "=5", "=6"], 0.6), "A1c": ([], 0.05),
    "=4": ([], 0.3), "=5": ([], 0.2), "=6": ([], 0.1),
}


def beam_script(key):
    last = key[-1].split(">", 1)[1] if key else ""
    children = BEAM.get(last, (["X", "Y", "Z"], 0.5))[0]
    return [("<conclusion>", "The answer is \\boxed{" + c[1:] + "}", 0.5) if c.startswith("=") else ("<expansion>", c, 0.5)
            for c in children]


def beam_value(key):
    text = key[-1].split(">", 1)[1]
    name = "=" + text[len("The answer is \\boxed{"):-1] if text.startswith("The answer") else text
    return math.log(BEAM.get(name, ([], 0.5))[1])


def slip_script(key):
    """Greedy writes 7 + 5 = 13 (prior .8); of the steps that hold, 5 + 7 = 12 (.4) is likelier than 7 + 5 = 12 (.3)."""
    if not key:
        return [("<expansion>", "7 + 5 = 13", 0.8), ("<expansion>", "7 + 5 = 12", 0.3), ("<expansion>", "5 + 7 = 12", 0.4)]
    if len(key) == 1:
        return [("<expansion>", "12 - 3 = 9", 0.6), ("<expansion>", "12 - 3 = 8", 0.3)]
    return [("<conclusion>", "The answer is \\boxed{9}", 0.9)]


def test_checked_greedy_replaces_a_rejected_step_by_the_likeliest_that_holds():
    policy = ScriptedPolicy(slip_script, lambda key: 0.0)
    (result,) = checked_greedy(policy, [QUESTION], equations_hold, k=4)
    path = result.tree.path(result.tree.node(result.path[-1]))
    assert path_key(path) == ("<expansion>5 + 7 = 12", "<expansion>12 - 3 = 9", "<conclusion>The answer is \\boxed{9}")
    assert result.answer == "9" and result.method == "checked_greedy"
    # greedy's step, rejected; four samples of it (13, 12, 12', 13 in script order); then greedy twice, no value calls
    assert policy.propose_calls == [[1], [4], [1], [1]] and policy.evaluate_calls == []
    assert path[1].id == 3  # the sample's header named id 1 + 2 (the third of the four), and it keeps that id
    assert len(result.tree.nodes) == 4  # the rejected step and the samples not taken are not in the tree
    assert result.spent.generated == 6 + 4 * 6 + 6 + 5  # a scripted thought: one token per word and <end_of_thought>
    plain, = checked_greedy(ScriptedPolicy(slip_script, lambda key: 0.0), [QUESTION], None)  # no checker: plain greedy
    assert path_key(plain.tree.path(plain.tree.node(plain.path[-1])))[0] == "<expansion>7 + 5 = 13"


def test_checked_greedy_ends_without_an_answer_where_no_sample_holds():
    def wrong(key):
        return [("<expansion>", "7 + 5 = 13", 0.8), ("<expansion>", "7 + 5 = 11", 0.2)]
    policy = ScriptedPolicy(wrong, lambda key: 0.0)
    (result,) = checked_greedy(policy, [QUESTION], equations_hold, k=3)
    assert result.answer is None and result.path == [result.tree.root.id] and policy.propose_calls == [[1], [3]]


def test_beam_search_keeps_the_best_n_of_all_expansions():
    # width 2, 3 thoughts per beam. Depth 1: A .9, C .6 kept, B .3 dropped. Depth 2: of A1 .5, A2 .4, =1 .2,
    # =2 .7, C2 .1, C3 .35 the best two are =2 (finished) and A1. Depth 3: =3 .8 (finished) and A1b .6.
    # Depth 4: =4 .3 and =5 .2 finish, the beam is empty. Best finished: =3.
    policy = ScriptedPolicy(beam_script, beam_value)
    result, = search(policy, [QUESTION], SearchConfig(method="beam", n=2, expand=3))
    tree = result.tree
    expanded = {n.text for n in tree.nodes if n.children and n.parent is not None}
    assert expanded == {"A", "C", "A1", "A1b"}
    assert policy.propose_calls == [[3], [3, 3], [3], [3]]
    assert result.answer == "3" and [tree.node(i).text for i in result.path[1:]] == ["A", "A1", "The answer is \\boxed{3}"]


def test_beam_search_takes_a_pluggable_scorer():
    # a scorer that prefers low values (a stand-in for a process preference model) keeps B .3 and C .6
    seen = []

    def scorer(paths):
        seen.append([p[-1].text for p in paths])
        return [-p[-1].value for p in paths]

    result, = search(ScriptedPolicy(beam_script, beam_value), [QUESTION], SearchConfig(method="beam", n=2, expand=3, max_depth=2),
                     scorer=scorer)
    assert seen[0] == ["A", "B", "C"]
    assert {n.text for n in result.tree.root.children if n.children} == {"B", "C"}
    # the scorer also picks the answer. Scoring conclusions by -V (expansions by V) keeps A and C at depth 1, then
    # =1 (-log .2 = 1.609) and =2 (-log .7 = 0.357), both finished: =1 wins, though =2 has the better value
    def contrary(paths):
        return [-p[-1].value if p[-1].meta == "<conclusion>" else p[-1].value for p in paths]

    result, = search(ScriptedPolicy(beam_script, beam_value), [QUESTION], SearchConfig(method="beam", n=2, expand=3),
                     scorer=contrary)
    assert result.answer == "1"


def test_methods_run_problems_in_lockstep():
    script, value, _ = decoy_script()
    policy = ScriptedPolicy(script, value)
    config = SearchConfig(method="beam", n=2, expand=3)
    results = search(policy, [QUESTION, QUESTION + " Then?"], config)
    solo_policy = ScriptedPolicy(script, value)
    solo, = search(solo_policy, [QUESTION], config)
    assert policy.propose_calls[:2] == [[3, 3], [3, 3, 3, 3]]  # one call per step for both problems' beams
    assert policy.propose_calls == [call * 2 for call in solo_policy.propose_calls]
    assert results[0].tree.to_json() == solo.tree.to_json() and results[0].spent == solo.spent
    assert results[1].answer == solo.answer


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="method"):
        SearchConfig(method="dfs")
    with pytest.raises(ValueError, match="vote"):
        SearchConfig(vote="mean")
    for field in ("n", "expand", "max_depth"):  # beam with n=-1 kept all but the worst; n=0 answered nothing
        for bad in (0, -1):
            with pytest.raises(ValueError, match=rf"SearchConfig.{field}={bad}, expected at least 1"):
                SearchConfig(**{field: bad})


# -- LMPolicy: a real (tiny, random) model through the engine ------------------------------------------
@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=2), seed=1, std=0.1)


def counting(monkeypatch, name):
    calls, real = [], getattr(policy_module, name)

    def wrapper(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(policy_module, name, wrapper)
    return calls


def test_a_policy_refuses_thoughts_of_no_tokens_and_search_names_a_short_proposal(model, tiny_tokenizer):
    """max_thought_tokens 0 would give empty thoughts (and divide by their length): refused by value. A policy
    that answers a request of k with fewer candidates is named as the cause."""
    with pytest.raises(ValueError, match="max_thought_tokens must be at least 1, got 0"):
        LMPolicy(model, tiny_tokenizer, max_thought_tokens=0)

    class Short(ScriptedPolicy):
        def propose(self, requests):
            return [c[:1] for c in super().propose(requests)]

    script, value, _ = decoy_script()
    policy = Short(script, value)
    with pytest.raises(RuntimeError, match="policy.propose returned 1 candidates for a request of 2"):
        search(policy, ["q"], SearchConfig(method="beam", n=1, expand=2))

    class Empty(ScriptedPolicy):  # checked_greedy's greedy step and its fixes are proposals too
        def propose(self, requests):
            return [[] for _ in requests]

    with pytest.raises(RuntimeError, match="policy.propose returned 0 candidates for a request of 1"):
        checked_greedy(Empty(script, value), ["q"], None)

    class Yields(ScriptedPolicy):  # candidates yielded, not listed, are as good
        def propose(self, requests):
            yield from (iter(c) for c in super().propose(requests))

    assert search(Yields(script, value), ["q"], SearchConfig(method="beam", n=1, expand=2))[0].answer is not None
    assert checked_greedy(Yields(script, value), ["q"], None)[0].answer is not None

    class Fewer(ScriptedPolicy):  # answers fewer requests than it was given
        def propose(self, requests):
            return super().propose(requests)[:-1]

    with pytest.raises(RuntimeError, match="policy.propose returned candidates for 1 of 2 requests"):
        search(Fewer(script, value), ["q", "q"], SearchConfig(method="beam", n=1, expand=2))


def test_lm_policy_one_generate_and_one_value_call_per_round(model, tiny_tokenizer, monkeypatch):
    generate_calls, feed_calls = counting(monkeypatch, "generate"), counting(monkeypatch, "feed")  # feed: the value pass
    policy = LMPolicy(model, tiny_tokenizer, max_thought_tokens=4, seed=0)
    config = MCTSConfig(simulations=3, num_candidates=3, max_children=3, patient=100, max_depth=3)
    results = mcts(policy, ["Tom has 12 apples.", "A box holds 6 pens."], config)
    rounds = len(generate_calls)  # a round whose selected leaves are all terminal expands nothing
    assert rounds == 3 and len(feed_calls) == 2 * rounds  # parents, then children
    rows = [len(args[1]) * kwargs["num_samples"] for args, kwargs in generate_calls]
    assert rows == [len(args[2]) for args, _ in feed_calls[1::2]]  # every new thought rated in its own round
    assert sum(rows) == sum(len(r.tree.nodes) - 1 for r in results)
    # one prompt per tree, prefilled once and forked 3 ways
    assert all(len(args[1]) == 2 and kwargs["num_samples"] == 3 for args, kwargs in generate_calls)
    for r in results:
        nodes = r.tree.nodes[1:]
        assert r.spent.generated == sum(len(n.tokens) for n in nodes)
        assert r.spent.value == sum(len(tiny_tokenizer.encode(value_prompt(r.tree.path(n)))) for n in nodes)
        # each expanded parent's lines are prefilled once; each child adds its own header (its id, its meta)
        prompt_tokens = 0
        for parent in {n.parent for n in nodes}:
            head = len(tiny_tokenizer.encode(render_path(r.tree.path(parent)) + "\n"))
            prompts = [policy_prompt(r.tree.path(parent), c.id) for c in parent.children]
            prompt_tokens += head + sum(len(tiny_tokenizer.encode(p)) - head for p in prompts)
        assert r.spent.prompt == prompt_tokens


def test_lm_policy_logprobs_priors_and_entropies_are_aligned(model, tiny_tokenizer):
    tok = tiny_tokenizer
    tree = Tree("Tom has 12 apples.")
    policy = LMPolicy(model, tok, temperature=0.7, max_thought_tokens=6, seed=0)
    request = Request(tree, tree.root, [None, None, "<critic>", "<critic>"], [None, None, "Check it.", "Check it."])
    candidates = policy.propose([request])[0]
    assert len(set(c.prior for c in candidates)) == 4  # every candidate keeps its own probability
    for j, c in enumerate(candidates):
        assert c.prompt == request.prompt(j) and c.meta != "" and len(c.logprobs) == len(c.tokens)
        prompt = tok.encode(c.prompt)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + c.tokens]))[0].float()
        at = logits[len(prompt) - 1: len(prompt) - 1 + len(c.tokens)]  # logits before each generated token
        raw = torch.log_softmax(at, -1).gather(-1, torch.tensor(c.tokens)[:, None])[:, 0]
        scaled = torch.log_softmax(at / 0.7, -1).gather(-1, torch.tensor(c.tokens)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(c.logprobs), scaled, atol=1e-5)  # PPO's old log-probs
        assert c.prior == pytest.approx(raw.mean().exp().item(), rel=1e-5)  # exp(mean log-prob), temperature 1
        p = torch.softmax(at, -1)
        assert c.entropy == pytest.approx(-(p * p.log()).sum(-1).mean().item(), rel=1e-4)
        entropy = -(p * p.log()).sum(-1, keepdim=True)  # varentropy: sum p (log p + H)^2, averaged over the tokens
        assert c.varentropy == pytest.approx((p * (p.log() + entropy) ** 2).sum(-1).mean().item(), rel=1e-4)
    head = len(tok.encode(render_path([tree.root]) + "\n"))  # the shared prefix is prefilled once, for candidate 0
    assert [c.prompt_tokens for c in candidates] == [len(tok.encode(c.prompt)) - head + (head if j == 0 else 0)
                                                     for j, c in enumerate(candidates)]
    assert [int(re.search(r"<start_of_local_id>(\d+)", c.prompt[len(render_path([tree.root])):]).group(1))
            for c in candidates] == [1, 2, 3, 4]  # each candidate's header names its own id
    assert candidates[2].meta == "<critic>" and "<hint>Check it.</hint>" in candidates[2].prompt


def test_lm_policy_values_equal_rating_values(model, tiny_tokenizer):
    # the parent's lines are prefilled once and forked to its children; the numbers must not change
    trees = [Tree("Tom has 12 apples."), Tree("A box holds 6 pens. How many?")]
    for tree in trees:
        a = tree.add(tree.root, "<expansion>", "12 + 35 = 47")
        tree.add(tree.root, "<critic>", "not yet", rating="negative")
        tree.add(a, "<conclusion>", "The answer is \\boxed{47}")
        tree.add(a, "<expansion>", "47 - 2 = 45")
    paths = [tree.path(n) for tree in trees for n in tree.nodes]  # roots, siblings, two levels, two trees
    for batch_size in (32, 3):
        values, tokens = LMPolicy(model, tiny_tokenizer, value_batch_size=batch_size).evaluate(paths)
        expected = rating_values(model, tiny_tokenizer, paths)
        assert torch.allclose(torch.tensor(values), expected, atol=1e-5)
        assert tokens == [len(tiny_tokenizer.encode(value_prompt(p))) for p in paths]


def test_lm_policy_requests_of_different_sizes_each_get_their_own(model, tiny_tokenizer):
    """Requests for 1 and 3 thoughts in one round cannot share one fork count: each gets its own number of
    candidates, each sampled after its own prompt (greedy: the same as the request proposed alone)."""
    trees = [Tree("Tom has 12 apples."), Tree("A box holds 6 pens.")]
    requests = [Request(trees[0], trees[0].root, [None], [None], temperature=0.0),
                Request(trees[1], trees[1].root, [None, "<critic>", None], [None, None, "Check it."],
                        temperature=0.0)]
    policy = LMPolicy(model, tiny_tokenizer, max_thought_tokens=4, seed=0)
    together = policy.propose(requests)
    assert [len(cands) for cands in together] == [1, 3]
    for request, cands in zip(requests, together):
        assert [c.prompt for c in cands] == [request.prompt(j) for j in range(request.k)]
        (alone,) = policy.propose([request])
        assert [c.tokens for c in cands] == [c.tokens for c in alone]


def test_lm_policy_values_prefill_each_parent_once(model, tiny_tokenizer, monkeypatch):
    """The value pass prefills one prefix per parent (a root alone from <bos>): a root, its two children and a
    grandchild have 3 prefixes (the root's <bos>, the root's lines, the child's lines), then 4 rows are forked."""
    tree = Tree("Tom has 12 apples.")
    a = tree.add(tree.root, "<expansion>", "12 + 35 = 47")
    tree.add(tree.root, "<critic>", "not yet", rating="negative")
    tree.add(a, "<conclusion>", "The answer is \\boxed{47}")
    feed_calls = counting(monkeypatch, "feed")
    LMPolicy(model, tiny_tokenizer).evaluate([tree.path(n) for n in tree.nodes])
    assert [len(args[2]) for args, _ in feed_calls] == [3, 4]


def test_lm_policy_values_read_from_bos_where_the_parent_is_no_prefix(model, tiny_tokenizer):
    """A tokenizer whose encoding of the parent's lines is no prefix of the child's sequence (here: an extra token
    after a final newline) gets no forked prefix: every path is read from <bos>, and values equal rating_values."""
    class Trailing:
        def __getattr__(self, name):
            return getattr(tiny_tokenizer, name)

        def encode(self, text, **kwargs):
            ids = tiny_tokenizer.encode(text, **kwargs)
            return ids + [tiny_tokenizer.pad_id] if text.endswith("\n") else ids

    tree = Tree("Tom has 12 apples.")
    a = tree.add(tree.root, "<expansion>", "12 + 35 = 47")
    tree.add(a, "<conclusion>", "The answer is \\boxed{47}")
    paths = [tree.path(n) for n in tree.nodes]
    values, _ = LMPolicy(model, Trailing()).evaluate(paths)
    assert torch.allclose(torch.tensor(values), rating_values(model, tiny_tokenizer, paths), atol=1e-5)


def test_lm_policy_rollout_candidates_keep_their_own_slice_of_the_generation(model, tiny_tokenizer, monkeypatch):
    """A rollout at temperature 0.7, 2 chains from a root and 2 from a node at depth 2, max_depth 3, thoughts cut at
    4 tokens (the random model writes no <conclusion>): chains of 3 and 1 thoughts. Each thought keeps its own run
    of sampled tokens and their statistics from the row (scaled log-probs, prior exp(mean raw log-prob), mean
    entropy and varentropy); the shared prompt is counted once, each header with its own row's first thought."""
    trees = [Tree("Tom has 12 apples."), Tree("A box holds 6 pens.")]
    deep = trees[1].add(trees[1].add(trees[1].root, "<expansion>", "6 pens"), "<expansion>", "4 boxes")
    calls, rows = [], []
    real = policy_module.generate

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        rows.extend(real(*args, **kwargs))
        return rows[-len(args[1]) * kwargs["num_samples"]:]

    monkeypatch.setattr(policy_module, "generate", spy)
    policy = LMPolicy(model, tiny_tokenizer, temperature=0.7, max_thought_tokens=4, seed=0)
    chains = policy.rollout([Request(trees[0], trees[0].root, [None] * 2, [None] * 2),
                             Request(trees[1], deep, [None] * 2, [None] * 2)], max_depth=3)
    assert [[len(chain) for chain in per_request] for per_request in chains] == [[3, 3], [1, 1]]
    (args, kwargs), = calls
    prompts, suffixes = args[1], kwargs["suffixes"]
    for n, (row, chain) in enumerate(zip(rows, [chain for per_request in chains for chain in per_request])):
        starts = [t for t, f in enumerate(row.forced) if not f and (t == 0 or row.forced[t - 1])]  # each thought's
        assert len(starts) == len(chain)
        for j, (c, s) in enumerate(zip(chain, starts)):
            part = slice(s, s + len(c.tokens))
            assert c.tokens == row.tokens[part] and c.logprobs == row.scaled_logprobs[part]
            assert c.prior == pytest.approx(math.exp(sum(row.logprobs[part]) / len(c.tokens)), rel=1e-6)
            assert c.prior != pytest.approx(math.exp(sum(row.scaled_logprobs[part]) / len(c.tokens)), rel=1e-3)
            assert c.entropy == pytest.approx(sum(row.entropy[part]) / len(c.tokens), rel=1e-6)
            assert c.varentropy == pytest.approx(sum(row.varentropy[part]) / len(c.tokens), rel=1e-6)
            assert c.prompt_tokens == (0 if j else (len(prompts[n // 2]) if n % 2 == 0 else 0) + len(suffixes[n]))


@pytest.mark.parametrize("method", ["greedy", "best_of_n", "beam", "mcts"])
def test_every_method_runs_end_to_end_on_a_real_model(model, tiny_tokenizer, method):
    config = SearchConfig(method=method, n=2, expand=2, max_depth=3,
                          mcts=MCTSConfig(simulations=2, num_candidates=2, max_children=2, max_depth=3))
    questions = ["Tom has 12 apples.", "A box holds 6 pens."]

    def run():
        return search(LMPolicy(model, tiny_tokenizer, max_thought_tokens=4, seed=0), questions, config)

    results = run()
    again = run()
    assert len(results) == 2
    for r, s in zip(results, again):
        assert r.method == method and (r.answer is None or isinstance(r.answer, str))
        assert r.tree.to_json() == s.tree.to_json()  # seeded
        nodes = r.tree.nodes[1:]
        assert nodes and r.spent.generated == sum(len(n.tokens) for n in nodes) and r.spent.prompt > 0
        assert (r.spent.value > 0) == (method in ("beam", "mcts"))  # greedy and majority votes read no values
        assert [n.id for n in r.tree.path(r.tree.node(r.path[-1]))] == r.path


@pytest.fixture(scope="module")
def format_model(tiny_tokenizer):
    """A tiny model trained for a few seconds on worked chains: it ends its thoughts and writes conclusions."""
    import random

    from nanoo1.sft import SFTConfig, make_batches, thought_example, train_sft
    from nanoo1.tasks import make_problems

    torch.manual_seed(0)
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=2), std=0.02).train()
    batches = make_batches(make_problems(64, seed=3), lambda p, rng: thought_example(p, tiny_tokenizer, rng), 16,
                           random.Random(0), tiny_tokenizer.pad_id)
    train_sft(model, batches, SFTConfig(steps=60, batch_size=16, bf16=False, warmup=5), progress=False)
    return model.requires_grad_(False).eval()


def test_checked_greedy_on_the_warm_start_rolls_out_what_greedy_writes_and_fixes_its_slips():
    from nanoo1.checkpoint import load_pretrained
    from nanoo1.tasks import TINY_DIR, load_jsonl

    model, tok = load_pretrained(TINY_DIR / "warmstart", dtype="float32")
    questions = [p.question for p in load_jsonl(TINY_DIR / "test.jsonl")[:12]]

    class ThoughtByThought:  # LMPolicy without `rollout`: one propose call per thought
        def __init__(self, inner):
            self.propose, self.evaluate = inner.propose, inner.evaluate

    def chains(results):
        return [[(n.id, n.meta, n.text) for n in r.tree.path(r.tree.node(r.path[-1]))] for r in results]

    policy = LMPolicy(model, tok, temperature=0.7, max_thought_tokens=32, seed=0)
    plain = search(policy, questions, SearchConfig(method="greedy"))
    # without a checker: greedy, whether rolled out in one generation per round or grown thought by thought
    assert chains(checked_greedy(policy, questions, None)) == chains(plain)
    assert chains(checked_greedy(ThoughtByThought(policy), questions, None)) == chains(plain)
    checked = checked_greedy(policy, questions, equations_hold)
    assert all(equations_hold(n.text) for r in checked for n in r.tree.nodes[1:])  # only accepted thoughts are kept
    fixed = [r for r, g in zip(checked, plain) if r.path != g.path]
    assert fixed and all(len(r.tree.nodes) == len(r.path) for r in checked if r.answer is not None)  # one chain per tree


def test_rollout_equals_thought_by_thought_generation(format_model, tiny_tokenizer):
    """A greedy rollout (one cached generation, headers forced) writes the same thoughts as generating each
    thought from its own freshly rendered prompt (ancestors rated positive)."""
    tok, model = tiny_tokenizer, format_model
    policy = LMPolicy(model, tok, max_thought_tokens=16, seed=0)
    tree = Tree("Tom has 12 apples. He buys 3 more. How many apples does Tom have now?")
    (chains,) = policy.rollout([Request(tree, tree.root, [None], [None], temperature=0.0)], max_depth=4)
    (chain,) = chains
    assert [c.node_id for c in chain] == list(range(1, len(chain) + 1)) and len(chain) >= 2
    path = [tree.root]
    for c in chain:
        prompt = tok.encode(policy_prompt(path, c.node_id))
        (row,) = generate(model, [prompt], 16, stop_token_ids=[tok.token_id("<end_of_thought>")])
        assert row.tokens == c.tokens
        assert c.logprobs == pytest.approx(row.scaled_logprobs, abs=1e-5)
        path.append(tree.add(path[-1], c.meta, c.text))
    # three chains of one tree: ids from one counter, each thought's header names its own id
    tree = Tree("A box holds 6 pens.")
    (chains,) = policy.rollout([Request(tree, tree.root, [None] * 3, [None] * 3, temperature=1.0)], max_depth=3)
    ids = sorted(c.node_id for chain in chains for c in chain)
    assert ids == list(range(1, len(ids) + 1)) and [chain[0].node_id for chain in chains] == [1, 2, 3]
    # one generate call samples at one temperature: requests that ask for two are refused, not sampled at the first's
    with pytest.raises(ValueError, match="same temperature"):
        policy.rollout([Request(tree, tree.root, [None], [None], temperature=t) for t in (0.0, 1.0)], max_depth=3)


def test_max_rows_splits_sampling_into_calls_of_at_most_that_many_rows(format_model, tiny_tokenizer, monkeypatch):
    """A row limit changes how many sequences one generate call holds, not what greedy writes: the same thoughts,
    and ids from one counter per tree across the calls (two requests on one tree land in different calls)."""
    tok, model = tiny_tokenizer, format_model

    def run(max_rows):
        shared = Tree("Tom has 12 apples. He buys 3 more. How many apples does Tom have now?")
        trees = [shared, shared, Tree("A box holds 6 pens. How many pens do 3 boxes hold?")]
        calls = counting(monkeypatch, "generate")
        policy = LMPolicy(model, tok, max_thought_tokens=8, max_rows=max_rows, seed=0)
        requests = [Request(t, t.root, [None] * 2, [None] * 2, temperature=0.0) for t in trees]
        rolled = policy.rollout(requests, max_depth=3)
        proposed = policy.propose(requests)
        monkeypatch.undo()
        ids = sorted(c.node_id for chains in rolled[:2] for chain in chains for c in chain)  # the shared tree's
        assert ids == list(range(1, len(ids) + 1)) and len(ids) > 4
        rows = [len(args[1]) * kwargs["num_samples"] for args, kwargs in calls]
        return rows, [[c.tokens for c in chain] for chains in rolled for chain in chains], \
            [[c.tokens for c in cands] for cands in proposed]

    rows, rolled, proposed = run(0)
    assert rows == [6, 6]  # one call each for the three requests of 2 rows
    for limit, calls in ((4, [4, 2, 4, 2]), (3, [2, 2, 2, 2, 2, 2]), (1, [2, 2, 2, 2, 2, 2])):  # a request is never cut
        assert run(limit) == (calls, rolled, proposed)
