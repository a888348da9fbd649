"""llmcodec.open(): the safe_open interface, lazy slices, file objects, torch."""

import doctest
import io

import ml_dtypes
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file as st_save

import llmcodec
from llmcodec import dtypes, loader
from llmcodec import format as fmt


@pytest.fixture
def model(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "embed": (rng.standard_normal((300, 64)) * 0.02).astype(ml_dtypes.bfloat16),
        "proj": rng.standard_normal((50, 7)).astype(np.float32),
        "scale": np.array(0.5, np.float64),
        "empty": np.zeros((0, 3), np.int8),
        "ids": np.arange(11, dtype=np.int64),
    }
    path = tmp_path / "m.llmc"
    llmcodec.save_file(tensors, path, {"format": "np"}, chunk_size=1024)
    return path, tensors


def test_keys_metadata_len_contains_iteration(model):
    path, tensors = model
    with llmcodec.open(path) as f:
        assert f.keys() == sorted(tensors) and list(f) == sorted(tensors)  # sorted, as safetensors
        assert f.offset_keys() == list(tensors)  # file order
        assert len(f) == 5 and "proj" in f and "nope" not in f
        assert f.metadata() == {"format": "np"}
        for (_, got), want in zip(f.items(), tensors.values()):
            assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def test_same_tensors_as_safetensors_safe_open(model, tmp_path):
    _, tensors = model
    st = tmp_path / "m.safetensors"
    st_save(tensors, st)
    enc = llmcodec.encode_file(st, tmp_path / "from_st.llmc", chunk_size=2048)
    with safe_open(str(st), "np") as ref, llmcodec.open(enc) as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        for name in ref.keys():
            assert f.get_tensor(name).tobytes() == ref.get_tensor(name).tobytes()
            assert f.get_slice(name).get_shape() == ref.get_slice(name).get_shape()


@pytest.mark.parametrize("index", [
    slice(10, 20), slice(0, 1), 7, -1, slice(None, None, 5), slice(290, 3, -7), slice(5, 5), Ellipsis,
    (slice(2, 9), 3), (4, slice(10, 20)), (slice(None), slice(None, None, 2)), (Ellipsis, 1),
])
def test_get_slice_matches_numpy_indexing(model, index):
    path, tensors = model
    with llmcodec.open(path) as f:
        got = f.get_slice("embed")[index]
    want = tensors["embed"][index]
    assert got.shape == want.shape and got.tobytes() == np.ascontiguousarray(want).tobytes()


def test_get_slice_decodes_only_the_chunks_it_needs(model):
    path, _ = model
    with llmcodec.open(path) as f:
        entry = f.entry("embed")  # 300 x 64 bf16 in 1 KiB chunks: 512 elements = 8 rows per chunk
        assert len(entry.chunks) == 38
        f.get_slice("embed")[10:20]  # rows 10..19 = elements 640..1279 -> chunks 1 and 2
        assert f.chunks_decoded == 2
        f.get_slice("embed")[17]
        assert f.chunks_decoded == 3
        f.get_tensor("embed")
        assert f.chunks_decoded == 3 + 38


def test_scalar_and_empty_slices(model):
    path, tensors = model
    with llmcodec.open(path) as f:
        assert f.get_slice("scale")[()].tobytes() == tensors["scale"].tobytes()
        assert f.get_slice("empty")[:].shape == (0, 3)
        assert f.get_slice("proj").get_dtype() == "F32"
        with pytest.raises(IndexError):
            f.get_slice("ids")[11]
        with pytest.raises(llmcodec.InvalidArgumentError):
            f.get_slice("ids")[[1, 2]]


def test_missing_name_is_a_key_error(model):
    path, _ = model
    with llmcodec.open(path) as f:
        with pytest.raises(KeyError, match="nope"):
            f.get_tensor("nope")
        with pytest.raises(llmcodec.LlmcodecError):
            f.get_slice("nope")


def test_use_after_close_raises(model):
    path, _ = model
    f = llmcodec.open(path)
    f.close()
    with pytest.raises(llmcodec.LlmcodecError, match="closed"):
        f.keys()


def test_paths_bytes_and_file_objects(model):
    path, tensors = model
    data = path.read_bytes()
    with open(path, "rb") as fobj:
        sources = [str(path), path, data, io.BytesIO(data), fobj]
        for source in sources:
            with llmcodec.open(source) as f:
                assert f.get_tensor("ids").tobytes() == tensors["ids"].tobytes()


def test_non_seekable_stream_is_refused(model):
    path, _ = model

    class Pipe(io.RawIOBase):
        def readable(self):
            return True

        def seekable(self):
            return False

    with pytest.raises(llmcodec.InvalidArgumentError, match="seekable"):
        llmcodec.open(Pipe())


def test_bad_framework(model):
    with pytest.raises(llmcodec.InvalidArgumentError, match="framework"):
        llmcodec.open(model[0], framework="jax")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A valid 360 KB file holding a 1 TiB tensor of zeros: 16384 CONSTANT chunks of 64 MiB."""
    chunk = 64 << 20
    check = fmt.checksum64(np.zeros(chunk, np.uint8))
    planes = [fmt.PlaneRef(fmt.METHOD_CONSTANT, 0, 0)]
    entry = fmt.TensorEntry("zeros", dtypes.from_numpy(np.dtype(np.uint8)), (1 << 40,), 0, chunk,
                            [fmt.Chunk(fmt.PREAMBLE_SIZE, check, planes) for _ in range(1 << 14)])
    header = fmt.serialize_header(fmt.Header({}, fmt.Source(), [entry]))
    path = tmp_path_factory.mktemp("bomb") / "bomb.llmc"
    path.write_bytes(fmt.build_preamble(fmt.PREAMBLE_SIZE, header) + header)
    return path


def test_max_memory_refuses_a_decompression_bomb_before_allocating(bomb):
    limit = 1 << 30
    with llmcodec.open(bomb, max_memory=limit) as f:
        assert f.get_slice("zeros").get_shape() == [1 << 40]
        with pytest.raises(llmcodec.LimitExceededError,
                           match=f"bomb.llmc: decoding tensor 'zeros' needs {1 << 40} bytes, over max_memory={limit}"):
            f.get_tensor("zeros")
        with pytest.raises(llmcodec.LimitExceededError, match="rows 0:2147483648 of tensor 'zeros'"):
            f.get_slice("zeros")[:1 << 31]
        assert f.get_slice("zeros")[5:15].tobytes() == bytes(10)  # one 64 MiB chunk: within the limit
        with pytest.raises(llmcodec.LimitExceededError, match="max_memory"):
            list(f.items())
    with pytest.raises(llmcodec.LimitExceededError, match=f"'zeros', is {1 << 40} bytes.*max_memory={limit}"):
        llmcodec.load_file(bomb, max_memory=limit)


def test_max_memory_counts_what_one_call_allocates(model):
    """The decoded data first (refused before anything is decoded), then the decoding's working
    memory; the header's records when the file is opened."""
    path, tensors = model
    embed = tensors["embed"].nbytes  # 300 x 64 bf16 in 1 KiB chunks (8 rows each)
    with llmcodec.open(path, max_memory=1 << 20) as f:
        assert f.get_tensor("embed").tobytes() == tensors["embed"].tobytes()
        assert f.get_slice("embed")[8:16].tobytes() == tensors["embed"][8:16].tobytes()
        f.max_memory = embed - 1
        with pytest.raises(llmcodec.LimitExceededError, match=f"'embed' needs {embed} bytes, over max_memory"):
            f.get_tensor("embed")
        f.max_memory = embed
        with pytest.raises(llmcodec.LimitExceededError, match=f"'embed': the working memory .*took {embed} bytes"):
            f.get_tensor("embed")
        f.max_memory = 2047
        with pytest.raises(llmcodec.LimitExceededError, match=r"'embed' needs 1024 bytes, .*\(this call took 1024"):
            f.get_slice("embed")[8:16]  # the rows (1 KiB), then the chunk that holds them (1 KiB)
    with pytest.raises(llmcodec.LimitExceededError, match="parsing its header of"):
        llmcodec.open(path, max_memory=1000)
    total = sum(t.nbytes for t in tensors.values())
    assert llmcodec.load_file(path, max_memory=total + (1 << 20)).keys() == tensors.keys()
    header = 48 * 1480  # container.HEADER_PARSE_BYTES per byte of its header
    with pytest.raises(llmcodec.LimitExceededError, match=f"needs {total} bytes, over max_memory={header + total - 1}"):
        llmcodec.load_file(path, max_memory=header + total - 1)


@pytest.mark.parametrize("bad", [-1, 1.5, "1G", True])
def test_max_memory_must_be_a_byte_count(model, bad):
    with pytest.raises(llmcodec.InvalidArgumentError, match="max_memory"):
        llmcodec.open(model[0], max_memory=bad)
    with pytest.raises(llmcodec.InvalidArgumentError, match="max_memory"):
        llmcodec.load_file(model[0], max_memory=bad)


def test_an_allocation_the_machine_refuses_is_a_limit_error(bomb, monkeypatch):
    """Without max_memory, a tensor too large for this machine (np.empty's MemoryError) is
    reported as a LimitExceededError too, never as a MemoryError."""
    empty = np.empty

    def refuse_huge(shape, *args, **kwargs):
        if np.prod(shape) >= 1 << 40:
            raise MemoryError
        return empty(shape, *args, **kwargs)

    monkeypatch.setattr(np, "empty", refuse_huge)
    with llmcodec.open(bomb) as f:
        with pytest.raises(llmcodec.LimitExceededError, match="more than this machine can allocate"):
            f.get_tensor("zeros")
    with pytest.raises(llmcodec.LimitExceededError, match="more than this machine can allocate"):
        llmcodec.load_file(bomb)


def test_an_empty_tensor_numpy_cannot_shape_is_a_limit_error(tmp_path):
    """[0, 2^63] is a valid empty tensor of the format, but no numpy array has that shape (found by
    the fuzzer as a ValueError)."""
    u8 = dtypes.from_numpy(np.dtype(np.uint8))
    tensors = [fmt.TensorEntry("huge", u8, (0, 1 << 63), 0, 1), fmt.TensorEntry("fine", u8, (0, 1 << 62), 0, 1),
               fmt.TensorEntry("rows", u8, ((1 << 63) - 1, 0), 0, 1)]
    header = fmt.serialize_header(fmt.Header({}, fmt.Source(), tensors))
    path = tmp_path / "e.llmc"
    path.write_bytes(fmt.build_preamble(fmt.PREAMBLE_SIZE, header) + header)
    with llmcodec.open(path) as f:
        assert f.get_tensor("fine").shape == (0, 1 << 62)
        assert f.get_slice("rows")[::2].shape == (1 << 62, 0)  # no row is decoded, nor listed
        assert f.get_slice("rows")[-1].shape == (0,)
        for read in (lambda: f.get_tensor("huge"), lambda: f.get_slice("huge")[:]):
            with pytest.raises(llmcodec.LimitExceededError, match=r"'huge': numpy cannot hold .* shape \[0, 9223"):
                read()
    with pytest.raises(llmcodec.LimitExceededError, match="numpy cannot hold"):
        llmcodec.load_file(path)


def test_docstring_examples_run(tmp_path):
    path = tmp_path / "doc.llmc"
    llmcodec.save_file({"w": np.arange(12, dtype=np.float32).reshape(4, 3)}, path)
    for fn in (loader.open, llmcodec.save_file):
        finder = doctest.DocTestFinder()
        for test in finder.find(fn, globs={"llmcodec": llmcodec, "np": np, "path": path}):
            runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
            runner.run(test)
            assert runner.failures == 0, test.name


torch = pytest.importorskip("torch")


def test_torch_framework_keeps_bf16(model):
    path, tensors = model
    with llmcodec.open(path, framework="pt") as f:
        t = f.get_tensor("embed")
        assert t.dtype == torch.bfloat16
        assert t.view(torch.int16).numpy().tobytes() == tensors["embed"].tobytes()
        assert f.get_slice("proj")[3:5].dtype == torch.float32


def test_torch_save_load_mirror_safetensors(tmp_path):
    import llmcodec.torch as lt

    sd = {"a": torch.randn(5, 4, dtype=torch.bfloat16), "b": torch.arange(6, dtype=torch.int32),
          "c": torch.randn(3).to(torch.float8_e4m3fn)}
    lt.save_file(sd, tmp_path / "t.llmc", {"k": "v"})
    back = lt.load_file(tmp_path / "t.llmc")
    for k, v in sd.items():
        assert back[k].dtype == v.dtype
        assert lt.to_numpy(back[k]).tobytes() == lt.to_numpy(v).tobytes()


def test_load_model_decodes_in_place(tmp_path):
    import llmcodec.torch as lt

    src = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2)).to(torch.bfloat16)
    lt.save_file(src.state_dict(), tmp_path / "m.llmc")
    dst = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 2)).to(torch.bfloat16)
    pointers = {k: v.data_ptr() for k, v in dst.state_dict().items()}
    assert lt.load_model(dst, tmp_path / "m.llmc") == ([], [])
    for k, v in dst.state_dict().items():
        assert v.data_ptr() == pointers[k]
        assert torch.equal(v.view(torch.int16), src.state_dict()[k].view(torch.int16))
    wrong = torch.nn.Sequential(torch.nn.Linear(16, 8))
    with pytest.raises(llmcodec.InvalidArgumentError, match='Unexpected key.*"1.bias", "1.weight"'):
        lt.load_model(wrong, tmp_path / "m.llmc")


def test_torch_load_file_takes_max_memory(bomb):
    import llmcodec.torch as lt

    with pytest.raises(llmcodec.LimitExceededError, match="max_memory"):
        lt.load_file(bomb, max_memory=1 << 20)
