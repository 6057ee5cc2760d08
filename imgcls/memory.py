"""Keep glibc's malloc from handing tensor memory back to the kernel after every batch.

PyTorch's CPU tensors come from ``malloc``. With glibc's defaults, a forward pass's
activations of a few MiB each are mmap'ed and unmapped, or the heap is trimmed, batch
after batch, so every batch faults its memory in again: measured for mobilenet_v2 at
96 px (1 thread, batches of 16, the 2-core CPU) as 430 page faults per image and 32 %
of the wall time in the kernel (4.45 s for 2,048 images; 2.75 s with the settings below,
no page faults after the first pass). A long-running training process reuses that
memory anyway, so it keeps it: mmap only above 32 MiB (glibc's own upper bound for its
adaptive threshold), trim the heap only beyond 1 GiB of free memory at its top, grow it
64 MiB at a time. The cost is a resident size that stays at its peak.

Linux with glibc only (``mallopt``); elsewhere, or with ``IMGCLS_MALLOC_TUNING=0``, nothing
changes. Applied once per process by the commands that run a model on the CPU.
"""

from __future__ import annotations

import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, 1 << 30), (M_TOP_PAD, 64 << 20))

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings (idempotent); True when glibc accepted them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("IMGCLS_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in SETTINGS)
    return _done


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2, then v1), if one is set."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path, encoding="ascii") as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 60):
            return int(text)
    return None


def total_bytes() -> int | None:
    """Physical memory this process may use: the machine's RAM, or its cgroup's limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    limit = _cgroup_limit()
    if total is None:
        return limit
    return min(total, limit) if limit else total


def available_bytes() -> int | None:
    """Memory free for a new allocation now (MemAvailable), bounded by the total this process may use."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    total = total_bytes()
    if available is None:
        return total
    return min(available, total) if total else available


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'; for messages about memory."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
