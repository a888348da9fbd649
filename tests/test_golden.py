"""Golden vectors (written once by tests/golden/make_golden.py) and the reference decoder.

The committed containers must keep decoding to the recorded SHA-256s, by the fast decoder and by
`llmcodec.reference`, the slow decoder written from spec/FORMAT.md alone; and each broken file
must raise its recorded error from both.
"""

import hashlib
import json
import struct
from contextlib import ExitStack
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmcodec
from llmcodec import dtypes, errors, files, reference
from llmcodec import format as fmt
from llmcodec.container import ContainerReader

GOLDEN = Path(__file__).parent / "golden"
MANIFEST = json.loads((GOLDEN / "MANIFEST.json").read_text())


def sha(data) -> str:
    return hashlib.sha256(data).hexdigest()


ARRAY_VECTORS = sorted(k for k, v in MANIFEST["vectors"].items() if "tensors" in v)


@pytest.mark.parametrize("name", ARRAY_VECTORS)
def test_array_vectors_decode_to_recorded_tensors(name):
    want = MANIFEST["vectors"][name]
    with ContainerReader(GOLDEN / name) as r:
        assert r.metadata == want["metadata"]
        got = {t.name: t for t in r.tensors}
        assert list(got) == list(want["tensors"])
        for tensor, spec in want["tensors"].items():
            t = got[tensor]
            assert (t.dtype.name, list(t.shape)) == (spec["dtype"], spec["shape"])
            assert sha(r.read_raw(t)) == spec["sha256"], tensor


MODEL_VECTORS = sorted(k for k, v in MANIFEST["vectors"].items() if "model" in v)


@pytest.mark.parametrize("name", MODEL_VECTORS)
def test_transform_vectors_rebuild_recorded_tensors_in_both_decoders(name):
    """transforms.llmc (1.2: the Transforms section) and transforms-1.1.llmc (the record in the
    metadata, spec 10.2) rebuild the same tensors; each keeps exactly its user metadata."""
    want = MANIFEST["vectors"][name]
    expected = {k: (s["dtype"], s["shape"], s["sha256"]) for k, s in want["model"].items()}
    with llmcodec.open(GOLDEN / name) as f:
        assert f.offset_keys() == list(expected)  # model order
    with ContainerReader(GOLDEN / name) as r:
        assert r.metadata == want["metadata"]
    fast = llmcodec.load_file(GOLDEN / name)
    assert {k: (dtypes.from_numpy(a.dtype).name, list(a.shape), sha(a.tobytes()))
            for k, a in fast.items()} == expected
    ref = reference.decode((GOLDEN / name).read_bytes())
    assert ref.metadata == want["metadata"]
    assert list(ref.tensors) == list(expected)
    assert {k: (t.dtype, list(t.shape), sha(t.data)) for k, t in ref.tensors.items()} == expected


def test_checkpoint_vector_decodes_to_recorded_original(tmp_path):
    want = MANIFEST["vectors"]["checkpoint.llmc"]
    out = files.decode_file(GOLDEN / "checkpoint.llmc", tmp_path / "c.safetensors")
    assert out.stat().st_size == want["original_size"]
    assert sha(out.read_bytes()) == want["original_sha256"]


@pytest.mark.parametrize("name", ARRAY_VECTORS)
def test_reference_decoder_agrees_on_golden_vectors(name):
    want = MANIFEST["vectors"][name]
    ref = reference.decode((GOLDEN / name).read_bytes())
    assert ref.metadata == want["metadata"]
    assert {k: (t.dtype, list(t.shape), sha(t.data)) for k, t in ref.tensors.items()} == {
        k: (s["dtype"], s["shape"], s["sha256"]) for k, s in want["tensors"].items()}


def test_quants_vector_decodes_to_recorded_original_in_both_decoders(tmp_path):
    """Version 1.4: a GGUF file whose 5/6-bit quant types are in layout BLOCK_QUANTS (spec 5)."""
    want = MANIFEST["vectors"]["quants.llmc"]
    with ContainerReader(GOLDEN / "quants.llmc") as r:
        assert r.version == (1, 4)
        assert {t.name: t.layout for t in r.tensors} == want["layouts"]
    out = files.decode_file(GOLDEN / "quants.llmc", tmp_path / "q.gguf")
    assert out.stat().st_size == want["original_size"] and sha(out.read_bytes()) == want["original_sha256"]
    assert sha(reference.decode((GOLDEN / "quants.llmc").read_bytes()).original) == want["original_sha256"]


def test_reference_decoder_rebuilds_the_checkpoint():
    ref = reference.decode((GOLDEN / "checkpoint.llmc").read_bytes())
    assert sha(ref.original) == MANIFEST["vectors"]["checkpoint.llmc"]["original_sha256"]


# --- delta.llmc (1.3): a safetensors fine-tune stored against delta-base.safetensors -----------------

DELTA = MANIFEST["vectors"]["delta.llmc"]
BASE = GOLDEN / DELTA["base"]


def ref_base(path: Path) -> dict[str, reference.RefTensor]:
    """A safetensors file's tensors as the reference decoder takes a base: dtype, shape, raw bytes."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return {k: reference.RefTensor(v["dtype"], tuple(v["shape"]), data[8 + n + v["data_offsets"][0]:
                                                                     8 + n + v["data_offsets"][1]])
            for k, v in header.items()}


def as_arrays(base: dict[str, reference.RefTensor]) -> dict[str, np.ndarray]:
    """The same base as numpy arrays, as the fast decoder takes one."""
    return {k: np.frombuffer(t.data, dtypes.BY_NAME[t.dtype].numpy).reshape(t.shape) for k, t in base.items()}


def expected_fine_tune() -> dict:
    return {k: (s["dtype"], s["shape"], s["sha256"]) for k, s in DELTA["fine_tune"].items()}


def test_delta_vector_records_its_base_and_each_tensors_transform():
    """Minor version 3; the Base section names the committed base file (its name, size and
    SHA-256, spec 11.3); DIFF, SUB and standalone tensors as recorded."""
    data = (GOLDEN / "delta.llmc").read_bytes()
    assert struct.unpack("<HH", data[8:12]) == (1, 3)
    assert sha(BASE.read_bytes()) == DELTA["base_sha256"]
    with ContainerReader(GOLDEN / "delta.llmc") as r:
        assert r.base == fmt.BaseRecord(BASE.name, [fmt.BaseFile(BASE.name, BASE.stat().st_size,
                                                                 bytes.fromhex(DELTA["base_sha256"]))])
        assert {t.name: t.delta and fmt.DELTA_TRANSFORMS[t.delta.transform] for t in r.tensors} == {
            k: s["delta"] for k, s in DELTA["fine_tune"].items()}
    assert {s["delta"] for s in DELTA["fine_tune"].values()} == {"DIFF", "SUB", None}


@pytest.mark.parametrize("kind", ["path", "encoded", "arrays"])
def test_delta_vector_decodes_bit_exact_with_its_base(tmp_path, kind):
    """The base as its path, as an open llmcodec file of it, or as arrays: the fine-tune's tensors,
    and decode_file gives back the original safetensors file."""
    with ExitStack() as stack:
        if kind == "path":
            base = BASE
        elif kind == "encoded":
            files.encode_file(BASE, tmp_path / "base.llmc")
            base = stack.enter_context(llmcodec.open(tmp_path / "base.llmc"))
        else:
            base = as_arrays(ref_base(BASE))
        got = llmcodec.load_file(GOLDEN / "delta.llmc", base=base)
        assert {k: (dtypes.from_numpy(a.dtype).name, list(a.shape), sha(a.tobytes()))
                for k, a in got.items()} == expected_fine_tune()
        out = files.decode_file(GOLDEN / "delta.llmc", tmp_path / "ft.safetensors", base=base)
        assert (out.stat().st_size, sha(out.read_bytes())) == (DELTA["original_size"], DELTA["original_sha256"])
        files.verify_file(GOLDEN / "delta.llmc", base=base)


def test_reference_decoder_decodes_the_delta_vector_with_its_base():
    ref = reference.decode((GOLDEN / "delta.llmc").read_bytes(), ref_base(BASE))
    assert (ref.minor, ref.base.name) == (3, BASE.name)
    assert {k: (t.dtype, list(t.shape), sha(t.data)) for k, t in ref.tensors.items()} == expected_fine_tune()
    assert sha(ref.original) == DELTA["original_sha256"]


def test_delta_vector_without_its_base_names_the_base(tmp_path):
    """Both decoders: a BaseError naming the base file and its SHA-256; the fast one still reads the
    standalone tensors."""
    named = rf"{BASE.name}.*{DELTA['base_sha256']}"
    with pytest.raises(errors.BaseError, match=named):
        llmcodec.load_file(GOLDEN / "delta.llmc")
    with pytest.raises(errors.BaseError, match=named):
        files.decode_file(GOLDEN / "delta.llmc", tmp_path / "ft.safetensors")
    assert not (tmp_path / "ft.safetensors").exists()
    with pytest.raises(errors.BaseError, match=named):
        reference.decode((GOLDEN / "delta.llmc").read_bytes())
    with llmcodec.open(GOLDEN / "delta.llmc") as f:
        assert sha(f.get_tensor("bf16.head").tobytes()) == DELTA["fine_tune"]["bf16.head"]["sha256"]
        with pytest.raises(errors.BaseError, match=named):
            f.get_tensor("f32.decayed")


def wrong_bases() -> dict:
    """Bases that are not delta.llmc's, each wrong in one way, with what the BaseError names."""
    good = ref_base(BASE)
    flipped = bytearray(good["f32.decayed"].data)
    flipped[300] ^= 1  # element 75: chunk 1 of 64-element chunks
    return {
        "one bit": ({**good, "f32.decayed": reference.RefTensor("F32", (8, 32), bytes(flipped))},
                    r"'f32.decayed'.*chunk 1"),
        "missing": ({k: v for k, v in good.items() if k != "bf16.trained"}, "'bf16.trained'"),
        "shape": ({**good, "i8.codes": reference.RefTensor("I8", (16, 16), good["i8.codes"].data)}, r"\[16, 16\]"),
        "dtype": ({**good, "i8.codes": reference.RefTensor("U8", (256,), good["i8.codes"].data)}, "U8"),
    }


@pytest.mark.parametrize("case", sorted(wrong_bases()))
def test_delta_vector_with_a_wrong_base_is_a_base_error(tmp_path, case):
    """Both decoders refuse a wrong base before handing out any delta tensor, naming the tensor."""
    base, named = wrong_bases()[case]
    with pytest.raises(errors.BaseError, match=named):
        llmcodec.load_file(GOLDEN / "delta.llmc", base=as_arrays(base))
    with pytest.raises(errors.BaseError, match=named):
        files.decode_file(GOLDEN / "delta.llmc", tmp_path / "ft.safetensors", base=as_arrays(base))
    assert not (tmp_path / "ft.safetensors").exists()
    with pytest.raises(errors.BaseError, match=named):
        reference.decode((GOLDEN / "delta.llmc").read_bytes(), base)


def test_a_slice_needs_only_its_chunks_base_bytes():
    """Spec 11.2: rows 0-1 of f32.decayed are its chunk 0; a base wrong only in chunk 1's range
    still decodes them bit-exact, and the whole tensor is a BaseError."""
    base, _ = wrong_bases()["one bit"]
    want = reference.decode((GOLDEN / "delta.llmc").read_bytes(), ref_base(BASE)).tensors["f32.decayed"].data
    with llmcodec.open(GOLDEN / "delta.llmc", base=as_arrays(base)) as f:
        assert f.get_slice("f32.decayed")[0:2].tobytes() == want[:256]
        with pytest.raises(errors.BaseError, match="chunk 1"):
            f.get_tensor("f32.decayed")


def test_golden_vectors_cover_every_method():
    methods = set()
    for name in ARRAY_VECTORS + MODEL_VECTORS + ["checkpoint.llmc"]:
        with ContainerReader(GOLDEN / name) as r:
            methods |= {p.method for t in r.tensors for c in t.chunks for p in c.planes}
    assert methods == set(fmt.METHODS)


@pytest.mark.parametrize("name", sorted(MANIFEST["broken"]))
def test_broken_files_raise_their_error(name):
    """Exactly the recorded class (any subclass where the record is the base LlmcodecError), and the
    fast decoder's message names the file."""
    error = getattr(errors, MANIFEST["broken"][name])
    data = (GOLDEN / "broken" / name).read_bytes()
    with pytest.raises(error, match=name) as fast:
        llmcodec.load_file(GOLDEN / "broken" / name)
    with pytest.raises(error) as slow:
        reference.decode(data)
    if error is not errors.LlmcodecError:
        assert fast.type is error and slow.type is error


@st.composite
def containers(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = [np.float32, ml_dtypes.bfloat16, np.float16, np.uint8, np.int64, np.bool_]
    tensors = {}
    for i in range(draw(st.integers(0, 3))):
        dtype = np.dtype(draw(st.sampled_from(kinds)))
        shape = tuple(draw(st.lists(st.integers(0, 9), max_size=3)))
        values = rng.standard_normal(shape) * draw(st.sampled_from([0.02, 1.0, 1e4]))
        style = draw(st.sampled_from(["values", "bytes", "pairs"]))
        if style == "values":
            tensors[f"t{i}"] = values.astype(dtype)
        elif style == "pairs":  # equal neighbouring bytes: RANS0_PAIRS is chosen
            n = draw(st.integers(2000, 5001))
            tensors[f"t{i}"] = np.repeat(rng.integers(40, 60, n // 2 + 1, dtype=np.uint8), 2)[:n]
        else:
            tensors[f"t{i}"] = rng.integers(0, 256, int(np.prod(shape)) * dtype.itemsize,
                                            dtype=np.uint8).view(dtype).reshape(shape)
    return tensors, draw(st.sampled_from([None, 16, 64]))


@settings(max_examples=40, deadline=None)
@given(case=containers())
def test_reference_decoder_agrees_with_fast_decoder(tmp_path_factory, case):
    tensors, chunk = case
    path = tmp_path_factory.mktemp("ref") / "x.llmc"
    llmcodec.save_file(tensors, path, {"m": "1"}, chunk_size=chunk)
    ref = reference.decode(path.read_bytes())
    fast = llmcodec.load_file(path)
    assert list(ref.tensors) == list(fast)
    for name, array in fast.items():
        assert ref.tensors[name].data == array.tobytes()
        assert ref.tensors[name].shape == array.shape
