"""Reading and writing `.llmc` containers: atomic streaming writer, validating reader.

The writer streams chunks to a temporary file beside the destination, appends the header, patches
the preamble and renames the file into place, so a failure never leaves a partial file under the
final name. The reader validates preamble and header before any kernel sees the data.
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import os
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import codec, dtypes, format, kernels, safetensors_io, transforms
from .errors import (ChecksumError, FileChangedError, FormatError, InvalidArgumentError, LimitExceededError,
                     LlmcodecError, TruncatedError)
from .format import Chunk, Header, Limits, Segment, Source, TensorEntry, Transform
from .output import open_output


BATCH_BYTES = 1 << 20  # output (and coded) bytes per decoding task when many small chunks are read at once
BATCH_CHUNKS = 1024  # chunks per decoding task: bounds its descriptor rows


@dataclass
class TensorSource:
    """A tensor to encode: its raw little-endian bytes (any buffer), or a function
    `read(start, stop)` returning those bytes of it as a uint8 array, called once per chunk
    (possibly from worker threads), so a tensor larger than memory streams through."""

    name: str
    dtype: dtypes.Dtype
    shape: tuple
    raw: object
    hidden: bool = False  # bytes of the original that are not a tensor: a coded-blob segment (U8)

    def read(self, start: int, stop: int) -> np.ndarray:
        if callable(self.raw):
            return self.raw(start, stop)
        return _as_bytes(self.raw)[start:stop]


def _as_bytes(raw) -> np.ndarray:
    return raw.reshape(-1).view(np.uint8) if isinstance(raw, np.ndarray) else np.frombuffer(raw, np.uint8)


@dataclass
class BlobSource:
    """Verbatim bytes of the original file: `read()` returns them (called on a worker thread)."""

    read: object


class ContainerWriter:
    """Write a container to `path` atomically: nothing appears there unless `finish()` succeeds.

    Use as a context manager; an exception inside the block removes the temporary file. Every
    value is checked against the default `Limits` before it is written, with the reader's own
    checks (format.check_*), so that everything written here the default reader reads.
    """

    limits = Limits()  # what the default reader accepts

    def __init__(self, path, *, threads: int | None = None, chunk_size: int | None = None,
                 mode: int | None = None):
        self.path = Path(path)
        self.threads = codec.resolve_threads(threads)
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
                raise InvalidArgumentError(f"chunk_size must be a whole number of bytes, not {chunk_size!r}")
            if chunk_size > self.limits.chunk_size:
                raise LimitExceededError(f"chunk_size {chunk_size} is over the limit of {self.limits.chunk_size} "
                                         f"bytes that readers accept (spec section 9)")
            chunk_size = int(chunk_size)
        self.chunk_size = chunk_size
        self.tensors: list[TensorEntry] = []
        self.segments: list[Segment] = []
        self._pool = None
        self._out = open_output(self.path, seekable=True, mode=mode)  # mode: permission bits
        self._file = self._out  # writes that fail (a full disk) name the destination
        with self._out:  # a failure here (Ctrl-C, SIGTERM), outside the caller's `with`, removes the file
            self._file.write(bytes(format.PREAMBLE_SIZE))
            self._pos = format.PREAMBLE_SIZE
            self._chunk_offsets: dict[tuple, int] = {}  # a chunk's checksum and plane records -> its offset
            self._pool = ThreadPoolExecutor(self.threads) if self.threads > 1 else None

    def __enter__(self) -> ContainerWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()

    def _write(self, buffers) -> None:
        for b in buffers:
            self._file.write(b)
            self._pos += len(memoryview(b).cast("B"))

    def add_tensor(self, name: str, dtype: dtypes.Dtype, shape, raw, on_chunk=None) -> int:
        """Encode one tensor and return its index; see `add_many`."""
        return self.add_many([TensorSource(name, dtype, shape, raw)], on_chunk)[0]

    def add_many(self, items: list, on_chunk=None, segments: bool = False) -> list[int]:
        """Encode `TensorSource`s and store `BlobSource`s, in order; return the tensors' indices.

        The chunks of all items are encoded together on the worker threads (a bounded number in
        flight), so many small tensors use every core as well as one large tensor does. With
        `segments`, each item also becomes the next segment of the original file.
        `on_chunk(raw)` is called with each chunk's (or blob's) raw bytes, in order, once written.
        """
        jobs = []
        tensors = sum(not isinstance(item, BlobSource) for item in items)
        format.check_count("Tensor_Count", len(self.tensors) + tensors, self.limits.tensor_count)
        if segments:
            format.check_count("Segment_Count", len(self.segments) + len(items), self.limits.segment_count)
        for item in items:
            if isinstance(item, BlobSource):
                jobs.append((item, None, None))
                continue
            entry = self._entry(item)
            step = entry.chunk_elements * entry.dtype.itemsize
            jobs += [(item, entry, (i, min(i + step, entry.nbytes))) for i in range(0, entry.nbytes, step)]
            if entry.nbytes == 0:
                jobs.append((item, entry, None))

        def encode(job):
            item, entry, span = job
            if entry is None:
                return item.read(), None, None, None
            if span is None:
                return None, None, None, None
            chunk = item.read(*span)
            return chunk, *codec.encode_chunk(chunk, entry)

        indices, last = [], None
        results = codec.ordered_map(self._pool, self.threads, encode, jobs)
        for (item, entry, span), (raw, check, planes, streams) in zip(jobs, results):
            if entry is None:
                self._add_blob(raw, segments)
            else:
                if entry is not last:
                    self.tensors.append(entry)
                    indices.append(len(self.tensors) - 1)
                    if segments:
                        kind = format.SEGMENT_CODED_BLOB if item.hidden else format.SEGMENT_TENSOR
                        self.segments.append(Segment(kind, tensor_index=indices[-1]))
                    last = entry
                if span is None:
                    continue
                entry.chunks.append(self._store_chunk(entry, check, planes, streams))
            if on_chunk is not None and raw is not None:
                on_chunk(raw)
        return indices

    def _store_chunk(self, entry: TensorEntry, check: int, planes: list, streams: np.ndarray) -> Chunk:
        """Write a chunk's streams, unless the same chunk (same planes, same stream bytes) was
        written before: then the new record shares that range (spec 4.3), so a tensor saved twice
        (tied embeddings), or a repeated chunk, is stored once."""
        key = (check, tuple((p.method, p.parameter, p.length) for p in planes))  # candidates; bytes confirm
        offset = self._chunk_offsets.get(key)
        if offset is not None and self._read_back(offset, streams.shape[0]) == streams.tobytes():
            return Chunk(offset, check, planes)
        self._chunk_offsets[key] = self._pos
        chunk = Chunk(self._pos, check, planes)
        self._write([streams])
        return chunk

    def _read_back(self, offset: int, length: int) -> bytes:
        self._out.file.flush()
        return os.pread(self._out.file.fileno(), length, offset)

    def _entry(self, item: TensorSource) -> TensorEntry:
        shape = tuple(int(d) for d in item.shape)
        entry = TensorEntry(item.name, item.dtype, shape, item.dtype.default_layout,
                            codec.chunk_elements(self.chunk_size, item.dtype.itemsize), hidden=item.hidden)
        format.check_tensor(entry, self.limits)
        if not callable(item.raw) and _as_bytes(item.raw).shape[0] != entry.nbytes:
            raise InvalidArgumentError(f"tensor {item.name!r}: {_as_bytes(item.raw).shape[0]} bytes for shape "
                                       f"{list(shape)} of {item.dtype.name} ({entry.nbytes} bytes expected)")
        return entry

    def add_blob(self, data) -> None:
        """Append verbatim bytes of the original file as the next segment."""
        self._add_blob(data, True)

    def _add_blob(self, data, segment: bool) -> None:
        if segment:
            self.segments.append(Segment(format.SEGMENT_BLOB, offset=self._pos, length=len(data),
                                         checksum=format.checksum64(data)))
        self._write([data])

    def add_tensor_segment(self, index: int) -> None:
        """Make tensor `index`'s raw bytes the next segment of the original file."""
        self.segments.append(Segment(format.SEGMENT_TENSOR, tensor_index=index))

    def finish(self, metadata: dict[str, str] | None = None, source_kind: int = format.SOURCE_ARRAYS,
               original_size: int = 0, original_sha256: bytes = b"",
               transforms: dict[str, Transform] | None = None) -> None:
        """Check and write the header (with the `transforms` records of section 10, if any), then
        move the file into place."""
        try:
            source = Source(source_kind, original_size, original_sha256, self.segments)
            header = Header(dict(metadata or {}), source, self.tensors, dict(transforms or {}))
            raw = self._header_bytes(header)
            header_offset = self._pos
            self._write([raw])
            self._file.seek(0)
            self._file.write(format.build_preamble(header_offset, raw))
            self._out.commit()
        except BaseException:
            self.abort()
            raise
        finally:
            self._shutdown()

    def _header_bytes(self, header: Header) -> bytes:
        """The header's bytes, once every rule of sections 4, 9 and 10 the reader checks holds; a
        file of arrays also decodes to a safetensors file that safetensors reads."""
        format.check_metadata(header.metadata, self.limits)
        format.check_transforms(header.transforms, header.tensors, header.source, self.limits)
        if header.source.kind == format.SOURCE_ARRAYS:
            safetensors_io.build_header(model_entries(header.tensors, header.transforms), header.metadata)
        raw = format.serialize_header(header)
        format.check_count("Header_Length", len(raw), self.limits.header_size)
        format.check_declared(header, self._pos + len(raw), self.limits)
        return raw

    def abort(self) -> None:
        """Drop the temporary file; the destination is left as it was."""
        self._out.discard()
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class Budget:
    """The bytes one call may allocate (`max_memory`; None: no cap), taken before each allocation,
    so a call over it raises LimitExceededError before it allocates."""

    def __init__(self, limit: int | None = None):
        self.limit = limit
        self.taken = 0

    def take(self, nbytes: int, what: str) -> None:
        if self.limit is not None and self.taken + nbytes > self.limit:
            before = f" (this call took {self.taken} bytes before)" if self.taken else ""
            raise LimitExceededError(f"{what} needs {nbytes} bytes, over max_memory={self.limit}{before}")
        self.taken += nbytes

    @contextmanager
    def hold(self, nbytes: int, what: str):
        """Take `nbytes` for the duration of a block (working memory), and give them back."""
        self.take(nbytes, what)
        try:
            yield
        finally:
            self.taken -= nbytes

    @staticmethod
    def allocate(nbytes: int, what: str) -> np.ndarray:
        """uint8[nbytes], already taken; a size this machine cannot allocate is a LimitExceededError."""
        try:
            return np.empty(nbytes, np.uint8)
        except MemoryError:
            raise LimitExceededError(f"{what} needs {nbytes} bytes, more than this machine can allocate; "
                                     f"pass max_memory to refuse such files earlier") from None

    def array(self, nbytes: int, what: str) -> np.ndarray:
        self.take(nbytes, what)
        return self.allocate(nbytes, what)


# What a call may allocate beyond its max_memory: its own Python objects, which are not counted
# (measured with tracemalloc: no call went over its max_memory at all; tests/test_hostile_readers.py).
MEMORY_SLACK = 1 << 20
# Bytes that parsing a header of n bytes may allocate, per header byte: a chunk record of 16 + 6k
# bytes becomes a Chunk, k PlaneRefs and their ints (measured: under 40 x its size).
HEADER_PARSE_BYTES = 48
# Bytes a decoding task allocates per chunk besides its coded bytes and the kernel's buffers: the
# Python list its descriptor row is built from, the row, its copy pointing into the bytes read,
# and the chunk's output offset (measured: under 1.5 KiB).
TASK_CHUNK_BYTES = 2048
# The kernel's decode table (int64[2^14]) and the task's fixed overhead.
TASK_BYTES = (1 << 17) + (16 << 10)


def _task_bytes(chunks: int, coded: int, biggest: int) -> int:
    """The most a decoding task of `chunks` chunks allocates: their coded bytes (read from the
    file), the kernel's scratch for the biggest chunk's planes, the descriptor rows."""
    return coded + biggest + chunks * TASK_CHUNK_BYTES + TASK_BYTES


def check_limits(limits) -> Limits:
    """`limits` as the readers take it: None (the spec's limits) or a `Limits` of whole numbers."""
    if limits is None:
        return Limits()
    if not isinstance(limits, Limits) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
            for v in dataclasses.astuple(limits)):
        raise InvalidArgumentError(f"limits must be a llmcodec.Limits of whole numbers >= 0 or None, "
                                   f"not {limits!r}")
    return limits


def _identity(st: os.stat_result) -> tuple:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


class ContainerReader:
    """A validated view of a container: its metadata, source, tensor index, and decoding.

    `source` is a path, a bytes-like object, or a binary file object (read whole if it is not a
    regular file with a descriptor).

    A file is read with checked `pread`s into buffers of the reader's own, never mapped, so a file
    truncated or rewritten by another process while open gives a `FileChangedError` (or, when
    the bytes changed but not the size, a checksum error), never a SIGBUS. A path is opened again
    for each call and closed after it, so many readers (the shards of a checkpoint) hold no file
    descriptors between calls; a file that is not the one opened any more (another inode, size or
    modification time) is a `FileChangedError`.
    """

    def __init__(self, source, *, limits: Limits | None = None, threads: int | None = None,
                 budget: Budget | None = None):
        self.limits = check_limits(limits)
        self.threads = codec.resolve_threads(threads)
        self.name = _describe(source)
        budget = budget or Budget()
        self._lock = threading.Lock()  # guards the five fields below
        self._users = 0  # calls in progress (_use): while > 0, _fd (a file's) is open and _data kept
        self._closed = False
        self._data: np.ndarray | None = None  # the whole file, given in memory
        self._path: str | None = None  # a path: opened for each call
        self._fd: int | None = None  # the descriptor calls in progress read with
        self._fileno: int | None = None  # the descriptor of a file object the caller gave (theirs)
        self._identity: tuple = ()  # (device, inode, size, mtime) of the file when opened
        self._statistics_work = 0  # plane bytes plane_statistics has decoded (bounded by Limits.work)
        try:
            self._open(source)
            with self._use():
                size = self._identity[2] if self._data is None else self._data.shape[0]
                pre = format.parse_preamble(self._read(0, min(size, format.PREAMBLE_SIZE)).tobytes(), size,
                                            self.limits)
                budget.take(HEADER_PARSE_BYTES * pre.header_length,
                            f"parsing its header of {pre.header_length} bytes")
                raw_header = self._read(pre.header_offset, pre.header_length).tobytes()
                header = format.parse_header(raw_header, pre, self.limits)
        except LlmcodecError as exc:
            self.close()
            raise self._named(exc) from None
        except MemoryError:
            self.close()
            raise LimitExceededError(f"{self.name}: its header needs more memory than this machine can "
                                     f"allocate") from None
        except BaseException:
            self.close()
            raise
        self.version = (pre.major, pre.minor)
        self.metadata = header.metadata  # user metadata only (format data lives apart: spec 4.5)
        self.source = header.source
        self.all_tensors = header.tensors  # what segments index: coded blobs (hidden tensors) too
        self.stored = {t.name: t for t in header.tensors}  # every stored tensor, transform parts included
        self.transforms = header.transforms  # checked against the parts by format.parse_header
        parts = {p for t in self.transforms.values() for p in t.parts.values()}
        self.tensors = [t for t in header.tensors if not t.hidden and t.name not in parts]
        self.by_name = {t.name: t for t in self.tensors}
        # The model's tensors in file order: stored ones, and each transformed one where its parts are.
        self.names = [name for name, *_ in model_entries(header.tensors, self.transforms)]

    def rebuild(self, name: str) -> np.ndarray:
        """A transformed tensor, rebuilt from its parts (spec 10) in its original dtype and shape."""
        t = self.transforms[name]
        try:
            return transforms.rebuild(t, self.parts(name))
        except MemoryError:
            raise LimitExceededError(f"{self.name}: rebuilding tensor {name!r} of shape {t.shape} ({t.original_bytes} "
                                     f"bytes) needs more memory than this machine can allocate") from None

    def parts(self, name: str) -> dict[str, np.ndarray]:
        """A transformed tensor's stored parts by role, bit-exact."""
        t = self.transforms[name]
        entries = [self.stored[p] for p in t.parts.values()]
        raws = self.read_many(entries)
        return {role: raw.view(e.dtype.numpy).reshape(e.shape) for role, e, raw in zip(t.parts, entries, raws)}

    def _named(self, exc: LlmcodecError) -> LlmcodecError:
        """The same error, its message prefixed with the file's name."""
        return type(exc)(f"{self.name}: {exc}")

    # --- the file: opened, read, closed ---

    def _open(self, source) -> None:
        """Take the source: bytes in memory, or a regular file's identity (and descriptor if given open)."""
        if isinstance(source, (str, os.PathLike)):
            with builtins.open(source, "rb") as f:  # the errors of open(): missing file, a folder
                self._identity = _identity(os.fstat(f.fileno()))
            self._path = os.fspath(source)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            self._data = np.frombuffer(source, np.uint8)
        elif hasattr(source, "read"):
            try:
                fileno = source.fileno()
                st = os.fstat(fileno)
            except (OSError, AttributeError, ValueError):
                st = None
            if st is not None and stat.S_ISREG(st.st_mode):
                self._fileno, self._identity = fileno, _identity(st)
            else:
                self._data = np.frombuffer(source.read(), np.uint8)
        else:
            raise InvalidArgumentError(f"cannot read a container from {type(source).__name__}")
        if (self._identity[2] if self._data is None else self._data.shape[0]) == 0:
            raise TruncatedError("file is empty")

    @contextmanager
    def _use(self):
        """Hold the file for one call: its descriptor open (a path's opened again, and checked to
        be the file that was opened), `close()` deferred until every call in progress ends."""
        with self._lock:
            if self._closed:
                raise InvalidArgumentError(f"{self.name}: the llmcodec file is closed")
            if self._users == 0 and self._data is None:
                self._fd = self._reopen()
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    if self._path is not None and self._fd is not None:
                        os.close(self._fd)
                    self._fd = None
                    if self._closed:
                        self._data = None

    def _reopen(self) -> int:
        """The descriptor to read with: the path opened again, or the caller's; either checked to be
        the file of the header (same inode, size and modification time)."""
        fd = self._fileno
        if fd is None:
            try:
                fd = os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError as exc:
                error = LimitExceededError if exc.errno in (errno.EMFILE, errno.ENFILE) else FileChangedError
                raise error(f"{self.name}: cannot open it again: {exc.strerror}") from None
        try:
            now = _identity(os.fstat(fd))
        except OSError as exc:
            now = (exc.strerror,)
        if now != self._identity:
            if self._fileno is None:
                os.close(fd)
            raise FileChangedError(f"{self.name}: the file changed since it was opened (it was "
                                   f"{self._identity[2]} bytes, now {now[2] if len(now) > 2 else now[0]}); "
                                   f"open it again")
        return fd

    def _read(self, offset: int, length: int) -> np.ndarray:
        """Bytes [offset, offset + length) of the file (a view of it in memory, else a new array)."""
        if self._data is not None:
            return self._data[offset:offset + length]
        out = np.empty(length, np.uint8)
        self._read_into(out, offset)
        return out

    def _read_into(self, out: np.ndarray, offset: int) -> None:
        """Fill `out` with the file's bytes from `offset`; a file that ends before is one that
        changed since it was opened (the header placed every range inside it)."""
        view, done = memoryview(out), 0
        while done < out.shape[0]:
            try:
                n = os.preadv(self._fd, [view[done:]], offset + done)
            except OSError as exc:
                raise FileChangedError(f"{self.name}: reading byte {offset + done}: {exc.strerror}") from None
            if n == 0:
                raise FileChangedError(f"{self.name}: the file ends at byte {offset + done}, inside the "
                                       f"{out.shape[0]} bytes at {offset} it held when opened: it was truncated "
                                       f"or rewritten while open")
            done += n

    def close(self) -> None:
        """Release the file: later calls raise InvalidArgumentError; calls in progress end first
        (with their result or an LlmcodecError), each keeping what it reads from."""
        with self._lock:
            self._closed = True
            if self._users == 0:
                self._data = None

    def __enter__(self) -> ContainerReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- decoding ---

    def read_raw(self, entry: TensorEntry, out: np.ndarray | None = None,
                 budget: Budget | None = None) -> np.ndarray:
        """The tensor's raw bytes (uint8[nbytes]), every chunk checksum verified, into `out`
        (a writable C-contiguous uint8 array of exactly that size) or a new array."""
        return self.read_chunks(entry, 0, len(entry.chunks), out, budget)

    def read_chunks(self, entry: TensorEntry, first: int, stop: int, out: np.ndarray | None = None,
                    budget: Budget | None = None) -> np.ndarray:
        """The raw bytes of chunks [first, stop) of a tensor, decoded in parallel, into `out` (as
        in read_raw) or a new array."""
        if not 0 <= first <= stop <= len(entry.chunks):
            raise InvalidArgumentError(f"chunks [{first}, {stop}) of tensor {entry.name!r}, which has "
                                       f"{len(entry.chunks)}")
        return self._read_spans([(entry, first, stop)], out, budget, f"{self.name}: decoding tensor {entry.name!r}")

    def read_many(self, entries: list[TensorEntry], out: np.ndarray | None = None,
                  budget: Budget | None = None) -> list[np.ndarray]:
        """The raw bytes of several tensors, views of one buffer (`out`, as in read_raw, of their
        total size, or a new one), their chunks decoded together on all threads, so many small
        tensors keep every core busy as well as one large one does."""
        whole = self._read_spans([(t, 0, len(t.chunks)) for t in entries], out, budget,
                                 f"{self.name}: decoding {len(entries)} tensors")
        starts = np.cumsum([0] + [t.nbytes for t in entries]).tolist()
        return [whole[starts[i]:starts[i + 1]] for i in range(len(entries))]

    def _read_spans(self, spans: list, out: np.ndarray | None, budget: Budget | None, what: str) -> np.ndarray:
        """Chunks [first, stop) of each (entry, first, stop) of `spans`, back to back, into `out`
        or a new array; the new array and the working memory taken from `budget` first."""
        budget = budget or Budget()
        nbytes = sum((min(stop * t.chunk_elements, t.elements) - first * t.chunk_elements) * t.dtype.itemsize
                     for t, first, stop in spans if stop > first)
        if out is None:
            out = budget.array(nbytes, what)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (nbytes,)
              or not out.flags.c_contiguous or not out.flags.writeable):
            found = (f"{out.dtype} of shape {list(out.shape)}" if isinstance(out, np.ndarray)
                     else type(out).__name__)
            raise InvalidArgumentError(f"{what}: out must be a writable C-contiguous uint8 array of "
                                       f"{nbytes} bytes, not {found}")
        with self._use():
            self._decode(spans, out, budget, what)
        return out

    def _decode(self, spans: list, out: np.ndarray, budget: Budget, what: str) -> None:
        """Decode the chunks of `spans` into `out`, back to back, verifying their checksums.

        The chunks are cut into tasks (see _plan); each builds its chunks' descriptor rows, reads
        their coded bytes and decodes them in one kernel call. At most `threads` tasks run at once,
        so the working memory, taken from `budget` before any task starts, is that of `threads`
        tasks however many chunks there are."""
        firsts, cuts, outs, fetch, working = self._plan(spans)
        tasks = len(cuts) - 1
        spare: list = []  # buffers of `fetch` bytes for coded bytes, one per running task: fresh pages cost more

        def decode(b: int) -> None:
            self._decode_task(_spans_between(spans, firsts, cuts[b], cuts[b + 1]), out, outs[b], spare, fetch)

        try:
            with budget.hold(min(self.threads, tasks) * working, f"{what}: the working memory of {tasks} tasks"):
                for _ in codec.parallel_map(self.threads, decode, range(tasks)):
                    pass
        except LlmcodecError as exc:
            raise self._named(exc) from None
        except MemoryError:
            raise LimitExceededError(f"{what}: more memory than this machine can allocate") from None

    def _plan(self, spans: list) -> tuple[np.ndarray, list, list, int, int]:
        """Cut the chunks of `spans` (numbered from 0 across them) into decoding tasks of at most
        BATCH_BYTES of output, BATCH_BYTES of coded bytes (or one chunk), and BATCH_CHUNKS chunks.
        Returns the number of each span's first chunk, where each task starts (and the end),
        the output offset of each task, the most coded bytes a task reads from the file, and the
        most bytes one task allocates (from the largest chunk count, coded bytes, chunk of any)."""
        firsts, cuts, outs = [], [0], [0]
        flat = total = most_n = most_coded = most_raw = 0
        n = size = coded = 0  # of the task being filled
        from_file = self._data is None  # a task reads its chunks' coded bytes into a buffer
        for entry, first, stop in spans:
            firsts.append(flat)
            k = entry.dtype.itemsize
            full, last = entry.chunk_elements * k, len(entry.chunks) - 1
            for i in range(first, stop):
                raw = full if i < last else entry.chunk_span(i)[1] * k
                length = entry.chunks[i].length if from_file else 0
                if n and (n == BATCH_CHUNKS or size + raw > BATCH_BYTES or coded + length > BATCH_BYTES):
                    cuts.append(flat)
                    outs.append(total)
                    n = size = coded = 0
                n, size, coded = n + 1, size + raw, coded + length
                flat, total = flat + 1, total + raw
                most_n, most_coded, most_raw = max(most_n, n), max(most_coded, coded), max(most_raw, raw)
        if n:
            cuts.append(flat)
        return np.array(firsts, np.int64), cuts, outs, most_coded, _task_bytes(most_n, most_coded, most_raw)

    def _decode_task(self, part: list, out: np.ndarray, start: int, spare: list, fetch: int) -> None:
        """Decode the chunks of `part` ((entry, first, stop) each) into out[start:], back to back;
        their coded bytes (at most `fetch`) are read into a buffer of `spare` or a new one."""
        rows = codec.chunk_rows(part)
        sizes = rows[:, kernels.ROW_N] * rows[:, kernels.ROW_ITEMSIZE]
        starts = start + np.cumsum(sizes) - sizes
        buffer = spare.pop() if spare else np.empty(fetch, np.uint8)  # list.pop and append are atomic
        data, rows = self._fetch(rows, buffer)
        bad = kernels.decode_chunks(data, rows, starts, out)
        spare.append(buffer)
        if bad >= 0:  # decode that chunk again on the path that explains what is wrong
            t, i = _chunk_at(part, bad)
            where = f"tensor {t.name!r} chunk {i}"
            codec.explain_fault(*self._chunk_bytes(t.chunks[i]), t, t.chunk_span(i)[1], where)
            raise FormatError(f"{where}: corrupt")

    def _fetch(self, rows: np.ndarray, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bytes the chunks `rows` are coded in, and `rows` pointing into them: in memory, the
        file itself; else its byte ranges read into `buffer`, ranges that touch or overlap (a chunk
        shared by two records, spec 4.3) once."""
        if self._data is not None:
            return self._data, rows
        starts = rows[:, kernels.ROW_OFFSET]
        ends = starts + rows[:, kernels.ROW_LENGTHS:kernels.ROW_LENGTHS + kernels.MAX_PLANES].sum(axis=1)
        if (starts[1:] == ends[:-1]).all():  # in order, back to back, as the writer puts them: one read
            lo, need = int(starts[0]), int(ends[-1] - starts[0])
            data = buffer[:need] if buffer.shape[0] >= need else np.empty(need, np.uint8)  # see below
            self._read_into(data, lo)
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
            self._read_into(data[p:p + b - a], a)
        run = np.cumsum(new) - 1
        rows = rows.copy()
        rows[order, kernels.ROW_OFFSET] = s - lo[run] + at[run]
        return data, rows

    def _chunk_bytes(self, chunk: Chunk) -> tuple[np.ndarray, Chunk]:
        """(bytes, chunk record pointing into them) of one chunk, for the Python decoding paths."""
        if self._data is not None:
            return self._data, chunk
        return self._read(chunk.offset, chunk.length), dataclasses.replace(chunk, offset=0)

    def iter_raw(self, entry: TensorEntry):
        """The tensor's raw bytes chunk by chunk, in order, decoded in parallel a few at a time.

        Memory stays bounded by a few chunks per thread: each yielded array is new."""
        def decode(index: int) -> np.ndarray:
            out = np.empty(entry.chunk_span(index)[1] * entry.dtype.itemsize, np.uint8)
            self._decode_task([(entry, index, index + 1)], out, 0, [], entry.chunks[index].length)
            return out

        with self._use():
            try:
                yield from codec.parallel_map(self.threads, decode, range(len(entry.chunks)))
            except LlmcodecError as exc:
                raise self._named(exc) from None
            except MemoryError:
                raise LimitExceededError(f"{self.name}: decoding tensor {entry.name!r}: more memory than "
                                         f"this machine can allocate") from None

    def plane_statistics(self, entry: TensorEntry, contexts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Symbol counts of each plane over the whole tensor, int64[planes, 256], and with
        `contexts` the joint counts of kernels.context_counts, int64[planes, 3, 257, 256], each
        chunk on its own (a chunk's first element has no previous one). Contexts need planes of
        one byte per element; a block type's planes get only the previous-byte context.

        A chunk of CONSTANT planes is counted without being decoded; the bytes of the other
        chunks, over all calls on this reader, are bounded by `Limits.work` per byte of the file
        (spec section 9), checked before anything is decoded."""
        k = len(entry.planes)
        scalar = entry.layout != kernels.BLOCK_FIELDS
        cols = entry.shape[-1] if len(entry.shape) >= 2 and scalar else 0
        widths = [w for _, w in entry.planes]
        constant = [all(p.method == format.METHOD_CONSTANT for p in c.planes) for c in entry.chunks]
        work = sum(entry.chunk_span(i)[1] for i, const in enumerate(constant) if not const) * entry.dtype.itemsize
        self._statistics_work += work
        file_size = self._identity[2] if self._data is None else self._data.shape[0]
        if self._statistics_work > self.limits.work * file_size:
            raise LimitExceededError(f"{self.name}: plane statistics would decode {self._statistics_work} bytes, over "
                                     f"the limit of {self.limits.work} per byte of its {file_size} bytes "
                                     f"(Limits.work)")
        batches, size = [[]], 0  # chunks cut into tasks of about BATCH_BYTES decoded bytes each
        for i, const in enumerate(constant):
            batches[-1].append(i)
            size += 0 if const else entry.chunk_span(i)[1] * entry.dtype.itemsize
            if size >= BATCH_BYTES:
                batches.append([])
                size = 0

        def count(batch: list) -> tuple[np.ndarray, np.ndarray | None]:
            counts = np.zeros((k, 256), np.int64)
            part = np.zeros((k, 3, 257, 256), np.int64) if contexts else None
            for index in batch:
                _, n = entry.chunk_span(index)
                chunk = entry.chunks[index]
                if constant[index]:
                    _constant_counts(chunk.planes, widths, n, cols if scalar else 0, scalar, counts, part)
                    continue
                planes = codec.decode_planes(*self._chunk_bytes(chunk), entry, n,
                                             f"tensor {entry.name!r} chunk {index}")
                counts += np.array([kernels.byte_histogram(p) for p in planes]).reshape(k, 256)
                if part is None:
                    continue
                if scalar:
                    kernels.context_counts(np.array(planes).reshape(k, n), cols, part)
                else:  # each plane alone, of one byte per element and no rows: only "previous" means something
                    for j, p in enumerate(planes):
                        kernels.context_counts(p.reshape(1, -1), 0, part[j:j + 1])
            return counts, part

        total = np.zeros((k, 256), np.int64)
        joint = np.zeros((k, 3, 257, 256), np.int64) if contexts else None
        with self._use():
            try:
                for counts, part in codec.parallel_map(self.threads, count, [b for b in batches if b]):
                    total += counts
                    if part is not None:
                        joint += part
            except LlmcodecError as exc:
                raise self._named(exc) from None
            except MemoryError:
                raise LimitExceededError(f"{self.name}: counting the planes of tensor {entry.name!r}: more "
                                         f"memory than this machine can allocate") from None
        if joint is not None and not scalar:  # block planes: the "above" and "plane 0" contexts say nothing
            joint[:, 1:] = 0
            joint[:, 1:, kernels.CONTEXT_NONE] = total[:, None, :]
        return total, joint

    def read_blob(self, seg: Segment) -> memoryview:
        """A blob segment's bytes, its checksum verified."""
        with self._use():
            data = memoryview(self._read(seg.offset, seg.length))
        computed = format.checksum64(data)
        if computed != seg.checksum:
            raise ChecksumError(f"{self.name}: blob at byte {seg.offset}: stored checksum {seg.checksum:#018x}, "
                                f"computed {computed:#018x}")
        return data


def _constant_counts(planes: list, widths: list, n: int, cols: int, scalar: bool, counts: np.ndarray,
                     part: np.ndarray | None) -> None:
    """Add what kernels.byte_histogram and kernels.context_counts would count over a chunk of n
    elements whose planes are all CONSTANT (plane j: n x widths[j] bytes c_j), without decoding it.
    Block planes are counted each alone, as plane_statistics does (cols = 0, no plane-0 context)."""
    none, c0 = kernels.CONTEXT_NONE, planes[0].parameter
    for j, p in enumerate(planes):
        c, m = p.parameter, n * widths[j]  # m >= 1
        counts[j, c] += m
        if part is None:
            continue
        reach = min(cols, m) if cols > 0 else m  # elements with no element `cols` before them
        part[j, 0, none, c] += 1
        part[j, 0, c, c] += m - 1
        part[j, 1, none, c] += reach
        part[j, 1, c, c] += m - reach
        part[j, 2, c0 if scalar and j > 0 else none, c] += m


def model_entries(tensors: list[TensorEntry], transforms: dict[str, Transform]) -> list[tuple]:
    """(name, dtype name, shape, raw bytes) of the model's tensors in file order: the stored ones,
    and each transformed one, as rebuilt, where its first part is (spec 10); coded blobs are not
    model tensors. What decoding a file of arrays writes as a safetensors file."""
    owner = {p: name for name, t in transforms.items() for p in t.parts.values()}
    out: dict[str, tuple] = {}
    for t in tensors:
        name = owner.get(t.name)
        if t.hidden or name in out:
            continue
        if name is None:
            out[t.name] = (t.name, t.dtype.name, t.shape, t.nbytes)
        else:
            r = transforms[name]
            out[name] = (name, r.dtype, tuple(r.shape), r.original_bytes)
    return list(out.values())


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


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"
