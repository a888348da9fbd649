"""Hugging Face loading of llmcodec-encoded checkpoints.

After `enable()`, whatever loads through safetensors' Python API (`safe_open`,
`safetensors.torch.load_file`, `load`, `load_model`), and so transformers' `from_pretrained`,
diffusers and sentence-transformers, reads `.llmc` files and encoded folders; plain safetensors
files load as before. `disable()` puts everything back; `with llmcodec.hf.enabled():` does both.
`from_pretrained(model_class, path, **kwargs)` loads one model without leaving anything patched.

How: `safe_open` is replaced, in the `safetensors` modules and in every module that imported it
by name, by a function that opens an llmcodec container when the file is one (its magic), or when
a `x.safetensors` that does not exist has an encoded `x.llmc` beside it (an encoded folder keeps
the original names in its `model.safetensors.index.json`). transformers' search for checkpoint
files in a local folder is wrapped the same way: an encoded folder answers with the names of its
originals, which the new `safe_open` then finds encoded. Patching is idempotent and undone
exactly (each attribute gets back the object it had).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
import threading
from pathlib import Path

from .errors import InvalidArgumentError

INDEX_NAME = "model.safetensors.index.json"  # transformers' SAFE_WEIGHTS_INDEX_NAME
WEIGHTS_NAME = "model.safetensors"
_MAGIC = b"\x89LLMC\r\n\x1a"  # format.MAGIC, without importing the codec

_lock = threading.Lock()
_patched: list[tuple[object, str, object]] = []  # (module, attribute, what it held before)
_originals: dict[str, object] = {}


def enable(base=None) -> None:
    """Make safetensors' loaders (and transformers' `from_pretrained`) read llmcodec files too.
    `base`: the base model that files of delta tensors were stored against (spec 11; a path, an
    open llmcodec file or a mapping of arrays), opened once and used by every llmcodec file read
    until `disable()`; files without deltas ignore it. Calling it again does nothing."""
    with _lock:
        if _patched:
            return
        import safetensors
        import safetensors.torch

        if base is not None:
            from .bases import as_base

            _originals["base"] = as_base(base)  # (Base, whether to close it in disable)

        _originals["safe_open"] = safetensors.safe_open
        _originals["load"] = safetensors.torch.load
        _replace_everywhere(safetensors.safe_open, _safe_open)
        _replace_everywhere(safetensors.torch.load, _load_bytes)
        if importlib.util.find_spec("transformers") is not None:
            modeling = importlib.import_module("transformers.modeling_utils")
            resolve = getattr(modeling, "_get_resolved_checkpoint_files", None)
            if resolve is not None:
                _originals["resolve"] = resolve
                _set(modeling, "_get_resolved_checkpoint_files", _resolved_checkpoint_files)


def disable() -> None:
    """Undo `enable()`: every patched attribute gets back what it held."""
    with _lock:
        while _patched:
            module, name, before = _patched.pop()
            setattr(module, name, before)
        base, owned = _originals.get("base", (None, False))
        if owned:
            base.close()
        _originals.clear()


@contextlib.contextmanager
def enabled(base=None):
    """`enable(base)` for the duration of a `with` block (then `disable()`, unless it was enabled
    before)."""
    was = bool(_patched)
    enable(base)
    try:
        yield
    finally:
        if not was:
            disable()


def from_pretrained(model_class, path, base=None, **kwargs):
    """`model_class.from_pretrained(path, **kwargs)` reading llmcodec-encoded weights (delta files
    against `base`), with nothing left patched afterwards."""
    with enabled(base):
        return model_class.from_pretrained(path, **kwargs)


def _set(module, name: str, value) -> None:
    _patched.append((module, name, getattr(module, name)))
    setattr(module, name, value)


def _replace_everywhere(original, replacement) -> None:
    """Point every loaded module's attribute that holds `original` at `replacement` (modules that
    did `from safetensors import safe_open` hold their own reference)."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if value is original:
                _set(module, name, replacement)


# --- files ---------------------------------------------------------------------------------------


def encoded_path(filename) -> Path | None:
    """The llmcodec container to read for `filename`: itself when it is one, else for a missing
    `x.safetensors` an `x.llmc` beside it; None when `filename` is for safetensors itself."""
    if not isinstance(filename, (str, os.PathLike)):
        return None
    path = Path(filename)
    if path.suffix == ".safetensors" and not path.exists():
        sibling = path.with_suffix(".llmc")
        return sibling if sibling.is_file() else None
    try:
        with open(path, "rb") as f:
            return path if f.read(len(_MAGIC)) == _MAGIC else None
    except OSError:
        return None


def _safe_open(filename, framework, device="cpu", **options):
    container = encoded_path(filename)
    if container is None:
        return _originals["safe_open"](filename, framework, device=device, **options)
    from .loader import open as open_llmc

    base = _originals.get("base", (None, False))[0]
    return SafeOpen(open_llmc(container, framework, device, base=base))


def _load_bytes(data):
    if bytes(data[:len(_MAGIC)]) != _MAGIC:
        return _originals["load"](data)
    from .torch import load

    return load(data)


class SafeOpen:
    """An open llmcodec file with `safetensors.safe_open`'s interface."""

    def __init__(self, file):
        self._file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()

    def keys(self) -> list[str]:
        return self._file.keys()  # sorted, as safetensors lists them

    def offset_keys(self) -> list[str]:
        return self._file.offset_keys()  # in file order

    def metadata(self) -> dict[str, str] | None:
        return self._file.metadata()  # None without __metadata__, as in safetensors

    def get_tensor(self, name: str):
        return self._file.get_tensor(name)

    def get_tensors(self) -> dict:
        """Every tensor, in file order."""
        return {name: self._file.get_tensor(name) for name in self._file.offset_keys()}

    def get_slice(self, name: str):
        return self._file.get_slice(name)


# --- transformers' search for checkpoint files --------------------------------------------------


def _resolved_checkpoint_files(*args, **kwargs):
    """transformers' `_get_resolved_checkpoint_files`, answering for an encoded local folder
    with its originals' names (read by `_safe_open`)."""
    original = _originals["resolve"]
    call = inspect.signature(original).bind(*args, **kwargs)
    call.apply_defaults()
    given = call.arguments
    path = given.get("pretrained_model_name_or_path")
    download = given.get("download_kwargs") or {}
    subfolder = (download.get("subfolder") if isinstance(download, dict) else None) or given.get("subfolder") or ""
    if (path is not None and not given.get("gguf_file") and given.get("use_safetensors") is not False
            and given.get("transformers_explicit_filename") is None):
        folder = Path(os.fspath(path), subfolder)
        found = encoded_checkpoint(folder, given.get("variant"))
        if found is not None:
            return found
    return original(*args, **kwargs)


def _variant(name: str, variant: str | None) -> str:
    if not variant:
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}.{variant}{dot}{suffix}"


def encoded_checkpoint(folder: Path, variant: str | None = None) -> tuple[list[str], dict | None] | None:
    """(checkpoint files, sharded metadata) as transformers resolves them, for an encoded folder
    (its originals' names); None when `folder` holds the original files or is not encoded."""
    if not folder.is_dir():
        return None
    single = folder / _variant(WEIGHTS_NAME, variant)
    if single.exists():
        return None
    if single.with_suffix(".llmc").is_file():
        return [os.fspath(single)], None
    index = folder / _variant(INDEX_NAME, variant)
    if not index.is_file():
        return None
    try:
        content = json.loads(index.read_text())
        weight_map = dict(content["weight_map"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgumentError(f"{index}: not a readable safetensors index ({exc})") from None
    shards = sorted(set(weight_map.values()))
    if not shards or any(not isinstance(s, str) or "/" in s or s.startswith(".") for s in shards):
        raise InvalidArgumentError(f"{index}: its weight_map names no shard files in the folder")
    if all((folder / s).exists() for s in shards) or not all((folder / s).with_suffix(".llmc").is_file()
                                                               for s in shards):
        return None  # the originals are there, or this is not an encoded folder
    metadata = dict(content.get("metadata") or {})
    metadata["all_checkpoint_keys"] = list(weight_map)
    metadata["weight_map"] = weight_map
    return [os.fspath(folder / s) for s in shards], metadata
