"""The tokenizer wrapper and the tiny byte-fallback BPE."""

import json

import pytest
import torch

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizer

from nanoo1.thoughts import Tree, chain_tokens, policy_prompt, render_path, value_prompt
from nanoo1.tokenizer import (BYTE_TOKENS, CONTROL_TOKENS, SPECIAL_TOKENS, THINK_TOKENS, THOUGHT_TOKENS, Tokenizer,
                              batch_ids, right_pad, train_tokenizer)


def test_control_tokens_at_gemma_ids(tiny_tokenizer):
    tok = tiny_tokenizer
    assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.token_id("<unk>")) == (0, 1, 2, 3)
    assert len(THOUGHT_TOKENS) == 16 and all(tok.has_token(t) for t in SPECIAL_TOKENS)


def test_special_tokens_are_single_tokens_and_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    text = "<start_of_thought><conclusion>So 7 * 6 = 42, \\boxed{42}<end_of_thought><start_of_rating><positive_rating><end_of_rating>"
    ids = tok.encode(text, add_bos=False)
    assert ids[0] == tok.token_id("<start_of_thought>") and ids[1] == tok.token_id("<conclusion>")
    assert ids[-1] == tok.token_id("<end_of_rating>") and ids[-2] == tok.token_id("<positive_rating>")
    assert tok.decode(ids) == text
    assert "<start_of_thought>" not in tok.decode(ids, skip_special=True)


def test_digits_are_split_and_unseen_text_falls_back_to_bytes(tiny_tokenizer):
    tok = tiny_tokenizer
    pieces = [tok.tk.id_to_token(i) for i in tok.encode("12345", add_bos=False)]
    assert pieces == ["1", "2", "3", "4", "5"]
    text = "Ünïcödé ✓ 😀 qzxv"
    ids = tok.encode(text, add_bos=False)
    assert tok.token_id("<unk>") not in ids
    assert tok.decode(ids) == text
    # "😀" is U+1F600, 4 bytes F0 9F 98 80: four byte tokens
    assert [tok.tk.id_to_token(i) for i in tok.encode("😀", add_bos=False)] == ["<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]


def test_no_double_bos(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.encode("hi")[0] == tok.bos_id and tok.encode("hi")[1] != tok.bos_id
    assert tok.encode("<bos>hi") == tok.encode("hi")
    chat = tok.encode(tok.chat_prompt("hello"))
    assert chat.count(tok.bos_id) == 1 and chat[1] == tok.token_id("<start_of_turn>")
    assert tok.encode("hi", add_bos=False)[0] != tok.bos_id


def test_the_chat_turn_is_the_one_gemma_2_its_chat_template_renders(tiny_tokenizer):
    """google/gemma-2-*-it's chat template (its user turn and generation prompt), rendered by jinja2 as transformers
    does: the message is trimmed."""
    jinja2 = pytest.importorskip("jinja2")
    template = jinja2.Template("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}"
                               "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
                               "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
                               "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
    for message in ["Why is the sky blue?", "Why is the sky blue?\n", "  Hi there \n"]:
        official = template.render(messages=[{"role": "user", "content": message}], bos_token="<bos>",
                                   add_generation_prompt=True)
        assert tiny_tokenizer.chat_prompt(message) == official


def test_save_load_and_transformers_reads_it(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save(tmp_path)
    again = Tokenizer.from_file(tmp_path)
    text = "Tom has 12 apples.<end_of_thought>"
    assert again.encode(text) == tiny_tokenizer.encode(text)
    assert json.loads((tmp_path / "special_tokens_map.json").read_text())["bos_token"] == "<bos>"
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert hf(text).input_ids == tiny_tokenizer.encode(text)


def test_errors_name_the_file_and_token(tmp_path, tiny_tokenizer):
    with pytest.raises(KeyError, match="'<nope>' is not in the vocabulary"):
        tiny_tokenizer.token_id("<nope>")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path)
    with pytest.raises(ValueError, match="leaves no room"):
        train_tokenizer(["abc"], vocab_size=100)


def test_training_is_deterministic_and_respects_vocab_size():
    texts = ["the cat sat on the mat with 3 hats"] * 30
    a, b = train_tokenizer(texts, 320), train_tokenizer(texts, 320)
    assert a.tk.to_str() == b.tk.to_str()
    assert len(a) <= 320
    # frequent words became single pieces
    assert len(a.encode(" the cat", add_bos=False)) == 2
    # a vocabulary too small to learn "▁" by itself still has it: a space never falls back to bytes, which the
    # decoder (Gemma's: "▁" -> " " before the bytes are read) would give back as "▁"
    small = train_tokenizer(["Tom has 12 apples. He eats 3 of them; 9 are left."] * 30, 300)
    assert small.has_token("▁") and small.decode(small.encode("Tom has 12 pears", add_bos=False)) == "Tom has 12 pears"


def test_empty_text_encodes_to_bos_alone(tiny_tokenizer):
    """"" is [<bos>] with add_bos (there is no first id to compare with <bos>), [] without."""
    assert tiny_tokenizer.encode("") == [tiny_tokenizer.bos_id] and tiny_tokenizer.encode("", add_bos=False) == []


def test_saving_a_tokenizer_read_without_its_configs_writes_the_minimal_pair(tmp_path, tiny_tokenizer):
    """A tokenizer.json read from a directory with no tokenizer_config.json or special_tokens_map.json beside
    it is saved with the minimal pair (bos "<bos>", PreTrainedTokenizerFast), not a missing-file error."""
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "tokenizer.json").write_text(tiny_tokenizer.tk.to_str())
    Tokenizer.from_file(tmp_path / "bare").save(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "special_tokens_map.json").read_text())["bos_token"] == "<bos>"
    assert json.loads((tmp_path / "saved" / "tokenizer_config.json").read_text())["tokenizer_class"] == \
           "PreTrainedTokenizerFast"


def test_train_tokenizer_refuses_bad_special_tokens_and_a_vocabulary_with_no_room():
    """The special tokens must start with all four control tokens and list none twice; a vocab_size of exactly
    the special and byte tokens leaves no room (one more is the smallest that trains)."""
    with pytest.raises(ValueError, match="must start with"):
        train_tokenizer(["abc"], 400, special_tokens=CONTROL_TOKENS[:3] + THINK_TOKENS)
    with pytest.raises(ValueError, match=r"lists \['<think>'\] more than once"):
        train_tokenizer(["abc"], 400, special_tokens=CONTROL_TOKENS + ["<think>", "<think>"])
    fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    with pytest.raises(ValueError, match="leaves no room"):
        train_tokenizer(["abc"], fixed)
    assert len(train_tokenizer(["abc"], fixed + 1)) == fixed + 1


def test_split_digits_false_learns_pieces_of_several_digits():
    """split_digits=False lets BPE merge digits ("12" one piece after seeing it often); the default keeps
    every digit its own token."""
    texts = ["12 12 12 345 345"] * 30
    assert len(train_tokenizer(texts, 320, split_digits=False).encode("12", add_bos=False)) == 1
    assert len(train_tokenizer(texts, 320).encode("12", add_bos=False)) == 2


def test_every_vocabulary_size_keeps_the_space_piece():
    """Whatever vocab_size cuts the learned pieces, "▁" is one of them (on this text it is learned 20th, so a
    vocabulary of exactly 19 learned pieces is the case where it is the first one left out)."""
    texts = ["Tom has 12 apples. He eats 3 of them; 9 are left."] * 30
    fixed = len(SPECIAL_TOKENS) + len(BYTE_TOKENS)
    for size in range(fixed + 1, fixed + 40):
        tok = train_tokenizer(texts, size)
        assert tok.has_token("▁") and tok.decode(tok.encode("Tom has 12", add_bos=False)) == "Tom has 12", size
    bare = train_tokenizer(["12+35=47"] * 30, fixed + 20)  # texts without a space, so BPE learns no "▁"
    assert bare.has_token("▁") and bare.decode(bare.encode("12 + 35 = 47", add_bos=False)) == "12 + 35 = 47"


def test_a_chat_template_kept_in_a_file_of_its_own_is_saved_with_the_tokenizer(tmp_path, tiny_tokenizer):
    """transformers 5 writes an -it model's chat template to chat_template.jinja: saving the tokenizer read from
    beside it (a fine-tune of it) keeps the template."""
    (tmp_path / "it").mkdir()
    tiny_tokenizer.save(tmp_path / "it")
    (tmp_path / "it" / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}")
    Tokenizer.from_file(tmp_path / "it").save(tmp_path / "tuned")
    assert (tmp_path / "tuned" / "chat_template.jinja").read_text() == (tmp_path / "it" / "chat_template.jinja").read_text()
    tiny_tokenizer.save(tmp_path / "plain")  # none beside the source: none written
    assert not (tmp_path / "plain" / "chat_template.jinja").exists()


def test_right_pad_of_no_rows_is_zero_by_width():
    """No rows (a rank with nothing to train on) pad to (0, width) of fill's dtype, and batch_ids to (0, 0)."""
    empty = right_pad([], 0.0, width=5)
    assert empty.shape == (0, 5) and empty.dtype == torch.float32
    ids, mask = batch_ids([], 0)
    assert ids.shape == mask.shape == (0, 0)


def openlongcot_layout_tokenizer() -> Tokenizer:
    """A small BPE laid out as OpenLongCoT-Base-Gemma2-2B's tokenizer is: Gemma's control tokens at 0..3, a
    vocabulary of 256000 (placeholders past the learned pieces), the thought-format tokens added after it,
    from id 256000 on."""
    base = train_tokenizer(["Tom has 3 pens. He buys 2 more. 3 + 2 = 5, so the answer is \\boxed{5}."] * 20, 320,
                           special_tokens=CONTROL_TOKENS)
    data = json.loads(base.tk.to_str())
    vocab = data["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), 256000)})
    tk = HFTokenizer.from_str(json.dumps(data))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in THOUGHT_TOKENS])
    return Tokenizer(tk)


def test_thought_tokens_added_from_256000_are_one_id_each_and_prompts_round_trip():
    tok = openlongcot_layout_tokenizer()
    ids = [tok.token_id(t) for t in THOUGHT_TOKENS]  # looked up by name, as for the real checkpoint
    assert sorted(ids) == list(range(256000, 256000 + len(THOUGHT_TOKENS))) and len(tok) == 256000 + len(THOUGHT_TOKENS)
    assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
    for t in THOUGHT_TOKENS:
        assert tok.encode(t, add_bos=False) == [tok.token_id(t)]
        assert tok.token_id(t) in tok.encode("x" + t + "7", add_bos=False)  # never merged with its neighbours
    tree = Tree("Tom has 3 pens. He buys 2 more. How many pens?")
    step = tree.add(tree.root, "<expansion>", "3 + 2 = 5")
    last = tree.add(step, "<conclusion>", "The answer is \\boxed{5}", rating="unknown")
    path = tree.path(last)
    for prompt in (policy_prompt(path, 3), policy_prompt(path, 3, "<critic>", hint="Check it."), value_prompt(path)):
        ids = tok.encode(prompt)
        assert ids[0] == tok.bos_id and tok.decode(ids[1:]) == prompt
        specials = [i for i in ids if i >= 256000]
        assert len(specials) == sum(prompt.count(t) for t in THOUGHT_TOKENS)
    assert tok.encode(value_prompt(path))[-1] == tok.token_id("<start_of_rating>")
    ids, spans = chain_tokens(tok, path)  # what RL trains on: the same text, the thoughts' spans inside it
    assert tok.decode(ids) == "<bos>" + render_path(path)
    assert [tok.decode(ids[a:b]) for a, b, _ in spans] == ["<expansion>3 + 2 = 5<end_of_thought>",
                                                            "<conclusion>The answer is \\boxed{5}<end_of_thought>"]
    assert all(ids[r] == tok.token_id("<start_of_rating>") for _, _, r in spans)
