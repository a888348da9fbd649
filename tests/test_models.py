"""Order-0 models and the rANS coder, checked against constriction as an independent reference."""

import constriction
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcodec import kernels, models
from llmcodec.format import METHOD_CONSTANT, METHOD_RANS0, METHOD_RAW

counts_strategy = st.lists(st.integers(0, 10**7), min_size=256, max_size=256).filter(lambda c: any(c))


@settings(max_examples=300, deadline=None)
@given(counts=counts_strategy, precision=st.integers(8, 12))
def test_quantized_frequencies_are_a_valid_table(counts, precision):
    counts = np.array(counts, np.int64)
    freq = models.quantize_frequencies(counts, precision)
    assert freq.sum() == 1 << precision
    assert np.array_equal(freq > 0, counts > 0)  # present symbols >= 1, absent ones 0


def test_quantized_frequencies_are_close_to_the_counts():
    counts = np.bincount(np.random.default_rng(0).binomial(255, 0.5, 100_000), minlength=256)
    freq = models.quantize_frequencies(counts)
    p = counts[counts > 0] / counts.sum()
    entropy = -np.sum(p * np.log2(p)) * counts.sum()
    assert models.ideal_bits(counts, freq, models.PRECISION) < entropy * 1.002


def _encode(symbols):
    counts = np.bincount(symbols, minlength=256)
    freq = models.quantize_frequencies(counts)
    cum = np.concatenate(([0], np.cumsum(freq)[:-1]))
    out = np.empty(4 * models.LANES + 2 * symbols.size, np.uint8)
    start = kernels.rans_encode(symbols, freq, cum, models.PRECISION, out)
    return counts, freq, out[start:]


@pytest.mark.parametrize("n", [1, 2, 7, 8, 9, 1000, 100_003])
def test_rans_round_trip_and_size(n):
    rng = np.random.default_rng(n)
    symbols = (rng.standard_normal(n) * 3 + 120).clip(0, 255).astype(np.uint8)
    counts, freq, stream = _encode(symbols)
    table = models.parse_table(memoryview(models.serialize_table(freq, models.PRECISION, models.LANES)
                                          + stream.tobytes()), "test")
    out = np.empty(n, np.uint8)
    status = kernels.rans_decode(stream, table.decode_table(), table.precision, table.lanes, out)
    assert status == kernels.DECODE_OK and out.tobytes() == symbols.tobytes()
    # Coded words are the model's information content to within the lanes' final states.
    info_bits = models.ideal_bits(counts, freq, models.PRECISION)
    word_bits = (stream.size - 4 * models.LANES) * 8
    assert info_bits - 16 * models.LANES <= word_bits <= info_bits + 16 * models.LANES + 16


def test_rans_size_matches_constriction_on_the_same_model():
    """constriction's ANS coder, fed the same quantized probabilities, agrees on the size."""
    rng = np.random.default_rng(7)
    symbols = np.clip(rng.laplace(128, 6, 200_000), 0, 255).astype(np.uint8)
    counts, freq, stream = _encode(symbols)
    probs = freq / freq.sum()
    present = np.flatnonzero(freq)
    model = constriction.stream.model.Categorical(probs[present].astype(np.float64), perfect=False)
    index = np.searchsorted(present, symbols).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(index, model)
    theirs = coder.num_bits()
    ours = (stream.size - 4 * models.LANES) * 8 + 32 * models.LANES
    assert abs(ours - theirs) / theirs < 0.002
    assert abs(ours - models.ideal_bits(counts, freq, models.PRECISION)) / theirs < 0.002


@pytest.mark.parametrize("states,status", [
    ([1 << 16] * 7 + [5], kernels.DECODE_BAD_STATE),
])
def test_decoder_rejects_out_of_range_states(states, status):
    freq = np.zeros(256, np.int64)
    freq[:2] = 1 << 11
    table = models.Rans0Table(12, 8, freq, 0).decode_table()
    stream = np.array(states, "<u4").view(np.uint8)
    assert kernels.rans_decode(stream, table, 12, 8, np.empty(4, np.uint8)) == status


def test_decoder_stops_when_words_run_out():
    symbols = np.random.default_rng(1).integers(0, 2, 1000).astype(np.uint8)
    _, freq, stream = _encode(symbols)
    table = models.parse_table(memoryview(models.serialize_table(freq, 12, 8) + stream.tobytes()), "t")
    out = np.empty(1000, np.uint8)
    cut = stream[:stream.size - 20]
    assert kernels.rans_decode(cut, table.decode_table(), 12, 8, out) == kernels.DECODE_STREAM_SHORT
    assert kernels.rans_decode(stream, table.decode_table(), 12, 8, out[:999]) == kernels.DECODE_BAD_END


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
        models.parse_table(memoryview(table), "here")


def test_encode_plane_picks_the_cheapest_method():
    rng = np.random.default_rng(2)
    const = np.full(1000, 9, np.uint8)
    skewed = rng.choice(np.array([1, 2, 3], np.uint8), 1000, p=[0.9, 0.05, 0.05])
    uniform = rng.integers(0, 256, 1000, dtype=np.uint8)
    for plane, method in [(const, METHOD_CONSTANT), (skewed, METHOD_RANS0), (uniform, METHOD_RAW)]:
        coded = models.encode_plane(plane, np.bincount(plane, minlength=256))
        assert coded.method == method
        assert coded.length <= plane.size
