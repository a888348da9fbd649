"""Delta transforms against a base model (spec section 11): a fine-tune's element words combined
with the base tensor's, before the planes are made, and undone after they are merged.

Everything here works on raw little-endian bytes (uint8 arrays) of equal length that start at an
element boundary of the tensor (a chunk, or a run of chunks), and is exact integer arithmetic on
words of `word_bytes(itemsize, is_block)` bytes, modulo 2^w:

    >>> import numpy as np
    >>> ft, base = np.array([3, 0, 255, 255], np.uint8), np.array([1, 0, 0, 0], np.uint8)
    >>> d = forward(DIFF, ft, base, 2)         # words 3 - 1 = 2 and 0xFFFF - 0 = -1, zigzagged: 4, 1
    >>> d.tobytes()
    b'\\x04\\x00\\x01\\x00'
    >>> inverse(DIFF, d, base, 2).tobytes() == ft.tobytes()
    True

Invariants: the inputs are never modified (an `out` array may be one of them); `inverse(t,
forward(t, f, b, w), b, w)` is `f` byte for byte for every word, NaN patterns included, since no
word is ever read as a float; each byte range is transformed with the base bytes of the same range
only (the transforms are elementwise), so one chunk needs only its own range of the base tensor.

Porting note for the fused numba kernel (the chunk's merge writes the words d, then, per word,
with `u` the unsigned integer type of w bits, all arithmetic wrapping modulo 2^w):

    DIFF  inverse: s = (d >> 1) ^ (u(0) - (d & 1));  ft = base + s
          forward: x = ft - base;  d = (x << 1) ^ (u(0) - (x >> (w - 1)))
    SUB   inverse: ft = base + d
          forward: d = ft - base
"""

from __future__ import annotations

import numpy as np
import xxhash

DIFF = 1  # spec section 11.1: zigzag of the difference of the words, modulo 2^w
SUB = 2  # spec section 11.1: the difference of the words, modulo 2^w
TRANSFORMS = {DIFF: "DIFF", SUB: "SUB"}
_WORDS = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}


def word_bytes(itemsize: int, is_block: bool) -> int:
    """Bytes of one word of the transforms: the element's itemsize (1, 2, 4 or 8), or 1 for a
    block dtype (a GGUF block is transformed byte by byte).

    >>> word_bytes(2, False), word_bytes(144, True)
    (2, 1)
    """
    if is_block:
        return 1
    if itemsize not in _WORDS:
        raise ValueError(f"no word of {itemsize} bytes: itemsize must be 1, 2, 4 or 8")
    return itemsize


def forward(transform: int, ft, base, word: int, out: np.ndarray | None = None) -> np.ndarray:
    """The delta of the fine-tune's bytes `ft` against the base's bytes `base` (same length, a
    multiple of `word`), as a new uint8 array (or into `out`, which may be `ft` or `base`).

    >>> forward(SUB, np.array([3], np.uint8), np.array([5], np.uint8), 1)
    array([254], dtype=uint8)
    """
    f, b, o = _views(ft, base, word, out)
    if transform == SUB:
        np.subtract(f, b, out=o)
    elif transform == DIFF:
        t = o.dtype.type
        np.subtract(f, b, out=o)  # d, wrapping modulo 2^w
        sign = np.right_shift(o, t(8 * word - 1))
        np.negative(sign, out=sign)  # all ones where d >= 2^(w-1), that is where d is negative
        np.left_shift(o, t(1), out=o)
        np.bitwise_xor(o, sign, out=o)
    else:
        raise ValueError(f"unknown delta transform {transform}")
    return o.view(np.uint8)


def inverse(transform: int, delta, base, word: int, out: np.ndarray | None = None) -> np.ndarray:
    """The fine-tune's bytes from the `delta` bytes and the base's bytes `base` (same length, a
    multiple of `word`), as a new uint8 array (or into `out`, which may be `delta` or `base`).

    >>> inverse(SUB, np.array([254], np.uint8), np.array([5], np.uint8), 1)
    array([3], dtype=uint8)
    """
    d, b, o = _views(delta, base, word, out)
    if transform == SUB:
        np.add(d, b, out=o)
    elif transform == DIFF:
        t = o.dtype.type
        s = np.bitwise_and(d, t(1))
        np.negative(s, out=s)  # all ones for an odd d: a negative difference
        np.bitwise_xor(s, np.right_shift(d, t(1)), out=s)  # the signed difference, modulo 2^w
        np.add(s, b, out=o)  # `out` may be `delta` or `base`: both are read before it is written
    else:
        raise ValueError(f"unknown delta transform {transform}")
    return o.view(np.uint8)


def chunk_checksums(base, chunk_bytes: int) -> np.ndarray:
    """Base_Checksums of section 4.6: XXH64 (seed 0) of each range of `chunk_bytes` bytes of the
    base tensor's bytes `base`, the last one shorter; a uint64 array, empty for empty bytes.

    >>> sums = chunk_checksums(b"abcdef", 4)
    >>> sums.size, int(sums[1]) == xxhash.xxh64_intdigest(b"ef"), chunk_checksums(b"", 4).size
    (2, True, 0)
    """
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be >= 1, found {chunk_bytes}")
    view = memoryview(base).cast("B")
    return np.array([xxhash.xxh64_intdigest(view[i:i + chunk_bytes]) for i in range(0, len(view), chunk_bytes)],
                    np.uint64)


def _views(a, b, word: int, out) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`a`, `b` and the output as arrays of little-endian words of `word` bytes; lengths checked."""
    if word not in _WORDS:
        raise ValueError(f"word must be 1, 2, 4 or 8 bytes, found {word}")
    a, b = (np.frombuffer(x, np.uint8) if not isinstance(x, np.ndarray) else x.reshape(-1).view(np.uint8)
            for x in (a, b))
    if a.size != b.size or a.size % word:
        raise ValueError(f"the bytes ({a.size}) and the base's bytes ({b.size}) must have one length, "
                         f"a multiple of the {word}-byte word")
    if out is None:
        out = np.empty(a.size, np.uint8)
    elif out.dtype != np.uint8 or out.size != a.size or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable contiguous uint8 array of {a.size} bytes")
    w = _WORDS[word]
    return a.view(w), b.view(w), out.reshape(-1).view(w)
