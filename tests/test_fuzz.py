"""The fuzz target (tests/fuzz/fuzz_open.py) runs for a bounded time and finds nothing.

$LLMCODEC_FUZZ_SECONDS sets how long (default 60); run the target by hand for longer.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

TARGET = Path(__file__).parent / "fuzz" / "fuzz_open.py"


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="needs atheris (Linux x86-64)")
def test_fuzzing_open_finds_nothing(tmp_path):
    seconds = int(os.environ.get("LLMCODEC_FUZZ_SECONDS", "60"))
    proc = subprocess.run([sys.executable, str(TARGET), str(tmp_path / "corpus"), f"-max_total_time={seconds}",
                           f"-artifact_prefix={tmp_path}/", "-print_final_stats=1"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=seconds + 300)
    tail = "\n".join(proc.stderr.splitlines()[-40:])
    assert proc.returncode == 0, tail
    assert "Done" in proc.stderr and not list(tmp_path.glob("crash-*")), tail
