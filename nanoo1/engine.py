"""Generation for search and RL: a KV cache, prefill once / fork N rows, sampling, stops, log-probs, budgets.

    generate(model, prompts, max_new_tokens, temperature=0.0, ...) -> list[Completion]

Every prompt is prefilled once (rows of different lengths in one right-padded batch), then forked into
`num_samples` rows that share the prefilled keys and values. Each step feeds the last token of every
live row, samples the next one from a seeded `torch.Generator`, and records per token: the log-prob
under the model (temperature 1), the log-prob under logits / temperature (the one RL's importance ratios
need; top-k and top-p truncation are not in it, as in TRL), and the entropy and varentropy of the model's
distribution. Rows stop on their own stop token ids or stop strings, or at max_new_tokens; finished
rows are dropped from the batch once a quarter of it is finished.

`generate_budgeted` is Elastic Reasoning's two-phase rollout (Xu et al. 2025, "Scalable Chain of
Thoughts via Elastic Reasoning", sec. 3.1): think for up to `think_budget` tokens, force `</think>` if
it was not emitted, then answer in up to `solution_budget` tokens, in the same cache.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class Completion:
    """One generated row."""

    prompt: list[int]  # the prompt's token ids
    tokens: list[int] = field(default_factory=list)  # new token ids (sampled and forced)
    text: str | None = None  # decoded new tokens, cut after the stop string (None without a tokenizer)
    finish_reason: str = "length"  # "stop_token", "stop_string" or "length"
    logprobs: list[float] = field(default_factory=list)  # log p(token) under the model (temperature 1)
    scaled_logprobs: list[float] = field(default_factory=list)  # log p(token) under logits / temperature
    entropy: list[float] = field(default_factory=list)  # entropy of the model's next-token distribution
    varentropy: list[float] = field(default_factory=list)  # variance of -log p under that distribution
    forced: list[bool] = field(default_factory=list)  # True where the token was forced, not sampled

    @property
    def mean_logprob(self) -> float:
        """Length-normalised log-prob of the sampled tokens; exp of it is LLaMA-O1's policy probability."""
        lps = [lp for lp, f in zip(self.logprobs, self.forced) if not f]
        return sum(lps) / len(lps) if lps else 0.0


def sample_next(logits, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None):
    """Next token per row from logits (B, V): argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k tokens and to the smallest set whose mass
    reaches top_p (Holtzman et al. 2020, "The Curious Case of Neural Text Degeneration", sec. 3.1).
    top_k None or 0 and top_p None or 1.0 restrict nothing (transformers' convention)."""
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0: no limit), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must lie in (0, 1] (1: no limit), got {top_p}")
    if temperature <= 0:
        return logits.argmax(-1)
    scores = logits.float() / temperature  # (B, V)
    if top_k and top_k < scores.shape[-1]:
        kth = scores.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_scores, order = scores.sort(-1, descending=True)  # (B, V)
        probs = sorted_scores.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # mass before this token already reaches top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


def token_stats(logits, tokens, temperature: float):
    """(log p, log p under logits/temperature, entropy, varentropy) of `tokens` (B,) under logits (B, V).

    Entropy H = -sum p log p and varentropy sum p (log p + H)^2 are of the model's own (temperature 1)
    distribution. At temperature 0 the scaled log-prob is the model's log-prob.
    """
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, V)
    p_logp = logp.exp().mul_(logp)  # (B, V); in place: every new (B, V) tensor costs page faults
    entropy = -p_logp.sum(-1)  # (B,)
    varentropy = (torch.linalg.vecdot(p_logp, logp) - entropy * entropy).clamp(min=0)  # E[(log p)^2] - H^2, (B,)
    lp = logp.gather(-1, tokens[:, None]).squeeze(-1)
    if temperature > 0 and temperature != 1.0:
        slp = F.log_softmax(logits.float() / temperature, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    else:
        slp = lp
    return lp, slp, entropy, varentropy


def feed(model, cache, pending: list[list[int]], head=None):
    """Append each row's pending tokens (possibly none) to the cache; return next-token logits (B, V), or
    head(hidden) of each row's last final hidden state (B, C) (e.g. `value.rating_head`'s two logits).

    Rows with fewer tokens are right-padded and advance by their own count only.
    """
    head = head or model.logits
    lengths = [len(p) for p in pending]
    T = max(1, max(lengths))
    pad = model.config.pad_token_id
    ids = torch.tensor([p + [pad] * (T - len(p)) for p in pending], device=cache.lengths.device)  # (B, T)
    if all(n == T for n in lengths):  # the usual decode step: one token per row, no mask, no gather
        return head(model.hidden_states(ids, cache=cache)[:, -1])  # (B, V)
    n = torch.tensor(lengths, device=cache.lengths.device)  # (B,)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()  # (B, T) on the host: the cache only counts it
    h = model.hidden_states(ids, attention_mask=mask, cache=cache)  # (B, T, C)
    last = h[torch.arange(len(pending), device=n.device), (n - 1).clamp(min=0)]  # (B, C)
    return head(last)


def _per_row(value, n_prompts: int, default):
    """A setting given once for all prompts, or as a list with one entry per prompt; one stop string or id alone
    is a list of one (transformers reads `stop_strings="the"` so), not a list of its characters."""
    if value is None:
        return [list(default) for _ in range(n_prompts)]
    value = [value] if isinstance(value, (str, int)) else value
    if len(value) and isinstance(value[0], (list, tuple)):
        if len(value) != n_prompts:
            raise ValueError(f"per-prompt setting has {len(value)} entries for {n_prompts} prompts")
        return [list(v) for v in value]
    return [list(value) for _ in range(n_prompts)]


LIVE, PAUSED, DONE = "live", "paused", "done"


class _Batch:
    """Rows being generated. Cache row i <-> rows[i]; pending[i]: tokens chosen but not yet fed.

    A row is live (sampling), paused (stopped on a pause token or at its limit, cache kept for a later
    phase) or done. Done rows are dropped from the cache once they are a quarter of the batch.
    """

    def __init__(self, cache, rows, stop_ids, stop_strings):
        self.cache, self.rows = cache, rows
        self.pending = [[] for _ in rows]
        self.state = [LIVE] * len(rows)
        self.stop_ids, self.stop_strings = stop_ids, stop_strings
        self.pause_ids = [[] for _ in rows]
        self.limit = [None] * len(rows)  # a row stops once it holds this many new tokens (sampled and forced)
        self.at_limit = DONE  # what a row at its limit becomes (PAUSED between budgeted phases)
        self.on_stop = None  # on_stop(row, token) -> tokens to force and go on, or None to stop there
        self.segment_limit = None  # with on_stop: after this many sampled tokens in a row, on_stop(row, None)

    def compact(self, force: bool = False):
        done = self.state.count(DONE)
        if done and (force or 4 * done >= len(self.rows)):
            keep = [i for i, s in enumerate(self.state) if s != DONE]
            self.cache.keep(keep)
            for name in ("rows", "pending", "state", "stop_ids", "stop_strings", "pause_ids", "limit"):
                setattr(self, name, [getattr(self, name)[i] for i in keep])

    def record(self, i: int, token: int, stats: tuple = (0.0, 0.0, 0.0, 0.0), forced: bool = False):
        """Append a token to row i: stats = (log-prob, scaled log-prob, entropy, varentropy); 0 if forced."""
        row = self.rows[i]
        row.tokens.append(token)
        row.forced.append(forced)
        for name, value in zip(("logprobs", "scaled_logprobs", "entropy", "varentropy"), stats):
            getattr(row, name).append(value)
        self.pending[i].append(token)


def _decode(model, batch: _Batch, temperature, top_k, top_p, generator, tokenizer, first_logits=None):
    """Sample for every live row until it stops, pauses or reaches its limit.

    Each step feeds the live rows' pending tokens and samples for rows with nothing left to feed. Rows
    usually have one pending token; forced tokens (on_stop) are fed one per step beside the other rows'
    sampling, and several at once only when every live row has several (e.g. the suffixes), so one row's
    forced header never makes the whole batch run a wide step.
    """
    logits = first_logits
    while LIVE in batch.state:
        live = [i for i, s in enumerate(batch.state) if s == LIVE]
        if logits is None:
            width = max(1, min(len(batch.pending[i]) for i in live))
            chunks = [[] for _ in batch.rows]
            for i in live:
                chunks[i], batch.pending[i] = batch.pending[i][:width], batch.pending[i][width:]
            logits = feed(model, batch.cache, chunks)
        ready = [i for i in live if not batch.pending[i]]  # fed up to their last token: sample now
        if ready:
            mine = logits if len(ready) == len(batch.rows) else logits[ready]  # (R, V)
            tokens = sample_next(mine, temperature, top_k, top_p, generator)  # (R,)
            # one device-to-host copy per step, what stopping needs: the tokens with their four statistics (float64
            # holds every token id and every float32 exactly)
            host = torch.stack([tokens.double()] + [t.double() for t in token_stats(mine, tokens, temperature)]).tolist()
            for i, tok, *st in zip(ready, *host):
                batch.record(i, int(tok), tuple(st))
                _after_sample(batch, i, int(tok), tokenizer)
        logits = None
        batch.compact()


def _after_sample(batch: _Batch, i: int, tok: int, tokenizer) -> None:
    row = batch.rows[i]
    if tok in batch.pause_ids[i]:
        batch.state[i] = PAUSED
    elif tok in batch.stop_ids[i]:
        forced = batch.on_stop(row, tok) if batch.on_stop is not None else None
        _force(batch, i, forced)
        if not forced:
            batch.state[i], row.finish_reason = DONE, "stop_token"
    elif batch.stop_strings[i] and _has_stop_string(tokenizer, row.tokens, batch.stop_strings[i]):
        batch.state[i], row.finish_reason = DONE, "stop_string"
    elif batch.segment_limit is not None and len(row.forced) >= batch.segment_limit and not any(row.forced[-batch.segment_limit:]):
        forced = batch.on_stop(row, None)  # a segment ran to its limit without a stop token: cut it there
        _force(batch, i, forced)
        if not forced:
            batch.state[i], row.finish_reason = DONE, "length"
    if batch.state[i] == LIVE and batch.limit[i] is not None and len(row.tokens) >= batch.limit[i]:
        batch.state[i] = batch.at_limit
        row.finish_reason = "length"


def _force(batch: _Batch, i: int, tokens) -> None:
    """Append on_stop's forced tokens to row i, as many as its limit leaves room for (the limit counts them)."""
    room = len(tokens or []) if batch.limit[i] is None else batch.limit[i] - len(batch.rows[i].tokens)
    for t in (tokens or [])[:max(0, room)]:
        batch.record(i, t, forced=True)


def _has_stop_string(tokenizer, tokens, stop_strings) -> bool:
    # rows stop at the first occurrence, so a stop string in the text is one the last token completed;
    # decoding a tail wide enough to hold it suffices (a byte-fallback piece can be a quarter character)
    width = 4 * max(len(s) for s in stop_strings) + 4
    tail = tokenizer.decode(tokens[-width:])
    return any(s in tail for s in stop_strings)


def _finish_text(rows, tokenizer, stop_strings):
    if tokenizer is None:
        return
    for row, stops in zip(rows, stop_strings):
        text = tokenizer.decode(row.tokens)
        if row.finish_reason == "stop_string":
            text = text[: min(text.find(s) + len(s) for s in stops if s in text)]
        row.text = text


def _prefill(model, prompts, num_samples, extra_len, stop_token_ids, stop_strings, tokenizer):
    """Prefill every prompt once, fork each into num_samples rows; returns (batch, first-step logits)."""
    if not prompts or any(len(p) == 0 for p in prompts) or num_samples < 1 or extra_len < 0:
        raise ValueError(f"expected non-empty prompts, num_samples >= 1 and room for >= 0 new tokens, got prompts of "
                         f"lengths {[len(p) for p in prompts][:8]}, num_samples {num_samples}, room {extra_len}")
    if stop_strings is not None and tokenizer is None:
        raise ValueError("stop_strings need a tokenizer to decode the generated text")
    longest, context = max(map(len, prompts)), getattr(model.config, "max_position_embeddings", None)
    if context is not None and longest + extra_len > context:  # Gemma-2's RoPE runs past it: a warning, not an error
        warnings.warn(f"a prompt of {longest:,} tokens with room for {extra_len:,} new ones passes the model's context "
                      f"of {context:,} (max_position_embeddings); positions past it were never trained", stacklevel=4)
    eos = model.config.eos_token_id
    stop_ids = _per_row(stop_token_ids, len(prompts), eos if isinstance(eos, list) else [eos])
    stops = _per_row(stop_strings, len(prompts), [])
    cache = model.new_cache(len(prompts), longest + extra_len)
    logits = feed(model, cache, [list(p) for p in prompts])  # (B, V)
    order = [i for i in range(len(prompts)) for _ in range(num_samples)]
    if num_samples > 1:
        cache, logits = cache.fork(order), logits[order]
    rows = [Completion(prompt=list(prompts[i])) for i in order]
    batch = _Batch(cache, rows, [stop_ids[i] for i in order], [stops[i] for i in order])
    return batch, logits


def row_parts(sizes: list[int], max_rows: int) -> list[range]:
    """Consecutive runs of prompts, prompt i bringing sizes[i] rows (its samples), each run holding at most
    max_rows rows (a larger prompt alone; 0: one run): the generate calls of a batch too wide for one, which
    bounds the KV cache. A prompt's rows are never split."""
    parts, start, rows = [], 0, 0
    for n, size in enumerate(sizes):
        if max_rows and n > start and rows + size > max_rows:
            parts.append(range(start, n))
            start, rows = n, 0
        rows += size
    return parts + [range(start, len(sizes))] if sizes else parts


def seeded_generator(model, seed: int, generator: torch.Generator | None = None) -> torch.Generator:
    """The generator sampling draws from: `generator` when given, else a new one on the model's device seeded
    with `seed`."""
    if generator is not None:
        return generator
    return torch.Generator(device=model.model.embed_tokens.weight.device).manual_seed(seed)


@torch.inference_mode()
def generate(model, prompts: list[list[int]], max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, num_samples: int = 1, stop_token_ids=None, stop_strings=None, tokenizer=None,
             generator: torch.Generator | None = None, seed: int = 0, suffixes: list[list[int]] | None = None,
             on_stop=None, segment_limit: int | None = None) -> list[Completion]:
    """Generate up to max_new_tokens for each prompt (greedy at temperature 0), num_samples rows per prompt.

    prompts: non-empty token-id lists (any lengths). stop_token_ids / stop_strings: one list for every prompt, or a
    list of lists (one per prompt); stop_token_ids defaults to the model's eos; a stop token is kept as
    the last token, and text is cut right after a stop string. Returns len(prompts) * num_samples
    Completions, the samples of prompt i at i*num_samples .. (i+1)*num_samples-1. Sampling draws from
    `generator`, or from a new one seeded with `seed`.

    suffixes: one token list per row (len(prompts) * num_samples), fed after the fork, so rows that share
    a prompt up to a point diverge before sampling (e.g. each candidate thought's own id in its header);
    each row's `prompt` then ends with its suffix. on_stop(row, completion, token): called when row `row`
    (its index in the returned list) samples a stop token; tokens it returns are appended (forced, log-prob
    0) and the row goes on sampling, None or [] ends it; with segment_limit, it is also called with token
    None when a row has sampled that many tokens since its last forced one (e.g. to cut a long thought).
    max_new_tokens counts sampled and forced tokens: a row never holds more (forced tokens past it are cut).
    """
    generator = seeded_generator(model, seed, generator)
    if suffixes is not None and (len(suffixes) != len(prompts) * num_samples or any(len(x) == 0 for x in suffixes)):
        raise ValueError(f"suffixes: expected {len(prompts) * num_samples} non-empty token lists (one per row), got {len(suffixes)}")
    extra = max(map(len, suffixes)) if suffixes is not None else 0
    batch, logits = _prefill(model, prompts, num_samples, max_new_tokens + extra, stop_token_ids, stop_strings, tokenizer)
    batch.limit = [max_new_tokens] * len(batch.rows)
    if on_stop is not None:
        index = {id(row): n for n, row in enumerate(batch.rows)}
        batch.on_stop = lambda row, token: on_stop(index[id(row)], row, token)
        batch.segment_limit = segment_limit
    if suffixes is not None:
        for i, suffix in enumerate(suffixes):
            batch.pending[i] = list(suffix)
            batch.rows[i].prompt += list(suffix)
        logits = None  # the first step feeds each row's suffix
    rows, stops = list(batch.rows), list(batch.stop_strings)
    if max_new_tokens > 0:
        _decode(model, batch, temperature, top_k, top_p, generator, tokenizer, first_logits=logits)
    _finish_text(rows, tokenizer, stops)
    return rows


@torch.inference_mode()
def generate_budgeted(model, prompts: list[list[int]], think_budget: int, solution_budget: int, think_end_id: int,
                      temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None, num_samples: int = 1,
                      stop_token_ids=None, tokenizer=None, generator: torch.Generator | None = None, seed: int = 0) -> list[Completion]:
    """Elastic Reasoning's budgeted rollout: think (<= think_budget tokens, stop at </think>), then answer.

    A row that did not emit `think_end_id` within the budget gets it appended (forced[j] = True there,
    log-probs 0); the forced token is part of the completion and of the loss mask. A row that stops
    (eos) while still thinking ends there, without </think>. The answer phase samples
    up to solution_budget tokens in the same cache and stops on stop_token_ids (default: eos).
    """
    if think_budget < 0 or solution_budget < 0:
        raise ValueError(f"budgets must be >= 0 tokens, got think_budget {think_budget}, solution_budget {solution_budget}")
    generator = seeded_generator(model, seed, generator)
    batch, logits = _prefill(model, prompts, num_samples, think_budget + solution_budget + 1, stop_token_ids, None, tokenizer)
    rows = list(batch.rows)
    batch.pause_ids = [[think_end_id] for _ in batch.rows]
    batch.limit, batch.at_limit = [think_budget] * len(batch.rows), PAUSED
    if think_budget > 0:
        _decode(model, batch, temperature, top_k, top_p, generator, tokenizer, first_logits=logits)
    for i, row in enumerate(batch.rows):
        if batch.state[i] == DONE:
            continue
        if not row.tokens or row.tokens[-1] != think_end_id:  # out of thinking budget: force the delimiter
            batch.record(i, think_end_id, forced=True)
        batch.state[i], row.finish_reason = LIVE if solution_budget > 0 else DONE, "length"
        batch.limit[i] = len(row.tokens) + solution_budget  # the answer phase samples up to solution_budget
    batch.pause_ids = [[] for _ in batch.rows]
    batch.at_limit = DONE
    _decode(model, batch, temperature, top_k, top_p, generator, tokenizer)
    _finish_text(rows, tokenizer, [[] for _ in rows])
    return rows
