"""Write the golden vectors once: small containers, the SHA-256 of what they decode to, and broken
files with the error each must raise. Committed files never change; a format change adds new ones.

    python tests/golden/make_golden.py     # writes only the vectors MANIFEST.json does not list yet
"""

import hashlib
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

import llmcodec

HERE = Path(__file__).parent


def arrays() -> dict:
    rng = np.random.default_rng(2026)
    w = (rng.standard_normal((24, 40)) * 0.02).astype(ml_dtypes.bfloat16)
    return {
        "bf16.gaussian": w,
        "f32.upcast": w[:6].astype(np.float32),
        "f16.small": (rng.standard_normal(50)).astype(np.float16),
        "u8.random": rng.integers(0, 256, 300, dtype=np.uint8),
        "i64.scalar": np.array(-7, np.int64),
        "f64.specials": np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324], np.float64),
        "bool.mask": rng.integers(0, 2, 17).astype(bool),
        "f8.e4m3": rng.integers(0, 256, 64, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
        "empty": np.zeros((3, 0), np.int32),
    }


def checkpoint_bytes() -> bytes:
    """A safetensors file with a hole between tensors and trailing bytes."""
    a = np.linspace(-1, 1, 48, dtype=np.float32).tobytes()
    b = (np.arange(20, dtype=np.int16) * 3).tobytes()
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [6, 8], "data_offsets": [0, 192]},
                         "b": {"dtype": "I16", "shape": [20], "data_offsets": [196, 236]}}).encode()
    return struct.pack("<Q", len(header)) + header + a + b"gap!" + b + b"trailer"


def paired() -> dict:
    """Planes whose bytes come in equal pairs: RANS0_PAIRS wins clearly (odd and even lengths)."""
    rng = np.random.default_rng(7)
    firsts = rng.choice(np.arange(40, 60, dtype=np.uint8), 2500)
    return {"u8.pairs": np.repeat(firsts, 2), "u8.pairs.odd": np.repeat(firsts, 2)[:-1].copy()}


def flip(data: bytes, pos: int, mask: int = 1) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def tensors_entry(tensors: dict, metadata: dict) -> dict:
    return {
        "metadata": metadata,
        "tensors": {k: {"dtype": llmcodec.dtypes.from_numpy(v.dtype).name, "shape": list(v.shape),
                        "sha256": hashlib.sha256(v.tobytes()).hexdigest()} for k, v in tensors.items()},
    }


def write_arrays() -> dict:
    tensors = arrays()
    llmcodec.save_file(tensors, HERE / "arrays.llmc", {"purpose": "golden"}, chunk_size=256)
    return tensors_entry(tensors, {"purpose": "golden"})


def write_pairs() -> dict:
    tensors = paired()
    llmcodec.save_file(tensors, HERE / "pairs.llmc", {"method": "RANS0_PAIRS"})
    return tensors_entry(tensors, {"method": "RANS0_PAIRS"})


def write_checkpoint() -> dict:
    original = checkpoint_bytes()
    (HERE / "checkpoint.safetensors").write_bytes(original)
    llmcodec.encode_file(HERE / "checkpoint.safetensors", HERE / "checkpoint.llmc", chunk_size=64)
    (HERE / "checkpoint.safetensors").unlink()
    return {"original_sha256": hashlib.sha256(original).hexdigest(), "original_size": len(original)}


def broken_files() -> dict:
    good = (HERE / "arrays.llmc").read_bytes()
    header_at = struct.unpack("<Q", good[16:24])[0]
    return {
        "truncated-preamble.llmc": (good[:30], "TruncatedError"),
        "truncated-end.llmc": (good[:-5], "TruncatedError"),
        "bad-magic.llmc": (b"GGUF" + good[4:], "FormatError"),
        "preamble-bitflip.llmc": (flip(good, 17), "ChecksumError"),
        "header-bitflip.llmc": (flip(good, header_at + 3), "ChecksumError"),
        "data-bitflip.llmc": (flip(good, 200, 0x80), "LlmcodecError"),
        "empty.llmc": (b"", "TruncatedError"),
    }


VECTORS = {"arrays.llmc": write_arrays, "checkpoint.llmc": write_checkpoint, "pairs.llmc": write_pairs}


def main() -> None:
    path = HERE / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"vectors": {}, "broken": {}}
    for name, write in VECTORS.items():
        if name not in manifest["vectors"]:
            manifest["vectors"][name] = write()
            print("wrote", name)
    for name, (data, error) in broken_files().items():
        if name not in manifest["broken"]:
            (HERE / "broken" / name).write_bytes(data)
            manifest["broken"][name] = error
            print("wrote broken/" + name)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
