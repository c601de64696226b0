"""What every check shares: a case with its known answer, the comparison, and the printed verdict."""

from __future__ import annotations

import sysconfig
import traceback
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
import torch



class _Case(NamedTuple):
    what: str  # the inputs, as the student should read them
    compute: Callable[[], Any]  # runs the student's code, returns numbers (or a string for yes/no facts)
    expected: Any  # the known answer: numbers (compared within tol) or a string (compared exactly)
    tol: float = 1e-5  # absolute tolerance on numbers
    hint: str = ""  # what the case is about, shown when it fails


def _numbers(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().cpu().to(torch.float64)
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


def _show(t: torch.Tensor):
    return round(t.item(), 6) if t.dim() == 0 else torch.round(t, decimals=6).tolist()


def _mismatch(got, expected, tol: float) -> str | None:
    """None when `got` matches, else how `got` reads (for the message)."""
    if got is None:
        return "None (does your function return its result?)"
    if isinstance(expected, str):
        return None if got == expected else repr(got)
    try:
        g = _numbers(got)
    except (TypeError, ValueError):
        return f"{got!r} (expected numbers or a tensor)"
    e = _numbers(expected)
    if g.shape != e.shape:
        return f"a result of shape {tuple(g.shape)} (expected shape {tuple(e.shape)})"
    return None if torch.allclose(g, e, rtol=0.0, atol=tol) else str(_show(g))


def _run(name: str, cases: list[_Case]) -> bool:
    for case in cases:
        try:
            got = case.compute()
        except Exception as e:  # report it, never raise
            yours = [f for f in traceback.extract_tb(e.__traceback__) if _theirs(f.filename)]
            if yours:  # the last line of the student's that it went through
                print(f"✗ {name}: for {case.what}, your code raised {type(e).__name__}: {e} "
                      f"(line {yours[-1].lineno}: {yours[-1].line})")
            else:  # only the checks and libraries: calling the student's function, or reading its result
                print(f"✗ {name}: for {case.what}, the check could not call your function or read what it returned "
                      f"({type(e).__name__}: {e}); the check's docstring says how it calls it and what it expects")
            return False
        wrong = _mismatch(got, case.expected, case.tol)
        if wrong is not None:
            shown = case.expected if isinstance(case.expected, str) else _show(_numbers(case.expected))
            print(f"✗ {name}: for {case.what}, expected {shown!r}, got {wrong}" + (f"\n  hint: {case.hint}" if case.hint else ""))
            return False
    print(f"✓ {name} matches the known answers ({len(cases)} cases)")
    return True


_LIBRARIES = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _theirs(filename: str) -> bool:
    """Whether a traceback's frame is the student's code: neither these checks (their stand-in models included) nor
    Python's or an installed library's."""
    return Path(filename).parent != Path(__file__).parent and not filename.startswith(_LIBRARIES)


def _callable(fn, check: str) -> None:
    if not callable(fn):
        raise TypeError(f"{check} expects your function or class, got {type(fn).__name__} {fn!r}")


def _grid(rows: str) -> list[list[int]]:
    """'100 110' -> [[1, 0, 0], [1, 1, 0]]: a 0/1 matrix written one row per word."""
    return [[int(c) for c in row] for row in rows.split()]


def _first(out):
    """A loss function's loss: nanoo1's losses return (loss, stats); a bare tensor is accepted too."""
    return out[0] if isinstance(out, (tuple, list)) else out
