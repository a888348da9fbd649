"""What reading chunks with checked preads (instead of mapping the file) costs in decode speed.

The reader copies each decoding task's coded bytes out of the file with `os.preadv` into a buffer
of its own, so a file truncated or rewritten while open is an error, never a SIGBUS. This times
`ContainerReader.read_raw` against the mapped scheme it replaced (the kernel decoding straight from
an `mmap` of the file, the same tasks), on files of tens of MB in the page cache, and a bytes
source (no copy at all) as the floor. Times are CPU seconds of the process (user + system, all
threads; the preads' copies are system time), so other load on the machine disturbs them less
than wall time; the schemes alternate run by run.

    python bench/read_scheme.py
"""

from __future__ import annotations

import mmap
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import llmcodec  # noqa: E402
from bench.common import markdown_table, write_section  # noqa: E402
# Internals on purpose: this compares two schemes of feeding the decoding kernel, below the public API.
from llmcodec import codec, kernels  # noqa: E402
from llmcodec.codec import BATCH_BYTES  # noqa: E402
from llmcodec.container import ContainerReader  # noqa: E402

SIZE = 48 << 20  # raw bytes of each tensor


def files(tmp: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    tensors = {
        "bf16 N(0, 0.02), coded": (rng.standard_normal(SIZE // 2, np.float32) * 0.02).astype(ml_dtypes.bfloat16),
        "uint8 random, stored raw": rng.integers(0, 256, SIZE, dtype=np.uint8),
    }
    paths = {}
    for i, (label, array) in enumerate(tensors.items()):
        paths[label] = tmp / f"t{i}.llmc"
        llmcodec.save_file({"w": array}, paths[label], threads=2)
    return paths


def mapped(path: Path, threads: int):
    """The old scheme: the kernel reads the mapped file; the same tasks of BATCH_BYTES of output."""
    with open(path, "rb") as f:
        data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    reader = ContainerReader(path, threads=threads)
    t = reader.tensors[0]
    rows = codec.chunk_rows([(t, 0, len(t.chunks))])
    sizes = rows[:, kernels.ROW_N] * rows[:, kernels.ROW_ITEMSIZE]
    starts = np.cumsum(sizes) - sizes
    per_task = max(1, BATCH_BYTES // int(sizes[0]))
    tasks = range(0, rows.shape[0], per_task)
    out = np.empty(t.nbytes, np.uint8)

    def decode(lo: int) -> None:
        assert kernels.decode_chunks(data, rows[lo:lo + per_task], starts[lo:lo + per_task], out)[0] < 0

    return lambda: list(codec.parallel_map(threads, decode, tasks))


def cpu_times(fns: list, repeat: int = 9) -> list[float]:
    """Median CPU time of each of `fns`, run in turn `repeat` times after a warm-up each."""
    times = [[] for _ in fns]
    for fn in fns:
        fn()
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            t = time.process_time()
            fn()
            spent.append(time.process_time() - t)
    return [statistics.median(spent) for spent in times]


def main() -> None:
    load = os.getloadavg()[0]
    header = ["file", "threads", "mmap (old)", "pread (now)", "cost", "bytes in memory"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in files(Path(tmp)).items():
            data = path.read_bytes()
            for threads in (1, 2):
                reader = ContainerReader(path, threads=threads)
                in_memory = ContainerReader(data, threads=threads)
                t, m = reader.tensors[0], in_memory.tensors[0]
                out = np.empty(t.nbytes, np.uint8)
                old, new, floor = cpu_times([mapped(path, threads), lambda r=reader, t=t, o=out: r.read_raw(t, o),
                                             lambda r=in_memory, t=m, o=out: r.read_raw(t, o)])
                mb = t.nbytes / 1e6
                rows.append([f"{label} ({path.stat().st_size / 1e6:.0f} MB file)", threads, f"{mb / old:.0f}",
                             f"{mb / new:.0f}", f"{new / old - 1:+.1%}", f"{mb / floor:.0f}"])
                print(rows[-1], flush=True)
    table = markdown_table(header, rows)
    print(table)
    write_section("Reading chunks: pread against mmap", "python bench/read_scheme.py",
                  f"{SIZE >> 20} MiB tensors in 1 MiB chunks, files in the page cache: MB of raw output decoded "
                  f"per CPU second (user + system, all threads), median of 9 runs, the schemes in turn. The cost "
                  f"column is the extra CPU time of the checked pread scheme over the mapped one, which decodes "
                  f"with rows built once (the old reader cached them per tensor): it includes the new reader's "
                  f"per-task Python work (compare the bytes-in-memory column, which reads nothing). Load average "
                  f"when it started: {load:.1f}.\n\n{table}")


if __name__ == "__main__":
    main()
