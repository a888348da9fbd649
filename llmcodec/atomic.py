"""Atomic output: write to a temporary file beside the destination, then rename it into place."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


class AtomicFile:
    """A binary file that appears at `path` only when `commit()` succeeds.

    Until then it is a hidden temporary file in the same folder (so the rename cannot cross file
    systems); `discard()` (or leaving a `with` block by an exception) removes it and leaves `path`
    as it was.
    """

    def __init__(self, path):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "w+b")
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give what open() would

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
