"""The rating-token value: one reader for a chain's every thought, one loss (binary cross-entropy)."""

import math

import pytest
import torch

from conftest import random_model
from nanoo1.model import Gemma2Config
from nanoo1.thoughts import Tree, chain_tokens, value_sequences
from nanoo1.tokenizer import batch_ids
from nanoo1.value import rating_at, rating_bce, rating_logits, rating_values


def test_rating_bce_hand_computed_with_mask_and_weights():
    # logits (l_pos, l_neg) with P(positive) = 0.8 and 0.25; the third position is padding
    logits = torch.tensor([[[math.log(0.8), math.log(0.2)], [math.log(0.25), math.log(0.75)], [5.0, -5.0]]])
    target = torch.tensor([[1.0, 0.5, 0.0]])
    mask = torch.tensor([[1, 1, 0]])
    first, second = -math.log(0.8), -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))
    assert rating_bce(logits, target, mask).item() == pytest.approx((first + second) / 2, rel=1e-6)
    two = torch.cat([logits, logits])  # two rows, the second weighted 0: the first row's terms over all 4 positions
    w = rating_bce(two, torch.cat([target, target]), torch.cat([mask, mask]), weights=torch.tensor([1.0, 0.0]))
    assert w.item() == pytest.approx((first + second) / 4, rel=1e-6)


def test_one_forward_reads_every_thoughts_value_where_search_reads_it(tiny_tokenizer):
    """rating_at on a whole chain (training) equals rating_values of each prefix path (search)."""
    tok = tiny_tokenizer
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tok), num_hidden_layers=2), seed=3, std=0.1)
    tree = Tree("Mia has 7 apples. She buys 5 more. How many apples does Mia have now?")
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    end = tree.add(step, "<conclusion>", "The answer is \\boxed{12}", rating="negative")
    ids, spans = chain_tokens(tok, tree.path(end))
    with torch.no_grad():
        hidden = model.hidden_states(torch.tensor([ids]), None)  # (1, T, C)
        logits = rating_at(model, tok, hidden, torch.tensor([[rating for _, _, rating in spans]]))  # (1, 2, 2)
    read = torch.log_softmax(logits, -1)[0, :, 0]
    torch.testing.assert_close(read, rating_values(model, tok, [tree.path(step), tree.path(end)]), atol=1e-5, rtol=0)


def test_chain_tokens_close_a_cut_thought_and_add_a_meta_the_prompt_held(tiny_tokenizer):
    """With sampled tokens on the nodes, chain_tokens rebuilds render_path's text from them."""
    from nanoo1.thoughts import render_path
    tok = tiny_tokenizer
    tree = Tree("Mia has 7 apples. She buys 5 more. How many apples does Mia have now?")
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    end = tree.add(step, "<conclusion>", "The answer is \\boxed{12}", rating="negative")
    # the meta was given in the prompt, not sampled: chain_tokens writes it before the sampled tokens
    step.tokens = tok.encode("7 + 5 = 12<end_of_thought>", add_bos=False)
    ids, spans = chain_tokens(tok, tree.path(end))
    assert tok.decode(ids) == "<bos>" + render_path(tree.path(end))
    assert ids[spans[0][0]:spans[0][1]] == step.tokens
    # cut at the token limit, without <end_of_thought>: chain_tokens closes it
    step.tokens = tok.encode("<expansion>7 + 5", add_bos=False)
    ids, spans = chain_tokens(tok, tree.path(end))
    step.text = "7 + 5"
    assert tok.decode(ids) == "<bos>" + render_path(tree.path(end))
    assert ids[spans[0][1]] == tok.token_id("<end_of_thought>")


def test_rating_bce_in_float32_for_bf16_logits_bool_targets_and_no_unmasked_position():
    """(l_pos, l_neg) = (1, -1), exact in bf16: P = sigmoid(2), loss -log sigmoid(2) = log(1 + e^-2) = 0.126928
    for target 1 and 2 + 0.126928 = 2.126928 for target 0, computed in float32 (bf16 keeps ~3 digits); targets may
    be bool labels. With no position unmasked the mean is 0, not 0/0."""
    logits = torch.tensor([[1.0, -1.0], [1.0, -1.0]], dtype=torch.bfloat16)
    loss = rating_bce(logits, torch.tensor([True, False]))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((math.log1p(math.exp(-2)) + 2 + math.log1p(math.exp(-2))) / 2, rel=1e-6)
    assert rating_bce(logits.float(), torch.ones(2), torch.zeros(2)).item() == 0.0


def _chain_paths():
    tree = Tree("Mia has 7 apples. She buys 5 more. How many apples does Mia have now?")
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    end = tree.add(step, "<conclusion>", "The answer is \\boxed{12}")
    return [tree.path(tree.root), tree.path(step), tree.path(end)]


def test_rating_values_one_per_path_in_any_batch_size_and_none_for_no_paths(tiny_tokenizer):
    """3 paths in batches of 2 (rows 0-1, then 2) give the 3 values of one batch; no paths give an empty tensor."""
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=1), seed=1, std=0.1)
    paths = _chain_paths()
    values = rating_values(model, tiny_tokenizer, paths, batch_size=2)
    assert values.shape == (3,)
    torch.testing.assert_close(values, rating_values(model, tiny_tokenizer, paths), atol=1e-5, rtol=0)
    assert rating_values(model, tiny_tokenizer, []).shape == (0,)


def test_rating_logits_refuse_a_batch_with_one_row_not_at_start_of_rating(tiny_tokenizer):
    """Every row is checked, not only some: row 0 is a good value prompt, row 1 ends one token past it."""
    tok = tiny_tokenizer
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tok), num_hidden_layers=1), seed=1, std=0.1)
    good = value_sequences(tok, _chain_paths()[1:2])[0]
    ids, mask = batch_ids([good, good + [tok.token_id("<positive_rating>")]], tok.pad_id)
    with pytest.raises(ValueError, match="must end with <start_of_rating>"):
        rating_logits(model, tok, ids, mask)


def test_rating_at_reads_bf16_hidden_states_in_float32(tiny_tokenizer):
    """rating_at promises float32 logits: bf16 hidden states are widened first, so the result equals reading the
    float32 copy of the same hidden states."""
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=1), seed=1, std=0.1)
    hidden = torch.randn(1, 4, model.config.hidden_size, generator=torch.Generator().manual_seed(0)).bfloat16()
    positions = torch.tensor([[1, 3]])
    logits = rating_at(model, tiny_tokenizer, hidden, positions)
    assert logits.dtype == torch.float32 and logits.shape == (1, 2, 2)
    torch.testing.assert_close(logits, rating_at(model, tiny_tokenizer, hidden.float(), positions), atol=0, rtol=0)
