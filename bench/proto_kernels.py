"""Prototype order-0 rANS kernels for the planes coded one step per byte (issue 17), on real planes.

    python bench/proto_kernels.py [--rounds 7]

The planes: the bf16 sign + mantissa byte (FIELDS16 plane 1), fp16's high byte (sign, 5 exponent
bits, 2 mantissa bits; BYTES plane 1) and GGUF Q8_0 quants (`qs`), cut into the planes of 1 MiB
chunks of the real files of bench/speed.py. Every kernel's output is checked against the plane.

Decoders, all single-threaded, timed in CPU time, alternating round after round (medians):
- `current`: llmcodec's own decoder (`kernels.rans_decode`) on llmcodec's own RANS0 stream of the
  plane (8 lanes, precision 12, an int64 decode table of 32 KiB);
- `locals32`: the same stream format, states in local variables, a uint32 decode table (16 KiB),
  width fixed at one byte: a drop-in replacement that changes no byte of the format;
- `locals32 P11` / `P10`: the same with a coarser table (8 / 4 KiB): a writer's choice, no format
  change (Precision is a field), at the ratio cost reported;
- `lanes32`: 32 lanes, each with a stream of its own (a format change), states and stream
  positions in arrays so the lane loop has no dependence between lanes;
- `fused merge`: `locals32` writing fp16's high byte straight into the element bytes and copying
  the raw low byte in the same loop, against `locals32` into a plane + a separate merge pass.
Encode side: the split of bf16 / fp16 elements into planes and the planes' histograms in one pass,
against today's split then one histogram per plane.

llmcodec internals are used only in the functions named `current_*` (the kernel under test).
Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402

RANS_L = 1 << 16  # a state lives in [RANS_L, 2^32) between symbols
CHUNK = 1 << 20  # raw bytes per chunk, as llmcodec's default
LANES = 8


# --- real planes ---------------------------------------------------------------------------------


def _raw(path: Path, dtype) -> np.ndarray:
    """The tensor bytes of a safetensors file's tensors of `dtype`, back to back."""
    from safetensors.numpy import load_file

    parts = [np.ascontiguousarray(t).view(np.uint8).ravel() for t in load_file(str(path)).values() if t.dtype == dtype]
    return np.concatenate(parts)


def chunk_planes(raw: np.ndarray, itemsize: int, which: str) -> list[np.ndarray]:
    """Plane `which` of each 1 MiB chunk of the element bytes `raw`."""
    planes = []
    for start in range(0, raw.shape[0] - itemsize + 1, CHUNK):
        e = raw[start:start + CHUNK]
        e = e[:e.shape[0] - e.shape[0] % itemsize].reshape(-1, itemsize)
        if which == "bf16 sign+mantissa":
            planes.append(np.ascontiguousarray((e[:, 1] & 0x80) | (e[:, 0] & 0x7F)))
        elif which == "fp16 high byte":
            planes.append(np.ascontiguousarray(e[:, 1]))
    return [p for p in planes if p.shape[0] >= 4096]


def real_planes(tmp: Path) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """name -> (planes, raw chunks of their elements or []), from the real files."""
    import ml_dtypes

    from gguf_fields import gguf_files
    from real_weights import real_files
    from weights import minilm_files

    files = {f"MiniLM {d}": p for d, p in minilm_files(tmp).items()}
    files.update({label.split(" (")[0] + " " + d: p for label, (p, d) in real_files().items()})
    out = {}
    for stem in ("MiniLM", "speech", "vision"):
        bf = _raw(files[f"{stem} bf16"], ml_dtypes.bfloat16)
        out[f"{stem} bf16 sign+mantissa"] = (chunk_planes(bf, 2, "bf16 sign+mantissa"), [])
        fp = _raw(files[f"{stem} fp16"], np.float16)
        raws = [fp[s:s + CHUNK] for s in range(0, fp.shape[0] - 8192 + 1, CHUNK)]
        out[f"{stem} fp16 high byte"] = (chunk_planes(fp, 2, "fp16 high byte"), raws)
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_files(tmp)["Gemma-3-270M Q4_K_M"]))
    qs = np.concatenate([np.asarray(t.data).view(np.uint8).reshape(-1, 34)[:, 2:].ravel()
                         for t in reader.tensors if t.tensor_type.name == "Q8_0"])
    out["Gemma-3-270M Q8_0 qs"] = ([qs[s:s + CHUNK] for s in range(0, qs.shape[0] - CHUNK + 1, CHUNK)][:24], [])
    return out


# --- frequency tables ----------------------------------------------------------------------------


def frequencies(plane: np.ndarray, precision: int) -> np.ndarray:
    """int64[256] frequencies summing to 2^precision, >= 1 for every present byte (llmcodec's
    quantisation, a pure function of the counts)."""
    from llmcodec.models import quantize_frequencies

    counts = np.bincount(plane, minlength=256)
    symbols = np.flatnonzero(counts)
    freq = np.zeros(256, np.int64)
    freq[symbols] = quantize_frequencies(counts[symbols], precision)
    return freq


def coded_bits(plane: np.ndarray, freq: np.ndarray, precision: int) -> float:
    counts = np.bincount(plane, minlength=256)
    present = counts > 0
    return float(np.sum(counts[present] * (precision - np.log2(freq[present]))))


def table32(freq: np.ndarray, precision: int) -> np.ndarray:
    """uint32[2^P]: symbol | freq << 8 | (slot - cum) << 20. Needs P <= 12 and every freq < 4096
    (a plane of one symbol is a CONSTANT, never coded)."""
    table = np.empty(1 << precision, np.uint32)
    slot = 0
    for s in np.flatnonzero(freq):
        f = int(freq[s])
        table[slot:slot + f] = s | (f << 8) | (np.arange(f, dtype=np.uint32) << 20)
        slot += f
    return table


# --- encoders (the prototype formats) ------------------------------------------------------------


@njit(cache=True, nogil=True)
def encode_interleaved(plane, freq, precision, lanes, words):
    """RANS0 words as llmcodec lays them out (symbol i in lane i mod lanes, one word stream read in
    symbol order). Returns (states, first): the stream is words[first:]."""
    n = plane.shape[0]
    cum = np.zeros(256, np.int64)
    for s in range(1, 256):
        cum[s] = cum[s - 1] + freq[s - 1]
    states = np.full(lanes, RANS_L, np.int64)
    wp = words.shape[0]
    for i in range(n - 1, -1, -1):
        j = i % lanes
        s = plane[i]
        f = freq[s]
        x = states[j]
        if x >= (f << (32 - precision)):
            wp -= 1
            words[wp] = x & 0xFFFF
            x >>= 16
        states[j] = ((x // f) << precision) + x % f + cum[s]
    return states, wp


@njit(cache=True, nogil=True)
def encode_lanes(plane, freq, precision, lanes, words, starts, ends):
    """One word stream per lane (lane j: symbols j, j + lanes, ...), lane j's words at
    words[starts[j]:ends[j]] in the order its decoder reads them. Assumes len(plane) % lanes == 0
    and room for n / lanes + 1 words per lane. Returns the states."""
    n = plane.shape[0]
    per = n // lanes + 1
    cum = np.zeros(256, np.int64)
    for s in range(1, 256):
        cum[s] = cum[s - 1] + freq[s - 1]
    states = np.full(lanes, RANS_L, np.int64)
    for j in range(lanes):
        ends[j] = (j + 1) * per
        starts[j] = ends[j]
    for i in range(n - 1, -1, -1):
        j = i % lanes
        s = plane[i]
        f = freq[s]
        x = states[j]
        if x >= (f << (32 - precision)):
            starts[j] -= 1
            words[starts[j]] = x & 0xFFFF
            x >>= 16
        states[j] = ((x // f) << precision) + x % f + cum[s]
    return states


# --- decoders ------------------------------------------------------------------------------------


@njit(inline="always")
def _step(x, table, mask, precision, words, wpos):
    """One symbol of a lane: (state after, symbol, next word position). Branchless refill: the
    word at wpos is read whether or not it is taken (the caller guarantees it exists)."""
    e = np.int64(table[np.uint64(x & mask)])  # unsigned indices: no negative-index wraparound code
    x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
    take = np.int64(x < RANS_L)
    x = (x << (take << 4)) | (np.int64(words[np.uint64(wpos)]) & -take)
    return x, e & 0xFF, wpos + take


@njit(cache=True, nogil=True)
def decode_locals32(states, words, table, precision, out):
    """8 interleaved lanes (llmcodec's RANS0 layout) into out; states in locals, uint32 table.
    `words`: the stream's u16 words. Returns the number of words read (must be all of them)."""
    n = out.shape[0]
    mask = (np.int64(1) << precision) - 1
    x0, x1, x2, x3 = np.int64(states[0]), np.int64(states[1]), np.int64(states[2]), np.int64(states[3])
    x4, x5, x6, x7 = np.int64(states[4]), np.int64(states[5]), np.int64(states[6]), np.int64(states[7])
    w = np.int64(0)
    nw = words.shape[0]
    i = 0
    while i + 8 <= n and w + 8 <= nw:  # a word for every lane surely left: branchless refills
        x0, s, w = _step(x0, table, mask, precision, words, w)
        out[i] = s
        x1, s, w = _step(x1, table, mask, precision, words, w)
        out[i + 1] = s
        x2, s, w = _step(x2, table, mask, precision, words, w)
        out[i + 2] = s
        x3, s, w = _step(x3, table, mask, precision, words, w)
        out[i + 3] = s
        x4, s, w = _step(x4, table, mask, precision, words, w)
        out[i + 4] = s
        x5, s, w = _step(x5, table, mask, precision, words, w)
        out[i + 5] = s
        x6, s, w = _step(x6, table, mask, precision, words, w)
        out[i + 6] = s
        x7, s, w = _step(x7, table, mask, precision, words, w)
        out[i + 7] = s
        i += 8
    st = np.array([x0, x1, x2, x3, x4, x5, x6, x7])
    while i < n:  # the tail, with a checked refill
        j = i % 8
        x = st[j]
        e = np.int64(table[x & mask])
        out[i] = e & 0xFF
        x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
        if x < RANS_L and w < nw:
            x = (x << 16) | np.int64(words[w])
            w += 1
        st[j] = x
        i += 1
    return w


@njit(inline="always")
def _own_step(x, table, mask, precision, words, p):
    """One symbol of a lane with a word stream of its own, positioned at p."""
    e = np.int64(table[np.uint64(x & mask)])
    x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
    take = np.int64(x < RANS_L)
    x = (x << (take << 4)) | (np.int64(words[np.uint64(p)]) & -take)
    return x, e & 0xFF, p + take


@njit(cache=True, nogil=True)
def decode_own8(states, words, starts, ends, table, precision, out):
    """8 lanes, lane j with its own word stream words[starts[j]:ends[j]] (lane streams back to back
    in lane order), states and positions in locals: no lane waits for another's refill. Reading
    one word past a lane's end reads the next lane's first word (never used); only the last lane
    can run off the array, so the fast loop runs while it has a word left. Returns False on a fault."""
    n = out.shape[0]
    mask = (np.int64(1) << precision) - 1
    x0, x1, x2, x3 = np.int64(states[0]), np.int64(states[1]), np.int64(states[2]), np.int64(states[3])
    x4, x5, x6, x7 = np.int64(states[4]), np.int64(states[5]), np.int64(states[6]), np.int64(states[7])
    p0, p1, p2, p3 = starts[0], starts[1], starts[2], starts[3]
    p4, p5, p6, p7 = starts[4], starts[5], starts[6], starts[7]
    last = words.shape[0]
    i = 0
    while i + 8 <= n and p7 < last:
        x0, s, p0 = _own_step(x0, table, mask, precision, words, p0)
        out[i] = s
        x1, s, p1 = _own_step(x1, table, mask, precision, words, p1)
        out[i + 1] = s
        x2, s, p2 = _own_step(x2, table, mask, precision, words, p2)
        out[i + 2] = s
        x3, s, p3 = _own_step(x3, table, mask, precision, words, p3)
        out[i + 3] = s
        x4, s, p4 = _own_step(x4, table, mask, precision, words, p4)
        out[i + 4] = s
        x5, s, p5 = _own_step(x5, table, mask, precision, words, p5)
        out[i + 5] = s
        x6, s, p6 = _own_step(x6, table, mask, precision, words, p6)
        out[i + 6] = s
        x7, s, p7 = _own_step(x7, table, mask, precision, words, p7)
        out[i + 7] = s
        i += 8
    st = np.array([x0, x1, x2, x3, x4, x5, x6, x7])
    ps = np.array([p0, p1, p2, p3, p4, p5, p6, p7])
    while i < n:
        j = i % 8
        x = st[j]
        e = np.int64(table[x & mask])
        out[i] = e & 0xFF
        x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
        if x < RANS_L:
            if ps[j] >= ends[j]:
                return False
            x = (x << 16) | np.int64(words[ps[j]])
            ps[j] += 1
        st[j] = x
        i += 1
    for j in range(8):
        if st[j] != RANS_L or ps[j] != ends[j]:
            return False
    return True


@njit(cache=True, nogil=True)
def decode_locals32_x2(sa, wa, ta, oa, sb, wb, tb, ob, precision):
    """Two planes' RANS0 streams (llmcodec's layout) decoded in one loop, 16 states in flight:
    two independent refill chains. Assumes len(oa) == len(ob)."""
    n = oa.shape[0]
    mask = (np.int64(1) << precision) - 1
    a0, a1, a2, a3 = np.int64(sa[0]), np.int64(sa[1]), np.int64(sa[2]), np.int64(sa[3])
    a4, a5, a6, a7 = np.int64(sa[4]), np.int64(sa[5]), np.int64(sa[6]), np.int64(sa[7])
    b0, b1, b2, b3 = np.int64(sb[0]), np.int64(sb[1]), np.int64(sb[2]), np.int64(sb[3])
    b4, b5, b6, b7 = np.int64(sb[4]), np.int64(sb[5]), np.int64(sb[6]), np.int64(sb[7])
    u = np.int64(0)
    v = np.int64(0)
    i = 0
    while i + 8 <= n and u + 8 <= wa.shape[0] and v + 8 <= wb.shape[0]:
        a0, s, u = _step(a0, ta, mask, precision, wa, u)
        oa[i] = s
        b0, s, v = _step(b0, tb, mask, precision, wb, v)
        ob[i] = s
        a1, s, u = _step(a1, ta, mask, precision, wa, u)
        oa[i + 1] = s
        b1, s, v = _step(b1, tb, mask, precision, wb, v)
        ob[i + 1] = s
        a2, s, u = _step(a2, ta, mask, precision, wa, u)
        oa[i + 2] = s
        b2, s, v = _step(b2, tb, mask, precision, wb, v)
        ob[i + 2] = s
        a3, s, u = _step(a3, ta, mask, precision, wa, u)
        oa[i + 3] = s
        b3, s, v = _step(b3, tb, mask, precision, wb, v)
        ob[i + 3] = s
        a4, s, u = _step(a4, ta, mask, precision, wa, u)
        oa[i + 4] = s
        b4, s, v = _step(b4, tb, mask, precision, wb, v)
        ob[i + 4] = s
        a5, s, u = _step(a5, ta, mask, precision, wa, u)
        oa[i + 5] = s
        b5, s, v = _step(b5, tb, mask, precision, wb, v)
        ob[i + 5] = s
        a6, s, u = _step(a6, ta, mask, precision, wa, u)
        oa[i + 6] = s
        b6, s, v = _step(b6, tb, mask, precision, wb, v)
        ob[i + 6] = s
        a7, s, u = _step(a7, ta, mask, precision, wa, u)
        oa[i + 7] = s
        b7, s, v = _step(b7, tb, mask, precision, wb, v)
        ob[i + 7] = s
        i += 8
    _tail(np.array([a0, a1, a2, a3, a4, a5, a6, a7]), u, wa, ta, precision, oa, i)
    _tail(np.array([b0, b1, b2, b3, b4, b5, b6, b7]), v, wb, tb, precision, ob, i)


@njit(cache=True, nogil=True)
def _tail(st, w, words, table, precision, out, i):
    """Symbols i.. of an 8-lane RANS0 stream with checked refills; returns words read."""
    mask = (np.int64(1) << precision) - 1
    nw = words.shape[0]
    n = out.shape[0]
    while i < n:
        j = i % 8
        x = st[j]
        e = np.int64(table[x & mask])
        out[i] = e & 0xFF
        x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
        if x < RANS_L and w < nw:
            x = (x << 16) | np.int64(words[w])
            w += 1
        st[j] = x
        i += 1
    return w


@njit(cache=True, nogil=True)
def decode_locals32_fused(states, words, table, precision, low, out):
    """decode_locals32 for fp16's high byte, writing element i's bytes out[2i] = low[i] (the raw
    low-byte plane) and out[2i + 1] = the decoded byte: the merge in the decoder's loop."""
    n = low.shape[0]
    mask = (np.int64(1) << precision) - 1
    x0, x1, x2, x3 = np.int64(states[0]), np.int64(states[1]), np.int64(states[2]), np.int64(states[3])
    x4, x5, x6, x7 = np.int64(states[4]), np.int64(states[5]), np.int64(states[6]), np.int64(states[7])
    w = np.int64(0)
    nw = words.shape[0]
    i = 0
    while i + 8 <= n and w + 8 <= nw:
        x0, s, w = _step(x0, table, mask, precision, words, w)
        out[2 * i], out[2 * i + 1] = low[i], s
        x1, s, w = _step(x1, table, mask, precision, words, w)
        out[2 * i + 2], out[2 * i + 3] = low[i + 1], s
        x2, s, w = _step(x2, table, mask, precision, words, w)
        out[2 * i + 4], out[2 * i + 5] = low[i + 2], s
        x3, s, w = _step(x3, table, mask, precision, words, w)
        out[2 * i + 6], out[2 * i + 7] = low[i + 3], s
        x4, s, w = _step(x4, table, mask, precision, words, w)
        out[2 * i + 8], out[2 * i + 9] = low[i + 4], s
        x5, s, w = _step(x5, table, mask, precision, words, w)
        out[2 * i + 10], out[2 * i + 11] = low[i + 5], s
        x6, s, w = _step(x6, table, mask, precision, words, w)
        out[2 * i + 12], out[2 * i + 13] = low[i + 6], s
        x7, s, w = _step(x7, table, mask, precision, words, w)
        out[2 * i + 14], out[2 * i + 15] = low[i + 7], s
        i += 8
    st = np.array([x0, x1, x2, x3, x4, x5, x6, x7])
    while i < n:
        j = i % 8
        x = st[j]
        e = np.int64(table[x & mask])
        out[2 * i], out[2 * i + 1] = low[i], e & 0xFF
        x = ((e >> 8) & 0xFFF) * (x >> precision) + (e >> 20)
        if x < RANS_L and w < nw:
            x = (x << 16) | np.int64(words[w])
            w += 1
        st[j] = x
        i += 1
    return w


@njit(cache=True, nogil=True)
def merge_bytes2(low, high, out):
    """The separate merge pass: out[2i] = low[i], out[2i + 1] = high[i]."""
    for i in range(low.shape[0]):
        out[2 * i] = low[i]
        out[2 * i + 1] = high[i]


@njit(cache=True, nogil=True)
def decode_lanes(states, words, starts, ends, table, precision, out):
    """`lanes` lanes, each with its own word stream words[starts[j]:ends[j]]. Lane loop without
    dependences between lanes. Assumes len(out) % lanes == 0; returns False on a fault."""
    lanes = states.shape[0]
    n = out.shape[0]
    mask = np.uint32((1 << precision) - 1)
    x = states.astype(np.uint32)
    pos = starts.astype(np.uint32)
    limit = ends.astype(np.uint32)
    for g in range(n // lanes):
        o = out[g * lanes:(g + 1) * lanes]
        # a group's refills are safe when every lane has a word left; else check each
        safe = True
        for j in range(lanes):
            safe &= pos[j] < limit[j]
        if safe:
            for j in range(lanes):
                e = table[x[j] & mask]
                o[j] = e & np.uint32(0xFF)
                y = ((e >> np.uint32(8)) & np.uint32(0xFFF)) * (x[j] >> np.uint32(precision)) + (e >> np.uint32(20))
                take = y < np.uint32(RANS_L)
                wv = np.uint32(words[pos[j]])
                x[j] = (y << np.uint32(16)) | wv if take else y
                pos[j] += np.uint32(take)
        else:
            for j in range(lanes):
                e = table[x[j] & mask]
                o[j] = e & np.uint32(0xFF)
                y = ((e >> np.uint32(8)) & np.uint32(0xFFF)) * (x[j] >> np.uint32(precision)) + (e >> np.uint32(20))
                if y < np.uint32(RANS_L) and pos[j] < limit[j]:
                    y = (y << np.uint32(16)) | np.uint32(words[pos[j]])
                    pos[j] += np.uint32(1)
                x[j] = y
    for j in range(lanes):
        if x[j] != RANS_L or pos[j] != limit[j]:
            return False
    return True


# --- encode side: split + histograms --------------------------------------------------------------


@njit(cache=True, nogil=True)
def split16_histograms(raw, fields16, p0, p1):
    """Split 2-byte elements into two planes (FIELDS16 when fields16, else BYTES) and count both
    planes' bytes in the same pass: int64[2, 256]."""
    n = p0.shape[0]
    h = np.zeros((2, 2, 256), np.int64)  # two sub-counts per plane: no wait on one's own increment
    for i in range(n):
        lo = np.int64(raw[2 * i])
        hi = np.int64(raw[2 * i + 1])
        if fields16:
            a = ((hi & 0x7F) << 1) | (lo >> 7)
            b = (hi & 0x80) | (lo & 0x7F)
        else:
            a = lo
            b = hi
        p0[i] = a
        p1[i] = b
        h[0, i & 1, a] += 1
        h[1, i & 1, b] += 1
    return h[:, 0] + h[:, 1]


def current_split_histograms(raw: np.ndarray, layout: int, planes: np.ndarray) -> list:
    """Today's encode front end (llmcodec internals): split_planes, then byte_histogram per plane."""
    from llmcodec import kernels

    kernels.split_planes(raw, layout, planes)
    return [kernels.byte_histogram(planes[0]), kernels.byte_histogram(planes[1])]


# --- today's decoder, for the baseline ------------------------------------------------------------


def current_stream(plane: np.ndarray):
    """llmcodec's RANS0 stream of `plane` and what its decoder needs (llmcodec internals)."""
    from llmcodec import kernels, models

    coded = models.encode_plane(plane, methods=[kernels.RANS0])
    table = models.parse_table(memoryview(coded.stream), kernels.RANS0, plane.shape[0], "proto")
    return coded.stream[table.size:], table.decode_table(), table.precision, table.lanes, coded.length


def current_decode(body, table, precision, lanes, out) -> None:
    """llmcodec's rANS decoder (kernels.rans_decode), one plane."""
    from llmcodec import kernels

    assert kernels.rans_decode(body, table, precision, lanes, 1, out) == kernels.DECODE_OK


# --- measurement ---------------------------------------------------------------------------------


def cpu(fn) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def prepare(planes: list[np.ndarray], raws: list[np.ndarray]) -> dict:
    """For every chunk plane: today's stream, the prototype streams, ratio figures."""
    cases = []
    bits = {12: 0.0, 11: 0.0, 10: 0.0}
    sizes = {"current": 0, "raw": 0}
    for plane, raw in zip(planes, raws or [None] * len(planes)):
        n = plane.shape[0] - plane.shape[0] % 32
        plane = plane[:n]
        c = {"plane": plane, "current": current_stream(plane)}
        sizes["current"] += c["current"][4]
        sizes["raw"] += n
        c["v"] = {}
        for p in (12, 11, 10):
            freq = frequencies(plane, p)
            bits[p] += coded_bits(plane, freq, p)
            words = np.empty(n + 1, np.uint16)
            states, first = encode_interleaved(plane, freq, p, LANES, words)
            c["v"][p] = (states, words[first:].copy(), table32(freq, p))
            if p == 12:
                lw = np.empty(32 * (n // 32 + 1), np.uint16)
                starts, ends = np.empty(32, np.int64), np.empty(32, np.int64)
                lstates = encode_lanes(plane, freq, p, 32, lw, starts, ends)
                c["lanes"] = (lstates, lw, starts, ends)
                ow = np.empty(8 * (n // 8 + 1), np.uint16)
                os_, oe = np.empty(8, np.int64), np.empty(8, np.int64)
                ostates = encode_lanes(plane, freq, p, 8, ow, os_, oe)
                c["own8"] = pack_lanes(ostates, ow, os_, oe)
        if raw is not None:
            c["low"] = np.ascontiguousarray(raw[:2 * n].reshape(-1, 2)[:, 0])
            c["raw"] = raw[:2 * n]
        cases.append(c)
    return {"cases": cases, "bits": bits, "sizes": sizes}


def pack_lanes(states, words, starts, ends):
    """Lane streams back to back (as a file would hold them), with their new starts and ends."""
    lengths = ends - starts
    packed = np.concatenate([words[a:b] for a, b in zip(starts, ends)])
    new_ends = np.cumsum(lengths)
    return states, packed, new_ends - lengths, new_ends


def decoders(prep: dict) -> dict:
    """name -> function decoding every chunk plane of the case once (and checked once, first)."""
    cases = prep["cases"]
    outs = [np.empty(c["plane"].shape[0], np.uint8) for c in cases]

    def current():
        for c, o in zip(cases, outs):
            body, table, p, lanes, _ = c["current"]
            current_decode(body, table, p, lanes, o)

    def locals32(p):
        def run():
            for c, o in zip(cases, outs):
                states, words, table = c["v"][p]
                decode_locals32(states, words, table, p, o)
        return run

    def lanes32():
        for c, o in zip(cases, outs):
            states, words, starts, ends = c["lanes"]
            decode_lanes(states, words, starts, ends, c["v"][12][2], 12, o)

    def own8():
        for c, o in zip(cases, outs):
            states, words, starts, ends = c["own8"]
            assert decode_own8(states, words, starts, ends, c["v"][12][2], 12, o)

    def x2():
        for k in range(0, len(cases) - 1, 2):
            a, b = cases[k], cases[k + 1]
            (sa, wa, ta), (sb, wb, tb) = a["v"][12], b["v"][12]
            if a["plane"].shape[0] == b["plane"].shape[0]:
                decode_locals32_x2(sa, wa, ta, outs[k], sb, wb, tb, outs[k + 1], 12)
            else:  # a last, shorter chunk: one at a time
                decode_locals32(sa, wa, ta, 12, outs[k])
                decode_locals32(sb, wb, tb, 12, outs[k + 1])
        if len(cases) % 2:
            s_, w_, t_ = cases[-1]["v"][12]
            decode_locals32(s_, w_, t_, 12, outs[-1])

    fns = {"current": current, "locals32": locals32(12), "locals32 P11": locals32(11),
           "locals32 P10": locals32(10), "lanes32": lanes32, "own8": own8, "x2 (two planes)": x2}
    for name, fn in fns.items():  # correctness, and the JIT out of the timings
        for o in outs:
            o[:] = 0
        fn()
        assert all(np.array_equal(o, c["plane"]) for o, c in zip(outs, cases)), name
    if "raw" in cases[0]:
        elems = [np.empty(2 * c["plane"].shape[0], np.uint8) for c in cases]

        def separate():
            for c, o, e in zip(cases, outs, elems):
                states, words, table = c["v"][12]
                decode_locals32(states, words, table, 12, o)
                merge_bytes2(c["low"], o, e)

        def fused():
            for c, e in zip(cases, elems):
                states, words, table = c["v"][12]
                decode_locals32_fused(states, words, table, 12, c["low"], e)

        for name, fn in (("locals32 + merge pass", separate), ("fused merge", fused)):
            fn()
            assert all(np.array_equal(e, c["raw"]) for e, c in zip(elems, cases)), name
            fns[name] = fn
    return fns


def time_alternating(fns: dict, rounds: int, nbytes: int) -> dict:
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(cpu(fn))
    return {name: nbytes / statistics.median(t) / 1e6 for name, t in times.items()}


def encode_front(raws: list[np.ndarray], fields16: bool, rounds: int) -> tuple[float, float]:
    """MB/s of split + histograms, today's against the fused pass."""
    from llmcodec import kernels

    layout = kernels.FIELDS16 if fields16 else kernels.BYTES
    bufs = [np.empty((2, r.shape[0] // 2), np.uint8) for r in raws]

    def today():
        for r, b in zip(raws, bufs):
            current_split_histograms(r, layout, b)

    def fused():
        for r, b in zip(raws, bufs):
            split16_histograms(r, fields16, b[0], b[1])

    for r, b in zip(raws, bufs):
        h = split16_histograms(r, fields16, b[0], b[1])
        ref = current_split_histograms(r, layout, b.copy())
        assert np.array_equal(h[0], ref[0]) and np.array_equal(h[1], ref[1])
    mb = sum(r.shape[0] for r in raws)
    res = time_alternating({"today": today, "fused": fused}, rounds, mb)
    return res["today"], res["fused"]


# The reading of the 2026-12-02 run and the porting recipe, kept with the tables they explain.
FINDINGS = """What this says (2026-12-02, a machine whose other tenants kept both vCPUs busy: single figures move by
±20% between runs, so only differences that hold across all seven planes count):
- **The decoder is bound by instructions per symbol, not by the refill chain.** Giving each lane its own
  word stream (own8) or decoding two planes at once (x2) removes the chain that today's shared word
  stream creates between lanes. Across the seven planes that gained 0.95–1.37x, with no steady lead over
  plain `locals32`. 32 lanes in arrays (lanes32) are slower (0.66–0.91x): LLVM does not vectorize the
  lane loop (AVX2 gathers are not emitted), so the states go through memory.
- **`locals32` is the one that wins, and it changes no byte of the format:** 1.02–1.15x on every plane in
  the final run. It keeps the 8 states in locals, uses a uint32 decode table (symbol | freq << 8 |
  bias << 20, 16 KiB at P12), reads the words as u16 and indexes the table and the words with *unsigned*
  values. Without that last point numba emits negative-index wrap-around code on every lookup, and the
  same kernel measured 0.80–1.01x.
- **A coarser table buys nothing.** P11 and P10 ran at the speed of P12 within the noise. They cost
  +0.01% (bf16 sign+mantissa) to +0.74% (fp16 high byte) of the plane, so keep P12.
- **Pairs for fp16's high byte do not pay per chunk.** A 1 MiB chunk has 8.2–9.2 K distinct pairs, so
  the table is about 4% of the plane, against a 0.04–0.09 bit/byte (≈0.6%) entropy gain. They would pay
  only with one table shared by all of a tensor's chunks.
- **Fused merge (fp16): inconclusive.** It measured 1.02–1.22x in one run and 0.76–1.01x in the final
  one.
- **Encode: a fused split + histogram is slower (0.61–0.74x)** than today's split, which vectorizes, plus
  the 4-way histogram. Keep today's.
- **The bf16 sign+mantissa plane codes to 0.997–0.998 of its size on all three real checkpoints,** so
  with MIN_GAIN = 2% it is stored raw. The one-step-per-byte cases that remain on float files are fp16's
  high byte and GGUF's quant bytes.

Porting recipe (no format change):
1. In `kernels.rans_decode`, replace the width-1 fast path with `decode_locals32` from
   bench/proto_kernels.py. Call it with `table32`'s uint32 table: build it in `fill_decode_table` for
   RANS0 (P <= 12, every freq <= 4095: a one-symbol plane is CONSTANT, so this always holds).
   - View the words as `stream[size + 4*lanes:]` reinterpreted as `<u2`, or keep two byte loads if
     numba will not take an unaligned view.
   - Use unsigned indices for the table, the words and the output.
   - Run the fast loop while `w + 8 <= n_words`. Finish with `_tail`, whose refill is checked, then
     check the end states == 2^16 and every word read, as today.
2. Keep the int64 table and the `width == 2` path for RANS0_PAIRS: its table (P <= 14, 16-bit
   symbols) does not fit 32 bits that way.
3. Port nothing else from the prototypes: own streams, 32 lanes, P10/P11, the fused split+histogram.
   The fused merge waits for a steadier measurement.

The larger gaps are outside the kernel, and bench/speed.py shows them. On small files with many tensors,
`load_file` spends about 60 µs of Python per tensor parsing the header: YOLOv8n has 151 tensors, and
9.5 ms of its 23 ms decode goes there, while ZipNN decodes the same 6 MB in about 5 ms. The cold-start
figures are in the start-up section."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rows, enc_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        sources = real_planes(Path(tmp))
    for name, (planes, raws) in sources.items():
        prep = prepare(planes, raws)
        nbytes = prep["sizes"]["raw"]
        speeds = time_alternating(decoders(prep), args.rounds, nbytes)
        bits = prep["bits"]
        cost = {p: (bits[p] - bits[12]) / 8 / nbytes for p in (11, 10)}
        base = speeds["current"]
        row = [f"{name} ({len(planes)} chunks)", f"{prep['sizes']['current'] / nbytes:.4f}", f"{base:.0f}"]
        for k in ("locals32", "locals32 P11", "locals32 P10", "lanes32", "own8", "x2 (two planes)"):
            row.append(f"{speeds[k]:.0f} ({speeds[k] / base:.2f}x)")
        row.append(f"+{cost[11] * 100:.3f}% / +{cost[10] * 100:.3f}%")
        if "fused merge" in speeds:
            row.append(f"{speeds['locals32 + merge pass']:.0f} -> {speeds['fused merge']:.0f} "
                       f"({speeds['fused merge'] / speeds['locals32 + merge pass']:.2f}x)")
        else:
            row.append("")
        rows.append(row)
        print(*row, sep="\t", flush=True)
    for name, fields16 in (("MiniLM bf16", True), ("MiniLM fp16", False)):
        import ml_dtypes

        from weights import minilm_files
        with tempfile.TemporaryDirectory() as tmp:
            path = minilm_files(Path(tmp))[name.split()[1]]
            raw = _raw(path, ml_dtypes.bfloat16 if fields16 else np.float16)
        raws = [raw[s:s + CHUNK] for s in range(0, raw.shape[0] - CHUNK + 1, CHUNK)]
        today, fused = encode_front(raws, fields16, args.rounds)
        enc_rows.append([name, f"{today:.0f}", f"{fused:.0f}", f"{fused / today:.2f}x"])
        print(*enc_rows[-1], sep="\t", flush=True)
    header = ["plane (real, 1 MiB chunks)", "RANS0 size / plane", "current MB/s", "locals32 (same format)",
              "locals32 P11", "locals32 P10", "lanes32 (own streams)", "own8 (own streams, locals)",
              "x2: two planes at once (same format)", "size cost of P11 / P10",
              "fp16: decode + merge pass -> fused, MB/s of plane"]
    table = markdown_table(header, rows)
    enc_table = markdown_table(["elements (1 MiB chunks)", "split, then histograms MB/s", "fused MB/s",
                                "speed-up"], enc_rows)
    body = (f"Single thread, CPU time, medians of {args.rounds} alternating rounds; MB/s of plane bytes "
            f"decoded. See the module docstring for each kernel.\n\n{table}\n\nEncode front end (split into "
            f"planes + byte histograms), MB/s of element bytes:\n\n{enc_table}\n\n{FINDINGS}")
    write_section("rANS kernel prototypes (issue 17)", f"python bench/proto_kernels.py --rounds {args.rounds}", body)
    print(table)
    print(enc_table)


if __name__ == "__main__":
    main()
