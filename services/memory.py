"""How a worker's C heap treats big request buffers: kept for the next request, not handed back
to the kernel and page-faulted in again.

A 3.2 MB ``.npy`` body is copied a few times on its way in (uvicorn's reads, its body buffer, the
joined body) and its answer and chunk outputs are allocated too. glibc serves allocations over its
mmap threshold (128 KiB at start, adapting upwards) with fresh ``mmap``s and returns freed heap
tops over its trim threshold to the kernel, so every request faulted all those pages in anew:
on this 2-core VM ~1 ms per MB (issue 15: 6.5 → 3.3 ms of event-loop CPU per float32
[1024,1,28,28] request, 29.0 → 25.3 ms of worker CPU against 21 ms of model). With
``heap_keep_bytes`` set, allocations up to ``min(heap_keep_bytes, MAX_MMAP_THRESHOLD)`` come from
the heap, and up to ``heap_keep_bytes`` of free heap stays in the process for the next request.
Bigger allocations still use ``mmap``, and what a worker keeps is bounded by the setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("podium.memory")

# mallopt(3) parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold over HEAP_MAX_SIZE / 2: 32 MiB on 64-bit.
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_heap(keep_bytes: int) -> bool:
    """Keep up to ``keep_bytes`` of freed heap in this process (0: glibc's defaults, nothing
    done). Returns whether glibc took the settings; elsewhere (musl, macOS) it is a no-op."""
    if not keep_bytes:
        return False
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        log.info("no mallopt in this C library (%s): heap_keep_bytes has no effect", name)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold is set first, as it also fixes the trim
    # threshold's dynamic adjustment off.
    return bool(mallopt(M_MMAP_THRESHOLD, min(keep_bytes, MAX_MMAP_THRESHOLD))
                and mallopt(M_TRIM_THRESHOLD, keep_bytes))
