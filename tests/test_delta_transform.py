"""Delta transforms (spec section 11): `llmcodec.delta` round trips for every word width, bytes
compared; the reference decoder's inverse, written from the spec alone, agrees with it; the
reference decodes and checks the Base section (4.6) of files built here field by field."""

import struct

import numpy as np
import pytest
import xxhash

from llmcodec import delta, reference
from llmcodec.errors import (BaseError, ChecksumError, FormatError, LimitExceededError, TruncatedError,
                             UnsupportedFeatureError)

WORDS = (1, 2, 4, 8)
TRANSFORMS = (delta.DIFF, delta.SUB)


def edge_words(word: int) -> np.ndarray:
    """0, 1, the sign bit and its neighbours, the largest word, and float patterns: +-0, +-inf, NaNs
    (quiet, signalling, with payload), the smallest subnormals; as raw little-endian bytes."""
    w = 8 * word
    top = 1 << (w - 1)
    values = {0, 1, 2, top - 1, top, top + 1, (1 << w) - 1, (1 << w) - 2}
    if word >= 2:
        exp_bits = {2: 5, 4: 8, 8: 11}[word] if word != 1 else 0
        inf = ((1 << exp_bits) - 1) << (w - 1 - exp_bits)
        values |= {inf, inf | top, inf | 1, inf | (1 << (w - 2 - exp_bits)), inf | top | 3, top | 1}
        values |= {0x7F80, 0xFF80, 0x7FC0, 0xFFC1, 0x7F81} if word == 2 else set()  # bf16 inf and NaN patterns
    return np.array(sorted(values), np.uint64).astype(f"<u{word}").view(np.uint8)


def all_pairs(word: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of edge words, as (fine-tune bytes, base bytes)."""
    e = edge_words(word).view(f"<u{word}")
    f, b = np.meshgrid(e, e)
    return f.reshape(-1).view(np.uint8).copy(), b.reshape(-1).view(np.uint8).copy()


def spec_forward(transform: int, f: int, b: int, w: int) -> int:
    """Section 11.1's table and zigzag's two cases, on one word."""
    x = (f - b) % (1 << w)
    if transform == delta.SUB:
        return x
    return 2 * x if x < 1 << (w - 1) else 2 * ((1 << w) - x) - 1


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_edge_words_round_trip(transform, word):
    f, b = all_pairs(word)
    d = delta.forward(transform, f, b, word)
    assert delta.inverse(transform, d, b, word).tobytes() == f.tobytes()


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_forward_is_the_specs_arithmetic(transform, word):
    f, b = all_pairs(word)
    d = delta.forward(transform, f, b, word).view(f"<u{word}")
    fw, bw = f.view(f"<u{word}"), b.view(f"<u{word}")
    assert [int(x) for x in d] == [spec_forward(transform, int(x), int(y), 8 * word) for x, y in zip(fw, bw)]


@pytest.mark.parametrize("word", WORDS)
def test_diff_is_a_bijection_of_the_words(word):
    """Every word d decodes to a distinct fine-tune word, and forward gives d back (8 and 16 bits: all words)."""
    count = 1 << min(8 * word, 16)
    d = np.arange(count, dtype=np.uint64).astype(f"<u{word}").view(np.uint8)
    b = np.resize(edge_words(word), d.size)
    f = delta.inverse(delta.DIFF, d, b, word)
    assert delta.forward(delta.DIFF, f, b, word).tobytes() == d.tobytes()
    if word <= 2:
        assert len(np.unique(f.view(f"<u{word}") - b.view(f"<u{word}"))) == count


def test_spec_examples():
    """The w = 16 examples of section 11.1."""
    for f, b, d in ((0x3F81, 0x3F80, 2), (0x3F80, 0x3F81, 1), (0x0000, 0x8000, 0xFFFF), (0x7FFF, 0x0000, 0xFFFE)):
        out = delta.forward(delta.DIFF, np.array([f], "<u2").view(np.uint8), np.array([b], "<u2").view(np.uint8), 2)
        assert out.view("<u2")[0] == d


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_random_round_trip_and_close_words(transform, word):
    rng = np.random.default_rng(word * 10 + transform)
    b = rng.integers(0, 256, 4096 * word, dtype=np.uint8)
    near = (b.view(f"<u{word}") + rng.integers(-3, 4, 4096).astype(f"<i{word}").view(f"<u{word}")).view(np.uint8)
    for f in (rng.integers(0, 256, b.size, dtype=np.uint8), near, b.copy()):
        d = delta.forward(transform, f, b, word)
        assert delta.inverse(transform, d, b, word).tobytes() == f.tobytes()
    assert not delta.forward(transform, b, b, word).any()  # equal words give 0
    if transform == delta.DIFF:  # a move of at most 3 units zigzags to at most 6
        assert int(delta.forward(transform, near, b, word).view(f"<u{word}").max()) <= 6


def test_ranges_are_independent():
    """A chunk transformed alone with its range of the base gives the bytes of the whole (elementwise)."""
    rng = np.random.default_rng(1)
    f, b = (rng.integers(0, 256, 4000, dtype=np.uint8) for _ in range(2))
    whole = delta.forward(delta.DIFF, f, b, 4)
    assert delta.forward(delta.DIFF, f[1000:2004], b[1000:2004], 4).tobytes() == whole[1000:2004].tobytes()
    assert delta.inverse(delta.DIFF, whole[12:400], b[12:400], 4).tobytes() == f[12:400].tobytes()


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_inputs_untouched_and_out_may_alias(transform):
    rng = np.random.default_rng(2)
    f, b = (rng.integers(0, 256, 64, dtype=np.uint8) for _ in range(2))
    f0, b0 = f.copy(), b.copy()
    d = delta.forward(transform, f, b, 2)
    assert f.tobytes() == f0.tobytes() and b.tobytes() == b0.tobytes()
    for out in ("delta", "base"):
        dd, bb = d.copy(), b.copy()
        target = dd if out == "delta" else bb
        assert delta.inverse(transform, dd, bb, 2, out=target) is not None
        assert target.tobytes() == f0.tobytes()
    ff = f.copy()
    delta.forward(transform, ff, b, 2, out=ff)
    assert ff.tobytes() == d.tobytes()


def test_takes_bytes_and_typed_arrays():
    base = np.array([1.0, -2.5], np.float32)
    ft = np.array([1.0000001, -2.5], np.float32)
    d = delta.forward(delta.DIFF, ft, base.tobytes(), 4)
    assert d.view("<u4").tolist() == [2, 0]
    assert delta.inverse(delta.DIFF, d.tobytes(), base, 4).view(np.float32).tobytes() == ft.tobytes()


def test_bad_arguments():
    with pytest.raises(ValueError, match="one length"):
        delta.forward(delta.DIFF, b"abcd", b"abc", 1)
    with pytest.raises(ValueError, match="multiple"):
        delta.forward(delta.DIFF, b"abc", b"abc", 2)
    with pytest.raises(ValueError, match="unknown delta transform"):
        delta.inverse(3, b"ab", b"ab", 1)
    with pytest.raises(ValueError, match="word"):
        delta.forward(delta.SUB, b"abc", b"abc", 3)
    with pytest.raises(ValueError, match="out"):
        delta.forward(delta.SUB, b"ab", b"ab", 1, out=np.empty(3, np.uint8))


def test_word_bytes():
    assert [delta.word_bytes(i, False) for i in WORDS] == list(WORDS)
    assert delta.word_bytes(18, True) == 1
    with pytest.raises(ValueError):
        delta.word_bytes(3, False)


def test_chunk_checksums():
    data = bytes(range(250)) * 3
    sums = delta.chunk_checksums(np.frombuffer(data, np.uint8), 128)
    assert sums.tolist() == [xxhash.xxh64_intdigest(data[i:i + 128]) for i in range(0, len(data), 128)]
    assert delta.chunk_checksums(b"", 128).size == 0


# ---------------------------------------------------------------------------------------------------
# The reference decoder on 1.3 files built here field by field (RAW planes, layout BYTES or
# BLOCK_FIELDS, Source_Kind 0), so that these tests need no writer.

DTYPE_IDS = {"U8": (2, 1), "F16": (8, 2), "BF16": (9, 2), "F32": (12, 4), "F64": (15, 8), "GGML_Q8_0": (72, 34)}


def build(tensors, base_name="base.safetensors", files=(), deltas=None, minor=3, transforms_section=True,
          chunk_elements=5):
    """A 1.3 file: tensors is [(name, dtype, shape, stored raw bytes, fine-tune raw bytes)]; the planes hold
    the stored bytes, each chunk's Checksum is that of the fine-tune's bytes; deltas is
    {tensor index: (base tensor name, transform id, base raw bytes or a list of Base_Checksums)}."""
    data, records = bytearray(40), []
    for name, dtype, shape, stored, raw in tensors:
        dtype_id, itemsize = DTYPE_IDS[dtype]
        fields = [(0, 1), (1, 1), (2, 32)] if dtype.startswith("GGML") else [(k, 1) for k in range(itemsize)]
        elements = len(raw) // itemsize
        chunks = []
        for start in range(0, elements, chunk_elements):
            stop = min(start + chunk_elements, elements)
            part = stored[start * itemsize:stop * itemsize]
            planes = [b"".join(part[e * itemsize + o:e * itemsize + o + w] for e in range(stop - start))
                      for o, w in fields]
            chunks.append((len(data), xxhash.xxh64_intdigest(raw[start * itemsize:stop * itemsize]),
                           [len(p) for p in planes]))
            data += b"".join(planes)
        rec = struct.pack("<H", len(name.encode())) + name.encode() + struct.pack("<BB", dtype_id, len(shape))
        rec += struct.pack(f"<{len(shape)}Q", *shape)
        rec += struct.pack("<BQQ", 3 if dtype.startswith("GGML") else 0, chunk_elements, len(chunks))
        for offset, checksum, lengths in chunks:
            rec += struct.pack("<QQ", offset, checksum) + b"".join(struct.pack("<BBI", 0, 0, n) for n in lengths)
        records.append(rec)
    header = struct.pack("<II", len(tensors), 0) + b"\x00" + b"".join(records)
    if transforms_section:
        header += struct.pack("<I", 0)
    if deltas is not None:
        header += struct.pack("<H", len(base_name.encode())) + base_name.encode() + struct.pack("<I", len(files))
        for path, size, sha in files:
            header += struct.pack("<H", len(path.encode())) + path.encode() + struct.pack("<Q", size) + sha
        header += struct.pack("<I", len(deltas))
        for index, (base_tensor, transform, sums) in deltas.items():
            if not isinstance(sums, list):
                itemsize = DTYPE_IDS[tensors[index][1]][1]
                sums = delta.chunk_checksums(sums, chunk_elements * itemsize).tolist()
            header += struct.pack("<IH", index, len(base_tensor.encode())) + base_tensor.encode()
            header += struct.pack(f"<B{len(sums)}Q", transform, *sums)
    data[:36] = b"\x89LLMC\r\n\x1a" + struct.pack("<HHIQQI", 1, minor, 0, len(data), len(header),
                                                   xxhash.xxh64_intdigest(header) & 0xFFFFFFFF)
    data[36:40] = struct.pack("<I", xxhash.xxh64_intdigest(bytes(data[:36])) & 0xFFFFFFFF)
    return bytes(data + header)


def pair(dtype: str, numel: int, seed: int) -> tuple[bytes, bytes]:
    """(fine-tune, base) raw bytes of `numel` elements: words near each other, some equal, some far."""
    rng = np.random.default_rng(seed)
    itemsize = DTYPE_IDS[dtype][1]
    base = rng.integers(0, 256, numel * itemsize, dtype=np.uint8)
    ft = base.copy()
    moved = rng.random(ft.size) < 0.3
    ft[moved] += rng.integers(1, 4, int(moved.sum())).astype(np.uint8)
    ft[:itemsize] = 255  # a word far from the base's
    return ft.tobytes(), base.tobytes()


@pytest.mark.parametrize("dtype", ["U8", "F16", "BF16", "F32", "F64", "GGML_Q8_0"])
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_reference_decodes_deltas(dtype, transform):
    numel = 12 if dtype.startswith("GGML") else 23  # elements: 3 chunks, the last one short
    ft, base = pair(dtype, numel, DTYPE_IDS[dtype][0] + transform)
    word = 1 if dtype.startswith("GGML") else DTYPE_IDS[dtype][1]
    stored = delta.forward(transform, ft, base, word).tobytes()
    shape = (numel * 32,) if dtype.startswith("GGML") else (numel,)
    alone = ("alone", "BF16", (3,), b"\x01\x02" * 3, b"\x01\x02" * 3)
    data = build([alone, ("w", dtype, shape, stored, ft)], deltas={1: ("w.base", transform, base)},
                 files=[("model.safetensors", 123, bytes(range(32)))])
    dec = reference.decode(data, {"w.base": base})
    assert dec.tensors["w"].data == ft and dec.tensors["alone"].data == alone[4]
    assert (dec.minor, dec.base.name, dec.base.files) == (3, "base.safetensors",
                                                          [("model.safetensors", 123, bytes(range(32)))])
    assert dec.base.deltas["w"].transform == delta.TRANSFORMS[transform]
    # the base as RefTensors (dtype and shape checked), or as a function
    as_tensor = reference.RefTensor(dtype, shape, base)
    assert reference.decode(data, {"w.base": as_tensor}).tensors["w"].data == ft
    assert reference.decode(data, lambda name: base if name == "w.base" else None).tensors["w"].data == ft


@pytest.mark.parametrize("word", WORDS)
@pytest.mark.parametrize("transform", TRANSFORMS)
def test_reference_inverse_equals_delta_inverse(transform, word):
    f, b = all_pairs(word)
    rng = np.random.default_rng(word)
    r1, r2 = (rng.integers(0, 256, 512 * word, dtype=np.uint8) for _ in range(2))
    for ft, base in ((f, b), (r1, r2)):
        d = delta.forward(transform, ft, base, word).tobytes()
        expected = delta.inverse(transform, d, base, word).tobytes()
        assert reference._undelta(delta.TRANSFORMS[transform], d, base.tobytes(), word) == expected == ft.tobytes()


def delta_file(**kw):
    ft, base = pair("BF16", 12, 0)
    stored = delta.forward(delta.DIFF, ft, base, 2).tobytes()
    kw.setdefault("deltas", {0: ("w", delta.DIFF, base)})
    return build([("w", "BF16", (3, 4), stored, ft)], **kw), ft, base


def test_no_base_names_the_base():
    data, _, _ = delta_file(files=[("a/model-1.safetensors", 9, b"\xab" * 32)])
    with pytest.raises(BaseError, match=r"base 'base.safetensors'.*a/model-1.safetensors 9 bytes SHA-256 abab"):
        reference.decode(data)


def test_wrong_base_names_tensor_and_chunk():
    data, ft, base = delta_file()
    changed = bytearray(base)
    changed[12] ^= 1  # element 6: chunk 1 of 5-element chunks
    with pytest.raises(BaseError, match=r"tensor 'w'.*chunk 1: .*not the base"):
        reference.decode(data, {"w": bytes(changed)})
    with pytest.raises(BaseError, match="has no tensor 'w'"):
        reference.decode(data, {"v": base})
    with pytest.raises(BaseError, match=r"BF16 \[4, 3\], expected BF16 \[3, 4\]"):
        reference.decode(data, {"w": reference.RefTensor("BF16", (4, 3), base)})
    with pytest.raises(BaseError, match="F16"):
        reference.decode(data, {"w": reference.RefTensor("F16", (3, 4), base)})
    with pytest.raises(BaseError, match="has 22 bytes"):
        reference.decode(data, {"w": base[:22]})


def test_chunk_checksum_is_the_fine_tunes():
    """Base_Checksums right but the stored words wrong: the chunk's Checksum (of the fine-tune) fails."""
    ft, base = pair("BF16", 12, 0)
    stored = bytearray(delta.forward(delta.DIFF, ft, base, 2).tobytes())
    stored[3] ^= 0x10
    data = build([("w", "BF16", (12,), bytes(stored), ft)], deltas={0: ("w", delta.DIFF, base)})
    with pytest.raises(ChecksumError, match="tensor 'w' chunk 0"):
        reference.decode(data, {"w": base})


def test_base_section_checks():
    ft, base = pair("BF16", 12, 0)
    stored = delta.forward(delta.DIFF, ft, base, 2).tobytes()
    one = [("w", "BF16", (12,), stored, ft)]
    two = one + [("v", "BF16", (12,), stored, ft)]
    sums = delta.chunk_checksums(base, 10).tolist()
    cases = [
        (dict(tensors=one, deltas={0: ("w", 3, base)}), UnsupportedFeatureError, "Transform 3"),
        (dict(tensors=one, deltas={}), FormatError, "Delta_Count must be >= 1"),
        (dict(tensors=one, deltas={1: ("w", 1, sums)}), FormatError, "Tensor_Index"),
        (dict(tensors=two, deltas={1: ("w", 1, base), 0: ("w", 1, base)}), FormatError, "Tensor_Index must be > 1"),
        (dict(tensors=one, deltas={0: ("w", 1, sums[:2])}), TruncatedError, "Base_Checksums need 24"),
        (dict(tensors=one, deltas={0: ("w", 1, base)}, files=[("a", 1, b"\0" * 32)] * 2), FormatError, "twice"),
        (dict(tensors=one), FormatError, "Transform_Count must be >= 1, found 0"),
        (dict(tensors=one, deltas={0: ("w", 1, base)}, transforms_section=False), LimitExceededError,
         "Transform_Count"),  # the Base section read as a Transforms section
        (dict(tensors=one, deltas={0: ("w", 1, base)}, minor=2), FormatError, "Transform_Count must be >= 1"),
    ]
    for kw, error, message in cases:
        tensors = kw.pop("tensors")
        with pytest.raises(error, match=message):
            reference.decode(build(tensors, **kw), {"w": base})
    # a file may name one base tensor for two of its tensors
    both = reference.decode(build(two, deltas={0: ("w", 1, base), 1: ("w", 1, base)}), {"w": base})
    assert both.tensors["v"].data == both.tensors["w"].data == ft


def test_file_count_limit(monkeypatch):
    monkeypatch.setitem(reference.LIMITS, "tensor count", 1)
    data, _, base = delta_file(files=[("a", 1, b"\0" * 32), ("b", 1, b"\0" * 32)])
    with pytest.raises(LimitExceededError, match="File_Count"):
        reference.decode(data, {"w": base})
