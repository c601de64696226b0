"""Load and save Gemma-2 checkpoints in the Hugging Face layout.

    config.json                                     both dialects (2024 files and transformers-5 files)
    model.safetensors                               or, when sharded:
    model-00001-of-0000N.safetensors ...            + model.safetensors.index.json {"weight_map": {key: file}}
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json

Loading never holds the weights twice: the model is built on the meta device (no memory), then each
tensor is read from its file (`readinto`, no mmap), converted to the asked dtype and device if it is
not in them already, and assigned in place, one tensor at a time. A safetensors file is an 8-byte
little-endian header length N, N bytes of JSON ({key: {"dtype", "shape", "data_offsets": [begin, end]}}),
then the raw bytes.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import struct
from pathlib import Path, PureWindowsPath

import torch
from safetensors.torch import save_file

from nanoo1.files import atomic_write
from nanoo1.model import Gemma2, Gemma2Config
from nanoo1.tokenizer import Tokenizer

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model"]  # weights, configs and tokenizer files only


# -- config.json ------------------------------------------------------------------------------------
def config_from_dict(d: dict, source: str = "config.json") -> Gemma2Config:
    """Read a Gemma-2 config.json of either dialect (rope_theta or rope_parameters, hidden_act or hidden_activation).

    Values pass to Gemma2Config unconverted, so a wrong type or range is reported (by its checks) with
    `source` and the key rather than coerced.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{source}: expected a JSON object of config keys, got {type(d).__name__}")
    if d.get("model_type") != "gemma2":
        raise ValueError(f"{source}: model_type is {d.get('model_type')!r}, expected 'gemma2'")
    for key in ("rope_parameters", "rope_scaling"):  # transformers 5's spelling, and the older one of scaling alone
        rope = d.get(key) or {}
        if not isinstance(rope, dict):
            raise ValueError(f"{source}: {key}={rope!r}, expected an object such as {{\"rope_theta\": 10000.0}}")
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default":
            raise ValueError(f"{source}: {key}.rope_type={kind!r}, only 'default' RoPE is supported")
    rope = d.get("rope_parameters") or {}
    required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"]
    for key in required:
        if key not in d:
            raise KeyError(f"{source}: missing key {key!r}")
    kw = {k: d[k] for k in required}
    kw["head_dim"] = d.get("head_dim", 256)  # a file without it means transformers' default, Gemma2Config(head_dim=256)
    for key in ["query_pre_attn_scalar", "rms_norm_eps", "sliding_window", "max_position_embeddings", "layer_types",
                "bos_token_id", "eos_token_id", "pad_token_id"]:
        if d.get(key) is not None:
            kw[key] = d[key]
    for key in ["attn_logit_softcapping", "final_logit_softcapping"]:  # null means no cap, as in transformers
        if key in d:
            kw[key] = d[key]
    kw["rope_theta"] = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    kw["tie_word_embeddings"] = d.get("tie_word_embeddings", True)  # absent means tied
    kw["hidden_activation"] = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    try:
        return Gemma2Config(**kw)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from e


def config_to_dict(config: Gemma2Config, dtype: torch.dtype) -> dict:
    """A config.json that transformers (4.4x and 5.x) reads as Gemma2ForCausalLM; both rope spellings."""
    c = config
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2",
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "query_pre_attn_scalar": c.query_pre_attn_scalar, "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": c.rope_theta},
        "sliding_window": c.sliding_window, "layer_types": list(c.layer_types),
        "attn_logit_softcapping": c.attn_logit_softcapping, "final_logit_softcapping": c.final_logit_softcapping,
        "max_position_embeddings": c.max_position_embeddings, "tie_word_embeddings": c.tie_word_embeddings,
        "hidden_activation": c.hidden_activation, "hidden_act": c.hidden_activation,
        "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
        "dtype": dtype_name, "torch_dtype": dtype_name,
    }


def _read_json(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


# -- safetensors ------------------------------------------------------------------------------------
def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, byte offset where the data starts).

    Every entry is checked before any tensor is read: a known dtype, a shape of integers >= 0, and
    data_offsets [begin, end] inside the data section, spanning exactly the bytes the shape needs.
    """
    if not path.exists():
        raise FileNotFoundError(f"{path}: safetensors file not found")
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path) - 8:
            raise ValueError(f"{path}: header length {n} exceeds the file size")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: invalid safetensors header ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is a {type(header).__name__}, expected an object")
    header.pop("__metadata__", None)
    data_bytes = os.path.getsize(path) - 8 - n
    for key, info in header.items():
        where = f"{path}: tensor {key!r}"
        if not isinstance(info, dict):
            raise ValueError(f"{where} is {reprlib.repr(info)}, expected an object with dtype, shape and data_offsets")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            raise ValueError(f"{where} dtype={reprlib.repr(dtype)}, expected one of {sorted(SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"{where} shape={reprlib.repr(shape)}, expected a list of integers >= 0")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            raise ValueError(f"{where} data_offsets={reprlib.repr(offsets)}, expected [begin, end] with 0 <= begin <= end <= {data_bytes}")
        nbytes = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        if offsets[1] - offsets[0] != nbytes:
            raise ValueError(f"{where} has {offsets[1] - offsets[0]} bytes, its shape {shape} needs {nbytes}")
    return header, 8 + n


def read_tensor(f, path: Path, key: str, info: dict, data_start: int) -> torch.Tensor:
    """Read one weight, an entry checked by read_safetensors_header, from its open file into a fresh CPU tensor; an
    integer or bool tensor is refused (it would be cast to the model's float dtype without a word)."""
    t = torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]])
    if not t.is_floating_point():
        raise ValueError(f"{path}: tensor {key!r} is {info['dtype']}, expected a floating-point weight (F32, BF16, ...)")
    nbytes = t.numel() * t.element_size()
    if nbytes:
        f.seek(data_start + info["data_offsets"][0])
        if f.readinto(t.reshape(-1).view(torch.uint8).numpy()) != nbytes:
            raise ValueError(f"{path}: tensor {key!r} is truncated")
    return t


# -- load ---------------------------------------------------------------------------------------------
def resolve_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None, files=HUB_FILES) -> Path:
    """A local directory as is; otherwise a hub id (owner/name) fetched with huggingface_hub.snapshot_download.

    A name that can only be a path is an error at once, before any download: one that starts with '.'
    or '~', is absolute, is not two parts owner/name, has characters no hub id has, or whose first part
    exists here ('runs/final' when runs/ does). Only json, safetensors and tokenizer files are fetched;
    HF_HUB_OFFLINE=1 and the hub cache (HF_HOME / HF_HUB_CACHE) are honoured by huggingface_hub itself.
    """
    p = Path(path_or_repo_id).expanduser()
    if p.is_dir():
        return p
    s = str(path_or_repo_id)
    missing = f"no checkpoint directory at {p.absolute()}"
    if s.startswith((".", "~")) or not re.fullmatch(r"[\w.-]+/[\w.-]+", s) or Path(s.split("/")[0]).exists():
        raise FileNotFoundError(f"{missing}; a hub id looks like owner/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=s, revision=revision, allow_patterns=files))
    except Exception as e:  # not found, gated, offline without a cached copy...: say both places were tried
        raise FileNotFoundError(f"{missing}, and the hub download of {s!r} failed ({type(e).__name__}: {e})") from e


def weight_files(directory: Path) -> dict[str, Path]:
    """key -> file, from model.safetensors.index.json when sharded, else from model.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        raw = _read_json(index)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index}: expected an object with a non-empty 'weight_map' of tensor name -> file name")
        for key, name in weight_map.items():
            # relative and without '..', so the index cannot make us read a file outside the checkpoint
            inside = isinstance(name, str) and not PureWindowsPath(name).drive and all(
                part not in ("", "..") for part in name.replace("\\", "/").split("/"))
            if not inside:
                raise ValueError(f"{index}: weight_map[{key!r}]={name!r}, expected a file name inside the checkpoint directory")
        return {k: directory / v for k, v in weight_map.items()}
    single = directory / "model.safetensors"
    if not single.exists():
        cut = " (shards without an index: a sharded save that did not finish)" if any(directory.glob("model-*-of-*")) else ""
        raise FileNotFoundError(f"{directory}: no model.safetensors or model.safetensors.index.json{cut}")
    return {k: single for k in read_safetensors_header(single)[0]}


def read_tokenizer(path_or_repo_id) -> Tokenizer:
    """A checkpoint's tokenizer alone (of a hub id only tokenizer.json is fetched): its format's tokens are
    checked with it before a weight is read."""
    return Tokenizer.from_file(resolve_checkpoint(path_or_repo_id, files=["tokenizer.json"]))


def load_pretrained(path_or_repo_id, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                    revision: str | None = None, need_tokenizer: bool = False) -> tuple[Gemma2, Tokenizer | None]:
    """(model, tokenizer) from a checkpoint directory or hub id. dtype None: the checkpoint's own dtype.

    The tokenizer is None when the checkpoint has no tokenizer.json, or with `need_tokenizer` (a run that reads and
    writes text) a FileNotFoundError before a weight is read; one with more tokens than the model's vocabulary is a
    ValueError (its last ids would have no embedding).
    """
    directory = resolve_checkpoint(path_or_repo_id, revision)
    raw = _read_json(directory / "config.json")
    config = config_from_dict(raw, str(directory / "config.json"))
    tok_file = directory / "tokenizer.json"
    if need_tokenizer and not tok_file.exists():
        raise FileNotFoundError(f"{directory}: no tokenizer.json beside the weights (the run reads and writes text)")
    tokenizer = Tokenizer.from_file(tok_file) if tok_file.exists() else None
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ValueError(f"{tok_file}: {len(tokenizer)} tokens, more than {directory / 'config.json'}'s vocab_size "
                         f"{config.vocab_size}")
    source = "dtype argument"
    if dtype is None:
        key = "dtype" if raw.get("dtype") else "torch_dtype"
        dtype, source = raw.get(key) or "float32", f"{directory / 'config.json'}: {key}"
    if not isinstance(dtype, torch.dtype):
        if not isinstance(dtype, str) or dtype not in DTYPE_NAMES:
            raise ValueError(f"{source}={dtype!r}, expected one of {sorted(DTYPE_NAMES)}")
        dtype = DTYPE_NAMES[dtype]

    with torch.device("meta"):
        model = Gemma2(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    files = weight_files(directory)
    if config.tie_word_embeddings:
        files.pop("lm_head.weight", None)  # some tied files still carry a copy; as transformers, use the embedding
    unexpected = sorted(set(files) - set(expected))
    if unexpected:
        raise KeyError(f"{files[unexpected[0]]}: unexpected tensor(s) {unexpected[:5]} (not part of Gemma2 {config.num_hidden_layers} layers)")
    missing = sorted(set(expected) - set(files))
    if missing:
        raise KeyError(f"{directory}: missing tensor(s) {missing[:5]}")

    by_file: dict[Path, list[str]] = {}
    for key, path in files.items():
        by_file.setdefault(path, []).append(key)
    for path, keys in by_file.items():
        header, start = read_safetensors_header(path)
        with open(path, "rb") as f:
            for key in keys:
                if key not in header:
                    raise KeyError(f"{path}: tensor {key!r} is listed in the index but not in the file")
                if tuple(header[key]["shape"]) != expected[key]:
                    raise ValueError(f"{path}: tensor {key!r} has shape {tuple(header[key]['shape'])}, expected {expected[key]}")
                t = read_tensor(f, path, key, header[key], start).to(device=device, dtype=dtype)
                model.load_state_dict({key: t}, strict=False, assign=True)
                del t
    model.requires_grad_(False).eval()
    return model, tokenizer


# -- save ---------------------------------------------------------------------------------------------
def _atomic_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def save_pretrained(model: Gemma2, tokenizer: Tokenizer | None, directory, max_shard_bytes: int = 5 * 2**30) -> Path:
    """Write the Hugging Face layout; shards (model-0000K-of-0000N.safetensors + index) above max_shard_bytes.

    generation_config.json is copied from beside the file the tokenizer was read from when there is one (a
    checkpoint's stop ids go with it into a fine-tune, as its tokenizer files do), else written from the config.
    Every file is written under a temporary name and renamed, and weight files of an earlier save that
    the new one does not use are removed only after the new ones are in place, an earlier index before the
    shards it names. A sharded save removes the earlier index first and writes its own last: a save cut short
    between shards leaves no index that pairs new shards with old ones of the same names (loading then fails,
    naming the directory).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    adapters = [k for k in state if k.endswith((".lora_A", ".lora_B"))]
    if adapters:
        raise ValueError(f"save_pretrained: the model has LoRA adapters ({adapters[0]}, ...), which the Hugging Face "
                         f"layout has no place for; save them with adapters.save_trained, or fold them in first "
                         f"(lora.merge_and_unload)")
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    dtype = model.model.embed_tokens.weight.dtype
    shards, current, size = [], {}, 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key] = t
        size += nbytes
    shards.append(current)

    names = ["model.safetensors"] if len(shards) == 1 else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    index = directory / "model.safetensors.index.json"
    if len(shards) > 1:
        index.unlink(missing_ok=True)
    for name, shard in zip(names, shards):
        atomic_write(directory / name, lambda tmp: save_file(shard, tmp, metadata={"format": "pt"}))
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        _atomic_json(index, {"metadata": {"total_size": total}, "weight_map": weight_map})
    if len(shards) == 1:  # the earlier index before the earlier shards: cut short, the new file still loads
        index.unlink(missing_ok=True)
    for old in directory.glob("model*.safetensors"):
        if old.name not in names and re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", old.name):
            old.unlink()
    _atomic_json(directory / "config.json", config_to_dict(model.config, dtype))
    c = model.config
    read = tokenizer is not None and tokenizer.source != "<memory>"  # a tokenizer built in memory has no checkpoint
    kept = Path(tokenizer.source).parent / "generation_config.json" if read else None
    if kept is not None and kept.is_file():  # the checkpoint's own sampling settings, e.g. -it's two stop ids
        atomic_write(directory / "generation_config.json", kept.read_bytes())
    else:
        _atomic_json(directory / "generation_config.json",
                     {"bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id})
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory
