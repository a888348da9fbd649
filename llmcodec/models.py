"""Probability models of planes: frequency quantisation, RANS0 / RANS0_PAIRS tables, method choice.

An order-0 table (spec sections 6.1, 6.4) gives every present symbol a frequency >= 1, and the
frequencies add up to exactly 2^P. RANS0 codes a plane's bytes; RANS0_PAIRS codes its bytes two at
a time as 16-bit symbols, which halves the coder's steps and captures part of the dependence of a
byte on its neighbour. `encode_plane` stores a plane by the cheapest of CONSTANT, RANS0,
RANS0_PAIRS and RAW; the kernels (`kernels.encode_plane`) make that choice and write the streams,
this module reads and checks tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import kernels
from .errors import FormatError
from .format import METHOD_RANS0

PRECISION = kernels.PRECISION
PAIR_PRECISION = kernels.PAIR_PRECISION
LANES = kernels.ENCODE_LANES
MIN_GAIN = kernels.MIN_GAIN
MAX_PRECISION = 12
MAX_PAIR_PRECISION = 14
MAX_LANES = 64
TABLE_FIXED = 34  # RANS0: Precision, Lanes, Symbol_Bitmap
PAIR_TABLE_FIXED = 35  # RANS0_PAIRS: Precision, Lanes, Odd_Byte, Byte_Bitmap


def quantize_frequencies(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies >= 1 summing to 2^precision for the symbols whose `counts` (all > 0) are given
    (see kernels.quantize_frequencies). Needs between 1 and 2^precision symbols."""
    return kernels.quantize_frequencies(np.asarray(counts, np.int64), precision)


def ideal_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    """Bits the coded symbols take under `freq`: the quantized model's information content."""
    return float(np.sum(counts * (precision - np.log2(freq))))


@dataclass(frozen=True)
class Table:
    """A parsed RANS0 or RANS0_PAIRS table: which symbols, their frequencies, the stream layout."""

    precision: int
    lanes: int
    symbols: np.ndarray  # int64[K], ascending
    freq: np.ndarray  # int64[K], >= 1, summing to 2^precision
    size: int  # bytes the table takes at the start of the stream
    width: int  # bytes per symbol: 1 (RANS0) or 2 (RANS0_PAIRS)
    odd_byte: int = 0  # RANS0_PAIRS: the plane's last byte when its length is odd

    def decode_table(self) -> np.ndarray:
        """int64[2^P]: symbol | freq << 16 | (slot - cum) << 32 (see kernels.fill_decode_table)."""
        return kernels.decode_table(self.symbols, self.freq, self.precision)


def parse_table(stream: memoryview, method: int, n: int, where: str) -> Table:
    """Read and check the table of a RANS0 (6.1) or RANS0_PAIRS (6.4) stream for a plane of n bytes."""
    name = "RANS0" if method == METHOD_RANS0 else "RANS0_PAIRS"
    fixed = TABLE_FIXED if method == METHOD_RANS0 else PAIR_TABLE_FIXED
    if len(stream) < fixed:
        raise FormatError(f"{where}: {name} stream of {len(stream)} bytes is shorter than its table")
    precision, lanes = stream[0], stream[1]
    top = MAX_PRECISION if method == METHOD_RANS0 else MAX_PAIR_PRECISION
    if not 1 <= precision <= top:
        raise FormatError(f"{where}: {name} Precision {precision}, expected 1..{top}")
    if not 1 <= lanes <= MAX_LANES:
        raise FormatError(f"{where}: {name} Lanes {lanes}, expected 1..{MAX_LANES}")
    if method == METHOD_RANS0:
        symbols = np.flatnonzero(_bits(stream[2:TABLE_FIXED], 256)).astype(np.int64)
        if symbols.size == 0:
            raise FormatError(f"{where}: {name} Symbol_Bitmap is empty")
        size = TABLE_FIXED + 2 * symbols.size
        if len(stream) < size:
            raise FormatError(f"{where}: {name} stream of {len(stream)} bytes ends inside its table")
        freq = np.frombuffer(stream[TABLE_FIXED:size], "<u2").astype(np.int64) + 1
        width, odd_byte = 1, 0
    else:
        if n < 2:
            raise FormatError(f"{where}: {name} needs a plane of at least 2 bytes, this one has {n}")
        symbols, freq, size = _parse_pairs(stream, where)
        width, odd_byte = 2, stream[2]
        if n % 2 == 0 and odd_byte != 0:
            raise FormatError(f"{where}: {name} Odd_Byte is {odd_byte} for a plane of even length, expected 0")
    if len(stream) < size + 4 * lanes:
        raise FormatError(f"{where}: {name} stream of {len(stream)} bytes ends inside its states")
    if (len(stream) - size - 4 * lanes) % 2:
        raise FormatError(f"{where}: {name} words take an odd number of bytes")
    total = int(freq.sum())
    if total != 1 << precision:
        raise FormatError(f"{where}: {name} frequencies add up to {total}, expected 2^{precision}")
    return Table(precision, lanes, symbols, freq, size, width, odd_byte)


def _bits(data, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little", count=count).astype(bool)


def _parse_pairs(stream: memoryview, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Pair symbols (first | second << 8, in table order), frequencies, and the table's size."""
    used = np.flatnonzero(_bits(stream[3:PAIR_TABLE_FIXED], 256))
    if used.size == 0:
        raise FormatError(f"{where}: RANS0_PAIRS Byte_Bitmap is empty")
    s = used.size
    end = PAIR_TABLE_FIXED + (s * s + 7) // 8
    if len(stream) < end:
        raise FormatError(f"{where}: RANS0_PAIRS stream of {len(stream)} bytes ends inside its Pair_Bitmap")
    bits = _bits(stream[PAIR_TABLE_FIXED:end], 8 * (end - PAIR_TABLE_FIXED))
    if bits[s * s:].any():
        raise FormatError(f"{where}: RANS0_PAIRS Pair_Bitmap has reserved padding bits set")
    cells = np.flatnonzero(bits[:s * s])
    k = cells.size
    if k == 0:
        raise FormatError(f"{where}: RANS0_PAIRS Pair_Bitmap is empty")
    if not np.all(np.isin(np.arange(s), np.concatenate((cells // s, cells % s)))):
        raise FormatError(f"{where}: RANS0_PAIRS Byte_Bitmap holds a byte that occurs in no pair")
    symbols = used[cells // s] | (used[cells % s] << 8)
    # Frequencies: k ULEB128 numbers of one or two bytes. A byte with its top bit set is always
    # the first of two, so each number starts where the byte before is not such a byte.
    window = np.frombuffer(stream[end:end + 2 * k], np.uint8).astype(np.int64)
    high = window >= 0x80
    starts = np.flatnonzero(~np.concatenate(([False], high[:-1])))
    if starts.size < k or (high[starts[k - 1]] and starts[k - 1] + 1 >= window.size):
        raise FormatError(f"{where}: RANS0_PAIRS stream of {len(stream)} bytes ends inside its Frequencies")
    starts = starts[:k]
    two = high[starts]
    second = window[np.minimum(starts + 1, window.size - 1)]
    if np.any(two & ((second == 0) | (second >= 0x80))):
        raise FormatError(f"{where}: RANS0_PAIRS Frequencies hold a two-byte number whose second byte "
                          f"is not in 1..127")
    freq = np.where(two, (window[starts] & 0x7F) | (second << 7), window[starts]) + 1
    size = end + int(starts[-1]) + 1 + int(two[-1])
    return symbols.astype(np.int64), freq, size


@dataclass
class CodedPlane:
    method: int
    parameter: int
    stream: np.ndarray  # the plane's stream (empty for CONSTANT)

    @property
    def length(self) -> int:
        return self.stream.shape[0]


def encode_plane(plane: np.ndarray, methods=None, min_gain: float = MIN_GAIN) -> CodedPlane:
    """Store `plane` (uint8[n], n >= 1) the way `encode_chunk` does (kernels.encode_plane), or by
    one of `methods` only (method ids) when given; `min_gain=-inf` codes even a plane that grows."""
    plane = np.ascontiguousarray(plane, np.uint8)
    n = plane.shape[0]
    allowed = kernels.ALL_METHODS if methods is None else sum(1 << m for m in methods)
    out = np.empty(2 * n + 8192, np.uint8)  # room for a forced stream larger than the plane
    ids, words = np.empty(n, np.uint16), np.empty(n + 1, np.uint16)
    counts = np.bincount(plane, minlength=256).astype(np.int64)
    method, parameter, length = kernels.encode_plane(plane, counts, out, 0, ids, words, allowed, float(min_gain))
    return CodedPlane(int(method), int(parameter), out[:length].copy())
