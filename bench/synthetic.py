"""Ratio and single-thread encode/decode speed of llmcodec on synthetic weights, next to zstd.

    python bench/synthetic.py            # prints the table and rewrites its section of RESULTS.md

Weights are drawn from N(0, 0.02) (2M of them, like a transformer's linear layers) and cast with
round-to-nearest-even to bf16, fp16 and fp32.
"""

from __future__ import annotations

import os
import sys

import ml_dtypes
import numpy as np

import llmcodec
from common import markdown_table, median_time, write_section

N = 2_000_000


def run_llmcodec(array: np.ndarray) -> tuple[int, float, float]:
    path = "/tmp/llmcodec-bench-synthetic.llmc"

    def encode():
        llmcodec.save_file({"w": array}, path, threads=1)

    def decode():
        return llmcodec.load_file(path, threads=1)

    t_enc = median_time(encode)
    t_dec = median_time(decode)
    assert decode()["w"].tobytes() == array.tobytes()
    return os.path.getsize(path), t_enc, t_dec


def run_zstd(array: np.ndarray, level: int) -> tuple[int, float, float]:
    import zstandard

    raw = array.tobytes()
    comp = zstandard.ZstdCompressor(level=level)
    blob = comp.compress(raw)
    dec = zstandard.ZstdDecompressor()
    t_enc = median_time(lambda: comp.compress(raw), 3)
    t_dec = median_time(lambda: dec.decompress(blob), 3)
    return len(blob), t_enc, t_dec


def main() -> None:
    weights = np.random.default_rng(0).standard_normal(N) * 0.02
    arrays = {
        "bf16": weights.astype(ml_dtypes.bfloat16),
        "fp16": weights.astype(np.float16),
        "fp32": weights.astype(np.float32),
    }
    rows = []
    for label, array in arrays.items():
        mb = array.nbytes / 1e6
        candidates = [("llmcodec", run_llmcodec)]
        try:
            import zstandard  # noqa: F401
            candidates += [("zstd -3", lambda a: run_zstd(a, 3))]
        except ImportError:
            pass
        for codec, fn in candidates:
            size, t_enc, t_dec = fn(array)
            rows.append([label, codec, f"{size / array.nbytes:.4f}", f"{mb / t_enc:.0f}", f"{mb / t_dec:.0f}"])
            print(*rows[-1], sep="\t", flush=True)
    table = markdown_table(["dtype", "codec", "ratio", "encode MB/s", "decode MB/s"], rows)
    body = (f"{N:,} weights from N(0, 0.02), one thread, median of 5 runs (zstd: 3).\n\n{table}")
    write_section("Synthetic weights", "python bench/synthetic.py", body)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
