"""A few small chunks decoded in plain Python, so that a new process reading a small tensor need
not load numba (about a second: its import, its compiler's set-up and the cached kernels).

Used by `codec.decode_spans` only while no kernel has run in this process (`jit.loaded()`), and
only for at most SMALL_BYTES of output: each plane is decoded by the reference decoder's plane
functions (`reference`, which follow the spec line by line) and the elements rebuilt from the
planes as it does, then the chunk's XXH64 is checked. Anything else, a failed check included,
answers False and the kernels decode the chunks: they alone give the verdict on a broken file,
with the same error as ever.
"""

from __future__ import annotations

import numpy as np

from .format import checksum64

SMALL_BYTES = 1 << 14  # output bytes of one call; about 10 ms of Python at most


def decode_spans(spans: list, out: np.ndarray, coded) -> bool:
    """Decode chunks [first, stop) of each (entry, first, stop) of `spans` into `out` (uint8, their
    raw bytes back to back) from `coded` (a codec.Coded); False if any check fails (`out` is then
    partly written)."""
    from . import reference  # about 40 ms to import: only when used

    at = 0
    try:
        for entry, first, stop in spans:
            fields, itemsize = list(entry.planes), entry.dtype.itemsize
            for index in range(first, stop):
                chunk = entry.chunks[index]
                n = entry.chunk_span(index)[1]
                data = _coded_bytes(coded, chunk.offset, chunk.length)
                planes, pos = [], 0
                for p, (_, width) in zip(chunk.planes, fields):
                    stream = data[pos:pos + p.length]
                    pos += p.length
                    planes.append(reference._plane(p.method, p.parameter, stream, n * width, "")())
                if len(planes) == 1:
                    raw = planes[0]
                else:
                    raw = reference._unplane(entry.layout, planes, itemsize, fields, entry.dtype.id)
                if len(raw) != n * itemsize or checksum64(raw) != chunk.checksum:
                    return False
                out[at:at + len(raw)] = np.frombuffer(raw, np.uint8)
                at += len(raw)
    except Exception:  # noqa: BLE001 (any failure: the kernels decide, and name it)
        return False
    return at == out.shape[0]


def _coded_bytes(coded, offset: int, length: int) -> bytes:
    if coded.data is not None:
        return coded.data[offset:offset + length].tobytes()
    buffer = np.empty(length, np.uint8)
    coded.read_into(buffer, offset)
    return buffer.tobytes()
