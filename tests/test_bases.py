"""Bases for delta coding: the same tensors and bytes whatever holds the base (a safetensors file,
a folder, an .llmc file, an encoded folder); ranges checked; a changed file is an error."""

import hashlib
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import bases, files

TENSORS = {
    "emb": (np.random.default_rng(0).standard_normal((300, 64)) * 0.02).astype(np.float32),
    "norm": np.ones(64, np.float16),
    "ids": np.arange(10, dtype=np.int64),
    "empty": np.zeros((0, 3), np.float32),
}


@pytest.fixture(scope="module")
def holders(tmp_path_factory):
    """The same base held five ways."""
    tmp = tmp_path_factory.mktemp("bases")
    one = tmp / "base.safetensors"
    st_save(TENSORS, str(one))
    folder = tmp / "base"
    (folder / "sub").mkdir(parents=True)
    st_save({k: TENSORS[k] for k in ("emb", "empty")}, str(folder / "a.safetensors"))
    st_save({k: TENSORS[k] for k in ("norm", "ids")}, str(folder / "sub" / "b.safetensors"))
    (folder / "config.json").write_text("{}")
    llmc = files.encode_file(one, tmp / "base.llmc", chunk_size=4096)
    enc_folder = files.encode_file(folder, tmp / "base-enc", chunk_size=4096)
    return {"file": one, "folder": folder, "llmc": llmc, "encoded folder": enc_folder}


@pytest.mark.parametrize("kind", ["file", "folder", "llmc", "encoded folder"])
def test_every_holder_gives_the_same_tensors_and_bytes(holders, kind):
    with bases.open_base(holders[kind]) as base:
        assert sorted(base.names()) == sorted(TENSORS)
        for name, array in TENSORS.items():
            t = base.tensor(name)
            assert (t.shape, t.nbytes) == (array.shape, array.nbytes)
            raw = array.tobytes()
            assert base.read(name, 0, len(raw)).tobytes() == raw
            assert base.read(name, len(raw) // 3, len(raw) // 2).tobytes() == raw[len(raw) // 3:len(raw) // 2]
        assert base.tensor("nope") is None


@settings(max_examples=40, deadline=None)
@given(start=st.integers(0, TENSORS["emb"].nbytes), length=st.integers(0, 20000))
def test_encoded_ranges_cross_chunks_exactly(holders, start, length):
    raw = TENSORS["emb"].tobytes()
    stop = min(start + length, len(raw))
    with bases.open_base(holders["llmc"]) as base:
        assert base.read("emb", start, stop).tobytes() == raw[start:stop]


@pytest.mark.parametrize("kind", ["file", "llmc"])
def test_checksums_and_identity_agree_across_holders(holders, kind):
    import xxhash

    with bases.open_base(holders[kind]) as base:
        assert base.checksum("emb") == xxhash.xxh64(TENSORS["emb"].tobytes()).intdigest()
        name, sha = base.identity()
    assert name == "base.safetensors"
    assert sha == hashlib.sha256(holders["file"].read_bytes()).digest()


@pytest.mark.parametrize("start,stop", [(-1, 4), (0, 10**9), (5, 4), (0.0, 4)])
def test_ranges_outside_the_tensor_are_refused(holders, start, stop):
    with bases.open_base(holders["file"]) as base:
        with pytest.raises(llmcodec.InvalidArgumentError, match="bytes"):
            base.read("emb", start, stop)
        with pytest.raises(llmcodec.TensorNotFoundError):
            base.read("nope", 0, 0)


def test_a_name_in_two_files_of_a_base_folder_is_an_error(tmp_path):
    (tmp_path / "b").mkdir()
    st_save({"w": np.zeros(3, np.float32)}, str(tmp_path / "b" / "one.safetensors"))
    st_save({"w": np.ones(3, np.float32)}, str(tmp_path / "b" / "two.safetensors"))
    with pytest.raises(llmcodec.FormatError, match="both"):
        bases.open_base(tmp_path / "b")


def test_a_base_file_cut_short_is_an_error_not_zeros(tmp_path):
    path = tmp_path / "base.safetensors"
    st_save(TENSORS, str(path))
    with bases.open_base(path) as base:
        os.truncate(path, 200)  # inside the header's data: every tensor now reads short
        with pytest.raises(llmcodec.FormatError, match="shorter"):
            base.read("emb", 0, TENSORS["emb"].nbytes)


def test_a_base_must_be_a_path(tmp_path):
    with pytest.raises(llmcodec.InvalidArgumentError):
        bases.open_base(b"bytes")
