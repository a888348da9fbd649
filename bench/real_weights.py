"""More real checkpoints for the speed benchmarks: a speech model and a vision model, from PyPI
packages that ship their weights, turned into safetensors files once and cached.

    resemblyzer==0.1.4   speaker encoder (3-layer LSTM, speech), `pretrained.pt`: model_state, fp32
    nudenet==3.4.2       YOLOv8n detector (vision), `320n.onnx`: its float initializers, fp32

Both packages are installed with --no-deps into bench/.cache/site (their own dependencies only
run the models; nothing is imported from them: the weight files are read where pip put them).
Reading the .pt needs torch, the .onnx the `onnx` package (installed into this interpreter if
missing). Each fp32 file also gets its bf16 and fp16 casts (round to nearest even), as
bench/weights.py does for MiniLM: none of the packages in the lists ships a bf16- or fp16-native
checkpoint in a format we read.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

CACHE = Path(__file__).with_name(".cache")
SITE = CACHE / "site"
SHIPPED = {  # pip requirement -> the weight file inside the installed package
    "resemblyzer==0.1.4": "resemblyzer/pretrained.pt",
    "nudenet==3.4.2": "nudenet/320n.onnx",
}
CASTS = (("bf16", ml_dtypes.bfloat16), ("fp16", np.float16))


def shipped_file(spec: str) -> Path:
    """The weight file of package `spec`, pip-installed into bench/.cache/site if missing."""
    path = SITE / SHIPPED[spec]
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(SITE), spec],
                       check=True)
    return path


def speech_tensors() -> dict[str, np.ndarray]:
    import torch

    state = torch.load(shipped_file("resemblyzer==0.1.4"), map_location="cpu", weights_only=True)["model_state"]
    return {name: t.numpy() for name, t in state.items()}


def vision_tensors() -> dict[str, np.ndarray]:
    if importlib.util.find_spec("onnx") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "onnx"], check=True)
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(shipped_file("nudenet==3.4.2")))
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return {name: np.ascontiguousarray(a) for name, a in arrays.items() if a.dtype == np.float32}


SOURCES = {"speech (Resemblyzer LSTM)": speech_tensors, "vision (YOLOv8n)": vision_tensors}


def real_files() -> dict[str, tuple[Path, str]]:
    """label -> (safetensors file, dtype label) for each source in fp32 and its casts."""
    from safetensors.numpy import save_file

    folder = CACHE / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for source, load in SOURCES.items():
        stem = source.split()[0]
        paths = {dtype: folder / f"{stem}-{dtype}.safetensors" for dtype in ("fp32", *dict(CASTS))}
        if not all(p.exists() for p in paths.values()):
            tensors = load()
            save_file(tensors, str(paths["fp32"]))
            for dtype, cast in CASTS:
                save_file({k: v.astype(cast) for k, v in tensors.items()}, str(paths[dtype]))
        out.update({f"{source} {dtype}": (path, dtype) for dtype, path in paths.items()})
    return out
