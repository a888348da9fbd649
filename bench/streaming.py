"""Streaming: encode and decode a generated checkpoint of several GB in bounded memory.

    python bench/streaming.py [--gb 4] [--dir /tmp]

Writes a safetensors file of bf16 weights drawn from N(0, 0.02) (16 tensors), then runs
`llmcodec encode`, `llmcodec decode` and `llmcodec verify` each in a fresh process, and reports
each one's peak resident memory (VmHWM, which unlike ru_maxrss is not inherited across exec) and
time; the decoded file must have the original's
SHA-256. The files are deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402

PIECE = 32 << 20  # weights generated per write: the generator itself stays small


def write_checkpoint(path: Path, total_bytes: int, n_tensors: int = 16) -> str:
    per = total_bytes // n_tensors // 2 // 4096 * 4096  # bf16 elements per tensor
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for i in range(n_tensors):
        header[f"layers.{i}.weight"] = {"dtype": "BF16", "shape": [per // 4096, 4096],
                                        "data_offsets": [offset, offset + 2 * per]}
        offset += 2 * per
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    sha = hashlib.sha256()
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for block in (struct.pack("<Q", len(raw)), raw):
            f.write(block)
            sha.update(block)
        for _ in range(n_tensors):
            left = per
            while left:
                n = min(left, PIECE // 2)
                data = (rng.standard_normal(n, np.float32) * 0.02).astype(ml_dtypes.bfloat16).tobytes()
                f.write(data)
                sha.update(data)
                left -= n
    return sha.hexdigest()


def measured(*args: str) -> tuple[float, float]:
    """Run `llmcodec ARGS` in a fresh process; its wall time (s) and peak RSS (MB)."""
    code = ("import sys; from llmcodec.cli import app\n"
            "try:\n    app(sys.argv[1:])\nexcept SystemExit as e:\n    rc = e.code or 0\n"
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
            "print('MAXRSS', hwm, file=sys.stderr)\n"
            "sys.exit(rc)\n")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args, "--quiet"], capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"llmcodec {' '.join(args)} failed: {proc.stderr}")
    rss_kb = int(proc.stderr.split("MAXRSS")[1].split()[0])
    return elapsed, rss_kb / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=4.0)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        src, enc, out = Path(tmp) / "big.safetensors", Path(tmp) / "big.llmc", Path(tmp) / "back.safetensors"
        digest = write_checkpoint(src, int(args.gb * 2**30))
        size = src.stat().st_size
        rows = []
        for step, argv in (("encode", ["encode", str(src), "-o", str(enc)]),
                           ("decode", ["decode", str(enc), "-o", str(out)]),
                           ("verify", ["verify", str(enc)])):
            seconds, rss = measured(*argv)
            rows.append([step, f"{size / 2**30:.2f} GiB", f"{seconds:.1f}", f"{size / seconds / 1e6:.0f}",
                         f"{rss:.0f}"])
            print(*rows[-1], sep="\t", flush=True)
        h = hashlib.sha256()
        with open(out, "rb") as f:
            while block := f.read(64 << 20):
                h.update(block)
        assert h.hexdigest() == digest, "decoded file differs from the original"
        ratio = enc.stat().st_size / size
    table = markdown_table(["step", "checkpoint", "seconds", "MB/s", "peak RSS (MB)"], rows)
    body = (f"A generated bf16 checkpoint (16 tensors, N(0, 0.02)), all cores, each step a fresh process; "
            f"ratio {ratio:.4f}; the decoded file's SHA-256 equals the original's.\n\n{table}")
    write_section("Streaming a large checkpoint", f"python bench/streaming.py --gb {args.gb:g}", body)
    print(table)


if __name__ == "__main__":
    main()
