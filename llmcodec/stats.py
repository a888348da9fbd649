"""What `llmcodec info` shows: per tensor and plane, the coded size next to its entropy bounds
(order-0, conditioned on each context tried, adaptive), from plane counts taken here over the
decoded chunks (`plane_statistics`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import codec, delta, format, kernels
from .container import ContainerReader
from .errors import LimitExceededError


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
    delta: str | None = None  # a delta tensor (spec 11): its transform and base tensor

    @property
    def ratio(self) -> float:
        return self.coded_bytes / self.original_bytes if self.original_bytes else 1.0


_METHOD_NAMES = {format.METHOD_RAW: "raw", format.METHOD_CONSTANT: "constant", format.METHOD_RANS0: "rans0",
                 format.METHOD_RANS0_PAIRS: "rans0_pairs"}
_LAYOUT_NAMES = {0: "bytes", 1: "fields16", 2: "fields32", 3: "block_fields", 4: "block_quants"}


def file_stats(src, *, threads: int | None = None, progress=None, limits: bool = False, base=None) -> dict:
    """What `llmcodec info` shows: per tensor and plane, coded size next to order-0 entropy; with
    `limits`, also the conditional entropy under each context tried (`CONTEXTS`) and the best.
    The planes of a delta tensor (spec 11) hold its delta words: counting them needs its base
    (`base`, a bases.Base); without one their entropies are NaN."""
    src = Path(src)
    with ContainerReader(src, threads=threads, read_base=None if base is None else base.read) as reader:
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
        if reader.base is not None:  # spec 4.6: which base the file needs
            stats["base"] = {"name": reader.base.name, "files": [
                {"path": f.path, "size": f.size, "sha256": f.sha256.hex()} for f in reader.base.files]}
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
    if t.delta is not None:
        stats.delta = f"{format.DELTA_TRANSFORMS[t.delta.transform]} against {t.delta.base_tensor!r}"
    if t.delta is not None and reader.read_base is None:  # the delta words cannot be decoded
        k = len(t.planes)
        counts, joint = np.zeros((k, 256), np.int64), np.zeros((k, 3, 257, 256), np.int64) if limits else None
    else:
        counts, joint = plane_statistics(reader, t, contexts=limits)
    for j, (_, width) in enumerate(t.planes):
        symbols = t.elements * width
        methods: dict[str, int] = {}
        coded = 0
        for c in t.chunks:
            p = c.planes[j]
            methods[_METHOD_NAMES[p.method]] = methods.get(_METHOD_NAMES[p.method], 0) + 1
            coded += p.length
        entropy = entropy_bits(counts[j]) if counts[j].any() or not symbols else math.nan
        plane = PlaneStats(methods, coded, 8 * coded / symbols if symbols else 0.0, entropy)
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


BATCH_BYTES = 1 << 20  # decoded bytes counted per task


def plane_statistics(reader: ContainerReader, entry, contexts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Symbol counts of each plane over the whole tensor, int64[planes, 256], and with
    `contexts` the joint counts of kernels.context_counts, int64[planes, 3, 257, 256], each
    chunk on its own (a chunk's first element has no previous one). Contexts need planes of
    one byte per element; a block type's planes get only the previous-byte context.

    A chunk of CONSTANT planes is counted without being decoded; the bytes of the other
    chunks, over all calls on this reader, are bounded by `Limits.work` per byte of the file
    (spec section 9, ContainerReader.take_work), checked before anything is decoded."""
    k = len(entry.planes)
    scalar = entry.layout not in (kernels.BLOCK_FIELDS, kernels.BLOCK_QUANTS)
    cols = entry.shape[-1] if len(entry.shape) >= 2 and scalar else 0
    fields, widths = codec.plane_geometry(entry)
    constant = [all(p.method == format.METHOD_CONSTANT for p in c.planes) for c in entry.chunks]
    work = sum(entry.chunk_span(i)[1] for i, const in enumerate(constant) if not const) * entry.dtype.itemsize
    reader.take_work(work, f"plane statistics of tensor {entry.name!r}")
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
                _constant_counts(chunk.planes, widths.tolist(), n, cols if scalar else 0, scalar, counts, part)
                continue
            raw = reader.read_chunks(entry, index, index + 1)
            if entry.delta is not None:  # the stored planes hold the delta words (spec 11)
                start = entry.chunk_span(index)[0] * entry.dtype.itemsize
                base = reader.read_base(entry.delta.base_tensor, start, start + raw.shape[0])
                raw = delta.forward(entry.delta.transform, raw, base, codec.word_bytes(entry))
            if scalar:  # one byte per element in each plane
                planes = np.empty((k, n), np.uint8)
                kernels.split_planes(raw, entry.layout, planes)
            else:
                flat = np.empty(n * widths.sum(), np.uint8)
                if entry.layout == kernels.BLOCK_QUANTS:  # the fields that are not quants, then the quants
                    side = n * widths[:-1].sum()
                    kernels.split_fields(raw, entry.dtype.itemsize, fields[:-1], widths[:-1], flat[:side])
                    kernels.split_quants(raw, entry.dtype.itemsize, flat[side:])
                else:
                    kernels.split_fields(raw, entry.dtype.itemsize, fields, widths, flat)
                planes = np.split(flat, np.cumsum(n * widths)[:-1])
            counts += np.array([kernels.byte_histogram(p) for p in planes]).reshape(k, 256)
            if part is None:
                continue
            if scalar:
                kernels.context_counts(planes, cols, part)
            else:  # each plane alone, of one byte per element and no rows: only "previous" means something
                for j, p in enumerate(planes):
                    kernels.context_counts(p.reshape(1, -1), 0, part[j:j + 1])
        return counts, part

    total = np.zeros((k, 256), np.int64)
    joint = np.zeros((k, 3, 257, 256), np.int64) if contexts else None
    try:
        for counts, part in codec.parallel_map(reader.threads, count, [b for b in batches if b]):
            total += counts
            if part is not None:
                joint += part
    except MemoryError:
        raise LimitExceededError(f"{reader.name}: counting the planes of tensor {entry.name!r}: more "
                                 f"memory than this machine can allocate") from None
    if joint is not None and not scalar:  # block planes: the "above" and "plane 0" contexts say nothing
        joint[:, 1:] = 0
        joint[:, 1:, kernels.CONTEXT_NONE] = total[:, None, :]
    return total, joint


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
