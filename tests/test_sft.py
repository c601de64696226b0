"""Supervised warm start: examples, masks, the loss, the schedule, and a model that learns."""

import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import random_model
from nanoo1.answers import check
from nanoo1.model import Gemma2Config
from nanoo1.sft import SFTConfig, collate, lm_loss, lr_at, make_batches, think_example, thought_example, train_sft
from nanoo1.tasks import make_problems
from nanoo1.thoughts import parse_tree


def trained_text(tok, ids, mask):
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_thought_example_trains_everything_after_the_question(tiny_tokenizer):
    (p,) = make_problems(1, seed=0)
    ids, mask = thought_example(p, tiny_tokenizer, random.Random(0), negative_fraction=0.0)
    assert len(ids) == len(mask) and ids[0] == tiny_tokenizer.bos_id
    text = trained_text(tiny_tokenizer, ids, mask)
    assert p.question not in text and text.startswith("<start_of_father_id>0<end_of_father_id>")
    assert "<expansion>18 / 3 = 6<end_of_thought>" in text
    assert text.endswith("\\boxed{11}<end_of_thought><start_of_rating><positive_rating><end_of_rating><eos>")
    assert tiny_tokenizer.decode(ids).count("<positive_rating>") == 7  # root, 5 steps, conclusion


def test_negative_example_propagates_the_error_and_trains_only_ratings_after_it(tiny_tokenizer):
    (p,) = make_problems(1, seed=0)  # 18 / 3 = 6, 6 / 3 = 2, 2 * 2 = 4, 4 * 2 = 8, 8 + 3 = 11
    ids, mask = thought_example(p, tiny_tokenizer, random.Random(3), negative_fraction=1.0)
    tree = parse_tree(tiny_tokenizer.decode(ids[1:-1]))
    steps = [n.text for n in tree.nodes[1:-1]]
    # with this seed the last step is corrupted: 8 + 3 = 12, and the conclusion follows it
    assert steps == ["18 / 3 = 6", "6 / 3 = 2", "2 * 2 = 4", "4 * 2 = 8", "8 + 3 = 12"]
    assert tree.nodes[-1].text == "The answer is \\boxed{12}"
    assert [n.rating for n in tree.nodes] == ["positive"] * 5 + ["negative"] * 2
    trained = trained_text(tiny_tokenizer, ids, mask)
    assert "8 + 3 = 12" not in trained and "boxed{12}" not in trained  # the policy never learns the mistake
    assert trained.endswith("<negative_rating><negative_rating><eos>")  # ...but the value head learns both ratings


def test_an_early_error_propagates_through_later_steps(tiny_tokenizer):
    problems = make_problems(300, seed=4)
    rng = random.Random(0)
    for p in problems:
        ids, mask = thought_example(p, tiny_tokenizer, rng, negative_fraction=1.0)
        tree = parse_tree(tiny_tokenizer.decode(ids[1:-1]))
        ratings = [n.rating for n in tree.nodes[1:]]
        first_bad = ratings.index("negative")
        assert all(r == "negative" for r in ratings[first_bad:])  # once wrong, wrong to the end
        eqs = [n.text for n in tree.nodes[1:-1]]
        xs = [int(e.split()[0]) for e in eqs]
        ys = [int(e.split()[-1]) for e in eqs]
        assert xs[1:] == ys[:-1]  # every step starts from the previous (possibly wrong) result
        assert min(ys) >= 0  # the chain stops before a subtraction would go below 0, as a task's never does
        assert tree.nodes[-1].text.endswith("{" + str(ys[-1]) + "}") and not check(tree.nodes[-1].text, p.answer)


def test_think_example(tiny_tokenizer):
    (p,) = make_problems(1, seed=0)
    ids, mask = think_example(p, tiny_tokenizer)
    assert trained_text(tiny_tokenizer, ids, mask) == p.think_solution() + "<eos>"
    assert mask[: len(tiny_tokenizer.encode(p.question + "\n"))] == [0] * len(tiny_tokenizer.encode(p.question + "\n"))
    rng = random.Random(0)
    assert think_example(p, tiny_tokenizer, rng) == (ids, mask) and rng.random() == random.Random(0).random()  # no draw
    draws = random.Random(3)
    paused = [draws.random() < 0.5 for _ in p.steps]
    ids, mask = think_example(p, tiny_tokenizer, random.Random(3), pauses=0.5)  # one draw per step
    assert trained_text(tiny_tokenizer, ids, mask) == p.think_solution(paused) + "<eos>" and 0 < sum(paused) < 5


def test_lm_loss_is_cross_entropy_of_the_masked_next_tokens():
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2))
    ids = torch.tensor([[2, 10, 11, 12, 0], [2, 20, 21, 0, 0]])
    attn = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])  # trained: 11, 12 and 20, 21
    logits = model(ids, attention_mask=attn)
    # by hand: token t is predicted at t-1
    terms = [F.cross_entropy(logits[b, t - 1][None], ids[b, t][None]) for b, t in [(0, 2), (0, 3), (1, 1), (1, 2)]]
    assert torch.allclose(lm_loss(model, ids, attn, mask), torch.stack(terms).mean(), atol=1e-6)


def test_a_batch_without_a_trained_token_has_loss_0_and_leaves_the_weights():
    """lm_loss over no trained token is 0 (not 0 / 0), and sft_step on such a batch changes nothing."""
    from nanoo1.sft import sft_step

    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2)).requires_grad_(True)
    ids, attn = torch.tensor([[2, 10, 11]]), torch.ones(1, 3, dtype=torch.long)
    assert lm_loss(model, ids, attn, torch.zeros(1, 3, dtype=torch.long)).item() == 0.0
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # no weight decay: no gradient, no change
    assert sft_step(model, opt, (ids, attn, torch.zeros(1, 3, dtype=torch.long)), lr=0.1) == 0.0
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_lm_loss_in_chunks_of_positions_equals_one_chunk(monkeypatch):
    import nanoo1.sft as sft

    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2)).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 11), generator=g)
    mask = (torch.rand(3, 11, generator=g) > 0.4).long()
    results = []
    for chunk in (1 << 26, 3 * model.config.vocab_size):  # every position at once; 3 positions per chunk
        monkeypatch.setattr(sft, "LOSS_CHUNK", chunk)
        model.zero_grad()
        loss = lm_loss(model, ids, torch.ones_like(ids), mask)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (one, g1), (many, g3) = results
    torch.testing.assert_close(many, one, rtol=0, atol=1e-6)
    for a, b in zip(g1, g3):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6)


def test_schedule_and_collate():
    c = SFTConfig(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, c) == 0.1 and lr_at(9, c) == 1.0
    assert math.isclose(lr_at(60, c), 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # half way: 0.55
    assert math.isclose(lr_at(110, c), 0.1)
    ids, attn, mask = collate([([5, 6, 7], [0, 1, 1]), ([8] * 33, [1] * 33)], pad_id=0)
    assert ids.shape == (2, 64) and attn[0].tolist() == [1, 1, 1] + [0] * 61 and mask[0, :3].tolist() == [0, 1, 1]


def test_a_tiny_model_learns_the_format(tiny_tokenizer):
    """80 steps on 64 problems: the loss falls far below its start (a model that did not learn stays ~6)."""
    torch.manual_seed(0)
    problems = make_problems(64, seed=2)
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=2), std=0.02).train()
    batches = make_batches(problems, lambda p, rng: thought_example(p, tiny_tokenizer, rng, 0.3), 16, random.Random(0),
                           tiny_tokenizer.pad_id)
    losses = train_sft(model, batches, SFTConfig(steps=80, batch_size=16, bf16=False, warmup=5), progress=False)
    assert losses[0] > 4.0 and sum(losses[-5:]) / 5 < 1.5
    with pytest.raises(ValueError, match="15 examples, fewer than one batch of 16"):  # no batch to yield, ever
        next(make_batches(problems[:15], lambda p, rng: thought_example(p, tiny_tokenizer, rng), 16, random.Random(0), 0))


def test_chain_ids_look_like_a_search_tree(tiny_tokenizer):
    """Ids increase along the chain but skip, as in a tree where siblings took the ids in between."""
    from nanoo1.sft import tree_ids

    ids = tree_ids(2000, random.Random(0))
    steps = [b - a for a, b in zip(ids, ids[1:])]
    assert ids[0] == 0 and min(steps) == 1 and max(steps) == 12
    assert 0.25 < steps.count(1) / len(steps) < 0.4  # a first child 30% of the time
    (p,) = make_problems(1, seed=0)
    ids, mask = thought_example(p, tiny_tokenizer, random.Random(1))
    tree = parse_tree(tiny_tokenizer.decode(ids[1:-1]))  # without <bos> and <eos>
    assert [n.meta for n in tree.nodes] == ["<problem>"] + ["<expansion>"] * 5 + ["<conclusion>"]


def test_weight_decay_skips_the_one_dimensional_parameters(monkeypatch):
    """AdamW gets two groups: matrices (embedding, projections) decayed, norm weights not."""
    seen = []
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: seen.append(groups) or real(groups, **kw))
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=1))
    train_sft(model, iter(()), SFTConfig(steps=0, weight_decay=0.1), progress=False)
    decay = {g["weight_decay"]: g["params"] for g in seen[0]}
    assert sorted(decay) == [0.0, 0.1] and decay[0.0]
    assert all(p.dim() >= 2 for p in decay[0.1]) and all(p.dim() == 1 for p in decay[0.0])


# -- edge cases: bounds, defaults and what each step leaves behind ---------------------------------------------
class Draws:
    """A stand-in rng whose choice() returns the given values in turn (each must be among the choices)."""

    def __init__(self, *values):
        self.values = list(values)

    def choice(self, seq):
        assert self.values[0] in seq
        return self.values.pop(0)


def test_a_corrupted_result_is_wrong_never_negative_and_may_be_zero():
    """_corrupt(1) moves 1 by +-1, +-2, +-3 or +-10, flipping a move below 0 up: {0, 2, 3, 4, 11}, 0 included. An
    error that makes a later subtraction exactly 0 keeps the step (7 - 7 = 0); only one below 0 ends the chain."""
    from nanoo1.sft import _corrupt, _propagate_error
    from nanoo1.tasks import Step

    assert {_corrupt(1, random.Random(seed)) for seed in range(200)} == {0, 2, 3, 4, 11}
    steps = [Step(5, "+", 3, 8), Step(8, "-", 7, 1), Step(1, "*", 4, 4)]
    # step 0 corrupted by -1: 8 -> 7; then 7 - 7 = 0 and 0 * 4 = 0
    assert _propagate_error(steps, 0, Draws(1, -1)) == [Step(5, "+", 3, 7), Step(7, "-", 7, 0), Step(0, "*", 4, 0)]
    # by +1 (9 - 7 = 2) the chain goes on; by -3 (5 - 7 < 0) it ends at the corrupted step
    assert [s.y for s in _propagate_error(steps, 0, Draws(1, 1))] == [9, 2, 8]
    assert _propagate_error(steps, 0, Draws(3, -1)) == [Step(5, "+", 3, 5)]


class CountingRandom(random.Random):
    """random.Random that fails once shuffle() is called more than `limit` times (a generator that never
    yields would otherwise loop forever)."""

    def __init__(self, seed, limit=10):
        super().__init__(seed)
        self.shuffles, self.limit = 0, limit

    def shuffle(self, x):
        self.shuffles += 1
        if self.shuffles > self.limit:
            raise RuntimeError(f"no batch after {self.limit} shuffles")
        super().shuffle(x)


def _of_length(n, rng):
    """An example of n tokens, every one trained: its attention mask sums to its length."""
    return [7] * n, [1] * n


def test_make_batches_yields_only_full_batches_of_similar_lengths():
    """Examples of length n (n = 1..32), batches of 16: one pass is the 16 shortest and the 16 longest, in some
    order. 40 examples give full batches of 16 only. Exactly 16 examples are one batch, the first yield after
    two shuffles (the pass's order and its batches' order)."""
    batches = make_batches(list(range(1, 33)), _of_length, 16, random.Random(0), pad_id=0)
    one_pass = sorted(sorted(attn.sum(1).tolist()) for _, attn, _ in (next(batches), next(batches)))
    assert one_pass == [list(range(1, 17)), list(range(17, 33))]
    batches = make_batches(list(range(1, 41)), _of_length, 16, random.Random(0), pad_id=0)
    assert [len(next(batches)[0]) for _ in range(6)] == [16] * 6
    rng = CountingRandom(0)
    ids, attn, mask = next(make_batches(list(range(1, 17)), _of_length, 16, rng, pad_id=0))
    assert sorted(attn.sum(1).tolist()) == list(range(1, 17)) and rng.shuffles == 2


def test_make_batches_leaves_out_random_examples_not_the_longest():
    """20 examples of lengths 1..20, batches of 16: each pass is one batch and leaves 4 out. Over 10 passes every
    length is trained (the 4 left out are drawn anew each pass); leaving out the longest never trains 17..20."""
    batches = make_batches(list(range(1, 21)), _of_length, 16, random.Random(0), pad_id=0)
    seen = [sorted(next(batches)[1].sum(1).tolist()) for _ in range(10)]
    assert all(len(set(lengths)) == 16 for lengths in seen)
    assert set().union(*seen) == set(range(1, 21))


def test_the_peak_learning_rate_is_reached_at_the_end_of_warmup():
    """steps 110, warmup 10, lr 1: steps 0..9 rise to 1.0, step 10 starts the cosine at 1.0 (never above it)."""
    c = SFTConfig(steps=110, warmup=10, lr=1.0, min_lr_ratio=0.1)
    assert [lr_at(s, c) for s in (9, 10)] == [1.0, 1.0]
    assert max(lr_at(s, c) for s in range(110)) == 1.0


def test_sft_step_clips_the_gradient_norm():
    """With SGD at lr 1 the update is the clipped gradient: its norm over all parameters is grad_clip = 1e-3."""
    from nanoo1.sft import sft_step

    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=1)).requires_grad_(True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    before = [p.detach().clone() for p in model.parameters()]
    sft_step(model, torch.optim.SGD(model.parameters(), lr=1.0), (ids, torch.ones_like(ids), torch.ones_like(ids)),
             lr=1.0, grad_clip=1e-3)
    moved = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(model.parameters(), before)])
    assert math.isclose(moved.norm().item(), 1e-3, rel_tol=1e-3)


def test_train_sft_leaves_the_model_in_eval_mode_with_adamws_betas(monkeypatch):
    """AdamW with betas (0.9, 0.95); afterwards the model is in eval mode (LoRA dropout off for what follows)."""
    seen = []
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda groups, **kw: seen.append(kw) or real(groups, **kw))
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=1)).train()
    train_sft(model, iter(()), SFTConfig(steps=0), progress=False)
    assert seen[0]["betas"] == (0.9, 0.95)
    assert not any(m.training for m in model.modules())


def test_lm_loss_of_a_bf16_model_is_taken_in_float32():
    """A model held in bf16 (no autocast) gives bf16 logits; the cross-entropy is still taken in float32: equal to
    the float32 cross-entropy of those logits (a bf16 loss would round 6.48 to 6.5)."""
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=1), dtype=torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 9), generator=g)
    mask = (torch.rand(2, 9, generator=g) > 0.3).long()
    loss = lm_loss(model, ids, torch.ones_like(ids), mask)
    logits = model(ids).float()
    terms = [F.cross_entropy(logits[b, t - 1], ids[b, t]) for b in range(2) for t in range(1, 9) if mask[b, t]]
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, torch.stack(terms).mean(), rtol=0, atol=1e-5)


# -- the tiny warm start (nanoo1/warmstart.py) -----------------------------------------------------------------
def test_mixed_examples_follow_the_mixture_and_pass_each_format_its_setting(monkeypatch):
    """Each call draws one format by the mixture's weights (thoughts 60%, <think> 20%, code 20% by default); thought
    examples get the negative fraction and <think> examples the pause probability given; a one-format mixture
    draws that format alone."""
    from collections import Counter

    import nanoo1.warmstart as warmstart

    monkeypatch.setattr(warmstart, "thought_example", lambda problem, tok, rng, negative: ("thought", negative))
    monkeypatch.setattr(warmstart, "think_example", lambda problem, tok, rng, pauses: ("think", pauses))
    monkeypatch.setattr(warmstart, "code_example", lambda problem, tok, rng: ("code", None))
    rng = random.Random(0)
    example = warmstart.mixed_example("tok", negative_fraction=0.25, pauses=0.5)
    drawn = [example("problem", rng) for _ in range(3000)]
    shares = {k: n / len(drawn) for k, n in Counter(k for k, _ in drawn).items()}
    assert shares == pytest.approx({"thought": 0.6, "think": 0.2, "code": 0.2}, abs=0.03)
    assert {v for k, v in drawn if k == "thought"} == {0.25} and {v for k, v in drawn if k == "think"} == {0.5}
    code_only = warmstart.mixed_example("tok", {"code": 1.0})
    assert {code_only("problem", rng)[0] for _ in range(50)} == {"code"}


def test_train_warmstart_takes_its_kinds_examples_and_seed_and_saves_the_model_frozen(tmp_path, monkeypatch):
    """Each kind trains on its own examples (mixed: the config's negative fraction; think: the pauses of
    THINK_PAUSES; code: the code format alone); the seed draws the initial weights and the batches (the same seed,
    the same both); the callback reaches the training loop; the model comes back frozen and is saved to `out`. A
    data file of exactly one batch is enough, one problem fewer is refused."""
    import nanoo1.warmstart as warmstart
    from nanoo1.checkpoint import load_pretrained
    from nanoo1.tasks import TINY_DIR, load_jsonl, write_jsonl

    write_jsonl(load_jsonl(TINY_DIR / "train.jsonl")[:4], tmp_path / "four.jsonl")
    write_jsonl(load_jsonl(TINY_DIR / "train.jsonl")[:3], tmp_path / "three.jsonl")
    mixtures, trained, real = [], [], warmstart.mixed_example
    monkeypatch.setattr(warmstart, "mixed_example", lambda tok, *a, **kw: mixtures.append((a, kw)) or real(tok, *a, **kw))
    monkeypatch.setattr(warmstart, "train_sft", lambda model, batches, config, callback, progress: trained.append(
        ({k: v.clone() for k, v in model.state_dict().items()}, next(batches)[0], callback)))
    config = SFTConfig(steps=2, batch_size=4, negative_fraction=0.1)

    def train(seed, kind="mixed", out=None, callback=None):
        return warmstart.train_warmstart(out, config, seed, tmp_path / "four.jsonl", False, callback, kind)

    model, tok = train(1, out=tmp_path / "ws", callback=print)
    assert trained[-1][2] is print and not any(p.requires_grad for p in model.parameters())
    saved, _ = load_pretrained(tmp_path / "ws")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.state_dict().items())
    train(1)
    train(2)
    (w1, ids1, _), (again, ids_again, _), (w2, ids2, _) = trained
    assert all(torch.equal(w1[k], again[k]) for k in w1) and torch.equal(ids1, ids_again)
    assert not torch.equal(w1["model.embed_tokens.weight"], w2["model.embed_tokens.weight"]) and not torch.equal(ids1, ids2)
    mixtures.clear()
    train(0)
    train(0, "think")
    train(0, "code")
    assert mixtures == [((), {"negative_fraction": 0.1}), (({"think": 1.0},), {"pauses": warmstart.THINK_PAUSES}),
                        (({"code": 1.0},), {})]
    with pytest.raises(ValueError, match="3 problems, fewer than one batch of 4"):
        warmstart.train_warmstart(None, config, 0, tmp_path / "three.jsonl", False)
    stepless = [replace(p, steps=[]) if i == 2 else p for i, p in enumerate(load_jsonl(tmp_path / "four.jsonl"))]
    write_jsonl(stepless, tmp_path / "gsm8k-like.jsonl")  # GSM8K's problems have no worked steps
    with pytest.raises(ValueError, match=r"gsm8k-like.jsonl: 1 of its 4 problems have no worked 'steps'"):
        warmstart.train_warmstart(None, config, 0, tmp_path / "gsm8k-like.jsonl", False)


def test_tiny_base_trains_the_code_recipe_once_where_none_is_shipped(tmp_path, monkeypatch):
    """Without a shipped data/tiny/warmstart-code, the base is the code recipe for `steps` steps (warm-up cut to fit
    them) with the seed given, written to `out`; a second call finds it there and trains nothing."""
    import nanoo1.warmstart as warmstart

    calls = []

    def train(out, config, seed, progress, kind):
        calls.append((out, config.steps, config.warmup, config.lr, seed, kind))
        out.mkdir()
        (out / "model.safetensors").write_text("")

    monkeypatch.setattr(warmstart, "CODE_DIR", tmp_path / "not-shipped")
    monkeypatch.setattr(warmstart, "train_warmstart", train)
    assert warmstart.tiny_base(tmp_path / "base", steps=5, seed=3) == tmp_path / "base"
    assert warmstart.tiny_base(tmp_path / "base", steps=5, seed=3) == tmp_path / "base"
    assert calls == [(tmp_path / "base", 5, 5, warmstart.CODE_SFT.lr, 3, "code")]


def test_warmstart_command_trains_each_kind_with_its_defaults_or_the_flags(tmp_path, monkeypatch, capsys):
    """The mixed warm start by default (1000 steps into data/tiny/warmstart), --think the <think> one (1000 steps,
    into data/tiny/warmstart-think), --code rStar-Math's (500 steps, into data/tiny/warmstart-code); --out,
    --steps, --seed and --threads reach the training and the process set-up."""
    import nanoo1.warmstart as warmstart

    calls = []
    monkeypatch.setattr(warmstart, "process_setup", lambda threads: calls.append(("threads", threads)))
    monkeypatch.setattr(warmstart, "train_warmstart", lambda out, config, seed, kind: calls.append(
        (out, config.steps, seed, kind)))
    for flags in ([], ["--think"], ["--code"], ["--code", "--out", str(tmp_path / "c"), "--steps", "7", "--seed", "3",
                                                  "--threads", "2"]):
        warmstart.main(flags)
    assert calls == [("threads", None), (warmstart.WARMSTART_DIR, 1000, 0, "mixed"),
                     ("threads", None), (warmstart.THINK_DIR, 1000, 0, "think"),
                     ("threads", None), (warmstart.CODE_DIR, 500, 0, "code"),
                     ("threads", 2), (tmp_path / "c", 7, 3, "code")]
    assert warmstart.THINK_PAUSES == 0.5  # the README's "with probability one half"
    assert capsys.readouterr().out.count("wrote") == 4


def test_a_short_warm_start_warms_up_over_no_more_than_its_steps(tmp_path, monkeypatch):
    """`python -m nanoo1.warmstart --steps 10` keeps 10 warm-up steps, not the full run's 30, so its learning rate
    reaches its peak and decays, as evolve's tiny_base does; a full run keeps its own."""
    import nanoo1.warmstart as warmstart

    seen = []
    monkeypatch.setattr(warmstart, "train_warmstart", lambda out, sft, seed, kind: seen.append(sft))
    monkeypatch.setattr(warmstart, "process_setup", lambda threads: None)
    warmstart.main(["--steps", "10", "--out", str(tmp_path / "a")])
    warmstart.main(["--code", "--out", str(tmp_path / "b")])
    assert (seen[0].steps, seen[0].warmup) == (10, 10) and seen[1] == warmstart.CODE_SFT
    assert max(lr_at(step, seen[0]) for step in range(10)) == seen[0].lr
