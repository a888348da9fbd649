"""Kernels work where numba finds no place for its cache (a read-only install, no home folder)."""

from __future__ import annotations

import os
import subprocess
import sys

import numba
import pytest

# numba then knows only the locator that needs $NUMBA_CACHE_DIR, which is unset: no cache location.
NO_LOCATOR = {"NUMBA_CACHE_LOCATOR_CLASSES": "UserProvidedCacheLocator"}
PROBE = ("import numpy as np\n"
         "from llmcodec import kernels\n"
         "assert int(kernels.xxh64(np.frombuffer(b'abc', np.uint8))) == 0x44BC2CF5AD770999\n")


pytestmark = pytest.mark.skipif(not hasattr(numba.config, "CACHE_LOCATOR_CLASSES"),
                                reason="this numba cannot be told to find no cache location")


def _run(tmp_path, **extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env.update(NO_LOCATOR, TMPDIR=str(tmp_path), **extra)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300)


def test_kernels_cache_in_a_private_temporary_folder(tmp_path):
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    private = tmp_path / f"llmcodec-numba-{os.getuid()}"
    assert oct(private.stat().st_mode & 0o777) == oct(0o700)
    assert any(p.suffix == ".nbi" for p in private.rglob("*")), "no numba index file was written"


def test_a_folder_others_can_write_is_not_used(tmp_path):
    private = tmp_path / f"llmcodec-numba-{os.getuid()}"
    private.mkdir()
    private.chmod(0o777)  # planted cache files could run code when loaded: compile instead
    done = _run(tmp_path)
    assert done.returncode == 0, done.stderr
    assert list(private.iterdir()) == []
