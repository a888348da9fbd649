"""Tensors <-> chunks, both ways: chunk spans, coding tasks, the thread pools, descriptor rows,
and the messages of the kernels' fault codes.

Encoding: `encode_chunks` cuts tensors into chunks and codes them on worker threads
(`kernels.encode_chunk`: one GIL-free call per chunk), results in order. Decoding: `decode_spans`
cuts the chunks to read into tasks of bounded memory, packs each task's descriptor rows, reads the
coded bytes it needs and decodes them in one `kernels.decode_chunks` call; a fault code from the
kernel becomes an error that names the tensor, chunk, plane and broken check (`FAULTS`). The kernels
are the only decoder: nothing here parses a stream.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np

from . import delta, jit, kernels, plain
from .budget import Budget
from .errors import BaseError, ChecksumError, FormatError, InvalidArgumentError, LimitExceededError
from .format import METHOD_RANS0, PlaneRef, TensorEntry, checksum64

DEFAULT_CHUNK_SIZE = 1 << 20  # bytes of raw tensor data per chunk
BATCH_BYTES = 1 << 20  # output (and coded) bytes per decoding task when many small chunks are read at once
BATCH_CHUNKS = 1024  # chunks per decoding task: bounds its descriptor rows
# Bytes a decoding task allocates per chunk besides its coded bytes and the kernel's buffers: the
# Python list its descriptor row is built from, the row, its copy pointing into the bytes read,
# and the chunk's output offset (measured: under 1.5 KiB).
TASK_CHUNK_BYTES = 2048
# The kernel's decode table (int64[2^14]) and the task's fixed overhead.
TASK_BYTES = (1 << 17) + (16 << 10)


# --- threads --------------------------------------------------------------------------------------


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


# --- encoding -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    """How hard the encoder tries. Any decoder reads any level: a level shows in a file only as the
    methods and chunk sizes it chose (spec section 6.3: the writer's choices)."""

    name: str
    min_gain: float  # a plane is entropy-coded only if that saves this fraction of its size
    pair_tolerance: float  # RANS0_PAIRS is taken while it costs at most this fraction more than RANS0
    chunk_sizes: tuple[int, ...]  # chunk sizes tried per tensor, the smallest file kept; () = the default only


# "fast": today's default, byte for byte. "max": every plane that codes smaller is coded, the
# smaller of RANS0 and RANS0_PAIRS is kept, and each tensor gets the chunk size (of CHUNK_TRIALS)
# that codes it smallest: smaller chunks follow local statistics better, larger ones carry fewer
# tables (bench/RESULTS.md, "--level max"). Costs about len(chunk_sizes) more encoding work.
CHUNK_TRIALS = (128 << 10, 256 << 10, 512 << 10, 1 << 20)
LEVELS = {"fast": Level("fast", kernels.MIN_GAIN, kernels.PAIR_TOLERANCE, ()),
          "max": Level("max", 0.0, 0.0, CHUNK_TRIALS)}


def level(name: str | Level) -> Level:
    """The `Level` called `name` ("fast" or "max"); a Level is returned as it is."""
    if isinstance(name, Level):
        return name
    if not isinstance(name, str) or name not in LEVELS:
        raise InvalidArgumentError(f"level must be one of {', '.join(map(repr, LEVELS))}, not {name!r}")
    return LEVELS[name]


def chunk_elements(chunk_size: int | None, itemsize: int) -> int:
    """Elements per chunk for a chunk size in bytes (default 1 MiB)."""
    size = DEFAULT_CHUNK_SIZE if chunk_size is None else chunk_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise InvalidArgumentError(f"chunk_size must be a whole number of bytes or None, not {size!r}")
    if size < itemsize:
        raise InvalidArgumentError(f"chunk size must be at least one element ({itemsize} bytes), not {size}")
    return int(size) // itemsize


def chunk_byte_spans(entry: TensorEntry) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of `entry` in its raw bytes (none for an empty tensor)."""
    step = entry.chunk_elements * entry.dtype.itemsize
    return [(i, min(i + step, entry.nbytes)) for i in range(0, entry.nbytes, step)]


def plane_geometry(entry: TensorEntry) -> tuple[np.ndarray, np.ndarray]:
    """(fields, widths) of the tensor's planes as int64 arrays, for the kernels."""
    planes = np.array(entry.planes, np.int64).reshape(-1, 2)
    return np.ascontiguousarray(planes[:, 0]), np.ascontiguousarray(planes[:, 1])


def encode_chunk(raw: np.ndarray, entry: TensorEntry,
                 effort: Level = LEVELS["fast"]) -> tuple[int, list[PlaneRef], np.ndarray]:
    """Checksum, plane records and streams (back to back) of one chunk of `entry` at level
    `effort`; `raw` is its n * itemsize bytes (uint8, n >= 1). One GIL-free kernel call does all of it."""
    fields, widths = plane_geometry(entry)
    if raw.flags.writeable:  # one compiled signature for all callers: bytes read from files are read-only
        raw = raw.view()
        raw.flags.writeable = False
    out = np.empty(raw.shape[0] // entry.dtype.itemsize * entry.plane_bytes, np.uint8)
    info = np.empty((widths.shape[0], 3), np.int64)
    check, total = kernels.encode_chunk(raw, entry.layout, entry.dtype.itemsize, fields, widths, out, info,
                                        float(effort.min_gain), float(effort.pair_tolerance))
    return int(check), [PlaneRef(int(m), int(p), int(n)) for m, p, n in info], out[:total]


def encode_chunks(jobs: list, pool, threads: int, effort: Level = LEVELS["fast"]):
    """Code the chunks of `jobs` at level `effort` on `pool` (None: this thread), results in order,
    at most 2 x threads in flight. A job is (read, entry, read_base): `read()` gives the chunk's raw bytes,
    `entry` the tensor it belongs to (None: bytes to store as they are), `read_base()` for a delta
    tensor (entry.delta) the same bytes of its base tensor, else None. Yields (raw, checksum, plane
    records, streams, base checksum), the last four None for an entry of None; the checksum is
    always the raw bytes', the base checksum a delta chunk's Base_Checksum (else None)."""
    def encode(job):
        read, entry, read_base = job
        raw = read()
        if entry is None:
            return raw, None, None, None, None
        if read_base is None:
            return raw, *encode_chunk(raw, entry, effort), None
        base = read_base()
        return raw, *encode_delta_chunk(raw, base, entry, entry.delta.transform, effort), checksum64(base)

    return ordered_map(pool, threads, encode, jobs)


def word_bytes(entry: TensorEntry) -> int:
    """Bytes of a delta transform's word for `entry` (spec 11.1)."""
    return delta.word_bytes(entry.dtype.itemsize, entry.dtype.is_block)


def encode_delta_chunk(raw: np.ndarray, base: np.ndarray, entry: TensorEntry, transform: int,
                       effort: Level = LEVELS["fast"]) -> tuple[int, list[PlaneRef], np.ndarray]:
    """encode_chunk of the words of `transform` of `raw` against `base` (the same bytes of the
    base tensor); the checksum returned is the raw bytes' (spec 11: chunks check the fine-tune)."""
    words = np.empty_like(raw)
    kernels.apply_delta(transform, word_bytes(entry), np.ascontiguousarray(raw), np.ascontiguousarray(base), words)
    _, planes, streams = encode_chunk(words, entry, effort)
    return checksum64(raw), planes, streams


def spread(n: int, k: int) -> list[int]:
    """Up to `k` distinct indices of 0..n-1 spread evenly from the first to the last, in order
    (all of them when n <= k)."""
    return sorted({round(i * (n - 1) / max(1, k - 1)) for i in range(k)}) if n > 0 else []


SAMPLE_CHUNKS = 4  # chunks of a tensor coded each way to choose its delta transform
SAMPLE_BYTES = 256 << 10  # of each, at most its first 256 KiB


def choose_delta(entry: TensorEntry, read, read_base, effort: Level = LEVELS["fast"]) -> tuple[int, int]:
    """The cheapest way to store `entry` against a base tensor of its dtype and shape: 0
    (standalone), delta.DIFF or delta.SUB, from SAMPLE_CHUNKS chunks spread over the tensor (the
    first SAMPLE_BYTES of each; every chunk of a smaller tensor) coded each way; `read(start, stop)`
    and `read_base(start, stop)` give bytes of the tensor and of the base tensor. Returns (choice,
    bytes the sample saved against standalone)."""
    spans = chunk_byte_spans(entry)
    if not spans:
        return 0, 0
    step = SAMPLE_BYTES // entry.dtype.itemsize * entry.dtype.itemsize or entry.dtype.itemsize
    picks = sorted({(a, min(b, a + step)) for a, b in
                    (spans[i] for i in spread(len(spans), SAMPLE_CHUNKS))})
    sizes = {0: 0, delta.DIFF: 0, delta.SUB: 0}
    for start, stop in picks:
        raw, base = read(start, stop), read_base(start, stop)
        sizes[0] += encode_chunk(raw, entry, effort)[2].shape[0]
        for transform in (delta.DIFF, delta.SUB):
            sizes[transform] += encode_delta_chunk(raw, base, entry, transform, effort)[2].shape[0]
    best = min(sizes, key=lambda k: (sizes[k], k))  # a tie keeps standalone, then DIFF
    return best, sizes[0] - sizes[best]


TRIAL_WINDOWS = 4  # windows of a tensor coded at each chunk size to choose one (level "max")


def choose_chunk_size(entry: TensorEntry, read, read_base, effort: Level) -> tuple[int, int]:
    """The chunk size in bytes (of `effort.chunk_sizes`) at which `entry` codes smallest, and the
    bytes its trial coded to (streams and chunk records), from
    TRIAL_WINDOWS windows of the largest size spread over the tensor (the whole tensor when it is
    no larger than those), each cut into chunks of every size and coded; `read(start, stop)` gives
    the tensor's bytes, `read_base` the base tensor's for a delta (entry.delta), else None. Ties
    keep the larger size (fewer chunks to read and check)."""
    sizes = sorted(effort.chunk_sizes)
    item = entry.dtype.itemsize
    window = max(sizes) // item * item or item
    windows = -(-entry.nbytes // window)
    if windows == 0:
        return sizes[-1], 0
    picks = spread(windows, TRIAL_WINDOWS)
    cost = dict.fromkeys(sizes, 0)
    # a chunk's header record (spec 4.3): offset, checksum, 6 bytes per plane; a delta's Base_Checksum
    record = 16 + 6 * len(entry.planes) + (8 if read_base is not None else 0)
    for w in picks:
        start, stop = w * window, min((w + 1) * window, entry.nbytes)
        raw = np.ascontiguousarray(read(start, stop))
        base = None if read_base is None else np.ascontiguousarray(read_base(start, stop))
        for size in sizes:
            step = max(item, size // item * item)
            for a in range(0, stop - start, step):
                part = raw[a:a + step]
                if base is None:
                    cost[size] += encode_chunk(part, entry, effort)[2].shape[0]
                else:
                    cost[size] += encode_delta_chunk(part, base[a:a + step], entry, entry.delta.transform,
                                                     effort)[2].shape[0]
            cost[size] += record * -(-(stop - start) // step)
    best = min(sizes, key=lambda s: (cost[s], -s))
    return best, cost[best]


@dataclass
class CodedPlane:
    method: int
    parameter: int
    stream: np.ndarray  # the plane's stream (empty for CONSTANT)

    @property
    def length(self) -> int:
        return self.stream.shape[0]


def encode_plane(plane: np.ndarray, methods=None, min_gain: float = kernels.MIN_GAIN,
                 pair_tolerance: float = kernels.PAIR_TOLERANCE) -> CodedPlane:
    """Store `plane` (uint8[n], n >= 1) the way `encode_chunk` does at level "fast" (kernels.encode_plane),
    or by one of `methods` only (method ids) when given; `min_gain=-inf` codes even a plane that grows."""
    plane = np.ascontiguousarray(plane, np.uint8)
    n = plane.shape[0]
    allowed = kernels.ALL_METHODS if methods is None else sum(1 << m for m in methods)
    out = np.empty(2 * n + 8192, np.uint8)  # room for a forced stream larger than the plane
    ids, words = np.empty(n, np.uint16), np.empty(n + 1, np.uint16)
    counts = np.bincount(plane, minlength=256).astype(np.int64)
    method, parameter, length = kernels.encode_plane(plane, counts, out, 0, ids, words, allowed, float(min_gain),
                                                     float(pair_tolerance))
    return CodedPlane(int(method), int(parameter), out[:length].copy())


# --- decoding -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Coded:
    """Where the chunks' coded bytes are: the whole file in memory (`data`), or else a function
    `read_into(buffer, offset)` that fills `buffer` with the file's bytes from `offset`."""

    data: np.ndarray | None
    read_into: Callable[[np.ndarray, int], None]
    # read_base(name, start, stop, out): bytes [start, stop) of a base tensor into `out`, for delta
    # tensors (spec 11.2, bases.Base.read); None: no base.
    read_base: Callable | None = None


# What each kernel fault code means (kernels.FAULT_*): the check of spec section 6 that failed.
FAULTS = {
    kernels.DECODE_BAD_STATE: "an initial state is below 2^16",
    kernels.DECODE_STREAM_SHORT: "the words run out before the last symbol",
    kernels.DECODE_BAD_END: "the stream does not end in the encoder's start state",
    kernels.FAULT_TABLE_SHORT: "the stream is shorter than its table",
    kernels.FAULT_PRECISION: "Precision is outside 1..{top}",
    kernels.FAULT_LANES: f"Lanes is outside 1..{kernels.MAX_LANES}",
    kernels.FAULT_BITMAP_EMPTY: "{bitmap} is empty",
    kernels.FAULT_TABLE_END: "the stream ends inside its {table}",
    kernels.FAULT_PAIRS_PLANE: "a plane of fewer than 2 bytes cannot be coded in pairs",
    kernels.FAULT_ODD_BYTE: "Odd_Byte is not 0 for a plane of even length",
    kernels.FAULT_PAIR_PADDING: "Pair_Bitmap has reserved padding bits set",
    kernels.FAULT_PAIRS_EMPTY: "Pair_Bitmap is empty",
    kernels.FAULT_PAIR_UNUSED: "Byte_Bitmap holds a byte that occurs in no pair",
    kernels.FAULT_FREQ_END: "the stream ends inside its Frequencies",
    kernels.FAULT_FREQ_NUMBER: "Frequencies hold a two-byte number whose second byte is not in 1..127",
    kernels.FAULT_STATES_SHORT: "the stream ends inside its states",
    kernels.FAULT_ODD_WORDS: "the words take an odd number of bytes",
    kernels.FAULT_FREQ_SUM: "the frequencies do not add up to 2^Precision",
    kernels.FAULT_QUANTS: "a quant does not fit its bits",
}


def fault_error(code: int, entry: TensorEntry, index: int, out: np.ndarray) -> Exception:
    """The error for kernel fault `code` (kernels._decode_chunk's) in chunk `index` of `entry`;
    `out` holds the chunk's decoded bytes (meaningful for a checksum fault only)."""
    where = f"tensor {entry.name!r} chunk {index}"
    if code == kernels.FAULT_BASE:
        return BaseError(f"{where}: the bytes of base tensor {entry.delta.base_tensor!r} it needs are not the "
                         f"ones it was stored against (Base_Checksum {entry.delta.base_checksums[index]:#018x}, "
                         f"the base's {checksum64(out):#018x}): this is not its base")
    if code == kernels.FAULT_CHECKSUM:
        return ChecksumError(f"{where}: stored checksum {entry.chunks[index].checksum:#018x}, "
                             f"computed {checksum64(out):#018x}")
    fault, plane = code & ((1 << kernels.FAULT_PLANE_SHIFT) - 1), code >> kernels.FAULT_PLANE_SHIFT
    if fault == kernels.FAULT_QUANTS:
        return FormatError(f"{where} plane {plane}: the quants plane of layout BLOCK_QUANTS holds a byte above "
                           f"{(1 << entry.dtype.quant_bits) - 1} (spec 5: a quant does not fit its bits)")
    method = entry.chunks[index].planes[plane].method if plane < len(entry.chunks[index].planes) else None
    pairs = method != METHOD_RANS0
    name = "RANS0_PAIRS" if pairs else "RANS0"
    text = FAULTS.get(fault, f"fault {fault}").format(
        top=kernels.MAX_PAIR_PRECISION if pairs else kernels.MAX_PRECISION,
        bitmap="Byte_Bitmap" if pairs else "Symbol_Bitmap", table="Pair_Bitmap" if pairs else "table")
    return FormatError(f"{where} plane {plane}: corrupt {name} stream: {text}")


def span_bytes(spans: list) -> int:
    """The raw bytes of chunks [first, stop) of each (entry, first, stop) of `spans`."""
    return sum((min(stop * t.chunk_elements, t.elements) - first * t.chunk_elements) * t.dtype.itemsize
               for t, first, stop in spans if stop > first)


def decode_spans(spans: list, out: np.ndarray, coded: Coded, threads: int, budget: Budget, what: str) -> None:
    """Decode chunks [first, stop) of each (entry, first, stop) of `spans` into `out`, back to
    back, verifying their checksums.

    The chunks are cut into tasks (see _plan); each builds its chunks' descriptor rows, reads
    their coded bytes and decodes them in one kernel call. At most `threads` tasks run at once,
    so the working memory, taken from `budget` before any task starts, is that of `threads`
    tasks however many chunks there are."""
    firsts, cuts, outs, fetch, working = _plan(spans, coded.data is None)
    if any(entry.delta is not None for entry, _, _ in spans):
        if coded.read_base is None:
            raise BaseError(f"{what}: a delta tensor needs its base model (pass base=)")
        working += BATCH_BYTES + max(t.chunk_elements * t.dtype.itemsize for t, _, _ in spans)  # base bytes
    tasks = len(cuts) - 1
    spare: list = []  # buffers of `fetch` bytes for coded bytes, one per running task: fresh pages cost more

    def decode(b: int) -> None:
        _decode_task(_spans_between(spans, firsts, cuts[b], cuts[b + 1]), out, outs[b], coded, spare, fetch)

    try:
        with budget.hold(min(threads, tasks) * working, f"{what}: the working memory of {tasks} tasks"):
            if (jit.loaded() or out.shape[0] > plain.SMALL_BYTES or any(e.delta is not None for e, _, _ in spans)
                    or not plain.decode_spans(spans, out, coded)):  # deltas: the kernels alone
                for _ in parallel_map(threads, decode, range(tasks)):
                    pass
    except MemoryError:
        raise LimitExceededError(f"{what}: more memory than this machine can allocate") from None


def iter_chunks(entry: TensorEntry, indices: Iterable[int], coded: Coded, threads: int):
    """The raw bytes of chunks `indices` of `entry`, in order, decoded in parallel a few at a
    time; each yielded array is new, so memory stays bounded by a few chunks per thread."""
    def decode(index: int) -> np.ndarray:
        out = np.empty(entry.chunk_span(index)[1] * entry.dtype.itemsize, np.uint8)
        _decode_task([(entry, index, index + 1)], out, 0, coded, [], entry.chunks[index].length)
        return out

    try:
        yield from parallel_map(threads, decode, list(indices))
    except MemoryError:
        raise LimitExceededError(f"decoding tensor {entry.name!r}: more memory than this machine can "
                                 f"allocate") from None


def _task_bytes(chunks: int, coded: int, biggest: int) -> int:
    """The most a decoding task of `chunks` chunks allocates: their coded bytes (read from the
    file), the kernel's scratch for the biggest chunk's planes, the descriptor rows."""
    return coded + biggest + chunks * TASK_CHUNK_BYTES + TASK_BYTES


def _plan(spans: list, from_file: bool) -> tuple[np.ndarray, list, list, int, int]:
    """Cut the chunks of `spans` (numbered from 0 across them) into decoding tasks of at most
    BATCH_BYTES of output, BATCH_BYTES of coded bytes (or one chunk), and BATCH_CHUNKS chunks.
    Returns the number of each span's first chunk, where each task starts (and the end),
    the output offset of each task, the most coded bytes a task reads from the file
    (`from_file`: else none), and the most bytes one task allocates."""
    firsts, cuts, outs = [], [0], [0]
    flat = total = most_n = most_coded = most_raw = 0
    n = size = coded = 0  # of the task being filled
    for entry, first, stop in spans:
        firsts.append(flat)
        k, planes = entry.dtype.itemsize, entry.plane_bytes
        full, last, chunks = entry.chunk_elements * k, len(entry.chunks) - 1, entry.chunks
        for i in range(first, stop):
            raw = full if i < last else entry.chunk_span(i)[1] * k
            length = sum([p.length for p in chunks[i].planes]) if from_file else 0
            if n and (n == BATCH_CHUNKS or size + raw > BATCH_BYTES or coded + length > BATCH_BYTES):
                cuts.append(flat)
                outs.append(total)
                n = size = coded = 0
            n, size, coded = n + 1, size + raw, coded + length
            flat, total = flat + 1, total + raw
            # the kernel's scratch holds a chunk's planes: more than its raw bytes with BLOCK_QUANTS
            most_n, most_coded, most_raw = max(most_n, n), max(most_coded, coded), max(most_raw, raw // k * planes)
    if n:
        cuts.append(flat)
    return np.array(firsts, np.int64), cuts, outs, most_coded, _task_bytes(most_n, most_coded, most_raw)


def chunk_rows(spans) -> np.ndarray:
    """The chunk descriptors of chunks [first, stop) of each (entry, first, stop) of `spans`, in
    order, for kernels.decode_chunks: int64[chunks, ROW_SIZE].

    Built as one Python list and converted once: a checkpoint has thousands of small tensors, and
    numpy calls per tensor would cost more than the rows."""
    rows = []
    for entry, first, stop in spans:
        planes = entry.planes
        pad = (0,) * (kernels.MAX_PLANES - len(planes))
        head = (len(planes), entry.layout, entry.dtype.itemsize)
        tail = tuple(w for _, w in planes) + pad + tuple(f for f, _ in planes) + pad
        size, last, delta = entry.chunk_elements, len(entry.chunks) - 1, entry.delta
        for i in range(first, stop):
            c = entry.chunks[i]
            ps = c.planes
            check = c.checksum - (1 << 64) if c.checksum >= 1 << 63 else c.checksum
            n = size if i < last else entry.chunk_span(i)[1]
            if delta is None:
                base = (0, 0, 0)
            else:
                b = delta.base_checksums[i]
                base = (delta.transform, 0, b - (1 << 64) if b >= 1 << 63 else b)
            rows.append((c.offset, check, n, *head, *[p.method for p in ps], *pad, *[p.parameter for p in ps], *pad,
                         *[p.length for p in ps], *pad, *tail, *base))
    return np.array(rows, np.int64).reshape(len(rows), kernels.ROW_SIZE)


def _decode_task(part: list, out: np.ndarray, start: int, coded: Coded, spare: list, fetch: int) -> None:
    """Decode the chunks of `part` ((entry, first, stop) each) into out[start:], back to back;
    their coded bytes (at most `fetch`) are read into a buffer of `spare` or a new one."""
    rows = chunk_rows(part)
    sizes = rows[:, kernels.ROW_N] * rows[:, kernels.ROW_ITEMSIZE]
    starts = start + np.cumsum(sizes) - sizes
    buffer = spare.pop() if spare else np.empty(fetch, np.uint8)  # list.pop and append are atomic
    data, rows = _fetch(rows, coded, buffer)
    base = _base_bytes(part, rows, coded)
    bad, code = kernels.decode_chunks(data, rows, starts, out, base)
    spare.append(buffer)
    if bad >= 0:
        entry, index = _chunk_at(part, bad)
        at = int(starts[bad])
        raise fault_error(int(code), entry, index, out[at:at + int(sizes[bad])])


def _base_bytes(part: list, rows: np.ndarray, coded: Coded) -> np.ndarray:
    """The base bytes the delta chunks of `part` need (spec 11.2), back to back in one buffer the
    base reads into; sets their rows' ROW_BASE (rows is the task's own copy). Only those ranges
    of the base tensors are read."""
    spans, row, at = [], 0, 0
    for entry, first, stop in part:
        k = entry.dtype.itemsize
        for i in range(first, stop):
            if entry.delta is not None:
                e, n = entry.chunk_span(i)
                spans.append((entry, i, e * k, n * k, at))
                rows[row, kernels.ROW_BASE] = at
                at += n * k
            row += 1
    buffer = np.empty(at, np.uint8)
    for entry, i, start, size, at in spans:
        piece = buffer[at:at + size]
        got = coded.read_base(entry.delta.base_tensor, start, start + size, piece)
        if got is not piece:
            raise BaseError(f"tensor {entry.name!r} chunk {i}: the base gave no {size} bytes of base tensor "
                            f"{entry.delta.base_tensor!r}")
    return buffer


def _fetch(rows: np.ndarray, coded: Coded, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bytes the chunks `rows` are coded in, and `rows` pointing into them: in memory, the
    file itself; else its byte ranges read into `buffer`, ranges that touch or overlap (a chunk
    shared by two records, spec 4.3) once."""
    if coded.data is not None:
        return coded.data, rows
    starts = rows[:, kernels.ROW_OFFSET]
    ends = starts + rows[:, kernels.ROW_LENGTHS:kernels.ROW_LENGTHS + kernels.MAX_PLANES].sum(axis=1)
    if (starts[1:] == ends[:-1]).all():  # in order, back to back, as the writer puts them: one read
        lo, need = int(starts[0]), int(ends[-1] - starts[0])
        data = buffer[:need] if buffer.shape[0] >= need else np.empty(need, np.uint8)  # see below
        coded.read_into(data, lo)
        rows = rows.copy()
        rows[:, kernels.ROW_OFFSET] -= lo
        return data, rows
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    new = np.ones(s.shape[0], bool)  # where a run of touching ranges begins
    new[1:] = s[1:] > np.maximum.accumulate(e)[:-1]
    heads = np.flatnonzero(new)
    lo, hi = s[heads], np.maximum.reduceat(e, heads)
    at = np.cumsum(hi - lo) - (hi - lo)  # each run's place in the buffer
    need = int((hi - lo).sum())  # <= the task's coded bytes <= the buffer's size (_plan)
    data = buffer[:need] if buffer.shape[0] >= need else np.empty(need, np.uint8)
    for a, b, p in zip(lo.tolist(), hi.tolist(), at.tolist()):
        coded.read_into(data[p:p + b - a], a)
    run = np.cumsum(new) - 1
    rows = rows.copy()
    rows[order, kernels.ROW_OFFSET] = s - lo[run] + at[run]
    return data, rows


def _spans_between(spans: list, firsts: np.ndarray, lo: int, hi: int) -> list:
    """The chunks numbered [lo, hi) across `spans` (span j's first is number firsts[j]), as spans."""
    j = int(np.searchsorted(firsts, lo, side="right")) - 1
    part = []
    while lo < hi:
        entry, first, stop = spans[j]
        a = first + lo - int(firsts[j])
        b = min(stop, a + hi - lo)
        if b > a:
            part.append((entry, a, b))
            lo += b - a
        j += 1
    return part


def _chunk_at(part: list, k: int) -> tuple[TensorEntry, int]:
    """(entry, chunk index) of chunk number k of `part` ((entry, first, stop) each)."""
    for entry, first, stop in part:
        if k < stop - first:
            return entry, first + k
        k -= stop - first
    raise IndexError(f"chunk {k} past the end of the task")
