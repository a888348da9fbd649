"""Write the golden vectors once: small containers, the SHA-256 of what they decode to, and broken
files with the error each must raise. Committed files never change; a format change adds new ones.

    python tests/golden/make_golden.py     # writes only the vectors MANIFEST.json does not list yet
"""

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

import llmcodec
from llmcodec import format as fmt
from llmcodec import dtypes, transforms
from llmcodec.container import ContainerReader, ContainerWriter, TensorSource

HERE = Path(__file__).parent


def arrays() -> dict:
    rng = np.random.default_rng(2026)
    w = (rng.standard_normal((24, 40)) * 0.02).astype(ml_dtypes.bfloat16)
    return {
        "bf16.gaussian": w,
        "f32.upcast": w[:6].astype(np.float32),
        "f16.small": (rng.standard_normal(50)).astype(np.float16),
        "u8.random": rng.integers(0, 256, 300, dtype=np.uint8),
        "i64.scalar": np.array(-7, np.int64),
        "f64.specials": np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324], np.float64),
        "bool.mask": rng.integers(0, 2, 17).astype(bool),
        "f8.e4m3": rng.integers(0, 256, 64, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn),
        "empty": np.zeros((3, 0), np.int32),
    }


def checkpoint_bytes() -> bytes:
    """A safetensors file with a hole between tensors and trailing bytes."""
    a = np.linspace(-1, 1, 48, dtype=np.float32).tobytes()
    b = (np.arange(20, dtype=np.int16) * 3).tobytes()
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "F32", "shape": [6, 8], "data_offsets": [0, 192]},
                         "b": {"dtype": "I16", "shape": [20], "data_offsets": [196, 236]}}).encode()
    return struct.pack("<Q", len(header)) + header + a + b"gap!" + b + b"trailer"


def paired() -> dict:
    """Planes whose bytes come in equal pairs: RANS0_PAIRS wins clearly (odd and even lengths)."""
    rng = np.random.default_rng(7)
    firsts = rng.choice(np.arange(40, 60, dtype=np.uint8), 2500)
    return {"u8.pairs": np.repeat(firsts, 2), "u8.pairs.odd": np.repeat(firsts, 2)[:-1].copy()}


def transformed() -> tuple[dict, dict]:
    """Stored tensors (transform parts and a plain one) and transform records: an F32 matrix
    quantized to 8 bits (symmetric, groups of 16), a BF16 one to 4 bits (affine, a group per row)
    and an F16 one factorized (rank 2)."""
    rng = np.random.default_rng(11)
    matrices = {
        "w": transforms.quantize("w", (rng.standard_normal((16, 32)) * 0.02).astype(np.float32), "F32", 8, 16,
                                 "symmetric"),
        "b": transforms.quantize("b", rng.standard_normal((8, 24)).astype(ml_dtypes.bfloat16), "BF16", 4, 0,
                                 "affine"),
        "f": transforms.factorize("f", (rng.standard_normal((12, 2)) @ rng.standard_normal((2, 20))).astype(np.float16),
                                  "F16", rank=2),
    }
    stored = {"norm": np.linspace(0, 1, 16, dtype=np.float32)}
    for record, parts in matrices.values():
        stored.update({record.parts[role]: array for role, array in parts.items()})
    return stored, {name: record for name, (record, _) in matrices.items()}


def safetensors_bytes(tensors: dict) -> bytes:
    """A safetensors file of `tensors`, in their order, its JSON header padded with spaces to 8 bytes."""
    entries, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, array in tensors.items():
        entries[name] = {"dtype": dtypes.from_numpy(array.dtype).name, "shape": list(array.shape),
                         "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + b"".join(a.tobytes() for a in tensors.values())


def delta_pair() -> tuple[dict, dict, dict]:
    """(base tensors, fine-tune tensors, how the writer stores each fine-tune tensor: the delta
    transform's name, or None for standalone) of a small fine-tune (spec 11)."""
    rng = np.random.default_rng(1303)
    bf16 = (rng.standard_normal((16, 32)) * 0.02).astype(ml_dtypes.bfloat16)
    f32 = (rng.standard_normal((8, 32)) * 0.02).astype(np.float32)
    base = {
        "bf16.trained": bf16,
        "f32.decayed": f32,
        "f16.frozen": rng.standard_normal(40).astype(np.float16),
        "i8.codes": rng.integers(-128, 128, 256, dtype=np.int8),
        "f32.resized": rng.standard_normal((4, 8)).astype(np.float32),
    }
    moved = rng.integers(-3, 4, bf16.shape).astype(np.int16)  # a few units in the last place, either way
    fine_tune = {
        "bf16.trained": (bf16.view(np.int16) + moved).view(ml_dtypes.bfloat16),
        # every word moved down (towards 0) by 1 to 256 units, as weight decay moves them: SUB's
        # high bytes are all 0xFF, DIFF's second byte is 0 or 1
        "f32.decayed": (f32.view(np.uint32) - rng.integers(1, 257, f32.shape).astype(np.uint32)).view(np.float32),
        "f16.frozen": base["f16.frozen"].copy(),  # identical: the delta words are all 0 (CONSTANT)
        "i8.codes": base["i8.codes"] + rng.integers(-1, 2, 256).astype(np.int8),  # mod 256: -128 - 1 is 127
        "f32.resized": rng.standard_normal((5, 8)).astype(np.float32),  # another shape: standalone
        "bf16.head": (rng.standard_normal((3, 8)) * 0.02).astype(ml_dtypes.bfloat16),  # not in the base
    }
    stored = {"bf16.trained": "DIFF", "f32.decayed": "SUB", "f16.frozen": "DIFF", "i8.codes": "DIFF",
              "f32.resized": None, "bf16.head": None}
    return base, fine_tune, stored


def flip(data: bytes, pos: int, mask: int = 1) -> bytes:
    out = bytearray(data)
    out[pos] ^= mask
    return bytes(out)


def with_preamble(data: bytes, major: int = 1, flags: int = 0, header_length: int | None = None) -> bytes:
    """`data` with another Major_Version, Flags or Header_Length (the header then ends the file) and
    a valid Preamble_Checksum."""
    minor = struct.unpack("<H", data[10:12])[0]
    bounds = data[16:32]
    if header_length is not None:
        bounds = struct.pack("<QQ", len(data) - header_length, header_length)
    head = data[:8] + struct.pack("<HHI", major, minor, flags) + bounds + data[32:36]
    return head + struct.pack("<I", fmt.checksum32(head)) + data[40:]


def with_header(data: bytes, header: bytes, minor: int | None = None) -> bytes:
    """`data` with its header replaced by `header` (and its Minor_Version by `minor`) and both
    checksums valid, so that a reader gets past them to the fault under test."""
    header_at = struct.unpack("<Q", data[16:24])[0]
    minor = struct.unpack("<H", data[10:12])[0] if minor is None else minor
    return fmt.build_preamble(header_at, header, minor) + data[40:header_at] + header


def edited(data: bytes, edit) -> bytes:
    """`data` with its parsed header changed by `edit(header)` (which may return the header's bytes
    itself), re-serialised with valid checksums."""
    pre = fmt.parse_preamble(data[:40], len(data), fmt.Limits())
    header = fmt.parse_header(data[pre.header_offset:], pre, fmt.Limits())
    raw = edit(header)
    return with_header(data, fmt.serialize_header(header) if raw is None else raw)


def set_field(obj, name: str, value) -> None:
    setattr(obj, name, value)


def bomb(header: fmt.Header) -> bytes:
    """A last tensor of 2^40 bytes (16384 chunks of 64 MiB) whose chunk records are missing: the
    header declares a tensor far larger than the file."""
    header.tensors.append(fmt.TensorEntry("bomb", dtypes.from_numpy(np.dtype(np.uint8)), (1 << 40,),
                                          0, 1 << 26))
    return fmt.serialize_header(header)[:-8] + struct.pack("<Q", 1 << 14)  # its Chunk_Count


def tensors_entry(tensors: dict, metadata: dict) -> dict:
    return {
        "metadata": metadata,
        "tensors": {k: {"dtype": dtypes.from_numpy(v.dtype).name, "shape": list(v.shape),
                        "sha256": hashlib.sha256(v.tobytes()).hexdigest()} for k, v in tensors.items()},
    }


def write_arrays() -> dict:
    tensors = arrays()
    llmcodec.save_file(tensors, HERE / "arrays.llmc", {"purpose": "golden"}, chunk_size=256)
    return tensors_entry(tensors, {"purpose": "golden"})


def write_pairs() -> dict:
    tensors = paired()
    llmcodec.save_file(tensors, HERE / "pairs.llmc", {"method": "RANS0_PAIRS"})
    return tensors_entry(tensors, {"method": "RANS0_PAIRS"})


def model_entry(path: Path, metadata: dict) -> dict:
    """The manifest entry of a file of transforms: what load_file returns (transformed tensors rebuilt)."""
    return {"metadata": metadata, "model": tensors_entry(llmcodec.load_file(path), metadata)["tensors"]}


def write_transforms() -> dict:
    """Version 1.2: the records in the Transforms section; a user metadata key named like the old
    record is user data."""
    stored, records = transformed()
    metadata = {"llmcodec.transforms": "user data, not a transform record"}
    with ContainerWriter(HERE / "transforms.llmc") as writer:
        writer.add_many([TensorSource(n, dtypes.from_numpy(a.dtype), a.shape, a) for n, a in stored.items()])
        writer.finish(metadata, transforms=records)
    return model_entry(HERE / "transforms.llmc", metadata)


def write_transforms_legacy() -> dict:
    """Version 1.1: the same records as the metadata entry `llmcodec.transforms` (JSON, spec 10.2),
    as 1.1 writers wrote them; it decodes to the same tensors as transforms.llmc."""
    stored, records = transformed()
    record = json.dumps({name: dataclasses.asdict(t) for name, t in records.items()}, sort_keys=True)
    path = HERE / "transforms-1.1.llmc"
    llmcodec.save_file(stored, path, {"llmcodec.transforms": record})
    data = path.read_bytes()
    head = data[:10] + struct.pack("<H", 1) + data[12:36]
    path.write_bytes(head + struct.pack("<I", fmt.checksum32(head)) + data[40:])
    return model_entry(path, {})


def write_checkpoint() -> dict:
    original = checkpoint_bytes()
    (HERE / "checkpoint.safetensors").write_bytes(original)
    llmcodec.encode_file(HERE / "checkpoint.safetensors", HERE / "checkpoint.llmc", chunk_size=64)
    (HERE / "checkpoint.safetensors").unlink()
    return {"original_sha256": hashlib.sha256(original).hexdigest(), "original_size": len(original)}


def write_delta() -> dict:
    """Version 1.3: a safetensors fine-tune encoded against its base, delta-base.safetensors
    (committed beside it); decoding needs the base and gives back the fine-tune's SHA-256."""
    base, fine_tune, stored = delta_pair()
    (HERE / "delta-base.safetensors").write_bytes(safetensors_bytes(base))
    original = safetensors_bytes(fine_tune)
    (HERE / "delta.safetensors").write_bytes(original)
    llmcodec.encode_file(HERE / "delta.safetensors", HERE / "delta.llmc", chunk_size=256,
                         base=HERE / "delta-base.safetensors")
    (HERE / "delta.safetensors").unlink()
    with ContainerReader(HERE / "delta.llmc") as r:
        found = {t.name: t.delta and fmt.DELTA_TRANSFORMS[t.delta.transform] for t in r.tensors}
    assert found == stored, found  # the writer's choices are what the vector is meant to cover
    return {"original_sha256": hashlib.sha256(original).hexdigest(), "original_size": len(original),
            "base": "delta-base.safetensors",
            "base_sha256": hashlib.sha256((HERE / "delta-base.safetensors").read_bytes()).hexdigest(),
            "fine_tune": {name: {"delta": stored[name], **spec}
                          for name, spec in tensors_entry(fine_tune, {})["tensors"].items()}}


def quant_blocks(type_name: str, blocks: int, rng, spread: float) -> np.ndarray:
    """`blocks` blocks of the ggml type whose quants (ggml's order) are a rounded normal of
    `spread` (0: all the same) around the middle of their range, other bytes random."""
    from llmcodec import kernels

    d = dtypes.BY_NAME[f"GGML_{type_name}"]
    raw = rng.integers(0, 256, blocks * d.itemsize, dtype=np.uint8)
    top = (1 << d.quant_bits) - 1
    quants = np.clip(np.round(rng.standard_normal(blocks * d.block_size) * spread + top / 2), 0, top).astype(np.uint8)
    assert kernels.merge_quants(quants, d.itemsize, raw)
    return raw


def quants_gguf() -> bytes:
    """A GGUF file of the four types with joined quants (spec 5, layout BLOCK_QUANTS), a Q5_0 tensor
    whose quants are all 16 (its quants plane is CONSTANT), and a Q8_0 one (no joined form)."""
    import gguf

    rng = np.random.default_rng(14)
    path = HERE / "quants.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_string("general.name", "golden quants")
    Q = gguf.GGMLQuantizationType
    for name, t, rows, blocks, spread in [("q5_0", Q.Q5_0, 8, 16, 3.0), ("q5_1", Q.Q5_1, 5, 3, 2.0),
                                          ("q5_k", Q.Q5_K, 4, 6, 3.0), ("q6_k", Q.Q6_K, 4, 6, 6.0),
                                          ("q5_0.flat", Q.Q5_0, 2, 2, 0.0), ("q8_0", Q.Q8_0, 2, 2, 0.0)]:
        size = gguf.GGML_QUANT_SIZES[t][1]
        if t == Q.Q8_0:
            data = rng.integers(0, 256, rows * blocks * size, dtype=np.uint8)
        else:
            data = quant_blocks(t.name, rows * blocks, rng, spread)  # spread 0: every quant 16
        w.add_tensor(name, data.reshape(rows, blocks * size), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    path.unlink()
    return data


def write_quants() -> dict:
    """Version 1.4: a GGUF file encoded at level max, every tensor of a joined-quant type in layout
    BLOCK_QUANTS (checked), q5_0.flat's quants plane CONSTANT."""
    original = quants_gguf()
    (HERE / "quants.gguf").write_bytes(original)
    llmcodec.encode_file(HERE / "quants.gguf", HERE / "quants.llmc", level="max", chunk_size=2100)
    (HERE / "quants.gguf").unlink()
    with ContainerReader(HERE / "quants.llmc") as r:
        layouts = {t.name: t.layout for t in r.tensors}
        flat = r.by_name["q5_0.flat"].chunks[0].planes[-1]
    assert r.version == (1, 4) and layouts == {"q5_0": 4, "q5_1": 4, "q5_k": 4, "q6_k": 4, "q5_0.flat": 4,
                                               "q8_0": 3}, layouts
    assert flat.method == fmt.METHOD_CONSTANT, flat
    return {"original_sha256": hashlib.sha256(original).hexdigest(), "original_size": len(original),
            "layouts": layouts}


def quant_too_wide(header: fmt.Header) -> None:
    """q5_0.flat's CONSTANT quants plane made 32: a quant of 6 bits in a 5-bit type."""
    entry = next(t for t in header.tensors if t.name == "q5_0.flat")
    entry.chunks[0].planes[-1].parameter = 32


def unknown_kind(header: fmt.Header) -> bytes:
    """The header with the Kind of its first transform record set to 3."""
    raw = bytearray(fmt.serialize_header(header))
    first = len(fmt.serialize_header(dataclasses.replace(header, transforms={}))) + 4  # after Transform_Count
    raw[first + 2 + len(next(iter(header.transforms)).encode())] = 3
    return bytes(raw)


def base_fields(header: fmt.Header) -> dict:
    """Where the Base section (4.6) of a file without transforms puts File_Count, Delta_Count and
    each Delta record ("Deltas"), as offsets in the serialized header."""
    at = len(fmt.serialize_header(dataclasses.replace(header, base=None))) + 4  # after Transform_Count 0
    fields = {"File_Count": at + 2 + len(header.base.name.encode())}
    fields["Delta_Count"] = fields["File_Count"] + 4 + sum(42 + len(f.path.encode()) for f in header.base.files)
    fields["Deltas"], pos = [], fields["Delta_Count"] + 4
    for t in header.tensors:
        if t.delta is not None:
            fields["Deltas"].append(pos)
            pos += 7 + len(t.delta.base_tensor.encode()) + 8 * len(t.chunks)
    return fields


def base_patched(patch):
    """An edit (for `edited`) that patches the serialized header in place: `patch(raw, fields,
    header)`, `fields` those of base_fields."""
    def edit(header: fmt.Header) -> bytes:
        raw = bytearray(fmt.serialize_header(header))
        patch(raw, base_fields(header), header)
        return bytes(raw)
    return edit


def count_bomb(field: str):
    """The count `field` set to 2^32 - 1."""
    def patch(raw, fields, header) -> None:
        raw[fields[field]:fields[field] + 4] = struct.pack("<I", 2**32 - 1)
    return base_patched(patch)


def no_deltas(header: fmt.Header) -> bytes:
    """A Base section of Delta_Count 0."""
    for t in header.tensors:
        t.delta = None
    return fmt.serialize_header(header)


def repeat_index(raw, fields, header) -> None:
    """The second Delta's Tensor_Index made the first one's."""
    first, second = fields["Deltas"][:2]
    raw[second:second + 4] = raw[first:first + 4]


def unknown_transform(raw, fields, header) -> None:
    """The first Delta's Transform set to 3."""
    first = next(t for t in header.tensors if t.delta is not None)
    raw[fields["Deltas"][0] + 6 + len(first.delta.base_tensor.encode())] = 3


def delta_broken() -> dict:
    """The Base section (4.6) of delta.llmc broken, each file one rule of it."""
    data = (HERE / "delta.llmc").read_bytes()
    return {
        "delta-count-0.llmc": (edited(data, no_deltas), "FormatError"),
        "delta-index-repeated.llmc": (edited(data, base_patched(repeat_index)), "FormatError"),
        "delta-unknown-transform.llmc": (edited(data, base_patched(unknown_transform)), "UnsupportedFeatureError"),
        # the header ends 8 bytes early: the last Delta's Base_Checksums run past it
        "delta-checksums-truncated.llmc": (edited(data, lambda h: fmt.serialize_header(h)[:-8]), "TruncatedError"),
        "delta-file-count-bomb.llmc": (edited(data, count_bomb("File_Count")), "LimitExceededError"),
        # read a record at a time: the header ends inside the Delta after the last one
        "delta-count-bomb.llmc": (edited(data, count_bomb("Delta_Count")), "TruncatedError"),
        # a 1.2 reader finds a Transforms section of 0 records
        "delta-minor-2.llmc": (with_header(data, data[struct.unpack("<Q", data[16:24])[0]:], minor=2),
                               "FormatError"),
    }


def broken_files() -> dict:
    good = (HERE / "arrays.llmc").read_bytes()
    transformed_file = (HERE / "transforms.llmc").read_bytes()
    header_at = struct.unpack("<Q", good[16:24])[0]
    return {
        "truncated-preamble.llmc": (good[:30], "TruncatedError"),
        "truncated-end.llmc": (good[:-5], "TruncatedError"),
        "bad-magic.llmc": (b"GGUF" + good[4:], "FormatError"),
        "preamble-bitflip.llmc": (flip(good, 17), "ChecksumError"),
        "header-bitflip.llmc": (flip(good, header_at + 3), "ChecksumError"),
        "data-bitflip.llmc": (flip(good, 200, 0x80), "LlmcodecError"),
        "empty.llmc": (b"", "TruncatedError"),
        # Faults behind valid checksums: each file breaks one rule of spec/FORMAT.md.
        "major-version-2.llmc": (with_preamble(good, major=2), "UnsupportedVersionError"),
        "reserved-flags.llmc": (with_preamble(good, flags=1), "FormatError"),
        "header-length-8.llmc": (with_preamble(good, header_length=8), "FormatError"),
        "header-trailing-bytes.llmc": (with_header(good, good[header_at:] + b"\0"), "FormatError"),
        "shape-overflow.llmc": (edited(good, lambda h: set_field(h.tensors[0], "shape", (2, 1 << 63))),
                                "LimitExceededError"),
        "decompression-bomb.llmc": (edited(good, bomb), "TruncatedError"),
        "chunk-outside-data.llmc": (edited(good, lambda h: set_field(h.tensors[0].chunks[0], "offset", 10**9)),
                                    "FormatError"),
        "chunks-overlap.llmc": (edited(good, lambda h: set_field(h.tensors[0].chunks[1], "offset",
                                                                 h.tensors[0].chunks[0].offset + 1)), "FormatError"),
        "reserved-parameter.llmc": (edited(good, lambda h: set_field(h.tensors[0].chunks[0].planes[0], "parameter",
                                                                     1)), "FormatError"),
        "unknown-method.llmc": (edited(good, lambda h: set_field(h.tensors[0].chunks[0].planes[0], "method", 7)),
                                "UnsupportedFeatureError"),
        # bf16.gaussian's chunk 0 starts at byte 40 with a RANS0 plane: its first frequency + 1.
        "rans-frequency-sum.llmc": (flip(good, 40 + 34, good[74] ^ (good[74] + 1) % 256), "FormatError"),
        # u8.random's chunk 0 is a RAW plane at byte 2446: one bit of its data.
        "chunk-checksum.llmc": (flip(good, 2446 + 10), "ChecksumError"),
        # The Transforms section (4.5) of transforms.llmc.
        "transform-count-0.llmc": (edited(transformed_file, lambda h: fmt.serialize_header(
            dataclasses.replace(h, transforms={})) + bytes(4)), "FormatError"),
        "transform-part-twice.llmc": (edited(transformed_file, lambda h: h.transforms.update(
            w2=dataclasses.replace(h.transforms["w"]))), "FormatError"),
        "transform-unknown-kind.llmc": (edited(transformed_file, unknown_kind), "UnsupportedFeatureError"),
        **delta_broken(),
        # layout BLOCK_QUANTS (spec 5, 1.4): a quant that does not fit its bits; the layout on a dtype without it
        "quant-too-wide.llmc": (edited((HERE / "quants.llmc").read_bytes(), quant_too_wide), "FormatError"),
        "quants-layout-on-q8_0.llmc": (edited((HERE / "quants.llmc").read_bytes(), lambda h: set_field(
            next(t for t in h.tensors if t.name == "q8_0"), "layout", 4)), "FormatError"),
    }


VECTORS = {"arrays.llmc": write_arrays, "checkpoint.llmc": write_checkpoint, "pairs.llmc": write_pairs,
           "transforms.llmc": write_transforms, "transforms-1.1.llmc": write_transforms_legacy,
           "delta.llmc": write_delta, "quants.llmc": write_quants}


def main() -> None:
    path = HERE / "MANIFEST.json"
    manifest = json.loads(path.read_text()) if path.exists() else {"vectors": {}, "broken": {}}
    for name, write in VECTORS.items():
        if name not in manifest["vectors"]:
            manifest["vectors"][name] = write()
            print("wrote", name)
    for name, (data, error) in broken_files().items():
        if name not in manifest["broken"]:
            (HERE / "broken" / name).write_bytes(data)
            manifest["broken"][name] = error
            print("wrote broken/" + name)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
