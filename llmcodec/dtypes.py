"""The dtype table (spec section 4.4) and the numpy dtypes behind it."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from .errors import InvalidArgumentError, UnsupportedFeatureError

# Layout ids (spec section 5).
LAYOUT_BYTES = 0
LAYOUT_FIELDS16 = 1
LAYOUT_FIELDS32 = 2
LAYOUT_ITEMSIZE = {LAYOUT_BYTES: None, LAYOUT_FIELDS16: 2, LAYOUT_FIELDS32: 4}


@dataclass(frozen=True)
class Dtype:
    id: int
    name: str
    numpy: np.dtype
    default_layout: int

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


_TABLE = [
    Dtype(1, "BOOL", np.dtype(np.bool_), LAYOUT_BYTES),
    Dtype(2, "U8", np.dtype("<u1"), LAYOUT_BYTES),
    Dtype(3, "I8", np.dtype("<i1"), LAYOUT_BYTES),
    Dtype(4, "F8_E5M2", np.dtype(ml_dtypes.float8_e5m2), LAYOUT_BYTES),
    Dtype(5, "F8_E4M3", np.dtype(ml_dtypes.float8_e4m3fn), LAYOUT_BYTES),
    Dtype(6, "I16", np.dtype("<i2"), LAYOUT_BYTES),
    Dtype(7, "U16", np.dtype("<u2"), LAYOUT_BYTES),
    Dtype(8, "F16", np.dtype("<f2"), LAYOUT_BYTES),
    Dtype(9, "BF16", np.dtype(ml_dtypes.bfloat16), LAYOUT_FIELDS16),
    Dtype(10, "I32", np.dtype("<i4"), LAYOUT_BYTES),
    Dtype(11, "U32", np.dtype("<u4"), LAYOUT_BYTES),
    Dtype(12, "F32", np.dtype("<f4"), LAYOUT_FIELDS32),
    Dtype(13, "I64", np.dtype("<i8"), LAYOUT_BYTES),
    Dtype(14, "U64", np.dtype("<u8"), LAYOUT_BYTES),
    Dtype(15, "F64", np.dtype("<f8"), LAYOUT_BYTES),
]
BY_ID = {d.id: d for d in _TABLE}
BY_NAME = {d.name: d for d in _TABLE}
_BY_NUMPY = {d.numpy: d for d in _TABLE}


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
    try:
        return _BY_NUMPY[key]
    except KeyError:
        raise InvalidArgumentError(f"unsupported array dtype {dtype}") from None


def layout_allowed(layout: int, itemsize: int) -> bool:
    want = LAYOUT_ITEMSIZE.get(layout, -1)
    return want is None or want == itemsize
