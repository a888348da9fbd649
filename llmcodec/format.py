"""Container structures of spec/FORMAT.md: constants, limits, header (de)serialisation, validation.

No numba and no I/O here: `parse_preamble` and `parse_header` take bytes, check every field the spec
lists, and return plain dataclasses whose offsets and lengths are safe to hand to the kernels.
"""

from __future__ import annotations

import gc
import json
import math
import struct
from dataclasses import dataclass, field
from functools import cache, lru_cache

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
MINOR_VERSION = 4  # the newest minor version read; a writer writes the oldest that holds its file (Header.minor)
PREAMBLE_SIZE = 40
MIN_HEADER_SIZE = 9
_PREAMBLE = struct.Struct("<8sHHIQQII")

# Methods (spec section 6).
METHOD_RAW = 0
METHOD_CONSTANT = 1
METHOD_RANS0 = 2
METHOD_RANS0_PAIRS = 3
METHODS = (METHOD_RAW, METHOD_CONSTANT, METHOD_RANS0, METHOD_RANS0_PAIRS)
# Table geometry of RANS0 (6.1) and RANS0_PAIRS (6.4): fixed table parts, Precision and Lanes ranges.
RANS0_TABLE = 34  # Precision, Lanes, Symbol_Bitmap[32]
PAIRS_TABLE = 35  # Precision, Lanes, Odd_Byte, Byte_Bitmap[32]
MAX_PRECISION = 12
MAX_PAIR_PRECISION = 14
MAX_LANES = 64

# Source kinds and segment kinds (spec section 4.2).
SOURCE_ARRAYS = 0
SOURCE_SAFETENSORS = 1
SOURCE_GGUF = 2
SEGMENT_TENSOR = 0
SEGMENT_BLOB = 1
SEGMENT_CODED_BLOB = 2  # since 1.1: non-tensor bytes of the original, coded as a hidden U8 tensor

MAX_TENSOR_BYTES = 1 << 62
NAME_SIZE = 0xFFFF  # Name_Length is a u16

# Transform kinds (spec section 10): id -> (kind, scheme, the roles of its parts, in stored order).
TRANSFORM_KINDS = {0: ("quantize", "symmetric", ("q", "scale")),
                   1: ("quantize", "affine", ("q", "scale", "min")),
                   2: ("factorize", "", ("u", "v"))}
TRANSFORM_DTYPES = ("F16", "BF16", "F32")  # what a transformed tensor is rebuilt as
LEGACY_TRANSFORMS_KEY = "llmcodec.transforms"  # before 1.2 the transform record was this metadata entry
_TRANSFORM = struct.Struct("<BBQQBQQd")  # Kind .. Relative_Error of a Transform record

# Delta transforms (spec section 11.1): id -> name. llmcodec.delta computes them (its ids are pinned
# to these by tests/test_constants.py), the decoding kernel undoes them (kernels.DELTA_*).
DELTA_DIFF = 1
DELTA_SUB = 2
DELTA_TRANSFORMS = {DELTA_DIFF: "DIFF", DELTA_SUB: "SUB"}


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
    tensor_count: int = 1 << 22
    metadata_count: int = 1 << 20
    string_size: int = 128 << 20
    ndim: int = 64
    chunk_size: int = 64 << 20
    segment_count: int = 1 << 24
    tensor_size: int = MAX_TENSOR_BYTES
    expansion: int = 1 << 22  # decoded bytes a file may declare per byte of the file
    work: int = 1 << 16  # rebuild multiply-adds, and plane bytes `info` decodes, per byte of the file


class _computed_once:
    """A property computed at its first use and then kept in the instance (a plain attribute
    from then on). functools.cached_property does the same under a lock, which costs more
    than these small computations."""

    def __init__(self, fn):
        self.fn, self.name, self.__doc__ = fn, fn.__name__, fn.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


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
class Delta:
    """How a delta tensor was stored (spec 4.6, 11): the base tensor it needs, the transform, and
    the XXH64 of the base bytes each chunk needs."""

    base_tensor: str
    transform: int
    base_checksums: list[int]


@dataclass
class TensorEntry:
    name: str
    dtype: dtypes.Dtype
    shape: tuple[int, ...]
    layout: int
    chunk_elements: int
    chunks: list[Chunk] = field(default_factory=list)
    hidden: bool = False  # holds non-tensor bytes of the original (a coded blob): not listed
    delta: Delta | None = None  # a delta tensor (spec 11): its planes hold transformed words

    # name, dtype, shape, layout and chunk_elements are never reassigned, so what follows from
    # them is computed once: a load asks for it several times per tensor.
    @_computed_once
    def numel(self) -> int:
        return math.prod(self.shape)

    @_computed_once
    def elements(self) -> int:
        """Elements of the tensor, as chunks count them: values, or blocks of a block type."""
        return self.numel // self.dtype.block_size

    @_computed_once
    def nbytes(self) -> int:
        return self.elements * self.dtype.itemsize

    @property
    def planes(self) -> tuple:
        """(offset, width) of each plane within an element (dtypes.plane_fields)."""
        return dtypes.plane_fields(self.dtype, self.layout)

    @property
    def plane_bytes(self) -> int:
        """Bytes the planes hold per element: the itemsize, more with layout BLOCK_QUANTS (spec 5)."""
        return sum(w for _, w in self.planes)

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
class Transform:
    """What was done to one tensor (spec section 10): `kind`, its original dtype and shape, the
    parts' names by role, the parameters, and how far the rebuilt tensor is from the original."""

    kind: str  # "quantize" or "factorize"
    dtype: str  # the original's dtype name (F32, F16, BF16)
    shape: list[int]
    parts: dict[str, str]  # role -> stored tensor name
    bits: int = 0  # quantize
    scheme: str = ""  # quantize: "symmetric" or "affine"
    group_size: int = 0  # quantize: columns per scale (the whole row if 0)
    rank: int = 0  # factorize
    relative_error: float = 0.0  # ||rebuilt - original|| / ||original|| (Frobenius); informative
    original_bytes: int = 0  # rows x cols x itemsize of dtype: always derived, never trusted

    @property
    def kind_id(self) -> int | None:
        """Its Kind id (section 10), None if kind and scheme make none."""
        scheme = self.scheme if self.kind == "quantize" else ""
        return next((k for k, (kind, sch, _) in TRANSFORM_KINDS.items() if (kind, sch) == (self.kind, scheme)), None)

    @property
    def work(self) -> int:
        """Multiply-adds (factorize) or products (quantize) of rebuilding it (spec section 9)."""
        rows, cols = self.shape
        return rows * cols * (self.rank if self.kind == "factorize" else 1)


@dataclass(frozen=True)
class BaseFile:
    """One checkpoint file of a base model (spec 4.6, 11.3; informative)."""

    path: str
    size: int
    sha256: bytes


@dataclass
class BaseRecord:
    """The Base section (spec 4.6): who the base is; the deltas themselves are on their tensors
    (TensorEntry.delta)."""

    name: str
    files: list[BaseFile] = field(default_factory=list)


@dataclass
class Header:
    metadata: dict[str, str]  # user metadata only: format data never lives here (since 1.2)
    source: Source
    tensors: list[TensorEntry]
    transforms: dict[str, Transform] = field(default_factory=dict)
    base: BaseRecord | None = None  # a file with delta tensors (since 1.3)

    @property
    def minor(self) -> int:
        """The minor version a writer gives this header: 4 with a tensor of layout BLOCK_QUANTS, 3
        with a Base section, else 2."""
        if any(t.layout == dtypes.LAYOUT_BLOCK_QUANTS for t in self.tensors):
            return 4
        return 3 if self.base is not None else 2


@dataclass(frozen=True)
class Preamble:
    major: int
    minor: int
    header_offset: int
    header_length: int
    header_checksum: int


# --- writing -------------------------------------------------------------------------------------


def build_preamble(header_offset: int, header: bytes, minor: int = 2) -> bytes:
    head = _PREAMBLE.pack(MAGIC, MAJOR_VERSION, minor, 0, header_offset, len(header),
                          checksum32(header), 0)[:36]
    return head + struct.pack("<I", checksum32(head))


def _string(data: str, size_format: str) -> bytes:
    raw = data.encode("utf-8")
    return struct.pack(size_format, len(raw)) + raw


def serialize_header(header: Header) -> bytes:
    """The header's bytes (spec section 4), unchecked: a writer checks its values first
    (`check_tensor`, `check_metadata`, `check_transforms`, `check_declared`)."""
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
    if header.transforms:  # section 4.5: only a file with transforms has the section
        index = {t.name: i for i, t in enumerate(header.tensors)}
        out.append(struct.pack("<I", len(header.transforms)))
        for name, t in header.transforms.items():
            rows, cols = t.shape
            roles = TRANSFORM_KINDS[t.kind_id][2]
            out.append(_string(name, "<H"))
            out.append(_TRANSFORM.pack(t.kind_id, dtypes.BY_NAME[t.dtype].id, rows, cols, t.bits, t.group_size,
                                       t.rank, t.relative_error))
            out.append(struct.pack(f"<{len(roles)}I", *(index[t.parts[r]] for r in roles)))
    if header.base is not None:  # section 4.6, after a Transforms section (of 0 records if there are none)
        if not header.transforms:
            out.append(struct.pack("<I", 0))
        b = header.base
        out.append(_string(b.name, "<H"))
        out.append(struct.pack("<I", len(b.files)))
        for f in b.files:
            out.append(_string(f.path, "<H"))
            out.append(struct.pack("<Q32s", f.size, f.sha256))
        deltas = [(i, t.delta) for i, t in enumerate(header.tensors) if t.delta is not None]
        out.append(struct.pack("<I", len(deltas)))
        for i, d in deltas:
            out.append(struct.pack("<I", i))
            out.append(_string(d.base_tensor, "<H"))
            out.append(struct.pack(f"<B{len(d.base_checksums)}Q", d.transform, *d.base_checksums))
    return b"".join(out)


# --- checks shared by the reader and the writer (spec sections 4 and 9) ---------------------------


def utf8(text: str, what: str) -> bytes:
    """`text` as UTF-8 bytes; a str UTF-8 cannot hold (a lone surrogate) is a FormatError."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{what} {text!r} is not valid UTF-8 text (it holds a lone surrogate)") from None


def check_count(what: str, n: int, limit: int) -> None:
    if n > limit:
        raise LimitExceededError(f"{what} {n} is over the limit {limit}")


def check_metadata(metadata: dict[str, str], limits: Limits) -> None:
    """What a writer checks of user metadata: the count, UTF-8 and the string limit (4.1, 9)."""
    check_count("Metadata_Count", len(metadata), limits.metadata_count)
    for i, (key, value) in enumerate(metadata.items()):
        check_count(f"metadata entry {i} Key_Length", len(utf8(key, "metadata key")), limits.string_size)
        check_count(f"metadata {key!r} Value_Length", len(utf8(value, f"metadata value of {key!r}")),
                    limits.string_size)


def check_tensor(t: TensorEntry, limits: Limits) -> None:
    """Every rule of a tensor record but its chunks (4.3, 9): the same checks when a file is read
    and before a writer encodes a tensor, so a writer never writes what a reader refuses."""
    name = t.name
    if len(utf8(name, "tensor name")) > NAME_SIZE:
        raise LimitExceededError(f"tensor name of {len(utf8(name, 'tensor name'))} bytes is over the "
                                 f"{NAME_SIZE} bytes Name_Length can hold: {name[:60]!r}...")
    if len(t.shape) > limits.ndim:
        raise LimitExceededError(f"tensor {name!r}: Ndim {len(t.shape)} is over the limit {limits.ndim}")
    if t.shape and not (min(t.shape) >= 0 and max(t.shape) < 1 << 64):
        raise LimitExceededError(f"tensor {name!r}: shape {list(t.shape)}: a dimension is over 2^64 - 1")
    dtype = t.dtype
    if dtype.block_size > 1 and (not t.shape or t.shape[-1] % dtype.block_size):
        raise FormatError(f"tensor {name!r}: shape {list(t.shape)} of {dtype.name}: the last dimension must be a "
                          f"multiple of its block size {dtype.block_size}")
    nbytes = math.prod(t.shape) // dtype.block_size * dtype.itemsize  # t.nbytes; Python ints: no overflow
    if nbytes > limits.tensor_size:
        raise LimitExceededError(f"tensor {name!r}: shape {list(t.shape)} is {nbytes} bytes, over the limit "
                                 f"{limits.tensor_size}")
    if t.layout not in dtypes.LAYOUT_ITEMSIZE:
        raise UnsupportedFeatureError(f"tensor {name!r}: unknown Layout {t.layout}")
    if not dtypes.layout_allowed(t.layout, dtype):
        raise FormatError(f"tensor {name!r}: Layout {t.layout} does not fit dtype {dtype.name}")
    if t.chunk_elements < 1:
        raise FormatError(f"tensor {name!r}: Chunk_Elements is 0")
    if t.chunk_elements * dtype.itemsize > limits.chunk_size:
        raise LimitExceededError(f"tensor {name!r}: chunks of {t.chunk_elements * dtype.itemsize} bytes are over "
                                 f"the limit {limits.chunk_size}")


def check_transforms(transforms: dict[str, Transform], tensors: list[TensorEntry], source: Source,
                     limits: Limits) -> None:
    """Section 10: every transformed tensor names parts of the dtypes and shapes its kind needs,
    each tensor is a part once at most, and no name is also a stored tensor's."""
    if transforms and source.kind != SOURCE_ARRAYS:
        raise FormatError(f"a file with transforms has Source_Kind {SOURCE_ARRAYS}, not {source.kind}")
    check_count("Transform_Count", len(transforms), limits.tensor_count)
    stored = {t.name: t for t in tensors}
    used: set[str] = set()
    for name, t in transforms.items():
        _check_transform(name, t, stored, limits)
        for part in t.parts.values():
            if part in used:
                raise FormatError(f"transform of tensor {name!r}: tensor {part!r} is a part twice")
            used.add(part)


def _check_transform(name: str, t: Transform, stored: dict, limits: Limits) -> None:
    def bad(why: str) -> FormatError:
        return FormatError(f"transform of tensor {name!r}: {why}")

    if name in stored:
        raise bad("a stored tensor has the same name")
    utf8(name, "transformed tensor name")
    if t.kind_id is None:
        raise bad(f"unknown kind {t.kind!r} / scheme {t.scheme!r}")
    rows, cols = t.shape
    if t.dtype not in TRANSFORM_DTYPES or rows < 1 or cols < 1:
        raise bad(f"dtype {t.dtype} and shape {t.shape} must be a float matrix")
    if t.original_bytes != rows * cols * dtypes.BY_NAME[t.dtype].itemsize:
        raise bad(f"original_bytes {t.original_bytes} disagrees with its shape {t.shape} of {t.dtype}")
    if t.original_bytes > limits.tensor_size:
        raise LimitExceededError(f"transform of tensor {name!r}: shape {t.shape} is {t.original_bytes} bytes, "
                                 f"over the limit {limits.tensor_size}")
    roles = TRANSFORM_KINDS[t.kind_id][2]
    if set(t.parts) != set(roles) or not all(p in stored for p in t.parts.values()):
        raise bad(f"parts {t.parts!r} are not the stored tensors {roles} it needs")
    if t.kind == "quantize":
        g = t.group_size or cols
        if t.bits not in (4, 8) or g < 1 or cols % g or t.rank:
            raise bad(f"bits {t.bits} / group size {t.group_size} / rank {t.rank} for {cols} columns")
        want = {"q": ("I8" if t.scheme == "symmetric" else "U8", (rows, cols)), "scale": ("F32", (rows, cols // g)),
                "min": ("F32", (rows, cols // g))}
    else:
        if not 1 <= t.rank <= min(rows, cols) or t.bits or t.group_size:
            raise bad(f"rank {t.rank} (bits {t.bits}, group size {t.group_size}) for shape {t.shape}")
        want = {"u": ("F32", (rows, t.rank)), "v": ("F32", (t.rank, cols))}
    for role, part in t.parts.items():
        entry = stored[part]
        dtype, shape = want[role]
        if entry.dtype.name != dtype or tuple(entry.shape) != shape:
            raise bad(f"part {role} is {entry.dtype.name} {list(entry.shape)}, expected {dtype} {list(shape)}")


def check_declared(header: Header, file_size: int, limits: Limits) -> None:
    """Section 9: the bytes a file says it decodes to, and the work of rebuilding its transformed
    tensors, are bounded by its size (a header entry of a few bytes can name many gigabytes)."""
    decoded = max(sum(t.nbytes for t in header.tensors), header.source.original_size)
    if decoded > limits.expansion * file_size:
        raise LimitExceededError(f"the file declares {decoded} decoded bytes, over the limit of {limits.expansion} "
                                 f"per byte of its {file_size} bytes (Limits.expansion)")
    work = sum(t.work for t in header.transforms.values())
    if work > limits.work * file_size:
        raise LimitExceededError(f"rebuilding its transformed tensors takes {work} operations, over the limit of "
                                 f"{limits.work} per byte of its {file_size} bytes (Limits.work)")


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
    check_count("Header_Length", h_len, limits.header_size)
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


_U16 = struct.Struct("<H")
_SEGMENT_HEAD = struct.Struct("<BI")  # Segment_Kind, and a tensor segment's Tensor_Index


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
    """Parse and fully validate the header (spec sections 4, 8, 9 and 10).

    The cyclic garbage collector is paused meanwhile: the records are many small objects that
    all live as long as the header, and its passes over them cost a fifth of the parse."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _parse_header(data, preamble, limits)
    finally:
        if paused:
            gc.enable()


def _parse_header(data: bytes, preamble: Preamble, limits: Limits) -> Header:
    stored = preamble.header_checksum
    if checksum32(data) != stored:
        raise ChecksumError(f"Header_Checksum: stored {stored:#010x}, computed {checksum32(data):#010x}")
    cur = _Cursor(data)
    n_tensors, n_meta = cur.unpack("II", "Tensor_Count/Metadata_Count")
    check_count("Tensor_Count", n_tensors, limits.tensor_count)
    check_count("Metadata_Count", n_meta, limits.metadata_count)
    metadata: dict[str, str] = {}
    for i in range(n_meta):
        key = cur.text(_string_length(cur, limits, "metadata entry %d Key_Length", i), "metadata key %d", i)
        if key in metadata:
            raise FormatError(f"metadata key {key!r} appears twice")
        metadata[key] = cur.text(_string_length(cur, limits, "metadata %r Value_Length", key),
                                 "metadata value of %r", key)
    source = _parse_source(cur, n_tensors, limits)
    tensors = []
    names: set[str] = set()
    for i in range(n_tensors):
        t = _parse_tensor(cur, i, limits)
        if t.name in names:
            raise FormatError(f"tensor name {t.name!r} appears twice")
        names.add(t.name)
        tensors.append(t)
    transforms, base = {}, None
    if preamble.minor >= 2 and cur.pos < len(data):  # section 4.5, since 1.2
        transforms = _parse_transforms(cur, tensors, limits, preamble.minor >= 3)
        if preamble.minor >= 3 and cur.pos < len(data):  # section 4.6, since 1.3
            base = _parse_base(cur, tensors, limits)
    if cur.pos != len(data):
        last = "delta" if base else "transform" if transforms else "tensor"
        raise FormatError(f"{len(data) - cur.pos} bytes left over after the last {last} of the header")
    if preamble.minor < 2 and source.kind == SOURCE_ARRAYS and LEGACY_TRANSFORMS_KEY in metadata:
        transforms = _legacy_transforms(metadata.pop(LEGACY_TRANSFORMS_KEY), limits)  # section 10.2
    _mark_hidden(source, tensors)
    header = Header(metadata, source, tensors, transforms, base)
    check_transforms(transforms, tensors, source, limits)
    check_base(header, limits)
    _check_ranges(header, preamble)
    check_declared(header, preamble.header_offset + preamble.header_length, limits)
    return header


def _string_length(cur: _Cursor, limits: Limits, what: str, *args) -> int:
    n = cur.one("I", what, *args)
    if n > limits.string_size:
        raise LimitExceededError(f"{what % args} {n} is over the limit {limits.string_size}")
    return n


def _parse_source(cur: _Cursor, n_tensors: int, limits: Limits) -> Source:
    kind = cur.one("B", "Source_Kind")
    if kind == SOURCE_ARRAYS:
        return Source()
    if kind not in (SOURCE_SAFETENSORS, SOURCE_GGUF):
        raise UnsupportedFeatureError(f"unknown Source_Kind {kind}")
    size, sha, n_seg = cur.unpack("Q32sI", "Source")
    check_count("Segment_Count", n_seg, limits.segment_count)
    segments = []
    data = cur.data
    for i in range(n_seg):
        pos = cur.pos
        if pos + 5 <= len(data):  # a tensor segment's fields, read at once (a checkpoint has thousands)
            seg_kind, index = _SEGMENT_HEAD.unpack_from(data, pos)
            cur.pos = pos + (5 if seg_kind in (SEGMENT_TENSOR, SEGMENT_CODED_BLOB) else 1)
        else:
            seg_kind = cur.one("B", "segment %d Segment_Kind", i)
            index = None
        if seg_kind in (SEGMENT_TENSOR, SEGMENT_CODED_BLOB):
            if index is None:
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
    # The fields are read with struct calls of their own rather than through the cursor's methods
    # where the header surely holds them: a checkpoint has thousands of tensors. Where it may not,
    # the cursor reads them and names the field it runs out in.
    data, pos = cur.data, cur.pos
    if pos + 2 <= len(data):
        length = _U16.unpack_from(data, pos)[0]
        cur.pos = pos + 2
    else:
        length = cur.one("H", "tensor %d Name_Length", index)
    name = cur.text(length, "tensor %d Name", index)
    pos = cur.pos
    if pos + 2 <= len(data):
        dtype_id, ndim = data[pos], data[pos + 1]
        cur.pos = pos = pos + 2
    else:
        dtype_id, ndim = cur.unpack("BB", "tensor %r Dtype/Ndim", name)
    dtype = dtypes.from_id(dtype_id)
    fixed = _tensor_fields(ndim)
    if fixed.size <= len(data) - pos:  # Shape, Layout, Chunk_Elements, Chunk_Count at once
        *shape, layout, chunk_elems, n_chunks = fixed.unpack_from(data, pos)
        cur.pos = pos + fixed.size
    else:  # the header ends inside one of them: name it
        shape = cur.unpack("Q" * ndim, "tensor %r Shape", name)
        layout, chunk_elems, n_chunks = cur.unpack("BQQ", "tensor %r Layout/Chunk_Elements/Chunk_Count", name)
    entry = TensorEntry(name, dtype, tuple(shape), layout, chunk_elems)
    check_tensor(entry, limits)
    elements = entry.elements
    expected = -(-elements // chunk_elems)
    if n_chunks != expected:
        raise FormatError(f"tensor {name!r}: Chunk_Count {n_chunks}, expected {expected} for {elements} "
                          f"elements in chunks of {chunk_elems}")
    widths, record = _chunk_record(dtype_id, layout)
    k = len(widths)
    # n_chunks <= elements is bounded by the header's size: each chunk takes 16 + 6k header bytes.
    cur_left = len(data) - cur.pos
    if n_chunks * (16 + 6 * k) > cur_left:
        raise TruncatedError(f"tensor {name!r}: {n_chunks} chunks do not fit in the {cur_left} header "
                             f"bytes left")
    records = cur.take(n_chunks * record.size, "tensor %r chunk records", name)
    sizes = [chunk_elems * w for w in widths]  # bytes of each plane of a chunk
    chunks, last = entry.chunks, n_chunks - 1
    for c, (offset, check, *flat) in enumerate(record.iter_unpack(records)):
        if c == last:  # the last chunk holds what is left
            sizes = [(elements - c * chunk_elems) * w for w in widths]
        planes = []
        for j in range(k):
            method, parameter, length = flat[3 * j], flat[3 * j + 1], flat[3 * j + 2]
            # _check_plane's rules, inline: a plane that breaks one is named by _check_plane
            if not (length == sizes[j] and parameter == 0 if method == METHOD_RAW else length == 0
                    if method == METHOD_CONSTANT else length >= _MIN_LENGTH[method] and parameter == 0):
                _check_plane(PlaneRef(method, parameter, length), sizes[j], "tensor %r chunk %d plane %d",
                             name, c, j)
            planes.append(PlaneRef(method, parameter, length))
        chunks.append(Chunk(offset, check, planes))
    return entry


@cache  # Ndim <= 255
def _tensor_fields(ndim: int) -> struct.Struct:
    """Shape, Layout, Chunk_Elements, Chunk_Count of a tensor record of `ndim` dimensions (4.3)."""
    return _struct("Q" * ndim + "BQQ")


@cache  # dtypes x layouts
def _chunk_record(dtype_id: int, layout: int) -> tuple[tuple, struct.Struct]:
    """(plane widths, chunk record) of a tensor whose dtype and layout check_tensor accepted (4.3)."""
    widths = tuple(w for _, w in dtypes.plane_fields(dtypes.BY_ID[dtype_id], layout))
    return widths, _struct("QQ" + "BBI" * len(widths))


def _parse_transforms(cur: _Cursor, tensors: list[TensorEntry], limits: Limits,
                      base_allowed: bool) -> dict[str, Transform]:
    """Section 4.5: Transform_Count records, >= 1 unless a Base section follows (since 1.3);
    check_transforms then checks them against the tensors."""
    count = cur.one("I", "Transform_Count")
    if count == 0 and not (base_allowed and cur.pos < len(cur.data)):
        raise FormatError("Transform_Count is 0: a file without transforms ends after its last tensor")
    check_count("Transform_Count", count, limits.tensor_count)
    out: dict[str, Transform] = {}
    for i in range(count):
        name = cur.text(cur.one("H", "transform %d Name_Length", i), "transform %d Name", i)
        if name in out:
            raise FormatError(f"transformed tensor name {name!r} appears twice")
        kind, dtype_id, rows, cols, bits, group, rank, error = cur.unpack(_TRANSFORM.format[1:], "transform %r", name)
        if kind not in TRANSFORM_KINDS:
            raise UnsupportedFeatureError(f"transform of tensor {name!r}: unknown Kind {kind}")
        dtype = dtypes.BY_ID.get(dtype_id)
        if dtype is None or dtype.name not in TRANSFORM_DTYPES:
            raise FormatError(f"transform of tensor {name!r}: Dtype {dtype_id} is not F16, BF16 or F32")
        kind_name, scheme, roles = TRANSFORM_KINDS[kind]
        indices = cur.unpack("I" * len(roles), "transform %r Parts", name)
        if max(indices) >= len(tensors):
            raise FormatError(f"transform of tensor {name!r}: a part's Tensor_Index {max(indices)} but the file "
                              f"has {len(tensors)} tensors")
        parts = {role: tensors[j].name for role, j in zip(roles, indices)}
        out[name] = Transform(kind_name, dtype.name, [rows, cols], parts, bits, scheme, group, rank, error,
                              rows * cols * dtype.itemsize)
    return out


def _parse_base(cur: _Cursor, tensors: list[TensorEntry], limits: Limits) -> BaseRecord:
    """Section 4.6: the Base section; each Delta is set on its tensor (TensorEntry.delta), and
    check_base then checks which tensors may be deltas."""
    name = cur.text(cur.one("H", "Base_Name_Length"), "Base_Name")
    count = cur.one("I", "File_Count")
    check_count("File_Count", count, limits.tensor_count)
    files, paths = [], set()
    for i in range(count):
        path = cur.text(cur.one("H", "Base_File %d Path_Length", i), "Base_File %d Path", i)
        if path in paths:
            raise FormatError(f"Base_File Path {path!r} appears twice")
        paths.add(path)
        size, sha = cur.unpack("Q32s", "Base_File %r Size/SHA256", path)
        files.append(BaseFile(path, size, bytes(sha)))
    deltas = cur.one("I", "Delta_Count")
    if deltas == 0:
        raise FormatError("Delta_Count is 0: a file without delta tensors has no Base section")
    previous = -1
    for i in range(deltas):
        index = cur.one("I", "Delta %d Tensor_Index", i)
        if not previous < index < len(tensors):
            raise FormatError(f"Delta {i}: Tensor_Index {index}, expected above {previous} (the previous one) "
                              f"and below Tensor_Count {len(tensors)}")
        previous, t = index, tensors[index]
        base_tensor = cur.text(cur.one("H", "Delta of tensor %r Name_Length", t.name), "Delta of tensor %r Name",
                               t.name)
        transform = cur.one("B", "Delta of tensor %r Transform", t.name)
        if transform not in DELTA_TRANSFORMS:
            raise UnsupportedFeatureError(f"Delta of tensor {t.name!r}: unknown Transform {transform}")
        n = len(t.chunks)
        if 8 * n > len(cur.data) - cur.pos:  # check 50: the count against the bytes left, first
            raise TruncatedError(f"Delta of tensor {t.name!r}: {n} Base_Checksums need {8 * n} header bytes, "
                                 f"{len(cur.data) - cur.pos} left")
        checksums = list(cur.unpack(f"{n}Q", "Delta of tensor %r Base_Checksums", t.name))
        t.delta = Delta(base_tensor, transform, checksums)
    return BaseRecord(name, files)


def check_base(header: Header, limits: Limits) -> None:
    """Section 4.6 (checks 48-49), what reader and writer both check: a Base section exactly when
    some tensor is a delta; a delta is neither a coded blob nor a transform's part, names its base
    tensor in UTF-8, has a known transform and one Base_Checksum per chunk."""
    deltas = [t for t in header.tensors if t.delta is not None]
    if (header.base is None) != (not deltas):
        raise FormatError("a Base section needs delta tensors, and delta tensors a Base section")
    if header.base is None:
        return
    if len(utf8(header.base.name, "Base_Name")) > NAME_SIZE:
        raise LimitExceededError(f"a Base_Name of over {NAME_SIZE} bytes")
    check_count("File_Count", len(header.base.files), limits.tensor_count)
    if len({f.path for f in header.base.files}) != len(header.base.files):
        raise FormatError("a Base_File Path appears twice")
    for f in header.base.files:
        if len(utf8(f.path, "Base_File Path")) > NAME_SIZE:
            raise LimitExceededError(f"a Base_File Path of over {NAME_SIZE} bytes")
        if len(f.sha256) != 32:
            raise FormatError(f"Base_File {f.path!r}: a SHA-256 of {len(f.sha256)} bytes")
    parts = {p for t in header.transforms.values() for p in t.parts.values()}
    for t in deltas:
        d = t.delta
        if t.hidden or t.name in parts:
            raise FormatError(f"Delta of tensor {t.name!r}: a coded blob or a transform's part cannot be a delta")
        if len(utf8(d.base_tensor, "base tensor name")) > NAME_SIZE:
            raise LimitExceededError(f"Delta of tensor {t.name!r}: a base tensor name over {NAME_SIZE} bytes")
        if d.transform not in DELTA_TRANSFORMS:
            raise UnsupportedFeatureError(f"Delta of tensor {t.name!r}: unknown Transform {d.transform}")
        if len(d.base_checksums) != len(t.chunks):
            raise FormatError(f"Delta of tensor {t.name!r}: {len(d.base_checksums)} Base_Checksums for "
                              f"{len(t.chunks)} chunks")


def _legacy_transforms(text: str, limits: Limits) -> dict[str, Transform]:
    """Section 10.2: the transform record of a 1.0/1.1 file, a JSON object in its metadata."""
    def bad(why: str) -> FormatError:
        return FormatError(f"metadata {LEGACY_TRANSFORMS_KEY!r} is not a valid transform record ({why})")

    try:
        raw = json.loads(text, parse_int=_json_int)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise bad(str(exc)) from None
    if not isinstance(raw, dict):
        raise bad("not a JSON object")
    known = Transform.__dataclass_fields__  # members a later writer adds are ignored
    out = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise bad(f"the record of {name!r} is not an object")
        try:
            t = Transform(**{k: v for k, v in fields.items() if k in known})
        except TypeError as exc:
            raise bad(str(exc)) from None
        if not (isinstance(t.kind, str) and isinstance(t.scheme, str) and isinstance(t.dtype, str)
                and isinstance(t.shape, list) and len(t.shape) == 2 and all(type(d) is int for d in t.shape)
                and all(type(v) is int for v in (t.bits, t.group_size, t.rank, t.original_bytes))
                and isinstance(t.parts, dict) and all(isinstance(p, str) for p in t.parts.values())):
            raise bad(f"tensor {name!r}: bits, group_size, rank, original_bytes and shape must be integers, "
                      f"kind, scheme, dtype and parts strings")
        if not (type(t.relative_error) in (int, float) and math.isfinite(t.relative_error)):
            raise bad(f"tensor {name!r}: relative_error {t.relative_error!r} is not a finite number")
        t.relative_error = float(t.relative_error)
        out[name] = t
    return out


def _json_int(text: str) -> int | float:
    """A JSON integer; one of over 20 digits (more than any field holds, and quadratic to convert)
    becomes infinity, which then fails the check of its field, naming it."""
    return int(text) if len(text) <= 20 else math.inf



# The shortest stream of a coded method (a one-symbol table, one lane, no word), by method id;
# an unknown method is never long enough, so _check_plane names it.
_MIN_LENGTH = tuple({METHOD_RANS0: RANS0_TABLE + 2 + 4, METHOD_RANS0_PAIRS: PAIRS_TABLE + 1 + 1 + 4}.get(m, 1 << 33)
                    for m in range(256))


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
    elif p.method == METHOD_RANS0 and p.length < RANS0_TABLE + 2 + 4:
        problem = f"RANS0 stream of {p.length} bytes is shorter than its smallest table"
    elif p.method == METHOD_RANS0_PAIRS and p.length < PAIRS_TABLE + 1 + 1 + 4:
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
    """Every chunk and blob lies in the data section, and none overlap (spec section 4.3).

    A range is (start, end, tensor index, chunk index), or (start, end, -1, segment index) for a
    blob: its name is formatted only for an error (a tensor name may be 65,535 bytes long, and a
    header may hold millions of chunks)."""
    tensors = header.tensors

    def name(what: tuple) -> str:
        _, _, t, i = what
        return f"tensor {tensors[t].name!r} chunk {i}" if t >= 0 else f"blob segment {i}"

    def record(c: Chunk) -> tuple:
        return c.checksum, [(p.method, p.parameter, p.length) for p in c.planes]

    ranges, at = [], {}  # at: offset -> the chunks with a range of their own that start there
    for ti, t in enumerate(tensors):
        for i, c in enumerate(t.chunks):
            offset = c.offset
            others = at.get(offset)
            if others is None:
                at[offset] = [c]
            elif any(record(o) == record(c) for o in others):  # an identical chunk record shares the range
                continue
            else:
                others.append(c)
            end = offset
            for p in c.planes:
                end += p.length
            ranges.append((offset, end, ti, i))
    src = header.source
    for i, s in enumerate(src.segments):
        if s.kind == SEGMENT_BLOB:
            ranges.append((s.offset, s.offset + s.length, -1, i))
    ranges.sort()
    end_of_data = preamble.header_offset
    prev_end, prev = PREAMBLE_SIZE, None
    for what in ranges:
        start, end = what[0], what[1]
        if start < PREAMBLE_SIZE or end > end_of_data:
            raise FormatError(f"{name(what)}: bytes [{start}, {end}) lie outside the data section "
                              f"[{PREAMBLE_SIZE}, {end_of_data})")
        if start < prev_end and end > start:
            raise FormatError(f"{name(what)}: bytes [{start}, {end}) overlap "
                              f"{name(prev) if prev else 'the preamble'}")
        if end > start:
            prev_end, prev = end, what
    if src.kind != SOURCE_ARRAYS:
        total = sum(s.length if s.kind == SEGMENT_BLOB else header.tensors[s.tensor_index].nbytes
                    for s in src.segments)
        if total != src.original_size:
            raise FormatError(f"segments add up to {total} bytes but Original_Size is {src.original_size}")

