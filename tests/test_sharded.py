"""An encoded checkpoint folder loads as one checkpoint: llmcodec.open, load_file, and the torch helpers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import files


def _shards(tmp_path, meta=None):
    rng = np.random.default_rng(3)
    tensors = {"embed": rng.standard_normal((64, 32)).astype(np.float32),
               "layer.0.w": rng.standard_normal((32, 32)).astype(np.float16),
               "layer.1.w": rng.standard_normal((32, 48)).astype(np.float32),
               "head": rng.standard_normal((48, 10)).astype(np.float32), "step": np.array(7, np.int64)}
    src = tmp_path / "ckpt"
    src.mkdir()
    names = list(tensors)
    meta = meta or [{"format": "pt", "shard": "1"}, {"format": "pt", "shard": "2"}]
    st_save({k: tensors[k] for k in names[:2]}, str(src / "model-00001-of-00002.safetensors"), metadata=meta[0])
    st_save({k: tensors[k] for k in names[2:]}, str(src / "model-00002-of-00002.safetensors"), metadata=meta[1])
    (src / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}}))
    return files.encode_file(src), tensors


def test_a_folder_opens_as_one_checkpoint(tmp_path):
    enc, tensors = _shards(tmp_path)
    with llmcodec.open(enc) as f:
        assert isinstance(f, llmcodec.ShardedFile)
        names = list(tensors)  # shard order, then each shard's file order (safetensors sorts its own)
        order = f.offset_keys()
        assert set(order[:2]) == set(names[:2]) and set(order[2:]) == set(names[2:])
        assert f.keys() == sorted(names)
        assert len(f) == len(tensors) and "head" in f and "nope" not in f
        assert f.metadata() == {"format": "pt"}  # what every shard says alike
        for name, want in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        assert f.get_slice("layer.1.w")[3:5].tobytes() == tensors["layer.1.w"][3:5].tobytes()
        assert f.entry("head").shape == (48, 10) and f.transform("head") is None
        assert [n for n, _ in f.items()] == f.offset_keys()
        order = f.offset_keys()
        assert f.chunks_decoded > 0
        with pytest.raises(llmcodec.TensorNotFoundError, match="nope"):
            f.get_tensor("nope")
    back = llmcodec.load_file(enc)
    assert list(back) == order
    assert all(back[k].tobytes() == v.tobytes() and back[k].dtype == v.dtype for k, v in tensors.items())


def test_max_memory_counts_every_shard(tmp_path):
    enc, tensors = _shards(tmp_path)
    total = sum(v.nbytes for v in tensors.values())
    assert len(llmcodec.load_file(enc, max_memory=total + (1 << 20))) == len(tensors)  # + headers, working
    with pytest.raises(llmcodec.LimitExceededError, match=f"over max_memory={total - 1}"):
        llmcodec.load_file(enc, max_memory=total - 1)


def test_a_name_in_two_shards_is_a_format_error(tmp_path):
    enc, tensors = _shards(tmp_path)
    llmcodec.save_file({"head": tensors["head"]}, enc / "extra.llmc")
    with pytest.raises(llmcodec.FormatError, match="'head' is in both"):
        llmcodec.open(enc)
    with pytest.raises(llmcodec.FormatError, match="'head' is in both"):
        llmcodec.load_file(enc)


def test_a_folder_without_containers_is_refused(tmp_path):
    with pytest.raises(llmcodec.InvalidArgumentError, match="no .llmc files"):
        llmcodec.open(tmp_path)
    with pytest.raises(llmcodec.InvalidArgumentError, match="no .llmc files"):
        llmcodec.load_file(tmp_path)


def test_torch_loads_a_model_from_a_folder_in_place(tmp_path):
    torch = pytest.importorskip("torch")
    import llmcodec.torch as lt

    src = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2))
    sd = src.state_dict()
    folder = tmp_path / "m.llmc"
    folder.mkdir()
    lt.save_file({k: sd[k] for k in ["0.weight", "0.bias"]}, folder / "a.llmc")
    lt.save_file({k: sd[k] for k in ["1.weight", "1.bias"]}, folder / "b.llmc")
    dst = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2))
    assert lt.load_model(dst, folder) == ([], [])
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in sd.items())
    assert set(lt.load_file(folder)) == set(sd)


def test_torch_load_model_rebuilds_quantized_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    import llmcodec.torch as lt

    src = torch.nn.Sequential(torch.nn.Linear(128, 64))
    st = tmp_path / "m.safetensors"
    st_save({k: v.numpy() for k, v in src.state_dict().items()}, str(st))
    files.transform_file(st, tmp_path / "q.llmc", "quantize", bits=8)
    dst = torch.nn.Sequential(torch.nn.Linear(128, 64))
    assert lt.load_model(dst, tmp_path / "q.llmc") == ([], [])
    with llmcodec.open(tmp_path / "q.llmc") as f:
        assert f.transform("0.weight") is not None
        want = f.get_tensor("0.weight")
    assert dst.state_dict()["0.weight"].numpy().tobytes() == want.tobytes()
