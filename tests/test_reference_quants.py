"""Layout 4, BLOCK_QUANTS (spec 5.1), in the reference decoder: the quants of a block as the spec defines them
(written here from the spec's formulas, in numpy, and checked against gguf-py's dequantization, which is ggml's),
the reference's inverse of the layout on random blocks, check 53, and 1.4 files built here field by field (RAW
planes, Source_Kind 0), so that these tests need no writer."""

import struct

import numpy as np
import pytest
import xxhash

from llmcodec import reference
from llmcodec.errors import FormatError, LlmcodecError

# name: (Dtype id, itemsize, block_size, b, the planes before the quants plane as (offset, width), as 5.1 lists them)
TYPES = {
    "GGML_Q5_0": (70, 22, 32, 5, [(0, 1), (1, 1)]),
    "GGML_Q5_1": (71, 24, 32, 5, [(0, 1), (1, 1), (2, 1), (3, 1)]),
    "GGML_Q5_K": (77, 176, 256, 5, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 12)]),
    "GGML_Q6_K": (78, 210, 256, 6, [(192, 16), (208, 1), (209, 1)]),
}
# name: the bytes [start, end) of the block that the quants plane stands for: qh and qs (Q6_K: ql and qh)
QUANT_BYTES = {"GGML_Q5_0": (2, 22), "GGML_Q5_1": (4, 24), "GGML_Q5_K": (16, 176), "GGML_Q6_K": (0, 192)}
BLOCK_QUANTS = 4


def quants(name: str, blocks: np.ndarray) -> np.ndarray:
    """Spec 5.1: quant k of each block, (n, itemsize) uint8 blocks -> (n, block_size) uint8, ggml's order."""
    n, size = len(blocks), TYPES[name][2]
    q = np.empty((n, size), np.uint8)
    if name in ("GGML_Q5_0", "GGML_Q5_1"):
        at = 2 if name == "GGML_Q5_0" else 4
        qh, qs = blocks[:, at:at + 4].copy().view("<u4")[:, 0], blocks[:, at + 4:at + 20]
        for j in range(16):
            q[:, j] = (qs[:, j] & 0x0F) | (((qh >> j) & 1) << 4)
            q[:, j + 16] = (qs[:, j] >> 4) | (((qh >> (j + 16)) & 1) << 4)
    elif name == "GGML_Q5_K":
        qh, qs = blocks[:, 16:48], blocks[:, 48:176]
        for g in range(4):
            for j in range(32):
                q[:, 64 * g + j] = (qs[:, 32 * g + j] & 0x0F) | (((qh[:, j] >> (2 * g)) & 1) << 4)
                q[:, 64 * g + 32 + j] = (qs[:, 32 * g + j] >> 4) | (((qh[:, j] >> (2 * g + 1)) & 1) << 4)
    else:
        for h in range(2):
            ql, qh = blocks[:, 64 * h:64 * h + 64], blocks[:, 128 + 32 * h:128 + 32 * h + 32]
            for j in range(32):
                q[:, 128 * h + j] = (ql[:, j] & 0x0F) | (((qh[:, j] >> 0) & 3) << 4)
                q[:, 128 * h + 32 + j] = (ql[:, j + 32] & 0x0F) | (((qh[:, j] >> 2) & 3) << 4)
                q[:, 128 * h + 64 + j] = (ql[:, j] >> 4) | (((qh[:, j] >> 4) & 3) << 4)
                q[:, 128 * h + 96 + j] = (ql[:, j + 32] >> 4) | (((qh[:, j] >> 6) & 3) << 4)
    return q


def planes(name: str, blocks: np.ndarray) -> list[bytes]:
    """Spec 5.1: the BLOCK_QUANTS planes of a chunk of blocks."""
    side = [blocks[:, offset:offset + width].tobytes() for offset, width in TYPES[name][4]]
    return side + [quants(name, blocks).tobytes()]


def fields(name: str) -> list[tuple]:
    return TYPES[name][4] + [(None, TYPES[name][2])]


def unplane(name: str, chunk_planes: list[bytes], where: str = "here") -> bytes:
    dtype, itemsize = TYPES[name][:2]
    return reference._unplane(BLOCK_QUANTS, chunk_planes, itemsize, fields(name), dtype, where)


def random_blocks(name: str, n: int, seed: int) -> np.ndarray:
    blocks = np.random.default_rng(seed).integers(0, 256, (n, TYPES[name][1]), dtype=np.uint8)
    blocks[0], blocks[1] = 0, 0xFF  # every quant 0, every quant 2^b - 1
    return blocks


@pytest.mark.parametrize("name", TYPES)
def test_quants_are_ggmls(name):
    """The quants of the spec are the integers ggml dequantizes: with d = 1, m = dmin = 0 and every sub-block
    scale 1, gguf-py's dequantization gives q - 16 (Q5_0), q (Q5_1, Q5_K) or q - 32 (Q6_K)."""
    gguf = pytest.importorskip("gguf")
    blocks = random_blocks(name, 512, 1)
    one = np.frombuffer(struct.pack("<e", 1.0), np.uint8)
    if name == "GGML_Q6_K":
        blocks[:, 192:208], blocks[:, 208:210] = 1, one
    else:
        blocks[:, 0:2] = one
        if name != "GGML_Q5_0":
            blocks[:, 2:4] = 0  # m, or dmin
        if name == "GGML_Q5_K":  # 6-bit scales 1 and mins 0 in Q4_K's packing (get_scale_min_k4)
            blocks[:, 4:16] = [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1]
    qtype = getattr(gguf.GGMLQuantizationType, name.removeprefix("GGML_"))
    offset = {"GGML_Q5_0": 16, "GGML_Q6_K": 32}.get(name, 0)
    values = gguf.quants.dequantize(blocks, qtype).reshape(len(blocks), -1)
    assert np.array_equal(values, quants(name, blocks).astype(np.float32) - offset)


@pytest.mark.parametrize("name", TYPES)
def test_inverse_rebuilds_random_blocks(name):
    blocks = random_blocks(name, 4096, TYPES[name][0])
    chunk = planes(name, blocks)
    assert [len(p) for p in chunk] == [len(blocks) * w for _, w in fields(name)]
    assert unplane(name, chunk) == blocks.tobytes()


@pytest.mark.parametrize("name", TYPES)
def test_every_quant_vector_is_a_block(name):
    """The other direction of the bijection: any quants below 2^b, any side bytes, come back from their block."""
    _, itemsize, size, bits, side = TYPES[name]
    rng = np.random.default_rng(7)
    q = rng.integers(0, 1 << bits, (1024, size), dtype=np.uint8)
    q[0], q[1] = 0, (1 << bits) - 1
    side_planes = [rng.integers(0, 256, 1024 * width, dtype=np.uint8).tobytes() for _, width in side]
    blocks = np.frombuffer(unplane(name, side_planes + [q.tobytes()]), np.uint8).reshape(-1, itemsize)
    assert planes(name, blocks) == side_planes + [q.tobytes()]


@pytest.mark.parametrize("name", TYPES)
def test_each_bit_is_one_quants(name):
    """Every bit of qs and qh (Q6_K: ql and qh) is set by exactly one bit of one quant."""
    _, itemsize, size, bits, side = TYPES[name]
    n = size * bits  # block i has only bit i % bits of quant i // bits set
    q = np.zeros((n, size), np.uint8)
    q[np.arange(n), np.arange(n) // bits] = 1 << (np.arange(n) % bits)
    blocks = np.frombuffer(unplane(name, [bytes(n * w) for _, w in side] + [q.tobytes()]), np.uint8)
    start, end = QUANT_BYTES[name]
    quant_bits = np.unpackbits(blocks.reshape(n, itemsize)[:, start:end], axis=1)
    assert quant_bits.shape[1] == n and (quant_bits.sum(axis=1) == 1).all()
    assert sorted(quant_bits.argmax(axis=1)) == list(range(n))  # a permutation of the bits
    assert np.unpackbits(blocks).sum() == n  # and no bit outside those fields


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("value", ["2^b", "255"])
def test_quant_of_2_to_the_b_is_refused(name, value):
    bits = TYPES[name][3]
    chunk = planes(name, random_blocks(name, 3, 5))
    q = bytearray(chunk[-1])
    q[TYPES[name][2] + 7] = 1 << bits if value == "2^b" else 255
    with pytest.raises(FormatError, match=rf"tensor 'w' chunk 2: quants plane byte {TYPES[name][2] + 7} \(quant 7 "
                                          rf"of block 1\).*below 2\^{bits}.*check 53"):
        unplane(name, chunk[:-1] + [bytes(q)], "tensor 'w' chunk 2")


# ---------------------------------------------------------------------------------------------------
# Whole 1.4 files

def build(dtype: int, shape: tuple, layout: int, chunks: list[tuple[list[bytes], bytes]], chunk_elements: int,
          minor: int = 4) -> bytes:
    """A file of one tensor 'w': chunks are [(planes, raw bytes)], stored RAW; no Transforms section."""
    data, rec = bytearray(40), bytearray()
    for chunk_planes, raw in chunks:
        rec += struct.pack("<QQ", len(data), xxhash.xxh64_intdigest(raw))
        rec += b"".join(struct.pack("<BBI", 0, 0, len(p)) for p in chunk_planes)
        data += b"".join(chunk_planes)
    header = struct.pack("<IIBH", 1, 0, 0, 1) + b"w" + struct.pack(f"<BB{len(shape)}Q", dtype, len(shape), *shape)
    header += struct.pack("<BQQ", layout, chunk_elements, len(chunks)) + rec
    data[:36] = b"\x89LLMC\r\n\x1a" + struct.pack("<HHIQQI", 1, minor, 0, len(data), len(header),
                                                   xxhash.xxh64_intdigest(header) & 0xFFFFFFFF)
    data[36:40] = struct.pack("<I", xxhash.xxh64_intdigest(bytes(data[:36])) & 0xFFFFFFFF)
    return bytes(data + header)


def quants_file(name: str, blocks: np.ndarray, chunk_elements: int = 5, corrupt=None) -> bytes:
    """`blocks` as a 1.4 file with BLOCK_QUANTS; corrupt(chunk index, planes) may change a chunk's planes."""
    dtype, _, size = TYPES[name][:3]
    chunks = []
    for c, start in enumerate(range(0, len(blocks), chunk_elements)):
        part = blocks[start:start + chunk_elements]
        chunk_planes = planes(name, part)
        chunks.append((corrupt(c, chunk_planes) if corrupt else chunk_planes, part.tobytes()))
    return build(dtype, (len(blocks) * size,), BLOCK_QUANTS, chunks, chunk_elements)


@pytest.mark.parametrize("name", TYPES)
def test_reference_decodes_a_1_4_file(name):
    blocks = random_blocks(name, 12, 3)  # 3 chunks, the last one short
    decoded = reference.decode(quants_file(name, blocks))
    assert (decoded.major, decoded.minor) == (1, 4)
    w = decoded.tensors["w"]
    assert (w.dtype, w.shape, w.data) == (name, (12 * TYPES[name][2],), blocks.tobytes())


@pytest.mark.parametrize("name", TYPES)
def test_chunk_records_have_the_planes_of_5_1(name):
    """One Plane_Ref per plane of 5.1, of the widths listed; a record of BLOCK_FIELDS's planes is refused (the
    header is misread from there on: a FormatError, TruncatedError or LimitExceededError)."""
    blocks = random_blocks(name, 2, 4)
    data = quants_file(name, blocks)
    header = data[struct.unpack_from("<Q", data, 16)[0]:]
    assert reference._header(header, 4)[2][0].fields == fields(name)
    dtype, _, size = TYPES[name][:3]
    block_fields = [blocks[:, o:o + w].tobytes() for o, w in reference.BLOCK_DTYPES[dtype][3]]
    with pytest.raises(LlmcodecError):
        reference.decode(build(dtype, (2 * size,), BLOCK_QUANTS, [(block_fields, blocks.tobytes())], 2))


def test_corrupt_quant_is_a_format_error_before_the_checksum():
    """A quant with bit 5 set, over a block whose XXH64 is the chunk's Checksum: masking that bit would give the
    right bytes, yet the plane is corrupt (check 53)."""
    blocks = random_blocks("GGML_Q5_0", 12, 6)

    def corrupt(c, chunk_planes):
        if c == 1:
            q = bytearray(chunk_planes[-1])
            q[40] |= 0x20
            chunk_planes[-1] = bytes(q)
        return chunk_planes
    with pytest.raises(FormatError, match=r"tensor 'w' chunk 1: quants plane byte 40 \(quant 8 of block 1\).*check 53"):
        reference.decode(quants_file("GGML_Q5_0", blocks, corrupt=corrupt))


@pytest.mark.parametrize("dtype, shape", [(66, (0, 32)), (72, (0, 32)), (76, (0, 256)), (79, (0, 256)),
                                          (12, (0,)), (2, (0,))])
def test_block_quants_only_for_the_four(dtype, shape):
    """GGML_Q4_0, Q8_0, Q4_K, Q8_K, F32, U8 (tensors of no element: the record is refused before any chunk)."""
    assert reference.decode(build(dtype, shape, 3 if dtype > 64 else 0, [], 1)).tensors["w"].data == b""
    with pytest.raises(FormatError, match="Layout BLOCK_QUANTS does not fit dtype"):
        reference.decode(build(dtype, shape, BLOCK_QUANTS, [], 1))


@pytest.mark.parametrize("name", TYPES)
def test_the_four_still_read_block_fields(name):
    dtype, itemsize, size, _, _ = TYPES[name]
    blocks = random_blocks(name, 4, 8)
    chunk_planes = [blocks[:, o:o + w].tobytes() for o, w in reference.BLOCK_DTYPES[dtype][3]]
    data = build(dtype, (4 * size,), 3, [(chunk_planes, blocks.tobytes())], 4)
    assert reference.decode(data).tensors["w"].data == blocks.tobytes()


def test_a_few_megabytes_in_seconds():
    """The reference is slow by design, but a 4 MB Q6_K tensor (RAW planes) takes seconds, not minutes."""
    blocks = random_blocks("GGML_Q6_K", 4 * 2**20 // 210, 9)
    assert reference.decode(quants_file("GGML_Q6_K", blocks, chunk_elements=4096)).tensors["w"].data == \
        blocks.tobytes()


@pytest.mark.parametrize("chunk_size", [None, 3000])
def test_reference_agrees_with_the_writer(tmp_path, chunk_size):
    """A GGUF file of the four types written at level max (BLOCK_QUANTS where it codes smaller: here, quants
    near the middle of their range) decodes to the same bytes in the reference and the fast decoder."""
    gguf = pytest.importorskip("gguf")
    import llmcodec

    rng, blocks = np.random.default_rng(10), {}
    writer = gguf.GGUFWriter(tmp_path / "m.gguf", "llama")
    for name, (_, itemsize, size, bits, side) in TYPES.items():
        n, top = 5 * 7, (1 << bits) - 1
        q = np.clip(np.round(rng.standard_normal(n * size) * top / 8 + top / 2), 0, top).astype(np.uint8)
        side_planes = [rng.integers(0, 256, n * width, dtype=np.uint8).tobytes() for _, width in side]
        blocks[name] = np.frombuffer(unplane(name, side_planes + [q.tobytes()]), np.uint8).reshape(5, 7 * itemsize)
        qtype = getattr(gguf.GGMLQuantizationType, name.removeprefix("GGML_"))
        writer.add_tensor(name.lower(), blocks[name], raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = llmcodec.encode_file(tmp_path / "m.gguf", tmp_path / "m.llmc", chunk_size=chunk_size, level="max")
    data = out.read_bytes()
    ref = reference.decode(data)
    header = data[struct.unpack_from("<Q", data, 16)[0]:]
    assert ref.minor == 4 and {t.layout for t in reference._header(header, 4)[2]} == {BLOCK_QUANTS}
    assert ref.original == (tmp_path / "m.gguf").read_bytes()
    fast = llmcodec.load_file(out)
    for name in TYPES:
        assert ref.tensors[name.lower()].data == fast[name.lower()].tobytes() == blocks[name].tobytes()
