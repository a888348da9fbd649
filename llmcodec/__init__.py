"""llmcodec: lossless compression of neural-network weights (spec/FORMAT.md).

`import llmcodec` loads only the error classes; numpy and the numba kernels are imported on first
use of a function below, so the command line and `import llmcodec` start fast. The names below are
the public surface; the modules (`llmcodec.codec`, `llmcodec.container`, ...) are internals, and
`llmcodec.torch`, `llmcodec.hf` and `llmcodec.dcp` are imported by name.
"""

import importlib

from .errors import (
    BaseError,
    ChecksumError,
    FileChangedError,
    FormatError,
    InvalidArgumentError,
    InvalidIndexError,
    LimitExceededError,
    LlmcodecError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)

__version__ = "0.1.0"

_LAZY = {"load_file": "api", "save_file": "api", "decode_file": "files", "encode_file": "files",
         "verify_file": "files", "Limits": "format", "LlmcodecFile": "loader", "ShardedFile": "loader",
         "open": "loader"}

__all__ = [
    "BaseError", "ChecksumError", "FileChangedError", "FormatError", "InvalidArgumentError", "InvalidIndexError",
    "LimitExceededError", "Limits", "LlmcodecFile", "open", "LlmcodecError", "ShardedFile",
    "TensorNotFoundError", "TruncatedError", "UnsupportedFeatureError", "UnsupportedVersionError", "decode_file",
    "encode_file", "load_file", "save_file", "verify_file",
]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
