"""Weights that were quantized before they reached us (fp8, packed int4) are coded near their entropy."""

import ml_dtypes
import numpy as np

import llmcodec
from llmcodec.stats import entropy_bits


def _weights(n: int) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(n) * 0.02).astype(np.float32)


def test_fp8_beats_its_sign_exponent_mantissa_fields(tmp_path):
    """A byte model of fp8 sees sign, exponent and mantissa jointly: no worse than coding each field."""
    for dtype in (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2):
        f8 = _weights(400_000).astype(dtype)
        b = f8.view(np.uint8).astype(np.int64)
        mantissa_bits = 3 if dtype == ml_dtypes.float8_e4m3fn else 2
        fields = [b >> 7, (b >> mantissa_bits) & ((1 << (7 - mantissa_bits)) - 1), b & ((1 << mantissa_bits) - 1)]
        field_ideal = sum(entropy_bits(np.bincount(f)) for f in fields) / 8
        path = tmp_path / "f8.llmc"
        llmcodec.save_file({"w": f8}, path)
        assert path.stat().st_size / f8.nbytes < field_ideal


def test_packed_int4_is_coded_near_its_nibble_entropy(tmp_path):
    """GPTQ/AWQ-style int4: two per byte (uint8) or eight per int32: each byte codes two nibbles."""
    q = np.clip(np.rint(_weights(400_000) / 0.01), -8, 7).astype(np.int64) & 15
    packed = (q[0::2] | (q[1::2] << 4)).astype(np.uint8)
    nibble_ideal = entropy_bits(np.bincount(q)) / 4  # bits per nibble, two nibbles per byte
    path = tmp_path / "i4.llmc"
    llmcodec.save_file({"qweight": packed.view(np.int32).reshape(-1, 50), "packed": packed}, path)
    assert path.stat().st_size / (2 * packed.nbytes) < nibble_ideal + 0.01
