"""Reading and writing `.llmc` containers: atomic streaming writer, validating reader.

The writer streams chunks to a temporary file beside the destination, appends the header, patches
the preamble and renames the file into place, so a failure never leaves a partial file under the
final name. The reader validates preamble and header before any kernel sees the data.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import codec, dtypes, format, kernels, safetensors_io, transforms
from .errors import (ChecksumError, FormatError, InvalidArgumentError, LimitExceededError, LlmcodecError,
                     TruncatedError)
from .format import Chunk, Header, Limits, Segment, Source, TensorEntry, Transform
from .output import open_output


BATCH_BYTES = 1 << 20  # output bytes per decoding task when many small chunks are read at once


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
        self._out = open_output(self.path, seekable=True, mode=mode)  # mode: permission bits
        self._file = self._out  # writes that fail (a full disk) name the destination
        with self._out:  # a failure here, outside the caller's `with`, still removes the file
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


class ContainerReader:
    """A validated view of a container: its metadata, source, tensor index, and decoding.

    `source` is a path, a bytes-like object, or a binary file object (read whole if it has no
    file descriptor to map).
    """

    def __init__(self, source, *, limits: Limits | None = None, threads: int | None = None):
        self.limits = limits or Limits()
        self.threads = codec.resolve_threads(threads)
        self.name = _describe(source)
        self._file = None
        self._mmap = None
        self._pool = None
        self._row_cache: dict[str, np.ndarray] = {}
        self._statistics_work = 0  # plane bytes plane_statistics has decoded (bounded by Limits.work)
        try:
            self._data = self._map(source)
            size = self._data.shape[0]
            pre = format.parse_preamble(self._data[:format.PREAMBLE_SIZE].tobytes(), size, self.limits)
            raw_header = self._data[pre.header_offset:pre.header_offset + pre.header_length].tobytes()
            header = format.parse_header(raw_header, pre, self.limits)
        except LlmcodecError as exc:
            self.close()
            raise self._named(exc) from None
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

    def _map(self, source) -> np.ndarray:
        if isinstance(source, (str, os.PathLike)):
            self._file = open(source, "rb")
            fileno = self._file.fileno()
        elif isinstance(source, (bytes, bytearray, memoryview)):
            return np.frombuffer(source, np.uint8)
        elif hasattr(source, "read"):
            try:
                fileno = source.fileno()
            except (OSError, AttributeError):
                return np.frombuffer(source.read(), np.uint8)
        else:
            raise InvalidArgumentError(f"cannot read a container from {type(source).__name__}")
        if os.fstat(fileno).st_size == 0:
            raise TruncatedError("file is empty")
        self._mmap = mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)
        return np.frombuffer(self._mmap, np.uint8)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._data = None
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:  # an array handed out still views the map; it closes with it
                pass
            self._mmap = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ContainerReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read_raw(self, entry: TensorEntry, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor's raw bytes (uint8[nbytes]), every chunk checksum verified."""
        if out is None:
            out = np.empty(entry.nbytes, np.uint8)
        return self.read_chunks(entry, 0, len(entry.chunks), out)

    def read_many(self, entries: list[TensorEntry], out: np.ndarray | None = None) -> list[np.ndarray]:
        """The raw bytes of several tensors, views of one buffer (`out`, uint8 of their total
        size, or a new one), their chunks decoded together on all threads, so many small tensors
        keep every core busy as well as one large one does."""
        starts = np.cumsum([0] + [t.nbytes for t in entries])
        whole = np.empty(int(starts[-1]), np.uint8) if out is None else out
        if whole.shape != (int(starts[-1]),) or whole.dtype != np.uint8 or not whole.flags.c_contiguous:
            raise InvalidArgumentError(f"out must be a contiguous uint8 array of {int(starts[-1])} bytes")
        owners = [(t, i) for t in entries for i in range(len(t.chunks))]
        rows = codec.chunk_rows(entries)
        self._decode_rows(rows, owners, whole)
        return [whole[starts[i]:starts[i + 1]] for i in range(len(entries))]

    def read_chunks(self, entry: TensorEntry, first: int, stop: int, out: np.ndarray) -> np.ndarray:
        """Decode chunks [first, stop) of a tensor, in parallel, into `out` (their raw bytes)."""
        self._decode_rows(self._rows(entry)[first:stop], [(entry, i) for i in range(first, stop)], out)
        return out

    def iter_raw(self, entry: TensorEntry):
        """The tensor's raw bytes chunk by chunk, in order, decoded in parallel a few at a time.

        Memory stays bounded by a few chunks per thread: each yielded array is new, and the file's
        pages behind a decoded chunk are released from this process's resident set.
        """
        rows = self._rows(entry)

        def decode(index: int) -> np.ndarray:
            row = rows[index:index + 1]
            out = np.empty(int(row[0, kernels.ROW_N] * row[0, kernels.ROW_ITEMSIZE]), np.uint8)
            self._decode_batch(row, [(entry, index)], out, np.zeros(1, np.int64))
            chunk = entry.chunks[index]
            self._release(chunk.offset, chunk.length)
            return out

        try:
            yield from codec.ordered_map(self._workers(), self.threads, decode, range(len(entry.chunks)))
        except LlmcodecError as exc:
            raise self._named(exc) from None

    def _rows(self, entry: TensorEntry) -> np.ndarray:
        rows = self._row_cache.get(entry.name)
        if rows is None:
            rows = self._row_cache[entry.name] = codec.chunk_rows([entry])
        return rows

    def _decode_rows(self, rows: np.ndarray, owners: list, out: np.ndarray) -> None:
        """Decode the chunks `rows` (of (tensor, chunk index) `owners`) into `out`, back to back.

        Chunks go to the kernel in batches of about BATCH_BYTES of output: one kernel call per
        batch, not per chunk, and one batch per task on the worker threads.
        """
        sizes = rows[:, kernels.ROW_N] * rows[:, kernels.ROW_ITEMSIZE]
        ends = np.cumsum(sizes)
        starts = ends - sizes
        cuts, first = [0], 0
        for c, end in enumerate(ends[:-1].tolist(), 1):  # a new batch where the total reaches BATCH_BYTES
            if end - first >= BATCH_BYTES:
                cuts.append(c)
                first = end
        cuts.append(len(rows))

        def decode(b: int) -> None:
            lo, hi = cuts[b], cuts[b + 1]
            self._decode_batch(rows[lo:hi], owners[lo:hi], out, starts[lo:hi])

        try:
            for _ in codec.ordered_map(self._workers(), self.threads, decode, range(len(cuts) - 1)):
                pass
        except LlmcodecError as exc:
            raise self._named(exc) from None

    def _decode_batch(self, rows: np.ndarray, owners: list, out: np.ndarray, starts: np.ndarray) -> None:
        bad = kernels.decode_chunks(self._data, rows, starts, out)
        if bad >= 0:  # decode that chunk again on the path that explains what is wrong
            t, i = owners[bad]
            where = f"tensor {t.name!r} chunk {i}"
            codec.explain_fault(self._data, t.chunks[i], t, t.chunk_span(i)[1], where)
            raise FormatError(f"{where}: corrupt")

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
        budget = self.limits.work * self._data.shape[0]
        if self._statistics_work > budget:
            raise LimitExceededError(f"{self.name}: plane statistics would decode {self._statistics_work} bytes, over "
                                     f"the limit of {self.limits.work} per byte of its {self._data.shape[0]} bytes "
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
                planes = codec.decode_planes(self._data, chunk, entry, n, f"tensor {entry.name!r} chunk {index}")
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
        try:
            for counts, part in codec.ordered_map(self._workers(), self.threads, count, [b for b in batches if b]):
                total += counts
                if part is not None:
                    joint += part
        except LlmcodecError as exc:
            raise self._named(exc) from None
        return total, joint

    def _workers(self) -> ThreadPoolExecutor | None:
        if self.threads > 1 and self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads)
        return self._pool

    def _release(self, offset: int, length: int) -> None:
        """Drop the mapped pages of a range already decoded, so streaming keeps RSS small."""
        if self._mmap is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE
        stop = (offset + length) // mmap.PAGESIZE * mmap.PAGESIZE
        if stop > start:
            self._mmap.madvise(mmap.MADV_DONTNEED, start, stop - start)

    def read_blob(self, seg: Segment) -> memoryview:
        data = memoryview(self._data[seg.offset:seg.offset + seg.length])
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


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return getattr(source, "name", None) or f"<{type(source).__name__}>"
