"""Numba kernels: plane split/merge, histograms, rANS encode/decode (spec sections 5 and 6).

Pure functions over arrays, no I/O. Callers validate every length and table first: numba does no
bounds checks, so each kernel states what it assumes. Integer arithmetic is int64 throughout.
"""

from __future__ import annotations

import numpy as np
from numba import njit

RANS_L = 1 << 16  # lower bound of a state; states live in [RANS_L, 2^32) between symbols
ENCODE_LANES = 8  # lanes the encoder writes; the decoder has a fast path for them

# rans_decode status codes
DECODE_OK = 0
DECODE_BAD_STATE = 1
DECODE_STREAM_SHORT = 2
DECODE_BAD_END = 3

_jit = njit(cache=True, nogil=True)


@_jit
def split_planes(src, layout, planes):
    """Split `n` elements of raw little-endian bytes `src` into `planes[k, n]` (spec section 5).

    Assumes len(src) == n * k with k = planes.shape[0] and `layout` allowed for k.
    """
    k = planes.shape[0]
    n = planes.shape[1]
    if layout == 1:  # FIELDS16
        for i in range(n):
            lo = np.int64(src[2 * i])
            hi = np.int64(src[2 * i + 1])
            planes[0, i] = ((hi & 0x7F) << 1) | (lo >> 7)
            planes[1, i] = (hi & 0x80) | (lo & 0x7F)
    elif layout == 2:  # FIELDS32
        for i in range(n):
            b2 = np.int64(src[4 * i + 2])
            b3 = np.int64(src[4 * i + 3])
            planes[0, i] = ((b3 & 0x7F) << 1) | (b2 >> 7)
            planes[1, i] = (b3 & 0x80) | (b2 & 0x7F)
            planes[2, i] = src[4 * i + 1]
            planes[3, i] = src[4 * i]
    else:  # BYTES
        for i in range(n):
            for j in range(k):
                planes[j, i] = src[i * k + j]


@_jit
def merge_planes(planes, layout, dst):
    """Inverse of split_planes: write the raw bytes of `planes[k, n]` into `dst` (n * k bytes)."""
    k = planes.shape[0]
    n = planes.shape[1]
    if layout == 1:  # FIELDS16
        for i in range(n):
            p0 = np.int64(planes[0, i])
            p1 = np.int64(planes[1, i])
            dst[2 * i] = ((p0 & 1) << 7) | (p1 & 0x7F)
            dst[2 * i + 1] = (p1 & 0x80) | (p0 >> 1)
    elif layout == 2:  # FIELDS32
        for i in range(n):
            p0 = np.int64(planes[0, i])
            p1 = np.int64(planes[1, i])
            dst[4 * i] = planes[3, i]
            dst[4 * i + 1] = planes[2, i]
            dst[4 * i + 2] = ((p0 & 1) << 7) | (p1 & 0x7F)
            dst[4 * i + 3] = (p1 & 0x80) | (p0 >> 1)
    else:  # BYTES
        for i in range(n):
            for j in range(k):
                dst[i * k + j] = planes[j, i]


@_jit
def histograms(planes):
    """Symbol counts of each plane: int64[k, 256]."""
    k = planes.shape[0]
    counts = np.zeros((k, 256), np.int64)
    for j in range(k):
        row = planes[j]
        c = counts[j]
        for i in range(row.shape[0]):
            c[row[i]] += 1
    return counts


@_jit
def rans_encode(symbols, index, freq, cum, precision, out):
    """Encode `symbols` with an order-0 model and ENCODE_LANES lanes into the tail of `out`;
    return where the stream starts.

    Symbol s has frequency freq[index[s]] and cumulative frequency cum[index[s]] (the model's
    symbols numbered densely, so its arrays stay small even for 16-bit symbols). The stream
    out[start:] is the lane states (u32 each, lane 0 first) then the u16 words, as spec section
    6.1 lays them out. Assumes every symbol present has a frequency >= 1, the frequencies add up
    to 2^precision, precision <= 14, and len(out) >= 4 * lanes + 2 * len(symbols) (at most one
    word per symbol is emitted, since freq << (32 - precision) >= 2^18).

    x // f is computed as floor(x * (1/f) + 2^-20) in float64, which is exact here: x / f <
    2^31, so the product is within 2^-21 of it, while a non-integer x / f is at least 1/f >=
    2^-14 away from the integers on either side.
    """
    n = symbols.shape[0]
    states = np.full(ENCODE_LANES, RANS_L, np.int64)
    inverse = 1.0 / freq
    limit = freq << (32 - precision)
    pos = out.shape[0]
    j = (n - 1) % ENCODE_LANES if n > 0 else 0
    for i in range(n - 1, -1, -1):
        k = np.int64(index[symbols[i]])
        f = freq[k]
        x = states[j]
        if x >= limit[k]:
            pos -= 2
            out[pos] = x & 0xFF
            out[pos + 1] = (x >> 8) & 0xFF
            x >>= 16
        q = np.int64(x * inverse[k] + 9.5367431640625e-07)  # 2^-20
        states[j] = (q << precision) + (x - q * f) + cum[k]
        j = j - 1 if j > 0 else ENCODE_LANES - 1
    for j in range(ENCODE_LANES - 1, -1, -1):
        x = states[j]
        pos -= 4
        out[pos] = x & 0xFF
        out[pos + 1] = (x >> 8) & 0xFF
        out[pos + 2] = (x >> 16) & 0xFF
        out[pos + 3] = (x >> 24) & 0xFF
    return pos


@_jit
def decode_table(symbols, freq, precision):
    """int64[2^precision]: for each slot, symbol | (freq - 1) << 16 | (slot - cum) << 32.

    Assumes a validated table: every freq >= 1 and sum(freq) == 2^precision.
    """
    table = np.empty(np.int64(1) << precision, np.int64)
    slot = 0
    for k in range(symbols.shape[0]):
        entry = symbols[k] | ((freq[k] - 1) << 16)
        for bias in range(freq[k]):
            table[slot] = entry | (np.int64(bias) << 32)
            slot += 1
    return table


@_jit
def rans_decode(stream, table, precision, lanes, width, out):
    """Decode len(out) // width symbols of `width` bytes (1, or 2 for pairs) from `stream` (lane
    states, then u16 words) into `out`, each symbol's low byte first.

    `table` is a `decode_table` of a validated frequency table. Never reads outside `stream` or
    writes outside `out`; returns a DECODE_* status (spec section 6.2: the end states must be
    RANS_L and every word consumed).
    """
    n = out.shape[0] // width
    mask = (np.int64(1) << precision) - 1
    n_words = (stream.shape[0] - 4 * lanes) // 2
    if n_words < 0:
        return DECODE_STREAM_SHORT
    states = np.empty(lanes, np.int64)
    for j in range(lanes):
        x = (np.int64(stream[4 * j]) | (np.int64(stream[4 * j + 1]) << 8)
             | (np.int64(stream[4 * j + 2]) << 16) | (np.int64(stream[4 * j + 3]) << 24))
        if x < RANS_L:
            return DECODE_BAD_STATE
        states[j] = x
    wpos = 4 * lanes
    wend = wpos + 2 * n_words
    i = 0
    if lanes == ENCODE_LANES:
        # Fast path: whole groups of lanes while a word for every lane is surely left, so the
        # branchless refill may read the next word whether or not it takes it.
        while i + ENCODE_LANES <= n and wpos + 2 * ENCODE_LANES <= wend:
            for j in range(ENCODE_LANES):
                x = states[j]
                e = table[x & mask]
                if width == 1:
                    out[i + j] = e & 0xFF
                else:
                    out[2 * (i + j)] = e & 0xFF
                    out[2 * (i + j) + 1] = (e >> 8) & 0xFF
                x = (((e >> 16) & 0xFFFF) + 1) * (x >> precision) + (e >> 32)
                take = np.int64(x < RANS_L)
                at = np.uint64(wpos)  # an unsigned index skips numba's negative-index wraparound
                word = np.int64(stream[at]) | (np.int64(stream[at + np.uint64(1)]) << 8)
                states[j] = (x << (take << 4)) | (word & -take)
                wpos += take << 1
            i += ENCODE_LANES
    done = i
    j = done % lanes
    for i in range(done, n):
        x = states[j]
        e = table[x & mask]
        if width == 1:
            out[i] = e & 0xFF
        else:
            out[2 * i] = e & 0xFF
            out[2 * i + 1] = (e >> 8) & 0xFF
        x = (((e >> 16) & 0xFFFF) + 1) * (x >> precision) + (e >> 32)
        if x < RANS_L:
            if wpos >= wend:
                return DECODE_STREAM_SHORT
            x = (x << 16) | np.int64(stream[wpos]) | (np.int64(stream[wpos + 1]) << 8)
            wpos += 2
        states[j] = x
        j = j + 1 if j + 1 < lanes else 0
    for j in range(lanes):
        if states[j] != RANS_L:
            return DECODE_BAD_END
    if wpos != wend:
        return DECODE_BAD_END
    return DECODE_OK


@_jit
def pair_histogram(plane):
    """Counts of the 16-bit symbols plane[2i] | plane[2i + 1] << 8: int64[65536]."""
    counts = np.zeros(65536, np.int64)
    for i in range(plane.shape[0] // 2):
        counts[np.int64(plane[2 * i]) | (np.int64(plane[2 * i + 1]) << 8)] += 1
    return counts
