"""A thin wrapper over Hugging Face `tokenizers`: Gemma's tokenizer.json, or a tiny byte-fallback BPE.

Special tokens are always looked up by name (a fine-tune such as OpenLongCoT-Base-Gemma2-2B adds the
thought-format tokens from id 256000 on; a tiny tokenizer puts them elsewhere). `train_tokenizer`
trains a small BPE whose vocabulary holds every special token below, the 256 byte tokens `<0x00>` ..
`<0xFF>` (so no text is ever `<unk>`), and single digits (so arithmetic is learnable).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
from tokenizers import Tokenizer as HFTokenizer
import torch

from nanoo1.files import atomic_write

# Gemma's control tokens, at Gemma's ids 0..3 in a trained tokenizer too.
CONTROL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]
CHAT_TOKENS = ["<start_of_turn>", "<end_of_turn>"]
# The LongCoT thought-tree format (LLaMA-O1 / OpenLongCoT), see thoughts.py.
THOUGHT_TOKENS = [
    "<start_of_father_id>", "<end_of_father_id>", "<start_of_local_id>", "<end_of_local_id>",
    "<start_of_thought>", "<end_of_thought>", "<start_of_rating>", "<end_of_rating>",
    "<positive_rating>", "<negative_rating>", "<unknown_rating>",
    "<expansion>", "<problem>", "<critic>", "<refine>", "<conclusion>",
]
# Elastic Reasoning's thinking delimiters.
THINK_TOKENS = ["<think>", "</think>"]
# rStar-Math's code-augmented steps: the step delimiter and the execution observation (rstar.py).
CODE_TOKENS = ["<end_of_step>", "<output>", "</output>", "<error>", "</error>"]
SPECIAL_TOKENS = CONTROL_TOKENS + CHAT_TOKENS + THOUGHT_TOKENS + THINK_TOKENS + CODE_TOKENS
# the tokens each format's code looks up by id (LMPolicy and the rating-token value; the budgeted rollout); rStar's
# code format also runs on a tokenizer without its tokens (its steps end on a stop string)
LOOKED_UP = {"thought": ["<end_of_thought>", "<conclusion>", "<start_of_rating>", "<positive_rating>", "<negative_rating>"],
             "think": ["</think>"]}
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")  # where transformers keeps a chat template apart


class Tokenizer:
    """encode / decode / token_id over a `tokenizers.Tokenizer`."""

    def __init__(self, tk: HFTokenizer, source: str = "<memory>"):
        self.tk = tk
        self.source = source  # the file it came from, named in errors
        self.bos_id = self.token_id("<bos>")
        self.eos_id = self.token_id("<eos>")
        self.pad_id = self.token_id("<pad>")

    @classmethod
    def from_file(cls, path) -> "Tokenizer":
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: tokenizer file not found (expected a Hugging Face tokenizer.json)")
        try:
            tk = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e
        return cls(tk, source=str(path))

    def __len__(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        return len(self)

    def token_id(self, token: str) -> int:
        i = self.tk.token_to_id(token)
        if i is None:
            raise KeyError(f"{self.source}: token {token!r} is not in the vocabulary")
        return i

    def has_token(self, token: str) -> bool:
        return self.tk.token_to_id(token) is not None

    def require(self, fmt: str, use: str) -> None:
        """A ValueError naming the tokens of format `fmt` (LOOKED_UP) this vocabulary lacks, which `use` needs."""
        missing = [t for t in LOOKED_UP[fmt] if not self.has_token(t)]
        if missing:
            such = " (qq8933/OpenLongCoT-Base-Gemma2-2B)" if fmt == "thought" else ""
            raise ValueError(f"{self.source} has no {', '.join(missing)}, which {use} needs as one token each: take a "
                             f"checkpoint trained on that format{such}")

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of `text`; a leading <bos> is added once (never twice if the text already has one)."""
        ids = self.tk.encode(text, add_special_tokens=False).ids
        if add_bos and (not ids or ids[0] != self.bos_id):
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids, skip_special: bool = False) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=skip_special)

    def chat_prompt(self, message: str) -> str:
        """Gemma's chat turn, the message trimmed as the -it checkpoints' chat template trims it; encode it with
        add_bos=True (it starts with <bos> already: no double)."""
        return f"<bos><start_of_turn>user\n{message.strip()}<end_of_turn>\n<start_of_turn>model\n"

    def save(self, directory) -> None:
        """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json (atomically each). The last two
        are copied from beside the file this tokenizer was read from when they are there, else written as a minimal
        pair; so is a chat template kept in a file of its own (transformers 5: chat_template.jinja), so a
        checkpoint's chat template stays with it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        special = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"}
        config = {"tokenizer_class": "PreTrainedTokenizerFast", "add_bos_token": True, "add_eos_token": False,
                  "model_max_length": 1_000_000, **special}
        origin = Path(self.source).parent if self.source != "<memory>" else None
        atomic_write(directory / "tokenizer.json", self.tk.to_str())
        minimal = {"tokenizer_config.json": config, "special_tokens_map.json": special}
        for name in (*minimal, *CHAT_TEMPLATE_FILES):
            kept = origin / name if origin is not None else None
            if kept is not None and kept.is_file():
                atomic_write(directory / name, kept.read_bytes())
            elif name in minimal:
                atomic_write(directory / name, json.dumps(minimal[name], indent=2))


def train_tokenizer(texts, vocab_size: int, special_tokens=SPECIAL_TOKENS, split_digits: bool = True) -> Tokenizer:
    """Train a small byte-fallback BPE (Sennrich et al. 2016) on `texts`.

    Layout of the vocabulary: special tokens first (so <pad>=0, <eos>=1, <bos>=2, <unk>=3 as in Gemma),
    then the 256 byte tokens, then the learned pieces. Spaces become "▁" as in SentencePiece, words keep
    their leading "▁", and every digit is its own token when split_digits is set.
    """
    special_tokens = list(special_tokens)
    if special_tokens[:4] != CONTROL_TOKENS:
        raise ValueError(f"special_tokens must start with {CONTROL_TOKENS}, got {special_tokens[:4]}")
    duplicates = sorted({t for t in special_tokens if special_tokens.count(t) > 1})
    if duplicates:
        raise ValueError(f"special_tokens lists {duplicates} more than once")
    n_fixed = len(special_tokens) + len(BYTE_TOKENS)
    if vocab_size <= n_fixed:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for learned pieces (needs > {n_fixed})")

    def build(model):
        tk = HFTokenizer(model)
        tk.normalizer = normalizers.Replace(" ", "▁")
        splits = [pre_tokenizers.Split(Regex("▁?[^▁]*"), "isolated")]
        if split_digits:
            splits.append(pre_tokenizers.Digits(individual_digits=True))
        tk.pre_tokenizer = pre_tokenizers.Sequence(splits)
        tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
        return tk

    # 1) learn the merges (specials excluded from the statistics)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed + 64, special_tokens=special_tokens, show_progress=False)
    learner = build(models.BPE(unk_token="<unk>"))
    learner.train_from_iterator(texts, trainer)
    learned = json.loads(learner.to_str())["model"]
    # 2) lay the vocabulary out: specials, bytes, then learned pieces by their learned order
    vocab = {t: i for i, t in enumerate(special_tokens + BYTE_TOKENS)}
    pieces = [p for p, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]) if p not in vocab]
    room = vocab_size - len(vocab)
    # a space must be its own piece, as in Gemma's vocabulary: the decoder reads "▁" before it reads bytes, so a
    # space that fell back to bytes would come back as "▁" (kept even where the texts hold no space to learn it from)
    if "▁" not in pieces[:room]:
        pieces = [p for p in pieces if p != "▁"][:room - 1] + ["▁"]
    for piece in pieces[:room]:
        vocab[piece] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    merges = [(a, b) for a, b in merges if a in vocab and b in vocab and a + b in vocab]
    tk = build(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True))
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens])
    # like Gemma's tokenizer.json: other libraries (transformers) add <bos> when asked for special tokens
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    return Tokenizer(tk)


def right_pad(rows: list[list], fill, width: int | None = None, multiple: int = 1, device=None) -> torch.Tensor:
    """(B, T) tensor of lists padded on the right with `fill` to `width` (default: the longest), rounded up to
    a multiple of `multiple`: a few shapes recur, so the memory allocator reuses its blocks."""
    T = width or max((len(r) for r in rows), default=0)
    T = -(-T // multiple) * multiple
    if not rows:  # e.g. a rank with nothing to train on this step: (0, T) of fill's dtype
        return torch.empty(0, T, dtype=torch.tensor(fill).dtype, device=device)
    return torch.tensor([list(r) + [fill] * (T - len(r)) for r in rows], device=device)


def batch_ids(sequences: list[list[int]], pad_id: int, device=None, multiple: int = 1):
    """Right-padded (ids, attention mask) (B, T) for a list of token-id lists."""
    ids = right_pad(sequences, pad_id, multiple=multiple, device=device)  # (B, T)
    mask = right_pad([[1] * len(s) for s in sequences], 0, width=ids.shape[1], device=device)  # (B, T)
    return ids, mask
