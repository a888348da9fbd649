"""The decorator every numba kernel uses: compiled without the GIL, once, cached on disk, and
numba imported only when the first kernel runs.

numba takes about half a second to import: `kernel` returns a stand-in (`Kernel`) and importing a
module of kernels costs nothing. The first call (or attribute lookup) on any stand-in imports
numba and turns every kernel defined so far into its dispatcher, at once: kernels call each other
through their module's globals, which then hold the dispatchers themselves (numba compiles a
caller with its callees' dispatchers, never a stand-in). Kernels defined after that are
dispatchers from the start.

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
import threading

_lock = threading.Lock()
_pending: list[Kernel] = []  # stand-ins whose dispatchers are not made yet
_loaded = False  # numba imported and every stand-in resolved


class Kernel:
    """A kernel before numba is imported: calling it (or looking up an attribute of numba's
    dispatcher, `py_func`, `_cache`, ...) makes every pending kernel's dispatcher first."""

    def __init__(self, fn, options: dict):
        self.py_func, self.options, self.dispatcher = fn, options, None
        self.__name__, self.__qualname__, self.__doc__, self.__wrapped__ = (
            fn.__name__, fn.__qualname__, fn.__doc__, fn)

    def __call__(self, *args):
        return (self.dispatcher or _load(self))(*args)

    def __getattr__(self, name: str):
        return getattr(self.dispatcher or _load(self), name)

    def __repr__(self) -> str:
        return f"<llmcodec kernel {self.__qualname__} (numba not loaded yet)>"


def kernel(fn=None, **options):
    """`njit(cache=True, nogil=True, **options)`, with the fallbacks above, made when first used."""

    def wrap(fn):
        with _lock:
            if _loaded:
                return _njit(fn, options)
            stand_in = Kernel(fn, options)
            _pending.append(stand_in)
            return stand_in

    return wrap(fn) if fn is not None else wrap


def loaded() -> bool:
    """Whether numba is imported and the kernels made (a kernel has run in this process)."""
    return _loaded


def _load(stand_in: Kernel):
    """Import numba and make the dispatcher of every pending kernel; `stand_in`'s."""
    global _loaded
    with _lock:
        while _pending:
            k = _pending.pop()
            k.dispatcher = _njit(k.py_func, k.options)
            if k.py_func.__globals__.get(k.__name__) is k:
                k.py_func.__globals__[k.__name__] = k.dispatcher
        _loaded = True
    return stand_in.dispatcher


def _njit(fn, options: dict):
    from numba import config, njit

    try:
        return njit(cache=True, nogil=True, **options)(fn)
    except RuntimeError as exc:
        if "no locator available" not in str(exc):
            raise
    if not config.CACHE_DIR and _use_private_cache(config):
        return njit(cache=True, nogil=True, **options)(fn)
    return njit(nogil=True, **options)(fn)


def _use_private_cache(config) -> bool:
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
