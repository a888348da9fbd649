"""Start-up time of the command line: each command on a tiny file, in a fresh process.

    python bench/startup.py

Runs the installed `llmcodec` once per command to fill numba's on-disk cache, then times every
command 7 times in rounds (so drift on the machine spreads over all of them); one more run of
`verify` starts from an empty numba cache (NUMBA_CACHE_DIR set to a new folder).
"""

from __future__ import annotations

import os
import resource
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


def run(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run; CPU time is the steadier when the machine is busy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


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
            run(args, tmp)
        times = {name: [] for name in commands}
        for _ in range(REPEAT):
            for name, args in commands.items():
                times[name].append(run(args, tmp))
        with tempfile.TemporaryDirectory() as cache:
            cold = run(commands["llmcodec verify tiny.llmc"], tmp, env={**os.environ, "NUMBA_CACHE_DIR": cache})
    rows = []
    for name, runs in times.items():
        walls, cpus = zip(*runs)
        rows.append([name, ms(statistics.median(walls)), ms(statistics.median(cpus)), ms(min(walls))])
    rows.append(["llmcodec verify tiny.llmc, empty numba cache (1 run)", ms(cold[0]), ms(cold[1]), ""])
    table = markdown_table(["command", "wall ms (median)", "CPU ms (median)", "wall ms (min)"], rows)
    body = (f"Fresh processes running the installed `llmcodec` on 1000-element fp32 files, {REPEAT} runs each; "
            f"numba's on-disk cache warm except in the last row.\n\n{table}")
    write_section("CLI start-up (warm numba cache)", "python bench/startup.py", body)
    print(table)


if __name__ == "__main__":
    main()
