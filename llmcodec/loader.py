"""`llmcodec.open()`: a lazy loader with the feel of `safetensors.safe_open`.

Opening reads and validates only the preamble and header; each tensor is decoded when asked for,
straight into its output array, and a slice decodes only the chunks that cover it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from . import bases, folders, transforms
from .budget import Budget
from .container import ContainerReader
from .errors import FormatError, InvalidArgumentError, InvalidIndexError, LimitExceededError, TensorNotFoundError
from .folders import is_folder
from .format import Limits, TensorEntry

FRAMEWORKS = ("np", "numpy", "pt", "torch")


def open(path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
         limits: Limits | None = None, max_memory: int | None = None, base=None) -> LlmcodecFile | ShardedFile:
    """Open an `.llmc` file for lazy reading; use it as a context manager.

    `path` is a `str`, a `PathLike`, a bytes-like object, or a seekable binary file object; a
    folder (an encoded sharded checkpoint) opens as one file holding the tensors of all its
    `*.llmc` shards (`ShardedFile`).
    `framework` is "np" (numpy arrays) or "pt" (torch tensors; needs torch installed).
    `max_memory` caps the bytes one call (`open` itself, `get_tensor`, indexing a `get_slice`)
    may allocate: its header's records, the decoded data, and the working memory of its decoding
    threads (coded bytes read, descriptor rows, scratch); a bigger request raises
    `LimitExceededError` before anything is allocated. Set it for files from strangers: a valid
    file may decode to about 3 million times its size (a constant chunk of 64 MiB takes 22 header
    bytes). `base` is the base model a file of delta tensors was stored against (spec 11): a path
    (a safetensors or GGUF file or folder, an `.llmc` file or encoded folder), an open llmcodec
    file, or a mapping of names to arrays; it is checked when the file opens (a wrong one is a
    `BaseError`), and a delta tensor reads only the base ranges its decoded chunks need. A call's
    peak growth stays under `max_memory` plus `budget.MEMORY_SLACK` (1 MiB:
    the Python objects of the call itself, which are not counted), whatever the file holds.

    As in safetensors, `keys()` lists the names sorted and `metadata()` is None when the file has
    none; `offset_keys()` lists them in file order.

    >>> with llmcodec.open(path) as f:
    ...     f.keys()
    ...     f.get_tensor("w").shape
    ...     f.get_slice("w")[1:3].tolist()
    ['w']
    (4, 3)
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    """
    if is_folder(path):
        return ShardedFile(path, framework, device, threads=threads, limits=limits, max_memory=max_memory,
                           base=base)
    return LlmcodecFile(path, framework, device, threads=threads, limits=limits, max_memory=max_memory, base=base)


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
    """What `LlmcodecFile` and `ShardedFile` share, on top of their `offset_keys`, `_metadata`,
    `get_tensor` and `close`."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.keys())

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:
        """Tensor names, sorted (as `safetensors.safe_open` lists them); `offset_keys()` in file order."""
        return sorted(self.offset_keys())

    def metadata(self) -> dict[str, str] | None:
        """The user metadata (safetensors' `__metadata__`), None when there is none (as in safetensors)."""
        return self._metadata() or None

    def items(self) -> Iterator[tuple[str, object]]:
        """(name, tensor) in file order, one tensor decoded at a time."""
        for name in self.offset_keys():
            yield name, self.get_tensor(name)


class LlmcodecFile(_TensorFile):
    """An open container; see `llmcodec.open`."""

    def __init__(self, path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
                 limits: Limits | None = None, max_memory: int | None = None, base=None,
                 _budget: Budget | None = None):
        self.max_memory = check_max_memory(max_memory)
        self._reader = None
        self._base, self._owns_base = None, False
        if not isinstance(framework, str) or framework not in FRAMEWORKS:
            raise InvalidArgumentError(f"framework must be one of {', '.join(FRAMEWORKS)}, not {framework!r}")
        self._torch = framework in ("pt", "torch")
        if self._torch:
            check_device(device)
        elif not isinstance(device, str) or device != "cpu":
            raise InvalidArgumentError(f"numpy arrays live on the cpu, not {device!r}")
        self.device = device
        if hasattr(path, "read") and hasattr(path, "seekable") and not path.seekable():
            raise InvalidArgumentError("llmcodec files are read from the end (the header is last): "
                                       "give a seekable file, a path, or the bytes")
        self._base, self._owns_base = bases.as_base(base)
        try:
            self._reader: ContainerReader | None = ContainerReader(
                path, limits=limits, threads=threads, budget=_budget or Budget(self.max_memory),
                read_base=None if self._base is None else self._base.read)
            if self._base is not None:  # check 51 now, so a wrong base is named before anything decodes
                bases.check_fits(self._base, self._reader.all_tensors, self._reader.name)
        except BaseException:
            self.close()
            raise
        self.chunks_decoded = 0  # how many chunks were decoded so far: slices decode only their own

    # --- context and lifetime ---

    def close(self) -> None:
        """Release the file; tensors already returned stay valid. Calls in progress on other
        threads end first, with their tensor or an LlmcodecError."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        if self._owns_base:
            self._base.close()
            self._owns_base = False

    @property
    def reader(self) -> ContainerReader:
        if self._reader is None:
            raise InvalidArgumentError("the llmcodec file is closed")
        return self._reader

    # --- the safe_open interface ---

    def offset_keys(self) -> list[str]:
        """Tensor names, in file order."""
        return list(self.reader.names)

    def _metadata(self) -> dict[str, str]:
        # every entry as stored: format data (records of transforms, read with `transform()`)
        # lives apart since format 1.2
        return dict(self.reader.metadata)

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
        return {role: self._convert(a) for role, a in transforms.stored_parts(self.reader, name).items()}

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
            Budget(self.max_memory).take(kept + transient, what)
            try:
                return self._convert(transforms.rebuild_stored(self.reader, name))
            except MemoryError:
                raise LimitExceededError(f"{what}: more memory than this machine can allocate") from None
        reader = self.reader
        t = self.entry(name)
        shape = array_shape(t, reader.name)
        raw = reader.read_raw(t, budget=Budget(self.max_memory))
        self.chunks_decoded += len(t.chunks)
        return self._convert(raw.view(t.dtype.numpy).reshape(shape))

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
    its `*.llmc` shards (subfolders included: `llmcodec.folders`), each read from its own shard;
    `offset_keys()` lists them in shard order then file order. A tensor name found in two shards
    is a `FormatError`. `metadata()` holds the entries every shard has with the same value (a
    sharded checkpoint repeats its metadata in each shard)."""

    def __init__(self, folder, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
                 limits: Limits | None = None, max_memory: int | None = None, base=None):
        self.name = os.fspath(folder)
        self.shards: list[LlmcodecFile] = []
        self._base, self._owns_base = bases.as_base(base)  # one base for every shard
        self._where: dict[str, LlmcodecFile] = {}
        budget = Budget(check_max_memory(max_memory))  # opening is one call: every shard's header
        try:
            held: dict[str, str] = {}
            for path in shard_paths(folder):
                shard = LlmcodecFile(path, framework, device, threads=threads, limits=limits,
                                     max_memory=max_memory, base=self._base, _budget=budget)
                self.shards.append(shard)
                check_unique(held, shard.offset_keys(), shard.reader.name, self.name)
                self._where.update(dict.fromkeys(shard.offset_keys(), shard))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release every shard; tensors already returned stay valid."""
        for shard in self.shards:
            shard.close()
        if self._owns_base:
            self._base.close()
            self._owns_base = False

    @property
    def chunks_decoded(self) -> int:
        return sum(shard.chunks_decoded for shard in self.shards)

    def offset_keys(self) -> list[str]:
        """Tensor names, in shard order then file order."""
        return list(self._where)

    def _metadata(self) -> dict[str, str]:
        first, *rest = [shard._metadata() for shard in self.shards]
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
    """Returned by `LlmcodecFile.get_slice`; `get_shape()`, `get_dtype()`, and indexing.

    Indexing means what it means on the array `get_tensor` returns (a block type's as bytes, its
    last dimension the bytes of its blocks): ints, slices (any step), `...`, `None` and bools, as
    numpy does; only the chunks that hold the rows picked along the first axis are decoded."""

    def __init__(self, file: LlmcodecFile, entry: TensorEntry):
        self._file = file
        self._entry = entry

    def get_shape(self) -> list[int]:
        return list(self._entry.shape)

    def get_dtype(self) -> str:
        return self._entry.dtype.name

    def __getitem__(self, index):
        t, reader = self._entry, self._file.reader
        shape = array_shape(t, reader.name)
        items, axis = _basic_index(index if isinstance(index, tuple) else (index,), len(shape))
        if t.numel == 0:  # nothing to decode (an empty tensor may have 2^62 rows)
            return self._file._convert(_index(np.empty(0, t.dtype.numpy).reshape(shape), items))
        lo, hi = 0, shape[0] if shape else 1  # rows: all, unless an item picks some
        if axis is not None:
            lo, hi, first = _rows_of(items[axis], shape[0])
            items = (*items[:axis], first, *items[axis + 1:])
        rows, span = self._rows(lo, hi, shape)
        picked = _index(rows, items)
        if not (isinstance(picked, np.ndarray) and picked.flags.c_contiguous
                and (picked.base is None or picked.nbytes == span)):
            picked = np.array(picked, order="C")  # holds its own bytes, not the whole chunks' span
        return self._file._convert(picked)

    def _rows(self, lo: int, hi: int, shape: tuple) -> tuple[np.ndarray, int]:
        """Rows [lo, hi) of the array of `shape` (the tensor as get_tensor returns it), and the
        bytes of the chunks decoded for them (only those that hold them). The chunks and a copy of
        the rows (what the result holds at most) are taken from max_memory."""
        t, reader = self._entry, self._file.reader
        row = t.dtype.numpy.itemsize * math.prod(shape[1:])  # bytes (a 1-D block tensor's rows are bytes)
        first, last = lo * row, hi * row
        rows, span = np.empty(0, np.uint8), 0
        if last > first:
            chunk = t.chunk_elements * t.dtype.itemsize
            c0, c1 = first // chunk, -(-last // chunk)
            budget = Budget(self._file.max_memory)
            budget.take(last - first, f"{reader.name}: decoding rows {lo}:{hi} of tensor {t.name!r}")
            whole = reader.read_chunks(t, c0, c1, budget=budget)
            self._file.chunks_decoded += c1 - c0
            rows, span = whole[first - c0 * chunk:last - c0 * chunk], whole.shape[0]
        return rows.view(t.dtype.numpy).reshape((hi - lo, *shape[1:]) if shape else ()), span


def _index(array: np.ndarray, items: tuple):
    """numpy's array[items]; an index out of bounds (or too large for numpy's integers) is an
    InvalidIndexError (an IndexError too)."""
    try:
        return array[items]
    except (IndexError, OverflowError) as exc:
        raise InvalidIndexError(str(exc)) from None


def _basic_index(items: tuple, ndim: int) -> tuple[tuple, int | None]:
    """`items` checked to be a basic numpy index of an array of `ndim` dimensions (ints, slices,
    one `...`, None, bools), and the position of the item that indexes the first axis (None when
    `...` or the implicit trailing slices take it whole). The tuple keeps its `...`: numpy places
    the axes of mixed int and bool indices by whether anything stands between them."""
    def whole(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    for item in items:
        if not (item is None or item is Ellipsis or isinstance(item, (slice, bool, np.bool_)) or whole(item)):
            raise InvalidIndexError(f"get_slice takes ints, slices, ..., None and bools, not {item!r}")
        if isinstance(item, slice) and not all(v is None or whole(v) for v in (item.start, item.stop, item.step)):
            raise InvalidIndexError(f"get_slice takes slices of ints or None, not {item!r}")
        if isinstance(item, slice) and item.step == 0:
            raise InvalidIndexError("slice step cannot be zero")
    # numpy's scalars as Python's: a bool is not an int from here on
    items = tuple(bool(i) if isinstance(i, np.bool_) else int(i) if whole(i) else i for i in items)
    used = sum(1 for i in items if isinstance(i, (slice, int)) and not isinstance(i, bool))
    if used > ndim:
        raise InvalidIndexError(f"too many indices for a tensor of {ndim} dimensions: {used}")
    if sum(1 for i in items if i is Ellipsis) > 1:
        raise InvalidIndexError("an index can have only one ellipsis (...)")
    for j, item in enumerate(items):
        if item is Ellipsis and ndim > used:
            return items, None
        if isinstance(item, (slice, int)) and not isinstance(item, bool):
            return items, j
    return items, None


def _rows_of(item, rows: int) -> tuple[int, int, object]:
    """(lo, hi, item'): the first axis's `item` (an int or a slice) picks rows of [lo, hi), and
    item' picks the same ones from those rows."""
    if not isinstance(item, slice):
        i = int(item) + rows if item < 0 else int(item)
        if not 0 <= i < rows:
            raise InvalidIndexError(f"index {int(item)} is out of bounds for axis 0 of size {rows}")
        return i, i + 1, 0
    start, stop, step = item.indices(rows)
    count = max(0, (stop - start + step - (1 if step > 0 else -1)) // step)  # len(range(...)), any size
    if count == 0:
        return 0, 0, slice(None)
    end = start + (count - 1) * step
    lo, hi = min(start, end), max(start, end) + 1
    return lo, hi, slice(start - lo, None, step)  # runs to the edge of [lo, hi): exactly `count` rows


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


_INTP_MAX = int(np.iinfo(np.intp).max)


def array_shape(entry: TensorEntry, file: str) -> tuple:
    """The shape of the array `get_tensor` returns: the tensor's, a block type's last dimension
    the bytes of its blocks. numpy cannot hold a shape whose nonzero dimensions multiply past
    2^63 bytes, which an empty tensor may have (`[0, 2^63]`): that is a LimitExceededError."""
    dtype, shape = entry.dtype, entry.shape
    if dtype.is_block:
        shape = (*shape[:-1], shape[-1] // dtype.block_size * dtype.itemsize)
    size = dtype.numpy.itemsize
    for d in shape:
        size *= d or 1
    if size > _INTP_MAX:
        raise LimitExceededError(f"{file}: tensor {entry.name!r}: numpy cannot hold an array of shape {list(shape)}")
    return shape


def as_array(raw: np.ndarray, entry: TensorEntry, file: str) -> np.ndarray:
    """The tensor's raw bytes viewed as the array `get_tensor` returns (array_shape)."""
    return raw.view(entry.dtype.numpy).reshape(array_shape(entry, file))


def _import_torch():
    try:
        import torch
    except ImportError:
        raise InvalidArgumentError("framework='pt' needs torch: pip install 'llmcodec[torch]'") from None
    return torch


def check_device(device) -> None:
    """`device` as torch names one ("cpu", "cuda:0", a torch.device)."""
    torch = _import_torch()
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidArgumentError(f"device must name a torch device, not {device!r}: {exc}") from None


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
    if device == "cpu":
        return tensor
    try:
        return tensor.to(device)
    except (RuntimeError, AssertionError) as exc:  # a device this torch was not built for, or absent
        raise InvalidArgumentError(f"cannot move a tensor to device {device!r}: {exc}") from None

