"""What `llmcodec info` shows: per tensor and plane, the coded size next to its entropy bounds
(order-0, conditioned on each context tried, adaptive), from the plane counts the container
reader takes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import format
from .container import ContainerReader


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
