"""A new process answers header questions without numba or ml_dtypes, and reads a small tensor
without numba (issue 17: numba takes about a second to load, ml_dtypes over one to import)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

import llmcodec

HEAVY = ("numba", "llvmlite", "ml_dtypes")
REPORT = "import sys\nprint('HEAVY', *(m for m in {heavy!r} if m in sys.modules))\n"


def _heavy_modules(code: str, *args: str) -> list[str]:
    """The heavy modules a new Python process running `code` has imported at its end."""
    done = subprocess.run([sys.executable, "-c", code + REPORT.format(heavy=HEAVY), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.rsplit("HEAVY", 1)[1].split()


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes()).hexdigest()


@pytest.fixture
def mixed(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "mixed.llmc"
    tensors = {"embed": (rng.standard_normal((64, 48)) * 0.02).astype(ml_dtypes.bfloat16),
               "norm": (rng.standard_normal(384) * 0.02).astype(np.float32),
               "big": (rng.standard_normal(20_000) * 0.02).astype(np.float32)}
    llmcodec.save_file(tensors, path, {"note": "x"})
    return path, tensors


def test_open_keys_metadata_import_neither_numba_nor_ml_dtypes(mixed):
    path, _ = mixed
    code = (f"import llmcodec\nf = llmcodec.open({str(path)!r})\nassert f.keys() == ['big', 'embed', 'norm']\n"
            f"assert f.offset_keys() == ['embed', 'norm', 'big']\n"
            f"assert f.metadata() == {{'note': 'x'}}\nassert f.entry('embed').dtype.name == 'BF16'\n"
            f"assert f.get_slice('embed').get_shape() == [64, 48]\n")
    assert _heavy_modules(code) == []


def test_a_small_tensor_is_read_without_numba(mixed):
    path, tensors = mixed
    code = (f"import llmcodec\nf = llmcodec.open({str(path)!r})\n"
            f"assert f.get_tensor('norm').tobytes() == {tensors['norm'].tobytes()!r}\n")
    assert _heavy_modules(code) == []


def test_a_large_tensor_or_a_bf16_one_loads_what_it_needs(mixed):
    path, tensors = mixed
    code = (f"import llmcodec\nf = llmcodec.open({str(path)!r})\n"
            f"import hashlib\nassert hashlib.sha256(f.get_tensor('big')).hexdigest() == {_sha(tensors['big'])!r}\n")
    assert _heavy_modules(code) == ["numba", "llvmlite"]
    code = f"import llmcodec\nassert llmcodec.open({str(path)!r}).get_tensor('embed').dtype.name == 'bfloat16'\n"
    assert _heavy_modules(code) == ["ml_dtypes"]


def test_a_broken_small_tensor_gets_the_kernels_error(mixed, tmp_path):
    """Without numba loaded, the small-chunk path refuses what it cannot check and the kernels name
    the fault, as they do in a process where they already ran."""
    path, _ = mixed
    with llmcodec.open(path) as f:
        chunk = f.entry("norm").chunks[0]
    data = bytearray(path.read_bytes())
    data[chunk.offset + chunk.length - 1] ^= 0x01  # the last raw byte: a checksum fault
    bad = tmp_path / "bad.llmc"
    bad.write_bytes(bytes(data))
    with llmcodec.open(bad) as f, pytest.raises(llmcodec.ChecksumError) as warm:
        f.get_tensor("norm")
    code = (f"import llmcodec\ntry:\n    llmcodec.open({str(bad)!r}).get_tensor('norm')\n"
            f"except llmcodec.ChecksumError as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == str(warm.value)


def test_cli_help_imports_neither():
    assert _heavy_modules("import sys\nfrom llmcodec import cli\nsys.argv = ['llmcodec', '--help']\n"
                          "try:\n    cli.main()\nexcept SystemExit:\n    pass\n") == []
