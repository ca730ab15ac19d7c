"""services.memory: with ``heap_keep_bytes``, a worker's big per-request buffers are reused from the
heap instead of being page-faulted in anew for every request (issue 15, ``.npy`` batches)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from services.config import ServeConfig

# Allocates and frees what one float32 [1024,1,28,28] .npy request does on its way in (3.2 MB,
# copied twice), 40 times, and prints the minor page faults that took.
FAULTS = """
import resource, sys
from services import memory
took = memory.keep_heap(int(sys.argv[1]))
body = bytes(3211392)
def one():
    return bytes(bytearray(body))
one()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    one()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

glibc = pytest.mark.skipif(sys.platform != "linux" or "libc.so.6" not in str(ctypes.util.find_library("c")),
                           reason="mallopt is glibc's")


def faults(keep_bytes: int) -> tuple[bool, int]:
    """Whether ``keep_heap(keep_bytes)`` took, and the faults, in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", FAULTS, str(keep_bytes)], capture_output=True,
                          text=True, check=True, timeout=60)
    took, count = done.stdout.split()
    return took == "True", int(count)


@glibc
def test_kept_heap_stops_the_page_faults_of_big_buffers() -> None:
    (took_default, default), (took, kept) = faults(0), faults(ServeConfig().heap_keep_bytes)
    assert not took_default and took  # 0 leaves glibc's defaults
    # 40 requests × 2 fresh 3.2 MB buffers ≈ 62,000 faults of 4 KiB pages with glibc's defaults.
    assert default > 10_000, default
    assert kept < default / 20, (kept, default)


def test_setting_is_bounded() -> None:
    assert ServeConfig().heap_keep_bytes == 64 * 1024 * 1024
    with pytest.raises(ValueError):
        ServeConfig(heap_keep_bytes=-1)
    with pytest.raises(ValueError):
        ServeConfig(heap_keep_bytes=2**31)
