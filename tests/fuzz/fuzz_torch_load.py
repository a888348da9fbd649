"""Coverage-guided fuzz target (atheris): `llmcodec.torch.load_model` into models that may not fit.

    python tests/fuzz/fuzz_torch_load.py --minutes 10 [CORPUS_DIR]   # see harness.py for the rest

The input builds a small valid container: numpy arrays of any dtype and shape (`save_file`), a GGUF
file of any ggml type (written by the gguf package, then `encode_file`), or a quantized or
factorized matrix (`transform_file`); a quarter of them get a few byte edits (checksums resealed).
Then a torch module: per tensor of the file a parameter or buffer of the shape and dtype
`get_tensor` gives, or of the tensor's value shape as uint8 (what a block type's shape suggests),
or another shape or dtype, not contiguous, or none at all; now and then one the file does not have.
Each parameter lives at the start of a bigger buffer, the rest of it a guard pattern.

The property: `load_model` raises an `LlmcodecError`, or it returns and
- every parameter it loaded holds exactly what `load_state_dict` would put there from the tensor
  `get_tensor` gives: its bytes for the same dtype, else torch's cast (`copy_`), compared where
  the cast is defined (no NaN or infinity into integers, no float out of an integer's range);
- missing and unexpected names are right, and with strict=True there are none;
and a model that matches the file (every parameter as `get_tensor` gives it) loads. Whether it
returns or raises, no byte of any guard changed (a write past a parameter: a heap overflow).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

if __name__ == "__main__":
    harness.instrument(("llmcodec.torch",))

import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from fuzz_open import reseal  # noqa: E402
from harness import Draw, Finding, gist  # noqa: E402

import llmcodec  # noqa: E402
import llmcodec.torch  # noqa: E402
from llmcodec import LlmcodecError, files, ggml  # noqa: E402

SCRATCH = harness.scratch_dir()
NAMES = ["w", "b", "emb", "layers.0.w", "layers.0.b", "layers.1.w", "norm.weight"]
NUMPY = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int8, np.uint8, np.int16, np.int32, np.int64,
         np.bool_, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, np.uint16, np.uint32, np.uint64]
GUARD = 0xA5


def arrays_container(draw: Draw, path: Path) -> None:
    tensors = {}
    for name in NAMES[:draw.int(1, 4)]:
        dtype = np.dtype(draw.pick(NUMPY))
        shape = tuple(draw.int(0, 5) for _ in range(draw.int(0, 3)))
        raw = draw.bytes(int(np.prod(shape)) * dtype.itemsize)
        tensors[name] = np.frombuffer(raw, np.uint8).view(dtype).reshape(shape) if dtype != np.bool_ \
            else (np.frombuffer(raw, np.uint8) & 1).astype(bool).reshape(shape)
    llmcodec.save_file(tensors, path, chunk_size=draw.pick([None, 16, 64]))


def gguf_container(draw: Draw, path: Path) -> None:
    import gguf

    src = SCRATCH / "src.gguf"
    writer = gguf.GGUFWriter(src, "llama")
    for name in NAMES[:draw.int(1, 4)]:
        type_id = draw.pick(sorted(gguf.GGML_QUANT_SIZES))
        t = ggml.GGML_TYPES[type_id]
        row = t.block_size * draw.int(1, 2)
        rows = draw.int(1, 3)
        shape = (rows, row // t.block_size * t.type_size) if draw.bool() else (row // t.block_size * t.type_size,)
        data = np.frombuffer(draw.bytes(int(np.prod(shape))), np.uint8).reshape(shape)
        writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType(type_id))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    llmcodec.encode_file(src, path, threads=1, chunk_size=draw.pick([None, 300, 1000]))


def transformed_container(draw: Draw, path: Path) -> None:
    from safetensors.numpy import save_file

    dtype = draw.pick([np.float32, np.float16, ml_dtypes.bfloat16])
    rng = np.random.default_rng(draw.int(0, 255))
    rank = draw.int(1, 4)
    w = (rng.standard_normal((64, rank)) @ rng.standard_normal((rank, 64))).astype(dtype)
    tensors = {"w": w, "b": np.frombuffer(draw.bytes(16), np.float32)}
    src = SCRATCH / "src.safetensors"
    save_file(tensors, str(src))
    if draw.bool():
        files.transform_file(src, path, "quantize", bits=draw.pick([2, 4, 8]), group_size=draw.pick([32, 64, 0]),
                             scheme=draw.pick(["symmetric", "affine"]), threads=1)
    else:
        files.transform_file(src, path, "factorize", rank=draw.int(1, 6), threads=1)


class Model(torch.nn.Module):
    """A module holding `tensors` under their dotted names (submodules made as needed)."""

    def __init__(self, tensors: dict, buffers: set):
        super().__init__()
        for name, tensor in tensors.items():
            owner = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            if name in buffers or not (tensor.is_floating_point() and tensor.is_contiguous()):
                owner.register_buffer(leaf, tensor)
            else:
                owner.register_parameter(leaf, torch.nn.Parameter(tensor, requires_grad=False))


def parameter(draw: Draw, want, entry) -> tuple[np.ndarray, np.ndarray, bool]:
    """(buffer, the parameter's part of it, made to match) for a tensor of which get_tensor gives
    `want` (None: it refuses) and the file has `entry`."""
    choice = draw.int(0, 7)
    if entry is not None and entry.dtype.is_block and draw.chance(3):
        choice = 5  # block types: their value shape, the one a model of the unquantized weights has
    if want is None or choice == 7:
        dtype, shape = np.dtype(draw.pick(NUMPY)), tuple(draw.int(0, 4) for _ in range(draw.int(0, 2)))
    elif choice == 5 and entry is not None:  # the tensor's value shape, as bytes
        dtype, shape = np.dtype(np.uint8), tuple(entry.shape)
    elif choice == 6 and want.shape:  # another shape: one axis longer or shorter
        axis = draw.int(0, want.ndim - 1)
        shape = list(want.shape)
        shape[axis] = max(0, shape[axis] + draw.pick([-1, 1]))
        dtype, shape = want.dtype, tuple(shape)
    else:
        dtype, shape = want.dtype, want.shape
    nbytes = int(np.prod(shape)) * dtype.itemsize
    base = np.full(2 * nbytes + 512, GUARD, np.uint8)
    array = base[:nbytes].view(dtype).reshape(shape)
    matches = want is not None and dtype == want.dtype and shape == want.shape
    return base, array, matches


def check(data: bytes) -> None:
    draw = Draw(data)
    path = SCRATCH / "model.llmc"
    try:
        try:
            draw.pick([arrays_container, arrays_container, gguf_container, transformed_container])(draw, path)
        except LlmcodecError:
            return  # not a valid container to start from: the encoder target looks into those
        if draw.chance(4):
            path.write_bytes(reseal(harness.mutate(draw, path.read_bytes())))
        load(draw, path)
    finally:
        harness.remove_all(SCRATCH)


def load(draw: Draw, path: Path) -> None:
    want: dict[str, np.ndarray | None] = {}
    entries = {}
    try:
        with llmcodec.open(path, threads=1) as f:
            for name in f.keys():
                entries[name] = None if f.transform(name) else f.entry(name)
                try:
                    want[name] = f.get_tensor(name)
                except LlmcodecError:
                    want[name] = None
    except LlmcodecError:
        want = None  # the file does not open
    params, bases, matching = {}, {}, True
    names = list(want or NAMES[:2])
    if draw.chance(8):
        names.append("extra")
    for name in names:
        if want is not None and name in want and draw.chance(8):
            matching = False  # missing from the model
            continue
        base, array, matches = parameter(draw, (want or {}).get(name), entries.get(name))
        tensor = llmcodec.torch.to_torch(array)
        if tensor.ndim == 2 and tensor.shape[0] > 1 and tensor.shape[1] > 1 and draw.chance(16):
            tensor, matches = tensor.t(), False  # not contiguous
        matching &= matches
        params[name], bases[name] = tensor, base
    buffers = {n for n in params if draw.bool()}
    model = Model(params, buffers)
    strict = draw.bool()
    try:
        missing, unexpected = llmcodec.torch.load_model(model, path, strict=strict, threads=1)
    except LlmcodecError as exc:
        check_guards(params, bases, entries, f"then raises {gist(exc)}")
        if want is not None and matching and all(w is not None for w in want.values()) \
                and not (strict and set(params) != set(want)):
            why = re.sub(r"^(\w+: )[\w.]+: ", r"\1", gist(exc))  # without the tensor's name
            raise Finding(f"load_model refuses a model that matches get_tensor ({why})", str(exc)) from None
        return
    check_guards(params, bases, entries, "then returns")
    if want is None:
        raise Finding("load_model succeeds on a file that does not open", str(path))
    if sorted(missing) != sorted(set(params) - set(want)) or sorted(unexpected) != sorted(set(want) - set(params)):
        raise Finding("load_model names the wrong missing or unexpected tensors", f"{missing} {unexpected}")
    if strict and (missing or unexpected):
        raise Finding("load_model strict=True returns with missing or unexpected tensors", f"{missing} {unexpected}")
    for name in set(params) & set(want):
        if want[name] is None:
            raise Finding("load_model loads a tensor get_tensor refuses", name)
        param, value = params[name], llmcodec.torch.to_torch(want[name])
        if param.ndim == 0 and value.shape == (1,):
            value = value[0]  # load_state_dict's rule for checkpoints of torch 0.3
        if tuple(param.shape) != tuple(value.shape):
            raise Finding(f"load_model loads into another shape than get_tensor's ({kind(entries[name])})",
                          f"{name}: model {list(param.shape)}, get_tensor {list(value.shape)}")
        if not defined_cast(value, param.dtype):
            continue
        expected = torch.empty(param.shape, dtype=param.dtype)
        expected.copy_(value)
        if raw(param) != raw(expected):
            raise Finding(f"load_model loads other bytes than get_tensor's ({kind(entries[name])}, "
                          f"{value.dtype} into {param.dtype})", name)


def raw(t) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def defined_cast(value, dtype) -> bool:
    """Whether torch's cast of `value` to `dtype` has one answer (not NaN or infinity into an
    integer, not a float out of an integer's range)."""
    if value.dtype == dtype or value.numel() == 0:
        return True
    if dtype.is_floating_point or dtype == torch.bool or not value.dtype.is_floating_point:
        return True
    v = value.double()
    info = torch.iinfo(dtype)
    return bool(torch.isfinite(v).all()) and bool(((v > float(info.min) - 1) & (v < float(info.max) + 1)).all())


def check_guards(params: dict, bases: dict, entries: dict, then: str) -> None:
    """No byte after any parameter changed (whether load_model returned or raised)."""
    for name, base in bases.items():
        nbytes = params[name].numel() * params[name].element_size()
        if (base[nbytes:] != GUARD).any():
            raise Finding(f"load_model writes past the end of a parameter ({kind(entries.get(name, 0))}), {then}",
                          f"{name!r}: {params[name].dtype}{list(params[name].shape)}, "
                          f"{int((base[nbytes:] != GUARD).sum())} bytes after it changed")


def kind(entry) -> str:
    if entry == 0:
        return "not in the file"
    if entry is None:
        return "transformed"
    return f"{entry.dtype.name if entry.dtype.is_block else 'scalar'} {len(entry.shape)}-D"


def seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(17)
    return {f"seed-{i}": bytes(rng.integers(0, 256, 200, np.uint8)) for i in range(8)}


if __name__ == "__main__":
    harness.fuzz_main(sys.argv, check, seeds, target="fuzz_torch_load")
