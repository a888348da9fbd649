"""Probability models of planes: frequency quantisation, RANS0 / RANS0_PAIRS tables, method choice.

An order-0 table (spec sections 6.1, 6.4) gives every present symbol a frequency >= 1, and the
frequencies add up to exactly 2^P. RANS0 codes a plane's bytes; RANS0_PAIRS codes its bytes two at
a time as 16-bit symbols, which halves the coder's steps and captures part of the dependence of a
byte on its neighbour. `encode_plane` stores a plane by the cheapest of CONSTANT, RANS0,
RANS0_PAIRS and RAW.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import kernels
from .errors import FormatError
from .format import METHOD_CONSTANT, METHOD_RANS0, METHOD_RANS0_PAIRS, METHOD_RAW

PRECISION = 12  # RANS0: 4096 slots, a 32 KiB decode table that stays in L1
PAIR_PRECISION = 13  # RANS0_PAIRS: hundreds of distinct pairs need finer frequencies
LANES = kernels.ENCODE_LANES
MAX_PRECISION = 12
MAX_PAIR_PRECISION = 14
MAX_LANES = 64
TABLE_FIXED = 34  # RANS0: Precision, Lanes, Symbol_Bitmap
PAIR_TABLE_FIXED = 35  # RANS0_PAIRS: Precision, Lanes, Odd_Byte, Byte_Bitmap
# A plane is entropy-coded only if that saves at least this fraction of its raw size: coding a
# near-uniform plane (a bf16's sign + mantissa saves ~0.2%) would halve decode speed for ~0.1% of
# the file. ZipNN's equivalent threshold is 5%.
MIN_GAIN = 0.02
# RANS0_PAIRS decodes about 1.5x as fast as RANS0 (one step per two bytes); it is chosen while it
# costs at most this fraction more than RANS0. Its larger table (4 bytes a pair) is the usual cost.
PAIR_TOLERANCE = 0.01


def quantize_frequencies(counts: np.ndarray, precision: int) -> np.ndarray:
    """Frequencies >= 1 summing to 2^precision for the symbols whose `counts` (all > 0) are given.

    Close to the counts' proportions: floor of the scaled counts (at least 1), then the remainder
    handed out, or the overshoot taken back, where that costs fewest bits. Needs between 1 and
    2^precision symbols.
    """
    total_slots = 1 << precision
    c = counts.astype(np.float64)
    f = np.maximum(1, np.floor(c * total_slots / c.sum())).astype(np.int64)
    excess = int(f.sum()) - total_slots
    if excess < 0:
        # Each +1 gains c * log2((f + 1) / f) bits; floor lost < 1 per symbol, so -excess < K.
        gain = c * np.log2((f + 1) / f)
        f[np.argsort(-gain, kind="stable")[:-excess]] += 1
    while excess > 0:
        # Raising rare symbols to 1 overshot: take 1 back from the symbols where it costs least.
        loss = np.where(f > 1, c * np.log2(f / np.maximum(f - 1, 1)), np.inf)
        take = np.argsort(loss, kind="stable")[:min(excess, int(np.count_nonzero(f > 1)))]
        f[take] -= 1
        excess -= take.size
    return f


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
        """int64[2^P]: symbol | (freq - 1) << 16 | (slot - cum) << 32 (see kernels.rans_decode)."""
        return kernels.decode_table(self.symbols, self.freq, self.precision)


def _bitmap(indices: np.ndarray, size: int) -> bytes:
    bits = np.zeros(size, bool)
    bits[indices] = True
    return np.packbits(bits, bitorder="little").tobytes()


def pair_order(pairs: np.ndarray) -> np.ndarray:
    """Sort key of 16-bit pair symbols (first byte | second << 8) in table order: by first byte,
    then second (spec section 6.4)."""
    return ((pairs & 0xFF) << 8) | (pairs >> 8)


def serialize_table(method: int, symbols: np.ndarray, freq: np.ndarray, precision: int, odd_byte: int) -> bytes:
    """The table of a RANS0 (6.1) or RANS0_PAIRS (6.4) stream; `symbols` in table order."""
    if method == METHOD_RANS0:
        return (struct.pack("<BB", precision, LANES) + _bitmap(symbols, 256)
                + (freq - 1).astype("<u2").tobytes())
    used = np.union1d(symbols & 0xFF, symbols >> 8)  # the byte set S, ascending
    first, second = np.searchsorted(used, symbols & 0xFF), np.searchsorted(used, symbols >> 8)
    value = freq - 1  # < 2^14: one or two ULEB128 bytes
    low = (value & 0x7F) | np.where(value >= 0x80, 0x80, 0)
    varints = np.stack([low, value >> 7], axis=1).reshape(-1)
    keep = np.stack([np.ones_like(value, bool), value >= 0x80], axis=1).reshape(-1)
    return (struct.pack("<BBB", precision, LANES, odd_byte) + _bitmap(used, 256)
            + _bitmap(first * used.size + second, used.size * used.size)
            + varints[keep].astype(np.uint8).tobytes())


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
    payload: list  # buffers written back to back; their total length is the plane's Length

    @property
    def length(self) -> int:
        return sum(len(memoryview(p).cast("B")) for p in self.payload)


def encode_plane(plane: np.ndarray, counts: np.ndarray, min_gain: float = MIN_GAIN) -> CodedPlane:
    """Store `plane` (uint8[n], n >= 1, byte counts `counts`) as a constant, else by RANS0 or
    RANS0_PAIRS if that saves at least `min_gain` of its size, else raw."""
    n = plane.shape[0]
    symbols = np.flatnonzero(counts)
    if symbols.size == 1:
        return CodedPlane(METHOD_CONSTANT, int(symbols[0]), [])
    budget = n * (1 - min_gain)
    c = counts[symbols]
    freq = quantize_frequencies(c, PRECISION)
    cost = TABLE_FIXED + 2 * symbols.size + ideal_bits(c, freq, PRECISION) / 8
    best = (METHOD_RANS0, PRECISION, symbols, freq)
    if n >= 2 and symbols.size <= 64:  # more distinct bytes than that make too many pairs
        pair_counts = kernels.pair_histogram(plane)
        pairs = np.flatnonzero(pair_counts)
        if pairs.size <= (1 << PAIR_PRECISION) // 4:  # rare pairs would crowd out the common ones
            pc = pair_counts[pairs]
            pair_freq = quantize_frequencies(pc, PAIR_PRECISION)
            pair_cost = PAIR_TABLE_FIXED + 2.5 * pairs.size + ideal_bits(pc, pair_freq, PAIR_PRECISION) / 8
            if pair_cost <= cost * (1 + PAIR_TOLERANCE):
                cost, best = pair_cost, (METHOD_RANS0_PAIRS, PAIR_PRECISION, pairs, pair_freq)
    if cost + 4 * LANES < budget:  # the estimate is within a few bytes of the coded size
        coded = _rans(plane, *best)
        if coded.length < budget:
            return coded
    return CodedPlane(METHOD_RAW, 0, [plane])


def _rans(plane: np.ndarray, method: int, precision: int, symbols: np.ndarray, freq: np.ndarray) -> CodedPlane:
    n = plane.shape[0]
    odd_byte = 0
    if method == METHOD_RANS0:
        alphabet, coded = 256, plane
    else:
        alphabet, coded = 65536, plane[:n - n % 2].view("<u2")  # plane[2i] | plane[2i + 1] << 8
        odd_byte = int(plane[-1]) if n % 2 else 0
        order = np.argsort(pair_order(symbols))
        symbols, freq = symbols[order], freq[order]
    index = np.zeros(alphabet, np.uint16)
    index[symbols] = np.arange(symbols.size)
    out = np.empty(4 * LANES + 2 * coded.shape[0], np.uint8)
    start = kernels.rans_encode(coded, index, freq, np.cumsum(freq) - freq, precision, out)
    table = serialize_table(method, symbols, freq, precision, odd_byte)
    return CodedPlane(method, 0, [table, out[start:]])
