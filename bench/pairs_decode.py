"""RANS0_PAIRS decode (issue 17): `kernels.rans_decode` with its 8-lane bulk loop `_pairs_lanes8`
(states in locals, unsigned indices, a uint16 pair + uint32 freq | bias table) against the loop
it replaced (`old_rans_decode` below: states in an array, the int64 table, signed indices).

    python bench/pairs_decode.py [--rounds 9] [--load-rounds 5]

Run on an AMD EPYC VM of 2 vCPUs shared with other work (noisy), 2026-12-02.

The planes: the exponent plane (FIELDS16 plane 0) of each 1 MiB chunk of the bf16 tensors of
MiniLM (bench/weights.py, cast to bf16), the speech and the vision model (bench/real_weights.py),
coded by `kernels.encode_plane` restricted to RANS0_PAIRS. Both decoders run on the same streams
and must give the plane's bytes; single thread, CPU time, old and new alternating round after
round, medians; MB/s of plane bytes.

Whole files: `llmcodec.load_file(path, threads=1)` of the three bf16 files encoded to .llmc, CPU
time, by today's package and by the package as it was before the kernel (extracted with `git
archive` from the parent of the commit that added `_pairs_lanes8`, or HEAD before that commit),
each in its own process, alternating. Writes its section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numba import njit

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 1 << 20  # raw bytes per chunk, llmcodec's default
RANS_L = 1 << 16
LANES = 8
DECODE_OK, DECODE_BAD_STATE, DECODE_STREAM_SHORT, DECODE_BAD_END = 0, 1, 2, 3


@njit(cache=True, nogil=True)
def old_rans_decode(stream, table, precision, lanes, width, out):
    """kernels.rans_decode for width 2 as it was before _pairs_lanes8 (the baseline, verbatim)."""
    n = out.shape[0] // width
    mask = (np.int64(1) << precision) - 1
    n_words = (stream.shape[0] - 4 * lanes) // 2
    if n_words < 0:
        return DECODE_STREAM_SHORT
    states = np.empty(lanes, np.int64)
    for j in range(lanes):
        x = (np.int64(stream[4 * j]) | (np.int64(stream[4 * j + 1]) << 8)
             | (np.int64(stream[4 * j + 2]) << 16) | (np.int64(stream[4 * j + 3]) << 24))
        if x < RANS_L:
            return DECODE_BAD_STATE
        states[j] = x
    wpos = 4 * lanes
    wend = wpos + 2 * n_words
    i = 0
    if lanes == LANES:
        while i + LANES <= n and wpos + 2 * LANES <= wend:
            for j in range(LANES):
                x = states[j]
                e = table[x & mask]
                out[2 * (i + j)] = e & 0xFF
                out[2 * (i + j) + 1] = (e >> 8) & 0xFF
                x = ((e >> 16) & 0xFFFF) * (x >> precision) + (e >> 32)
                take = np.int64(x < RANS_L)
                at = np.uint64(wpos)
                word = np.int64(stream[at]) | (np.int64(stream[at + np.uint64(1)]) << 8)
                states[j] = (x << (take << 4)) | (word & -take)
                wpos += take << 1
            i += LANES
    done = i
    j = done % lanes
    for i in range(done, n):
        x = states[j]
        e = table[x & mask]
        out[2 * i] = e & 0xFF
        out[2 * i + 1] = (e >> 8) & 0xFF
        x = ((e >> 16) & 0xFFFF) * (x >> precision) + (e >> 32)
        if x < RANS_L:
            if wpos >= wend:
                return DECODE_STREAM_SHORT
            x = (x << 16) | np.int64(stream[wpos]) | (np.int64(stream[wpos + 1]) << 8)
            wpos += 2
        states[j] = x
        j = j + 1 if j + 1 < lanes else 0
    for j in range(lanes):
        if states[j] != RANS_L:
            return DECODE_BAD_END
    if wpos != wend:
        return DECODE_BAD_END
    return DECODE_OK


def bf16_files(tmp: Path) -> dict[str, Path]:
    from real_weights import real_files
    from weights import minilm_files

    files = {"MiniLM": minilm_files(tmp)["bf16"]}
    files.update({label.split()[0]: path for label, (path, dtype) in real_files().items() if dtype == "bf16"})
    return files


def exponent_planes(path: Path) -> list[np.ndarray]:
    """FIELDS16 plane 0 of each 1 MiB chunk of the file's bf16 tensors, tensor by tensor."""
    import ml_dtypes
    from safetensors.numpy import load_file

    from llmcodec import kernels

    planes = []
    for t in load_file(str(path)).values():
        if t.dtype != ml_dtypes.bfloat16:
            continue
        raw = np.ascontiguousarray(t).view(np.uint8).ravel()
        for start in range(0, raw.shape[0], CHUNK):
            chunk = raw[start:start + CHUNK]
            split = np.empty((2, chunk.shape[0] // 2), np.uint8)
            kernels.split_planes(chunk, kernels.FIELDS16, split)
            planes.append(split[0])
    return planes


def coded(plane: np.ndarray):
    """(words: states then u16 words, int64 decode table, precision) of the plane's RANS0_PAIRS stream."""
    from llmcodec import codec, kernels
    from llmcodec.format import METHOD_RANS0_PAIRS

    stream = codec.encode_plane(plane, methods=[METHOD_RANS0_PAIRS], min_gain=-np.inf).stream
    fault, precision, lanes, symbols, freq, size = kernels.rans_table(stream, METHOD_RANS0_PAIRS, plane.shape[0])
    assert fault == kernels.FAULT_OK and lanes == LANES
    return stream[size:], kernels.decode_table(symbols, freq, precision), precision


def kernel_rows(files: dict[str, Path], rounds: int) -> list[list]:
    from llmcodec import kernels

    decoders = {"old": old_rans_decode, "new": kernels.rans_decode}
    rows = []
    for label, path in files.items():
        cases = [(p, *coded(p)) for p in exponent_planes(path) if p.shape[0] >= 2]
        for fn in decoders.values():  # compile, and check the bytes
            for plane, words, table, precision in cases:
                out = np.empty(plane.shape[0] - plane.shape[0] % 2, np.uint8)
                assert fn(words, table, precision, LANES, 2, out) == DECODE_OK
                assert out.tobytes() == plane[:out.shape[0]].tobytes()
        times = {name: [] for name in decoders}
        for _ in range(rounds):
            for name, fn in decoders.items():
                spent = 0.0
                for plane, words, table, precision in cases:
                    out = np.empty(plane.shape[0] - plane.shape[0] % 2, np.uint8)
                    t = time.process_time()
                    fn(words, table, precision, LANES, 2, out)
                    spent += time.process_time() - t
                times[name].append(spent)
        nbytes = sum(c[0].shape[0] for c in cases)
        old, new = (nbytes / statistics.median(times[k]) / 1e6 for k in decoders)
        rows.append([f"{label} bf16 exponents ({len(cases)} chunks)", f"{old:.0f}", f"{new:.0f}", f"{new / old:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def worker(paths: list[str], repeat: int) -> None:
    """Child process: median CPU ms of load_file(threads=1) per file, as JSON on stdout."""
    import llmcodec

    out = {}
    for p in paths:
        llmcodec.load_file(p, threads=1)  # compile / load the kernels, warm the page cache
        spent = []
        for _ in range(repeat):
            t = time.process_time()
            llmcodec.load_file(p, threads=1)
            spent.append(time.process_time() - t)
        out[p] = 1e3 * statistics.median(spent)
    print(json.dumps(out))


def old_tree(tmp: Path) -> Path:
    """The package as it was before _pairs_lanes8, extracted with git archive."""
    git = ["git", "-C", str(ROOT)]
    added = subprocess.run([*git, "log", "--format=%H", "-S", "def _pairs_lanes8", "--", "llmcodec/kernels.py"],
                           capture_output=True, text=True, check=True).stdout.split()
    rev = f"{added[-1]}^" if added else "HEAD"
    tree = tmp / "old"
    tree.mkdir()
    archive = subprocess.run([*git, "archive", rev, "llmcodec"], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def load_rows(files: dict[str, Path], tmp: Path, rounds: int) -> list[list]:
    import llmcodec

    encoded = {}
    for label, path in files.items():
        encoded[label] = llmcodec.encode_file(path, tmp / f"{label}-bf16.llmc", threads=1)
    trees = {"old": old_tree(tmp), "new": ROOT}
    paths = [str(p) for p in encoded.values()]
    ms = {name: {p: [] for p in paths} for name in trees}
    for _ in range(rounds):
        for name, tree in trees.items():
            env = {**os.environ, "PYTHONPATH": str(tree)}
            done = subprocess.run([sys.executable, __file__, "--worker", *paths], env=env, capture_output=True,
                                  text=True, check=True)
            for p, v in json.loads(done.stdout.splitlines()[-1]).items():
                ms[name][p].append(v)
    rows = []
    for label, p in zip(encoded, paths):
        old, new = (statistics.median(ms[name][p]) for name in trees)
        rows.append([f"{label} bf16 ({files[label].stat().st_size / 1e6:.1f} MB)", f"{old:.1f}", f"{new:.1f}",
                     f"{old / new:.2f}x"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds of the kernel timing")
    ap.add_argument("--load-rounds", type=int, default=5, help="alternating old/new processes for load_file")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, repeat=5)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = bf16_files(tmp)
        kernel = kernel_rows(files, args.rounds)
        load = load_rows(files, tmp, args.load_rounds)
    body = (f"Single thread, CPU time, medians of {args.rounds} alternating rounds; MB/s of exponent-plane "
            "bytes decoded (FIELDS16 plane 0 of 1 MiB chunks, coded RANS0_PAIRS at the writer's precision, "
            "13). `old`: the loop with the states in an array and the int64 table (copied in the script); "
            "`new`: `kernels.rans_decode` with `_pairs_lanes8`. Same streams, same bytes out.\n\n"
            + markdown_table(["plane", "old MB/s", "new MB/s", "speed-up"], kernel)
            + f"\n\n`llmcodec.load_file(path, threads=1)` of the files encoded to .llmc, CPU ms, median of "
            f"{args.load_rounds} alternating old / new processes (each the median of 5 loads after a warm-up):\n\n"
            + markdown_table(["file", "before ms", "after ms", "speed-up"], load))
    write_section("RANS0_PAIRS decode kernel (issue 17)", "python bench/pairs_decode.py", body)


if __name__ == "__main__":
    main()
