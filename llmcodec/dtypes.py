"""The dtype table (spec section 4.4), the numpy dtypes behind it, and which planes a layout makes.

numpy has no bf16 or fp8: those come from `ml_dtypes`, which takes over a second to import, so a
`Dtype` names its numpy dtype and `Dtype.numpy` imports ml_dtypes when one of them is first needed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import cache

import numpy as np

from . import ggml
from .errors import InvalidArgumentError, UnsupportedFeatureError

# Layout ids (spec section 5).
LAYOUT_BYTES = 0
LAYOUT_FIELDS16 = 1
LAYOUT_FIELDS32 = 2
LAYOUT_BLOCK_FIELDS = 3
LAYOUT_BLOCK_QUANTS = 4  # since 1.4
LAYOUT_ITEMSIZE = {LAYOUT_BYTES: None, LAYOUT_FIELDS16: 2, LAYOUT_FIELDS32: 4, LAYOUT_BLOCK_FIELDS: None,
                   LAYOUT_BLOCK_QUANTS: None}
GGML_BASE = 64  # dtype id of a GGUF block type: GGML_BASE + its ggml type id (spec section 4.4)
MAX_PLANES = 8  # planes of any dtype: the kernels' chunk descriptors have this many columns per plane


@dataclass(frozen=True)
class Dtype:
    id: int
    name: str
    numpy_name: str  # numpy's name of one element's dtype, or an ml_dtypes type's (_ML_DTYPES)
    default_layout: int
    itemsize: int  # bytes of one element: a value, or a block of `block_size` values
    block_size: int = 1
    fields: tuple = ()  # LAYOUT_BLOCK_FIELDS: the block's fields, (offset, length) each, in order
    # LAYOUT_BLOCK_QUANTS (types of ggml.JOINED_QUANTS only): bits per quant, and the planes: the
    # fields that are not quants, then (itemsize, block_size) for the plane of joined quants
    quant_bits: int = 0
    quant_planes: tuple = ()

    @property
    def numpy(self) -> np.dtype:
        """The numpy dtype of one element; uint8 for a block type, whose blocks are read as bytes."""
        return numpy_dtype(self.numpy_name)

    @property
    def is_block(self) -> bool:
        return self.block_size > 1


_ML_DTYPES = {"bfloat16": 2, "float8_e5m2": 1, "float8_e4m3fn": 1}  # name -> itemsize


@cache
def numpy_dtype(name: str) -> np.dtype:
    """numpy's dtype of that name, or the ml_dtypes type's (imported then)."""
    if name in _ML_DTYPES:
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, name))
    return np.dtype(name)


def _scalar(dtype_id: int, name: str, numpy: str, layout: int) -> Dtype:
    itemsize = _ML_DTYPES[numpy] if numpy in _ML_DTYPES else np.dtype(numpy).itemsize
    return Dtype(dtype_id, name, numpy, layout, itemsize)


def _block(ggml_id: int) -> Dtype:
    """A GGUF block type; its 2-byte fields (fp16 scales) are cut into their two bytes."""
    t = ggml.GGML_TYPES[ggml_id]
    fields, side = [], []
    bits, quant_fields = ggml.JOINED_QUANTS.get(t.name, (0, ()))
    for f in ggml.block_fields(t.name):
        cut = [(f.offset, 1), (f.offset + 1, 1)] if f.length == 2 else [(f.offset, f.length)]
        fields += cut
        side += [] if f.name in quant_fields else cut
    quant_planes = (*side, (t.type_size, t.block_size)) if bits else ()
    return Dtype(GGML_BASE + ggml_id, f"GGML_{t.name}", "u1", LAYOUT_BLOCK_FIELDS, t.type_size,
                 t.block_size, tuple(fields), bits, quant_planes)


_TABLE = [
    _scalar(1, "BOOL", "?", LAYOUT_BYTES),
    _scalar(2, "U8", "<u1", LAYOUT_BYTES),
    _scalar(3, "I8", "<i1", LAYOUT_BYTES),
    _scalar(4, "F8_E5M2", "float8_e5m2", LAYOUT_BYTES),
    _scalar(5, "F8_E4M3", "float8_e4m3fn", LAYOUT_BYTES),
    _scalar(6, "I16", "<i2", LAYOUT_BYTES),
    _scalar(7, "U16", "<u2", LAYOUT_BYTES),
    _scalar(8, "F16", "<f2", LAYOUT_BYTES),
    _scalar(9, "BF16", "bfloat16", LAYOUT_FIELDS16),
    _scalar(10, "I32", "<i4", LAYOUT_BYTES),
    _scalar(11, "U32", "<u4", LAYOUT_BYTES),
    _scalar(12, "F32", "<f4", LAYOUT_FIELDS32),
    _scalar(13, "I64", "<i8", LAYOUT_BYTES),
    _scalar(14, "U64", "<u8", LAYOUT_BYTES),
    _scalar(15, "F64", "<f8", LAYOUT_BYTES),
] + [_block(t) for t, info in ggml.GGML_TYPES.items() if info.block_size > 1]
_WIDE = [d.name for d in _TABLE if max(len(d.fields or range(d.itemsize)), len(d.quant_planes)) > MAX_PLANES]
if _WIDE:  # the kernels' descriptor rows (kernels.MAX_PLANES, a copy) hold no more planes
    raise RuntimeError(f"dtypes {_WIDE} have more than MAX_PLANES = {MAX_PLANES} planes")
BY_ID = {d.id: d for d in _TABLE}
BY_NAME = {d.name: d for d in _TABLE}
_BY_NUMPY = {d.numpy: d for d in _TABLE if not d.is_block and d.numpy_name not in _ML_DTYPES}


def from_id(dtype_id: int) -> Dtype:
    try:
        return BY_ID[dtype_id]
    except KeyError:
        raise UnsupportedFeatureError(f"unknown dtype id {dtype_id}") from None


def from_name(name: str) -> Dtype:
    try:
        return BY_NAME[name]
    except KeyError:
        raise UnsupportedFeatureError(f"unsupported dtype {name!r}") from None


def from_numpy(dtype: np.dtype) -> Dtype:
    """The llmcodec dtype of a numpy dtype, either byte order."""
    dtype = np.dtype(dtype)
    key = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    found = _BY_NUMPY.get(key)
    if found is None and "ml_dtypes" in sys.modules:  # else `dtype` cannot be one of its types
        found = next((d for d in _TABLE if d.numpy_name in _ML_DTYPES and d.numpy == key), None)
    if found is None:
        raise InvalidArgumentError(f"unsupported array dtype {dtype}")
    return found


def layout_allowed(layout: int, dtype: Dtype) -> bool:
    """Whether `layout` may be used for `dtype` (spec section 5): BLOCK_FIELDS for block types
    only, which take no other but BLOCK_QUANTS (the types of ggml.JOINED_QUANTS); FIELDS16/FIELDS32
    for 2- and 4-byte values."""
    if layout == LAYOUT_BLOCK_QUANTS:
        return dtype.quant_bits > 0
    if layout == LAYOUT_BLOCK_FIELDS or dtype.is_block:
        return layout == LAYOUT_BLOCK_FIELDS and dtype.is_block
    want = LAYOUT_ITEMSIZE.get(layout, -1)
    return want is None or want == dtype.itemsize


@cache  # a few dtypes and layouts; asked once per tensor access
def plane_fields(dtype: Dtype, layout: int) -> tuple:
    """The (offset, width) of each plane's bytes within an element: plane j of a chunk of n
    elements holds n * width_j bytes (spec section 5)."""
    if layout == LAYOUT_BLOCK_FIELDS:
        return dtype.fields
    if layout == LAYOUT_BLOCK_QUANTS:  # the last plane, at offset itemsize, is the joined quants
        return dtype.quant_planes
    return tuple((j, 1) for j in range(dtype.itemsize))
