"""Random corruptions of valid files: every one raises an LlmcodecError or decodes exactly."""

import numpy as np
import pytest

import llmcodec
from llmcodec import reference


def _valid_file(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(30_000) * 0.02).astype(np.float32)
    tensors = {
        "pairs": np.repeat(rng.integers(40, 60, 4001, dtype=np.uint8), 2)[:8001],  # RANS0_PAIRS, odd length
        "w": w,  # RANS0 exponents, RAW mantissas
        "c": np.zeros(100, np.int16),  # CONSTANT
        "s": np.array(1.5, np.float64),
    }
    path = tmp_path / "v.llmc"
    llmcodec.save_file(tensors, path, {"k": "v"}, chunk_size=8192)
    return path.read_bytes(), tensors


def _outcome(data: bytes, tensors: dict) -> str:
    """'error' if the file is rejected with an LlmcodecError, 'exact' if it decodes to the original."""
    try:
        got = llmcodec.load_file(data)
    except llmcodec.LlmcodecError:
        return "error"
    assert all(got[k].tobytes() == v.tobytes() for k, v in tensors.items()), "decoded to wrong weights"
    return "exact"


@pytest.mark.parametrize("kind", ["flip", "byte", "truncate", "zero-run"])
def test_random_corruptions_are_caught(tmp_path, kind):
    data, tensors = _valid_file(tmp_path)
    rng = np.random.default_rng(hash(kind) % 2**32)
    outcomes = []
    for _ in range(100):  # 4 kinds x 100 = 400 corruptions
        bad = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        if kind == "flip":
            bad[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "byte":
            bad[pos] = (bad[pos] + int(rng.integers(1, 256))) % 256
        elif kind == "truncate":
            bad = bad[:pos]
        else:
            end = min(len(bad), pos + int(rng.integers(1, 64)))
            bad[pos:end] = bytes(end - pos)
        outcomes.append(_outcome(bytes(bad), tensors))
    assert outcomes.count("error") >= 90  # checksums cover every byte; "exact" only if nothing changed


def test_corrupted_streams_never_crash_the_kernels(tmp_path):
    """Bytes of the data section changed (the header stays valid): the kernels meet hostile tables,
    states and words; they must report an error (or decode exactly), never crash or read out of bounds."""
    data, tensors = _valid_file(tmp_path)
    header_at = int.from_bytes(data[16:24], "little")
    rng = np.random.default_rng(5)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(40, header_at))] = int(rng.integers(0, 256))
        assert _outcome(bytes(bad), tensors) in ("error", "exact")


def test_reference_decoder_rejects_the_same_corruptions(tmp_path):
    data, tensors = _valid_file(tmp_path)
    rng = np.random.default_rng(9)
    for _ in range(40):
        bad = bytearray(data)
        bad[int(rng.integers(0, len(data)))] ^= 0x10
        fast = _outcome(bytes(bad), tensors)
        try:
            reference.decode(bytes(bad))
            slow = "exact"
        except llmcodec.LlmcodecError:
            slow = "error"
        assert fast == slow
