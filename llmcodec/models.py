"""Probability models of planes: frequency quantisation, RANS0 tables, and the choice of method.

An order-0 table (spec section 6.1) gives every present symbol a frequency >= 1, and the frequencies
add up to exactly 2^P. `encode_plane` stores a plane by the cheapest of CONSTANT, RANS0 and RAW.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import kernels
from .errors import FormatError
from .format import METHOD_CONSTANT, METHOD_RANS0, METHOD_RAW

PRECISION = 12  # order-0 tables: 4096 slots, a 32 KiB decode table that stays in L1
LANES = kernels.ENCODE_LANES
MAX_PRECISION = 12  # decode table entries pack into 32 bits
MAX_LANES = 64
TABLE_FIXED = 34  # Precision, Lanes, Symbol_Bitmap
# A plane is entropy-coded only if that saves at least this fraction of its raw size: coding a
# near-uniform plane (a bf16's sign + mantissa saves ~0.2%) would halve decode speed for ~0.1% of
# the file. ZipNN's equivalent threshold is 5%.
MIN_GAIN = 0.02


def quantize_frequencies(counts: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Frequencies (int64[256]) summing to 2^precision, >= 1 exactly where counts > 0.

    Close to the counts' proportions: floor of the scaled counts, then the remainder handed out
    where it saves most bits. Needs at least one and at most 2^precision distinct symbols.
    """
    total_slots = 1 << precision
    counts = counts.astype(np.int64)
    present = np.flatnonzero(counts)
    c = counts[present].astype(np.float64)
    f = np.maximum(1, np.floor(c * total_slots / c.sum())).astype(np.int64)
    excess = int(f.sum()) - total_slots
    if excess < 0:
        # Each +1 gains c * log2((f + 1) / f) bits; floor lost < 1 per symbol, so -excess <= K.
        gain = c * np.log2((f + 1) / f)
        f[np.argsort(-gain, kind="stable")[:-excess]] += 1
    while excess > 0:
        # Raising symbols to 1 overshot: take back from the symbol where a -1 costs least.
        loss = np.where(f > 1, c * np.log2(f / np.maximum(f - 1, 1)), np.inf)
        f[int(np.argmin(loss))] -= 1
        excess -= 1
    out = np.zeros(256, np.int64)
    out[present] = f
    return out


def ideal_bits(counts: np.ndarray, freq: np.ndarray, precision: int) -> float:
    """Bits the coded symbols take under `freq`: the quantized model's information content."""
    present = counts > 0
    return float(np.sum(counts[present] * (precision - np.log2(freq[present]))))


def serialize_table(freq: np.ndarray, precision: int, lanes: int) -> bytes:
    present = freq > 0
    bitmap = np.packbits(present, bitorder="little").tobytes()
    return struct.pack("<BB", precision, lanes) + bitmap + (freq[present] - 1).astype("<u2").tobytes()


@dataclass(frozen=True)
class Rans0Table:
    precision: int
    lanes: int
    freq: np.ndarray  # int64[256]
    size: int  # bytes the table takes in the stream

    def decode_table(self) -> np.ndarray:
        """uint32[2^P]: symbol | (freq - 1) << 8 | (slot - cum) << 20 (see kernels.rans_decode)."""
        f = self.freq
        cum = np.concatenate(([0], np.cumsum(f)[:-1]))
        sym = np.repeat(np.arange(256, dtype=np.int64), f)
        bias = np.arange(1 << self.precision, dtype=np.int64) - cum[sym]
        return (sym | ((f[sym] - 1) << 8) | (bias << 20)).astype(np.uint32)


def parse_table(stream: memoryview, where: str) -> Rans0Table:
    """Read and check a RANS0 table (spec section 6.1) at the start of `stream`."""
    if len(stream) < TABLE_FIXED:
        raise FormatError(f"{where}: RANS0 stream of {len(stream)} bytes is shorter than its table")
    precision, lanes = stream[0], stream[1]
    if not 1 <= precision <= MAX_PRECISION:
        raise FormatError(f"{where}: RANS0 Precision {precision}, expected 1..{MAX_PRECISION}")
    if not 1 <= lanes <= MAX_LANES:
        raise FormatError(f"{where}: RANS0 Lanes {lanes}, expected 1..{MAX_LANES}")
    present = np.unpackbits(np.frombuffer(stream[2:TABLE_FIXED], np.uint8), bitorder="little").astype(bool)
    k = int(present.sum())
    size = TABLE_FIXED + 2 * k
    if k == 0:
        raise FormatError(f"{where}: RANS0 Symbol_Bitmap is empty")
    if len(stream) < size + 4 * lanes:
        raise FormatError(f"{where}: RANS0 stream of {len(stream)} bytes ends inside its table or states")
    if (len(stream) - size - 4 * lanes) % 2:
        raise FormatError(f"{where}: RANS0 words take an odd number of bytes")
    freq = np.zeros(256, np.int64)
    freq[present] = np.frombuffer(stream[TABLE_FIXED:size], "<u2").astype(np.int64) + 1
    total = int(freq.sum())
    if total != 1 << precision:
        raise FormatError(f"{where}: RANS0 frequencies add up to {total}, expected 2^{precision}")
    return Rans0Table(precision, lanes, freq, size)


@dataclass
class CodedPlane:
    method: int
    parameter: int
    payload: list  # buffers written back to back; their total length is the plane's Length

    @property
    def length(self) -> int:
        return sum(len(memoryview(p).cast("B")) for p in self.payload)


def encode_plane(plane: np.ndarray, counts: np.ndarray, min_gain: float = MIN_GAIN) -> CodedPlane:
    """Store `plane` (uint8[n], n >= 1, symbol counts `counts`) as a constant, else RANS0 if that
    saves at least `min_gain` of its size, else raw."""
    n = plane.shape[0]
    present = np.flatnonzero(counts)
    if present.size == 1:
        return CodedPlane(METHOD_CONSTANT, int(present[0]), [])
    freq = quantize_frequencies(counts)
    table_size = TABLE_FIXED + 2 * present.size + 4 * LANES
    estimate = table_size + ideal_bits(counts, freq, PRECISION) / 8
    budget = n * (1 - min_gain)
    if estimate < budget:  # skip coding planes that cannot shrink enough; the estimate is within a few bytes
        cum = np.concatenate(([0], np.cumsum(freq)[:-1]))
        out = np.empty(4 * LANES + 2 * n, np.uint8)
        start = kernels.rans_encode(plane, freq, cum, PRECISION, out)
        coded = TABLE_FIXED + 2 * present.size + out.shape[0] - start
        if coded < budget:
            return CodedPlane(METHOD_RANS0, 0, [serialize_table(freq, PRECISION, LANES), out[start:]])
    return CodedPlane(METHOD_RAW, 0, [plane])
