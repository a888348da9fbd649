"""Order-0 models and the rANS coder, checked against constriction as an independent reference."""

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcodec import codec, kernels, models, reference
from llmcodec.format import METHOD_CONSTANT, METHOD_RANS0, METHOD_RANS0_PAIRS, METHOD_RAW

counts_strategy = st.lists(st.integers(1, 10**7), min_size=1, max_size=600)


@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, precision=st.integers(10, 14))
def test_quantized_frequencies_are_a_valid_table(counts, precision):
    counts = np.array(counts, np.int64)
    freq = models.quantize_frequencies(counts, precision)
    assert freq.sum() == 1 << precision
    assert (freq >= 1).all() and freq.shape == counts.shape


def test_quantized_frequencies_are_close_to_the_counts():
    counts = np.bincount(np.random.default_rng(0).binomial(255, 0.5, 100_000), minlength=256)
    c = counts[counts > 0]
    freq = models.quantize_frequencies(c, models.PRECISION)
    p = c / c.sum()
    entropy = -np.sum(p * np.log2(p)) * c.sum()
    assert models.ideal_bits(c, freq, models.PRECISION) < entropy * 1.002


def _decode(coded, n):
    stream = coded.stream
    out = np.empty(n, np.uint8)
    codec._decode_rans(stream, coded.method, out, "test")
    return out, stream


def _gaussian_exponents(n, seed):
    w = (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(np.float32)
    return ((w.view(np.uint32) >> 23) & 0xFF).astype(np.uint8)


@pytest.mark.parametrize("method", [METHOD_RANS0, METHOD_RANS0_PAIRS])
@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 16, 17, 1000, 100_003])
def test_rans_round_trip_and_size(method, n):
    plane = _gaussian_exponents(n, n)
    if method == METHOD_RANS0:
        counts, precision = np.bincount(plane, minlength=256), models.PRECISION
    else:
        counts, precision = kernels.pair_histogram(plane), models.PAIR_PRECISION
    symbols = np.flatnonzero(counts)
    freq = models.quantize_frequencies(counts[symbols], precision)
    coded = models.encode_plane(plane, methods=[method], min_gain=-np.inf)
    assert coded.method == method
    out, stream = _decode(coded, n)
    assert out.tobytes() == plane.tobytes()
    # The words carry the model's information content to within the lanes' final states.
    table = models.parse_table(memoryview(stream), method, n, "test")
    info_bits = models.ideal_bits(counts[symbols], freq, precision)
    word_bits = (stream.size - table.size - 4 * models.LANES) * 8
    assert info_bits - 16 * models.LANES <= word_bits <= info_bits + 16 * models.LANES + 16


def test_rans_size_matches_constriction_on_the_same_model():
    """constriction's ANS coder, fed the same quantized probabilities, agrees on the size."""
    rng = np.random.default_rng(7)
    plane = np.clip(rng.laplace(128, 6, 200_000), 0, 255).astype(np.uint8)
    counts = np.bincount(plane, minlength=256)
    symbols = np.flatnonzero(counts)
    freq = models.quantize_frequencies(counts[symbols], models.PRECISION)
    coded = models.encode_plane(plane, methods=[METHOD_RANS0], min_gain=-np.inf)
    table = models.parse_table(memoryview(coded.stream), METHOD_RANS0, plane.size, "test")
    assert table.freq.tobytes() == freq.tobytes()
    model = constriction.stream.model.Categorical((freq / freq.sum()).astype(np.float64), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.searchsorted(symbols, plane).astype(np.int32), model)
    theirs = coder.num_bits()
    ours = (coded.length - table.size - 4 * models.LANES) * 8 + 32 * models.LANES
    assert abs(ours - theirs) / theirs < 0.002
    assert abs(ours - models.ideal_bits(counts[symbols], freq, models.PRECISION)) / theirs < 0.002


def test_pairs_are_chosen_for_exponents_and_decode_faster_shape():
    plane = _gaussian_exponents(200_000, 1)
    coded = models.encode_plane(plane)
    assert coded.method == METHOD_RANS0_PAIRS
    assert _decode(coded, plane.size)[0].tobytes() == plane.tobytes()


@pytest.mark.parametrize("states,status", [
    ([1 << 16] * 7 + [5], kernels.DECODE_BAD_STATE),
])
def test_decoder_rejects_out_of_range_states(states, status):
    table = models.Table(12, 8, np.array([0, 1]), np.array([2048, 2048]), 0, 1).decode_table()
    stream = np.array(states, "<u4").view(np.uint8)
    assert kernels.rans_decode(stream, table, 12, 8, 1, np.empty(4, np.uint8)) == status


def test_decoder_stops_when_words_run_out():
    plane = np.random.default_rng(1).integers(0, 2, 1000).astype(np.uint8)
    freq = models.quantize_frequencies(np.bincount(plane), 12)
    coded = models.encode_plane(plane, methods=[METHOD_RANS0], min_gain=-np.inf)
    stream = coded.stream[models.TABLE_FIXED + 2 * 2:]
    table = models.Table(12, 8, np.array([0, 1]), freq, 0, 1).decode_table()
    out = np.empty(1000, np.uint8)
    cut = stream[:stream.size - 20]
    assert kernels.rans_decode(cut, table, 12, 8, 1, out) == kernels.DECODE_STREAM_SHORT
    assert kernels.rans_decode(stream, table, 12, 8, 1, out[:999]) == kernels.DECODE_BAD_END


@pytest.mark.parametrize("table,match", [
    (bytes([0, 8]) + bytes(32), "Precision 0"),
    (bytes([13, 8]) + bytes(32), "Precision 13"),
    (bytes([12, 0]) + bytes(32), "Lanes 0"),
    (bytes([12, 65]) + bytes(32), "Lanes 65"),
    (bytes([12, 8]) + bytes(32) + bytes(32), "Symbol_Bitmap is empty"),
    (bytes([12, 1]) + b"\x03" + bytes(31) + (99).to_bytes(2, "little") * 2 + bytes(4), "add up to 200"),
    (bytes([12, 1]) + b"\x01" + bytes(31) + (4095).to_bytes(2, "little") + bytes(3), "ends inside"),
    (bytes([12, 1]) + b"\x01" + bytes(31) + (4095).to_bytes(2, "little") + bytes(5), "odd number"),
    (bytes([12, 1]), "shorter than its table"),
])
def test_table_checks(table, match):
    with pytest.raises(models.FormatError, match=match):
        models.parse_table(memoryview(table), METHOD_RANS0, 100, "here")


def _pairs(used, cells, freqs, odd=0, precision=13, tail=bytes(4)):
    """A RANS0_PAIRS table by hand: byte set, pair-bitmap cells, frequencies as given (ULEB128)."""
    s = len(used)
    head = bytes([precision, 1, odd]) + np.packbits(np.isin(np.arange(256), used), bitorder="little").tobytes()
    bitmap = np.packbits(np.isin(np.arange(s * s), cells), bitorder="little").tobytes()
    varints = b"".join(bytes([f - 1]) if f - 1 < 128 else bytes([((f - 1) & 0x7F) | 0x80, (f - 1) >> 7])
                       for f in freqs)
    return head + bitmap + varints + tail


@pytest.mark.parametrize("table,n,match", [
    (_pairs([3, 5], [0, 3], [4096, 4096]), 10, None),
    (_pairs([3, 5], [0, 3], [4096, 4095]), 10, "add up to 8191"),
    (_pairs([], [], []), 10, "Byte_Bitmap is empty"),
    (_pairs([3, 5], [], [], tail=b""), 10, "Pair_Bitmap is empty"),
    (_pairs([3], [0], [8192], odd=7), 10, "Odd_Byte is 7"),
    (_pairs([3], [0], [8192], odd=7), 11, None),
    (_pairs([3, 5], [0, 1, 2], [4096, 4096], tail=b""), 10, "ends inside its Frequencies"),
    (_pairs([3], [0], [8192], precision=15), 10, "Precision 15"),
    (_pairs([3], [0], [8192])[:-5] + bytes([0x80, 0x00]) + bytes(4), 10, "second byte"),
    (_pairs([3], [0], [8192])[:35], 10, "ends inside its Pair_Bitmap"),
])
def test_pair_table_checks(table, n, match):
    if match is None:
        assert models.parse_table(memoryview(table), METHOD_RANS0_PAIRS, n, "here").freq.sum() == 8192
        return
    with pytest.raises(models.FormatError, match=match):
        models.parse_table(memoryview(table), METHOD_RANS0_PAIRS, n, "here")


def test_encode_plane_picks_the_cheapest_method():
    rng = np.random.default_rng(2)
    const = np.full(1000, 9, np.uint8)
    skewed = rng.choice(np.array([1, 2, 3], np.uint8), 1000, p=[0.9, 0.05, 0.05])
    uniform = rng.integers(0, 256, 1000, dtype=np.uint8)
    for plane, method in [(const, METHOD_CONSTANT), (skewed, METHOD_RANS0), (uniform, METHOD_RAW)]:
        coded = models.encode_plane(plane)
        assert coded.method == method
        assert coded.length <= plane.size


@pytest.mark.parametrize("table,n,match", [
    (_pairs([3, 5], [0], [8192]), 10, "occurs in no pair"),
    (_pairs([3, 5, 7], [0], [8192])[:35] + bytes([0x01, 0x02]) + bytes([0xFF, 0x3F]) + bytes(4), 10, "padding"),
    (_pairs([3], [0], [8192]), 1, "at least 2 bytes"),
])
def test_pair_table_structure_checks(table, n, match):
    with pytest.raises(models.FormatError, match=match):
        models.parse_table(memoryview(table), METHOD_RANS0_PAIRS, n, "here")
    with pytest.raises(models.FormatError):  # the reference decoder agrees
        reference._rans0_pairs(reference._Reader(table, "here", models.FormatError), n)


@pytest.mark.parametrize("n", [*range(0, 70), 1000, 65_537])
def test_numba_xxh64_matches_xxhash(n):
    import xxhash

    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    assert int(kernels.xxh64(data)) == xxhash.xxh64_intdigest(data)
