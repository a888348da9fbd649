"""Opt-in lossy pre-steps: quantize and factorize, stored losslessly, rebuilt to the same bits."""

import dataclasses
import json

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

import llmcodec
from llmcodec import dtypes, files, transforms
from llmcodec.cli import app
from llmcodec.container import ContainerWriter, TensorSource
from llmcodec.errors import FormatError

from conftest import legacy_transform_file


def save_transformed(path, parts: dict, records: dict, metadata: dict | None = None) -> None:
    """A file of the stored `parts` (name -> array) and the transform `records` (spec 10)."""
    with ContainerWriter(path) as writer:
        writer.add_many([TensorSource(n, dtypes.from_numpy(a.dtype), a.shape, a) for n, a in parts.items()])
        writer.finish(metadata, transforms=records)


@pytest.fixture
def checkpoint(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "attn.weight": (rng.standard_normal((256, 384)) * 0.02).astype(np.float32),
        "mlp.weight": (rng.standard_normal((384, 256)) * 0.05).astype(np.float16),
        "low.weight": (rng.standard_normal((128, 16)) @ rng.standard_normal((16, 192)) * 0.01).astype(np.float32),
        "norm.weight": np.ones(384, np.float32),
        "ids": np.arange(10, dtype=np.int64),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


@pytest.mark.parametrize("bits,scheme,group", [(8, "symmetric", 128), (8, "affine", 0), (4, "symmetric", 32),
                                               (4, "affine", 64)])
def test_quantize_rebuilds_within_error_and_reads_back_bit_exact(checkpoint, tmp_path, bits, scheme, group):
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    done = files.transform_file(path, dst, "quantize", bits=bits, scheme=scheme, group_size=group)
    assert set(done) == {"attn.weight", "mlp.weight", "low.weight"}  # matrices only
    with llmcodec.open(dst) as f:
        assert f.keys() == sorted(tensors) and f.metadata() is None
        for name, w in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == w.dtype and got.shape == w.shape
            if name not in done:
                assert got.tobytes() == w.tobytes()
                continue
            err = np.linalg.norm(got.astype(np.float64) - w) / np.linalg.norm(w.astype(np.float64))
            assert err == pytest.approx(done[name].relative_error, rel=1e-9)
            assert err < (0.01 if bits == 8 else 0.12)
            parts = f.get_quantized(name)
            assert parts["q"].tobytes() == f.get_quantized(name)["q"].tobytes()
            assert got.tobytes() == transforms.rebuild(f.transform(name), parts).tobytes()  # the same bits, again
            assert parts["q"].dtype == (np.int8 if scheme == "symmetric" else np.uint8)
    assert llmcodec.load_file(dst)["attn.weight"].tobytes() == f_get(dst, "attn.weight").tobytes()


def f_get(path, name):
    with llmcodec.open(path) as f:
        return f.get_tensor(name)


def test_int8_stores_a_checkpoint_in_under_30_percent_of_fp32(checkpoint, tmp_path):
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    files.transform_file(path, dst, "quantize", bits=8)
    fp32_bytes = sum(w.size * 4 for w in tensors.values() if w.dtype.kind == "f")
    assert dst.stat().st_size <= 0.30 * fp32_bytes


def test_factorize_keeps_only_what_saves_space_and_rebuilds_deterministically(checkpoint, tmp_path):
    path, tensors = checkpoint
    dst = tmp_path / "f.llmc"
    done = files.transform_file(path, dst, "factorize", energy=0.9999)
    assert set(done) == {"low.weight"} and done["low.weight"].rank == 16  # a random matrix would not shrink
    assert done["low.weight"].relative_error < 1e-5
    with llmcodec.open(dst) as f:
        factors = f.get_factors("low.weight")
        assert factors["u"].shape == (128, 16) and factors["v"].shape == (16, 192)
        rebuilt = f.get_tensor("low.weight")
        exact = (factors["u"].astype(np.float64) @ factors["v"].astype(np.float64)).astype(np.float32)
        assert np.abs(rebuilt.astype(np.float64) - exact).max() <= np.abs(exact).max() * 1e-6
        with pytest.raises(llmcodec.InvalidArgumentError, match="not stored by quantize"):
            f.get_quantized("low.weight")


def test_decode_writes_the_rebuilt_checkpoint(checkpoint, tmp_path):
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    files.transform_file(path, dst, "quantize", bits=8)
    out = llmcodec.decode_file(dst, tmp_path / "rebuilt.safetensors")
    from safetensors.numpy import load_file
    rebuilt = load_file(str(out))
    assert sorted(rebuilt) == sorted(tensors) and rebuilt["norm.weight"].tobytes() == tensors["norm.weight"].tobytes()
    assert rebuilt["attn.weight"].tobytes() == f_get(dst, "attn.weight").tobytes()


def test_bf16_matrices(tmp_path):
    w = (np.random.default_rng(1).standard_normal((64, 128)) * 0.02).astype(ml_dtypes.bfloat16)
    path = tmp_path / "w.llmc"
    t, parts = transforms.quantize("w", w, "BF16", 8, 64, "symmetric")
    rebuilt = transforms.rebuild(t, parts)
    assert rebuilt.dtype == ml_dtypes.bfloat16 and t.relative_error < 0.01
    save_transformed(path, {f"w#{r}": p for r, p in parts.items()}, {"w": t})
    with llmcodec.open(path) as f:
        assert f.keys() == ["w"] and f.get_tensor("w").tobytes() == rebuilt.tobytes()


@pytest.mark.parametrize("mutate,match", [
    (lambda r: r["w"].update(kind="prune"), "unknown kind"),
    (lambda r: r["w"]["parts"].update(q="nope"), "parts"),
    (lambda r: r["w"].update(shape=[64, 192], original_bytes=64 * 192 * 4), "part q"),
    (lambda r: r["w"].update(original_bytes=16), "original_bytes 16 disagrees"),
    (lambda r: r["w"].update(bits="8"), "integers"),
    (lambda r: r.update(x=[1]), "not a valid transform record"),
])
def test_bad_legacy_records_are_format_errors(tmp_path, mutate, match):
    """Version 1.1 files hold the record as JSON in the metadata (spec 10.2)."""
    w = np.random.default_rng(2).standard_normal((64, 128)).astype(np.float32)
    t, parts = transforms.quantize("w", w, "F32", 8, 64, "symmetric")
    record = {"w": dataclasses.asdict(t)}
    mutate(record)
    path = tmp_path / "bad.llmc"
    legacy_transform_file(path, {f"w#{r}": p for r, p in parts.items()}, json.dumps(record))
    with pytest.raises(FormatError, match=match):
        llmcodec.open(path)


def test_cli_quantize_factorize_and_info(checkpoint, tmp_path):
    path, _ = checkpoint
    runner = CliRunner()
    r = runner.invoke(app, ["quantize", str(path), "-o", str(tmp_path / "q.llmc"), "--bits", "4", "--scheme", "affine"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(tmp_path / "q.llmc")])
    assert r.exit_code == 0 and "quantize 4-bit affine" in r.output and "relative error" in r.output
    r = runner.invoke(app, ["factorize", str(path), "-o", str(tmp_path / "f.llmc"), "--rank", "8"])
    assert r.exit_code == 0, r.output
    assert runner.invoke(app, ["factorize", str(path), "-o", str(tmp_path / "g.llmc")]).exit_code == 2
    assert runner.invoke(app, ["quantize", str(path), "-o", str(tmp_path / "h.llmc"), "--bits", "3"]).exit_code == 2


def test_load_file_counts_rebuilt_tensors_against_max_memory(checkpoint, tmp_path):
    """The rebuilt tensors are what load_file returns: max_memory must count them, not their parts."""
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    files.transform_file(path, dst, "quantize", bits=8)
    originals = sum(w.nbytes for w in tensors.values())  # what the returned dict holds
    with pytest.raises(llmcodec.LimitExceededError, match="max_memory"):
        llmcodec.load_file(dst, max_memory=originals - 1)
    back = llmcodec.load_file(dst, max_memory=4 * originals)
    assert {k: (v.dtype, v.shape) for k, v in back.items()} == {k: (v.dtype, v.shape) for k, v in tensors.items()}
