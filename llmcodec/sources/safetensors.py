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
from json.decoder import scanstring

import numpy as np

from .. import dtypes, format
from ..errors import FormatError, InvalidArgumentError, LimitExceededError, UnsupportedFeatureError

MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header (MAX_HEADER_SIZE)
_STRUCTURE = np.zeros(256, bool)  # the bytes of JSON's structure that _check_structure looks at
_STRUCTURE[list(b"[]{}:")] = True
_BLOCK = 1 << 24  # bytes of the header looked at in one numpy pass
_DEPTH = np.zeros(256, np.int8)  # how each byte of the structure changes the nesting depth
_DEPTH[[ord("{"), ord("[")]], _DEPTH[[ord("}"), ord("]")]] = 1, -1
_WS = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True, slots=True)
class StTensor:
    name: str
    dtype: dtypes.Dtype | None  # None: a dtype llmcodec does not code; its bytes are kept as a blob
    shape: tuple[int, ...]
    begin: int  # absolute offsets in the file
    end: int


@dataclass(frozen=True)
class StLayout:
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
    members = _check_structure(raw, name)
    data_start, metadata, tensors = 8 + n, {}, []
    try:
        text = raw.decode("utf-8")
        del raw
        for key, value in _members(text, members, name):
            if key == "__metadata__":
                metadata = _metadata(value, name)
            else:
                tensors.append(_tensor(key, value, data_start, file_size, name))
    except ValueError as exc:  # not UTF-8, not JSON, an integer of more than 20 digits, NaN
        raise FormatError(f"{name}: not a safetensors file: its header is not JSON that safetensors reads "
                          f"({exc})") from None
    tensors.sort(key=lambda t: (t.begin, t.end))
    for prev, cur in zip(tensors, tensors[1:]):
        if cur.begin < prev.end:
            raise FormatError(f"{name}: tensors {prev.name!r} and {cur.name!r} overlap")
    return StLayout(metadata, tensors)


def _check_structure(raw: bytes, name: str) -> np.ndarray:
    """Check that the header's brackets, strings aside, nest as safetensors' schema allows, and
    that it has no more entries than llmcodec reads (format.Limits); return the member count of
    each object inside the header's object, in order.

    Safetensors' schema is one object of objects (tensor entries, __metadata__) whose lists hold
    no list or object: so no nesting can exhaust the stack, and no tree of containers (each a
    Python object some 30 times larger than its 2 bytes of JSON) is ever built. Checked in C-speed
    passes over the bytes (numpy, bytes methods) before any JSON is parsed, so that parsing takes
    memory proportional to the header, within a bound."""
    structure = _structure(raw)
    brackets = structure.translate(None, b":").replace(b"[]", b"")
    flat = brackets in (b"", b"{}")  # not an object of objects: json says what it is
    if not flat and not (brackets[:1] == b"{" and brackets[-1:] == b"}" and not brackets[1:-1].replace(b"{}", b"")):
        raise FormatError(f"{name}: not a safetensors file: its header is not JSON of one object of tensor "
                          f"entries (its brackets nest deeper, or do not close)")
    codes = np.frombuffer(structure, np.uint8)
    depth = np.cumsum(_DEPTH[codes], dtype=np.int8)  # after each byte; at most 3, checked above
    colons = codes == ord(":")
    entries = int(np.count_nonzero(colons & (depth == 1)))
    objects = np.cumsum((codes == ord("{")) & (depth == 2), dtype=np.int32)  # 1 + index of the object a byte is in
    members = np.bincount(objects[colons & (depth == 2)] - 1, minlength=int(objects[-1]) if len(objects) else 0)
    limits = format.Limits()
    if entries > limits.tensor_count + 1:
        raise LimitExceededError(f"{name}: {entries} header entries: llmcodec reads at most {limits.tensor_count} "
                                 f"tensors (spec section 9)")
    if len(members) and members.max() > limits.metadata_count:
        raise LimitExceededError(f"{name}: an entry of {members.max()} members: llmcodec reads at most "
                                 f"{limits.metadata_count} metadata entries (spec section 9)")
    return members


def _structure(raw: bytes) -> bytes:
    """The bytes `{}[]:` of `raw` that lie outside JSON strings, in order, found block by block
    (the passes take a few bytes of memory per byte of a block, not of the header)."""
    if b"\\" in raw:  # drop escaped backslashes, then escaped quotes: every '"' left starts or ends a string
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    out, inside = [], False
    for start in range(0, len(raw), _BLOCK):
        codes = np.frombuffer(raw, np.uint8, min(_BLOCK, len(raw) - start), start)
        within = np.bitwise_xor.accumulate(codes == ord('"')) ^ inside  # True from an opening quote to its close
        out.append(codes[_STRUCTURE[codes] & ~within].tobytes())
        inside = bool(within[-1])
    return b"".join(out)


def _members(text: str, members: np.ndarray, name: str):
    """The members of the header's object, (key, value) each, parsed one at a time, so that only
    one entry exists as Python objects at a time (json.loads would build them all first); objects
    are built in C, and one that has fewer keys than `members` says had a key twice. Raises
    ValueError for what is not JSON."""
    decoder = json.JSONDecoder(parse_int=_int, parse_constant=_int)
    ws = _WS.match
    pos = ws(text).end()
    if text[pos:pos + 1] != "{":
        decoder.decode(text)  # raises if it is not JSON
        raise FormatError(f"{name}: not a safetensors file: its header is not a JSON object")
    pos = ws(text, pos + 1).end()
    seen: set[str] = set()
    objects = 0
    while text[pos:pos + 1] != "}":
        if seen:
            if text[pos:pos + 1] != ",":
                raise ValueError(f"expecting ',' or '}}' at char {pos}")
            pos = ws(text, pos + 1).end()
        if text[pos:pos + 1] != '"':
            raise ValueError(f"expecting a key at char {pos}")
        key, pos = scanstring(text, pos + 1)
        pos = ws(text, pos).end()
        if text[pos:pos + 1] != ":":
            raise ValueError(f"expecting ':' at char {pos}")
        value, pos = decoder.raw_decode(text, ws(text, pos + 1).end())
        if key in seen:
            raise FormatError(f"{name}: key {key!r} appears twice in the header")
        if isinstance(value, dict):
            if len(value) != members[objects]:
                raise FormatError(f"{name}: the entry of {key!r} has a key twice")
            objects += 1
        seen.add(key)
        yield key, value
        pos = ws(text, pos).end()
    if ws(text, pos + 1).end() != len(text):
        raise ValueError(f"extra data after the header's object, at char {pos + 1}")


def _metadata(value, name: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise FormatError(f"{name}: __metadata__ must map strings to strings")
    for key, text in value.items():
        _check_text(key, "metadata key", name)
        _check_text(text, f"metadata value of {key!r}", name)
    return value


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


def _tensor(key: str, info, data_start: int, file_size: int, name: str) -> StTensor:
    where = f"{name}: tensor {key!r}"
    if not isinstance(info, dict):
        raise FormatError(f"{where}: entry is not a JSON object")
    dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype_name, str):
        raise FormatError(f"{where}: dtype missing")
    _check_text(key, "tensor name", name)
    if isinstance(shape, list) and len(shape) > format.Limits().ndim:  # refused before it is kept
        raise LimitExceededError(f"{where}: Ndim {len(shape)} is over the limit {format.Limits().ndim}")
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
