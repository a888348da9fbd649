"""The decorator every numba kernel uses: compiled without the GIL, once, and cached on disk.

numba caches compiled code next to the source (an installed package's `__pycache__`) or in the
user's cache folder. When neither is writable (a read-only install and no home folder) and
$NUMBA_CACHE_DIR is unset, `njit(cache=True)` refuses to decorate at all. Kernels then cache in a
private folder of the temporary directory (owned by this user, closed to others: numba's cache
holds pickles), and failing that compile afresh in every process.
"""

from __future__ import annotations

import os
import stat
import tempfile

from numba import config, njit


def kernel(fn=None, **options):
    """`njit(cache=True, nogil=True, **options)`, with the fallbacks above."""

    def wrap(fn):
        try:
            return njit(cache=True, nogil=True, **options)(fn)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
        if not config.CACHE_DIR and _use_private_cache():
            return njit(cache=True, nogil=True, **options)(fn)
        return njit(nogil=True, **options)(fn)

    return wrap(fn) if fn is not None else wrap


def _use_private_cache() -> bool:
    """Point numba at <tmp>/llmcodec-numba-<uid> if that is a folder only this user can write."""
    path = os.path.join(tempfile.gettempdir(), f"llmcodec-numba-{os.getuid()}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
        return False  # someone else's folder, or a link: its cache files could run their code
    config.CACHE_DIR = path
    return True
