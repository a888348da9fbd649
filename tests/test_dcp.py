"""llmcodec as torch.distributed.checkpoint's storage: multi-process saves and loads on gloo over
loopback, resharded 1 -> 2, 2 -> 1, 2 -> 4 and 4 -> 1, bit-exact; a rank that dies mid-save leaves
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


def spawn(world: int, *steps) -> None:
    """The (action, path) `steps` on `world` ranks (gloo, 127.0.0.1), or in this process without a
    process group for world 1."""
    steps = [(action, str(path)) for action, path in steps]
    if world == 1:
        for action, path in steps:
            dcp_worker.act(action, path, None)
        return
    mp.start_processes(dcp_worker.run, args=(world, _port(), steps), nprocs=world, join=True, start_method="spawn")


def test_save_and_load_on_1_2_and_4_ranks_resharded_bit_exact(tmp_path):
    """Saved on 1, 2 and 4 ranks; each loaded on other counts: 1 -> 2, 2 -> 2, 2 -> 1, 2 -> 4, 4 -> 1."""
    one, two, four = tmp_path / "one", tmp_path / "two", tmp_path / "four"
    spawn(1, ("save", one))
    spawn(2, ("save", two), ("load", two), ("load", one))
    assert len(list(two.glob("*.llmc"))) == 2 and (two / ".metadata").exists()
    spawn(1, ("load", two))
    spawn(4, ("load", two), ("save", four))
    assert len(list(four.glob("*.llmc"))) == 4
    spawn(1, ("load", four))


def test_async_save(tmp_path):
    spawn(1, ("async-save", tmp_path), ("load", tmp_path))


def test_a_rank_dying_mid_save_leaves_the_previous_checkpoint_whole(tmp_path):
    spawn(1, ("save", tmp_path))
    before = sorted(p.name for p in tmp_path.glob("*.llmc"))
    with pytest.raises(Exception):  # noqa: B017 - rank 1 exits, rank 0 fails with it
        spawn(2, ("save-dies", tmp_path))
    # rank 0 may have written its new container before it was stopped; the old .metadata names
    # the old one: loading gives the old step, not a mix
    spawn(1, ("load", tmp_path))
    spawn(1, ("save", tmp_path))  # a complete save removes what the failed one left
    after = sorted(p.name for p in tmp_path.glob("*.llmc"))
    assert len(after) == 1 and not set(after) & set(before)


def test_the_checkpoint_is_smaller_than_dcp_plain(tmp_path):
    spawn(1, ("save", tmp_path / "llmc"))
    dcp.save(dcp_worker.full_state(), storage_writer=dcp.FileSystemWriter(tmp_path / "plain"))
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(tmp_path / "llmc") < size(tmp_path / "plain")


def test_a_damaged_container_is_an_error_not_wrong_weights(tmp_path):
    spawn(1, ("save", tmp_path))
    (container,) = tmp_path.glob("*.llmc")
    data = bytearray(container.read_bytes())
    data[200] ^= 0x10  # inside the first tensor's coded bytes
    container.write_bytes(bytes(data))
    with pytest.raises(CheckpointException) as info:  # DCP wraps each rank's error
        spawn(1, ("load", tmp_path))
    errors = [exc for exc, _ in info.value.failures.values()]
    assert errors and all(isinstance(e, llmcodec.LlmcodecError) and container.name in str(e) for e in errors)


def test_metadata_names_each_items_container_and_tensor(tmp_path):
    spawn(1, ("save", tmp_path))
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
