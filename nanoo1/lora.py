"""LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): apply, merge,
switch off, and copy a model that has them.

h = W0 x + (alpha / r) B A x  (eq. 3), with A (r, in) random and B (out, r) zero, so training starts from
exactly the base model. Only A and B train; for Gemma-2 2B with rank 16 on every projection that is
about 0.8% of the weights, which is what makes fine-tuning it on one GPU practical. `nanoo1.adapters`
saves and loads them in PEFT's layout.
"""

from __future__ import annotations

import copy
import math
import re
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LM_HEAD_REFUSED = "the logits read its weight directly (Gemma2.logits), so nanoo1 puts no adapter on it"


class LoRALinear(nn.Linear):
    """A frozen nn.Linear plus a trainable low-rank update, (alpha / rank) B A.

    It subclasses nn.Linear and adopts the base layer's own weight and bias, so the base keys
    (`...q_proj.weight`) stay where checkpoints expect them; the adapter adds `lora_A` and `lora_B`.
    A is Kaiming-uniform like nn.Linear's weight (as in loralib and peft; the paper says Gaussian, which
    makes no difference since B starts at 0). The adapter is kept in float32 whatever the base dtype.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        nn.Module.__init__(self)  # not nn.Linear.__init__: it would allocate a second weight
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.rank, self.alpha, self.scaling, self.dropout = rank, alpha, alpha / rank, dropout
        a = torch.empty(rank, self.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(base.weight.device))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))  # (out, r)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.enabled = True  # False: the base layer alone (`adapters_off`)
        self.train(base.training)  # an adapter added to a model in eval mode must not drop out

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def forward(self, x):
        y = F.linear(x, self.weight, self.bias)
        if self.merged or not self.enabled:
            return y
        z = self.lora_dropout(x).to(self.lora_A.dtype) @ self.lora_A.T @ self.lora_B.T  # (..., out)
        return y + (z * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def lora_modules(model: nn.Module):
    """(name, module) of every LoRALinear in `model`, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def targeted(name: str, target_modules) -> bool:
    """Whether `target_modules` selects the module `name`, by peft's rule: a string is a regex the whole
    module name must match; a list names modules by suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def apply_lora(model: nn.Module, target_modules=DEFAULT_TARGETS, rank: int = 16, alpha: float = 32.0,
               dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """Wrap every nn.Linear that `target_modules` selects with LoRALinear, in place, matching as peft does:
    a list selects a module by its name or a dotted suffix of it ("q_proj", "layers.3.mlp.up_proj"), a
    string is a regex over the whole name. An entry that selects no linear layer is a ValueError.

    Every other parameter is frozen (requires_grad False); only lora_A and lora_B train. Modules already
    wrapped keep their adapters. `seed` draws the A matrices. Returns the model.
    """
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    regex = isinstance(target_modules, str)
    for t in [target_modules] if regex else target_modules:  # a misspelt name is an error, not a layer left out
        if not any(targeted(name, t if regex else [t]) for name in linears):
            raise ValueError(f"apply_lora: no nn.Linear matches {t!r} of target_modules={target_modules!r}; "
                             f"linear layers look like {linears[:5]}")
    generator = torch.Generator().manual_seed(seed)
    chosen = [name for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear) and targeted(name, target_modules)]
    if "lm_head" in chosen:
        raise ValueError(f"apply_lora: target_modules={target_modules!r} selects lm_head; {LM_HEAD_REFUSED}")
    for name in chosen:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child,
                LoRALinear(model.get_submodule(name), rank, alpha, dropout, generator))
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith(("lora_A", "lora_B")))
    return model


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold each adapter into its weight, W <- W + (alpha / r) B A, so inference runs at base speed (in bf16
    the fold rounds). The merged weight is a new tensor: the base that `lora_copy`'s copies share stays theirs."""
    for _, m in lora_modules(model):
        if not m.merged:
            m.weight = nn.Parameter(m.weight + m.delta_weight().to(m.weight.dtype), requires_grad=False)
            m.merged = True
    return model


@contextmanager
def adapters_off(model: nn.Module):
    """Run the base model alone inside the block: GRPO's KL reference under LoRA is the same weights with the
    adapters switched off (as TRL with peft), not a second copy of the model."""
    modules = [m for _, m in lora_modules(model)]
    if any(m.merged for m in modules):
        raise ValueError("adapters_off: the adapters are merged into the weights (merge_lora); the base is gone")
    for m in modules:
        m.enabled = False
    try:
        yield model
    finally:
        for m in modules:
            m.enabled = True


def merge_and_unload(model: nn.Module) -> nn.Module:
    """merge_lora, then put a plain nn.Linear holding the merged weight back in each LoRALinear's place (as
    peft's merge_and_unload), so the state dict has the base keys only."""
    merge_lora(model)
    for name, m in lora_modules(model):
        plain = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        plain.weight, plain.bias = m.weight, m.bias
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, plain.train(m.training))
    return model


def lora_copy(model: nn.Module) -> nn.Module:
    """A copy to train apart from `model`: with adapters, only they are copied and the frozen base weights are
    shared (one base in memory for every copy); without, a whole copy (copy.deepcopy)."""
    lora = bool(lora_modules(model))
    return copy.deepcopy(model, memo={id(p): p for name, p in model.named_parameters()
                                      if lora and not name.endswith(("lora_A", "lora_B"))})


def unfreeze(model: nn.Module) -> list[nn.Parameter]:
    """Set what trains to requires_grad and return it: with adapters the adapters alone (the base stays frozen,
    and may be shared by `lora_copy`), without every parameter."""
    lora = bool(lora_modules(model))
    for name, p in model.named_parameters():
        p.requires_grad_(not lora or name.endswith(("lora_A", "lora_B")))
    return [p for p in model.parameters() if p.requires_grad]
