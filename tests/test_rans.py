"""Order-0 models and the rANS coder (kernels), checked against constriction as an independent
reference; table checks report the fault codes whose messages codec.FAULTS holds."""

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcodec import codec, kernels, reference
from llmcodec.errors import FormatError
from llmcodec.format import METHOD_CONSTANT, METHOD_RANS0, METHOD_RANS0_PAIRS, METHOD_RAW

PRECISION, PAIR_PRECISION, LANES = kernels.PRECISION, kernels.PAIR_PRECISION, kernels.ENCODE_LANES


def quantize_frequencies(counts, precision):
    return kernels.quantize_frequencies(np.asarray(counts, np.int64), precision)


def ideal_bits(counts, freq, precision):
    return float(np.sum(counts * (precision - np.log2(freq))))


def decode_table(symbols, freq, precision):
    return kernels.decode_table(np.asarray(symbols, np.int64), np.asarray(freq, np.int64), precision)


counts_strategy = st.lists(st.integers(1, 10**7), min_size=1, max_size=600)


@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, precision=st.integers(10, 14))
def test_quantized_frequencies_are_a_valid_table(counts, precision):
    counts = np.array(counts, np.int64)
    freq = quantize_frequencies(counts, precision)
    assert freq.sum() == 1 << precision
    assert (freq >= 1).all() and freq.shape == counts.shape


def test_quantized_frequencies_are_close_to_the_counts():
    counts = np.bincount(np.random.default_rng(0).binomial(255, 0.5, 100_000), minlength=256)
    c = counts[counts > 0]
    freq = quantize_frequencies(c, PRECISION)
    p = c / c.sum()
    entropy = -np.sum(p * np.log2(p)) * c.sum()
    assert ideal_bits(c, freq, PRECISION) < entropy * 1.002


def _decode(coded, n):
    stream = coded.stream
    out = np.empty(n, np.uint8)
    assert kernels._decode_plane(stream, coded.method, n, out, np.empty(1 << 14, np.int64)) == kernels.FAULT_OK
    return out, stream


def _table_size(stream, method, n):
    fault, precision, lanes, symbols, freq, size = kernels.rans_table(stream, method, n)
    assert fault == kernels.FAULT_OK
    return size, freq


def _gaussian_exponents(n, seed):
    w = (np.random.default_rng(seed).standard_normal(n) * 0.02).astype(np.float32)
    return ((w.view(np.uint32) >> 23) & 0xFF).astype(np.uint8)


@pytest.mark.parametrize("method", [METHOD_RANS0, METHOD_RANS0_PAIRS])
@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 16, 17, 1000, 100_003])
def test_rans_round_trip_and_size(method, n):
    plane = _gaussian_exponents(n, n)
    if method == METHOD_RANS0:
        counts, precision = np.bincount(plane, minlength=256), PRECISION
    else:
        counts, precision = kernels.pair_histogram(plane), PAIR_PRECISION
    symbols = np.flatnonzero(counts)
    freq = quantize_frequencies(counts[symbols], precision)
    coded = codec.encode_plane(plane, methods=[method], min_gain=-np.inf)
    assert coded.method == method
    out, stream = _decode(coded, n)
    assert out.tobytes() == plane.tobytes()
    # The words carry the model's information content to within the lanes' final states.
    size, _ = _table_size(stream, method, n)
    info_bits = ideal_bits(counts[symbols], freq, precision)
    word_bits = (stream.size - size - 4 * LANES) * 8
    assert info_bits - 16 * LANES <= word_bits <= info_bits + 16 * LANES + 16


def test_rans_size_matches_constriction_on_the_same_model():
    """constriction's ANS coder, fed the same quantized probabilities, agrees on the size."""
    rng = np.random.default_rng(7)
    plane = np.clip(rng.laplace(128, 6, 200_000), 0, 255).astype(np.uint8)
    counts = np.bincount(plane, minlength=256)
    symbols = np.flatnonzero(counts)
    freq = quantize_frequencies(counts[symbols], PRECISION)
    coded = codec.encode_plane(plane, methods=[METHOD_RANS0], min_gain=-np.inf)
    size, table_freq = _table_size(coded.stream, METHOD_RANS0, plane.size)
    assert table_freq.tobytes() == freq.tobytes()
    model = constriction.stream.model.Categorical((freq / freq.sum()).astype(np.float64), perfect=False)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(np.searchsorted(symbols, plane).astype(np.int32), model)
    theirs = coder.num_bits()
    ours = (coded.length - size - 4 * LANES) * 8 + 32 * LANES
    assert abs(ours - theirs) / theirs < 0.002
    assert abs(ours - ideal_bits(counts[symbols], freq, PRECISION)) / theirs < 0.002


def test_pairs_are_chosen_for_exponents_and_decode_faster_shape():
    plane = _gaussian_exponents(200_000, 1)
    coded = codec.encode_plane(plane)
    assert coded.method == METHOD_RANS0_PAIRS
    assert _decode(coded, plane.size)[0].tobytes() == plane.tobytes()


@pytest.mark.parametrize("states,status", [
    ([1 << 16] * 7 + [5], kernels.DECODE_BAD_STATE),
])
def test_decoder_rejects_out_of_range_states(states, status):
    table = decode_table([0, 1], [2048, 2048], 12)
    stream = np.array(states, "<u4").view(np.uint8)
    assert kernels.rans_decode(stream, table, 12, 8, 1, np.empty(4, np.uint8)) == status


def test_decoder_stops_when_words_run_out():
    plane = np.random.default_rng(1).integers(0, 2, 1000).astype(np.uint8)
    freq = quantize_frequencies(np.bincount(plane), 12)
    coded = codec.encode_plane(plane, methods=[METHOD_RANS0], min_gain=-np.inf)
    stream = coded.stream[kernels.RANS0_TABLE + 2 * 2:]
    table = decode_table([0, 1], freq, 12)
    out = np.empty(1000, np.uint8)
    cut = stream[:stream.size - 20]
    assert kernels.rans_decode(cut, table, 12, 8, 1, out) == kernels.DECODE_STREAM_SHORT
    assert kernels.rans_decode(stream, table, 12, 8, 1, out[:999]) == kernels.DECODE_BAD_END


def _fault(table: bytes, method: int, n: int) -> int:
    return int(kernels.rans_table(np.frombuffer(table, np.uint8), method, n)[0])


@pytest.mark.parametrize("table,fault", [
    (bytes([0, 8]) + bytes(32), kernels.FAULT_PRECISION),
    (bytes([13, 8]) + bytes(32), kernels.FAULT_PRECISION),
    (bytes([12, 0]) + bytes(32), kernels.FAULT_LANES),
    (bytes([12, 65]) + bytes(32), kernels.FAULT_LANES),
    (bytes([12, 8]) + bytes(32) + bytes(32), kernels.FAULT_BITMAP_EMPTY),
    (bytes([12, 1]) + b"\x03" + bytes(31) + (99).to_bytes(2, "little") * 2 + bytes(4), kernels.FAULT_FREQ_SUM),
    (bytes([12, 1]) + b"\x01" + bytes(31) + (4095).to_bytes(2, "little") + bytes(3), kernels.FAULT_STATES_SHORT),
    (bytes([12, 1]) + b"\x01" + bytes(31) + (4095).to_bytes(2, "little") + bytes(5), kernels.FAULT_ODD_WORDS),
    (bytes([12, 1]) + b"\x01" + bytes(31), kernels.FAULT_TABLE_END),
    (bytes([12, 1]), kernels.FAULT_TABLE_SHORT),
])
def test_table_checks(table, fault):
    assert _fault(table, METHOD_RANS0, 100) == fault
    with pytest.raises(FormatError):  # the reference decoder agrees
        reference._rans0(reference._Reader(table, "here", FormatError), 100)()


def _pairs(used, cells, freqs, odd=0, precision=13, tail=bytes(4)):
    """A RANS0_PAIRS table by hand: byte set, pair-bitmap cells, frequencies as given (ULEB128)."""
    s = len(used)
    head = bytes([precision, 1, odd]) + np.packbits(np.isin(np.arange(256), used), bitorder="little").tobytes()
    bitmap = np.packbits(np.isin(np.arange(s * s), cells), bitorder="little").tobytes()
    varints = b"".join(bytes([f - 1]) if f - 1 < 128 else bytes([((f - 1) & 0x7F) | 0x80, (f - 1) >> 7])
                       for f in freqs)
    return head + bitmap + varints + tail


@pytest.mark.parametrize("table,n,fault", [
    (_pairs([3, 5], [0, 3], [4096, 4096]), 10, kernels.FAULT_OK),
    (_pairs([3, 5], [0, 3], [4096, 4095]), 10, kernels.FAULT_FREQ_SUM),
    (_pairs([], [], []), 10, kernels.FAULT_BITMAP_EMPTY),
    (_pairs([3, 5], [], [], tail=b""), 10, kernels.FAULT_PAIRS_EMPTY),
    (_pairs([3], [0], [8192], odd=7), 10, kernels.FAULT_ODD_BYTE),
    (_pairs([3], [0], [8192], odd=7), 11, kernels.FAULT_OK),
    (_pairs([3, 5], [0, 1, 2], [4096, 4096], tail=b""), 10, kernels.FAULT_FREQ_END),
    (_pairs([3], [0], [8192], precision=15), 10, kernels.FAULT_PRECISION),
    (_pairs([3], [0], [8192])[:-5] + bytes([0x80, 0x00]) + bytes(4), 10, kernels.FAULT_FREQ_NUMBER),
    (_pairs([3], [0], [8192])[:35], 10, kernels.FAULT_TABLE_END),
    (_pairs([3, 5], [0], [8192]), 10, kernels.FAULT_PAIR_UNUSED),
    (_pairs([3, 5, 7], [0], [8192])[:35] + bytes([0x01, 0x02]) + bytes([0xFF, 0x3F]) + bytes(4), 10,
     kernels.FAULT_PAIR_PADDING),
    (_pairs([3], [0], [8192]), 1, kernels.FAULT_PAIRS_PLANE),
])
def test_pair_table_checks(table, n, fault):
    assert _fault(table, METHOD_RANS0_PAIRS, n) == fault
    if fault != kernels.FAULT_OK:
        with pytest.raises(FormatError):  # the reference decoder agrees
            reference._rans0_pairs(reference._Reader(table, "here", FormatError), n)()


def test_encode_plane_picks_the_cheapest_method():
    rng = np.random.default_rng(2)
    const = np.full(1000, 9, np.uint8)
    skewed = rng.choice(np.array([1, 2, 3], np.uint8), 1000, p=[0.9, 0.05, 0.05])
    uniform = rng.integers(0, 256, 1000, dtype=np.uint8)
    for plane, method in [(const, METHOD_CONSTANT), (skewed, METHOD_RANS0), (uniform, METHOD_RAW)]:
        coded = codec.encode_plane(plane)
        assert coded.method == method
        assert coded.length <= plane.size


@pytest.mark.parametrize("n", [*range(0, 70), 1000, 65_537])
def test_numba_xxh64_matches_xxhash(n):
    import xxhash

    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    assert int(kernels.xxh64(data)) == xxhash.xxh64_intdigest(data)


@pytest.mark.parametrize("n", [1, 9, 1000, 100_003])
def test_a_rans0_plane_of_one_symbol_decodes(n):
    """A RANS0 table may give one symbol all 2^12 slots (the writer stores such a plane as
    CONSTANT, another may not): too wide for the packed 32-bit table, decoded all the same."""
    plane = np.full(n, 7, np.uint8)
    coded = codec.encode_plane(plane, methods=[METHOD_RANS0], min_gain=-np.inf)
    assert coded.method == METHOD_RANS0 and _table_size(coded.stream, METHOD_RANS0, n)[1].tolist() == [4096]
    assert _decode(coded, n)[0].tobytes() == plane.tobytes()


def _pairs_stream(plane: np.ndarray, precision: int) -> bytes:
    """A RANS0_PAIRS stream (spec 6.4) of `plane` at any precision, 8 lanes, assembled here from
    kernels.rans_encode: the writer itself always uses PAIR_PRECISION."""
    n = plane.size
    pairs = plane[:n - n % 2].view("<u2").astype(np.int64)
    used = np.unique(np.concatenate([pairs & 0xFF, pairs >> 8]))
    s = used.size
    cells, ids, counts = np.unique(np.searchsorted(used, pairs & 0xFF) * s + np.searchsorted(used, pairs >> 8),
                                   return_inverse=True, return_counts=True)
    freq = quantize_frequencies(counts, precision)
    words = np.empty(ids.size + 1, np.uint16)
    states, first = kernels.rans_encode(ids.astype(np.uint16), freq, np.cumsum(freq) - freq, precision, words)
    table = _pairs(used.tolist(), cells.tolist(), freq.tolist(), odd=int(plane[-1]) if n % 2 else 0,
                   precision=precision, tail=b"")
    return (table[:1] + bytes([LANES]) + table[2:] + states.astype("<u4").tobytes()
            + words[first:].astype("<u2").tobytes())


def _kernel_pairs(stream: bytes, n: int) -> tuple[int, bytes]:
    """(fault, bytes) of kernels decoding a RANS0_PAIRS plane into an odd offset of a buffer."""
    buf = np.zeros(n + 1, np.uint8)
    fault = kernels._decode_plane(np.frombuffer(stream, np.uint8), METHOD_RANS0_PAIRS, n, buf[1:],
                                  np.empty(1 << 14, np.int64))
    return int(fault), buf[1:].tobytes()


@pytest.mark.parametrize("precision", [3, 9, PAIR_PRECISION, 14])
@pytest.mark.parametrize("n", [*range(2, 80), 127, 128, 129, 1001, 4097, 65_537])
def test_pairs_decode_like_the_reference(n, precision):
    """Every plane length around the 8-lane bulk loop's edges (fewer pairs than lanes, whole
    groups, tails, odd planes), into an odd offset, at any precision (the bulk loop runs from
    2^precision / 4 pairs: at P = 3 on every plane): the kernels' bytes are the reference
    decoder's and the plane's; a stream one word short or long fails in both."""
    rng = np.random.default_rng(n * precision)
    if precision == 3:  # two bytes: at most 4 pairs
        plane = (rng.random(n) < 0.2).astype(np.uint8) + 100
    else:  # a few dozen pairs, skewed
        plane = np.minimum(rng.geometric(0.3, n) + 100, 255).astype(np.uint8)
    stream = _pairs_stream(plane, precision)
    decode = reference._rans0_pairs(reference._Reader(stream, "here", FormatError), n)
    assert decode() == plane.tobytes()
    assert _kernel_pairs(stream, n) == (kernels.FAULT_OK, plane.tobytes())
    for broken in (stream[:-2], stream + bytes(2)):
        assert _kernel_pairs(broken, n)[0] != kernels.FAULT_OK
        with pytest.raises(FormatError):
            reference._rans0_pairs(reference._Reader(broken, "here", FormatError), n)()


@pytest.mark.parametrize("n", [2, 17, 1000, 100_003])
def test_a_pairs_plane_of_one_pair_decodes(n):
    """One pair may own all 2^14 slots: the largest frequency the pair table holds."""
    plane = np.full(n, 7, np.uint8)
    stream = _pairs_stream(plane, 14)
    assert _kernel_pairs(stream, n) == (kernels.FAULT_OK, plane.tobytes())
