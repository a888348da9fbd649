"""Checkpoint files built from a fuzzer's choices (`harness.Draw`): safetensors and GGUF files that
are mostly valid, with every field liable to be off, and the readers that say what the real
libraries make of them (`safetensors`, `gguf`)."""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from harness import Draw

from llmcodec import dtypes, ggml

# --- safetensors ---------------------------------------------------------------------------------

ST_DTYPES = [d.name for d in dtypes.BY_ID.values() if not d.is_block]
# Names safetensors knows and llmcodec does not code, a block type's name, and nonsense.
ST_OTHER_DTYPES = ["F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "GGML_Q8_0", "GGML_Q4_K", "f32", "", "F32 "]
ST_ITEMSIZE = {d.name: d.itemsize for d in dtypes.BY_ID.values() if not d.is_block} | {"F8_E8M0": 1, "C64": 8}
NAMES = ["w", "model.layers.0.weight", "a.b", "x" * 300, "\u00e9t\u00e9", "__metadata__", "llmcodec.transforms",
         "[bytes 0:8]", "w.q", "w.scale", "w.u", "w.v", " ", "\x00", "\ud800"]
BIG = "__big__"  # a dimension of 5,000 digits (json.dumps refuses to write one)
HUGE_DIMS = [1 << 31, 1 << 32, (1 << 62) + 1, 1 << 63, 1 << 64, 1 << 70, -1, BIG]
META_KEYS = ["format", "llmcodec.transforms", "", "k" * 70, "\ud800", "__metadata__"]


def name(draw: Draw) -> str:
    if draw.chance(4):
        return draw.bytes(draw.int(0, 12)).decode("utf-8", "replace")
    if draw.chance(16):
        return "n" * draw.pick([65_535, 65_536])
    return draw.pick(NAMES)


def st_shape(draw: Draw) -> list:
    ndim = draw.int(0, 4) if not draw.chance(32) else draw.int(30, 40)
    shape = []
    for _ in range(ndim):
        if draw.chance(16):
            shape.append(draw.pick(HUGE_DIMS))
        elif draw.chance(32):
            shape.append(draw.pick([1.0, True, "2", None]))
        else:
            shape.append(draw.int(0, 6) if ndim < 8 else draw.int(1, 1))
    return shape


def st_metadata(draw: Draw):
    if draw.chance(16):
        return draw.pick([[], "x", 1, None, {"k": 1}, {"k": ["v"]}])
    entries = {}
    count = draw.int(0, 3) if not draw.chance(64) else draw.pick([65_536, 65_537, 70_000])
    for i in range(count):
        if count > 3:
            entries[f"k{i}"] = "v"
            continue
        key = draw.pick(META_KEYS) if draw.bool() else name(draw)
        if draw.chance(8):
            value = draw.pick(["{", "[]", "{\"w\": {\"kind\": \"quantize\"}}", "\ud800", "x" * 300])
            if draw.chance(16):
                value = "x" * (17 << 20)  # over the reader's 16 MiB
        else:
            value = draw.bytes(draw.int(0, 16)).decode("latin-1")
        entries[key] = value
    return entries


def safetensors_file(draw: Draw) -> bytes:
    """A safetensors file: a few tensors of any dtype and shape, their data from the fuzzer, the
    header written by json.dumps; then a field or two of it made wrong, now and then."""
    header: dict = {}
    blobs = []
    offset = 0
    metadata_at = draw.int(0, 2)  # none, first, last
    if metadata_at == 1:
        header["__metadata__"] = st_metadata(draw)
    for _ in range(draw.int(0, 4)):
        key = name(draw)
        dtype = draw.pick(ST_DTYPES) if not draw.chance(8) else draw.pick(ST_OTHER_DTYPES)
        shape = st_shape(draw)
        numel = 1
        for d in shape:
            numel *= d if type(d) is int and d >= 0 else 1
        nbytes = numel * ST_ITEMSIZE.get(dtype, 1)
        if nbytes > 1 << 16:  # too big to write: the offsets claim it, the file is short
            nbytes_written = 0
        else:
            nbytes_written = nbytes
        begin, end = offset, offset + nbytes
        if draw.chance(8):  # offsets off: a gap, an overlap, reversed, too long, not integers
            begin, end = draw.pick([(begin + 1, end + 1), (begin - 1, end), (end, begin), (begin, end + 1),
                                    (begin, end - 1), (begin, 1 << 64), (begin, float(end))])
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}
        if draw.chance(32):
            entry = draw.pick([{k: v for k, v in entry.items() if k != "shape"}, [dtype], entry | {"extra": 1}])
        header[key] = entry
        blobs.append(draw.bytes(nbytes_written))
        offset += nbytes_written
    if metadata_at == 2:
        header["__metadata__"] = st_metadata(draw)
    text = json.dumps(header, ensure_ascii=draw.bool(), separators=draw.pick([(",", ":"), (", ", ": ")]))
    text = text.replace(f'"{BIG}"', "9" * 5000)
    raw = text.encode("utf-8", "surrogatepass")
    raw += b" " * draw.pick([-len(raw) % 8, 0, 1, 7])
    size = len(raw)
    if draw.chance(16):
        size = draw.pick([size - 1, size + 1, 0, (1 << 64) - 1, 100 << 20])
    trailing = draw.bytes(draw.int(1, 8)) if draw.chance(16) else b""
    return struct.pack("<Q", size % (1 << 64)) + raw + b"".join(blobs) + trailing


def safetensors_reads(data: bytes):
    """What the safetensors package makes of `data`: ({name: (dtype, shape, bytes)}, metadata),
    or None if it refuses the file."""
    import safetensors

    try:
        tensors = {n: (info["dtype"], tuple(info["shape"]), bytes(info["data"]))
                   for n, info in safetensors.deserialize(data)}
        (n,) = struct.unpack("<Q", data[:8])
        metadata = json.loads(data[8:8 + n]).get("__metadata__") or {}
    except Exception:  # noqa: BLE001 - any refusal: what it is does not matter here
        return None
    return tensors, metadata


# --- GGUF ----------------------------------------------------------------------------------------

GGML_IDS = sorted(ggml.GGML_TYPES)
# value type id -> struct format of a scalar
GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<B", 10: "<Q", 11: "<q", 12: "<d"}
GGUF_KEYS = ["general.architecture", "general.name", "general.alignment", "tokenizer.ggml.tokens", "a", "",
             "llmcodec.transforms"]


def gguf_string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def gguf_text(draw: Draw) -> bytes:
    if draw.chance(8):
        return draw.bytes(draw.int(0, 6))  # any bytes: not always UTF-8
    return name(draw).encode("utf-8", "surrogatepass")


def gguf_value(draw: Draw, depth: int = 0) -> tuple[int, bytes]:
    """(value type, encoded value) of a metadata value."""
    vtype = draw.pick([*GGUF_SCALARS, 8, 9])
    if draw.chance(64):
        vtype = draw.pick([13, 1 << 31])
    if vtype in GGUF_SCALARS:
        return vtype, draw.bytes(struct.calcsize(GGUF_SCALARS[vtype]))
    if vtype == 8:
        return vtype, gguf_string(gguf_text(draw))
    if vtype != 9:
        return vtype, b""
    return vtype, gguf_array(draw, depth)


def gguf_array(draw: Draw, depth: int) -> bytes:
    """An array value: element type (u32), count (u64), elements (arrays of arrays now and then)."""
    etype = draw.pick([*GGUF_SCALARS, 8, 9] if depth < 2 else [*GGUF_SCALARS, 8])
    count = draw.int(0, 4) if not draw.chance(16) else draw.pick([1000, 1 << 16])
    if etype in GGUF_SCALARS:
        body = draw.bytes(count * struct.calcsize(GGUF_SCALARS[etype]))
    elif etype == 8:
        body = b"".join(gguf_string(b"t%d" % i if count > 4 else gguf_text(draw)) for i in range(count))
    else:
        count = min(count, 3)
        body = b"".join(gguf_array(draw, depth + 1) for _ in range(count))
    return struct.pack("<IQ", etype, count) + body


def gguf_tensor_shape(draw: Draw, type_id: int) -> tuple[int, ...]:
    """dims (ggml order: dims[0] the row length) of `type_id`: whole blocks per row, mostly."""
    block = ggml.GGML_TYPES[type_id].block_size
    n_dims = draw.int(0, 4) if not draw.chance(64) else 5
    dims = []
    for j in range(n_dims):
        d = draw.int(0, 3) if j else block * draw.int(0, 3)
        if draw.chance(32):
            d = draw.pick([1, block + 1, 1 << 40, (1 << 63) // max(block, 1)])
        dims.append(d)
    return tuple(dims)


def gguf_file(draw: Draw) -> bytes:
    """A GGUF file: a few metadata pairs and tensors of any ggml type, their data from the fuzzer."""
    version = 3 if not draw.chance(16) else draw.pick([1, 2, 4, 3 << 24])
    alignment = 32
    kvs = []
    if draw.chance(4):
        alignment = draw.pick([1, 8, 64, 3, 0])
        kvs.append(gguf_string(b"general.alignment") + struct.pack("<II", 4, alignment))
    for _ in range(draw.int(0, 3)):
        key = draw.pick(GGUF_KEYS).encode() if draw.bool() else gguf_text(draw)
        vtype, value = gguf_value(draw)
        kvs.append(gguf_string(key) + struct.pack("<I", vtype) + value)
    infos, blobs = [], []
    offset = 0
    align = alignment if alignment and not alignment & (alignment - 1) else 32
    for _ in range(draw.int(0, 4)):
        type_id = draw.pick(GGML_IDS) if not draw.chance(64) else draw.pick([4, 36, 42, 1 << 31])
        t = ggml.GGML_TYPES.get(type_id, ggml.GgmlType("?", 1, 1))
        dims = gguf_tensor_shape(draw, type_id) if type_id in ggml.GGML_TYPES else (4,)
        nbytes = math.prod(dims) // t.block_size * t.type_size
        offset += -offset % align
        at = offset if not draw.chance(32) else draw.pick([offset + 1, 0, 1 << 62])
        infos.append(gguf_string(gguf_text(draw)) + struct.pack("<I", len(dims))
                     + b"".join(struct.pack("<Q", d % (1 << 64)) for d in dims) + struct.pack("<IQ", type_id, at))
        if nbytes <= 1 << 16:
            blobs.append((offset, draw.bytes(nbytes)))
            offset += nbytes
    head = b"GGUF" + struct.pack("<IQQ", version, len(infos), len(kvs)) + b"".join(kvs) + b"".join(infos)
    if infos:
        head += bytes(-len(head) % align)
    data = bytearray(offset)
    for at, raw in blobs:
        data[at:at + len(raw)] = raw
    return head + bytes(data) + (draw.bytes(draw.int(1, 8)) if draw.chance(16) else b"")


def gguf_reads(path) -> dict[str, bytes] | None:
    """What the gguf package makes of the file at `path`: {tensor name: its bytes}, or None if it
    refuses the file."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        tensors = {t.name: np.asarray(t.data).tobytes() for t in reader.tensors}
        del reader
    except Exception:  # noqa: BLE001 - any refusal
        return None
    return tensors
