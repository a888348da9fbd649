"""Worker processes for tests/test_dcp.py (torch.multiprocessing spawn imports this file)."""

import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

import llmcodec.dcp


def full_state() -> dict:
    """A training state: weights sharded by rows and by columns, a replicated vector, Adam's
    moments (fp32) and step counter, and non-tensor objects."""
    g = torch.Generator().manual_seed(0)
    return {
        "w_rows": (torch.randn(64, 24, generator=g) * 0.02).to(torch.bfloat16),
        "w_cols": torch.randn(12, 40, generator=g),
        "bias": torch.randn(24, generator=g).to(torch.bfloat16),
        "adam_m": torch.randn(64, 24, generator=g) * 1e-3,
        "adam_v": torch.rand(64, 24, generator=g) * 1e-6,
        "step": torch.tensor(1234, dtype=torch.int64),
        "extra": {"epoch": 3, "name": "run-7", "lr": 0.5},
    }


def _placements():
    from torch.distributed.tensor import Replicate, Shard

    return {"w_rows": Shard(0), "w_cols": Shard(1), "bias": Replicate(), "adam_m": Shard(0), "adam_v": Shard(0)}


def state_for(mesh) -> dict:
    """The full state, as DTensors over `mesh` (plain tensors without one)."""
    full = full_state()
    if mesh is None:
        return full
    from torch.distributed.tensor import distribute_tensor

    placements = _placements()
    return {k: distribute_tensor(v, mesh, [placements[k]]) if k in placements else v for k, v in full.items()}


def zeroed(state: dict) -> dict:
    """The same structure with wrong values (DCP loads into the structure it is given)."""
    return {k: torch.zeros_like(v) if isinstance(v, torch.Tensor) else {name: None for name in v}
            for k, v in state.items()}


def check(state: dict) -> None:
    """Every tensor equals the full state's, byte for byte; the objects too."""
    want = full_state()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            got = value.full_tensor() if hasattr(value, "full_tensor") else value
            assert got.dtype == want[key].dtype and got.shape == want[key].shape, key
            assert got.contiguous().view(-1).view(torch.uint8).tolist() == \
                want[key].contiguous().view(-1).view(torch.uint8).tolist(), key
        else:
            assert value == want[key], key


def run(rank: int, world: int, port: int, steps: list) -> None:
    """Each (action, path) of `steps` in turn, on this rank of `world` (one process start pays
    for several steps: starting torch and gloo is most of a test's time)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world,))
        for action, path in steps:
            act(action, path, mesh, rank)
    finally:
        dist.destroy_process_group()


def act(action: str, path: str, mesh, rank: int = 0) -> None:
    if action == "save":
        dcp.save(state_for(mesh), storage_writer=llmcodec.dcp.FileSystemWriter(path, threads=1))
    elif action == "async-save":
        dcp.async_save(state_for(mesh), storage_writer=llmcodec.dcp.FileSystemWriter(path, threads=1)).result()
    elif action == "save-dies":  # rank 1 dies while writing its container
        if rank == 1:
            from llmcodec import api

            def die(*args, **kwargs):
                os._exit(3)
            api.save_file = die
        changed = state_for(mesh)
        changed["step"] = torch.tensor(9999)
        dcp.save(changed, storage_writer=llmcodec.dcp.FileSystemWriter(path, threads=1))
    elif action == "load":
        state = zeroed(state_for(mesh))
        dcp.load(state, storage_reader=llmcodec.dcp.FileSystemReader(path, threads=1))
        check(state)
    else:
        raise ValueError(action)
