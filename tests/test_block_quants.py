"""Layout BLOCK_QUANTS (spec 5, 1.4): GGUF Q5_0/Q5_1/Q5_K/Q6_K blocks with each 5/6-bit quant
joined into one byte. The joined bytes are ggml's own quants, in ggml's order (checked against the
gguf package's dequantization); split and merge are inverse on any block; files round-trip
byte-identical at level max, which picks the layout where it codes smaller."""

import hashlib

import numpy as np
import pytest

import llmcodec
from llmcodec import dtypes, kernels, reference, stats
from llmcodec.container import ContainerReader

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
JOINED = {"Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "Q5_K": Q.Q5_K, "Q6_K": Q.Q6_K}
F16_ONE, F16_ZERO = list(np.float16(1).tobytes()), [0, 0]


def unit_blocks(name: str, quants: np.ndarray) -> np.ndarray:
    """Blocks whose dequantized values are their quants minus a fixed offset: d = 1, mins 0, every
    sub-block scale 1; `quants` (block_size per block) put in with merge_quants."""
    d = dtypes.BY_NAME[f"GGML_{name}"]
    blocks = np.zeros((quants.size // d.block_size, d.itemsize), np.uint8)
    if name in ("Q5_0", "Q5_1"):
        blocks[:, 0:2] = F16_ONE  # d; Q5_1's m (bytes 2-3) stays 0
    elif name == "Q5_K":
        blocks[:, 0:2], blocks[:, 2:4] = F16_ONE, F16_ZERO  # d, dmin
        blocks[:, 4:8], blocks[:, 12:16] = 1, 1  # 6-bit scales 1, mins 0 (ggml's get_scale_min_k4)
    else:  # Q6_K
        blocks[:, 192:208], blocks[:, 208:210] = 1, F16_ONE  # int8 scales 1, d
    flat = blocks.reshape(-1)
    assert kernels.merge_quants(quants, d.itemsize, flat)
    return flat


@pytest.mark.parametrize("name", sorted(JOINED))
def test_joined_quants_are_ggmls_quants_in_ggmls_order(name):
    d = dtypes.BY_NAME[f"GGML_{name}"]
    rng = np.random.default_rng(5)
    quants = rng.integers(0, 1 << d.quant_bits, 40 * d.block_size).astype(np.uint8)
    values = gguf.quants.dequantize(unit_blocks(name, quants).reshape(40, d.itemsize), JOINED[name]).reshape(-1)
    offset = {"Q5_0": 16, "Q5_1": 0, "Q5_K": 0, "Q6_K": 32}[name]
    assert np.array_equal(values, quants.astype(np.float32) - offset)


@pytest.mark.parametrize("name", sorted(JOINED))
def test_split_and_merge_are_inverse_on_any_block(name):
    d = dtypes.BY_NAME[f"GGML_{name}"]
    rng = np.random.default_rng(6)
    raw = rng.integers(0, 256, 300 * d.itemsize, dtype=np.uint8)
    quants = np.empty(300 * d.block_size, np.uint8)
    kernels.split_quants(raw, d.itemsize, quants)
    assert quants.max() < 1 << d.quant_bits
    back = rng.integers(0, 256, raw.size, dtype=np.uint8)  # merge writes every quant bit, keeps the rest
    side = [np.arange(o, o + w) for o, w in d.quant_planes[:-1]]
    keep = np.concatenate(side) if side else np.zeros(0, np.int64)
    back.reshape(300, d.itemsize)[:, keep] = raw.reshape(300, d.itemsize)[:, keep]
    assert kernels.merge_quants(quants, d.itemsize, back)
    assert back.tobytes() == raw.tobytes()
    wide = quants.copy()
    wide[123] = 1 << d.quant_bits
    assert not kernels.merge_quants(wide, d.itemsize, back.copy())


def _gguf(path, tensors) -> bytes:
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "quants")
    for name, (t, data) in tensors.items():
        w.add_tensor(name, data, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _skewed(name: str, rows: int, blocks: int, rng) -> np.ndarray:
    """Real-looking blocks: random scales, quants a rounded normal around the middle of their range."""
    d = dtypes.BY_NAME[f"GGML_{name}"]
    raw = rng.integers(0, 256, rows * blocks * d.itemsize, dtype=np.uint8)
    top = (1 << d.quant_bits) - 1
    quants = np.clip(np.round(rng.standard_normal(rows * blocks * d.block_size) * top / 8 + top / 2), 0, top)
    assert kernels.merge_quants(quants.astype(np.uint8), d.itemsize, raw)
    return raw.reshape(rows, blocks * d.itemsize)


@pytest.mark.parametrize("chunk_size", [None, 5000])
def test_level_max_joins_the_quants_and_round_trips(tmp_path, chunk_size):
    rng = np.random.default_rng(7)
    tensors = {f"blk.{n.lower()}": (t, _skewed(n, 7, 9, rng)) for n, t in JOINED.items()}
    tensors["blk.q8_0"] = (Q.Q8_0, rng.integers(0, 256, (7, 9 * 34), dtype=np.uint8))
    original = _gguf(tmp_path / "m.gguf", tensors)
    fast = llmcodec.encode_file(tmp_path / "m.gguf", tmp_path / "fast.llmc", chunk_size=chunk_size)
    best = llmcodec.encode_file(tmp_path / "m.gguf", tmp_path / "max.llmc", chunk_size=chunk_size, level="max")
    with ContainerReader(fast) as r:
        assert r.version == (1, 2) and {t.layout for t in r.tensors} == {dtypes.LAYOUT_BLOCK_FIELDS}
    with ContainerReader(best) as r:
        assert r.version == (1, 4)
        layouts = {t.name: t.layout for t in r.tensors}
        assert layouts == {**dict.fromkeys([f"blk.{n.lower()}" for n in JOINED], dtypes.LAYOUT_BLOCK_QUANTS),
                           "blk.q8_0": dtypes.LAYOUT_BLOCK_FIELDS}
        coded = {t.name: t.coded_bytes for t in r.tensors}
    with ContainerReader(fast) as r:
        for t in r.tensors:
            if t.name != "blk.q8_0":
                # joined quants: ~4.1 bits of entropy; Q6_K's 6 bits were partly seen in qh already
                assert coded[t.name] < (0.97 if t.name == "blk.q6_k" else 0.93) * t.coded_bytes, t.name
    back = llmcodec.decode_file(best, tmp_path / "back.gguf")
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(original).digest()
    assert reference.decode(best.read_bytes()).original == original
    with llmcodec.open(best) as f:
        assert f.get_slice("blk.q6_k")[2:4].tobytes() == tensors["blk.q6_k"][1][2:4].tobytes()
    planes = {t.name: t for t in stats.file_stats(best)["tensors"]}["blk.q5_k"].planes
    assert len(planes) == 6 and planes[-1].entropy < 5


def test_block_quants_against_a_base_round_trip(tmp_path):
    """A fine-tuned GGUF against its base at level max: deltas of block bytes (1-byte words) under
    either layout decode bit-exact."""
    rng = np.random.default_rng(8)
    base = {"w": (Q.Q5_0, _skewed("Q5_0", 8, 40, rng)), "v": (Q.Q6_K, _skewed("Q6_K", 4, 3, rng))}
    ft = {k: (t, a.copy()) for k, (t, a) in base.items()}
    ft["w"][1][::3] = _skewed("Q5_0", 8, 40, rng)[::3]  # a third of the rows retrained
    _gguf(tmp_path / "base.gguf", base)
    original = _gguf(tmp_path / "ft.gguf", ft)
    out = llmcodec.encode_file(tmp_path / "ft.gguf", tmp_path / "ft.llmc", base=tmp_path / "base.gguf", level="max")
    back = llmcodec.decode_file(out, tmp_path / "back.gguf", base=tmp_path / "base.gguf")
    assert back.read_bytes() == original
