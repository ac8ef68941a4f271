"""Keeping freed memory in the process on the CPU, where a U-Net training step spends up to half its time mapping
fresh pages.

glibc's ``malloc`` serves every block above 32 MB (a feature map of a 3D patch batch is 50-500 MB) with its own
``mmap`` and gives it back with ``munmap`` when PyTorch frees the tensor, so every such tensor of every step starts
with the kernel faulting in and zeroing each of its 4 kB pages again. With ``M_MMAP_MAX = 0`` and no trimming,
freed blocks stay in malloc's heap and later steps reuse them (after a few steps, once freed blocks sit where the
next aligned requests fit). Measured on 2 cores (``bench/bench_network.py``), a training step of nnU-Net's default
network took 1.4x (liver phantom) to 1.6x (Hippocampus) less time this way, RAS U-Net's 1.3x to 2.3x less; in
exchange the process keeps its peak memory until it ends, and fragmentation raises that peak (by 1.05-1.35x).

This is what PyTorch's caching allocator does on a GPU; glibc's tunables (``GLIBC_TUNABLES=glibc.malloc.mmap_max=0``)
do the same for a whole process from its start. Here it is switched on at run time, by the trainers that build
their network from the plan when they train on the CPU; it would change nothing on a GPU, where feature maps do not
live in malloc's heap.
"""
import ctypes
import ctypes.util
import os
from typing import Optional

ENVIRONMENT_VARIABLE = 'nnUNet_ras_keep_cpu_memory'  # '0' leaves glibc's defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's malloc.h
_kept: Optional[bool] = None


def keep_freed_memory() -> bool:
    """Tells glibc's ``malloc`` to keep freed memory for reuse (no ``mmap`` per large block, no trimming), once per
    process. Returns whether it is in effect: False where ``nnUNet_ras_keep_cpu_memory=0`` or the C library is not
    glibc (musl, macOS), which keep their own behaviour."""
    global _kept
    if _kept is None:
        _kept = False
        if os.environ.get(ENVIRONMENT_VARIABLE, '1') != '0':
            libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
            if hasattr(libc, 'gnu_get_libc_version') and hasattr(libc, 'mallopt'):
                # -1 is SIZE_MAX to glibc's size_t threshold: never give the heap's top back to the system
                _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
    return _kept
