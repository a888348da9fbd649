"""A slow reference decoder that follows spec/FORMAT.md section by section.

It exists to show that the spec is complete: it uses only the standard library and `xxhash`
(for XXH64), shares no code with the fast decoder, and the tests check that both agree. It reads
a whole file from bytes and decodes every symbol in a plain Python loop, so use it on small files.

    >>> decoded = decode(open("model.llmc", "rb").read())      # doctest: +SKIP
    >>> decoded.tensors["w"].data                               # raw little-endian bytes
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

import xxhash

from .errors import (
    ChecksumError,
    FormatError,
    LimitExceededError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

MAGIC = b"\x89LLMC\r\n\x1a"
L = 1 << 16

# Section 4.4: dtype id -> (name, itemsize)
DTYPES = {1: ("BOOL", 1), 2: ("U8", 1), 3: ("I8", 1), 4: ("F8_E5M2", 1), 5: ("F8_E4M3", 1),
          6: ("I16", 2), 7: ("U16", 2), 8: ("F16", 2), 9: ("BF16", 2), 10: ("I32", 4), 11: ("U32", 4),
          12: ("F32", 4), 13: ("I64", 8), 14: ("U64", 8), 15: ("F64", 8)}
# Section 5: layout id -> required itemsize (None: any)
LAYOUTS = {0: None, 1: 2, 2: 4}
# Section 9: default limits
LIMITS = dict(header=1 << 30, tensors=1 << 20, metadata=1 << 16, string=16 << 20, ndim=32,
              chunk=64 << 20, segments=1 << 22, tensor=1 << 62)


@dataclass
class RefTensor:
    dtype: str
    shape: tuple[int, ...]
    data: bytes


@dataclass
class Decoded:
    major: int
    minor: int
    metadata: dict[str, str]
    tensors: dict[str, RefTensor] = field(default_factory=dict)
    source_kind: int = 0
    original: bytes | None = None


def xxh64(data: bytes) -> int:
    return xxhash.xxh64_intdigest(data)


class Reader:
    """Reads the header's fields in order (section 4: no padding, nothing may run past the end)."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise TruncatedError(f"header ends inside {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "little")

    def text(self, n: int, what: str) -> str:
        try:
            return self.take(n, what).decode("utf-8")
        except UnicodeDecodeError:
            raise FormatError(f"{what} is not UTF-8") from None


def decode(data: bytes) -> Decoded:
    # Section 3: the preamble, checked in the order the spec gives.
    if len(data) < 40:
        raise TruncatedError(f"file of {len(data)} bytes has no room for the 40-byte preamble")
    if data[0:8] != MAGIC:
        raise FormatError("Magic: not an llmcodec file")
    if xxh64(data[0:36]) & 0xFFFFFFFF != int.from_bytes(data[36:40], "little"):
        raise ChecksumError("Preamble_Checksum does not match")
    major, minor, flags, h_off, h_len, h_sum = struct.unpack("<HHIQQI", data[8:36])
    if major != 1:
        raise UnsupportedVersionError(f"Major_Version {major}")
    if flags != 0:
        raise FormatError(f"Flags {flags:#x}: reserved bits set")
    if h_len > LIMITS["header"]:
        raise LimitExceededError(f"Header_Length {h_len}")
    if h_len < 9:
        raise FormatError(f"Header_Length {h_len} below 9")
    if h_off < 40:
        raise FormatError(f"Header_Offset {h_off} inside the preamble")
    if h_off + h_len > len(data):
        raise TruncatedError("the header runs past the end of the file")
    if h_off + h_len != len(data):
        raise FormatError("bytes after the header")
    header = data[h_off:]
    if xxh64(header) & 0xFFFFFFFF != h_sum:
        raise ChecksumError("Header_Checksum does not match")

    # Section 4: the header.
    r = Reader(header)
    n_tensors, n_meta = r.u(4, "Tensor_Count"), r.u(4, "Metadata_Count")
    if n_tensors > LIMITS["tensors"] or n_meta > LIMITS["metadata"]:
        raise LimitExceededError("Tensor_Count or Metadata_Count over its limit")
    out = Decoded(major, minor, {})
    for _ in range(n_meta):  # 4.1
        key = r.text(_string_length(r, "Key_Length"), "Key")
        value = r.text(_string_length(r, "Value_Length"), "Value")
        if key in out.metadata:
            raise FormatError(f"metadata key {key!r} twice")
        out.metadata[key] = value

    kind = r.u(1, "Source_Kind")  # 4.2
    segments = []
    if kind not in (0, 1, 2):
        raise UnsupportedFeatureError(f"Source_Kind {kind}")
    if kind != 0:
        original_size = r.u(8, "Original_Size")
        original_sha = r.take(32, "Original_SHA256")
        n_seg = r.u(4, "Segment_Count")
        if n_seg > LIMITS["segments"]:
            raise LimitExceededError(f"Segment_Count {n_seg}")
        for _ in range(n_seg):
            seg_kind = r.u(1, "Segment_Kind")
            if seg_kind == 0:
                index = r.u(4, "Tensor_Index")
                if index >= n_tensors:
                    raise FormatError(f"Tensor_Index {index} of {n_tensors} tensors")
                segments.append(("tensor", index))
            elif seg_kind == 1:
                segments.append(("blob", r.u(8, "Blob_Offset"), r.u(8, "Blob_Length"), r.u(8, "Blob_Checksum")))
            else:
                raise UnsupportedFeatureError(f"Segment_Kind {seg_kind}")

    tensors = [_read_tensor(r) for _ in range(n_tensors)]  # 4.3
    if r.pos != len(header):
        raise FormatError("bytes left over after the last tensor")
    names = [t["name"] for t in tensors]
    if len(set(names)) != len(names):
        raise FormatError("a tensor name appears twice")

    # 4.3: every chunk and blob inside the data section [40, h_off), none overlapping.
    ranges = [(c["offset"], c["offset"] + sum(p[2] for p in c["planes"])) for t in tensors for c in t["chunks"]]
    ranges += [(s[1], s[1] + s[2]) for s in segments if s[0] == "blob"]
    end = 40
    for a, b in sorted(ranges):
        if a < 40 or b > h_off:
            raise FormatError(f"range [{a}, {b}) outside the data section")
        if b > a:
            if a < end:
                raise FormatError(f"range [{a}, {b}) overlaps another")
            end = b

    for t in tensors:  # section 7
        out.tensors[t["name"]] = RefTensor(t["dtype"], t["shape"], _decode_tensor(data, t))

    out.source_kind = kind
    if kind != 0:  # 4.2: rebuild the original
        pieces = []
        for s in segments:
            if s[0] == "tensor":
                pieces.append(out.tensors[names[s[1]]].data)
            else:
                blob = data[s[1]:s[1] + s[2]]
                if xxh64(blob) != s[3]:
                    raise ChecksumError("Blob_Checksum does not match")
                pieces.append(blob)
        original = b"".join(pieces)
        if len(original) != original_size:
            raise FormatError(f"segments add up to {len(original)} bytes, Original_Size is {original_size}")
        if hashlib.sha256(original).digest() != original_sha:
            raise ChecksumError("Original_SHA256 does not match")
        out.original = original
    return out


def _string_length(r: Reader, what: str) -> int:
    n = r.u(4, what)
    if n > LIMITS["string"]:
        raise LimitExceededError(f"{what} {n}")
    return n


def _read_tensor(r: Reader) -> dict:
    name = r.text(r.u(2, "Name_Length"), "Name")
    dtype_id, ndim = r.u(1, "Dtype"), r.u(1, "Ndim")
    if dtype_id not in DTYPES:
        raise UnsupportedFeatureError(f"{name}: Dtype {dtype_id}")
    dtype, k = DTYPES[dtype_id]
    if ndim > LIMITS["ndim"]:
        raise LimitExceededError(f"{name}: Ndim {ndim}")
    shape = tuple(r.u(8, "Shape") for _ in range(ndim))
    numel = 1
    for d in shape:
        numel *= d
    if numel * k > LIMITS["tensor"]:
        raise LimitExceededError(f"{name}: {numel * k} bytes")
    layout = r.u(1, "Layout")
    if layout not in LAYOUTS:
        raise UnsupportedFeatureError(f"{name}: Layout {layout}")
    if LAYOUTS[layout] not in (None, k):
        raise FormatError(f"{name}: Layout {layout} needs itemsize {LAYOUTS[layout]}, dtype has {k}")
    chunk_elems, n_chunks = r.u(8, "Chunk_Elements"), r.u(8, "Chunk_Count")
    if chunk_elems < 1:
        raise FormatError(f"{name}: Chunk_Elements 0")
    if chunk_elems * k > LIMITS["chunk"]:
        raise LimitExceededError(f"{name}: chunks of {chunk_elems * k} bytes")
    if n_chunks != -(-numel // chunk_elems):
        raise FormatError(f"{name}: Chunk_Count {n_chunks}")
    chunks = []
    for c in range(n_chunks):
        offset, checksum = r.u(8, "Offset"), r.u(8, "Checksum")
        n = min(chunk_elems, numel - c * chunk_elems)
        planes = []
        for _ in range(k):
            method, param, length = r.u(1, "Method"), r.u(1, "Parameter"), r.u(4, "Length")
            if method not in (0, 1, 2, 3):  # section 6
                raise UnsupportedFeatureError(f"{name}: Method {method}")
            if method != 1 and param != 0:
                raise FormatError(f"{name}: reserved Parameter {param}")
            if (method == 0 and length != n) or (method == 1 and length != 0):
                raise FormatError(f"{name}: Length {length} does not fit Method {method}")
            planes.append((method, param, length))
        chunks.append({"offset": offset, "checksum": checksum, "n": n, "planes": planes})
    return {"name": name, "dtype": dtype, "k": k, "shape": shape, "layout": layout, "chunks": chunks}


def _decode_tensor(data: bytes, t: dict) -> bytes:
    raw = bytearray()
    for c in t["chunks"]:
        planes, pos = [], c["offset"]
        for method, param, length in c["planes"]:
            stream = data[pos:pos + length]
            pos += length
            if method == 0:
                planes.append(stream)
            elif method == 1:
                planes.append(bytes([param]) * c["n"])
            elif method == 2:
                planes.append(_rans0(stream, c["n"]))
            else:
                planes.append(_rans0_pairs(stream, c["n"]))
        chunk = _merge(planes, t["layout"], t["k"], c["n"])
        if xxh64(chunk) != c["checksum"]:
            raise ChecksumError(f"{t['name']}: chunk Checksum does not match")
        raw += chunk
    return bytes(raw)


def _bitmap(data: bytes, count: int) -> list[int]:
    """Indices of the set bits, LSB first within each byte (6.1)."""
    return [i for i in range(count) if (data[i >> 3] >> (i & 7)) & 1]


def _rans0(stream: bytes, n: int) -> bytes:
    """Section 6.1: the table; then 6.2."""
    if len(stream) < 34:
        raise FormatError("RANS0 stream shorter than its table")
    precision, lanes = stream[0], stream[1]
    if not 1 <= precision <= 12 or not 1 <= lanes <= 64:
        raise FormatError(f"RANS0 Precision {precision} / Lanes {lanes}")
    symbols = _bitmap(stream[2:34], 256)
    if not symbols:
        raise FormatError("RANS0 Symbol_Bitmap empty")
    pos = 34 + 2 * len(symbols)
    if len(stream) < pos:
        raise FormatError("RANS0 stream ends inside its table")
    freqs = [int.from_bytes(stream[34 + 2 * i:36 + 2 * i], "little") + 1 for i in range(len(symbols))]
    return bytes(_rans_words(stream, pos, precision, lanes, symbols, freqs, n))


def _rans0_pairs(stream: bytes, n: int) -> bytes:
    """Section 6.4: the table; then 6.2 over pairs of bytes."""
    if len(stream) < 35:
        raise FormatError("RANS0_PAIRS stream shorter than its table")
    precision, lanes, odd_byte = stream[0], stream[1], stream[2]
    if not 1 <= precision <= 14 or not 1 <= lanes <= 64:
        raise FormatError(f"RANS0_PAIRS Precision {precision} / Lanes {lanes}")
    if n % 2 == 0 and odd_byte != 0:
        raise FormatError(f"RANS0_PAIRS Odd_Byte {odd_byte} for an even plane")
    used = _bitmap(stream[3:35], 256)
    if not used:
        raise FormatError("RANS0_PAIRS Byte_Bitmap empty")
    s = len(used)
    pos = 35 + (s * s + 7) // 8
    if len(stream) < pos:
        raise FormatError("RANS0_PAIRS stream ends inside its Pair_Bitmap")
    cells = _bitmap(stream[35:pos], s * s)
    if not cells:
        raise FormatError("RANS0_PAIRS Pair_Bitmap empty")
    pairs = [used[c // s] | used[c % s] << 8 for c in cells]  # bitmap order: by first, then second byte
    freqs = []
    for _ in pairs:  # ULEB128 of one or two bytes
        if pos >= len(stream):
            raise FormatError("RANS0_PAIRS stream ends inside its Frequencies")
        v = stream[pos]
        pos += 1
        if v & 0x80:
            if pos >= len(stream) or not 1 <= stream[pos] <= 127:
                raise FormatError("RANS0_PAIRS two-byte frequency with a bad second byte")
            v = (v & 0x7F) | stream[pos] << 7
            pos += 1
        freqs.append(v + 1)
    out = bytearray()
    for u in _rans_words(stream, pos, precision, lanes, pairs, freqs, n // 2):
        out += bytes([u & 0xFF, u >> 8])
    if n % 2:
        out.append(odd_byte)
    return bytes(out)


def _rans_words(stream: bytes, pos: int, precision: int, lanes: int, symbols: list[int], freqs: list[int],
                n: int) -> list[int]:
    """Section 6.2: decode n symbols; the States start at `pos`."""
    M = 1 << precision
    if sum(freqs) != M:
        raise FormatError(f"rANS frequencies add up to {sum(freqs)}, not {M}")
    freq, cum, total = {}, {}, 0
    for sym, f in zip(symbols, freqs):
        freq[sym], cum[sym] = f, total
        total += f
    slot_symbol = [sym for sym in symbols for _ in range(freq[sym])]
    if len(stream) < pos + 4 * lanes:
        raise FormatError("rANS stream ends inside its States")
    x = []
    for _ in range(lanes):
        state = int.from_bytes(stream[pos:pos + 4], "little")
        if state < L:
            raise FormatError("rANS initial state below 2^16")
        x.append(state)
        pos += 4
    if (len(stream) - pos) % 2:
        raise FormatError("rANS words take an odd number of bytes")
    words = [int.from_bytes(stream[i:i + 2], "little") for i in range(pos, len(stream), 2)]
    out = []
    w = 0
    for i in range(n):
        j = i % lanes
        slot = x[j] & (M - 1)
        sym = slot_symbol[slot]
        out.append(sym)
        x[j] = freq[sym] * (x[j] >> precision) + slot - cum[sym]
        if x[j] < L:
            if w == len(words):
                raise FormatError("rANS stream ends early")
            x[j] = (x[j] << 16) | words[w]
            w += 1
    if any(state != L for state in x) or w != len(words):
        raise FormatError("rANS stream does not end in the start state")
    return out


def _merge(planes: list[bytes], layout: int, k: int, n: int) -> bytes:
    """Section 5: the inverse of the layout."""
    out = bytearray(n * k)
    for i in range(n):
        if layout == 1:
            p0, p1 = planes[0][i], planes[1][i]
            v = ((p1 & 0x80) << 8) | (p0 << 7) | (p1 & 0x7F)
        elif layout == 2:
            p0, p1, p2, p3 = (p[i] for p in planes)
            v = ((p1 & 0x80) << 24) | (p0 << 23) | ((p1 & 0x7F) << 16) | (p2 << 8) | p3
        else:
            v = sum(planes[b][i] << (8 * b) for b in range(k))
        out[i * k:(i + 1) * k] = v.to_bytes(k, "little")
    return bytes(out)
