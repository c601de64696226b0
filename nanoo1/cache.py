"""The KV cache of generation: keys and values of every layer, one length per row, grown on demand.

Rows of a batch may hold prompts of different lengths, and `fork` copies rows, so a prompt prefilled
once can be continued N ways (best-of-N, MCTS expansions, GRPO groups).
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, with a length per row, grown on demand up to `max_len` slots.

    k, v: a list of L tensors (B, H_kv, capacity, D), one per layer. Row b holds its tokens in slots 0 ..
    lengths[b]-1 (left-aligned, no padding inside), so a slot index is also the token's position and rows
    can differ in length. The capacity starts small and doubles when a write needs more (`reserve`): a caller
    sizes max_len for the longest possible generation, while most rows stop far sooner, and zeroing, forking
    and compacting a cache cost about what is in use (at most twice), not what might be. Growing copies one
    layer at a time, so it briefly needs one layer's old and new tensors beside the rest, not a second cache.
    """

    def __init__(self, config, batch_size: int, max_len: int, dtype=torch.float32, device=None):
        self.max_len = max_len
        shape = (batch_size, config.num_key_value_heads, 0, config.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.v = [torch.zeros_like(x) for x in self.k]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)  # (B,)
        self.sizes = [0] * batch_size  # the same lengths on the host: a decode step reads them with no device round trip

    @property
    def batch_size(self) -> int:
        return len(self.sizes)

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2] if self.k else self.max_len  # a model without layers stores nothing

    def reserve(self, slots: int) -> None:
        """Make room for `slots` slots per row (at least doubling the capacity, at most max_len)."""
        if slots > self.max_len:
            raise ValueError(f"KV cache overflow: need {slots} slots, cache has max_len={self.max_len}")
        if slots <= self.capacity:
            return
        capacity = min(self.max_len, max(slots, 2 * self.capacity, 64))
        for layers in (self.k, self.v):
            for i, x in enumerate(layers):  # the old tensor is freed before the next layer grows
                layers[i] = self._grown(x, capacity)

    @staticmethod
    def _grown(x, capacity: int):
        new = x.new_empty(x.shape[:2] + (capacity, x.shape[3]))
        new[:, :, :x.shape[2]] = x
        # the new slots are zeros, not left uninitialised: a masked slot still enters softmax(..) @ v, and
        # 0 * NaN from uninitialised memory would be NaN
        new[:, :, x.shape[2]:].zero_()
        return new

    def fork(self, rows) -> "KVCache":
        """A new cache whose row i is a copy of row rows[i]: prefill once, continue N ways (no recompute)."""
        index = rows.tolist() if torch.is_tensor(rows) else list(rows)
        rows = torch.as_tensor(index, dtype=torch.long, device=self.lengths.device)
        new = KVCache.__new__(KVCache)
        new.max_len, new.sizes = self.max_len, [self.sizes[i] for i in index]
        # whole rows, one gather per layer: a slot past a row's length holds zeros or the key of a padding token
        # fed beside longer rows, finite either way and hidden by causality
        new.k, new.v = [x.index_select(0, rows) for x in self.k], [x.index_select(0, rows) for x in self.v]
        new.lengths = self.lengths[rows].clone()
        return new

    def write(self, layer: int, k, v, start, S: int):
        """Store new keys and values (B, Hkv, T, D) of `layer` at slots start[b] .. start[b]+T-1 of each row;
        return the layer's keys and values of slots 0 .. S-1, (B, Hkv, S, D) each. `reserve(S)` first.

        start: (B,) tensor, or an int when every row starts at the same slot (a plain slice copy then)."""
        T = k.shape[2]
        ck, cv = self.k[layer], self.v[layer]  # (B, Hkv, capacity, D)
        k, v = k.to(ck.dtype), v.to(cv.dtype)  # under autocast the projections come out in the compute dtype
        if isinstance(start, int):
            ck[:, :, start:start + T] = k
            cv[:, :, start:start + T] = v
        else:
            slots = start[:, None] + torch.arange(T, device=k.device)  # (B, T)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]  # (B, 1)
            ck[rows, :, slots] = k.transpose(1, 2)  # (B, T, Hkv, D) into (B, Hkv, capacity, D)
            cv[rows, :, slots] = v.transpose(1, 2)
        return ck[:, :, :S], cv[:, :, :S]

    def advance(self, T: int, attention_mask=None) -> None:
        """Count T new tokens in every row, or in each row the real ones of attention_mask (B, T) (a mask on the
        CPU is counted without a device round trip)."""
        counts = [T] * self.batch_size if attention_mask is None else attention_mask.long().sum(-1)
        self.lengths += T if attention_mask is None else counts.to(self.lengths.device)
        self.sizes = [n + c for n, c in zip(self.sizes, counts if attention_mask is None else counts.tolist())]

    def keep(self, rows) -> None:
        """Drop every row not in `rows` (in place), e.g. the rows that finished generating."""
        kept = self.fork(rows)
        self.k, self.v, self.lengths, self.sizes = kept.k, kept.v, kept.lengths, kept.sizes
