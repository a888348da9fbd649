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
from .files import decode_file, encode_file, verify_file
from .format import Limits
from .loader import LlmcodecFile, open

__version__ = "0.1.0"

__all__ = [
    "ChecksumError", "FormatError", "InvalidArgumentError", "LimitExceededError", "Limits", "LlmcodecFile", "open",
    "LlmcodecError", "TensorNotFoundError", "TruncatedError", "UnsupportedFeatureError",
    "UnsupportedVersionError", "decode_file", "encode_file", "load_file", "save_file", "verify_file",
]
