"""The machine a run is on: the device it asks for, and what every entry point sets up first.

`check_device` and `resolve_device` read a --device setting, the latter into a torch device;
`hold_freed_memory` keeps freed memory in glibc's heap; `process_setup` does that, makes SIGTERM stop a run as
Ctrl-C does, in one line (`quiet_interrupts`), and sets torch's thread count. `bf16_autocast` runs matrix
multiplies in bfloat16, and says so where the CPU makes that slow.
"""

from __future__ import annotations

import ctypes
import functools
import re
import signal
import sys
import warnings

import torch


def hold_freed_memory(threshold: int = 1 << 30) -> bool:
    """Have glibc keep freed memory in the heap instead of handing it back to the OS.

    By default every allocation above 128 KiB is a fresh mmap and every free returns it, so each new
    (B, V) logits tensor or (B, H, T, S) attention tensor of a generation loop costs page faults on first
    touch, time spent in the kernel rather than on the numbers. Raising the mmap and trim
    thresholds lets the heap reuse those pages. Numbers are unchanged. Returns False where this is not
    glibc (macOS, musl), which keeps its own policy. Entry points call it once at start.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
        return bool(libc.mallopt(m_mmap_threshold, threshold)) and bool(libc.mallopt(m_trim_threshold, threshold))
    except (OSError, AttributeError):
        return False


def check_device(name: str) -> str:
    """`name` if it is a --device setting (cpu, cuda, cuda:N or auto), else a ValueError saying so."""
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda|cuda:\d+|auto", name):
        raise ValueError(f"--device is {name!r}, expected cpu, cuda, cuda:N or auto")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device of a --device setting ("auto": cuda when there is one, else cpu)."""
    if check_device(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: torch sees no CUDA device here")
    return torch.device(name)


def process_setup(threads: int | None = None) -> None:
    """What every entry point does first: `hold_freed_memory`; SIGTERM (`kill`, a job scheduler, torchrun passing
    on a stop) unwinds the process as Ctrl-C does, so its cleanups run (the sandbox's programs, temp files); and
    torch's thread count when one is given."""
    hold_freed_memory()
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    quiet_interrupts()
    if threads:
        torch.set_num_threads(threads)


INTERRUPTED = "interrupted (Ctrl-C or SIGTERM)"


def quiet_interrupts() -> None:
    """An interrupt that ends the process (Ctrl-C; SIGTERM after `process_setup`) prints INTERRUPTED alone, not
    the traceback of wherever the run was; any other uncaught exception keeps its traceback. The process still
    dies of SIGINT, as Python makes it after an uncaught KeyboardInterrupt. Installed once however often called."""
    shown = sys.excepthook
    if getattr(shown, "quiet_interrupts", False):
        return

    def hook(kind, value, traceback):
        if issubclass(kind, KeyboardInterrupt):
            print(INTERRUPTED, file=sys.stderr, flush=True)
        else:
            shown(kind, value, traceback)

    hook.quiet_interrupts = True
    sys.excepthook = hook


SLOW_BF16 = ("bfloat16 autocast on a CPU that torch has no fast bfloat16 matrix multiply for (oneDNN's needs AVX512, "
             "AVX-NE-CONVERT or Arm's BF16): a generic kernel runs them, several times slower than float32; "
             "--bf16 false trains in float32")


@functools.cache
def _bf16_kernels() -> bool:
    """Whether torch's oneDNN multiplies bfloat16 matrices on this CPU (True where torch cannot say)."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return True


def bf16_autocast(enabled: bool = True, device="cpu"):
    """Autocast matrix multiplies to bfloat16 on `device` (weights and optimizer state keep their dtype);
    `enabled=False` gives a context that changes nothing. On a CPU without oneDNN's bfloat16 kernels it warns
    (once a caller): with oneDNN turned off a training step of the tiny model took 14x as long as in float32."""
    device = torch.device(device)
    if enabled and device.type == "cpu" and not (torch.backends.mkldnn.enabled and _bf16_kernels()):
        warnings.warn(SLOW_BF16, RuntimeWarning, stacklevel=2)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
