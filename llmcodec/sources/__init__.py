"""Source formats: the checkpoint files llmcodec encodes, each registered once with its Source_Kind
(spec 4.2), file suffix, how it is recognised, and how its layout is read into typed records.

One module per format beside this one (`safetensors.py`, `gguf.py`) reads and checks a file's
layout. Adding a source format means adding its reader module here, an adapter to `SourceLayout`
and one `SourceFormat` below; `files` (encode/decode), `folders` (which files of a folder are
checkpoints) and default output names all ask this registry. The readers are imported when a file
is read, not when this package is.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import format


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a source file: its bytes are [begin, end) of the file, row-major."""

    name: str
    dtype: object | None  # a dtypes.Dtype; None: a dtype llmcodec does not code (kept verbatim)
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class SourceLayout:
    kind: int  # format.SOURCE_*
    metadata: dict[str, str]  # the user metadata the container keeps (safetensors' __metadata__)
    tensors: list[TensorRecord]  # by position in the file


@dataclass(frozen=True)
class SourceFormat:
    kind: int  # format.SOURCE_*: what a container records, and decode rebuilds
    name: str
    suffix: str  # a decoded file's suffix, and what marks a checkpoint file in a folder
    magic: bytes | None  # the file's first bytes, or None: recognised when no other format's magic matches
    layout: object  # (f, size, name) -> SourceLayout


def _safetensors_layout(f, size: int, name: str) -> SourceLayout:
    from . import safetensors

    layout = safetensors.read_layout(f, size, name)
    return SourceLayout(format.SOURCE_SAFETENSORS, layout.metadata,
                        [TensorRecord(t.name, t.dtype, tuple(t.shape), t.begin, t.end) for t in layout.tensors])


# ggml's one-value types, as llmcodec dtypes; every other ggml type is a block dtype (spec 4.4)
_GGML_SCALARS = {"F32": "F32", "F16": "F16", "BF16": "BF16", "I8": "I8", "I16": "I16", "I32": "I32",
                 "I64": "I64", "F64": "F64"}


def _gguf_layout(f, size: int, name: str) -> SourceLayout:
    from .. import dtypes
    from . import gguf

    layout = gguf.read_layout(f, size, name)
    tensors = []
    for t in layout.tensors:
        scalar = _GGML_SCALARS.get(t.type_name)
        dtype = dtypes.BY_NAME[scalar] if scalar else dtypes.BY_ID[dtypes.GGML_BASE + t.ggml_type]
        tensors.append(TensorRecord(t.name, dtype, tuple(reversed(t.dims)), t.begin, t.end))  # ne[0]: the last axis
    return SourceLayout(format.SOURCE_GGUF, {}, tensors)


SAFETENSORS = SourceFormat(format.SOURCE_SAFETENSORS, "safetensors", ".safetensors", None, _safetensors_layout)
GGUF = SourceFormat(format.SOURCE_GGUF, "GGUF", ".gguf", b"GGUF", _gguf_layout)
FORMATS = (GGUF, SAFETENSORS)  # recognition order: formats with a magic first
CHECKPOINT_SUFFIXES = tuple(f.suffix for f in FORMATS)
ARRAYS_SUFFIX = ".safetensors"  # `save_file`'s containers decode to a safetensors file


def decoded_suffix(kind: int) -> str:
    """The suffix of the file a container of Source_Kind `kind` decodes to."""
    return next((f.suffix for f in FORMATS if f.kind == kind), ARRAYS_SUFFIX)


def read_layout(f, size: int, name: str) -> SourceLayout:
    """The layout of the checkpoint file `f` (`size` bytes; `name` for errors), whichever format."""
    f.seek(0)
    head = f.read(max(len(s.magic) for s in FORMATS if s.magic))
    chosen = next((s for s in FORMATS if s.magic and head.startswith(s.magic)), None)
    chosen = chosen or next(s for s in FORMATS if s.magic is None)
    return chosen.layout(f, size, name)
