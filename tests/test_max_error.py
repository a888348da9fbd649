"""`quantize --max-error E`: per weight matrix the largest group size whose rebuilt tensor errs at
most E, or the matrix stored losslessly and reported (issue 20)."""

import doctest

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

import llmcodec
from llmcodec import files, transforms
from llmcodec.cli import app


def outliers(rows=64, cols=256, seed=0) -> np.ndarray:
    """Gaussian weights with one 8-sigma outlier per 128 columns of each row: absmax scales of
    128-column groups are 8x too coarse for the rest of their group."""
    w = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32) * 0.02
    w[:, ::128] *= 8
    return w


@pytest.fixture
def checkpoint(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "outliers.weight": outliers(),
        "plain.weight": (rng.standard_normal((128, 256)) * 0.02).astype(np.float16),
        "narrow.weight": (rng.standard_normal((256, 40)) * 0.02).astype(np.float32),  # 40 columns: no 128-groups
        "norm.weight": np.ones(256, np.float32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    return path, tensors


def test_outliers_get_the_largest_group_size_that_meets_the_bound():
    w = outliers()
    assert transforms.quantize("w", w, "F32", 8, 128, "symmetric")[0].relative_error > 0.01
    t, parts = transforms.quantize_within("w", w, "F32", 8, 128, "symmetric", 0.01)
    assert t.group_size == 32 and t.relative_error <= 0.01  # 64 errs 1.18%, 32 0.88%
    assert transforms.quantize("w", w, "F32", 8, 64, "symmetric")[0].relative_error > 0.01
    same = transforms.quantize("w", w, "F32", 8, 32, "symmetric")[1]
    assert all(parts[role].tobytes() == same[role].tobytes() for role in ("q", "scale"))


def test_every_quantized_matrix_meets_the_bound_and_the_file_agrees(checkpoint, tmp_path):
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    done = files.transform_file(path, dst, "quantize", bits=8, max_error=0.01)
    assert set(done) == {"outliers.weight", "plain.weight", "narrow.weight"} and done.unmet == {}
    assert {n: t.group_size for n, t in done.items()} == {"outliers.weight": 32, "plain.weight": 128,
                                                          "narrow.weight": 0}
    with llmcodec.open(dst) as f:
        for name, t in done.items():
            got = f.get_tensor(name)
            assert got.tobytes() == transforms.rebuild(f.transform(name), f.get_quantized(name)).tobytes()
            # the same function of the same bits: the recorded error is the file's, exactly
            assert transforms.relative_error(tensors[name], got) == t.relative_error == f.transform(name).relative_error
            assert t.relative_error <= 0.01


def test_a_matrix_no_group_size_brings_within_the_bound_is_stored_losslessly_and_reported(checkpoint, tmp_path):
    path, tensors = checkpoint
    dst = tmp_path / "q.llmc"
    done = files.transform_file(path, dst, "quantize", bits=8, max_error=0.0048)
    assert set(done.unmet) == {"outliers.weight", "narrow.weight"}
    smallest = min(transforms.quantize("w", tensors["outliers.weight"], "F32", 8, g, "symmetric")[0].relative_error
                   for g in (128, 64, 32, 16))
    assert done.unmet["outliers.weight"] == smallest > 0.0048  # the best of the ladder, reported
    assert set(done) == {"plain.weight"} and done["plain.weight"].group_size == 16
    assert done["plain.weight"].relative_error <= 0.0048
    with llmcodec.open(dst) as f:
        assert f.transform("outliers.weight") is None and f.transform("narrow.weight") is None
        for name in done.unmet:
            assert f.get_tensor(name).tobytes() == tensors[name].tobytes()


def test_group_sizes_tried_halve_from_the_requested_one_down_to_16(monkeypatch):
    """At most 1 + log2(group / 16) quantizations per matrix; a row that 128 does not divide starts
    from the row."""
    tried = []
    quantize = transforms.quantize
    monkeypatch.setattr(transforms, "quantize", lambda *a: tried.append(a[4]) or quantize(*a))
    transforms.quantize_within("w", outliers(), "F32", 8, 128, "symmetric", 1e-9)
    assert tried == [128, 64, 32, 16]
    tried.clear()
    transforms.quantize_within("w", outliers(cols=40), "F32", 8, 0, "symmetric", 1e-9)
    assert tried == [0, 20]
    tried.clear()
    transforms.quantize_within("w", outliers(), "F32", 8, 128, "symmetric", 0.5)
    assert tried == [128]


def test_a_bound_the_first_setting_meets_writes_the_same_bytes_as_no_bound(checkpoint, tmp_path):
    path, _ = checkpoint
    files.transform_file(path, tmp_path / "a.llmc", "quantize", bits=4, scheme="affine", group_size=64)
    done = files.transform_file(path, tmp_path / "b.llmc", "quantize", bits=4, scheme="affine", group_size=64,
                                max_error=1.0)
    assert done.unmet == {} and (tmp_path / "a.llmc").read_bytes() == (tmp_path / "b.llmc").read_bytes()
    files.transform_file(path, tmp_path / "c.llmc", "quantize", max_error=0.0048)
    files.transform_file(path, tmp_path / "d.llmc", "quantize", max_error=0.0048)
    assert (tmp_path / "c.llmc").read_bytes() == (tmp_path / "d.llmc").read_bytes()  # deterministic


@pytest.mark.parametrize("bad", [0.0, -0.01, float("nan")])
def test_max_error_must_be_positive(checkpoint, tmp_path, bad):
    path, _ = checkpoint
    with pytest.raises(llmcodec.InvalidArgumentError, match="max_error"):
        files.transform_file(path, tmp_path / "q.llmc", "quantize", max_error=bad)
    r = CliRunner().invoke(app, ["quantize", str(path), "-o", str(tmp_path / "q.llmc"), "--max-error", str(bad)])
    assert r.exit_code == 2 and "--max-error" in r.output


def test_max_error_is_for_quantize_only(checkpoint, tmp_path):
    with pytest.raises(llmcodec.InvalidArgumentError, match="max_error is for quantize"):
        files.transform_file(checkpoint[0], tmp_path / "f.llmc", "factorize", rank=4, max_error=0.01)


def test_cli_reports_the_matrices_that_cannot_meet_the_bound(checkpoint, tmp_path):
    path, _ = checkpoint
    runner = CliRunner()
    r = runner.invoke(app, ["quantize", str(path), "-o", str(tmp_path / "q.llmc"), "--max-error", "0.01"])
    assert r.exit_code == 0, r.output
    assert "3 tensors quantized, group sizes chosen: row x1, 128 x1, 32 x1, largest relative error" in r.output
    assert "stored losslessly" not in r.output
    r = runner.invoke(app, ["quantize", str(path), "-o", str(tmp_path / "q.llmc"), "-f", "-q", "--max-error", "0.0048"])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) == 2 and lines[0].startswith("llmcodec: narrow.weight: no group size meets --max-error 0.480% "
                                                   "(smallest relative error ")
    assert lines[1].startswith("llmcodec: outliers.weight: no group size meets") and "stored losslessly" in lines[1]


def test_docstring_example_runs():
    for test in doctest.DocTestFinder().find(transforms.quantize_within, globs=vars(transforms)):
        runner = doctest.DocTestRunner()
        runner.run(test)
        assert runner.failures == 0 and test.examples
