"""Public functions in the idiom of `safetensors.numpy`: `save_file`, `load_file`, `save`, `load`."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from . import bases, codec, dtypes, transforms
from .budget import Budget
from .container import ContainerReader, ContainerWriter, TensorSource
from .errors import InvalidArgumentError, LimitExceededError
from .format import Limits
from .loader import as_array, check_max_memory, check_unique, is_folder, rebuild_bytes, shard_paths


def save_file(tensors: Mapping[str, np.ndarray], path, metadata: Mapping[str, str] | None = None, *,
              threads: int | None = None, chunk_size: int | None = None, base=None, level: str = "fast") -> None:
    """Write numpy arrays to an `.llmc` file, losslessly; the write is atomic.

    `threads` defaults to $LLMCODEC_THREADS, else every core; `chunk_size` is the bytes of raw data
    per independently decodable chunk (default 1 MiB). With `base` (a path to a base model, an open
    llmcodec file or a mapping of arrays), each tensor the base holds with the same name, dtype and
    shape is stored as a delta against it where that is smaller (spec 11); reading the file then
    needs the base. `level`: "fast" (the default), or "max" for a smaller file at several times
    the encoding work (every plane that codes smaller is coded, and each tensor gets the chunk
    size that codes it smallest, unless `chunk_size` is given); any reader reads either.

    >>> import numpy as np, llmcodec
    >>> llmcodec.save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, path)
    >>> llmcodec.load_file(path)["w"].tolist()
    [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    """
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a mapping of names to arrays, not {type(tensors).__name__}")
    metadata = _check_metadata(metadata)
    level = codec.level(level)
    items = []
    for name, array in tensors.items():
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tensor names must be str, not {type(name).__name__}")
        if isinstance(array, np.generic):  # a numpy scalar is a 0-d tensor
            array = np.asarray(array)
        if not isinstance(array, np.ndarray):
            raise InvalidArgumentError(f"tensor {name!r} is a {type(array).__name__}, not a numpy array")
        try:
            dtype = dtypes.from_numpy(array.dtype)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(f"tensor {name!r}: {exc}") from None
        shape = array.shape  # np.ascontiguousarray would turn a 0-d array into 1-d
        items.append(TensorSource(name, dtype, shape, np.ascontiguousarray(array, dtype=dtype.numpy)))
    with ExitStack() as stack:
        writer = stack.enter_context(ContainerWriter(path, threads=threads, chunk_size=chunk_size, level=level))
        base, owned = bases.as_base(base)
        if owned:
            stack.callback(base.close)
        if base is not None:
            bases.plan_deltas(items, base, chunk_size, writer.threads, level)
        writer.add_many(items)
        writer.finish(metadata, base=None if base is None else base.record())


def load_file(path, *, threads: int | None = None, limits: Limits | None = None,
              max_memory: int | None = None, base=None) -> dict[str, np.ndarray]:
    """Read every tensor of an `.llmc` file, or of every shard of an encoded checkpoint folder,
    into numpy arrays, bit-exact, checksums verified; `base` as for `llmcodec.open`.

    With `max_memory`, a file (or folder) whose headers, tensors and decoding working memory add
    up to more bytes raises `LimitExceededError` before they are allocated; peak growth stays under
    `max_memory` plus `budget.MEMORY_SLACK` (1 MiB), as for `llmcodec.open`.
    """
    max_memory = check_max_memory(max_memory)
    budget = Budget(max_memory)
    paths = shard_paths(path) if is_folder(path) else [path]
    with ExitStack() as stack:
        base, owned = bases.as_base(base)
        if owned:
            stack.callback(base.close)
        read_base = None if base is None else base.read
        readers = [stack.enter_context(ContainerReader(p, threads=threads, limits=limits, budget=budget,
                                                       read_base=read_base)) for p in paths]
        for reader in readers if base is not None else []:
            bases.check_fits(base, reader.all_tensors, reader.name)
        held: dict[str, str] = {}
        sizes: dict[str, int] = {}
        transient = 0  # a transformed tensor's parts and intermediates, one rebuild at a time
        for reader in readers:
            check_unique(held, reader.names, reader.name, path)
            sizes.update((t.name, t.nbytes) for t in reader.tensors)
            for name in reader.transforms:
                sizes[name], need = rebuild_bytes(reader, name)
                transient = max(transient, need)
        what = f"{readers[0].name if len(readers) == 1 else path}: loading its {len(sizes)} tensors"
        if sizes:
            largest = max(sizes, key=sizes.get)
            what += f" (the largest, {largest!r}, is {sizes[largest]} bytes)"
        needed = sum(sizes.values()) + transient
        budget.take(needed, what)
        try:
            return {name: array for reader in readers for name, array in _load_all(reader, budget, what).items()}
        except MemoryError:
            raise LimitExceededError(f"{what} needs {needed} bytes, more than this machine can allocate; "
                                     f"pass max_memory to refuse such files earlier") from None


def save(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None, *,
         threads: int | None = None, chunk_size: int | None = None, level: str = "fast") -> bytes:
    """The bytes of the `.llmc` file `save_file` writes (like `safetensors.numpy.save`).

    >>> data = llmcodec.api.save({"w": np.arange(3, dtype=np.float32)})
    >>> llmcodec.api.load(data)["w"].tolist()
    [0.0, 1.0, 2.0]
    """
    # The container writer takes a path (it seeks back to write its preamble last), so the file
    # is written into a private temporary folder, read back, and removed.
    with tempfile.TemporaryDirectory(prefix="llmcodec-") as folder:
        path = Path(folder) / "tensors.llmc"
        save_file(tensors, path, metadata, threads=threads, chunk_size=chunk_size, level=level)
        return path.read_bytes()


def load(data, *, threads: int | None = None, limits: Limits | None = None,
         max_memory: int | None = None) -> dict[str, np.ndarray]:
    """Every tensor of the `.llmc` file held in `data` (bytes, bytearray or memoryview), as
    `load_file` reads a file (like `safetensors.numpy.load`). The arrays own their memory.
    Bytes that are not a valid container raise an `LlmcodecError`; `max_memory` bounds what a
    valid one may decode to (a few bytes may describe gigabytes of constant data)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidArgumentError(f"data must be bytes, bytearray or memoryview, not {type(data).__name__} "
                                   f"(load_file reads a path)")
    return load_file(data, threads=threads, limits=limits, max_memory=max_memory)


def _load_all(reader: ContainerReader, budget: Budget, what: str) -> dict[str, np.ndarray]:
    """Every tensor of one container, in its model order; transformed ones rebuilt. Their bytes
    are taken from `budget` already; the decoding's working memory is taken here."""
    out = budget.allocate(sum(t.nbytes for t in reader.tensors), what)
    raws = reader.read_many(reader.tensors, out=out, budget=budget)
    stored = {t.name: as_array(raw, t, reader.name) for t, raw in zip(reader.tensors, raws)}
    return {name: stored[name] if name in stored else transforms.rebuild_stored(reader, name) for name in reader.names}


def _check_metadata(metadata) -> dict[str, str]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                    for k, v in metadata.items()):
        raise InvalidArgumentError("metadata must be a mapping of str to str")
    return dict(metadata)
