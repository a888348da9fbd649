"""llmcodec as torch.distributed.checkpoint's storage: multi-process saves and loads on gloo over
loopback, resharded 2 -> 1, 1 -> 2, 2 -> 4 and 4 -> 2, bit-exact; a rank that dies mid-save leaves
the previous checkpoint whole; a damaged container is an LlmcodecError, not wrong weights."""

import pickle
import socket
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed.checkpoint as dcp  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import llmcodec  # noqa: E402
import llmcodec.dcp  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import dcp_worker  # noqa: E402


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(world: int, action: str, path) -> None:
    """`action` on `world` ranks (gloo, 127.0.0.1), or in this process without one for world 1."""
    if world == 1:
        dcp_worker.act(action, str(path), None)
        return
    mp.start_processes(dcp_worker.run, args=(world, _port(), action, str(path)), nprocs=world, join=True,
                       start_method="spawn")


@pytest.mark.parametrize("saved,loaded", [(2, 1), (2, 2), (1, 2), (4, 2), (2, 4)])
def test_save_and_load_resharded_bit_exact(tmp_path, saved, loaded):
    spawn(saved, "save", tmp_path)
    containers = sorted(p.name for p in tmp_path.glob("*.llmc"))
    assert len(containers) == saved and (tmp_path / ".metadata").exists()
    spawn(loaded, "load", tmp_path)


def test_async_save(tmp_path):
    spawn(2, "async-save", tmp_path)
    spawn(1, "load", tmp_path)


def test_a_rank_dying_mid_save_leaves_the_previous_checkpoint_whole(tmp_path):
    spawn(2, "save", tmp_path)
    before = sorted(p.name for p in tmp_path.glob("*.llmc"))
    with pytest.raises(Exception):  # noqa: B017 - rank 1 exits, rank 0 fails with it
        spawn(2, "save-dies", tmp_path)
    spawn(1, "load", tmp_path)  # the old step (1234), not a mix
    spawn(2, "save", tmp_path)  # a complete save afterwards removes what the failed one left
    after = sorted(p.name for p in tmp_path.glob("*.llmc"))
    assert len(after) == 2 and not set(after) & set(before)


def test_the_checkpoint_is_smaller_than_dcp_plain(tmp_path):
    spawn(1, "save", tmp_path / "llmc")
    dcp.save(dcp_worker.full_state(), storage_writer=dcp.FileSystemWriter(tmp_path / "plain"))
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(tmp_path / "llmc") < size(tmp_path / "plain")


def test_a_damaged_container_is_an_error_not_wrong_weights(tmp_path):
    spawn(1, "save", tmp_path)
    (container,) = tmp_path.glob("*.llmc")
    data = bytearray(container.read_bytes())
    data[200] ^= 0x10  # inside the first tensor's coded bytes
    container.write_bytes(bytes(data))
    with pytest.raises(CheckpointException) as info:  # DCP wraps each rank's error
        spawn(1, "load", tmp_path)
    errors = [exc for exc, _ in info.value.failures.values()]
    assert errors and all(isinstance(e, llmcodec.LlmcodecError) and container.name in str(e) for e in errors)


def test_metadata_names_each_items_container_and_tensor(tmp_path):
    spawn(2, "save", tmp_path)
    metadata = pickle.loads((tmp_path / ".metadata").read_bytes())
    infos = list(metadata.storage_data.values())
    assert all(isinstance(i, llmcodec.dcp.StorageInfo) for i in infos)
    assert {i.relative_path for i in infos} == {p.name for p in tmp_path.glob("*.llmc")}
    with llmcodec.open(tmp_path / infos[0].relative_path) as f:
        assert infos[0].tensor in f


def test_the_golden_checkpoint_loads(tmp_path):
    """tests/golden/dcp: written by an earlier llmcodec (make_dcp_golden.py); it must keep loading."""
    golden = Path(__file__).parent / "golden" / "dcp"
    assert len(list(golden.glob("__0_*.llmc"))) == 1
    dcp_worker.act("load", str(golden), None)
