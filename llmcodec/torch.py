"""torch helpers with `safetensors.torch`'s interface: `save_file`, `load_file`, `save`, `load`,
`save_model`, `load_model`.

Needs torch (`pip install 'llmcodec[torch]'`). bf16 and fp8 tensors keep their dtype. Tensors
that share memory (tied weights) are treated as safetensors treats them, with safetensors' own
rules (`safetensors.torch._remove_duplicate_names`): `save_file` refuses them, `save_model`
keeps one name of each shared group, `load_model` accepts a file holding any of the names. The
README's table "Differences from safetensors.torch" lists what still differs.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from . import api
from .errors import InvalidArgumentError
from .loader import _import_torch, array_shape, check_device, open, to_torch

torch = _import_torch()

_VIA_INT = {torch.bfloat16: ("bfloat16", torch.int16), torch.float8_e4m3fn: ("float8_e4m3fn", torch.uint8),
            torch.float8_e5m2: ("float8_e5m2", torch.uint8)}


class ModelMismatchError(InvalidArgumentError, RuntimeError):
    """A file's tensors do not fit the model `load_model` loads them into (names missing or
    unexpected with `strict`, another shape, a copy torch refuses). A `RuntimeError` too, which
    is what `safetensors.torch.load_model` and `Module.load_state_dict` raise."""


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


def _arrays(tensors) -> dict[str, np.ndarray]:
    """`tensors` as numpy arrays, refused as safetensors refuses them when some share memory."""
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of names to torch tensors, not {type(tensors).__name__}")
    arrays = {}
    for name, t in tensors.items():
        try:
            arrays[name] = to_numpy(t)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"tensor {name!r}: {exc}") from None
    from safetensors.torch import _find_shared_tensors

    shared = [sorted(group) for group in _find_shared_tensors(dict(tensors)) if len(group) > 1]
    if shared:
        raise InvalidArgumentError(f"some tensors share memory: {shared}. Stored apart, they would take their "
                                   f"bytes twice and load back as separate tensors. To save a model, use "
                                   f"llmcodec.torch.save_model, which keeps one name of each shared group; "
                                   f"else pass copies (.clone())")
    return arrays


def save_file(tensors: dict, path, metadata: dict[str, str] | None = None, *, threads: int | None = None,
              base=None) -> None:
    """Write a dict of torch tensors to an `.llmc` file, losslessly (like `safetensors.torch.save_file`).
    Tensors that share memory are refused (`InvalidArgumentError`): see `save_model`. With `base`
    (a base model: a path, an open llmcodec file, or a dict of tensors), tensors are stored as
    deltas against it where smaller (see `llmcodec.save_file`).

    >>> llmcodec.torch.save_file({"w": torch.zeros(2, 3)}, "w.llmc")
    """
    api.save_file(_arrays(tensors), path, metadata, threads=threads, base=base)


def save(tensors: dict, metadata: dict[str, str] | None = None, *, threads: int | None = None) -> bytes:
    """The bytes of the `.llmc` file `save_file` writes (like `safetensors.torch.save`).

    >>> data = llmcodec.torch.save({"w": torch.arange(3.0)})
    >>> llmcodec.torch.load(data)["w"].tolist()
    [0.0, 1.0, 2.0]
    """
    return api.save(_arrays(tensors), metadata, threads=threads)


def load_file(path, device: str = "cpu", *, threads: int | None = None, max_memory: int | None = None,
              base=None) -> dict:
    """Read every tensor of an `.llmc` file as torch tensors (like `safetensors.torch.load_file`).

    With `max_memory`, a file whose tensors add up to more bytes raises `LimitExceededError`
    before anything is allocated (see `llmcodec.load_file`); `base`: the base model of a file of
    delta tensors (see `llmcodec.open`)."""
    check_device(device)
    arrays = api.load_file(path, threads=threads, max_memory=max_memory, base=base)
    return {name: to_torch(array, device) for name, array in arrays.items()}


def load(data, *, threads: int | None = None, max_memory: int | None = None) -> dict:
    """Every tensor of the `.llmc` file held in `data` (bytes), as CPU tensors (like
    `safetensors.torch.load`). Bytes that are not a valid container raise an `LlmcodecError`;
    `max_memory` bounds what a valid one may decode to (see `llmcodec.api.load`)."""
    arrays = api.load(data, threads=threads, max_memory=max_memory)
    return {name: to_torch(array) for name, array in arrays.items()}


def save_model(model, path, metadata: dict[str, str] | None = None, force_contiguous: bool = True, *,
               threads: int | None = None) -> None:
    """Write `model.state_dict()` to an `.llmc` file (like `safetensors.torch.save_model`): of
    tensors sharing memory (tied weights) only one name is stored, the first in sorted order of
    those covering the whole storage, and each dropped name is recorded in the metadata as
    `{dropped: kept}` (entries the caller gave win). `force_contiguous` is accepted for
    compatibility and changes nothing: llmcodec stores values, never a memory layout.

    >>> llmcodec.torch.save_model(model, "model.llmc")
    >>> llmcodec.torch.load_model(model, "model.llmc")
    ([], [])
    """
    del force_contiguous
    _check_model(model)
    state = model.state_dict()
    metadata = dict(metadata) if isinstance(metadata, Mapping) else metadata  # never the caller's dict
    for kept, dropped in _duplicates(state).items():
        for name in dropped:
            if metadata is None:
                metadata = {}
            metadata.setdefault(name, kept)
            del state[name]
    save_file(state, path, metadata, threads=threads)


def load_model(model, path, strict: bool = True, device="cpu", *, assign: bool = False,
               threads: int | None = None, base=None) -> tuple[list[str], list[str]]:
    """Load a file's tensors into `model` (like `safetensors.torch.load_model`): through
    `model.load_state_dict`, so values are cast to the model's dtypes (an fp32 file into a bf16
    model rounds as torch's `copy_` does), and tied weights load from any one of their names.

    `path` is an `.llmc` file or an encoded checkpoint folder. `device` is where the tensors are
    decoded to before they are copied into the model (safetensors' meaning). With `assign`, the
    file's tensors replace the model's (`load_state_dict(assign=True)`: no cast, on `device`),
    which is how a model built on the meta device is loaded; tied weights stay tied. Without it,
    a model tensor on the meta device is refused.

    Returns (missing, unexpected) names as safetensors counts them; with `strict`, any of either
    raises `ModelMismatchError` (a `RuntimeError` too, as in safetensors), after loading the rest.
    `base`: the base model of a file of delta tensors (see `llmcodec.open`).

    Where nothing can change the meaning of `load_state_dict` (no load hooks or overridden
    loading methods in the model), each tensor goes straight into the model's memory as it is
    decoded: in place, without a second copy, when the model's tensor is a contiguous CPU tensor
    of the file's dtype and shape; else decoded alone and copied in. Only the tensors that
    `load_state_dict` must see (tied ones, other shapes, `assign`) are held until it runs.

    >>> llmcodec.torch.load_model(model.to(torch.bfloat16), "model.llmc")   # an fp32 file: cast
    ([], [])
    >>> with torch.device("meta"):
    ...     empty = type(model)(config)
    >>> llmcodec.torch.load_model(empty, "model.llmc", assign=True)
    ([], [])
    """
    _check_model(model)
    check_device(device)
    state = model.state_dict(keep_vars=True)
    with open(path, "pt", device, threads=threads, base=base) as f:
        names = f.offset_keys()
        duplicates = _duplicates(state, preferred=names)
        meta = [name for name in names if name in state and state[name].is_meta]
        if meta and not assign:
            raise ModelMismatchError(f"{path}: the model's tensors {meta[:3]}{'...' if len(meta) > 3 else ''} are "
                                     f"on the meta device, where copying into them does nothing: pass assign=True "
                                     f"to take the file's tensors instead")
        direct = None if assign else _fillable(model, state, duplicates)
        given = {}
        for name in names:
            if direct is not None and name in direct:
                given[name] = _fill(f, name, direct[name], device)
            elif direct is not None and name not in state:
                given[name] = _UNUSED  # load_state_dict only lists the name: no hook or override reads it
            else:
                given[name] = f.get_tensor(name)
    try:
        missing, unexpected = model.load_state_dict(given, strict=False, assign=assign)
    except RuntimeError as exc:
        raise ModelMismatchError(f"{path}: {exc}") from None
    if assign:
        _tie_again(model, state, duplicates, names)
    # safetensors' accounting: a dropped name of a tied group is not missing; in the file, unexpected
    missing = list(missing)
    for dropped in duplicates.values():
        for name in dropped:
            if name in missing:
                missing.remove(name)
            else:
                unexpected.append(name)
    if strict and (missing or unexpected):
        error = f"Error(s) in loading {path} into {type(model).__name__}:"
        if missing:
            error += "\n    Missing key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(missing))
        if unexpected:
            error += "\n    Unexpected key(s) in state_dict: " + ", ".join(f'"{k}"' for k in sorted(unexpected))
        raise ModelMismatchError(error)
    return missing, unexpected


_UNUSED = torch.empty(0)


def _check_model(model) -> None:
    if not isinstance(model, torch.nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, not {type(model).__name__}")


def _duplicates(state: dict, preferred=()) -> dict[str, list[str]]:
    """{kept name: dropped names} of the tensors of `state` sharing memory: safetensors' choice
    (`_remove_duplicate_names`, preferring names in `preferred`), and on the meta device, where
    tensors have no memory to compare, the names of one tensor object."""
    from safetensors.torch import _remove_duplicate_names

    real = {k: v.detach() for k, v in state.items() if not v.is_meta}
    try:
        found = _remove_duplicate_names(real, preferred_names=list(preferred))
    except RuntimeError as exc:  # tensors overlap, and none covers the storage they share
        raise ModelMismatchError(str(exc)) from None
    objects = defaultdict(list)
    for k, v in state.items():
        if v.is_meta:
            objects[id(v)].append(k)
    for group in objects.values():
        if len(group) > 1:
            kept = sorted(set(group) & set(preferred)) or sorted(group)
            found[kept[0]] = [name for name in sorted(group) if name != kept[0]]
    return dict(found)


def _fillable(model, state: dict, duplicates: dict) -> dict | None:
    """{name: tensor} of the model's tensors `load_model` may fill as it decodes: each a parameter
    or persistent buffer of its own, not tied, not meta, not lazy. None when a hook, an overridden
    loading method or torch's swap-tensors mode could change what `load_state_dict` does with the
    values it is given: then it is given every tensor of the file, decoded."""
    base = torch.nn.Module
    if torch.__future__.get_swap_module_params_on_conversion():
        return None
    if type(model).load_state_dict is not base.load_state_dict or type(model).state_dict is not base.state_dict:
        return None
    for m in model.modules():
        if (m._load_state_dict_pre_hooks or m._state_dict_hooks or m._state_dict_pre_hooks
                or type(m)._load_from_state_dict is not base._load_from_state_dict):
            return None
    own = {id(t) for t in itertools.chain(model.parameters(), model.buffers())}
    tied = {name for kept, dropped in duplicates.items() for name in (kept, *dropped)}
    return {name: t for name, t in state.items()
            if id(t) in own and name not in tied and not t.is_meta and not torch.nn.parameter.is_lazy(t)}


def _fill(f, name: str, target, device):
    """Put tensor `name` of file `f` into `target` as `load_state_dict` would (`copy_`), and
    return `target` (its own copy is then nothing); or return the decoded tensor, for
    `load_state_dict` to report (another shape, a copy torch refuses)."""
    shard = f.file_of(name)
    if shard.transform(name) is None and torch.device(device).type == "cpu" and target.device.type == "cpu" \
            and target.is_contiguous():
        entry = shard.entry(name)
        try:
            out = to_numpy(target)
        except InvalidArgumentError:
            out = None
        if out is not None and out.dtype == entry.dtype.numpy and out.shape == array_shape(entry, shard.reader.name):
            # the same shape and numpy dtype: the same bytes; read_raw checks `out`'s size again
            shard.reader.read_raw(entry, out=out.reshape(-1).view(np.uint8))
            return target
    value = f.get_tensor(name)
    if value.shape != target.shape:
        return value
    try:
        with torch.no_grad():
            target.copy_(value)
    except Exception:  # noqa: BLE001 - load_state_dict tries again and says why, as for safetensors
        return value
    return target


def _tie_again(model, state: dict, duplicates: dict, names: list[str]) -> None:
    """After `load_state_dict(assign=True)`, which gives each name its own new tensor: each dropped
    name of a tied group that was one tensor object becomes the kept name's new tensor again."""
    for kept, dropped in duplicates.items():
        if kept not in names:
            continue
        owner, _, leaf = kept.rpartition(".")
        value = getattr(model.get_submodule(owner), leaf)
        for name in dropped:
            if state[name] is state[kept]:
                owner, _, leaf = name.rpartition(".")
                setattr(model.get_submodule(owner), leaf, value)


__all__ = ["ModelMismatchError", "load", "load_file", "load_model", "save", "save_file", "save_model", "to_numpy",
           "to_torch"]
