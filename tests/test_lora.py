import copy
import os

import pytest
import torch
import torch.nn as nn

from nanoo1.lora import (LoRALinear, apply_lora, count_trainable, load_lora, lora_state_dict, merge_lora,
                         save_lora, unmerge_lora)

VOCAB, C, F = 11, 8, 16


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj = nn.Linear(C, C, bias=False), nn.Linear(C, C // 2, bias=False)
        self.v_proj, self.o_proj = nn.Linear(C, C // 2, bias=False), nn.Linear(C, C, bias=False)

    def forward(self, x):
        return self.o_proj(self.q_proj(x) * torch.cat([self.k_proj(x), self.v_proj(x)], -1))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(C, F, bias=False), nn.Linear(C, F, bias=False)
        self.down_proj = nn.Linear(F, C, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.gelu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.self_attn, self.mlp = Attn(), MLP()

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, C)
        self.layers = nn.ModuleList([Layer(), Layer()])


class TinyGemmaLike(nn.Module):
    """Stand-in for the decoder with Gemma-2's module names and a tied lm head."""

    def __init__(self, seed=0):
        super().__init__()
        self.model = Inner()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, input_ids, attention_mask=None):
        h = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            h = layer(h)
        return nn.functional.linear(h, self.model.embed_tokens.weight)


IDS = torch.tensor([[1, 4, 2, 7, 3], [0, 9, 9, 5, 10]])


def randomize_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def test_lora_linear_hand_computed():
    base = nn.Linear(2, 2, bias=True)
    with torch.no_grad():
        base.weight.copy_(torch.eye(2))
        base.bias.copy_(torch.tensor([0.5, -0.5]))
    layer = LoRALinear(base, rank=1, alpha=2.0)
    with torch.no_grad():
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0], [2.0]]))
    # x = [1, 3]: W x + b = [1.5, 2.5]; A x = 1; B A x = [1, 2]; scaling 2 / 1 = 2 -> [1.5 + 2, 2.5 + 4]
    torch.testing.assert_close(layer(torch.tensor([1.0, 3.0])), torch.tensor([3.5, 6.5]))
    assert layer.weight is base.weight  # adopted, not copied


def test_output_equals_base_at_init_and_base_keys_are_kept():
    base = TinyGemmaLike()
    model = apply_lora(copy.deepcopy(base), ("q_proj", "v_proj"), rank=2, alpha=4.0)
    assert torch.equal(model(IDS), base(IDS))  # B = 0: the update is exactly zero
    keys = set(model.state_dict())
    assert "model.layers.0.self_attn.q_proj.weight" in keys and "model.layers.1.self_attn.v_proj.lora_B" in keys
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and sorted(missing) == sorted(lora_state_dict(model))
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 4  # q and v in 2 layers


def test_count_trainable_hand_computed():
    model = apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=4.0)
    # base: embed 11*8 = 88; per layer q 64 + k 32 + v 32 + o 64 + gate 128 + up 128 + down 128 = 576;
    #       88 + 2 * 576 = 1240 (the tied head adds nothing)
    # LoRA rank 2: q (8 -> 8): A 2*8 + B 8*2 = 32; v (8 -> 4): A 2*8 + B 4*2 = 24; 2 layers * 56 = 112
    assert count_trainable(model) == (112, 1352)
    assert count_trainable(TinyGemmaLike()) == (1240, 1240)


def test_a_gradient_step_changes_only_lora_params():
    model = apply_lora(TinyGemmaLike(), rank=2, alpha=4.0, seed=3)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    # no weight decay: it would move lora_A, whose first gradient is exactly 0 since B = 0
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    logits = model(IDS)
    nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), IDS[:, 1:].reshape(-1)).backward()
    opt.step()
    for k, v in model.state_dict().items():
        changed = not torch.equal(v, before[k])
        # lora_A has no gradient on the first step (B = 0), lora_B does; nothing else may move
        assert changed == k.endswith("lora_B"), k


def test_merge_and_unmerge_are_equivalent():
    model = randomize_lora(apply_lora(TinyGemmaLike(), rank=2, alpha=4.0))
    w0 = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    out = model(IDS)
    merge_lora(model)
    merge_lora(model)  # a second merge must not fold the update twice
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, w0)
    torch.testing.assert_close(model(IDS), out, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    torch.testing.assert_close(model.model.layers[0].mlp.down_proj.weight, w0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(model(IDS), out, rtol=1e-5, atol=1e-5)


def test_bf16_base_keeps_float32_adapters():
    model = apply_lora(TinyGemmaLike().to(torch.bfloat16), ("q_proj",), rank=2, alpha=2.0)
    randomize_lora(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.bfloat16 and q.lora_A.dtype == torch.float32
    assert model(IDS).dtype == torch.bfloat16


def test_save_load_round_trip(tmp_path):
    trained = randomize_lora(apply_lora(TinyGemmaLike(), rank=2, alpha=4.0))
    path = str(tmp_path / "adapter.safetensors")
    save_lora(trained, path)
    assert os.listdir(tmp_path) == ["adapter.safetensors"]  # no temp file left behind
    fresh = apply_lora(TinyGemmaLike(), rank=2, alpha=4.0, seed=7)  # different A draws
    assert not torch.allclose(fresh(IDS), trained(IDS))
    load_lora(fresh, path)
    assert torch.equal(fresh(IDS), trained(IDS))
    for k, v in lora_state_dict(trained).items():
        assert torch.equal(lora_state_dict(fresh)[k], v)


def test_load_errors_name_the_key_and_the_file(tmp_path):
    path = str(tmp_path / "adapter.safetensors")
    save_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=4.0), path)
    with pytest.raises(KeyError, match=r"adapter\.safetensors.*missing.*k_proj\.lora_A"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "k_proj", "v_proj"), rank=2, alpha=4.0), path)
    with pytest.raises(KeyError, match=r"adapter\.safetensors.*unexpected.*v_proj\.lora_A"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0), path)
    with pytest.raises(ValueError, match=r"adapter\.safetensors.*q_proj\.lora_A has shape \(2, 8\).*\(4, 8\)"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=4, alpha=4.0), path)
    with pytest.raises(ValueError, match="alpha 4.0.*alpha 8.0"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=8.0), path)
    with pytest.raises(RuntimeError, match="unmerge_lora"):
        load_lora(merge_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=4.0)), path)


def test_apply_lora_rejects_unknown_targets_and_does_not_wrap_twice():
    with pytest.raises(ValueError, match="qkv"):
        apply_lora(TinyGemmaLike(), ("qkv",))
    model = apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0)
    adapter = model.model.layers[0].self_attn.q_proj.lora_A
    apply_lora(model, ("q_proj",), rank=2, alpha=4.0)  # a second call keeps the adapter it finds
    assert model.model.layers[0].self_attn.q_proj.lora_A is adapter
    assert count_trainable(model)[0] == 2 * (2 * 8 + 8 * 2)


def test_on_the_real_decoder():
    model_mod = pytest.importorskip("nanoo1.model")
    model = model_mod.Gemma2(model_mod.Gemma2Config.preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0), std=0.1)
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(1))
    base = model(ids)
    total = count_trainable(model)[1]
    apply_lora(model, ("q_proj", "v_proj"), rank=4, alpha=8.0)
    assert torch.equal(model(ids), base)
    # tiny: hidden 64, 4 heads * 32 = 128 query width, 2 kv heads * 32 = 64; rank 4, 4 layers:
    # q (64 -> 128): 4*64 + 128*4 = 768; v (64 -> 64): 4*64 + 64*4 = 512; 4 * (768 + 512) = 5120
    assert count_trainable(model) == (5120, total + 5120)
    randomize_lora(model)
    out = model(ids)
    torch.testing.assert_close(merge_lora(model)(ids), out, rtol=1e-4, atol=1e-4)
