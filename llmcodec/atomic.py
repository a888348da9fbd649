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
    as it was. An `OSError` from writing (a full disk) names `path`.
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

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            raise self._named(exc) from None

    def seek(self, offset: int) -> int:
        return self.file.seek(offset)

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
        except OSError as exc:
            self.discard()
            raise self._named(exc) from None
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # flushing what is buffered failed (a full disk): the file goes all the same
        finally:
            self.tmp.unlink(missing_ok=True)

    def _named(self, exc: OSError) -> OSError:
        """`exc` with the destination as its file name (a failed write names no file)."""
        if exc.filename is not None or exc.errno is None:
            return exc
        return type(exc)(exc.errno, exc.strerror, os.fspath(self.path))
