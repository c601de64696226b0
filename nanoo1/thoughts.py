"""The LongCoT thought-tree format (LLaMA-O1 / OpenLongCoT): nodes, trees, and the prompts built from them.

Every node of a reasoning tree is one line of text:

    <start_of_father_id>{parent}<end_of_father_id><start_of_local_id>{id}<end_of_local_id>
    <start_of_thought>{meta}{text}<end_of_thought><start_of_rating>{rating}<end_of_rating>

(one line in reality), meta one of <problem> <expansion> <critic> <refine> <conclusion> and rating one
of <positive_rating> <negative_rating> <unknown_rating>. The root is `<problem>{question}` with parent
-1. A path from the root to a node, one line per node, is what the policy and the value head read.

Policy: the path, an optional `<hint>...</hint>` line, then the header of a new child up to
`<start_of_thought>{meta}`; the model writes the thought and stops at `<end_of_thought>`.
Value: the path whose last line stops right after `<start_of_rating>`; the next-token logits of
<positive_rating> and <negative_rating> give V = log P(positive) (value.py). The value is read, and
trained, at exactly that position (`value_prompt` and `chain_tokens` build both).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

META_ACTIONS = ["<problem>", "<expansion>", "<critic>", "<refine>", "<conclusion>"]
RATINGS = {"positive": "<positive_rating>", "negative": "<negative_rating>", "unknown": "<unknown_rating>"}
# Hints per meta-action (LLaMA-O1's prompts, reworded). The conclusion asks for \boxed{}, what the grader
# reads, and the critic hint goes to <critic> only.
HINTS = {
    "<problem>": "Divide the problem into smaller steps and solve them one at a time.",
    "<expansion>": "Take the next step of the solution.",
    "<critic>": "Point out the flaws in the previous steps.",
    "<refine>": "Refine the previous step to fix its flaws.",
    "<conclusion>": "Summarize the solution and give the final answer in \\boxed{}.",
}


@dataclass(eq=False)
class Node:
    """One thought. Statistics are what search records; tokens are what RL trains on (the ids it was sampled as)."""

    id: int  # unique in the whole tree
    parent: "Node | None"
    meta: str  # one of META_ACTIONS
    text: str  # the thought, without its meta tag
    children: list["Node"] = field(default_factory=list)
    value: float | None = None  # log P(positive) from the value head, then the running mean of backups
    visits: int = 0
    prior: float = 1.0  # policy probability: exp(mean token log-prob) of the generated thought
    varentropy: float = 0.0  # mean varentropy of the sampled tokens
    terminal: str | None = None  # "success", "failure" or None (not terminal)
    rating: str = "positive"  # rendered after the thought in prompts: "positive", "negative" or "unknown"
    tokens: list[int] = field(default_factory=list)  # generated ids (meta tag, text, <end_of_thought>)
    rectified: float | None = None  # after search: discounted mean of the terminal rewards below (mcts.rectify)

    @property
    def parent_id(self) -> int:
        return -1 if self.parent is None else self.parent.id

    @property
    def depth(self) -> int:
        depth, node = 0, self.parent
        while node is not None:  # a loop, not recursion: search trees can be deeper than the recursion limit
            depth, node = depth + 1, node.parent
        return depth


class Tree:
    """A reasoning tree over one question. New ids come from a counter: unique, never reused."""

    def __init__(self, question: str, root_id: int = 0):
        if not isinstance(question, str):  # a (question, answer) tuple would put the answer in every prompt
            raise TypeError(f"question must be a str, got {type(question).__name__}; pass the ground truth separately")
        self.nodes: list[Node] = []  # in the order they were added
        self._by_id: dict[int, Node] = {}
        self.next_id = root_id  # the id the next added node gets
        self.root = self.add(None, "<problem>", question)

    @property
    def question(self) -> str:
        return self.root.text

    def add(self, parent: Node | None, meta: str, text: str, node_id: int | None = None, **stats) -> Node:
        """Add a thought under `parent`; its id is the counter's next one, or `node_id` (e.g. when parsing)."""
        if meta not in META_ACTIONS:
            raise ValueError(f"meta {meta!r} is not one of {META_ACTIONS}")
        node_id = self.next_id if node_id is None else node_id
        if node_id in self._by_id:
            raise ValueError(f"node id {node_id} is already in the tree")
        node = Node(id=node_id, parent=parent, meta=meta, text=text, **stats)
        self.nodes.append(node)
        self._by_id[node_id] = node
        self.next_id = max(self.next_id, node_id + 1)
        if parent is not None:
            parent.children.append(node)
        return node

    def node(self, node_id: int) -> Node:
        """Look a node up by id: a dictionary, no recursion."""
        if node_id not in self._by_id:
            raise KeyError(f"no node with id {node_id} in this tree of {len(self.nodes)} nodes")
        return self._by_id[node_id]

    def path(self, node: Node) -> list[Node]:
        """Root first, `node` last."""
        out = []
        while node is not None:
            out.append(node)
            node = node.parent
        return out[::-1]

    def leaves(self) -> list[Node]:
        return [n for n in self.nodes if not n.children]

    def solved(self) -> bool:
        """Whether the tree holds a correct answer: a "success" terminal anywhere in it."""
        return any(n.terminal == "success" for n in self.nodes)

    def training_text(self) -> str:
        """The whole tree, one line per node in id order: the OpenLongCoT pretraining format."""
        return "\n".join(render_node(n) for n in self.nodes)

    def to_json(self) -> str:
        keys = ["id", "meta", "text", "value", "visits", "prior", "varentropy", "terminal", "rating", "tokens", "rectified"]
        return json.dumps([{**{k: getattr(n, k) for k in keys}, "parent": n.parent_id} for n in self.nodes])



# -- rendering ---------------------------------------------------------------------------------------
def header(parent_id: int, node_id: int) -> str:
    return f"<start_of_father_id>{parent_id}<end_of_father_id><start_of_local_id>{node_id}<end_of_local_id>"


def render_node(node: Node, upto: str = "end") -> str:
    """The node's line; upto="thought" stops after `<start_of_thought>{meta}`, "rating" after `<start_of_rating>`."""
    line = header(node.parent_id, node.id) + "<start_of_thought>" + node.meta
    if upto == "thought":
        return line
    line += node.text + "<end_of_thought><start_of_rating>"
    if upto == "rating":
        return line
    return line + RATINGS[node.rating] + "<end_of_rating>"


def render_path(path: list[Node]) -> str:
    return "\n".join(render_node(n) for n in path)


def hint_for(meta: str, ground_truth: str | None = None) -> str:
    """The hint for a child of this meta-action; the ground truth is added only when passed explicitly."""
    hint = HINTS[meta]
    return hint if ground_truth is None else f"{hint} The answer is {ground_truth}."


def policy_prompt(path: list[Node], child_id: int, meta: str | None = None, hint: str | None = None) -> str:
    """Path + optional hint + the new child's header up to `<start_of_thought>{meta}`.

    meta None leaves the meta tag to the model (it writes e.g. `<expansion>` itself).
    """
    hint_line = f"<hint>{hint}</hint>\n" if hint else ""
    return render_path(path) + "\n" + hint_line + header(path[-1].id, child_id) + "<start_of_thought>" + (meta or "")


def value_prompt(path: list[Node]) -> str:
    """The path with its last line cut right after `<start_of_rating>`: where the value is read and trained."""
    return "\n".join([render_node(n) for n in path[:-1]] + [render_node(path[-1], upto="rating")])


def parse_thought(generated: str, meta: str | None = None) -> tuple[str, str]:
    """(meta, text) of a generated thought; `meta` None means the model wrote the tag itself.

    A missing or unknown tag becomes <expansion>; text stops at <end_of_thought> if present.
    """
    text = generated.split("<end_of_thought>", 1)[0]
    if meta is None:
        meta = "<expansion>"
        for m in META_ACTIONS[1:]:
            if text.startswith(m):
                meta, text = m, text[len(m):]
                break
    return meta, text


HEAD = re.compile(r"<start_of_father_id>(-?\d+)<end_of_father_id><start_of_local_id>(\d+)<end_of_local_id>"
                  r"<start_of_thought>(<(?!end_of_thought>)[a-z_]+>)?")  # a line up to its thought's text
TAIL = re.compile(r"<end_of_thought><start_of_rating>(<[a-z_]+>)<end_of_rating>")  # what ends a line


def parse_tree(text: str) -> Tree:
    """Parse the line format back into a Tree (the inverse of Tree.training_text); ids are kept as written,
    and a node must come after its parent. A thought without a meta tag is an <expansion> (the root a
    <problem>). Text between the lines that is not one, a line without its <end_of_thought> and a thought
    that starts with a tag that is no meta-action are ValueErrors naming the line or the node. Linear in the
    text: a line is a head and the first tail after it, and each line is looked for where the last one ended."""
    lines, end = [], 0  # (head, tail) of each line; where the last line ended
    while True:  # the lines must tile the text: nothing but white space between them
        head = HEAD.search(text, end)
        tail = TAIL.search(text, head.end()) if head else None
        stray = text[end:head.start() if tail else len(text)]
        if stray.strip():
            line = text.count("\n", 0, end + len(stray) - len(stray.lstrip())) + 1
            raise ValueError(f"line {line}: not a thought line: {stray.strip()[:80]!r}")
        if tail is None:
            break
        if "<start_of_father_id>" in text[head.end():tail.start()]:
            line = text.count("\n", 0, head.start()) + 1
            own = text[head.end():text.find("<start_of_father_id>", head.end())]  # this line, up to the next one
            raise ValueError(f"line {line}: <end_of_thought> without <start_of_rating><rating><end_of_rating> after it"
                             if "<end_of_thought>" in own else f"line {line}: no <end_of_thought> before the next line")
        lines.append((head, tail))
        end = tail.end()
    if not lines or lines[0][0].group(1) != "-1":
        raise ValueError("thought text must start with a root line whose father id is -1")
    by_rating = {v: k for k, v in RATINGS.items()}
    tree = None
    for head, tail in lines:
        parent, node_id, rating = int(head.group(1)), int(head.group(2)), tail.group(1)
        body = text[head.end():tail.start()]
        meta = head.group(3) or ("<expansion>" if tree is not None else "<problem>")
        if meta not in META_ACTIONS:
            raise ValueError(f"node {node_id}: {meta!r} is not a meta-action ({', '.join(META_ACTIONS)})")
        if rating not in by_rating:
            raise ValueError(f"node {node_id}: unknown rating token {rating!r}")
        if tree is None:
            tree = Tree(body, root_id=node_id)
            node = tree.root
            node.meta = meta
        else:
            try:
                node = tree.add(tree.node(parent), meta, body, node_id=node_id)
            except KeyError as e:
                raise ValueError(f"node {node_id}: its father {parent} is not on an earlier line") from e
        node.rating = by_rating[rating]
    return tree


# -- meta-actions (LLaMA-O1) -------------------------------------------------------------------------
def meta_transition_matrix(tree: Tree) -> torch.Tensor:
    """(5, 5): row a = softmax over b of the sum of exp(child value) over the tree's edges (meta a -> meta b).

    Unevaluated children count as exp(0) = 1; a row without edges is uniform. <problem> is never a
    child (its column is 0). Recomputed from the tree on every call, so new children follow what the
    search has learned so far.
    """
    n = len(META_ACTIONS)
    sums = torch.zeros(n, n)
    for node in tree.nodes[1:]:
        a, b = META_ACTIONS.index(node.parent.meta), META_ACTIONS.index(node.meta)
        sums[a, b] += math.exp(node.value if node.value is not None else 0.0)
    sums[:, 0] = float("-inf")
    return torch.softmax(sums, dim=-1)


def sample_metas(tree: Tree, node: Node, k: int, generator: torch.Generator | None = None) -> list[str]:
    """k meta-actions for new children of `node`, drawn from its meta's row of the transition matrix (LLaMA-O1's
    choice; nanoo1's searches let the model write the tag)."""
    probs = meta_transition_matrix(tree)[META_ACTIONS.index(node.meta)]
    draws = torch.multinomial(probs, k, replacement=True, generator=generator)
    return [META_ACTIONS[i] for i in draws.tolist()]


# -- the rating-token value head -----------------------------------------------------------------------
def chain_tokens(tokenizer, path: list[Node]) -> tuple[list[int], list[tuple[int, int, int]]]:
    """The ids of `render_path(path)`, built from the ids each thought was actually sampled as.

    Returns (ids, spans): for every node after the root, (start, end, rating): ids[start:end] are the
    tokens the policy generated for it (its meta tag if it wrote one, the text, <end_of_thought>), and
    ids[rating] is its <start_of_rating>, where its value is read. This is what RL trains on: the policy
    loss on each span, the value loss at each rating position, all in one forward pass.
    """
    eot = tokenizer.token_id("<end_of_thought>")
    ids = tokenizer.encode(render_node(path[0]) + "\n")
    spans = []
    for i, node in enumerate(path[1:], start=1):
        generated = list(node.tokens) or tokenizer.encode(node.meta + node.text + "<end_of_thought>", add_bos=False)
        wrote_meta = generated[0] == tokenizer.token_id(node.meta)
        ids += tokenizer.encode(header(node.parent_id, node.id) + "<start_of_thought>" + ("" if wrote_meta else node.meta),
                                add_bos=False)
        start = len(ids)
        ids += generated
        end = len(ids)
        if generated[-1] != eot:  # cut at the token limit: the line is closed as the renderer would
            ids.append(eot)
        spans.append((start, end, len(ids)))
        tail = RATINGS[node.rating] + "<end_of_rating>" + ("\n" if i < len(path) - 1 else "")
        ids += tokenizer.encode("<start_of_rating>" + tail, add_bos=False)
    return ids, spans


def value_sequences(tokenizer, paths: list[list[Node]]) -> list[list[int]]:
    return [tokenizer.encode(value_prompt(p)) for p in paths]
