"""llmcodec as the storage of `torch.distributed.checkpoint` (DCP).

    import torch.distributed.checkpoint as dcp, llmcodec.dcp
    dcp.save(state_dict, storage_writer=llmcodec.dcp.FileSystemWriter("ckpt/"))
    dcp.load(state_dict, storage_reader=llmcodec.dcp.FileSystemReader("ckpt/"))

Layout (spec section "DCP checkpoints"): DCP's own `.metadata` (a pickle, written last by the
coordinator, so a crash mid-save leaves no checkpoint that looks complete), and one llmcodec
container per rank, `__<rank>_<save id>.llmc`, holding that rank's write items: each tensor shard a tensor
(its dtype's byte planes), each non-tensor object (DCP's pickled bytes) a U8 tensor. One
container per rank, not one per item: a rank's items share a header, a thread pool and one atomic
rename, and every tensor stays independently decodable by its chunks. The metadata records, per
item, the container and the tensor's name in it (`StorageInfo`).

Loading reads each container's header once and decodes, per read item, only the chunks that hold
the requested rows (DCP asks for a hypercube of a stored shard when the checkpoint is resharded:
saved on 2 ranks, loaded on 1 or 4). Every chunk is checksummed: a damaged file raises an
`LlmcodecError` (DCP wraps it in its `CheckpointException`), never wrong weights.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributed.checkpoint import filesystem
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner, SavePlan, SavePlanner,
                                                  WriteItemType)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .errors import FormatError

SUFFIX = ".llmc"


@dataclass(frozen=True)
class StorageInfo:
    """Where one write item is: the container (relative to the checkpoint folder) and the name
    of its tensor there. Pickled into DCP's `.metadata`."""

    relative_path: str
    tensor: str
    length: int  # raw bytes


def _tensor_name(item) -> str:
    """A unique name per write item: the FQN, then '@' and the shard's offsets (digits and commas
    only, so the last '@' separates them); non-tensor items end in '#bytes'."""
    if item.type == WriteItemType.BYTE_IO:
        return f"{item.index.fqn}#bytes"
    offsets = item.tensor_data.chunk.offsets if item.tensor_data is not None else ()
    return f"{item.index.fqn}@{','.join(str(int(o)) for o in offsets)}"


class FileSystemWriter(filesystem.FileSystemWriter):
    """DCP's `FileSystemWriter`, storing each rank's items in one llmcodec container.

    `threads` and `chunk_size` are llmcodec's (encoding threads per rank: default all usable
    cores; bytes per chunk: 1 MiB); the rest are DCP's. `single_file_per_rank=False` and
    `_extensions` are not supported (every rank writes one container)."""

    def __init__(self, path, single_file_per_rank: bool = True, sync_files: bool = True,
                 cache_staged_state_dict: bool = False, overwrite: bool = True, *,
                 threads: int | None = None, chunk_size: int | None = None):
        if not single_file_per_rank:
            raise ValueError("llmcodec.dcp writes one container per rank: single_file_per_rank must be True")
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files, thread_count=1,
                         cache_staged_state_dict=cache_staged_state_dict, overwrite=overwrite)
        self.threads = threads
        self.chunk_size = chunk_size

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        from .api import save_file
        from .torch import to_numpy

        # A new name per save (DCP's save id): overwriting a checkpoint in place never changes a
        # container the old `.metadata` points to, so a save that dies leaves the old checkpoint
        # whole; `finish` removes the containers the new `.metadata` no longer names.
        file_name = f"{plan.storage_data.prefix}{self.save_id}{SUFFIX}"
        arrays: dict[str, np.ndarray] = {}
        results = []
        for item in plan.items:
            name = _tensor_name(item)
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                array = np.frombuffer(data.getbuffer(), np.uint8).copy()
            else:
                tensor = data.detach()
                if tensor.device.type != "cpu":
                    tensor = tensor.cpu()
                array = to_numpy(tensor.contiguous())
            arrays[name] = array
            results.append(WriteResult(index=item.index, size_in_bytes=array.nbytes,
                                       storage_data=StorageInfo(file_name, name, array.nbytes)))
        save_file(arrays, self.fs.concat_path(self.path, file_name), threads=self.threads,
                  chunk_size=self.chunk_size)  # atomic: the container appears whole or not at all
        future: Future[list[WriteResult]] = Future()
        future.set_result(results)
        return future


    def finish(self, metadata, results) -> None:
        """Write DCP's `.metadata` (atomically, last), then remove containers of earlier saves."""
        super().finish(metadata, results)
        named = {info.relative_path for info in metadata.storage_data.values() if isinstance(info, StorageInfo)}
        for entry in os.scandir(self.path):
            if entry.name.startswith("__") and entry.name.endswith(SUFFIX) and entry.name not in named:
                os.unlink(entry.path)


class FileSystemReader(filesystem.FileSystemReader):
    """DCP's `FileSystemReader` for checkpoints written by `llmcodec.dcp.FileSystemWriter`.
    `threads` and `max_memory` are as for `llmcodec.open`."""

    def __init__(self, path, *, threads: int | None = None, max_memory: int | None = None):
        super().__init__(path)
        self.threads = threads
        self.max_memory = max_memory

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        from .loader import open as open_llmc

        per_file: dict[str, list] = {}
        for item in plan.items:
            info = self.storage_data[item.storage_index]
            if not isinstance(info, StorageInfo):
                raise FormatError(f"{self.path}: item {item.storage_index.fqn!r} was not written by llmcodec.dcp")
            per_file.setdefault(info.relative_path, []).append(item)
        for relative_path, items in per_file.items():
            path = self.fs.concat_path(self.path, relative_path)
            with open_llmc(path, "pt", threads=self.threads, max_memory=self.max_memory) as f:
                for item in items:
                    info = self.storage_data[item.storage_index]
                    if item.type == LoadItemType.BYTE_IO:
                        data = io.BytesIO(f.get_tensor(info.tensor).numpy().tobytes())
                        planner.load_bytes(item, data)
                        continue
                    tensor = _read_box(f, info.tensor, item.storage_offsets, item.lengths)
                    target = planner.resolve_tensor(item).detach()
                    if target.size() != tensor.size():
                        raise FormatError(f"{os.fspath(path)}: tensor {info.tensor!r} gives {list(tensor.size())} "
                                          f"for a request of {list(target.size())}")
                    target.copy_(tensor)
                    planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future


def _read_box(f, name: str, offsets, lengths) -> torch.Tensor:
    """The hypercube [offsets, offsets + lengths) of stored tensor `name`, decoding only the chunks
    that hold its rows."""
    if len(offsets) == 0:
        return f.get_tensor(name)
    index = tuple(slice(int(o), int(o) + int(n)) for o, n in zip(offsets, lengths))
    return f.get_slice(name)[index]
