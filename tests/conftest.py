"""Shared fixtures: tiny random Gemma-2 models, their transformers twins, a tiny tokenizer."""

import json
import os
from pathlib import Path

import pytest
import torch

# One thread: the suite's tensors are small, and OpenMP's two threads stall badly when the machine is busy.
torch.set_num_threads(1)

from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.tokenizer import train_tokenizer

SAMPLE_TEXTS = [
    "Tom has 12 apples and buys 35 more. How many apples does he have now?",
    "<start_of_thought><expansion>12 + 35 = 47<end_of_thought>",
    "A box holds 6 pens. How many pens are in 4 boxes? The answer is \\boxed{24}.",
    "<think>3 * 4 = 12</think> so the answer is 12",
] * 20


def thread_names() -> list[str]:
    """The names of this process's threads (Linux, /proc/self/task; none elsewhere)."""
    names = []
    for task in Path("/proc/self/task").glob("*/comm"):
        try:
            names.append(task.read_text().strip())
        except FileNotFoundError:  # the thread ended meanwhile
            pass
    return sorted(names)


def random_model(config: Gemma2Config, seed: int = 0, std: float = 0.05, dtype=torch.float32) -> Gemma2:
    """A Gemma2 with random weights, norms included (zero norms would hide a wrong 1 + w)."""
    g = torch.Generator().manual_seed(seed)
    model = Gemma2(config).init_weights(g, std=std)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.3, generator=g)
    return model.to(dtype).eval()


def hf_reference(config: Gemma2Config, seed: int = 0, dtype=torch.float32):
    """(transformers Gemma2ForCausalLM, nanoo1 Gemma2) with the same random weights.

    The transformers config is built here from the raw numbers, with transformers' own defaults for
    everything Gemma-2-specific (layer types, soft-caps, activation), so a wrong default in nanoo1
    cannot be copied into the reference.
    """
    transformers = pytest.importorskip("transformers")
    c = config
    hf_config = transformers.Gemma2Config(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, query_pre_attn_scalar=c.query_pre_attn_scalar,
        sliding_window=c.sliding_window, tie_word_embeddings=c.tie_word_embeddings, attn_implementation="eager")
    torch.manual_seed(seed)
    hf = transformers.Gemma2ForCausalLM(hf_config)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.normal_(0.0, 0.3 if "norm" in name else 0.05)  # random norms: a wrong (1 + w) shows
    rotary = {name: b for name, b in hf.named_buffers() if name.endswith("inv_freq")}
    hf = hf.to(dtype).eval()
    for name, b in rotary.items():  # in float32, as from_pretrained keeps them: in bf16 RoPE drifts with position
        module, _, attr = name.rpartition(".")
        setattr(hf.get_submodule(module), attr, b)
    ours = Gemma2(c)
    state = hf.state_dict()
    if c.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    ours.load_state_dict(state)
    return hf, ours.to(dtype).eval()


def hf_twin(model: Gemma2, tmp_path):
    """The same weights in transformers' Gemma2ForCausalLM (eager attention), through a saved checkpoint."""
    transformers = pytest.importorskip("transformers")
    from nanoo1.checkpoint import save_pretrained

    save_pretrained(model, None, tmp_path / "twin")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "twin", attn_implementation="eager",
                                                           dtype=model.model.embed_tokens.weight.dtype)
    return hf.eval()


def gsm8k_path(split: str) -> Path:
    """GSM8K's `split` file ("train" or "test"), as it is: in $NANOO1_GSM8K, or else in
    ../shared/datasets/gsm8k beside the repository; the test is skipped when it is not there."""
    beside = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "gsm8k"
    path = Path(os.environ.get("NANOO1_GSM8K") or beside) / f"{split}.jsonl"
    if not path.exists():
        pytest.skip(f"GSM8K not found at {path}: put train.jsonl and test.jsonl in ../shared/datasets/gsm8k beside the "
                    "repository, or set NANOO1_GSM8K to their directory")
    return path


def gsm8k_rows(split: str) -> list[dict]:
    """GSM8K's `split` as it is, one dict per line (see gsm8k_path)."""
    return [json.loads(line) for line in gsm8k_path(split).read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(SAMPLE_TEXTS, vocab_size=400)


# -- a scripted fake policy for search tests (test_mcts, test_search) ---------------------------------
def path_key(path):
    """A path as the tuple of its thoughts after the root, each "meta+text"."""
    return tuple(n.meta + n.text for n in path[1:])


class ScriptedPolicy:
    """nanoo1.mcts's policy interface with thoughts and values from a script, so the best path is known.

    script(key) -> [(meta, text, prior), ...]: the thoughts that may follow the path `key` (see path_key);
    value(key) -> V of that path. Thoughts come in script order, skipping those the node already has (the
    most likely first at temperature 0); a meta given in the request replaces the scripted one. A thought
    is one token per word plus <end_of_thought>, each with log-prob log(prior). Every prompt and every
    batch is recorded, and expanding a terminal thought fails the test.
    """

    def __init__(self, script, value):
        self.script, self.value = script, value
        self.prompts, self.value_prompts = [], []  # every policy prompt and value prompt rendered
        self.propose_calls, self.evaluate_calls = [], []  # per call: [k per request], number of paths

    def propose(self, requests):
        import math

        from nanoo1.policy import Candidate

        self.propose_calls.append([r.k for r in requests])
        out = []
        for r in requests:
            assert r.node.terminal is None, f"terminal thought {r.node.id} was expanded"
            taken = {c.meta + c.text for c in r.node.children}
            scripted = self.script(path_key(r.tree.path(r.node)))
            options = [o for o in scripted if o[0] + o[1] not in taken] or scripted
            if r.temperature == 0:
                options = sorted(options, key=lambda o: -o[2])
            candidates = []
            for j in range(r.k):
                meta, text, prior = options[j % len(options)]
                prompt = r.prompt(j)
                self.prompts.append(prompt)
                n = len(text.split()) + 1
                candidates.append(Candidate(r.metas[j] or meta, text, list(range(n)), [math.log(prior)] * n, prior,
                                            prompt=prompt, prompt_tokens=len(prompt.split()) if j == 0 else 0))
            out.append(candidates)
        return out

    def evaluate(self, paths):
        from nanoo1.thoughts import value_prompt

        self.evaluate_calls.append(len(paths))
        prompts = [value_prompt(p) for p in paths]
        self.value_prompts += prompts
        return [self.value(path_key(p)) for p in paths], [len(s.split()) for s in prompts]


def decoy_script(steps=("7 + 5 = 12", "12 - 3 = 9"), answer="9"):
    """(script, value, the correct path's key) with exactly one correct path.

    Under every thought: a decoy step (prior .8), a wrong step (.5) and the next step (.3, correct only on
    the correct path); after the last step three conclusions, \\boxed{answer + 1} (.8), \\boxed{answer + 2}
    (.5) and \\boxed{answer} (.3, answer + 3 off the correct path). The value head rates correct prefixes
    log .9 and the first decoy log .95, but everything under that decoy log .05 and every other wrong
    path log .2. Greedy (highest prior) follows the decoys to \\boxed{answer + 1}.
    """
    import math

    correct = tuple("<expansion>" + s for s in steps) + ("<conclusion>The answer is \\boxed{" + answer + "}",)

    def script(key):
        d, on_path = len(key), key == correct[: len(key)]
        if d < len(steps):
            good = steps[d] if on_path else f"other step {d}"
            return [("<expansion>", f"decoy step {d}", 0.8), ("<expansion>", f"wrong step {d}", 0.5), ("<expansion>", good, 0.3)]
        a = int(answer)
        return [("<conclusion>", "The answer is \\boxed{" + str(x) + "}", p)
                for x, p in ((a + 1, 0.8), (a + 2, 0.5), (a if on_path else a + 3, 0.3))]

    def value(key):
        if key == correct[: len(key)]:
            return math.log(0.9)
        if key[0] == "<expansion>decoy step 0":
            return math.log(0.95) if len(key) == 1 else math.log(0.05)
        return math.log(0.2)

    return script, value, correct
