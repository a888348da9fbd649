"""torch.distributed.checkpoint storage: llmcodec against DCP's plain writer and its ZStandard
extension, on real weights sharded over 2 ranks (gloo on 127.0.0.1).

MiniLM's real weights (fp32, and cast to bf16), and a real training state (MiniLM after 20 AdamW
steps: bf16 weights and fp32 moments), each 2-D tensor a DTensor sharded by rows over 2 ranks, the
rest replicated. Per writer and round, in alternating order: checkpoint size, save
time (wall, both ranks, from a barrier to the coordinator's `.metadata`) and load time into zeroed
DTensors on the same 2 ranks; llmcodec's load is checked bit-exact, and resharded onto 1 process.

    python bench/dcp.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table, write_section  # noqa: E402
from weights import ensure_packages, minilm_files  # noqa: E402

WRITERS = ("DCP plain", "DCP + ZStandard", "llmcodec")


def _writer(kind: str, path: str):
    import torch.distributed.checkpoint as dcp

    if kind == "DCP plain":
        return dcp.FileSystemWriter(path)
    if kind == "DCP + ZStandard":
        from torch.distributed.checkpoint._extension import ZStandard

        return dcp.FileSystemWriter(path, _extensions=[ZStandard()])
    import llmcodec.dcp

    return llmcodec.dcp.FileSystemWriter(path)


def _reader(kind: str, path: str):
    import torch.distributed.checkpoint as dcp

    if kind == "llmcodec":
        import llmcodec.dcp

        return llmcodec.dcp.FileSystemReader(path)
    return dcp.FileSystemReader(path)


def _state(source: str, mesh):
    from safetensors.torch import load_file
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    tensors = load_file(source)
    return {k: distribute_tensor(v, mesh, [Shard(0) if v.dim() == 2 else Replicate()]) for k, v in tensors.items()}


def training_state(folder: Path, steps: int = 20) -> Path:
    """A real training checkpoint's tensors: MiniLM fine-tuned for `steps` AdamW steps (lr 2e-5,
    weight decay 0.01, a masked-token loss on random sentences of its vocabulary), its weights
    in bf16 and AdamW's fp32 moments, as one safetensors file."""
    import torch
    import transformers
    from safetensors.torch import save_file

    model_dir = minilm_files(folder)["fp32"].parent
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM.from_pretrained(model_dir)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    for _ in range(steps):
        ids = torch.randint(1000, model.config.vocab_size, (8, 32))
        labels = ids.clone()
        ids[torch.rand(ids.shape) < 0.15] = 103  # [MASK]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tensors = {f"model.{k}": v.detach().to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()
               if v.is_floating_point()}
    names = {id(p): n for n, p in model.named_parameters()}
    for p, st in optimizer.state.items():
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"optim.{names[id(p)]}.{key}"] = st[key].contiguous()
    path = folder / "minilm-training.safetensors"
    save_file(tensors, str(path))
    return path


def worker(rank: int, port: int, source: str, work: str, rounds: int, out: str) -> None:
    import json

    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=600))
    mesh = init_device_mesh("cpu", (2,))
    state = _state(source, mesh)
    times = {k: {"save": [], "load": []} for k in WRITERS}
    for r in range(rounds):
        order = WRITERS if r % 2 == 0 else tuple(reversed(WRITERS))
        for kind in order:
            path = os.path.join(work, kind.replace(" ", "_").replace("+", ""))
            if rank == 0:
                shutil.rmtree(path, ignore_errors=True)
            dist.barrier()
            t = time.perf_counter()
            dcp.save(state, storage_writer=_writer(kind, path))
            dist.barrier()
            times[kind]["save"].append(time.perf_counter() - t)
            target = {k: torch.zeros_like(v) for k, v in state.items()}
            dist.barrier()
            t = time.perf_counter()
            dcp.load(target, storage_reader=_reader(kind, path))
            dist.barrier()
            times[kind]["load"].append(time.perf_counter() - t)
            for k, v in state.items():
                a, b = v.to_local().contiguous(), target[k].to_local().contiguous()
                assert a.view(torch.uint8).equal(b.view(torch.uint8)), (kind, k)
    if rank == 0:
        Path(out).write_text(json.dumps(times))
    dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _resharded_load_is_exact(source: Path, path: Path) -> bool:
    """llmcodec's 2-rank checkpoint loaded by 1 process equals the original, byte for byte."""
    import torch
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    import llmcodec.dcp

    want = load_file(str(source))
    got = {k: torch.zeros_like(v) for k, v in want.items()}
    dcp.load(got, storage_reader=llmcodec.dcp.FileSystemReader(path))
    return all(got[k].view(torch.uint8).equal(want[k].view(torch.uint8)) for k in want)


def main() -> None:
    import json
    import warnings

    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_packages()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sources = minilm_files(Path(tmp))
        sources["bf16 weights + fp32 AdamW moments"] = training_state(Path(tmp))
        for label in ("bf16", "fp32", "bf16 weights + fp32 AdamW moments"):
            work = Path(tmp, f"work-{label.replace(' ', '_')}")
            work.mkdir()
            out = Path(tmp, f"times-{label.replace(' ', '_')}.json")
            mp.start_processes(worker, args=(_port(), str(sources[label]), str(work), args.rounds, str(out)),
                               nprocs=2, join=True, start_method="spawn")
            times = json.loads(out.read_text())
            raw = sources[label].stat().st_size
            zstd = None
            for kind in WRITERS:
                path = work / kind.replace(" ", "_").replace("+", "")
                size = _size(path)
                zstd = size if kind == "DCP + ZStandard" else zstd
                exact = _resharded_load_is_exact(sources[label], path) if kind == "llmcodec" else None
                rows.append([f"MiniLM {label}", kind, f"{size / raw:.4f}",
                             f"{size / zstd:.3f}" if zstd and kind == "llmcodec" else "",
                             f"{statistics.median(times[kind]['save']):.2f}",
                             f"{statistics.median(times[kind]['load']):.2f}",
                             {None: "", True: "yes", False: "NO"}[exact]])
    table = markdown_table(["weights (2 ranks)", "writer", "size / safetensors", "size / ZStandard's",
                            "save s (median)", "load s (median)", "1-rank load bit-exact"], rows)
    text = ("MiniLM's real weights and a real training state (20 AdamW steps: bf16 weights, fp32 moments), "
            "2-D tensors sharded by rows over 2 gloo ranks on this machine's 2 cores, "
            "writers alternating per round; llmcodec at its defaults (all usable cores per rank). Sizes are "
            "the whole checkpoint folder (data files and `.metadata`).\n\n" + table)
    print(text)
    write_section("DCP checkpoints", f"python bench/dcp.py --rounds {args.rounds}", text)


if __name__ == "__main__":
    main()
