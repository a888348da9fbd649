"""`--level max` against `--level fast` and the peers, on the real files of bench/speed.py (issue 20).

    python bench/levels.py [--rounds 5]

For each real checkpoint (MiniLM-L6, Resemblyzer speech, YOLOv8n vision in fp32 / bf16 / fp16; two
GGUF files), in one run: llmcodec's `encode_file` at both levels (one thread), its size next to
ZipNN 0.5.4's (float files) or zstd -3's (GGUF) of the same bytes, the encoding CPU time of each
level, and single-thread `load_file` speed of both levels' containers (CPU time, medians of
alternating rounds, every decode checked byte for byte against the original file's tensors).
The summary holds the targets of issue 20: `max` <= 0.995x ZipNN's size on every float file,
<= 0.99x on the bf16 files (geometric mean), and decoding at >= 300 MB/s on one thread.
Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import markdown_table, write_section  # noqa: E402
from gguf_fields import ensure_packages as ensure_gguf_packages  # noqa: E402
from speed import Zipnn, Zstd, cases  # noqa: E402
from weights import ensure_packages  # noqa: E402


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def main() -> None:
    import llmcodec

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ensure_packages()
    ensure_gguf_packages()
    rows, float_ratio, bf16_ratio, max_speed = [], [], [], []
    import numpy as np
    from llmcodec import api

    for level in ("fast", "max"):  # compile the kernels before anything is timed
        api.save({"w": np.ones(1000, np.float32)}, threads=1, level=level)
    ram = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=ram) as work:
        work = Path(work)
        for label, path, dtype in cases(Path(tmp)):
            raw = path.read_bytes()
            mb = len(raw) / 1e6
            peer = Zstd(raw) if dtype == "gguf" else Zipnn(raw, dtype)
            out, enc, blob = {}, {}, {}
            for level in ("fast", "max"):
                out[level] = work / f"{level}.llmc"
                enc[level] = cpu(lambda p=path, o=out[level], lv=level: llmcodec.encode_file(p, o, threads=1, level=lv))
                blob[level] = out[level].read_bytes()
                back = work / "back"
                llmcodec.decode_file(out[level], back)
                assert back.read_bytes() == raw, f"{level} round trip differs: {path}"
                back.unlink()
            times = {"fast": [], "max": []}
            for level in times:  # warm-up
                llmcodec.load_file(blob[level], threads=1)
            reps = max(1, 40_000_000 // len(raw))
            for _ in range(args.rounds):
                for level in times:
                    times[level].append(cpu(lambda b=blob[level], n=reps: [llmcodec.load_file(b, threads=1)
                                                                           for _ in range(n)]) / reps)
            dec = {level: mb / statistics.median(t) for level, t in times.items()}
            size = {level: len(b) for level, b in blob.items()}
            rows.append([f"{label} ({mb:.1f} MB)", peer.name, f"{size['fast'] / len(raw):.4f}",
                         f"{size['max'] / len(raw):.4f}", f"{peer.size / len(raw):.4f}",
                         f"{size['fast'] / peer.size:.4f}", f"**{size['max'] / peer.size:.4f}**",
                         f"{mb / enc['fast']:.0f} / {mb / enc['max']:.0f}",
                         f"{dec['fast']:.0f} / {dec['max']:.0f}"])
            print(*rows[-1], sep="\t", flush=True)
            if dtype != "gguf":
                float_ratio.append(size["max"] / peer.size)
                max_speed.append(dec["max"])
                if dtype == "bf16":
                    bf16_ratio.append(size["max"] / peer.size)
    geo = math.exp(statistics.fmean(math.log(r) for r in bf16_ratio))
    summary = [
        ["max / ZipNN size, float files (largest / median)", f"{max(float_ratio):.4f} / "
         f"{statistics.median(float_ratio):.4f}", "<= 0.995 each"],
        ["max / ZipNN size, bf16 files (geometric mean)", f"{geo:.4f}", "<= 0.99"],
        ["max decode MB/s, 1 thread, float files (slowest / median)", f"{min(max_speed):.0f} / "
         f"{statistics.median(max_speed):.0f}", ">= 300"],
    ]
    header = ["file", "peer", "fast ratio", "max ratio", "peer ratio", "fast / peer size", "max / peer size",
              "encode MB/s, 1 thread (fast / max)", "decode MB/s, 1 thread (fast / max)"]
    body = (f"Sizes are of the whole file (llmcodec: `encode_file`'s .llmc) over the original; ZipNN 0.5.4 "
            f"compresses the float files' bytes, zstd -3 the GGUF files'. Encode: `encode_file`, one thread, "
            f"CPU time, one run. Decode: `load_file` of the container's bytes, one thread, CPU time, median of "
            f"{args.rounds} alternating rounds.\n\n{markdown_table(header, rows)}\n\n"
            f"{markdown_table(['over the float files', 'value', 'target (issue 20)'], summary)}")
    write_section("Levels: --level max against fast and the peers (issue 20)",
                  f"python bench/levels.py --rounds {args.rounds}", body)
    print(markdown_table(["over the float files", "value", "target"], summary))


if __name__ == "__main__":
    main()
