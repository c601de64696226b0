import math

import pytest
import torch

from nanoo1.rewards import cosine_length_reward, format_reward, repetition_penalty


# ---------------------------------------------------------------- format

PROBLEM = ("<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id>"
           "<start_of_thought><problem>How many eggs?<end_of_thought>"
           "<start_of_rating><positive_rating><end_of_rating>\n")
STEP = ("<start_of_father_id>0<end_of_father_id><start_of_local_id>1<end_of_local_id>"
        "<start_of_thought><expansion>16 - 3 - 4 = 9 eggs.<end_of_thought>"
        "<start_of_rating><unknown_rating><end_of_rating>\n")
CONCLUSION = ("<start_of_father_id>1<end_of_father_id><start_of_local_id>2<end_of_local_id>"
              "<start_of_thought><conclusion>She makes \\boxed{18} dollars.<end_of_thought>"
              "<start_of_rating><unknown_rating><end_of_rating>")


@pytest.mark.parametrize("response, expected", [
    (PROBLEM + STEP + CONCLUSION, 1.0),
    (PROBLEM + STEP + "<start_of_thought><conclusion>So \\boxed{18}", 1.0),  # stopped before the end tag
    ("<conclusion>She makes \\boxed{18}.", 1.0),  # the text of one thought
    ("<conclusion>She makes \\boxed{18}.<end_of_thought>", 1.0),  # the prompt opened the thought
    (PROBLEM + STEP, 0.0),  # no conclusion
    (PROBLEM + CONCLUSION.replace("\\boxed", "\\box"), 0.0),  # LLaMA-O1's \box{}
    (PROBLEM + CONCLUSION.replace("\\boxed{18}", "\\boxed{ }"), 0.0),  # empty box
    (PROBLEM + CONCLUSION.replace("<conclusion>", "<critic>"), 0.0),  # last thought is not a conclusion
    (PROBLEM + STEP.replace("<end_of_thought>", "") + CONCLUSION, 0.0),  # two start tags in a row
    (CONCLUSION + "<end_of_thought>", 0.0),  # an end tag with no start
    ("", 0.0),
])
def test_format_reward_longcot(response, expected):
    assert format_reward(response, "longcot") == expected


@pytest.mark.parametrize("response, expected", [
    ("<think>16 - 3 - 4 = 9, 9 * 2 = 18</think>She makes \\boxed{18}.", 1.0),
    ("16 - 3 - 4 = 9</think>\\boxed{18}", 1.0),  # the prompt opened <think>
    ("<think>out of budget</think>\\boxed{18}", 1.0),  # a forced </think> is still one </think>
    ("<think>no end tag \\boxed{18}", 0.0),
    ("<think>a</think>no box", 0.0),
    ("<think>a</think>\\boxed{}", 0.0),
    ("<think>a</think>\\boxed{1}</think>", 0.0),  # two </think>
    ("<think>a</think><think>b\\boxed{1}", 0.0),  # thinking again in the solution
    ("<think>a<think>b</think>\\boxed{1}", 0.0),  # two <think>
    ("text <think>a</think>\\boxed{1}", 0.0),  # <think> must open the response
    ("\n <think>a</think> \\boxed{1}", 1.0),  # whitespace before it aside (a template's line break)
    ("", 0.0),
])
def test_format_reward_elastic(response, expected):
    assert format_reward(response, "elastic") == expected


def test_format_reward_rejects_unknown_style():
    with pytest.raises(ValueError, match="'xml'"):
        format_reward("<think></think>", "xml")


# ---------------------------------------------------------------- cosine length reward


@pytest.mark.parametrize("correct, length, expected", [
    (True, 0, 2.0),  # 1 + 0.5 * (2 - 1) * (1 + cos 0) = 1 + 1 = 2
    (True, 25, 1.8535534),  # 1 + 0.5 * (1 + cos(pi/4)) = 1 + 0.5 * 1.7071068
    (True, 50, 1.5),  # 1 + 0.5 * (1 + cos(pi/2)) = 1 + 0.5
    (True, 99, 1.0002467),  # 1 + 0.5 * (1 + cos(0.99 pi)) = 1 + 0.5 * 0.00049344
    (False, 0, -10.0),  # 0 + 0.5 * (-10 - 0) * 2
    (False, 25, -8.5355339),  # -5 * 1.7071068
    (False, 50, -5.0),  # -5 * (1 + 0)
    (True, 100, -10.0),  # length reached max_length: the exceed penalty, correct or not
    (False, 100, -10.0),
    (True, 150, -10.0),
])
def test_cosine_length_reward(correct, length, expected):
    r = cosine_length_reward(correct, length, max_length=100)
    assert isinstance(r, float) and r == pytest.approx(expected, abs=1e-6)


def test_cosine_length_reward_on_tensors_matches_scalars():
    correct = torch.tensor([True, True, False, False, True])
    length = torch.tensor([0, 25, 25, 50, 100])
    r = cosine_length_reward(correct, length, max_length=100)  # (5,)
    assert r.shape == (5,) and r.dtype == torch.float32
    expected = [cosine_length_reward(bool(c), int(n), 100) for c, n in zip(correct, length)]
    torch.testing.assert_close(r, torch.tensor(expected))
    torch.testing.assert_close(r, torch.tensor([2.0, 1.8535534, -8.5355339, -5.0, -10.0]))
    # other parameters: r_0 = 1, r_L = 0 halfway is 0.5; a custom exceed value
    assert cosine_length_reward(True, 50, 100, r0_correct=1.0, rL_correct=0.0) == pytest.approx(0.5)
    assert cosine_length_reward(False, 7, 5, r_exceed=-1.0) == -1.0
    assert cosine_length_reward(True, 5, 5, exceeded=False) == pytest.approx(1.0)  # stopped on its own at the limit
    assert cosine_length_reward(torch.tensor([True, True]), torch.tensor([5, 3]), 5,
                                exceeded=torch.tensor([True, False])).tolist() == pytest.approx([-10.0, 1.5 + 0.5 * math.cos(0.6 * math.pi)])
    # float64 throughout: float32 constants would be off by about 1e-9 here
    assert cosine_length_reward(True, 0, 5, r0_correct=0.1) == pytest.approx(0.1, abs=1e-12)


def test_cosine_length_reward_rejects_bad_lengths():
    with pytest.raises(ValueError, match="max_length"):
        cosine_length_reward(True, 1, 0)
    with pytest.raises(ValueError, match="lengths"):
        cosine_length_reward(torch.tensor([True]), torch.tensor([-1]), 10)


# ---------------------------------------------------------------- repetition penalty


def test_repetition_penalty_hand_made_sequence():
    p = -0.05
    # n = 3 over   a b c d a b c a b c   (positions 0..9)
    # 3-grams: 0 abc, 1 bcd, 2 cda, 3 dab, 4 abc (seen at 0) -> marks 4,5,6; 5 bca; 6 cab;
    #          7 abc (seen) -> marks 7,8,9
    ids = [1, 2, 3, 4, 1, 2, 3, 1, 2, 3]
    expected = [0, 0, 0, 0, p, p, p, p, p, p]
    torch.testing.assert_close(repetition_penalty(ids, n=3, penalty=p), torch.tensor(expected))
    # overlapping repeats mark each token once: 5 5 5 5 with n = 2 -> grams 0 (5,5), 1 (5,5) seen,
    # 2 (5,5) seen -> positions 1, 2 and 2, 3 -> tokens 1..3 marked once each
    torch.testing.assert_close(repetition_penalty(torch.tensor([5, 5, 5, 5]), n=2, penalty=p),
                               torch.tensor([0, p, p, p]))
    # the earlier copy may start at an odd position: 9 1 2 9 1 2 with n = 2 -> grams 0 (9,1), 1 (1,2),
    # 2 (2,9), 3 (9,1) seen -> marks 3, 4; 4 (1,2) seen at 1 -> marks 4, 5
    torch.testing.assert_close(repetition_penalty([9, 1, 2, 9, 1, 2], n=2, penalty=p), torch.tensor([0, 0, 0, p, p, p]))
    # with n = 4 nothing in the first sequence repeats: abcd, bcda, cdab, dabc, abca, bcab, cabc
    assert repetition_penalty(ids, n=4, penalty=p).eq(0).all()


def test_repetition_penalty_degenerate_inputs():
    assert repetition_penalty([], n=2).shape == (0,)
    assert repetition_penalty([7, 7, 7], n=40).eq(0).all()  # shorter than n: nothing repeats
    out = repetition_penalty(torch.tensor([9] * 45))  # the defaults: n = 40, -0.05
    # 6 grams of 40 nines (starts 0..5); starts 1..5 repeat and cover tokens 1..44
    assert out[0] == 0 and torch.all(out[1:] == -0.05)
    with pytest.raises(ValueError, match="n must be positive"):
        repetition_penalty([1, 2], n=0)


def test_repetition_penalty_defaults_to_40_grams():
    """Yeo et al.'s n-gram is 40 tokens: 20 tokens said twice repeat no 40-gram; 40 said twice make the second copy
    a repeat, 40 tokens at -0.05."""
    assert repetition_penalty(list(range(20)) * 2).sum().item() == 0.0
    r = repetition_penalty(list(range(40)) * 2)
    assert r[:40].eq(0).all() and r[40:].tolist() == pytest.approx([-0.05] * 40)
