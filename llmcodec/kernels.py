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
    # per symbol, side by side: the renormalisation limit, and freq | cum << 32 (fewer loads)
    packed = np.empty((freq.shape[0], 2), np.int64)
    for k in range(freq.shape[0]):
        packed[k, 0] = freq[k] << (32 - precision)
        packed[k, 1] = freq[k] | (cum[k] << 32)
    pos = out.shape[0]
    j = (n - 1) % ENCODE_LANES if n > 0 else 0
    for i in range(n - 1, -1, -1):
        k = np.int64(index[symbols[i]])
        fc = packed[k, 1]
        x = states[j]
        if x >= packed[k, 0]:
            pos -= 2
            out[pos] = x & 0xFF
            out[pos + 1] = (x >> 8) & 0xFF
            x >>= 16
        q = np.int64(x * inverse[k] + 9.5367431640625e-07)  # 2^-20
        states[j] = (q << precision) + (x - q * (fc & 0xFFFFFFFF)) + (fc >> 32)
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


# --- XXH64 (spec section 1), so checksums run on the worker threads without the GIL ---------------

_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)
_inline = njit(cache=True, nogil=True, inline="always")


@_inline
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@_inline
def _read64(b, i):
    v = np.uint64(0)
    for j in range(7, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(b[i + j])
    return v


@_inline
def _round(acc, value):
    return _rotl(acc + value * _P2, 31) * _P1


@_jit
def xxh64(b):
    """XXH64 of the bytes `b` with seed 0. All arithmetic is uint64 (wrapping), never mixed with int64."""
    n = b.shape[0]
    i = 0
    if n >= 32:
        v1, v2, v3, v4 = _P1 + _P2, _P2, np.uint64(0), np.uint64(0) - _P1
        while i + 32 <= n:
            v1 = _round(v1, _read64(b, i))
            v2 = _round(v2, _read64(b, i + 8))
            v3 = _round(v3, _read64(b, i + 16))
            v4 = _round(v4, _read64(b, i + 24))
            i += 32
        h = _rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)
        for v in (v1, v2, v3, v4):
            h = (h ^ _round(np.uint64(0), v)) * _P1 + _P4
    else:
        h = _P5
    h += np.uint64(n)
    while i + 8 <= n:
        h ^= _round(np.uint64(0), _read64(b, i))
        h = _rotl(h, 27) * _P1 + _P4
        i += 8
    if i + 4 <= n:
        v = (np.uint64(b[i]) | (np.uint64(b[i + 1]) << np.uint64(8)) | (np.uint64(b[i + 2]) << np.uint64(16))
             | (np.uint64(b[i + 3]) << np.uint64(24)))
        h ^= v * _P1
        h = _rotl(h, 23) * _P2 + _P3
        i += 4
    while i < n:
        h ^= np.uint64(b[i]) * _P5
        h = _rotl(h, 11) * _P1
        i += 1
    h ^= h >> np.uint64(33)
    h *= _P2
    h ^= h >> np.uint64(29)
    h *= _P3
    h ^= h >> np.uint64(32)
    return h


# --- one chunk, table parsing to checksum, in a single call without the GIL ----------------------
# The kernels below check what they read and return CHUNK_BAD_* on any fault; the caller then
# re-reads the chunk with the validating Python parser (models.parse_table) for a precise message.

CHUNK_OK = 0
CHUNK_BAD_STREAM = 1  # a table or stream breaks spec section 6
CHUNK_BAD_CHECKSUM = 2


@_jit
def _bit(stream, base, i):
    return (stream[base + (i >> 3)] >> (i & 7)) & 1


@_jit
def _rans0_table(stream):
    """(ok, precision, lanes, symbols, freq, size) of a RANS0 stream (spec 6.1)."""
    empty = np.zeros(0, np.int64)
    if stream.shape[0] < 34:
        return False, 0, 0, empty, empty, 0
    precision, lanes = np.int64(stream[0]), np.int64(stream[1])
    k = 0
    for s in range(256):
        k += _bit(stream, 2, s)
    size = 34 + 2 * k
    if not (1 <= precision <= 12 and 1 <= lanes <= 64 and k > 0 and stream.shape[0] >= size):
        return False, 0, 0, empty, empty, 0
    symbols = np.empty(k, np.int64)
    freq = np.empty(k, np.int64)
    m = 0
    for s in range(256):
        if _bit(stream, 2, s):
            symbols[m] = s
            freq[m] = (np.int64(stream[34 + 2 * m]) | (np.int64(stream[35 + 2 * m]) << 8)) + 1
            m += 1
    return True, precision, lanes, symbols, freq, size


@_jit
def _pairs_table(stream, n):
    """(ok, precision, lanes, symbols, freq, size) of a RANS0_PAIRS stream (spec 6.4)."""
    empty = np.zeros(0, np.int64)
    length = stream.shape[0]
    if length < 35 or n < 2:
        return False, 0, 0, empty, empty, 0
    precision, lanes, odd = np.int64(stream[0]), np.int64(stream[1]), np.int64(stream[2])
    if not (1 <= precision <= 14 and 1 <= lanes <= 64) or (n % 2 == 0 and odd != 0):
        return False, 0, 0, empty, empty, 0
    used = np.empty(256, np.int64)
    s = 0
    for b in range(256):
        if _bit(stream, 3, b):
            used[s] = b
            s += 1
    end = 35 + (s * s + 7) // 8
    if s == 0 or length < end:
        return False, 0, 0, empty, empty, 0
    k = 0
    seen = np.zeros(s, np.int64)
    for cell in range(8 * (end - 35)):
        if _bit(stream, 35, cell):
            if cell >= s * s:  # reserved padding bit
                return False, 0, 0, empty, empty, 0
            k += 1
            seen[cell // s] = 1
            seen[cell % s] = 1
    if k == 0 or seen.sum() != s:
        return False, 0, 0, empty, empty, 0
    symbols = np.empty(k, np.int64)
    freq = np.empty(k, np.int64)
    pos = end
    m = 0
    for cell in range(s * s):
        if _bit(stream, 35, cell):
            symbols[m] = used[cell // s] | (used[cell % s] << 8)
            if pos >= length:
                return False, 0, 0, empty, empty, 0
            v = np.int64(stream[pos])
            pos += 1
            if v >= 0x80:
                if pos >= length or stream[pos] == 0 or stream[pos] >= 0x80:
                    return False, 0, 0, empty, empty, 0
                v = (v & 0x7F) | (np.int64(stream[pos]) << 7)
                pos += 1
            freq[m] = v + 1
            m += 1
    return True, precision, lanes, symbols, freq, pos


@_jit
def _decode_plane(stream, method, n, out):
    if method == 2:
        ok, precision, lanes, symbols, freq, size = _rans0_table(stream)
        width = 1
    else:
        ok, precision, lanes, symbols, freq, size = _pairs_table(stream, n)
        width = 2
    if not ok or freq.sum() != (np.int64(1) << precision):
        return False
    if stream.shape[0] < size + 4 * lanes or (stream.shape[0] - size - 4 * lanes) % 2:
        return False
    if width == 2 and n % 2:
        out[n - 1] = stream[2]
    table = decode_table(symbols, freq, precision)
    return rans_decode(stream[size:], table, precision, lanes, width, out[:n - n % width]) == DECODE_OK


@_jit
def decode_chunk(data, offset, methods, params, lengths, layout, checksum, out):
    """Decode one chunk whose planes (methods/params/lengths per plane, streams back to back from
    `offset` in `data`) the header parser checked, into `out` (n * k raw bytes); verify its XXH64.

    Returns CHUNK_OK, or the CHUNK_BAD_* code and the index of the plane at fault.
    """
    k = methods.shape[0]
    n = out.shape[0] // k
    planes = np.empty((k, n), np.uint8)
    pos = offset
    for j in range(k):
        stream = data[pos:pos + lengths[j]]
        pos += lengths[j]
        if methods[j] == 0:
            planes[j, :] = stream
        elif methods[j] == 1:
            planes[j, :] = params[j]
        elif not _decode_plane(stream, methods[j], n, planes[j]):
            return CHUNK_BAD_STREAM, j
    merge_planes(planes, layout, out)
    if xxh64(out) != checksum:
        return CHUNK_BAD_CHECKSUM, -1
    return CHUNK_OK, -1


@_jit
def decode_batch(data, offsets, counts, methods, params, lengths, layouts, checksums, out, out_starts):
    """Decode chunks c = 0.. of a batch with `decode_chunk`: chunk c has counts[c] planes described
    by row c of methods/params/lengths, and its raw bytes go to out[out_starts[c]:out_starts[c + 1]].
    Returns -1 when all are right, else the index of the first faulty chunk."""
    for c in range(offsets.shape[0]):
        k = counts[c]
        status, _ = decode_chunk(data, offsets[c], methods[c, :k], params[c, :k], lengths[c, :k], layouts[c],
                                 checksums[c], out[out_starts[c]:out_starts[c + 1]])
        if status != CHUNK_OK:
            return c
    return -1
