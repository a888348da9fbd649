"""The GGUF reader: layouts of files written by the gguf package, and one test per error."""

import io
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcodec import ggml
from llmcodec.sources import gguf as gguf_io
from llmcodec.errors import (
    FormatError,
    LimitExceededError,
    LlmcodecError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
V = gguf.GGUFValueType

# (name, ggml type, dims as in the file: dims[0] is the row length)
TENSORS = [
    ("f32", Q.F32, (7, 3)),
    ("f16", Q.F16, (5,)),
    ("bf16", Q.BF16, (4, 2)),
    ("q8_0", Q.Q8_0, (64, 3)),
    ("q4_0", Q.Q4_0, (32, 2)),
    ("q4_1", Q.Q4_1, (96,)),
    ("q5_0", Q.Q5_0, (32, 1, 2)),
    ("q5_1", Q.Q5_1, (32,)),
    ("q4_k", Q.Q4_K, (256, 2)),
    ("q5_k", Q.Q5_K, (512,)),
    ("q6_k", Q.Q6_K, (256, 1, 1, 2)),
    ("iq2_xxs", Q.IQ2_XXS, (256,)),
    ("i32", Q.I32, (3,)),
]

METADATA = {  # key -> (value, value type, element type of an array)
    "u8": (200, V.UINT8, None),
    "i8": (-100, V.INT8, None),
    "u16": (60000, V.UINT16, None),
    "i16": (-30000, V.INT16, None),
    "u32": (4_000_000_000, V.UINT32, None),
    "i32": (-2_000_000_000, V.INT32, None),
    "f32": (0.1, V.FLOAT32, None),
    "bool": (True, V.BOOL, None),
    "str": ("héllo", V.STRING, None),
    "u64": (2**64 - 1, V.UINT64, None),
    "i64": (-(2**63), V.INT64, None),
    "f64": (0.1, V.FLOAT64, None),
    "a.u8": ([1, 2, 255], V.ARRAY, V.UINT8),
    "a.i16": ([-1, 2], V.ARRAY, V.INT16),
    "a.f32": ([1.5, -2.25], V.ARRAY, V.FLOAT32),
    "a.bool": ([True, False, True], V.ARRAY, V.BOOL),
    "a.str": (["a", "", "ünï"], V.ARRAY, V.STRING),
    "a.u64": ([0, 2**64 - 1], V.ARRAY, V.UINT64),
    "a.f64": ([0.1], V.ARRAY, V.FLOAT64),
    "a.nested": ([[1, 2], [3]], V.ARRAY, None),
}


def quant_bytes(ggml_type, dims, rng) -> np.ndarray:
    """Random bytes for a tensor of `dims` (file order), in numpy order with rows of bytes, for GGUFWriter."""
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    return rng.integers(0, 256, (*dims[:0:-1], dims[0] // block * size), dtype=np.uint8)


def write_with_gguf(path, alignment=None, tensors=TENSORS, metadata=METADATA) -> dict[str, bytes]:
    """A GGUF file written by the gguf package; returns each tensor's bytes."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "test")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, (value, vtype, sub_type) in metadata.items():
        w.add_key_value(key, value, vtype, sub_type)
    data = {}
    for name, ggml_type, dims in tensors:
        raw = quant_bytes(ggml_type, dims, rng)
        w.add_tensor(name, raw, raw_dtype=ggml_type)
        data[name] = raw.tobytes()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return data


def read(path) -> gguf_io.GgufLayout:
    with open(path, "rb") as f:
        return gguf_io.read_layout(f, path.stat().st_size, path.name)


# --- hand-made files, for the errors -------------------------------------------------------------


def s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key, vtype: int, payload: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + payload


def info(name, dims, ggml_type: int, offset: int) -> bytes:
    return (s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<I", ggml_type) + struct.pack("<Q", offset))


def handmade(kvs=(), infos=(), data=b"", version=3, magic=b"GGUF", alignment=32, counts=None) -> bytes:
    """magic, version, counts, `kvs`, `infos`, padding to `alignment` (if any infos), `data`."""
    n_tensors, n_kv = counts or (len(infos), len(kvs))
    head = magic + struct.pack("<IQQ", version, n_tensors, n_kv) + b"".join(kvs) + b"".join(infos)
    if infos:
        head += b"\0" * (-len(head) % alignment)
    return head + data


def parse(raw: bytes) -> gguf_io.GgufLayout:
    return gguf_io.read_layout(io.BytesIO(raw), len(raw), "t.gguf")


def two_f32(offsets=(0, 32), sizes=(4, 4)) -> bytes:
    """Two F32 tensors `a` and `b` of `sizes` elements at `offsets` in a 64-byte data section."""
    return handmade(infos=[info("a", (sizes[0],), 0, offsets[0]), info("b", (sizes[1],), 0, offsets[1])],
                    data=bytes(range(64)))


# --- layouts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alignment", [None, 64, 1])
def test_tensors_of_every_kind_written_by_gguf(tmp_path, alignment):
    path = tmp_path / "m.gguf"
    data = write_with_gguf(path, alignment)
    layout = read(path)
    assert layout.version == 3
    assert layout.alignment == (alignment or 32)
    assert layout.data_start % layout.alignment == 0
    assert [t.name for t in layout.tensors] == [name for name, _, _ in TENSORS]  # written in this order
    raw = path.read_bytes()
    for t, (name, ggml_type, dims) in zip(layout.tensors, TENSORS):
        assert (t.ggml_type, t.type_name, t.dims) == (ggml_type, ggml_type.name, dims)
        assert t.begin % layout.alignment == 0
        assert raw[t.begin:t.end] == data[name]
    # the gguf package's own reader agrees
    ref = {t.name: t for t in gguf.GGUFReader(path).tensors}
    for t in layout.tensors:
        r = ref[t.name]
        assert (t.begin, t.end - t.begin, t.ggml_type, t.dims) == (r.data_offset, r.n_bytes, r.tensor_type,
                                                                    tuple(int(d) for d in r.shape))


def test_metadata_of_every_value_type(tmp_path):
    path = tmp_path / "m.gguf"
    write_with_gguf(path, tensors=[])
    meta = read(path).metadata
    assert meta.pop("general.architecture") == "test"
    assert list(meta) == list(METADATA)
    for key, (value, vtype, sub_type) in METADATA.items():
        if V.FLOAT32 in (vtype, sub_type) or V.FLOAT64 in (vtype, sub_type):  # compare the bits
            fmt = "<f4" if V.FLOAT32 in (vtype, sub_type) else "<f8"
            assert np.array(meta[key], fmt).tobytes() == np.array(value, fmt).tobytes(), key
        elif vtype == V.ARRAY and sub_type not in (V.STRING, None):  # numbers: a numpy array of the file's bytes
            assert isinstance(meta[key], np.ndarray) and meta[key].tolist() == value, key
        else:
            assert plain(meta[key]) == value and type(meta[key]) is type(value), key


def plain(value):
    """A metadata value with its numpy arrays as lists."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    return [plain(v) for v in value] if isinstance(value, list) else value


def test_empty_array_deep_nesting_and_bytes_that_are_not_utf8():
    layout = parse(handmade(kvs=[
        kv("empty", 9, struct.pack("<IQ", 4, 0)),
        kv("deep", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 1) + b"\x07"),
        kv("raw", 8, s(b"\xff\xfe")),
        kv("flag", 7, b"\x02"),
    ]))
    assert {k: plain(v) for k, v in layout.metadata.items()} == {"empty": [], "deep": [[[7]]], "raw": "\udcff\udcfe",
                                                                  "flag": True}
    assert layout.metadata["raw"].encode("utf-8", "surrogateescape") == b"\xff\xfe"


def test_version_2_reads_as_3():
    raw = two_f32()
    assert parse(raw).tensors == parse(raw[:4] + struct.pack("<I", 2) + raw[8:]).tensors


def test_no_tensors_no_data_section_padding():
    raw = handmade(kvs=[kv("k", 0, b"\x01")])
    layout = parse(raw)
    assert (layout.data_start, layout.tensors) == (len(raw), [])


def test_tensors_are_sorted_by_position_with_holes_and_empty_ones():
    raw = handmade(infos=[info("late", (2,), 0, 32), info("empty", (0, 3), 0, 32), info("early", (1,), 0, 0)],
                   data=bytes(48))
    layout = parse(raw)
    start = layout.data_start
    assert [(t.name, t.begin - start, t.end - start) for t in layout.tensors] == [
        ("early", 0, 4), ("empty", 32, 32), ("late", 32, 40)]


def test_custom_alignment_pads_the_header():
    raw = handmade(kvs=[kv("general.alignment", 4, struct.pack("<I", 256))],
                   infos=[info("a", (1,), 0, 256)], alignment=256, data=bytes(260))
    layout = parse(raw)
    assert (layout.alignment, layout.data_start, layout.tensors[0].begin) == (256, 256, 512)


# --- type table and block fields ----------------------------------------------------------------


def test_type_table_matches_the_gguf_package():
    for qtype, (block, size) in gguf.GGML_QUANT_SIZES.items():
        assert ggml.GGML_TYPES[int(qtype)] == (qtype.name, block, size)
    assert {i: ggml.GGML_TYPES[i] for i in (31, 32, 33)} == {
        31: ("Q4_0_4_4", 32, 18), 32: ("Q4_0_4_8", 32, 18), 33: ("Q4_0_8_8", 32, 18)}


@pytest.mark.parametrize("type_name", ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                       "Q4_K", "Q5_K", "Q6_K", "IQ2_XXS", "I64"])
def test_block_fields_tile_the_block(type_name):
    pos = 0
    for field in ggml.block_fields(type_name):
        assert field.offset == pos and field.length > 0
        pos += field.length
    assert pos == ggml.GGML_TYPES[ggml.GGML_TYPE_IDS[type_name]].type_size


def test_block_fields_follow_ggml_structs():
    fields = lambda name: [tuple(f) for f in ggml.block_fields(name)]
    assert fields("Q8_0") == [("d", 0, 2), ("qs", 2, 32)]
    assert fields("Q4_1") == [("d", 0, 2), ("m", 2, 2), ("qs", 4, 16)]
    assert fields("Q5_1") == [("d", 0, 2), ("m", 2, 2), ("qh", 4, 4), ("qs", 8, 16)]
    assert fields("Q4_K") == [("d", 0, 2), ("dmin", 2, 2), ("scales", 4, 12), ("qs", 16, 128)]
    assert fields("Q5_K") == [("d", 0, 2), ("dmin", 2, 2), ("scales", 4, 12), ("qh", 16, 32), ("qs", 48, 128)]
    assert fields("Q6_K") == [("ql", 0, 128), ("qh", 128, 64), ("scales", 192, 16), ("d", 208, 2)]
    assert fields("BF16") == [("value", 0, 2)]
    assert fields("IQ4_XS") == [("block", 0, 136)]


def test_block_fields_of_an_unknown_type():
    with pytest.raises(UnsupportedFeatureError, match="Q9_9"):
        ggml.block_fields("Q9_9")


# --- errors: one test each -----------------------------------------------------------------------


def expect(error, match, raw):
    with pytest.raises(error, match=match):
        parse(raw)


def test_bad_magic():
    expect(FormatError, "magic b'GGML', expected b'GGUF'", handmade(magic=b"GGML"))


@pytest.mark.parametrize("version", [0, 1, 4])
def test_unsupported_version(version):
    expect(UnsupportedVersionError, f"GGUF version {version} is not supported", handmade(version=version))


def test_big_endian_file():
    expect(UnsupportedVersionError, "big-endian", handmade(version=3 << 24))


@pytest.mark.parametrize("size", [0, 3, 7, 15, 23])
def test_header_cut_short(size):
    expect(TruncatedError, "needs", handmade()[:size])


def test_tensor_count_larger_than_the_file():
    expect(TruncatedError, "tensor_count is 1000", handmade(counts=(1000, 0)))


def test_metadata_count_larger_than_the_file():
    expect(TruncatedError, "metadata_kv_count is 5", handmade(kvs=[kv("k", 0, b"\0")], counts=(0, 5)))


def test_string_longer_than_the_file():
    raw = handmade(kvs=[kv("name", 8, struct.pack("<Q", 10**6) + b"abc")])
    expect(TruncatedError, "metadata 'name': string length 1000000 runs past the end", raw)


def test_string_length_near_2_to_64():
    raw = handmade(kvs=[struct.pack("<Q", 2**64 - 1) + b"key" + bytes(8)])
    expect(TruncatedError, "metadata key 0: string length 18446744073709551615", raw)


def test_array_longer_than_the_file():
    raw = handmade(kvs=[kv("arr", 9, struct.pack("<IQ", 12, 2**40) + bytes(16))])
    expect(TruncatedError, "metadata 'arr' array length is 1099511627776", raw)


def test_string_array_longer_than_the_file():
    raw = handmade(kvs=[kv("arr", 9, struct.pack("<IQ", 8, 3) + s("a") + s("b") + bytes(7))])
    expect(TruncatedError, r"metadata 'arr'\[2\] length", raw)


def test_arrays_nested_too_deep():
    raw = handmade(kvs=[kv("deep", 9, struct.pack("<IQ", 9, 1) * 20)])
    expect(LimitExceededError, "nested deeper than 16", raw)


@pytest.mark.parametrize("payload, what", [(struct.pack("<I", 13), "value type 13"),
                                           (struct.pack("<IIQ", 9, 99, 0), "array element type 99")])
def test_unknown_value_type(payload, what):
    expect(UnsupportedFeatureError, f"metadata 'k': unknown {what}", handmade(kvs=[s("k") + payload]))


def test_empty_key():
    expect(FormatError, "metadata key 0 is empty", handmade(kvs=[kv("", 0, b"\0")]))


def test_duplicate_key():
    raw = handmade(kvs=[kv("k", 0, b"\0"), kv("k", 0, b"\1")])
    expect(FormatError, "metadata key 'k' appears twice", raw)


def test_alignment_of_the_wrong_type():
    raw = handmade(kvs=[kv("general.alignment", 10, struct.pack("<Q", 32))])
    expect(FormatError, "'general.alignment' must be UINT32, found UINT64", raw)


@pytest.mark.parametrize("alignment", [0, 48])
def test_alignment_not_a_power_of_two(alignment):
    raw = handmade(kvs=[kv("general.alignment", 4, struct.pack("<I", alignment))])
    expect(FormatError, f"must be a power of two, found {alignment}", raw)


def test_more_than_4_dims():
    raw = handmade(infos=[info("t", (1, 1, 1, 1, 1), 0, 0)], data=bytes(4))
    expect(FormatError, "tensor 't': n_dims is 5, at most 4", raw)


def test_dims_of_2_to_63_elements():
    raw = handmade(infos=[info("t", (2**32, 2**31), 0, 0)])
    expect(FormatError, "tensor 't': dims .* 2\\^63", raw)


@pytest.mark.parametrize("type_id", [4, 5, 36, 42, 2**32 - 1])
def test_unknown_ggml_type(type_id):
    raw = handmade(infos=[info("t", (32,), type_id, 0)], data=bytes(64))
    expect(UnsupportedFeatureError, f"tensor 't': unknown ggml type id {type_id}", raw)


def test_row_not_a_multiple_of_the_block():
    raw = handmade(infos=[info("t", (100, 2), int(Q.Q4_K), 0)], data=bytes(1024))
    expect(FormatError, "row length dims\\[0\\] = 100 is not a multiple of Q4_K's block size 256", raw)


def test_offset_not_aligned():
    expect(FormatError, "tensor 'b': offset 4 is not a multiple of the alignment 32", two_f32((0, 4)))


def test_duplicate_tensor_name():
    raw = handmade(infos=[info("t", (1,), 0, 0), info("t", (1,), 0, 32)], data=bytes(64))
    expect(FormatError, "tensor name 't' appears twice", raw)


def test_tensor_past_the_end():
    expect(TruncatedError, r"tensor 'b': bytes \[\d+, \d+\) run past the end", two_f32(sizes=(4, 9)))


def test_overlapping_tensors():
    expect(FormatError, "tensors 'a' .* and 'b' .* overlap", two_f32(sizes=(9, 4)))


def test_data_section_past_the_end():
    raw = handmade(infos=[info("t", (0,), 0, 0)])
    expect(TruncatedError, "data section starts at byte 64", raw[:-1])


# --- any damage is an LlmcodecError, never a crash ------------------------------------------------


def test_every_prefix_of_a_file_is_refused(tmp_path):
    path = tmp_path / "m.gguf"
    write_with_gguf(path, tensors=TENSORS[:3], metadata={k: METADATA[k] for k in ("u8", "a.str", "a.nested")})
    raw = path.read_bytes()
    for n in range(read(path).tensors[-1].end):  # the padding after the last tensor is not needed
        with pytest.raises(FormatError):
            parse(raw[:n])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_headers_raise_llmcodec_errors_only(data):
    raw = bytearray(two_f32())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(4, len(raw) - 65))] = data.draw(st.integers(0, 255))
    try:
        parse(bytes(raw))
    except LlmcodecError:
        pass
