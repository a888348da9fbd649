"""llmcodec: lossless compression of neural-network weights (spec/FORMAT.md)."""

from .api import load_file, save_file
from .errors import (
    ChecksumError,
    FormatError,
    InvalidArgumentError,
    LimitExceededError,
    LlmcodecError,
    TensorNotFoundError,
    TruncatedError,
    UnsupportedFeatureError,
    UnsupportedVersionError,
)
from .format import Limits

__version__ = "0.1.0"

__all__ = [
    "ChecksumError", "FormatError", "InvalidArgumentError", "LimitExceededError", "Limits",
    "LlmcodecError", "TensorNotFoundError", "TruncatedError", "UnsupportedFeatureError",
    "UnsupportedVersionError", "load_file", "save_file",
]
