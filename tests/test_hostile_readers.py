"""Hostile input to the readers (issue 14): caller buffers, get_slice against numpy, files changed
while open, the memory budget, threads and lifetime, bad arguments.

Anything that could kill the process on a broken reader (a write past a buffer, a SIGBUS, a lowered
descriptor limit) runs in a subprocess, so it fails the test instead of ending the run."""

import os
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmcodec
from llmcodec import dtypes, kernels
from llmcodec.budget import MEMORY_SLACK
from llmcodec import format as fmt
from llmcodec.container import ContainerReader

gguf = pytest.importorskip("gguf")
Q = gguf.GGMLQuantizationType
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(code: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with this checkout's llmcodec; a signal shows as rc < 0."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def gguf_model(path, tensors) -> None:
    """A GGUF file of (name, ggml type, numpy array of what the file holds: rows of block bytes)."""
    w = gguf.GGUFWriter(path, "llama")
    for name, ggml_type, data in tensors:
        w.add_tensor(name, data, raw_dtype=ggml_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def block_bytes(ggml_type, values_per_row: int, rows: int, rng) -> np.ndarray:
    """uint8[rows, bytes of a row's blocks]: random blocks, their fp16 scales small and finite."""
    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    data = rng.integers(0, 256, (rows, values_per_row // block * size), dtype=np.uint8)
    data.reshape(-1, size)[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
    return data


BLOCK_TYPES = [Q.Q8_0, Q.Q8_1, Q.Q8_K, Q.Q4_0, Q.Q4_K, Q.Q2_K]


@pytest.fixture(scope="module")
def blocks(tmp_path_factory):
    """An encoded GGUF file: a [3, 512]-value tensor of each block type, and 1-D ones."""
    tmp = tmp_path_factory.mktemp("blocks")
    rng = np.random.default_rng(7)
    tensors = [(f"w.{t.name}", t, block_bytes(t, 512, 3, rng)) for t in BLOCK_TYPES]
    tensors += [("v.Q8_0", Q.Q8_0, block_bytes(Q.Q8_0, 96, 1, rng)[0]),
                ("v.Q4_K", Q.Q4_K, block_bytes(Q.Q4_K, 256, 1, rng)[0])]
    gguf_model(tmp / "m.gguf", tensors)
    enc = llmcodec.encode_file(tmp / "m.gguf", tmp / "m.llmc", chunk_size=300)
    return enc, {name: data for name, _, data in tensors}


# --- 1. every write into a caller's buffer checks its size, dtype and layout first ---

def test_read_raw_refuses_a_wrong_out_before_decoding(blocks):
    enc, data = blocks
    with ContainerReader(enc) as r:
        entry = r.by_name["w.Q8_1"]
        n = entry.nbytes
        wrong = [np.zeros(n - 1, np.uint8), np.zeros(n + 1, np.uint8), np.zeros(n // 4, np.float32),
                 np.zeros(2 * n, np.uint8)[::2], np.zeros((n, 1), np.uint8), bytearray(n)]
        readonly = np.zeros(n, np.uint8)
        readonly.flags.writeable = False
        for out in [*wrong, readonly]:
            before = bytes(np.asarray(out).tobytes())
            for read in (r.read_raw, lambda e, o: r.read_many([e], o),
                         lambda e, o: r.read_chunks(e, 0, len(e.chunks), o)):
                with pytest.raises(llmcodec.InvalidArgumentError, match=f"out must be .* {n} bytes"):
                    read(entry, out)
            assert np.asarray(out).tobytes() == before  # nothing written
        out = np.zeros(n, np.uint8)
        assert r.read_raw(entry, out) is out and out.tobytes() == data["w.Q8_1"].tobytes()
        with pytest.raises(llmcodec.InvalidArgumentError, match="chunks"):
            r.read_chunks(entry, 1, len(entry.chunks) + 1)


torch = pytest.importorskip("torch")


def _holder(shapes: dict):
    """A module whose buffers have the dotted names and shapes given, filled with 0xAB bytes."""
    root = torch.nn.Module()
    for name, shape in shapes.items():
        *path, leaf = name.split(".")
        m = root
        for part in path:
            if not hasattr(m, part):
                m.add_module(part, torch.nn.Module())
            m = getattr(m, part)
        m.register_buffer(leaf, torch.full(shape, 0xAB, dtype=torch.uint8))
    return root


def test_load_model_takes_block_tensors_in_the_shape_get_tensor_returns(blocks):
    import llmcodec.torch as lt

    enc, data = blocks
    with llmcodec.open(enc) as f:
        shapes = {name: f.get_tensor(name).shape for name in data}
    assert shapes["w.Q8_1"] == (3, 512 // 32 * 40) and shapes["v.Q8_0"] == (96 // 32 * 34,)
    model = _holder(shapes)
    assert lt.load_model(model, enc) == ([], [])
    for name in data:
        assert model.get_buffer(name).numpy().tobytes() == data[name].tobytes()


def test_load_model_of_a_gguf_file_compares_bytes_not_value_shapes(tmp_path):
    """A parameter of the value shape (what the old check compared) has the wrong byte count for
    every block type: refused, untouched. The right one is filled exactly: every byte written."""
    rng = np.random.default_rng(3)
    tensors = [(f"w_{t.name}", t, block_bytes(t, 512, 3, rng)) for t in BLOCK_TYPES]
    gguf_model(tmp_path / "m.gguf", tensors)
    enc = llmcodec.encode_file(tmp_path / "m.gguf", tmp_path / "m.llmc", chunk_size=600)
    code = """
        import sys, numpy as np, torch, llmcodec, llmcodec.torch as lt
        path, values = sys.argv[1], int(sys.argv[2])
        for name, nbytes in zip(sys.argv[3::2], map(int, sys.argv[4::2])):
            for shape in [(3, values), (3, nbytes // 3 - 1), (3, nbytes // 3 + 1), (nbytes,)]:
                m = torch.nn.Module()
                m.register_buffer(name, torch.full(shape, 0xAB, dtype=torch.uint8))
                try:
                    lt.load_model(m, path, strict=False)
                    print("accepted", name, shape)
                except llmcodec.InvalidArgumentError:
                    assert bool((m.get_buffer(name) == 0xAB).all()), shape
            m = torch.nn.Module()
            m.register_buffer(name, torch.full((3, nbytes // 3), 0xAB, dtype=torch.uint8))
            lt.load_model(m, path, strict=False)
            print(m.get_buffer(name).numpy().tobytes().hex())
    """
    done = run_isolated(code, enc, 512, *[v for name, _, data in tensors for v in (name, data.nbytes)])
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == [data.tobytes().hex() for _, _, data in tensors]


# --- 2. get_slice means what indexing the array get_tensor returns means ---

def test_get_slice_of_a_1d_block_tensor_returns_its_bytes(blocks):
    enc, data = blocks
    with llmcodec.open(enc) as f:
        for name in ("v.Q8_0", "v.Q4_K"):
            full = f.get_tensor(name)
            assert full.tobytes() == data[name].tobytes()
            for index in (slice(0, 1), slice(33, 70), -1, slice(None, None, -5), True, False, (None, 3)):
                got, want = f.get_slice(name)[index], np.asarray(full)[index]
                assert got.shape == want.shape and got.tobytes() == want.tobytes(), (name, index)


@pytest.fixture(scope="module")
def arrays(tmp_path_factory, blocks):
    """Files of several dtypes and shapes (0-d, 1-D, empty, blocks) in small chunks, and their
    tensors as get_tensor returns them."""
    tmp = tmp_path_factory.mktemp("arrays")
    rng = np.random.default_rng(5)
    tensors = {
        "f32": rng.standard_normal((7, 5, 3)).astype(np.float32),
        "bf16": rng.standard_normal(37).astype(ml_dtypes.bfloat16),
        "i16": rng.integers(-9, 9, (4, 9), dtype=np.int16),
        "scalar": np.array(-3, np.int32),
        "empty": np.zeros((0, 3), np.int8),
        "rows0": np.zeros((5, 0), np.uint8),
        "bool": rng.integers(0, 2, (3, 2, 2)).astype(bool),
    }
    llmcodec.save_file(tensors, tmp / "a.llmc", chunk_size=8)
    enc, data = blocks
    full = dict(tensors)
    with llmcodec.open(enc) as f:
        full.update({name: f.get_tensor(name) for name in ("w.Q4_K", "v.Q8_0", "w.Q8_1")})
    return {name: (tmp / "a.llmc" if name in tensors else enc) for name in full}, full


def _item():
    small = st.integers(-8, 8) | st.integers(-8, 8).map(np.int64)
    return st.one_of(small, st.builds(slice, st.none() | small, st.none() | small,
                                      st.none() | st.integers(-4, 4).filter(bool)),
                     st.just(Ellipsis), st.none(), st.booleans() | st.booleans().map(np.bool_))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["f32", "bf16", "i16", "scalar", "empty", "rows0", "bool", "w.Q4_K", "v.Q8_0",
                             "w.Q8_1"]),
       index=st.one_of(_item(), st.lists(_item(), max_size=5).map(tuple)))
def test_get_slice_matches_numpy_for_any_basic_index(arrays, name, index):
    paths, full = arrays
    try:
        want = np.asarray(full[name])[index]
    except IndexError:
        want = None
    with llmcodec.open(paths[name]) as f:
        if want is None:
            with pytest.raises(llmcodec.InvalidIndexError):
                f.get_slice(name)[index]
            return
        got = f.get_slice(name)[index]
    want = np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (name, index)
    assert got.tobytes() == want.tobytes(), (name, index)


def test_get_slice_refuses_what_it_does_not_take_clearly(arrays):
    paths, _ = arrays
    with llmcodec.open(paths["f32"]) as f:
        for index in ([1, 2], np.array([0]), 1.5, "a", slice(0.5, 2), (Ellipsis, Ellipsis), (0, 0, 0, 0),
                      2**63, -2**70, (0, 2**64)):
            with pytest.raises(llmcodec.InvalidArgumentError):
                f.get_slice("f32")[index]
    with llmcodec.open(paths["empty"]) as f:  # an empty tensor goes through numpy alone
        with pytest.raises(llmcodec.InvalidArgumentError):
            f.get_slice("empty")[2**63]


# --- 3. a file changed while open gives the exact bytes or one LlmcodecError, never SIGBUS ---

CHANGED = """
    import os, shutil, sys, numpy as np, llmcodec
    path, other, how = sys.argv[1], sys.argv[2], sys.argv[3]
    want = np.load(path + ".npy")
    with llmcodec.open(path) as f:
        assert f.get_tensor("w").tobytes() == want.tobytes()
        if how == "truncate":
            os.truncate(path, os.path.getsize(path) // 2)
        elif how == "cp":  # in place, like cp: the same inode truncated and written again
            shutil.copyfile(other, path)
        elif how == "replace":
            os.replace(other, path)
        for read in (lambda: f.get_tensor("w"), lambda: f.get_slice("w")[100:200]):
            try:
                got = read()
                assert got.tobytes() in (want.tobytes(), want[100:200].tobytes()), "wrong bytes"
                print("exact")
            except llmcodec.LlmcodecError as exc:
                print(type(exc).__name__)
"""


@pytest.mark.parametrize("how", ["truncate", "cp", "replace"])
def test_a_file_changed_while_open_is_an_error_not_a_crash(tmp_path, how):
    rng = np.random.default_rng(1)
    w = rng.integers(0, 256, (4096, 1024), dtype=np.uint8)  # 4 MiB, stored raw: mapped pages on old code
    path, other = tmp_path / "x.llmc", tmp_path / "new.llmc"
    llmcodec.save_file({"w": w}, path, chunk_size=1 << 16)
    llmcodec.save_file({"w": w[::-1].copy()}, other, chunk_size=1 << 16)
    np.save(str(path) + ".npy", w)
    done = run_isolated(CHANGED, path, other, how)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split() == ["FileChangedError"] * 2


def test_a_file_truncated_during_reads_never_kills_the_reader(tmp_path):
    code = """
        import os, sys, threading, numpy as np, llmcodec
        path = sys.argv[1]
        want = np.load(path + ".npy").tobytes()
        f = llmcodec.open(path, threads=2)
        outcomes = set()

        def read():
            for _ in range(40):
                try:
                    outcomes.add("exact" if f.get_tensor("w").tobytes() == want else "WRONG")
                except llmcodec.LlmcodecError as exc:
                    outcomes.add(type(exc).__name__)

        t = threading.Thread(target=read)
        t.start()
        size = os.path.getsize(path)
        for cut in range(size, 0, -size // 20):
            os.truncate(path, cut)
        t.join()
        print(" ".join(sorted(outcomes)))
    """
    w = np.random.default_rng(2).integers(0, 256, 1 << 22, dtype=np.uint8)
    path = tmp_path / "x.llmc"
    llmcodec.save_file({"w": w}, path, chunk_size=1 << 16)
    np.save(str(path) + ".npy", w)
    done = run_isolated(code, path)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "WRONG" not in done.stdout and done.stdout.strip()


def test_a_removed_file_is_named(tmp_path):
    path = tmp_path / "x.llmc"
    llmcodec.save_file({"w": np.arange(10, dtype=np.int32)}, path)
    with llmcodec.open(path) as f:
        os.remove(path)
        with pytest.raises(llmcodec.FileChangedError, match="x.llmc"):
            f.get_tensor("w")


# --- 4. max_memory: peak growth <= max_memory + SLACK, whatever the file holds ---

SLACK = MEMORY_SLACK  # what open and load_file document


def peak_growth(call) -> tuple[object, int]:
    """(result or the LlmcodecError raised, peak bytes traced during `call`)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        try:
            result = call()
        except llmcodec.LlmcodecError as exc:
            result = exc
        return result, tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def tiny_chunks(tmp_path_factory):
    """A valid file of 30,000 one-byte RAW chunks: 660 KB of header for 30 KB of data."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.llmc"
    data = np.random.default_rng(0).integers(0, 256, 30_000, dtype=np.uint8)
    check = [fmt.checksum64(bytes([b])) for b in range(256)]
    chunks = [fmt.Chunk(fmt.PREAMBLE_SIZE + i, check[b], [fmt.PlaneRef(fmt.METHOD_RAW, 0, 1)])
              for i, b in enumerate(data.tolist())]
    entry = fmt.TensorEntry("w", dtypes.from_numpy(np.dtype(np.uint8)), (data.shape[0],), 0, 1, chunks)
    header = fmt.serialize_header(fmt.Header({}, fmt.Source(), [entry]))
    offset = fmt.PREAMBLE_SIZE + data.shape[0]
    path.write_bytes(fmt.build_preamble(offset, header) + data.tobytes() + header)
    return path, data


def test_load_file_counts_the_header_and_the_rows_of_many_tiny_chunks(tiny_chunks):
    path, data = tiny_chunks
    for budget in (1 << 20, 20 << 20):
        result, peak = peak_growth(lambda b=budget: llmcodec.load_file(path, max_memory=b, threads=2))
        assert isinstance(result, llmcodec.LimitExceededError) and "header" in str(result)
        assert peak <= budget + SLACK, (budget, peak)
    result, peak = peak_growth(lambda: llmcodec.load_file(path, max_memory=1 << 30, threads=2))
    assert result["w"].tobytes() == data.tobytes()
    assert peak < 40 << 20  # the header's records (under 48 bytes per header byte); rows a task at a time


def test_a_slice_builds_rows_only_for_its_own_chunks(tiny_chunks):
    path, data = tiny_chunks
    with llmcodec.open(path, threads=2) as f:
        f.get_slice("w")[0:1]  # compiled, warm: what follows is a fresh file's first slices
    with llmcodec.open(path, threads=2) as f:
        for index in (slice(0, 1), slice(20_000, 20_010), -1):
            got, peak = peak_growth(lambda i=index: f.get_slice("w")[i])
            assert got.tobytes() == data[index].tobytes()
            assert peak < 256 << 10, (index, peak)  # the whole tensor's rows take over 10 MB


def test_a_stepped_slice_builds_no_index_of_its_rows(tmp_path):
    path = tmp_path / "zeros.llmc"
    n = 1 << 24
    llmcodec.save_file({"w": np.zeros(n, np.uint8)}, path, chunk_size=1 << 20)  # 16 MiB of constant chunks
    budget = 40 << 20
    with llmcodec.open(path, max_memory=budget) as f:
        for index in (slice(None, None, 2), slice(None, None, -3), slice(5, None, 1000)):
            got, peak = peak_growth(lambda i=index: f.get_slice("w")[i])
            assert peak <= budget + SLACK, (index, peak)
            assert got.tobytes() == bytes(len(range(n)[index]))


# --- 5. threads and lifetime ---

def _names(n: int) -> list[str]:
    return [f"t{i}" for i in range(n)]


def test_close_while_other_threads_read_gives_tensors_or_one_error(tmp_path):
    path = tmp_path / "m.llmc"
    tensors = {name: np.random.default_rng(i).standard_normal(400_000).astype(np.float32)
               for i, name in enumerate(_names(6))}
    llmcodec.save_file(tensors, path, chunk_size=1 << 14)
    def read(f, outcomes: list, start: threading.Barrier) -> None:
        start.wait()
        for name in tensors:
            try:
                outcomes.append(f.get_tensor(name).tobytes() == tensors[name].tobytes())
            except llmcodec.LlmcodecError as exc:
                outcomes.append(type(exc).__name__)
            except Exception as exc:  # what must not happen
                outcomes.append(repr(exc))

    base = threading.active_count()
    for attempt in range(8):
        f = llmcodec.open(path, threads=2)
        outcomes, start = [], threading.Barrier(5)
        readers = [threading.Thread(target=read, args=(f, outcomes, start)) for _ in range(4)]
        for t in readers:
            t.start()
        start.wait()
        time.sleep(0.002 * attempt)  # closes at different points of the reads
        f.close()
        for t in readers:
            t.join()
        assert set(outcomes) <= {True, "InvalidArgumentError"}, outcomes
        assert threading.active_count() == base  # no pool left behind, none made after close


SHARD = 300_000


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards") / "ckpt"
    folder.mkdir()
    n = 300
    for i in range(n):  # 1.2 MB each: more than one decoding task, so pools are used
        llmcodec.save_file({f"t{i}": np.full(SHARD, i, np.int32)}, folder / f"model-{i + 1:05d}-of-{n:05d}.llmc",
                           chunk_size=1 << 16, threads=1)
    return folder, n


def test_many_shards_leave_no_threads_behind(shards):
    folder, n = shards
    base = threading.active_count()
    with llmcodec.open(folder, threads=2) as f:
        for i in range(n):
            assert f.get_tensor(f"t{i}").tobytes() == np.full(SHARD, i, np.int32).tobytes()
            assert threading.active_count() <= base + 2
    assert threading.active_count() == base


def test_many_shards_under_a_low_descriptor_limit(shards):
    folder, n = shards
    code = """
        import resource, sys, numpy as np, llmcodec
        folder, n = sys.argv[1], int(sys.argv[2])
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        with llmcodec.open(folder, threads=2) as f:
            for i in range(n):
                assert f.get_tensor(f"t{i}").tobytes() == np.full(300_000, i, np.int32).tobytes()
        assert len(llmcodec.load_file(folder, threads=2)) == n
        print("ok")
    """
    done = run_isolated(code, folder, n)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


# --- 6. bad arguments: one InvalidArgumentError naming the argument ---

@pytest.fixture
def small(tmp_path):
    path = tmp_path / "s.llmc"
    llmcodec.save_file({"w": np.arange(12, dtype=np.float32)}, path)
    return path


@pytest.mark.parametrize("call,name", [
    (lambda p: llmcodec.open(p, threads="2"), "threads"),
    (lambda p: llmcodec.open(p, threads=-1), "threads"),
    (lambda p: llmcodec.open(p, threads=1.5), "threads"),
    (lambda p: llmcodec.load_file(p, threads=True), "threads"),
    (lambda p: llmcodec.load_file(p, limits="x"), "limits"),
    (lambda p: llmcodec.open(p, limits=llmcodec.Limits(ndim="3")), "limits"),
    (lambda p: llmcodec.open(p, max_memory="1"), "max_memory"),
    (lambda p: llmcodec.open(p, framework=1), "framework"),
    (lambda p: llmcodec.open(p, framework=["np"]), "framework"),
    (lambda p: llmcodec.open(p, device=0), "cpu"),
    (lambda p: llmcodec.open(p, framework="pt", device="nowhere"), "device"),
    (lambda p: llmcodec.save_file({"w": np.zeros(3)}, p, chunk_size=1024.0), "chunk_size"),
    (lambda p: llmcodec.save_file({"w": np.zeros(3)}, p, threads="2"), "threads"),
    (lambda p: llmcodec.open(42), "int"),
])
def test_bad_arguments_name_themselves(small, call, name):
    with pytest.raises(llmcodec.InvalidArgumentError, match=name):
        call(small)


@pytest.mark.parametrize("make", [
    lambda: torch.zeros(3, dtype=torch.complex64),
    lambda: torch.zeros(3, dtype=torch.float8_e4m3fnuz),
    lambda: torch.zeros(4).to_sparse(),
    lambda: torch.quantize_per_tensor(torch.zeros(3), 0.1, 0, torch.qint8),
    lambda: torch.zeros(3, device="meta"),
    lambda: np.zeros(3),
])
def test_torch_save_file_refuses_what_it_cannot_store(tmp_path, make):
    import llmcodec.torch as lt

    with pytest.raises(llmcodec.InvalidArgumentError, match="'x'"):
        lt.save_file({"x": make()}, tmp_path / "t.llmc")
    assert not (tmp_path / "t.llmc").exists()


def test_torch_bad_arguments(small, tmp_path):
    import llmcodec.torch as lt

    with pytest.raises(llmcodec.InvalidArgumentError, match="tensors"):
        lt.save_file([torch.zeros(1)], tmp_path / "t.llmc")
    with pytest.raises(llmcodec.InvalidArgumentError, match="model"):
        lt.load_model({"w": torch.zeros(12)}, small)
    with pytest.raises(llmcodec.InvalidArgumentError, match="device"):
        lt.load_file(small, device="nowhere")


def test_memory_errors_in_decoding_are_limit_errors(small, monkeypatch):
    def refuse(*args):
        raise MemoryError

    with llmcodec.open(small) as f:
        monkeypatch.setattr(kernels, "decode_chunks", refuse)
        with pytest.raises(llmcodec.LimitExceededError, match="more memory than this machine"):
            f.get_tensor("w")
        with pytest.raises(llmcodec.LimitExceededError, match="more memory than this machine"):
            list(f.reader.iter_raw(f.entry("w")))
    monkeypatch.setattr(llmcodec.format, "parse_header", refuse)
    with pytest.raises(llmcodec.LimitExceededError, match="header"):
        llmcodec.open(small)
