"""Process-level CPU settings that decide inference and training speed (see bench/speed.py for the numbers).

- glibc's malloc hands large blocks back to the kernel after every use (mmap / trim), so each batch at 512 px page-
  faults gigabytes of fresh zeroed memory: that is the ``sys`` time of a naive loop. :func:`tune_allocator` keeps
  freed memory in the process instead (the effect PyTorch's CPU tuning guide gets from jemalloc/tcmalloc, without
  an LD_PRELOAD).
- bf16 compute is only a win where the CPU has it natively (AVX512-BF16 or AMX); :func:`native_bf16` says so.

It also holds the one device resolver and the one precision vocabulary, for training and inference alike.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # training (--mixed-precision) and inference (--precision) alike
PRECISION_ALIASES = {"no": "fp32"}  # Accelerate's name for fp32: `--mixed-precision no` keeps working


def precision_name(value: str) -> str:
    """``value`` in :data:`PRECISIONS`' spelling (an alias such as ``no`` becomes ``fp32``); the argparse type."""
    return PRECISION_ALIASES.get(value, value)


def resolve_device(name: str = "auto"):
    """The ``torch.device`` for ``name``: ``auto`` is CUDA, else Apple's MPS, else the CPU; anything else as given
    (``cuda:1``, ``cpu``, ``mps``). Training (zoo.train.make_accelerator) and inference share it."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def resolve_precision(requested: str, device, *, training: bool = False) -> str:
    """``requested`` (one of :data:`PRECISIONS` or an alias) for ``device`` (a ``torch.device`` or its type):
    ``auto`` -> bf16 where it is native (a GPU that supports it; a CPU with AVX512-BF16 or AMX); elsewhere fp16 on
    other CUDA GPUs for inference, fp32 for training and on other devices. Training in fp16 needs a GPU (Accelerate
    scales its loss); on CPU it would silently train in fp32, so it is refused with what to use instead."""
    import torch

    precision = precision_name(requested)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS} ('no' = fp32), not {requested!r}")
    kind = getattr(device, "type", device)
    if precision == "auto":
        if kind == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else ("fp32" if training else "fp16")
        return "bf16" if kind == "cpu" and native_bf16() else "fp32"
    if training and precision == "fp16" and kind == "cpu":
        raise ValueError("--mixed-precision fp16 needs a GPU (on CPU use bf16, native on AVX512-BF16/AMX CPUs, or "
                         "fp32)")
    return precision


@functools.cache
def tune_allocator() -> bool:
    """Keep freed heap memory for reuse (glibc: no mmap for large blocks, no trimming). True when applied.

    Set ``BONE_ZOO_MALLOC=default`` to leave the allocator alone (or when preloading jemalloc/tcmalloc).
    """
    if not sys.platform.startswith("linux") or os.environ.get("BONE_ZOO_MALLOC", "") == "default":
        return False
    if "jemalloc" in os.environ.get("LD_PRELOAD", "") or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), so bf16 autocast speeds it up."""
    import torch

    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    if probe is not None and probe():
        return True
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    if amx is not None and amx():
        return True
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
        return " avx512_bf16" in flags or " amx_bf16" in flags
    except OSError:
        return False


def machine_summary() -> dict[str, object]:
    """What a benchmark row needs to say about the machine it ran on."""
    import torch

    return {
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
