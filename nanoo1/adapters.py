"""LoRA adapters on disk in PEFT's layout (peft 0.21), so peft and nanoo1 read each other's files, and
folded into a full checkpoint.

    adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "target_modules", "lora_dropout", ...}
    adapter_model.safetensors  base_model.model.<module>.lora_A.weight (r, in), ....lora_B.weight (out, r)

<module> is the layer's name in the model (`model.layers.3.self_attn.q_proj`), the same in nanoo1's
Gemma2 and transformers' Gemma2ForCausalLM. A full checkpoint with the adapters folded in:

    python -m nanoo1.adapters merge --base DIR_OR_HUB_ID --adapters DIR --out DIR [--dtype bfloat16]
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

from nanoo1.checkpoint import load_pretrained, read_safetensors_header, read_tensor, resolve_checkpoint, save_pretrained
from nanoo1.config import entry_parser, error_text
from nanoo1.device import process_setup
from nanoo1.files import atomic_write, check_directory
from nanoo1.lora import LM_HEAD_REFUSED, apply_lora, lora_modules, merge_and_unload, targeted

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> the wrapped model
# peft options that change what the adapters compute; plain LoRA leaves each null, false, empty or "none"
UNSUPPORTED = """use_rslora use_dora fan_in_fan_out bias lora_bias rank_pattern alpha_pattern modules_to_save layer_replication
use_qalora target_parameters trainable_token_indices alora_invocation_tokens arrow_config use_bdlora kasa_config
monteclora_config velora_config""".split()
PLAIN_INITS = (True, False, "gaussian", "orthogonal", "eva")  # peft's inits that leave the base weights alone
# what `merge` copies from the base as it is: the tokenizer, and the sampling settings (e.g. -it's two stop ids)
BASE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "generation_config.json")


def save_lora(model: nn.Module, directory, base_model_name_or_path: str = "") -> Path:
    """Write the adapters in PEFT's layout (adapter_config.json, adapter_model.safetensors), each atomically.

    adapter_config.json holds one rank, alpha and dropout, so every adapter must share them. target_modules
    is the modules' short names when those select exactly the wrapped modules, else their full names.
    """
    modules = lora_modules(model)
    if not modules:
        raise ValueError("save_lora: the model has no LoRA modules; call apply_lora or load_lora first")
    settings = {(m.rank, m.alpha, m.dropout): name for name, m in reversed(modules)}
    if len(settings) > 1:
        found = "; ".join(f"{name} has rank {r}, alpha {a}, dropout {d}" for (r, a, d), name in settings.items())
        raise ValueError(f"save_lora: {CONFIG_FILE} holds one rank, alpha and dropout, but {found}")
    [(rank, alpha, dropout)] = settings
    wrapped = [name for name, _ in modules]
    short = sorted({name.rpartition(".")[2] for name in wrapped})
    selected = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and targeted(name, short)]
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
              "target_modules": short if selected == wrapped else wrapped, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}}
    tensors = {f"{PEFT_PREFIX}{name}.{p}.weight": getattr(m, p).detach().to("cpu", copy=True).contiguous()
               for name, m in modules for p in ("lora_A", "lora_B")}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write(directory / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    return directory


def save_trained(model: nn.Module, tokenizer, directory, base_model_name_or_path: str = "") -> Path:
    """What a run trained: a model with adapters as the adapters alone in PEFT's layout (`save_lora`) beside the
    tokenizer (`python -m nanoo1.adapters merge` folds them into the base), any other as a full checkpoint."""
    if not lora_modules(model):
        return save_pretrained(model, tokenizer, directory)
    directory = save_lora(model, directory, base_model_name_or_path)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def _read_adapter_config(path: Path) -> tuple[int, float, float]:
    """(r, lora_alpha, lora_dropout) from a peft adapter_config.json, refusing options nanoo1 does not compute."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: file not found (expected a directory written by save_lora or peft)")
    try:
        c = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(c, dict) or c.get("peft_type") != "LORA":
        raise ValueError(f"{path}: peft_type={c.get('peft_type') if isinstance(c, dict) else c!r}, expected 'LORA'")
    r, alpha, dropout = c.get("r"), c.get("lora_alpha"), c.get("lora_dropout", 0.0)
    if type(r) is not int or r < 1:
        raise ValueError(f"{path}: r={r!r}, expected an integer >= 1")
    if type(alpha) not in (int, float) or not 0 < alpha < math.inf:
        raise ValueError(f"{path}: lora_alpha={alpha!r}, expected a positive number")
    if type(dropout) not in (int, float) or not 0 <= dropout <= 1:  # peft's bounds: dropout acts in training only
        raise ValueError(f"{path}: lora_dropout={dropout!r}, expected a number in [0, 1]")
    for key in UNSUPPORTED:
        if c.get(key) not in (None, False, {}, [], "none"):
            raise ValueError(f"{path}: {key}={c[key]!r} is not supported; nanoo1 reads plain LoRA "
                             f"(scaling lora_alpha / r, no bias, adapters on linear layers only)")
    if c.get("init_lora_weights", True) not in PLAIN_INITS:
        raise ValueError(f"{path}: init_lora_weights={c['init_lora_weights']!r} changes or needs changed base "
                         f"weights; convert the adapters to plain LoRA with peft first")
    return r, alpha, dropout


@torch.no_grad()
def load_lora(model: nn.Module, directory) -> nn.Module:
    """Load adapters in PEFT's layout (save_lora's or peft's save_pretrained) into `model`, in place.

    A model without adapters gets them (apply_lora with the saved r, alpha and dropout) on exactly the
    modules the file holds; a model that has them must have them on the same modules with the same rank and
    alpha. Raises naming the file and the key on anything else: an unknown key, a missing one, a module the
    model lacks, a shape mismatch, an unsupported option. Refuses a merged model, whose weights would keep
    the old adapter folded in.
    """
    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    rank, alpha, dropout = _read_adapter_config(config_path)
    header, start = read_safetensors_header(weights_path)
    modules, named = dict(model.named_modules()), set()
    for key in header:
        found = re.fullmatch(re.escape(PEFT_PREFIX) + r"(.+)\.lora_[AB]\.weight", key)
        if not found:
            raise KeyError(f"{weights_path}: unexpected key {key!r}; nanoo1 reads plain LoRA keys only, "
                           f"{PEFT_PREFIX}<module>.lora_A.weight and .lora_B.weight")
        name = found.group(1)
        if name not in modules:
            raise KeyError(f"{weights_path}: key {key!r}: the model has no such module")
        if name == "lm_head" or not isinstance(modules[name], nn.Linear):
            why = LM_HEAD_REFUSED if name == "lm_head" else "not a linear layer"
            raise KeyError(f"{weights_path}: key {key!r}: {name}: {why}")
        named.add(name)
    if not named:
        raise KeyError(f"{weights_path}: no LoRA tensors in the file")
    wrapped = dict(lora_modules(model))
    for name, m in wrapped.items():
        if m.merged:
            raise RuntimeError(f"load_lora: {name} is merged (merge_lora); load {directory} onto an unmerged model")
        if m.rank != rank:
            raise ValueError(f"{config_path}: r={rank}, but the model's {name} has rank {m.rank}")
        if float(m.alpha) != float(alpha):
            raise ValueError(f"{config_path}: lora_alpha={alpha}, but the model's {name} has alpha {m.alpha}")
    targets = sorted(wrapped or named)  # every check below comes before the model changes
    shapes = {f"{PEFT_PREFIX}{n}.lora_{p}.weight": shape for n in targets for p, shape in
              (("A", (rank, modules[n].in_features)), ("B", (modules[n].out_features, rank)))}
    missing, unexpected = sorted(shapes.keys() - header.keys()), sorted(header.keys() - shapes.keys())
    if missing:
        raise KeyError(f"{weights_path}: missing keys {missing[:3]}{' ...' if len(missing) > 3 else ''} "
                       f"({len(missing)} in all) for the model's LoRA modules")
    if unexpected:
        raise KeyError(f"{weights_path}: key {unexpected[0]!r}: the model has no LoRA on that module "
                       f"(it was wrapped with other target_modules)")
    for key, shape in shapes.items():
        if tuple(header[key]["shape"]) != shape:
            raise ValueError(f"{weights_path}: {key!r} has shape {tuple(header[key]['shape'])}, the model expects "
                             f"{shape} (r={rank})")
    if not wrapped:
        apply_lora(model, targets, rank=rank, alpha=alpha, dropout=dropout)
    with open(weights_path, "rb") as f:
        for key in shapes:
            module, _, param = key.removeprefix(PEFT_PREFIX).removesuffix(".weight").rpartition(".")
            getattr(model.get_submodule(module), param).copy_(read_tensor(f, weights_path, key, header[key], start))
    return model


def merge_into_checkpoint(base, adapters, out, dtype: torch.dtype | str | None = None,
                          revision: str | None = None) -> Path:
    """Load the base checkpoint (a directory or hub id; dtype None: its own), load the adapters, fold them in
    (merge_and_unload) and write a full checkpoint in the Hugging Face layout with save_pretrained, with the
    base's tokenizer files and generation_config.json copied byte for byte, and any other weights saved beside
    the adapters (a head trained with them: evolve's ppm-k/ppm_head.safetensors) likewise, so that a merged
    scorer has the layout of one trained in full. `out` must not be the base or the adapters directory."""
    base_dir, out = resolve_checkpoint(base, revision), Path(out)
    if out.resolve() in (base_dir.resolve(), Path(adapters).resolve()):
        raise ValueError(f"merge: --out {out} is the base or the adapters directory; write the merged model elsewhere")
    _read_adapter_config(Path(adapters) / CONFIG_FILE)  # a wrong option fails before the base is loaded
    check_directory(out)
    model, _ = load_pretrained(base_dir, dtype=dtype)
    merge_and_unload(load_lora(model, adapters))
    save_pretrained(model, None, out)
    for name in BASE_FILES:
        if (base_dir / name).exists():
            atomic_write(out / name, (base_dir / name).read_bytes())
    for extra in sorted(Path(adapters).glob("*.safetensors")):  # not the adapters, nor a model's weights left there
        if extra.name != WEIGHTS_FILE and not re.fullmatch(r"model(-\d+-of-\d+)?\.safetensors", extra.name):
            atomic_write(out / extra.name, extra.read_bytes())
    return out


def main(argv=None):
    p, _ = entry_parser("nanoo1.adapters", __doc__)
    commands = p.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="fold adapters into a full checkpoint in the Hugging Face layout")
    merge.add_argument("--base", required=True, help="the base checkpoint: a directory or a hub id")
    merge.add_argument("--adapters", required=True, help="a directory with adapter_config.json and adapter_model.safetensors")
    merge.add_argument("--out", required=True, help="the directory to write the merged checkpoint to")
    merge.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                       help="dtype of the merged weights (default: the base checkpoint's)")
    merge.add_argument("--revision", default=None, help="hub revision of the base (branch, tag or commit)")
    args = p.parse_args(argv)
    process_setup()
    try:
        out = merge_into_checkpoint(args.base, args.adapters, args.out, args.dtype, args.revision)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError) as e:  # each names the file, key or value
        p.error(error_text(e))
    print(f"merged {args.adapters} into {args.base}: {out}")


if __name__ == "__main__":
    main()
