"""A slow reference decoder for `.llmc` files, written from spec/FORMAT.md alone.

It exists to show that the spec is complete: it follows the text section by section (comments cite
the sections), uses only the standard library and `xxhash` (for XXH64), and shares no code with the
fast decoder; the tests check that both agree. It makes every check of section 8 with the default
limits of section 9, decodes every symbol in a plain Python loop and rebuilds transformed tensors
(section 10) element by element, and undoes delta transforms (section 11) word by word: use it on
small files only.

    >>> decoded = decode(open("model.llmc", "rb").read())      # doctest: +SKIP
    >>> decoded.tensors["w"].data                               # raw little-endian bytes
    >>> base = decode(open("base.llmc", "rb").read()).tensors   # doctest: +SKIP
    >>> decode(open("fine-tune.llmc", "rb").read(), base)       # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import xxhash

from .errors import (BaseError, ChecksumError, FormatError, LimitExceededError, TruncatedError, UnsupportedFeatureError,
                     UnsupportedVersionError)

MAGIC = b"\x89LLMC\r\n\x1a"  # section 3
PREAMBLE = 40  # section 3: bytes; the data section starts here
L = 1 << 16  # section 6.2: lower bound of a rANS state
_xxh64 = xxhash.xxh64_intdigest  # section 1: XXH64 with seed 0
DTYPES = {  # section 4.4: id -> (name, itemsize)
    1: ("BOOL", 1), 2: ("U8", 1), 3: ("I8", 1), 4: ("F8_E5M2", 1), 5: ("F8_E4M3", 1), 6: ("I16", 2), 7: ("U16", 2),
    8: ("F16", 2), 9: ("BF16", 2), 10: ("I32", 4), 11: ("U32", 4), 12: ("F32", 4), 13: ("I64", 8), 14: ("U64", 8),
    15: ("F64", 8),
}
BLOCK_DTYPES = {  # section 4.4, block dtypes: id -> (name, itemsize, block_size, fields as (offset, width))
    66: ('GGML_Q4_0', 18, 32, [(0, 1), (1, 1), (2, 16)]),
    67: ('GGML_Q4_1', 20, 32, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 16)]),
    70: ('GGML_Q5_0', 22, 32, [(0, 1), (1, 1), (2, 4), (6, 16)]),
    71: ('GGML_Q5_1', 24, 32, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 4), (8, 16)]),
    72: ('GGML_Q8_0', 34, 32, [(0, 1), (1, 1), (2, 32)]),
    73: ('GGML_Q8_1', 40, 32, [(0, 40)]),
    74: ('GGML_Q2_K', 84, 256, [(0, 84)]),
    75: ('GGML_Q3_K', 110, 256, [(0, 110)]),
    76: ('GGML_Q4_K', 144, 256, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 12), (16, 128)]),
    77: ('GGML_Q5_K', 176, 256, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 12), (16, 32), (48, 128)]),
    78: ('GGML_Q6_K', 210, 256, [(0, 128), (128, 64), (192, 16), (208, 1), (209, 1)]),
    79: ('GGML_Q8_K', 292, 256, [(0, 292)]),
    80: ('GGML_IQ2_XXS', 66, 256, [(0, 66)]),
    81: ('GGML_IQ2_XS', 74, 256, [(0, 74)]),
    82: ('GGML_IQ3_XXS', 98, 256, [(0, 98)]),
    83: ('GGML_IQ1_S', 50, 256, [(0, 50)]),
    84: ('GGML_IQ4_NL', 18, 32, [(0, 18)]),
    85: ('GGML_IQ3_S', 110, 256, [(0, 110)]),
    86: ('GGML_IQ2_S', 82, 256, [(0, 82)]),
    87: ('GGML_IQ4_XS', 136, 256, [(0, 136)]),
    93: ('GGML_IQ1_M', 56, 256, [(0, 56)]),
    95: ('GGML_Q4_0_4_4', 18, 32, [(0, 18)]),
    96: ('GGML_Q4_0_4_8', 18, 32, [(0, 18)]),
    97: ('GGML_Q4_0_8_8', 18, 32, [(0, 18)]),
    98: ('GGML_TQ1_0', 54, 256, [(0, 54)]),
    99: ('GGML_TQ2_0', 66, 256, [(0, 66)]),
    103: ('GGML_MXFP4', 17, 32, [(0, 17)]),
    104: ('GGML_NVFP4', 36, 64, [(0, 36)]),
    105: ('GGML_Q1_0', 18, 128, [(0, 18)]),
}
DTYPES.update({k: v[:2] for k, v in BLOCK_DTYPES.items()})
BLOCK_FIELDS, BLOCK_QUANTS = 3, 4  # section 5
# section 5: id -> (name, itemsize)
LAYOUTS = {0: ("BYTES", None), 1: ("FIELDS16", 2), 2: ("FIELDS32", 4), 3: ("BLOCK_FIELDS", None),
           4: ("BLOCK_QUANTS", None)}
# section 5.1, the block dtypes BLOCK_QUANTS allows: id -> (b, offset of qs (Q6_K: ql), offset of qh)
QUANT_DTYPES = {70: (5, 6, 2), 71: (5, 8, 4), 77: (5, 48, 16), 78: (6, 0, 128)}
METHODS = {0: "RAW", 1: "CONSTANT", 2: "RANS0", 3: "RANS0_PAIRS"}  # section 6
SOURCE_KINDS = {0: "arrays", 1: "safetensors", 2: "GGUF"}  # section 4.2
SEGMENT_TENSOR, SEGMENT_BLOB, SEGMENT_CODED_BLOB = 0, 1, 2  # section 4.2, Segment_Kind
LIMITS = {  # section 9 defaults
    "header": 1 << 30, "tensor count": 1 << 22, "metadata count": 1 << 20, "string": 128 << 20, "ndim": 64,
    "chunk size": 64 << 20, "segment count": 1 << 24, "tensor size": 1 << 62, "expansion": 1 << 22, "work": 1 << 16,
}
# section 4.5: Kind -> (kind, scheme, roles of the Parts in order); Dtype ids of a rebuilt tensor
TRANSFORM_KINDS = {0: ("quantize", "symmetric", ("q", "scale")), 1: ("quantize", "affine", ("q", "scale", "min")),
                   2: ("factorize", "", ("u", "v"))}
TRANSFORM_DTYPES = {8: "F16", 9: "BF16", 12: "F32"}
LEGACY_KEY = "llmcodec.transforms"  # section 10.2
DELTA_TRANSFORMS = {1: "DIFF", 2: "SUB"}  # section 11.1


@dataclass
class RefTensor:
    dtype: str  # section 4.4 name, e.g. "BF16"
    shape: tuple[int, ...]
    data: bytes  # raw little-endian bytes (section 1)


@dataclass
class RefTransform:  # section 4.5 (or 10.2), checked
    kind: str  # "quantize" or "factorize"
    scheme: str  # quantize: "symmetric" or "affine"
    dtype: str  # F16, BF16 or F32
    rows: int
    cols: int
    bits: int
    group_size: int
    rank: int
    relative_error: float
    parts: dict[str, str]  # role -> stored tensor name


@dataclass
class RefDelta:  # section 4.6: one Delta record, checked
    base_tensor: str  # the Name of the base tensor it needs
    transform: str  # DIFF or SUB (section 11.1)
    base_checksums: list[int]  # one per chunk (section 11.2)


@dataclass
class RefBase:  # section 4.6: the Base section
    name: str  # Base_Name
    files: list[tuple[str, int, bytes]]  # (Path, Size, SHA256) of each Base_File
    deltas: dict[str, RefDelta]  # by the name of the delta tensor


@dataclass
class Decoded:
    major: int
    minor: int
    metadata: dict[str, str]  # user metadata
    tensors: dict[str, RefTensor]  # the model's tensors in file order, transformed ones rebuilt (section 10.1)
    source_kind: int
    original: bytes | None  # the rebuilt original file when source_kind != 0
    transforms: dict[str, RefTransform]
    base: RefBase | None = None  # section 4.6, in a file with delta tensors


@dataclass
class _Tensor:  # a section 4.3 record, checked but not yet decoded
    name: str
    dtype: int
    shape: tuple[int, ...]
    numel: int  # elements (section 1): values, or blocks of a block dtype
    itemsize: int
    layout: int
    fields: list[tuple[int | None, int]]  # section 5: (offset, width) in the element of each plane's bytes;
    # offset None: the quants plane of BLOCK_QUANTS (5.1), `width` quants per block
    chunk_elements: int
    chunks: list[tuple[int, int, list[tuple[int, int, int]]]]  # (Offset, Checksum, [(Method, Parameter, Length)])


class _Reader:
    """A cursor over `buf`; reading past its end raises `error`: TruncatedError in the header (section 4),
    FormatError in a plane stream, whose Length is then wrong (section 6)."""

    def __init__(self, buf: bytes, where: str, error: type[Exception]):
        self.buf, self.pos, self.where, self.error = buf, 0, where, error

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field: str) -> bytes:
        if n > self.remaining:
            raise self.error(f"{self.where}: {field} needs {n} bytes at offset {self.pos}, only {self.remaining} left")
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def uint(self, size: int, field: str) -> int:  # section 1: little-endian, unsigned
        return int.from_bytes(self.take(size, field), "little")


def _limit(value: int, limit: str, field: str) -> None:  # section 9
    if value > LIMITS[limit]:
        raise LimitExceededError(f"{field} is {value}, over the {limit} limit {LIMITS[limit]}")


def _utf8(b: bytes, field: str) -> str:  # section 1
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{field} is not valid UTF-8: {e}") from None


def _preamble(data: bytes) -> tuple[int, int, int, int]:
    """Section 3, checked in the order it prescribes; returns (major, minor, Header_Offset, Header_Checksum)."""
    if len(data) < PREAMBLE:
        raise TruncatedError(f"file is {len(data)} bytes, shorter than the {PREAMBLE}-byte preamble")
    if data[:8] != MAGIC:
        raise FormatError(f"Magic must be {MAGIC!r}, found {data[:8]!r}: not an llmcodec file")
    major, minor, flags, offset, length, header_sum, preamble_sum = struct.unpack_from("<HHIQQII", data, 8)
    computed = _xxh64(data[:36]) & 0xFFFFFFFF
    if preamble_sum != computed:
        raise ChecksumError(f"Preamble_Checksum: stored {preamble_sum:#010x}, computed {computed:#010x}")
    if major != 1:
        raise UnsupportedVersionError(f"Major_Version must be 1, found {major}")
    if flags != 0:
        raise FormatError(f"Flags are reserved and must be 0, found {flags:#x}")
    if offset < PREAMBLE:
        raise FormatError(f"Header_Offset must be >= {PREAMBLE}, found {offset}")
    if length < 9:
        raise FormatError(f"Header_Length must be >= 9, found {length}")
    _limit(length, "header", "Header_Length")
    if offset + length != len(data):
        error = TruncatedError if offset + length > len(data) else FormatError
        raise error(f"Header_Offset + Header_Length must be the file size {len(data)}, found {offset} + {length}")
    return major, minor, offset, header_sum


def _string(r: _Reader, field: str) -> str:  # section 4.1
    n = r.uint(4, f"{field}_Length")
    _limit(n, "string", f"{field}_Length")
    return _utf8(r.take(n, field), field)


def _source(r: _Reader, tensor_count: int) -> tuple[int, int, bytes, list[tuple[int, ...]]]:
    """Section 4.2: (Source_Kind, Original_Size, Original_SHA256, segments); fields of the other kind are absent."""
    kind = r.uint(1, "Source_Kind")
    if kind not in SOURCE_KINDS:
        raise UnsupportedFeatureError(f"Source_Kind {kind} is not a known id")
    if kind == 0:
        return kind, 0, b"", []
    size, sha = r.uint(8, "Original_Size"), r.take(32, "Original_SHA256")
    count = r.uint(4, "Segment_Count")
    _limit(count, "segment count", "Segment_Count")
    segments = []
    for i in range(count):
        seg = r.uint(1, f"segment {i} Segment_Kind")
        if seg in (SEGMENT_TENSOR, SEGMENT_CODED_BLOB):
            index = r.uint(4, f"segment {i} Tensor_Index")
            if index >= tensor_count:
                raise FormatError(f"segment {i}: Tensor_Index must be < Tensor_Count {tensor_count}, found {index}")
            segments.append((seg, index))
        elif seg == SEGMENT_BLOB:  # (kind, Blob_Offset, Blob_Length, Blob_Checksum)
            fields = ("Blob_Offset", "Blob_Length", "Blob_Checksum")
            segments.append((seg, *(r.uint(8, f"segment {i} {f}") for f in fields)))
        else:
            raise UnsupportedFeatureError(f"segment {i}: Segment_Kind {seg} is not a known id")
    return kind, size, sha, segments


def _tensor(r: _Reader) -> _Tensor:
    """Section 4.3: one Tensor record, field by field."""
    name = _utf8(r.take(r.uint(2, "Name_Length"), "Name"), "Name")
    where = f"tensor {name!r}"
    dtype = r.uint(1, f"{where} Dtype")
    if dtype not in DTYPES:
        raise UnsupportedFeatureError(f"{where}: Dtype {dtype} is not a known id")
    itemsize = DTYPES[dtype][1]
    ndim = r.uint(1, f"{where} Ndim")
    _limit(ndim, "ndim", f"{where}: Ndim")
    shape = tuple(r.uint(8, f"{where} Shape") for _ in range(ndim))
    numel = math.prod(shape)
    if dtype in BLOCK_DTYPES:  # section 1: an element is a block
        block_size = BLOCK_DTYPES[dtype][2]
        if not shape or shape[-1] % block_size:
            raise FormatError(f"{where}: Shape {list(shape)} must end in a multiple of the block size {block_size}")
        numel //= block_size
    _limit(numel * itemsize, "tensor size", f"{where}: elements x itemsize")  # Python ints cannot overflow
    layout = r.uint(1, f"{where} Layout")
    if layout not in LAYOUTS:
        raise UnsupportedFeatureError(f"{where}: Layout {layout} is not a known id")
    block_layout = layout in (BLOCK_FIELDS, BLOCK_QUANTS)  # section 5: block dtypes use these, and only they
    if (block_layout != (dtype in BLOCK_DTYPES) or LAYOUTS[layout][1] not in (None, itemsize)
            or layout == BLOCK_QUANTS and dtype not in QUANT_DTYPES):
        raise FormatError(f"{where}: Layout {LAYOUTS[layout][0]} does not fit dtype {DTYPES[dtype][0]}")
    if layout == BLOCK_FIELDS:
        fields = BLOCK_DTYPES[dtype][3]
    elif layout == BLOCK_QUANTS:  # section 5.1: the fields but qs (ql) and qh, then the quants plane
        _, low_at, high_at = QUANT_DTYPES[dtype]
        fields = [f for f in BLOCK_DTYPES[dtype][3] if f[0] not in (low_at, high_at)] + [(None, BLOCK_DTYPES[dtype][2])]
    else:
        fields = [(k, 1) for k in range(itemsize)]
    chunk_elements = r.uint(8, f"{where} Chunk_Elements")
    if chunk_elements < 1:
        raise FormatError(f"{where}: Chunk_Elements must be >= 1, found 0")
    _limit(chunk_elements * itemsize, "chunk size", f"{where}: Chunk_Elements x itemsize")
    count, expected = r.uint(8, f"{where} Chunk_Count"), -(-numel // chunk_elements)
    if count != expected:
        raise FormatError(f"{where}: Chunk_Count must be ceil({numel} / {chunk_elements}) = {expected}, found {count}")
    record = 16 + 6 * len(fields)  # Offset, Checksum, P x (Method u8, Parameter u8, Length u32)
    if count * record > r.remaining:  # section 8: lengths against what remains, before the loop
        raise TruncatedError(f"{where}: {count} chunks need {count * record} header bytes, only {r.remaining} left")
    chunks = []
    for c in range(count):
        at = f"{where} chunk {c}"
        offset, checksum = r.uint(8, f"{at} Offset"), r.uint(8, f"{at} Checksum")
        planes = [(r.uint(1, f"{at} Method"), r.uint(1, f"{at} Parameter"), r.uint(4, f"{at} Length"))
                  for _ in fields]
        chunks.append((offset, checksum, planes))
    return _Tensor(name, dtype, shape, numel, itemsize, layout, fields, chunk_elements, chunks)


def _header(header: bytes, minor: int) -> tuple:
    """Section 4: the whole header, which must be consumed exactly; returns (metadata, source, tensors,
    transforms, base), the transforms of section 4.5, or of the metadata entry of section 10.2 in an older
    file, and the Base section of 4.6 (or None)."""
    r = _Reader(header, "header", TruncatedError)
    tensor_count = r.uint(4, "Tensor_Count")
    _limit(tensor_count, "tensor count", "Tensor_Count")
    metadata_count = r.uint(4, "Metadata_Count")
    _limit(metadata_count, "metadata count", "Metadata_Count")
    metadata: dict[str, str] = {}
    for _ in range(metadata_count):  # section 4.1
        key, value = _string(r, "Key"), _string(r, "Value")
        if key in metadata:
            raise FormatError(f"metadata Key {key!r} appears twice, keys must be unique")
        metadata[key] = value
    source = _source(r, tensor_count)
    tensors, names = [], set()
    for _ in range(tensor_count):
        tensors.append(_tensor(r))
        if tensors[-1].name in names:
            raise FormatError(f"tensor Name {tensors[-1].name!r} appears twice, names must be unique")
        names.add(tensors[-1].name)
    transforms: dict[str, RefTransform] = {}
    base = None
    if minor >= 2 and r.remaining:  # section 4.5: the Transforms section, since 1.2
        count = r.uint(4, "Transform_Count")
        if count == 0 and not (minor >= 3 and r.remaining):  # 0 only before a Base section (since 1.3)
            raise FormatError("Transform_Count must be >= 1, found 0 with no Base section after it")
        _limit(count, "tensor count", "Transform_Count")
        for _ in range(count):
            name, t = _transform(r, tensors)
            if name in transforms:
                raise FormatError(f"transform Name {name!r} appears twice, names must be unique")
            transforms[name] = t
        if minor >= 3 and r.remaining:  # section 4.6: the Base section, since 1.3
            base = _base(r, tensors)
    if r.remaining:
        raise FormatError(f"header: {r.remaining} bytes left over after its last structure, expected 0")
    if minor < 2 and source[0] == 0 and LEGACY_KEY in metadata:  # section 10.2: format data, not user metadata
        transforms = _legacy_transforms(metadata.pop(LEGACY_KEY))
    if transforms and source[0] != 0:
        raise FormatError(f"a file with transforms must have Source_Kind 0, found {source[0]}")
    _check_transforms(transforms, tensors)
    if base is not None:  # section 4.6: a delta tensor is neither a coded blob nor a transform's part
        hidden = {tensors[seg[1]].name for seg in source[3] if seg[0] == SEGMENT_CODED_BLOB}
        parts = {part for t in transforms.values() for part in t.parts.values()}
        for name in base.deltas:
            if name in hidden or name in parts:
                raise FormatError(f"Delta of tensor {name!r}: a coded blob or a transform's part cannot be a delta")
    return metadata, source, tensors, transforms, base


def _base(r: _Reader, tensors: list[_Tensor]) -> RefBase:
    """Section 4.6: the Base section, field by field."""
    name = _utf8(r.take(r.uint(2, "Base_Name_Length"), "Base_Name"), "Base_Name")
    file_count = r.uint(4, "File_Count")
    _limit(file_count, "tensor count", "File_Count")
    files = []
    for i in range(file_count):
        path = _utf8(r.take(r.uint(2, f"Base_File {i} Path_Length"), f"Base_File {i} Path"), f"Base_File {i} Path")
        if path in (f[0] for f in files):
            raise FormatError(f"Base_File Path {path!r} appears twice, paths must be unique")
        files.append((path, r.uint(8, f"Base_File {path!r} Size"), r.take(32, f"Base_File {path!r} SHA256")))
    delta_count = r.uint(4, "Delta_Count")
    if delta_count == 0:
        raise FormatError("Delta_Count must be >= 1, found 0")
    deltas, previous = {}, -1
    for i in range(delta_count):
        index = r.uint(4, f"Delta {i} Tensor_Index")
        if not previous < index < len(tensors):
            raise FormatError(f"Delta {i}: Tensor_Index must be > {previous} (the previous one) and < Tensor_Count "
                              f"{len(tensors)}, found {index}")
        previous, t = index, tensors[index]
        where = f"Delta of tensor {t.name!r}"
        base_tensor = _utf8(r.take(r.uint(2, f"{where} Name_Length"), f"{where} Name"), f"{where} Name")
        transform = r.uint(1, f"{where} Transform")
        if transform not in DELTA_TRANSFORMS:
            raise UnsupportedFeatureError(f"{where}: Transform {transform} is not a known id")
        if 8 * len(t.chunks) > r.remaining:  # section 8: lengths against what remains, before the loop
            raise TruncatedError(f"{where}: {len(t.chunks)} Base_Checksums need {8 * len(t.chunks)} header bytes, "
                                 f"only {r.remaining} left")
        checksums = [r.uint(8, f"{where} Base_Checksums") for _ in t.chunks]
        deltas[t.name] = RefDelta(base_tensor, DELTA_TRANSFORMS[transform], checksums)
    return RefBase(name, files, deltas)


def _transform(r: _Reader, tensors: list[_Tensor]) -> tuple[str, RefTransform]:
    """Section 4.5: one Transform record, field by field; _check_transforms checks its values."""
    name = _utf8(r.take(r.uint(2, "transform Name_Length"), "transform Name"), "transform Name")
    where = f"transform {name!r}"
    kind = r.uint(1, f"{where} Kind")
    if kind not in TRANSFORM_KINDS:
        raise UnsupportedFeatureError(f"{where}: Kind {kind} is not a known id")
    dtype = r.uint(1, f"{where} Dtype")
    if dtype not in TRANSFORM_DTYPES:
        raise FormatError(f"{where}: Dtype must be 8 (F16), 9 (BF16) or 12 (F32), found {dtype}")
    rows, cols = r.uint(8, f"{where} Rows"), r.uint(8, f"{where} Cols")
    bits, group_size, rank = r.uint(1, f"{where} Bits"), r.uint(8, f"{where} Group_Size"), r.uint(8, f"{where} Rank")
    (relative_error,) = struct.unpack("<d", r.take(8, f"{where} Relative_Error"))
    kind_name, scheme, roles = TRANSFORM_KINDS[kind]
    parts = {}
    for role in roles:
        index = r.uint(4, f"{where} Parts")
        if index >= len(tensors):
            raise FormatError(f"{where}: part {role} Tensor_Index must be < Tensor_Count {len(tensors)}, found {index}")
        parts[role] = tensors[index].name
    return name, RefTransform(kind_name, scheme, TRANSFORM_DTYPES[dtype], rows, cols, bits, group_size, rank,
                              relative_error, parts)


def _legacy_transforms(text: str) -> dict[str, RefTransform]:
    """Section 10.2: the JSON record of a file before 1.2, field by field."""
    def bad(why: str) -> FormatError:
        return FormatError(f"metadata {LEGACY_KEY!r}: {why}")

    def integer(digits: str) -> int:
        if len(digits) > 20:
            raise ValueError(f"an integer of {len(digits)} digits")
        return int(digits)

    try:
        record = json.loads(text, parse_int=integer)
    except (ValueError, RecursionError) as e:
        raise bad(f"not JSON the record can be: {e}") from None
    if not isinstance(record, dict):
        raise bad("must be a JSON object")
    out = {}
    for name, m in record.items():
        # JSON can escape a lone surrogate, which UTF-8 (section 1) cannot hold
        _utf8(name.encode("utf-8", "surrogatepass"), f"transformed tensor name {name!r}")
        if not isinstance(m, dict):
            raise bad(f"the record of {name!r} must be an object")
        kind, scheme, dtype, shape, parts = (m.get(k) for k in ("kind", "scheme", "dtype", "shape", "parts"))
        ints = [m.get(k, 0) for k in ("bits", "group_size", "rank", "original_bytes")]
        error = m.get("relative_error", 0.0)
        scheme = "" if kind == "factorize" else scheme
        found = [k for k, (kd, sch, _) in TRANSFORM_KINDS.items() if (kd, sch) == (kind, scheme)]
        if not found:
            raise bad(f"{name!r}: kind {kind!r} and scheme {scheme!r} are not a known kind")
        if dtype not in TRANSFORM_DTYPES.values():
            raise bad(f"{name!r}: dtype must be F16, BF16 or F32, found {dtype!r}")
        if not (isinstance(shape, list) and len(shape) == 2 and all(type(d) is int for d in shape)
                and all(type(v) is int for v in ints)):
            raise bad(f"{name!r}: shape, bits, group_size, rank and original_bytes must be integers")
        if not (type(error) in (int, float) and math.isfinite(error)):
            raise bad(f"{name!r}: relative_error must be a finite number, found {error!r}")
        roles = TRANSFORM_KINDS[found[0]][2]
        if not (isinstance(parts, dict) and set(parts) == set(roles) and all(type(p) is str for p in parts.values())):
            raise bad(f"{name!r}: parts must name the roles {roles}, found {parts!r}")
        bits, group_size, rank, original_bytes = ints
        itemsize = {"F16": 2, "BF16": 2, "F32": 4}[dtype]
        if original_bytes != shape[0] * shape[1] * itemsize:
            raise bad(f"{name!r}: original_bytes must be rows x cols x {itemsize}, found {original_bytes}")
        out[name] = RefTransform(kind, scheme, dtype, shape[0], shape[1], bits, group_size, rank, float(error),
                                 {role: parts[role] for role in roles})
    return out


def _check_transforms(transforms: dict[str, RefTransform], tensors: list[_Tensor]) -> None:
    """Sections 4.5 and 10: each transform's values, and its parts' dtypes and shapes; no tensor is a part twice."""
    by_name = {t.name: t for t in tensors}
    used = set()
    for name, t in transforms.items():
        where = f"transform {name!r}"
        if name in by_name:
            raise FormatError(f"{where}: Name must not be a tensor's Name")
        if t.rows < 1 or t.cols < 1:
            raise FormatError(f"{where}: Rows and Cols must be >= 1, found {t.rows} x {t.cols}")
        _limit(t.rows * t.cols * {"F16": 2, "BF16": 2, "F32": 4}[t.dtype], "tensor size", f"{where}: size")
        if t.kind == "quantize":
            g = t.group_size or t.cols
            if t.bits not in (4, 8) or g < 1 or t.cols % g or t.rank != 0:
                raise FormatError(f"{where}: Bits must be 4 or 8, Group_Size 0 or a divisor of Cols {t.cols}, "
                                  f"Rank 0; found {t.bits}, {t.group_size}, {t.rank}")
            want = {"q": ("I8" if t.scheme == "symmetric" else "U8", (t.rows, t.cols)),
                    "scale": ("F32", (t.rows, t.cols // g)), "min": ("F32", (t.rows, t.cols // g))}
        else:
            if not 1 <= t.rank <= min(t.rows, t.cols) or t.bits != 0 or t.group_size != 0:
                raise FormatError(f"{where}: Rank must be in 1..min(Rows, Cols), Bits and Group_Size 0; "
                                  f"found {t.rank}, {t.bits}, {t.group_size}")
            want = {"u": ("F32", (t.rows, t.rank)), "v": ("F32", (t.rank, t.cols))}
        for role, part in t.parts.items():
            if part not in by_name:
                raise FormatError(f"{where}: part {role} {part!r} is not a tensor of the file")
            if part in used:
                raise FormatError(f"{where}: tensor {part!r} is a part twice")
            used.add(part)
            found = (DTYPES[by_name[part].dtype][0], by_name[part].shape)
            if found != want[role]:
                raise FormatError(f"{where}: part {role} must be {want[role]}, found {found}")


def _f32(x: float) -> float:
    """x rounded to binary32, to nearest even (struct rounds as C does; a result past the largest
    binary32 is an infinity, which struct refuses to pack)."""
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def _as_dtype(x: float, dtype: str) -> bytes:
    """Section 10.1: a binary32 value converted to the tensor's dtype, to nearest even, little-endian."""
    if dtype == "F32":
        return struct.pack("<f", x)
    if dtype == "F16":
        try:
            return struct.pack("<e", x)
        except OverflowError:
            return struct.pack("<H", 0xFC00 if x < 0 else 0x7C00)
    bits = struct.unpack("<I", struct.pack("<f", x))[0]  # BF16: the high half of the binary32, rounded
    if math.isnan(x):
        return struct.pack("<H", (bits >> 16) | 0x40)
    return struct.pack("<H", (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16)


def _rebuild(t: RefTransform, parts: dict[str, RefTensor]) -> bytes:
    """Section 10.1, element by element, in binary64 Python floats rounded to binary32 where the text says."""
    def values(role: str, fmt: str) -> list:
        data = parts[role].data
        return list(struct.unpack(f"<{len(data) // struct.calcsize(fmt)}{fmt}", data))

    out = bytearray()
    if t.kind == "quantize":
        g = t.group_size or t.cols
        q = values("q", "b" if t.scheme == "symmetric" else "B")
        scale = values("scale", "f")
        low = values("min", "f") if t.scheme == "affine" else None
        for i in range(t.rows):
            for j in range(t.cols):
                k = i * (t.cols // g) + j // g
                x = _f32(q[i * t.cols + j] * scale[k])  # exact in binary64, then rounded once
                if low is not None:
                    x = _f32(x + low[k])
                out += _as_dtype(x, t.dtype)
        return bytes(out)
    u, v = values("u", "f"), values("v", "f")
    for i in range(t.rows):
        for j in range(t.cols):
            s = 0.0
            for k in range(t.rank):
                s += u[i * t.rank + k] * v[k * t.cols + j]  # binary64 products and sums, in order
            out += _as_dtype(_f32(s), t.dtype)
    return bytes(out)


def _check_ranges(ranges: list[tuple[int, int, str]], header_offset: int) -> None:
    """Section 4.3: every range [start, start + length), empty ones included, lies in [40, Header_Offset);
    no non-empty range overlaps another (an empty range holds no byte, so it overlaps nothing)."""
    for start, length, what in ranges:
        if start < PREAMBLE or start + length > header_offset:
            raise FormatError(f"{what}: range [{start}, {start + length}) must lie in the data section "
                              f"[{PREAMBLE}, {header_offset})")
    spans = sorted((start, start + length, what) for start, length, what in ranges if length)
    for (_, end0, what0), (start1, _, what1) in zip(spans, spans[1:]):
        if start1 < end0:
            raise FormatError(f"{what1} starts at {start1}, inside {what0} ending at {end0}: ranges must not overlap")


def _bitmap(r: _Reader, nbytes: int, count: int, field: str) -> list[int]:
    """Sections 6.1, 6.4: the set bits in ascending order (bit i is bit i & 7, LSB first, of byte i >> 3); not empty.
    Bits past `count` (padding of the Pair_Bitmap's last byte) are rejected as reserved (section 1)."""
    bits = r.take(nbytes, field)
    found = [i for i in range(8 * nbytes) if bits[i >> 3] >> (i & 7) & 1]
    if not found:
        raise FormatError(f"{r.where}: {field} must not be empty")
    if found[-1] >= count:
        raise FormatError(f"{r.where}: {field} has padding bit {found[-1]} set, bits >= {count} must be 0")
    return found


def _precision_and_lanes(r: _Reader, max_precision: int) -> tuple[int, int]:  # sections 6.1, 6.4
    precision, lanes = r.uint(1, "Precision"), r.uint(1, "Lanes")
    if not 1 <= precision <= max_precision:
        raise FormatError(f"{r.where}: Precision must be in 1..{max_precision}, found {precision}")
    if not 1 <= lanes <= 64:
        raise FormatError(f"{r.where}: Lanes must be in 1..64, found {lanes}")
    return precision, lanes


def _states_and_words(r: _Reader, lanes: int) -> tuple[list[int], list[int]]:  # section 6.1
    states = [r.uint(4, "States") for _ in range(lanes)]  # FormatError if no room for them
    for j, x in enumerate(states):
        if x < L:
            raise FormatError(f"{r.where}: state of lane {j} must be in [2^16, 2^32), found {x}")
    rest = r.take(r.remaining, "Words")
    if len(rest) % 2:
        raise FormatError(f"{r.where}: Words take {len(rest)} bytes, expected an even number")
    return states, list(struct.unpack(f"<{len(rest) // 2}H", rest))


def _slots(symbols: list[tuple[int, int]], precision: int, where: str) -> list[tuple[int, int, int]]:
    """Sections 6.1, 6.4: the frequencies f_s must add up to M = 2^P; slot -> (s, f_s, c_s), c_s <= slot < c_s + f_s."""
    total = sum(f for _, f in symbols)
    if total != 1 << precision:
        raise FormatError(f"{where}: Frequencies must add up to 2^{precision} = {1 << precision}, found {total}")
    table, c = [], 0
    for s, f in symbols:
        table += [(s, f, c)] * f
        c += f
    return table


def _rans_decode(table, precision: int, states: list[int], words: list[int], n: int, where: str) -> list[int]:
    """Section 6.2, literally: n symbols, symbol i from lane i mod N."""
    x, lanes, pos, out = list(states), len(states), 0, []
    for i in range(n):
        j = i % lanes
        slot = x[j] & ((1 << precision) - 1)
        s, f, c = table[slot]
        out.append(s)
        x[j] = f * (x[j] >> precision) + slot - c
        if x[j] < L:  # at most one word per symbol
            if pos == len(words):
                raise FormatError(f"{where}: rANS stream ends early, at symbol {i} of {n}")
            x[j] = (x[j] << 16) | words[pos]
            pos += 1
    if any(v != L for v in x) or pos != len(words):
        raise FormatError(f"{where}: rANS end must be every state {L} with all {len(words)} words read, "
                          f"found states {x} after {pos} words")
    return out


def _rans0(r: _Reader, n: int) -> Callable[[], bytes]:
    """Section 6.1: check the stream's table; the returned function decodes the plane (6.2)."""
    precision, lanes = _precision_and_lanes(r, 12)
    symbols = [(s, r.uint(2, "Frequencies") + 1) for s in _bitmap(r, 32, 256, "Symbol_Bitmap")]
    states, words = _states_and_words(r, lanes)
    table = _slots(symbols, precision, r.where)
    return lambda: bytes(_rans_decode(table, precision, states, words, n, r.where))


def _rans0_pairs(r: _Reader, n: int) -> Callable[[], bytes]:
    """Section 6.4: check the stream's table; the returned function decodes the plane (6.2 on 16-bit pairs)."""
    if n < 2:
        raise FormatError(f"{r.where}: RANS0_PAIRS needs a plane of at least 2 bytes, this one has {n}")
    precision, lanes = _precision_and_lanes(r, 14)
    odd = r.uint(1, "Odd_Byte")
    if n % 2 == 0 and odd != 0:
        raise FormatError(f"{r.where}: Odd_Byte must be 0 when n = {n} is even, found {odd}")
    byte_set = _bitmap(r, 32, 256, "Byte_Bitmap")
    s = len(byte_set)
    symbols = []
    for bit in _bitmap(r, (s * s + 7) // 8, s * s, "Pair_Bitmap"):  # bitmap order: first byte, then second byte
        v = r.uint(1, "Frequencies")
        if v >= 0x80:  # ULEB128 in two bytes: 0x80 | (v & 0x7F), then v >> 7 in 1..127
            high = r.uint(1, "Frequencies")
            if not 1 <= high <= 127:
                raise FormatError(f"{r.where}: second ULEB128 byte of a Frequency must be in 1..127, found {high}")
            v = (v & 0x7F) | high << 7
        symbols.append((byte_set[bit // s] | byte_set[bit % s] << 8, v + 1))  # u = first | second << 8
    used = {u & 0xFF for u, _ in symbols} | {u >> 8 for u, _ in symbols}
    if used != set(byte_set):
        raise FormatError(f"{r.where}: Byte_Bitmap holds bytes {sorted(set(byte_set) - used)} that occur in no pair")
    states, words = _states_and_words(r, lanes)
    table = _slots(symbols, precision, r.where)

    def decode_plane() -> bytes:
        pairs = _rans_decode(table, precision, states, words, n // 2, r.where)
        return b"".join(bytes((u & 0xFF, u >> 8)) for u in pairs) + bytes([odd] * (n % 2))
    return decode_plane


def _plane(method: int, parameter: int, stream: bytes, n: int, where: str) -> Callable[[], bytes]:
    """Section 6 (and 7 step 1): check one Plane_Ref and its stream; return a function decoding its n bytes."""
    if method not in METHODS:
        raise UnsupportedFeatureError(f"{where}: Method {method} is not a known id")
    if method != 1 and parameter != 0:
        raise FormatError(f"{where}: Parameter of {METHODS[method]} is reserved and must be 0, found {parameter}")
    expected = {0: n, 1: 0}.get(method)  # RAW: exactly n; CONSTANT: exactly 0; RANS0*: checked by their parser
    if expected is not None and len(stream) != expected:
        raise FormatError(f"{where}: Length of {METHODS[method]} must be {expected}, found {len(stream)}")
    if method == 0:
        return lambda: stream
    if method == 1:
        return lambda: bytes([parameter]) * n
    return (_rans0 if method == 2 else _rans0_pairs)(_Reader(stream, where, FormatError), n)


def _unplane(layout: int, planes: list[bytes], itemsize: int, fields: list[tuple[int | None, int]], dtype: int = 0,
             where: str = "chunk") -> bytes:
    """Section 5: the inverse of the layout, element by element; each element is written little-endian.
    BLOCK_QUANTS needs the Dtype id, and checks its quants plane first (check 53, FormatError naming `where`)."""
    out = bytearray()
    if layout == BLOCK_QUANTS:  # section 5.1: the other fields in place, qs (ql) and qh rebuilt from the quants
        bits, low_at, high_at = QUANT_DTYPES[dtype]
        quants, size = planes[-1], fields[-1][1]
        if quants and max(quants) >> bits:
            k = next(k for k, q in enumerate(quants) if q >> bits)
            raise FormatError(f"{where}: quants plane byte {k} (quant {k % size} of block {k // size}) is {quants[k]}, "
                              f"must be below 2^{bits} = {1 << bits} (check 53: a corrupt plane)")
        for e in range(len(quants) // size):
            block = bytearray(itemsize)
            for p, (offset, width) in zip(planes, fields[:-1]):
                block[offset:offset + width] = p[e * width:(e + 1) * width]
            low, high = _quant_fields(dtype, quants[e * size:(e + 1) * size])
            block[low_at:low_at + len(low)] = low
            block[high_at:high_at + len(high)] = high
            out += block
        return bytes(out)
    if layout == BLOCK_FIELDS:  # plane j holds bytes [offset_j, offset_j + width_j) of each element
        n = len(planes[0]) // fields[0][1]
        for e in range(n):
            block = bytearray(itemsize)
            for p, (offset, width) in zip(planes, fields):
                block[offset:offset + width] = p[e * width:(e + 1) * width]
            out += block
        return bytes(out)
    for p in zip(*planes):
        if layout == 0:  # BYTES
            v = sum(b << (8 * k) for k, b in enumerate(p))
        elif layout == 1:  # FIELDS16
            v = ((p[1] & 0x80) << 8) | (p[0] << 7) | (p[1] & 0x7F)
        else:  # FIELDS32
            v = ((p[1] & 0x80) << 24) | (p[0] << 23) | ((p[1] & 0x7F) << 16) | (p[2] << 8) | p[3]
        out += v.to_bytes(itemsize, "little")
    return bytes(out)


def _quant_fields(dtype: int, q: bytes) -> tuple[bytes, bytes]:
    """Section 5.1, the inverse: a block's qs (Q6_K: ql) and qh from its quants `q`; each bit of them is a bit of
    one quant: its low 4 bits are a nibble of qs (ql), its bit 4 (Q6_K: bits 4 and 5) are in qh."""
    name = BLOCK_DTYPES[dtype][0]
    if name in ("GGML_Q5_0", "GGML_Q5_1"):  # qs[j]: quants j and 16 + j; bit i of qh[j]: quant 8j + i
        qs = _nibbles(q[:16], q[16:])
        qh = _high_bits([q[i::8] for i in range(8)], 1)
    elif name == "GGML_Q5_K":  # qs[32g + j]: quants 64g + j and 64g + 32 + j; bit i of qh[j]: quant 32i + j
        qs = b"".join(_nibbles(q[64 * g:64 * g + 32], q[64 * g + 32:64 * g + 64]) for g in range(4))
        qh = _high_bits([q[32 * i:32 * i + 32] for i in range(8)], 1)
    else:  # Q6_K: ql[64h + j]: quants 128h + j and 128h + 64 + j; bits 2t, 2t+1 of qh[32h + j]: quant 128h + 32t + j
        qs = b"".join(_nibbles(q[128 * h:128 * h + 64], q[128 * h + 64:128 * h + 128]) for h in range(2))
        qh = b"".join(_high_bits([q[128 * h + 32 * t:128 * h + 32 * t + 32] for t in range(4)], 2) for h in range(2))
    return qs, qh


def _nibbles(low: bytes, high: bytes) -> bytes:
    """Byte j: the low 4 bits of low[j] in its low nibble, those of high[j] in its high nibble."""
    return bytes(a & 0x0F | (b & 0x0F) << 4 for a, b in zip(low, high))


def _high_bits(parts: list[bytes], step: int) -> bytes:
    """Byte j: the bits from bit 4 up of parts[i][j] at bit step x i, for each i."""
    out = [0] * len(parts[0])
    for i, part in enumerate(parts):
        out = [o | (v >> 4) << step * i for o, v in zip(out, part)]
    return bytes(out)


def _undelta(transform: str, d: bytes, b: bytes, word: int) -> bytes:
    """Section 11.1: the fine-tune's words from the delta words `d` and the base's words `b`, one by one,
    as the table and unzigzag's two cases say."""
    m, out = 1 << (8 * word), bytearray()
    for k in range(0, len(d), word):
        dk, bk = int.from_bytes(d[k:k + word], "little"), int.from_bytes(b[k:k + word], "little")
        if transform == "SUB":  # f = (b + d) mod 2^w
            f = (bk + dk) % m
        else:  # DIFF: f = (b + unzigzag(d)) mod 2^w
            f = (bk + (dk // 2 if dk % 2 == 0 else m - (dk + 1) // 2)) % m
        out += f.to_bytes(word, "little")
    return bytes(out)


def _base_tensors(base_section: RefBase, tensors: list[_Tensor], base) -> dict[str, bytes]:
    """Sections 11.2 and 8 (checks 51, 52): the raw bytes of each delta tensor's base tensor, by the delta
    tensor's name, after checking its dtype, shape and the Base_Checksum of every chunk's range."""
    needs = f"base {base_section.name!r} (files: " + (", ".join(
        f"{path} {size} bytes SHA-256 {sha.hex()}" for path, size, sha in base_section.files) or "none") + ")"
    if base is None:
        raise BaseError(f"the file stores tensors as deltas against {needs}; no base was given")
    out = {}
    for t in tensors:
        delta = base_section.deltas.get(t.name)
        if delta is None:
            continue
        where = f"tensor {t.name!r} (a delta against base tensor {delta.base_tensor!r} of {needs})"
        found = base(delta.base_tensor) if callable(base) else base.get(delta.base_tensor)
        if found is None:
            raise BaseError(f"{where}: the base given has no tensor {delta.base_tensor!r}")
        if isinstance(found, RefTensor):
            if (found.dtype, tuple(found.shape)) != (DTYPES[t.dtype][0], t.shape):
                raise BaseError(f"{where}: the base tensor is {found.dtype} {list(found.shape)}, expected "
                                f"{DTYPES[t.dtype][0]} {list(t.shape)}")
            found = found.data
        found = bytes(found)
        if len(found) != t.numel * t.itemsize:
            raise BaseError(f"{where}: the base tensor has {len(found)} bytes, expected {t.numel * t.itemsize}")
        step = t.chunk_elements * t.itemsize
        for c, checksum in enumerate(delta.base_checksums):
            computed = _xxh64(found[c * step:(c + 1) * step])
            if computed != checksum:
                raise BaseError(f"{where}: chunk {c}: the base's bytes have XXH64 {computed:#018x}, the file "
                                f"expects {checksum:#018x}: not the base it was stored against")
        out[t.name] = found
    return out


def decode(data: bytes, base: Mapping | Callable | None = None) -> Decoded:
    """Check and decode a whole `.llmc` file held in memory; raises an `llmcodec.errors` class on any violation.

    `base` gives the base tensors of a file with delta tensors (section 11), by name: a mapping, or a
    function returning None for a name it lacks, of `RefTensor`s (dtype and shape checked) or raw bytes."""
    data = bytes(data)
    major, minor, header_offset, header_sum = _preamble(data)  # section 3
    header = data[header_offset:]
    if header_sum != _xxh64(header) & 0xFFFFFFFF:
        raise ChecksumError(f"Header_Checksum: stored {header_sum:#010x}, computed {_xxh64(header) & 0xFFFFFFFF:#010x}")
    header_fields = _header(header, minor)
    metadata, (source_kind, original_size, original_sha, segments), tensors, transforms, base_section = header_fields

    # Section 4.2: the segments' lengths must add up to Original_Size (a tensor segment is its raw bytes).
    total = sum(tensors[seg[1]].numel * tensors[seg[1]].itemsize if seg[0] != SEGMENT_BLOB else seg[2]
                for seg in segments)
    hidden = {seg[1] for seg in segments if seg[0] == SEGMENT_CODED_BLOB}  # not model tensors
    for index in hidden:
        t = tensors[index]
        if DTYPES[t.dtype][0] != "U8" or len(t.shape) != 1 or (SEGMENT_TENSOR, index) in segments:
            raise FormatError(f"tensor {t.name!r}: a coded blob must be U8 of Ndim 1 and named by no tensor segment")
    if source_kind != 0 and total != original_size:
        raise FormatError(f"segments must add up to Original_Size {original_size}, found {total}")

    # Section 9: what the file declares, and the work of rebuilding, against its size.
    declared = max(sum(t.numel * t.itemsize for t in tensors), original_size)
    if declared > LIMITS["expansion"] * len(data):
        raise LimitExceededError(f"the file declares {declared} bytes, over the expansion limit "
                                 f"{LIMITS['expansion']} x its {len(data)} bytes")
    work = sum(t.rows * t.cols * (t.rank if t.kind == "factorize" else 1) for t in transforms.values())
    if work > LIMITS["work"] * len(data):
        raise LimitExceededError(f"rebuilding takes {work} operations, over the work limit {LIMITS['work']} x "
                                 f"its {len(data)} bytes")

    # Section 4.3: chunk and blob ranges inside the data section, without overlaps.
    ranges = [(seg[1], seg[2], f"segment {i} blob") for i, seg in enumerate(segments) if seg[0] == SEGMENT_BLOB]
    records = {}  # identical chunk records (Offset, Checksum, Plane_Refs) share one range
    for t in tensors:
        for c, (offset, checksum, planes) in enumerate(t.chunks):
            records.setdefault((offset, checksum, tuple(planes)), f"tensor {t.name!r} chunk {c}")
    ranges += [(offset, sum(p[2] for p in planes), what) for (offset, _, planes), what in records.items()]
    _check_ranges(ranges, header_offset)

    # Sections 6, 7 step 1 and 8: check every Plane_Ref and rANS table before any plane is decoded.
    plans = []
    for t in tensors:
        for c, (offset, checksum, planes) in enumerate(t.chunks):
            n = min(t.chunk_elements, t.numel - c * t.chunk_elements)  # the last chunk holds the remainder
            decoders = []
            for k, (method, parameter, length) in enumerate(planes):  # streams lie back to back from Offset
                decoders.append(_plane(method, parameter, data[offset:offset + length], n * t.fields[k][1],
                                       f"tensor {t.name!r} chunk {c} plane {k}"))
                offset += length
            plans.append((t, c, checksum, decoders))

    # Section 11.2 (checks 51, 52): every delta tensor's base tensor, checked before any plane is decoded.
    base_bytes = _base_tensors(base_section, tensors, base) if base_section is not None else {}

    # Section 7 steps 2-5: decode the planes, invert the layout and the delta transform, check the chunk's XXH64;
    # chunks are in order.
    raw: dict[str, list[bytes]] = {t.name: [] for t in tensors}
    for t, c, checksum, decoders in plans:
        chunk = _unplane(t.layout, [decode_plane() for decode_plane in decoders], t.itemsize, t.fields, t.dtype,
                         f"tensor {t.name!r} chunk {c}")
        if t.name in base_bytes:  # section 11.2: the same byte range of the base tensor, words of 11.1
            start = c * t.chunk_elements * t.itemsize
            word = 1 if t.dtype in BLOCK_DTYPES else t.itemsize
            chunk = _undelta(base_section.deltas[t.name].transform, chunk,
                             base_bytes[t.name][start:start + len(chunk)], word)
        if _xxh64(chunk) != checksum:
            raise ChecksumError(f"tensor {t.name!r} chunk {c}: Checksum stored {checksum:#018x}, "
                                f"computed {_xxh64(chunk):#018x}")
        raw[t.name].append(chunk)
    out = {t.name: RefTensor(DTYPES[t.dtype][0], t.shape, b"".join(raw[t.name])) for t in tensors}
    # Section 10.1: the model's tensors in file order, each transformed one rebuilt where its first part is.
    owner = {part: name for name, t in transforms.items() for part in t.parts.values()}
    model = {}
    for i, t in enumerate(tensors):
        name = owner.get(t.name)
        if i in hidden or name in model:
            continue
        if name is None:
            model[t.name] = out[t.name]
        else:
            tr = transforms[name]
            parts = {role: out[part] for role, part in tr.parts.items()}
            model[name] = RefTensor(tr.dtype, (tr.rows, tr.cols), _rebuild(tr, parts))

    # Section 4.2: rebuild the original file from its segments, checking each blob and then the SHA-256.
    original = None
    if source_kind != 0:
        parts = []
        for i, seg in enumerate(segments):
            if seg[0] != SEGMENT_BLOB:  # a tensor, or a coded blob
                parts.append(out[tensors[seg[1]].name].data)
                continue
            _, blob_offset, blob_length, blob_checksum = seg
            blob = data[blob_offset:blob_offset + blob_length]
            if _xxh64(blob) != blob_checksum:
                raise ChecksumError(f"segment {i}: Blob_Checksum stored {blob_checksum:#018x}, "
                                    f"computed {_xxh64(blob):#018x}")
            parts.append(blob)
        original = b"".join(parts)
        if hashlib.sha256(original).digest() != original_sha:
            raise ChecksumError(f"Original_SHA256 stored {original_sha.hex()}, "
                                f"computed {hashlib.sha256(original).hexdigest()}")
    return Decoded(major, minor, metadata, model, source_kind, original, transforms, base_section)
