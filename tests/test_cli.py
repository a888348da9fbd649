"""The command line: exit codes, one-line errors, default names, --force, no partial output."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file as st_save
from typer.testing import CliRunner

from llmcodec.cli import app

runner = CliRunner()


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    st_save({"w": (rng.standard_normal((200, 100)) * 0.02).astype(np.float32), "n": np.arange(5)}, src)
    return src


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_encode_decode_default_names(model, tmp_path):
    original = model.read_bytes()
    r = run("encode", model, "--quiet")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model.llmc").exists()
    model.unlink()
    r = run("decode", tmp_path / "model.llmc", "-q")
    assert r.exit_code == 0, r.output
    assert model.read_bytes() == original


def test_refuses_to_overwrite_without_force(model, tmp_path):
    out = tmp_path / "model.llmc"
    out.write_bytes(b"keep me")
    r = run("encode", model)
    assert r.exit_code == 1
    assert "already exists" in r.output and "--force" in r.output
    assert out.read_bytes() == b"keep me"
    assert run("encode", model, "--force", "-q").exit_code == 0
    assert out.read_bytes()[:5] == b"\x89LLMC"


def test_missing_file(tmp_path):
    r = run("encode", tmp_path / "nope.safetensors")
    assert r.exit_code == 1
    missing = tmp_path / "nope.safetensors"
    assert r.output.strip().splitlines() == [f"llmcodec: error: {missing}: no such file or folder"]


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a checkpoint at all")
    r = run("encode", bad)
    assert r.exit_code == 1
    assert len(r.output.strip().splitlines()) == 1 and "not a safetensors file" in r.output
    assert not (tmp_path / "bad.llmc").exists()


def test_verify_good_and_corrupted(model, tmp_path):
    run("encode", model, "-q")
    enc = tmp_path / "model.llmc"
    r = run("verify", enc)
    assert r.exit_code == 0 and "OK" in r.output
    data = bytearray(enc.read_bytes())
    data[len(data) // 3] ^= 0x10
    enc.write_bytes(data)
    r = run("verify", enc)
    assert r.exit_code == 1 and r.output.startswith("llmcodec: error:")
    assert "Traceback" not in r.output


def test_info_table_and_json(model, tmp_path):
    run("encode", model, "-q")
    r = run("info", tmp_path / "model.llmc")
    assert r.exit_code == 0 and "total" in r.output and "F32" in r.output
    r = run("info", tmp_path / "model.llmc", "--json")
    stats = json.loads(r.output)
    assert {t["name"] for t in stats["tensors"]} == {"w", "n"}
    assert stats["original_sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    plane = stats["tensors"][0]["planes"][0]
    assert set(plane) == {"method_counts", "coded_bytes", "bits_per_symbol", "entropy"}


def test_info_limits(model, tmp_path):
    run("encode", model, "-q")
    r = run("info", tmp_path / "model.llmc", "--limits")
    assert r.exit_code == 0 and "adaptive" in r.output and "total" in r.output
    stats = json.loads(run("info", tmp_path / "model.llmc", "--limits", "--json").output)
    plane = stats["tensors"][0]["planes"][0]
    assert set(plane["contexts"]) == {"order0", "previous", "above", "plane0"}
    assert plane["best_context"] in plane["contexts"]
    assert stats["adaptive_bytes"] == pytest.approx(sum(t["adaptive_bytes"] for t in stats["tensors"]))


def test_usage_error_exits_2(tmp_path):
    assert run("encode").exit_code == 2
    assert run("encode", tmp_path, "--threads", "-1").exit_code == 2
    assert run("frobnicate").exit_code == 2


def test_decode_of_non_container(tmp_path):
    junk = tmp_path / "junk.llmc"
    junk.write_bytes(b"x" * 100)
    r = run("decode", junk)
    assert r.exit_code == 1 and "not an llmcodec file" in r.output
    assert not (tmp_path / "junk.safetensors").exists()


def test_folder_round_trip(model, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    os.replace(model, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    assert run("encode", folder, "-q").exit_code == 0
    assert run("verify", tmp_path / "ckpt.llmc", "-q").exit_code == 0
    assert run("decode", tmp_path / "ckpt.llmc", "-o", tmp_path / "back", "-q").exit_code == 0
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def _encode_in_background(tmp_path, *options):
    """Start `llmcodec encode` on a 24 MB file; return once its temporary output exists."""
    src = tmp_path / "big.safetensors"
    st_save({"w": np.random.default_rng(0).standard_normal(6_000_000).astype(np.float32)}, src)
    proc = subprocess.Popen([sys.executable, "-m", "llmcodec.cli", "encode", str(src), "-q", "--threads", "1",
                             "--chunk-size", "65536", *options], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()):
        assert proc.poll() is None and time.monotonic() < deadline, "encode ended before it could be stopped"
        time.sleep(0.005)
    return proc


def test_killed_encode_leaves_no_output(tmp_path):
    """SIGKILL in the middle of an encode: no file under the output's name."""
    proc = _encode_in_background(tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "big.llmc").exists()


def test_terminated_encode_removes_its_temporary_file(tmp_path):
    """SIGTERM unwinds like Ctrl-C: exit 143 (128 + SIGTERM), no output and no temporary file are left."""
    proc = _encode_in_background(tmp_path)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and b"terminated" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


def test_killed_encode_over_an_old_output_keeps_it(tmp_path):
    """SIGKILL while `--force` replaces an output: the old output is still there, whole."""
    (tmp_path / "big.llmc").write_bytes(b"old output")
    proc = _encode_in_background(tmp_path, "--force")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "big.llmc").read_bytes() == b"old output"


def test_interrupted_encode_removes_its_temporary_file(tmp_path):
    """Ctrl-C (SIGINT): exit 130, no output and no temporary file are left."""
    proc = _encode_in_background(tmp_path)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.decode().strip() == "llmcodec: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.safetensors"]


@pytest.mark.parametrize("force", [False, True])
def test_full_disk_is_one_line_and_leaves_no_partial_output(model, tmp_path, full_disk, force):
    out = tmp_path / "model.llmc"
    if force:
        out.write_bytes(b"old")
    r = run("encode", model, "-q", *(["--force"] if force else []))
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [f"llmcodec: error: {out}: No space left on device"]
    assert sorted(p.name for p in tmp_path.iterdir()) == (["model.llmc"] if force else []) + ["model.safetensors"]
    if force:
        assert out.read_bytes() == b"old"


def test_info_on_an_encoded_folder_shows_every_shard(tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    st_save({"a": np.ones((8, 8), np.float32)}, str(src / "m-00001-of-00002.safetensors"))
    st_save({"b": np.arange(5, dtype=np.int32)}, str(src / "m-00002-of-00002.safetensors"))
    assert run("encode", str(src), "--quiet").exit_code == 0
    out = run("info", str(tmp_path / "ckpt.llmc"))
    assert out.exit_code == 0, out.output
    assert "m-00001-of-00002.llmc" in out.output and "m-00002-of-00002.llmc" in out.output
    shards = json.loads(run("info", str(tmp_path / "ckpt.llmc"), "--json").output)["shards"]
    assert [t["name"] for s in shards for t in s["tensors"]] == ["a", "b"]
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = run("info", str(empty))
    assert bad.exit_code == 1 and "no .llmc files" in bad.output


def test_the_first_run_says_it_is_compiling(model, tmp_path):
    """An empty numba cache: the README's commands (encode, verify, decode) say once, in the first
    run, that the kernels are compiling; that run compiles them all, so the next ones are quiet."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    cli = [sys.executable, "-m", "llmcodec.cli"]
    runs = [[*cli, "encode", str(model)], [*cli, "verify", str(tmp_path / "model.llmc")],
            [*cli, "decode", str(tmp_path / "model.llmc"), "-o", str(tmp_path / "back.safetensors")]]
    said = []
    for cmd in runs:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        said.append(r.stderr.count("compiling its kernels"))
    assert said == [1, 0, 0]


def test_ctrl_c_while_the_kernels_compile_stops_the_command(model, tmp_path):
    """numba swallows a KeyboardInterrupt raised at some points of its compiler (the call returns
    normally): the command line remembers the interrupt, stops at the next progress step or before
    committing anything, exits 130 and leaves no output. (Without that, this run ended 0 with its
    output written in about half the tries: where the signal lands varies.)"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba-cache"))
    proc = subprocess.Popen([sys.executable, "-m", "llmcodec.cli", "encode", str(model)], env=env,
                            stderr=subprocess.PIPE, text=True)
    first = proc.stderr.readline()
    assert "compiling its kernels" in first
    time.sleep(8)  # deep inside numba's compiler by now
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 130 and err.strip() == "llmcodec: interrupted"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors", "numba-cache"]
