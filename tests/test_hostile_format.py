"""Hostile input, round 2 (issue 14), the format's side: format data apart from user metadata,
a writer that writes only what its reader reads, resources bounded at parse time, and every bad
input an LlmcodecError naming the field. Each test is written from the issue's description."""

import dataclasses
import json
import struct
import time
import tracemalloc
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import xxhash
from safetensors.numpy import load_file as st_load
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import codec, delta, dtypes, files, kernels, reference, stats
from llmcodec.sources import gguf as gguf_io
from llmcodec.sources import safetensors as safetensors_io
from llmcodec import format as fmt
from llmcodec.container import ContainerReader, ContainerWriter, TensorSource
from llmcodec.errors import (FormatError, InvalidArgumentError, LimitExceededError, LlmcodecError, TruncatedError,
                             UnsupportedFeatureError)

from conftest import legacy_transform_file
from test_delta_transform import build, pair

KEY = "llmcodec.transforms"
GOLDEN = Path(__file__).parent / "golden"


def st_file(path, tensors: dict, metadata: dict | None = None):
    st_save(tensors, str(path), metadata=metadata)
    return path


def raw_st(path, header: bytes, data: bytes = b""):
    """A safetensors file of a hand-written JSON header."""
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def encode_decode(tmp_path, src) -> bytes:
    """Encode, verify and decode `src`; the decoded bytes."""
    enc = files.encode_file(src, tmp_path / "x.llmc")
    files.verify_file(enc)
    return files.decode_file(enc, tmp_path / "back.bin").read_bytes()


def set_minor(data: bytes, minor: int) -> bytes:
    head = data[:10] + struct.pack("<H", minor) + data[12:36]
    return head + struct.pack("<I", fmt.checksum32(head)) + data[40:]


def constant_file(path, tensors: list, source=None, transforms=None, metadata=None, chunk: int = 64 << 20):
    """A valid file whose tensors, (name, dtype name, shape) each, are zeros in CONSTANT chunks
    of `chunk` bytes: a few header bytes stand for any number of decoded bytes."""
    entries = []
    for name, dtype_name, shape in tensors:
        dtype = dtypes.BY_NAME[dtype_name]
        entry = fmt.TensorEntry(name, dtype, tuple(shape), dtype.default_layout, chunk // dtype.itemsize)
        for i in range(-(-entry.elements // entry.chunk_elements)):
            n = entry.chunk_span(i)[1] * dtype.itemsize
            planes = [fmt.PlaneRef(fmt.METHOD_CONSTANT, 0, 0) for _ in entry.planes]
            entry.chunks.append(fmt.Chunk(fmt.PREAMBLE_SIZE, _zeros_checksum(n), planes))
        entries.append(entry)
    extra = {"transforms": transforms} if transforms else {}
    header = fmt.serialize_header(fmt.Header(metadata or {}, source or fmt.Source(), entries, **extra))
    path.write_bytes(fmt.build_preamble(fmt.PREAMBLE_SIZE, header) + header)
    return path


_ZEROS: dict = {}


def _zeros_checksum(n: int) -> int:
    if n not in _ZEROS:
        _ZEROS[n] = xxhash.xxh64_intdigest(bytes(n))
    return _ZEROS[n]


def peak_bytes(fn) -> int:
    """The peak of Python and numpy allocations while fn() runs (tracemalloc)."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- 1. format data apart from user metadata (spec 4.5, 10.2) --------------------------------------


@pytest.mark.parametrize("value", ["not json", json.dumps({"a": {"kind": "factorize", "dtype": "F32",
                                   "shape": [2, 2], "parts": {"u": "a", "v": "b"}, "rank": 1, "original_bytes": 16}})])
def test_a_safetensors_key_named_like_the_old_record_is_user_metadata(tmp_path, value):
    """A non-JSON value made the encoded file unopenable; a crafted record made load_file return
    other tensors than were stored."""
    tensors = {"a": np.arange(4, dtype=np.float32).reshape(2, 2), "b": np.ones((2, 2), np.float32)}
    src = st_file(tmp_path / "m.safetensors", tensors, {KEY: value, "other": "x"})
    assert encode_decode(tmp_path, src) == src.read_bytes()
    with ContainerReader(tmp_path / "x.llmc") as r:
        assert r.metadata == {KEY: value, "other": "x"} and r.transforms == {} and r.version == (1, 2)
    got = llmcodec.load_file(tmp_path / "x.llmc")
    assert {k: v.tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in tensors.items()}


def test_save_file_keeps_the_key_as_metadata_through_decode(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.int16)}
    llmcodec.save_file(tensors, tmp_path / "s.llmc", {KEY: "{broken", "k": "v"})
    with ContainerReader(tmp_path / "s.llmc") as r:
        assert r.metadata == {KEY: "{broken", "k": "v"}
    assert reference.decode((tmp_path / "s.llmc").read_bytes()).metadata == {KEY: "{broken", "k": "v"}
    out = files.decode_file(tmp_path / "s.llmc", tmp_path / "s.safetensors")
    with open(out, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        assert json.loads(f.read(n))["__metadata__"] == {KEY: "{broken", "k": "v"}
    assert st_load(str(out))["a"].tobytes() == tensors["a"].tobytes()


def test_open_returns_the_key_as_user_metadata(tmp_path):
    llmcodec.save_file({"a": np.zeros(2, np.uint8)}, tmp_path / "s.llmc", {KEY: "x"})
    with llmcodec.open(tmp_path / "s.llmc") as f:
        assert f.metadata() == {KEY: "x"}


def test_a_1_1_file_reads_the_key_as_a_record_only_for_arrays(tmp_path):
    """Spec 10.2: before 1.2, the entry is the record in a file of arrays (Source_Kind 0) only."""
    tensors = {"a": np.ones((2, 2), np.float32), "b": np.ones((2, 2), np.float32)}
    record = json.dumps({"w": {"kind": "factorize", "dtype": "F32", "shape": [2, 2], "parts": {"u": "a", "v": "b"},
                               "rank": 2, "original_bytes": 16, "relative_error": 0.0}})
    legacy_transform_file(tmp_path / "old.llmc", tensors, record)
    with ContainerReader(tmp_path / "old.llmc") as r:
        assert r.version == (1, 1) and list(r.transforms) == ["w"] and r.metadata == {}
    src = st_file(tmp_path / "m.safetensors", tensors, {KEY: record})
    files.encode_file(src, tmp_path / "x.llmc")
    old = tmp_path / "x11.llmc"
    old.write_bytes(set_minor((tmp_path / "x.llmc").read_bytes(), 1))
    with ContainerReader(old) as r:  # Source_Kind 1: user metadata, even in a 1.1 file
        assert r.transforms == {} and r.metadata == {KEY: record}


def test_transform_records_live_in_their_own_section(tmp_path):
    w = (np.random.default_rng(1).standard_normal((64, 128)) * 0.02).astype(np.float32)
    src = st_file(tmp_path / "m.safetensors", {"w": w}, {KEY: "user's own", "k": "v"})
    done = files.transform_file(src, tmp_path / "q.llmc", "quantize", bits=8)
    data = (tmp_path / "q.llmc").read_bytes()
    assert struct.unpack("<H", data[10:12])[0] == 2
    with ContainerReader(tmp_path / "q.llmc") as r:
        assert r.metadata == {KEY: "user's own", "k": "v"} and r.transforms == done
    ref = reference.decode(data)
    assert ref.tensors["w"].data == llmcodec.load_file(tmp_path / "q.llmc")["w"].tobytes()
    # a 1.1 reader sees bytes left over after the last tensor: it rejects the file, never misreads it
    with pytest.raises(FormatError, match="left over"):
        llmcodec.load_file(set_minor(data, 1))


def _edited_transform(tmp_path, edit) -> bytes:
    w = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32)
    files.transform_file(st_file(tmp_path / "m.safetensors", {"w": w}), tmp_path / "q.llmc", "quantize", bits=4)
    data = (tmp_path / "q.llmc").read_bytes()
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    header = fmt.parse_header(data[pre.header_offset:], pre, fmt.Limits())
    edit(header)
    raw = fmt.serialize_header(header)
    return fmt.build_preamble(pre.header_offset, raw) + data[40:pre.header_offset] + raw


@pytest.mark.parametrize("edit,error,match", [
    (lambda h: setattr(h.transforms["w"], "bits", 5), FormatError, "bits 5"),
    (lambda h: setattr(h.transforms["w"], "rank", 3), FormatError, "rank 3"),
    (lambda h: setattr(h.transforms["w"], "shape", [64, 256]), FormatError, "part q"),
    (lambda h: setattr(h.transforms["w"], "dtype", "F64"), FormatError, "Dtype 15 is not"),
    (lambda h: h.transforms.update(w2=h.transforms["w"]), FormatError, "part twice"),
    (lambda h: setattr(h.source, "kind", fmt.SOURCE_SAFETENSORS), FormatError, "Source_Kind"),
    (lambda h: setattr(h.transforms["w"], "shape", [1 << 40, 1 << 40]), LimitExceededError, "over the limit"),
])
def test_bad_transform_records_are_refused_by_both_decoders(tmp_path, edit, error, match):
    data = _edited_transform(tmp_path, edit)
    with pytest.raises(error, match=match):
        llmcodec.load_file(data)
    with pytest.raises(error):
        reference.decode(data)


@pytest.mark.parametrize("name", ["transforms.llmc", "transforms-1.1.llmc"])
def test_fast_and_reference_decoders_agree_on_every_transform_byte(name):
    """Each byte of the transform records flipped (checksums recomputed): both decoders accept
    exactly the same files, and rebuild the same tensors."""
    data = (GOLDEN / name).read_bytes()
    h_off = struct.unpack("<Q", data[16:24])[0]
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    header = fmt.parse_header(data[h_off:], pre, fmt.Limits())
    if header.transforms and pre.minor >= 2:  # the Transforms section: after the tensors
        span = range(h_off + len(fmt.serialize_header(fmt.Header(header.metadata, header.source, header.tensors))),
                     len(data))
    else:  # the metadata entry that holds the record: first in the header
        (key_length,) = struct.unpack("<I", data[h_off + 8:h_off + 12])
        (value_length,) = struct.unpack("<I", data[h_off + 12 + key_length:h_off + 16 + key_length])
        span = range(h_off, h_off + 16 + key_length + value_length)
    for pos in span:
        for mask in (0x01, 0x80):
            bad = bytearray(data)
            bad[pos] ^= mask
            bad = _reseal(bytes(bad))
            try:
                ref = {k: t.data for k, t in reference.decode(bad).tensors.items()}
            except LlmcodecError:
                ref = None
            try:
                fast = {k: v.tobytes() for k, v in llmcodec.load_file(bad).items()}
            except LlmcodecError:
                fast = None
            assert fast == ref, (pos, mask)


# --- 2. nothing decode_file writes is refused by safetensors ---------------------------------------


def test_a_tensor_named_metadata_is_refused_up_front(tmp_path):
    with pytest.raises(InvalidArgumentError, match="__metadata__"):
        llmcodec.save_file({"__metadata__": np.zeros(3, np.float32)}, tmp_path / "m.llmc")
    assert not (tmp_path / "m.llmc").exists()


def test_decode_refuses_what_safetensors_would_refuse(tmp_path):
    """A crafted container of arrays with a tensor named __metadata__, or of a GGUF block type:
    decode_file refuses it instead of writing a file safetensors rejects."""
    llmcodec.save_file({"_metadata__": np.zeros(3, np.float32)}, tmp_path / "m.llmc")
    data = (tmp_path / "m.llmc").read_bytes()
    at = data.index(b"_metadata__", 40)
    renamed = tmp_path / "r.llmc"
    renamed.write_bytes(_reseal(data[:at - 2] + struct.pack("<H", 12) + b"__metadata__" + data[at + 11:]))
    with pytest.raises(InvalidArgumentError, match="__metadata__"):
        files.decode_file(renamed, tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
    block = tmp_path / "b.llmc"
    constant_file(block, [("q", "GGML_Q8_0", (2, 32))])
    with pytest.raises(InvalidArgumentError, match="GGML_Q8_0"):
        files.decode_file(block, tmp_path / "out.safetensors")
    with pytest.raises(InvalidArgumentError, match="GGML_Q8_0"):  # and the writer never writes one
        with ContainerWriter(tmp_path / "w.llmc") as w:
            w.add_many([TensorSource("q", dtypes.BY_NAME["GGML_Q8_0"], (2, 32), bytes(68))])
            w.finish()


def _reseal(data: bytes) -> bytes:
    """`data` with its header checksum (and the preamble's) made valid again, its version kept."""
    h_off = struct.unpack("<Q", data[16:24])[0]
    header = data[h_off:]
    return fmt.build_preamble(h_off, header, struct.unpack("<H", data[10:12])[0]) + data[40:h_off] + header


def test_a_safetensors_header_safetensors_would_refuse_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(safetensors_io, "MAX_HEADER", 200)
    with pytest.raises(LimitExceededError, match="safetensors reads headers of 200 bytes at most"):
        llmcodec.save_file({"a": np.zeros(1, np.uint8)}, tmp_path / "m.llmc", {"k": "v" * 300})
    assert not (tmp_path / "m.llmc").exists()


def test_decoded_sizes_come_from_shapes_not_records(tmp_path):
    """A legacy record's original_bytes that disagrees with its shape is refused (it was written
    into the decoded safetensors header: verify and decode exited 0 with an unreadable output)."""
    tensors = {"u": np.ones((4, 1), np.float32), "v": np.ones((1, 4), np.float32)}
    record = {"w": {"kind": "factorize", "dtype": "F32", "shape": [4, 4], "parts": {"u": "u", "v": "v"}, "rank": 1,
                    "original_bytes": 64, "relative_error": 0.0}}
    legacy_transform_file(tmp_path / "ok.llmc", tensors, json.dumps(record))
    out = files.decode_file(tmp_path / "ok.llmc", tmp_path / "ok.safetensors")
    assert st_load(str(out))["w"].tobytes() == np.ones((4, 4), np.float32).tobytes()
    record["w"]["original_bytes"] = 60
    legacy_transform_file(tmp_path / "bad.llmc", tensors, json.dumps(record))
    with pytest.raises(FormatError, match="original_bytes 60 disagrees"):
        files.verify_file(tmp_path / "bad.llmc")


# --- 3. the writer writes nothing its reader refuses (spec 9) --------------------------------------


def test_what_safetensors_reads_encodes_and_decodes(tmp_path):
    """33 dimensions, a 17 MiB metadata value, 70,000 metadata entries: safetensors reads them,
    and so does llmcodec (they encoded, then failed verify with LimitExceededError)."""
    a = np.arange(2, dtype=np.float32).reshape((2,) + (1,) * 32)
    meta = {"big": "x" * (17 << 20), **{f"k{i}": str(i) for i in range(70_000)}}
    src = st_file(tmp_path / "m.safetensors", {"a": a}, meta)
    assert encode_decode(tmp_path, src) == src.read_bytes()
    assert llmcodec.load_file(tmp_path / "x.llmc")["a"].shape == a.shape


def test_what_no_default_reader_reads_is_refused_before_writing(tmp_path):
    src = raw_st(tmp_path / "d.safetensors", json.dumps(
        {"a": {"dtype": "U8", "shape": [1] * 65, "data_offsets": [0, 1]}}).encode(), b"\0")
    with pytest.raises(LimitExceededError, match="Ndim 65 is over the limit 64"):
        files.encode_file(src, tmp_path / "d.llmc")
    assert not (tmp_path / "d.llmc").exists()
    with pytest.raises(LimitExceededError, match="chunk_size 67108865 is over the limit"):
        llmcodec.save_file({"a": np.zeros(4, np.uint8)}, tmp_path / "c.llmc", chunk_size=(64 << 20) + 1)
    with pytest.raises(InvalidArgumentError, match="chunk_size must be a whole number"):
        llmcodec.save_file({"a": np.zeros(4, np.uint8)}, tmp_path / "c.llmc", chunk_size=1024.0)
    assert not (tmp_path / "c.llmc").exists()


FILES = {  # small files, and the limits just below what each needs
    "tensors": ({f"t{i}": np.zeros(2, np.uint8) for i in range(5)}, {}, {"tensor_count": 4}),
    "metadata": ({"a": np.zeros(2, np.uint8)}, {f"k{i}": "v" for i in range(5)}, {"metadata_count": 4}),
    "string": ({"a": np.zeros(2, np.uint8)}, {"k": "v" * 100}, {"string_size": 99}),
    "ndim": ({"a": np.zeros((1, 1, 1), np.uint8)}, {}, {"ndim": 2}),
    "tensor size": ({"a": np.zeros(100, np.uint8)}, {}, {"tensor_size": 99}),
    "chunk": ({"a": np.zeros(5000, np.uint8)}, {}, {"chunk_size": 1000}),
    "expansion": ({"a": np.zeros(1 << 20, np.uint8)}, {}, {"expansion": 100}),
    "header": ({"a": np.zeros(2, np.uint8)}, {"k": "v" * 100}, {"header_size": 100}),
}


@pytest.mark.parametrize("case", sorted(FILES))
def test_the_writer_refuses_exactly_what_the_reader_refuses(tmp_path, monkeypatch, case):
    """One source of truth: with the writer's limits tightened to what a reader was given, the
    writer refuses the file that reader refuses, with the same error, and writes nothing."""
    tensors, metadata, tight = FILES[case]
    chunk = 4096 if case == "chunk" else None
    llmcodec.save_file(tensors, tmp_path / "ok.llmc", metadata, chunk_size=chunk)
    with pytest.raises(LimitExceededError) as read:
        llmcodec.load_file(tmp_path / "ok.llmc", limits=fmt.Limits(**tight))
    monkeypatch.setattr(ContainerWriter, "limits", fmt.Limits(**tight))
    with pytest.raises(LimitExceededError) as write:
        llmcodec.save_file(tensors, tmp_path / "no.llmc", metadata, chunk_size=chunk)
    assert not (tmp_path / "no.llmc").exists()
    if case == "chunk":  # the chunk_size argument itself is refused, before any tensor
        assert "chunk_size 4096 is over the limit of 1000" in str(write.value)
    else:
        assert str(read.value).endswith(f": {write.value}"), (read.value, write.value)


# --- 4. resources at parse time (spec 9) -----------------------------------------------------------


def test_opening_does_not_format_a_name_per_chunk(tmp_path):
    """Two tensors with 65,535-byte names in 3000 chunks each: opening took a string of each name
    per chunk (2.0 GB for a 755 KB file in the issue); now memory stays proportional to the file."""
    names = ["a" * 65535, "b" * 65535]
    rng = np.random.default_rng(0)  # random chunks of 4 bytes: RAW, and no two records alike
    llmcodec.save_file({n: rng.integers(0, 256, 12_000, dtype=np.uint8) for n in names}, tmp_path / "n.llmc",
                       chunk_size=4)
    size = (tmp_path / "n.llmc").stat().st_size
    assert peak_bytes(lambda: ContainerReader(tmp_path / "n.llmc").close()) < 20 * size + (4 << 20)
    with pytest.raises(LimitExceededError, match="Name_Length can hold"):  # and one byte more is refused
        llmcodec.save_file({"c" * 65536: np.zeros(1, np.uint8)}, tmp_path / "long.llmc")


def _factorized_bomb(tmp_path, monkeypatch, rows: int, cols: int, rank: int):
    """A valid file of rank-`rank` factors of ones, in CONSTANT chunks: a few hundred bytes whose
    rebuild takes rows x cols x rank multiply-adds; written past the writer's work limit."""
    monkeypatch.setattr(ContainerWriter, "limits", fmt.Limits(work=1 << 62, expansion=1 << 62))
    u, v = np.ones((rows, rank), np.float32), np.ones((rank, cols), np.float32)
    record = fmt.Transform("factorize", "F32", [rows, cols], {"u": "w#u", "v": "w#v"}, rank=rank,
                           original_bytes=rows * cols * 4)
    with ContainerWriter(tmp_path / "f.llmc") as w:
        w.add_many([TensorSource("w#u", dtypes.BY_NAME["F32"], u.shape, u),
                    TensorSource("w#v", dtypes.BY_NAME["F32"], v.shape, v)])
        w.finish(transforms={"w": record})
    monkeypatch.undo()
    return tmp_path / "f.llmc"


def test_rebuild_work_is_bounded_by_the_file_size(tmp_path, monkeypatch):
    """A valid 621-byte factorized file took verify 4.5 minutes (rows x cols x rank)."""
    path = _factorized_bomb(tmp_path, monkeypatch, 4096, 4096, 512)
    size = path.stat().st_size
    assert size < 2000 and 4096 * 4096 * 512 > fmt.Limits().work * size
    start = time.monotonic()
    with pytest.raises(LimitExceededError, match="Limits.work"):
        files.verify_file(path)
    with pytest.raises(LimitExceededError, match="work limit"):
        reference.decode(path.read_bytes())
    assert time.monotonic() - start < 5
    with ContainerReader(path, limits=fmt.Limits(work=1 << 30)) as r:  # a caller who trusts it raises the limit
        assert list(r.transforms) == ["w"]
    with pytest.raises(LimitExceededError, match="work"):  # and the writer refuses to write it
        with ContainerWriter(tmp_path / "g.llmc") as w:
            w.add_many([TensorSource("w#u", dtypes.BY_NAME["F32"], (4096, 512), np.ones((4096, 512), np.float32)),
                        TensorSource("w#v", dtypes.BY_NAME["F32"], (512, 4096), np.ones((512, 4096), np.float32))])
            w.finish(transforms={"w": fmt.Transform("factorize", "F32", [4096, 4096], {"u": "w#u", "v": "w#v"},
                                                    rank=512, original_bytes=4096 * 4096 * 4)})
    assert not (tmp_path / "g.llmc").exists()


def test_an_impossible_rebuild_is_a_limit_error_not_a_memory_error(tmp_path, monkeypatch):
    """Allowed by raised limits, a rebuild of 2^42 bytes fails as LimitExceededError (was MemoryError)."""
    path = _factorized_bomb(tmp_path, monkeypatch, 1 << 21, 1 << 19, 1)
    raised = fmt.Limits(work=1 << 62, expansion=1 << 62)
    with pytest.raises(LimitExceededError, match="rebuilding tensor 'w'"):
        files.verify_file(path, limits=raised)


def test_segments_cannot_declare_far_more_than_the_file_holds(tmp_path):
    """Segments naming one 64 MiB tensor 1000 times: a 7 KB file declared 64 GiB (spec 9: expansion)."""
    source = fmt.Source(fmt.SOURCE_SAFETENSORS, 1000 << 26, bytes(32), [fmt.Segment(fmt.SEGMENT_TENSOR, 0)] * 1000)
    path = constant_file(tmp_path / "s.llmc", [("z", "U8", (64 << 20,))], source=source)
    assert path.stat().st_size < 8000
    with pytest.raises(LimitExceededError, match="Limits.expansion"):
        ContainerReader(path)
    with pytest.raises(LimitExceededError, match="expansion limit"):
        reference.decode(path.read_bytes())
    once = constant_file(tmp_path / "once.llmc", [("z", "U8", (64 << 20,))], source=fmt.Source(
        fmt.SOURCE_SAFETENSORS, 1 << 26, bytes(32), [fmt.Segment(fmt.SEGMENT_TENSOR, 0)]))
    ContainerReader(once).close()  # the most a valid file expands: 64 MiB per 22-byte chunk record


@pytest.mark.parametrize("dtype,shape,chunk", [("BF16", (3, 1000), 2000), ("GGML_Q4_0", (4, 64), 36)])
def test_statistics_of_constant_chunks_equal_decoding_them(tmp_path, monkeypatch, dtype, shape, chunk):
    path = constant_file(tmp_path / "s.llmc", [("z", dtype, shape)], chunk=chunk)
    with ContainerReader(path) as r:
        t = r.tensors[0]
        k, scalar = len(t.planes), t.layout != kernels.BLOCK_FIELDS
        counts, joint = np.zeros((k, 256), np.int64), np.zeros((k, 3, 257, 256), np.int64)
        for i in range(len(t.chunks)):  # what plane_statistics counts when it decodes a chunk
            n = t.chunk_span(i)[1]
            raw = r.read_chunks(t, i, i + 1)
            flat = np.empty_like(raw)
            kernels.split_fields(raw, t.dtype.itemsize, *codec.plane_geometry(t), flat)  # planes back to back
            planes = np.split(flat, np.cumsum([n * w for _, w in t.planes])[:-1])
            counts += np.array([kernels.byte_histogram(p) for p in planes])
            if scalar:
                kernels.context_counts(np.array(planes).reshape(k, n), t.shape[-1], joint)
            else:
                for j, p in enumerate(planes):
                    kernels.context_counts(p.reshape(1, -1), 0, joint[j:j + 1])
        if not scalar:  # block planes: only the "previous" context is counted
            joint[:, 1:] = 0
            joint[:, 1:, kernels.CONTEXT_NONE] = counts[:, None, :]
        monkeypatch.setattr(kernels, "decode_chunks", None)  # CONSTANT chunks are never decoded
        got = stats.plane_statistics(r, t, contexts=True)
    assert got[0].tobytes() == counts.tobytes() and got[1].tobytes() == joint.tobytes()


def test_statistics_of_a_constant_bomb_take_no_time(tmp_path):
    """A 2 KB file of 4 GiB in CONSTANT chunks: `info` decoded every plane (35 s for a 22 KB file)."""
    path = constant_file(tmp_path / "c.llmc", [("z", "BF16", (1 << 31,))])
    start = time.monotonic()
    with ContainerReader(path) as r:
        counts, joint = stats.plane_statistics(r, r.tensors[0], contexts=True)
    assert time.monotonic() - start < 2
    assert counts[:, 0].tolist() == [1 << 31] * 2 and joint[:, 0, 0, 0].tolist() == [(1 << 31) - 64] * 2


def test_statistics_work_is_bounded(tmp_path):
    llmcodec.save_file({"w": np.arange(10_000, dtype=np.float32)}, tmp_path / "w.llmc")
    with ContainerReader(tmp_path / "w.llmc", limits=fmt.Limits(work=1)) as r:
        with pytest.raises(LimitExceededError, match="Limits.work"):
            stats.plane_statistics(r, r.tensors[0])


@pytest.mark.parametrize("header", [
    lambda n: b'{"a":{"dtype":"F32","shape":[' + b"[]," * n + b'[]],"data_offsets":[0,0]}}',
    lambda n: b'{"a":{"dtype":"F32","shape":[' + b"{}," * n + b'{}],"data_offsets":[0,0]}}',
    lambda n: b'{"__metadata__":{"k":' + b"[" * n + b"]" * n + b"}}",
    lambda n: b"[" * n + b"]" * n,
])
def test_a_hostile_safetensors_header_costs_little_memory(tmp_path, header):
    """A 32 MiB JSON header cost 870 MB to parse (27x); nesting safetensors' schema does not allow
    is refused before any container is built."""
    src = raw_st(tmp_path / "h.safetensors", header(1 << 20))
    size = src.stat().st_size

    def parse():
        with pytest.raises(FormatError, match="nest deeper"):
            with open(src, "rb") as f:
                safetensors_io.read_layout(f, size, "h")
    assert peak_bytes(parse) < 5 * size + (1 << 20)  # was 20 to 30 times


@pytest.mark.parametrize("entries,factor", [
    (lambda n: {f"t{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}, 7),
    (lambda n: {"__metadata__": {f"k{i}": "" for i in range(4 * n)}}, 12),  # a dict of str is what it is
    (lambda n: {f"{i}": {} for i in range(4 * n)}, 6),
    (lambda n: {"a": {"dtype": "U8", "shape": [], "data_offsets": [0, 0], **{f"x{i}": 0 for i in range(4 * n)}}}, 12),
])
def test_parsing_a_safetensors_header_takes_memory_proportional_to_it(tmp_path, entries, factor):
    """Each entry is parsed alone and objects are built in C: about 5 times the header where
    json.loads with a pairs hook took 17 to 30 times."""
    header = json.dumps(entries(1 << 16)).encode()
    src = raw_st(tmp_path / "h.safetensors", header, bytes(1 << 16))
    size = src.stat().st_size

    def parse():
        with open(src, "rb") as f:
            try:
                safetensors_io.read_layout(f, size, "h")
            except FormatError:  # entries that are not tensors: refused after they are parsed
                pass
    assert peak_bytes(parse) < factor * len(header)


@pytest.mark.parametrize("header,match", [
    (b'{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "the entry of 'a' has a key twice"),
    (b'{"__metadata__":{"k":"1","k":"2"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
     "the entry of '__metadata__' has a key twice"),
    (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}',
     "key 'a' appears twice"),
    (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}} x', "extra data"),
    (b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]} "b":1}', "expecting ','"),
])
def test_duplicate_keys_and_broken_json_are_format_errors(tmp_path, header, match):
    src = raw_st(tmp_path / "h.safetensors", header, b"\0")
    with pytest.raises(FormatError, match=match):
        with open(src, "rb") as f:
            safetensors_io.read_layout(f, src.stat().st_size, "h")


def test_gguf_metadata_arrays_are_numpy_arrays(tmp_path):
    """A metadata array of numbers was a Python list, 8.5 times its size."""
    n = 1 << 22
    kv = gguf_string(b"arr") + struct.pack("<IIQ", 9, 0, n) + bytes(range(256)) * (n // 256)
    raw = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + kv
    path = tmp_path / "a.gguf"
    path.write_bytes(raw)
    layouts = []

    def parse():
        with open(path, "rb") as f:
            layouts.append(gguf_io.read_layout(f, len(raw), "a.gguf"))
    assert peak_bytes(parse) < 3 * n
    arr = layouts[0].metadata["arr"]
    assert isinstance(arr, np.ndarray) and arr.tobytes() == bytes(range(256)) * (n // 256)


def gguf_string(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


# --- 5. every bad input is one LlmcodecError naming the field ---------------------------------------


@pytest.mark.parametrize("header,match", [
    ('{"\\ud800":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "tensor name '\\\\ud800' holds a lone surrogate"),
    ('{"__metadata__":{"k":"\\udc00"},"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', "metadata value of 'k'"),
    ('{"a":{"dtype":"U8","shape":[0,36893488147419103232],"data_offsets":[0,0]}}', "shape must be"),  # 2^65
    ('{"a":{"dtype":"U8","shape":[' + "9" * 5000 + '],"data_offsets":[0,1]}}', "at most 20 digits"),
    ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + "[" * 100_000 + "]" * 100_000 + "}}",
     "nest deeper"),
    ('{"a":{"dtype":"U8","shape":[NaN],"data_offsets":[0,1]}}', "not JSON"),
])
def test_hostile_safetensors_headers_are_format_errors(tmp_path, header, match):
    src = raw_st(tmp_path / "h.safetensors", header.encode(), b"\0")
    with pytest.raises(FormatError, match=match):
        files.encode_file(src, tmp_path / "h.llmc")
    assert not (tmp_path / "h.llmc").exists()


def test_a_name_over_65535_bytes_is_refused_before_encoding(tmp_path):
    src = raw_st(tmp_path / "n.safetensors", json.dumps(
        {"n" * 70_000: {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}).encode(), b"\0")
    assert list(st_load(str(src))) == ["n" * 70_000]  # safetensors reads it
    with pytest.raises(LimitExceededError, match="tensor name of 70000 bytes"):
        files.encode_file(src, tmp_path / "n.llmc")
    assert not (tmp_path / "n.llmc").exists()


@pytest.mark.parametrize("tensors,metadata,error,match", [
    ({"\ud800": np.zeros(1, np.uint8)}, None, FormatError, "tensor name"),
    ({"a": np.zeros(1, np.uint8)}, {"k": "\udc00"}, FormatError, "metadata value of 'k'"),
    ({"a": np.zeros(1, np.uint8)}, {"\udc00": "v"}, FormatError, "metadata key"),
])
def test_save_file_refuses_text_utf8_cannot_hold(tmp_path, tensors, metadata, error, match):
    with pytest.raises(error, match=match):
        llmcodec.save_file(tensors, tmp_path / "t.llmc", metadata)
    assert not (tmp_path / "t.llmc").exists()


def test_a_gguf_tensor_name_that_is_not_utf8_is_a_format_error(tmp_path):
    info = gguf_string(b"\xff\xfe") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<IQ", 24, 0)
    raw = b"GGUF" + struct.pack("<IQQ", 3, 1, 0) + info
    raw += bytes(-len(raw) % 32) + bytes(4)
    path = tmp_path / "n.gguf"
    path.write_bytes(raw)
    with pytest.raises(FormatError, match="tensor 0 name .* is not valid UTF-8"):
        files.encode_file(path, tmp_path / "n.llmc")


def test_hostile_legacy_records_are_format_errors_naming_the_field(tmp_path):
    parts = {"a": np.ones((2, 1), np.float32), "b": np.ones((1, 2), np.float32)}
    base = {"kind": "factorize", "dtype": "F32", "shape": [2, 2], "parts": {"u": "a", "v": "b"}, "rank": 1,
            "original_bytes": 16, "relative_error": 0.0}
    for text, match in [(json.dumps({"w": base}).replace('"rank": 1', '"rank": ' + "9" * 5000), "integers"),
                        (json.dumps({"w": {**base, "relative_error": float("nan")}}), "relative_error"),
                        (json.dumps({"w": {**base, "shape": [2, 2.5]}}), "integers"),
                        ("[" * 100_000 + "]" * 100_000, "not a valid transform record")]:
        legacy_transform_file(tmp_path / "t.llmc", parts, text)
        with pytest.raises(FormatError, match=match):
            llmcodec.load_file(tmp_path / "t.llmc")
        with pytest.raises(FormatError):
            reference.decode((tmp_path / "t.llmc").read_bytes())


# --- 6. the Base section (spec 4.6, checks 48-50) ---------------------------------------------------
# The files of test_delta_transform.test_base_section_checks, read by the fast parser: the same
# error class as the reference decoder, and a message naming the field.

FT, BASE = pair("BF16", 12, 0)
STORED = delta.forward(delta.DIFF, FT, BASE, 2).tobytes()
ONE = [("w", "BF16", (12,), STORED, FT)]
TWO = ONE + [("v", "BF16", (12,), STORED, FT)]
SUMS = delta.chunk_checksums(BASE, 10).tolist()


def _bad_utf8(data: bytes, text: str) -> bytes:
    """`data` (built with `text` once in its header) with `text` replaced by as many bytes of invalid UTF-8."""
    raw = text.encode()
    assert data.count(raw) == 1
    return _reseal(data.replace(raw, b"\xff" * len(raw)))


def _file_count(data: bytes, count: int) -> bytes:
    """`data` (a file of build() with one Base_File "a") with its File_Count set to `count`."""
    at = data.index(struct.pack("<I", 1) + struct.pack("<H", 1) + b"a")
    return _reseal(data[:at] + struct.pack("<I", count) + data[at + 4:])


ONE_FILE = build(ONE, deltas={0: ("w", 1, BASE)}, files=[("a", 1, bytes(32))])
BASE_SECTIONS = {
    "unknown transform": (build(ONE, deltas={0: ("w", 3, BASE)}), UnsupportedFeatureError, "Transform 3"),
    "Delta_Count 0": (build(ONE, deltas={}), FormatError, "Delta_Count"),
    "index over Tensor_Count": (build(ONE, deltas={1: ("w", 1, SUMS)}), FormatError, "Tensor_Index 1"),
    "index decreasing": (build(TWO, deltas={1: ("w", 1, BASE), 0: ("w", 1, BASE)}), FormatError, "Tensor_Index 0"),
    "checksums truncated": (build(ONE, deltas={0: ("w", 1, SUMS[:2])}), TruncatedError, "Base_Checksums"),
    "path twice": (build(ONE, deltas={0: ("w", 1, BASE)}, files=[("a", 1, bytes(32))] * 2), FormatError,
                   "Path 'a' appears twice"),
    "Transform_Count 0 and no Base section": (build(ONE), FormatError, "Transform_Count is 0"),
    "no Transforms section": (build(ONE, deltas={0: ("w", 1, BASE)}, transforms_section=False), LimitExceededError,
                              "Transform_Count"),
    "minor version 2": (build(ONE, deltas={0: ("w", 1, BASE)}, minor=2), FormatError, "Transform_Count is 0"),
    "Base_Name not UTF-8": (_bad_utf8(build(ONE, base_name="base-name", deltas={0: ("w", 1, BASE)}), "base-name"),
                            FormatError, "Base_Name"),
    "Path not UTF-8": (_bad_utf8(build(ONE, deltas={0: ("w", 1, BASE)}, files=[("a-path", 1, bytes(32))]),
                                 "a-path"), FormatError, "Base_File 0 Path"),
    "base tensor name not UTF-8": (_bad_utf8(build(ONE, deltas={0: ("wbase", 1, BASE)}), "wbase"), FormatError,
                                   "Delta of tensor 'w' Name"),
    "File_Count over the limit": (_file_count(ONE_FILE, 2**32 - 1), LimitExceededError, "File_Count 4294967295"),
}


@pytest.mark.parametrize("case", sorted(BASE_SECTIONS))
def test_a_bad_base_section_is_refused_by_both_decoders_naming_the_field(case):
    data, error, match = BASE_SECTIONS[case]
    with pytest.raises(error, match=match) as fast:
        ContainerReader(data)
    with pytest.raises(error) as slow:
        reference.decode(data, {"w": BASE})
    assert fast.type is slow.type is error


def test_two_deltas_may_name_one_base_tensor():
    data = build(TWO, deltas={0: ("w", 1, BASE), 1: ("w", 1, BASE)})
    got = llmcodec.load_file(data, base={"w": np.frombuffer(BASE, ml_dtypes.bfloat16)})
    assert got["w"].tobytes() == got["v"].tobytes() == FT == reference.decode(data, {"w": BASE}).tensors["v"].data


def _with_delta_on(name: str, minor: int, data: bytes | None = None) -> bytes:
    """`data` (default transforms.llmc) with tensor `name` made a delta (DIFF against a base tensor
    of the same name) and a Base section after its Transforms section; Minor_Version `minor`."""
    data = (GOLDEN / "transforms.llmc").read_bytes() if data is None else data
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    header = fmt.parse_header(data[pre.header_offset:], pre, fmt.Limits())
    t = next(t for t in header.tensors if t.name == name)
    t.delta = fmt.Delta(name, delta.DIFF, [0] * len(t.chunks))
    header.base = fmt.BaseRecord("base")
    raw = fmt.serialize_header(header)
    return fmt.build_preamble(pre.header_offset, raw, minor) + data[40:pre.header_offset] + raw


def test_a_transforms_part_cannot_be_a_delta():
    """Check 48: the plain tensor 'norm' may be a delta beside the transforms; a part may not."""
    with ContainerReader(_with_delta_on("norm", 3)) as r:
        assert [t.name for t in r.tensors if t.delta] == ["norm"] and r.transforms
    bad = _with_delta_on("w#q", 3)
    with pytest.raises(FormatError, match="'w#q': a coded blob or a transform's part cannot be a delta"):
        ContainerReader(bad)
    with pytest.raises(FormatError):
        reference.decode(bad, {"w#q": b""})


def test_a_coded_blob_cannot_be_a_delta(tmp_path):
    """Check 48: the hidden U8 tensor that holds a large safetensors header (a coded blob)."""
    src = st_file(tmp_path / "m.safetensors", {"w": np.ones(4, np.float32)}, {"k": "v" * (64 << 10)})
    data = files.encode_file(src, tmp_path / "m.llmc").read_bytes()
    with ContainerReader(data) as r:
        (blob,) = [t.name for t in r.all_tensors if t.hidden]
    bad = _with_delta_on(blob, 3, data)
    with pytest.raises(FormatError, match="a coded blob or a transform's part cannot be a delta"):
        ContainerReader(bad)
    with pytest.raises(FormatError):
        reference.decode(bad, {blob: b""})


def test_a_1_2_file_with_bytes_after_its_transforms_is_refused():
    """A Base section after real transforms, in a file of minor version 2: bytes left over (a 1.2
    reader never reads the deltas' planes as the tensors' own)."""
    data = _with_delta_on("norm", 2)
    with pytest.raises(FormatError, match="bytes left over after the last transform"):
        ContainerReader(data)
    with pytest.raises(FormatError):
        reference.decode(data)


def _delta_count(data: bytes, count: int) -> bytes:
    """`data` (a file of build() with one Delta, of tensor 0) with its Delta_Count set to `count`."""
    at = data.rindex(struct.pack("<IIH", 1, 0, 1) + b"w")
    return _reseal(data[:at] + struct.pack("<I", count) + data[at + 4:])


def _chunk_count_bomb() -> bytes:
    """A delta tensor of 2^40 bytes in 16384 chunks of 64 MiB whose chunk records and Base_Checksums
    are missing: the header declares far more than it holds."""
    header = fmt.Header({}, fmt.Source(), [fmt.TensorEntry("w", dtypes.BY_NAME["U8"], (1 << 40,), 0, 1 << 26)],
                        base=fmt.BaseRecord("base"))
    header.tensors[0].delta = fmt.Delta("w", delta.DIFF, [])
    tensors = fmt.serialize_header(dataclasses.replace(header, base=None))
    raw = tensors[:-8] + struct.pack("<Q", 1 << 14) + fmt.serialize_header(header)[len(tensors):]  # Chunk_Count
    return fmt.build_preamble(fmt.PREAMBLE_SIZE, raw, 3) + raw


@pytest.mark.parametrize("data,error,match", [
    (_file_count(ONE_FILE, 1 << 22), TruncatedError,
     "header ends inside Base_File"),  # at the limit: read one record at a time, until the header ends
    (_delta_count(build(ONE, deltas={0: ("w", 1, BASE)}), 2**32 - 1), TruncatedError, "Delta 1 Tensor_Index"),
    (_chunk_count_bomb(), TruncatedError, "16384 chunks do not fit"),
], ids=["File_Count", "Delta_Count", "Chunk_Count"])
def test_base_section_count_bombs_are_refused_before_allocating(data, error, match):
    with pytest.raises(error, match=match):
        ContainerReader(data)
    with pytest.raises(error):
        reference.decode(data, {"w": BASE})

    def parse():
        with pytest.raises(error):
            ContainerReader(data)
    start = time.perf_counter()
    assert peak_bytes(parse) < 1 << 20
    assert time.perf_counter() - start < 2
