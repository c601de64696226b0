"""Run directories: what a training run writes, how it is checkpointed, and how it resumes.

    OUT/metrics.jsonl        one JSON line per evaluation and per iteration
    OUT/iter-NNNN/           the last k iteration checkpoints: the model (Hugging Face layout), settings.json,
                             trainer_state.pt (optimizer, random states, metrics so far) and any buffers
    OUT/latest               the name of the newest whole checkpoint (renamed into place after it is written)
    OUT/final/, summary.json the end of a finished run (and budgets.png, a GRPO run's Elastic table drawn)

Checkpoints, buffers and the summary are written atomically (`files.atomic_write`; metrics.jsonl gets a line
appended per iteration, the plots are drawn in place); trainer state and buffers are read with torch's restricted
unpickler (`weights_only=True`), so a run directory someone hands you cannot run code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from nanoo1.adapters import load_lora, save_trained
from nanoo1.checkpoint import load_pretrained
from nanoo1.config import conflicts, from_dict, to_dict
from nanoo1.dist import Place, barrier, rank_file
from nanoo1.files import atomic_write, check_directory

SETTINGS = "settings.json"  # the run's settings, in every checkpoint
TRAINER_STATE = "trainer_state.pt"  # iteration, optimizer, random states, metrics
TRAINER_KEYS = ("iteration", "optimizer", "policy_rng", "python_rng", "torch_rng", "metrics")


def latest_checkpoint(run_dir: Path) -> Path:
    """The checkpoint directory that run_dir/latest names."""
    latest = Path(run_dir) / "latest"
    if not latest.is_file():
        raise FileNotFoundError(f"{latest}: not found; {run_dir} is not a run with a finished iteration "
                                "(--out DIR --overwrite starts it again)")
    name = latest.read_bytes().decode("utf-8", "replace").strip()  # a stray byte: named below, not a UnicodeError
    if not (name.startswith("iter-") and name[5:].isdigit() and (latest.parent / name).is_dir()):
        raise ValueError(f"{latest}: names {name!r}, expected an iter-NNNN checkpoint directory beside it")
    return latest.parent / name


def local_path(name: str) -> str:
    """A file or directory that exists here as its absolute path, anything else (a hub id) as given: a run's
    settings then name the same files when it is resumed from another directory."""
    return str(Path(name).resolve()) if name and Path(name).exists() else name


def saved_settings(run_dir: Path, config_cls):
    """The settings a run was started with, from its latest checkpoint's settings.json."""
    path = latest_checkpoint(run_dir) / SETTINGS
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path}: cannot read the run's settings ({e})") from e
    return from_dict(config_cls, d, str(path))


def resume_settings(run_dir: Path, config_cls, flags: dict):
    """The saved settings of the run in run_dir, checked against settings given again (flag name -> value;
    `out` aside, since a run directory may move): any that differ are an error naming each."""
    saved = saved_settings(run_dir, config_cls)
    differ = conflicts(saved, {k: v for k, v in flags.items() if k != "out"})
    if differ:
        raise ValueError(f"{run_dir} was started with other settings: " + "; ".join(differ))
    return saved


def save_checkpoint(out: Path, it: int, config, save_model, state: dict, buffers: dict, keep: int,
                    place: Place = Place()) -> Path:
    """Write iteration `it`'s checkpoint (the model by `save_model(directory)`, settings, buffers by file name,
    trainer state), point `latest` at it, then delete all but the last `keep` iteration checkpoints.

    Under torchrun rank 0 writes the model and settings, every rank its own buffers and trainer state
    (`dist.rank_file`: replay.pt on rank 0, replay.rank1.pt on rank 1, ...; the directory must be one all
    ranks see), and rank 0 points `latest` at the checkpoint once every rank has written its part."""
    ckpt = out / f"iter-{it:04d}"
    if place.main:
        save_model(ckpt)
        atomic_write(ckpt / SETTINGS, json.dumps(to_dict(config), indent=1))
    ckpt.mkdir(parents=True, exist_ok=True)
    for name, buffer in buffers.items():
        buffer.save(ckpt / rank_file(name, place.rank))
    atomic_write(ckpt / rank_file(TRAINER_STATE, place.rank),
                 lambda p: torch.save({"iteration": it, "world": place.world, **state}, p))
    barrier()
    if place.main:
        atomic_write(out / "latest", ckpt.name)
        kept = sorted((p for p in out.glob("iter-*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:]))
        for old in kept[:-keep]:  # by number: iter-10000 comes after iter-9999
            shutil.rmtree(old)
    return ckpt


def load_model(config, checkpoint: Path | None, device):
    """(model, tokenizer) to train, on `device` in the run's dtype: a checkpoint's full weights (the warm start
    at the first iteration), or under LoRA the warm start as the frozen base with adapters on the targeted
    layers, read from the checkpoint when there is one (`adapters.load_lora`)."""
    lora = config.lora
    source = checkpoint if checkpoint and not lora.rank else config.run.warmstart
    # a checkpoint without a tokenizer is refused before the run clears anything
    model, tokenizer = load_pretrained(source, dtype=config.run.dtype, device=device, need_tokenizer=True)
    if not lora.rank:
        return model.requires_grad_(True), tokenizer
    lora.apply(model, config.run.seed)
    if checkpoint is not None:
        load_lora(model, checkpoint)
    return model, tokenizer


def save_model(model, tokenizer, directory: Path, config) -> Path:
    """The trained model: a full checkpoint (Hugging Face layout), or under LoRA the adapters alone in PEFT's
    layout with the tokenizer (`python -m nanoo1.adapters merge` folds them into the base)."""
    return save_trained(model, tokenizer, directory, config.run.warmstart)


def load_trainer_state(ckpt: Path, place: Place = Place()) -> dict:
    """A checkpoint's trainer state for this rank, read without running any code the file may carry; a run
    is resumed on as many ranks as it was started with."""
    path = ckpt / rank_file(TRAINER_STATE, place.rank)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or hostile file: torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path}: not a readable trainer state ({type(e).__name__}: {e})") from e
    missing = [k for k in TRAINER_KEYS if k not in state] if isinstance(state, dict) else list(TRAINER_KEYS)
    if missing:
        raise ValueError(f"{path}: not a trainer state: no {', '.join(missing)}")
    if not state["metrics"] or "before" not in state["metrics"][0]:
        raise ValueError(f"{path}: its metrics do not start with the evaluation before the first iteration")
    it, rows = state["iteration"], state["metrics"][1:]
    if type(it) is not int or len(rows) != it + 1 or not all(isinstance(m, dict) and "seconds" in m for m in rows):
        raise ValueError(f"{path}: iteration {it!r} with {len(rows)} iterations' metrics; expected one line, with its "
                         f"seconds, for each iteration up to {it!r}")
    if state.get("world", 1) != place.world:
        raise ValueError(f"{ckpt}: written by {state.get('world', 1)} process(es), resumed on {place.world}; resume it "
                         f"with torchrun --nproc_per_node {state.get('world', 1)} (or without torchrun for 1)")
    return state


RUN_FILES = ("metrics.jsonl", "latest", "summary.json", "budgets.png", "final", "iter-*")  # a self-play run's, in OUT


def prepare_out(out: Path, overwrite: bool, files=RUN_FILES, resumable: bool = True, clear: bool = True,
                base: str | None = None) -> None:
    """Refuse to start a run over another one, one of whose `files` (glob patterns) `out` holds (resume it, when it
    is resumable and finished an iteration, or say --overwrite); with overwrite and `clear`, delete them and make
    `out`. `clear` False only checks. A file at `out` or above it is a NotADirectoryError. `base`: a LoRA run's
    base model, which the run reads again after set-up (its adapters name it; resuming and merging load it): one
    that lies in what would be cleared is refused (a FileExistsError), where a full fine-tune reads its start once
    and may clear it."""
    check_directory(out)
    found = [p for pattern in files for p in sorted(out.glob(pattern))]
    if found and not overwrite:
        resume = f"--resume {out} continues it, " if resumable and (out / "latest").is_file() else ""  # one checkpoint
        raise FileExistsError(f"{out} holds another run ({found[0].name}); {resume}--out DIR starts elsewhere, "
                              "--overwrite replaces it")
    where = Path(base).resolve() if base is not None else None
    holding = [p for p in found if where is not None and (where == p.resolve() or p.resolve() in where.parents)]
    if holding:
        raise FileExistsError(f"the base model {base} lies in {holding[0]}, which --overwrite clears, and a LoRA run "
                              f"reads its base again (its adapters name it): copy the base out of {out} first")
    if clear:
        for p in found:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        out.mkdir(parents=True, exist_ok=True)


def append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def rewrite_jsonl(path: Path, rows: list[dict]) -> None:
    """Replace a metrics file by these rows (on resume: the lines up to the checkpoint, none twice)."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows))
