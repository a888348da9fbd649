"""The fuzz targets (tests/fuzz/) each run for a bounded time and find nothing.

$LLMCODEC_FUZZ_SECONDS sets how long `fuzz_open` runs (default 30), $LLMCODEC_FUZZ_SECONDS_EACH how
long each of the others does (default 5); each target also spends ~5-15 s starting (instrumented
imports, its seeds). One target alone: `pytest "tests/test_fuzz.py::test_fuzzing_finds_nothing[fuzz_open]"`.
Run the targets by hand, or `tests/fuzz/run_all.sh`, for longer.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent / "fuzz"
TARGETS = ["fuzz_open", "fuzz_encode", "fuzz_torch_load", "fuzz_slice", "fuzz_info"]


def seconds(target: str) -> int:
    if target == "fuzz_open":
        return int(os.environ.get("LLMCODEC_FUZZ_SECONDS", "30"))
    return int(os.environ.get("LLMCODEC_FUZZ_SECONDS_EACH", "5"))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris (Linux x86-64)")
@pytest.mark.parametrize("target", TARGETS)
def test_fuzzing_finds_nothing(target, tmp_path):
    if target == "fuzz_torch_load":
        pytest.importorskip("torch")
    if target in ("fuzz_encode", "fuzz_torch_load", "fuzz_slice", "fuzz_info"):
        pytest.importorskip("gguf")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(FUZZ.parent.parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("LLMCODEC_FUZZ_FINDINGS", None)  # a finding must end the run here, not be recorded
    proc = subprocess.run([sys.executable, str(FUZZ / f"{target}.py"), str(tmp_path / "corpus"),
                           f"-max_total_time={seconds(target)}", f"-artifact_prefix={tmp_path}/",
                           "-print_final_stats=1"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=seconds(target) + 300)
    output = proc.stdout + proc.stderr  # atheris prints a Python traceback to stdout
    tail = "\n".join(line for line in output.splitlines() if not line.startswith("INFO: Instrumenting"))[-6000:]
    assert proc.returncode == 0, tail
    found = [p.name for p in tmp_path.iterdir() if p.name.split("-")[0] in ("crash", "timeout", "oom", "leak")]
    assert "Done" in proc.stderr and not found, tail
