"""Write a small example checkpoint, `example.safetensors`: bf16 and fp32 weights like a transformer's.

    python examples/make_checkpoint.py [PATH]
"""

import sys

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file


def main(path: str = "example.safetensors") -> None:
    rng = np.random.default_rng(0)
    tensors = {}
    for layer in range(4):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.attn.qkv.weight"] = (rng.standard_normal((768, 256)) * 0.02).astype(ml_dtypes.bfloat16)
        tensors[f"{prefix}.mlp.up.weight"] = (rng.standard_normal((1024, 256)) * 0.02).astype(ml_dtypes.bfloat16)
        tensors[f"{prefix}.norm.weight"] = (1 + rng.standard_normal(256) * 0.1).astype(np.float32)
    tensors["lm_head.bias"] = np.zeros(1000, np.float32)
    save_file(tensors, path, metadata={"format": "pt", "note": "llmcodec example"})
    print(path)


if __name__ == "__main__":
    main(*sys.argv[1:])
