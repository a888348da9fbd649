"""The GGUF file layout (versions 2 and 3): parse it to encode a file byte for byte.

A GGUF file is, every integer little-endian:

| field | type | rule |
|---|---|---|
| magic | 4 bytes | `GGUF` |
| version | u32 | 2 or 3 (1 had 32-bit counts; 0x03000000 is a big-endian file) |
| tensor_count | u64 | |
| metadata_kv_count | u64 | |
| metadata | pairs | key (string, not empty, unique), value type (u32), value |
| tensor infos | infos | see below |
| padding | | to a multiple of `general.alignment` (u32, a power of two, default 32); only if there are tensors |
| data section | | the tensors' bytes at their offsets |

A tensor info is its name (string, unique), n_dims (u32, 0..4), the dims (u64 each; `dims[0]` is the
row length, ggml's `ne[0]`), its ggml type (u32) and its offset (u64, a multiple of the alignment,
relative to the data section). A string is a u64 byte count and that many bytes of UTF-8. A value
is one of the thirteen `VALUE_TYPES`; an array is its element type (u32), a u64 count and the
elements, which may be arrays themselves. A tensor holds `prod(dims) / block_size` blocks of
`type_size` bytes of its ggml type (`GGML_TYPES`), so its row length is a multiple of the block size.

Everything read from the file is checked against the file's size before it is used: no string,
array or count can make the reader allocate more than the file holds. The bytes between and around
tensors (header, padding) are not described here: the encoder keeps them as blobs.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from ..errors import FormatError, LimitExceededError, TruncatedError, UnsupportedFeatureError, UnsupportedVersionError
from ..ggml import GGML_TYPES

MAGIC = b"GGUF"
VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4  # ggml's GGML_MAX_DIMS
MAX_STRING = 1 << 30  # ggml's GGUF_MAX_STRING_LENGTH
MAX_ARRAY = 1 << 30  # ggml's GGUF_MAX_ARRAY_ELEMENTS
MAX_NESTING = 16  # arrays of arrays: deeper ones are refused rather than recursed into
_READ_BLOCK = 1 << 20


# Metadata value types: id -> (name, struct format of a scalar, numpy dtype of an array element).
VALUE_TYPES: dict[int, tuple[str, str | None, str | None]] = {
    0: ("UINT8", "<B", "<u1"),
    1: ("INT8", "<b", "<i1"),
    2: ("UINT16", "<H", "<u2"),
    3: ("INT16", "<h", "<i2"),
    4: ("UINT32", "<I", "<u4"),
    5: ("INT32", "<i", "<i4"),
    6: ("FLOAT32", "<f", "<f4"),
    7: ("BOOL", "<B", "<u1"),  # one byte; not 0 is true, as ggml reads it
    8: ("STRING", None, None),
    9: ("ARRAY", None, None),
    10: ("UINT64", "<Q", "<u8"),
    11: ("INT64", "<q", "<i8"),
    12: ("FLOAT64", "<d", "<f8"),
}
_STRING, _ARRAY, _BOOL, _UINT32 = 8, 9, 7, 4
_MIN_VALUE_SIZE = {_STRING: 8, _ARRAY: 12}  # smallest string (its length), smallest array (type, count)


@dataclass(frozen=True)
class GgufTensor:
    name: str
    ggml_type: int
    type_name: str
    dims: tuple[int, ...]  # as in the file: dims[0] is the row length (ggml's ne[0])
    begin: int  # absolute offsets in the file
    end: int


@dataclass(frozen=True)
class GgufLayout:
    version: int
    alignment: int
    data_start: int  # absolute offset of the data section: the end of the header, aligned if there are tensors
    metadata: dict[str, object]
    tensors: list[GgufTensor]  # by position in the file


def read_layout(f, file_size: int, name: str) -> GgufLayout:
    """Parse and check the header of the GGUF file open as `f` (binary, seekable).

    Metadata values come back as Python values (`int`, `float`, `bool`, `str`); an array of numbers
    or booleans as a read-only numpy array (one byte of memory per byte of the file, where a list
    would take a Python object per element), an array of strings or arrays as a list. A string
    that is not valid UTF-8 keeps its bytes as lone surrogates (`s.encode("utf-8",
    "surrogateescape")` gives them back); a tensor name must be UTF-8.

    >>> with open("model.gguf", "rb") as f:                      # doctest: +SKIP
    ...     layout = read_layout(f, os.fstat(f.fileno()).st_size, "model.gguf")
    >>> layout.tensors[0].type_name, layout.tensors[0].dims       # doctest: +SKIP
    ('Q8_0', (576, 49152))
    """
    r = _Reader(f, file_size, name)
    magic = r.take(4, "magic")
    if magic != MAGIC:
        raise FormatError(f"{name}: not a GGUF file: magic {magic!r}, expected {MAGIC!r}")
    version = r.u32("version")
    if version not in VERSIONS:
        hint = " (a big-endian file?)" if version >= 1 << 16 and version & 0xFFFF == 0 else ""
        raise UnsupportedVersionError(f"{name}: GGUF version {version}{hint} is not supported "
                                      f"(versions {' and '.join(map(str, VERSIONS))} are)")
    n_tensors = r.count("tensor_count", 24)  # smallest tensor info: empty name, 0 dims, type, offset
    n_kv = r.count("metadata_kv_count", 13)  # smallest pair: key length, type, 1-byte value

    metadata: dict[str, object] = {}
    value_types: dict[str, int] = {}
    for i in range(n_kv):
        key = r.string(f"metadata key {i}")
        if not key:
            raise FormatError(f"{name}: metadata key {i} is empty")
        if key in metadata:
            raise FormatError(f"{name}: metadata key {key!r} appears twice")
        value_types[key] = r.u32(f"metadata {key!r} value type")
        metadata[key] = r.value(value_types[key], f"metadata {key!r}", 0)

    alignment = DEFAULT_ALIGNMENT
    if ALIGNMENT_KEY in metadata:
        alignment = metadata[ALIGNMENT_KEY]
        if value_types[ALIGNMENT_KEY] != _UINT32:
            raise FormatError(f"{name}: metadata {ALIGNMENT_KEY!r} must be UINT32, "
                              f"found {VALUE_TYPES[value_types[ALIGNMENT_KEY]][0]}")
        if alignment == 0 or alignment & (alignment - 1):
            raise FormatError(f"{name}: metadata {ALIGNMENT_KEY!r} must be a power of two, found {alignment}")

    infos = [_tensor_info(r, i, alignment) for i in range(n_tensors)]
    seen: set[str] = set()
    for key, *_ in infos:
        if key in seen:
            raise FormatError(f"{name}: tensor name {key!r} appears twice")
        seen.add(key)

    data_start = r.pos
    if n_tensors:
        data_start += -data_start % alignment
        if data_start > file_size:
            raise TruncatedError(f"{name}: data section starts at byte {data_start} "
                                 f"(header end aligned to {alignment}), past the end of the file ({file_size} bytes)")
    tensors = []
    for key, type_id, dims, offset, nbytes in infos:
        begin = data_start + offset
        if begin + nbytes > file_size:
            raise TruncatedError(f"{name}: tensor {key!r}: bytes [{begin}, {begin + nbytes}) "
                                 f"run past the end of the file ({file_size} bytes)")
        tensors.append(GgufTensor(key, type_id, GGML_TYPES[type_id].name, dims, begin, begin + nbytes))
    tensors.sort(key=lambda t: (t.begin, t.end))
    for prev, cur in zip(tensors, tensors[1:]):
        if cur.begin < prev.end:
            raise FormatError(f"{name}: tensors {prev.name!r} [{prev.begin}, {prev.end}) and "
                              f"{cur.name!r} [{cur.begin}, {cur.end}) overlap")
    return GgufLayout(version, alignment, data_start, metadata, tensors)


def _tensor_info(r: _Reader, i: int, alignment: int) -> tuple[str, int, tuple[int, ...], int, int]:
    """(name, ggml type id, dims, offset in the data section, byte count) of tensor info `i`."""
    key = r.string(f"tensor {i} name")
    try:  # a tensor's name becomes a container's tensor name, which is UTF-8 (spec 4.3)
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{r.name}: tensor {i} name {key!r} is not valid UTF-8") from None
    where = f"tensor {key!r}"
    n_dims = r.u32(f"{where} n_dims")
    if n_dims > MAX_DIMS:
        raise FormatError(f"{r.name}: {where}: n_dims is {n_dims}, at most {MAX_DIMS} allowed")
    dims = tuple(r.u64(f"{where} dims[{j}]") for j in range(n_dims))
    numel = 1
    for j, d in enumerate(dims):
        numel *= d
        if d >= 1 << 63 or numel >= 1 << 63:
            raise FormatError(f"{r.name}: {where}: dims {list(dims[:j + 1])} hold 2^63 elements or more")
    type_id = r.u32(f"{where} type")
    if type_id not in GGML_TYPES:
        raise UnsupportedFeatureError(f"{r.name}: {where}: unknown ggml type id {type_id}")
    t = GGML_TYPES[type_id]
    row = dims[0] if dims else 1
    if row % t.block_size:
        raise FormatError(f"{r.name}: {where}: row length dims[0] = {row} is not a multiple of "
                          f"{t.name}'s block size {t.block_size}")
    offset = r.u64(f"{where} offset")
    if offset % alignment:
        raise FormatError(f"{r.name}: {where}: offset {offset} is not a multiple of the alignment {alignment}")
    return key, type_id, dims, offset, numel // t.block_size * t.type_size


class _Reader:
    """Reads a file front to back through a buffer, never past `size`: every length is checked
    against the bytes left before anything of that length is read or allocated."""

    def __init__(self, f, size: int, name: str):
        f.seek(0)
        self.f, self.size, self.name = f, size, name
        self.pos = 0  # file offset of the next byte to hand out
        self.buf = b""
        self.at = 0  # index in buf of the byte at `pos`

    def take(self, n: int, what: str) -> bytes:
        left = self.size - self.pos
        if n > left:
            raise TruncatedError(f"{self.name}: {what} at byte {self.pos} needs {n} bytes, "
                                 f"the file has {left} left")
        if self.at + n > len(self.buf):
            want = min(max(n - (len(self.buf) - self.at), _READ_BLOCK), left - (len(self.buf) - self.at))
            more = self.f.read(want)
            if len(more) != want:
                raise TruncatedError(f"{self.name}: {what}: the file ended early (read {len(more)} of {want} bytes)")
            self.buf = self.buf[self.at:] + more
            self.at = 0
        out = self.buf[self.at:self.at + n]
        self.at += n
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def count(self, what: str, min_item_size: int) -> int:
        """A u64 count of items of at least `min_item_size` bytes each, checked against the file."""
        n = self.u64(what)
        if n * min_item_size > self.size - self.pos:
            raise TruncatedError(f"{self.name}: {what} is {n}: {n} items of at least {min_item_size} bytes "
                                 f"do not fit in the {self.size - self.pos} bytes left")
        return n

    def string(self, what: str) -> str:
        n = self.u64(f"{what} length")
        if n > self.size - self.pos:
            raise TruncatedError(f"{self.name}: {what}: string length {n} runs past the end of the file "
                                 f"({self.size - self.pos} bytes left)")
        if n > MAX_STRING:
            raise LimitExceededError(f"{self.name}: {what}: string length {n} is over the limit {MAX_STRING}")
        return self.take(n, what).decode("utf-8", "surrogateescape")

    def value(self, vtype: int, what: str, depth: int):
        if vtype not in VALUE_TYPES:
            raise UnsupportedFeatureError(f"{self.name}: {what}: unknown value type {vtype}")
        if vtype == _STRING:
            return self.string(what)
        if vtype != _ARRAY:
            fmt = VALUE_TYPES[vtype][1]
            v = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
            return v != 0 if vtype == _BOOL else v
        if depth >= MAX_NESTING:
            raise LimitExceededError(f"{self.name}: {what}: arrays nested deeper than {MAX_NESTING}")
        etype = self.u32(f"{what} element type")
        if etype not in VALUE_TYPES:
            raise UnsupportedFeatureError(f"{self.name}: {what}: unknown array element type {etype}")
        dtype = VALUE_TYPES[etype][2]
        size = np.dtype(dtype).itemsize if dtype else _MIN_VALUE_SIZE[etype]
        n = self.count(f"{what} array length", size)
        if n > MAX_ARRAY:
            raise LimitExceededError(f"{self.name}: {what}: array length {n} is over the limit {MAX_ARRAY}")
        if dtype is None:
            return [self.value(etype, f"{what}[{k}]", depth + 1) for k in range(n)]
        items = np.frombuffer(self.take(n * size, what), dtype)  # the file's bytes, not a Python object each
        return items != 0 if etype == _BOOL else items
