"""torch helpers mirroring `safetensors.torch`: `save_file`, `load_file`, and `load_model`.

Needs torch (`pip install 'llmcodec[torch]'`). bf16 and fp8 tensors keep their dtype.
"""

from __future__ import annotations

import numpy as np

from . import api, transforms
from .errors import InvalidArgumentError
from .loader import _import_torch, open, to_torch

torch = _import_torch()

_VIA_INT = {torch.bfloat16: ("bfloat16", torch.int16), torch.float8_e4m3fn: ("float8_e4m3fn", torch.uint8),
            torch.float8_e5m2: ("float8_e5m2", torch.uint8)}


def to_numpy(tensor) -> np.ndarray:
    """A numpy array sharing a CPU tensor's memory (bf16 and fp8 as ml_dtypes)."""
    import ml_dtypes

    tensor = tensor.detach()
    if tensor.device.type != "cpu":
        tensor = tensor.cpu()
    if tensor.dtype in _VIA_INT:
        name, base = _VIA_INT[tensor.dtype]
        return tensor.view(base).numpy().view(getattr(ml_dtypes, name))
    return tensor.numpy()


def save_file(tensors: dict, path, metadata: dict[str, str] | None = None, *, threads: int | None = None) -> None:
    """Write a dict of torch tensors to an `.llmc` file, losslessly (like `safetensors.torch.save_file`)."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
    api.save_file({name: to_numpy(t) for name, t in tensors.items()}, path, metadata, threads=threads)


def load_file(path, device: str = "cpu", *, threads: int | None = None, max_memory: int | None = None) -> dict:
    """Read every tensor of an `.llmc` file as torch tensors (like `safetensors.torch.load_file`).

    With `max_memory`, a file whose tensors add up to more bytes raises `LimitExceededError`
    before anything is allocated (see `llmcodec.load_file`)."""
    arrays = api.load_file(path, threads=threads, max_memory=max_memory)
    return {name: to_torch(array, device) for name, array in arrays.items()}


def load_model(model, path, *, strict: bool = True, threads: int | None = None) -> tuple[list[str], list[str]]:
    """Decode a file's tensors straight into `model`'s parameters and buffers, in place.

    `path` is an `.llmc` file or an encoded checkpoint folder (its shards). No second copy of the
    weights is ever held: each tensor is decoded into the memory of the parameter it belongs to
    (CPU, contiguous, same dtype and shape); a quantized or factorized one is rebuilt, then copied
    in. Returns (missing, unexpected) names; with `strict`, any of either raises
    `InvalidArgumentError`.
    """
    state = model.state_dict(keep_vars=True)
    with open(path, threads=threads) as f:
        names = f.keys()
        missing = [k for k in state if k not in f]
        unexpected = [k for k in names if k not in state]
        if strict and (missing or unexpected):
            raise InvalidArgumentError(f"{path}: missing tensors {missing}, unexpected tensors {unexpected}")
        for name in names:
            if name not in state:
                continue
            target = state[name].data
            shard = f.file_of(name)
            rebuilt = shard.transform(name)
            entry = None if rebuilt else shard.entry(name)
            shape, kind, dtype = ((tuple(rebuilt.shape), rebuilt.dtype, transforms.FLOAT_DTYPES[rebuilt.dtype])
                                  if rebuilt else (entry.shape, entry.dtype.name, entry.dtype.numpy))
            if tuple(target.shape) != shape or not target.is_contiguous() or target.device.type != "cpu":
                raise InvalidArgumentError(f"{name}: file has shape {list(shape)}, the model "
                                           f"{list(target.shape)} (or it is not a contiguous CPU tensor)")
            out = to_numpy(target)
            if out.dtype != dtype:
                raise InvalidArgumentError(f"{name}: file has dtype {kind}, the model {target.dtype}")
            with torch.no_grad():
                if rebuilt:
                    out[...] = shard.reader.rebuild(name)
                else:
                    shard.reader.read_raw(entry, out=out.reshape(-1).view(np.uint8))
    return missing, unexpected


__all__ = ["load_file", "load_model", "save_file", "to_numpy", "to_torch"]
