"""Process-level CPU settings that decide inference and training speed (see bench/speed.py for the numbers).

- glibc's malloc hands large blocks back to the kernel after every use (mmap / trim), so each batch at 512 px page-
  faults gigabytes of fresh zeroed memory: that is the ``sys`` time of a naive loop. :func:`tune_allocator` keeps
  freed memory in the process instead (the effect PyTorch's CPU tuning guide gets from jemalloc/tcmalloc, without
  an LD_PRELOAD).
- bf16 compute is only a win where the CPU has it natively (AVX512-BF16 or AMX); :func:`native_bf16` says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # inference precisions (zoo.inference.resolve_precision)


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
