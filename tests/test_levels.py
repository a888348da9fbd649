"""Encoding levels (codec.LEVELS): "fast" is the default, byte for byte; "max" writes files any
reader reads, bit-exact, no larger than fast's on weights, with the chunk size chosen per tensor."""

import hashlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import codec, reference
from llmcodec.container import ContainerReader
from llmcodec.errors import InvalidArgumentError

BF16 = ml_dtypes.bfloat16


def _tensors(seed: int = 0) -> dict:
    """Weights of every kind a level treats differently: a bf16 matrix whose sign + mantissa plane
    codes ~0.3% smaller (fast stores it raw), fp32 and fp16 ones, a tensor with two regimes (small
    chunks follow them), bytes, 8-byte integers, a scalar and an empty tensor."""
    rng = np.random.default_rng(seed)
    two = np.concatenate([rng.standard_normal(200_000) * 1e-3, rng.standard_normal(200_000) * 10])
    return {
        "bf16": (rng.standard_normal((600, 700)) * 0.02).astype(BF16),
        "f32": (rng.standard_normal(150_000) * 0.05).astype(np.float32),
        "f16": (rng.standard_normal((300, 500)) * 0.1).astype(np.float16),
        "regimes": two.astype(np.float16),
        "u8": rng.integers(0, 7, 70_000).astype(np.uint8),
        "i64": np.arange(-500, 500, dtype=np.int64),
        "scalar": np.asarray(np.float32(3.5)),
        "empty": np.zeros((0, 4), BF16),
    }


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


def test_fast_is_the_default_byte_for_byte(tmp_path):
    tensors = _tensors()
    llmcodec.save_file(tensors, tmp_path / "default.llmc", threads=1)
    llmcodec.save_file(tensors, tmp_path / "fast.llmc", threads=1, level="fast")
    assert (tmp_path / "default.llmc").read_bytes() == (tmp_path / "fast.llmc").read_bytes()


def test_max_round_trips_bit_exact_smaller_and_the_reference_agrees(tmp_path):
    tensors = _tensors()
    llmcodec.save_file(tensors, tmp_path / "fast.llmc", threads=2)
    llmcodec.save_file(tensors, tmp_path / "max.llmc", threads=2, level="max")
    assert _same(llmcodec.load_file(tmp_path / "max.llmc"), tensors)
    ref = reference.decode((tmp_path / "max.llmc").read_bytes()).tensors
    assert ref.keys() == tensors.keys() and all(ref[k].data == tensors[k].tobytes() for k in tensors)
    fast, best = (tmp_path / "fast.llmc").stat().st_size, (tmp_path / "max.llmc").stat().st_size
    assert best < fast  # the bf16 sign + mantissa plane alone saves ~1 KB
    with ContainerReader(tmp_path / "max.llmc") as r:
        sizes = {name: t.chunk_elements * t.dtype.itemsize for name, t in r.stored.items()}
    assert set(sizes.values()) <= set(codec.CHUNK_TRIALS)
    assert sizes["regimes"] < codec.DEFAULT_CHUNK_SIZE  # small chunks keep the two regimes apart


def test_max_keeps_a_chunk_size_it_is_given(tmp_path):
    tensors = _tensors()
    llmcodec.save_file(tensors, tmp_path / "max.llmc", threads=1, level="max", chunk_size=96 << 10)
    with ContainerReader(tmp_path / "max.llmc") as r:
        assert {t.chunk_elements * t.dtype.itemsize for t in r.stored.values()} == {96 << 10}
    assert _same(llmcodec.load_file(tmp_path / "max.llmc"), tensors)


def test_the_chunk_size_chosen_is_the_smallest_of_the_trials(tmp_path):
    """A tensor no larger than the trial window is coded whole at every size: the choice is the
    size whose file is smallest, as writing the file at each size shows."""
    t = {"regimes": _tensors()["regimes"]}
    llmcodec.save_file(t, tmp_path / "max.llmc", level="max")
    with ContainerReader(tmp_path / "max.llmc") as r:
        chosen = r.stored["regimes"].chunk_elements * 2
    written = {}
    for size in codec.CHUNK_TRIALS:
        llmcodec.save_file(t, tmp_path / f"{size}.llmc", chunk_size=size, level="max")
        written[size] = (tmp_path / f"{size}.llmc").stat().st_size
    assert written[chosen] == min(written.values())


@pytest.mark.parametrize("bad", ["ultra", "MAX", "", None, 3])
def test_an_unknown_level_is_refused_before_any_work(tmp_path, bad):
    with pytest.raises(InvalidArgumentError, match="level must be one of 'fast', 'max'"):
        llmcodec.save_file(_tensors(), tmp_path / "x.llmc", level=bad)
    src = tmp_path / "m.safetensors"
    st_save({"w": np.ones(8, np.float32)}, src)
    with pytest.raises(InvalidArgumentError, match="level must be"):
        llmcodec.encode_file(src, tmp_path / "y.llmc", level=bad)
    assert not (tmp_path / "x.llmc").exists() and not (tmp_path / "y.llmc").exists()


def test_max_with_a_base_round_trips(tmp_path):
    rng = np.random.default_rng(1)
    base = {"w": (rng.standard_normal((400, 300)) * 0.02).astype(BF16),
            "b": rng.standard_normal(300).astype(np.float32)}
    ft = {"w": (base["w"].astype(np.float32) + rng.standard_normal((400, 300)).astype(np.float32) * 1e-4).astype(BF16),
          "b": base["b"] * np.float32(0.999)}
    st_save(base, tmp_path / "base.safetensors")
    llmcodec.save_file(ft, tmp_path / "fast.llmc", base=tmp_path / "base.safetensors")
    llmcodec.save_file(ft, tmp_path / "max.llmc", base=tmp_path / "base.safetensors", level="max")
    assert _same(llmcodec.load_file(tmp_path / "max.llmc", base=tmp_path / "base.safetensors"), ft)
    assert (tmp_path / "max.llmc").stat().st_size <= (tmp_path / "fast.llmc").stat().st_size
    with ContainerReader(tmp_path / "max.llmc") as r:
        assert r.stored["w"].delta is not None


def test_command_line_level_max_and_a_bad_level(tmp_path):
    src = tmp_path / "m.safetensors"
    st_save({k: v for k, v in _tensors().items() if k != "empty"}, src)
    cli = [sys.executable, "-m", "llmcodec.cli"]
    r = subprocess.run([*cli, "encode", str(src), "-o", str(tmp_path / "m.llmc"), "--level", "max", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*cli, "decode", str(tmp_path / "m.llmc"), "-o", str(tmp_path / "back.safetensors"), "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256((tmp_path / "back.safetensors").read_bytes()).digest() == \
        hashlib.sha256(src.read_bytes()).digest()
    r = subprocess.run([*cli, "encode", str(src), "-o", str(tmp_path / "n.llmc"), "--level", "ultra"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "ultra" in r.stderr and not (tmp_path / "n.llmc").exists()
    r = subprocess.run([*cli, "quantize", str(src), "-o", str(tmp_path / "q.llmc"), "--level", "max", "-q"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert set(llmcodec.load_file(tmp_path / "q.llmc")) == set(llmcodec.load_file(tmp_path / "m.llmc"))
