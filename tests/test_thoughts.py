"""The thought-tree format: exact lines, round trips, prompts and hints, the rating-token value, meta-actions."""

import json
import math
import time

import pytest
import torch

from conftest import random_model
from nanoo1.answers import check
from nanoo1.model import Gemma2Config
from nanoo1.tasks import make_problems, solution_tree
from nanoo1.thoughts import (HINTS, META_ACTIONS, Tree, meta_transition_matrix, sample_metas, hint_for, parse_thought, parse_tree, policy_prompt, render_node,
                             render_path, value_prompt, value_sequences)
from nanoo1.tokenizer import batch_ids
from nanoo1.value import rating_logits, rating_value_loss, rating_values

QUESTION = "Mia has 7 apples. She buys 5 more. How many apples does Mia have now?"
ROOT_LINE = ("<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id>"
             f"<start_of_thought><problem>{QUESTION}<end_of_thought><start_of_rating><positive_rating><end_of_rating>")
STEP_HEADER = "<start_of_father_id>0<end_of_father_id><start_of_local_id>1<end_of_local_id><start_of_thought><expansion>"


def chain() -> Tree:
    tree = Tree(QUESTION)
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12", value=math.log(0.8))
    tree.add(step, "<conclusion>", "The answer is \\boxed{12}", rating="negative")
    return tree


@pytest.fixture(scope="module")
def model(tiny_tokenizer):
    return random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer), num_hidden_layers=2), seed=3, std=0.1)


# -- the line format -----------------------------------------------------------------------------------
def test_render_node_exact_lines():
    tree = chain()
    assert render_node(tree.root) == ROOT_LINE
    step = tree.node(1)
    assert render_node(step) == STEP_HEADER + "7 + 5 = 12<end_of_thought><start_of_rating><positive_rating><end_of_rating>"
    assert render_node(step, upto="thought") == STEP_HEADER
    assert render_node(step, upto="rating") == STEP_HEADER + "7 + 5 = 12<end_of_thought><start_of_rating>"
    assert render_node(tree.node(2)).endswith("\\boxed{12}<end_of_thought><start_of_rating><negative_rating><end_of_rating>")
    assert render_path(tree.path(step)) == ROOT_LINE + "\n" + render_node(step)


def test_training_text_parses_back_to_the_same_tree():
    for problem in make_problems(5, seed=0):
        tree = solution_tree(problem)
        tree.nodes[2].rating, tree.nodes[-1].rating = "negative", "unknown"
        tree.add(tree.nodes[1], "<critic>", "2 + 2 is not 5")  # a branch: node ids are not a chain
        back = parse_tree(tree.training_text())
        assert back.training_text() == tree.training_text()
        assert [(n.id, n.parent_id, n.meta, n.text, n.rating) for n in back.nodes] == \
               [(n.id, n.parent_id, n.meta, n.text, n.rating) for n in tree.nodes]


def test_parse_tree_rejects_malformed_text():
    text = chain().training_text()
    with pytest.raises(ValueError, match="root line"):
        parse_tree(text.split("\n", 1)[1])  # no root
    with pytest.raises(ValueError, match="already in the tree"):  # two nodes with id 1
        parse_tree(text.replace("<start_of_local_id>2<", "<start_of_local_id>1<"))
    with pytest.raises(ValueError, match="father 7 is not on an earlier line"):
        parse_tree(text.replace("<start_of_father_id>1<", "<start_of_father_id>7<"))
    # ids as they come out of a search tree (not 0, 1, 2, ...) are kept, and new ones continue after them
    skipping = parse_tree(text.replace("_id>1<", "_id>5<").replace("_id>2<", "_id>9<"))
    assert [n.id for n in skipping.nodes] == [0, 5, 9] and skipping.node(9).parent is skipping.node(5)
    assert skipping.training_text() == text.replace("_id>1<", "_id>5<").replace("_id>2<", "_id>9<")
    assert skipping.add(skipping.root, "<expansion>", "x").id == 10
    with pytest.raises(ValueError, match="unknown rating"):
        parse_tree(text.replace("<negative_rating>", "<great_rating>"))
    with pytest.raises(ValueError, match="line 2: no <end_of_thought> before the next line"):  # not swallowed
        parse_tree(_drop_end_of_thought(text, 1))
    unrated = text.replace("<start_of_rating><positive_rating><end_of_rating>", "", 1)  # line 1 keeps its end
    with pytest.raises(ValueError, match=r"line 1: <end_of_thought> without <start_of_rating><rating><end_of_rating>"):
        parse_tree(unrated)
    with pytest.raises(ValueError, match="line 4: not a thought line: 'just some words'"):  # not skipped
        parse_tree(text + "\njust some words")
    # a thought without a meta tag (the format's tags are optional) is an expansion, the root without one a problem
    untagged = parse_tree(text.replace("<start_of_thought><expansion>", "<start_of_thought>")
                          .replace("<start_of_thought><problem>", "<start_of_thought>"))
    assert [n.meta for n in untagged.nodes] == [n.meta for n in chain().nodes] and len(untagged.nodes) == 3
    with pytest.raises(ValueError, match="node 2: '<conclusoin>' is not a meta-action"):  # a misspelt tag is no text
        parse_tree(text.replace("<conclusion>", "<conclusoin>"))
    empty = parse_tree(text.replace("<expansion>7 + 5 = 12", ""))  # an untagged, empty thought
    assert [(n.meta, n.text) for n in empty.nodes][1] == ("<expansion>", "")


def test_parse_tree_needs_a_root_line_and_keeps_the_roots_written_meta():
    """Text with no line at all (empty, or white space only) is a ValueError naming the missing root, not an
    IndexError; a root line written with a meta tag other than <problem> keeps it, so the text round-trips."""
    for text in ("", "\n  \n"):
        with pytest.raises(ValueError, match="root line"):
            parse_tree(text)
    text = chain().training_text().replace("<problem>", "<critic>", 1)
    back = parse_tree(text)
    assert back.root.meta == "<critic>" and back.training_text() == text


def test_parse_tree_is_linear_in_the_text():
    line = ("<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id>"
            "<start_of_thought>x<end_of_thought>")  # no rating: the line never ends
    start = time.process_time()
    with pytest.raises(ValueError, match="line 1: not a thought line"):
        parse_tree(line * 4096)  # 460 kB
    assert time.process_time() - start < 1.0  # 15 s (quadratic) while each line's end was looked for to the end


def _drop_end_of_thought(text: str, line: int) -> str:
    """text with the <end_of_thought> of its line `line` (0-based) taken out."""
    lines = text.split("\n")
    lines[line] = lines[line].replace("<end_of_thought>", "", 1)
    return "\n".join(lines)


def test_json_keeps_every_statistic():
    tree = chain()
    step = tree.node(1)
    step.visits, step.prior, step.varentropy, step.terminal = 3, 0.25, 0.5, None
    step.tokens, step.rectified = [5, 6, 7], -0.45
    tree.node(2).terminal = "success"
    rows = json.loads(tree.to_json())
    assert rows[1]["tokens"] == [5, 6, 7] and rows[1]["rectified"] == -0.45 and rows[1]["visits"] == 3
    assert (rows[1]["prior"], rows[1]["varentropy"]) == (0.25, 0.5)
    assert rows[2]["parent"] == 1 and rows[2]["terminal"] == "success" and rows[0]["parent"] == -1


def test_a_tree_is_solved_when_a_success_terminal_lies_anywhere_in_it():
    """A success two levels down counts; failures, unfinished thoughts and the bare root do not."""
    tree = Tree("q")
    assert not tree.solved()
    a = tree.add(tree.root, "<expansion>", "a")
    tree.add(tree.root, "<conclusion>", "wrong", terminal="failure")
    assert not tree.solved()
    tree.add(a, "<conclusion>", "right", terminal="success")
    assert tree.solved()


def test_question_must_be_a_string():
    # LLaMA-O1 makes a (question, answer) tuple the root text, so every prompt carries the answer
    with pytest.raises(TypeError, match="ground truth separately"):
        Tree(("What is 2 + 2?", "4"))


def test_ids_are_unique_and_lookup_does_not_recurse():
    tree = Tree(QUESTION)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):  # random branching
        parent = tree.nodes[int(torch.randint(len(tree.nodes), (1,), generator=g))]
        tree.add(parent, "<expansion>", "x")
    assert [n.id for n in tree.nodes] == list(range(61))
    assert all(tree.node(i) is n for i, n in enumerate(tree.nodes))
    with pytest.raises(KeyError, match="no node with id 61"):
        tree.node(61)
    deep = Tree(QUESTION)  # deeper than Python's recursion limit
    node = deep.root
    for _ in range(1500):
        node = deep.add(node, "<expansion>", "x")
    assert deep.node(1500) is node and len(deep.path(node)) == 1501 and node.depth == 1500


def test_parsed_ids_continue_after_the_largest():
    tree = Tree(QUESTION)
    tree.add(tree.root, "<expansion>", "a", node_id=5)
    tree.add(tree.root, "<expansion>", "b", node_id=3)  # a sibling written after it with a smaller id
    back = parse_tree(tree.training_text())
    assert back.next_id == 6 and [back.add(back.root, "<expansion>", "x").id for _ in range(2)] == [6, 7]

def test_add_rejects_unknown_meta():
    with pytest.raises(ValueError, match="<guess>"):
        Tree(QUESTION).add(None, "<guess>", "x")


# -- prompts and hints ---------------------------------------------------------------------------------
def test_policy_prompt_exact_text():
    tree = chain()
    path = tree.path(tree.node(1))
    step_line = render_node(tree.node(1))
    new_header = "<start_of_father_id>1<end_of_father_id><start_of_local_id>3<end_of_local_id><start_of_thought>"
    assert policy_prompt(path, 3, "<conclusion>") == ROOT_LINE + "\n" + step_line + "\n" + new_header + "<conclusion>"
    assert policy_prompt(path, 3) == ROOT_LINE + "\n" + step_line + "\n" + new_header  # the model writes the meta
    hinted = policy_prompt(path, 3, "<critic>", hint="Check it.")
    assert hinted == ROOT_LINE + "\n" + step_line + "\n<hint>Check it.</hint>\n" + new_header + "<critic>"


def test_root_and_two_thoughts_byte_for_byte():
    """The OpenLongCoT format written out by hand (REFERENCE section 2): one line per node, lines joined by
    a newline; the policy prompt ends with the new child's header up to `<start_of_thought>{meta}`, the value
    prompt right after the last node's `<start_of_rating>`."""
    tree = Tree("Tom has 3 pens. He buys 2 more. How many pens?")
    step = tree.add(tree.root, "<expansion>", "3 + 2 = 5")
    last = tree.add(step, "<conclusion>", "The answer is \\boxed{5}", rating="unknown")
    path = tree.path(last)
    root = ("<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id><start_of_thought>"
            "<problem>Tom has 3 pens. He buys 2 more. How many pens?<end_of_thought><start_of_rating><positive_rating>"
            "<end_of_rating>")
    first = ("<start_of_father_id>0<end_of_father_id><start_of_local_id>1<end_of_local_id><start_of_thought>"
             "<expansion>3 + 2 = 5<end_of_thought><start_of_rating><positive_rating><end_of_rating>")
    second = ("<start_of_father_id>1<end_of_father_id><start_of_local_id>2<end_of_local_id><start_of_thought>"
              "<conclusion>The answer is \\boxed{5}<end_of_thought><start_of_rating><unknown_rating><end_of_rating>")
    new = "<start_of_father_id>2<end_of_father_id><start_of_local_id>3<end_of_local_id><start_of_thought>"
    assert render_path(path) == tree.training_text() == root + "\n" + first + "\n" + second
    assert policy_prompt(path, 3) == root + "\n" + first + "\n" + second + "\n" + new
    assert policy_prompt(path, 3, "<critic>") == root + "\n" + first + "\n" + second + "\n" + new + "<critic>"
    assert (policy_prompt(path, 3, "<refine>", hint="Fix it.")
            == root + "\n" + first + "\n" + second + "\n<hint>Fix it.</hint>\n" + new + "<refine>")
    assert value_prompt(path) == root + "\n" + first + "\n" + second[:-len("<unknown_rating><end_of_rating>")]
    assert second.endswith("<end_of_thought><start_of_rating><unknown_rating><end_of_rating>")
    assert value_prompt(path[:1]) == root[:-len("<positive_rating><end_of_rating>")]


def test_value_prompt_stops_right_after_start_of_rating():
    tree = chain()
    prompt = value_prompt(tree.path(tree.node(1)))
    assert prompt == ROOT_LINE + "\n" + STEP_HEADER + "7 + 5 = 12<end_of_thought><start_of_rating>"


def test_hints_per_meta_action():
    # LLaMA-O1 gives <conclusion> the critic hint and asks for \box{}; the grader reads \boxed{}
    assert "\\boxed{}" in hint_for("<conclusion>") and "\\box{" not in hint_for("<conclusion>").replace("\\boxed{", "")
    assert hint_for("<conclusion>") != hint_for("<critic>")
    assert len(set(HINTS[m] for m in META_ACTIONS)) == len(META_ACTIONS)
    assert check("The answer is \\boxed{12}", "12")  # what the hint asks for is what check reads
    # the ground truth enters a hint only when passed explicitly
    assert all("42" not in hint_for(m) for m in META_ACTIONS)
    assert hint_for("<expansion>", "42").endswith("The answer is 42.")


def test_parse_thought_cases():
    assert parse_thought("7 + 5 = 12<end_of_thought>", "<expansion>") == ("<expansion>", "7 + 5 = 12")
    assert parse_thought("<conclusion>The answer is 12<end_of_thought>junk") == ("<conclusion>", "The answer is 12")
    assert parse_thought("<critic>too fast") == ("<critic>", "too fast")  # cut off at the length limit
    assert parse_thought("no tag<end_of_thought>") == ("<expansion>", "no tag")
    # with the meta in the prompt, a tag the model repeats is kept as text
    assert parse_thought("<critic>x", "<refine>") == ("<refine>", "<critic>x")


def test_parse_thought_reads_one_child_meta_and_never_problem():
    """Only the first tag is the meta ("<critic><refine>x" is a critic whose text starts "<refine>"), and
    <problem>, the root's tag, is no child's meta: a thought that starts with it is an expansion keeping it."""
    assert parse_thought("<critic><refine>x<end_of_thought>") == ("<critic>", "<refine>x")
    assert parse_thought("<problem>x<end_of_thought>") == ("<expansion>", "<problem>x")


# -- the rating-token value ----------------------------------------------------------------------------
def test_rating_values_read_after_start_of_rating(model, tiny_tokenizer):
    tok = tiny_tokenizer
    tree = chain()
    paths = [tree.path(n) for n in tree.nodes]  # three lengths: batched rows are right-padded
    values = rating_values(model, tok, paths, batch_size=2)
    pos, neg = tok.token_id("<positive_rating>"), tok.token_id("<negative_rating>")
    for path, v in zip(paths, values):
        ids = tok.encode(value_prompt(path))
        assert ids[-1] == tok.token_id("<start_of_rating>")
        with torch.no_grad():
            last = model(torch.tensor([ids]))[0, -1]  # (V,) next-token logits after <start_of_rating>
        expected = torch.log_softmax(torch.stack([last[pos], last[neg]]), -1)[0]
        assert abs(v.item() - expected.item()) < 1e-5
    assert len(set(round(v, 4) for v in values.tolist())) == 3


def test_rating_logits_refuse_a_sequence_that_does_not_end_at_start_of_rating(model, tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok.encode(value_prompt(chain().path(chain().node(1)))) + [tok.token_id("<positive_rating>")]
    input_ids, mask = batch_ids([ids], tok.pad_id)
    with pytest.raises(ValueError, match="must end with <start_of_rating>"):
        rating_logits(model, tok, input_ids, mask)  # LLaMA-O1 trains one position past where it reads


def test_value_loss_is_trained_where_the_value_is_read(model, tiny_tokenizer):
    tok = tiny_tokenizer
    tree = chain()
    paths = [tree.path(n) for n in tree.nodes]
    ids, mask = batch_ids(value_sequences(tok, paths), tok.pad_id)
    target = torch.tensor([1.0, 0.0, 0.3])
    v = rating_values(model, tok, paths)  # log p
    # BCE by hand: -[t log p + (1 - t) log(1 - p)], averaged
    expected = -(target * v + (1 - target) * torch.log1p(-v.exp())).mean()
    loss = rating_value_loss(model, tok, ids, mask, target)
    assert abs(loss.item() - expected.item()) < 1e-5
    # training on that loss moves the value read by rating_values toward the targets (a one-layer model: fast)
    trained = random_model(Gemma2Config.preset("tiny", vocab_size=len(tok), num_hidden_layers=1), seed=3, std=0.1)
    opt = torch.optim.Adam(trained.parameters(), lr=2e-2)
    for _ in range(20):
        opt.zero_grad()
        rating_value_loss(trained, tok, ids, mask, target).backward()
        opt.step()
    p = rating_values(trained, tok, paths).exp()
    assert (p - target).abs().max() < 0.1, p


# -- meta-actions --------------------------------------------------------------------------------------
def test_meta_transition_matrix_hand_computed():
    tree = Tree(QUESTION)
    a = tree.add(tree.root, "<expansion>", "a", value=math.log(0.5))
    tree.add(tree.root, "<expansion>", "b")  # not evaluated: counts exp(0) = 1
    tree.add(a, "<conclusion>", "c", value=math.log(0.25))
    tree.add(a, "<critic>", "d", value=1.0)
    m = meta_transition_matrix(tree)
    # row <problem>: sums (expansion 0.5 + 1 = 1.5, critic 0, refine 0, conclusion 0);
    # softmax: e^1.5 = 4.481689, / (4.481689 + 3) = 0.599021, and 1 / 7.481689 = 0.133660
    assert torch.allclose(m[0], torch.tensor([0.0, 0.599021, 0.133660, 0.133660, 0.133660]), atol=1e-6)
    # row <expansion>: sums (expansion 0, critic e^1 = 2.718282, refine 0, conclusion 0.25);
    # exps 1, 15.154262, 1, 1.284025 -> total 18.438287
    assert torch.allclose(m[1], torch.tensor([0.0, 0.054235, 0.821891, 0.054235, 0.069639]), atol=1e-6)
    assert torch.allclose(m[2:], torch.tensor([[0.0, 0.25, 0.25, 0.25, 0.25]] * 3))  # rows without edges


def test_sample_metas_is_seeded_and_never_cached():
    tree = Tree(QUESTION)
    draws = sample_metas(tree, tree.root, 40, torch.Generator().manual_seed(1))
    assert draws == sample_metas(tree, tree.root, 40, torch.Generator().manual_seed(1))
    assert "<problem>" not in draws and len(set(draws)) == 4  # uniform over the four child metas
    for _ in range(12):  # twelve <problem> -> <conclusion> edges: row weight e^12 against 3 * e^0
        tree.add(tree.root, "<conclusion>", "x", value=0.0)
    # the same node asks again: LLaMA-O1's lru_cache would hand back the same draws
    again = sample_metas(tree, tree.root, 40, torch.Generator().manual_seed(1))
    assert again == ["<conclusion>"] * 40
