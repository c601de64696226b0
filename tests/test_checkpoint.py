"""Hugging Face layout in and out: round trips with transformers, both config dialects, hub cache, errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import hf_twin, random_model
from nanoo1.checkpoint import config_from_dict, load_pretrained, resolve_checkpoint, save_pretrained
from nanoo1.model import Gemma2Config

transformers = pytest.importorskip("transformers")

CONFIG = Gemma2Config.preset("tiny", hidden_size=48, head_dim=24, query_pre_attn_scalar=17, sliding_window=6)
IDS = torch.randint(0, 512, (2, 13), generator=torch.Generator().manual_seed(0))

# google/gemma-2-2b's config.json as published in 2024 (rope_theta, torch_dtype, hidden_act, no layer_types)
CONFIG_2024 = {
    "architectures": ["Gemma2ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "attn_logit_softcapping": 50.0, "bos_token_id": 2, "cache_implementation": "hybrid", "eos_token_id": 1,
    "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2304, "initializer_range": 0.02,
    "intermediate_size": 9216, "max_position_embeddings": 8192, "model_type": "gemma2", "num_attention_heads": 8,
    "num_hidden_layers": 26, "num_key_value_heads": 4, "pad_token_id": 0, "query_pre_attn_scalar": 256,
    "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
    "transformers_version": "4.42.4", "use_cache": True, "vocab_size": 256000,
}


def test_both_config_dialects_read_as_gemma_2_2b():
    new = {k: v for k, v in CONFIG_2024.items() if k not in ("rope_theta", "torch_dtype", "hidden_act", "cache_implementation")}
    new.update(dtype="bfloat16", rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
               layer_types=["sliding_attention", "full_attention"] * 13)
    assert config_from_dict(CONFIG_2024) == Gemma2Config.preset("2b")
    assert config_from_dict(new) == Gemma2Config.preset("2b")
    assert config_from_dict({**CONFIG_2024, "rope_theta": 5e5}).rope_theta == 5e5
    assert config_from_dict({**new, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta == 5e5
    # without head_dim a file means transformers' default, 256 (Gemma2Config(head_dim=256)), not hidden_size // heads
    from transformers import Gemma2Config as HFConfig

    bare = {k: v for k, v in CONFIG_2024.items() if k != "head_dim"}
    assert config_from_dict({**bare, "hidden_size": 64}).head_dim == HFConfig(hidden_size=64).head_dim == 256
    # RoPE scaling is refused in either spelling (rope_scaling is the older one), never run as plain RoPE
    for key in ("rope_scaling", "rope_parameters"):
        with pytest.raises(ValueError, match=rf"config.json: {key}.rope_type='linear', only 'default' RoPE"):
            config_from_dict({**CONFIG_2024, key: {"rope_type": "linear", "factor": 4.0}})
        assert config_from_dict({**CONFIG_2024, key: None}) == Gemma2Config.preset("2b")
    with pytest.raises(ValueError, match=r"config.json: rope_scaling.rope_type='dynamic'"):  # the older key, "type"
        config_from_dict({**CONFIG_2024, "rope_scaling": {"type": "dynamic", "factor": 2.0}})
    # files written by transformers 5 with non-default layer types are honoured
    odd = {**new, "layer_types": ["full_attention"] * 26}
    assert config_from_dict(odd).is_sliding(0) is False
    # "gelu_tanh", the same function, is read and written as the name transformers knows
    assert config_from_dict({**CONFIG_2024, "hidden_activation": "gelu_tanh"}) == Gemma2Config.preset("2b")


def test_nanoo1_save_transformers_load_same_logits(tmp_path):
    for tied in (True, False):
        model = random_model(Gemma2Config.preset("tiny", tie_word_embeddings=tied), seed=1)
        hf = hf_twin(model, tmp_path / str(tied))
        with torch.no_grad():
            assert (hf(IDS).logits - model(IDS)).abs().max().item() < 1e-5
        assert ("lm_head.weight" in model.state_dict()) == (not tied)


def test_no_softcap_round_trips_as_none(tmp_path):
    """A null soft-cap in config.json means no cap (as transformers reads it), not the 50 / 30 default."""
    model = random_model(Gemma2Config.preset("tiny", attn_logit_softcapping=None, final_logit_softcapping=None), seed=5)
    save_pretrained(model, None, tmp_path)
    loaded, _ = load_pretrained(tmp_path)
    assert (loaded.config.attn_logit_softcapping, loaded.config.final_logit_softcapping) == (None, None)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(loaded(IDS), model(IDS))
        assert (hf(IDS).logits - model(IDS)).abs().max().item() < 1e-5
    absent = {k: v for k, v in CONFIG_2024.items() if not k.endswith("softcapping")}
    assert config_from_dict(absent) == Gemma2Config.preset("2b")  # absent keys take the defaults


def test_round_trip_keeps_eps_and_special_ids_and_loads_frozen(tmp_path):
    model = random_model(Gemma2Config.preset("tiny", rms_norm_eps=1e-5), seed=1)
    save_pretrained(model, None, tmp_path)
    # Gemma2Config's default ids, as Gemma's: <pad> 0, <eos> 1, <bos> 2
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0}
    loaded, _ = load_pretrained(tmp_path)
    assert loaded.config.rms_norm_eps == 1e-5
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_tied_checkpoint_with_an_lm_head_copy_loads(tmp_path):
    """Some tied checkpoints also store lm_head.weight, a copy of the embedding; it is dropped, not an error."""
    from safetensors.torch import load_file, save_file
    model = random_model(CONFIG, seed=1)
    save_pretrained(model, None, tmp_path)
    f = tmp_path / "model.safetensors"
    state = load_file(str(f))
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    save_file(state, str(f), metadata={"format": "pt"})
    loaded, _ = load_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(IDS), model(IDS))

@pytest.mark.parametrize("shard", [None, "20KB"])
def test_transformers_save_nanoo1_load_same_logits(tmp_path, shard):
    hf_config = transformers.Gemma2Config(vocab_size=512, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                          num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                          query_pre_attn_scalar=17, sliding_window=6, attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.Gemma2ForCausalLM(hf_config).eval()
    hf.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    model, tokenizer = load_pretrained(tmp_path)
    assert tokenizer is None
    with torch.no_grad():
        assert (hf(IDS).logits - model(IDS)).abs().max().item() < 1e-5


def test_sharded_save_round_trip_and_stale_files_removed(tmp_path):
    model = random_model(CONFIG, seed=2)
    save_pretrained(model, None, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    loaded, _ = load_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    save_pretrained(model, None, tmp_path)  # now a single file: the old shards and index must go
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]
    again, _ = load_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(IDS), model(IDS))


def test_a_one_file_save_cut_short_over_a_sharded_one_still_loads(tmp_path, monkeypatch):
    """The earlier index goes before the earlier shards: a save killed while removing them leaves the new
    model.safetensors to load, never an index that names a shard already removed."""
    old, new = random_model(CONFIG, seed=2), random_model(CONFIG, seed=3)
    save_pretrained(old, None, tmp_path, max_shard_bytes=40_000)
    real, removed = Path.unlink, []

    def killed_after_one_removal(self, *args, **kwargs):
        if removed:
            raise KeyboardInterrupt("killed")
        removed.append(self.name)
        real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", killed_after_one_removal)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(new, None, tmp_path)
    monkeypatch.setattr(Path, "unlink", real)
    loaded, _ = load_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), loaded.state_dict().values()))


def test_a_sharded_save_cut_short_over_an_earlier_one_never_loads_as_a_mix(tmp_path, monkeypatch):
    import nanoo1.checkpoint as checkpoint

    old, new = random_model(CONFIG, seed=2), random_model(CONFIG, seed=3)
    save_pretrained(old, None, tmp_path, max_shard_bytes=40_000)
    real, written = checkpoint.save_file, []

    def killed_after_the_first_shard(*args, **kwargs):
        if written:
            raise KeyboardInterrupt("killed")
        written.append(real(*args, **kwargs))

    monkeypatch.setattr(checkpoint, "save_file", killed_after_the_first_shard)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(new, None, tmp_path, max_shard_bytes=40_000)  # the same shard names as the earlier save
    with pytest.raises(FileNotFoundError, match="a sharded save that did not finish"):
        load_pretrained(tmp_path)
    monkeypatch.setattr(checkpoint, "save_file", real)
    save_pretrained(new, None, tmp_path, max_shard_bytes=40_000)  # saved again whole: it loads
    loaded, _ = load_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(new.state_dict().values(), loaded.state_dict().values()))


def test_vocabulary_above_256000_and_dtype(tmp_path):
    """OpenLongCoT-Base-Gemma2-2B adds tokens from id 256000: the embedding is read from the file's shape."""
    config = Gemma2Config.preset("tiny", vocab_size=256_015, hidden_size=8, head_dim=4, intermediate_size=16,
                                 num_hidden_layers=2, query_pre_attn_scalar=4)
    model = random_model(config, seed=3, dtype=torch.bfloat16)
    save_pretrained(model, None, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded, _ = load_pretrained(tmp_path)
    assert loaded.model.embed_tokens.weight.dtype == torch.bfloat16
    assert loaded.model.embed_tokens.weight.shape == (256_015, 8)
    ids = torch.tensor([[2, 256_000, 256_014]])
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))
    as_fp32, _ = load_pretrained(tmp_path, dtype=torch.float32)
    assert as_fp32.model.embed_tokens.weight.dtype == torch.float32


def test_tokenizer_saved_and_loaded(tmp_path, tiny_tokenizer):
    model = random_model(Gemma2Config.preset("tiny"))
    save_pretrained(model, tiny_tokenizer, tmp_path)
    _, tok = load_pretrained(tmp_path)
    text = "Tom has 12 apples<end_of_thought>"
    assert tok.encode(text) == tiny_tokenizer.encode(text)
    assert tok.token_id("<end_of_thought>") == tiny_tokenizer.token_id("<end_of_thought>")
    # a checkpoint's own tokenizer_config.json (its chat template) and generation_config.json (its stop ids) go with
    # it into a fine-tune's checkpoint
    config = {**json.loads((tmp_path / "tokenizer_config.json").read_text()), "chat_template": "{{ messages }}"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [1, 107], "pad_token_id": 0}')  # as -it's
    _, tok = load_pretrained(tmp_path)
    save_pretrained(model, tok, tmp_path / "tuned")
    assert json.loads((tmp_path / "tuned" / "tokenizer_config.json").read_text()) == config
    assert json.loads((tmp_path / "tuned" / "generation_config.json").read_text())["eos_token_id"] == [1, 107]


def test_a_tokenizer_read_from_no_file_copies_no_generation_config(tmp_path, tiny_tokenizer, monkeypatch):
    """A tokenizer built in memory has no checkpoint beside it: the generation config comes from the model's
    config, not from a generation_config.json that happens to lie in the working directory."""
    assert tiny_tokenizer.source == "<memory>"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [1, 107, 999]}')
    model = random_model(Gemma2Config.preset("tiny"))
    save_pretrained(model, tiny_tokenizer, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert written == {"bos_token_id": model.config.bos_token_id, "eos_token_id": model.config.eos_token_id,
                       "pad_token_id": model.config.pad_token_id}


def test_a_tokenizer_larger_than_the_vocabulary_is_named(tmp_path, tiny_tokenizer):
    """Its last ids would index past the embedding deep inside generation; the loader names both files."""
    save_pretrained(random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer) - 1)), tiny_tokenizer, tmp_path)
    with pytest.raises(ValueError, match=rf"tokenizer.json: {len(tiny_tokenizer)} tokens, more than .*config.json's "
                                         rf"vocab_size {len(tiny_tokenizer) - 1}"):
        load_pretrained(tmp_path)


def test_atomic_write_gives_the_usual_permissions_and_closes_only_its_own_file(tmp_path):
    from nanoo1.files import atomic_write

    umask = os.umask(0o022)
    try:
        model = random_model(Gemma2Config.preset("tiny"))
        save_pretrained(model, None, tmp_path)  # readable by others, like any file open() writes
        assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}
        os.chmod(tmp_path / "config.json", 0o640)
        save_pretrained(model, None, tmp_path)  # a file written again keeps the mode it had
        assert oct((tmp_path / "config.json").stat().st_mode & 0o777) == "0o640"
    finally:
        os.umask(umask)
    opened = []

    def writer(tmp):  # the temp file's descriptor was closed just before: this open reuses its number
        opened.append(os.open(os.devnull, os.O_RDONLY))
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "x.bin", writer)
    os.fstat(opened[0])  # still open: a failed write closes its own descriptor only
    os.close(opened[0])
    assert not list(tmp_path.glob(".x.bin*"))


def _saved(tmp_path):
    model = random_model(CONFIG, seed=4)
    save_pretrained(model, None, tmp_path, max_shard_bytes=60_000)
    return tmp_path


def _safetensors(path: Path, header: dict, data: bytes) -> Path:
    """Write a safetensors file by hand: the header's length (8 bytes, little-endian), the header, the data."""
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data)
    return path


def _edit_header(path: Path, edit):
    """Rewrite a safetensors file's JSON header (and keep the data) to fake a broken file."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    edit(header)
    _safetensors(path, header, raw[8 + n:])


def test_errors_name_the_file_and_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path)
    d = _saved(tmp_path / "a")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json: invalid JSON"):
        load_pretrained(d)
    d = _saved(tmp_path / "b")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type is 'llama', expected 'gemma2'"):
        load_pretrained(d)
    d = _saved(tmp_path / "c")
    shard = sorted(set(json.loads((d / "model.safetensors.index.json").read_text())["weight_map"].values()))[1]
    (d / shard).unlink()
    with pytest.raises(FileNotFoundError, match=shard):
        load_pretrained(d)
    d = _saved(tmp_path / "d")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KeyError, match="missing tensor.*model.layers.1.mlp.up_proj.weight"):
        load_pretrained(d)
    d = _saved(tmp_path / "e")
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.layers.9.mlp.up_proj.weight"] = index["weight_map"]["model.norm.weight"]
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KeyError, match="unexpected tensor.*model.layers.9.mlp.up_proj.weight"):
        load_pretrained(d)


def test_wrong_shape_and_truncated_file(tmp_path):
    model = random_model(CONFIG, seed=5)
    save_pretrained(model, None, tmp_path)
    f = tmp_path / "model.safetensors"

    def transpose(h):
        h["model.norm.weight"]["shape"] = [1, 48]
    _edit_header(f, transpose)
    with pytest.raises(ValueError, match=r"model.safetensors: tensor 'model.norm.weight' has shape \(1, 48\), expected \(48,\)"):
        load_pretrained(tmp_path)
    save_pretrained(model, None, tmp_path)
    _edit_header(f, lambda h: h["model.norm.weight"].update(dtype="I32"))  # the same bytes, read as integers
    with pytest.raises(ValueError, match=r"tensor 'model.norm.weight' is I32, expected a floating-point weight"):
        load_pretrained(tmp_path)
    save_pretrained(model, None, tmp_path)
    f.write_bytes(f.read_bytes()[:-100])  # the last tensor's data_offsets now end past the file
    with pytest.raises(ValueError, match=r"model.safetensors.*data_offsets=.*expected \[begin, end\] with 0 <="):
        load_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no checkpoint directory at .*nowhere"):
        load_pretrained(str(tmp_path / "nowhere"))


def test_hub_id_loads_from_the_offline_cache(tmp_path):
    """The real hub path (huggingface_hub.snapshot_download) on a cache laid out as the hub writes it."""
    model = random_model(CONFIG, seed=6)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny-gemma2"
    save_pretrained(model, None, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with torch.no_grad():
        expected = model(IDS)[0, -1, :5].tolist()
    code = textwrap.dedent(f"""
        import torch
        from nanoo1.checkpoint import load_pretrained
        model, _ = load_pretrained("someorg/tiny-gemma2")
        ids = torch.tensor({IDS.tolist()})
        with torch.no_grad():
            print(model(ids)[0, -1, :5].tolist())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert max(abs(a - b) for a, b in zip(got, expected)) < 1e-6


def test_loading_peaks_below_1_3x_the_checkpoint_bytes(tmp_path):
    """Peak resident memory while loading a bf16 checkpoint, measured in a fresh process."""
    config = Gemma2Config.preset("tiny", vocab_size=32_000, hidden_size=1024, intermediate_size=2048, num_hidden_layers=6,
                                 num_attention_heads=8, num_key_value_heads=4, head_dim=128, query_pre_attn_scalar=128)
    with torch.device("meta"):
        nbytes = 2 * config.num_parameters  # bf16
    model = random_model(config, dtype=torch.bfloat16)
    save_pretrained(model, None, tmp_path)
    del model
    # VmHWM (not ru_maxrss, which Linux carries over from the parent across exec) is this process's peak
    code = textwrap.dedent(f"""
        import torch
        from nanoo1.checkpoint import load_pretrained
        from nanoo1.model import Gemma2, Gemma2Config
        def status(field):  # kB -> bytes
            line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
            return int(line.split()[1]) * 1024
        with torch.device("meta"):  # warm up the code paths: their memory is code, not weights
            Gemma2(Gemma2Config.preset("tiny"))
        before = status("VmRSS")
        model, _ = load_pretrained({str(tmp_path)!r})
        print(before, status("VmHWM"), status("VmRSS"))
    """)
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc to read the resident set size")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak, after = map(int, out.stdout.split())
    assert after - before >= 0.95 * nbytes  # the weights really are resident
    assert (peak - before) / nbytes <= 1.3, f"peak {(peak - before) / nbytes:.2f}x the checkpoint's {nbytes} bytes"


@pytest.mark.parametrize("key, value, expected", [
    ("num_attention_heads", 0, "integer >= 1"),
    ("num_key_value_heads", 0, "integer >= 1"),
    ("hidden_size", -48, "integer >= 1"),
    ("vocab_size", 0, "integer >= 1"),
    ("intermediate_size", 2.5, "integer >= 1"),
    ("num_hidden_layers", "3", "integer >= 0"),
    ("num_hidden_layers", True, "integer >= 0"),
    ("head_dim", 0, "integer >= 1"),
    ("sliding_window", -1, "integer >= 1"),
    ("max_position_embeddings", 0, "integer >= 1"),
    ("num_key_value_heads", 3, "expected a divisor of num_attention_heads=4"),
    ("query_pre_attn_scalar", 0, "integer >= 1"),
    ("query_pre_attn_scalar", 7.5, "integer >= 1"),  # transformers reads an integer alone
    ("rms_norm_eps", -1e-6, "positive number"),
    ("rope_theta", "ten thousand", "positive number"),
    ("attn_logit_softcapping", float("nan"), "positive number or null"),
    ("tie_word_embeddings", "false", "true or false"),
    ("layer_types", "full_attention", "a list of"),
    ("bos_token_id", 512, r"token id in \[0, 512\)"),
    ("eos_token_id", [1, "x"], r"token id in \[0, 512\)"),
    ("pad_token_id", -1, r"token id in \[0, 512\)"),
    ("rope_parameters", ["default"], "expected an object"),
    ("dtype", ["float32"], "expected one of"),
])
def test_nonsensical_config_values_name_the_file_and_key(tmp_path, key, value, expected):
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2), seed=7)
    save_pretrained(model, None, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[key] = value
    if key in ("num_attention_heads", "hidden_size"):
        del cfg["head_dim"]  # older files leave it out: it is hidden_size // num_attention_heads then
    if key in ("rope_theta", "dtype"):
        del cfg["rope_parameters"], cfg["torch_dtype"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"config.json: {key}\b.*{expected}"):
        load_pretrained(tmp_path)


def test_config_json_that_is_not_an_object(tmp_path):
    model = random_model(Gemma2Config.preset("tiny", num_hidden_layers=2), seed=7)
    save_pretrained(model, None, tmp_path)
    for text in ("[1, 2]", '"gemma2"', "null"):
        (tmp_path / "config.json").write_text(text)
        with pytest.raises(ValueError, match=r"config.json: expected a JSON object .*, got (list|str|None)"):
            load_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(b'{"model_type": "\xff"}')
    with pytest.raises(ValueError, match="config.json: invalid JSON"):
        load_pretrained(tmp_path)


def _point_shard_at(d: Path, name: str) -> str:
    """Rewrite the index so the tensors of the first shard are read from `name`; returns that shard's name."""
    index = json.loads((d / "model.safetensors.index.json").read_text())
    first = index["weight_map"]["model.norm.weight"]
    index["weight_map"] = {k: name if v == first else v for k, v in index["weight_map"].items()}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return first


@pytest.mark.parametrize("where", ["../outside.safetensors", "absolute", "sub/../../outside.safetensors"])
def test_index_never_reads_outside_the_checkpoint(tmp_path, where):
    d = _saved(tmp_path / "ckpt")
    (d / "sub").mkdir()
    outside = tmp_path / "outside.safetensors"
    name = str(outside) if where == "absolute" else where
    first = _point_shard_at(d, name)
    (d / first).rename(outside)  # a valid shard: only the path itself can stop the read
    with pytest.raises(ValueError, match=r"model.safetensors.index.json: weight_map\['.*'\]='.*outside.safetensors', "
                                         r"expected a file name inside the checkpoint directory"):
        load_pretrained(d)


def test_index_may_name_files_in_a_subfolder(tmp_path):
    d = _saved(tmp_path)
    (d / "sub").mkdir()
    first = _point_shard_at(d, "sub/shard.safetensors")
    (d / first).rename(d / "sub" / "shard.safetensors")
    loaded, _ = load_pretrained(d)
    assert torch.equal(loaded.model.norm.weight, random_model(CONFIG, seed=4).model.norm.weight)


@pytest.mark.parametrize("index, expected", [
    ([], "expected an object with a non-empty 'weight_map'"),
    ({"weight_map": ["model.norm.weight"]}, "expected an object with a non-empty 'weight_map'"),
    ({"weight_map": {"model.norm.weight": 3}}, r"weight_map\['model.norm.weight'\]=3, expected a file name"),
    ({"weight_map": {"model.norm.weight": ""}}, r"weight_map\['model.norm.weight'\]='', expected a file name"),
])
def test_index_of_the_wrong_shape(tmp_path, index, expected):
    d = _saved(tmp_path)
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=rf"model.safetensors.index.json: {expected}"):
        load_pretrained(d)


@pytest.mark.parametrize("edit, expected", [
    (lambda h: h["model.norm.weight"].update(data_offsets=[-8, -8 + 4 * 48]), r"data_offsets=\[-8, 184\], expected \[begin, end\]"),
    (lambda h: h["model.norm.weight"].update(data_offsets=[10**9, 10**9 + 4 * 48]), "data_offsets=.*expected"),
    (lambda h: h["model.norm.weight"].update(data_offsets=[0]), r"data_offsets=\[0\], expected"),
    (lambda h: h["model.norm.weight"].pop("shape"), "shape=None, expected a list of integers >= 0"),
    (lambda h: h["model.norm.weight"].update(shape=[-1, -48]), r"shape=\[-1, -48\], expected a list of integers >= 0"),
    (lambda h: h["model.norm.weight"].update(shape=[48, 2]), r"has 192 bytes, its shape \[48, 2\] needs 384"),
    (lambda h: h["model.norm.weight"].update(shape=[47]), r"has 192 bytes, its shape \[47\] needs 188"),
    (lambda h: h["model.norm.weight"].update(dtype=["F32"]), r"dtype=\['F32'\], expected one of"),
    (lambda h: h.update({"model.norm.weight": "F32"}), "is 'F32', expected an object with dtype, shape and data_offsets"),
])
def test_safetensors_header_entries_are_checked(tmp_path, edit, expected):
    save_pretrained(random_model(CONFIG, seed=5), None, tmp_path)
    _edit_header(tmp_path / "model.safetensors", edit)
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor 'model.norm.weight' {expected}"):
        load_pretrained(tmp_path)


def test_safetensors_header_that_is_not_an_object(tmp_path):
    save_pretrained(random_model(CONFIG, seed=5), None, tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes((2).to_bytes(8, "little") + b"[]" + f.read_bytes())
    with pytest.raises(ValueError, match="model.safetensors: safetensors header is a list, expected an object"):
        load_pretrained(tmp_path)
    f.write_bytes((10).to_bytes(8, "little") + b'{"a": "\xff"}' + f.read_bytes())  # not UTF-8
    with pytest.raises(ValueError, match="model.safetensors: invalid safetensors header"):
        load_pretrained(tmp_path)


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """huggingface_hub.snapshot_download replaced by a recorder: no network; returns a snapshot directory,
    or raises as the hub does for a repository it does not have (ids starting with 'missing')."""
    huggingface_hub = pytest.importorskip("huggingface_hub")
    calls = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision))
        if repo_id.split("/")[-1].startswith("missing"):
            raise OSError(f"Repository Not Found for url: https://huggingface.co/api/models/{repo_id}")
        (tmp_path / "snapshot").mkdir(exist_ok=True)
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ckpt").mkdir()
    (tmp_path / "weights.safetensors").write_bytes(b"")
    return calls


@pytest.mark.parametrize("name", ["runs/final", "runs/missing-run", "./final", "../final", "/nowhere/final", "~/surely-not-a-checkpoint",
                                  "runs/ckpt/final", "final", "weights.safetensors", "a b/c", "org\\name"])
def test_a_path_that_is_not_a_directory_is_an_error_not_a_download(hub, name):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint directory at .+; a hub id looks like owner/name"):
        resolve_checkpoint(name)
    assert hub == []


def test_a_directory_is_used_and_a_hub_id_goes_to_the_hub(hub, tmp_path):
    assert resolve_checkpoint("runs/ckpt") == Path("runs/ckpt")
    assert resolve_checkpoint(tmp_path / "runs") == tmp_path / "runs"
    assert resolve_checkpoint("google/gemma-2-2b", revision="main") == tmp_path / "snapshot"
    assert hub == [("google/gemma-2-2b", "main")]


def test_a_failed_download_says_there_was_no_directory_either(hub, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint directory at .*outputs/missing-final, and the hub "
                                                r"download of 'outputs/missing-final' failed \(OSError: Repository Not Found"):
        resolve_checkpoint("outputs/missing-final")
    assert hub == [("outputs/missing-final", None)]


# -- edge cases: bounds, defaults and what each step leaves behind ---------------------------------------------
def test_config_defaults_and_which_activation_key_wins():
    """A file without rope_theta gets 10000.0; hidden_activation wins over hidden_act (Gemma-1 era files say "gelu"
    in hidden_act and the real activation in hidden_activation, as transformers reads them)."""
    config = config_from_dict({k: v for k, v in {**CONFIG_2024, "hidden_act": "gelu"}.items() if k != "rope_theta"})
    assert (config.rope_theta, config.hidden_activation) == (10000.0, "gelu_pytorch_tanh")


def test_safetensors_headers_at_their_bounds(tmp_path):
    """A header length past the file's end is refused, and so is a tensor whose bytes end past the data (even with
    the right byte count); a tensor with a 0 dimension is valid (0 bytes). A file cut short after its header was
    checked is named truncated when the tensor is read, by a single byte too."""
    from nanoo1.checkpoint import read_safetensors_header, read_tensor

    f = tmp_path / "x.safetensors"
    f.write_bytes((10).to_bytes(8, "little") + b"{}")  # 10 bytes in all: a 10-byte header cannot fit
    with pytest.raises(ValueError, match="header length 10 exceeds the file size"):
        read_safetensors_header(f)
    _safetensors(f, {"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(4))
    with pytest.raises(ValueError, match=r"tensor 'x' data_offsets=\[4, 8\], expected .* <= 4"):
        read_safetensors_header(f)
    x = torch.arange(2, dtype=torch.float32)
    _safetensors(f, {"empty": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]},
                     "x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, x.numpy().tobytes())
    header, start = read_safetensors_header(f)
    f.write_bytes(f.read_bytes()[:-1])
    with open(f, "rb") as fh:
        assert read_tensor(fh, f, "empty", header["empty"], start).shape == (0, 3)
        with pytest.raises(ValueError, match=r"x.safetensors: tensor 'x' is truncated"):
            read_tensor(fh, f, "x", header["x"], start)


def test_index_naming_a_windows_drive_is_refused(tmp_path):
    """'C:/shard.safetensors' is absolute on Windows: refused everywhere, even where it names a file inside."""
    d = _saved(tmp_path)
    first = _point_shard_at(d, "C:/shard.safetensors")
    (d / "C:").mkdir()
    (d / first).rename(d / "C:" / "shard.safetensors")
    with pytest.raises(ValueError, match=r"weight_map\['.*'\]='C:/shard.safetensors', expected a file name inside"):
        load_pretrained(d)


def test_an_index_entry_missing_from_its_file_is_named(tmp_path):
    """The index puts model.norm.weight in a shard that does not hold it: a KeyError naming the file and the key."""
    d = _saved(tmp_path)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    other = next(v for v in index["weight_map"].values() if v != index["weight_map"]["model.norm.weight"])
    index["weight_map"]["model.norm.weight"] = other
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(KeyError, match=rf"{other}: tensor 'model.norm.weight' is listed in the index but not in"):
        load_pretrained(d)


def test_a_tokenizer_as_large_as_the_vocabulary_loads(tmp_path, tiny_tokenizer):
    """vocab_size = len(tokenizer): every id has its embedding row."""
    model = random_model(Gemma2Config.preset("tiny", vocab_size=len(tiny_tokenizer)))
    save_pretrained(model, tiny_tokenizer, tmp_path)
    _, tok = load_pretrained(tmp_path)
    assert len(tok) == len(tiny_tokenizer)


def test_a_config_without_a_dtype_loads_as_float32(tmp_path):
    """A bf16 checkpoint whose config.json names no dtype (neither key) loads in float32."""
    save_pretrained(random_model(CONFIG, dtype=torch.bfloat16), None, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    without = {k: v for k, v in config.items() if k not in ("dtype", "torch_dtype")}
    (tmp_path / "config.json").write_text(json.dumps(without))
    loaded, _ = load_pretrained(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}


def test_a_checkpoint_of_exactly_max_shard_bytes_is_one_file(tmp_path):
    """Shards start only above max_shard_bytes: at exactly the weights' size the save is one model.safetensors."""
    model = random_model(CONFIG)
    total = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    save_pretrained(model, None, tmp_path, max_shard_bytes=total)
    assert sorted(p.name for p in tmp_path.glob("model*")) == ["model.safetensors"]


def test_atomic_write_temp_files_umask_and_cleanup(tmp_path):
    """The temp file lies beside the target (a rename across file systems is not atomic); under umask 077 a new file
    is 0o600 and the umask is left as it was; a failed rename (the target is a directory) or a KeyboardInterrupt in
    the writer raises that error and leaves no temp file."""
    from nanoo1.files import atomic_write

    temps = []
    atomic_write(tmp_path / "a.bin", lambda tmp: temps.append(Path(tmp)) or Path(tmp).write_bytes(b"a"))
    assert temps[0].parent == tmp_path and (tmp_path / "a.bin").read_bytes() == b"a"
    umask = os.umask(0o077)
    try:
        atomic_write(tmp_path / "b.txt", "b")
        assert os.umask(0o077) == 0o077
    finally:
        os.umask(umask)
    assert oct((tmp_path / "b.txt").stat().st_mode & 0o777) == "0o600"
    (tmp_path / "dir" / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "dir", "c")

    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "d.bin", interrupted)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "dir"]


def test_a_name_starting_with_a_dot_is_a_path_even_when_its_first_part_is_absent(hub):
    """No hub id starts with '.': '.cache/final' (no .cache here) is a missing directory, not a download."""
    with pytest.raises(FileNotFoundError, match=r"no checkpoint directory at .+; a hub id looks like owner/name"):
        resolve_checkpoint(".cache/final")
    assert hub == []


def test_atomic_write_writes_all_of_its_data_when_the_system_takes_it_in_pieces(tmp_path, monkeypatch):
    """os.write may write fewer bytes than it is given (a disk filling up, over 2 GB in one call): what is left
    is written next, so the file is whole, never a truncated one renamed over the old."""
    import os

    from nanoo1 import files

    real = os.write
    monkeypatch.setattr(files.os, "write", lambda fd, data: real(fd, bytes(data[:7])))  # 7 bytes a call at most
    files.atomic_write(tmp_path / "x.json", "0123456789" * 5)
    files.atomic_write(tmp_path / "y.bin", b"\x00\x01" * 20)
    assert (tmp_path / "x.json").read_text() == "0123456789" * 5 and (tmp_path / "y.bin").read_bytes() == b"\x00\x01" * 20


def test_atomic_write_flushes_a_descriptor_open_for_writing(tmp_path, monkeypatch):
    """Windows flushes a file (`os.fsync`, its _commit) only through a descriptor open for writing, and fails with
    EBADF on a read-only one: a file a function wrote (a checkpoint, a replay buffer) is flushed through one."""
    import errno
    import fcntl

    from nanoo1 import files

    real = os.fsync

    def windows_fsync(fd):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(errno.EBADF, "Bad file descriptor")
        real(fd)

    monkeypatch.setattr(files.os, "fsync", windows_fsync)
    files.atomic_write(tmp_path / "w.bin", lambda p: Path(p).write_bytes(b"weights"))
    files.atomic_write(tmp_path / "t.txt", "text")
    assert (tmp_path / "w.bin").read_bytes() == b"weights" and (tmp_path / "t.txt").read_text() == "text"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "w.bin"]  # no temp file left
