"""Checkpoint files: safetensors files and folders round-trip byte-identical through the API."""

import errno
import hashlib
import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import files, reference, stats
from llmcodec.container import ContainerReader
from llmcodec.errors import ChecksumError, FormatError


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weights(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "layer.0.weight": (rng.standard_normal((64, 48)) * 0.02).astype(ml_dtypes.bfloat16),
        "layer.0.bias": rng.standard_normal(48).astype(np.float32),
        "embed": (rng.standard_normal((100, 16))).astype(np.float16),
        "steps": np.array(12345, np.int64),
        "empty": np.zeros((0, 5), np.float32),
        "mask": rng.integers(0, 2, 33).astype(bool),
    }


def round_trip(tmp_path, src, **kwargs):
    enc = files.encode_file(src, tmp_path / "x.llmc", **kwargs)
    files.verify_file(enc)
    back = files.decode_file(enc, tmp_path / "back.safetensors")
    assert back.read_bytes() == src.read_bytes()
    return enc


def test_safetensors_file_round_trips_byte_identical(tmp_path):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src, metadata={"format": "pt", "author": "me"})
    enc = round_trip(tmp_path, src, chunk_size=1000)
    assert enc.stat().st_size < src.stat().st_size
    with ContainerReader(enc) as r:
        assert r.metadata == {"format": "pt", "author": "me"}


def test_many_tiny_tensors_and_zero_size(tmp_path):
    src = tmp_path / "tiny.safetensors"
    st_save({f"t{i}": np.full(i % 3, i % 256, np.uint8) for i in range(300)}, src)
    round_trip(tmp_path, src)


def _handmade(path, entries, data: bytes, header_pad: bytes = b"", trailer: bytes = b""):
    """A safetensors file written by hand: odd padding, holes, trailing bytes, key order."""
    header = json.dumps(entries).encode() + header_pad
    path.write_bytes(struct.pack("<Q", len(header)) + header + data + trailer)


def test_odd_header_padding_holes_and_trailing_bytes(tmp_path):
    src = tmp_path / "odd.safetensors"
    a = np.arange(10, dtype=np.float32).tobytes()
    b = np.arange(3, dtype=np.int16).tobytes()
    entries = {"b": {"dtype": "I16", "shape": [3], "data_offsets": [45, 51]},
               "__metadata__": {"x": "y"},
               "a": {"dtype": "F32", "shape": [10], "data_offsets": [0, 40]}}
    _handmade(src, entries, a + b"HOLE!" + b, header_pad=b"   \t ", trailer=b"tail")
    round_trip(tmp_path, src)


def test_unknown_dtype_is_kept_verbatim(tmp_path):
    src = tmp_path / "f4.safetensors"
    entries = {"q": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]},
               "w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    _handmade(src, entries, b"\x01\x02\x03\x04" + np.ones(2, np.float32).tobytes())
    round_trip(tmp_path, src)


@pytest.mark.parametrize("content,match", [
    (b"", "shorter than its 8-byte header size"),
    (b"hello world!", "does not fit"),
    (struct.pack("<Q", 4) + b"nope", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 40) + b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'[:40], "not JSON"),
])
def test_not_a_safetensors_file(tmp_path, content, match):
    src = tmp_path / "bad.safetensors"
    src.write_bytes(content)
    with pytest.raises(FormatError, match=match):
        files.encode_file(src, tmp_path / "bad.llmc")
    assert not (tmp_path / "bad.llmc").exists()


@pytest.mark.parametrize("entries,match", [
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, "12 expected"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, "past the end"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, "non-negative"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, "begin <= end"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, "overlap"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": 1}}, "__metadata__"),
])
def test_bad_safetensors_entries(tmp_path, entries, match):
    src = tmp_path / "bad.safetensors"
    _handmade(src, entries, bytes(8))
    with pytest.raises(FormatError, match=match):
        files.encode_file(src, tmp_path / "bad.llmc")


def test_duplicate_json_keys_are_refused(tmp_path):
    src = tmp_path / "dup.safetensors"
    entry = b'{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
    header = b'{"a":' + entry + b',"a":' + entry + b'}'
    src.write_bytes(struct.pack("<Q", len(header)) + header + b"\0")
    with pytest.raises(FormatError, match="twice"):
        files.encode_file(src, tmp_path / "dup.llmc")


def test_sharded_folder_becomes_a_folder(tmp_path):
    src = tmp_path / "ckpt"
    (src / "sub").mkdir(parents=True)
    w = weights()
    names = list(w)
    st_save({k: w[k] for k in names[:3]}, src / "model-00001-of-00002.safetensors")
    st_save({k: w[k] for k in names[3:]}, src / "model-00002-of-00002.safetensors")
    index = {"weight_map": {k: f"model-0000{1 + (i >= 3)}-of-00002.safetensors" for i, k in enumerate(names)}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text('{"hidden": 48}')
    (src / "sub" / "tokenizer.txt").write_text("a b c")
    enc = files.encode_file(src)
    assert enc == tmp_path / "ckpt.llmc"
    assert sorted(p.relative_to(enc).as_posix() for p in enc.rglob("*") if p.is_file()) == [
        "config.json", "model-00001-of-00002.llmc", "model-00002-of-00002.llmc",
        "model.safetensors.index.json", "sub/tokenizer.txt"]
    files.verify_file(enc)
    out = files.decode_file(enc, tmp_path / "restored")
    for p in src.rglob("*"):
        if p.is_file():
            assert sha(out / p.relative_to(src)) == sha(p), p


def test_container_of_arrays_decodes_to_safetensors(tmp_path):
    w = weights()
    llmcodec.save_file(w, tmp_path / "a.llmc", {"k": "v"})
    out = files.decode_file(tmp_path / "a.llmc")
    assert out == tmp_path / "a.safetensors"
    from safetensors import safe_open
    with safe_open(str(out), "np") as f:
        assert f.metadata() == {"k": "v"}
        for name, array in w.items():
            assert f.get_tensor(name).tobytes() == array.tobytes()


def test_corrupted_original_sha_is_caught(tmp_path):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    enc = files.encode_file(src, tmp_path / "m.llmc")

    def break_sha(h):
        h.source.original_sha256 = bytes(32)
    from test_format import _rebuild
    enc.write_bytes(_rebuild(enc, break_sha))
    with pytest.raises(ChecksumError, match="SHA-256"):
        files.verify_file(enc)
    with pytest.raises(ChecksumError):
        files.decode_file(enc, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_flipped_bit_anywhere_fails_verify(tmp_path):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    enc = files.encode_file(src, tmp_path / "m.llmc", chunk_size=512)
    data = enc.read_bytes()
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad.llmc"
    positions = sorted(set(rng.integers(0, len(data), 150).tolist()) | {0, 20, 39, 40, len(data) - 1})
    for pos in positions:
        flipped = bytearray(data)
        flipped[pos] ^= 1 << int(rng.integers(0, 8))
        bad.write_bytes(flipped)
        with pytest.raises(llmcodec.LlmcodecError):
            files.verify_file(bad)


def test_failed_encode_leaves_nothing_and_keeps_old_output(tmp_path, monkeypatch):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    dst = tmp_path / "m.llmc"
    dst.write_bytes(b"old")
    from llmcodec import codec

    def boom(*args):
        raise KeyboardInterrupt
    monkeypatch.setattr(codec, "encode_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        files.encode_file(src, dst, threads=1)
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.llmc", "m.safetensors"]


def test_stats_report_entropy_and_bits(tmp_path):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    enc = files.encode_file(src, tmp_path / "m.llmc")
    info = stats.file_stats(enc)
    by_name = {t.name: t for t in info["tensors"]}
    w = by_name["layer.0.weight"]
    raw = weights()["layer.0.weight"].view(np.uint16)
    exponent = ((raw >> 7) & 0xFF).astype(np.int64).ravel()
    assert w.planes[0].entropy == pytest.approx(stats.entropy_bits(np.bincount(exponent, minlength=256)))
    assert w.planes[0].bits_per_symbol < 8 and info["original_bytes"] == src.stat().st_size


class _FullDisk:
    """A file that takes `room` bytes, then fails every write as a full disk does."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


def _run_writer(kind: str, src, dst) -> None:
    if kind == "save_file":
        llmcodec.save_file(weights(), dst, chunk_size=512)
    elif kind == "encode_file":
        files.encode_file(src, dst, chunk_size=512)
    else:
        files.decode_file(src, dst)


@pytest.mark.parametrize("kind", ["save_file", "encode_file", "decode_file"])
@pytest.mark.parametrize("room", [0, 3000, "fsync"])
def test_full_disk_is_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch, kind, room):
    """The disk fills up at the first write, in the middle, or only when the data is flushed to
    it: an OSError (ENOSPC) naming the output, which keeps its old content, and no temporary file."""
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    if kind == "decode_file":
        src = files.encode_file(src, tmp_path / "m.llmc", chunk_size=512)
    dst = tmp_path / "out"
    dst.write_bytes(b"old")
    before = sorted(p.name for p in tmp_path.iterdir())
    if room == "fsync":
        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", fsync)
    else:
        fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, mode: _FullDisk(fdopen(fd, mode), room))
    with pytest.raises(OSError) as caught:
        _run_writer(kind, src, dst)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(dst)
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("where", ["encode_chunk", "serialize_header", "replace"])
def test_an_exception_anywhere_in_encode_removes_the_temporary_file(tmp_path, monkeypatch, where):
    src = tmp_path / "m.safetensors"
    st_save(weights(), src)
    dst = tmp_path / "m.llmc"
    dst.write_bytes(b"old")
    from llmcodec import codec, output
    from llmcodec import format as fmt

    def boom(*args):
        raise RuntimeError("boom")
    target = {"encode_chunk": codec, "serialize_header": fmt, "replace": output.os}[where]
    monkeypatch.setattr(target, where, boom)
    with pytest.raises(RuntimeError, match="boom"):
        files.encode_file(src, dst, chunk_size=512)
    assert dst.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.llmc", "m.safetensors"]


def test_a_tensor_saved_twice_is_stored_once(tmp_path):
    """Tied embeddings written under two names: the second costs only its header records."""
    rng = np.random.default_rng(4)
    emb = (rng.standard_normal((300, 64)) * 0.02).astype(np.float32)
    other = (rng.standard_normal((50, 64)) * 0.02).astype(np.float32)
    once, twice = tmp_path / "once.safetensors", tmp_path / "twice.safetensors"
    st_save({"embed": emb, "other": other}, str(once))
    st_save({"embed": emb, "other": other, "lm_head": emb.copy()}, str(twice))
    enc_once = llmcodec.encode_file(once, tmp_path / "once.llmc", chunk_size=16384)
    enc_twice = llmcodec.encode_file(twice, tmp_path / "twice.llmc", chunk_size=16384)
    extra = enc_twice.stat().st_size - enc_once.stat().st_size
    assert extra < 600  # a tensor record, its chunk records and segment, and a longer JSON header blob
    restored = llmcodec.decode_file(enc_twice, tmp_path / "back.safetensors")
    assert restored.read_bytes() == twice.read_bytes()
    assert reference.decode(enc_twice.read_bytes()).original == twice.read_bytes()
    with llmcodec.open(enc_twice) as f:
        assert f.get_tensor("lm_head").tobytes() == emb.tobytes()
