"""Checkpoint files: safetensors files and sharded folders to containers and back, byte-identical.

Encoding reads the source chunk by chunk (never the whole file), keeps every byte that is not
tensor data as a blob, and records the source's SHA-256; decoding streams the original back out
and checks that SHA-256 before the output appears under its name.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import bases, codec, dtypes, folders, format, output, sources, transforms
from .sources import safetensors as safetensors_file
from .container import BlobSource, ContainerReader, ContainerWriter, TensorSource, model_entries
from .errors import ChecksumError, InvalidArgumentError, UnsupportedFeatureError
from .format import Limits

SUFFIX = folders.SUFFIX
BLOB_PIECE = 16 << 20  # blobs are read and stored in pieces of at most this many bytes
CODED_BLOB_MIN = 64 << 10  # non-tensor bytes of at least this many are coded (a hidden U8 tensor)


def encoded_name(src: Path) -> Path:
    """Default output of `encode`: `x.safetensors` or `x.gguf` -> `x.llmc`, folder `m` -> `m.llmc`."""
    return src.with_name(src.name + SUFFIX) if src.is_dir() else src.with_suffix(SUFFIX)


def decoded_name(src: Path, source_kind: int | None = None) -> Path:
    """Default output of `decode`: `x.llmc` -> its original's name (`x.safetensors`, `x.gguf`:
    the Source_Kind, read from the header unless given), folder `m.llmc` -> `m`."""
    src = Path(src)
    if src.suffix != SUFFIX:
        raise InvalidArgumentError(f"{src}: name does not end in {SUFFIX}; give the output name")
    if src.is_dir():
        return src.with_suffix("")
    if source_kind is None:
        with ContainerReader(src) as reader:
            source_kind = reader.source.kind
    return src.with_suffix(sources.decoded_suffix(source_kind))


def encode_file(src, dst=None, *, threads: int | None = None, chunk_size: int | None = None,
                progress=None, base=None, level: str = "fast") -> Path:
    """Encode a safetensors or GGUF file, or a folder holding a sharded checkpoint, losslessly.

    A folder becomes a folder (see `llmcodec.folders`): each `*.safetensors` and `*.gguf` at any
    depth is encoded to `*.llmc`, every other file is copied; a folder with no checkpoint file is an
    error. `progress(nbytes)` is called as source bytes are consumed. Returns the output path; the
    output appears only when complete (see `llmcodec.output`: a device, FIFO or `-` is written
    into), with the input's permission bits; an existing output folder is replaced only when it
    holds nothing but what this encode writes.

    With `base` (a base model: a path to a safetensors or GGUF file or folder, an `.llmc` file or
    encoded folder, an open llmcodec file, or a mapping of arrays), each tensor the base holds with
    the same name, dtype and shape is stored as a delta against it where that is smaller (spec 11);
    decoding then needs the same base. `level`: "fast" (the default) or "max" (a smaller file for
    several times the encoding work; see `llmcodec.save_file`); any reader reads either.

    >>> llmcodec.encode_file("model.safetensors")            # doctest: +SKIP
    PosixPath('model.llmc')
    """
    src = Path(src)
    dst = encoded_name(src) if dst is None else Path(dst)
    level = codec.level(level)
    with _base(base) as base:
        _encode(src, dst, threads, chunk_size, progress, base, level)
    return dst


@contextmanager
def _base(base):
    """The Base of a `base=` argument for one call, closed after it if this call opened it."""
    base, owned = bases.as_base(base)
    try:
        yield base
    finally:
        if owned:
            base.close()


def _encode(src: Path, dst: Path, threads, chunk_size, progress, base, level) -> None:
    if src.is_dir():
        folders.check_destination(src, dst)
        converted = set(folders.source_files(src))
        targets = _plan(src, lambda rel: rel.with_suffix(SUFFIX) if rel in converted else rel)

        def build(out: Path, rel: Path) -> None:
            if rel in converted:
                _encode_one(src / rel, out, threads, chunk_size, progress, base, level)
            else:
                _copy(src / rel, out, progress)
        folders.write_folder(dst, targets, build, f"encoding {src}")
    else:
        _encode_one(src, dst, threads, chunk_size, progress, base, level)


def decode_file(src, dst=None, *, threads: int | None = None, progress=None, base=None) -> Path:
    """Write back the original of an encoded file or folder, byte-identical, SHA-256 checked.

    A container made by `save_file` (no original file) decodes to a safetensors file of its
    tensors and metadata. Returns the output path. Outputs are written as `encode_file` writes
    them; decoding to a device, FIFO or `-` streams the original there (a checksum failure is
    then reported after the bytes went out). `base`: the base model of a file of delta tensors
    (as for `encode_file`).
    """
    with _base(base) as base:
        return _decode(Path(src), dst, threads, progress, base)


def _decode(src: Path, dst, threads, progress, base) -> Path:
    if src.is_dir():
        dst = decoded_name(src) if dst is None else Path(dst)
        folders.check_destination(src, dst)
        shards = {p.relative_to(src) for p in folders.shards(src)}
        targets = _plan(src, lambda rel: rel.with_suffix(_original_suffix(src / rel)) if rel in shards else rel)

        def build(out: Path, rel: Path) -> None:
            if rel in shards:
                _decode_one(src / rel, out, threads, progress, base)
            else:
                _copy(src / rel, out, progress)
        folders.write_folder(dst, targets, build, f"decoding {src}")
        return dst
    with _reader(src, threads, None, base) as reader:
        dst = decoded_name(src, reader.source.kind) if dst is None else Path(dst)
        _write_to(reader, dst, _mode_of(src), progress)
    return dst


def _reader(src: Path, threads, limits, base) -> ContainerReader:
    """A reader of `src` that decodes delta tensors against `base` (checked to fit: check 51)."""
    reader = ContainerReader(src, threads=threads, limits=limits, read_base=None if base is None else base.read)
    if base is not None:
        try:
            bases.check_fits(base, reader.all_tensors, reader.name)
        except BaseException:
            reader.close()
            raise
    return reader


def original_bytes(src) -> int:
    """Bytes `decode` writes (and `verify` checks) for an encoded file or folder: the originals'
    sizes, from the headers, and the copied files' sizes."""
    src = Path(src)
    if not src.is_dir():
        with ContainerReader(src) as reader:
            return _original_size(reader)
    shards = set(folders.shards(src))
    return sum(_original_bytes_one(src / rel, src / rel in shards) for rel in folders.walk(src))


def _original_bytes_one(path: Path, shard: bool) -> int:
    if not shard:
        return path.stat().st_size
    with ContainerReader(path) as reader:
        return _original_size(reader)


def _original_size(reader: ContainerReader) -> int:
    """The original file's size; for `save_file`'s containers, the tensor bytes decode writes
    (stored and rebuilt; the safetensors header it adds is not counted)."""
    if reader.source.kind != format.SOURCE_ARRAYS:
        return reader.source.original_size
    rebuilt = sum(math.prod(t.shape) * transforms.FLOAT_DTYPES[t.dtype].itemsize for t in reader.transforms.values())
    return sum(t.nbytes for t in reader.tensors) + rebuilt


def _plan(src: Path, rename) -> dict[Path, Path]:
    """Output path -> source file, for every file of folder `src`; two files that `rename` maps
    to one output (`a.safetensors` and `a.gguf`, or `a.llmc` beside a copied `a.safetensors`)
    are an error."""
    targets: dict[Path, Path] = {}
    for rel in folders.walk(src):
        out = rename(rel)
        if out in targets:
            raise InvalidArgumentError(f"{src}: both {targets[out]} and {rel} would become {out}")
        targets[out] = rel
    return targets


def _copy(src: Path, dst: Path, progress) -> None:
    shutil.copy2(src, dst)
    if progress is not None:
        progress(src.stat().st_size)


def _mode_of(path: Path) -> int:
    """The permission bits of an input, for its output."""
    return stat.S_IMODE(os.stat(path).st_mode)


class Transformed(dict):
    """What `transform_file` did: tensor name -> its Transform record; and in `unmet`, the weight
    matrices that no quantization setting brought within `max_error`, stored losslessly: tensor
    name -> the smallest relative error reached."""

    def __init__(self):
        super().__init__()
        self.unmet: dict[str, float] = {}


def transform_file(src, dst, kind: str, *, bits: int = 8, group_size: int = 128, scheme: str = "symmetric",
                   max_error: float | None = None, rank: int | None = None, energy: float | None = None,
                   threads: int | None = None, chunk_size: int | None = None, progress=None,
                   level: str = "fast") -> Transformed:
    """Quantize (`kind="quantize"`) or factorize (`kind="factorize"`) the weight matrices of the
    safetensors file `src` (2-D float tensors of at least transforms.MIN_ELEMENTS values; a
    factorization only where the factors are smaller; one scale per row where `group_size` does not
    divide the row), store everything losslessly in `dst`, and
    return what was done per tensor. Lossy, and only on request: decoding gives the rebuilt
    tensors, not the original file.

    With `max_error` (quantize only), each matrix gets the largest group size, from `group_size`
    (or the row, where it does not divide it) halved down to transforms.MIN_GROUP, whose relative
    error is at most `max_error` (`transforms.quantize_within`); a matrix that none brings within
    it is stored losslessly and listed in the result's `unmet`.

    >>> done = files.transform_file("m.safetensors", "m.llmc", "quantize", max_error=0.01)  # doctest: +SKIP
    >>> done.unmet                                                                     # doctest: +SKIP
    {}
    """
    src, dst = Path(src), Path(dst)
    level = codec.level(level)
    if max_error is not None and kind != "quantize":
        raise InvalidArgumentError(f"max_error is for quantize, not {kind!r}")
    if max_error is not None and not max_error > 0:  # checked before any work, matrices or not
        raise InvalidArgumentError(f"max_error must be a positive number, not {max_error}")
    done = Transformed()
    items = []
    with _seekable(src) as (f, mode):
        size = os.fstat(f.fileno()).st_size
        layout = safetensors_file.read_layout(f, size, str(src))
        names = {t.name for t in layout.tensors}
        for t in sorted(layout.tensors, key=lambda t: t.begin):
            if t.dtype is None:
                raise UnsupportedFeatureError(f"{src}: tensor {t.name!r} has a dtype llmcodec does not read")
            raw = np.frombuffer(os.pread(f.fileno(), t.end - t.begin, t.begin), t.dtype.numpy).reshape(t.shape)
            result = None
            if transforms.eligible(raw, t.dtype.name):
                if kind == "quantize":  # a group size that does not divide the row: one scale per row
                    group = group_size if group_size and raw.shape[1] % group_size == 0 else 0
                    if max_error is None:
                        result = transforms.quantize(t.name, raw, t.dtype.name, bits, group, scheme)
                    else:
                        result = transforms.quantize_within(t.name, raw, t.dtype.name, bits, group, scheme,
                                                            max_error)
                        if result[0].relative_error > max_error:
                            done.unmet[t.name] = result[0].relative_error
                            result = None
                elif kind == "factorize":
                    result = transforms.factorize(t.name, raw, t.dtype.name, rank, energy)
                else:
                    raise InvalidArgumentError(f"kind must be quantize or factorize, not {kind!r}")
            if result is None:
                items.append(TensorSource(t.name, t.dtype, t.shape, raw))
            else:
                record, parts = result
                clash = [p for p in record.parts.values() if p in names]
                if clash:
                    raise InvalidArgumentError(f"{src}: tensor {clash[0]!r} is named like a part of {t.name!r}")
                done[t.name] = record
                for role, part in parts.items():
                    items.append(TensorSource(record.parts[role], dtypes.from_numpy(part.dtype), part.shape, part))
            if progress is not None:
                progress(t.end - t.begin)
    with ContainerWriter(dst, threads=threads, chunk_size=chunk_size, mode=mode, level=level) as writer:
        writer.add_many(items)
        writer.finish(layout.metadata, transforms=done)
    return done


def verify_file(src, *, threads: int | None = None, progress=None, limits: Limits | None = None,
                base=None) -> None:
    """Decode everything in memory and check every checksum and the original's SHA-256.

    Raises an `LlmcodecError` subclass at the first problem; writes nothing. `base`: the base
    model of a file of delta tensors (as for `encode_file`).
    """
    src = Path(src)
    with _base(base) as base:
        for path in folders.shards(src) if src.is_dir() else [src]:
            with _reader(path, threads, limits, base) as reader:
                _write_original(reader, lambda b: None, progress)


# --- one file ------------------------------------------------------------------------------------


@contextmanager
def _seekable(src: Path):
    """(`src` opened for reading at any offset, the permission bits its output gets): a pipe or a
    device is first copied to an unnamed temporary file, and its output gets open()'s bits."""
    with open(src, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):
            yield f, stat.S_IMODE(info.st_mode)
            return
        with tempfile.TemporaryFile() as spool:
            shutil.copyfileobj(f, spool, 1 << 20)
            spool.flush()
            yield spool, output.default_mode()


def _encode_one(src: Path, dst: Path, threads, chunk_size, progress, base, level) -> None:
    with _seekable(src) as (f, mode):
        size = os.fstat(f.fileno()).st_size
        layout = sources.read_layout(f, size, str(src))
        fd = f.fileno()
        sha = hashlib.sha256()

        def consumed(data) -> None:
            sha.update(data)
            if progress is not None:
                progress(len(data))

        names = {t.name for t in layout.tensors}

        def blobs(start: int, stop: int) -> list:
            if stop - start >= CODED_BLOB_MIN:  # e.g. a GGUF header with its tokenizer: worth coding
                name = f"[bytes {start}:{stop}]"
                while name in names:
                    name += "'"
                names.add(name)
                return [TensorSource(name, dtypes.BY_NAME["U8"], (stop - start,), _file_reader(fd, start), hidden=True)]
            return [BlobSource(_blob_reader(fd, pos, min(BLOB_PIECE, stop - pos)))
                    for pos in range(start, stop, BLOB_PIECE)]

        items, pos = [], 0
        for t in layout.tensors:
            name, dtype, shape, begin, end = t.name, t.dtype, t.shape, t.begin, t.end
            items += blobs(pos, begin)
            if dtype is None:  # a dtype llmcodec does not code: kept verbatim
                items += blobs(begin, end)
            else:
                items.append(TensorSource(name, dtype, shape, _file_reader(fd, begin)))
            pos = end
        items += blobs(pos, size)
        with ContainerWriter(dst, threads=threads, chunk_size=chunk_size, mode=mode, level=level) as writer:
            if base is not None:
                bases.plan_deltas(items, base, chunk_size, writer.threads, level)
            writer.add_many(items, consumed, segments=True)
            if os.fstat(fd).st_size != size:
                raise InvalidArgumentError(f"{src}: file changed size while being encoded")
            writer.finish(layout.metadata, layout.kind, size, sha.digest(),
                          base=None if base is None else base.record())


def _blob_reader(fd: int, offset: int, length: int):
    def read() -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise InvalidArgumentError(f"source file shrank while being encoded (short read at {offset})")
        return data
    return read


def _file_reader(fd: int, base: int):
    def read(start: int, stop: int) -> np.ndarray:
        data = os.pread(fd, stop - start, base + start)
        if len(data) != stop - start:
            raise InvalidArgumentError(f"source file shrank while being encoded (short read at {base + start})")
        return np.frombuffer(data, np.uint8)
    return read


def _decode_one(src: Path, dst: Path, threads, progress, base) -> None:
    with _reader(src, threads, None, base) as reader:
        _write_to(reader, dst, _mode_of(src), progress)


def _write_to(reader: ContainerReader, dst: Path, mode: int, progress) -> None:
    with output.open_output(dst, mode=mode) as out:
        _write_original(reader, out.write, progress)
        out.commit()


def _write_original(reader: ContainerReader, write, progress) -> None:
    """Stream the original file to `write`, checking its size and SHA-256 at the end."""
    source = reader.source
    if source.kind == format.SOURCE_ARRAYS:  # a safetensors file of the tensors, transformed ones rebuilt
        # sizes from shapes and dtypes (a record's informative sizes are derived, never trusted)
        write(safetensors_file.build_header(model_entries(reader.all_tensors, reader.transforms), reader.metadata))
        for name in reader.names:
            pieces = ([transforms.rebuild_stored(reader, name).reshape(-1).view(np.uint8)] if name in reader.transforms
                      else reader.iter_raw(reader.by_name[name]))
            for raw in pieces:
                write(raw)
                if progress is not None:
                    progress(raw.shape[0])
        return
    if source.kind not in (format.SOURCE_SAFETENSORS, format.SOURCE_GGUF):
        raise UnsupportedFeatureError(f"{reader.name}: this version cannot rebuild a Source_Kind {source.kind} file")
    sha = hashlib.sha256()
    total = 0
    for seg in source.segments:
        pieces = ([reader.read_blob(seg)] if seg.kind == format.SEGMENT_BLOB
                  else reader.iter_raw(reader.all_tensors[seg.tensor_index]))
        for piece in pieces:
            sha.update(piece)
            write(piece)
            total += len(piece)
            if progress is not None:
                progress(len(piece))
    if total != source.original_size or sha.digest() != source.original_sha256:
        raise ChecksumError(f"{reader.name}: rebuilt file has SHA-256 {sha.hexdigest()} ({total} bytes); "
                            f"the original had {source.original_sha256.hex()} ({source.original_size} bytes)")


# --- folders ---------------------------------------------------------------------------------------


def _original_suffix(path: Path) -> str:
    """A container's suffix in a decoded folder: its original's (`.gguf` or `.safetensors`)."""
    with ContainerReader(path) as reader:
        return sources.decoded_suffix(reader.source.kind)
