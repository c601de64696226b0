"""rStar-Math: the step format, keep/reject by execution, PPM pairs and loss, the policy end to end, and the
self-evolution round (nanoo1/evolve.py)."""

import json
import math
import os
import re
import shutil
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import nanoo1.rstar as rstar
import nanoo1.verifiers as verifiers
from conftest import SAMPLE_TEXTS, random_model
from nanoo1.adapters import load_lora
from nanoo1.answers import MAX_ANSWER, check, extract_answer
from nanoo1.checkpoint import load_pretrained, save_pretrained
from nanoo1.engine import Completion
from nanoo1.evolve import EvolveConfig, finetune_policy, run, self_evolution_round, train_ppm
from nanoo1.grow import answer_of, expand
from nanoo1.mcts import MCTSConfig, mcts
from nanoo1.policy import Request
from nanoo1.recipe import LoRASettings
from nanoo1.rounds import best_traces, coverage, draw_rounds, final_pairs, ppm_pairs, sft_examples, slip_pairs
from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.ppm import (PPM_HEAD, ProcessPreferenceModel, fit, orm_loss, outcome_batch_loss, pair_accuracy, pair_batch_loss,
                        ppm_pair_loss, ppm_scores, preference_pairs, save_scorer)
from nanoo1.rstar import (RSTAR_TOKENS, STEP_END, CodeStep, RStarConfig, RStarPolicy, encode_trace, execute_steps, format_step,
                          joined_program, pair_batch, parse_step, ppm_input, rstar_prompt, solution_steps, step_failed,
                          step_ran, step_reward)
from nanoo1.sandbox import SandboxResult, run_many
from nanoo1.search import SearchConfig, search
from nanoo1.sft import lm_loss
from nanoo1.tasks import TINY_DIR, Problem, Step, load_jsonl, make_problems, write_jsonl
from nanoo1.thoughts import Tree
from nanoo1.tokenizer import SPECIAL_TOKENS, train_tokenizer
from nanoo1.verifiers import choose, outcome_examples, printed_answer, verifier_table

MIA = Problem("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. How many apples does Mia have now?", "9",
              [Step(7, "+", 5, 12), Step(12, "-", 3, 9)])
STEP1 = "# Step 1: She buys 5 more.\nx1 = 7 + 5\n" + STEP_END
STEP2 = "# Step 2: She gives 3 to Leo.\nx2 = x1 - 3\n" + STEP_END
STEP3 = "# Step 3: How many apples does Mia have now?\nprint(x2)\n" + STEP_END

TINY_DATA = ["--data", str(TINY_DIR / "train.jsonl"), "--test-data", str(TINY_DIR / "test.jsonl")]  # without --tiny


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are bound by per-op overhead: one thread is faster, and a second one busy-waits badly on a
    loaded 2-core machine (80 training steps below: 0.9 s on one thread, over a minute on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def code_tokenizer():
    """A tiny BPE trained on code-format solutions, with the format's markers as single tokens."""
    texts = [rstar_prompt(p.question, solution_steps(p)) for p in make_problems(300, seed=1)]
    return train_tokenizer(texts, 400, special_tokens=SPECIAL_TOKENS)


@pytest.fixture(scope="module")
def mia_model(code_tokenizer):
    """A tiny Gemma-2 trained from scratch until it writes MIA's solution greedily (about a second)."""
    config = Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=2)
    model = Gemma2(config).init_weights(torch.Generator().manual_seed(0))
    ids, mask = encode_trace(code_tokenizer, MIA.question, solution_steps(MIA))
    ids, mask = torch.tensor([ids]), torch.tensor([mask])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2)
    for _ in range(300):  # usually ~80 steps
        loss = lm_loss(model, ids, torch.ones_like(ids), mask)
        if loss.item() < 0.05:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    return model.eval()


# -- the format ----------------------------------------------------------------------------------------
def test_solution_format_exactly():
    assert MIA.code_steps() == [("Step 1: She buys 5 more.", "x1 = 7 + 5"), ("Step 2: She gives 3 to Leo.", "x2 = x1 - 3"),
                                ("Step 3: How many apples does Mia have now?", "print(x2)")]
    assert solution_steps(MIA) == [STEP1, STEP2, STEP3 + "\n<output>9</output>"]
    assert rstar_prompt(MIA.question, solution_steps(MIA)) == MIA.question + "\n" + (
        "# Step 1: She buys 5 more.\nx1 = 7 + 5\n<end_of_step>\n"
        "# Step 2: She gives 3 to Leo.\nx2 = x1 - 3\n<end_of_step>\n"
        "# Step 3: How many apples does Mia have now?\nprint(x2)\n<end_of_step>\n<output>9</output>\n")
    # sentences that do not line up with the steps: the operation is named instead; exact division is //
    odd = Problem("Ava has 12 cards and splits them into 4 piles.", "3", [Step(12, "/", 4, 3)])
    assert odd.code_steps() == [("Step 1: divide by 4", "x1 = 12 // 4"), ("Step 2: print the answer", "print(x1)")]
    assert Problem("What is 2 + 2?", "4").code_steps() == [] and solution_steps(Problem("What is 2 + 2?", "4")) == []


def test_worked_solutions_print_their_answers():
    problems = make_problems(8, seed=5)
    programs = [joined_program([format_step(*step) for step in p.code_steps()[:-1]], p.code_steps()[-1][1]) for p in problems]
    results = run_many(programs, timeout=5.0)
    assert [r.stdout.strip() for r in results] == [p.answer for p in problems]
    assert any(s.op == "/" for p in problems for s in p.steps)  # exact division is exercised


def test_parse_step():
    assert parse_step(STEP2) == ("Step 2: She gives 3 to Leo.", "x2 = x1 - 3")
    assert parse_step(STEP3 + "\n<output>9</output>") == ("Step 3: How many apples does Mia have now?", "print(x2)")
    assert parse_step("# Step 1: two lines\na = 1\nb = a + 1\n" + STEP_END) == ("Step 1: two lines", "a = 1\nb = a + 1")
    assert parse_step("# Step 1: She buys 5 more.\nx1 = 7 + 5\n") is None  # no delimiter: cut off
    assert parse_step("x1 = 7 + 5\n" + STEP_END) is None  # no comment line
    assert parse_step("# Step 1: only words\n" + STEP_END) is None  # no code
    assert parse_step("# Step 1: blank code\n   \n" + STEP_END) is None
    with pytest.raises(ValueError, match="not a step that ran"):
        joined_program(["# Step 1: cut off\nx1 = "], "print(x1)")


def test_parse_step_needs_its_comment_line():
    """Two lines of code and the delimiter are no step without the `#` comment line before them."""
    assert parse_step("x1 = 7 + 5\nprint(x1)\n" + STEP_END) is None


def test_encode_trace_masks_exactly_what_the_model_writes(code_tokenizer):
    steps = [STEP1, STEP2 + "\n<error>NameError: name 'x' is not defined</error>", STEP3 + "\n<output>9</output>"]
    ids, mask = encode_trace(code_tokenizer, MIA.question, steps)
    assert code_tokenizer.decode(ids) == "<bos>" + rstar_prompt(MIA.question, steps)
    written = code_tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert written == STEP1 + STEP2 + STEP3  # the question, observations and newlines are not the model's
    assert ids.count(code_tokenizer.token_id(STEP_END)) == 3  # the markers are one token each in this tokenizer
    open_ids, open_mask = encode_trace(code_tokenizer, MIA.question, steps, close=False)  # the PPM's input: no last newline
    assert code_tokenizer.decode(open_ids).endswith("<output>9</output>") and (open_ids, open_mask) == (ids[:-1], mask[:-1])


# -- keep or reject ------------------------------------------------------------------------------------
def test_keep_and_reject_decisions_in_one_sandbox_batch(monkeypatch):
    config = RStarConfig(error_threshold=2, max_depth=4, max_output_chars=40)
    failed1 = "# Step 1: typo\nx1 = 7 + y\n" + STEP_END + "\n<error>NameError: name 'y' is not defined</error>"
    cases = [  # (steps above, generated text)
        ([], STEP1 + "\nignored"),                       # runs: kept; text after the delimiter dropped
        ([STEP1], STEP2),                                # uses x1 from step 1: runs only in the joined program
        ([STEP1], "# Step 2: oops\nx2 = x9 - 3\n" + STEP_END),       # NameError: shown, not kept
        ([failed1], "# Step 2: again\nx2 = x1 - 3\n" + STEP_END),    # x1 never ran: second error in a row
        ([failed1], STEP1),                              # the retry runs: the failed code is left out (= case 0)
        ([STEP1], "# Step 2: answer\nprint(x1)\n" + STEP_END),       # final: prints 12
        ([STEP1], "# Step 2: long\nprint(7 ** 70)\n" + STEP_END),    # final, output clipped in the text only
        ([STEP1, STEP2, STEP1], "# Step 4: more\nx4 = x2 + 1\n" + STEP_END),  # depth 4 = max_depth, not final
        ([STEP1, STEP2, STEP1], "# Step 4: done\nprint(x2)\n" + STEP_END),     # depth 4 but final: an answer
        ([STEP1], "# Step 2: never ends\nx2 = x1 - 3\n"),            # no delimiter: invalid, never run
        ([STEP1], "# Step 2: same as above\nx2 = x1 - 3\n" + STEP_END),  # same program as case 1: run once
    ]
    ran = []

    def counting_run_many(programs, **limits):
        ran.extend(programs)
        return run_many(programs, **limits)

    monkeypatch.setattr(rstar, "run_many", counting_run_many)
    steps = execute_steps([c[0] for c in cases], [c[1] for c in cases], config)
    assert [s.status for s in steps] == ["ok", "ok", "error", "errors", "ok", "answer", "answer", "depth", "answer",
                                         "invalid", "ok"]
    assert steps[0].text == STEP1 and steps[1].text == STEP2
    assert steps[2].text.endswith("\n<error>NameError: name 'x9' is not defined</error>") and step_failed(steps[2].text)
    assert steps[3].text.endswith("<error>NameError: name 'x1' is not defined</error>")
    assert (steps[5].answer, steps[5].text) == ("12", "# Step 2: answer\nprint(x1)\n" + STEP_END + "\n<output>12</output>")
    big = str(7 ** 70)  # 60 digits: the observation is cut to 40 characters, then shows the last line whole
    assert steps[6].answer == big and steps[6].text.endswith(f"<output>{big[:40]}...\n{big}</output>")
    assert (steps[8].answer, steps[9].text) == ("9", cases[9][1])
    # 11 cases - 1 invalid - 2 repeats (case 4's program is case 0's, case 10's is case 1's); joined from scratch
    assert len(ran) == 8 and ran[1] == "x1 = 7 + 5\nx2 = x1 - 3\n"
    assert joined_program([failed1, STEP1], "print(x1)") == "x1 = 7 + 5\nprint(x1)\n"
    # rewards: +1 correct answer, -1 wrong answer or failed branch, None while the branch goes on
    assert [step_reward(s, "12") for s in steps[:6]] == [None, None, None, -1.0, None, 1.0]
    assert [step_reward(s, "9") for s in steps[7:10]] == [-1.0, 1.0, -1.0]
    assert step_reward(CodeStep("x", "answer", None), "9") == -1.0  # a final step that printed nothing
    assert step_reward(CodeStep("x", "answer", "9" * 5000), "9") == -1.0  # past int()'s digit limit: wrong, no raise


def test_error_threshold_one_rejects_at_once_and_a_timeout_is_an_error():
    config = RStarConfig(error_threshold=1, timeout=0.5)
    steps = execute_steps([[STEP1], [STEP1]], ["# Step 2: bad\nx2 = x1 / 0\n" + STEP_END,
                                               "# Step 2: loop\nwhile True: pass\n" + STEP_END], config)
    assert [s.status for s in steps] == ["errors", "errors"]
    assert "ZeroDivisionError" in steps[0].text and "<error>Timeout: " in steps[1].text


def test_an_answer_printed_after_a_long_output_is_read_from_the_step_text():
    """The shown output is cut to max_output_chars, but keeps the last line: the step's answer, its reward and
    every reading of its text (answers.extract_answer, as search and the MCTS judge read it) agree."""
    (step,) = execute_steps([[STEP1]], ["# Step 2: x\nfor i in range(60): print(i)\nprint(x1 - 3)\n" + STEP_END], RStarConfig())
    assert step.status == "answer" and step.answer == extract_answer(step.text) == "9"
    assert len(step.text) < 400 and step_reward(step, "9") == 1.0 and check(step.text, "9")


def test_what_a_step_writes_to_stderr_is_neither_its_observation_nor_its_answer():
    """A warning written after the answer was printed (to stderr) is left out of the step's text, so the answer
    is the printed one."""
    (step,) = execute_steps([[STEP1]], ["# Step 2: x\nimport warnings\nprint(x1 - 3)\nwarnings.warn('w')\n" + STEP_END],
                            RStarConfig())
    assert step.status == "answer" and step.answer == "9" and step.text.endswith("<output>9</output>")


def test_a_step_is_final_when_its_code_calls_print_not_when_its_text_says_print():
    """`print(` in a comment or a string makes no final step (it ran, so it is kept and the branch goes on); a
    call of print, written any way, does."""
    generated = ["# Step 2: x\nx2 = x1 - 3  # print(x2) in the next step\n" + STEP_END,
                 "# Step 2: x\nx2 = 'print(x1)'\n" + STEP_END, "# Step 2: x\nprint (x1 - 3)\n" + STEP_END]
    steps = execute_steps([[STEP1]] * 3, generated, RStarConfig())
    assert [(s.status, s.answer) for s in steps] == [("ok", None), ("ok", None), ("answer", "9")]


def test_the_program_cache_keeps_small_runs_only():
    cache = {}
    small, large = "# Step 2: x\nprint(x1 - 3)\n" + STEP_END, "# Step 2: x\nprint('9' * 5000)\n" + STEP_END
    steps = execute_steps([[STEP1], [STEP1]], [small, large], RStarConfig(), cache)
    assert [s.status for s in steps] == ["answer", "answer"] and [len(r.stdout) for r in cache.values()] == [2]
    again = execute_steps([[STEP1], [STEP1]], [small, large], RStarConfig(), cache)
    assert again == steps  # the same judgement from the cache and from a second run


def test_judging_at_the_edges_of_the_error_run_the_depth_and_the_shown_output():
    """With error_threshold 2 and max_depth 4: an error after a failed step and then one that ran is the first
    of a new run ("error"); an error at depth 4 ends the branch ("depth"). An output of exactly
    max_output_chars (40) is shown whole; a longer one is cut and followed by its last line's last MAX_ANSWER
    characters (an answer printed last stays in the text)."""
    config = RStarConfig(error_threshold=2, max_depth=4, max_output_chars=40)
    failed1 = "# Step 1: typo\nx1 = 7 + y\n" + STEP_END + "\n<error>NameError: name 'y' is not defined</error>"
    cases = [([failed1, STEP1], "# Step 2: oops\nx2 = x9 - 3\n" + STEP_END),
             ([STEP1, STEP2, STEP1], "# Step 4: oops\nx4 = x9 - 3\n" + STEP_END),
             ([STEP1], "# Step 2: forty\nprint('7' * 40)\n" + STEP_END),
             ([STEP1], "# Step 2: long\nprint('a' * 1000 + 'b' * 2000)\n" + STEP_END)]
    steps = execute_steps([c[0] for c in cases], [c[1] for c in cases], config)
    assert [s.status for s in steps] == ["error", "depth", "answer", "answer"]
    assert steps[2].text.endswith("<output>" + "7" * 40 + "</output>")
    assert steps[3].text.endswith("<output>" + "a" * 40 + "...\n" + "b" * MAX_ANSWER + "</output>")


def test_the_program_cache_keeps_no_timeout_or_sandbox_failure_and_a_run_of_exactly_cached_chars(monkeypatch):
    """Runs that timed out or that the sandbox itself could not run may go otherwise next time: not cached. A
    run that printed exactly CACHED_CHARS characters (4095 nines and a newline) is."""
    fails = {"'sandbox'": SandboxResult("", False, "SandboxError", "could not start", 0.0),
             "'slow'": SandboxResult("", False, "Timeout", "2.0 s", 2.0)}

    def fake_run_many(programs, **limits):  # the two failures made up, the third program run
        keys = [next((k for k in fails if k in p), None) for p in programs]
        return [fails[k] if k else run_many([p], **limits)[0] for k, p in zip(keys, programs)]

    monkeypatch.setattr(rstar, "run_many", fake_run_many)
    cache = {}
    generated = ["# Step 2: a\nx2 = 'sandbox'\n" + STEP_END, "# Step 2: b\nx2 = 'slow'\n" + STEP_END,
                 f"# Step 2: c\nprint('9' * {rstar.CACHED_CHARS - 1})\n" + STEP_END]
    steps = execute_steps([[STEP1]] * 3, generated, RStarConfig(), cache)
    assert [s.status for s in steps] == ["error", "error", "answer"]
    assert [len(r.stdout) for r in cache.values()] == [rstar.CACHED_CHARS]


def test_a_failed_branch_is_minus_one_whatever_answer_its_step_holds():
    """step_reward's +1 is for a final step ("answer") only: a terminal that ended its branch is -1."""
    ended = [CodeStep("x", status, "12") for status in ("depth", "errors", "invalid")]
    assert [step_reward(step, "12") for step in ended] == [-1.0] * 3


# -- the PPM -------------------------------------------------------------------------------------------
def test_ppm_pair_loss_known_values():
    # pairs (0.5, -0.5) and (0.0, 1.0): -log sigmoid(1) = log(1 + e^-1) = 0.3132617, -log sigmoid(-1) = 1.3132617
    loss = ppm_pair_loss(torch.tensor([0.5, 0.0]), torch.tensor([-0.5, 1.0]))
    assert loss.item() == pytest.approx((0.3132617 + 1.3132617) / 2, abs=1e-6)
    assert ppm_pair_loss(torch.zeros(3), torch.zeros(3)).item() == pytest.approx(math.log(2))


def test_ppm_head_shape_padding_and_gradients():
    backbone = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2), seed=3)
    ppm = ProcessPreferenceModel(backbone)
    assert ppm.head.weight.shape == (1, 64) and ppm.head.bias.shape == (1,)
    ids = torch.tensor([[2, 11, 12, 13, 14], [2, 21, 22, 0, 0], [0, 0, 2, 31, 32]])  # full, right-, left-padded
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    r = ppm(ids, mask)
    assert r.shape == (3,) and torch.equal(r, torch.zeros(3))  # a zero head: no preference yet
    loss = ppm_pair_loss(r[:1], r[1:2])
    assert loss.item() == pytest.approx(math.log(2))
    loss.backward()
    assert ppm.head.weight.grad.abs().sum() > 0  # gradients reach the head ...
    with torch.no_grad():
        ppm.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    ppm.zero_grad()
    r = ppm(ids, mask)
    assert r.abs().max() < 1 and r.abs().min() > 0  # tanh: inside (-1, 1)
    ppm_pair_loss(r[:1], r[1:2]).backward()
    assert backbone.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0  # ... and through it to the decoder
    # the score is read at the last real token, whatever the padding
    alone = [ppm(ids[i:i + 1, mask[i].bool()]).item() for i in range(3)]
    assert r.tolist() == pytest.approx(alone, abs=1e-5)


def _tree():
    """root -> a..h with hand-set Q-values and terminals below (see test_preference_pairs)."""
    tree = Tree(MIA.question)
    root = tree.root

    def add(parent, text, value, terminal=None):
        return tree.add(parent, "<conclusion>" if terminal else "<expansion>", text, value=value, terminal=terminal)

    a, b, c = add(root, "a", 0.5), add(root, "b", 0.9), add(root, "c", 0.1)
    d, e, f = add(root, "d", -0.2), add(root, "e", -0.8, "failure"), add(root, "f", -0.5)
    add(root, "g", None)  # never valued: skipped
    add(root, "h", 0.0)  # nothing below it ended: neither side
    add(a, "a1", 1.0, "success"), add(a, "a2", -1.0, "failure"), add(b, "b1", 1.0, "success")
    add(c, "c1", 1.0, "success"), add(d, "d1", -1.0, "failure"), add(f, "f1", -1.0, "failure")
    return tree


def test_preference_pairs_on_a_hand_made_tree():
    tree = _tree()
    pairs = [(p.text, n.text) for p, n in preference_pairs(tree)]
    # root: correct below a (0.5), b (0.9), c (0.1) -> best two b, a; only wrong below d (-0.2), e (-0.8), f (-0.5)
    # -> worst two e, f; 2 x 2 pairs. Under a: a1 (success) against a2 (failure). b, c, d, f: one side only.
    assert pairs == [("b", "e"), ("b", "f"), ("a", "e"), ("a", "f"), ("a1", "a2")]
    assert len(preference_pairs(tree, per_side=1)) == 2  # (b, e) and (a1, a2)
    a = tree.root.children[0]
    tree.add(a.children[1], "<conclusion>", "a21", value=1.0, terminal="success")  # a correct answer below a2 now
    assert [(p.text, n.text) for p, n in preference_pairs(tree)][-1:] == [("a", "f")]  # a2 is no negative any more


def test_preference_pairs_leave_out_steps_that_did_not_run():
    tree = Tree(MIA.question)
    failed = "# Step 1: x\nx1 = {0}\n" + STEP_END + "\n<error>NameError: name '{0}' is not defined</error>"
    ran, wrong = tree.add(tree.root, "<expansion>", STEP1, value=0.5), tree.add(tree.root, "<expansion>", "w", value=-0.5)
    above = tree.add(tree.root, "<expansion>", failed.format("y"), value=0.9)  # the best Q, and a success below it
    below = tree.add(tree.root, "<expansion>", failed.format("z"), value=-0.9)  # the worst Q, only a failure below it
    for parent, terminal in [(ran, "success"), (wrong, "failure"), (above, "success"), (below, "failure")]:
        tree.add(parent, "<conclusion>", STEP3, value=0.0, terminal=terminal)
    assert preference_pairs(tree, per_side=1) == [(above, below)]
    assert preference_pairs(tree, usable=lambda n: not step_failed(n.text)) == [(ran, wrong)]


def test_preference_pairs_count_siblings_of_the_same_text_as_one_step():
    """Sampling writes the same step twice under a parent; one copy may end right and the other wrong. They are one
    step: never paired with each other, a positive when any copy reaches a correct answer, valued at the copies'
    visit-weighted mean Q, and represented by the first copy."""
    tree = Tree(MIA.question)
    lucky = tree.add(tree.root, "<expansion>", STEP1, value=-0.6, visits=1)  # its copy below ends right
    twin = tree.add(tree.root, "<expansion>", STEP1, value=0.6, visits=3)
    wrong = tree.add(tree.root, "<expansion>", "w", value=0.1, visits=2)
    other = tree.add(tree.root, "<expansion>", "o", value=0.2, visits=2)
    for parent, terminal in [(lucky, "failure"), (twin, "success"), (wrong, "failure"), (other, "success")]:
        tree.add(parent, "<conclusion>", STEP3, value=0.0, terminal=terminal)
    # STEP1's Q is (1 x -0.6 + 3 x 0.6) / 4 = 0.3, above o's 0.2; the step is no negative, though a copy failed
    assert preference_pairs(tree, per_side=1) == [(lucky, wrong)]
    assert preference_pairs(tree) == [(lucky, wrong), (other, wrong)]
    twin.value = 0.0  # (1 x -0.6 + 3 x 0.0) / 4 = -0.15: o is the better positive now
    assert preference_pairs(tree, per_side=1) == [(other, wrong)]


def test_preference_pairs_merge_what_grew_under_two_copies_of_a_step():
    """The search grows each copy of a step apart: below them, the same steps are one step too. Under STEP1's two
    copies, o ends right and w wrong under the first, and w ends right under the second; w is a positive (a copy
    of its path reaches a correct answer), so there is no pair below STEP1. And a pair that grew under both copies
    is taken once."""
    tree = Tree(MIA.question)
    first = tree.add(tree.root, "<expansion>", STEP1, value=0.5, visits=2)
    second = tree.add(tree.root, "<expansion>", STEP1, value=0.5, visits=2)
    tree.add(first, "<conclusion>", "o", value=1.0, terminal="success")
    tree.add(first, "<conclusion>", "w", value=-1.0, terminal="failure")
    tree.add(second, "<conclusion>", "w", value=1.0, terminal="success")
    assert preference_pairs(tree) == []
    third = tree.add(tree.root, "<expansion>", "t", value=0.0, visits=2)  # one more step, with a copy of it
    fourth = tree.add(tree.root, "<expansion>", "t", value=0.0, visits=2)
    for parent in (third, fourth):
        tree.add(parent, "<conclusion>", "r", value=1.0, terminal="success")
        tree.add(parent, "<conclusion>", "x", value=-1.0, terminal="failure")
    pairs = [(p.text, n.text) for p, n in preference_pairs(tree)]
    assert pairs == [("r", "x")]  # t and STEP1 are both positives; r against x once


def test_preference_pairs_take_no_negative_from_a_step_whose_branch_never_ended():
    """A negative has a failure terminal below it: a valued step with nothing ended below it (u, the lowest Q) is
    neither side, so the one pair is (s, w), as is a step whose only child is unfinished (v)."""
    tree = Tree(MIA.question)
    s = tree.add(tree.root, "<expansion>", "s", value=0.5)
    u = tree.add(tree.root, "<expansion>", "u", value=-0.9)
    v = tree.add(tree.root, "<expansion>", "v", value=-0.8)
    w = tree.add(tree.root, "<expansion>", "w", value=-0.1)
    tree.add(s, "<conclusion>", "s1", value=1.0, terminal="success")
    tree.add(v, "<expansion>", "v1", value=0.0)
    tree.add(w, "<conclusion>", "w1", value=-1.0, terminal="failure")
    assert preference_pairs(tree) == [(s, w)]


def _biased_ppm(bias: float) -> ProcessPreferenceModel:
    """A PPM whose zero head has bias b: every path scores tanh(b)."""
    ppm = ProcessPreferenceModel(random_model(Gemma2Config.preset("tiny", num_hidden_layers=1), seed=0))
    with torch.no_grad():
        ppm.head.bias.fill_(bias)
    return ppm


def test_ppm_scores_score_every_sequence_across_batches():
    """Three sequences in batches of 2, and one alone: one score each, tanh(0.5) = 0.4621172 for every one."""
    ppm = _biased_ppm(0.5)
    scores = ppm_scores(ppm, [[2, 5], [2, 6, 7], [2]], pad_id=0, batch_size=2)
    assert scores.tolist() == pytest.approx([0.4621172] * 3, abs=1e-6)
    assert ppm_scores(ppm, [[2, 5]], pad_id=0).tolist() == pytest.approx([0.4621172], abs=1e-6)
    assert ppm_scores(ppm, [], pad_id=0).shape == (0,)


def _rows_read(ppm):
    """The PPM with its forward passes recorded: the list of every batch's rows, as token-id tuples."""
    seen, forward = [], ppm.forward
    ppm.forward = lambda ids, mask: seen.append([tuple(r[m.bool()].tolist()) for r, m in zip(ids, mask)]) or forward(ids, mask)
    return seen


def test_ppm_scores_read_a_sequence_given_twice_once():
    """A sequence given twice (a step sampled twice) is scored once and its score given to both: 3 distinct of
    5, in batches of 2, score as each does alone."""
    ppm = _biased_ppm(0.1)
    torch.nn.init.normal_(ppm.head.weight, std=0.5, generator=torch.Generator().manual_seed(3))
    a, b, c = [2, 5], [2, 6, 7], [2, 9, 9, 4]
    alone = [ppm_scores(ppm, [x], pad_id=0).item() for x in (a, b, c)]
    seen = _rows_read(ppm)
    scores = ppm_scores(ppm, [a, b, a, c, b], pad_id=0, batch_size=2)
    assert scores.tolist() == pytest.approx([alone[0], alone[1], alone[0], alone[2], alone[1]], abs=1e-6)
    assert seen == [[tuple(a), tuple(b)], [tuple(c)]] and len(set(alone)) == 3


def test_pair_batch_loss_reads_each_path_of_the_trees_once():
    """Two trees' pairs that share paths (a against b and c, d against b; b against e) are one batch of the 5
    distinct paths, and the loss is `ppm_pair_loss` of the 4 pairs scored one by one."""
    ppm = _biased_ppm(0.1)
    torch.nn.init.normal_(ppm.head.weight, std=0.5, generator=torch.Generator().manual_seed(3))
    a, b, c, d, e = [2, 5], [2, 6, 7], [2, 9, 9, 4], [2, 3], [2, 8, 1]
    trees = [[(a, b), (a, c), (d, b)], [(b, e)]]
    r = {tuple(x): ppm_scores(ppm, [x], pad_id=0) for x in (a, b, c, d, e)}
    want = ppm_pair_loss(torch.cat([r[tuple(p)] for p in (a, a, d, b)]), torch.cat([r[tuple(n)] for n in (b, c, b, e)]))
    seen = _rows_read(ppm)
    with torch.no_grad():
        loss = pair_batch_loss(ppm, trees, pad_id=0)
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert seen == [[tuple(a), tuple(b), tuple(c), tuple(d), tuple(e)]]


def test_outcome_batch_loss_labels_the_right_answers_1():
    """Score tanh(0.5) for every path: p = (1 + tanh 0.5) / 2 = sigmoid(1) = 0.7310586. Two right, one wrong:
    L = -(2 log p + log(1 - p)) / 3 = (2 x 0.3132617 + 1.3132617) / 3 = 0.6465950."""
    loss = outcome_batch_loss(_biased_ppm(0.5), [([2, 5], True), ([2, 6, 7], True), ([2, 8], False)], 0)
    assert loss.item() == pytest.approx((2 * 0.3132617 + 1.3132617) / 3, abs=1e-6)


def test_fit_takes_whole_passes_warms_up_and_decays_no_weight(monkeypatch):
    """fit on 3 items, 2 a step, 20 steps at lr 1: every step holds 2 items and steps 1-3 deal two whole
    passes (each item twice); the rate warms up over max(1, 20 // 10) = 2 steps (0.5, 1) and falls along the
    cosine to 0.1 + 0.45 (1 + cos(17 pi / 18)) at the last step; a parameter whose gradient is 0 stays where it
    was (weight decay 0); with 4 a step on 3 items a step holds the 3 and its loss is their mean, unscaled."""
    import nanoo1.ppm as ppm_module

    ppm = _biased_ppm(0.5)
    rates, real = [], ppm_module.set_lr
    monkeypatch.setattr(ppm_module, "set_lr", lambda opt, lr: rates.append(lr) or real(opt, lr))
    batches = []

    def loss_of(model, items, pad_id):  # a constant 1.5 whose gradient reaches the head's bias as 0
        batches.append(list(items))
        return 0.0 * model.head.bias.sum() + 1.5

    losses = fit(ppm, ["a", "b", "c"], loss_of, 0, steps=20, per_step=2, lr=1.0)
    assert [len(b) for b in batches] == [2] * 20
    assert sorted(sum(batches[:3], [])) == ["a", "a", "b", "b", "c", "c"]
    assert rates[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert rates[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(17 * math.pi / 18)))
    assert ppm.head.bias.item() == 0.5 and losses == pytest.approx([1.5] * 20)
    batches.clear()
    assert fit(_biased_ppm(0.5), ["a", "b", "c"], loss_of, 0, steps=2, per_step=4, lr=1.0) == pytest.approx([1.5, 1.5])
    assert [sorted(b) for b in batches] == [["a", "b", "c"]] * 2


def test_pair_batch_rows(code_tokenizer):
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", STEP1, value=0.5)
    good = tree.add(s1, "<conclusion>", STEP2, value=1.0, terminal="success")
    bad = tree.add(s1, "<conclusion>", "# Step 2: x\nx2 = x1 + 3\n" + STEP_END, value=-1.0, terminal="failure")
    pairs = preference_pairs(tree)
    assert pairs == [(good, bad)]
    ids, mask = pair_batch(tree, pairs, code_tokenizer)
    assert ids.shape[0] == 2 and mask.shape == ids.shape
    # each row ends on its path's last step's last token, where the PPM reads it
    full = "<bos>" + rstar_prompt(MIA.question, [STEP1, STEP2])
    assert code_tokenizer.decode(ids[0, mask[0].bool()].tolist()) == full.removesuffix("\n")
    assert code_tokenizer.decode(ids[1, mask[1].bool()].tolist()).endswith("\nx2 = x1 + 3\n<end_of_step>")


def test_ppm_learns_a_preference_from_pairs(code_tokenizer):
    backbone = Gemma2(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    ppm = ProcessPreferenceModel(backbone.init_weights(torch.Generator().manual_seed(0)))
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", STEP1, value=0.0)
    tree.add(s1, "<conclusion>", STEP2, value=1.0, terminal="success")
    tree.add(s1, "<conclusion>", "# Step 2: x\nx2 = x1 + 3\n" + STEP_END, value=-1.0, terminal="failure")
    ids, mask = pair_batch(tree, preference_pairs(tree), code_tokenizer)
    opt = torch.optim.AdamW(ppm.parameters(), lr=1e-3)  # 1e-2 drives both scores into tanh's flat ends
    for _ in range(20):
        r = ppm(ids, mask)
        loss = ppm_pair_loss(r[:1], r[1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    r = ppm(ids, mask)
    # from log 2 = 0.693 toward the floor of scores in [-1, 1]: -log sigmoid(2) = 0.127
    assert r[0] > 0 > r[1] and ppm_pair_loss(r[:1], r[1:]).item() < 0.3


WRONG_END = f"# Step 2: x\nprint(1)\n{STEP_END}\n<output>1</output>"  # a last step that printed an answer

def test_best_traces_by_mean_q():
    tree = _tree()
    root = tree.root
    broken = tree.add(root, "<expansion>", STEP1 + "\n<error>NameError: x</error>", value=1.0)
    tree.add(broken, "<conclusion>", "z", value=1.0, terminal="success")  # mean Q 1.0, but a step did not run
    # b -> b1: (0.9 + 1) / 2 = 0.95;  a -> a1: 0.75;  c -> c1: 0.55
    assert [[n.text for n in p[1:]] for p in best_traces(tree)] == [["b", "b1"], ["a", "a1"]]
    assert len(best_traces(tree, n=5)) == 3
    # a solution sampled twice is one trace: a copy of b -> b1 (its mean Q 0.85 above a's 0.75) is not the second
    copy = tree.add(root, "<expansion>", "b", value=0.7)
    tree.add(copy, "<conclusion>", "b1", value=1.0, terminal="success")
    assert [[n.text for n in p[1:]] for p in best_traces(tree)] == [["b", "b1"], ["a", "a1"]]
    assert best_traces(tree)[0][1] is root.children[1]  # the copy of the higher mean Q stands for it
    assert len(best_traces(tree, n=5)) == 3


def test_paths_are_ranked_by_mean_q_not_its_sum():
    tree = Tree("q")
    a = tree.add(tree.root, "<expansion>", "a", value=0.9)
    tree.add(a, "<conclusion>", "a1", value=1.0, terminal="success")  # mean (0.9 + 1) / 2 = 0.95, sum 1.9
    b = tree.add(tree.add(tree.root, "<expansion>", "b", value=0.5), "<expansion>", "b2", value=0.5)
    tree.add(b, "<conclusion>", "b3", value=1.0, terminal="success")  # mean 2 / 3 = 0.67, sum 2.0
    assert [[n.text for n in p[1:]] for p in best_traces(tree, n=1)] == [["a", "a1"]]
    wrong = [tree.add(tree.add(tree.root, "<expansion>", "w1", value=-0.2), "<conclusion>", WRONG_END, value=-1.0,
                      terminal="failure")]  # mean -0.6, sum -1.2
    w3 = tree.add(tree.add(tree.root, "<expansion>", "w2", value=-0.3), "<expansion>", "w3", value=-0.3)
    wrong.append(tree.add(w3, "<conclusion>", WRONG_END, value=-0.7, terminal="failure"))  # mean -0.43, sum -1.3
    assert [neg for _, neg in final_pairs(tree, per_side=1)] == [wrong[0]]

def test_final_pairs_put_the_best_correct_trajectories_against_the_worst_that_printed_a_wrong_answer(code_tokenizer):
    tree = Tree(MIA.question)

    def answer(parent, code, out, value, terminal):
        text = f"# Step 2: How many now?\n{code}\n{STEP_END}\n<output>{out}</output>"
        return tree.add(parent, "<conclusion>", text, value=value, terminal=terminal)

    s1, w = tree.add(tree.root, "<expansion>", STEP1, value=0.5), tree.add(tree.root, "<expansion>", WRONG1, value=-0.5)
    right, wrong = answer(s1, "print(x1 - 3)", 9, 1.0, "success"), answer(s1, "print(x1 + 3)", 15, -1.0, "failure")
    wrong2 = answer(w, "print(x1 - 3)", 10, -1.0, "failure")
    tree.add(w, "<conclusion>", "not a step", value=-1.0, terminal="failure")  # printed nothing: no negative
    broken = tree.add(tree.root, "<expansion>", STEP1 + "\n<error>NameError: y</error>", value=-0.9)
    answer(broken, "print(x1)", 12, -1.0, "failure")  # a step of it did not run: no negative
    # mean Q: right (0.5 + 1) / 2 = 0.75; wrong2 (-0.5 - 1) / 2 = -0.75 first, then wrong (0.5 - 1) / 2 = -0.25
    assert final_pairs(tree) == [(right, wrong2), (right, wrong)]
    assert final_pairs(tree, per_side=1) == [(right, wrong2)]
    assert final_pairs(Tree(MIA.question)) == []
    # in evolve's pairs (right, wrong) comes once: it is a sibling pair too; the step that did not run is in none
    ran = preference_pairs(tree, usable=lambda node: not step_failed(node.text))
    assert [len(pairs) for pairs in ppm_pairs(code_tokenizer, [tree])] == [len(ran) + 1]
    twin = tree.add(tree.root, "<expansion>", STEP1, value=0.5)  # a copy of s1, a copy of the right answer below it
    answer(twin, "print(x1 - 3)", 9, 1.0, "success")
    assert final_pairs(tree) == [(right, wrong2), (right, wrong)]  # the copy of the right trajectory is no other
    assert len(preference_pairs(tree, usable=lambda n: not step_failed(n.text))) == 2
    wrong3 = answer(tree.add(tree.root, "<expansion>", WRONG1, value=-0.5), "print(x1 - 3)", 10, -1.0, "failure")
    assert wrong3.text == wrong2.text and final_pairs(tree) == [(right, wrong2), (right, wrong)]  # nor of a wrong one
    assert [len(pairs) for pairs in ppm_pairs(code_tokenizer, [tree])] == [len(ran) + 1]
    assert len(ran) < len(preference_pairs(tree))


def test_ppm_pairs_take_no_step_that_was_cut_off_before_it_ran(code_tokenizer):
    """A step cut off at max_step_tokens (no STEP_END) never ran: it is no step of rStar's tree, so no negative,
    though its Q (a failure at once, -1) is the lowest of its siblings."""
    tree = Tree(MIA.question)
    cut = "# Step 1: She buys 5 more.\nx1 = 7 +"
    assert not step_ran(cut) and step_ran(STEP1) and not step_ran(STEP1 + "\n<error>NameError: y</error>")
    right, wrong = tree.add(tree.root, "<expansion>", STEP1, value=0.5), tree.add(tree.root, "<expansion>", WRONG1, value=-0.5)
    tree.add(right, "<conclusion>", STEP3, value=1.0, terminal="success")
    tree.add(wrong, "<conclusion>", STEP3, value=-1.0, terminal="failure")
    tree.add(tree.root, "<expansion>", cut, value=-1.0, terminal="failure")
    assert [n.text for _, n in preference_pairs(tree)] == [cut, WRONG1]  # the plain rule takes it
    (pairs,) = ppm_pairs(code_tokenizer, [tree])
    assert pairs == [(ppm_input(code_tokenizer, tree.path(right)), ppm_input(code_tokenizer, tree.path(wrong)))]


def test_final_pairs_take_no_negative_without_a_wrong_printed_answer_or_with_an_unvalued_step():
    """Negatives are <conclusion> failures whose every step ran and was valued and that printed an output. Left
    out: a step that printed "." (judged an answer that states none, so a failure <expansion>), a <conclusion>
    that prints but shows no output, and a wrong answer below a step with no value. One negative is left."""
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", STEP1, value=0.5)
    right = tree.add(s1, "<conclusion>", f"# Step 2: x\nprint(x1 - 3)\n{STEP_END}\n<output>9</output>", value=1.0,
                     terminal="success")
    wrong = tree.add(s1, "<conclusion>", WRONG_END, value=-1.0, terminal="failure")
    (dot,) = execute_steps([[STEP1]], ["# Step 2: x\nprint('.')\n" + STEP_END], RStarConfig())
    assert dot.status == "answer" and dot.answer is None and dot.text.endswith("<output>.</output>")
    tree.add(s1, "<expansion>", dot.text, value=-1.0, terminal="failure")
    tree.add(s1, "<conclusion>", "# Step 2: x\nprint(x1)\n" + STEP_END, value=-1.0, terminal="failure")
    tree.add(tree.add(tree.root, "<expansion>", STEP1), "<conclusion>", WRONG_END, value=-1.0, terminal="failure")
    assert final_pairs(tree) == [(right, wrong)]


# -- the policy end to end -----------------------------------------------------------------------------
def test_policy_on_a_random_model_generates_executes_and_judges(monkeypatch):
    # a tokenizer without the markers: the policy stops on the delimiter as a string
    plain = train_tokenizer(SAMPLE_TEXTS, 400, special_tokens=[t for t in SPECIAL_TOKENS if t not in RSTAR_TOKENS])
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2), seed=1)
    policy = RStarPolicy(model, plain, RStarConfig(max_step_tokens=24), seed=0)
    assert policy.stop_strings == [STEP_END]
    ran = []
    monkeypatch.setattr(rstar, "run_many", lambda programs, **kw: ran.append(programs) or run_many(programs, **kw))
    sampled = policy.sample_steps([MIA.question, MIA.question], [[], [STEP1]], [3, 3])
    assert [len(s) for s in sampled] == [3, 3]
    for step, row in [pair for per_path in sampled for pair in per_path]:  # "#" is forced, the rest sampled
        assert (step.status == "invalid") == (parse_step("#" + row.text) is None)
        assert step.text.startswith("#" + row.text.split(STEP_END)[0])
        assert row.prompt[-len(policy.prefix_ids):] == plain.encode("#", add_bos=False) and plain.decode(row.tokens) == row.text
    programs = {joined_program(p, parse_step(step.text)[1]) for p, s in zip([[], [STEP1]], sampled)
                for step, _ in s if step.status != "invalid"}
    assert [sorted(batch) for batch in ran] == ([sorted(programs)] if programs else [])  # one sandbox batch for the whole round, none if nothing parsed
    assert set(policy.ran) == {p for p in programs if policy.ran[p].error != "Timeout"}


def test_policy_judges_scripted_steps_and_fills_candidates(code_tokenizer, monkeypatch):
    # generation scripted per prompt, so every verdict is known; execution is real
    after1 = rstar_prompt(MIA.question, [STEP1])
    script = {MIA.question + "\n": [STEP1, "# Step 1: typo\nx1 = 7 + y\n" + STEP_END, "# Step 1: rambling on and on"],
              after1: [STEP2, "# Step 2: shortcut\nprint(x1)\n" + STEP_END, "# Step 2: nothing\nprint()\n" + STEP_END]}
    calls, batches = [], []

    def scripted_generate(model, prompts, max_new_tokens, temperature, *args, num_samples=1, tokenizer=None, suffixes=None,
                          **kwargs):
        calls.append((len(prompts), num_samples, temperature))
        assert suffixes == [[tokenizer.token_id("#")]] * (len(prompts) * num_samples)  # every step starts with "#"
        rows = []
        for p in prompts:
            texts = script[tokenizer.decode(p).removeprefix("<bos>")]
            rows += [Completion(list(p) + suffixes[0], [5, 6], texts[j].removeprefix("#"), logprobs=[-0.5, -0.5],
                                scaled_logprobs=[-0.4, -0.4],
                                entropy=[1.0, 2.0], varentropy=[0.5, 0.5], forced=[False, False])
                     for j in range(num_samples)]
        return rows

    monkeypatch.setattr(rstar, "generate", scripted_generate)
    monkeypatch.setattr(rstar, "run_many", lambda programs, **kw: batches.append(programs) or run_many(programs, **kw))
    policy = RStarPolicy(random_model(Gemma2Config.preset("tiny", num_hidden_layers=1)), code_tokenizer)
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", STEP1)
    requests = [Request(tree, tree.root, [None] * 3, [None] * 3), Request(tree, s1, [None] * 3, [None] * 3),
                Request(tree, s1, [None], [None], temperature=0.0)]
    root_c, s1_c, greedy_c = policy.propose(requests)
    assert calls == [(2, 3, 1.0), (1, 1, 0.0)]  # one generate call per temperature, each prompt forked k ways
    # one sandbox batch for the first call; the invalid step never runs, and the greedy STEP2 under s1 ran in it
    assert len(batches) == 1 and len(batches[0]) == 5 and len(policy.ran) == 5
    assert [(c.status, c.meta, c.terminal, c.answer) for c in root_c] == [
        ("ok", "<expansion>", None, None), ("error", "<expansion>", None, None),
        ("invalid", "<expansion>", "failure", None)]
    assert [(c.status, c.meta, c.terminal, c.answer) for c in s1_c] == [
        ("ok", "<expansion>", None, None), ("answer", "<conclusion>", None, "12"),  # judged by search: 12 != 9
        ("answer", "<expansion>", "failure", None)]  # printed nothing: no answer
    assert root_c[1].text.endswith("<error>NameError: name 'y' is not defined</error>")
    assert s1_c[1].text == "# Step 2: shortcut\nprint(x1)\n" + STEP_END + "\n<output>12</output>"
    assert [c.prompt for c in s1_c] == [after1 + "#"] * 3 and greedy_c[0].text == STEP2
    n_prompt = len(encode_trace(code_tokenizer, MIA.question, [STEP1])[0])
    assert [c.prompt_tokens for c in s1_c] == [n_prompt + 1, 1, 1]  # a forked prompt is prefilled once, "#" per fork
    c = root_c[0]  # policy statistics from the sampled tokens
    assert (c.tokens, c.logprobs, c.entropy, c.varentropy) == ([5, 6], [-0.4, -0.4], 1.5, 0.5)
    assert c.prior == pytest.approx(math.exp(-0.5))  # exp(mean log-prob under the model)
    values, tokens = policy.evaluate([tree.path(s1)])
    assert (values, tokens) == ([0.0], [0])  # no PPM yet: terminal rewards alone guide the search
    (kids,), _ = expand(policy, requests[:1])  # search keeps the policy's verdict on the node
    assert [(k.meta, k.terminal) for k in kids] == [("<expansion>", None), ("<expansion>", None), ("<expansion>", "failure")]


def test_the_ppm_reads_a_path_given_twice_once_and_counts_its_tokens_once(code_tokenizer):
    """RStarPolicy.evaluate with a PPM: each path's score, the same for a path given twice, whose tokens count once,
    as `ppm_scores` scores it once (a round's ppm_tokens are the tokens the PPM read)."""
    torch.manual_seed(0)
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    ppm = ProcessPreferenceModel(model)
    torch.nn.init.normal_(ppm.head.weight, std=0.01)  # small: tanh far from saturating, so the two paths differ
    policy = RStarPolicy(model, code_tokenizer, ppm=ppm)
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", "# Step 1: x\nx1 = 7 + 5\n" + STEP_END)
    other = tree.add(tree.root, "<expansion>", "# Step 1: y\nx1 = 7 - 5\n" + STEP_END)
    values, tokens = policy.evaluate([tree.path(s1), tree.path(other), tree.path(s1)])
    n1, n2 = (len(rstar.ppm_input(code_tokenizer, tree.path(n))) for n in (s1, other))
    assert tokens == [n1, n2, 0] and values[0] == values[2] != values[1]
    alone = ppm_scores(ppm, [rstar.ppm_input(code_tokenizer, tree.path(s1))], code_tokenizer.pad_id).item()
    assert values[0] == pytest.approx(alone, abs=1e-6)


def test_requests_of_unequal_k_each_prefill_their_own_prompt(code_tokenizer, monkeypatch):
    step = "# Step 1: x\nx1 = 7 + 5\n" + STEP_END

    def scripted(model, prompts, *a, num_samples=1, suffixes=None, **kw):
        return [Completion(list(p) + suffixes[0], [5], step.removeprefix("#"), logprobs=[-0.5], scaled_logprobs=[-0.5],
                           entropy=[1.0], varentropy=[0.5], forced=[False]) for p in prompts for _ in range(num_samples)]

    monkeypatch.setattr(rstar, "generate", scripted)
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    policy = RStarPolicy(model, code_tokenizer)
    tree = Tree(MIA.question)
    a, b = policy.propose([Request(tree, tree.root, [None] * 2, [None] * 2), Request(tree, tree.root, [None] * 3, [None] * 3)])
    # k = 2 and k = 3 are not one fork: every candidate counts its prompt (the trace and step_prefix, one token)
    n = len(encode_trace(code_tokenizer, tree.question, [])[0]) + 1
    assert [c.prompt_tokens for c in a] == [n, n] and [c.prompt_tokens for c in b] == [n] * 3

def test_steps_that_end_their_branch_without_an_answer_give_search_none(code_tokenizer, monkeypatch):
    # the only steps: one whose code fails (error_threshold 1 ends the branch) and one that prints nothing;
    # both texts hold a number, which no search may take for an answer
    texts = ["# Step 1: x\nraise ValueError(18)\n" + STEP_END, "# Step 1: y\nprint()\n" + STEP_END]

    def scripted_generate(model, prompts, *args, num_samples=1, suffixes=None, **kwargs):
        return [Completion(list(p) + suffixes[0], [5], texts[j].removeprefix("#"), logprobs=[-0.5], scaled_logprobs=[-0.5],
                           entropy=[1.0], varentropy=[0.5], forced=[False]) for p in prompts for j in range(num_samples)]

    monkeypatch.setattr(rstar, "generate", scripted_generate)
    policy = RStarPolicy(random_model(Gemma2Config.preset("tiny", num_hidden_layers=1)), code_tokenizer,
                         RStarConfig(error_threshold=1))
    for config in [SearchConfig(method="greedy"), SearchConfig(method="best_of_n", n=2),
                   SearchConfig(method="beam", n=2, expand=2)]:
        (result,) = search(policy, [MIA.question], config)
        ends = result.tree.root.children
        assert [(n.meta, n.terminal, answer_of(n)) for n in ends] == [("<expansion>", "failure", None)] * len(ends)
        assert ends[0].text.endswith("<error>ValueError: 18</error>") and result.answer is None


def test_a_policy_allowed_no_step_tokens_proposes_invalid_failures(code_tokenizer):
    """max_step_tokens 0: every candidate is the forced "#" alone, an invalid step ending its branch, with
    entropy and varentropy 0 over its no sampled tokens (not a division by zero)."""
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1), seed=1)
    tree = Tree(MIA.question)
    (cands,) = RStarPolicy(model, code_tokenizer, RStarConfig(max_step_tokens=0)).propose(
        [Request(tree, tree.root, [None] * 2, [None] * 2)])
    assert [(c.text, c.status, c.terminal, c.tokens, c.entropy, c.varentropy) for c in cands] == \
           [("#", "invalid", "failure", [], 0.0, 0.0)] * 2


def test_max_rows_splits_the_candidate_steps_into_calls_of_at_most_that_many(mia_model, code_tokenizer, monkeypatch):
    import nanoo1.rstar as rstar

    def run(max_rows):
        calls, real = [], rstar.generate
        monkeypatch.setattr(rstar, "generate", lambda m, prompts, *a, **kw: calls.append(len(prompts) * kw["num_samples"])
                            or real(m, prompts, *a, **kw))
        policy = RStarPolicy(mia_model, code_tokenizer, RStarConfig(temperature=0.0, max_step_tokens=40, max_rows=max_rows))
        trees = [Tree(MIA.question) for _ in range(3)]
        proposed = policy.propose([Request(t, t.root, [None] * 2, [None] * 2) for t in trees])
        monkeypatch.undo()
        return calls, [[c.text for c in cands] for cands in proposed]

    calls, texts = run(0)
    assert calls == [6] and texts == [[STEP1] * 2] * 3
    assert run(4) == ([4, 2], texts) and run(2) == ([2, 2, 2], texts)  # a request's candidates stay together


def test_trained_policy_keeps_its_steps_and_mcts_finds_the_answer(mia_model, code_tokenizer, monkeypatch):
    greedy = RStarConfig(temperature=0.0, max_step_tokens=40)
    policy = RStarPolicy(mia_model, code_tokenizer, greedy, seed=0)
    assert policy.stop_strings is None and code_tokenizer.token_id(STEP_END) in policy.stop_ids
    sampled = policy.sample_steps([MIA.question] * 3, [[], [STEP1], [STEP1, STEP2]], [2, 2, 2])
    got = [[(s.status, s.text, s.answer) for s, _ in per_path] for per_path in sampled]
    answer = ("answer", STEP3 + "\n<output>9</output>", "9")
    assert got == [[("ok", STEP1, None)] * 2, [("ok", STEP2, None)] * 2, [answer] * 2]
    # through grow.expand, with a PPM as the value (a zero head scores 0)
    ppm_policy = RStarPolicy(mia_model, code_tokenizer, greedy, ProcessPreferenceModel(mia_model))
    tree = Tree(MIA.question)
    (children,), (spent,) = expand(ppm_policy, [Request(tree, tree.root, [None] * 2, [None] * 2)])
    assert [(c.meta, c.text, c.value) for c in children] == [("<expansion>", STEP1, 0.0)] * 2
    # the two children read the same: the PPM reads their path once, and its tokens count once
    assert spent.value == len(encode_trace(code_tokenizer, MIA.question, [STEP1], close=False)[0])
    # beam search scored by the PPM: its values rank the beam, and each path is read once
    read = []
    monkeypatch.setattr(rstar, "ppm_scores", lambda ppm, seqs, *a: read.extend(map(tuple, seqs)) or ppm_scores(ppm, seqs, *a))
    (beam,) = search(ppm_policy, [MIA.question], SearchConfig(method="beam", n=2, expand=2))
    assert beam.answer == "9" and beam.tree.node(beam.path[-1]).text == STEP3 + "\n<output>9</output>"
    assert len(read) == len(beam.tree.nodes) - 1 == 2 + 4 + 4  # 2 beams, each expanded into 2 steps
    # rStar's MCTS: UCT (c = 2), terminal rewards +1 / -1, no discount, the checker. Simulation 1 expands the
    # root, 2 its first child, 3 its second (UCT tries every child once), 4 reaches step 3: two identical
    # correct answers, one solution, and patient = 1 stops the search
    config = MCTSConfig(selection="uct", c=2.0, num_candidates=2, max_children=2, simulations=8, patient=1, max_depth=16,
                        discount=1.0, success_value=1.0, failure_value=-1.0)
    (result,) = mcts(policy, [MIA.question], config, ["9"])
    final = result.tree.node(result.path[-1])
    assert (result.simulations, result.successes, result.answer, final.value) == (4, 1, "9", 1.0)
    assert [n.text for n in result.tree.path(final)[1:]] == [STEP1, STEP2, STEP3 + "\n<output>9</output>"]


# -- self-evolution (nanoo1/evolve.py) -----------------------------------------------------------------
def _chain(tree, parent, texts, values, terminal=None):
    """Add texts as a chain below parent, with Q-values; the last node gets `terminal`."""
    for i, (text, value) in enumerate(zip(texts, values)):
        last = i == len(texts) - 1
        parent = tree.add(parent, "<conclusion>" if last and terminal else "<expansion>", text, value=value,
                          terminal=terminal if last else None)
    return parent


FINAL9 = STEP3 + "\n<output>9</output>"
WRONG1 = "# Step 1: She buys 5 more.\nx1 = 7 + 6\n" + STEP_END
FAILED2 = "# Step 2: oops\nx2 = y - 3\n" + STEP_END + "\n<error>NameError: name 'y' is not defined</error>"


def test_coverage_on_hand_made_trees():
    solved = Tree(MIA.question)
    _chain(solved, solved.root, [STEP1, STEP2, FINAL9], [0.0, 0.0, 1.0], "success")
    _chain(solved, solved.root, [WRONG1], [-1.0], "failure")
    failed = Tree(MIA.question)
    _chain(failed, failed.root, [STEP1, STEP2], [0.0, -1.0], "failure")
    deep = Tree(MIA.question)  # the success hangs three levels down, below a failure's sibling
    below = _chain(deep, deep.root, [STEP1], [0.0])
    _chain(deep, below, [FAILED2], [-1.0], "failure")
    _chain(deep, below, [STEP2, FINAL9], [0.0, 1.0], "success")
    unexpanded = Tree(MIA.question)
    assert coverage([solved, failed, deep, unexpanded]) == 2 / 4  # solved and deep
    assert coverage([failed]) == 0.0 and coverage([deep]) == 1.0
    with pytest.raises(ValueError, match="no trees"):
        coverage([])


def test_sft_examples_are_the_top_two_traces_with_masks(code_tokenizer):
    tree = Tree(MIA.question)
    s1 = _chain(tree, tree.root, [STEP1], [0.2])
    _chain(tree, s1, [STEP2, FINAL9], [0.4, 1.0], "success")        # mean Q (0.2 + 0.4 + 1) / 3 = 0.533
    retry = tree.add(s1, "<expansion>", FAILED2, value=1.0)            # a failed step: never kept, whatever its Q
    _chain(tree, retry, [STEP2, FINAL9], [1.0, 1.0], "success")
    w1 = _chain(tree, tree.root, [WRONG1], [0.9])
    alt = "# Step 2: She gives 3 to Leo.\nx2 = x1 - 4\n" + STEP_END      # 13 - 4 = 9 by luck: correct, mean Q 0.967
    _chain(tree, w1, [alt, FINAL9], [1.0, 1.0], "success")
    _chain(tree, tree.root, [STEP1, STEP2, FINAL9], [-0.5, 0.0, 1.0], "success")  # mean Q 0.167: a copy of the second
    _chain(tree, tree.root, [WRONG1, STEP2], [-1.0, -1.0], "failure")
    examples = sft_examples(code_tokenizer, [tree, Tree(MIA.question)])  # a tree without answers adds nothing
    expected = [encode_trace(code_tokenizer, MIA.question, steps) for steps in ([WRONG1, alt, FINAL9], [STEP1, STEP2, FINAL9])]
    assert examples == expected
    ids, mask = examples[1]
    assert code_tokenizer.decode([i for i, m in zip(ids, mask) if m]) == STEP1 + STEP2 + STEP3  # the model's own tokens
    assert code_tokenizer.decode([i for i, m in zip(ids, mask) if not m]) == (
        "<bos>" + MIA.question + "\n" + "\n\n" + "\n<output>9</output>\n")  # question, newlines, observation
    assert len(sft_examples(code_tokenizer, [tree], per_problem=5)) == 2  # the copy is no third trace


def _pair_tree():
    tree = Tree(MIA.question)
    s1 = tree.add(tree.root, "<expansion>", STEP1, value=0.0)
    tree.add(s1, "<conclusion>", STEP2, value=1.0, terminal="success")
    tree.add(s1, "<conclusion>", "# Step 2: x\nx2 = x1 + 3\n" + STEP_END, value=-1.0, terminal="failure")
    w = tree.add(tree.root, "<expansion>", WRONG1, value=-0.5)
    tree.add(w, "<conclusion>", "# Step 2: y\nprint(x1)\n" + STEP_END + "\n<output>13</output>", value=-1.0, terminal="failure")
    return tree


def test_ppm_pairs_match_pair_batch_and_training_reduces_the_pair_loss(code_tokenizer):
    tree = _pair_tree()
    trees = ppm_pairs(code_tokenizer, [tree, Tree(MIA.question), tree])  # a tree without pairs gives no list
    # per tree: (STEP1, WRONG1) under the root, (STEP2, x2 = x1 + 3) under STEP1, then the final-step pair of
    # whole trajectories: STEP1 -> STEP2 against WRONG1 -> print(x1), the one wrong ending that printed
    assert len(trees) == 2 and trees[0] == trees[1] and len(trees[0]) == 3
    pairs = trees[0]
    ids, mask = pair_batch(tree, preference_pairs(tree), code_tokenizer)
    assert [p for p, _ in pairs[:2]] + [n for _, n in pairs[:2]] == [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    ids, mask = pair_batch(tree, final_pairs(tree), code_tokenizer)
    assert [pairs[2][0], pairs[2][1]] == [row[m.bool()].tolist() for row, m in zip(ids, mask)]
    trees = [pairs[:2], pairs[:2]]  # the sibling pairs of both trees: what is trained below
    pairs = pairs[:2] * 2
    backbone = Gemma2(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    ppm = ProcessPreferenceModel(backbone.init_weights(torch.Generator().manual_seed(0)))
    assert pair_accuracy(ppm, pairs, code_tokenizer.pad_id) == 0.0  # a zero head ties every pair: none ordered right
    assert pair_accuracy(ppm, [], code_tokenizer.pad_id) is None
    config = EvolveConfig(ppm_epochs=15, ppm_pairs_per_step=2, ppm_lr=1e-3, bf16=False)  # 15 passes over 2 trees, 1 a step
    losses = train_ppm(ppm, trees, code_tokenizer.pad_id, config, seed=0)
    assert len(losses) == 30 and losses[0] == pytest.approx(math.log(2), abs=1e-6)  # step 1 sees the zero head
    assert losses[-1] < 0.3 and pair_accuracy(ppm, pairs, code_tokenizer.pad_id) == 1.0
    assert not any(p.requires_grad for p in ppm.parameters()) and not ppm.training
    assert train_ppm(ppm, [], code_tokenizer.pad_id, config) == []


def test_finetune_policy_trains_a_copy_of_the_base(code_tokenizer):
    base = Gemma2(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    base.init_weights(torch.Generator().manual_seed(0)).requires_grad_(False)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    examples = [encode_trace(code_tokenizer, MIA.question, solution_steps(MIA))] * 3
    config = EvolveConfig(sft_epochs=20, sft_batch_size=8, sft_lr=1e-2, bf16=False)  # batch 8 > 3 examples: 3 a step, 20 steps
    tuned, losses = finetune_policy(base, examples, code_tokenizer.pad_id, config, seed=0)
    assert len(losses) == 20 and losses[-1] < losses[0] / 2
    assert all(torch.equal(v, before[k]) for k, v in base.state_dict().items())  # the base is left as it was
    assert not any(torch.equal(v, before[k]) for k, v in tuned.state_dict().items() if v.dim() == 2)
    untouched, none = finetune_policy(base, [], code_tokenizer.pad_id, config)
    assert none == [] and untouched is not base and all(torch.equal(v, before[k]) for k, v in untouched.state_dict().items())


def _load_ppm(directory, base=None):
    """The PPM save_scorer wrote: its decoder (a checkpoint, or adapters on `base`) and ppm_head.safetensors."""
    backbone, tokenizer = load_pretrained(base or directory)
    ppm = ProcessPreferenceModel(load_lora(backbone, directory) if base else backbone)
    ppm.head.load_state_dict(load_file(str(directory / PPM_HEAD)))
    return ppm, tokenizer


def test_save_ppm_writes_the_decoder_and_the_head(code_tokenizer, tmp_path):
    ppm = ProcessPreferenceModel(random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1)))
    with torch.no_grad():
        ppm.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
        ppm.head.bias.fill_(0.1)
    save_scorer(ppm, code_tokenizer, tmp_path / "ppm")
    loaded, tokenizer = _load_ppm(tmp_path / "ppm")
    assert sorted(p.name for p in (tmp_path / "ppm").iterdir() if p.name.startswith(".")) == []  # no temp files left
    ids = torch.tensor([encode_trace(code_tokenizer, MIA.question, [STEP1], close=False)[0]])
    assert torch.equal(loaded(ids), ppm(ids)) and tokenizer.encode("x1 = 7") == code_tokenizer.encode("x1 = 7")


def _scripted_solver(problems):
    """A fake engine.generate over the code format: after a question and d steps, candidate j = 0 is the worked
    solution's step d + 1, j = 1 the same step off by one (`+ 1`), so a path is correct iff it only took j = 0."""
    by_question = {p.question: p for p in problems}

    def generate(model, prompts, max_new_tokens, temperature, *args, num_samples=1, tokenizer=None, suffixes=None, **kw):
        forced = tokenizer.decode(suffixes[0]) if suffixes else ""
        rows = []
        for p in prompts:
            text = tokenizer.decode(p).removeprefix("<bos>")
            problem, depth = by_question[text.split("\n")[0]], text.count(STEP_END)
            comment, code = problem.code_steps()[depth]
            wrong = code[:-1] + " + 1)" if code.startswith("print(") else code + " + 1"
            for j in range(num_samples):
                step = format_step(comment, code if j % 2 == 0 or temperature == 0 else wrong)
                rows.append(Completion(list(p) + (suffixes[0] if suffixes else []), [5, 6], step.removeprefix(forced),
                                       logprobs=[-0.5, -0.5], scaled_logprobs=[-0.5, -0.5], entropy=[1.0, 1.0],
                                       varentropy=[0.0, 0.0], forced=[False, False]))
        return rows

    return generate


def test_one_round_end_to_end_on_a_scripted_solver(code_tokenizer, tmp_path, monkeypatch, capsys):
    train, test = make_problems(3, seed=7, max_steps=3), make_problems(4, seed=8, max_steps=2)
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")  # 2 for accuracy, 2 searched for the held-out pairs
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    save_pretrained(model, code_tokenizer, tmp_path / "base")
    monkeypatch.setattr(rstar, "generate", _scripted_solver(train + test))
    config = EvolveConfig(simulations=24, num_candidates=2, rounds=1, problems=3, eval_problems=2, beam=2, sft_epochs=4,
                          sft_batch_size=4, ppm_epochs=4, ppm_pairs_per_step=4, bf16=False, out=str(tmp_path / "run"))
    rows = run(config, tmp_path / "base", tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == rows
    first, last = rows
    # the correct path is all j = 0 choices, at most 4 steps deep: 24 UCT simulations find it in every tree, and
    # only it (a problem has one correct trace); greedy takes j = 0 throughout, so it is right on the held-out set
    assert (first["round"], first["coverage"], first["traces"], first["greedy"], first["ppm_search"]) == (0, 1.0, 3, 1.0, None)
    assert first["pairs"] >= 3  # at least the last step's (print(x), print(x + 1)) in every tree
    # slip_pairs of the 2 held-out 2-step problems: 2 operands, 1 skip, 1 early print each
    assert first["ppm_pair_accuracy"] is None and first["held_out_pairs"] == {"operand": 4, "skip": 2, "early": 2}
    assert len(first["sft_loss"]) == 2 and len(first["ppm_loss"]) == 2
    assert first["generated_tokens"] > 0 and first["prompt_tokens"] > 0 and first["ppm_tokens"] == 0  # no PPM searched
    assert (last["round"], last["greedy"], last["ppm_search"]) == (1, 1.0, 1.0) and "coverage" not in last
    assert 0.0 <= last["ppm_pair_accuracy"] <= 1.0 and set(last["ppm_slip_accuracy"]) == {"operand", "skip", "early"}
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["round", "coverage", "greedy", "ppm_search", "pair_acc", "traces", "pairs", "tokens",
                                "seconds"]
    assert table[1].split()[:6] == ["0", "100.0%", "100.0%", "-", "-", "3"]
    policy, tokenizer = load_pretrained(tmp_path / "run" / "policy-1")
    ppm, _ = _load_ppm(tmp_path / "run" / "ppm-1")
    assert len(tokenizer) == len(code_tokenizer) and policy.config == model.config
    assert not torch.equal(policy.model.embed_tokens.weight, model.model.embed_tokens.weight)  # fine-tuned ...
    ids = torch.tensor([encode_trace(code_tokenizer, train[0].question, [], close=False)[0]])
    assert ppm(ids).abs().item() > 0  # ... and the PPM's head trained away from zero


def _scripted_rounds(code_tokenizer, tmp_path, monkeypatch) -> None:
    """What a shortened evolve run reads from tmp_path: 6 training and 2 held-out problems, a random 1-layer base,
    and a search whose every step is scripted to solve them (`_scripted_solver`)."""
    train, test = make_problems(6, seed=7, max_steps=3), make_problems(2, seed=8, max_steps=2)
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")
    save_pretrained(random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1)),
                    code_tokenizer, tmp_path / "base")
    monkeypatch.setattr(rstar, "generate", _scripted_solver(train + test))


def test_rounds_before_guided_from_search_without_the_ppm(code_tokenizer, tmp_path, monkeypatch):
    """rStar-Math's first rounds are terminal-guided: search_trees gets no PPM before round guided_from, and
    the PPM trained by the round before it from then on (its tokens counted)."""
    import nanoo1.evolve as evolve

    _scripted_rounds(code_tokenizer, tmp_path, monkeypatch)
    searched, search = [], evolve.search_trees
    monkeypatch.setattr(evolve, "search_trees", lambda model, ppm, *a: searched.append(ppm) or search(model, ppm, *a))
    for guided_from, guided in ((2, [False, False]), (1, [False, True])):
        searched.clear()
        config = EvolveConfig(simulations=8, rounds=2, problems=3, later_min_steps=0, eval_problems=1, pair_problems=1,
                              beam=0, sft_epochs=1, ppm_epochs=1, bf16=False, guided_from=guided_from,
                              out=str(tmp_path / str(guided_from)))
        rows = run(config, tmp_path / "base", tmp_path / "train.jsonl", tmp_path / "test.jsonl")
        assert [ppm is not None for ppm in searched] == guided
        assert [row["ppm_tokens"] > 0 for row in rows[:2]] == guided
    with pytest.raises(ValueError, match="--guided-from must be >= 0"):
        EvolveConfig(guided_from=-1)
    with pytest.raises(ValueError, match="--eval-problems must be > 0"):  # accuracy on no problem divided by zero
        EvolveConfig(eval_problems=0)
    with pytest.raises(ValueError, match="--verifier-problems must be > 0"):
        EvolveConfig(verifier_problems=0)


def test_a_lora_round_in_bf16_trains_adapters_only(code_tokenizer, tmp_path, monkeypatch):
    """Under LoRA the base stays bit-identical in bf16, policy k+1 and PPM k+1 share it and train float32
    adapters of their own, and a run writes adapters (PEFT's layout) and the PPM head, not checkpoints."""
    train, test = make_problems(3, seed=7, max_steps=3), make_problems(2, seed=8, max_steps=2)
    monkeypatch.setattr(rstar, "generate", _scripted_solver(train + test))
    config = EvolveConfig(simulations=24, num_candidates=2, rounds=1, problems=3, eval_problems=2, sft_epochs=4,
                          sft_batch_size=4, ppm_epochs=4, ppm_pairs_per_step=4, dtype="bfloat16", out=str(tmp_path / "run"))
    lora = LoRASettings(rank=4, alpha=8.0)
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    save_pretrained(model, code_tokenizer, tmp_path / "base")
    base = lora.apply(model.to(torch.bfloat16))
    frozen = {k: v.clone() for k, v in base.state_dict().items() if "lora_" not in k}
    adapters = {k: v.clone() for k, v in base.state_dict().items() if "lora_" in k}
    policy, ppm, report, _ = self_evolution_round(base, base, None, code_tokenizer, train, config)
    assert report.traces == 3 and report.pairs >= 3 and len(report.sft_loss) == len(report.ppm_loss) == 2
    for model in (base, policy, ppm.backbone):
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in frozen.items()) and state["model.norm.weight"].dtype == torch.bfloat16
    assert policy.model.norm.weight is base.model.norm.weight  # shared, not copied
    assert all(torch.equal(base.state_dict()[k], v) for k, v in adapters.items())
    for model in (policy, ppm.backbone):
        state = model.state_dict()
        assert all(state[k].dtype == torch.float32 for k in adapters)
        assert not any(torch.equal(state[k], v) for k, v in adapters.items() if k.endswith("lora_B"))  # trained
    assert ppm.head.weight.abs().sum() > 0 and not any(p.requires_grad for p in ppm.parameters())

    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")
    run(config, tmp_path / "base", tmp_path / "train.jsonl", tmp_path / "test.jsonl", lora=lora)
    for name in ("policy-1", "ppm-1"):
        assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
            p.name for p in (tmp_path / "run" / name).iterdir()}
        assert not (tmp_path / "run" / name / "model.safetensors").exists()
    ppm, _ = _load_ppm(tmp_path / "run" / "ppm-1", base=tmp_path / "base")
    ids = torch.tensor([encode_trace(code_tokenizer, train[0].question, [], close=False)[0]])
    assert ppm(ids).abs().item() > 0


def test_a_run_with_lora_dropout_repeats_whatever_torchs_global_generator_held(code_tokenizer, tmp_path, monkeypatch):
    """LoRA's dropout draws from torch's global generator, which the run seeds from --seed."""
    train, test = make_problems(3, seed=7, max_steps=3), make_problems(2, seed=8, max_steps=2)
    monkeypatch.setattr(rstar, "generate", _scripted_solver(train + test))
    write_jsonl(train, tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")
    save_pretrained(random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1)),
                    code_tokenizer, tmp_path / "base")
    adapters = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # what the process happened to hold
        if seed == 2:  # a run over another, its base inside OUT where --overwrite clears nothing
            shutil.copytree(tmp_path / "base", tmp_path / "2" / "base")
            (tmp_path / "2" / "metrics.jsonl").write_text("{}\n")
        config = EvolveConfig(simulations=8, rounds=1, problems=3, eval_problems=1, pair_problems=1, beam=0,
                              sft_epochs=2, ppm_epochs=1, bf16=False, out=str(tmp_path / str(seed)))
        run(config, tmp_path / ("base" if seed == 1 else "2/base"), tmp_path / "train.jsonl",
            tmp_path / "test.jsonl", lora=LoRASettings(rank=2, dropout=0.5), overwrite=True)
        adapters.append((tmp_path / str(seed) / "policy-1" / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]
    # a full fine-tune reads its start once, before --overwrite clears it: an earlier run's policy-1 may be the start
    shutil.copytree(tmp_path / "base", tmp_path / "3" / "policy-1")
    run(replace(config, out=str(tmp_path / "3")), tmp_path / "3" / "policy-1", tmp_path / "train.jsonl",
        tmp_path / "test.jsonl", overwrite=True)
    tuned = (tmp_path / "3" / "policy-1" / "model.safetensors").read_bytes()
    assert tuned != (tmp_path / "base" / "model.safetensors").read_bytes()


def test_evolve_on_a_checkpoint_takes_the_gpu_when_there_is_one_and_tiny_the_cpu(monkeypatch, capsys):
    import nanoo1.evolve as evolve

    seen = []
    monkeypatch.setattr(evolve, "run", lambda config, model, *a, **k: seen.append(config.device))
    evolve.main(["--model", "some/checkpoint", *TINY_DATA, "--no-progress"])
    evolve.main(["--tiny", "--procs", "1", "--no-progress"])
    evolve.main(["--model", "some/checkpoint", *TINY_DATA, "--device", "cpu", "--no-progress"])
    assert seen == ["auto", "cpu", "cpu"]


def test_evolve_refuses_bad_settings_and_another_runs_directory_before_any_work(tmp_path, monkeypatch, capsys):
    """A run's --out holding another run's files is refused (or cleared with --overwrite, stale policy-k/ too),
    and missing, empty or too little data, a bad --device and out-of-range settings are usage errors, before any
    work starts (and before torchrun starts the ranks)."""
    import nanoo1.evolve as evolve
    from nanoo1.runs import prepare_out

    ran = []
    monkeypatch.setattr(evolve, "run", lambda *a, **k: ran.append(k["overwrite"]))
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": 5}\n')
    (empty := tmp_path / "empty.jsonl").write_text("")
    out = tmp_path / "out"
    (out / "policy-2").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    (out / "base").mkdir()  # the tiny warm start a run may train into OUT/base is no run's output
    for flags, message in ((["--out", str(out)], "holds another run"), (["--data", str(tmp_path / "none.jsonl")],
                           "none.jsonl: dataset file not found"), (["--device", "gpu"], "--device is 'gpu'"),
                           (["--temperature", "nan"], "--temperature must be > 0"),
                           (["--sft-lr", "-1"], "--sft-lr must be > 0"), (["--lora-targets", "qproj"], "'qproj'"),
                           (["--data", str(tmp_path / "bad.jsonl")], r"bad.jsonl:1: 'answer' must be a string"),
                           (["--test-data", str(empty)], "empty.jsonl: no held-out problems"),
                           (["--problems", "9000"], r"train.jsonl: round 1 wants 9000 problems of at least 3 steps"),
                           (["--patient", "0"], "--patient must be > 0"), (["--warmstart-steps", "0"], "0 must be at least 1"),
                           (["--data", str(tmp_path)], "Is a directory")):
        with pytest.raises(SystemExit):
            evolve.main(["--tiny", "--procs", "1", "--no-progress", "--out", str(tmp_path / "fresh"), *flags])
        assert re.search(message, capsys.readouterr().err)
    for flags in (["--model", "some/checkpoint"], ["--model", "m", "--data", "train.jsonl"]):  # not the tiny task's files
        with pytest.raises(SystemExit):
            evolve.main(["--procs", "1", "--no-progress", "--out", str(tmp_path / "fresh"), *flags])
        assert "--model DIR, --data FILE and --test-data FILE are needed without --tiny" in capsys.readouterr().err
    assert ran == [] and (out / "policy-2").exists()
    evolve.main(["--tiny", "--procs", "1", "--no-progress", "--out", str(out), "--overwrite"])
    assert ran == [True] and (out / "policy-2").exists()  # main only checks; the run clears
    prepare_out(out, True, evolve.OUT_FILES, resumable=False)
    assert sorted(p.name for p in out.iterdir()) == ["base"]


def test_evolve_names_a_local_base_absolutely(tmp_path, monkeypatch):
    """policy-k/ and ppm-k/ name their base (adapter_config.json's base_model_name_or_path): a local checkpoint given
    by a relative path is named absolutely, so the adapters find it from anywhere; a hub id stays as given."""
    import nanoo1.evolve as evolve

    seen = []
    monkeypatch.setattr(evolve, "run", lambda config, model, *a, **k: seen.append(model))
    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    for model in ("ckpt", "owner/model"):
        evolve.main(["--model", model, *TINY_DATA, "--device", "cpu", "--no-progress", "--out", "out"])
    assert seen == [str(tmp_path / "ckpt"), "owner/model"]


def test_evolve_where_the_sandbox_cannot_run_is_a_usage_error_before_any_work(tmp_path, monkeypatch, capsys):
    """On Windows (no fork) the rounds could not run a code step: evolve says so and starts nothing (it started 2
    ranks, then failed on the first step with a traceback); the sandbox itself refuses with the same reason."""
    from types import SimpleNamespace

    import nanoo1.evolve as evolve
    import nanoo1.sandbox as sandbox

    ran = []
    monkeypatch.setattr(evolve, "run", lambda *a, **k: ran.append(1))
    monkeypatch.setattr(sandbox, "os", SimpleNamespace(name="nt"))  # the module's view of the platform: Windows
    with pytest.raises(SystemExit):
        evolve.main(["--tiny", "--no-progress", "--out", str(tmp_path / "out")])
    assert "needs Linux or macOS (on Windows: WSL)" in capsys.readouterr().err and ran == []
    with pytest.raises(OSError, match="needs Linux or macOS"):
        run_many(["print(1)"])


def test_evolve_on_one_gpu_runs_one_process_and_refuses_more(tmp_path, monkeypatch, capsys):
    """--tiny starts 2 ranks on a 2-core CPU, but on CUDA one process per GPU: on one GPU --tiny --device cuda runs
    in this process (rank 1 asked for cuda:1, which is not there), and --procs 2 is refused by name."""
    import nanoo1.evolve as evolve

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ran = []
    monkeypatch.setattr(evolve, "run", lambda config, *a, **k: ran.append(config.device))
    monkeypatch.setattr(evolve.dist, "setup", lambda device: device)
    monkeypatch.setattr("torch.distributed.run.main", lambda argv: pytest.fail(f"torchrun started: {argv}"))
    evolve.main(["--tiny", "--device", "cuda", "--no-progress", "--out", str(tmp_path / "a")])
    assert ran == ["cuda"]
    with pytest.raises(SystemExit):
        evolve.main(["--tiny", "--device", "cuda", "--procs", "2", "--out", str(tmp_path / "b")])
    assert "--procs 2: one process per GPU, and torch sees 1" in capsys.readouterr().err


# -- generator and verifier (nanoo1/verifiers.py) ------------------------------------------------------
def test_orm_loss_is_logistic_regression_on_the_heads_logit():
    """Binary cross-entropy of p = (1 + tanh z) / 2; where tanh rounds to +-1 (z = +-20 in float32) the loss and
    its gradient stay finite: d/dz = 2 (sigmoid(2z) - y), 2 for a confident wrong score, 0 for a right one."""
    z, y = torch.tensor([-2.0, -0.3, 0.0, 0.4, 3.0]), torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    assert orm_loss(z, y).item() == pytest.approx(F.binary_cross_entropy((1 + torch.tanh(z)) / 2, y).item(), rel=1e-5)
    assert orm_loss(torch.zeros(3), torch.tensor([0.0, 1.0, 1.0])).item() == pytest.approx(math.log(2))
    z = torch.tensor([20.0, 20.0, -20.0], requires_grad=True)
    assert torch.tanh(z.detach()).abs().tolist() == [1.0, 1.0, 1.0]
    loss = orm_loss(z, torch.tensor([0.0, 1.0, 0.0]))
    loss.backward()
    assert loss.item() == pytest.approx(40 / 3, rel=1e-5)  # -log sigmoid(-40) = 40 for the wrong one, 0 for the others
    assert z.grad.tolist() == pytest.approx([2 / 3, 0.0, 0.0], abs=1e-7)


def test_orm_loss_runs_under_cuda_autocast():
    """ppm.fit trains the ORM under bf16 autocast, and CUDA autocast refuses F.binary_cross_entropy. Without a
    GPU, switch on for this thread the dispatch key torch.autocast("cuda") routes every op through."""
    key = torch._C.DispatchKey.AutocastCUDA
    z = torch.tensor([-0.5, 0.2, 0.9], requires_grad=True)  # the head's logits
    assert not torch._C._dispatch_tls_is_dispatch_key_included(key) and torch._C._dispatch_tls_is_dispatch_key_excluded(key)
    torch._C._dispatch_tls_set_dispatch_key_included(key, True)
    torch._C._dispatch_tls_set_dispatch_key_excluded(key, False)
    try:
        with pytest.raises(RuntimeError, match="unsafe to autocast"):  # the key is on: torch's own op is refused
            F.binary_cross_entropy((1 + z) / 2, torch.ones(3))
        loss = orm_loss(z, torch.tensor([0.0, 1.0, 1.0]))
    finally:
        torch._C._dispatch_tls_set_dispatch_key_included(key, False)
        torch._C._dispatch_tls_set_dispatch_key_excluded(key, True)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_outcome_examples_are_the_paths_that_printed_labelled_by_the_search(code_tokenizer):
    tree = Tree(MIA.question)
    _chain(tree, tree.root, [STEP1, STEP2, FINAL9], [0.0, 0.0, 1.0], "success")
    printed12 = "# Step 2: How many now?\nprint(x1)\n" + STEP_END + "\n<output>12</output>"
    _chain(tree, tree.root, [STEP1, printed12], [0.0, -1.0], "failure")
    _chain(tree, tree.root, [WRONG1], [-1.0], "failure")  # ended without printing: not a solution
    _chain(tree, tree.root, [STEP1, FAILED2], [0.0, -1.0], "failure")  # its error is no answer either
    assert [printed_answer(n) for n in tree.nodes if n.terminal] == ["9", "12", None, None]
    assert outcome_examples(code_tokenizer, [tree]) == [
        (encode_trace(code_tokenizer, MIA.question, [STEP1, STEP2, FINAL9], close=False)[0], True),
        (encode_trace(code_tokenizer, MIA.question, [STEP1, printed12], close=False)[0], False)]


def test_choose_takes_the_best_scored_answer_or_the_vote():
    answers = [None, "3", "4", "4", "3"]
    assert choose(answers, None) == 1  # a 2-2 tie goes to the answer seen first
    assert choose(answers, [9.0, 0.5, 0.7, 0.1, 0.7]) == 2  # no answer is never chosen; equal scores: the first
    assert choose([None, None], [1.0, 2.0]) is None and choose([None], None) is None


def test_verifier_table_on_a_scripted_solver(code_tokenizer, monkeypatch):
    """Sampled solutions alternate right (even samples) and wrong (odd: the first step off by one); a PRM scripted
    to prefer the wrong ones and an ORM the right ones must pick exactly those, at every N."""
    problems = [p for p in make_problems(12, seed=9, min_steps=2, max_steps=3)  # no division: + 1 always shows
                if all(step.op != "/" for step in p.steps)][:3]
    monkeypatch.setattr(rstar, "generate", _scripted_solver(problems))
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    prm, orm = (ProcessPreferenceModel(model) for _ in range(2))
    truth = {p.question: p.answer for p in problems}

    def scripted_scores(scorer, seqs, pad_id, batch_size=32):
        texts = [code_tokenizer.decode(s).removeprefix("<bos>") for s in seqs]
        right = [t.rsplit("<output>", 1)[-1].split("</output>")[0] == truth[t.split("\n")[0]] for t in texts]
        return torch.tensor([float(r == (scorer is orm)) for r in right])

    monkeypatch.setattr(verifiers, "ppm_scores", scripted_scores)
    policy = RStarPolicy(model, code_tokenizer, RStarConfig(), seed=0)
    rows = verifier_table(policy, code_tokenizer, problems, prm, orm, [4, 8])
    assert rows == [{"n": n, "vote": 1.0, "PRM": 0.0, "ORM": 1.0, "pass@N": 1.0} for n in (4, 8)]  # vote: 2-2, the first


def test_pass_at_n_counts_the_first_n_samples_only(monkeypatch):
    problem = Problem("What is 7 + 2?", "9", [Step(7, "+", 2, 9)])

    def sample_chains(policy, questions, n, config, temperature=None, rate=False):
        tree = Tree(questions[0])
        answers = ["1"] * 4 + ["9"] + ["1"] * 3  # only sample 5 of 8 is right: pass@4 0, pass@8 1
        ends = [tree.add(tree.root, "<conclusion>", f"# Step 1: x\nprint({a})\n{STEP_END}\n<output>{a}</output>")
                for a in answers]
        return [tree], [ends], None

    monkeypatch.setattr(verifiers, "sample_chains", sample_chains)
    monkeypatch.setattr(verifiers, "ppm_input", lambda tok, path: [0])
    monkeypatch.setattr(verifiers, "ppm_scores", lambda scorer, seqs, pad_id, batch_size=32: torch.zeros(len(seqs)))
    rows = verifier_table(None, type("T", (), {"pad_id": 0})(), [problem], None, None, [4, 8])
    assert [row["pass@N"] for row in rows] == [0.0, 1.0]


def test_printed_answer_is_only_a_final_step_that_ran(code_tokenizer):
    """Three near-misses that all hold an `<output>`: a non-final step that printed and a final step that failed
    with the tag in its error message state no answer; a final step the search never graded states one but is
    no ORM example. Only the graded success counts: 1 example, labelled True."""
    tree = Tree(MIA.question)
    printed12 = "# Step 2: How many now?\nprint(x1)\n" + STEP_END + "\n<output>12</output>"
    deep = _chain(tree, tree.root, [STEP1, printed12], [0.0, -1.0])  # an <expansion>, ended by depth
    deep.terminal = "failure"
    raised = "# Step 3: answer\nraise ValueError('<output>7</output>')\n" + STEP_END
    failed = tree.add(tree.root, "<conclusion>", raised + "\n<error>ValueError: <output>7</output></error>",
                      terminal="failure")
    assert step_failed(failed.text) and extract_answer(failed.text) == "7"  # the tag is there, but it did not run
    ungraded = tree.add(tree.root, "<conclusion>", FINAL9)  # terminal None: not a finished solution
    graded = _chain(tree, tree.root, [STEP1, STEP2, FINAL9], [0.0, 0.0, 1.0], "success")
    assert [printed_answer(n) for n in (deep, failed, ungraded, graded)] == [None, None, "9", "9"]
    assert outcome_examples(code_tokenizer, [tree]) == [
        (encode_trace(code_tokenizer, MIA.question, [STEP1, STEP2, FINAL9], close=False)[0], True)]


def _fake_sampler(samples, seen):
    """A `sample_chains` stand-in: question -> answers in sample order. Each sample is two steps, and the final
    steps are added (and returned) in reverse sample order, so only the first step's id gives the sample order."""
    def sample_chains(policy, questions, n, config, temperature=None, rate=False):
        seen.append((len(questions), n, config.max_depth, temperature))
        trees, ends = [], []
        for q in questions:
            tree = Tree(q)
            firsts = [tree.add(tree.root, "<expansion>", f"# Step 1: sample {k}\n{STEP_END}") for k in range(n)]
            last = [tree.add(firsts[k], "<conclusion>", f"# Step 2: {q} {k}\nprint({a})\n{STEP_END}\n<output>{a}</output>")
                    for k, a in reversed(list(enumerate(samples[q])))]
            trees.append(tree)
            ends.append(last)
        return trees, ends, None
    return sample_chains


def test_verifier_table_scores_each_problem_by_its_own_samples_in_sample_order(monkeypatch):
    """Two problems in one batch; samples listed in sample order (the first N are best-of-N's), scores keyed by
    sample:
      A (answer 9): answers 9 1 1 1, PRM 1 0 0 0, ORM 0 1 0 0
      B (answer 6): answers 2 6 2 2, PRM 0 1 0 0, ORM 1 0 0 0
    N=1: every chooser takes sample 0: A right, B wrong -> 0.5 for all four columns.
    N=4: vote 1 (A) and 2 (B), both wrong -> 0; PRM A0 and B1, both right -> 1; ORM A1 and B0, both wrong -> 0;
    pass@4 1."""
    a, b = Problem("What is 7 + 2?", "9", [Step(7, "+", 2, 9)]), Problem("What is 3 + 3?", "6", [Step(3, "+", 3, 6)])
    samples = {a.question: ["9", "1", "1", "1"], b.question: ["2", "6", "2", "2"]}
    table = {"prm": {a.question: [1, 0, 0, 0], b.question: [0, 1, 0, 0]},
             "orm": {a.question: [0, 1, 0, 0], b.question: [1, 0, 0, 0]}}
    seen = []
    monkeypatch.setattr(verifiers, "sample_chains", _fake_sampler(samples, seen))
    monkeypatch.setattr(verifiers, "ppm_input", lambda tok, path: path[-1].text)  # the scores below read the text

    def ppm_scores(scorer, seqs, pad_id, batch_size=32):
        keys = [text.removeprefix("# Step 2: ").split("\n")[0].rsplit(" ", 1) for text in seqs]
        return torch.tensor([float(table[scorer][q][int(k)]) for q, k in keys])

    monkeypatch.setattr(verifiers, "ppm_scores", ppm_scores)
    rows = verifier_table(None, type("T", (), {"pad_id": 0})(), [a, b], "prm", "orm", [1, 4])
    assert rows == [{"n": 1, "vote": 0.5, "PRM": 0.5, "ORM": 0.5, "pass@N": 0.5},
                    {"n": 4, "vote": 0.0, "PRM": 1.0, "ORM": 0.0, "pass@N": 1.0}]
    assert seen == [(2, 4, 16, None)]  # one batch of both problems, the default depth, the policy's temperature


def test_verifier_table_samples_more_than_a_batch_for_one_problem(monkeypatch):
    """N = 300 > verifiers.ROWS = 256: still one problem at a time (not zero), with the max_depth given."""
    problem = Problem("What is 7 + 2?", "9", [Step(7, "+", 2, 9)])
    seen = []
    monkeypatch.setattr(verifiers, "sample_chains", _fake_sampler({problem.question: ["9"] * 300}, seen))
    monkeypatch.setattr(verifiers, "ppm_input", lambda tok, path: [0])
    monkeypatch.setattr(verifiers, "ppm_scores", lambda scorer, seqs, pad_id, batch_size=32: torch.zeros(len(seqs)))
    rows = verifier_table(None, type("T", (), {"pad_id": 0})(), [problem], None, None, [300], max_depth=5)
    assert rows == [{"n": 300, "vote": 1.0, "PRM": 1.0, "ORM": 1.0, "pass@N": 1.0}] and seen == [(1, 300, 5, None)]


@pytest.mark.parametrize("n, ns", [(8, [4, 8]), (100, [4, 8, 16, 32, 64]), (2, [2]), (300, [4, 8, 16, 32, 64, 128, 256])])
def test_compare_verifiers_trains_the_orm_like_the_ppm_and_takes_n_up_to_the_setting(n, ns, tmp_path, monkeypatch):
    """The ORM trains on 2 * ppm_pairs_per_step = 8 sequences a step for ppm_epochs = 4 passes over 10 examples:
    passes(4, 10, 8) = round(40 / 8) = 5 steps. N = 4, 8, ... up to --verifiers inclusive; a setting under 4 is
    the one N. The table and the example count land in OUT/verifiers.json."""
    calls = {}
    monkeypatch.setattr(verifiers, "lora_copy", lambda model: model)
    monkeypatch.setattr(verifiers, "ProcessPreferenceModel", lambda model: "orm")
    monkeypatch.setattr(verifiers, "train_orm", lambda *a: calls.setdefault("train", a))
    monkeypatch.setattr(verifiers, "save_scorer", lambda orm, tok, path, name: calls.setdefault("save", (orm, path)))

    def table(policy, tok, problems, ppm, orm, ns, max_depth):
        calls["table"] = (ppm, orm, ns, max_depth)
        return [{"n": k, "vote": 0.5, "PRM": 0.5, "ORM": 0.5, "pass@N": 1.0} for k in ns]

    monkeypatch.setattr(verifiers, "verifier_table", table)
    sampler = type("S", (), {"tokenizer": type("T", (), {"pad_id": 3})(), "model": "model"})()
    config = EvolveConfig(verifiers=n, ppm_epochs=4.0, ppm_pairs_per_step=4, ppm_lr=0.5, seed=7, out=str(tmp_path))
    examples = [([1, 2], True)] * 10
    rows = verifiers.compare_verifiers(sampler, "ppm", examples, [], config)
    assert calls["train"] == ("orm", examples, 3, 5, 8, 0.5, config.autocast, 7, False)
    assert calls["table"] == ("ppm", "orm", ns, 16) and [row["n"] for row in rows] == ns
    assert calls["save"] == ("orm", tmp_path / "orm")
    assert json.loads((tmp_path / "verifiers.json").read_text()) == {"orm_examples": 10, "rows": rows}

def test_slip_pairs_put_each_worked_step_against_its_slips(code_tokenizer):
    slips = slip_pairs(code_tokenizer, [MIA], seed=0)
    assert {kind: len(pairs) for kind, pairs in slips.items()} == {"operand": 2, "skip": 1, "early": 1}
    decoded = {kind: [[code_tokenizer.decode(ids) for ids in pair] for pair in pairs] for kind, pairs in slips.items()}
    head = "<bos>" + MIA.question + "\n"
    # operand: steps 1 and 2 (the final print has no operand), each against itself with the operand miscopied
    assert decoded["operand"][0][0] == head + STEP1
    assert decoded["operand"][1][0] == head + STEP1 + "\n" + STEP2  # under the worked first step
    for (pos, neg), (comment, code) in zip(decoded["operand"], MIA.code_steps()):
        start, _, operand = code.rpartition(" ")
        slipped = neg.rpartition("\n" + start + " ")[2].removesuffix("\n" + STEP_END)
        assert neg.removesuffix(slipped + "\n" + STEP_END) == pos.removesuffix(operand + "\n" + STEP_END)
        assert abs(int(slipped) - int(operand)) in (1, 2) and int(slipped) > 0
    # skip: step 1 written with step 2's sentence and operand; early: after step 1, the answer printed at once
    assert decoded["skip"] == [[head + STEP1, head + "# Step 1: She gives 3 to Leo.\nx1 = 7 - 3\n" + STEP_END]]
    assert decoded["early"] == [[head + STEP1 + "\n" + STEP2, head + STEP1 + "\n# Step 2: How many apples does Mia have now?"
                                 "\nprint(x1)\n" + STEP_END + "\n<output>12</output>"]]


def test_slip_pairs_leave_out_slips_that_are_no_slips(code_tokenizer):
    twice = Problem("Mia has 7 apples. She buys 5 more. She buys 5 more. How many apples does Mia have now?", "17",
                    [Step(7, "+", 5, 12), Step(12, "+", 5, 17)])
    back = Problem("Mia has 7 apples. She buys 5 more. She gives 3 to Leo. She gets 3 back. How many now?", "12",
                   [Step(7, "+", 5, 12), Step(12, "-", 3, 9), Step(9, "+", 3, 12)])
    same = Problem("Mia has 7 apples. She buys 4 more. Ava gives her 4 more. How many apples does Mia have now?", "15",
                   [Step(7, "+", 4, 11), Step(11, "+", 4, 15)])
    # twice, same: the next sentence's step is this very step, or its code under another comment, so no skip
    for problem in (twice, same):
        assert {kind: len(pairs) for kind, pairs in slip_pairs(code_tokenizer, [problem]).items()} == \
            {"operand": 2, "skip": 0, "early": 1}
    slips = slip_pairs(code_tokenizer, [back])  # back: after step 1 x1 is already the answer, so no early print there
    assert {kind: len(pairs) for kind, pairs in slips.items()} == {"operand": 3, "skip": 2, "early": 1}
    assert code_tokenizer.decode(slips["early"][0][1]).endswith("print(x2)\n" + STEP_END + "\n<output>9</output>")
    assert all(pos != neg for pairs in slips.values() for pos, neg in pairs)


def test_rounds_draw_disjoint_problems_and_later_rounds_harder_ones():
    problems = make_problems(100, seed=3)  # 2 to 5 steps
    config = EvolveConfig(rounds=3, problems=10, later_min_steps=4, seed=1)
    rounds = draw_rounds(problems, config)
    assert [len(r) for r in rounds] == [10, 10, 10] and len({id(p) for r in rounds for p in r}) == 30
    assert min(len(p.steps) for p in rounds[0]) < 4 <= min(len(p.steps) for r in rounds[1:] for p in r)
    assert draw_rounds(problems, config) == rounds and draw_rounds(problems, replace(config, seed=2)) != rounds
    with pytest.raises(ValueError, match="train.jsonl: round 1 wants 60 problems of at least 4 steps"):
        draw_rounds(problems, replace(config, problems=60), "train.jsonl")


def test_problems_without_worked_steps_are_drawn_and_give_no_pairs(code_tokenizer, tmp_path, monkeypatch):
    import nanoo1.rounds as rounds

    (tmp_path / "gsm.jsonl").write_text("".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"so #### {i + 1}"})
                                                + "\n" for i in range(8)))
    plain = load_jsonl(tmp_path / "gsm.jsonl")  # steps == []: drawn whatever later_min_steps asks
    drawn = draw_rounds(plain, EvolveConfig(rounds=2, problems=4, later_min_steps=4))
    assert sorted(id(p) for r in drawn for p in r) == sorted(map(id, plain))
    drawn = draw_rounds(plain + make_problems(20, seed=3), EvolveConfig(rounds=2, problems=8, later_min_steps=4))
    assert all(len(p.steps) >= 4 or not p.steps for p in drawn[1])  # worked solutions still filtered
    pairs = slip_pairs(code_tokenizer, plain)
    assert pairs == {"operand": [], "skip": [], "early": []}
    monkeypatch.setattr(rounds, "held_out_accuracy", lambda *args, **kwargs: (0.5, 10.0))
    row = rounds.measure(None, "a PPM", code_tokenizer, plain, pairs, EvolveConfig(beam=0))  # no pairs: no PPM call
    assert row["ppm_pair_accuracy"] is None and "-" in rounds.row_line({"round": 1, **row, "seconds": 1.0}).split()


def test_draw_rounds_bounds_are_inclusive_and_later_rounds_never_easier_than_round_0():
    """A problem of exactly `least` steps is drawn; a round wanting one problem more than there are raises; later
    rounds ask for max(min_steps, later_min_steps) steps, so never fewer than round 0's min_steps."""
    exact = make_problems(6, seed=3, min_steps=3, max_steps=3)  # 3 steps each
    drawn = draw_rounds(exact, EvolveConfig(rounds=2, problems=3, min_steps=3, later_min_steps=3))
    assert sorted(id(p) for r in drawn for p in r) == sorted(map(id, exact))
    with pytest.raises(ValueError, match="round 0 wants 7 problems of at least 0 steps not drawn before, 6 left"):
        draw_rounds(exact, EvolveConfig(rounds=1, problems=7))
    problems = make_problems(60, seed=3)  # 2 to 5 steps
    drawn = draw_rounds(problems, EvolveConfig(rounds=3, problems=5, min_steps=4, later_min_steps=2))
    assert all(len(p.steps) >= 4 for r in drawn for p in r)


def test_a_run_on_problems_without_worked_steps_is_told_what_they_leave_out():
    """GSM8K's problems have no worked steps: the steps bounds draw nothing apart and there are no slip pairs; each
    is said in a line naming the file. Problems with steps, or bounds of 0, say nothing."""
    from dataclasses import replace

    from nanoo1.rounds import stepless_notes

    worked = make_problems(4, seed=3)
    plain = [replace(p, steps=[]) for p in worked]
    notes = stepless_notes(EvolveConfig(), plain, plain, "gsm8k/train.jsonl", "gsm8k/test.jsonl")
    assert notes == ["note: gsm8k/train.jsonl has no worked steps (GSM8K's have none): --min-steps 0 and "
                     "--later-min-steps 3 leave its problems as they are drawn",
                     "note: the held-out problems of gsm8k/test.jsonl have no worked steps: there are no slip pairs to "
                     "measure the PPMs on (pair_acc -)"]
    assert stepless_notes(EvolveConfig(later_min_steps=0), plain, worked, "a", "b") == []
    assert stepless_notes(EvolveConfig(), worked, worked, "a", "b") == []


def test_operand_slips_are_always_a_different_positive_operand(code_tokenizer):
    """The operand slip is the operand off by -2, -1, 1 or 2, never 0; one that would not be positive is the
    operand + 1: for an operand of 1, 2 (from -2, -1 or +1) or 3 (from +2), whatever the seed."""
    one = Problem("Mia has 7 apples. She buys 1 more. She gives 3 to Leo. How many apples does Mia have now?", "5",
                  [Step(7, "+", 1, 8), Step(8, "-", 3, 5)])
    seen = set()
    for seed in range(12):
        pos, neg = slip_pairs(code_tokenizer, [one], seed=seed)["operand"][0]
        assert code_tokenizer.decode(pos).endswith("\nx1 = 7 + 1\n" + STEP_END)
        seen.add(code_tokenizer.decode(neg).removesuffix("\n" + STEP_END).rpartition("x1 = 7 + ")[2])
    assert seen == {"2", "3"}
    slips = slip_pairs(code_tokenizer, make_problems(30, seed=5), seed=1)
    assert len(slips["operand"]) > 60 and all(pos != neg for pos, neg in slips["operand"])


def test_held_out_accuracy_greedy_and_beam_on_a_scripted_search(monkeypatch):
    """4 problems, 3 answered right, 10 + 20 + 30 + 40 tokens: (3/4, 25 tokens a problem). Greedy samples at
    config.temperature with no scorer; beam b is beam search of width b expanding b steps a beam, sampled at
    config.beam_temperature, the PPM's score its scorer."""
    import nanoo1.rounds as rounds
    from types import SimpleNamespace

    class Policy:
        def __init__(self, model, tokenizer, config, ppm, seed=0):
            self.config, self.ppm = config, ppm

    calls = []
    answers = {"q0": ("9", 10), "q1": ("4", 20), "q2": ("5", 30), "q3": (None, 40)}
    monkeypatch.setattr(rounds, "RStarPolicy", Policy)
    monkeypatch.setattr(rounds, "search", lambda policy, questions, method, scorer=None: calls.append(
        (policy, method, scorer)) or [SimpleNamespace(answer=answers[q][0], spent=SimpleNamespace(generated=answers[q][1]))
                                      for q in questions])
    problems = [Problem(f"q{i}", a) for i, a in enumerate(["9", "4", "5", "7"])]
    config = EvolveConfig(temperature=1.0, beam_temperature=0.5)
    assert rounds.held_out_accuracy(None, None, problems, config) == (0.75, 25.0)
    policy, method, scorer = calls[-1]
    assert method.method == "greedy" and scorer is None and policy.config.temperature == 1.0 and policy.ppm is None
    assert rounds.held_out_accuracy(None, None, problems, config, ppm="ppm", beam=3) == (0.75, 25.0)
    policy, method, scorer = calls[-1]
    assert (method.method, method.n, method.expand) == ("beam", 3, 3) and scorer is None  # the PPM's values, read once
    assert policy.config.temperature == 0.5 and policy.ppm == "ppm"


def test_measure_counts_the_pairs_ordered_right_over_all_and_by_kind(monkeypatch):
    """7 of 10 operand pairs and 1 of 3 skip pairs ordered right, no early pairs: 8/13 in all, 0.7 and 1/3 by
    kind, None for early (pair_accuracy's float32 share x count rounds back to 7, not down to 6); greedy's
    tokens to one decimal, the beam's accuracy from the PPM-scored search."""
    import nanoo1.rounds as rounds
    from types import SimpleNamespace

    def pair_accuracy(ppm, pairs, pad_id):  # as ppm.pair_accuracy: a float32 mean; "R": ordered right
        return torch.tensor([float(p == "R") for p, _ in pairs]).mean().item() if pairs else None

    calls = []
    monkeypatch.setattr(rounds, "pair_accuracy", pair_accuracy)
    monkeypatch.setattr(rounds, "held_out_accuracy", lambda model, tokenizer, problems, config, ppm=None, beam=0, seed=0:
                        calls.append((ppm, beam)) or ((0.75, 30.0) if beam else (0.5, 12.34)))
    pairs = {"operand": [("R", "n")] * 7 + [("W", "n")] * 3, "skip": [("R", "n")] + [("W", "n")] * 2, "early": []}
    row = rounds.measure("policy", "ppm", SimpleNamespace(pad_id=0), [], pairs, EvolveConfig(beam=2))
    assert calls == [(None, 0), ("ppm", 2)]
    assert row["greedy"] == 0.5 and row["greedy_tokens"] == 12.3 and row["ppm_search"] == 0.75
    assert row["ppm_pair_accuracy"] == pytest.approx(8 / 13)
    assert row["ppm_slip_accuracy"] == {"operand": pytest.approx(0.7), "skip": pytest.approx(1 / 3), "early": None}


def test_tiny_evolve_starts_from_rstars_own_warm_start(tmp_path):
    from nanoo1.warmstart import CODE_DIR, tiny_base, train_warmstart

    assert tiny_base(tmp_path / "base") == CODE_DIR and (CODE_DIR / "model.safetensors").exists()
    with pytest.raises(ValueError, match="warm start kind 'prose': expected one of mixed, think, code"):
        train_warmstart(kind="prose")


def test_tiny_evolve_starts_itself_on_both_cores_under_torchrun(monkeypatch):
    import torch.distributed.run

    import nanoo1.evolve as evolve

    launched, ran = [], []
    monkeypatch.setattr(torch.distributed.run, "main", launched.append)
    monkeypatch.setattr(evolve, "run", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(evolve.os, "cpu_count", lambda: 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))  # main sets it for the ranks
    evolve.main(["--tiny", "--rounds", "1", "--no-progress"])
    assert launched == [["--standalone", "--nproc_per_node", "2", "-m", "nanoo1.evolve", "--tiny", "--rounds", "1",
                         "--no-progress"]] and ran == []  # the ranks run it, not this process
    monkeypatch.setattr(evolve.os, "cpu_count", lambda: 1)
    evolve.main(["--tiny", "--no-progress"])  # one core: one process, no torchrun
    monkeypatch.setenv("WORLD_SIZE", "1")
    evolve.main(["--tiny", "--procs", "2", "--no-progress"])  # already under torchrun: never again
    assert len(launched) == 1 and len(ran) == 2


def test_a_shortened_tiny_run_repeats_its_table_exactly(tmp_path):
    """The warm start itself, one short round with the PPM-guided search and the held-out pairs: the same
    seed gives the same rows (but for the seconds), the same policy and the same PPM."""
    from nanoo1 import evolve

    flags = ["--tiny", "--procs", "1", "--rounds", "1", "--problems", "6", "--simulations", "3", "--eval-problems", "6",
             "--pair-problems", "5", "--sft-epochs", "2", "--ppm-epochs", "2", "--no-progress"]
    runs = []
    for name in ("a", "b"):
        evolve.main(flags + ["--out", str(tmp_path / name)])
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs.append([{k: v for k, v in row.items() if not k.endswith("seconds")} for row in rows])
    assert runs[0] == runs[1] and [row["round"] for row in runs[0]] == [0, 1]
    assert sum(runs[0][0]["held_out_pairs"].values()) > 5 and runs[0][1]["ppm_pair_accuracy"] is not None
    assert runs[0][1]["ppm_search"] is not None
    for name in ("policy-1/model.safetensors", "ppm-1/ppm_head.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_the_search_is_rstars_uct_with_the_runs_own_settings():
    """rStar-Math's MCTS: UCT with c = 2, rewards +1 / -1 backed up undiscounted, as many children as candidates;
    the simulations, candidates, patience and sampling temperature are the run's settings."""
    from nanoo1.evolve import mcts_config

    c = mcts_config(EvolveConfig(simulations=5, num_candidates=3, patient=4, temperature=0.6))
    assert (c.selection, c.c, c.discount, c.success_value, c.failure_value) == ("uct", 2.0, 1.0, 1.0, -1.0)
    assert (c.simulations, c.num_candidates, c.max_children, c.patient, c.temperature) == (5, 3, 3, 4, 0.6)
    assert c.max_depth == RStarConfig.max_depth


def test_a_problem_left_unsolved_is_searched_again_in_a_fresh_tree_that_takes_its_place(code_tokenizer, monkeypatch):
    """rStar-Math's round 4: the problems whose tree holds no correct answer are searched once more, in fresh trees
    of --retry-simulations simulations by the same policy (its generator going on), each new tree in the old one's
    place; solved problems are not searched again, and the tokens of both passes count. 0: one pass."""
    import nanoo1.evolve as evolve
    from nanoo1.grow import SearchResult
    from nanoo1.policy import Spent

    problems = make_problems(3, seed=7, max_steps=2)
    calls = []

    def fake_mcts(policy, questions, config, truths):  # problem 1 is solved on the second pass alone
        calls.append(([problems.index(next(p for p in problems if p.question == q)) for q in questions],
                      config.simulations, policy))
        results = []
        for q in questions:
            tree = Tree(q)
            solved = q != problems[1].question or len(calls) == 2
            tree.add(tree.root, "<conclusion>", "a", value=1.0, terminal="success" if solved else "failure")
            results.append(SearchResult("mcts", None, tree, [0, 1], Spent(generated=10 ** len(calls), prompt=1)))
        return results

    monkeypatch.setattr(evolve, "mcts", fake_mcts)
    base = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    trees, spent = evolve.search_trees(base, None, code_tokenizer, problems,
                                       EvolveConfig(simulations=5, retry_simulations=7))
    assert [(indices, sims) for indices, sims, _ in calls] == [([0, 1, 2], 5), ([1], 7)]
    assert calls[0][2] is calls[1][2]  # one policy, one generator
    assert [tree.question for tree in trees] == [p.question for p in problems] and coverage(trees) == 1.0
    assert spent == [3 * 10 + 100, 3 + 1, 0]
    calls.clear()
    trees, spent = evolve.search_trees(base, None, code_tokenizer, problems,
                                       EvolveConfig(simulations=5, retry_simulations=0))
    assert [(indices, sims) for indices, sims, _ in calls] == [([0, 1, 2], 5)] and coverage(trees) == 2 / 3
    with pytest.raises(ValueError, match="--retry-simulations must be >= 0"):
        EvolveConfig(retry_simulations=-1)


def test_bf16_autocast_only_over_float32_weights():
    """--bf16 autocasts the training of float32 weights; bfloat16 weights (under LoRA) train as they are."""
    assert EvolveConfig(bf16=True).autocast and not EvolveConfig(bf16=False).autocast
    assert not EvolveConfig(bf16=True, dtype="bfloat16").autocast


def test_a_rounds_report_keeps_the_first_and_last_loss():
    from nanoo1.evolve import _ends

    assert _ends([3.0, 2.5, 1.23456]) == [3.0, 1.2346] and _ends([]) == []


def test_each_round_reports_its_own_finds_and_searches_with_its_own_seed(code_tokenizer, tmp_path, monkeypatch):
    """Round k searches with seed + k and keeps --traces-per-problem traces a problem. Its row counts the traces
    and pairs that round found (the pool of every round so far trains the next pair, but the table says what each
    round added) and the tokens its search spent, generated and prompt apart; the held-out pairs are counted in
    the first row alone."""
    import nanoo1.evolve as evolve

    _scripted_rounds(code_tokenizer, tmp_path, monkeypatch)
    seeds, found, spent, kept = [], [], [], []
    search, examples, pairs, real_mcts = evolve.search_trees, evolve.sft_examples, evolve.ppm_pairs, evolve.mcts
    monkeypatch.setattr(evolve, "search_trees", lambda *a: seeds.append(a[-1]) or search(*a))
    monkeypatch.setattr(evolve, "sft_examples",
                        lambda *a: kept.append(a[2:]) or found.append(examples(*a)) or found[-1])
    monkeypatch.setattr(evolve, "ppm_pairs", lambda *a: found.append(pairs(*a)) or found[-1])
    monkeypatch.setattr(evolve, "mcts", lambda *a: spent.append(real_mcts(*a)) or spent[-1])
    config = EvolveConfig(simulations=8, rounds=2, problems=3, later_min_steps=0, eval_problems=1, pair_problems=1,
                          beam=0, sft_epochs=1, ppm_epochs=1, bf16=False, seed=5, traces_per_problem=1,
                          out=str(tmp_path / "run"))
    rows = run(config, tmp_path / "base", tmp_path / "train.jsonl", tmp_path / "test.jsonl")
    assert seeds == [5, 6] and kept == [(1,), (1,)]
    counts = [(len(found[0]), sum(map(len, found[1]))), (len(found[2]), sum(map(len, found[3])))]  # round 0's, round 1's
    assert [(row["traces"], row["pairs"]) for row in rows[:2]] == counts
    assert rows[1]["traces"] > 0  # so a count of the pool (round 0's and round 1's) would differ
    assert [("held_out_pairs" in row) for row in rows] == [True, False, False]  # said once, in the first row
    for row, results in zip(rows, spent):
        assert row["generated_tokens"] == sum(r.spent.generated for r in results)
        assert row["prompt_tokens"] == sum(r.spent.prompt for r in results)


def test_a_round_keeps_solutions_for_the_orm_only_when_the_verifier_table_follows(code_tokenizer, monkeypatch):
    """The ORM's outcome examples are collected into the pool with --verifiers alone (otherwise nothing reads
    them)."""
    from nanoo1.evolve import Pool

    train = make_problems(2, seed=7, max_steps=2)
    monkeypatch.setattr(rstar, "generate", _scripted_solver(train))
    base = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    for verifiers_n, kept in ((0, False), (4, True)):
        pool = Pool()
        config = EvolveConfig(simulations=8, problems=2, sft_epochs=1, ppm_epochs=1, bf16=False, verifiers=verifiers_n)
        self_evolution_round(base, base, None, code_tokenizer, train, config, pool=pool)
        assert pool.pairs and bool(pool.outcomes) == kept


def test_evolve_takes_one_thread_for_the_tiny_task_and_refuses_bf16_full_finetuning(monkeypatch, capsys):
    """--tiny runs on one thread unless --threads says otherwise (a checkpoint leaves torch its choice), and
    bfloat16 weights are for LoRA only: AdamW stepping bf16 weights themselves would lose most updates."""
    import nanoo1.evolve as evolve

    threads = []
    monkeypatch.setattr(evolve, "process_setup", threads.append)
    monkeypatch.setattr(evolve, "run", lambda *a, **k: None)
    evolve.main(["--tiny", "--procs", "1", "--no-progress"])
    evolve.main(["--tiny", "--procs", "1", "--threads", "2", "--no-progress"])
    evolve.main(["--model", "some/checkpoint", *TINY_DATA, "--device", "cpu", "--no-progress"])
    assert threads == [1, 2, None]
    with pytest.raises(SystemExit):
        evolve.main(["--tiny", "--procs", "1", "--dtype", "bfloat16", "--no-progress"])
    assert "--lora-rank 0 (full fine-tuning) with --dtype bfloat16" in capsys.readouterr().err
    evolve.main(["--tiny", "--procs", "1", "--dtype", "bfloat16", "--lora-rank", "4", "--no-progress"])
    assert len(threads) == 4


def test_the_policy_fine_tune_warms_up_a_tenth_of_its_steps_and_returns_a_frozen_model(code_tokenizer, monkeypatch):
    """20 steps of at most 8 of 3 examples (3 a step), 2 of them warm-up, autocast as the settings say; the policy
    comes back frozen and in eval mode, trained or not (it only searches and is copied from)."""
    import nanoo1.evolve as evolve

    seen = []
    monkeypatch.setattr(evolve, "train_sft", lambda model, batches, sft, progress: seen.append(sft) or [1.0])
    base = random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1))
    examples = [encode_trace(code_tokenizer, MIA.question, solution_steps(MIA))] * 3
    config = EvolveConfig(sft_epochs=20, sft_batch_size=8, sft_lr=1e-2, bf16=False)
    for given in (examples, []):
        tuned, _ = finetune_policy(base, given, code_tokenizer.pad_id, config)
        assert not tuned.training and not any(p.requires_grad for p in tuned.parameters())
    (sft,) = seen
    assert (sft.steps, sft.batch_size, sft.warmup, sft.lr, sft.bf16) == (20, 3, 2, 1e-2, False)


def test_a_run_of_no_rounds_measures_the_base_over_a_cleared_run_and_compares_no_verifiers(code_tokenizer, tmp_path,
                                                                                              monkeypatch):
    """--rounds 0 is one row, the base model measured; the verifier table needs a trained PPM, so --verifiers has
    nothing to compare. With --overwrite the run first clears the files another run left in --out."""
    import nanoo1.evolve as evolve

    test = make_problems(2, seed=8, max_steps=2)
    write_jsonl(make_problems(3, seed=7, max_steps=3), tmp_path / "train.jsonl")
    write_jsonl(test, tmp_path / "test.jsonl")
    save_pretrained(random_model(Gemma2Config.preset("tiny", vocab_size=len(code_tokenizer), num_hidden_layers=1)),
                    code_tokenizer, tmp_path / "base")
    (tmp_path / "run" / "policy-7").mkdir(parents=True)  # another run's
    (tmp_path / "run" / "metrics.jsonl").write_text('{"round": 7}\n')
    monkeypatch.setattr(rstar, "generate", _scripted_solver(test))
    monkeypatch.setattr(evolve, "compare_verifiers", lambda *a: pytest.fail("a verifier table without a PPM"))
    config = EvolveConfig(rounds=0, verifiers=4, problems=3, eval_problems=1, pair_problems=1, beam=0,
                          out=str(tmp_path / "run"))
    rows = run(config, tmp_path / "base", tmp_path / "train.jsonl", tmp_path / "test.jsonl", overwrite=True)
    assert [row["round"] for row in rows] == [0] and not (tmp_path / "run" / "policy-7").exists()
    assert [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == rows


def test_the_ppm_takes_ppm_epochs_passes_over_whole_trees_of_ppm_pairs_per_step_pairs(monkeypatch):
    """10 trees of 20 pairs, 4 pairs a step: 2 trees a step, and 4 passes are passes(4, 10, 2) = 20 steps, at
    --ppm-lr, autocast as the settings say, shuffled by the round's seed, each rank's share of a step weighed by
    its pairs."""
    import nanoo1.evolve as evolve

    calls = []
    monkeypatch.setattr(evolve, "fit", lambda *a, **kw: calls.append((a, kw)) or [0.5])
    config = EvolveConfig(ppm_epochs=4.0, ppm_pairs_per_step=4, ppm_lr=0.25, bf16=False)
    trees = [[([1, 2], [1, 3])] * 3, [([1, 2], [1, 4])]] * 5
    assert train_ppm("ppm", trees, 3, config, seed=7) == [0.5]
    assert calls == [(("ppm", trees, evolve.pair_batch_loss, 3, 20, 2, 0.25, False, 7, "ppm", False), {"size": len})]
