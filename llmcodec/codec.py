"""Chunks <-> coded planes, and the thread count every parallel entry point uses.

`encode_chunk` turns a chunk's raw bytes into one coded stream per plane; `decode_chunk` checks a
chunk's streams and writes its raw bytes into the caller's output, then verifies its checksum.
"""

from __future__ import annotations

import os
from collections import deque

import numpy as np

from . import kernels, models
from .errors import ChecksumError, FormatError, InvalidArgumentError
from .format import METHOD_CONSTANT, METHOD_RAW, Chunk, checksum64

DEFAULT_CHUNK_SIZE = 1 << 20  # bytes of raw tensor data per chunk


def resolve_threads(threads: int | None) -> int:
    """`threads`, else $LLMCODEC_THREADS, else every core."""
    if threads is None:
        env = os.environ.get("LLMCODEC_THREADS")
        if env:
            try:
                threads = int(env)
            except ValueError:
                raise InvalidArgumentError(f"LLMCODEC_THREADS must be a whole number, not {env!r}") from None
        else:
            threads = os.cpu_count() or 1
    if threads < 1:
        raise InvalidArgumentError(f"threads must be >= 1, not {threads}")
    return threads


def chunk_elements(chunk_size: int | None, itemsize: int) -> int:
    """Elements per chunk for a chunk size in bytes (default 1 MiB)."""
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if size < itemsize:
        raise InvalidArgumentError(f"chunk size must be at least one element ({itemsize} bytes), not {size}")
    return size // itemsize


def encode_chunk(raw: np.ndarray, layout: int, itemsize: int) -> tuple[int, list[models.CodedPlane]]:
    """Checksum and coded planes of one chunk; `raw` is its n * itemsize bytes (uint8, n >= 1)."""
    planes = np.empty((itemsize, raw.shape[0] // itemsize), np.uint8)
    kernels.split_planes(raw, layout, planes)
    counts = kernels.histograms(planes)
    coded = [models.encode_plane(planes[j], counts[j]) for j in range(itemsize)]
    return int(kernels.xxh64(raw)), coded  # XXH64 without the GIL


def ordered_map(pool, threads: int, fn, items):
    """`fn` over `items`, results in order. With a pool, at most 2 x threads are in flight, so
    memory stays bounded however many items there are."""
    if pool is None or len(items) <= 1:
        yield from map(fn, items)
        return
    window = 2 * threads
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def decode_chunk(data: np.ndarray, chunk: Chunk, layout: int, out: np.ndarray, where: str) -> None:
    """Decode `chunk` from the file bytes `data` into `out` (its n * itemsize raw bytes), and
    verify its checksum. The header parser has checked the chunk's ranges and plane lengths.

    All of it runs in one kernel without the GIL; when that kernel finds a fault, the chunk is
    read again by the validating Python path, which says precisely what is wrong.
    """
    methods = np.array([p.method for p in chunk.planes], np.int64)
    params = np.array([p.parameter for p in chunk.planes], np.int64)
    lengths = np.array([p.length for p in chunk.planes], np.int64)
    status, _ = kernels.decode_chunk(data, chunk.offset, methods, params, lengths, layout,
                                     np.uint64(chunk.checksum), out)
    if status == kernels.CHUNK_OK:
        return
    planes = decode_planes(data, chunk, out.shape[0] // len(chunk.planes), where)  # raises on a bad stream
    kernels.merge_planes(planes, layout, out)
    computed = checksum64(out)
    if computed != chunk.checksum:
        raise ChecksumError(f"{where}: stored checksum {chunk.checksum:#018x}, computed {computed:#018x}")
    raise FormatError(f"{where}: the chunk's streams break spec section 6")


def decode_planes(data: np.ndarray, chunk: Chunk, n: int, where: str) -> np.ndarray:
    """The chunk's planes, uint8[k, n], decoded from the file bytes `data`."""
    planes = np.empty((len(chunk.planes), n), np.uint8)
    pos = chunk.offset
    for j, ref in enumerate(chunk.planes):
        stream = data[pos:pos + ref.length]
        pos += ref.length
        if ref.method == METHOD_RAW:
            planes[j] = stream
        elif ref.method == METHOD_CONSTANT:
            planes[j] = ref.parameter
        else:  # RANS0 or RANS0_PAIRS: the header parser admits no other method
            _decode_rans(stream, ref.method, planes[j], f"{where} plane {j}")
    return planes


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
