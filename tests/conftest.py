"""Shared fixtures: tiny random Gemma-2 models, their transformers twins, a tiny tokenizer."""

import pytest
import torch

from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.tokenizer import train_tokenizer

SAMPLE_TEXTS = [
    "Tom has 12 apples and buys 35 more. How many apples does he have now?",
    "<start_of_thought><expansion>12 + 35 = 47<end_of_thought>",
    "A box holds 6 pens. How many pens are in 4 boxes? The answer is \\boxed{24}.",
    "<think>3 * 4 = 12</think> so the answer is 12",
] * 20


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
    hf = hf.to(dtype).eval()
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


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tokenizer(SAMPLE_TEXTS, vocab_size=400)
