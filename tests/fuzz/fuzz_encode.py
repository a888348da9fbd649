"""Coverage-guided fuzz target (atheris): the encoder on safetensors and GGUF files from strangers.

    python tests/fuzz/fuzz_encode.py --minutes 10 [CORPUS_DIR]   # see harness.py for the rest

The input's first byte picks how the source file is made: a safetensors file built from the rest
of the input (mostly valid; any field liable to be off, `builders.safetensors_file`), a GGUF file
built the same way (`builders.gguf_file`), either with a few byte edits, or the rest of the input
as it is (the seeds hold valid files of both kinds); its top bit picks the level (fast or max:
max tries layouts and chunk sizes). The property, for every source:

- `encode_file` refuses it with an `LlmcodecError`, or
- what it wrote verifies (`verify_file`), decodes to the source byte for byte (`decode_file`), and
  opens, every tensor readable (no `LlmcodecError` at all: a writer never writes a file its own
  reader refuses); and where the safetensors or gguf package reads the source, `llmcodec.open`
  gives the same tensors (names, dtypes, shapes, bytes) and the same user metadata.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

if __name__ == "__main__":
    harness.instrument(skip=("llmcodec.files",))  # instrumented, it leaks under libFuzzer (as in fuzz_info)

import builders  # noqa: E402
from harness import Draw, Finding, gist  # noqa: E402

import llmcodec  # noqa: E402
from llmcodec import LlmcodecError, dtypes  # noqa: E402

SCRATCH = harness.scratch_dir()
CHUNK_SIZES = [None, 64, 256, 1000, 4096, 64 << 20, (64 << 20) + 1]
KINDS = ("safetensors", "gguf", "raw")


def source(data: bytes) -> tuple[bytes, int | None, str]:
    """(source file, chunk size, level) that input `data` stands for."""
    head = data[0] if data else 0
    chunk_size = CHUNK_SIZES[(head >> 2) % len(CHUNK_SIZES)]
    level = "max" if head & 0x80 else "fast"
    draw = Draw(data[1:])
    kind = head & 3
    if kind == 3:
        return data[1:], chunk_size, level
    built = builders.gguf_file(draw) if kind == 2 else builders.safetensors_file(draw)
    if len(built) > 64 << 10:  # 17 MiB of metadata in chunks of 64 bytes: a minute to encode
        chunk_size = None
    return (harness.mutate(draw, built) if draw.chance(4) else built), chunk_size, level


def check(data: bytes) -> None:
    raw, chunk_size, level = source(data)
    src, dst, back = SCRATCH / "in", SCRATCH / "out.llmc", SCRATCH / "back"
    src.write_bytes(raw)
    try:
        try:
            llmcodec.encode_file(src, dst, threads=1, chunk_size=chunk_size, level=level)
        except LlmcodecError:
            return  # refused up front
        # Only now: the gguf package's reader takes minutes over a 532-byte file declaring an
        # array of 6e10 strings, which llmcodec refuses at once.
        is_gguf = raw[:4] == b"GGUF"
        reference = builders.gguf_reads(src) if is_gguf else builders.safetensors_reads(raw)
        try:
            llmcodec.verify_file(dst, threads=1)
        except LlmcodecError as exc:
            raise Finding(f"verify refuses what encode wrote ({gist(exc)})", str(exc)) from None
        try:
            llmcodec.decode_file(dst, back, threads=1)
        except LlmcodecError as exc:
            raise Finding(f"decode refuses what encode wrote ({gist(exc)})", str(exc)) from None
        if back.read_bytes() != raw:
            raise Finding("decoded file differs from the source", f"{len(raw)} bytes in, {back.stat().st_size} out")
        read_back(dst, raw, reference, is_gguf)
    finally:
        harness.remove_all(SCRATCH)


def read_back(dst: Path, raw: bytes, reference, is_gguf: bool) -> None:
    """Open the container; every tensor must read, and match what the reference library read."""
    got = {}
    try:
        with llmcodec.open(dst, threads=1) as f:
            metadata = f.metadata()
            for name in f.keys():
                part = f.get_slice(name)
                try:
                    array = f.get_tensor(name)
                except llmcodec.LimitExceededError:
                    if not unholdable(part.get_shape(), part.get_dtype()):
                        raise
                    continue
                got[name] = (part.get_dtype(), tuple(part.get_shape()), array.tobytes())
    except LlmcodecError as exc:
        raise Finding(f"open refuses what encode wrote ({gist(exc)})", str(exc)) from None
    if reference is None:
        return
    if is_gguf:
        for name, data in reference.items():
            if name not in got or got[name][2] != data:
                raise Finding("tensor differs from what gguf reads", f"tensor {name!r}")
        if set(got) - set(reference):
            raise Finding("tensor that gguf does not read", f"tensors {sorted(set(got) - set(reference))!r}")
        return
    tensors, metadata_want = reference
    coded = {n for n, (dtype, _, _) in tensors.items()
             if dtype in dtypes.BY_NAME and not dtypes.BY_NAME[dtype].is_block}
    for name in coded:
        if name not in got and not unholdable(tensors[name][1], tensors[name][0]):
            raise Finding("tensor missing", f"safetensors reads {name!r}, llmcodec does not")
        if name in got and got[name] != tensors[name]:
            same = got[name][2] == tensors[name][2]
            raise Finding("tensor differs from what safetensors reads",
                          f"{name!r}: {got[name][:2]} vs {tensors[name][:2]}, same bytes: {same}")
    if set(got) - coded:
        raise Finding("tensor that safetensors does not read", f"tensors {sorted(set(got) - coded)!r}")
    if (metadata or {}) != metadata_want:  # None for none, as safe_open; the reference reads {} for both
        raise Finding("metadata differs from what safetensors reads", f"{metadata!r:.200} vs {metadata_want!r:.200}")


def unholdable(shape, dtype: str) -> bool:
    """Whether numpy cannot make an array of this (empty) shape and dtype: [0, 2^70] and the like."""
    import numpy as np

    try:
        np.empty(shape, dtypes.BY_NAME[dtype].numpy) if 0 in shape else None
    except (ValueError, OverflowError):
        return True
    return False


def seeds() -> dict[str, bytes]:
    """Valid files of each kind (raw mode), and a few structured recipes."""
    import numpy as np
    from ml_dtypes import bfloat16
    from safetensors.numpy import save

    rng = np.random.default_rng(5)
    st = save({"w": (rng.standard_normal((4, 8)) * 0.02).astype(np.float32),
               "b": rng.standard_normal(8).astype(bfloat16), "i": np.arange(3, dtype=np.int64),
               "s": np.array(1.5, np.float16)}, metadata={"format": "pt"})
    out = {"raw-safetensors": bytes([3]) + st}
    gguf = Draw(bytes(range(256)) * 4)
    for kind in range(3):
        for n in range(3):
            out[f"built-{KINDS[kind]}-{n}"] = bytes([kind + 4 * n]) + bytes(rng.integers(0, 256, 64 + 64 * n, np.uint8))
    out["raw-gguf"] = bytes([3]) + builders.gguf_file(gguf)
    out["raw-gguf-real"] = bytes([3]) + real_gguf()
    out["raw-empty-st"] = bytes([3]) + struct.pack("<Q", 8) + b"{}      "
    return out


def real_gguf() -> bytes:
    """A small GGUF file written by the gguf package: block types and a plain one."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(7)
    q = gguf.GGMLQuantizationType
    path = SCRATCH / "seed.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.name", "seed")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    for name, ggml_type, rows in [("q4k", q.Q4_K, 2), ("q8", q.Q8_0, 3), ("q81", q.Q8_1, 2), ("q8k", q.Q8_K, 1)]:
        block, size = gguf.GGML_QUANT_SIZES[ggml_type]
        row = 256 if block == 256 else 64
        blocks = rng.integers(0, 256, (rows, row // block * size), np.uint8)
        writer.add_tensor(name, blocks, raw_dtype=ggml_type)
    writer.add_tensor("norm", rng.standard_normal(16).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = path.read_bytes()
    path.unlink()
    return data


if __name__ == "__main__":
    harness.fuzz_main(sys.argv, check, seeds, target="fuzz_encode")
