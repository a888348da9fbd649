"""Delta files as llmcodec writes them (issue 16): `llmcodec.save_file(ft, base=base)` against the
real fine-tune pairs of bench/delta.py, next to standalone llmcodec, ZipNN standalone and zstd -19 on
the XOR byte planes (the BitX approach), with single-thread load times.

    python bench/delta_codec.py

Pairs: all-MiniLM-L6-v2 fine-tuned (bf16 and fp32), its LoRA-merged variant, and two checkpoints of
one training run (bench/delta.py trains them once and caches them). Sizes are fractions of the raw
tensor bytes. Load: `llmcodec.load_file` with threads=1, CPU time, median of alternating rounds
(standalone, delta, standalone, ...), files in page cache; the delta load includes reading the base
tensors from a safetensors file in page cache and checking their Base_Checksums.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import delta as pairs_bench  # noqa: E402  (bench/delta.py: the pairs and the zstd XOR estimate)
from common import markdown_table, write_section  # noqa: E402

ROUNDS = 5


def cpu(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(label: str, base: dict, ft: dict, work: Path) -> list:
    import llmcodec
    from safetensors.numpy import save_file

    raw = sum(v.nbytes for v in ft.values())
    base_path, alone, against = work / "base.safetensors", work / "alone.llmc", work / "delta.llmc"
    save_file(base, str(base_path))
    encode_alone = cpu(lambda: llmcodec.save_file(ft, alone, threads=1))
    encode_delta = cpu(lambda: llmcodec.save_file(ft, against, threads=1, base=base_path))
    got = llmcodec.load_file(against, threads=1, base=base_path)
    assert all(got[k].tobytes() == ft[k].tobytes() for k in ft), label  # bit-exact
    times = {"alone": [], "delta": []}
    for _ in range(ROUNDS):
        times["alone"].append(cpu(lambda: llmcodec.load_file(alone, threads=1)))
        times["delta"].append(cpu(lambda: llmcodec.load_file(against, threads=1, base=base_path)))
    load_alone, load_delta = (statistics.median(times[k]) for k in ("alone", "delta"))
    dtype = "bfloat16" if any(v.dtype.name == "bfloat16" for v in ft.values()) else "float32"
    xor = np.concatenate([(pairs_bench.words(ft[k]) ^ pairs_bench.words(base[k])).reshape(-1)
                          for k in ft if k in base and base[k].shape == ft[k].shape and base[k].dtype == ft[k].dtype])
    zstd_xor = pairs_bench.zstd_planes(xor, 1 if dtype == "bfloat16" else pairs_bench.ZSTD_EVERY)
    zipnn = pairs_bench.zipnn_bytes(ft, dtype)
    size = {"alone": alone.stat().st_size, "delta": against.stat().st_size}
    coded = {}
    for key, path in (("alone", alone), ("delta", against)):
        with llmcodec.open(path) as f:  # header only: each tensor's coded bytes
            coded[key] = {name: f.entry(name).coded_bytes for name in f.keys()}
    larger = sum(coded["delta"][k] > coded["alone"][k] for k in coded["alone"])
    return [label, f"{size['delta'] / raw:.4f}", f"{size['alone'] / raw:.4f}", f"{zipnn / raw:.4f}",
            f"{zstd_xor / raw:.4f}", f"{size['delta'] / zstd_xor:.3f}",
            f"{raw / encode_alone / 1e6:.0f} / {raw / encode_delta / 1e6:.0f}",
            f"{raw / load_alone / 1e6:.0f} / {raw / load_delta / 1e6:.0f}", f"{load_delta / load_alone:.2f}x",
            f"{larger} of {len(coded['alone'])}"]


def main() -> None:
    import os

    from safetensors.numpy import load_file

    pairs_bench.ensure_packages()
    base = load_file(str(pairs_bench.minilm_path()))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmcodec-bench"
    states, _ = pairs_bench.trained_states(base, cache)
    steps, mid = pairs_bench.STEPS, pairs_bench.CHECKPOINT
    ft, middle, lora = states[f"step{steps}"], states[f"step{mid}"], states["lora"]
    bf16 = pairs_bench.to_bf16
    pairs = [("fine-tune fp32", base, ft), ("fine-tune bf16", bf16(base), bf16(ft)),
             ("LoRA merged bf16", bf16(base), bf16(lora)),
             (f"checkpoints {mid} -> {steps} fp32", middle, ft),
             (f"checkpoints {mid} -> {steps} bf16", bf16(middle), bf16(ft))]
    rows = []
    ram = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=ram) as work:
        for label, b, f in pairs:
            rows.append(measure(label, b, f, Path(work)))
            print(rows[-1], flush=True)
    header = ("pair", "llmcodec delta", "llmcodec alone", "ZipNN alone", "zstd -19 XOR planes",
              "delta / zstd XOR", "encode MB/s alone / delta", "load MB/s alone / delta", "load time delta / alone",
              "tensors larger as delta")
    body = ("Sizes: fractions of the raw tensor bytes. Load: `llmcodec.load_file`, one thread, CPU "
            f"time, median of {ROUNDS} alternating rounds, files in page cache (the delta load reads the base "
            f"tensors from a safetensors file and checks their checksums). zstd on fp32 XOR planes is estimated "
            f"from every {pairs_bench.ZSTD_EVERY}th 128 KiB block.\n\n" + markdown_table(header, rows))
    write_section("Delta files as written by llmcodec (issue 16)", "python bench/delta_codec.py", body)
    print(body)


if __name__ == "__main__":
    main()
