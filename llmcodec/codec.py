"""Chunks <-> coded planes, and the thread count every parallel entry point uses.

`encode_chunk` turns a chunk's raw bytes into one coded stream per plane; `chunk_rows` describes a
tensor's chunks to the decoding kernel, and `explain_fault` names what is wrong with a chunk that
kernel rejected.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

from . import kernels, models
from .errors import ChecksumError, FormatError, InvalidArgumentError
from .format import METHOD_CONSTANT, METHOD_RAW, Chunk, PlaneRef, TensorEntry, checksum64

DEFAULT_CHUNK_SIZE = 1 << 20  # bytes of raw tensor data per chunk


def resolve_threads(threads: int | None) -> int:
    """`threads`, else $LLMCODEC_THREADS, else every usable core; 0 means every usable core (as
    zstd's -T0)."""
    if threads is None:
        env = os.environ.get("LLMCODEC_THREADS")
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise InvalidArgumentError(f"LLMCODEC_THREADS must be a whole number, not {env!r}") from None
        else:
            threads = 0
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 0:
        raise InvalidArgumentError(f"threads must be a whole number >= 0 (0: every usable core) or None, "
                                   f"not {threads!r}")
    return int(threads) or usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as `taskset` sets it), not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1


def chunk_elements(chunk_size: int | None, itemsize: int) -> int:
    """Elements per chunk for a chunk size in bytes (default 1 MiB)."""
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InvalidArgumentError(f"chunk_size must be a whole number of bytes or None, not {size!r}")
    if size < itemsize:
        raise InvalidArgumentError(f"chunk size must be at least one element ({itemsize} bytes), not {size}")
    return int(size) // itemsize


def plane_geometry(entry: TensorEntry) -> tuple[np.ndarray, np.ndarray]:
    """(fields, widths) of the tensor's planes as int64 arrays, for the kernels."""
    planes = np.array(entry.planes, np.int64).reshape(-1, 2)
    return np.ascontiguousarray(planes[:, 0]), np.ascontiguousarray(planes[:, 1])


def encode_chunk(raw: np.ndarray, entry: TensorEntry) -> tuple[int, list[PlaneRef], np.ndarray]:
    """Checksum, plane records and streams (back to back) of one chunk of `entry`; `raw` is its
    n * itemsize bytes (uint8, n >= 1). One GIL-free kernel call does all of it."""
    fields, widths = plane_geometry(entry)
    out = np.empty(raw.shape[0], np.uint8)
    info = np.empty((widths.shape[0], 3), np.int64)
    check, total = kernels.encode_chunk(raw, entry.layout, entry.dtype.itemsize, fields, widths, out, info)
    return int(check), [PlaneRef(int(m), int(p), int(n)) for m, p, n in info], out[:total]


def chunk_rows(spans) -> np.ndarray:
    """The chunk descriptors of chunks [first, stop) of each (entry, first, stop) of `spans`, in
    order, for kernels.decode_chunks: int64[chunks, ROW_SIZE].

    Built as one Python list and converted once: a checkpoint has thousands of small tensors, and
    numpy calls per tensor would cost more than the rows."""
    rows = []
    for entry, first, stop in spans:
        planes = entry.planes
        pad = [0] * (kernels.MAX_PLANES - len(planes))
        geometry = [w for _, w in planes] + pad + [f for f, _ in planes] + pad
        shape = [len(planes), entry.layout, entry.dtype.itemsize]
        size, last = entry.chunk_elements, len(entry.chunks) - 1
        for i in range(first, stop):
            c = entry.chunks[i]
            check = c.checksum - (1 << 64) if c.checksum >= 1 << 63 else c.checksum
            n = size if i < last else entry.chunk_span(i)[1]
            rows.append([c.offset, check, n, *shape, *[p.method for p in c.planes], *pad,
                         *[p.parameter for p in c.planes], *pad, *[p.length for p in c.planes], *pad, *geometry])
    return np.array(rows, np.int64).reshape(len(rows), kernels.ROW_SIZE)


def ordered_map(pool, threads: int, fn, items):
    """`fn` over `items`, results in order. With a pool, at most 2 x threads are in flight, so
    memory stays bounded however many items there are. When the caller stops early (an error, a
    generator closed), the tasks not started are cancelled and the running ones waited for: no
    task outlives the call."""
    if pool is None:
        yield from map(fn, items)
        return
    window = 2 * threads
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:  # a cancelled future is never "done" for wait() once its pool is shut down: skip those
        wait([future for future in pending if not future.cancel()])


def parallel_map(threads: int, fn, items):
    """`fn` over the sequence `items`, results in order, on at most `threads` threads of a pool
    that lives only as long as this call (so no thread outlives it, and none is left behind by
    an object that is never closed)."""
    workers = min(threads, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        yield from ordered_map(pool, threads, fn, items)


def explain_fault(data: np.ndarray, chunk: Chunk, entry: TensorEntry, n: int, where: str) -> None:
    """Decode `chunk` (n elements of `entry`) again on the validating Python path and raise the
    precise error: the kernel reported a fault in it."""
    out = merge(decode_planes(data, chunk, entry, n, where), entry, n)  # raises on a bad stream
    computed = checksum64(out)
    if computed != chunk.checksum:
        raise ChecksumError(f"{where}: stored checksum {chunk.checksum:#018x}, computed {computed:#018x}")
    raise FormatError(f"{where}: the chunk's streams break spec section 6")


def decode_planes(data: np.ndarray, chunk: Chunk, entry: TensorEntry, n: int, where: str) -> list[np.ndarray]:
    """The chunk's planes (n * width bytes each) decoded from the file bytes `data`."""
    planes = []
    pos = chunk.offset
    for j, (ref, (_, width)) in enumerate(zip(chunk.planes, entry.planes)):
        stream = data[pos:pos + ref.length]
        pos += ref.length
        plane = np.empty(n * width, np.uint8)
        if ref.method == METHOD_RAW:
            plane[:] = stream
        elif ref.method == METHOD_CONSTANT:
            plane[:] = ref.parameter
        else:  # RANS0 or RANS0_PAIRS: the header parser admits no other method
            _decode_rans(stream, ref.method, plane, f"{where} plane {j}")
        planes.append(plane)
    return planes


def merge(planes: list[np.ndarray], entry: TensorEntry, n: int) -> np.ndarray:
    """The raw bytes of n elements of `entry` from their planes (inverse of the layout)."""
    out = np.empty(n * entry.dtype.itemsize, np.uint8)
    flat = np.concatenate(planes) if planes else np.empty(0, np.uint8)
    if entry.layout == kernels.BLOCK_FIELDS:
        kernels.merge_fields(flat, entry.dtype.itemsize, *plane_geometry(entry), out)
    else:
        kernels.merge_planes(flat.reshape(len(planes), n), entry.layout, out)
    return out


def _decode_rans(stream: np.ndarray, method: int, out: np.ndarray, where: str) -> None:
    n = out.shape[0]
    table = models.parse_table(memoryview(stream), method, n, where)
    if table.width == 2 and n % 2:
        out[n - 1] = table.odd_byte
    status = kernels.rans_decode(stream[table.size:], table.decode_table(), table.precision, table.lanes,
                                 table.width, out[:n - n % table.width])
    if status != kernels.DECODE_OK:
        problem = {
            kernels.DECODE_BAD_STATE: "an initial state is below 2^16",
            kernels.DECODE_STREAM_SHORT: "the words run out before the last symbol",
            kernels.DECODE_BAD_END: "the stream does not end in the encoder's start state",
        }[status]
        raise FormatError(f"{where}: corrupt RANS0 stream: {problem}")
