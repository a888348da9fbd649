"""ggml's tensor types: the type table (block size, bytes per block) and the byte fields of a
block, as ggml-common.h defines them. Data only: the dtype table (dtypes.py) and the GGUF reader
(sources/gguf.py) both read it, and neither imports the other.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import UnsupportedFeatureError


class GgmlType(NamedTuple):
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block


# ggml's type table, as in the gguf package's GGML_QUANT_SIZES (gguf 0.19.0). Ids 4, 5 (Q4_2, Q4_3)
# were gone before GGUF existed and 36..38 were never written to files; 31..33 were written by
# llama.cpp in 2024 and removed since: kept so that such files still parse (their bytes stay plain).
_QK_K = 256
GGML_TYPES: dict[int, GgmlType] = {t[0]: GgmlType(*t[1:]) for t in [
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 2 + 16),
    (3, "Q4_1", 32, 2 + 2 + 16),
    (6, "Q5_0", 32, 2 + 4 + 16),
    (7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (8, "Q8_0", 32, 2 + 32),
    (9, "Q8_1", 32, 4 + 4 + 32),
    (10, "Q2_K", _QK_K, 2 + 2 + _QK_K // 16 + _QK_K // 4),
    (11, "Q3_K", _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + 12),
    (12, "Q4_K", _QK_K, 2 + 2 + _QK_K // 2 + 12),
    (13, "Q5_K", _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 8 + 12),
    (14, "Q6_K", _QK_K, 2 + _QK_K // 2 + _QK_K // 4 + _QK_K // 16),
    (15, "Q8_K", _QK_K, 4 + _QK_K + _QK_K // 8),
    (16, "IQ2_XXS", _QK_K, 2 + _QK_K // 4),
    (17, "IQ2_XS", _QK_K, 2 + _QK_K // 4 + _QK_K // 32),
    (18, "IQ3_XXS", _QK_K, 2 + _QK_K // 4 + _QK_K // 8),
    (19, "IQ1_S", _QK_K, 2 + _QK_K // 8 + _QK_K // 16),
    (20, "IQ4_NL", 32, 2 + 16),
    (21, "IQ3_S", _QK_K, 2 + _QK_K // 4 + _QK_K // 8 + _QK_K // 32 + 4),
    (22, "IQ2_S", _QK_K, 2 + _QK_K // 4 + _QK_K // 16),
    (23, "IQ4_XS", _QK_K, 2 + 2 + _QK_K // 2 + _QK_K // 64),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", _QK_K, _QK_K // 8 + _QK_K // 16 + _QK_K // 32),
    (30, "BF16", 1, 2),
    (31, "Q4_0_4_4", 32, 2 + 16),
    (32, "Q4_0_4_8", 32, 2 + 16),
    (33, "Q4_0_8_8", 32, 2 + 16),
    (34, "TQ1_0", _QK_K, 2 + 4 * 13),
    (35, "TQ2_0", _QK_K, 2 + 64),
    (39, "MXFP4", 32, 1 + 16),
    (40, "NVFP4", 64, 4 + 32),
    (41, "Q1_0", 128, 2 + 16),
]}
GGML_TYPE_IDS = {t.name: type_id for type_id, t in GGML_TYPES.items()}


class BlockField(NamedTuple):
    name: str  # the member of ggml's block struct (ggml-common.h)
    offset: int  # bytes from the start of the block
    length: int  # bytes


# Byte layout of one block, from ggml-common.h. What each field holds:
#   d, m, dmin   fp16 scale, min, scale of the mins
#   qs (Q8_0)    32 int8 quants
#   qs (Q4_*, Q5_*, Q4_K, Q5_K)  4-bit quants, two per byte (low nibble first)
#   qh (Q5_0, Q5_1)  u32: bit j is the fifth bit of quant j
#   qh (Q5_K)    32 bytes: bit 2i / 2i+1 of byte l is the fifth bit of quant 64i+l / 64i+32+l
#   scales (Q4_K, Q5_K)  8 scales and 8 mins of 6 bits packed in 12 bytes (ggml's get_scale_min_k4)
#   ql, qh (Q6_K)  low 4 bits of the 256 quants (two per byte), high 2 bits (four per byte)
#   scales (Q6_K)  16 int8 sub-block scales
_BLOCK_FIELDS: dict[str, tuple[BlockField, ...]] = {
    "Q4_0": (BlockField("d", 0, 2), BlockField("qs", 2, 16)),
    "Q4_1": (BlockField("d", 0, 2), BlockField("m", 2, 2), BlockField("qs", 4, 16)),
    "Q5_0": (BlockField("d", 0, 2), BlockField("qh", 2, 4), BlockField("qs", 6, 16)),
    "Q5_1": (BlockField("d", 0, 2), BlockField("m", 2, 2), BlockField("qh", 4, 4), BlockField("qs", 8, 16)),
    "Q8_0": (BlockField("d", 0, 2), BlockField("qs", 2, 32)),
    "Q4_K": (BlockField("d", 0, 2), BlockField("dmin", 2, 2), BlockField("scales", 4, 12),
             BlockField("qs", 16, 128)),
    "Q5_K": (BlockField("d", 0, 2), BlockField("dmin", 2, 2), BlockField("scales", 4, 12),
             BlockField("qh", 16, 32), BlockField("qs", 48, 128)),
    "Q6_K": (BlockField("ql", 0, 128), BlockField("qh", 128, 64), BlockField("scales", 192, 16),
             BlockField("d", 208, 2)),
}


# Types whose quants are split across fields (low 4 bits in qs / ql, the rest in qh): layout
# BLOCK_QUANTS (spec section 5) joins each quant into one byte. Type name -> (bits per quant, the
# quant fields); the kernels hold the bit mapping (kernels.split_quants), keyed by type_size.
JOINED_QUANTS: dict[str, tuple[int, tuple[str, ...]]] = {
    "Q5_0": (5, ("qh", "qs")),
    "Q5_1": (5, ("qh", "qs")),
    "Q5_K": (5, ("qh", "qs")),
    "Q6_K": (6, ("ql", "qh")),
}


def block_fields(type_name: str) -> list[BlockField]:
    """The fields of one block of a ggml type, as `(name, offset, length)` in block order.

    Quantized types of the table above are split into their struct members; a type of one element
    per block (F32, F16, BF16, I8..I64, F64) is one field `value`; any other type is one field
    `block`, its bytes as they are.

    >>> block_fields("Q8_0")
    [BlockField(name='d', offset=0, length=2), BlockField(name='qs', offset=2, length=32)]
    """
    if type_name not in GGML_TYPE_IDS:
        raise UnsupportedFeatureError(f"unknown ggml type {type_name!r}")
    t = GGML_TYPES[GGML_TYPE_IDS[type_name]]
    if type_name in _BLOCK_FIELDS:
        return list(_BLOCK_FIELDS[type_name])
    return [BlockField("value" if t.block_size == 1 else "block", 0, t.type_size)]
