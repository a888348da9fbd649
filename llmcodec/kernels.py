"""Numba kernels: plane split/merge, histograms, frequency tables, rANS, whole chunks (spec 5, 6).

Pure functions over arrays, no I/O. Callers validate every length and table first: numba does no
bounds checks, so each kernel states what it assumes. Integer arithmetic is int64 throughout.
Loops index arrays with `range` counters or unsigned values: numba then skips its negative-index
wraparound, which would otherwise keep LLVM from vectorising a loop.

Two kernels do a chunk's whole work in one GIL-free call: `encode_chunk` (split, histograms,
model choice, rANS, tables, checksum) and `decode_chunks` (tables, rANS, merge, checksum, for a
batch of chunks). The rest serve them, `info`'s statistics and the tests. The decoding kernels
are the only decoder of the package: they check every table and stream and report a FAULT_* code
naming the failed check (codec.FAULTS holds the messages).
"""

from __future__ import annotations

import numpy as np
from .jit import kernel

RANS_L = 1 << 16  # lower bound of a state; states live in [RANS_L, 2^32) between symbols
ENCODE_LANES = 8  # lanes the encoder writes; the decoder has a fast path for them

# Writer's choices (spec 6.3, informative).
PRECISION = 12  # RANS0: 4096 slots, a 32 KiB decode table that stays in L1
PAIR_PRECISION = 13  # RANS0_PAIRS: hundreds of distinct pairs need finer frequencies
MAX_PAIR_BYTES = 64  # more distinct bytes than that make too many pairs
MAX_PAIRS = 2048  # rare pairs beyond this many would crowd out the common ones
# Level "fast" (codec.LEVELS): a plane is entropy-coded only if that saves at least this fraction
# of its raw size: coding a near-uniform plane (a bf16's sign + mantissa saves ~0.2%) would halve
# decode speed for ~0.1% of the file. ZipNN's equivalent threshold is 5%. Level "max" uses 0.
MIN_GAIN = 0.02
# Level "fast": RANS0_PAIRS decodes about 1.5x as fast as RANS0 (one step per two bytes); it is
# chosen while it costs at most this fraction more than RANS0. Level "max" uses 0.
PAIR_TOLERANCE = 0.01

# Kernels take these constants as np.int64(...): numba types a bare module constant passed as an
# argument as Literal[value] and compiles the callee (and all it inlines) once per value.

# Methods and layouts (spec sections 5 and 6), as format.py numbers them.
RAW, CONSTANT, RANS0, RANS0_PAIRS = 0, 1, 2, 3
BYTES, FIELDS16, FIELDS32, BLOCK_FIELDS, BLOCK_QUANTS = 0, 1, 2, 3, 4

# Table geometry of spec sections 6.1 and 6.4 (copies of format's: tests/test_constants.py)
MAX_PRECISION = 12  # RANS0 Precision 1..12
MAX_PAIR_PRECISION = 14  # RANS0_PAIRS Precision 1..14
MAX_LANES = 64
RANS0_TABLE = 34  # RANS0: Precision, Lanes, Symbol_Bitmap
PAIRS_TABLE = 35  # RANS0_PAIRS: Precision, Lanes, Odd_Byte, Byte_Bitmap

# Delta transforms (spec 11.1; copies of format.DELTA_*)
DELTA_DIFF = 1
DELTA_SUB = 2

# rans_decode status codes
DECODE_OK = 0
DECODE_BAD_STATE = 1
DECODE_STREAM_SHORT = 2
DECODE_BAD_END = 3

# A chunk descriptor for decode_chunks: one int64 row per chunk, of n elements of ROW_ITEMSIZE
# bytes in ROW_K planes; plane j holds n * width_j bytes, the bytes [field_j, field_j + width_j) of
# every element (dtypes.plane_fields).
ROW_OFFSET, ROW_CHECKSUM, ROW_N, ROW_K, ROW_LAYOUT, ROW_ITEMSIZE = 0, 1, 2, 3, 4, 5
ROW_METHODS, ROW_PARAMS, ROW_LENGTHS, ROW_WIDTHS, ROW_FIELDS = 6, 14, 22, 30, 38  # 8 columns each: plane j at + j
ROW_DELTA, ROW_BASE, ROW_BASE_CHECKSUM = 46, 47, 48  # a delta tensor's chunk: transform (0: none), its
# base bytes' offset in the base buffer, their XXH64 (spec 11.2)
ROW_SIZE = 49
MAX_PLANES = 8  # dtypes.MAX_PLANES, checked there for every dtype

_jit = kernel
_inline = kernel(inline="always")


# --- planes (spec section 5) ---------------------------------------------------------------------


@_jit
def split_planes(src, layout, planes):
    """Split the n * k raw little-endian bytes `src` into `planes[k, n]`.

    Assumes len(src) == n * k and `layout` allowed for k (FIELDS16: k = 2, FIELDS32: k = 4).
    """
    k = planes.shape[0]
    n = planes.shape[1]
    if k == 1:
        p = planes[0]
        for i in range(n):
            p[i] = src[i]
    elif k == 2:
        p0, p1 = planes[0], planes[1]
        if layout == FIELDS16:
            for i in range(n):
                lo = np.int64(src[2 * i])
                hi = np.int64(src[2 * i + 1])
                p0[i] = ((hi & 0x7F) << 1) | (lo >> 7)
                p1[i] = (hi & 0x80) | (lo & 0x7F)
        else:
            for i in range(n):
                p0[i] = src[2 * i]
                p1[i] = src[2 * i + 1]
    elif k == 4:
        p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
        if layout == FIELDS32:
            for i in range(n):
                b2 = np.int64(src[4 * i + 2])
                b3 = np.int64(src[4 * i + 3])
                p0[i] = ((b3 & 0x7F) << 1) | (b2 >> 7)
                p1[i] = (b3 & 0x80) | (b2 & 0x7F)
                p2[i] = src[4 * i + 1]
                p3[i] = src[4 * i]
        else:
            for i in range(n):
                p0[i] = src[4 * i]
                p1[i] = src[4 * i + 1]
                p2[i] = src[4 * i + 2]
                p3[i] = src[4 * i + 3]
    else:
        for j in range(k):
            p = planes[j]
            for i in range(n):
                p[i] = src[np.uint64(i * k + j)]


@_jit
def merge_planes(planes, layout, dst):
    """Inverse of split_planes: write the raw bytes of `planes[k, n]` into `dst` (n * k bytes)."""
    k = planes.shape[0]
    n = planes.shape[1]
    if k == 1:
        p = planes[0]
        for i in range(n):
            dst[i] = p[i]
    elif k == 2:
        p0, p1 = planes[0], planes[1]
        if layout == FIELDS16:
            for i in range(n):
                a = np.int64(p0[i])
                b = np.int64(p1[i])
                dst[2 * i] = ((a & 1) << 7) | (b & 0x7F)
                dst[2 * i + 1] = (b & 0x80) | (a >> 1)
        else:
            for i in range(n):
                dst[2 * i] = p0[i]
                dst[2 * i + 1] = p1[i]
    elif k == 4:
        p0, p1, p2, p3 = planes[0], planes[1], planes[2], planes[3]
        if layout == FIELDS32:
            for i in range(n):
                a = np.int64(p0[i])
                b = np.int64(p1[i])
                dst[4 * i] = p3[i]
                dst[4 * i + 1] = p2[i]
                dst[4 * i + 2] = ((a & 1) << 7) | (b & 0x7F)
                dst[4 * i + 3] = (b & 0x80) | (a >> 1)
        else:
            for i in range(n):
                dst[4 * i] = p0[i]
                dst[4 * i + 1] = p1[i]
                dst[4 * i + 2] = p2[i]
                dst[4 * i + 3] = p3[i]
    else:
        for j in range(k):
            p = planes[j]
            for i in range(n):
                dst[np.uint64(i * k + j)] = p[i]


@_jit
def split_fields(src, itemsize, fields, widths, dst):
    """LAYOUT_BLOCK_FIELDS: gather field j (bytes [fields[j], fields[j] + widths[j]) of each of the
    n = len(src) // itemsize elements) into dst, plane after plane. Assumes len(dst) == len(src)
    and that the fields tile the element."""
    n = src.shape[0] // itemsize
    pos = 0
    for j in range(fields.shape[0]):
        o, w = fields[j], widths[j]
        plane = dst[pos:pos + n * w]
        for b in range(n):
            row = src[b * itemsize + o:b * itemsize + o + w]
            part = plane[b * w:b * w + w]
            for t in range(w):
                part[t] = row[t]
        pos += n * w


@_jit
def merge_fields(planes, itemsize, fields, widths, dst):
    """Inverse of split_fields: scatter the planes (back to back in `planes`) into the elements."""
    n = dst.shape[0] // itemsize
    pos = 0
    for j in range(fields.shape[0]):
        o, w = fields[j], widths[j]
        plane = planes[pos:pos + n * w]
        for b in range(n):
            row = dst[b * itemsize + o:b * itemsize + o + w]
            part = plane[b * w:b * w + w]
            for t in range(w):
                row[t] = part[t]
        pos += n * w


# BLOCK_QUANTS (spec section 5): each type's quant fields, keyed by its block bytes (unique among
# the four types that may use the layout): (bits per quant, offset of qh, offset of qs / ql).
Q5_0_BYTES, Q5_1_BYTES, Q5_K_BYTES, Q6_K_BYTES = 22, 24, 176, 210


@_jit
def split_quants(src, itemsize, quants):
    """BLOCK_QUANTS: the joined quants of each block of `src` (n blocks of `itemsize` bytes, a
    type of ggml.JOINED_QUANTS) into `quants` (block_size bytes per block), in ggml's order."""
    n = src.shape[0] // itemsize
    for b in range(n):
        blk = src[b * itemsize:(b + 1) * itemsize]
        if itemsize == Q6_K_BYTES:
            q = quants[b * 256:(b + 1) * 256]
            for h in range(2):
                for ell in range(32):
                    lo0, lo1 = blk[64 * h + ell], blk[64 * h + ell + 32]
                    hi = blk[128 + 32 * h + ell]
                    q[128 * h + ell] = (lo0 & 0x0F) | ((hi & 3) << 4)
                    q[128 * h + 32 + ell] = (lo1 & 0x0F) | (((hi >> 2) & 3) << 4)
                    q[128 * h + 64 + ell] = (lo0 >> 4) | (((hi >> 4) & 3) << 4)
                    q[128 * h + 96 + ell] = (lo1 >> 4) | (((hi >> 6) & 3) << 4)
        elif itemsize == Q5_K_BYTES:
            q = quants[b * 256:(b + 1) * 256]
            for g in range(4):
                for ell in range(32):
                    lo, hi = blk[48 + 32 * g + ell], blk[16 + ell]
                    q[64 * g + ell] = (lo & 0x0F) | (((hi >> (2 * g)) & 1) << 4)
                    q[64 * g + 32 + ell] = (lo >> 4) | (((hi >> (2 * g + 1)) & 1) << 4)
        else:  # Q5_0, Q5_1
            q = quants[b * 32:(b + 1) * 32]
            at = 2 if itemsize == Q5_0_BYTES else 4
            qh = (np.uint32(blk[at]) | (np.uint32(blk[at + 1]) << 8) | (np.uint32(blk[at + 2]) << 16)
                  | (np.uint32(blk[at + 3]) << 24))
            for j in range(16):
                lo = blk[at + 4 + j]
                q[j] = (lo & 0x0F) | (((qh >> j) & 1) << 4)
                q[j + 16] = (lo >> 4) | (((qh >> (j + 16)) & 1) << 4)


@_jit
def merge_quants(quants, itemsize, dst):
    """Inverse of split_quants: the quant fields of each block of `dst` from `quants`; the other
    bytes of the blocks are left as they are. False (dst partly written) if a quant does not fit
    its bits (spec section 8: such a plane is corrupt)."""
    n = dst.shape[0] // itemsize
    top = 64 if itemsize == Q6_K_BYTES else 32
    for i in range(quants.shape[0]):
        if quants[i] >= top:
            return False
    for b in range(n):
        blk = dst[b * itemsize:(b + 1) * itemsize]
        if itemsize == Q6_K_BYTES:
            q = quants[b * 256:(b + 1) * 256]
            for h in range(2):
                for ell in range(32):
                    q0, q1 = q[128 * h + ell], q[128 * h + 32 + ell]
                    q2, q3 = q[128 * h + 64 + ell], q[128 * h + 96 + ell]
                    blk[64 * h + ell] = (q0 & 0x0F) | ((q2 & 0x0F) << 4)
                    blk[64 * h + ell + 32] = (q1 & 0x0F) | ((q3 & 0x0F) << 4)
                    blk[128 + 32 * h + ell] = (q0 >> 4) | ((q1 >> 4) << 2) | ((q2 >> 4) << 4) | ((q3 >> 4) << 6)
        elif itemsize == Q5_K_BYTES:
            q = quants[b * 256:(b + 1) * 256]
            for ell in range(32):
                hi = 0
                for g in range(4):
                    q0, q1 = q[64 * g + ell], q[64 * g + 32 + ell]
                    blk[48 + 32 * g + ell] = (q0 & 0x0F) | ((q1 & 0x0F) << 4)
                    hi |= ((q0 >> 4) << (2 * g)) | ((q1 >> 4) << (2 * g + 1))
                blk[16 + ell] = hi
        else:
            q = quants[b * 32:(b + 1) * 32]
            at = 2 if itemsize == Q5_0_BYTES else 4
            qh = np.uint32(0)
            for j in range(16):
                blk[at + 4 + j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)
                qh |= (np.uint32(q[j] >> 4) << j) | (np.uint32(q[j + 16] >> 4) << (j + 16))
            for t in range(4):
                blk[at + t] = (qh >> (8 * t)) & 0xFF
    return True


@_jit
def byte_histogram(plane):
    """Counts of the 256 byte values of `plane`: int64[256]. Four sub-counts, so runs of one byte
    do not wait on their own previous increment."""
    n = plane.shape[0]
    sub = np.zeros((4, 256), np.int64)
    s0, s1, s2, s3 = sub[0], sub[1], sub[2], sub[3]
    quad = n - n % 4
    for i in range(0, quad, 4):
        s0[plane[i]] += 1
        s1[plane[i + 1]] += 1
        s2[plane[i + 2]] += 1
        s3[plane[i + 3]] += 1
    for i in range(quad, n):
        s0[plane[i]] += 1
    return s0 + s1 + s2 + s3


CONTEXT_NONE = 256  # the context of an element that has none (first of a chunk, no row above)


@_jit
def context_counts(planes, cols, counts):
    """Add to counts[k, 3, 257, 256] each plane byte's joint counts with three contexts: [j, 0] the
    previous element's byte of plane j, [j, 1] the byte `cols` elements before (the element above
    in a row-major matrix of `cols` columns; cols = 0 for none), [j, 2] plane 0's byte of the same
    element (for j >= 1). An element without such a context counts under CONTEXT_NONE."""
    k = planes.shape[0]
    n = planes.shape[1]
    for j in range(k):
        row = planes[j]
        prev, above, first = counts[j, 0], counts[j, 1], counts[j, 2]
        if n > 0:
            prev[CONTEXT_NONE, row[0]] += 1
        for i in range(1, n):
            prev[row[i - 1], row[i]] += 1
        reach = min(cols, n) if cols > 0 else n
        for i in range(reach):
            above[CONTEXT_NONE, row[i]] += 1
        for i in range(reach, n):
            above[row[i - cols], row[i]] += 1
        base = planes[0]
        for i in range(n):
            if j == 0:
                first[CONTEXT_NONE, row[i]] += 1
            else:
                first[base[i], row[i]] += 1


@_jit
def pair_histogram(plane):
    """Counts of the 16-bit symbols plane[2i] | plane[2i + 1] << 8: int64[65536]."""
    counts = np.zeros(65536, np.int64)
    for i in range(plane.shape[0] // 2):
        counts[np.int64(plane[2 * i]) | (np.int64(plane[2 * i + 1]) << 8)] += 1
    return counts


# --- frequency tables (spec 6.1, 6.4) ------------------------------------------------------------


@_jit
def quantize_frequencies(counts, precision):
    """Frequencies >= 1 summing to 2^precision for symbols whose `counts` (all > 0) are given.

    Close to the counts' proportions: floor of the scaled counts (at least 1), then the remainder
    handed out, or the overshoot taken back, where that costs fewest bits. Needs between 1 and
    2^precision symbols.
    """
    k = counts.shape[0]
    total_slots = np.int64(1) << precision
    scale = total_slots / counts.sum()
    freq = np.empty(k, np.int64)
    for i in range(k):
        freq[i] = max(np.int64(1), np.int64(counts[i] * scale))
    excess = freq.sum() - total_slots
    if excess < 0:
        # Each +1 gains c * log2((f + 1) / f) bits; floor lost < 1 per symbol, so -excess < k.
        gain = np.empty(k)
        for i in range(k):
            gain[i] = -counts[i] * np.log2((freq[i] + 1) / freq[i])
        order = np.argsort(gain, kind="mergesort")
        for t in range(-excess):
            freq[order[t]] += 1
    while excess > 0:
        # Raising rare symbols to 1 overshot: take 1 back where it costs least.
        loss = np.empty(k)
        movable = 0
        for i in range(k):
            if freq[i] > 1:
                loss[i] = counts[i] * np.log2(freq[i] / (freq[i] - 1))
                movable += 1
            else:
                loss[i] = np.inf
        order = np.argsort(loss, kind="mergesort")
        take = min(excess, movable)
        for t in range(take):
            freq[order[t]] -= 1
        excess -= take
    return freq


@_jit
def ideal_bits(counts, freq, precision):
    """Bits the coded symbols take under `freq`: the quantized model's information content."""
    bits = 0.0
    for i in range(counts.shape[0]):
        bits += counts[i] * (precision - np.log2(freq[i]))
    return bits


@_jit
def fill_decode_table(symbols, freq, precision, table):
    """table[slot] = symbol | freq << 16 | (slot - cum) << 32 for the 2^precision slots.

    Assumes a validated table: every freq >= 1, sum(freq) == 2^precision <= len(table).
    """
    slot = 0
    for k in range(symbols.shape[0]):
        entry = symbols[k] | (freq[k] << 16)
        for bias in range(freq[k]):
            table[slot] = entry | (np.int64(bias) << 32)
            slot += 1


@_jit
def decode_table(symbols, freq, precision):
    """int64[2^precision], see fill_decode_table."""
    table = np.empty(np.int64(1) << precision, np.int64)
    fill_decode_table(symbols, freq, precision, table)
    return table


# --- rANS (spec 6.2, 6.3) ------------------------------------------------------------------------


@_jit
def rans_decode(stream, table, precision, lanes, width, out):
    """Decode len(out) // width symbols of `width` bytes (1, or 2 for pairs) from `stream` (lane
    states, then u16 words) into `out`, each symbol's low byte first.

    `table` holds a `fill_decode_table` of a validated frequency table. Never reads outside
    `stream` or writes outside `out`; returns a DECODE_* status (spec section 6.2: the end states
    must be RANS_L and every word consumed).
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
    if lanes == ENCODE_LANES and width == 1:
        i, used = _rans0_lanes8(stream[wpos:wend], table, precision, states, out[:n])
        wpos += 2 * used
    elif lanes == ENCODE_LANES and 4 * n >= (np.int64(1) << precision):
        # Its table split costs 2^precision steps: below a quarter of that many pairs (a plane
        # under 4 KiB at P = 13) the checked loop alone is as fast.
        i, used = _pairs_lanes8(stream[wpos:wend], table, precision, states, out[:2 * n])
        wpos += 2 * used
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
        x = ((e >> 16) & 0xFFFF) * (x >> precision) + (e >> 32)
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
def _rans0_lanes8(data, table, precision, states, out):
    """The bulk of an 8-lane RANS0 decode: symbols 0, 1, .. into `out` while a word for every lane
    is surely left (so each refill may read its word whether or not it takes it), lane states in
    locals, a uint32 table (symbol | freq << 8 | bias << 20: 16 KiB at P = 12) and unsigned indices
    (no negative-index wraparound code). `data`: the words' bytes (an even number); `table`: a
    fill_decode_table of precision <= 12. Returns (symbols decoded, words read), `states` updated;
    the caller decodes the rest with checked refills. A table with a frequency of 4096 (one
    symbol at P = 12: the writer makes such a plane CONSTANT) does not fit: (0, 0)."""
    size = np.int64(1) << precision
    packed = np.empty(size, np.uint32)
    wide = np.int64(0)
    for s in range(size):
        e = table[s]
        f = (e >> 16) & 0xFFFF
        wide |= f >> 12
        packed[s] = np.uint32((e & 0xFF) | (f << 8) | ((e >> 32) << 20))
    if wide:
        return 0, 0
    words = data.view(np.uint16)
    nw = np.int64(words.shape[0])
    n = np.int64(out.shape[0])
    mask = size - 1
    x0, x1, x2, x3 = states[0], states[1], states[2], states[3]
    x4, x5, x6, x7 = states[4], states[5], states[6], states[7]
    w = np.int64(0)
    i = np.int64(0)
    while i + 8 <= n and w + 8 <= nw:
        x0, s, w = _rans0_step(x0, packed, mask, precision, words, w)
        out[np.uint64(i)] = s
        x1, s, w = _rans0_step(x1, packed, mask, precision, words, w)
        out[np.uint64(i + 1)] = s
        x2, s, w = _rans0_step(x2, packed, mask, precision, words, w)
        out[np.uint64(i + 2)] = s
        x3, s, w = _rans0_step(x3, packed, mask, precision, words, w)
        out[np.uint64(i + 3)] = s
        x4, s, w = _rans0_step(x4, packed, mask, precision, words, w)
        out[np.uint64(i + 4)] = s
        x5, s, w = _rans0_step(x5, packed, mask, precision, words, w)
        out[np.uint64(i + 5)] = s
        x6, s, w = _rans0_step(x6, packed, mask, precision, words, w)
        out[np.uint64(i + 6)] = s
        x7, s, w = _rans0_step(x7, packed, mask, precision, words, w)
        out[np.uint64(i + 7)] = s
        i += 8
    states[0], states[1], states[2], states[3] = x0, x1, x2, x3
    states[4], states[5], states[6], states[7] = x4, x5, x6, x7
    return i, w


@_inline
def _rans0_step(x, packed, mask, precision, words, w):
    """One symbol of a lane: (state after, symbol, next word). The word at `w` exists (caller);
    it is read whether or not the refill takes it. States stay in [RANS_L, 2^32)."""
    e = np.int64(packed[np.uint64(x & mask)])
    x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
    take = np.int64(x < RANS_L)
    x = (x << (take << 4)) | (np.int64(words[np.uint64(w)]) & -take)
    return x, e & 0xFF, w + take


@_jit
def _pairs_lanes8(data, table, precision, states, out):
    """The bulk of an 8-lane RANS0_PAIRS decode, as _rans0_lanes8: symbols 0, 1, .. (two bytes
    each, low byte first) into `out` while a word for every lane is surely left, lane states in
    locals, unsigned indices. The table is split in two arrays per slot: the uint16 pair and a
    uint32 freq | bias << 16 (freq <= 2^14, bias < 2^14), 48 KiB at P = 13 where the int64 table
    takes 64 KiB (measured faster than one uint64 array, issue 17). `data`: the
    words' bytes (an even number); `table`: a fill_decode_table of precision <= 14; `out`: an
    even number of bytes. Returns (symbols decoded, words read), `states` updated; the caller
    decodes the rest with checked refills."""
    size = np.int64(1) << precision
    pairs = np.empty(size, np.uint16)
    fb = np.empty(size, np.uint32)
    for s in range(size):
        e = table[s]
        pairs[s] = e & 0xFFFF
        fb[s] = ((e >> 16) & 0xFFFF) | ((e >> 32) << 16)
    words = data.view(np.uint16)
    nw = np.int64(words.shape[0])
    n = np.int64(out.shape[0] // 2)
    mask = size - 1
    x0, x1, x2, x3 = states[0], states[1], states[2], states[3]
    x4, x5, x6, x7 = states[4], states[5], states[6], states[7]
    w = np.int64(0)
    i = np.int64(0)
    while i + 8 <= n and w + 8 <= nw:
        x0, s, w = _pairs_step(x0, pairs, fb, mask, precision, words, w)
        _put_pair(out, i, s)
        x1, s, w = _pairs_step(x1, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 1, s)
        x2, s, w = _pairs_step(x2, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 2, s)
        x3, s, w = _pairs_step(x3, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 3, s)
        x4, s, w = _pairs_step(x4, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 4, s)
        x5, s, w = _pairs_step(x5, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 5, s)
        x6, s, w = _pairs_step(x6, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 6, s)
        x7, s, w = _pairs_step(x7, pairs, fb, mask, precision, words, w)
        _put_pair(out, i + 7, s)
        i += 8
    states[0], states[1], states[2], states[3] = x0, x1, x2, x3
    states[4], states[5], states[6], states[7] = x4, x5, x6, x7
    return i, w


@_inline
def _pairs_step(x, pairs, fb, mask, precision, words, w):
    """One pair of a lane, as _rans0_step: (state after, pair, next word)."""
    slot = np.uint64(x & mask)
    e = np.int64(fb[slot])
    x = (e & 0xFFFF) * (x >> precision) + (e >> 16)
    take = np.int64(x < RANS_L)
    x = (x << (take << 4)) | (np.int64(words[np.uint64(w)]) & -take)
    return x, np.int64(pairs[slot]), w + take


@_inline
def _put_pair(out, i, s):
    """Pair i's two bytes, low first: byte stores are right at any offset of `out`, and LLVM
    merges them into one 16-bit store (as fast as a store through a uint16 view)."""
    out[np.uint64(2 * i)] = s & 0xFF
    out[np.uint64(2 * i + 1)] = s >> 8


@_jit
def rans_encode(ids, freq, cum, precision, words):
    """Encode the symbols whose model indices are `ids` (symbol i has frequency freq[ids[i]] and
    cumulative frequency cum[ids[i]]) with ENCODE_LANES lanes, symbol i in lane i mod 8.

    Returns the final states (the decoder's initial States) and `first`: the stream's words are
    words[first:], in the order the decoder reads them. Assumes every frequency >= 1, the
    frequencies add up to 2^precision, precision <= 14, len(words) >= len(ids) + 1 (at most one
    word per symbol is emitted, since freq << (32 - precision) >= 2^18).

    x // f is computed as floor(x * (1/f) + 2^-20) in float64, which is exact here: x / f <
    2^31, so the product is within 2^-21 of it, while a non-integer x / f is at least 1/f >=
    2^-14 away from the integers on either side. The word is stored whether or not it is
    emitted; only the emitted ones are kept (`wp` moves down), so no branch depends on the data.
    """
    n = ids.shape[0]
    states = np.full(ENCODE_LANES, RANS_L, np.int64)
    inverse = 1.0 / freq
    packed = freq | (cum << 32)  # fewer loads per symbol
    shift = 32 - precision
    wp = np.int64(words.shape[0] - 1)
    full = n - n % ENCODE_LANES
    for r in range(n - full):  # the last, partial group first: the encoder runs backwards
        i = n - 1 - r
        j = i % ENCODE_LANES
        states[j], wp = _encode_step(states[j], ids[np.uint64(i)], packed, inverse, shift, precision, words, wp)
    # Whole groups, lanes 7 down to 0, with the states in local variables.
    x0, x1, x2, x3 = states[0], states[1], states[2], states[3]
    x4, x5, x6, x7 = states[4], states[5], states[6], states[7]
    for g in range(full // ENCODE_LANES):
        b = np.uint64(full - ENCODE_LANES * (g + 1))
        x7, wp = _encode_step(x7, ids[b + np.uint64(7)], packed, inverse, shift, precision, words, wp)
        x6, wp = _encode_step(x6, ids[b + np.uint64(6)], packed, inverse, shift, precision, words, wp)
        x5, wp = _encode_step(x5, ids[b + np.uint64(5)], packed, inverse, shift, precision, words, wp)
        x4, wp = _encode_step(x4, ids[b + np.uint64(4)], packed, inverse, shift, precision, words, wp)
        x3, wp = _encode_step(x3, ids[b + np.uint64(3)], packed, inverse, shift, precision, words, wp)
        x2, wp = _encode_step(x2, ids[b + np.uint64(2)], packed, inverse, shift, precision, words, wp)
        x1, wp = _encode_step(x1, ids[b + np.uint64(1)], packed, inverse, shift, precision, words, wp)
        x0, wp = _encode_step(x0, ids[b], packed, inverse, shift, precision, words, wp)
    states[0], states[1], states[2], states[3] = x0, x1, x2, x3
    states[4], states[5], states[6], states[7] = x4, x5, x6, x7
    return states, wp + 1


@_inline
def _encode_step(x, k, packed, inverse, shift, precision, words, wp):
    """Encode symbol index k into state x; returns the new state and word position."""
    k = np.int64(k)
    fc = packed[k]
    f = fc & 0xFFFFFFFF
    take = np.int64(x >= (f << shift))
    words[np.uint64(wp)] = x & 0xFFFF
    x >>= take << 4
    q = np.int64(x * inverse[k] + 9.5367431640625e-07)  # 2^-20
    return (q << precision) + x - q * f + (fc >> 32), wp - take


@_inline
def _put_u16(out, pos, v):
    out[pos] = v & 0xFF
    out[pos + 1] = (v >> 8) & 0xFF


@_jit
def _put_stream(states, words, first, out, pos):
    """Write the lane states (u32, lane 0 first) then words[first:] (u16) at out[pos:]; return the end."""
    for j in range(ENCODE_LANES):
        x = states[j]
        _put_u16(out, pos, x & 0xFFFF)
        _put_u16(out, pos + 2, x >> 16)
        pos += 4
    body = out[pos:pos + 2 * (words.shape[0] - first)]
    tail = words[first:]
    for t in range(tail.shape[0]):
        v = np.int64(tail[t])
        body[2 * t] = v & 0xFF
        body[2 * t + 1] = v >> 8
    return pos + 2 * tail.shape[0]


@_jit
def _put_bitmap(members, size_bytes, out, pos):
    """A little-endian bitmap of `size_bytes` bytes at out[pos:] with bits `members` set."""
    for b in range(size_bytes):
        out[pos + b] = 0
    for m in members:
        out[pos + (m >> 3)] |= np.uint8(1 << (m & 7))


@_jit
def _pair_cells(plane, dense, s, cells):
    """cells[i] = dense[plane[2i]] * s + dense[plane[2i + 1]] for each pair i; returns the counts
    of the s * s cells. Four sub-counts, so a run of one pair does not wait on its own increment."""
    n2 = plane.shape[0] // 2
    high = dense * s
    sub = np.zeros((4, s * s), np.int64)
    s0, s1, s2, s3 = sub[0], sub[1], sub[2], sub[3]
    quad = n2 - n2 % 4
    for i in range(0, quad, 4):
        c0 = high[plane[2 * i]] + dense[plane[2 * i + 1]]
        c1 = high[plane[2 * i + 2]] + dense[plane[2 * i + 3]]
        c2 = high[plane[2 * i + 4]] + dense[plane[2 * i + 5]]
        c3 = high[plane[2 * i + 6]] + dense[plane[2 * i + 7]]
        cells[i] = c0
        cells[i + 1] = c1
        cells[i + 2] = c2
        cells[i + 3] = c3
        s0[c0] += 1
        s1[c1] += 1
        s2[c2] += 1
        s3[c3] += 1
    for i in range(quad, n2):
        c = high[plane[2 * i]] + dense[plane[2 * i + 1]]
        cells[i] = c
        s0[c] += 1
    return s0 + s1 + s2 + s3


ALL_METHODS = (1 << RAW) | (1 << CONSTANT) | (1 << RANS0) | (1 << RANS0_PAIRS)


@_jit
def encode_plane(plane, counts, out, pos, ids, words, allowed, min_gain, pair_tolerance):
    """Store `plane` (uint8[n], n >= 1, byte histogram `counts`) at out[pos:] by the cheapest of
    the methods in the bit set `allowed`: CONSTANT, RANS0, RANS0_PAIRS (taken while it costs at
    most `pair_tolerance` more than RANS0), RAW; entropy coding only if it saves `min_gain` of the
    plane (with RAW allowed). Returns (method, parameter, length).

    Pricing (the models' estimated sizes) comes first, then one stream writer runs; a coded
    stream that turns out no smaller than the budget falls back to RAW.
    Assumes room for n bytes at out[pos:] (more if RAW is not allowed), and scratch
    ids: uint16[>= n], words: uint16[>= n + 1].
    """
    n = plane.shape[0]
    symbols = np.flatnonzero(counts)
    s = symbols.shape[0]
    if s == 1 and allowed & (1 << CONSTANT):
        return CONSTANT, symbols[0], 0
    budget = n * (1.0 - min_gain) if allowed & (1 << RAW) else np.inf
    c = counts[symbols]
    freq = quantize_frequencies(c, np.int64(PRECISION))
    cost = RANS0_TABLE + 2 * s + ideal_bits(c, freq, np.int64(PRECISION)) / 8 if allowed & (1 << RANS0) else np.inf
    dense = np.zeros(256, np.int64)
    for t in range(s):
        dense[symbols[t]] = t
    pairs = False
    if allowed & (1 << RANS0_PAIRS) and n >= 2 and s <= MAX_PAIR_BYTES:
        ok, cells, pfreq, in_pair, table_size, pair_cost = _price_pairs(plane, dense, s, ids)
        pairs = ok and pair_cost <= cost * (1 + pair_tolerance)
        if pairs:
            cost = pair_cost
    # the estimate is within a few bytes of the coded size
    if cost + 4 * ENCODE_LANES < budget and (pairs or allowed & (1 << RANS0)):
        if pairs:
            length = _write_pairs(plane, symbols, cells, pfreq, in_pair, table_size, ids, words, out, pos, budget)
            if length >= 0:
                return RANS0_PAIRS, 0, length
        else:
            length = _write_rans0(plane, symbols, dense, freq, ids, words, out, pos, budget)
            if length >= 0:
                return RANS0, 0, length
    dst = out[pos:pos + n]
    for i in range(n):
        dst[i] = plane[i]
    return RAW, 0, n


@_inline
def _price_pairs(plane, dense, s, ids):
    """The RANS0_PAIRS model of `plane` (s distinct bytes, `dense`: a byte's index among them):
    (ok, cells, freq, in_pair, table_size, cost in bytes); ok is False with more than MAX_PAIRS
    pairs. Leaves ids[:n // 2] holding each pair's cell (first * s + second), for _write_pairs."""
    cell_counts = _pair_cells(plane, dense, s, ids)
    cells = np.flatnonzero(cell_counts)
    if cells.shape[0] > MAX_PAIRS:
        return False, cells, np.zeros(0, np.int64), np.zeros(0, np.int64), 0, np.inf
    pc = cell_counts[cells]
    pfreq = quantize_frequencies(pc, np.int64(PAIR_PRECISION))
    # Byte set S: the bytes of present pairs (with n odd, the last byte may be in none).
    in_pair = np.zeros(s, np.int64)
    for cell in cells:
        in_pair[cell // s] = 1
        in_pair[cell % s] = 1
    s2 = in_pair.sum()
    table_size = PAIRS_TABLE + (s2 * s2 + 7) // 8 + cells.shape[0] + np.count_nonzero(pfreq > 128)
    return True, cells, pfreq, in_pair, table_size, table_size + ideal_bits(pc, pfreq, np.int64(PAIR_PRECISION)) / 8


@_inline
def _write_pairs(plane, symbols, cells, pfreq, in_pair, table_size, ids, words, out, pos, budget):
    """Write the RANS0_PAIRS stream (spec 6.4) priced by _price_pairs at out[pos:]; its length,
    or -1 (nothing written) when it is not below `budget`."""
    n = plane.shape[0]
    n2 = n // 2
    s = symbols.shape[0]
    s2 = in_pair.sum()
    rank = np.zeros(s * s, np.int64)
    for t in range(cells.shape[0]):
        rank[cells[t]] = t
    sym_ids = ids[:n2]
    for i in range(n2):
        sym_ids[i] = rank[sym_ids[i]]
    states, first = rans_encode(sym_ids, pfreq, np.cumsum(pfreq) - pfreq, np.int64(PAIR_PRECISION), words[:n2 + 1])
    length = table_size + 4 * ENCODE_LANES + 2 * (n2 + 1 - first)
    if length >= budget:
        return -1
    newer = np.cumsum(in_pair) - 1  # index in S of a byte's index among the symbols
    used = np.empty(s2, np.int64)
    for t in range(s):
        if in_pair[t]:
            used[newer[t]] = symbols[t]
    out[pos] = PAIR_PRECISION
    out[pos + 1] = ENCODE_LANES
    out[pos + 2] = plane[n - 1] if n % 2 else 0
    _put_bitmap(used, np.int64(32), out, pos + 3)
    bits = np.empty(cells.shape[0], np.int64)
    for t in range(cells.shape[0]):
        bits[t] = newer[cells[t] // s] * s2 + newer[cells[t] % s]
    _put_bitmap(bits, (s2 * s2 + 7) // 8, out, pos + PAIRS_TABLE)
    p = pos + PAIRS_TABLE + (s2 * s2 + 7) // 8
    for t in range(pfreq.shape[0]):
        v = pfreq[t] - 1
        if v < 0x80:
            out[p] = v
            p += 1
        else:
            out[p] = (v & 0x7F) | 0x80
            out[p + 1] = v >> 7
            p += 2
    _put_stream(states, words[:n2 + 1], first, out, p)
    return length


@_inline
def _write_rans0(plane, symbols, dense, freq, ids, words, out, pos, budget):
    """Write the RANS0 stream (spec 6.1) of `plane` under `freq` at out[pos:]; its length, or -1
    (nothing written) when it is not below `budget`."""
    n = plane.shape[0]
    s = symbols.shape[0]
    sym_ids = ids[:n]
    for i in range(n):
        sym_ids[i] = dense[plane[i]]
    states, first = rans_encode(sym_ids, freq, np.cumsum(freq) - freq, np.int64(PRECISION), words[:n + 1])
    length = RANS0_TABLE + 2 * s + 4 * ENCODE_LANES + 2 * (n + 1 - first)
    if length >= budget:
        return -1
    out[pos] = PRECISION
    out[pos + 1] = ENCODE_LANES
    _put_bitmap(symbols, np.int64(32), out, pos + 2)
    for t in range(s):
        _put_u16(out, pos + RANS0_TABLE + 2 * t, freq[t] - 1)
    _put_stream(states, words[:n + 1], first, out, pos + RANS0_TABLE + 2 * s)
    return length


@_jit
def encode_chunk(raw, layout, itemsize, fields, widths, out, info, min_gain, pair_tolerance):
    """Encode one chunk of n elements, `raw` its n * itemsize bytes (n >= 1), in the planes that
    `layout` and (fields, widths) make (dtypes.plane_fields): their streams go back to back into
    `out` (room for n * sum(widths) bytes: no plane is stored larger than it is), and info[j] gets
    plane j's (method, parameter, length), each chosen by encode_plane with `min_gain` and
    `pair_tolerance` (a level's, codec.LEVELS). Returns the chunk's XXH64 and the streams' total
    length.
    """
    n = raw.shape[0] // itemsize
    k = widths.shape[0]
    planes = np.empty(n * widths.sum(), np.uint8)
    if layout == BLOCK_FIELDS:
        split_fields(raw, itemsize, fields, widths, planes)
    elif layout == BLOCK_QUANTS:  # the fields that are not quants, then the joined quants
        split_fields(raw, itemsize, fields[:k - 1], widths[:k - 1], planes)
        split_quants(raw, itemsize, planes[n * widths[:k - 1].sum():])
    else:
        split_planes(raw, layout, planes.reshape((k, n)))
    widest = 0
    for j in range(k):
        widest = max(widest, widths[j])
    ids = np.empty(n * widest, np.uint16)
    words = np.empty(n * widest + 1, np.uint16)
    pos = np.int64(0)  # typed: a literal 0 would compile encode_plane twice (Literal[0], then int64)
    start = 0
    for j in range(k):
        plane = planes[start:start + n * widths[j]]
        start += n * widths[j]
        method, parameter, length = encode_plane(plane, byte_histogram(plane), out, pos, ids, words,
                                                 np.int64(ALL_METHODS), min_gain, pair_tolerance)
        info[j, 0] = method
        info[j, 1] = parameter
        info[j, 2] = length
        pos += length
    return xxh64(raw), pos


# --- XXH64 (spec section 1), so checksums run on the worker threads without the GIL ---------------

_P1 = np.uint64(11400714785074694791)
_P2 = np.uint64(14029467366897019727)
_P3 = np.uint64(1609587929392839161)
_P4 = np.uint64(9650029242287828579)
_P5 = np.uint64(2870177450012600261)


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
# The kernels below check everything they read (spec section 6) and report the first check that
# fails as a FAULT_* code; codec.FAULTS turns a code into its message. There is no other decoder.

# Fault codes: 0 and rans_decode's DECODE_* (1-3), then the table and chunk checks.
FAULT_OK = DECODE_OK
FAULT_TABLE_SHORT = 4  # the stream is shorter than its table's fixed part
FAULT_PRECISION = 5  # Precision outside 1..12 (RANS0) or 1..14 (RANS0_PAIRS)
FAULT_LANES = 6  # Lanes outside 1..64
FAULT_BITMAP_EMPTY = 7  # Symbol_Bitmap (RANS0) or Byte_Bitmap (RANS0_PAIRS) empty
FAULT_TABLE_END = 8  # the stream ends inside its frequencies (RANS0) or Pair_Bitmap (RANS0_PAIRS)
FAULT_PAIRS_PLANE = 9  # RANS0_PAIRS for a plane of fewer than 2 bytes
FAULT_ODD_BYTE = 10  # Odd_Byte != 0 for a plane of even length
FAULT_PAIR_PADDING = 11  # reserved padding bits of Pair_Bitmap set
FAULT_PAIRS_EMPTY = 12  # Pair_Bitmap empty
FAULT_PAIR_UNUSED = 13  # a byte of Byte_Bitmap in no pair
FAULT_FREQ_END = 14  # the stream ends inside its Frequencies (RANS0_PAIRS)
FAULT_FREQ_NUMBER = 15  # a two-byte ULEB128 frequency whose second byte is not in 1..127
FAULT_STATES_SHORT = 16  # the stream ends inside its lane states
FAULT_ODD_WORDS = 17  # the words take an odd number of bytes
FAULT_FREQ_SUM = 18  # frequencies do not add up to 2^Precision
FAULT_CHECKSUM = 19  # the decoded chunk's XXH64 is not the stored one
FAULT_BASE = 20  # the base bytes a delta chunk needs are not the ones it was stored against
FAULT_QUANTS = 21  # a BLOCK_QUANTS quants plane holds a byte that does not fit the quant's bits
FAULT_PLANE_SHIFT = 8  # _decode_chunk's code: fault | plane << FAULT_PLANE_SHIFT


@_jit
def _bit(stream, base, i):
    return (stream[base + (i >> 3)] >> (i & 7)) & 1


@_jit
def _rans0_table(stream):
    """(fault, precision, lanes, symbols, freq, size) of a RANS0 stream's table (spec 6.1)."""
    empty = np.zeros(0, np.int64)
    if stream.shape[0] < RANS0_TABLE:
        return FAULT_TABLE_SHORT, 0, 0, empty, empty, 0
    precision, lanes = np.int64(stream[0]), np.int64(stream[1])
    if not 1 <= precision <= MAX_PRECISION:
        return FAULT_PRECISION, 0, 0, empty, empty, 0
    if not 1 <= lanes <= MAX_LANES:
        return FAULT_LANES, 0, 0, empty, empty, 0
    k = 0
    for s in range(256):
        k += _bit(stream, np.int64(2), s)
    size = RANS0_TABLE + 2 * k
    if k == 0:
        return FAULT_BITMAP_EMPTY, 0, 0, empty, empty, 0
    if stream.shape[0] < size:
        return FAULT_TABLE_END, 0, 0, empty, empty, 0
    symbols = np.empty(k, np.int64)
    freq = np.empty(k, np.int64)
    m = 0
    for s in range(256):
        if _bit(stream, np.int64(2), s):
            symbols[m] = s
            at = RANS0_TABLE + 2 * m
            freq[m] = (np.int64(stream[at]) | (np.int64(stream[at + 1]) << 8)) + 1
            m += 1
    return FAULT_OK, precision, lanes, symbols, freq, size


@_jit
def _pairs_table(stream, n):
    """(fault, precision, lanes, symbols, freq, size) of a RANS0_PAIRS stream's table (spec 6.4)
    for a plane of n bytes."""
    empty = np.zeros(0, np.int64)
    length = stream.shape[0]
    if length < PAIRS_TABLE:
        return FAULT_TABLE_SHORT, 0, 0, empty, empty, 0
    precision, lanes, odd = np.int64(stream[0]), np.int64(stream[1]), np.int64(stream[2])
    if not 1 <= precision <= MAX_PAIR_PRECISION:
        return FAULT_PRECISION, 0, 0, empty, empty, 0
    if not 1 <= lanes <= MAX_LANES:
        return FAULT_LANES, 0, 0, empty, empty, 0
    if n < 2:
        return FAULT_PAIRS_PLANE, 0, 0, empty, empty, 0
    if n % 2 == 0 and odd != 0:
        return FAULT_ODD_BYTE, 0, 0, empty, empty, 0
    used = np.empty(256, np.int64)
    s = 0
    for b in range(256):
        if _bit(stream, np.int64(3), b):
            used[s] = b
            s += 1
    if s == 0:
        return FAULT_BITMAP_EMPTY, 0, 0, empty, empty, 0
    end = PAIRS_TABLE + (s * s + 7) // 8
    if length < end:
        return FAULT_TABLE_END, 0, 0, empty, empty, 0
    k = 0
    seen = np.zeros(s, np.int64)
    for cell in range(8 * (end - PAIRS_TABLE)):
        if _bit(stream, np.int64(PAIRS_TABLE), cell):
            if cell >= s * s:
                return FAULT_PAIR_PADDING, 0, 0, empty, empty, 0
            k += 1
            seen[cell // s] = 1
            seen[cell % s] = 1
    if k == 0:
        return FAULT_PAIRS_EMPTY, 0, 0, empty, empty, 0
    if seen.sum() != s:
        return FAULT_PAIR_UNUSED, 0, 0, empty, empty, 0
    symbols = np.empty(k, np.int64)
    freq = np.empty(k, np.int64)
    pos = end
    m = 0
    for cell in range(s * s):
        if _bit(stream, np.int64(PAIRS_TABLE), cell):
            symbols[m] = used[cell // s] | (used[cell % s] << 8)
            if pos >= length:
                return FAULT_FREQ_END, 0, 0, empty, empty, 0
            v = np.int64(stream[pos])
            pos += 1
            if v >= 0x80:
                if pos >= length:
                    return FAULT_FREQ_END, 0, 0, empty, empty, 0
                if stream[pos] == 0 or stream[pos] >= 0x80:
                    return FAULT_FREQ_NUMBER, 0, 0, empty, empty, 0
                v = (v & 0x7F) | (np.int64(stream[pos]) << 7)
                pos += 1
            freq[m] = v + 1
            m += 1
    return FAULT_OK, precision, lanes, symbols, freq, pos


@_jit
def rans_table(stream, method, n):
    """(fault, precision, lanes, symbols, freq, size) of the table of a RANS0 or RANS0_PAIRS
    stream for a plane of n bytes, every check of spec sections 6.1-6.4 that needs no decoding
    done: `size` is where the lane states begin."""
    if method == RANS0:
        fault, precision, lanes, symbols, freq, size = _rans0_table(stream)
    else:
        fault, precision, lanes, symbols, freq, size = _pairs_table(stream, n)
    if fault != FAULT_OK:
        return fault, precision, lanes, symbols, freq, size
    if stream.shape[0] < size + 4 * lanes:
        return FAULT_STATES_SHORT, precision, lanes, symbols, freq, size
    if (stream.shape[0] - size - 4 * lanes) % 2:
        return FAULT_ODD_WORDS, precision, lanes, symbols, freq, size
    if freq.sum() != (np.int64(1) << precision):
        return FAULT_FREQ_SUM, precision, lanes, symbols, freq, size
    return FAULT_OK, precision, lanes, symbols, freq, size


@_jit
def _decode_plane(stream, method, n, out, table):
    """Decode a RANS0 or RANS0_PAIRS stream into the plane `out` (n bytes); a FAULT_* code.
    `table` has room for 2^MAX_PAIR_PRECISION entries."""
    fault, precision, lanes, symbols, freq, size = rans_table(stream, method, n)
    if fault != FAULT_OK:
        return fault
    width = 1 if method == RANS0 else 2
    if width == 2 and n % 2:
        out[n - 1] = stream[2]
    fill_decode_table(symbols, freq, precision, table)
    return rans_decode(stream[size:], table, precision, lanes, width, out[:n - n % width])


@_jit
def apply_delta(transform, word, raw, base, out):
    """The delta words of a transform (spec 11.1) of the fine-tune words in `raw` against the base
    words in `base`, into `out` (all three of one length, a multiple of word): the encoder's half
    of undo_delta. Words are read through views of their width (unaligned loads are fine on the
    CPUs numba targets)."""
    if word == 2:
        _apply(transform, raw.view(np.uint16), base.view(np.uint16), out.view(np.uint16), 0xFFFF, 15)
    elif word == 4:
        _apply(transform, raw.view(np.uint32), base.view(np.uint32), out.view(np.uint32), 0xFFFFFFFF, 31)
    elif word == 8:
        _apply64(transform, raw.view(np.uint64), base.view(np.uint64), out.view(np.uint64))
    else:
        _apply(transform, raw, base, out, 0xFF, 7)


@_jit
def undo_delta(transform, word, out, base):
    """Undo a delta transform (spec 11.1) in place: out's words become the fine-tune's, from the
    delta words in out and the base words in base (len(out) == len(base), a multiple of word),
    through views as in apply_delta."""
    if word == 2:
        _undo(transform, out.view(np.uint16), base.view(np.uint16))
    elif word == 4:
        _undo(transform, out.view(np.uint32), base.view(np.uint32))
    elif word == 8:
        _undo64(transform, out.view(np.uint64), base.view(np.uint64))
    else:
        _undo(transform, out, base)


# Words of 1, 2 and 4 bytes are computed in int64 (numba's promotion) and taken modulo 2^w by
# `mask` or by the store into the word's array; 8-byte words in uint64 throughout, every constant
# a uint64 (uint64 mixed with int64 would be float64).


@_inline
def _apply(transform, f, b, o, mask, top):
    for i in range(f.shape[0]):
        x = (np.int64(f[i]) - np.int64(b[i])) & mask
        if transform == DELTA_DIFF:
            x = (x << 1) ^ -(x >> top)  # zigzag
        o[i] = x & mask


@_inline
def _undo(transform, o, b):
    for i in range(o.shape[0]):
        d = np.int64(o[i])
        if transform == DELTA_DIFF:
            d = (d >> 1) ^ -(d & 1)  # unzigzag
        o[i] = np.int64(b[i]) + d  # the store keeps the low w bits


@_inline
def _apply64(transform, f, b, o):
    one, zero, top = np.uint64(1), np.uint64(0), np.uint64(63)
    for i in range(f.shape[0]):
        x = f[i] - b[i]
        if transform == DELTA_DIFF:
            x = (x << one) ^ (zero - (x >> top))
        o[i] = x


@_inline
def _undo64(transform, o, b):
    one, zero = np.uint64(1), np.uint64(0)
    for i in range(o.shape[0]):
        d = o[i]
        if transform == DELTA_DIFF:
            d = (d >> one) ^ (zero - (d & one))
        o[i] = b[i] + d


@_jit
def _decode_chunk(data, row, out, scratch, table, base):
    """Decode the chunk described by `row` (see ROW_*) from `data` into `out` (a delta chunk's
    base bytes are in `base`): FAULT_OK, or the first fault as fault | plane << FAULT_PLANE_SHIFT."""
    n, k, layout, itemsize = row[ROW_N], row[ROW_K], row[ROW_LAYOUT], row[ROW_ITEMSIZE]
    whole = k == 1  # one plane holds the element's bytes as they are: decode straight into out
    planes = out if whole else scratch[:n * row[ROW_WIDTHS:ROW_WIDTHS + k].sum()]
    pos = row[ROW_OFFSET]
    start = 0
    for j in range(k):
        method, length = row[ROW_METHODS + j], row[ROW_LENGTHS + j]
        size = n * row[ROW_WIDTHS + j]
        stream = data[pos:pos + length]
        pos += length
        plane = planes[start:start + size]
        start += size
        if method == RAW:
            for i in range(size):
                plane[i] = stream[i]
        elif method == CONSTANT:
            plane[:] = row[ROW_PARAMS + j]
        else:
            fault = _decode_plane(stream, method, size, plane, table)
            if fault != FAULT_OK:
                return fault | (j << FAULT_PLANE_SHIFT)
    if not whole:
        if layout == BLOCK_FIELDS:
            merge_fields(planes, itemsize, row[ROW_FIELDS:ROW_FIELDS + k], row[ROW_WIDTHS:ROW_WIDTHS + k], out)
        elif layout == BLOCK_QUANTS:
            side = n * row[ROW_WIDTHS:ROW_WIDTHS + k - 1].sum()
            merge_fields(planes[:side], itemsize, row[ROW_FIELDS:ROW_FIELDS + k - 1],
                         row[ROW_WIDTHS:ROW_WIDTHS + k - 1], out)
            if not merge_quants(planes[side:], itemsize, out):
                return FAULT_QUANTS | ((k - 1) << FAULT_PLANE_SHIFT)
        else:
            merge_planes(planes.reshape((k, n)), layout, out)
    if row[ROW_DELTA] != 0:  # spec 11.2: check the base bytes, then undo the transform
        b = base[row[ROW_BASE]:row[ROW_BASE] + out.shape[0]]
        if xxh64(b) != np.uint64(row[ROW_BASE_CHECKSUM]):
            return FAULT_BASE
        block = layout == BLOCK_FIELDS or layout == BLOCK_QUANTS  # a block's delta words are its bytes
        undo_delta(row[ROW_DELTA], 1 if block else itemsize, out, b)
    if xxh64(out) != np.uint64(row[ROW_CHECKSUM]):
        return FAULT_CHECKSUM
    return FAULT_OK


@_jit
def decode_chunks(data, rows, out_starts, out, base):
    """Decode the chunks described by `rows` (int64[m, ROW_SIZE], see ROW_*) from the file bytes
    `data`: chunk c's n * k raw bytes go to out[out_starts[c]:], and its XXH64 is verified. A
    delta chunk's base bytes are base[row[ROW_BASE]:][:n * k] (the caller put them there).

    The header parser has checked every row: offsets and plane lengths inside `data`, methods,
    layouts, lengths as the methods require, n * k bytes of room in `out`. Returns (-1, FAULT_OK)
    when all chunks are right, else (index, code) of the first faulty chunk, whose output is then
    undefined; code as _decode_chunk's.
    """
    biggest = 0
    for c in range(rows.shape[0]):  # plane bytes (BLOCK_QUANTS' exceed the raw bytes)
        biggest = max(biggest, rows[c, ROW_N] * rows[c, ROW_WIDTHS:ROW_WIDTHS + rows[c, ROW_K]].sum())
    scratch = np.empty(biggest, np.uint8)
    table = np.empty(1 << MAX_PAIR_PRECISION, np.int64)
    for c in range(rows.shape[0]):
        start = out_starts[c]
        size = rows[c, ROW_N] * rows[c, ROW_ITEMSIZE]
        code = _decode_chunk(data, rows[c], out[start:start + size], scratch, table, base)
        if code != FAULT_OK:
            return c, code
    return -1, FAULT_OK
