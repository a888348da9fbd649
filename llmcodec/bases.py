"""Base models for delta coding: a fine-tune is stored against the tensors of its base, which may
be held by a safetensors or GGUF file, a folder of them, an `.llmc` file or an encoded folder.

`open_base(path)` gives a `Base` whatever holds it: the base's tensors by name (dtype, shape,
bytes), a byte range of one tensor read without reading the rest (an encoded base decodes only the
chunks that cover the range), the XXH64 of a tensor's bytes, and the base's identity as the Base
section records it (spec 11.3: its files' paths, sizes and SHA-256s). `MemoryBase` holds arrays
given in memory. `plan_deltas` picks which tensors to store as deltas (spec 11: the cheapest of
standalone, DIFF and SUB per tensor); `check_fits` is check 51 of a file against a base.

Invariants: every range is checked against the tensor's size before it is read; a read that comes
back short (the file changed) is an error, never zeros; a tensor name held by two files of a folder
is a FormatError, as for encoded folders.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from . import folders, format, sources
from .errors import BaseError, FormatError, InvalidArgumentError, TensorNotFoundError

HASH_PIECE = 16 << 20  # bytes hashed at a time


@dataclass(frozen=True)
class BaseTensor:
    name: str
    dtype: object  # a dtypes.Dtype
    shape: tuple[int, ...]
    nbytes: int


class Base:
    """A base model's tensors; see the module docstring. Use as a context manager."""

    name: str

    def __enter__(self) -> Base:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def names(self) -> list[str]:
        return list(self._tensors)

    def tensor(self, name: str) -> BaseTensor | None:
        """The base tensor called `name`, or None when the base has none (or one llmcodec does
        not code)."""
        return self._tensors.get(name)

    def read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Bytes [start, stop) of tensor `name`'s raw bytes, into `out` (a writable contiguous
        uint8 array of stop - start bytes: the decoder's buffer, so no copy is made) or a new
        uint8 array (read-only, for a base held in memory or a file)."""
        t = self._tensors.get(name)
        if t is None:
            raise TensorNotFoundError(f"{self.name}: the base has no tensor {name!r}")
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= t.nbytes):
            raise InvalidArgumentError(f"{self.name}: bytes {start}:{stop} of base tensor {name!r}, "
                                       f"which has {t.nbytes}")
        if out is None:
            return self._read(t, start, stop)
        if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (stop - start,)
                and out.flags.c_contiguous and out.flags.writeable):
            raise InvalidArgumentError(f"{self.name}: out must be a writable contiguous uint8 array of "
                                       f"{stop - start} bytes")
        self._read_into(t, start, out)
        return out

    def _read_into(self, t: BaseTensor, start: int, out: np.ndarray) -> None:
        out[:] = self._read(t, start, start + out.shape[0])

    def checksum(self, name: str) -> int:
        """XXH64 of tensor `name`'s raw bytes, read piece by piece."""
        t = self._tensors.get(name)
        if t is None:
            raise TensorNotFoundError(f"{self.name}: the base has no tensor {name!r}")
        h = xxhash.xxh64()
        for pos in range(0, t.nbytes, HASH_PIECE):
            h.update(self._read(t, pos, min(pos + HASH_PIECE, t.nbytes)))
        return h.intdigest()

    def identity(self) -> tuple[str, bytes | None]:
        """(file name, SHA-256 of the file) of a one-file base; a folder's SHA-256 is None (its
        tensors' checksums identify it)."""
        raise NotImplementedError

    def record(self) -> format.BaseRecord:
        """The base as a Base section names it (spec 11.3): its name and its checkpoint files
        (their SHA-256s computed once per Base)."""
        if getattr(self, "_record", None) is None:
            self._record = self._make_record()
        return self._record

    def _make_record(self) -> format.BaseRecord:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _read(self, t: BaseTensor, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError


def open_base(path) -> Base:
    """The base held at `path`: a safetensors or GGUF file or a folder of them, or an `.llmc`
    file or encoded folder (told apart by their contents and `folders`' rules)."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidArgumentError(f"base must be a path, not {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        if any(p.suffix in sources.CHECKPOINT_SUFFIXES for p in folders.walk(path)):
            return SourceBase(path, [path / p for p in folders.source_files(path)])
        return EncodedBase(path)
    with open(path, "rb") as f:
        magic = f.read(len(format.MAGIC))
    return EncodedBase(path) if magic == format.MAGIC else SourceBase(path, [path])


class SourceBase(Base):
    """A base in its original files (safetensors, GGUF): tensors read with positioned reads."""

    def __init__(self, path: Path, paths: list[Path]):
        self.name = os.fspath(path)
        self._path = path
        self._files: list = []
        self._tensors: dict[str, BaseTensor] = {}
        self._where: dict[str, tuple[int, int, str]] = {}  # name -> (file index, begin, file name)
        try:
            for i, p in enumerate(paths):
                f = open(p, "rb")  # noqa: SIM115 - closed in close()
                self._files.append(f)
                layout = sources.read_layout(f, os.fstat(f.fileno()).st_size, os.fspath(p))
                for r in layout.tensors:
                    if r.dtype is None:
                        continue  # a dtype llmcodec does not code: no delta against it
                    if r.name in self._tensors:
                        raise FormatError(f"{self.name}: tensor {r.name!r} is in both "
                                          f"{self._where[r.name][2]} and {p}")
                    self._tensors[r.name] = BaseTensor(r.name, r.dtype, r.shape, r.end - r.begin)
                    self._where[r.name] = (i, r.begin, os.fspath(p))
        except BaseException:
            self.close()
            raise

    def _read(self, t: BaseTensor, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, np.uint8)
        self._read_into(t, start, out)
        return out

    def _read_into(self, t: BaseTensor, start: int, out: np.ndarray) -> None:
        index, begin, file = self._where[t.name]
        view, done = memoryview(out), 0
        while done < out.shape[0]:  # one copy, from the page cache into the decoder's buffer
            n = os.preadv(self._files[index].fileno(), [view[done:]], begin + start + done)
            if n == 0:
                raise FormatError(f"{file}: the base file is shorter than its header says (it changed?)")
            done += n

    def _make_record(self) -> format.BaseRecord:
        files = []
        for f in self._files:
            p = Path(f.name)
            path = p.relative_to(self._path).as_posix() if self._path.is_dir() else p.name
            files.append(format.BaseFile(path, os.fstat(f.fileno()).st_size, _sha256(f.fileno())))
        return format.BaseRecord(self._path.name, sorted(files, key=lambda f: f.path))

    def identity(self) -> tuple[str, bytes | None]:
        if len(self._files) != 1 or self._path.is_dir():
            return self._path.name, None
        return self._path.name, _sha256(self._files[0].fileno())

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


class EncodedBase(Base):
    """A base stored by llmcodec (an `.llmc` file or an encoded folder): a range decodes only the
    chunks that cover it, checksums verified."""

    def __init__(self, path: Path, file=None):
        from .loader import open as open_llmc

        self.name = os.fspath(path)
        self._path = path
        self._owned = file is None
        self._file = open_llmc(path) if file is None else file
        self._tensors = {}
        for name in self._file.keys():
            if self._file.transform(name) is not None:
                continue  # a lossy tensor's stored parts are not its values: no delta against it
            e = self._file.entry(name)
            self._tensors[name] = BaseTensor(name, e.dtype, tuple(e.shape), e.nbytes)

    def _read(self, t: BaseTensor, start: int, stop: int) -> np.ndarray:
        shard = self._file.file_of(t.name)
        entry = shard.entry(t.name)
        step = entry.chunk_elements * entry.dtype.itemsize  # bytes per chunk
        if stop == start:
            return np.empty(0, np.uint8)
        first, last = start // step, (stop - 1) // step + 1
        span = np.empty(min(last * step, entry.nbytes) - first * step, np.uint8)
        shard.reader.read_chunks(entry, first, last, span)
        return span[start - first * step:stop - first * step].copy()

    def _make_record(self) -> format.BaseRecord:
        files = []
        for shard in getattr(self._file, "shards", [self._file]):
            source, path = shard.reader.source, Path(shard.reader.name)
            if source.kind == format.SOURCE_ARRAYS:
                continue  # `save_file`'s: no original file to name
            rel = path.relative_to(self._path) if self._path.is_dir() else Path(path.name)
            original = rel.with_suffix(sources.decoded_suffix(source.kind)).as_posix()
            files.append(format.BaseFile(original, source.original_size, bytes(source.original_sha256)))
        return format.BaseRecord(self._path.name, sorted(files, key=lambda f: f.path))

    def identity(self) -> tuple[str, bytes | None]:
        if self._path.is_dir():
            return self._path.name, None
        source = self._file.reader.source
        if source.kind == format.SOURCE_ARRAYS:  # `save_file`'s: no original file to name
            return self._path.name, None
        name = self._path.with_suffix(sources.decoded_suffix(source.kind)).name
        return name, bytes(source.original_sha256)

    def _read_into(self, t: BaseTensor, start: int, out: np.ndarray) -> None:
        shard = self._file.file_of(t.name)
        entry = shard.entry(t.name)
        step = entry.chunk_elements * entry.dtype.itemsize
        stop = start + out.shape[0]
        if out.shape[0] and start % step == 0 and (stop % step == 0 or stop == entry.nbytes):
            shard.reader.read_chunks(entry, start // step, -(-stop // step), out)  # whole chunks: no copy
        else:
            out[:] = self._read(t, start, stop)

    @classmethod
    def of(cls, file) -> EncodedBase:
        """An open llmcodec file (LlmcodecFile or ShardedFile) as a base; closing it is its owner's."""
        return cls(Path(getattr(file, "name", None) or file.reader.name), file)

    def close(self) -> None:
        if self._owned:
            self._file.close()


class MemoryBase(Base):
    """A base given as arrays in memory (a mapping of names to numpy arrays, or torch tensors)."""

    def __init__(self, tensors, name: str = ""):
        from . import dtypes

        self.name = name
        self._arrays: dict[str, np.ndarray] = {}
        self._tensors = {}
        for key, value in tensors.items():
            array = _as_numpy(value)
            if not isinstance(key, str):
                raise InvalidArgumentError(f"base tensor names must be str, not {type(key).__name__}")
            dtype = dtypes.from_numpy(array.dtype)
            self._arrays[key] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            self._tensors[key] = BaseTensor(key, dtype, tuple(array.shape), array.nbytes)

    def _read(self, t: BaseTensor, start: int, stop: int) -> np.ndarray:
        view = self._arrays[t.name][start:stop]
        view.flags.writeable = False  # the caller's arrays are theirs: hand out a read-only view
        return view

    def _make_record(self) -> format.BaseRecord:
        return format.BaseRecord(self.name, [])

    def identity(self) -> tuple[str, bytes | None]:
        return self.name, None

    def close(self) -> None:
        pass


def _as_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    if type(value).__module__.startswith("torch"):
        from .torch import to_numpy

        return to_numpy(value)
    raise InvalidArgumentError(f"a base tensor must be a numpy array or torch tensor, not {type(value).__name__}")


def _sha256(fd: int) -> bytes:
    sha = hashlib.sha256()
    size = os.fstat(fd).st_size
    for pos in range(0, size, HASH_PIECE):
        sha.update(os.pread(fd, min(HASH_PIECE, size - pos), pos))
    return sha.digest()


def as_base(base) -> tuple[Base | None, bool]:
    """(the Base, whether the caller opened it and must close it) for a `base=` argument: None, a
    path (`open_base`), a `Base`, an open llmcodec file, or a mapping of names to arrays."""
    if base is None or isinstance(base, Base):
        return base, False
    if isinstance(base, (str, os.PathLike)):
        return open_base(base), True
    from .loader import LlmcodecFile, ShardedFile

    if isinstance(base, (LlmcodecFile, ShardedFile)):
        return EncodedBase.of(base), False
    if hasattr(base, "items"):
        return MemoryBase(base), True
    raise InvalidArgumentError(f"base must be a path, an open llmcodec file, a mapping of arrays or None, "
                               f"not {type(base).__name__}")


def check_fits(base: Base, tensors, where: str) -> None:
    """Check 51 (spec 8, 11.2): the base holds each delta tensor's base tensor, of its dtype and
    shape. `tensors` are TensorEntry records; `where` names the file in messages."""
    for t in tensors:
        if t.delta is None:
            continue
        b = base.tensor(t.delta.base_tensor)
        if b is None:
            raise BaseError(f"{where}: tensor {t.name!r} is a delta against base tensor {t.delta.base_tensor!r}, "
                            f"which the base {base.name} does not hold: this is not its base")
        if b.dtype.id != t.dtype.id or tuple(b.shape) != tuple(t.shape):
            raise BaseError(f"{where}: tensor {t.name!r} ({t.dtype.name} {list(t.shape)}) is a delta against base "
                            f"tensor {t.delta.base_tensor!r}, which is {b.dtype.name} {list(b.shape)} in the base "
                            f"{base.name}: this is not its base")


def plan_deltas(items: list, base: Base, chunk_size, threads: int = 1, level="fast") -> int:
    """Make a delta (TensorSource.delta) of each of `items` (container.TensorSource) whose name
    the base holds with the same dtype and shape, where a sample of its chunks codes smaller so
    at `level` (codec.choose_delta); returns the bytes the samples saved. Hidden tensors stay
    standalone."""
    from . import codec
    from .container import TensorSource
    from .format import TensorEntry

    effort = codec.level(level)

    def plan(item) -> int:
        if not isinstance(item, TensorSource) or item.hidden:
            return 0
        b = base.tensor(item.name)
        if b is None or b.dtype.id != item.dtype.id or tuple(b.shape) != tuple(int(d) for d in item.shape):
            return 0
        entry = TensorEntry(item.name, item.dtype, tuple(b.shape), item.dtype.default_layout,
                            codec.chunk_elements(chunk_size, item.dtype.itemsize))
        choice, saved = codec.choose_delta(entry, item.read, lambda a, z, n=item.name: base.read(n, a, z), effort)
        if choice:
            item.delta = (item.name, choice, lambda a, z, n=item.name: base.read(n, a, z))
        return saved

    return sum(codec.parallel_map(threads, plan, items))
