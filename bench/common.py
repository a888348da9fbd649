"""Shared helpers of the benchmarks: timing, machine description, RESULTS.md sections."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def median_time(fn, repeat: int = 5) -> float:
    """Median wall time of `fn()` over `repeat` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} vCPUs (a VM shared with other work: noisy), Python {platform.python_version()}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, command: str, body: str) -> None:
    """Replace (or append) the section `## name` of bench/RESULTS.md."""
    stamp = datetime.date.today().isoformat()
    section = f"## {name}\n\nCommand: `{command}`  \nMachine: {machine()}  \nDate: {stamp}\n\n{body}\n"
    intro = "# Benchmark results\n\nEach section is rewritten by the command it names.\n"
    text = RESULTS.read_text() if RESULTS.exists() else intro
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")
