"""Corrupted and hostile files: every truncation, bit flip and random mutation raises an
LlmcodecError (or, where it changed nothing, decodes exactly): never another exception, a crash or
wrong weights. The property itself is `fuzz.fuzz_open.check`, which the fuzz target shares."""

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llmcodec
from llmcodec import files, kernels, reference
from llmcodec import format as fmt
from llmcodec.container import ContainerReader
from llmcodec.errors import ChecksumError, FormatError, TruncatedError

from conftest import legacy_transform_file
from fuzz.fuzz_open import check, feature_seeds, read_everything, reseal
from test_golden import as_arrays, ref_base


def _valid_file(tmp_path):
    rng = np.random.default_rng(0)
    w = (rng.standard_normal(30_000) * 0.02).astype(np.float32)
    tensors = {
        "pairs": np.repeat(rng.integers(40, 60, 4001, dtype=np.uint8), 2)[:8001],  # RANS0_PAIRS, odd length
        "w": w,  # RANS0 exponents, RAW mantissas
        "c": np.zeros(100, np.int16),  # CONSTANT
        "s": np.array(1.5, np.float64),
    }
    path = tmp_path / "v.llmc"
    llmcodec.save_file(tensors, path, {"k": "v"}, chunk_size=8192)
    return path.read_bytes(), tensors


def _outcome(data: bytes, tensors: dict) -> str:
    """'error' if the file is rejected with an LlmcodecError, 'exact' if it decodes to the original."""
    try:
        got = llmcodec.load_file(data)
    except llmcodec.LlmcodecError:
        return "error"
    assert all(got[k].tobytes() == v.tobytes() for k, v in tensors.items()), "decoded to wrong weights"
    return "exact"


@pytest.mark.parametrize("kind", ["flip", "byte", "truncate", "zero-run"])
def test_random_corruptions_are_caught(tmp_path, kind):
    data, tensors = _valid_file(tmp_path)
    rng = np.random.default_rng(zlib.crc32(kind.encode()))  # the same corruptions in every run (hash() is salted)
    outcomes = []
    for _ in range(100):  # 4 kinds x 100 = 400 corruptions
        bad = bytearray(data)
        pos = int(rng.integers(0, len(data)))
        if kind == "flip":
            bad[pos] ^= 1 << int(rng.integers(0, 8))
        elif kind == "byte":
            bad[pos] = (bad[pos] + int(rng.integers(1, 256))) % 256
        elif kind == "truncate":
            bad = bad[:pos]
        else:
            end = min(len(bad), pos + int(rng.integers(1, 64)))
            bad[pos:end] = bytes(end - pos)
        outcomes.append(_outcome(bytes(bad), tensors))
    assert outcomes.count("error") >= 90  # checksums cover every byte; "exact" only if nothing changed


def test_corrupted_streams_never_crash_the_kernels(tmp_path):
    """Bytes of the data section changed (the header stays valid): the kernels meet hostile tables,
    states and words; they must report an error (or decode exactly), never crash or read out of bounds."""
    data, tensors = _valid_file(tmp_path)
    header_at = int.from_bytes(data[16:24], "little")
    rng = np.random.default_rng(5)
    for _ in range(300):
        bad = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            bad[int(rng.integers(40, header_at))] = int(rng.integers(0, 256))
        assert _outcome(bytes(bad), tensors) in ("error", "exact")


def test_reference_decoder_rejects_the_same_corruptions(tmp_path):
    data, tensors = _valid_file(tmp_path)
    rng = np.random.default_rng(9)
    for _ in range(40):
        bad = bytearray(data)
        bad[int(rng.integers(0, len(data)))] ^= 0x10
        fast = _outcome(bytes(bad), tensors)
        try:
            reference.decode(bytes(bad))
            slow = "exact"
        except llmcodec.LlmcodecError:
            slow = "error"
        assert fast == slow


# --- every prefix, every region, random mutations --------------------------------------------------

GOLDEN = Path(__file__).parent / "golden"
SMALL_FILES = ["arrays.llmc", "pairs.llmc", "checkpoint.llmc"]  # every method, layout and segment kind


def _error(data: bytes) -> llmcodec.LlmcodecError | None:
    """The error `data` raises when all it holds is read (None if it decodes)."""
    try:
        read_everything(data)
    except llmcodec.LlmcodecError as exc:
        return exc
    return None


@pytest.mark.parametrize("path", sorted((Path(__file__).parent / "fuzz" / "corpus").glob("*.llmc")),
                         ids=lambda p: p.name)
def test_inputs_the_fuzzer_once_failed_on_raise_only_llmcodec_errors(path):
    check(path.read_bytes())


@pytest.mark.parametrize("name", [*SMALL_FILES, "delta.llmc"])
def test_every_prefix_is_truncated(name):
    data = (GOLDEN / name).read_bytes()
    for cut in range(len(data)):
        assert isinstance(_error(data[:cut]), TruncatedError), cut


def _regions(data: bytes) -> dict[str, list[int]]:
    """The byte positions of each region of a container."""
    header_at = struct.unpack("<Q", data[16:24])[0]
    found = {"magic": list(range(8)), "preamble fields and checksum": list(range(8, 40)),
             "header": list(range(header_at, len(data))), "rANS tables and states": [], "rANS words": [],
             "RAW planes": [], "blobs": []}
    with ContainerReader(data) as r:
        for t in r.tensors:
            for i, chunk in enumerate(t.chunks):
                pos = chunk.offset
                for p in chunk.planes:
                    if p.method == fmt.METHOD_RAW:
                        found["RAW planes"] += range(pos, pos + p.length)
                    elif p.method != fmt.METHOD_CONSTANT:
                        fault, _, lanes, _, _, size = kernels.rans_table(
                            np.frombuffer(data, np.uint8)[pos:pos + p.length], p.method, t.chunk_span(i)[1])
                        assert fault == kernels.FAULT_OK
                        words = pos + size + 4 * lanes
                        found["rANS tables and states"] += range(pos, words)
                        found["rANS words"] += range(words, pos + p.length)
                    pos += p.length
        for s in r.source.segments:
            if s.kind == fmt.SEGMENT_BLOB:
                found["blobs"] += range(s.offset, s.offset + s.length)
    return found


EXPECTED = {"magic": FormatError, "preamble fields and checksum": ChecksumError, "header": ChecksumError}


def test_a_bit_flip_in_any_region_is_caught():
    """One bit flipped in each byte of each region (bit `position mod 8`): always an error, of the
    class the region's check raises (data regions: a table, stream or checksum error)."""
    flips = {}
    for name in SMALL_FILES:
        data = (GOLDEN / name).read_bytes()
        for region, positions in _regions(data).items():
            for pos in positions:
                bad = bytearray(data)
                bad[pos] ^= 1 << pos % 8
                error = _error(bytes(bad))
                assert isinstance(error, EXPECTED.get(region, (FormatError, ChecksumError))), (name, region, pos)
                flips[region] = flips.get(region, 0) + 1
    assert min(flips.values()) >= 4 and len(flips) == 7, flips


def _mutated(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for kind, where, value in edits:
        pos = where % (len(out) + 1)
        if kind == "flip" and pos < len(out):
            out[pos] ^= 1 << value % 8
        elif kind == "set" and pos < len(out):
            out[pos] = value
        elif kind == "field":  # an 8-byte field overwritten by an extreme value
            extreme = [0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1, 2**40, 64 << 20][value % 8]
            out[pos:pos + 8] = struct.pack("<Q", extreme)[:len(out) - pos]
        elif kind == "insert":
            out[pos:pos] = bytes([value]) * (1 + value % 16)
        elif kind == "delete":
            del out[pos:pos + 1 + value % 16]
        elif kind == "truncate":
            del out[pos:]
    return bytes(out)


EDITS = st.tuples(st.sampled_from(["flip", "set", "field", "insert", "delete", "truncate"]),
                  st.integers(0, 2**32 - 1), st.integers(0, 255))


def _small_file(name: str) -> bytes:
    return feature_seeds()[name] if name in feature_seeds() else (GOLDEN / name).read_bytes()


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(SMALL_FILES + sorted(feature_seeds())), edits=st.lists(EDITS, min_size=1, max_size=6))
def test_random_mutations_raise_only_llmcodec_errors(name, edits):
    """Mutated as it is: an LlmcodecError, or the exact original tensors (an edit that changed
    nothing). Resealed (checksums recomputed, so the header parser and the kernels meet the
    mutation): an LlmcodecError or a successful decode, nothing else. The files hold every method,
    layout, segment kind, block dtypes and shared chunks."""
    data = _small_file(name)
    bad = _mutated(data, edits)
    if _error(bad) is None:
        assert read_everything(bad) == read_everything(data), "decoded to wrong weights"
    check(bad)


def _read_with_base(data: bytes, base) -> dict[str, bytes]:
    """read_everything, for a file of delta tensors decoded against `base`."""
    out = {}
    with llmcodec.open(io.BytesIO(data), threads=1, max_memory=64 << 20, base=base) as f:
        for name in f.keys():
            out[name] = f.get_tensor(name).tobytes()
            shape = f.get_slice(name).get_shape()
            f.get_slice(name)[shape[0] // 3:shape[0] // 3 + 2]
    return out


@pytest.mark.parametrize("name", ["pairs.llmc", "checkpoint.llmc", "delta.llmc"])
def test_fast_and_reference_decoders_agree_on_every_header_byte(tmp_path, name):
    """Each byte of the header changed (checksums recomputed): the fast decoder (verifying
    everything, blobs and the original's SHA-256 included) accepts exactly the files that the
    reference decoder accepts, with the same tensors. delta.llmc is decoded with its base; its
    header (1 KB) has one bit flipped per byte (bit `position mod 8`), and so has every 7th byte of
    its data section (chunks of delta words)."""
    data = (GOLDEN / name).read_bytes()
    header_at = struct.unpack("<Q", data[16:24])[0]
    base = slow_base = None
    flips = [(pos, mask) for pos in range(header_at, len(data)) for mask in (0x01, 0x80)]
    if name == "delta.llmc":
        slow_base = ref_base(GOLDEN / "delta-base.safetensors")
        base = as_arrays(slow_base)
        flips = [(pos, 1 << pos % 8) for pos in [*range(header_at, len(data)), *range(40, header_at, 7)]]
    path = tmp_path / name
    for pos, mask in flips:
        bad = bytearray(data)
        bad[pos] ^= mask
        bad = reseal(bytes(bad))
        try:
            ref = {k: t.data for k, t in reference.decode(bad, slow_base).tensors.items()}
        except llmcodec.LlmcodecError:
            ref = None
        path.write_bytes(bad)
        try:
            files.verify_file(path, threads=1, base=base)
            fast = read_everything(bad) if base is None else _read_with_base(bad, base)
        except llmcodec.LlmcodecError:
            fast = None
        assert fast == ref, (pos, mask)


# --- the transform record (metadata `llmcodec.transforms`) is file data too ------------------------


def _with_transform_record(tmp_path, record: str, parts: dict) -> Path:
    path = tmp_path / "t.llmc"
    legacy_transform_file(path, parts, record)  # a 1.1 file: the record is JSON in the metadata
    return path


def _factorized(rows: int, cols: int, **fields) -> str:
    return json.dumps({"w": {"kind": "factorize", "dtype": "F32", "shape": [rows, cols],
                             "parts": {"u": "w#u", "v": "w#v"}, "rank": 1, "original_bytes": 4 * rows * cols,
                             "relative_error": 0.0, **fields}})


def _rank_one(rows: int, cols: int) -> dict:
    return {"w#u": np.ones((rows, 1), np.float32), "w#v": np.ones((1, cols), np.float32)}


@pytest.mark.parametrize("record,match", [
    ("[" * 100_000 + "]" * 100_000, "not a valid transform record"),  # json: RecursionError
    (_factorized(8, 8, relative_error=10**400), "relative_error"),  # math.isfinite: OverflowError
])
def test_a_hostile_transform_record_is_a_format_error(tmp_path, record, match):
    path = _with_transform_record(tmp_path, record, _rank_one(8, 8))
    with pytest.raises(FormatError, match=match):
        llmcodec.open(path)


def test_a_transform_record_cannot_understate_what_rebuilding_takes(tmp_path):
    """Rank-one factors of 32 KiB that rebuild a 4096 x 4096 float32 matrix (64 MiB): max_memory
    counts what the shape needs (a record's original_bytes must agree with it: test_hostile_format)."""
    path = _with_transform_record(tmp_path, _factorized(4096, 4096), _rank_one(4096, 4096))
    with llmcodec.open(path, max_memory=1 << 20) as f:
        with pytest.raises(llmcodec.LimitExceededError, match="rebuilding tensor 'w'"):
            f.get_tensor("w")
    with pytest.raises(llmcodec.LimitExceededError, match=r"'w', is 67108864 bytes.*max_memory=1048576"):
        llmcodec.load_file(path, max_memory=1 << 20)  # loading everything counts the rebuilt tensor too
