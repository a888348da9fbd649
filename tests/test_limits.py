"""`info --limits`: the entropy bounds it reports equal a brute-force count over the planes."""

import math
from collections import Counter

import ml_dtypes
import numpy as np
import pytest

import llmcodec
from llmcodec import stats

CHUNK = 1000  # elements per chunk: contexts do not cross chunks


def _planes(w: np.ndarray) -> list[np.ndarray]:
    """Spec section 5 by hand: FIELDS16 for bf16, FIELDS32 for fp32."""
    if w.dtype == ml_dtypes.bfloat16:
        v = w.view(np.uint16).ravel().astype(np.int64)
        return [(v >> 7) & 0xFF, ((v >> 8) & 0x80) | (v & 0x7F)]
    v = w.view(np.uint32).ravel().astype(np.int64)
    return [(v >> 23) & 0xFF, ((v >> 24) & 0x80) | ((v >> 16) & 0x7F), (v >> 8) & 0xFF, v & 0xFF]


def _context_streams(planes: list[np.ndarray], j: int, cols: int) -> dict[str, list]:
    """(context, symbol) of every element, for each context, chunk by chunk; None: no context."""
    streams: dict[str, list] = {"order0": [], "previous": [], "above": [], "plane0": []}
    plane = planes[j]
    for start in range(0, plane.size, CHUNK):
        for i in range(start, min(start + CHUNK, plane.size)):
            x = int(plane[i])
            streams["order0"].append((None, x))
            streams["previous"].append((int(plane[i - 1]) if i > start else None, x))
            streams["above"].append((int(plane[i - cols]) if i - cols >= start else None, x))
            streams["plane0"].append((int(planes[0][i]) if j > 0 else None, x))
    return streams


def _entropy(pairs: list) -> float:
    joint, ctx = Counter(pairs), Counter(c for c, _ in pairs)
    n = len(pairs)
    return (-sum(k * math.log2(k / n) for k in joint.values()) + sum(k * math.log2(k / n) for k in ctx.values())) / n


def _adaptive(pairs: list) -> float:
    """An adaptive coder run symbol by symbol: KT estimate from the counts seen so far, over the
    symbols that occur in the plane."""
    alphabet = len({x for _, x in pairs})
    seen, totals, bits = Counter(), Counter(), 0.0
    for c, x in pairs:
        bits -= math.log2((seen[c, x] + 0.5) / (totals[c] + alphabet / 2))
        seen[c, x] += 1
        totals[c] += 1
    return bits / len(pairs)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, np.float32])
def test_limits_match_brute_force(tmp_path, dtype):
    rng = np.random.default_rng(5)
    cols = 37
    scales = rng.permutation(np.logspace(-6, 0, cols, base=2.0))  # each column its own exponent range
    w = (rng.standard_normal((100, cols)) * scales).astype(dtype)
    path = tmp_path / "w.llmc"
    llmcodec.save_file({"w": w}, path, chunk_size=CHUNK * w.dtype.itemsize)
    info = stats.file_stats(path, limits=True)
    (t,) = info["tensors"]
    planes = _planes(w)
    for j, plane in enumerate(t.planes):
        streams = _context_streams(planes, j, cols)
        for name, pairs in streams.items():
            assert plane.contexts[name]["entropy"] == pytest.approx(_entropy(pairs), abs=1e-9), (j, name)
            assert plane.contexts[name]["adaptive"] == pytest.approx(_adaptive(pairs), rel=1e-9), (j, name)
        best = min(plane.contexts, key=lambda n: plane.contexts[n]["adaptive"])
        assert (plane.best_context, plane.best_adaptive_bits) == (best, plane.contexts[best]["adaptive"])
        assert plane.entropy == pytest.approx(_entropy(streams["order0"]), abs=1e-9)
    assert t.adaptive_bytes == pytest.approx(sum(p.best_adaptive_bits for p in t.planes) * w.size / 8)
    assert info["adaptive_bytes"] == pytest.approx(t.adaptive_bytes)
    # the column context is the one that knows each column's scale
    assert t.planes[0].best_context == "above"
