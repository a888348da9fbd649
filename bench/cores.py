"""What a second core gives on this machine: throughput of two threads against one, per kind of work.

    python bench/cores.py [--rounds 9]

Each workload runs once on one thread, then as two copies on two threads at once (independent
work, nothing shared but the machine); throughput scaling = 2 x t(one copy) / t(two copies), the
ceiling any split of that work over two threads can reach. Workloads:
- ALU: a register-only integer loop;
- L2 lookups: dependent-free reads at random from a 256 KiB table (what a rANS decode step does);
- memory copy: 200 MB, split in halves (bandwidth);
- fresh pages: first touch of a new 45 MB buffer (the kernel zeroes each page);
- llmcodec decode: every chunk of MiniLM bf16 / fp32 into memory allocated once, two copies;
  then the real thing, the chunks split over two threads (`read_many`), and `load_file`.
Rounds alternate the one- and two-thread runs; medians are reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402


@njit(nogil=True, cache=True)
def _alu(n):
    x, y = np.int64(12345), np.int64(777)
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & 0xFFFFFFFFFFFF
        y ^= x >> 7
    return x + y


@njit(nogil=True, cache=True)
def _lookups(table, n):
    mask, x, total = table.shape[0] - 1, np.int64(1), np.int64(0)
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        total += table[x & mask]
    return total


@njit(nogil=True, cache=True)
def _touch(buf, lo, hi):
    for i in range(lo, hi, 4096):
        buf[i] = 1


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _both(pool, fn, args_a, args_b):
    futures = [pool.submit(fn, *args_a), pool.submit(fn, *args_b)]
    for f in futures:
        f.result()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    ensure_packages()
    import llmcodec
    from llmcodec import codec, kernels
    from llmcodec.container import ContainerReader

    pool = ThreadPoolExecutor(2)
    table = np.arange(1 << 15, dtype=np.int64)
    big_a, big_b = np.ones(200_000_000, np.uint8), np.ones(200_000_000, np.uint8)
    half = big_a.shape[0] // 2
    _alu(10), _lookups(table, 10), _touch(table.view(np.uint8), 0, 1)
    work: dict[str, tuple] = {  # name: (one copy, two copies at once)
        "ALU loop": (lambda: _alu(40_000_000), lambda: _both(pool, _alu, (40_000_000,), (40_000_000,))),
        "L2 lookups (256 KiB table)": (lambda: _lookups(table, 30_000_000),
                                       lambda: _both(pool, _lookups, (table, 30_000_000), (table, 30_000_000))),
        "memory copy 200 MB (halves)": (lambda: np.copyto(big_b, big_a),
                                        lambda: _both(pool, np.copyto, (big_b[:half], big_a[:half]),
                                                      (big_b[half:], big_a[half:]))),
    }

    def fresh(threads):
        buf = np.empty(45_000_000, np.uint8)
        if threads == 1:
            _touch(buf, 0, buf.shape[0])
        else:
            _both(pool, _touch, (buf, 0, buf.shape[0] // 2), (buf, buf.shape[0] // 2, buf.shape[0]))

    work["fresh pages, 45 MB (halves)"] = (lambda: fresh(1), lambda: fresh(2))
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in minilm_files(Path(tmp)).items():
            if label == "fp16":
                continue
            blob = (Path(tmp) / f"{label}.llmc")
            llmcodec.encode_file(path, blob, threads=2)
            data = blob.read_bytes()
            reader = ContainerReader(data, threads=2)
            coded = np.frombuffer(data, np.uint8)  # the kernel reads the file's bytes in memory
            rows = codec.chunk_rows([(t, 0, len(t.chunks)) for t in reader.tensors])
            sizes = rows[:, kernels.ROW_N] * rows[:, kernels.ROW_ITEMSIZE]
            starts = np.cumsum(sizes) - sizes
            outs = [np.ones(int(sizes.sum()), np.uint8) for _ in range(2)]
            readers = {t: ContainerReader(data, threads=t) for t in (1, 2)}
            work[f"llmcodec decode, {label}: two copies"] = (
                lambda d=coded, r=rows, s=starts, o=outs: kernels.decode_chunks(d, r, s, o[0]),
                lambda d=coded, r=rows, s=starts, o=outs: _both(pool, kernels.decode_chunks, (d, r, s, o[0]),
                                                                       (d, r, s, o[1])))
            work[f"llmcodec decode, {label}: split (read_many)"] = (
                lambda rs=readers, o=outs: rs[1].read_many(rs[1].tensors, out=o[0]),
                lambda rs=readers, o=outs: rs[2].read_many(rs[2].tensors, out=o[0]))
            work[f"llmcodec decode, {label}: split (load_file)"] = (
                lambda d=data: llmcodec.load_file(d, threads=1), lambda d=data: llmcodec.load_file(d, threads=2))
        rows_out = []
        for name, (one, two) in work.items():
            one(), two()  # warm up
            t1, t2 = [], []
            for _ in range(args.rounds):
                t1.append(_timed(one))
                t2.append(_timed(two))
            a, b = statistics.median(t1), statistics.median(t2)
            copies = "copies" in name or name.startswith(("ALU", "L2"))
            scale, kind = (2 * a / b, "throughput of 2 copies") if copies else (a / b, "speed-up of 1 job split")
            rows_out.append([name, f"{a * 1e3:.1f}", f"{b * 1e3:.1f}", kind, f"{scale:.2f}x"])
            print(*rows_out[-1], sep="\t", flush=True)
    body = ("Two threads against one on the same work. 'Two copies' runs the work twice at once "
            "(nothing shared): its scaling is the ceiling for splitting that work. 'Split' divides one "
            "job over two threads.\n\n"
            + markdown_table(["work", "1 thread ms", "2 threads ms", "measured", "scaling"], rows_out))
    write_section("What a second core gives", "python bench/cores.py", body)


if __name__ == "__main__":
    main()
