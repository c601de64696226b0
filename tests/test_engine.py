"""The generation engine: greedy against transformers, aligned log-probs, sampling, stops, fork, budgets."""

import math
import re

import pytest
import torch

from conftest import hf_twin, random_model
from nanoo1.device import check_device, hold_freed_memory, resolve_device
from nanoo1.engine import Completion, feed, generate, generate_budgeted, sample_next, token_stats
from nanoo1.model import Gemma2Config

CONFIG = Gemma2Config.preset("tiny", sliding_window=16)


@pytest.fixture(scope="module")
def model():
    return random_model(CONFIG, seed=0, std=0.1)  # large enough weights that greedy text varies


def prompts_of(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, CONFIG.vocab_size, (n,), generator=g).tolist() for n in lengths]


def test_greedy_equals_transformers_generate_past_the_window(model, tmp_path):
    hf = hf_twin(model, tmp_path)
    prompts = prompts_of([5, 19, 2])  # batched rows of different lengths; 64 new tokens > window 16
    results = generate(model, prompts, 64, stop_token_ids=[])
    for prompt, result in zip(prompts, results):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert result.tokens == ref[0, len(prompt):].tolist()
        assert result.finish_reason == "length" and len(result.tokens) == 64


def test_logprobs_are_aligned_with_a_full_forward(model):
    """The log-prob of new token j is log_softmax(logits at position len(prompt)+j-1)[token] (LLaMA-O1: off by one)."""
    prompt = prompts_of([7])[0]
    for temperature in (0.0, 0.7):
        (result,) = generate(model, [prompt], 12, temperature=temperature, seed=5, stop_token_ids=[])
        with torch.no_grad():
            logits = model(torch.tensor([prompt + result.tokens]))[0].float()
        positions = range(len(prompt) - 1, len(prompt) - 1 + len(result.tokens))
        raw = torch.log_softmax(logits, -1)
        scaled = torch.log_softmax(logits / (temperature or 1.0), -1)
        for j, (pos, tok) in enumerate(zip(positions, result.tokens)):
            assert abs(result.logprobs[j] - raw[pos, tok].item()) < 1e-5
            assert abs(result.scaled_logprobs[j] - scaled[pos, tok].item()) < 1e-5
            # the shifted reading (position of the token itself) is wrong, and would be caught
        off_by_one = [raw[pos + 1, tok].item() for pos, tok in zip(positions, result.tokens[:-1])]
        assert max(abs(a - b) for a, b in zip(off_by_one, result.logprobs)) > 1e-3


def test_token_stats_known_values():
    # p = (1/2, 1/4, 1/4): H = 0.5 ln2 + 2 * 0.25 ln4 = 1.5 ln2 = 1.039721
    # varentropy = sum p (-ln p - H)^2 = 0.5 (ln2 - 1.5ln2)^2 + 0.5 (2ln2 - 1.5ln2)^2 = 0.25 (ln2)^2 = 0.120113
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    lp, slp, ent, vent = token_stats(logits, torch.tensor([1]), temperature=2.0)
    assert abs(lp.item() - math.log(0.25)) < 1e-6
    # at temperature 2: p ∝ sqrt(p) = (0.7071, 0.5, 0.5) / 1.7071 -> p(1) = 0.292893
    assert abs(slp.item() - math.log(0.292893)) < 1e-5
    assert abs(ent.item() - 1.5 * math.log(2)) < 1e-6
    assert abs(vent.item() - 0.25 * math.log(2) ** 2) < 1e-6
    # uniform over 3 tokens: H = ln 3 and varentropy 0 (every -log p equals H); E[(log p)^2] - H^2 can round below 0
    # in float32 (it does here), and a variance is never negative
    _, _, ent, vent = token_stats(torch.zeros(1, 3), torch.tensor([0]), temperature=1.0)
    assert abs(ent.item() - math.log(3)) < 1e-6 and 0.0 <= vent.item() < 1e-6


def test_sample_next_greedy_top_k_top_p():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.3, 0.15]]))
    assert sample_next(logits).item() == 1
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=1, generator=g).item() for _ in range(50)} == {1}
    # top_p = 0.7: keep token 1 (mass before it 0) and token 2 (mass before 0.5 < 0.7), drop 3 (0.8 >= 0.7)
    draws = torch.stack([sample_next(logits.expand(1000, 4), 1.0, top_p=0.7, generator=g) for _ in range(4)]).flatten()
    counts = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert counts[0] == 0 and counts[3] == 0
    assert abs(counts[1].item() - 0.5 / 0.8) < 0.03  # renormalised: 0.625 and 0.375
    # the smallest set whose mass reaches top_p, as transformers' TopPLogitsWarper: 0.5 reaches 0.5 alone
    halves = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).expand(200, 3)
    assert set(sample_next(halves, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    # top_k = 3 at temperature 1: frequencies 0.5, 0.3, 0.15 renormalised by 0.95
    draws = torch.stack([sample_next(logits.expand(1000, 4), 1.0, top_k=3, generator=g) for _ in range(8)]).flatten()
    counts = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert counts[0] == 0 and abs(counts[3].item() - 0.15 / 0.95) < 0.02
    # top_k = 0 limits nothing (transformers' convention): every token is drawn
    assert set(sample_next(logits.expand(1000, 4), 1.0, top_k=0, generator=g).tolist()) == {0, 1, 2, 3}
    for temperature in (1.0, 0.0):  # refused when greedy too
        with pytest.raises(ValueError, match="top_k must be >= 0"):
            sample_next(logits, temperature, top_k=-1)
        with pytest.raises(ValueError, match=r"top_p must lie in \(0, 1\]"):
            sample_next(logits, temperature, top_p=-0.5)


def test_sampling_is_seeded(model):
    prompts = prompts_of([4, 6])
    a = generate(model, prompts, 10, temperature=1.0, num_samples=3, seed=7)
    b = generate(model, prompts, 10, temperature=1.0, num_samples=3, seed=7)
    c = generate(model, prompts, 10, temperature=1.0, num_samples=3, seed=8)
    assert [r.tokens for r in a] == [r.tokens for r in b]
    assert [r.tokens for r in a] != [r.tokens for r in c]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [r.tokens for r in generate(model, prompts, 5, temperature=1.0, generator=g1)] == \
           [r.tokens for r in generate(model, prompts, 5, temperature=1.0, generator=g2)]


def test_prompt_prefilled_once_and_forked(model):
    """num_samples=6 runs one prefill of the prompt, then steps of one token for the 6 rows."""
    calls = []
    original = model.hidden_states

    def spy(ids, *args, **kwargs):
        calls.append(tuple(ids.shape))
        return original(ids, *args, **kwargs)

    model.hidden_states = spy
    try:
        prompt = prompts_of([9])[0]
        results = generate(model, [prompt], 4, temperature=1.0, num_samples=6, stop_token_ids=[])
    finally:
        del model.hidden_states
    assert calls[0] == (1, 9) and all(shape == (6, 1) for shape in calls[1:]) and len(calls) == 4
    assert len(results) == 6 and all(r.prompt == prompt for r in results)
    assert len({tuple(r.tokens) for r in results}) > 1  # the forks really sample independently


def test_batched_rows_equal_one_at_a_time(model):
    prompts = prompts_of([3, 11, 6])
    together = generate(model, prompts, 20, stop_token_ids=[])
    for prompt, row in zip(prompts, together):
        assert generate(model, [prompt], 20, stop_token_ids=[])[0].tokens == row.tokens


def test_generate_runs_under_cpu_autocast(model):
    # the projections come out in bfloat16 while the cache keeps the model's float32: the cache casts on write
    # (both ways of writing: rows of different lengths, then rows forked from one prompt, all at one slot)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rows = generate(model, prompts_of([3, 11]), 8, stop_token_ids=[]) + \
            generate(model, prompts_of([5]), 8, temperature=1.0, num_samples=3, stop_token_ids=[])
    assert all(len(r.tokens) == 8 and all(math.isfinite(x) for x in r.logprobs) for r in rows)


def test_stop_tokens_and_strings_per_row(model, tiny_tokenizer):
    prompt = prompts_of([5])[0]
    (free,) = generate(model, [prompt], 30, stop_token_ids=[])
    stop_tok = free.tokens[6]
    first = free.tokens.index(stop_tok)
    (stopped,) = generate(model, [prompt], 30, stop_token_ids=[stop_tok])
    assert stopped.tokens == free.tokens[:first + 1] and stopped.finish_reason == "stop_token"
    # per-row stop ids: only the second row stops early
    rows = generate(model, [prompt, prompt], 30, stop_token_ids=[[], [stop_tok]])
    assert rows[0].tokens == free.tokens and rows[1].tokens == stopped.tokens
    # stop strings: cut the text right after the first occurrence
    text = tiny_tokenizer.decode(free.tokens)
    needle = text[len(text) // 3: len(text) // 3 + 3]
    (s,) = generate(model, [prompt], 30, stop_token_ids=[], stop_strings=[needle], tokenizer=tiny_tokenizer)
    assert s.finish_reason == "stop_string" and s.text.endswith(needle) and s.text == text[: text.find(needle) + len(needle)]
    assert s.tokens == free.tokens[: len(s.tokens)] and len(s.tokens) < 30
    # one stop string or id given alone is one, as in transformers, not a list of its characters
    assert generate(model, [prompt], 30, stop_token_ids=[], stop_strings=needle, tokenizer=tiny_tokenizer) == [s]
    assert generate(model, [prompt], 30, stop_token_ids=stop_tok) == [stopped]
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [prompt], 3, stop_strings=["x"])
    # no sample of a prompt, or fewer than no tokens: refused with the values named (a KV cache overflow, or [],
    # before), as is an empty prompt
    for args, kw, said in [((prompt,), {"num_samples": 0}, "num_samples 0"), ((prompt,), {"num_samples": -2}, "num_samples -2"),
                           (([],), {}, "lengths [0]")]:
        with pytest.raises(ValueError, match=re.escape(said)):
            generate(model, list(args), 3, **kw)
    with pytest.raises(ValueError, match="room -1"):
        generate(model, [prompt], -1)


def test_a_stop_string_of_byte_pieces_is_found(tiny_tokenizer):
    """The stop string "é" is no piece of the tiny tokenizer: it is written as two byte tokens <0xC3><0xA9>, either
    one alone decoding to U+FFFD. The check decodes a tail wide enough to hold it: found once both are written."""
    from nanoo1.engine import _has_stop_string

    tokens = tiny_tokenizer.encode("12 + é", add_bos=False)
    assert tokens[-2:] == [tiny_tokenizer.token_id("<0xC3>"), tiny_tokenizer.token_id("<0xA9>")]
    assert _has_stop_string(tiny_tokenizer, tokens, ["é"])
    assert not _has_stop_string(tiny_tokenizer, tokens[:-1], ["é"])


def test_default_stop_is_eos(model):
    config = model.config
    prompt = prompts_of([5])[0]
    (free,) = generate(model, [prompt], 20, stop_token_ids=[])
    config.eos_token_id = free.tokens[3]
    try:
        (r,) = generate(model, [prompt], 20)
        config.eos_token_id = [1, free.tokens[3]]  # a chat model's list (<eos>, <end_of_turn>): either one stops
        (listed,) = generate(model, [prompt], 20)
    finally:
        config.eos_token_id = 1
    assert r.finish_reason == "stop_token" and r.tokens == free.tokens[: free.tokens.index(free.tokens[3]) + 1]
    assert listed.finish_reason == "stop_token" and listed.tokens == r.tokens


def test_budgeted_equals_two_plain_phases(model):
    """Greedy budgeted generation == think greedily (stop at </think>), force </think>, answer greedily."""
    prompts = prompts_of([4, 8, 6], seed=3)
    (probe,) = generate(model, [prompts[1]], 12, stop_token_ids=[])
    think_end = probe.tokens[4]  # a token row 1 emits on its own within the budget
    results = generate_budgeted(model, prompts, think_budget=8, solution_budget=5, think_end_id=think_end, stop_token_ids=[])
    for prompt, r in zip(prompts, results):
        (think,) = generate(model, [prompt], 8, stop_token_ids=[think_end])
        thought = think.tokens if think.finish_reason == "stop_token" else think.tokens + [think_end]
        (answer,) = generate(model, [prompt + thought], 5, stop_token_ids=[])
        assert r.tokens == thought + answer.tokens
        n = len(thought)
        assert r.forced == [False] * (n - 1) + [think.finish_reason != "stop_token"] + [False] * len(answer.tokens)
        assert len(r.logprobs) == len(r.tokens)
    assert results[1].forced.count(True) == 0 and results[0].forced.count(True) + results[2].forced.count(True) >= 1


def test_budgeted_zero_think_budget_and_eos_while_thinking(model):
    prompt = prompts_of([5], seed=4)[0]
    (r,) = generate_budgeted(model, [prompt], think_budget=0, solution_budget=3, think_end_id=9, stop_token_ids=[])
    assert r.tokens[0] == 9 and r.forced == [True, False, False, False]
    (r,) = generate_budgeted(model, [prompt], think_budget=3, solution_budget=0, think_end_id=9, stop_token_ids=[])
    assert len(r.tokens) == 4 and r.tokens[-1] == 9 and r.finish_reason == "length"  # no answer token sampled
    (free,) = generate(model, [prompt], 10, stop_token_ids=[])
    eos = free.tokens[2]
    (r,) = generate_budgeted(model, [prompt], think_budget=10, solution_budget=3, think_end_id=9, stop_token_ids=[eos])
    assert r.finish_reason == "stop_token" and 9 not in r.tokens and r.tokens[-1] == eos


def test_a_negative_budget_is_refused_by_name(model):
    """A negative budget would size the cache too small and fail later as a cache overflow; it is refused first."""
    prompt = prompts_of([5], seed=4)[0]
    with pytest.raises(ValueError, match="think_budget -3"):
        generate_budgeted(model, [prompt], think_budget=-3, solution_budget=4, think_end_id=9)
    with pytest.raises(ValueError, match="solution_budget -1"):
        generate_budgeted(model, [prompt], think_budget=4, solution_budget=-1, think_end_id=9)


def test_a_row_that_stops_in_its_answer_leaves_the_next_rows_limit_alone(model):
    """Row a ends on eos in its answer and leaves the batch; row b, compacted into its place, keeps its own limit."""
    b, _, a = prompts_of([4, 8, 6], seed=3)
    think_end = generate(model, [a], 1, stop_token_ids=[])[0].tokens[0]  # row a stops thinking at once
    kw = dict(think_budget=8, solution_budget=6, think_end_id=think_end)
    eos = generate_budgeted(model, [a], **kw, stop_token_ids=[])[0].tokens[1]  # row a's first answer token
    first, second = generate_budgeted(model, [a, b], **kw, stop_token_ids=[eos])
    assert first.tokens == [think_end, eos] and first.finish_reason == "stop_token"
    # row b thinks 8 tokens, is forced </think>, then answers its 6 tokens
    assert second.forced == [False] * 8 + [True] + [False] * 6
    assert second.tokens == generate_budgeted(model, [b], **kw, stop_token_ids=[eos])[0].tokens


def test_a_row_that_stops_while_thinking_keeps_the_paused_rows(model):
    """Row b pauses at </think> after 2 tokens; row a then ends on eos while thinking (after 7) and leaves the batch.
    Row b stays: it answers as it would alone, its 2 thought tokens then greedy answer tokens."""
    a, b = prompts_of([5, 7], seed=3)
    free_a, free_b = (generate(model, [p], 8, stop_token_ids=[])[0].tokens for p in (a, b))
    think_end, eos = free_b[1], free_a[6]
    assert think_end not in free_a[:7] and eos not in free_a[:6] + free_b[:2]  # so the rows stop where stated
    first, second = generate_budgeted(model, [a, b], think_budget=10, solution_budget=4, think_end_id=think_end,
                                      stop_token_ids=[eos])
    assert first.tokens == free_a[:7] and first.finish_reason == "stop_token"
    (answer,) = generate(model, [b + free_b[:2]], 4, stop_token_ids=[eos])
    assert answer.tokens and second.tokens == free_b[:2] + answer.tokens


def test_mean_logprob_leaves_out_forced_tokens():
    # the forced token's 0.0 is not the model's: (-1 - 2) / 2 = -1.5
    c = Completion(prompt=[1], tokens=[5, 6, 7], logprobs=[-1.0, 0.0, -2.0], forced=[False, True, False])
    assert c.mean_logprob == -1.5

def test_a_model_without_layers_generates():
    empty = random_model(Gemma2Config.preset("tiny", num_hidden_layers=0, layer_types=[]), seed=0, std=0.1)
    (r,) = generate(empty, [[5, 6, 7]], 3, stop_token_ids=[])
    assert len(r.tokens) == 3  # embeddings and the final norm alone: the next token of each token, greedily


def test_feed_appends_rows_of_different_lengths(model):
    cache = model.new_cache(2, 20)
    a, b = [5, 6, 7], [8, 9, 10, 11, 12]
    logits = feed(model, cache, [a, b])
    with torch.no_grad():
        assert (logits[0] - model(torch.tensor([a]))[0, -1]).abs().max() < 1e-5
        assert (logits[1] - model(torch.tensor([b]))[0, -1]).abs().max() < 1e-5
    logits = feed(model, cache, [[13, 14], []])  # row 1 adds nothing and keeps its length
    assert cache.lengths.tolist() == [5, 5]
    with torch.no_grad():
        assert (logits[0] - model(torch.tensor([a + [13, 14]]))[0, -1]).abs().max() < 1e-5


def test_suffixes_diverge_forks_after_one_prefill(model):
    """Rows forked from one prefill, each fed its own suffix, equal separate generations of prompt + suffix."""
    prompt = prompts_of([8], seed=6)[0]
    suffixes = [[11], [12, 13], [14]]
    calls = []
    original = model.hidden_states
    model.hidden_states = lambda ids, *a, **k: calls.append(tuple(ids.shape)) or original(ids, *a, **k)
    try:
        rows = generate(model, [prompt], 10, num_samples=3, suffixes=suffixes, stop_token_ids=[])
    finally:
        del model.hidden_states
    # the prompt once; then one token per row per step (the longer suffix's second token beside the others)
    assert calls[0] == (1, 8) and calls[1] == (3, 1) and all(c[1] == 1 for c in calls[1:])
    for suffix, row in zip(suffixes, rows):
        assert row.prompt == prompt + suffix
        assert row.tokens == generate(model, [prompt + suffix], 10, stop_token_ids=[])[0].tokens
    with pytest.raises(ValueError, match="suffixes"):
        generate(model, [prompt], 3, num_samples=2, suffixes=[[1]])


def test_suffixes_of_several_tokens_go_in_one_step(model):
    """Every row has 2 or more suffix tokens: the first 2 of each go in one (2, 2) step, then the longer suffix's
    last token beside the other row's first sample, one token per row."""
    prompt = prompts_of([8], seed=6)[0]
    calls = []
    original = model.hidden_states
    model.hidden_states = lambda ids, *a, **k: calls.append(tuple(ids.shape)) or original(ids, *a, **k)
    try:
        generate(model, [prompt], 3, num_samples=2, suffixes=[[11, 12], [13, 14, 15]], stop_token_ids=[])
    finally:
        del model.hidden_states
    assert calls[:3] == [(1, 8), (2, 2), (2, 1)]


def test_on_stop_forces_a_continuation(model):
    """Greedy: stop on X, force (Y, Z) once, go on until X again == the same in two plain generations."""
    prompt = prompts_of([5], seed=7)[0]
    (free,) = generate(model, [prompt], 12, stop_token_ids=[])
    X = free.tokens[3]
    forced_once = []

    def on_stop(i, row, token):
        assert i == 0 and row.tokens[-1] == token
        if forced_once:
            return None
        forced_once.append(token)
        return [21, 22]

    (r,) = generate(model, [prompt], 40, stop_token_ids=[X], on_stop=on_stop)
    first = free.tokens[: free.tokens.index(X) + 1]
    (rest,) = generate(model, [prompt + first + [21, 22]], 40 - len(first) - 2, stop_token_ids=[X])
    assert r.tokens == first + [21, 22] + rest.tokens
    assert r.forced == [False] * len(first) + [True, True] + [False] * len(rest.tokens)
    assert r.finish_reason == rest.finish_reason
    (ended,) = generate(model, [prompt], 40, stop_token_ids=[X], on_stop=lambda i, row, t: [])
    assert ended.tokens == first and ended.finish_reason == "stop_token"  # [] ends the row, as None does
    # max_new_tokens counts forced tokens too: a row never holds more, forced tokens past it are cut
    (short,) = generate(model, [prompt], len(first) + 1, stop_token_ids=[X], on_stop=lambda i, row, t: [21, 22, 23])
    assert short.tokens == first + [21] and short.forced[-1] and short.finish_reason == "length"
    (full,) = generate(model, [prompt], len(first), stop_token_ids=[X], on_stop=lambda i, row, t: [21, 22, 23])
    assert full.tokens == first and full.finish_reason == "length"  # the stop token filled it: nothing forced


def test_generate_cli_passes_its_flags_to_the_engine_and_prints_each_sample(monkeypatch, capsys):
    """`python -m nanoo1.generate` without --checkpoint: the tiny random model of --seed in --dtype, the chat prompt
    encoded, the limits at their no-limit ends (top-k 0, top-p 1) accepted, stops on <eos> and <end_of_turn>, and
    each sample printed after the prompt; out-of-range flags are refused by name; the defaults sample greedily."""
    import nanoo1.generate as cli

    calls, real = [], cli.generate
    monkeypatch.setattr(cli, "generate", lambda *a, **k: calls.append((a, k, real(*a, **k))) or calls[-1][2])
    cli.main(["--prompt", "Tom has", "--chat", "--dtype", "bfloat16", "--max-new-tokens", "5",
              "--temperature", "1.0", "--top-k", "0", "--top-p", "1.0", "--num-samples", "2", "--seed", "3"])
    (model, prompts, n), kwargs, results = calls[0]
    expected, tok = cli.tiny_random(3)
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert torch.equal(model.model.embed_tokens.weight, expected.model.embed_tokens.weight.to(torch.bfloat16))
    assert not torch.equal(expected.model.embed_tokens.weight, cli.tiny_random(4)[0].model.embed_tokens.weight)
    assert prompts == [tok.encode(tok.chat_prompt("Tom has"))] and n == 5
    stops = [tok.eos_id, tok.token_id("<end_of_turn>")]
    assert {k: kwargs[k] for k in ("temperature", "top_k", "top_p", "num_samples", "stop_token_ids", "seed")} == \
        dict(temperature=1.0, top_k=0, top_p=1.0, num_samples=2, stop_token_ids=stops, seed=3)
    out = capsys.readouterr().out
    for i, r in enumerate(results):
        head = f"--- sample {i}: {len(r.tokens)} tokens, {r.finish_reason}, mean log-prob {r.mean_logprob:.3f},"
        assert head in out and "\nTom has" + r.text + "\n" in out
    for flag, value in (("--temperature", "-1.0"), ("--top-k", "-1"), ("--top-p", "0.0"), ("--top-p", "1.5")):
        with pytest.raises(SystemExit):
            cli.main([flag, value])
        assert f"{flag} {value}: expected" in capsys.readouterr().err
    cli.main(["--max-new-tokens", "2"])
    assert calls[-1][1]["temperature"] == 0.0 and calls[-1][1]["num_samples"] == 1


@pytest.mark.parametrize("stop", ["<end_of_turn>", "<eos>"])
def test_generate_cli_prints_a_chat_reply_without_the_stop_token_it_ended_on(tmp_path, capsys, stop):
    """A checkpoint whose greedy reply is one word and then `stop`: the CLI prints the word alone, while the sample's
    token count (and the engine's Completion) keep the stop token. The layers add nothing (post-norms of weight -1),
    so the next token is the likeliest after the last one alone, by the embeddings' dot products."""
    import nanoo1.generate as cli
    from nanoo1.checkpoint import save_pretrained

    model, tok = cli.tiny_random(0)
    last, word, end = tok.encode(tok.chat_prompt("Tom has"))[-1], tok.encode("apples", add_bos=False)[0], tok.token_id(stop)
    e1, e2 = torch.eye(model.config.hidden_size)[:2]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight")):
                p.fill_(-1.0)  # Gemma's norms scale by 1 + w: each layer's output is zero
        emb = model.model.embed_tokens.weight.zero_()
        emb[last], emb[word], emb[end] = e1, 2 * e1 + e2, 6 * e2  # last -> word (2 > 1), word -> end (6 > 5)
    save_pretrained(model, tok, tmp_path / "ckpt")
    cli.main(["--checkpoint", str(tmp_path / "ckpt"), "--chat", "--prompt", "Tom has", "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert "--- sample 0: 2 tokens, stop_token," in out
    assert f"\nTom has{tok.decode([word])}\n" in out and stop not in out


def test_a_prompt_past_the_models_context_is_warned_once_per_call():
    """Prompt plus new-token room past max_position_embeddings warns (once, naming the longest prompt, the room and
    the context) and generates anyway; a call that fits exactly is silent, and the budgeted rollout warns too."""
    import warnings

    model = random_model(Gemma2Config.preset("tiny", max_position_embeddings=32), seed=0)
    prompts = prompts_of([5, 20])
    with pytest.warns(UserWarning) as caught:
        rows = generate(model, prompts, 13, stop_token_ids=[])
    assert [str(w.message) for w in caught] == ["a prompt of 20 tokens with room for 13 new ones passes the model's "
                                                "context of 32 (max_position_embeddings); positions past it were never trained"]
    assert [len(r.tokens) for r in rows] == [13, 13]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, prompts, 12, stop_token_ids=[])
    with pytest.warns(UserWarning, match=r"a prompt of 20 tokens with room for 13 new ones .* context of 32"):
        generate_budgeted(model, prompts, 8, 4, think_end_id=4, stop_token_ids=[])


def test_hold_freed_memory_is_applied_on_glibc():
    import platform

    applied = hold_freed_memory()
    assert applied is (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


HEAP_PROBE = """
import ctypes, json
from nanoo1.device import check_device, hold_freed_memory, resolve_device
libc = ctypes.CDLL("libc.so.6")
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
applied = hold_freed_memory()
start = libc.sbrk(0)
block = libc.malloc(64 << 20)
grown = libc.sbrk(0)
libc.free(block)
print(json.dumps([applied, grown - start, libc.sbrk(0) - grown]))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's heap")
def test_hold_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them_when_freed():
    """After it, a 64 MiB block comes from the heap (its end moves up by the block; glibc's default would mmap
    it) and stays there once freed (the end does not move back; glibc's default would trim the heap). Both
    thresholds count: the one without the other hands the pages back. Run in a fresh interpreter, since this
    one may have called it already."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, env=env, check=True)
    applied, grown, shrunk = json.loads(out.stdout.strip().splitlines()[-1])
    assert applied and grown > 32 << 20 and shrunk == 0, (grown, shrunk)


def test_hold_freed_memory_is_false_where_there_is_no_glibc(monkeypatch):
    """Another platform, no libc.so.6, or a libc without mallopt (musl): False, and nothing raised."""
    import ctypes
    import sys

    class Musl:  # a libc without mallopt
        pass

    def missing(name):
        raise OSError(f"{name}: cannot open shared object file")

    for module, name, value in ((ctypes, "CDLL", lambda name: Musl()), (ctypes, "CDLL", missing), (sys, "platform", "darwin")):
        with monkeypatch.context() as m:
            m.setattr(module, name, value)
            assert hold_freed_memory() is False, (name, value)


@pytest.mark.parametrize("name", ["cpu", "cuda", "cuda:0", "cuda:12", "auto"])
def test_check_device_takes_cpu_cuda_cuda_n_and_auto(name):
    assert check_device(name) == name


@pytest.mark.parametrize("name", ["cuda:", "cuda:x", "cpu0", "xcpu", "gpu", "CUDA", "", 0, None])
def test_check_device_refuses_anything_else_as_a_value_error(name):
    """A near miss (cuda: without a number, a prefix or suffix of a good name) or not a string at all: a
    ValueError naming the value, as the command lines report it."""
    with pytest.raises(ValueError, match=r"--device is .*, expected cpu, cuda, cuda:N or auto"):
        check_device(name)


def test_auto_is_cuda_when_torch_sees_one_and_cuda_without_one_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda") and resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda:1: torch sees no CUDA device here"):
        resolve_device("cuda:1")


def test_process_setup_holds_freed_memory_and_sets_the_thread_count_when_given(monkeypatch):
    import nanoo1.device as device

    calls = []
    monkeypatch.setattr(device, "hold_freed_memory", lambda: calls.append("hold"))
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    device.process_setup()
    device.process_setup(3)
    assert calls == ["hold", "hold", 3]


@pytest.mark.parametrize("env, seen", [({}, "10000"), ({"GOMP_SPINCOUNT": "5"}, "5"),
                                       ({"OMP_WAIT_POLICY": "active"}, None)])
def test_importing_nanoo1_shortens_openmp_spinning_before_torch_loads_it(env, seen):
    """libgomp reads GOMP_SPINCOUNT once, when `import torch` loads it, so nanoo1 sets it (10,000 spins) before
    its first import of torch: a fresh interpreter, with a spy on imports, sees it set when torch is first
    imported. A user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is left as it is (none set with the latter)."""
    import os
    import subprocess
    import sys

    code = ("import builtins, os\nreal, seen = builtins.__import__, []\n"
            "def spy(name, *args, **kwargs):\n"
            "    if name == 'torch' and not seen:\n"
            "        seen.append(os.environ.get('GOMP_SPINCOUNT'))\n"
            "    return real(name, *args, **kwargs)\n"
            "builtins.__import__ = spy\nimport nanoo1\nprint(seen)")
    clean = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == repr([seen])


def test_row_parts_cut_prompts_into_runs_of_at_most_max_rows():
    from nanoo1.engine import row_parts

    assert row_parts([2, 2, 2], 0) == [range(0, 3)]  # no limit: one call
    assert row_parts([2, 2, 2], 4) == [range(0, 2), range(2, 3)]
    assert row_parts([5, 1, 1], 3) == [range(0, 1), range(1, 3)]  # a prompt wider than the limit goes alone
    assert row_parts([], 4) == []


def test_bf16_autocast_warns_where_the_cpu_has_no_fast_bf16_kernels(monkeypatch):
    """Without oneDNN's bfloat16 kernels (a CPU without AVX512, AVX-NE-CONVERT or Arm's BF16, or oneDNN turned
    off) torch runs bf16 matrix multiplies in a generic kernel, many times slower than float32: the default
    `--bf16 true` warns there and names the flag that avoids it. It stays silent where the kernels are, or when
    autocast is off."""
    import warnings

    import nanoo1.device as device

    assert device._bf16_kernels() in (True, False)  # this machine's answer, whichever it is
    monkeypatch.setattr(device, "_bf16_kernels", lambda: False)
    with pytest.warns(RuntimeWarning, match="--bf16 false trains in float32"):
        with device.bf16_autocast(True, "cpu"):
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    monkeypatch.setattr(device, "_bf16_kernels", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with device.bf16_autocast(True, "cpu"), device.bf16_autocast(False, "cpu"):
            pass
        monkeypatch.setattr(device, "_bf16_kernels", lambda: False)
        with device.bf16_autocast(False, "cpu"):
            assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
        monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    monkeypatch.setattr(device, "_bf16_kernels", lambda: True)
    with pytest.warns(RuntimeWarning, match="no fast bfloat16"):  # the kernels are there, but oneDNN is off
        device.bf16_autocast(True, "cpu")


def test_a_sigterm_unwinds_an_entry_point_as_ctrl_c_does(tmp_path):
    """After `process_setup`, SIGTERM (`kill`, a job scheduler, torchrun passing a stop on) raises KeyboardInterrupt,
    so the finally clauses run: the sandbox removes its programs' directory, atomic writes their temp files, which a
    process killed on the spot by SIGTERM's default would leave."""
    import subprocess
    import sys

    marker = tmp_path / "cleaned"
    script = ("import sys, time\nfrom nanoo1.device import process_setup\nprocess_setup()\ntry:\n"
              "    print('ready', flush=True)\n    time.sleep(60)\nfinally:\n"
              "    open(sys.argv[1], 'w').write('cleaned')\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(marker)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert marker.read_text() == "cleaned" and "interrupted" in err


def test_an_interrupted_entry_point_says_so_in_one_line_and_dies_of_the_signal(tmp_path):
    """Ctrl-C (or SIGTERM) of an entry point after `process_setup` prints one line, not the traceback of wherever the
    run was (torch's autograd, the sandbox), and the process still dies of SIGINT, as a shell expects of Ctrl-C.
    Other exceptions keep their traceback."""
    import signal
    import subprocess
    import sys

    import nanoo1.device as device

    script = ("import time\nfrom nanoo1.device import process_setup\nprocess_setup()\n"
              "def deep():\n    print('ready', flush=True)\n    time.sleep(60)\ndeep()\n")
    # SIGINT as a terminal leaves it: a shell's background job starts with SIGINT ignored, and Python keeps that
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert err.strip().splitlines() == [device.INTERRUPTED]
    assert proc.returncode == -signal.SIGINT
    failing = "from nanoo1.device import process_setup\nprocess_setup()\n1 / 0\n"
    done = subprocess.run([sys.executable, "-c", failing], capture_output=True, text=True, timeout=60)
    assert "Traceback" in done.stderr and "ZeroDivisionError" in done.stderr and done.returncode == 1
