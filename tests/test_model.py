"""The decoder against transformers' Gemma2ForCausalLM (eager attention) on random tiny configs."""

import pytest
import torch

from conftest import hf_reference, random_model
from nanoo1.cache import KVCache
from nanoo1.model import Gemma2, Gemma2Config, RMSNorm, softcap

CONFIGS = {
    # GQA (4 query heads on 2 kv heads), heads * head_dim (4*24=96) != hidden (48), scalar 17 != head_dim 24
    "gqa_odd_dims": Gemma2Config.preset("tiny", hidden_size=48, head_dim=24, query_pre_attn_scalar=17, sliding_window=6),
    # multi-query, 3 layers (sliding, full, sliding), untied head
    "mqa_untied": Gemma2Config.preset("tiny", num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                                      head_dim=16, query_pre_attn_scalar=16, sliding_window=5, tie_word_embeddings=False),
    # plain multi-head, window longer than the sequence
    "mha": Gemma2Config.preset("tiny", num_key_value_heads=4, sliding_window=4096),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers_fp32(name):
    config = CONFIGS[name]
    hf, ours = hf_reference(config, seed=1)
    ids = torch.randint(0, config.vocab_size, (2, 23), generator=torch.Generator().manual_seed(0))  # 23 > window
    with torch.no_grad():
        ref, got = hf(ids).logits, ours(ids)
    assert got.shape == (2, 23, config.vocab_size)
    assert (ref - got).abs().max().item() < 1e-5


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_transformers_and_unpadded_rows(side):
    config = CONFIGS["gqa_odd_dims"]
    hf, ours = hf_reference(config, seed=2)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, config.vocab_size, (3, 20), generator=g)
    mask = torch.ones(3, 20, dtype=torch.long)
    pads = [0, 7, 13]
    for row, n in enumerate(pads):
        if n:
            if side == "left":
                mask[row, :n] = 0
            else:
                mask[row, -n:] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (ref - got)[real].abs().max().item() < 1e-5
    assert torch.isfinite(got).all()  # padding queries see no key: still no NaN
    # a padded row gives the same logits as the same tokens alone (positions count real tokens only)
    for row in range(3):
        alone = ours(ids[row][real[row]][None])
        assert (alone[0] - got[row][real[row]]).abs().max().item() < 1e-5


def test_bf16_close_to_transformers_bf16():
    """bf16 follows transformers' op order (factor cast first, cos/sin in bf16, float32 softmax).

    Stated tolerance: max |diff| < 0.1 on logits soft-capped to +-30 and the same argmax at >= 95% of
    positions (bf16 has 8 bits of mantissa: 30 * 2^-8 = 0.12 is one step at the cap).
    """
    config = CONFIGS["gqa_odd_dims"]
    hf, ours = hf_reference(config, seed=3, dtype=torch.bfloat16)
    ids = torch.randint(0, config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, got = hf(ids).logits.float(), ours(ids).float()
    assert (ref - got).abs().max().item() < 0.1
    assert (ref.argmax(-1) == got.argmax(-1)).float().mean().item() >= 0.95


def test_sliding_window_is_on_even_layers_and_exclusive():
    """Key j is visible to query i on layer 0 iff i - W < j <= i; layer 1 sees every j <= i."""
    config = Gemma2Config.preset("tiny", num_hidden_layers=2, sliding_window=3)
    model = Gemma2(config)
    assert config.layer_types == ["sliding_attention", "full_attention"]
    q = torch.arange(6)[None]
    full, slide = model.attention_masks(q, torch.ones(1, 6, dtype=torch.bool), torch.float32)
    visible_slide = (slide[0, 0] == 0).int()
    visible_full = (full[0, 0] == 0).int()
    # row i = query 5: keys 3, 4, 5 (5 - 3 < j <= 5)
    assert visible_slide[5].tolist() == [0, 0, 0, 1, 1, 1]
    assert visible_slide[1].tolist() == [1, 1, 0, 0, 0, 0]
    assert visible_full[5].tolist() == [1] * 6


def test_rmsnorm_and_softcap_known_values():
    norm = RMSNorm(2, eps=0.0)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.0, 1.0]))
    # x = (3, 4): rms = sqrt((9 + 16) / 2) = 3.5355; x / rms = (0.8485, 1.1314); times (1 + w) = (1, 2)
    y = norm(torch.tensor([[3.0, 4.0]]))
    assert torch.allclose(y, torch.tensor([[0.848528, 2.262742]]), atol=1e-5)
    # tanh(60 / 30) * 30 = 28.9208
    assert abs(softcap(torch.tensor(60.0), 30.0).item() - 28.920822) < 1e-4
    assert softcap(torch.tensor(5.0), None).item() == 5.0


def test_embedding_scale_is_rounded_to_activation_dtype():
    """sqrt(2304) = 48.0 exactly in bf16; sqrt(48) = 6.9282 becomes 6.9375 in bf16 (as in the reference)."""
    config = Gemma2Config.preset("tiny", hidden_size=48, head_dim=12)
    model = random_model(config, dtype=torch.bfloat16)
    ids = torch.tensor([[5]])
    emb = model.model.embed_tokens.weight[5]
    # run only the embedding step through a zero-layer copy of the model
    zero = Gemma2(Gemma2Config.preset("tiny", hidden_size=48, head_dim=12, num_hidden_layers=0, layer_types=[])).to(torch.bfloat16)
    zero.model.embed_tokens.weight.data.copy_(model.model.embed_tokens.weight.data)
    zero.model.norm = torch.nn.Identity()
    h = zero.hidden_states(ids)[0, 0]
    assert torch.equal(h, emb * torch.tensor(6.9375, dtype=torch.bfloat16))


# the cache starts empty and doubles from 64 slots (never past max_len): 150 tokens cross two doublings, 64 tokens
# fill the first 64 slots exactly and grow nothing
@pytest.mark.parametrize("length,max_len,capacity", [(21, 32, 32), (150, 1000, 256), (64, 1000, 64)])
def test_cached_decoding_equals_full_forward(length, max_len, capacity):
    config = CONFIGS["gqa_odd_dims"]
    model = random_model(config, seed=4)
    ids = torch.randint(0, config.vocab_size, (2, length), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, max_len)
        assert cache.capacity == 0
        steps = [model(ids[:, :5], cache=cache)] + [model(ids[:, t:t + 1], cache=cache) for t in range(5, length)]
    assert cache.lengths.tolist() == cache.sizes == [length, length] and cache.capacity == capacity
    assert (torch.cat(steps, 1) - full).abs().max().item() < 1e-5


def test_checkpointing_leaves_a_cached_forward_alone():
    """A training model (checkpointing on, gradients enabled) still writes and reads its cache: prefill 5 tokens,
    then one step, equals the full forward's last two positions (recomputation is for cache-less passes only)."""
    model = random_model(CONFIGS["gqa_odd_dims"], seed=4)
    ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(3))
    full = model(ids)
    model.checkpointing = True
    cache = model.new_cache(2, 8)
    steps = torch.cat([model(ids[:, :5], cache=cache), model(ids[:, 5:], cache=cache)], 1)
    assert (steps - full).abs().max().item() < 1e-5


def test_growing_the_cache_holds_one_layer_twice_at_most(monkeypatch):
    """Doubling the capacity copies layer by layer: at most one layer's old tensor lives beside the grown cache
    (a 2B model's 64 rollout rows hold 7 GB of cache; growing it whole would need half again more)."""
    import gc
    from types import SimpleNamespace

    from nanoo1.cache import KVCache

    def live_bytes():  # every tensor storage alive in this process, counted once
        storages = {}
        for t in gc.get_objects():
            if type(t) in (torch.Tensor, torch.nn.Parameter):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return sum(storages.values())

    layers = 8
    cache = KVCache(SimpleNamespace(num_hidden_layers=layers, num_key_value_heads=2, head_dim=16), 4, 4096)
    cache.reserve(1024)
    layer = 4 * 2 * 1024 * 16 * 4  # one layer's keys at 1024 slots, float32
    others = live_bytes() - 2 * layers * layer  # whatever else the process holds
    seen, grown = [], KVCache._grown
    def spy(x, capacity):  # counts what lives once the new tensor is made, before it replaces x
        new = grown(x, capacity)
        seen.append(live_bytes() - others)
        return new

    monkeypatch.setattr(KVCache, "_grown", staticmethod(spy))
    cache.reserve(2048)
    final = 2 * layers * 2 * layer  # keys and values at 2048 slots
    assert cache.capacity == 2048 and live_bytes() - others == final
    assert seen and max(seen) <= final + layer  # the grown cache and one layer still at 1024 slots


def test_cache_rows_of_different_lengths_and_fork():
    config = CONFIGS["mqa_untied"]
    model = random_model(config, seed=5)
    a, b = [5, 6, 7, 8, 9, 10, 11], [12, 13, 14]
    with torch.no_grad():
        cache = model.new_cache(2, 16)
        mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 4])
        model(torch.tensor([a, b + [0] * 4]), attention_mask=mask, cache=cache)
        assert cache.lengths.tolist() == cache.sizes == [7, 3]  # the host's copy agrees
        forked = cache.fork([1, 1, 0])  # row b twice, then row a
        nxt = model(torch.tensor([[20], [21], [22]]), cache=forked)[:, -1]
        ref = [model(torch.tensor([b + [20]]))[0, -1], model(torch.tensor([b + [21]]))[0, -1], model(torch.tensor([a + [22]]))[0, -1]]
    for got, want in zip(nxt, ref):
        assert (got - want).abs().max().item() < 1e-5
    assert forked.lengths.tolist() == forked.sizes == [4, 4, 8]
    assert cache.lengths.tolist() == cache.sizes == [7, 3]  # the original is untouched
    cache.keep([1])
    assert cache.lengths.tolist() == cache.sizes == [3]


def test_a_mask_the_cache_cannot_follow_is_refused_not_misread():
    """With a cache the mask covers the new tokens and pads only after them: a mask over past and new tokens (the
    transformers convention) would add them all to each row's length, a left pad would count as a real token."""
    model = random_model(Gemma2Config.preset("tiny"), seed=1)
    with torch.no_grad():
        cache = model.new_cache(2, 16)
        with pytest.raises(ValueError, match=r"right-padded: expected shape \(2, 3\) and no pad before a real token"):
            model(torch.tensor([[5, 6, 7], [0, 8, 9]]), attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]), cache=cache)
        assert cache.sizes == [0, 0]
        model(torch.tensor([[5, 6, 7], [8, 9, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]), cache=cache)
        with pytest.raises(ValueError, match=r"expected shape \(2, 1\) and no pad before a real token, got \(2, 4\)"):
            model(torch.tensor([[10], [11]]), attention_mask=torch.ones(2, 4, dtype=torch.long), cache=cache)
        assert cache.sizes == [3, 2]
        model(torch.tensor([[10], [11]]), attention_mask=torch.ones(2, 1, dtype=torch.long), cache=cache)
        assert cache.sizes == [4, 3]


def test_cache_overflow_is_a_clear_error():
    model = random_model(Gemma2Config.preset("tiny"))
    cache = KVCache(model.config, 1, 4)
    with pytest.raises(ValueError, match="KV cache overflow"):
        model(torch.arange(5)[None], cache=cache)
    full = KVCache(model.config, 1, 5)  # max_len slots hold max_len tokens: 5 fit, the 6th overflows
    model(torch.arange(5)[None], cache=full)
    assert full.sizes == [5]
    with pytest.raises(ValueError, match="need 6 slots, cache has max_len=5"):
        model(torch.tensor([[5]]), cache=full)


def test_presets_have_published_parameter_counts():
    assert Gemma2Config.preset("2b").num_parameters == 2_614_341_888
    with torch.device("meta"):
        model = Gemma2(Gemma2Config.preset("2b"))
    assert model.num_parameters() == 2_614_341_888
    assert len(model.state_dict()) == 288
    with pytest.raises(ValueError, match="unknown preset"):
        Gemma2Config.preset("7b")


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        Gemma2Config.preset("tiny", num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="layer_types"):
        Gemma2Config.preset("tiny", layer_types=["full_attention"])
    # positive means > 0: a zero soft-cap divides by zero (tanh(x / 0) * 0 is NaN), a zero RoPE base gives
    # infinite frequencies
    for name in ("attn_logit_softcapping", "final_logit_softcapping", "rope_theta", "rms_norm_eps"):
        with pytest.raises(ValueError, match=rf"{name}=0\.0, expected a positive number"):
            Gemma2Config.preset("tiny", **{name: 0.0})


def test_return_hidden_and_gradients_flow():
    model = random_model(Gemma2Config.preset("tiny")).train()
    ids = torch.randint(0, 512, (2, 9))
    logits, hidden = model(ids, return_hidden=True)
    assert hidden.shape == (2, 9, 64)
    assert torch.allclose(model.logits(hidden), logits)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_init_weights_sets_norm_weights_to_zero():
    # Gemma's RMSNorm scales by 1 + weight, so weight 0 is the identity scale: 4 norms per layer, 4 layers, 1 final
    model = Gemma2(Gemma2Config.preset("tiny")).init_weights(torch.Generator().manual_seed(0), std=0.02)
    norms = [p for n, p in model.named_parameters() if n.endswith("norm.weight")]
    assert len(norms) == 4 * 4 + 1 and all(torch.equal(p, torch.zeros_like(p)) for p in norms)
