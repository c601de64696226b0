"""Gemma-2, written from scratch in plain PyTorch.

The forward pass follows Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size" (2024)
and matches Hugging Face transformers' `Gemma2ForCausalLM` (eager attention) to float32 rounding:

    h = embed(ids) * sqrt(hidden_size)                     (the factor cast to the activation dtype)
    for each layer:
        h = h + post_attention_norm(attn(input_norm(h)))
        h = h + post_feedforward_norm(mlp(pre_feedforward_norm(h)))
    logits = softcap(final_norm(h) @ embed.T, 30)

Attention: rotate-half RoPE, grouped-query heads, scores scaled by query_pre_attn_scalar^-0.5, then
soft-capped (tanh(s/50)*50) BEFORE the mask, softmax in float32. Even layers (0, 2, ...) see only the
last `sliding_window` keys. Module and parameter names mirror the Hugging Face checkpoint keys, so the
official safetensors load by name (`model.layers.3.self_attn.q_proj.weight`, ...).

Generation feeds new tokens against a `cache.KVCache` of every layer's keys and values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from nanoo1.cache import KVCache


@dataclass
class Gemma2Config:
    vocab_size: int = 256000  # rows of the (tied) embedding; fine-tunes add tokens above 256000
    hidden_size: int = 2304  # width of the residual stream
    intermediate_size: int = 9216  # width of the GeGLU MLP
    num_hidden_layers: int = 26  # decoder blocks
    num_attention_heads: int = 8  # query heads
    num_key_value_heads: int = 4  # key/value heads (GQA: each serves heads/kv_heads query heads)
    head_dim: int = 256  # per-head width; note heads * head_dim need not equal hidden_size
    query_pre_attn_scalar: int = 256  # scores are scaled by this ** -0.5 (not head_dim ** -0.5)
    rms_norm_eps: float = 1e-6  # epsilon inside every RMSNorm
    rope_theta: float = 10000.0  # RoPE base: inv_freq = 1 / theta^(2i / head_dim)
    sliding_window: int = 4096  # keys visible to a query in a sliding layer: i - W < j <= i
    attn_logit_softcapping: float | None = 50.0  # tanh(s / cap) * cap on attention scores
    final_logit_softcapping: float | None = 30.0  # tanh(l / cap) * cap on the output logits
    max_position_embeddings: int = 8192  # longest context the checkpoint was trained for
    tie_word_embeddings: bool = True  # logits = h @ embed.T; False: a separate lm_head.weight
    layer_types: list[str] | None = None  # "sliding_attention"/"full_attention" per layer; None: even layers slide
    hidden_activation: str = "gelu_pytorch_tanh"  # GeGLU gate activation (tanh-approximated GELU)
    bos_token_id: int = 2  # <bos>
    eos_token_id: int | list[int] = 1  # <eos> (chat models also stop on 107 <end_of_turn>)
    pad_token_id: int = 0  # <pad>

    def __post_init__(self):
        """Fill in layer_types; reject any value no Gemma-2 checkpoint can have, naming the field."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "query_pre_attn_scalar", "sliding_window", "max_position_embeddings"):
            low = 0 if name == "num_hidden_layers" else 1  # no layers (embedding and final norm only) is a model
            if type(v := getattr(self, name)) is not int or v < low:  # type, not isinstance: bool is an int
                raise ValueError(f"{name}={v!r}, expected an integer >= {low}")
        for name in ("rms_norm_eps", "rope_theta", "attn_logit_softcapping", "final_logit_softcapping"):
            v, optional = getattr(self, name), name.endswith("softcapping")
            if not (v is None and optional or type(v) in (int, float) and 0 < v < math.inf):
                raise ValueError(f"{name}={v!r}, expected a positive number" + (" or null" if optional else ""))
        if not isinstance(self.tie_word_embeddings, bool):
            raise ValueError(f"tie_word_embeddings={self.tie_word_embeddings!r}, expected true or false")
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, name)
            ids = v if name == "eos_token_id" and isinstance(v, list) else [v]
            if not ids or not all(type(i) is int and 0 <= i < self.vocab_size for i in ids):
                raise ValueError(f"{name}={v!r}, expected a token id in [0, {self.vocab_size})" + (" or a list of them" if name == "eos_token_id" else ""))
        if self.layer_types is None:
            self.layer_types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers)]
        if not isinstance(self.layer_types, (list, tuple)) or not all(isinstance(t, str) for t in self.layer_types):
            raise ValueError(f"layer_types={self.layer_types!r}, expected a list of 'sliding_attention' or 'full_attention', one per layer")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, expected num_hidden_layers={self.num_hidden_layers}")
        bad = set(self.layer_types) - {"sliding_attention", "full_attention"}
        if bad:
            raise ValueError(f"layer_types: unknown {sorted(bad)}, expected 'sliding_attention' or 'full_attention'")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_key_value_heads={self.num_key_value_heads}, expected a divisor of num_attention_heads={self.num_attention_heads}")
        if self.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(f"hidden_activation={self.hidden_activation!r}: Gemma-2 uses 'gelu_pytorch_tanh'")
        self.hidden_activation = "gelu_pytorch_tanh"  # the same function; the name transformers reads

    @property
    def num_parameters(self) -> int:
        """Parameter count computed from the shapes (no model needed)."""
        c, q, kv = self.hidden_size, self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        per_layer = c * q * 2 + c * kv * 2 + 3 * c * self.intermediate_size + 4 * c
        head = 0 if self.tie_word_embeddings else self.vocab_size * c
        return self.vocab_size * c + self.num_hidden_layers * per_layer + c + head

    @classmethod
    def preset(cls, name: str, **overrides) -> "Gemma2Config":
        """The published shapes: "2b", "9b", "27b" (google/gemma-2-*), or "tiny" for tests and CPU runs."""
        presets = {
            "2b": dict(),
            "9b": dict(hidden_size=3584, intermediate_size=14336, num_hidden_layers=42, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
            "27b": dict(hidden_size=4608, intermediate_size=36864, num_hidden_layers=46, num_attention_heads=32,
                        num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144),
            "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, sliding_window=128,
                         max_position_embeddings=1024),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}, expected one of {sorted(presets)}")
        return cls(**{**presets[name], **overrides})

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == "sliding_attention"


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * (1 + w), in float32. Gemma stores w zero-centred."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return F.rms_norm(x.float(), (x.shape[-1],), 1.0 + self.weight.float(), self.eps).type_as(x)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    """cos, sin of shape (B, T, D) for rotate-half RoPE (Su et al. 2021, RoFormer eq. 34).

    The sin half that multiplies -x2 is negated here once, so apply_rope needs no cat/neg per call.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim))
    freqs = positions[..., None].float() * inv_freq  # (B, T, D/2)
    sin = freqs.sin()
    return torch.cat((freqs, freqs), dim=-1).cos().to(dtype), torch.cat((-sin, sin), dim=-1).to(dtype)


def apply_rope(x, cos, signed_sin):
    """x: (B, H, T, D), cos and signed_sin: (B, 1, T, D). x * cos + rotate_half(x) * sin, where
    rotate_half(x) = (-x2, x1): rolling x by D/2 gives (x2, x1), and the minus sign lives in signed_sin."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


def softcap(x, cap: float | None):
    return x if cap is None else torch.tanh(x / cap) * cap


class Attention(nn.Module):
    def __init__(self, config: Gemma2Config, layer: int):
        super().__init__()
        c = config
        self.layer, self.n_head, self.n_kv, self.head_dim = layer, c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.scale = c.query_pre_attn_scalar ** -0.5
        self.cap = c.attn_logit_softcapping
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=False)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, at=None):
        """mask: (B, 1, T, S) additive, or None where every key is visible. With a cache, at = (start, S):
        the new tokens go to slots start.. (KVCache.write) and attention runs over slots 0 .. S-1."""
        B, T, _ = x.shape
        H, Hkv, D = self.n_head, self.n_kv, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # write the new keys at their slots, then attend over every slot in use
            k, v = cache.write(self.layer, k, v, *at)  # (B, Hkv, S, D)
        S = k.shape[2]
        # grouped-query attention without copying keys: query heads j*r .. j*r+r-1 share kv head j
        r = H // Hkv
        q = q.reshape(B, Hkv, r * T, D)  # (B, Hkv, r*T, D)
        att = q @ k.transpose(-1, -2)  # (B, Hkv, r*T, S)
        # scale, then soft-cap tanh(s / cap) * cap, BEFORE the mask (as in Gemma-2); scale/cap in one multiply
        att = att * self.scale if self.cap is None else torch.tanh(att * (self.scale / self.cap)) * self.cap
        if mask is not None:
            att = att.view(B, Hkv, r, T, S) + mask[:, None]  # mask: (B, 1, T, S) additive
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(q.dtype)
        y = att.view(B, Hkv, r * T, S) @ v  # (B, Hkv, r*T, D)
        y = y.view(B, H, T, D).transpose(1, 2).reshape(B, T, H * D)  # (B, T, H*D)
        return self.o_proj(y)


class MLP(nn.Module):
    """GeGLU: down(gelu_tanh(gate(x)) * up(x)) (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.gelu(self.gate_proj(x), approximate="tanh") * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, config: Gemma2Config, layer: int):
        super().__init__()
        eps = config.rms_norm_eps
        self.self_attn = Attention(config, layer)
        self.mlp = MLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = RMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = RMSNorm(config.hidden_size, eps)

    def forward(self, h, cos, sin, mask, cache=None, at=None):
        h = h + self.post_attention_layernorm(self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, at))
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class Gemma2Body(nn.Module):
    """The decoder stack; named `model` inside `Gemma2` so parameter names equal the checkpoint keys."""

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Gemma2(nn.Module):
    """Gemma-2 causal language model.

    model(input_ids)                              -> logits (B, T, V)
    model(input_ids, attention_mask=m)            -> padded batch (any side); positions count real tokens only
    model(input_ids, cache=c)                     -> incremental: appends T tokens to every row of the cache
    model(input_ids, ..., return_hidden=True)     -> (logits, final normed hidden states (B, T, C))
    """

    def __init__(self, config: Gemma2Config):
        super().__init__()
        self.config = config
        self.model = Gemma2Body(config)
        # recompute each layer in backward instead of keeping its activations (training without a cache);
        # non-reentrant, so adapters behind a frozen embedding still get gradients
        self.checkpointing = False
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    # -- pieces a caller can use alone ------------------------------------------------------------
    @property
    def output_embedding(self) -> torch.Tensor:
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states (..., C) -> soft-capped logits (..., V)."""
        logits, cap = F.linear(hidden, self.output_embedding), self.config.final_logit_softcapping
        if cap is None or logits.requires_grad:
            return softcap(logits, cap)
        # the same arithmetic in place: a (B, V) tensor per decode step is large enough that each new one is
        # a fresh mmap with page faults, which costs more than the tanh itself on a small model
        return logits.div_(cap).tanh_().mul_(cap)

    def attention_masks(self, q_slots, k_valid, dtype):
        """Additive masks (B, 1, T, S) for full and sliding layers.

        q_slots (B, T): slot index of each query; k_valid (B, S): which key slots hold real tokens.
        Key j is visible to query i iff j <= i (causal), and for sliding layers i - W < j.
        """
        S = k_valid.shape[1]
        j = torch.arange(S, device=q_slots.device)  # (S,)
        i = q_slots[:, :, None]  # (B, T, 1)
        visible = (j <= i) & k_valid[:, None, :]  # (B, T, S)
        neg = torch.finfo(dtype).min  # finite, so a query with no visible key gives no NaN
        full = torch.zeros(visible.shape, dtype=dtype, device=q_slots.device).masked_fill_(~visible, neg)
        slide = full.masked_fill(j <= i - self.config.sliding_window, neg)
        return full[:, None], slide[:, None]

    def hidden_states(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None):
        """Run the decoder; returns the final normed hidden states (B, T, C).

        Without a cache, `attention_mask` (B, T) marks real tokens (padding on either side) and positions
        default to the count of real tokens before each one. With a cache, the T new tokens of row b go to
        slots lengths[b] .. lengths[b]+T-1; `attention_mask` (B, T) may mark trailing padding in the new tokens
        (those rows advance by fewer slots, the padding's slots are overwritten later), and nothing else.
        """
        B, T = input_ids.shape
        dev = input_ids.device
        dtype = self.model.embed_tokens.weight.dtype
        at = None
        if cache is None:
            q_slots = torch.arange(T, device=dev).expand(B, T)
            k_valid = torch.ones(B, T, dtype=torch.bool, device=dev) if attention_mask is None else attention_mask.bool()
            if positions is None:
                positions = q_slots if attention_mask is None else (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        else:
            if attention_mask is not None and (attention_mask.shape != (B, T) or T > 1 and bool(
                    (attention_mask[:, 1:] > attention_mask[:, :-1]).any())):  # a left pad would fill a slot as a token
                raise ValueError(f"with a cache, attention_mask marks each row's {T} new tokens, right-padded: expected "
                                 f"shape {(B, T)} and no pad before a real token, got {tuple(attention_mask.shape)}")
            start = cache.lengths  # (B,)
            q_slots = start[:, None] + torch.arange(T, device=dev)  # (B, T)
            first, last = min(cache.sizes), max(cache.sizes)  # read on the host: no device round trip per step
            S = last + T  # slots in use once these tokens are in
            cache.reserve(S)  # raises on overflow
            k_valid = torch.ones(B, S, dtype=torch.bool, device=dev)  # causality alone hides the stale slots
            if positions is None:
                positions = q_slots
            at = (first if first == last else start, S)  # one start for all rows: a plain slice write
        if at is not None and isinstance(at[0], int) and T == 1:  # a decode step of rows of one length sees every slot
            full = None  # sliding layers need a mask only once the window no longer covers every slot
            slide = None if S <= self.config.sliding_window else self.attention_masks(q_slots, k_valid, dtype)[1]
        else:
            full, slide = self.attention_masks(q_slots, k_valid, dtype)
        cos, sin = rope_cos_sin(positions, self.config.head_dim, self.config.rope_theta, dtype)
        cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, D): broadcast over heads
        # sqrt(hidden_size) is rounded to the activation dtype first, as in the reference (48.0 in bf16 for 2b)
        h = self.model.embed_tokens(input_ids) * torch.tensor(math.sqrt(self.config.hidden_size), dtype=dtype)
        recompute = self.checkpointing and cache is None and torch.is_grad_enabled()
        for layer, block in enumerate(self.model.layers):
            mask = slide if self.config.is_sliding(layer) else full
            h = checkpoint(block, h, cos, sin, mask, use_reentrant=False) if recompute else block(h, cos, sin, mask, cache, at)
        if cache is not None:
            cache.advance(T, attention_mask)
        return self.model.norm(h)

    def forward(self, input_ids, attention_mask=None, positions=None, cache: KVCache | None = None, return_hidden=False):
        h = self.hidden_states(input_ids, attention_mask, positions, cache)
        logits = self.logits(h)
        return (logits, h) if return_hidden else logits

    def new_cache(self, batch_size: int, max_len: int) -> KVCache:
        w = self.model.embed_tokens.weight
        return KVCache(self.config, batch_size, max_len, dtype=w.dtype, device=w.device)

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None, std: float = 0.02) -> "Gemma2":
        """Random init for training from scratch: normal(0, std) matrices, zero (i.e. unit) norm weights."""
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                p.zero_()
            else:
                p.normal_(0.0, std, generator=generator)
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
