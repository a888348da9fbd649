"""Base models for delta coding: a fine-tune is stored against the tensors of its base, which may
be held by a safetensors or GGUF file, a folder of them, an `.llmc` file or an encoded folder.

`open_base(path)` gives a `Base` whatever holds it: the base's tensors by name (dtype, shape,
bytes), a byte range of one tensor read without reading the rest (an encoded base decodes only the
chunks that cover the range), the XXH64 of a tensor's bytes (to name a wrong base before decoding
anything), and the base's identity (its file name and SHA-256, where it is one file).

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
from .errors import FormatError, InvalidArgumentError, TensorNotFoundError

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

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Bytes [start, stop) of tensor `name`'s raw bytes, as a new uint8 array."""
        t = self._tensors.get(name)
        if t is None:
            raise TensorNotFoundError(f"{self.name}: the base has no tensor {name!r}")
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= t.nbytes):
            raise InvalidArgumentError(f"{self.name}: bytes {start}:{stop} of base tensor {name!r}, "
                                       f"which has {t.nbytes}")
        return self._read(t, start, stop)

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
        index, begin, file = self._where[t.name]
        data = os.pread(self._files[index].fileno(), stop - start, begin + start)
        if len(data) != stop - start:
            raise FormatError(f"{file}: the base file is shorter than its header says (it changed?)")
        return np.frombuffer(data, np.uint8).copy()

    def identity(self) -> tuple[str, bytes | None]:
        if len(self._files) != 1 or self._path.is_dir():
            return self._path.name, None
        sha = hashlib.sha256()
        fd = self._files[0].fileno()
        size = os.fstat(fd).st_size
        for pos in range(0, size, HASH_PIECE):
            sha.update(os.pread(fd, min(HASH_PIECE, size - pos), pos))
        return self._path.name, sha.digest()

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []


class EncodedBase(Base):
    """A base stored by llmcodec (an `.llmc` file or an encoded folder): a range decodes only the
    chunks that cover it, checksums verified."""

    def __init__(self, path: Path):
        from .loader import open as open_llmc

        self.name = os.fspath(path)
        self._path = path
        self._file = open_llmc(path)
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

    def identity(self) -> tuple[str, bytes | None]:
        if self._path.is_dir():
            return self._path.name, None
        source = self._file.reader.source
        if source.kind == format.SOURCE_ARRAYS:  # `save_file`'s: no original file to name
            return self._path.name, None
        name = self._path.with_suffix(sources.decoded_suffix(source.kind)).name
        return name, bytes(source.original_sha256)

    def close(self) -> None:
        self._file.close()
