"""Container structures of spec/FORMAT.md: constants, limits, header (de)serialisation, validation.

No numba and no I/O here: `parse_preamble` and `parse_header` take bytes, check every field the spec
lists, and return plain dataclasses whose offsets and lengths are safe to hand to the kernels.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from functools import lru_cache

import xxhash

from . import dtypes
from .errors import (
    ChecksumError,
    FormatError,
    LimitExceededError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

MAGIC = b"\x89LLMC\r\n\x1a"
MAJOR_VERSION = 1
MINOR_VERSION = 1
PREAMBLE_SIZE = 40
MIN_HEADER_SIZE = 9
_PREAMBLE = struct.Struct("<8sHHIQQII")

# Methods (spec section 6).
METHOD_RAW = 0
METHOD_CONSTANT = 1
METHOD_RANS0 = 2
METHOD_RANS0_PAIRS = 3
METHODS = (METHOD_RAW, METHOD_CONSTANT, METHOD_RANS0, METHOD_RANS0_PAIRS)

# Source kinds and segment kinds (spec section 4.2).
SOURCE_ARRAYS = 0
SOURCE_SAFETENSORS = 1
SOURCE_GGUF = 2
SEGMENT_TENSOR = 0
SEGMENT_BLOB = 1
SEGMENT_CODED_BLOB = 2  # since 1.1: non-tensor bytes of the original, coded as a hidden U8 tensor

MAX_TENSOR_BYTES = 1 << 62


def checksum64(data) -> int:
    """XXH64 with seed 0 of a bytes-like object: the checksum of chunks and blobs."""
    return xxhash.xxh64_intdigest(data)


def checksum32(data) -> int:
    """Low 32 bits of XXH64: the checksum of the preamble and the header."""
    return xxhash.xxh64_intdigest(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Limits:
    """Limits of spec section 9; pass smaller values to refuse bigger files."""

    header_size: int = 1 << 30
    tensor_count: int = 1 << 20
    metadata_count: int = 1 << 16
    string_size: int = 16 << 20
    ndim: int = 32
    chunk_size: int = 64 << 20
    segment_count: int = 1 << 22
    tensor_size: int = MAX_TENSOR_BYTES


@dataclass
class PlaneRef:
    method: int
    parameter: int
    length: int


@dataclass
class Chunk:
    offset: int
    checksum: int
    planes: list[PlaneRef]

    @property
    def length(self) -> int:
        return sum(p.length for p in self.planes)


@dataclass
class TensorEntry:
    name: str
    dtype: dtypes.Dtype
    shape: tuple[int, ...]
    layout: int
    chunk_elements: int
    chunks: list[Chunk] = field(default_factory=list)
    hidden: bool = False  # holds non-tensor bytes of the original (a coded blob): not listed

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def elements(self) -> int:
        """Elements of the tensor, as chunks count them: values, or blocks of a block type."""
        return self.numel // self.dtype.block_size

    @property
    def nbytes(self) -> int:
        return self.elements * self.dtype.itemsize

    @property
    def planes(self) -> tuple:
        """(offset, width) of each plane within an element (dtypes.plane_fields)."""
        return dtypes.plane_fields(self.dtype, self.layout)

    @property
    def coded_bytes(self) -> int:
        return sum(c.length for c in self.chunks)

    def chunk_span(self, index: int) -> tuple[int, int]:
        """First element and element count of chunk `index`."""
        start = index * self.chunk_elements
        return start, min(self.chunk_elements, self.elements - start)


@dataclass
class Segment:
    kind: int
    tensor_index: int = 0
    offset: int = 0
    length: int = 0
    checksum: int = 0


@dataclass
class Source:
    kind: int = SOURCE_ARRAYS
    original_size: int = 0
    original_sha256: bytes = b""
    segments: list[Segment] = field(default_factory=list)


@dataclass
class Header:
    metadata: dict[str, str]
    source: Source
    tensors: list[TensorEntry]


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_offset: int
    header_length: int
    header_checksum: int


# --- writing -------------------------------------------------------------------------------------


def build_preamble(header_offset: int, header: bytes) -> bytes:
    head = _PREAMBLE.pack(MAGIC, MAJOR_VERSION, MINOR_VERSION, 0, header_offset, len(header),
                          checksum32(header), 0)[:36]
    return head + struct.pack("<I", checksum32(head))


def _string(data: str, size_format: str) -> bytes:
    raw = data.encode("utf-8")
    return struct.pack(size_format, len(raw)) + raw


def serialize_header(header: Header) -> bytes:
    out = [struct.pack("<II", len(header.tensors), len(header.metadata))]
    for key, value in header.metadata.items():
        out += [_string(key, "<I"), _string(value, "<I")]
    src = header.source
    out.append(struct.pack("<B", src.kind))
    if src.kind != SOURCE_ARRAYS:
        out.append(struct.pack("<Q32sI", src.original_size, src.original_sha256, len(src.segments)))
        for seg in src.segments:
            if seg.kind in (SEGMENT_TENSOR, SEGMENT_CODED_BLOB):
                out.append(struct.pack("<BI", seg.kind, seg.tensor_index))
            else:
                out.append(struct.pack("<BQQQ", seg.kind, seg.offset, seg.length, seg.checksum))
    for t in header.tensors:
        out.append(_string(t.name, "<H"))
        out.append(struct.pack(f"<BB{len(t.shape)}QBQQ", t.dtype.id, len(t.shape), *t.shape,
                               t.layout, t.chunk_elements, len(t.chunks)))
        for c in t.chunks:
            out.append(struct.pack("<QQ", c.offset, c.checksum))
            out.extend(struct.pack("<BBI", p.method, p.parameter, p.length) for p in c.planes)
    return b"".join(out)


# --- reading -------------------------------------------------------------------------------------


def parse_preamble(data: bytes, file_size: int, limits: Limits) -> Preamble:
    """Check the preamble (spec section 3) against the file's size; `data` is its first 40 bytes."""
    if file_size < PREAMBLE_SIZE or len(data) < PREAMBLE_SIZE:
        raise TruncatedError(f"file is {file_size} bytes, shorter than the {PREAMBLE_SIZE}-byte preamble")
    magic, major, minor, flags, h_off, h_len, h_sum, p_sum = _PREAMBLE.unpack(data[:PREAMBLE_SIZE])
    if magic != MAGIC:
        raise FormatError(f"not an llmcodec file: magic is {magic!r}, expected {MAGIC!r}")
    if checksum32(data[:36]) != p_sum:
        raise ChecksumError(f"Preamble_Checksum: stored {p_sum:#010x}, computed {checksum32(data[:36]):#010x}")
    if major != MAJOR_VERSION:
        raise UnsupportedVersionError(f"Major_Version is {major}; this reader knows {MAJOR_VERSION}")
    if flags != 0:
        raise FormatError(f"Flags: reserved bits set ({flags:#x}), expected 0")
    if h_len > limits.header_size:
        raise LimitExceededError(f"Header_Length {h_len} is over the limit of {limits.header_size} bytes")
    if h_len < MIN_HEADER_SIZE:
        raise FormatError(f"Header_Length {h_len} is below the minimum {MIN_HEADER_SIZE}")
    if h_off < PREAMBLE_SIZE:
        raise FormatError(f"Header_Offset {h_off} points into the preamble")
    if h_off + h_len > file_size:
        raise TruncatedError(f"header ends at byte {h_off + h_len} but the file has {file_size} bytes")
    if h_off + h_len != file_size:
        raise FormatError(f"{file_size - h_off - h_len} bytes after the header (Header_Offset {h_off}, "
                          f"Header_Length {h_len})")
    return Preamble(major, minor, h_off, h_len, h_sum)


@lru_cache(maxsize=256)
def _struct(fmt: str) -> struct.Struct:
    return struct.Struct("<" + fmt)


class _Cursor:
    """Reads header fields in order; running past the end is a TruncatedError naming the field.

    A field's name is `what % args` (or `what` alone), formatted only when it is needed for an
    error: the header of a big checkpoint has many thousands of fields.
    """

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int, what: str, *args) -> memoryview:
        if n > len(self.data) - self.pos:
            raise TruncatedError(f"header ends inside {what % args if args else what} (needs {n} bytes at "
                                 f"header offset {self.pos}, {len(self.data) - self.pos} left)")
        view = self.data[self.pos:self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str, *args) -> tuple:
        st = _struct(fmt)
        if st.size > len(self.data) - self.pos:
            self.take(st.size, what, *args)  # raises, naming the field
        out = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return out

    def one(self, fmt: str, what: str, *args) -> int:
        return self.unpack(fmt, what, *args)[0]

    def text(self, n: int, what: str, *args) -> str:
        try:
            return str(self.take(n, what, *args), "utf-8")
        except UnicodeDecodeError as exc:
            raise FormatError(f"{what % args if args else what} is not valid UTF-8 ({exc.reason})") from None


def parse_header(data: bytes, preamble: Preamble, limits: Limits) -> Header:
    """Parse and fully validate the header (spec sections 4 and 8)."""
    stored = preamble.header_checksum
    if checksum32(data) != stored:
        raise ChecksumError(f"Header_Checksum: stored {stored:#010x}, computed {checksum32(data):#010x}")
    cur = _Cursor(data)
    n_tensors, n_meta = cur.unpack("II", "Tensor_Count/Metadata_Count")
    if n_tensors > limits.tensor_count:
        raise LimitExceededError(f"Tensor_Count {n_tensors} is over the limit {limits.tensor_count}")
    if n_meta > limits.metadata_count:
        raise LimitExceededError(f"Metadata_Count {n_meta} is over the limit {limits.metadata_count}")
    metadata: dict[str, str] = {}
    for i in range(n_meta):
        key = cur.text(_string_length(cur, limits, f"metadata entry {i} Key_Length"), f"metadata key {i}")
        if key in metadata:
            raise FormatError(f"metadata key {key!r} appears twice")
        metadata[key] = cur.text(_string_length(cur, limits, f"metadata {key!r} Value_Length"),
                                 f"metadata value of {key!r}")
    source = _parse_source(cur, n_tensors, limits)
    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        t = _parse_tensor(cur, i, limits)
        if t.name in names:
            raise FormatError(f"tensor name {t.name!r} appears twice")
        names.add(t.name)
        tensors.append(t)
    if cur.pos != len(data):
        raise FormatError(f"{len(data) - cur.pos} bytes left over after the last tensor of the header")
    _mark_hidden(source, tensors)
    header = Header(metadata, source, tensors)
    _check_ranges(header, preamble)
    return header


def _string_length(cur: _Cursor, limits: Limits, what: str) -> int:
    n = cur.one("I", what)
    if n > limits.string_size:
        raise LimitExceededError(f"{what} {n} is over the limit {limits.string_size}")
    return n


def _parse_source(cur: _Cursor, n_tensors: int, limits: Limits) -> Source:
    kind = cur.one("B", "Source_Kind")
    if kind == SOURCE_ARRAYS:
        return Source()
    if kind not in (SOURCE_SAFETENSORS, SOURCE_GGUF):
        raise UnsupportedFeatureError(f"unknown Source_Kind {kind}")
    size, sha, n_seg = cur.unpack("Q32sI", "Source")
    if n_seg > limits.segment_count:
        raise LimitExceededError(f"Segment_Count {n_seg} is over the limit {limits.segment_count}")
    segments = []
    for i in range(n_seg):
        seg_kind = cur.one("B", "segment %d Segment_Kind", i)
        if seg_kind in (SEGMENT_TENSOR, SEGMENT_CODED_BLOB):
            index = cur.one("I", "segment %d Tensor_Index", i)
            if index >= n_tensors:
                raise FormatError(f"segment {i}: Tensor_Index {index} but the file has {n_tensors} tensors")
            segments.append(Segment(seg_kind, tensor_index=index))
        elif seg_kind == SEGMENT_BLOB:
            off, length, check = cur.unpack("QQQ", "segment %d blob", i)
            segments.append(Segment(SEGMENT_BLOB, offset=off, length=length, checksum=check))
        else:
            raise UnsupportedFeatureError(f"segment {i}: unknown Segment_Kind {seg_kind}")
    return Source(kind, size, bytes(sha), segments)


def _parse_tensor(cur: _Cursor, index: int, limits: Limits) -> TensorEntry:
    name = cur.text(cur.one("H", "tensor %d Name_Length", index), "tensor %d Name", index)
    dtype_id, ndim = cur.unpack("BB", "tensor %r Dtype/Ndim", name)
    dtype = dtypes.from_id(dtype_id)
    if ndim > limits.ndim:
        raise LimitExceededError(f"tensor {name!r}: Ndim {ndim} is over the limit {limits.ndim}")
    shape = cur.unpack("Q" * ndim, "tensor %r Shape", name)
    numel = 1
    for d in shape:
        numel *= d  # Python ints: no overflow; checked below
    if dtype.is_block and (not shape or shape[-1] % dtype.block_size):
        raise FormatError(f"tensor {name!r}: shape {list(shape)} of {dtype.name}: the last dimension must be a "
                          f"multiple of its block size {dtype.block_size}")
    elements = numel // dtype.block_size
    if elements * dtype.itemsize > limits.tensor_size:
        raise LimitExceededError(f"tensor {name!r}: shape {list(shape)} is {elements * dtype.itemsize} "
                                 f"bytes, over the limit {limits.tensor_size}")
    layout, chunk_elems, n_chunks = cur.unpack("BQQ", "tensor %r Layout/Chunk_Elements/Chunk_Count", name)
    if layout not in dtypes.LAYOUT_ITEMSIZE:
        raise UnsupportedFeatureError(f"tensor {name!r}: unknown Layout {layout}")
    if not dtypes.layout_allowed(layout, dtype):
        raise FormatError(f"tensor {name!r}: Layout {layout} does not fit dtype {dtype.name}")
    if chunk_elems < 1:
        raise FormatError(f"tensor {name!r}: Chunk_Elements is 0")
    if chunk_elems * dtype.itemsize > limits.chunk_size:
        raise LimitExceededError(f"tensor {name!r}: chunks of {chunk_elems * dtype.itemsize} bytes are over "
                                 f"the limit {limits.chunk_size}")
    expected = -(-elements // chunk_elems)
    if n_chunks != expected:
        raise FormatError(f"tensor {name!r}: Chunk_Count {n_chunks}, expected {expected} for {elements} "
                          f"elements in chunks of {chunk_elems}")
    entry = TensorEntry(name, dtype, tuple(shape), layout, chunk_elems)
    widths = [w for _, w in entry.planes]
    k = len(widths)
    # n_chunks <= elements is bounded by the header's size: each chunk takes 16 + 6k header bytes.
    cur_left = len(cur.data) - cur.pos
    if n_chunks * (16 + 6 * k) > cur_left:
        raise TruncatedError(f"tensor {name!r}: {n_chunks} chunks do not fit in the {cur_left} header "
                             f"bytes left")
    record = _struct("QQ" + "BBI" * k)
    records = cur.take(n_chunks * record.size, "tensor %r chunk records", name)
    last = elements - (n_chunks - 1) * chunk_elems
    for c, (offset, check, *flat) in enumerate(record.iter_unpack(records)):
        n = chunk_elems if c < n_chunks - 1 else last
        planes = [PlaneRef(*flat[i:i + 3]) for i in range(0, 3 * k, 3)]
        for j, p in enumerate(planes):
            _check_plane(p, n * widths[j], "tensor %r chunk %d plane %d", name, c, j)
        entry.chunks.append(Chunk(offset, check, planes))
    return entry


def _check_plane(p: PlaneRef, n: int, where: str, *args) -> None:
    """Check a plane record of n bytes; `where % args` names it, formatted only for an error (the
    header of a big checkpoint has a plane record per chunk and plane)."""
    problem = None
    if p.method not in METHODS:
        raise UnsupportedFeatureError(f"{where % args}: unknown Method {p.method}")
    if p.method != METHOD_CONSTANT and p.parameter != 0:
        problem = f"reserved Parameter is {p.parameter}, expected 0"
    elif p.method == METHOD_RAW and p.length != n:
        problem = f"RAW plane of {n} bytes has Length {p.length}"
    elif p.method == METHOD_CONSTANT and p.length != 0:
        problem = f"CONSTANT plane has Length {p.length}, expected 0"
    elif p.method == METHOD_RANS0 and p.length < 34 + 2 + 4:
        problem = f"RANS0 stream of {p.length} bytes is shorter than its smallest table"
    elif p.method == METHOD_RANS0_PAIRS and p.length < 35 + 1 + 1 + 4:
        problem = f"RANS0_PAIRS stream of {p.length} bytes is shorter than its smallest table"
    if problem:
        raise FormatError(f"{where % args}: {problem}")


def _mark_hidden(source: Source, tensors: list[TensorEntry]) -> None:
    """A tensor a coded-blob segment names holds bytes of the original, not a model tensor (4.2):
    it is U8 of one dimension, and no tensor segment names it too."""
    coded = {s.tensor_index for s in source.segments if s.kind == SEGMENT_CODED_BLOB}
    plain = {s.tensor_index for s in source.segments if s.kind == SEGMENT_TENSOR}
    for index in coded:
        t = tensors[index]
        if t.dtype.name != "U8" or len(t.shape) != 1 or index in plain:
            raise FormatError(f"tensor {t.name!r}: a coded blob must be a U8 tensor of one dimension that no "
                              f"tensor segment names; found {t.dtype.name} of shape {list(t.shape)}")
        t.hidden = True


def _check_ranges(header: Header, preamble: Preamble) -> None:
    """Every chunk and blob lies in the data section, and none overlap (spec section 4.3)."""
    ranges, shared = [], set()
    for t in header.tensors:
        for i, c in enumerate(t.chunks):
            record = (c.offset, c.checksum, tuple((p.method, p.parameter, p.length) for p in c.planes))
            if record in shared:  # an identical chunk record shares the range of the first
                continue
            shared.add(record)
            ranges.append((c.offset, c.offset + c.length, f"tensor {t.name!r} chunk {i}"))
    src = header.source
    for i, s in enumerate(src.segments):
        if s.kind == SEGMENT_BLOB:
            ranges.append((s.offset, s.offset + s.length, f"blob segment {i}"))
    ranges.sort()
    end_of_data = preamble.header_offset
    prev_end, prev_what = PREAMBLE_SIZE, "the preamble"
    for start, end, what in ranges:
        if start < PREAMBLE_SIZE or end > end_of_data:
            raise FormatError(f"{what}: bytes [{start}, {end}) lie outside the data section "
                              f"[{PREAMBLE_SIZE}, {end_of_data})")
        if start < prev_end and end > start:
            raise FormatError(f"{what}: bytes [{start}, {end}) overlap {prev_what}")
        if end > start:
            prev_end, prev_what = end, what
    if src.kind != SOURCE_ARRAYS:
        total = sum(s.length if s.kind == SEGMENT_BLOB else header.tensors[s.tensor_index].nbytes
                    for s in src.segments)
        if total != src.original_size:
            raise FormatError(f"segments add up to {total} bytes but Original_Size is {src.original_size}")

