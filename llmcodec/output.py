"""Where results go: every file llmcodec writes goes through `open_output`, which looks at the
destination first.

- A regular file, or nothing yet: a hidden temporary file beside it (same file system), fsync,
  then rename: the destination holds the old file or the complete new one, never a part. A
  symbolic link to a regular file is followed, as `cp` does: its target is replaced, the link stays.
- Anything else that exists (a character or block device, a FIFO, a socket) and `-` (standard
  output): written straight into, never renamed over or removed. Such a destination receives
  bytes as they are produced and cannot take them back: on a failure it keeps what it got.
- A writer that must seek (the container writer patches its preamble last) on a destination that
  cannot: the bytes are spooled to an anonymous temporary file (in $TMPDIR), then copied to the
  destination once complete. (The alternative, refusing, would rule out `encode -o -` and FIFOs.)

Every error names the path the caller gave, never a temporary name. Outputs get the permission
bits they are given (`mode`: `encode`/`decode` pass their input's), else what `open()` would give.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from .errors import InvalidArgumentError

STDOUT = "-"

# Set by the command line's SIGINT / SIGTERM handlers to the exception they raise. Such an exception
# can be lost on its way out: numba swallows a KeyboardInterrupt raised while it compiles a kernel
# (the call then returns normally). So the request is also kept here, and no output is committed
# after one (`check_interrupted`): an interrupted command never leaves a complete-looking output.
interrupted: type[BaseException] | None = None


def check_interrupted() -> None:
    """Raise the interrupt the command line received, if any (see `interrupted`)."""
    if interrupted is not None:
        raise interrupted()


def check_interrupted_progress(nbytes: int) -> None:
    """A progress callback that shows nothing and stops the work after an interrupt (see `interrupted`)."""
    check_interrupted()
COPY_PIECE = 16 << 20  # bytes per copy from a spool file


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()


def default_mode() -> int:
    """The permission bits `open()` gives a new file: 0666 less the umask."""
    return 0o666 & ~UMASK


def is_stream(path) -> bool:
    """Whether `path` is `-` or an existing destination that is not a regular file or folder (a
    device, FIFO or socket, possibly behind symbolic links): written into, never replaced."""
    if os.fspath(path) == STDOUT:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def open_output(path, *, seekable: bool = False, mode: int | None = None):
    """A binary output for `path` (see the module docstring), with `write`, `commit` and
    `discard`, and `seek` when `seekable`. Use it as a context manager: leaving by an exception
    discards. `mode` (permission bits) applies to a regular file that this call creates."""
    if is_stream(path):
        stream = StreamOutput(path)
        return SpooledOutput(stream) if seekable and not stream.seekable() else stream
    return AtomicFile(path, mode)


class _Output:
    path: Path | str
    file: object  # the binary file written to

    def seek(self, offset: int) -> int:
        return self.file.seek(offset)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()

    def named(self, exc: OSError) -> OSError:
        """`exc` naming the caller's destination (a failed write names no file, or a temporary one)."""
        if exc.errno is None:
            return exc
        return type(exc)(exc.errno, exc.strerror, os.fspath(self.path))


class AtomicFile(_Output):
    """A regular file that appears at `path` only when `commit()` succeeds (see the module
    docstring); `discard()` removes the temporary file and leaves `path` as it was."""

    def __init__(self, path, mode: int | None = None):
        self.path = Path(path)
        target = Path(os.path.realpath(self.path)) if self.path.is_symlink() else self.path
        if target.is_dir():
            raise IsADirectoryError(21, "Is a directory", os.fspath(self.path))
        self._target = target
        self.tmp = target.parent / _temporary_name(target)
        try:
            fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise self.named(exc) from None
        try:  # from here on the temporary file exists: any failure (SIGTERM too) removes it
            os.chmod(fd, default_mode() if mode is None else mode & 0o7777)
            self.file = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            self.tmp.unlink(missing_ok=True)
            raise

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            raise self.named(exc) from None

    def commit(self) -> None:
        try:
            check_interrupted()
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self._target)
        except OSError as exc:
            self.discard()
            raise self.named(exc) from None
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


def _temporary_name(target: Path) -> str:
    """`.NAME.RANDOM.tmp`, NAME cut so the whole fits the folder's file-name limit (a legal
    250-byte output name must not fail because its temporary name is longer)."""
    try:
        limit = os.pathconf(target.parent if os.fspath(target.parent) else ".", "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    suffix = f".{secrets.token_hex(4)}.tmp"
    name = os.fsencode(target.name)[:max(1, limit - 1 - len(suffix))]
    return "." + os.fsdecode(name) + suffix  # a cut multi-byte character stays bytes (surrogateescape)


class StreamOutput(_Output):
    """A device, FIFO, socket or standard output, written straight into; nothing to commit but a
    flush, nothing to discard."""

    def __init__(self, path):
        self.path = path
        if os.fspath(path) == STDOUT:
            if sys.stdout is None or sys.stdout.isatty():
                raise InvalidArgumentError("refusing to write binary data to a terminal: "
                                           "redirect standard output, or give -o FILE")
            self.file = sys.stdout.buffer
            self._own = False
        else:
            try:
                self.file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed in commit/discard
            except OSError as exc:
                raise self.named(exc) from None
            self._own = True

    def seekable(self) -> bool:
        try:
            return self.file.seekable()
        except (OSError, ValueError):
            return False

    def write(self, data) -> int:
        try:
            view = memoryview(data).cast("B")
            done = 0
            while done < len(view):  # a raw pipe may take less than asked
                n = self.file.write(view[done:])
                done += len(view) - done if n is None else n
            return done
        except OSError as exc:
            raise self.named(exc) from None

    def commit(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            raise self.named(exc) from None
        finally:
            self._close()

    def discard(self) -> None:
        try:
            self._close()
        except OSError:
            pass

    def _close(self) -> None:
        if self._own:
            self.file.close()


class SpooledOutput(_Output):
    """A seekable stand-in for a stream: an anonymous temporary file, copied to the stream on
    `commit()`."""

    def __init__(self, stream: StreamOutput):
        self.path = stream.path
        self._stream = stream
        self.file = tempfile.TemporaryFile()

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:  # the spool's folder is full: say so, naming the destination
            raise OSError(exc.errno, f"{exc.strerror} (spooling to {tempfile.gettempdir()})",
                          os.fspath(self.path)) from None

    def commit(self) -> None:
        try:
            check_interrupted()
            self.file.seek(0)
            while piece := self.file.read(COPY_PIECE):
                self._stream.write(piece)
            self._stream.commit()
        except BaseException:
            self._stream.discard()
            raise
        finally:
            self.file.close()

    def discard(self) -> None:
        self.file.close()
        self._stream.discard()


def copy_file(src, dst, mode: int | None = None) -> None:
    """Copy `src` to `dst` through `open_output` (atomic for a regular file), keeping `src`'s
    permission bits unless `mode` is given, and its modification time when `dst` is a file."""
    info = os.stat(src)
    with open(src, "rb") as f, open_output(dst, mode=stat.S_IMODE(info.st_mode) if mode is None else mode) as out:
        while piece := f.read(COPY_PIECE):
            out.write(piece)
        out.commit()
    if not is_stream(dst):
        shutil.copystat(src, dst)
