"""The safetensors file layout: parse it to encode a file, and write it for containers of arrays.

A safetensors file is an 8-byte little-endian header size `N`, a JSON header of `N` bytes, then the
tensors' bytes at `data_offsets` relative to byte `8 + N`. Everything here is checked against the
file's size before it is used; the bytes between and around tensors are kept as blobs, so the file
can be rebuilt byte for byte.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass

from . import dtypes
from .errors import FormatError, InvalidArgumentError, LimitExceededError, UnsupportedFeatureError

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header (MAX_HEADER_SIZE)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, escapes included
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))


@dataclass(frozen=True)
class StTensor:
    name: str
    dtype: dtypes.Dtype | None  # None: a dtype llmcodec does not code; its bytes are kept as a blob
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


@dataclass(frozen=True)
class StLayout:
    data_start: int
    metadata: dict[str, str]
    tensors: list[StTensor]  # by position in the file


def read_layout(f, file_size: int, name: str) -> StLayout:
    """Parse and check the header of the safetensors file open as `f` (binary, seekable)."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        raise FormatError(f"{name}: not a safetensors file: {file_size} bytes, shorter than its 8-byte header size")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER or 8 + n > file_size:
        raise FormatError(f"{name}: not a safetensors file: header size {n} does not fit in {file_size} bytes")
    raw = f.read(n)
    _check_nesting(raw, name)
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys, parse_int=_int, parse_constant=_int)
    except KeyError as exc:
        raise FormatError(f"{name}: key {exc.args[0]!r} appears twice in the header") from None
    except ValueError as exc:  # not UTF-8, not JSON, an integer of more than 20 digits, NaN
        raise FormatError(f"{name}: not a safetensors file: its header is not JSON that safetensors reads "
                          f"({exc})") from None
    del raw
    if not isinstance(header, dict):
        raise FormatError(f"{name}: not a safetensors file: its header is not a JSON object")
    data_start = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise FormatError(f"{name}: __metadata__ must map strings to strings")
    for key, value in metadata.items():
        _check_text(key, "metadata key", name)
        _check_text(value, f"metadata value of {key!r}", name)
    tensors = [_tensor(key, info, data_start, file_size, name) for key, info in header.items()]
    tensors.sort(key=lambda t: (t.begin, t.end))
    for prev, cur in zip(tensors, tensors[1:]):
        if cur.begin < prev.end:
            raise FormatError(f"{name}: tensors {prev.name!r} and {cur.name!r} overlap")
    return StLayout(data_start, metadata, tensors)


def _check_nesting(raw: bytes, name: str) -> None:
    """The header's brackets, strings aside, nest as safetensors' schema allows: one object of
    objects (tensor entries, __metadata__) and lists, whose lists hold no list or object.

    Checked before the JSON is parsed, in C-speed passes over the bytes: no nesting can exhaust
    the stack, and no tree of containers (each a Python object some 30 times larger than its 2
    bytes of JSON) is ever built."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS).replace(b"[]", b"")
    flat = brackets in (b"", b"{}")  # not an object of objects: json.loads says what it is
    if not flat and not (brackets[:1] == b"{" and brackets[-1:] == b"}" and not brackets[1:-1].replace(b"{}", b"")):
        raise FormatError(f"{name}: not a safetensors file: its header is not JSON of one object of tensor "
                          f"entries (its brackets nest deeper, or do not close)")


def _int(text: str) -> int:
    """A JSON integer of safetensors' header: at most 20 digits (a u64), so that no huge number is
    converted (quadratic in its digits) or kept."""
    if len(text) > 20 or not text.lstrip("-").isdigit():
        raise ValueError(f"number {text[:30]} is not an integer of at most 20 digits")
    return int(text)


def _check_text(text: str, what: str, name: str) -> None:
    """JSON can escape a lone surrogate (\\ud800), which UTF-8, and so safetensors, cannot hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(f"{name}: {what} {text!r} holds a lone surrogate, which is not UTF-8") from None


def _unique_keys(pairs: list) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise KeyError(key)
        out[key] = value
    return out


def _tensor(key: str, info, data_start: int, file_size: int, name: str) -> StTensor:
    where = f"{name}: tensor {key!r}"
    if not isinstance(info, dict):
        raise FormatError(f"{where}: entry is not a JSON object")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_name, str):
        raise FormatError(f"{where}: dtype missing")
    _check_text(key, "tensor name", name)
    if not (isinstance(shape, list) and all(type(d) is int and 0 <= d < 1 << 64 for d in shape)):
        raise FormatError(f"{where}: shape must be a list of non-negative integers below 2^64, not {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
            and 0 <= offsets[0] <= offsets[1] < 1 << 64):
        raise FormatError(f"{where}: data_offsets must be [begin, end] with 0 <= begin <= end, not {offsets!r}")
    begin, end = data_start + offsets[0], data_start + offsets[1]
    if end > file_size:
        raise FormatError(f"{where}: data_offsets {offsets} run past the end of the file")
    try:
        dtype = dtypes.from_name(dtype_name)
    except UnsupportedFeatureError:
        dtype = None
    if dtype is not None:
        numel = 0 if 0 in shape else 1
        for d in shape:  # stops once past any file size: a shape may have millions of dimensions
            numel *= d
            if numel >= 1 << 64:
                break
        if numel * dtype.itemsize != end - begin:
            raise FormatError(f"{where}: {end - begin} bytes for shape {shape} of {dtype_name} "
                              f"({numel * dtype.itemsize} expected)")
    return StTensor(key, dtype, tuple(shape), begin, end)


def build_header(tensors: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    """The 8-byte size and JSON header of a safetensors file holding `(name, dtype, shape, nbytes)`
    back to back in that order; padded with spaces to a multiple of 8 bytes, as safetensors does.

    Refuses what safetensors would refuse to read: a tensor named `__metadata__`, a dtype it does
    not have (the GGUF block types), a header over MAX_HEADER bytes."""
    header: dict = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for name, dtype_name, shape, nbytes in tensors:
        if name == "__metadata__":
            raise InvalidArgumentError("a tensor cannot be named '__metadata__' (safetensors reserves the name)")
        if dtype_name.startswith("GGML_"):
            raise InvalidArgumentError(f"tensor {name!r}: safetensors has no dtype {dtype_name}")
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    if len(raw) > MAX_HEADER:
        raise LimitExceededError(f"the safetensors header of these tensors and metadata would be {len(raw)} bytes; "
                                 f"safetensors reads headers of {MAX_HEADER} bytes at most")
    return struct.pack("<Q", len(raw)) + raw
