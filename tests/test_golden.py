"""Golden vectors (written once by tests/golden/make_golden.py) and the reference decoder.

The committed containers must keep decoding to the recorded SHA-256s, by the fast decoder and by
`llmcodec.reference`, the slow decoder written from spec/FORMAT.md alone; and each broken file
must raise its recorded error from both.
"""

import hashlib
import json
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


def test_reference_decoder_rebuilds_the_checkpoint():
    ref = reference.decode((GOLDEN / "checkpoint.llmc").read_bytes())
    assert sha(ref.original) == MANIFEST["vectors"]["checkpoint.llmc"]["original_sha256"]


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
