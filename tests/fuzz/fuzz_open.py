"""Coverage-guided fuzz target (atheris): whatever bytes `llmcodec.open` is given, nothing but an
`LlmcodecError` may escape: no other exception, crash, hang or memory blow-up.

    python tests/fuzz/fuzz_open.py --minutes 10 [CORPUS_DIR]   # -max_total_time=600; any libFuzzer flag
    python tests/fuzz/fuzz_open.py CRASH_FILE                    # run one input again

An empty or missing CORPUS_DIR (default: a new temporary folder) is first seeded with the golden
vectors (tests/golden), the inputs that once failed (tests/fuzz/corpus) and `feature_seeds()`.
The command line and $LLMCODEC_FUZZ_FINDINGS are those of every target (harness.py).

Each input is opened, every tensor read whole and in a slice, every blob checked; then the same
again with its preamble and header checksums recomputed ("resealed"): a mutation almost never keeps
a 32-bit checksum right, and without that second pass the fuzzer would test little but the
checksums. Memory is capped with `max_memory`, as a program reading files from strangers should do.
Needs atheris (`pip install atheris`; wheels for Linux x86-64). The tests import `check` and
`reseal` from here.
"""

from __future__ import annotations

import functools
import io
import struct
import sys
import tempfile
from pathlib import Path

import xxhash

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "golden"
# Inputs that once broke the property, and the seeds: the golden vectors, valid and broken.
REGRESSIONS = sorted((HERE / "corpus").glob("*.llmc"))
SEEDS = [*GOLDEN.glob("*.llmc"), *GOLDEN.glob("broken/*.llmc"), *REGRESSIONS]
MAX_MEMORY = 64 << 20  # bytes one decoding call may allocate


def reseal(data: bytes) -> bytes:
    """`data` with Header_Checksum and Preamble_Checksum recomputed (spec section 3), where the
    preamble's header bounds allow it."""
    if len(data) < 40:
        return data
    header_offset, header_length = struct.unpack("<QQ", data[16:32])
    head = bytearray(data[:36])
    if 40 <= header_offset and header_offset + header_length <= len(data):
        header = data[header_offset:header_offset + header_length]
        struct.pack_into("<I", head, 32, xxhash.xxh64_intdigest(header) & 0xFFFFFFFF)
    return bytes(head) + struct.pack("<I", xxhash.xxh64_intdigest(head) & 0xFFFFFFFF) + data[40:]


def read_everything(data: bytes, base=None) -> dict[str, bytes]:
    """Open `data` (with `base`, for delta tensors) and decode all it holds; the raw bytes of each
    tensor."""
    import llmcodec
    from llmcodec import format as fmt

    out = {}
    with llmcodec.open(io.BytesIO(data), threads=1, max_memory=MAX_MEMORY, base=base) as f:
        f.metadata()
        for name in f.keys():
            out[name] = f.get_tensor(name).tobytes()
            if f.transform(name) is not None:  # rebuilt from its parts: read whole only
                continue
            part = f.get_slice(name)
            if part.get_shape():
                rows = part.get_shape()[0]
                part[rows // 3:rows // 3 + 2]
            else:
                part[()]
        for segment in f.reader.source.segments:
            if segment.kind == fmt.SEGMENT_BLOB:
                f.reader.read_blob(segment)
    return out


@functools.cache
def feature_seeds() -> dict[str, bytes]:
    """Small files with what no golden vector holds yet: a tensor saved twice (shared chunk
    records), quantized and factorized tensors (a transform record), and GGUF block dtypes (layout
    BLOCK_FIELDS; needs the gguf package)."""
    import numpy as np
    from safetensors.numpy import save_file

    import llmcodec
    from llmcodec import files

    rng = np.random.default_rng(3)
    seeds = {}
    with tempfile.TemporaryDirectory() as tmp:
        w = (rng.standard_normal((8, 16)) * 0.02).astype(np.float32)
        llmcodec.save_file({"a": w, "tied": w}, Path(tmp, "tied.llmc"), chunk_size=256)
        seeds["tied.llmc"] = Path(tmp, "tied.llmc").read_bytes()
        m = rng.standard_normal((64, 4)) @ rng.standard_normal((4, 64))
        save_file({"m": m.astype(np.float32), "b": w[0]}, str(Path(tmp, "m.safetensors")))
        files.transform_file(Path(tmp, "m.safetensors"), Path(tmp, "q.llmc"), "quantize", bits=4, group_size=32)
        files.transform_file(Path(tmp, "m.safetensors"), Path(tmp, "f.llmc"), "factorize", rank=4)
        seeds["quantized.llmc"] = Path(tmp, "q.llmc").read_bytes()
        seeds["factorized.llmc"] = Path(tmp, "f.llmc").read_bytes()
        try:
            import gguf
        except ImportError:
            return seeds
        q = gguf.GGMLQuantizationType
        writer = gguf.GGUFWriter(Path(tmp, "m.gguf"), "llama")
        writer.add_string("general.name", "seed")
        for name, ggml_type, (row, rows) in [("q4k", q.Q4_K, (256, 4)), ("q8", q.Q8_0, (32, 6))]:
            block, size = gguf.GGML_QUANT_SIZES[ggml_type]
            blocks = np.clip(rng.normal(128, 20, (rows, row // block * size)), 0, 255).astype(np.uint8)
            writer.add_tensor(name, blocks, raw_dtype=ggml_type)
        writer.add_tensor("norm", (rng.standard_normal(16) * 0.02).astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        seeds["gguf.llmc"] = llmcodec.encode_file(Path(tmp, "m.gguf"), Path(tmp, "gguf.llmc"),
                                                  chunk_size=512).read_bytes()
    return seeds


def check(data: bytes) -> None:
    """The property: `data`, as it is and resealed, decodes or raises an LlmcodecError."""
    import llmcodec

    for variant in (data, reseal(data)):
        try:  # the golden delta file's base, ignored by files without delta tensors (spec 11)
            read_everything(variant, base=GOLDEN / "delta-base.safetensors")
        except llmcodec.LlmcodecError:
            pass


def seeds() -> dict[str, bytes]:
    out = {f"{seed.parent.name}-{seed.name}": seed.read_bytes() for seed in SEEDS}
    out.update((f"feature-{name}", data) for name, data in feature_seeds().items())
    return out


def main(argv: list[str]) -> None:
    sys.path.insert(0, str(HERE))
    import harness

    harness.instrument()
    harness.fuzz_main(argv, check, seeds, target="fuzz_open")


if __name__ == "__main__":
    main(sys.argv)
