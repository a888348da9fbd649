"""Opt-in lossy pre-steps (spec section 10): quantize or factorize weight matrices, then store the
result losslessly; the container records what was done, and every read rebuilds the same bits.

A transformed tensor `N` is stored as *parts*, ordinary tensors named `N#q`, `N#scale`, `N#min`
(quantize) or `N#u`, `N#v` (factorize), and described by a Transform record of the header
(`format.Transform`; before 1.2, by the metadata entry `llmcodec.transforms`). Rebuilding is
defined exactly: elementwise float32 products and sums for quantized weights, and for factors a
float64 dot product accumulated in index order, so a file decodes to the same bits on every machine.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import dtypes
from .errors import InvalidArgumentError, LimitExceededError
from .format import LEGACY_TRANSFORMS_KEY as METADATA_KEY  # noqa: F401 (the 1.0/1.1 record's key)
from .format import Transform
from .jit import kernel

SEPARATOR = "#"


class _FloatDtypes(Mapping):
    """dtype name -> numpy dtype of the floats a transform takes; BF16's (ml_dtypes) made on first use."""

    _NAMES = ("F32", "F16", "BF16")

    def __getitem__(self, name: str) -> np.dtype:
        if name not in self._NAMES:
            raise KeyError(name)
        return dtypes.BY_NAME[name].numpy

    def __iter__(self):
        return iter(self._NAMES)

    def __len__(self) -> int:
        return len(self._NAMES)


FLOAT_DTYPES = _FloatDtypes()
MIN_ELEMENTS = 4096  # smaller matrices (norms, biases) are left alone: little to save
MIN_GROUP = 16  # the smallest group quantize_within tries: its float32 scales already add 1/4 byte per weight


def eligible(array: np.ndarray, dtype_name: str) -> bool:
    """Weight matrices: 2-D floats of at least MIN_ELEMENTS values."""
    return dtype_name in FLOAT_DTYPES and array.ndim == 2 and array.size >= MIN_ELEMENTS


def quantize(name: str, w: np.ndarray, dtype_name: str, bits: int, group_size: int,
             scheme: str) -> tuple[Transform, dict[str, np.ndarray]]:
    """Per row (output channel) and group of `group_size` columns: symmetric int `q` in
    [-(2^(bits-1) - 1), 2^(bits-1) - 1] with w ~ q * scale, or affine `q` in [0, 2^bits - 1] with
    w ~ q * scale + min. Scales and mins are float32."""
    if bits not in (4, 8):
        raise InvalidArgumentError(f"bits must be 8 or 4, not {bits}")
    if scheme not in ("symmetric", "affine"):
        raise InvalidArgumentError(f"scheme must be symmetric or affine, not {scheme!r}")
    rows, cols = w.shape
    g = group_size or cols
    if g < 1 or cols % g:
        raise InvalidArgumentError(f"tensor {name!r}: group size {g} does not divide its {cols} columns")
    x = w.astype(np.float32).reshape(rows, cols // g, g)
    if scheme == "symmetric":
        top = 2 ** (bits - 1) - 1
        scale = (np.abs(x).max(axis=2) / np.float32(top)).astype(np.float32)
        q = np.rint(x / np.where(scale == 0, np.float32(1), scale)[..., None])
        q = np.clip(q, -top, top).astype(np.int8).reshape(rows, cols)
        parts = {"q": q, "scale": scale}
    else:
        low = x.min(axis=2).astype(np.float32)
        scale = ((x.max(axis=2) - low) / np.float32(2 ** bits - 1)).astype(np.float32)
        q = np.rint((x - low[..., None]) / np.where(scale == 0, np.float32(1), scale)[..., None])
        q = np.clip(q, 0, 2 ** bits - 1).astype(np.uint8).reshape(rows, cols)
        parts = {"q": q, "scale": scale, "min": low}
    t = Transform("quantize", dtype_name, [rows, cols], {r: f"{name}{SEPARATOR}{r}" for r in parts}, bits=bits,
                  scheme=scheme, group_size=group_size, original_bytes=w.nbytes)
    t.relative_error = relative_error(w, rebuild(t, parts))
    return t, parts


def quantize_within(name: str, w: np.ndarray, dtype_name: str, bits: int, group_size: int, scheme: str,
                    max_error: float) -> tuple[Transform, dict[str, np.ndarray]]:
    """`quantize` at the largest group size whose rebuilt tensor has a relative error of at most
    `max_error`: `group_size` first (0: the row), then halved while it stays a divisor of the row
    of at least MIN_GROUP columns. If none meets it, the setting of the smallest error, for the
    caller to report; `t.relative_error` says which case it is. Deterministic. (Clipping the scales
    below the absmax was measured not to lower these errors: bench/max_error.py.)

    >>> w = np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32)
    >>> w[:, ::128] *= 8  # an outlier per 128 columns
    >>> t, parts = quantize_within("w", w, "F32", 8, 128, "symmetric", 0.01)
    >>> t.group_size, t.relative_error <= 0.01
    (32, True)
    """
    if not max_error > 0:
        raise InvalidArgumentError(f"max_error must be a positive number, not {max_error}")
    best = quantize(name, w, dtype_name, bits, group_size, scheme)
    g = group_size or w.shape[1]
    while best[0].relative_error > max_error and g % 2 == 0 and g // 2 >= MIN_GROUP:
        g //= 2
        tried = quantize(name, w, dtype_name, bits, g, scheme)
        if tried[0].relative_error < best[0].relative_error:
            best = tried
    return best


def factorize(name: str, w: np.ndarray, dtype_name: str, rank: int | None = None,
              energy: float | None = None) -> tuple[Transform, dict[str, np.ndarray]] | None:
    """Truncated SVD w ~ u @ v (u = U_r S_r, v = V_r^T, float32), of rank `rank` or the smallest
    that keeps `energy` of the sum of squared singular values; None when the factors would not
    be smaller than the matrix."""
    if (rank is None) == (energy is None):
        raise InvalidArgumentError("give exactly one of rank and energy")
    rows, cols = w.shape
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    if rank is None:
        if not 0 < energy <= 1:
            raise InvalidArgumentError(f"energy must be in (0, 1], not {energy}")
        kept = np.cumsum(s ** 2) / max(float(np.sum(s ** 2)), np.finfo(np.float64).tiny)
        rank = int(np.searchsorted(kept, energy - 1e-12) + 1)
    if rank < 1:
        raise InvalidArgumentError(f"rank must be >= 1, not {rank}")
    rank = min(rank, len(s))
    if rank * (rows + cols) * 4 >= w.nbytes:
        return None
    parts = {"u": np.ascontiguousarray(u[:, :rank] * s[:rank], dtype=np.float32),
             "v": np.ascontiguousarray(vt[:rank], dtype=np.float32)}
    t = Transform("factorize", dtype_name, [rows, cols], {r: f"{name}{SEPARATOR}{r}" for r in parts}, rank=rank,
                  original_bytes=w.nbytes)
    t.relative_error = relative_error(w, rebuild(t, parts))
    return t, parts


def rebuild(t: Transform, parts: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor as every reader rebuilds it, in its original dtype and shape (spec 10)."""
    if t.kind == "quantize":
        g = t.group_size or t.shape[1]
        q = parts["q"].astype(np.float32).reshape(t.shape[0], -1, g)
        x = q * parts["scale"][..., None]  # float32 products, rounded once each
        if t.scheme == "affine":
            x = x + parts["min"][..., None]
        x = x.reshape(t.shape)
    else:
        x = _matmul(parts["u"], parts["v"])
    return x.astype(FLOAT_DTYPES[t.dtype])



def stored_parts(reader, name: str, budget=None) -> dict[str, np.ndarray]:
    """The stored parts of transformed tensor `name` of a ContainerReader, by role, bit-exact;
    their bytes taken from `budget` (a budget.Budget) when given."""
    t = reader.transforms[name]
    entries = [reader.stored[p] for p in t.parts.values()]
    raws = reader.read_many(entries, budget=budget)
    return {role: raw.view(e.dtype.numpy).reshape(e.shape) for role, e, raw in zip(t.parts, entries, raws)}


def rebuild_stored(reader, name: str, budget=None) -> np.ndarray:
    """Transformed tensor `name` of a ContainerReader, rebuilt from its parts in its original
    dtype and shape (spec section 10)."""
    t = reader.transforms[name]
    try:
        return rebuild(t, stored_parts(reader, name, budget))
    except MemoryError:
        raise LimitExceededError(f"{reader.name}: rebuilding tensor {name!r} of shape {t.shape} "
                                 f"({t.original_bytes} bytes) needs more memory than this machine can "
                                 f"allocate") from None

# A numba kernel outside kernels.py on purpose: it calls no other kernel, so numba's cache, which
# does not notice edits to callees in other files, cannot serve a stale copy of it.
@kernel
def _matmul(u, v):
    """float32(sum over k, in order, of float64(u[i, k]) * float64(v[k, j])): the same bits on every
    machine (no BLAS, no reordering, no fused multiply-add)."""
    rows, rank = u.shape
    cols = v.shape[1]
    out = np.empty((rows, cols), np.float32)
    acc = np.empty(cols, np.float64)
    for i in range(rows):
        acc[:] = 0.0
        for k in range(rank):
            a = np.float64(u[i, k])
            vk = v[k]
            for j in range(cols):
                acc[j] += a * np.float64(vk[j])
        for j in range(cols):
            out[i, j] = np.float32(acc[j])
    return out


def relative_error(w: np.ndarray, rebuilt: np.ndarray) -> float:
    ref = w.astype(np.float64)
    norm = float(np.linalg.norm(ref))
    return float(np.linalg.norm(rebuilt.astype(np.float64) - ref)) / norm if norm else 0.0
