"""Exercise checks of notebook 03 thought trees and the rating-token value head (notebooks/03_thought_trees.ipynb)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from nanoo1.exercises._common import _Case, _run, _callable
from nanoo1.thoughts import Tree  # a plain data structure: the checks build their inputs with it


def _thought_line(parent: int, node: int, meta: str, text: str, rating: str | None = "positive") -> str:
    """One line of the LongCoT format, written out here (not with nanoo1) so the checks keep their own answers;
    rating None stops right after <start_of_rating>."""
    line = (f"<start_of_father_id>{parent}<end_of_father_id><start_of_local_id>{node}<end_of_local_id>"
            f"<start_of_thought>{meta}{text}<end_of_thought><start_of_rating>")
    return line if rating is None else line + f"<{rating}_rating><end_of_rating>"


def _mia_path(rating_of_step: str = "positive"):
    """root 0 (<problem>) -> 1 (<expansion> 7 + 5 = 12) -> 2 (<conclusion>), as nanoo1.thoughts Nodes."""
    tree = Tree("Mia has 7 apples. She buys 5 more. How many?")
    step = tree.add(tree.root, "<expansion>", "7 + 5 = 12")
    step.rating = rating_of_step
    end = tree.add(step, "<conclusion>", "The answer is \\boxed{12}")
    return [tree.root, step, end]


_MIA_ROOT = _thought_line(-1, 0, "<problem>", "Mia has 7 apples. She buys 5 more. How many?")


def check_value_prompt(value_prompt) -> bool:
    """`value_prompt(path) -> str` as nanoo1.thoughts.value_prompt: the path's lines, root first, joined by
    newlines, the last one cut right after `<start_of_rating>` (where the value head reads P(positive))."""
    _callable(value_prompt, "check_value_prompt")
    root, step, end = _mia_path()
    step_line = _thought_line(0, 1, "<expansion>", "7 + 5 = 12")
    return _run("value_prompt", [
        _Case("the path [root]", lambda: value_prompt([root]),
              "<start_of_father_id>-1<end_of_father_id><start_of_local_id>0<end_of_local_id><start_of_thought><problem>"
              "Mia has 7 apples. She buys 5 more. How many?<end_of_thought><start_of_rating>",
              hint="the last line stops right after <start_of_rating>: its rating is what the value head predicts"),
        _Case("the path [root, step]", lambda: value_prompt([root, step]),
              _MIA_ROOT + "\n" + _thought_line(0, 1, "<expansion>", "7 + 5 = 12", None),
              hint="every line but the last is complete, rating included; lines are joined by '\\n'"),
        _Case("the path [root, step, conclusion]", lambda: value_prompt([root, step, end]),
              _MIA_ROOT + "\n" + step_line + "\n" + _thought_line(1, 2, "<conclusion>", "The answer is \\boxed{12}", None),
              hint="each line names its parent's id, then its own"),
        _Case("the same with the step rated negative", lambda: value_prompt(_mia_path("negative")),
              _MIA_ROOT + "\n" + _thought_line(0, 1, "<expansion>", "7 + 5 = 12", "negative") + "\n"
              + _thought_line(1, 2, "<conclusion>", "The answer is \\boxed{12}", None),
              hint="an earlier line shows its node's own rating (node.rating)"),
    ])


def check_policy_prompt(policy_prompt) -> bool:
    """`policy_prompt(path, child_id, meta=None, hint=None) -> str` as nanoo1.thoughts.policy_prompt: the path's
    complete lines, then `<hint>{hint}</hint>` on a line of its own when a hint is given, then the new child's
    header (parent = the path's last node) up to `<start_of_thought>{meta}` (no meta: the model writes it)."""
    _callable(policy_prompt, "check_policy_prompt")
    root, step, _ = _mia_path()
    head = "<start_of_father_id>{}<end_of_father_id><start_of_local_id>{}<end_of_local_id><start_of_thought>"
    step_line = _thought_line(0, 1, "<expansion>", "7 + 5 = 12")
    return _run("policy_prompt", [
        _Case("the path [root], child 1, meta <expansion>", lambda: policy_prompt([root], 1, "<expansion>"),
              _MIA_ROOT + "\n" + head.format(0, 1) + "<expansion>",
              hint="after the path: a newline and the new child's header, up to <start_of_thought> and its meta tag"),
        _Case("the path [root, step], child 5, no meta", lambda: policy_prompt([root, step], 5),
              _MIA_ROOT + "\n" + step_line + "\n" + head.format(1, 5),
              hint="the child's parent is the last node of the path; without a meta the prompt ends at <start_of_thought>"),
        _Case("the path [root, step], child 2, meta <conclusion>, hint 'Give the answer.'",
              lambda: policy_prompt([root, step], 2, "<conclusion>", "Give the answer."),
              _MIA_ROOT + "\n" + step_line + "\n<hint>Give the answer.</hint>\n" + head.format(1, 2) + "<conclusion>",
              hint="the hint goes on its own line, <hint>...</hint>, between the path and the new header"),
    ])


class _RatingLM:
    """A stand-in for a Gemma2 with hidden size 2 and 10 tokens: the final hidden state of row b at
    position t is (t, b + 1); the output embedding gives <positive_rating> (id 8) the row (1, 0) and
    <negative_rating> (id 9) the row (0, 1), so l_pos = t and l_neg = b + 1 before the soft-cap."""

    def __init__(self, cap):
        self.config = SimpleNamespace(final_logit_softcapping=cap)
        self.output_embedding = torch.tensor([[3.0, -1.0]] * 8 + [[1.0, 0.0], [0.0, 1.0]])  # (V=10, C=2)

    def hidden_states(self, input_ids, attention_mask=None, *args, **kwargs):
        B, T = input_ids.shape
        t = torch.arange(T, dtype=torch.float32).expand(B, T)  # (B, T)
        b = torch.arange(1, B + 1, dtype=torch.float32)[:, None].expand(B, T)  # (B, T)
        return torch.stack([t, b], -1)  # (B, T, 2)

    def logits(self, hidden):
        out = hidden @ self.output_embedding.T  # (..., V)
        cap = self.config.final_logit_softcapping
        return out if cap is None else torch.tanh(out / cap) * cap

    def __call__(self, input_ids, attention_mask=None, *args, **kwargs):
        return self.logits(self.hidden_states(input_ids, attention_mask))  # (B, T, V)

    forward = __call__


def check_rating_logits(rating_logits) -> bool:
    """`rating_logits(model, tokenizer, input_ids, attention_mask) -> (B, 2)` as nanoo1.value.rating_logits:
    the soft-capped logits of <positive_rating> and <negative_rating> at each row's last real token (right
    padding), which must be <start_of_rating> (a ValueError otherwise). The check passes a stand-in model
    (model.hidden_states(ids, mask), model.output_embedding (V, C), model.config.final_logit_softcapping, or
    model(ids, mask) for all logits) and a stand-in tokenizer (tokenizer.token_id(name))."""
    _callable(rating_logits, "check_rating_logits")
    tokenizer = SimpleNamespace(token_id={"<start_of_rating>": 7, "<positive_rating>": 8, "<negative_rating>": 9}.__getitem__)
    ids, mask = torch.tensor([[2, 5, 7], [2, 7, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])

    def run(cap, ids=ids, mask=mask):
        return rating_logits(_RatingLM(cap), tokenizer, ids, mask)

    def refuses(ids, mask):
        try:
            run(None, torch.tensor(ids), torch.tensor(mask))
        except ValueError:
            return "ValueError"
        return "no error"

    # row 0 ends at t = 2: (l_pos, l_neg) = (2, 1); row 1 (one pad) ends at t = 1: (1, 2)
    # cap 5: 5 tanh(2/5) = 1.8997448, 5 tanh(1/5) = .9868766;  cap 30: 30 tanh(2/30) = 1.9970423, 30 tanh(1/30) = .9996298
    return _run("rating_logits", [
        _Case("two rows, the second right-padded, no soft-cap", lambda: run(None), [[2.0, 1.0], [1.0, 2.0]],
              hint="read each row at its last real token (attention_mask.sum(-1) - 1), not at position -1"),
        _Case("the same with a soft-cap of 5", lambda: run(5.0), [[1.8997448, 0.9868766], [0.9868766, 1.8997448]],
              hint="the logits are soft-capped like the model's: tanh(l / cap) * cap"),
        _Case("the same with a soft-cap of 30", lambda: run(30.0), [[1.9970423, 0.9996298], [0.9996298, 1.9970423]]),
        _Case("one row ending in token 5, not <start_of_rating>", lambda: refuses([[2, 7, 5]], [[1, 1, 1]]), "ValueError",
              hint="raise ValueError when a row's last real token is not <start_of_rating>: the value is read there only"),
        _Case("two rows, only the second ending in token 5", lambda: refuses([[2, 5, 7], [2, 7, 5]], [[1, 1, 1], [1, 1, 1]]),
              "ValueError", hint="every row's last real token must be <start_of_rating>, not only the first's"),
    ])
