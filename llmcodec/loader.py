"""`llmcodec.open()`: a lazy loader with the feel of `safetensors.safe_open`.

Opening reads and validates only the preamble and header; each tensor is decoded when asked for,
straight into its output array, and a slice decodes only the chunks that cover it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import folders, transforms
from .container import ContainerReader
from .errors import FormatError, InvalidArgumentError, LimitExceededError, TensorNotFoundError
from .folders import is_folder
from .format import Limits, TensorEntry

FRAMEWORKS = ("np", "numpy", "pt", "torch")


def open(path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
         limits: Limits | None = None, max_memory: int | None = None) -> LlmcodecFile | ShardedFile:
    """Open an `.llmc` file for lazy reading; use it as a context manager.

    `path` is a `str`, a `PathLike`, a bytes-like object, or a seekable binary file object; a
    folder (an encoded sharded checkpoint) opens as one file holding the tensors of all its
    `*.llmc` shards (`ShardedFile`).
    `framework` is "np" (numpy arrays) or "pt" (torch tensors; needs torch installed).
    `max_memory` caps the bytes of decoded data one call (`get_tensor`, indexing a `get_slice`)
    may allocate: a bigger request raises `LimitExceededError` before anything is allocated. Set
    it for files from strangers: a valid file may decode to about 3 million times its size (a
    constant chunk of 64 MiB takes 22 header bytes).

    >>> with llmcodec.open(path) as f:
    ...     sorted(f.keys())
    ...     f.get_tensor("w").shape
    ...     f.get_slice("w")[1:3].tolist()
    ['w']
    (4, 3)
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    """
    if is_folder(path):
        return ShardedFile(path, framework, device, threads=threads, limits=limits, max_memory=max_memory)
    return LlmcodecFile(path, framework, device, threads=threads, limits=limits, max_memory=max_memory)


def shard_paths(folder) -> list[Path]:
    """The containers a loader reads for an encoded folder: those its index names, else all
    (`llmcodec.folders.model_shards`)."""
    return folders.model_shards(folder)


def check_unique(where: dict, names, shard: str, folder) -> None:
    """Record that `shard` holds `names`; a name already held by another shard is a FormatError."""
    for name in names:
        if name in where:
            raise FormatError(f"{folder}: tensor {name!r} is in both {where[name]} and {shard}")
        where[name] = shard


class _TensorFile:
    """What `LlmcodecFile` and `ShardedFile` share, on top of their `keys`, `get_tensor` and `close`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> Iterator[tuple[str, object]]:
        """(name, tensor) in order, one tensor decoded at a time."""
        for name in self.keys():
            yield name, self.get_tensor(name)


class LlmcodecFile(_TensorFile):
    """An open container; see `llmcodec.open`."""

    def __init__(self, path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
                 limits: Limits | None = None, max_memory: int | None = None):
        self.max_memory = check_max_memory(max_memory)
        if framework not in FRAMEWORKS:
            raise InvalidArgumentError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
        self._torch = framework in ("pt", "torch")
        if self._torch:
            _import_torch()
        elif device != "cpu":
            raise InvalidArgumentError(f"numpy arrays live on the cpu, not {device!r}")
        self.device = device
        if hasattr(path, "read") and hasattr(path, "seekable") and not path.seekable():
            raise InvalidArgumentError("llmcodec files are read from the end (the header is last): "
                                       "give a seekable file, a path, or the bytes")
        self._reader: ContainerReader | None = ContainerReader(path, limits=limits, threads=threads)
        self.chunks_decoded = 0  # how many chunks were decoded so far: slices decode only their own

    # --- context and lifetime ---

    def close(self) -> None:
        """Release the file; tensors already returned stay valid."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    @property
    def reader(self) -> ContainerReader:
        if self._reader is None:
            raise InvalidArgumentError("the llmcodec file is closed")
        return self._reader

    # --- the safe_open interface ---

    def keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self.reader.names)

    def metadata(self) -> dict[str, str]:
        """The user metadata (safetensors' `__metadata__`); llmcodec's own record of transforms
        is read with `transform()`."""
        return {k: v for k, v in self.reader.metadata.items() if k != transforms.METADATA_KEY}

    def __contains__(self, name: object) -> bool:
        return name in self.reader.by_name or name in self.reader.transforms

    def file_of(self, name: str) -> LlmcodecFile:
        """The file holding tensor `name`: this one (a `ShardedFile` answers with a shard)."""
        if name not in self:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.reader.name}")
        return self

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.reader.by_name[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.reader.name}") from None

    def transform(self, name: str) -> transforms.Transform | None:
        """How tensor `name` was quantized or factorized before it was stored (None: stored as is)."""
        if name not in self:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.reader.name}")
        return self.reader.transforms.get(name)

    def get_quantized(self, name: str) -> dict:
        """A quantized tensor's stored parts, bit-exact: `q`, `scale` (and `min` if affine)."""
        return self._parts(name, "quantize")

    def get_factors(self, name: str) -> dict:
        """A factorized tensor's stored factors, bit-exact: `u` and `v`, with w ~ u @ v."""
        return self._parts(name, "factorize")

    def _parts(self, name: str, kind: str) -> dict:
        t = self.transform(name)
        if t is None or t.kind != kind:
            raise InvalidArgumentError(f"tensor {name!r} in {self.reader.name} was not stored by {kind}")
        return {role: self._convert(a) for role, a in self.reader.parts(name).items()}

    def get_tensor(self, name: str):
        """The whole tensor, decoded on all threads into a new array, checksums verified; a
        quantized or factorized one rebuilt in its original dtype and shape (the same bits on every
        read and machine)."""
        if name in self.reader.transforms:
            t = self.reader.transforms[name]
            # The parts, float32 intermediates (three per element at most) and the result, from the
            # shape (checked against the parts when the file was opened), not the record's own sizes.
            what = f"{self.reader.name}: rebuilding tensor {name!r}"
            kept, transient = rebuild_bytes(self.reader, name)
            reserve(kept + transient, self.max_memory, what)
            try:
                return self._convert(self.reader.rebuild(name))
            except MemoryError:
                raise LimitExceededError(f"{what}: more memory than this machine can allocate") from None
        t = self.entry(name)
        what = f"{self.reader.name}: decoding tensor {name!r}"
        reserve(t.nbytes, self.max_memory, what)
        raw = self.reader.read_raw(t, new_buffer(t.nbytes, what))
        self.chunks_decoded += len(t.chunks)
        return self._convert(as_array(raw, t, t.shape, self.reader.name))

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view: index it (`f.get_slice("w")[10:20]`) to decode only the chunks needed."""
        if name in self.reader.transforms:
            raise InvalidArgumentError(f"tensor {name!r} is stored quantized or factorized: read it whole "
                                       f"with get_tensor, or its parts with get_quantized / get_factors")
        return TensorSlice(self, self.entry(name))

    def _convert(self, array: np.ndarray):
        if not self._torch:
            return array
        return to_torch(array, self.device)


class ShardedFile(_TensorFile):
    """An encoded checkpoint folder opened as one file (see `llmcodec.open`): the tensors of all
    its `*.llmc` shards (subfolders included: `llmcodec.folders`), in shard order then file order,
    each read from its own shard. A tensor name found in two shards is a `FormatError`.
    `metadata()` holds the entries every shard has with the same value (a sharded checkpoint
    repeats its metadata in each shard)."""

    def __init__(self, folder, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
                 limits: Limits | None = None, max_memory: int | None = None):
        self.name = os.fspath(folder)
        self.shards: list[LlmcodecFile] = []
        self._where: dict[str, LlmcodecFile] = {}
        try:
            held: dict[str, str] = {}
            for path in shard_paths(folder):
                shard = LlmcodecFile(path, framework, device, threads=threads, limits=limits,
                                     max_memory=max_memory)
                self.shards.append(shard)
                check_unique(held, shard.keys(), shard.reader.name, self.name)
                self._where.update(dict.fromkeys(shard.keys(), shard))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release every shard; tensors already returned stay valid."""
        for shard in self.shards:
            shard.close()

    @property
    def chunks_decoded(self) -> int:
        return sum(shard.chunks_decoded for shard in self.shards)

    def keys(self) -> list[str]:
        return list(self._where)

    def metadata(self) -> dict[str, str]:
        first, *rest = [shard.metadata() for shard in self.shards]
        return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def file_of(self, name: str) -> LlmcodecFile:
        """The shard holding tensor `name`."""
        try:
            return self._where[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.name}") from None

    def entry(self, name: str) -> TensorEntry:
        return self.file_of(name).entry(name)

    def transform(self, name: str) -> transforms.Transform | None:
        return self.file_of(name).transform(name)

    def get_quantized(self, name: str) -> dict:
        return self.file_of(name).get_quantized(name)

    def get_factors(self, name: str) -> dict:
        return self.file_of(name).get_factors(name)

    def get_tensor(self, name: str):
        return self.file_of(name).get_tensor(name)

    def get_slice(self, name: str) -> TensorSlice:
        return self.file_of(name).get_slice(name)


class TensorSlice:
    """Returned by `LlmcodecFile.get_slice`; `get_shape()`, `get_dtype()`, and indexing."""

    def __init__(self, file: LlmcodecFile, entry: TensorEntry):
        self._file = file
        self._entry = entry

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype.name

    def __getitem__(self, index):
        t = self._entry
        if not isinstance(index, tuple):
            index = (index,)
        if not t.shape:
            return self._file._convert(self._decode_rows(0, 1).reshape(())[index])
        first, rest = index[0], index[1:]
        rows = t.shape[0]
        if isinstance(first, (int, np.integer)):
            i = int(first) + rows if first < 0 else int(first)
            if not 0 <= i < rows:
                raise IndexError(f"index {int(first)} is out of bounds for axis 0 of size {rows}")
            picked, drop_axis = range(i, i + 1), True
        elif isinstance(first, slice):
            picked, drop_axis = range(*first.indices(rows)), False
        elif first is Ellipsis:
            picked, drop_axis, rest = range(rows), False, index
        else:
            raise InvalidArgumentError(f"get_slice indexes the first axis with an int, a slice or ..., "
                                       f"not {first!r}")
        if not picked or t.numel == 0:  # nothing to decode (an empty tensor may have 2^62 rows)
            count = (picked[-1] - picked[0]) // picked.step + 1 if picked else 0
            block = as_array(np.empty(0, np.uint8), t, (count, *t.shape[1:]), self._file.reader.name)
        else:
            lo, hi = min(picked[0], picked[-1]), max(picked[0], picked[-1]) + 1
            block = self._decode_rows(lo, hi)
            if picked.step != 1:
                block = block[np.asarray(picked) - lo]
        block = block[(0, *rest)] if drop_axis else block[(slice(None), *rest)]
        return self._file._convert(np.require(block, requirements="C"))

    def _decode_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of the tensor, decoding only the chunks that hold them."""
        t = self._entry
        row = 1
        for d in t.shape[1:]:
            row *= d
        row //= t.dtype.block_size  # elements: a block type's rows are whole blocks
        first, last = lo * row, hi * row  # element range
        k = t.dtype.itemsize
        c0, c1 = first // t.chunk_elements, (last - 1) // t.chunk_elements + 1
        span_bytes = (min(c1 * t.chunk_elements, t.elements) - c0 * t.chunk_elements) * k if last > first else 0
        what = f"{self._file.reader.name}: decoding rows {lo}:{hi} of tensor {t.name!r}"
        reserve((last - first) * k + span_bytes, self._file.max_memory, what)
        out = new_buffer((last - first) * k, what)
        if last > first:
            span = new_buffer(span_bytes, what)
            self._file.reader.read_chunks(t, c0, c1, span)
            self._file.chunks_decoded += c1 - c0
            skip = (first - c0 * t.chunk_elements) * k
            out[:] = span[skip:skip + out.shape[0]]
        shape = (hi - lo, *t.shape[1:]) if t.shape else ()
        return as_array(out, t, shape, self._file.reader.name)


def check_max_memory(max_memory) -> int | None:
    """`max_memory` as `open` and `load_file` take it: None (no cap) or a number of bytes >= 0."""
    if max_memory is None:
        return None
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory < 0:
        raise InvalidArgumentError(f"max_memory must be a number of bytes >= 0 or None, not {max_memory!r}")
    return int(max_memory)


def rebuild_bytes(reader, name: str) -> tuple[int, int]:
    """(result, transient) bytes of rebuilding transformed tensor `name`: its result, and the parts
    and float32 intermediates (three per element at most) it needs meanwhile. From the shape,
    checked against the parts when the file was opened, not from the record's own sizes."""
    t = reader.transforms[name]
    elements = t.shape[0] * t.shape[1]
    parts = sum(reader.stored[p].nbytes for p in t.parts.values())
    return elements * transforms.FLOAT_DTYPES[t.dtype].itemsize, parts + 12 * elements


def reserve(nbytes: int, max_memory: int | None, what: str) -> None:
    """Refuse, before allocating, a decoding call that needs more than `max_memory` bytes."""
    if max_memory is not None and nbytes > max_memory:
        raise LimitExceededError(f"{what} needs {nbytes} bytes, over max_memory={max_memory}")


def new_buffer(nbytes: int, what: str) -> np.ndarray:
    """uint8[nbytes] for decoded data; a size this machine cannot allocate is a LimitExceededError."""
    try:
        return np.empty(nbytes, np.uint8)
    except MemoryError:
        raise LimitExceededError(f"{what} needs {nbytes} bytes, more than this machine can allocate; "
                                 f"pass max_memory to refuse such files earlier") from None


def as_array(raw: np.ndarray, entry: TensorEntry, shape: tuple, file: str) -> np.ndarray:
    """`raw` viewed as the tensor's dtype and `shape` (a block type's as bytes: its last dimension
    becomes the bytes of its blocks). numpy cannot hold a shape whose nonzero dimensions multiply
    past 2^63 bytes, which an empty tensor may have (`[0, 2^63]`): that is a LimitExceededError."""
    dtype = entry.dtype
    if dtype.is_block:
        shape = (*shape[:-1], shape[-1] // dtype.block_size * dtype.itemsize)
    size = dtype.numpy.itemsize
    for d in shape:
        size *= d or 1
    if size > np.iinfo(np.intp).max:
        raise LimitExceededError(f"{file}: tensor {entry.name!r}: numpy cannot hold an array of shape {list(shape)}")
    return raw.view(entry.dtype.numpy).reshape(shape)


def _import_torch():
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError("framework='pt' needs torch: pip install 'llmcodec[torch]'") from None
    return torch


def to_torch(array: np.ndarray, device: str = "cpu"):
    """A torch tensor sharing `array`'s memory (bf16 and fp8 keep their dtype)."""
    torch = _import_torch()
    special = {"bfloat16": torch.bfloat16, "float8_e4m3fn": torch.float8_e4m3fn,
               "float8_e5m2": torch.float8_e5m2}
    name = array.dtype.name
    array = np.require(array, requirements="C")
    if name in special:
        base = np.int16 if array.dtype.itemsize == 2 else np.uint8
        tensor = torch.from_numpy(array.view(base)).view(special[name])
    else:
        tensor = torch.from_numpy(array)
    return tensor if device == "cpu" else tensor.to(device)

