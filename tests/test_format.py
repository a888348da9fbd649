"""Every check of spec section 8 raises its own LlmcodecError subclass, naming the field."""

import struct

import numpy as np
import pytest

import llmcodec
from llmcodec import format as fmt
from llmcodec.container import ContainerReader
from llmcodec.errors import (
    ChecksumError,
    FormatError,
    LimitExceededError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)


@pytest.fixture
def valid(tmp_path):
    """A small valid file: a compressible fp32 tensor in 4 chunks, a constant, an empty tensor."""
    w = (np.random.default_rng(0).standard_normal(4000) * 0.02).astype(np.float32)
    path = tmp_path / "v.llmc"
    llmcodec.save_file({"w": w, "c": np.full(10, 3, np.int16), "e": np.zeros((0, 4), np.uint8)}, path,
                       {"k": "v"}, chunk_size=4096)
    return path


def _load(data: bytes, **limits):
    return llmcodec.load_file(data, limits=fmt.Limits(**limits)) if limits else llmcodec.load_file(data)


def _rebuild(path, mutate) -> bytes:
    """Re-write `path` after `mutate(header)`, with valid checksums, so deeper checks are reached."""
    data = path.read_bytes()
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    header = fmt.parse_header(data[pre.header_offset:], pre, fmt.Limits())
    mutate(header)
    raw = fmt.serialize_header(header)
    body = data[40:pre.header_offset]
    return fmt.build_preamble(pre.header_offset, raw) + body + raw


def _with_preamble(data: bytes, **fields) -> bytes:
    names = ["magic", "major", "minor", "flags", "h_off", "h_len", "h_sum"]
    values = dict(zip(names, struct.unpack("<8sHHIQQI", data[:36])))
    values.update(fields)
    head = struct.pack("<8sHHIQQI", *values.values())
    return head + struct.pack("<I", fmt.checksum32(head)) + data[40:]


def test_valid_file_loads(valid):
    got = llmcodec.load_file(valid)
    assert got["c"].tolist() == [3] * 10 and got["e"].shape == (0, 4)


def test_empty_and_short_files_are_truncated(tmp_path, valid):
    empty = tmp_path / "empty.llmc"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedError, match="empty"):
        llmcodec.load_file(empty)
    with pytest.raises(TruncatedError, match="preamble"):
        _load(valid.read_bytes()[:39])


def test_wrong_magic(valid):
    with pytest.raises(FormatError, match="not an llmcodec file"):
        _load(b"PK\x03\x04" + valid.read_bytes()[4:])


def test_preamble_checksum(valid):
    data = bytearray(valid.read_bytes())
    data[10] ^= 1  # minor version, under the preamble checksum
    with pytest.raises(ChecksumError, match="Preamble_Checksum"):
        _load(bytes(data))


def test_unknown_major_version_rejected_unknown_minor_accepted(valid):
    data = valid.read_bytes()
    with pytest.raises(UnsupportedVersionError, match="Major_Version is 2"):
        _load(_with_preamble(data, major=2))
    assert _load(_with_preamble(data, minor=7))["c"].tolist() == [3] * 10


def test_reserved_flags(valid):
    with pytest.raises(FormatError, match="Flags"):
        _load(_with_preamble(valid.read_bytes(), flags=4))


def test_header_bounds(valid):
    data = valid.read_bytes()
    h_off, h_len = struct.unpack("<QQ", data[16:32])
    with pytest.raises(TruncatedError, match="header ends at byte"):
        _load(data[:-1])
    with pytest.raises(FormatError, match="bytes after the header"):
        _load(data + b"\0")
    with pytest.raises(LimitExceededError, match="Header_Length"):
        _load(data, header_size=h_len - 1)
    with pytest.raises(FormatError, match="points into the preamble"):
        _load(_with_preamble(data, h_off=12))
    with pytest.raises(FormatError, match="below the minimum"):
        _load(_with_preamble(data, h_len=3, h_off=len(data) - 3))


def test_header_checksum(valid):
    data = bytearray(valid.read_bytes())
    data[-1] ^= 0x40
    with pytest.raises(ChecksumError, match="Header_Checksum"):
        _load(bytes(data))


def test_chunk_checksum(valid):
    data = bytearray(valid.read_bytes())
    with ContainerReader(valid) as r:
        chunk = r.by_name["w"].chunks[1]
        raw_plane = next(i for i, p in enumerate(chunk.planes) if p.method == fmt.METHOD_RAW)
        offset = chunk.offset + sum(p.length for p in chunk.planes[:raw_plane])
    data[offset + 5] ^= 1
    with pytest.raises(ChecksumError, match="'w' chunk 1: stored checksum"):
        _load(bytes(data))


def test_corrupt_rans_stream_is_caught(valid):
    data = bytearray(valid.read_bytes())
    with ContainerReader(valid) as r:
        chunk = r.by_name["w"].chunks[0]
    assert chunk.planes[0].method == fmt.METHOD_RANS0
    start = chunk.offset + chunk.planes[0].length - 10  # inside the words
    data[start] ^= 0xFF
    with pytest.raises((FormatError, ChecksumError), match="'w' chunk 0"):
        _load(bytes(data))


def _first_chunk(h):
    return h.tensors[0].chunks[0]


@pytest.mark.parametrize("mutate,error,match", [
    (lambda h: setattr(h.tensors[1], "name", "w"), FormatError, "appears twice"),
    (lambda h: setattr(_first_chunk(h), "offset", 10**9), FormatError, "outside the data section"),
    (lambda h: setattr(_first_chunk(h), "offset", 20), FormatError, "outside the data section"),
    (lambda h: setattr(h.tensors[0].chunks[1], "offset", _first_chunk(h).offset + 1), FormatError, "overlap"),
    (lambda h: setattr(_first_chunk(h).planes[0], "method", 9), UnsupportedFeatureError, "unknown Method 9"),
    (lambda h: setattr(_first_chunk(h).planes[0], "parameter", 1), FormatError, "reserved Parameter"),
    (lambda h: setattr(h.tensors[1].chunks[0].planes[0], "length", 3), FormatError, "CONSTANT plane has Length 3"),
    (lambda h: setattr(h.tensors[0], "chunk_elements", 999), FormatError, "Chunk_Count 4, expected"),
    (lambda h: setattr(h.tensors[0], "shape", (2, 2**62)), LimitExceededError, "over the limit"),
    (lambda h: setattr(h.tensors[0], "layout", 1), FormatError, "does not fit dtype F32"),
    (lambda h: setattr(h.tensors[0], "layout", 7), UnsupportedFeatureError, "unknown Layout 7"),
    (lambda h: setattr(h.tensors[0], "chunk_elements", 0), FormatError, "Chunk_Elements is 0"),
])
def test_header_field_checks(valid, mutate, error, match):
    with pytest.raises(error, match=match):
        _load(_rebuild(valid, mutate))


def test_raw_plane_length_must_match(valid):
    def mutate(h):
        for c in h.tensors[0].chunks:
            for p in c.planes:
                if p.method == fmt.METHOD_RAW:
                    p.length -= 1
                    return
    with pytest.raises(FormatError, match="RAW plane of 1024 bytes has Length 1023"):
        _load(_rebuild(valid, mutate))


def test_unknown_dtype_id(valid):
    data = _rebuild(valid, lambda h: None)
    raw = bytearray(data)
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    name_at = raw.index(b"\x01\x00w", pre.header_offset)  # Name_Length 1, "w"; then Dtype
    raw[name_at + 3] = 200
    head = fmt.build_preamble(pre.header_offset, bytes(raw[pre.header_offset:]))
    with pytest.raises(UnsupportedFeatureError, match="unknown dtype id 200"):
        _load(head + bytes(raw[40:]))


@pytest.mark.parametrize("limit,match", [
    ({"tensor_count": 2}, "Tensor_Count 3"),
    ({"metadata_count": 0}, "Metadata_Count 1"),
    ({"string_size": 0}, "Key_Length"),
    ({"chunk_size": 1000}, "chunks of 4096 bytes"),
    ({"tensor_size": 100}, "over the limit 100"),
    ({"ndim": 1}, "Ndim 2"),
])
def test_limits_are_enforced(valid, limit, match):
    with pytest.raises(LimitExceededError, match=match):
        _load(valid.read_bytes(), **limit)


def test_errors_name_the_file(valid, tmp_path):
    bad = tmp_path / "bad.llmc"
    bad.write_bytes(valid.read_bytes()[:-1])
    with pytest.raises(TruncatedError, match="bad.llmc"):
        llmcodec.load_file(bad)


def test_every_truncation_fails(valid):
    data = valid.read_bytes()
    for cut in range(0, len(data), 7):
        with pytest.raises(llmcodec.LlmcodecError):
            _load(data[:cut])


def test_header_round_trips_through_serialisation(valid):
    data = valid.read_bytes()
    assert _rebuild(valid, lambda h: None) == data
