"""torch helpers mirroring `safetensors.torch`: `save_file`, `load_file`, and `load_model`.

Needs torch (`pip install 'llmcodec[torch]'`). bf16 and fp8 tensors keep their dtype.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from . import api, transforms
from .errors import InvalidArgumentError
from .loader import _import_torch, array_shape, check_device, open, to_torch

torch = _import_torch()

_VIA_INT = {torch.bfloat16: ("bfloat16", torch.int16), torch.float8_e4m3fn: ("float8_e4m3fn", torch.uint8),
            torch.float8_e5m2: ("float8_e5m2", torch.uint8)}


def to_numpy(tensor) -> np.ndarray:
    """A numpy array sharing a CPU tensor's memory (bf16 and fp8 as ml_dtypes). A tensor numpy
    cannot hold (sparse, quantized, a dtype numpy lacks, on the meta device) is an
    InvalidArgumentError."""
    import ml_dtypes

    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError(f"a {type(tensor).__name__}, not a torch.Tensor")
    try:
        tensor = tensor.detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        if tensor.dtype in _VIA_INT:
            name, base = _VIA_INT[tensor.dtype]
            return tensor.view(base).numpy().view(getattr(ml_dtypes, name))
        return tensor.resolve_conj().resolve_neg().numpy()
    except (TypeError, RuntimeError, NotImplementedError) as exc:
        raise InvalidArgumentError(f"a torch tensor of {tensor.dtype} ({tensor.layout}, on {tensor.device}) "
                                   f"numpy cannot hold: {exc}") from None


def save_file(tensors: dict, path, metadata: dict[str, str] | None = None, *, threads: int | None = None) -> None:
    """Write a dict of torch tensors to an `.llmc` file, losslessly (like `safetensors.torch.save_file`)."""
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of names to torch tensors, not {type(tensors).__name__}")
    arrays = {}
    for name, t in tensors.items():
        try:
            arrays[name] = to_numpy(t)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"tensor {name!r}: {exc}") from None
    api.save_file(arrays, path, metadata, threads=threads)


def load_file(path, device: str = "cpu", *, threads: int | None = None, max_memory: int | None = None) -> dict:
    """Read every tensor of an `.llmc` file as torch tensors (like `safetensors.torch.load_file`).

    With `max_memory`, a file whose tensors add up to more bytes raises `LimitExceededError`
    before anything is allocated (see `llmcodec.load_file`)."""
    check_device(device)
    arrays = api.load_file(path, threads=threads, max_memory=max_memory)
    return {name: to_torch(array, device) for name, array in arrays.items()}


def load_model(model, path, *, strict: bool = True, threads: int | None = None) -> tuple[list[str], list[str]]:
    """Decode a file's tensors straight into `model`'s parameters and buffers, in place.

    `path` is an `.llmc` file or an encoded checkpoint folder (its shards). No second copy of the
    weights is ever held: each tensor is decoded into the memory of the parameter it belongs to
    (CPU, contiguous, and the dtype and shape `get_tensor` returns: a GGUF block type's as uint8
    [..., bytes of its blocks]); a quantized or factorized one is rebuilt, then copied in.
    Returns (missing, unexpected) names; with `strict`, any of either raises `InvalidArgumentError`.
    """
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, not {type(model).__name__}")
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
            # The tensor as get_tensor returns it: a block type's as uint8 [..., bytes of its blocks].
            shape, kind, dtype = ((tuple(rebuilt.shape), rebuilt.dtype, transforms.FLOAT_DTYPES[rebuilt.dtype])
                                  if rebuilt else (array_shape(entry, shard.reader.name), entry.dtype.name,
                                                   entry.dtype.numpy))
            if not target.is_contiguous() or target.device.type != "cpu":
                raise InvalidArgumentError(f"{name}: the model's tensor is not a contiguous CPU tensor")
            if tuple(target.shape) != shape:
                raise InvalidArgumentError(f"{name}: file has shape {list(shape)} ({kind}), the model "
                                           f"{list(target.shape)}")
            try:
                out = to_numpy(target)
            except InvalidArgumentError as exc:
                raise InvalidArgumentError(f"{name}: {exc}") from None
            if out.dtype != dtype:
                raise InvalidArgumentError(f"{name}: file has dtype {kind} ({np.dtype(dtype).name}), the model "
                                           f"{target.dtype}")
            # Same shape and numpy dtype: the same bytes; read_raw checks `out`'s size again.
            with torch.no_grad():
                if rebuilt:
                    out[...] = transforms.rebuild_stored(shard.reader, name)
                else:
                    shard.reader.read_raw(entry, out=out.reshape(-1).view(np.uint8))
    return missing, unexpected


__all__ = ["load_file", "load_model", "save_file", "to_numpy", "to_torch"]
