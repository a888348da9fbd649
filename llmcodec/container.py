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
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import codec, dtypes, format
from .sources import safetensors as safetensors_file
from .budget import Budget
from .errors import (BaseError, ChecksumError, FileChangedError, InvalidArgumentError, LimitExceededError,
                     LlmcodecError, TruncatedError)
from .format import BaseRecord, Chunk, Delta, Header, Limits, Segment, Source, TensorEntry, Transform
from .output import open_output



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
    # A delta tensor (spec 11): (base tensor name, transform, read_base(start, stop) of its bytes)
    delta: tuple | None = None

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
                 mode: int | None = None, level: str = "fast"):
        self.path = Path(path)
        self.threads = codec.resolve_threads(threads)
        self.level = codec.level(level)  # "max" tries chunk sizes per tensor unless `chunk_size` is given
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

    def add_many(self, items: list, on_chunk=None, segments: bool = False) -> list[int]:
        """Encode `TensorSource`s and store `BlobSource`s, in order; return the tensors' indices.

        The chunks of all items are encoded together on the worker threads (a bounded number in
        flight), so many small tensors use every core as well as one large tensor does. With
        `segments`, each item also becomes the next segment of the original file.
        `on_chunk(raw)` is called with each chunk's (or blob's) raw bytes, in order, once written.
        """
        jobs, owners = [], []  # owners: (item, entry, has a job) in order; entry None: a blob
        tensors = sum(not isinstance(item, BlobSource) for item in items)
        format.check_count("Tensor_Count", len(self.tensors) + tensors, self.limits.tensor_count)
        if segments:
            format.check_count("Segment_Count", len(self.segments) + len(items), self.limits.segment_count)
        chosen = self._geometry([item for item in items if not isinstance(item, BlobSource)])
        for item in items:
            if isinstance(item, BlobSource):
                jobs.append((item.read, None, None))
                owners.append((item, None, True))
                continue
            layout, size = chosen.get(id(item), (None, self.chunk_size))
            entry = self._entry(item, size, layout)
            spans = codec.chunk_byte_spans(entry)
            read_base = item.delta[2] if item.delta is not None else None
            jobs += [(lambda item=item, span=span: item.read(*span), entry,
                      None if read_base is None else lambda r=read_base, span=span: r(*span)) for span in spans]
            owners += [(item, entry, True) for _ in spans] or [(item, entry, False)]  # an empty tensor: no chunk

        indices, last = [], None
        # one result per job, in order
        with closing(codec.encode_chunks(jobs, self._pool, self.threads, self.level)) as results:
            for item, entry, real in owners:
                raw = check = planes = streams = base_check = None
                if real:
                    raw, check, planes, streams, base_check = next(results)
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
                    if not real:
                        continue
                    entry.chunks.append(self._store_chunk(entry, check, planes, streams))
                    if base_check is not None:
                        entry.delta.base_checksums.append(base_check)
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

    def _geometry(self, items: list[TensorSource]) -> dict[int, tuple[int, int | None]]:
        """id(item) -> (layout, chunk size in bytes) chosen for it by a level that tries several
        (codec.choose_chunk_size; BLOCK_QUANTS against BLOCK_FIELDS for the block types that
        have it, spec 5), each tried on windows of the tensor on the worker threads. A chunk_size
        given to the writer is kept."""
        if not self.level.chunk_sizes:
            return {}
        level = self.level
        if self.chunk_size is not None:
            level = dataclasses.replace(level, chunk_sizes=(self.chunk_size,))

        def choose(item: TensorSource) -> tuple[int, int]:
            layouts = [item.dtype.default_layout]
            if dtypes.layout_allowed(dtypes.LAYOUT_BLOCK_QUANTS, item.dtype):
                layouts.append(dtypes.LAYOUT_BLOCK_QUANTS)
            read_base = item.delta[2] if item.delta is not None else None
            tried = [(*codec.choose_chunk_size(self._entry(item, max(level.chunk_sizes), layout), item.read,
                                               read_base, level), layout) for layout in layouts]
            size, _, layout = min(tried, key=lambda t: t[1])  # a tie keeps the default layout
            return layout, size

        return {id(item): choice for item, choice in zip(items, codec.parallel_map(self.threads, choose, items))}

    def _entry(self, item: TensorSource, chunk_size: int | None = None, layout: int | None = None) -> TensorEntry:
        shape = tuple(int(d) for d in item.shape)
        layout = item.dtype.default_layout if layout is None else layout
        entry = TensorEntry(item.name, item.dtype, shape, layout,
                            codec.chunk_elements(chunk_size, item.dtype.itemsize), hidden=item.hidden)
        if item.delta is not None:
            entry.delta = Delta(item.delta[0], item.delta[1], [])
        format.check_tensor(entry, self.limits)
        if not callable(item.raw) and _as_bytes(item.raw).shape[0] != entry.nbytes:
            raise InvalidArgumentError(f"tensor {item.name!r}: {_as_bytes(item.raw).shape[0]} bytes for shape "
                                       f"{list(shape)} of {item.dtype.name} ({entry.nbytes} bytes expected)")
        return entry

    def _add_blob(self, data, segment: bool) -> None:
        if segment:
            self.segments.append(Segment(format.SEGMENT_BLOB, offset=self._pos, length=len(data),
                                         checksum=format.checksum64(data)))
        self._write([data])

    def finish(self, metadata: dict[str, str] | None = None, source_kind: int = format.SOURCE_ARRAYS,
               original_size: int = 0, original_sha256: bytes = b"",
               transforms: dict[str, Transform] | None = None, base: BaseRecord | None = None) -> None:
        """Check and write the header (with the `transforms` records of section 10 and the Base
        section of 4.6, if any), then move the file into place."""
        try:
            source = Source(source_kind, original_size, original_sha256, self.segments)
            if base is None and any(t.delta is not None for t in self.tensors):
                raise BaseError("delta tensors were written without a base record")
            if base is not None and not any(t.delta is not None for t in self.tensors):
                base = None  # no tensor was worth a delta: a 1.2 file
            header = Header(dict(metadata or {}), source, self.tensors, dict(transforms or {}), base)
            raw = self._header_bytes(header)
            header_offset = self._pos
            self._write([raw])
            self._file.seek(0)
            self._file.write(format.build_preamble(header_offset, raw, header.minor))
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
        format.check_base(header, self.limits)
        if header.source.kind == format.SOURCE_ARRAYS:
            safetensors_file.build_header(model_entries(header.tensors, header.transforms), header.metadata)
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


# Bytes that parsing a header of n bytes may allocate, per header byte: a chunk record of 16 + 6k
# bytes becomes a Chunk, k PlaneRefs and their ints (measured: under 40 x its size).
HEADER_PARSE_BYTES = 48
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
                 budget: Budget | None = None, read_base=None):
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
        self.read_base = read_base  # (base tensor name, start, stop) -> its bytes, for delta tensors
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
        self.base = header.base  # the Base section (spec 4.6): deltas are on their entries (TensorEntry.delta)
        parts = {p for t in self.transforms.values() for p in t.parts.values()}
        self.tensors = [t for t in header.tensors if not t.hidden and t.name not in parts]
        self.by_name = {t.name: t for t in self.tensors}
        # The model's tensors in file order: stored ones, and each transformed one where its parts are.
        self.names = [name for name, *_ in model_entries(header.tensors, self.transforms)]

    def _named(self, exc: LlmcodecError) -> LlmcodecError:
        """The same error, its message prefixed with the file's name."""
        return type(exc)(f"{self.name}: {exc}")

    # --- the file: opened, read, closed ---

    def _open(self, source) -> None:
        """Take the source: bytes in memory, or a regular file's identity (and descriptor if given open)."""
        if isinstance(source, (str, os.PathLike)):
            with builtins.open(source, "rb") as f:  # the errors of open(): missing file, a folder
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):  # a pipe or a device: read once, as a file object is
                    self._data = np.frombuffer(f.read(), np.uint8)
                else:
                    self._identity = _identity(st)
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
        nbytes = codec.span_bytes(spans)
        if out is None:
            out = budget.array(nbytes, what)
        elif (not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != (nbytes,)
              or not out.flags.c_contiguous or not out.flags.writeable):
            found = (f"{out.dtype} of shape {list(out.shape)}" if isinstance(out, np.ndarray)
                     else type(out).__name__)
            raise InvalidArgumentError(f"{what}: out must be a writable C-contiguous uint8 array of "
                                       f"{nbytes} bytes, not {found}")
        self._need_base(spans)
        with self._use():
            try:
                codec.decode_spans(spans, out, self._coded(), self.threads, budget, what)
            except LlmcodecError as exc:
                raise self._named(exc) from None
        return out

    def _coded(self) -> codec.Coded:
        """The coded bytes for the decoder, while a call holds the file (_use)."""
        return codec.Coded(self._data, self._read_into, self.read_base)

    def _need_base(self, spans) -> None:
        """A delta tensor among `spans` and no base given: a BaseError naming the base it needs."""
        if self.read_base is None and any(entry.delta is not None for entry, _, _ in spans):
            raise BaseError(f"{self.name}: {self.needs_base()}")

    def needs_base(self) -> str:
        """Which base this file's delta tensors were stored against (spec 11.3), for messages."""
        b = self.base
        files = ", ".join(f"{f.path} ({f.size} bytes, SHA-256 {f.sha256.hex()})" for f in b.files[:4])
        more = f" and {len(b.files) - 4} more files" if len(b.files) > 4 else ""
        held = f": {files}{more}" if files else ""
        return f"its delta tensors need the base model {b.name!r}{held}; pass it as base= (--base)"

    def iter_raw(self, entry: TensorEntry, indices=None):
        """The tensor's raw bytes chunk by chunk (chunks `indices`, default all), in order,
        decoded in parallel a few at a time. Memory stays bounded by a few chunks per thread:
        each yielded array is new."""
        indices = range(len(entry.chunks)) if indices is None else indices
        self._need_base([(entry, 0, len(entry.chunks))])
        with self._use():
            try:
                yield from codec.iter_chunks(entry, indices, self._coded(), self.threads)
            except LlmcodecError as exc:
                raise self._named(exc) from None

    def take_work(self, nbytes: int, what: str) -> None:
        """Count `nbytes` decoded for `info`'s statistics; over all calls on this reader they are
        bounded by `Limits.work` per byte of the file (spec section 9)."""
        self._statistics_work += nbytes
        file_size = self._identity[2] if self._data is None else self._data.shape[0]
        if self._statistics_work > self.limits.work * file_size:
            raise LimitExceededError(f"{self.name}: {what} would decode {self._statistics_work} bytes, over "
                                     f"the limit of {self.limits.work} per byte of its {file_size} bytes "
                                     f"(Limits.work)")

    def read_blob(self, seg: Segment) -> memoryview:
        """A blob segment's bytes, its checksum verified."""
        with self._use():
            data = memoryview(self._read(seg.offset, seg.length))
        computed = format.checksum64(data)
        if computed != seg.checksum:
            raise ChecksumError(f"{self.name}: blob at byte {seg.offset}: stored checksum {seg.checksum:#018x}, "
                                f"computed {computed:#018x}")
        return data


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


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"
