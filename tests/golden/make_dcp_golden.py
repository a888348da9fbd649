"""Writes tests/golden/dcp/: a torch.distributed.checkpoint checkpoint stored by llmcodec.dcp
(DCP's .metadata and one container), the state of tests/dcp_worker.py saved by one process.
Run from the repository root: python tests/golden/make_dcp_golden.py"""

import shutil
import sys
import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp

import llmcodec.dcp

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from dcp_worker import full_state  # noqa: E402

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out = HERE / "dcp"
    shutil.rmtree(out, ignore_errors=True)
    dcp.save(full_state(), storage_writer=llmcodec.dcp.FileSystemWriter(out, threads=1, chunk_size=4096))
    print(sorted(p.name for p in out.iterdir()))
