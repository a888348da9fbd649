"""GGUF files end to end: encode, decode byte-identical, verify, info, and lazy loading of blocks."""

import hashlib

import numpy as np
import pytest

import llmcodec
from llmcodec import dtypes, files, reference, stats

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType

# (name, ggml type, dims as in the file: dims[0] is the row length)
TENSORS = [
    ("tok.q8_0", Q.Q8_0, (64, 400)),
    ("blk.q4_k", Q.Q4_K, (256, 90)),
    ("blk.q6_k", Q.Q6_K, (512, 30)),
    ("blk.q5_0", Q.Q5_0, (96, 50)),
    ("blk.q4_1", Q.Q4_1, (32, 70)),
    ("blk.iq2_xxs", Q.IQ2_XXS, (256, 2)),
    ("norm.f32", Q.F32, (48,)),
    ("emb.f16", Q.F16, (16, 8)),
]


def _blocks(ggml_type, dims, rng) -> np.ndarray:
    """Quantized-looking blocks: small fp16 scales, skewed quants; rows of bytes in numpy order."""
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    shape = (*dims[:0:-1], dims[0] // block * size)
    if block == 1:
        values = rng.standard_normal(shape[:-1] + (dims[0],)) * 0.02
        return values.astype(np.float32 if ggml_type == Q.F32 else np.float16)
    data = np.clip(rng.normal(128, 20, shape), 0, 255).astype(np.uint8)
    rows = data.reshape(-1, size)
    rows[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes() * rows.shape[0], np.uint8).reshape(-1, 2)
    return data


@pytest.fixture
def gguf_file(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "model.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(20_000)])  # a header over 64 KiB: coded
    data = {}
    for name, ggml_type, dims in TENSORS:
        data[name] = _blocks(ggml_type, dims, rng)
        w.add_tensor(name, data[name], raw_dtype=ggml_type if ggml_type not in (Q.F32, Q.F16) else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, data


def test_gguf_round_trip_is_byte_identical(gguf_file, tmp_path):
    path, _ = gguf_file
    enc = llmcodec.encode_file(path, tmp_path / "model.llmc", chunk_size=4096)
    assert enc.stat().st_size < path.stat().st_size
    files.verify_file(enc)
    (tmp_path / "out").mkdir()
    default = llmcodec.decode_file(enc.rename(tmp_path / "out" / "model.llmc"))
    assert default == tmp_path / "out" / "model.gguf"  # the original's suffix
    restored = default
    assert hashlib.sha256(restored.read_bytes()).digest() == hashlib.sha256(path.read_bytes()).digest()


def test_gguf_tensors_keep_their_type_shape_and_blocks(gguf_file, tmp_path):
    path, data = gguf_file
    enc = llmcodec.encode_file(path, tmp_path / "model.llmc", chunk_size=4096)
    with llmcodec.open(enc) as f:
        for name, ggml_type, dims in TENSORS:
            entry = f.entry(name)
            assert entry.shape == tuple(reversed(dims))
            got = f.get_tensor(name)
            assert got.tobytes() == data[name].tobytes(), name
            if gguf.GGML_QUANT_SIZES[ggml_type][0] > 1:
                assert entry.dtype.name == f"GGML_{ggml_type.name}"
                assert got.dtype == np.uint8 and got.shape == data[name].shape  # rows of block bytes
        rows = f.get_slice("blk.q4_k")[2:5]
        assert rows.tobytes() == data["blk.q4_k"][2:5].tobytes()


def test_gguf_block_fields_are_planes(gguf_file, tmp_path):
    path, _ = gguf_file
    enc = llmcodec.encode_file(path, tmp_path / "model.llmc", chunk_size=1 << 20)
    by_name = {t.name: t for t in stats.file_stats(enc)["tensors"]}
    q4k = by_name["blk.q4_k"]
    assert q4k.layout == "block_fields" and len(q4k.planes) == len(dtypes.BY_NAME["GGML_Q4_K"].fields) == 6
    assert q4k.planes[0].method_counts == {"constant": 1}  # the low byte of the shared fp16 scale
    assert len(by_name["blk.iq2_xxs"].planes) == 1  # a type without a field table: its blocks as bytes
    (header,) = [t for name, t in by_name.items() if name.startswith("[bytes 0:")]  # the GGUF header, coded
    assert header.dtype == "U8" and header.ratio < 0.5
    with llmcodec.open(enc) as f:
        assert header.name not in f.keys() and len(f) == len(TENSORS)


def test_reference_decoder_reads_block_types(gguf_file, tmp_path):
    path, data = gguf_file
    enc = llmcodec.encode_file(path, tmp_path / "model.llmc", chunk_size=4096)
    decoded = reference.decode(enc.read_bytes())
    assert decoded.original == path.read_bytes()
    for name, _, _ in TENSORS:
        assert decoded.tensors[name].data == data[name].tobytes(), name


def test_folder_of_gguf_shards_is_encoded_and_decoded_back_to_gguf(gguf_file, tmp_path):
    path, _ = gguf_file
    src = tmp_path / "split"
    src.mkdir()
    shards = [src / "m-00001-of-00002.gguf", src / "m-00002-of-00002.gguf"]
    shards[0].write_bytes(path.read_bytes())
    shards[1].write_bytes(path.read_bytes())
    (src / "README.md").write_text("a split model")
    enc = files.encode_file(src)
    assert sorted(p.name for p in enc.iterdir()) == ["README.md", "m-00001-of-00002.llmc", "m-00002-of-00002.llmc"]
    assert (enc / "m-00001-of-00002.llmc").stat().st_size < 0.9 * path.stat().st_size
    files.verify_file(enc)
    out = files.decode_file(enc, tmp_path / "back")
    for p in [*shards, src / "README.md"]:
        assert hashlib.sha256((out / p.name).read_bytes()).digest() == hashlib.sha256(p.read_bytes()).digest()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in src.iterdir())
