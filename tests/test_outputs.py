"""Destinations and folders handled like zstd and cp: devices (a FIFO and links stand for them),
standard output, permissions, --force on folders, nested shards, and the command line's conventions."""

import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.numpy import save_file as st_save
from typer.testing import CliRunner

import llmcodec
from llmcodec import codec, files, folders, output
from llmcodec.cli import app
from llmcodec.container import ContainerReader

runner = CliRunner()
CLI = [sys.executable, "-m", "llmcodec.cli"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def model(tmp_path):
    src = tmp_path / "model.safetensors"
    rng = np.random.default_rng(0)
    st_save({"w": (rng.standard_normal((300, 100)) * 0.02).astype(np.float32), "n": np.arange(5)}, str(src))
    return src


@pytest.fixture
def encoded(model, tmp_path):
    dst = tmp_path / "model.llmc"
    files.encode_file(model, dst)
    return dst


class FifoReader:
    """Reads everything written to a FIFO, in a thread (opening a FIFO blocks until both ends are open)."""

    def __init__(self, path: Path):
        self.data = b""
        self.thread = threading.Thread(target=self._read, args=(path,), daemon=True)
        self.thread.start()

    def _read(self, path):
        with open(path, "rb") as f:
            self.data = f.read()

    def join(self) -> bytes:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()
        return self.data


# --- one output writer ---------------------------------------------------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_decode_into_a_fifo_writes_into_it_and_keeps_it(model, encoded, tmp_path, force):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    r = run("decode", encoded, "-o", fifo, "-q", *(["--force"] if force else []))
    assert r.exit_code == 0, r.output
    assert reader.join() == model.read_bytes()
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.llmc", "model.safetensors", "pipe"]


def test_a_link_to_a_fifo_stays_a_link(model, encoded, tmp_path):
    """What `-o /dev/stdout --force` must do: write through the link, never replace it."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    reader = FifoReader(fifo)
    assert run("decode", encoded, "-o", link, "--force", "-q").exit_code == 0
    assert reader.join() == model.read_bytes()
    assert link.is_symlink() and stat.S_ISFIFO(os.stat(link).st_mode)


def test_encode_into_a_fifo_spools_then_copies(model, tmp_path):
    """The container writer seeks; a FIFO cannot: the whole container arrives all the same."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    assert run("encode", model, "-o", fifo, "-q").exit_code == 0
    got = tmp_path / "got.llmc"
    got.write_bytes(reader.join())
    files.decode_file(got, tmp_path / "back.safetensors")
    assert (tmp_path / "back.safetensors").read_bytes() == model.read_bytes()


def test_a_link_to_a_regular_file_is_written_through(model, encoded, tmp_path):
    target = tmp_path / "real.safetensors"
    target.write_bytes(b"old")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    assert run("decode", encoded, "-o", link, "--force", "-q").exit_code == 0
    assert link.is_symlink() and target.read_bytes() == model.read_bytes()


def test_decode_to_stdout_and_encode_to_stdout(model, encoded, tmp_path):
    r = subprocess.run([*CLI, "decode", str(encoded), "-o", "-", "-q"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == model.read_bytes()
    assert not (tmp_path / "-").exists()
    r = subprocess.run([*CLI, "encode", str(model), "-o", "-", "-q"], capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with llmcodec.open(r.stdout) as f:
        assert f.get_tensor("w").tobytes() == safe_open(str(model), "np").get_tensor("w").tobytes()
    assert not (tmp_path / "-").exists()


class FifoWriter:
    """Writes `data` into a FIFO from a thread (opening it blocks until a reader opens it)."""

    def __init__(self, path: Path, data: bytes):
        self.thread = threading.Thread(target=lambda: Path(path).write_bytes(data), daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join(timeout=120)
        assert not self.thread.is_alive()


def test_encode_and_decode_read_standard_input(model, encoded, tmp_path):
    """`-` reads a pipe, as zstd does; the output must then be named."""
    out = tmp_path / "piped.llmc"
    r = subprocess.run([*CLI, "encode", "-", "-o", str(out), "-q"], input=model.read_bytes(), capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == encoded.read_bytes()
    assert stat.S_IMODE(out.stat().st_mode) == output.default_mode()
    r = subprocess.run([*CLI, "decode", "-", "-o", "-", "-q"], input=out.read_bytes(), capture_output=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout == model.read_bytes()
    for command in (["verify", "-", "-q"], ["info", "-", "--json", "-q"]):
        r = subprocess.run([*CLI, *command], input=out.read_bytes(), capture_output=True, timeout=300)
        assert r.returncode == 0, r.stderr
    assert sorted(p["name"] for p in json.loads(r.stdout)["tensors"]) == ["n", "w"]
    for command in ("encode", "decode"):
        r = subprocess.run([*CLI, command, "-", "-q"], input=b"", capture_output=True, timeout=300)
        assert r.returncode == 1 and b"give the output name" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.llmc", "model.safetensors", "piped.llmc"]


def test_a_fifo_input_is_read_once_and_named_like_a_file(model, encoded, tmp_path):
    """A FIFO can be read once and not at offsets: encode, decode, verify and info copy it first;
    the default output is named after the FIFO, next to it."""
    fifo = tmp_path / "in.safetensors"
    os.mkfifo(fifo)
    writer = FifoWriter(fifo, model.read_bytes())
    r = run("encode", fifo, "-q")
    writer.join()
    assert r.exit_code == 0, r.output
    assert (tmp_path / "in.llmc").read_bytes() == encoded.read_bytes()
    fifo.unlink()
    fifo = tmp_path / "in2.llmc"
    os.mkfifo(fifo)
    writer = FifoWriter(fifo, encoded.read_bytes())
    r = run("decode", fifo, "-q")
    writer.join()
    assert r.exit_code == 0, r.output
    assert (tmp_path / "in2.safetensors").read_bytes() == model.read_bytes()
    for command in ("verify", "info"):
        writer = FifoWriter(fifo, encoded.read_bytes())
        r = run(command, fifo, "-q")
        writer.join()
        assert r.exit_code == 0, (command, r.output)
    fifo = tmp_path / "in3.safetensors"
    os.mkfifo(fifo)
    writer = FifoWriter(fifo, model.read_bytes())
    r = run("quantize", fifo, "-o", tmp_path / "q.llmc", "-q")
    writer.join()
    assert r.exit_code == 0, r.output
    with ContainerReader(tmp_path / "q.llmc") as reader:
        assert list(reader.transforms) == ["w"]


def test_the_library_reads_fifos(model, encoded, tmp_path):
    """encode_file copies a FIFO to a temporary file; llmcodec.open reads one whole, once."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    writer = FifoWriter(fifo, model.read_bytes())
    files.encode_file(fifo, tmp_path / "out.llmc")
    writer.join()
    assert (tmp_path / "out.llmc").read_bytes() == encoded.read_bytes()
    writer = FifoWriter(fifo, encoded.read_bytes())
    with llmcodec.open(fifo) as f:
        assert f.get_tensor("w").tobytes() == safe_open(str(model), "np").get_tensor("w").tobytes()
    writer.join()


def test_stdout_on_a_terminal_is_refused(encoded):
    import pty

    main, secondary = pty.openpty()
    try:
        r = subprocess.run([*CLI, "decode", str(encoded), "-o", "-", "-q"], stdout=secondary,
                           stderr=subprocess.PIPE, timeout=300)
    finally:
        os.close(main)
        os.close(secondary)
    assert r.returncode == 1 and b"terminal" in r.stderr


def test_a_folder_cannot_go_to_stdout(model, tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    os.replace(model, folder / "model.safetensors")
    r = run("encode", folder, "-o", "-", "-q")
    assert r.exit_code == 1 and "folder" in r.output


def test_errors_name_the_users_path_not_a_temporary_one(model, tmp_path):
    out = tmp_path / "nonexist" / "x.llmc"
    r = run("encode", model, "-o", out, "-q")
    assert r.exit_code == 1
    assert r.output.strip() == f"llmcodec: error: {out}: no such file or folder"


def test_a_long_legal_output_name_works(model, tmp_path):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("m" * (limit - len(".llmc")) + ".llmc")
    assert run("encode", model, "-o", out, "-q").exit_code == 0
    assert out.read_bytes()[:5] == b"\x89LLMC"
    back = tmp_path / ("b" * (limit - len(".safetensors")) + ".safetensors")
    assert run("decode", out, "-o", back, "-q").exit_code == 0
    assert back.read_bytes() == model.read_bytes()


def test_outputs_keep_the_inputs_permission_bits(model, tmp_path):
    model.chmod(0o600)
    assert run("encode", model, "-q").exit_code == 0
    assert stat.S_IMODE((tmp_path / "model.llmc").stat().st_mode) == 0o600
    (tmp_path / "model.llmc").chmod(0o640)
    assert run("decode", tmp_path / "model.llmc", "-o", tmp_path / "back.safetensors", "-q").exit_code == 0
    assert stat.S_IMODE((tmp_path / "back.safetensors").stat().st_mode) == 0o640


@pytest.mark.parametrize("command", [["quantize"], ["factorize", "--rank", "8"]])
def test_lossy_outputs_keep_the_inputs_permission_bits(model, tmp_path, command):
    model.chmod(0o640)
    out = tmp_path / "small.llmc"
    r = run(command[0], model, "-o", out, *command[1:], "-q")
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    with ContainerReader(out) as reader:
        assert list(reader.transforms) == ["w"]  # the matrix was transformed, not merely copied


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_folders_honour_the_umask(model, tmp_path, umask):
    folder = tmp_path / "ck"
    (folder / "sub").mkdir(parents=True)
    os.replace(model, folder / "sub" / "model.safetensors")
    (folder / "config.json").write_text("{}")
    for cmd in (["encode", str(folder)], ["decode", str(tmp_path / "ck.llmc"), "-o", str(tmp_path / "back")]):
        r = subprocess.run([*CLI, *cmd, "-q"], capture_output=True, timeout=300, preexec_fn=lambda: os.umask(umask))
        assert r.returncode == 0, r.stderr
    for made in (tmp_path / "ck.llmc", tmp_path / "ck.llmc" / "sub", tmp_path / "back", tmp_path / "back" / "sub"):
        assert stat.S_IMODE(made.stat().st_mode) == 0o777 & ~umask, made


# --- --force on folders ----------------------------------------------------------------------------


def _folder(tmp_path, model) -> Path:
    folder = tmp_path / "ck"
    (folder / "sub").mkdir(parents=True)
    os.replace(model, folder / "top.safetensors")
    st_save({"b": np.arange(7, dtype=np.int16)}, str(folder / "sub" / "nested.safetensors"))
    (folder / "README.md").write_text("hello")
    return folder


def test_force_never_deletes_a_users_folder(model, tmp_path):
    folder = _folder(tmp_path, model)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    (mine / "top.llmc").write_text("a name encode would write")
    r = run("encode", folder, "-o", mine, "--force", "-q")
    assert r.exit_code == 1 and "notes.txt" in r.output and "not replacing" in r.output
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "top.llmc").read_text().startswith("a name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "mine"]  # no temporary folder left
    files.encode_file(folder, tmp_path / "ck.llmc")
    (mine / "top.llmc").unlink()
    r = run("decode", tmp_path / "ck.llmc", "-o", mine, "--force", "-q")
    assert r.exit_code == 1 and (mine / "notes.txt").read_text() == "precious"


def test_force_replaces_an_earlier_output(model, tmp_path):
    folder = _folder(tmp_path, model)
    assert run("encode", folder, "-q").exit_code == 0
    r = run("encode", folder, "-q")
    assert r.exit_code == 1 and "--force" in r.output
    (folder / "README.md").write_text("changed")
    assert run("encode", folder, "--force", "-q").exit_code == 0
    assert (tmp_path / "ck.llmc" / "README.md").read_text() == "changed"
    back = tmp_path / "back"
    assert run("decode", tmp_path / "ck.llmc", "-o", back, "-q").exit_code == 0
    assert run("decode", tmp_path / "ck.llmc", "-o", back, "--force", "-q").exit_code == 0
    assert (back / "sub" / "nested.safetensors").read_bytes() == (folder / "sub" / "nested.safetensors").read_bytes()


def test_a_folder_output_onto_a_file_or_inside_its_source_is_refused(model, tmp_path):
    folder = _folder(tmp_path, model)
    (tmp_path / "afile").write_text("keep")
    r = run("encode", folder, "-o", tmp_path / "afile", "--force", "-q")
    assert r.exit_code == 1 and (tmp_path / "afile").read_text() == "keep"
    r = run("encode", folder, "-o", folder / "inside.llmc", "-q")
    assert r.exit_code == 1 and "inside" in r.output
    assert not (folder / "inside.llmc").exists()


# --- one definition of a checkpoint folder -------------------------------------------------------


def test_a_nested_shard_is_reachable_through_every_door(model, tmp_path):
    import llmcodec.torch as lt

    folder = _folder(tmp_path, model)
    enc = files.encode_file(folder, tmp_path / "ck.llmc")
    assert (enc / "sub" / "nested.llmc").exists()
    with llmcodec.open(enc) as f:
        assert sorted(f.keys()) == ["b", "n", "w"]
        assert f.get_tensor("b").tobytes() == np.arange(7, dtype=np.int16).tobytes()
    assert sorted(llmcodec.load_file(enc)) == ["b", "n", "w"]
    assert sorted(lt.load_file(enc)) == ["b", "n", "w"]
    r = run("info", enc, "--json")
    assert r.exit_code == 0 and "nested" in r.output
    files.verify_file(enc)


def test_a_folder_without_a_checkpoint_is_an_error(tmp_path):
    folder = tmp_path / "ck"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "config.json").write_text("{}")
    r = run("encode", folder, "-q")
    assert r.exit_code == 1
    assert "no checkpoint" in r.output and "pytorch_model.bin" in r.output
    assert not (tmp_path / "ck.llmc").exists()


def test_links_to_folders_and_fifos_inside_a_folder_are_errors(model, tmp_path):
    folder = _folder(tmp_path, model)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (folder / "linked").symlink_to(elsewhere)
    r = run("encode", folder, "-q")
    assert r.exit_code == 1 and "link to a folder" in r.output
    (folder / "linked").unlink()
    os.mkfifo(folder / "pipe")
    r = run("encode", folder, "-q")  # must not block on the FIFO
    assert r.exit_code == 1 and "not a regular file" in r.output


def _tree(tmp_path, layout) -> Path:
    folder = tmp_path / "src"
    for i, (depth, kind) in enumerate(layout):
        parent = folder.joinpath(*[f"d{j}" for j in range(depth)])
        parent.mkdir(parents=True, exist_ok=True)
        if kind == "st":
            st_save({f"t{i}": np.full((i + 1,), i, np.float32)}, str(parent / f"s{i}.safetensors"))
        else:
            (parent / f"f{i}.txt").write_text(str(i))
    return folder


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["st", "txt"])), min_size=1, max_size=6))
def test_every_door_sees_the_same_tensors(tmp_path_factory, layout):
    """For any folder: the tensors `open` lists are those `verify` checks and `decode` restores."""
    tmp_path = tmp_path_factory.mktemp("tree")
    src = _tree(tmp_path, layout)
    expected = {f"t{i}" for i, (_, kind) in enumerate(layout) if kind == "st"}
    if not expected:
        with pytest.raises(llmcodec.InvalidArgumentError, match="no checkpoint"):
            files.encode_file(src, tmp_path / "enc")
        return
    enc = files.encode_file(src, tmp_path / "enc")
    with llmcodec.open(enc) as f:
        opened = set(f.keys())
    verified = set()
    real = files.ContainerReader

    class Recording(real):
        def __init__(self, path, **kw):
            super().__init__(path, **kw)
            verified.update(self.names)
    files.ContainerReader = Recording
    try:
        files.verify_file(enc)
    finally:
        files.ContainerReader = real
    back = files.decode_file(enc, tmp_path / "back")
    restored = set()
    for p in back.rglob("*.safetensors"):
        with safe_open(str(p), "np") as f:
            restored.update(f.keys())
    assert opened == verified == restored == expected == set(llmcodec.load_file(enc))
    for rel in folders.walk(src):
        assert (back / rel).read_bytes() == (src / rel).read_bytes()


# --- the command line as people expect it --------------------------------------------------------


def test_help_shows_defaults_and_version_prints():
    r = run("encode", "--help")
    assert "[default:" in r.output and "usable cores" in r.output and "1 MiB" in r.output
    for flag in ("--version", "-V"):
        r = run(flag)
        assert r.exit_code == 0 and r.output.startswith("llmcodec ") and "format 1." in r.output


def test_threads_zero_means_every_usable_core_and_the_default_honours_affinity(model, monkeypatch):
    monkeypatch.delenv("LLMCODEC_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert codec.resolve_threads(None) == 1
    assert codec.resolve_threads(0) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert codec.resolve_threads(0) == 3 and codec.resolve_threads(2) == 2
    monkeypatch.setenv("LLMCODEC_THREADS", "0")
    assert codec.resolve_threads(None) == 3
    assert run("encode", model, "-T", "0", "-q").exit_code == 0


def test_progress_counts_original_bytes_against_their_total(model, tmp_path):
    folder = _folder(tmp_path, model)
    total = sum((folder / p).stat().st_size for p in folders.walk(folder))
    seen = []
    enc = files.encode_file(folder, tmp_path / "ck.llmc", progress=seen.append)
    assert sum(seen) == total
    assert files.original_bytes(enc) == total
    for do in (lambda p: files.verify_file(enc, progress=p),
               lambda p: files.decode_file(enc, tmp_path / "back", progress=p)):
        seen = []
        do(seen.append)
        shards = sum((enc / p).stat().st_size for p in folders.walk(enc) if p.suffix != ".llmc")
        assert sum(seen) in (total, total - shards)  # verify does not read the copied files
    seen = []
    files.decode_file(enc / "top.llmc", tmp_path / "one.safetensors", progress=seen.append)
    assert sum(seen) == files.original_bytes(enc / "top.llmc") == (folder / "top.safetensors").stat().st_size


def test_info_takes_quiet(encoded):
    r = run("info", encoded, "-q")
    assert r.exit_code == 0 and "total" in r.output


def test_output_module_classifies_destinations(tmp_path):
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    (tmp_path / "f").write_text("x")
    assert output.is_stream("-") and output.is_stream(fifo)
    assert not output.is_stream(tmp_path / "f") and not output.is_stream(tmp_path / "none")
    assert not output.is_stream(tmp_path)
    with pytest.raises(IsADirectoryError):
        output.open_output(tmp_path)


def test_readme_install_lines_are_true():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert "pip install 'llmcodec[torch]'" not in readme
    first = readme.split("```sh", 1)[1].split("```", 1)[0]
    assert "pip install -q -e '.[test]'" in first


def test_sha_of_a_decoded_fifo_stream_matches(model, encoded, tmp_path):
    """The bytes through a FIFO are the original's, by SHA-256 (what a user piping to sha256sum sees)."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = FifoReader(fifo)
    files.decode_file(encoded, fifo)
    assert hashlib.sha256(reader.join()).digest() == hashlib.sha256(model.read_bytes()).digest()


def test_a_full_disk_in_a_folder_names_the_users_path(model, tmp_path, full_disk):
    folder = _folder(tmp_path, model)
    r = run("encode", folder, "-q")
    assert r.exit_code == 1
    nested = tmp_path / "ck.llmc" / "sub" / "nested.llmc"
    assert r.output.strip() == f"llmcodec: error: {nested}: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
