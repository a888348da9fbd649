"""Coverage-guided fuzz target (atheris): `llmcodec info --limits` on files from strangers.

    python tests/fuzz/fuzz_info.py --minutes 10 [CORPUS_DIR]   # see harness.py for the rest

The input is a container (seeds: the golden vectors, valid and broken, and `fuzz_open`'s feature
seeds: shared chunks, quantized, factorized and GGUF block tensors). As it is and with its
checksums recomputed (`fuzz_open.reseal`), it goes through what `info --limits` runs:
`stats.file_stats(path, limits=True)`, then the CLI's table and its JSON. The property: that works
or raises an `LlmcodecError`, and the input takes at most `BOUND` seconds (2: `info` is meant to be
run on files from anywhere; the kernels are compiled before the clock starts).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

if __name__ == "__main__":
    # Instrumented, stats.py's statistics (numpy on every plane) leak under libFuzzer: RSS grew by
    # about 100 KB per input to the 2 GB limit within minutes; uninstrumented, it stays flat.
    harness.instrument(skip=("llmcodec.stats",))

from fuzz_open import SEEDS, feature_seeds, reseal  # noqa: E402

from llmcodec import LlmcodecError, cli, stats  # noqa: E402

SCRATCH = harness.scratch_dir()
BOUND = 2.0  # seconds per input


def info(path: Path) -> None:
    """What `llmcodec info --limits` and `info --limits --json` do with one file."""
    report = stats.file_stats(path, threads=1, limits=True)
    with contextlib.redirect_stdout(io.StringIO()):
        cli._print_limits(report)
        if report.get("transforms"):
            cli._print_transforms(report["transforms"])
    report["tensors"] = [cli._without_none(dict(dataclasses.asdict(t), ratio=t.ratio)) for t in report["tensors"]]
    json.dumps(report)


def check(data: bytes) -> None:
    path = SCRATCH / "x.llmc"
    try:
        for variant in (data, reseal(data)):
            path.write_bytes(variant)
            try:
                info(path)
            except LlmcodecError:
                pass
    finally:
        harness.remove_all(SCRATCH)


def seeds() -> dict[str, bytes]:
    """The golden vectors and fuzz_open's feature seeds, and a constant tensor of 4 MiB in one
    chunk (119 bytes: one number to change for a bigger one)."""
    import numpy as np

    import llmcodec

    out = {f"{p.parent.name}-{p.name}": p.read_bytes() for p in SEEDS}
    out.update((f"feature-{name}", data) for name, data in feature_seeds().items())
    llmcodec.save_file({"z": np.zeros(1 << 20, np.float32)}, SCRATCH / "zeros.llmc", chunk_size=64 << 20)
    out["constant-4MiB"] = (SCRATCH / "zeros.llmc").read_bytes()
    return out


if __name__ == "__main__":
    harness.fuzz_main(sys.argv, check, seeds, target="fuzz_info", slow=BOUND)
