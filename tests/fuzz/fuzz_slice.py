"""Coverage-guided fuzz target (atheris): `get_slice(name)[index]` with any index at all.

    python tests/fuzz/fuzz_slice.py --minutes 10 [CORPUS_DIR]   # see harness.py for the rest

The files are fixed and valid (`FILES`: every kind of dtype, 0-d, empty, 1-D, 2-D, 3-D and
4-D tensors, several chunks each, and GGUF block types, 1-D and 2-D); the input picks a tensor and
an index: ints (numpy's too, negative, out of range, past 2^63), slices with any start, stop and
step (0 and negative steps too), Ellipsis, None, bools, lists, floats, alone or in a tuple. The
property: the slice equals numpy indexing of the whole tensor (`get_tensor`): same dtype, shape
and bytes; or it raises an `LlmcodecError`; or, where numpy raises IndexError (or OverflowError,
for an index past 2^63), an IndexError.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

if __name__ == "__main__":
    harness.instrument()

import numpy as np  # noqa: E402
from harness import Draw, Finding  # noqa: E402

import llmcodec  # noqa: E402
from llmcodec import LlmcodecError  # noqa: E402

SCRATCH = harness.scratch_dir()
HUGE = [1 << 31, 1 << 62, (1 << 63) - 1, 1 << 63, 1 << 64, -(1 << 63), -(1 << 63) - 1, -(1 << 64)]
STEPS = [None, 1, 2, 3, 7, -1, -2, -3, 0, 1 << 62, -(1 << 62)]


def arrays_file() -> Path:
    """A container of numpy arrays, saved with small chunks so that rows span chunks."""
    import ml_dtypes

    rng = np.random.default_rng(11)

    def bits(dtype, shape):
        dtype = np.dtype(dtype)
        return rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize, np.uint8).view(dtype).reshape(shape)

    tensors = {
        "f32": bits(np.float32, (7, 5)),
        "bf16": bits(ml_dtypes.bfloat16, (3, 4, 5)),
        "u8": bits(np.uint8, (13,)),
        "f64_0d": bits(np.float64, ()),
        "i16_empty_rows": bits(np.int16, (0, 3)),
        "f16_empty_cols": bits(np.float16, (4, 0)),
        "bool": rng.integers(0, 2, (2, 3)).astype(bool),
        "i64_empty_wide": np.empty((0, 1 << 40), np.int64),
        "f8": bits(ml_dtypes.float8_e4m3fn, (2, 2, 3, 2)),
        "u64_1": bits(np.uint64, (1,)),
    }
    path = SCRATCH / "arrays.llmc"
    llmcodec.save_file(tensors, path, chunk_size=24)
    return path


def gguf_file() -> Path:
    """A GGUF file of block types, 1-D and 2-D, encoded with chunks of one to a few blocks."""
    import gguf

    rng = np.random.default_rng(12)
    q = gguf.GGMLQuantizationType
    src = SCRATCH / "blocks.gguf"
    writer = gguf.GGUFWriter(src, "llama")
    for name, ggml_type, shape in [("q8_0", q.Q8_0, (3, 64)), ("q4k_1d", q.Q4_K, (512,)), ("q81_1d", q.Q8_1, (64,)),
                                   ("q8k", q.Q8_K, (2, 256)), ("q4_0", q.Q4_0, (5, 32)), ("q2k_1d", q.Q2_K, (256,))]:
        block, size = gguf.GGML_QUANT_SIZES[ggml_type]
        byte_shape = (*shape[:-1], shape[-1] // block * size)
        writer.add_tensor(name, rng.integers(0, 256, byte_shape, np.uint8), raw_dtype=ggml_type)
    writer.add_tensor("f32_1d", rng.standard_normal(9).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return llmcodec.encode_file(src, SCRATCH / "blocks.llmc", threads=1, chunk_size=300)


FILES = [llmcodec.open(arrays_file(), threads=1), llmcodec.open(gguf_file(), threads=1)]
TENSORS = [(f, name) for f in FILES for name in f.keys()]
FULL = {name: f.get_tensor(name) for f, name in TENSORS}


def item(draw: Draw, size: int):
    """One index of a tuple, for an axis of about `size`."""
    kind = draw.int(0, 11)
    small = draw.int(-size - 2, size + 2)
    if kind <= 2:
        return small
    if kind in (3, 4):  # a numpy integer, of a type that holds it
        types = [np.int8, np.int32, np.int64, np.intp] if kind == 3 else [np.uint8, np.uint64]
        value = small if kind == 3 else abs(small)
        return draw.pick([t for t in types if np.iinfo(t).min <= value <= np.iinfo(t).max] or [np.int64])(value)
    if kind <= 7:
        ends = [None, small, draw.int(-size - 2, size + 2), *HUGE]
        return slice(draw.pick(ends), draw.pick(ends), draw.pick(STEPS))
    if kind == 8:
        return draw.pick([Ellipsis, None, True, False, np.True_, np.False_])
    if kind == 9:
        return draw.pick(HUGE)
    if kind == 10:
        return slice(np.int64(small), np.int64(draw.int(-size, size)), draw.pick([None, np.int64(2), np.int64(-1)]))
    return draw.pick([[0], [small, 0], np.array([1]), 1.0, "a", slice(1.0, 2), (), [True], np.array(0)])


def index(draw: Draw, shape: tuple):
    if draw.chance(4):
        return item(draw, shape[0] if shape else 1)
    return tuple(item(draw, shape[i] if i < len(shape) else 1) for i in range(draw.int(0, 4)))


def case(f, name: str, key) -> str:
    """What kind of tensor and first index (the one get_slice handles itself): findings of one
    cause share it."""
    entry = f.entry(name)
    items = key if isinstance(key, tuple) else (key,)
    first = "nothing"
    if items:
        first = next((label for types, label in [((bool, np.bool_), "bool"), ((int, np.integer), "int"),
                                                  (slice, "slice"), (type(...), "..."), (type(None), "None")]
                      if isinstance(items[0], types)), type(items[0]).__name__)
    dims = {0: "0-D", 1: "1-D"}.get(len(entry.shape), "N-D")
    return f"{'block ' if entry.dtype.is_block else ''}{dims}, first index {first}"


def check(data: bytes) -> None:
    draw = Draw(data)
    f, name = draw.pick(TENSORS)
    full = FULL[name]
    key = index(draw, full.shape)
    try:
        want, numpy_error = np.asarray(full[key]), None
    except Exception as exc:  # noqa: BLE001 - what numpy refuses, any way it does
        want, numpy_error = None, exc
    try:
        got = f.get_slice(name)[key]
    except LlmcodecError:
        return
    except IndexError as exc:
        if isinstance(numpy_error, (IndexError, OverflowError)):  # numpy: "too large to convert to C long"
            return
        raise Finding(f"IndexError where numpy has none ({case(f, name, key)})",
                      f"{name}{list(full.shape)}[{key!r}]: {exc}; numpy: {numpy_error!r}") from None
    if numpy_error is not None:
        raise Finding(f"slice succeeds where numpy raises {type(numpy_error).__name__} ({case(f, name, key)})",
                      f"{name}{list(full.shape)}[{key!r}] gives shape {np.shape(got)}; numpy: {numpy_error}")
    got = np.asarray(got)
    where = f"{name}{list(full.shape)}[{key!r}]"
    if got.dtype != want.dtype or got.shape != want.shape:
        raise Finding(f"slice has another shape or dtype than numpy's ({case(f, name, key)})",
                      f"{where}: {got.dtype}{list(got.shape)}, numpy {want.dtype}{list(want.shape)}")
    if got.tobytes() != want.tobytes():
        raise Finding(f"slice has other values than numpy's ({case(f, name, key)})", where)


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(13)
    return {f"seed-{i}": bytes([i]) + bytes(rng.integers(0, 256, 24, np.uint8)) for i in range(len(TENSORS))}


if __name__ == "__main__":
    harness.fuzz_main(sys.argv, check, seeds, target="fuzz_slice")
