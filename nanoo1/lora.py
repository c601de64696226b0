"""Minimal LoRA (Hu et al. 2021): low-rank adapters on frozen linear layers, merge, save and load.

h = W0 x + (alpha / r) B A x  (eq. 3), with A (r, in) random and B (out, r) zero, so training starts from
exactly the base model. Only A and B train; for Gemma-2 2B with rank 16 on every projection that is
about 0.8% of the weights, which is what makes fine-tuning it on one GPU practical.
"""

from __future__ import annotations

import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from nanoo1.files import atomic_write

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update, (alpha / rank) B A.

    It subclasses nn.Linear and adopts the base layer's own weight and bias, so the base keys
    (`...q_proj.weight`) stay where checkpoints expect them; the adapter adds `lora_A` and `lora_B`.
    A is Kaiming-uniform like nn.Linear's weight (as in loralib; the paper says Gaussian, which makes no
    difference since B starts at 0). The adapter is kept in float32 whatever the base dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a second weight
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        a = torch.empty(rank, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged:
            return y
        z = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T  # (..., out)
        return y + (z * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _lora_modules(model: nn.Module):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def apply_lora(model: nn.Module, target_modules=DEFAULT_TARGETS, rank: int = 16, alpha: float = 32.0,
               dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """Wrap every nn.Linear whose attribute name is in `target_modules` with LoRALinear, in place.

    Every other parameter is frozen (requires_grad False); only lora_A and lora_B train.
    `seed` draws the A matrices. Returns the model.
    """
    generator = torch.Generator().manual_seed(seed)
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in target_modules and isinstance(child, nn.Linear) and not isinstance(child, LoRALinear):
                setattr(parent, child_name, LoRALinear(child, rank, alpha, dropout, generator))
                replaced.append(f"{parent_name}.{child_name}".lstrip("."))
    if not replaced and not _lora_modules(model):
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][:5]
        raise ValueError(f"apply_lora: no nn.Linear named one of {tuple(target_modules)}; "
                         f"linear layers look like {linears}")
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("lora_A", "lora_B")))
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its weight, W <- W + (alpha / r) B A, so inference runs at base speed.

    In bf16 the fold rounds, so merge then unmerge restores W only to bf16 precision.
    """
    for _, m in _lora_modules(model):
        if not m.merged:
            m.weight += m.delta_weight().to(m.weight.dtype)
            m.merged = True
    return model


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo merge_lora: W <- W - (alpha / r) B A."""
    for _, m in _lora_modules(model):
        if m.merged:
            m.weight -= m.delta_weight().to(m.weight.dtype)
            m.merged = False
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors only: {'<module>.lora_A': (r, in), '<module>.lora_B': (out, r)}."""
    return {f"{name}.{p}": getattr(m, p) for name, m in _lora_modules(model) for p in ("lora_A", "lora_B")}


def save_lora(model: nn.Module, path: str) -> None:
    """Write the adapters to a safetensors file atomically (temp file in the same folder, then rename).

    The metadata records each module's rank and alpha, which load_lora checks.
    """
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in lora_state_dict(model).items()}
    meta = {"format": "pt", "lora": json.dumps({n: [m.rank, m.alpha] for n, m in _lora_modules(model)})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


@torch.no_grad()
def load_lora(model: nn.Module, path: str) -> nn.Module:
    """Load adapters written by save_lora into a model already wrapped by apply_lora (same targets, rank).

    Raises naming the key and the file on a missing or unexpected key, a shape mismatch, or a different
    alpha; refuses a merged model, whose weights would keep the old adapter folded in.
    """
    with safe_open(path, framework="pt") as f:
        saved_ranks = json.loads((f.metadata() or {}).get("lora", "{}"))  # {module: [rank, alpha]}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    expected = lora_state_dict(model)
    missing, unexpected = sorted(expected.keys() - tensors.keys()), sorted(tensors.keys() - expected.keys())
    if missing:
        raise KeyError(f"{path}: missing LoRA keys {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                       f"({len(missing)} in all); was the model wrapped with the same target_modules?")
    if unexpected:
        raise KeyError(f"{path}: unexpected LoRA keys {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                       f"({len(unexpected)} in all); the model has no such LoRA modules")
    for key, param in expected.items():
        if tensors[key].shape != param.shape:
            raise ValueError(f"{path}: {key} has shape {tuple(tensors[key].shape)}, the model expects "
                             f"{tuple(param.shape)} (a different rank?)")
    for name, m in _lora_modules(model):
        if m.merged:
            raise RuntimeError(f"load_lora: {name} is merged; call unmerge_lora before loading {path}")
        if name in saved_ranks and float(saved_ranks[name][1]) != float(m.alpha):
            raise ValueError(f"{path}: {name} was saved with alpha {saved_ranks[name][1]}, the model has "
                             f"alpha {m.alpha}")
    for key, param in expected.items():
        param.copy_(tensors[key])
    return model


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(parameters that require grad, all parameters), shared tensors counted once."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
