"""Every error llmcodec raises about bad data or bad arguments derives from `LlmcodecError`."""


class LlmcodecError(Exception):
    """Base of every llmcodec error about bad data or bad arguments."""


class FormatError(LlmcodecError):
    """The file breaks a rule of the format (spec/FORMAT.md)."""


class TruncatedError(FormatError):
    """The file ends before a structure it declares."""


class UnsupportedVersionError(FormatError):
    """The file's major version is not one this reader knows."""


class UnsupportedFeatureError(FormatError):
    """The file uses an id (dtype, layout, method, kind) this reader does not know."""


class ChecksumError(LlmcodecError):
    """Stored and computed checksums differ: the file is corrupted."""


class LimitExceededError(LlmcodecError):
    """A size or count in the file (or asked for) is over a limit."""


class InvalidArgumentError(LlmcodecError, ValueError):
    """A caller passed an argument llmcodec cannot use."""


class TensorNotFoundError(LlmcodecError, KeyError):
    """No tensor of that name in the file."""

    def __str__(self) -> str:  # KeyError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class FileChangedError(LlmcodecError):
    """The file was truncated, rewritten, replaced or removed while it was open."""


class InvalidIndexError(InvalidArgumentError, IndexError):
    """An index out of a tensor's bounds, or one `get_slice` does not take."""


class BaseError(LlmcodecError):
    """A file stored as a delta against a base model (spec section 11) was read without its base, or
    with a base that is not the one it was stored against; the message names what the file needs."""
