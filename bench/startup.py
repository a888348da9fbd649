"""Start-up time of the command line: each command on a tiny file, in a fresh process.

    python bench/startup.py

Runs the installed `llmcodec` once per command to fill numba's on-disk cache, then times every
command 7 times in rounds (so drift on the machine spreads over all of them); one more run of
`verify` starts from an empty numba cache (NUMBA_CACHE_DIR set to a new folder).
"""

from __future__ import annotations

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

REPEAT = 7
SCRIPT = Path(sys.executable).with_name("llmcodec")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llmcodec.cli"]


def wall(args: list[str], cwd: Path, env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - t


def main() -> None:
    import llmcodec
    from safetensors.numpy import save_file as st_save

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llmcodec.save_file({"w": np.zeros(1000, np.float32)}, tmp / "tiny.llmc")
        st_save({"w": np.linspace(-1, 1, 1000, dtype=np.float32)}, tmp / "tiny.safetensors")
        commands = {
            "python -c 'import llmcodec'": [sys.executable, "-c", "import llmcodec"],
            "llmcodec verify tiny.llmc": [*CLI, "verify", "tiny.llmc"],
            "llmcodec info tiny.llmc": [*CLI, "info", "tiny.llmc"],
            "llmcodec encode tiny.safetensors": [*CLI, "encode", "-f", "-o", "out.llmc", "tiny.safetensors"],
            "llmcodec decode tiny.llmc": [*CLI, "decode", "-f", "-o", "out.safetensors", "tiny.llmc"],
        }
        for args in commands.values():
            wall(args, tmp)
        times = {name: [] for name in commands}
        for _ in range(REPEAT):
            for name, args in commands.items():
                times[name].append(wall(args, tmp))
        with tempfile.TemporaryDirectory() as cache:
            cold = wall(commands["llmcodec verify tiny.llmc"], tmp, env={**os.environ, "NUMBA_CACHE_DIR": cache})
    rows = [[name, f"{statistics.median(t) * 1e3:.0f}", f"{min(t) * 1e3:.0f}"] for name, t in times.items()]
    rows.append(["llmcodec verify tiny.llmc, empty numba cache (1 run)", f"{cold * 1e3:.0f}", ""])
    table = markdown_table(["command", f"ms (median of {REPEAT})", "ms (min)"], rows)
    body = (f"Wall time of fresh processes running the installed `llmcodec` on 1000-element fp32 files; "
            f"numba's on-disk cache warm except in the last row.\n\n{table}")
    write_section("CLI start-up (warm numba cache)", "python bench/startup.py", body)
    print(table)


if __name__ == "__main__":
    main()
