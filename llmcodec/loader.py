"""`llmcodec.open()`: a lazy loader with the feel of `safetensors.safe_open`.

Opening reads and validates only the preamble and header; each tensor is decoded when asked for,
straight into its output array, and a slice decodes only the chunks that cover it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .container import ContainerReader
from .errors import InvalidArgumentError, TensorNotFoundError
from .format import Limits, TensorEntry

FRAMEWORKS = ("np", "numpy", "pt", "torch")


def open(path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
         limits: Limits | None = None) -> LlmcodecFile:
    """Open an `.llmc` file for lazy reading; use it as a context manager.

    `path` is a `str`, a `PathLike`, a bytes-like object, or a seekable binary file object.
    `framework` is "np" (numpy arrays) or "pt" (torch tensors; needs torch installed).

    >>> with llmcodec.open(path) as f:
    ...     sorted(f.keys())
    ...     f.get_tensor("w").shape
    ...     f.get_slice("w")[1:3].tolist()
    ['w']
    (4, 3)
    [[3.0, 4.0, 5.0], [6.0, 7.0, 8.0]]
    """
    return LlmcodecFile(path, framework, device, threads=threads, limits=limits)


class LlmcodecFile:
    """An open container; see `llmcodec.open`."""

    def __init__(self, path, framework: str = "np", device: str = "cpu", *, threads: int | None = None,
                 limits: Limits | None = None):
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

    def __enter__(self) -> LlmcodecFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

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
        return list(self.reader.by_name)

    def metadata(self) -> dict[str, str]:
        """The user metadata (safetensors' `__metadata__`)."""
        return dict(self.reader.metadata)

    def __contains__(self, name: object) -> bool:
        return name in self.reader.by_name

    def __len__(self) -> int:
        return len(self.reader.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def items(self) -> Iterator[tuple[str, object]]:
        """(name, tensor) in file order, one tensor decoded at a time."""
        for name in self.keys():
            yield name, self.get_tensor(name)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.reader.by_name[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self.reader.name}") from None

    def get_tensor(self, name: str):
        """The whole tensor, decoded on all threads into a new array, checksums verified."""
        t = self.entry(name)
        raw = self.reader.read_raw(t)
        self.chunks_decoded += len(t.chunks)
        return self._convert(raw.view(t.dtype.numpy).reshape(t.shape))

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view: index it (`f.get_slice("w")[10:20]`) to decode only the chunks needed."""
        return TensorSlice(self, self.entry(name))

    def _convert(self, array: np.ndarray):
        if not self._torch:
            return array
        return to_torch(array, self.device)


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
        if len(picked) == 0:
            block = self._decode_rows(0, 0)
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
        first, last = lo * row, hi * row  # element range
        k = t.dtype.itemsize
        out = np.empty((last - first) * k, np.uint8)
        if last > first:
            c0, c1 = first // t.chunk_elements, (last - 1) // t.chunk_elements + 1
            span = np.empty((min(c1 * t.chunk_elements, t.numel) - c0 * t.chunk_elements) * k, np.uint8)
            self._file.reader.read_chunks(t, c0, c1, span)
            self._file.chunks_decoded += c1 - c0
            skip = (first - c0 * t.chunk_elements) * k
            out[:] = span[skip:skip + out.shape[0]]
        shape = (hi - lo, *t.shape[1:]) if t.shape else ()
        return out.view(t.dtype.numpy).reshape(shape)


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

