"""Checkpoint files: safetensors files and sharded folders to containers and back, byte-identical.

Encoding reads the source chunk by chunk (never the whole file), keeps every byte that is not
tensor data as a blob, and records the source's SHA-256; decoding streams the original back out
and checks that SHA-256 before the output appears under its name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import dtypes, format, gguf_io, safetensors_io, transforms
from .atomic import AtomicFile
from .container import BlobSource, ContainerReader, ContainerWriter, TensorSource, model_entries
from .errors import ChecksumError, InvalidArgumentError, UnsupportedFeatureError
from .format import Limits

SUFFIX = ".llmc"
SOURCE_SUFFIX = {format.SOURCE_SAFETENSORS: ".safetensors", format.SOURCE_ARRAYS: ".safetensors",
                 format.SOURCE_GGUF: ".gguf"}
CHECKPOINT_SUFFIXES = (".safetensors", ".gguf")  # files a folder's encoding compresses
BLOB_PIECE = 16 << 20  # blobs are read and stored in pieces of at most this many bytes
CODED_BLOB_MIN = 64 << 10  # non-tensor bytes of at least this many are coded (a hidden U8 tensor)


def encoded_name(src: Path) -> Path:
    """Default output of `encode`: `x.safetensors` or `x.gguf` -> `x.llmc`, folder `m` -> `m.llmc`."""
    return src.with_name(src.name + SUFFIX) if src.is_dir() else src.with_suffix(SUFFIX)


def decoded_name(src: Path, source_kind: int | None = None) -> Path:
    """Default output of `decode`: `x.llmc` -> `x.safetensors`, folder `m.llmc` -> `m`."""
    if src.suffix != SUFFIX:
        raise InvalidArgumentError(f"{src}: name does not end in {SUFFIX}; give the output name")
    if src.is_dir():
        return src.with_suffix("")
    return src.with_suffix(SOURCE_SUFFIX.get(source_kind, ".safetensors"))


def encode_file(src, dst=None, *, threads: int | None = None, chunk_size: int | None = None,
                progress=None) -> Path:
    """Encode a safetensors or GGUF file, or a folder holding a sharded checkpoint, losslessly.

    A folder becomes a folder: each `*.safetensors` and `*.gguf` is encoded to `*.llmc`, every
    other file is copied. `progress(nbytes)` is called as source bytes are consumed. Returns the output path;
    the output appears only when complete (an existing one is replaced).

    >>> llmcodec.encode_file("model.safetensors")            # doctest: +SKIP
    PosixPath('model.llmc')
    """
    src = Path(src)
    dst = encoded_name(src) if dst is None else Path(dst)
    if src.is_dir():
        _map_folder(src, dst, lambda p: p.with_suffix(SUFFIX) if p.suffix in CHECKPOINT_SUFFIXES else None,
                    lambda a, b: _encode_one(a, b, threads, chunk_size, progress), progress)
    else:
        _encode_one(src, dst, threads, chunk_size, progress)
    return dst


def decode_file(src, dst=None, *, threads: int | None = None, progress=None) -> Path:
    """Write back the original of an encoded file or folder, byte-identical, SHA-256 checked.

    A container made by `save_file` (no original file) decodes to a safetensors file of its
    tensors and metadata. Returns the output path.
    """
    src = Path(src)
    if src.is_dir():
        dst = decoded_name(src) if dst is None else Path(dst)
        _map_folder(src, dst, lambda p: _decoded_member(src, p),
                    lambda a, b: _decode_one(a, b, threads, progress), progress)
        return dst
    with ContainerReader(src, threads=threads) as reader:
        dst = decoded_name(src, reader.source.kind) if dst is None else Path(dst)
        with AtomicFile(dst) as out:
            _write_original(reader, out.write, progress)
            out.commit()
    return dst


def transform_file(src, dst, kind: str, *, bits: int = 8, group_size: int = 128, scheme: str = "symmetric",
                   rank: int | None = None, energy: float | None = None, threads: int | None = None,
                   chunk_size: int | None = None, progress=None) -> dict[str, transforms.Transform]:
    """Quantize (`kind="quantize"`) or factorize (`kind="factorize"`) the weight matrices of the
    safetensors file `src` (2-D float tensors of at least transforms.MIN_ELEMENTS values; a
    factorization only where the factors are smaller; one scale per row where `group_size` does not
    divide the row), store everything losslessly in `dst`, and
    return what was done per tensor. Lossy, and only on request: decoding gives the rebuilt
    tensors, not the original file."""
    src, dst = Path(src), Path(dst)
    done: dict[str, transforms.Transform] = {}
    items = []
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        layout = safetensors_io.read_layout(f, size, str(src))
        names = {t.name for t in layout.tensors}
        for t in sorted(layout.tensors, key=lambda t: t.begin):
            if t.dtype is None:
                raise UnsupportedFeatureError(f"{src}: tensor {t.name!r} has a dtype llmcodec does not read")
            raw = np.frombuffer(os.pread(f.fileno(), t.end - t.begin, t.begin), t.dtype.numpy).reshape(t.shape)
            result = None
            if transforms.eligible(raw, t.dtype.name):
                if kind == "quantize":  # a group size that does not divide the row: one scale per row
                    group = group_size if group_size and raw.shape[1] % group_size == 0 else 0
                    result = transforms.quantize(t.name, raw, t.dtype.name, bits, group, scheme)
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
    with ContainerWriter(dst, threads=threads, chunk_size=chunk_size) as writer:
        writer.add_many(items)
        writer.finish(layout.metadata, transforms=done)
    return done


def verify_file(src, *, threads: int | None = None, progress=None, limits: Limits | None = None) -> None:
    """Decode everything in memory and check every checksum and the original's SHA-256.

    Raises an `LlmcodecError` subclass at the first problem; writes nothing.
    """
    src = Path(src)
    if src.is_dir():
        for path in sorted(src.rglob(f"*{SUFFIX}")):
            verify_file(path, threads=threads, progress=progress, limits=limits)
        return
    with ContainerReader(src, threads=threads, limits=limits) as reader:
        _write_original(reader, lambda b: None, progress)


CONTEXTS = ("previous", "above", "plane0")  # kernels.context_counts, in its order


@dataclass
class PlaneStats:
    method_counts: dict[str, int]
    coded_bytes: int
    bits_per_symbol: float  # what the file achieves, tables included
    entropy: float  # order-0 entropy of the plane over the whole tensor, bits per symbol
    # With limits, for order-0 and each context tried (within chunks): the empirical conditional
    # entropy of the plane's byte ("entropy") and the code length of an adaptive coder that learns
    # the context's statistics as it goes ("adaptive", KT estimator: model cost included, so a
    # context cannot win by overfitting a small tensor), in bits per symbol; and the best context
    # by adaptive code length.
    contexts: dict[str, dict[str, float]] | None = None
    best_context: str | None = None
    best_bits: float | None = None  # the best context's empirical entropy
    best_adaptive_bits: float | None = None


@dataclass
class TensorStats:
    name: str
    dtype: str
    shape: list[int]
    layout: str
    original_bytes: int
    coded_bytes: int
    chunks: int
    planes: list[PlaneStats] = field(default_factory=list)
    order0_bytes: float | None = None  # with limits: the planes' order-0 entropy, in bytes
    context_bytes: float | None = None  # with limits: the planes' best contexts' entropy
    adaptive_bytes: float | None = None  # with limits: the planes' best adaptive code lengths

    @property
    def ratio(self) -> float:
        return self.coded_bytes / self.original_bytes if self.original_bytes else 1.0


_METHOD_NAMES = {format.METHOD_RAW: "raw", format.METHOD_CONSTANT: "constant", format.METHOD_RANS0: "rans0",
                 format.METHOD_RANS0_PAIRS: "rans0_pairs"}
_LAYOUT_NAMES = {0: "bytes", 1: "fields16", 2: "fields32", 3: "block_fields"}


def file_stats(src, *, threads: int | None = None, progress=None, limits: bool = False) -> dict:
    """What `llmcodec info` shows: per tensor and plane, coded size next to order-0 entropy; with
    `limits`, also the conditional entropy under each context tried (`CONTEXTS`) and the best."""
    src = Path(src)
    with ContainerReader(src, threads=threads) as reader:
        tensors = [_tensor_stats(reader, t, progress, limits) for t in reader.all_tensors]
        source = reader.source
        stats = {
            "file": str(src),
            "version": "{}.{}".format(*reader.version),
            "file_bytes": src.stat().st_size,
            "source": {0: "arrays", 1: "safetensors", 2: "gguf"}[source.kind],
            "original_bytes": source.original_size if source.kind else sum(t.original_bytes for t in tensors),
            "original_sha256": source.original_sha256.hex() if source.kind else None,
            "metadata": reader.metadata,
            "tensors": tensors,
        }
        if limits:
            for key in ("order0_bytes", "context_bytes", "adaptive_bytes"):
                stats[key] = sum(getattr(t, key) for t in tensors)
        if reader.transforms:  # lossy pre-steps: what each cost in accuracy and saved in bytes
            coded = {t.name: t.coded_bytes for t in reader.all_tensors}
            stats["transforms"] = [dict(dataclasses.asdict(t), name=name,
                                        stored_bytes=sum(coded[p] for p in t.parts.values()))
                                   for name, t in reader.transforms.items()]
        return stats


def _tensor_stats(reader: ContainerReader, t, progress, limits: bool) -> TensorStats:
    stats = TensorStats(t.name, t.dtype.name, list(t.shape), _LAYOUT_NAMES[t.layout], t.nbytes,
                        t.coded_bytes, len(t.chunks))
    counts, joint = reader.plane_statistics(t, contexts=limits)
    for j, (_, width) in enumerate(t.planes):
        symbols = t.elements * width
        methods: dict[str, int] = {}
        coded = 0
        for c in t.chunks:
            p = c.planes[j]
            methods[_METHOD_NAMES[p.method]] = methods.get(_METHOD_NAMES[p.method], 0) + 1
            coded += p.length
        plane = PlaneStats(methods, coded, 8 * coded / symbols if symbols else 0.0, entropy_bits(counts[j]))
        if limits:
            plane.contexts = {"order0": {"entropy": plane.entropy, "adaptive": adaptive_bits(counts[j][None])}}
            for c, name in enumerate(CONTEXTS):
                plane.contexts[name] = {"entropy": conditional_entropy_bits(joint[j, c]),
                                        "adaptive": adaptive_bits(joint[j, c])}
            plane.best_context = min(plane.contexts, key=lambda name: plane.contexts[name]["adaptive"])
            plane.best_bits = plane.contexts[plane.best_context]["entropy"]
            plane.best_adaptive_bits = plane.contexts[plane.best_context]["adaptive"]
        stats.planes.append(plane)
    if limits:
        sizes = [t.elements * width / 8 for _, width in t.planes]  # bytes per bit per symbol
        stats.order0_bytes = sum(p.entropy * size for p, size in zip(stats.planes, sizes))
        stats.context_bytes = sum(p.best_bits * size for p, size in zip(stats.planes, sizes))
        stats.adaptive_bytes = sum(p.best_adaptive_bits * size for p, size in zip(stats.planes, sizes))
    if progress is not None:
        progress(t.nbytes)
    return stats


def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 entropy in bits per symbol of a histogram."""
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return max(0.0, float(-(p * np.log2(p)).sum()))


def adaptive_bits(joint: np.ndarray) -> float:
    """Bits per symbol of adaptive coding with a Krichevsky-Trofimov estimator per context, over
    the A symbols that occur in the plane, from joint counts [context, symbol]: symbol s after
    n_s of N in its context costs -log2((n_s + 1/2) / (N + A/2)). Order-independent, so it follows
    from the counts: per context, log2 G(N + A/2) - log2 G(A/2) - sum_s (log2 G(n_s + 1/2) - log2 G(1/2))."""
    total = joint.sum()
    if total == 0:
        return 0.0
    alphabet = int(np.count_nonzero(joint.sum(axis=0)))
    lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
    per_context = joint.sum(axis=1)
    used = per_context[per_context > 0]
    cells = joint[joint > 0]
    nats = (np.sum(lgamma(used + alphabet / 2) - math.lgamma(alphabet / 2))
            - np.sum(lgamma(cells + 0.5) - math.lgamma(0.5)))
    return float(nats / math.log(2) / total)


def conditional_entropy_bits(joint: np.ndarray) -> float:
    """H(symbol | context) in bits per symbol from joint counts [context, symbol]."""
    total = joint.sum()
    if total == 0:
        return 0.0
    return max(0.0, entropy_bits(joint.reshape(-1)) - entropy_bits(joint.sum(axis=1)))


# --- one file ------------------------------------------------------------------------------------


def _encode_one(src: Path, dst: Path, threads, chunk_size, progress) -> None:
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        kind, metadata, tensors = _read_source(f, size, str(src))
        fd = f.fileno()
        sha = hashlib.sha256()

        def consumed(data) -> None:
            sha.update(data)
            if progress is not None:
                progress(len(data))

        names = {t[0] for t in tensors}

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
        for name, dtype, shape, begin, end in tensors:
            items += blobs(pos, begin)
            if dtype is None:  # a dtype llmcodec does not code: kept verbatim
                items += blobs(begin, end)
            else:
                items.append(TensorSource(name, dtype, shape, _file_reader(fd, begin)))
            pos = end
        items += blobs(pos, size)
        with ContainerWriter(dst, threads=threads, chunk_size=chunk_size) as writer:
            writer.add_many(items, consumed, segments=True)
            if os.fstat(fd).st_size != size:
                raise InvalidArgumentError(f"{src}: file changed size while being encoded")
            writer.finish(metadata, kind, size, sha.digest())


# ggml's one-value types, as llmcodec dtypes; every other ggml type is a block dtype (spec 4.4)
_GGML_SCALARS = {"F32": "F32", "F16": "F16", "BF16": "BF16", "I8": "I8", "I16": "I16", "I32": "I32",
                 "I64": "I64", "F64": "F64"}


def _read_source(f, size: int, name: str) -> tuple[int, dict, list]:
    """(source kind, metadata, tensors) of a safetensors or GGUF file: each tensor as (name,
    dtype or None, shape, begin, end), by position in the file."""
    f.seek(0)
    if f.read(4) == gguf_io.MAGIC:
        layout = gguf_io.read_layout(f, size, name)
        tensors = []
        for t in layout.tensors:
            scalar = _GGML_SCALARS.get(t.type_name)
            dtype = dtypes.BY_NAME[scalar] if scalar else dtypes.BY_ID[dtypes.GGML_BASE + t.ggml_type]
            tensors.append((t.name, dtype, tuple(reversed(t.dims)), t.begin, t.end))  # ggml's ne[0] is the last axis
        return format.SOURCE_GGUF, {}, tensors
    layout = safetensors_io.read_layout(f, size, name)
    return (format.SOURCE_SAFETENSORS, layout.metadata,
            [(t.name, t.dtype, t.shape, t.begin, t.end) for t in layout.tensors])


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


def _decode_one(src: Path, dst: Path, threads, progress) -> None:
    with ContainerReader(src, threads=threads) as reader, AtomicFile(dst) as out:
        _write_original(reader, out.write, progress)
        out.commit()


def _write_original(reader: ContainerReader, write, progress) -> None:
    """Stream the original file to `write`, checking its size and SHA-256 at the end."""
    source = reader.source
    if source.kind == format.SOURCE_ARRAYS:  # a safetensors file of the tensors, transformed ones rebuilt
        # sizes from shapes and dtypes (a record's informative sizes are derived, never trusted)
        write(safetensors_io.build_header(model_entries(reader.all_tensors, reader.transforms), reader.metadata))
        for name in reader.names:
            pieces = ([reader.rebuild(name).reshape(-1).view(np.uint8)] if name in reader.transforms
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


# --- folders -------------------------------------------------------------------------------------


def _map_folder(src: Path, dst: Path, rename, convert, progress) -> None:
    """Build `dst` from folder `src`: each file whose relative path `rename` maps to a new one is
    converted to it, every other file (`rename` gives None) copied. `dst` appears only when complete."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    targets = {}
    for p in files:
        rel = p.relative_to(src)
        new = rename(rel)
        out = rel if new is None else new
        if out in targets:
            raise InvalidArgumentError(f"{src}: both {targets[out][0]} and {rel} would become {out}")
        targets[out] = (rel, new is not None)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp"))
    try:
        for out, (rel, converted) in targets.items():
            (tmp / out).parent.mkdir(parents=True, exist_ok=True)
            if converted:
                convert(src / rel, tmp / out)
            else:
                shutil.copy2(src / rel, tmp / out)
                if progress is not None:
                    progress((src / rel).stat().st_size)
        _replace_folder(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _decoded_member(folder: Path, rel: Path) -> Path | None:
    """A container's name in a decoded folder: its original's suffix (`.gguf` or `.safetensors`)."""
    if rel.suffix != SUFFIX:
        return None
    with ContainerReader(folder / rel) as reader:
        return rel.with_suffix(SOURCE_SUFFIX.get(reader.source.kind, ".safetensors"))


def _replace_folder(tmp: Path, dst: Path) -> None:
    """Move the finished folder `tmp` to `dst`, replacing what is there."""
    if dst.is_dir():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".old"))
        os.replace(dst, old / "x")
        os.replace(tmp, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if dst.exists():
            dst.unlink()
        os.replace(tmp, dst)
