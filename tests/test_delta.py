"""Fine-tunes stored as deltas against their base model (spec 11): every entry point round-trips
bit-exact with the base, names a missing or wrong base, never stores a tensor larger than
standalone, and reads only the base ranges a partial read needs."""

import hashlib
import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import bases, delta, reference
from llmcodec.container import ContainerReader
from llmcodec.errors import BaseError, InvalidArgumentError

BF16 = ml_dtypes.bfloat16


def _pair(seed: int = 0):
    """A base and a fine-tune of it: small moves (bf16), weight decay (fp32: SUB's case), an
    identical tensor, a tensor the base lacks, one of another shape and one of another dtype."""
    rng = np.random.default_rng(seed)
    base = {
        "w": (rng.standard_normal((256, 300)) * 0.02).astype(BF16),
        "emb": rng.standard_normal((64, 96)).astype(np.float32),
        "norm": np.ones(300, np.float32),
        "vocab": rng.standard_normal((50, 16)).astype(np.float16),
        "ids": np.arange(40, dtype=np.int32),
        "q": rng.integers(-128, 128, 5000).astype(np.int8),
    }
    ft = dict(base)
    ft["w"] = (base["w"].astype(np.float32) + rng.standard_normal((256, 300)).astype(np.float32) * 2e-4).astype(BF16)
    ft["emb"] = base["emb"] * np.float32(1 - 1e-6)  # every word moved the same way
    ft["vocab"] = rng.standard_normal((60, 16)).astype(np.float16)  # an extended vocabulary: standalone
    ft["ids"] = np.arange(40, dtype=np.int64)  # another dtype: standalone
    ft["q"] = base["q"].copy()
    ft["q"][::97] += 1
    ft["new"] = rng.standard_normal(100).astype(np.float32)  # not in the base
    return base, ft


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                        and a[k].tobytes() == b[k].tobytes() for k in a)


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_save_file_with_a_base_round_trips_and_is_smaller(tmp_path):
    base, ft = _pair()
    llmcodec.save_file(ft, tmp_path / "alone.llmc")
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=base, chunk_size=16384)
    assert _same(llmcodec.load_file(tmp_path / "ft.llmc", base=base), ft)
    alone, against = (tmp_path / "alone.llmc").stat().st_size, (tmp_path / "ft.llmc").stat().st_size
    assert against < 0.6 * alone, (against, alone)
    with ContainerReader(tmp_path / "ft.llmc") as r:
        kinds = {t.name: t.delta and (t.delta.transform, t.delta.base_tensor) for t in r.all_tensors}
        assert r.version == (1, 3) and r.base is not None
    assert kinds["w"] == (1, "w") and kinds["emb"][0] in (1, 2) and kinds["q"] is not None
    assert kinds["norm"] is None  # CONSTANT either way: a tie keeps it standalone
    assert kinds["vocab"] is None and kinds["ids"] is None and kinds["new"] is None


def test_sub_is_chosen_where_every_word_moves_the_same_way(tmp_path):
    rng = np.random.default_rng(3)
    b = rng.standard_normal(1 << 16).astype(np.float32)
    moves = rng.integers(0, 200, b.size).astype(np.uint32)  # every word up by 0..199 units in the last place:
    f = (b.view(np.uint32) + moves).view(np.float32)  # one byte as a difference, a bit more zigzagged
    llmcodec.save_file({"e": f}, tmp_path / "e.llmc", base={"e": b})
    with ContainerReader(tmp_path / "e.llmc") as r:
        assert r.all_tensors[0].delta.transform == delta.SUB
    assert llmcodec.load_file(tmp_path / "e.llmc", base={"e": b})["e"].tobytes() == f.tobytes()


def test_a_file_without_useful_deltas_is_a_1_2_file(tmp_path):
    rng = np.random.default_rng(4)
    ft = {"x": rng.integers(0, 256, 10000).astype(np.uint8)}
    llmcodec.save_file(ft, tmp_path / "a.llmc")
    llmcodec.save_file(ft, tmp_path / "b.llmc", base={"y": ft["x"]})  # nothing of the same name
    assert (tmp_path / "a.llmc").read_bytes() == (tmp_path / "b.llmc").read_bytes()
    llmcodec.save_file(ft, tmp_path / "c.llmc", base={"x": rng.integers(0, 256, 10000).astype(np.uint8)})
    with ContainerReader(tmp_path / "c.llmc") as r:  # an unrelated base: standalone is smaller
        assert r.version == (1, 2) and r.base is None
    assert llmcodec.load_file(tmp_path / "c.llmc")["x"].tobytes() == ft["x"].tobytes()


def test_identical_tensors_cost_almost_nothing(tmp_path):
    rng = np.random.default_rng(5)
    base = {f"t{i}": (rng.standard_normal((128, 128)) * 0.02).astype(BF16) for i in range(8)}
    llmcodec.save_file(base, tmp_path / "same.llmc", base=base)
    raw = sum(a.nbytes for a in base.values())
    assert (tmp_path / "same.llmc").stat().st_size < 0.01 * raw + 2048
    assert _same(llmcodec.load_file(tmp_path / "same.llmc", base=base), base)


@pytest.mark.parametrize("holder", ["memory", "safetensors", "llmc", "folder", "encoded folder", "open file"])
def test_every_kind_of_base_holder(tmp_path, holder):
    base, ft = _pair(1)
    st_save(base, str(tmp_path / "base.safetensors"))
    if holder == "memory":
        given = base
    elif holder == "safetensors":
        given = tmp_path / "base.safetensors"
    elif holder == "llmc":
        given = llmcodec.encode_file(tmp_path / "base.safetensors", tmp_path / "base.llmc")
    else:
        folder = tmp_path / "basedir"
        folder.mkdir()
        names = sorted(base)
        st_save({k: base[k] for k in names[:3]}, str(folder / "model-00001-of-00002.safetensors"))
        st_save({k: base[k] for k in names[3:]}, str(folder / "model-00002-of-00002.safetensors"))
        (folder / "config.json").write_text("{}")
        given = folder
        if holder == "encoded folder":
            given = llmcodec.encode_file(folder, tmp_path / "basedir.llmc")
    if holder == "open file":
        llmcodec.encode_file(tmp_path / "base.safetensors", tmp_path / "base.llmc")
        with llmcodec.open(tmp_path / "base.llmc") as f:
            llmcodec.save_file(ft, tmp_path / "ft.llmc", base=f)
            assert _same(llmcodec.load_file(tmp_path / "ft.llmc", base=f), ft)
        return
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=given)
    assert _same(llmcodec.load_file(tmp_path / "ft.llmc", base=given), ft)
    with llmcodec.open(tmp_path / "ft.llmc", base=given) as f:
        assert f.get_tensor("w").tobytes() == ft["w"].tobytes()


def test_encode_decode_verify_files_and_folders_with_a_base(tmp_path):
    base, ft = _pair(2)
    st_save(base, str(tmp_path / "base.safetensors"))
    st_save(ft, str(tmp_path / "ft.safetensors"), metadata={"format": "pt"})
    out = llmcodec.encode_file(tmp_path / "ft.safetensors", tmp_path / "ft.llmc", base=tmp_path / "base.safetensors")
    llmcodec.verify_file(out, base=tmp_path / "base.safetensors")
    back = llmcodec.decode_file(out, tmp_path / "back.safetensors", base=tmp_path / "base.safetensors")
    assert _sha(back) == _sha(tmp_path / "ft.safetensors")
    with pytest.raises(BaseError, match="base.safetensors"):  # the message names the base it needs
        llmcodec.verify_file(out)
    # folders: each shard against one base
    src = tmp_path / "ftdir"
    src.mkdir()
    names = sorted(ft)
    st_save({k: ft[k] for k in names[:4]}, str(src / "a.safetensors"))
    st_save({k: ft[k] for k in names[4:]}, str(src / "b.safetensors"))
    enc = llmcodec.encode_file(src, tmp_path / "ftdir.llmc", base=tmp_path / "base.safetensors")
    dec = llmcodec.decode_file(enc, tmp_path / "ftdir.out", base=tmp_path / "base.safetensors")
    assert [_sha(dec / n) for n in ("a.safetensors", "b.safetensors")] == [_sha(src / n) for n in
                                                                            ("a.safetensors", "b.safetensors")]
    assert _same(llmcodec.load_file(enc, base=tmp_path / "base.safetensors"), ft)


def test_the_base_record_names_the_base_files(tmp_path):
    base, ft = _pair(3)
    st_save(base, str(tmp_path / "base.safetensors"))
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=tmp_path / "base.safetensors")
    with ContainerReader(tmp_path / "ft.llmc") as r:
        files = r.base.files
    assert r.base.name == "base.safetensors"
    assert [(f.path, f.size, f.sha256.hex()) for f in files] == [
        ("base.safetensors", (tmp_path / "base.safetensors").stat().st_size, _sha(tmp_path / "base.safetensors"))]
    # an encoded copy of the base has the same identity (its original's name, size and SHA-256)
    llmcodec.encode_file(tmp_path / "base.safetensors", tmp_path / "base.llmc")
    with bases.open_base(tmp_path / "base.llmc") as b:
        assert b.record().files == files


def test_a_missing_base_is_named_and_other_tensors_still_decode(tmp_path):
    base, ft = _pair(4)
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=base)
    with llmcodec.open(tmp_path / "ft.llmc") as f:
        assert f.get_tensor("new").tobytes() == ft["new"].tobytes()  # not a delta: no base needed
        with pytest.raises(BaseError, match="pass it as base="):
            f.get_tensor("w")
        with pytest.raises(BaseError):
            f.get_slice("w")[0:2]
    with pytest.raises(BaseError):
        llmcodec.load_file(tmp_path / "ft.llmc")


def test_a_wrong_base_is_named_before_anything_decodes(tmp_path):
    base, ft = _pair(5)
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=base, chunk_size=4096)
    other = dict(base)
    other["w"] = base["w"][:128]  # another shape: check 51 when the file opens
    with pytest.raises(BaseError, match=r"tensor 'w'.*\[128, 300\]"):
        llmcodec.open(tmp_path / "ft.llmc", base=other)
    del other["w"]
    with pytest.raises(BaseError, match="does not hold"):
        llmcodec.load_file(tmp_path / "ft.llmc", base=other)
    changed = dict(base)
    changed["w"] = base["w"].copy()
    changed["w"][200, 7] = BF16(1.0)  # same shape, other bytes: check 52, naming the chunk
    with llmcodec.open(tmp_path / "ft.llmc", base=changed) as f:
        assert f.get_slice("w")[0:2].tobytes() == ft["w"][0:2].tobytes()  # chunk 0's base bytes are right
        with pytest.raises(BaseError, match=r"tensor 'w' chunk \d+: the bytes of base tensor 'w'"):
            f.get_tensor("w")


class _CountingBase(bases.MemoryBase):
    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads = []

    def _read(self, t, start, stop):
        self.reads.append((t.name, start, stop))
        return super()._read(t, start, stop)


def test_a_slice_reads_only_the_base_ranges_of_its_chunks(tmp_path):
    base, ft = _pair(6)
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=base, chunk_size=4096)
    counting = _CountingBase(base)
    with llmcodec.open(tmp_path / "ft.llmc", base=counting) as f:
        got = f.get_slice("w")[100:103]
        assert got.tobytes() == ft["w"][100:103].tobytes()
        first, last = 100 * 600, 103 * 600  # bytes of rows 100:103 (600 bytes a row)
        chunks = range(first // 4096, -(-last // 4096))
        assert f.chunks_decoded == len(chunks) == 2
    assert counting.reads == [("w", c * 4096, (c + 1) * 4096) for c in chunks]


def test_reference_decoder_agrees(tmp_path):
    base, ft = _pair(7)
    llmcodec.save_file(ft, tmp_path / "ft.llmc", base=base, chunk_size=8192)
    decoded = reference.decode((tmp_path / "ft.llmc").read_bytes(), base={k: v.tobytes() for k, v in base.items()})
    fast = llmcodec.load_file(tmp_path / "ft.llmc", base=base)
    assert decoded.tensors.keys() == fast.keys()
    for name, t in decoded.tensors.items():
        assert bytes(t.data) == fast[name].tobytes(), name


def test_never_larger_than_standalone_per_tensor(tmp_path):
    """An unrelated base of the same names and shapes: every tensor stays standalone."""
    rng = np.random.default_rng(8)
    ft = {f"t{i}": (rng.standard_normal((64, 64)) * 0.02).astype(BF16) for i in range(4)}
    noise = {k: (rng.standard_normal((64, 64)) * 0.02).astype(BF16) for k in ft}
    llmcodec.save_file(ft, tmp_path / "a.llmc")
    llmcodec.save_file(ft, tmp_path / "b.llmc", base=noise)
    assert (tmp_path / "b.llmc").stat().st_size <= (tmp_path / "a.llmc").stat().st_size


def test_base_argument_is_checked(tmp_path):
    with pytest.raises(InvalidArgumentError, match="base must be"):
        llmcodec.save_file({"x": np.zeros(3, np.float32)}, tmp_path / "x.llmc", base=3)
    with pytest.raises(InvalidArgumentError):
        llmcodec.save_file({"x": np.zeros(3, np.float32)}, tmp_path / "x.llmc", base={"x": [1, 2, 3]})
    assert not (tmp_path / "x.llmc").exists()


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "llmcodec.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True)


def test_command_line_with_a_base(tmp_path):
    base, ft = _pair(9)
    st_save(base, str(tmp_path / "base.safetensors"))
    st_save(ft, str(tmp_path / "ft.safetensors"))
    run = _cli("encode", "ft.safetensors", "--base", "base.safetensors", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert _cli("verify", "ft.llmc", "-q", cwd=tmp_path).returncode == 1
    assert _cli("verify", "ft.llmc", "--base", "base.safetensors", "-q", cwd=tmp_path).returncode == 0
    run = _cli("decode", "ft.llmc", "-b", "base.safetensors", "-o", "back.safetensors", "-q", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert _sha(tmp_path / "back.safetensors") == _sha(tmp_path / "ft.safetensors")
    info = _cli("info", "ft.llmc", "--json", "-q", cwd=tmp_path)
    stats = json.loads(info.stdout)
    assert stats["base"]["files"][0]["sha256"] == _sha(tmp_path / "base.safetensors")
    assert {t["name"]: t.get("delta") for t in stats["tensors"]}["w"] == "DIFF against 'w'"
    table = _cli("info", "ft.llmc", "--base", "base.safetensors", "-q", cwd=tmp_path)
    assert table.returncode == 0 and "deltas against the base model 'base.safetensors'" in table.stdout


DTYPES = [np.float32, np.float16, BF16, np.int8, np.uint8, np.int16, np.int32, np.int64, np.float64,
          ml_dtypes.float8_e4m3fn]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_any_dtype_base_and_fine_tune_round_trip(tmp_path_factory, data):
    dtype = np.dtype(data.draw(st.sampled_from(DTYPES)))
    n = data.draw(st.integers(0, 3000))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    words = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[dtype.itemsize]
    base = rng.integers(0, np.iinfo(words).max, n, dtype=words, endpoint=True)
    how = data.draw(st.sampled_from(["near", "random", "same", "edge"]))
    if how == "near":
        ft = base + rng.integers(-3, 4, n).astype(words)  # wraps modulo 2^w, as the transforms do
    elif how == "random":
        ft = rng.integers(0, np.iinfo(words).max, n, dtype=words, endpoint=True)
    elif how == "same":
        ft = base.copy()
    else:  # words at the edges: 0, the sign bit, the maximum
        edges = np.array([0, 1, np.iinfo(words).max, 1 << (8 * dtype.itemsize - 1)], words)
        ft, base = rng.choice(edges, n), rng.choice(edges, n)
    chunk = data.draw(st.sampled_from([None, dtype.itemsize, 64, 1000]))
    path = tmp_path_factory.mktemp("h") / "f.llmc"
    b, f = {"t": base.view(dtype)}, {"t": ft.view(dtype)}
    llmcodec.save_file(f, path, base=b, chunk_size=chunk)
    assert llmcodec.load_file(path, base=b)["t"].tobytes() == ft.tobytes()
    with llmcodec.open(path, base=b) as opened:
        lo, hi = sorted(data.draw(st.tuples(st.integers(0, n), st.integers(0, n))))
        assert opened.get_slice("t")[lo:hi].tobytes() == ft[lo:hi].tobytes()


def test_torch_helpers_take_a_base(tmp_path):
    torch = pytest.importorskip("torch")
    import llmcodec.torch as lt

    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.add_(torch.randn(64, 64, generator=g).to(torch.bfloat16) * 1e-3)
    lt.save_file(model.state_dict(), tmp_path / "ft.llmc", base=base)
    loaded = lt.load_file(tmp_path / "ft.llmc", base=base)
    assert all(torch.equal(loaded[k].view(torch.int16), v.view(torch.int16)) for k, v in model.state_dict().items())
    fresh = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)).to(torch.bfloat16)
    assert lt.load_model(fresh, tmp_path / "ft.llmc", base=base) == ([], [])
    assert all(torch.equal(a.view(torch.int16), b.view(torch.int16))
               for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with pytest.raises(BaseError):
        lt.load_file(tmp_path / "ft.llmc")


@pytest.mark.parametrize("word", [1, 2, 4, 8])
@pytest.mark.parametrize("transform", [delta.DIFF, delta.SUB])
@pytest.mark.parametrize("offset", [0, 1, 3])  # views of words at unaligned addresses
def test_the_kernels_transforms_equal_the_numpy_definition(word, transform, offset):
    from llmcodec import kernels

    rng = np.random.default_rng(word * 10 + transform)
    n = 4096 * word
    edges = np.array([0, 1, 0x7F, 0x80, 0xFF], np.uint8)
    a, b = (np.concatenate([rng.integers(0, 256, n - 64, dtype=np.uint8), rng.choice(edges, 64)]) for _ in range(2))
    buffer = np.zeros(3 * (n + 8), np.uint8)
    raw, base, out = (buffer[k * (n + 8) + offset:k * (n + 8) + offset + n] for k in range(3))
    raw[:], base[:] = a, b
    kernels.apply_delta(transform, word, raw, base, out)
    assert out.tobytes() == delta.forward(transform, a, b, word).tobytes()
    kernels.undo_delta(transform, word, out, base)
    assert out.tobytes() == a.tobytes()
