"""Keep big frame buffers in the heap: glibc's malloc otherwise serves every allocation above its mmap
threshold (a few MB at most after its own adjustment) with a fresh ``mmap``, so each 1080p frame array
(6 MB) and each decoded chunk costs thousands of page faults and the kernel's zeroing of the pages. On the
1080x1920 bench clip that is 60 % of a decode pass's time (sys 1.8 s against user 1.2 s for 250 frames);
with the thresholds raised the pass runs 3x faster (docs/performance.md).

Process-wide and idempotent; a no-op where the C library is not glibc. Freed buffers stay in the heap up to
``trim_bytes`` (memory is then held at the working set's peak instead of being returned and faulted in again).
One arena for all threads (``M_ARENA_MAX``): the stage threads (``lipsync.worker.stages``) would otherwise each get a
thread arena that the raised thresholds do not reach, and their frame buffers fault again (a decode in a
thread: 27,778 page faults and 7.6 ms a frame against 972 and 3.9 ms; the whole 1080p request: ~52k faults
against 59-90k). Big buffers are few, so the shared arena's lock is not contended.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
_done = False


def reuse_large_buffers(mmap_bytes: int = 256 << 20, trim_bytes: int = 512 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds and keep one arena (``mallopt``); True when applied. Call it
    before the stage threads start (arenas made earlier stay in use by their threads)."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(mallopt(M_TRIM_THRESHOLD, trim_bytes))
    mallopt(M_ARENA_MAX, 1)
    if _done:
        log.info("malloc: buffers up to %d MiB come from the heap (no page faults per frame)", mmap_bytes >> 20)
    return _done
