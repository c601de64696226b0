import copy
import json
import os
import re

import pytest
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from nanoo1.adapters import load_lora, save_lora
from nanoo1.lora import LoRALinear, apply_lora, merge_lora


def lora_state_dict(model) -> dict:
    """The adapter tensors only: {'<module>.lora_A': (r, in), '<module>.lora_B': (out, r)}."""
    return {k: v for k, v in model.named_parameters() if k.endswith(("lora_A", "lora_B"))}


def count_trainable(model) -> tuple[int, int]:
    """(parameters that require grad, all parameters), shared tensors counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


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


def randomize_lora(model, seed=1, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_state_dict(model).values():
            p.copy_(torch.randn(p.shape, generator=g) * std)
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


def test_training_mode_drops_out_the_adapters_input_only():
    layer = LoRALinear(nn.Linear(4, 4), rank=2, alpha=2.0, dropout=0.5).train()
    with torch.no_grad():
        layer.lora_A.fill_(1.0)
        layer.lora_B.fill_(1.0)
    x = torch.ones(1, 4)
    torch.manual_seed(0)
    got = layer(x)
    torch.manual_seed(0)  # the same draw: the base sees x whole, the adapter sees the dropped x
    dropped = nn.functional.dropout(x, 0.5, training=True)
    want = nn.functional.linear(x, layer.weight, layer.bias) + dropped @ layer.lora_A.T @ layer.lora_B.T  # scaling 2 / 2
    torch.testing.assert_close(got, want)
    assert not torch.equal(got, layer.eval()(x))

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


def test_merging_keeps_the_outputs():
    model = randomize_lora(apply_lora(TinyGemmaLike(), rank=2, alpha=4.0))
    w0 = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    out = model(IDS)
    merge_lora(model)
    merge_lora(model)  # a second merge must not fold the update twice
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, w0)
    torch.testing.assert_close(model(IDS), out, rtol=1e-5, atol=1e-5)
    layer = model.model.layers[0].mlp.down_proj
    torch.testing.assert_close(layer.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A)  # W0 + (alpha / r) B A


def test_bf16_base_keeps_float32_adapters():
    model = apply_lora(TinyGemmaLike().to(torch.bfloat16), ("q_proj",), rank=2, alpha=2.0)
    randomize_lora(model)
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.dtype == torch.bfloat16 and q.lora_A.dtype == torch.float32
    assert model(IDS).dtype == torch.bfloat16


def _adapter_files(directory):
    config = json.loads((directory / "adapter_config.json").read_text())
    with safe_open(str(directory / "adapter_model.safetensors"), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return config, tensors


def _rewrite(directory, config=None, tensors=None):
    old_config, old_tensors = _adapter_files(directory)
    (directory / "adapter_config.json").write_text(json.dumps({**old_config, **(config or {})}))
    save_file(old_tensors if tensors is None else tensors, str(directory / "adapter_model.safetensors"))


def test_save_writes_peft_layout(tmp_path):
    model = randomize_lora(apply_lora(TinyGemmaLike(), ("q_proj", "down_proj"), rank=2, alpha=4.0, dropout=0.1))
    save_lora(model, tmp_path / "adapters", base_model_name_or_path="google/gemma-2-2b")
    assert sorted(os.listdir(tmp_path / "adapters")) == ["adapter_config.json", "adapter_model.safetensors"]
    config, tensors = _adapter_files(tmp_path / "adapters")
    assert {k: config[k] for k in ("peft_type", "task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                                   "base_model_name_or_path", "fan_in_fan_out", "use_rslora", "use_dora")} == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2, "lora_alpha": 4.0, "lora_dropout": 0.1,
        "target_modules": ["down_proj", "q_proj"], "bias": "none", "base_model_name_or_path": "google/gemma-2-2b",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False}
    prefix = "base_model.model.model.layers"
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        **{f"{prefix}.{i}.self_attn.q_proj.lora_A.weight": (2, C) for i in (0, 1)},  # (r, in)
        **{f"{prefix}.{i}.self_attn.q_proj.lora_B.weight": (C, 2) for i in (0, 1)},  # (out, r)
        **{f"{prefix}.{i}.mlp.down_proj.lora_A.weight": (2, F) for i in (0, 1)},
        **{f"{prefix}.{i}.mlp.down_proj.lora_B.weight": (C, 2) for i in (0, 1)}}
    assert torch.equal(tensors[f"{prefix}.1.mlp.down_proj.lora_B.weight"], model.model.layers[1].mlp.down_proj.lora_B)


def test_save_load_round_trip(tmp_path):
    trained = randomize_lora(apply_lora(TinyGemmaLike(), rank=2, alpha=4.0))
    save_lora(trained, tmp_path)
    save_lora(trained, tmp_path)  # saving again replaces the files and leaves no temp file behind
    assert sorted(os.listdir(tmp_path)) == ["adapter_config.json", "adapter_model.safetensors"]
    bare = TinyGemmaLike()  # no adapters yet: load_lora applies them with the saved rank and alpha
    wrapped = apply_lora(TinyGemmaLike(), rank=2, alpha=4.0, seed=7)  # adapters with other values
    assert not torch.allclose(wrapped(IDS), trained(IDS))
    for model in (bare, wrapped):
        load_lora(model, tmp_path)
        assert torch.equal(model(IDS), trained(IDS))
        assert {k: v.tolist() for k, v in lora_state_dict(model).items()} == {
            k: v.tolist() for k, v in lora_state_dict(trained).items()}
        assert count_trainable(model) == count_trainable(trained)



def test_loading_onto_a_bare_model_keeps_the_saved_dropout(tmp_path):
    save_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0, dropout=0.1), tmp_path / "a")
    loaded = load_lora(TinyGemmaLike(), tmp_path / "a")
    save_lora(loaded, tmp_path / "b")  # saving again writes what it loaded
    assert json.loads((tmp_path / "b" / "adapter_config.json").read_text())["lora_dropout"] == 0.1


def test_load_errors_name_the_file_and_the_key(tmp_path):
    d = tmp_path / "adapters"
    save_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=4.0), d)
    config, tensors = _adapter_files(d)
    q_a = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    with pytest.raises(KeyError, match=r"adapter_model\.safetensors.*missing.*layers\.0\.self_attn\.k_proj\.lora_A"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "k_proj", "v_proj"), rank=2, alpha=4.0), d)
    with pytest.raises(KeyError, match=r"adapter_model\.safetensors.*layers\.0\.self_attn\.v_proj\.lora_A.*no LoRA"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0), d)
    with pytest.raises(ValueError, match=r"adapter_config\.json.*r=2.*rank 4"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=4, alpha=4.0), d)
    with pytest.raises(ValueError, match=r"adapter_config\.json.*lora_alpha=4.0.*alpha 8.0"):
        load_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=8.0), d)
    with pytest.raises(RuntimeError, match="is merged"):
        load_lora(merge_lora(apply_lora(TinyGemmaLike(), ("q_proj", "v_proj"), rank=2, alpha=4.0)), d)

    def fails(exc, pattern, config=None, tensors=None):
        _rewrite(d, config, tensors)
        model = TinyGemmaLike()
        with pytest.raises(exc, match=pattern):
            load_lora(model, d)
        assert lora_state_dict(model) == {}  # refused before any module was wrapped
        _rewrite(d, config_before, tensors_before)

    config_before, tensors_before = config, tensors
    fails(KeyError, r"adapter_model\.safetensors.*'base_model\.model\.lm_head\.weight'",
          tensors={**tensors, "base_model.model.lm_head.weight": torch.zeros(VOCAB, C)})
    fails(KeyError, r"adapter_model\.safetensors.*'base_model\.model\.model\.layers\.0\.self_attn\.q_proj\.lora_magnitude_vector'",
          tensors={**tensors, "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.zeros(C)})
    fails(KeyError, r"adapter_model\.safetensors.*'base_model\.model\.model\.layers\.5\.self_attn\.q_proj\.lora_A\.weight'.*no such",
          tensors={**tensors, q_a.replace(".0.", ".5."): tensors[q_a].clone()})
    fails(KeyError, r"adapter_model\.safetensors.*'base_model\.model\.model\.embed_tokens\.lora_A\.weight'.*not a linear",
          tensors={**tensors, "base_model.model.model.embed_tokens.lora_A.weight": torch.zeros(2, VOCAB)})
    fails(KeyError, r"adapter_model\.safetensors.*missing.*layers\.0\.self_attn\.q_proj\.lora_B\.weight",
          tensors={k: v for k, v in tensors.items() if k != q_a.replace("lora_A", "lora_B")})
    fails(ValueError, r"adapter_model\.safetensors.*" + re.escape(q_a) + r"' has shape \(2, 5\).*\(2, 8\)",
          tensors={**tensors, q_a: torch.zeros(2, 5)})
    fails(ValueError, r"adapter_model\.safetensors.*" + re.escape(q_a) + r"' has shape \(3, 8\).*\(2, 8\)",
          tensors={**tensors, q_a: torch.zeros(3, C)})
    fails(KeyError, r"adapter_model\.safetensors.*no LoRA tensors", tensors={})
    fails(ValueError, r"adapter_config\.json.*use_rslora", config={"use_rslora": True})
    fails(ValueError, r"adapter_config\.json.*use_dora", config={"use_dora": True})
    fails(ValueError, r"adapter_config\.json.*fan_in_fan_out", config={"fan_in_fan_out": True})
    fails(ValueError, r"adapter_config\.json.*bias", config={"bias": "all"})
    fails(ValueError, r"adapter_config\.json.*rank_pattern", config={"rank_pattern": {"q_proj": 4}})
    fails(ValueError, r"adapter_config\.json.*modules_to_save", config={"modules_to_save": ["lm_head"]})
    fails(ValueError, r"adapter_config\.json.*peft_type.*'IA3'", config={"peft_type": "IA3"})
    fails(ValueError, r"adapter_config\.json.*r=0", config={"r": 0})
    fails(ValueError, r"adapter_config\.json.*init_lora_weights='pissa'", config={"init_lora_weights": "pissa"})
    for init in ("orthogonal", "eva"):  # inits that set A and B alone: the adapters are plain LoRA once trained
        _rewrite(d, {**config, "init_lora_weights": init}, tensors)
        assert lora_state_dict(load_lora(TinyGemmaLike(), d))
    _rewrite(d, config_before, tensors_before)
    (d / "adapter_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"adapter_config\.json"):
        load_lora(TinyGemmaLike(), d)


def test_save_refuses_what_peft_cannot_say_in_one_config(tmp_path):
    with pytest.raises(ValueError, match="no LoRA"):
        save_lora(TinyGemmaLike(), tmp_path)
    model = apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0)
    apply_lora(model, ("v_proj",), rank=4, alpha=4.0)
    with pytest.raises(ValueError, match=r"v_proj.*rank 4.*q_proj.*rank 2|q_proj.*rank 2.*v_proj.*rank 4"):
        save_lora(model, tmp_path)
    assert os.listdir(tmp_path) == []


def test_apply_lora_rejects_unknown_targets_and_does_not_wrap_twice():
    with pytest.raises(ValueError, match="qkv"):
        apply_lora(TinyGemmaLike(), ("qkv",))
    with pytest.raises(ValueError, match="proj"):  # a target is a whole dotted suffix: "proj" is not q_proj's
        apply_lora(TinyGemmaLike(), ("proj",))
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


# -- PEFT's layout, against peft and transformers ------------------------------------------------------
def _gemma_config():
    from nanoo1.model import Gemma2Config

    return Gemma2Config.preset("tiny", num_hidden_layers=3, sliding_window=4)


GEMMA_IDS = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(5))


def _randomize_peft(model, seed=2, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def test_nanoo1_adapters_give_the_same_logits_under_peft(tmp_path):
    peft = pytest.importorskip("peft", reason="peft is a test extra: pip install peft")
    from conftest import hf_reference

    hf, ours = hf_reference(_gemma_config(), seed=4)
    with torch.no_grad():
        base = ours(GEMMA_IDS)
    apply_lora(ours, rank=4, alpha=8.0, dropout=0.1)  # every projection; alpha / r = 2, alpha / sqrt(r) = 4
    randomize_lora(ours, std=0.1)
    save_lora(ours, tmp_path, base_model_name_or_path="tiny-gemma-2")
    assert peft.LoraConfig.from_pretrained(str(tmp_path)).r == 4
    wrapped = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        expected, theirs = ours(GEMMA_IDS), wrapped(GEMMA_IDS).logits
    assert (expected - base).abs().max().item() > 0.1  # the adapters matter, so a wrong layout cannot pass
    assert (theirs - expected).abs().max().item() < 1e-5


@pytest.mark.parametrize("targets", [["q_proj", "v_proj", "down_proj"], r".*\.1\.mlp\.(gate|up)_proj"],
                         ids=["names", "regex-one-layer"])
def test_peft_adapters_give_the_same_logits_under_nanoo1(tmp_path, targets):
    peft = pytest.importorskip("peft", reason="peft is a test extra: pip install peft")
    from conftest import hf_reference

    hf, ours = hf_reference(_gemma_config(), seed=6)
    with torch.no_grad():
        base = ours(GEMMA_IDS)
    config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=targets, task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(hf, config)
    _randomize_peft(wrapped)
    wrapped.save_pretrained(str(tmp_path / "peft"))
    wrapped.eval()
    load_lora(ours, tmp_path / "peft")  # a model without adapters: they are applied where the file has them
    with torch.no_grad():
        expected, got = wrapped(GEMMA_IDS).logits, ours(GEMMA_IDS)
    assert (expected - base).abs().max().item() > 0.1
    assert (got - expected).abs().max().item() < 1e-5
    # and back: nanoo1 saves them with the same keys, and peft loads that onto the same modules
    save_lora(ours, tmp_path / "again")
    config, tensors = _adapter_files(tmp_path / "again")
    assert sorted(tensors) == sorted(_adapter_files(tmp_path / "peft")[1])
    assert config["target_modules"] == (sorted(targets) if isinstance(targets, list) else
                                        ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"])
    fresh, _ = hf_reference(_gemma_config(), seed=6)
    with torch.no_grad():
        again = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "again")).eval()(GEMMA_IDS).logits
    assert (again - expected).abs().max().item() < 1e-5


def test_untied_lm_head_gets_no_adapter_and_adapters_are_not_saved_as_weights(tmp_path):
    """Gemma2.logits reads lm_head.weight directly: an adapter there would change nothing, so none is put there;
    and a full checkpoint has no place for unmerged adapters, so save_pretrained refuses them."""
    from conftest import random_model
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.model import Gemma2Config

    model = random_model(Gemma2Config.preset("tiny", tie_word_embeddings=False), seed=9)
    for targets in (["q_proj", "lm_head"], r".*(q_proj|lm_head)"):
        with pytest.raises(ValueError, match="lm_head.*logits read its weight directly"):
            apply_lora(model, targets)
    assert not any("lora" in k for k in model.state_dict())
    save_lora(apply_lora(copy.deepcopy(model), ("q_proj",), rank=2, alpha=4.0), tmp_path / "adapters")
    config, tensors = _adapter_files(tmp_path / "adapters")
    _rewrite(tmp_path / "adapters", tensors={**tensors, "base_model.model.lm_head.lora_A.weight": torch.zeros(2, 128),
                                             "base_model.model.lm_head.lora_B.weight": torch.zeros(512, 2)})
    with pytest.raises(KeyError, match=r"adapter_model\.safetensors.*lm_head\.lora_A.*logits read its weight"):
        load_lora(model, tmp_path / "adapters")
    apply_lora(model, ("q_proj",), rank=2, alpha=4.0)
    with pytest.raises(ValueError, match=r"save_pretrained.*LoRA.*q_proj\.lora_A.*merge_and_unload"):
        save_pretrained(model, None, tmp_path / "full")
    assert not (tmp_path / "full" / "model.safetensors").exists()


def test_merge_command_writes_a_checkpoint_transformers_loads(tmp_path, tiny_tokenizer, capsys):
    transformers = pytest.importorskip("transformers")
    from conftest import random_model
    from nanoo1.checkpoint import save_pretrained
    from nanoo1.adapters import main

    model = random_model(_gemma_config(), seed=8)
    save_pretrained(model, tiny_tokenizer, tmp_path / "base")
    (tmp_path / "base" / "generation_config.json").write_text('{"eos_token_id": [1, 107], "pad_token_id": 0}')
    randomize_lora(apply_lora(model, ("q_proj", "o_proj", "up_proj"), rank=3, alpha=6.0), std=0.1)
    save_lora(model, tmp_path / "adapters")
    main(["merge", "--base", str(tmp_path / "base"), "--adapters", str(tmp_path / "adapters"),
          "--out", str(tmp_path / "merged")])
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (tmp_path / "merged" / name).read_bytes() == (tmp_path / "base" / name).read_bytes()
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(k for k in model.state_dict() if "lora" not in k)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager").eval()
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager").eval()
    with torch.no_grad():
        expected, got, before = model(GEMMA_IDS), hf(GEMMA_IDS).logits, base(GEMMA_IDS).logits
    assert (expected - before).abs().max().item() > 0.1
    assert (got - expected).abs().max().item() < 1e-5
    with pytest.raises(SystemExit):  # never over the base it reads
        main(["merge", "--base", str(tmp_path / "base"), "--adapters", str(tmp_path / "adapters"),
              "--out", str(tmp_path / "base")])
    assert "base or the adapters" in capsys.readouterr().err
    from nanoo1.model import Gemma2Config

    four_layers = Gemma2Config.preset("tiny", num_hidden_layers=4, sliding_window=4)
    deeper = apply_lora(random_model(four_layers, seed=8), ("q_proj",), rank=3, alpha=6.0)
    save_lora(deeper, tmp_path / "deeper")
    with pytest.raises(SystemExit):  # adapters of another shape: a message naming the file and key, no traceback
        main(["merge", "--base", str(tmp_path / "base"), "--adapters", str(tmp_path / "deeper"),
              "--out", str(tmp_path / "merged-deeper")])
    assert "adapter_model.safetensors: key 'base_model.model.model.layers.3." in capsys.readouterr().err


def test_merging_a_scorers_adapters_keeps_its_head(tmp_path, tiny_tokenizer):
    """evolve's ppm-k under LoRA holds adapters and ppm_head.safetensors: the merged directory holds the merged
    decoder and the same head, the layout of a scorer trained in full, and scores as the adapters on the base do."""
    from safetensors.torch import load_file
    from conftest import random_model
    from nanoo1.adapters import merge_into_checkpoint
    from nanoo1.checkpoint import load_pretrained, save_pretrained
    from nanoo1.ppm import PPM_HEAD, ProcessPreferenceModel, ppm_scores, save_scorer

    base = random_model(_gemma_config(), seed=8)
    save_pretrained(base, tiny_tokenizer, tmp_path / "base")
    ppm = ProcessPreferenceModel(randomize_lora(apply_lora(base, ("q_proj", "down_proj"), rank=2, alpha=4.0), std=0.1))
    with torch.no_grad():
        ppm.head.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    save_scorer(ppm, tiny_tokenizer, tmp_path / "ppm-1", base=str(tmp_path / "base"))
    (tmp_path / "ppm-1" / "model.safetensors").write_bytes(b"stale")  # a model's weights left beside the adapters
    merge_into_checkpoint(tmp_path / "base", tmp_path / "ppm-1", tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").read_bytes() != b"stale"  # the merged weights, not copied over
    assert (tmp_path / "merged" / PPM_HEAD).read_bytes() == (tmp_path / "ppm-1" / PPM_HEAD).read_bytes()
    merged = ProcessPreferenceModel(load_pretrained(tmp_path / "merged")[0])
    merged.head.load_state_dict(load_file(str(tmp_path / "merged" / PPM_HEAD)))
    paths = GEMMA_IDS.tolist()
    assert torch.allclose(ppm_scores(merged, paths, 0), ppm_scores(ppm, paths, 0), atol=1e-5)


def test_adapters_off_runs_the_base_alone_and_switches_them_back_on():
    from nanoo1.lora import adapters_off
    from nanoo1.model import Gemma2, Gemma2Config

    config = Gemma2Config.preset("tiny", vocab_size=64, num_hidden_layers=2)
    base = Gemma2(config).init_weights(torch.Generator().manual_seed(0)).eval()
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = base(ids)
        model = apply_lora(base, rank=2, alpha=4.0)
        for _, m in model.named_modules():
            if hasattr(m, "lora_B"):
                m.lora_B.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
        adapted = model(ids)
        with adapters_off(model):
            off = model(ids)
        again = model(ids)
    assert (adapted - expected).abs().max() > 0.1  # the adapters matter
    assert torch.equal(off, expected) and torch.equal(again, adapted)


def test_a_target_that_selects_nothing_is_named():
    """A misspelt entry among good ones is an error naming it, before any layer is wrapped; the run's settings
    refuse it (and lm_head, and a dropout of 1, which would train nothing) before a model is loaded."""
    from nanoo1.recipe import LoRASettings

    model = TinyGemmaLike()
    with pytest.raises(ValueError, match=r"'qproj'"):
        apply_lora(model, ("q_proj", "qproj"), rank=2)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with pytest.raises(ValueError, match=r"--lora-targets names 'qproj'"):
        LoRASettings(rank=2, targets="q_proj,qproj")
    with pytest.raises(ValueError, match=r"'lm_head'.*logits read its weight"):
        LoRASettings(rank=2, targets="lm_head")
    with pytest.raises(ValueError, match=r"--lora-dropout must be below 1"):
        LoRASettings(rank=2, dropout=1.0)


# -- edge cases: bounds, defaults and what each step leaves behind ---------------------------------------------
def test_config_values_are_checked_and_defaults_are_plain_lora(tmp_path):
    """r an int >= 1 (not a bool), lora_alpha in (0, inf), lora_dropout in [0, 1]; a config without lora_dropout or
    init_lora_weights is plain LoRA (dropout 0, peft's default init True), and init False (B random) is plain too."""
    d = tmp_path / "adapters"
    save_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0, dropout=0.1), d)
    config, tensors = _adapter_files(d)
    for key, bad in (("r", True), ("lora_alpha", 0), ("lora_alpha", float("inf")), ("lora_dropout", 1.5),
                     ("lora_dropout", -0.1)):
        _rewrite(d, {**config, key: bad}, tensors)
        with pytest.raises(ValueError, match=rf"adapter_config\.json: {key}={bad!r}, expected"):
            load_lora(TinyGemmaLike(), d)
    for init in (False, "gaussian"):
        _rewrite(d, {**config, "init_lora_weights": init}, tensors)
        assert lora_state_dict(load_lora(TinyGemmaLike(), d))
    (d / "adapter_config.json").write_text(json.dumps(
        {k: v for k, v in config.items() if k not in ("lora_dropout", "init_lora_weights")}))
    model = load_lora(TinyGemmaLike(), d)
    save_lora(model, tmp_path / "again")  # the dropout it was given, written back: 0.0
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text())["lora_dropout"] == 0.0


def test_adapters_saved_with_a_dropout_of_1_load_as_peft_loads_them(tmp_path):
    """peft accepts lora_dropout 1.0 (dropout acts in training only): they load, with that dropout, and outside
    training compute what the same adapters with no dropout do."""
    model = randomize_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0))
    save_lora(model, tmp_path / "a")
    _rewrite(tmp_path / "a", {"lora_dropout": 1.0})
    loaded = load_lora(TinyGemmaLike(), tmp_path / "a")
    assert loaded.model.layers[0].self_attn.q_proj.lora_dropout.p == 1.0
    assert torch.equal(loaded.eval()(IDS), model.eval()(IDS))


def test_save_refuses_adapters_with_different_dropouts(tmp_path):
    model = apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0, dropout=0.1)
    apply_lora(model, ("v_proj",), rank=2, alpha=4.0, dropout=0.2)  # one config holds one lora_dropout
    with pytest.raises(ValueError, match=r"dropout 0\.2.*dropout 0\.1|dropout 0\.1.*dropout 0\.2"):
        save_lora(model, tmp_path)


def test_save_trained_and_merge_write_what_they_should(tmp_path, tiny_tokenizer):
    """save_trained: the adapters beside the tokenizer under LoRA, a full checkpoint without; merge refuses to write
    over the adapters, checks their config before it loads the base, and copies no adapter file into the result."""
    from conftest import random_model
    from nanoo1.adapters import merge_into_checkpoint, save_trained

    model = random_model(_gemma_config(), seed=8)
    save_trained(model, tiny_tokenizer, tmp_path / "base")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "base"))
    save_trained(apply_lora(model, ("q_proj",), rank=2, alpha=4.0), tiny_tokenizer, tmp_path / "adapters")
    assert sorted(os.listdir(tmp_path / "adapters")) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    with pytest.raises(ValueError, match="base or the adapters"):
        merge_into_checkpoint(tmp_path / "base", tmp_path / "adapters", tmp_path / "adapters")
    merge_into_checkpoint(tmp_path / "base", tmp_path / "adapters", tmp_path / "merged")
    assert "model.safetensors" in os.listdir(tmp_path / "merged")
    assert not {"adapter_config.json", "adapter_model.safetensors"} & set(os.listdir(tmp_path / "merged"))
    (tmp_path / "empty").mkdir()  # not a checkpoint: an adapter option nanoo1 does not compute is named first
    _rewrite(tmp_path / "adapters", {"use_dora": True})
    with pytest.raises(ValueError, match="use_dora"):
        merge_into_checkpoint(tmp_path / "empty", tmp_path / "adapters", tmp_path / "merged-dora")


def test_rank_below_one_is_refused_and_seed_alone_draws_the_a_matrices():
    """rank 0 is a ValueError, not a division by zero; A comes from `seed` alone: the same seed gives the same A
    whatever torch's global generator holds, another seed another A."""
    with pytest.raises(ValueError, match="rank must be >= 1, got 0"):
        LoRALinear(nn.Linear(4, 4), rank=0, alpha=1.0)

    def a_of(seed, global_seed):
        torch.manual_seed(global_seed)
        return apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, seed=seed).model.layers[1].self_attn.q_proj.lora_A

    assert torch.equal(a_of(3, 0), a_of(3, 1)) and not torch.equal(a_of(3, 0), a_of(4, 0))


def test_a_string_target_is_a_regex_over_the_whole_name():
    """As in peft, a string must match a module's whole name: "q_proj" matches none ("model.layers.0.self_attn.
    q_proj" is longer), ".*\\.1\\.self_attn\\.q_proj" exactly one."""
    with pytest.raises(ValueError, match="no nn.Linear matches 'q_proj'"):
        apply_lora(TinyGemmaLike(), "q_proj")
    model = apply_lora(TinyGemmaLike(), r".*\.1\.self_attn\.q_proj", rank=2)
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    assert wrapped == ["model.layers.1.self_attn.q_proj"]


def test_adapters_off_refuses_merged_adapters():
    """Once merged the base weights are gone: switching the adapters off would run base + update; an error."""
    from nanoo1.lora import adapters_off

    model = merge_lora(randomize_lora(apply_lora(TinyGemmaLike(), ("q_proj",), rank=2, alpha=4.0)))
    with pytest.raises(ValueError, match="merged"):
        with adapters_off(model):
            pass


def test_merging_one_copy_leaves_the_others_base_alone():
    """lora_copy's copies share the frozen base; merging one (to evaluate it at base speed) once added its update
    into the shared weight, so the original computed with the copy's update plus its own."""
    from nanoo1.lora import lora_copy

    model = randomize_lora(apply_lora(TinyGemmaLike(), ("q_proj", "down_proj"), rank=2, alpha=4.0)).eval()
    out = model(IDS)
    copy_ = randomize_lora(lora_copy(model), seed=2)
    merged_out = copy_(IDS)
    merge_lora(copy_)
    torch.testing.assert_close(model(IDS), out, rtol=0, atol=0)
    torch.testing.assert_close(copy_(IDS), merged_out, rtol=1e-5, atol=1e-5)


def test_merge_and_unload_puts_plain_linears_back():
    """merge_and_unload: the same outputs from plain nn.Linear layers holding the merged weights, the base keys only,
    each layer in the training mode of the one it replaces (an eval model stays in eval)."""
    from nanoo1.lora import merge_and_unload

    model = randomize_lora(apply_lora(TinyGemmaLike(), ("q_proj", "down_proj"), rank=2, alpha=4.0)).eval()
    out = model(IDS)
    merge_and_unload(model)
    torch.testing.assert_close(model(IDS), out, rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert sorted(model.state_dict()) == sorted(TinyGemmaLike().state_dict())
    assert not any(m.training for m in model.modules())


def test_unfreeze_returns_exactly_what_trains():
    """With adapters: the adapters alone (q_proj rank 2 in 2 layers: 2 * (2*8 + 8*2) = 64 values), the base frozen;
    without: every parameter (1240 values)."""
    from nanoo1.lora import unfreeze

    model = apply_lora(TinyGemmaLike(), ("q_proj",), rank=2)
    model.requires_grad_(True)
    params = unfreeze(model)
    assert sum(p.numel() for p in params) == 64 and all(p.requires_grad for p in params)
    assert count_trainable(model) == (64, 1240 + 64)
    plain = TinyGemmaLike().requires_grad_(False)
    assert sum(p.numel() for p in unfreeze(plain)) == 1240 and count_trainable(plain) == (1240, 1240)
