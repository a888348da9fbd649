"""The `llmcodec` command line: argument handling only; the work is in `llmcodec.files` (encode,
decode, verify), `llmcodec.stats` (info) and `llmcodec.folders`.

Expected failures print one line on stderr and exit 1; usage errors exit 2. The codec (numba) is
imported inside the commands, so `--help` and usage errors do not load it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import signal
import sys
from collections import Counter
from enum import Enum
from pathlib import Path

import typer

from .errors import LlmcodecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lossless compression of neural-network weight files (safetensors, GGUF).")

Threads = typer.Option(None, "--threads", "-T", min=0, help="Worker threads; 0: all usable cores.",
                       show_default="$LLMCODEC_THREADS, else all usable cores")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bar, no notes on stderr.")
Force = typer.Option(False, "--force", "-f", help="Replace an existing output file, or a folder that holds only "
                     "an earlier output of the same command.")
Output = typer.Option(None, "--output", "-o", help="Output file or folder; - for standard output.")


class LevelName(str, Enum):  # codec.LEVELS
    fast = "fast"
    max = "max"


Level = typer.Option(LevelName.fast, "--level", "-l", help="fast, or max: a smaller file for several times the "
                     "encoding work (every plane that codes smaller is coded; each tensor gets the chunk size that "
                     "codes it smallest unless --chunk-size is given). Any decoder reads either.")
Base = typer.Option(None, "--base", "-b", help="The base model the file's delta tensors are stored against "
                    "(a .safetensors/.gguf file or folder, or a .llmc file or folder).")

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwinding like Ctrl-C (so temporary outputs are removed) but exiting 143."""


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        from .format import MAJOR_VERSION, MINOR_VERSION

        typer.echo(f"llmcodec {version('llmcodec')} (container format {MAJOR_VERSION}.{MINOR_VERSION})")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Lossless compression of neural-network weight files (safetensors, GGUF)."""


def _fail(message: str) -> None:
    typer.echo(f"llmcodec: error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _errors():
    """Turn expected failures into one line on stderr and exit code 1; Ctrl-C exits 130, SIGTERM 143."""
    try:
        yield
    except LlmcodecError as exc:
        _fail(str(exc))
    except FileNotFoundError as exc:
        _fail(f"{exc.filename}: no such file or folder")
    except IsADirectoryError as exc:
        _fail(f"{exc.filename}: is a folder")
    except OSError as exc:
        _fail(f"{exc.filename or ''}: {exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        typer.echo("llmcodec: " + ("terminated" if isinstance(exc, Terminated) else "interrupted"), err=True)
        raise typer.Exit(EXIT_TERMINATED if isinstance(exc, Terminated) else EXIT_INTERRUPTED) from None


@contextlib.contextmanager
def _progress(description: str, total: int, quiet: bool):
    """A progress bar on stderr counting original (decoded) bytes against their total, or nothing
    when quiet or not on a terminal."""
    from . import output

    if quiet or not sys.stderr.isatty():
        yield output.check_interrupted_progress
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            output.check_interrupted()  # an interrupt numba swallowed stops the work here
            bar.advance(task, n)

        yield advance


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _check_input(path: Path) -> None:
    if not path.exists():
        _fail(f"{path}: no such file or folder")


STDIN = Path("-")


@contextlib.contextmanager
def _input(src: Path):
    """The input as a path the command may open more than once (a header read, then the work):
    `src` itself when it is a regular file or a folder; standard input (`-`), a pipe or a device
    copied first, as zstd reads them, to a temporary file of the same name, removed after."""
    if src != STDIN:
        _check_input(src)
        if src.is_file() or src.is_dir():
            yield src
            return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmcodec-") as tmp:
        spool = Path(tmp) / ("stdin" if src == STDIN else src.name)
        with (contextlib.nullcontext(sys.stdin.buffer) if src == STDIN else open(src, "rb")) as f, \
                open(spool, "wb") as out:
            shutil.copyfileobj(f, out, 1 << 20)
        yield spool


def _named_output(src: Path, read: Path, default) -> Path:
    """The default output for input `src` read from `read` (_input), named by `default(read)`:
    next to `src`, never in the temporary folder; standard input has no name to derive one from."""
    if src == STDIN:
        _fail("reading standard input (-): give the output name (--output)")
    return src.parent / default(read).name


# The kernels every command may run; when numba holds no compiled code for one of them, all are
# compiled before any progress bar starts (see _prepare_kernels).
_KERNELS = ("encode_chunk", "decode_chunks")


def _kernels_cached() -> bool:
    """Whether numba has compiled code on disk for every kernel in _KERNELS (when numba's
    internals differ from what this peeks at: assume so, and say nothing)."""
    try:
        from . import kernels

        return all(getattr(kernels, k)._cache._cache_file._load_index() for k in _KERNELS)
    except Exception:
        return True


def _prepare_kernels(quiet: bool) -> None:
    """The first run after installing compiles the kernels (about half a minute): say so, once,
    with a spinner on a terminal, and compile every kernel now, so that no progress bar sits frozen
    and no later command compiles again."""
    if _kernels_cached():
        return
    message = "compiling its kernels, once after installing (about half a minute)"
    if quiet:
        _compile_kernels()
    elif sys.stderr.isatty():
        from rich.console import Console

        with Console(stderr=True).status(f"llmcodec: {message}"):
            _compile_kernels()
    else:
        typer.echo(f"llmcodec: {message}", err=True)
        _compile_kernels()


def _compile_kernels() -> None:
    """Encode and decode a small file of each plane layout, through the paths commands use."""
    import tempfile

    import numpy as np

    from . import files
    from .sources import safetensors as safetensors_file

    with tempfile.TemporaryDirectory(prefix="llmcodec-compile-") as tmp:
        src, dst = Path(tmp, "k.safetensors"), Path(tmp, "k.llmc")
        values = np.linspace(-1, 1, 4096, dtype=np.float32)
        arrays = {"F32": values, "BF16": (values.view(np.uint32) >> 16).astype(np.uint16),
                  "F16": values.astype(np.float16), "U8": np.arange(4096, dtype=np.uint8)}
        entries = [(name, name, (4096,), a.nbytes) for name, a in arrays.items()]
        src.write_bytes(safetensors_file.build_header(entries, {}) + b"".join(a.tobytes() for a in arrays.values()))
        files.encode_file(src, dst, threads=1)
        files.verify_file(dst, threads=1)


def _check_output(path: Path, force: bool) -> None:
    """An existing output needs --force; a device, FIFO or `-` is written into, not replaced."""
    from .output import is_stream

    if os.path.lexists(path) and not force and not is_stream(path):
        _fail(f"{path} already exists; use --force to replace it")


def _report(src: Path, dst: Path, what: str = "", *, size: int) -> None:
    """The closing line on stderr: `src -> dst`, and the output's size against the input's `size`."""
    from .output import is_stream

    if is_stream(dst):
        typer.echo(f"{src} -> {dst}", err=True)
    else:
        typer.echo(f"{src} -> {dst}: {_size(dst) / max(size, 1):.2%} of the original{what}", err=True)


@app.command()
def encode(
    src: Path = typer.Argument(..., help="A .safetensors or .gguf file, or a folder with a sharded "
                             "checkpoint; - for standard input."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file or folder; - for standard output.",
                                       show_default="x.safetensors -> x.llmc, folder m -> m.llmc"),
    threads: int | None = Threads,
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1, help="Bytes of tensor data per chunk.",
                                          show_default="1 MiB"),
    base: Path | None = typer.Option(None, "--base", "-b", help="Store tensors as deltas against this base model "
                                     "where smaller (a fine-tune against what it was trained from); decoding then "
                                     "needs it."),
    level: LevelName = Level,
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """Compress a checkpoint losslessly (with --base: as a delta against its base model)."""
    with _errors(), _input(src) as read:
        from . import files

        if base is not None:
            _check_input(base)
        dst = output or _named_output(src, read, files.encoded_name)
        _check_output(dst, force)
        _prepare_kernels(quiet)
        with _progress(f"encode {read.name}", _size(read), quiet) as progress:
            files.encode_file(read, dst, threads=threads, chunk_size=chunk_size, progress=progress, base=base,
                              level=level.value)
        if not quiet:
            _report(src, dst, size=_size(read))


@app.command()
def quantize(
    src: Path = typer.Argument(..., help="A .safetensors file; - for standard input."),
    output: Path = typer.Option(..., "--output", "-o", help="The .llmc file to write; - for standard output."),
    bits: int = typer.Option(8, "--bits", help="8 or 4."),
    group_size: int = typer.Option(128, "--group-size", min=0,
                                   help="Columns sharing a scale; 0: one scale per row (output channel)."),
    scheme: str = typer.Option("symmetric", "--scheme", help="symmetric (w ~ q * scale) or affine (+ min)."),
    max_error: float | None = typer.Option(None, "--max-error", help="Largest relative (Frobenius) error per "
                                           "matrix, e.g. 0.01: the group size is halved (down to 16) until it is "
                                           "met; a matrix that no group size brings within it is stored "
                                           "losslessly, and listed."),
    threads: int | None = Threads,
    level: LevelName = Level,
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """LOSSY: quantize the weight matrices, then store the result losslessly (decode rebuilds it)."""
    if bits not in (4, 8) or scheme not in ("symmetric", "affine"):
        raise typer.BadParameter("--bits must be 8 or 4, --scheme symmetric or affine")
    if max_error is not None and not max_error > 0:
        raise typer.BadParameter("--max-error must be a positive number")
    _transform(src, output, force, quiet, "quantize", threads=threads, bits=bits, group_size=group_size,
               scheme=scheme, max_error=max_error, level=level.value)


@app.command()
def factorize(
    src: Path = typer.Argument(..., help="A .safetensors file; - for standard input."),
    output: Path = typer.Option(..., "--output", "-o", help="The .llmc file to write; - for standard output."),
    rank: int | None = typer.Option(None, "--rank", min=1, help="Keep this many singular values."),
    energy: float | None = typer.Option(None, "--energy", min=0.0, max=1.0,
                                        help="Keep the fewest singular values holding this share of the energy."),
    threads: int | None = Threads,
    level: LevelName = Level,
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """LOSSY: low-rank factors (truncated SVD) of the weight matrices where they are smaller, stored losslessly."""
    if (rank is None) == (energy is None):
        raise typer.BadParameter("give exactly one of --rank and --energy")
    _transform(src, output, force, quiet, "factorize", threads=threads, rank=rank, energy=energy, level=level.value)


def _transform(src: Path, dst: Path, force: bool, quiet: bool, kind: str, **options) -> None:
    with _errors(), _input(src) as read:
        from . import files

        _check_output(dst, force)
        _prepare_kernels(quiet)
        with _progress(f"{kind} {read.name}", _size(read), quiet) as progress:
            done = files.transform_file(read, dst, kind, progress=progress, **options)
        size = _size(read)
    for name, error in sorted(done.unmet.items()):
        typer.echo(f"llmcodec: {name}: no group size meets --max-error {options['max_error']:.3%} "
                   f"(smallest relative error {error:.3%}): stored losslessly", err=True)
    if not quiet:
        worst = max((t.relative_error for t in done.values()), default=0.0)
        groups = sorted(Counter(t.group_size for t in done.values()).items(), key=lambda gn: gn[0] or math.inf,
                        reverse=True)  # a row (0) first, then the largest
        chosen = (", group sizes chosen: " + ", ".join(f"{g or 'row'} x{n}" for g, n in groups)
                  if options.get("max_error") and groups else "")
        unmet = f", {len(done.unmet)} left unquantized" if done.unmet else ""
        _report(src, dst, f"; {len(done)} tensors {kind}d{chosen}{unmet}, largest relative error {worst:.3%}",
                size=size)


@app.command()
def decode(
    src: Path = typer.Argument(..., help="A .llmc file or folder; - for standard input."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output file or folder; - for standard output.",
                                       show_default="x.llmc -> its original's name, folder m.llmc -> m"),
    threads: int | None = Threads,
    base: Path | None = Base,
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """Restore the original checkpoint, byte-identical (its SHA-256 is checked)."""
    with _errors(), _input(src) as read:
        from . import files

        output = output or _named_output(src, read, files.decoded_name)
        _check_output(output, force)
        total = files.original_bytes(read)
        _prepare_kernels(quiet)
        with _progress(f"decode {read.name}", total, quiet) as progress:
            files.decode_file(read, output, threads=threads, progress=progress, base=base)
    if not quiet:
        typer.echo(f"{src} -> {output}", err=True)


@app.command()
def verify(
    src: Path = typer.Argument(..., help="A .llmc file or folder; - for standard input."),
    threads: int | None = Threads,
    base: Path | None = Base,
    quiet: bool = Quiet,
) -> None:
    """Decode everything in memory and check every checksum; exit 0 only if all is right."""
    with _errors(), _input(src) as read:
        from . import files

        total = files.original_bytes(read)
        _prepare_kernels(quiet)
        with _progress(f"verify {read.name}", total, quiet) as progress:
            files.verify_file(read, threads=threads, progress=progress, base=base)
    if not quiet:
        typer.echo(f"{src}: OK", err=True)


@app.command()
def info(
    src: Path = typer.Argument(..., help="A .llmc file, or an encoded folder (each of its .llmc shards); "
                               "- for standard input."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    limits: bool = typer.Option(False, "--limits", help="Also show how far each plane is from its entropy "
                                "limits: order-0, conditioned on each context tried, and adaptive."),
    threads: int | None = Threads,
    base: Path | None = typer.Option(None, "--base", "-b", help="The base model of a file of delta tensors: "
                                     "needed to count their planes' entropy."),
    quiet: bool = Quiet,
) -> None:
    """Per tensor: dtype, shape, sizes, ratio, and per plane its coded bits next to its entropy."""
    with _errors(), _input(src) as read:
        from . import bases, files, folders, stats

        paths = folders.shards(read) if read.is_dir() else [read]
        total = files.original_bytes(read)
        _prepare_kernels(quiet)
        with _progress(f"info {read.name}", total, quiet) as progress:
            opened = bases.open_base(base) if base is not None else None
            try:
                shards = [stats.file_stats(p, threads=threads, limits=limits, progress=progress, base=opened)
                          for p in paths]
            finally:
                if opened is not None:
                    opened.close()
    if as_json:
        for stats in shards:
            stats["tensors"] = [_without_none(dict(dataclasses.asdict(t), ratio=t.ratio)) for t in stats["tensors"]]
        typer.echo(json.dumps({"folder": str(src), "shards": shards} if src.is_dir() else shards[0], indent=2))
        return
    for i, stats in enumerate(shards):
        if i:
            typer.echo()
        (_print_limits if limits else _print_table)(stats)
        if stats.get("transforms"):
            _print_transforms(stats["transforms"])


def _print_transforms(done: list[dict]) -> None:
    header = ("tensor", "transform", "original", "stored", "saved", "relative error")
    rows = [(t["name"], f"quantize {t['bits']}-bit {t['scheme']}, groups of {t['group_size'] or 'a row'}"
             if t["kind"] == "quantize" else f"factorize, rank {t['rank']}", f"{t['original_bytes']:,}",
             f"{t['stored_bytes']:,}", f"{1 - t['stored_bytes'] / max(t['original_bytes'], 1):.1%}",
             f"{t['relative_error']:.3%}") for t in done]
    original, stored = sum(t["original_bytes"] for t in done), sum(t["stored_bytes"] for t in done)
    total = ("total", "", f"{original:,}", f"{stored:,}", f"{1 - stored / max(original, 1):.1%}", "")
    _echo_table("lossy pre-steps (decoding gives the rebuilt tensors)", header, rows, total, right=range(2, 6))


def _without_none(tensor: dict) -> dict:
    """A tensor's JSON without the fields that only --limits fills."""
    tensor["planes"] = [{k: v for k, v in p.items() if v is not None} for p in tensor["planes"]]
    return {k: v for k, v in tensor.items() if v is not None}


def _print_limits(stats: dict) -> None:
    """Bytes per tensor: coded, then the order-0, best-context and adaptive bounds; per plane the bits
    per symbol achieved / order-0 entropy / best context's entropy / its adaptive code, and which
    context (the one with the shortest adaptive code: on small planes the entropy overfits)."""
    header = ("tensor", "dtype", "coded", "order-0", "context", "adaptive",
              "planes: bits/symbol achieved/order-0/context/adaptive, best context")
    rows = [(t.name, t.dtype, f"{t.coded_bytes:,}", f"{t.order0_bytes:,.0f}", f"{t.context_bytes:,.0f}",
             f"{t.adaptive_bytes:,.0f}",
             "  ".join(f"{p.bits_per_symbol:.2f}/{p.entropy:.2f}/{p.best_bits:.2f}/{p.best_adaptive_bits:.2f} "
                       f"{p.best_context}" for p in t.planes))
            for t in stats["tensors"]]
    total = ("total", "", f"{stats['file_bytes']:,}", f"{stats['order0_bytes']:,.0f}",
             f"{stats['context_bytes']:,.0f}", f"{stats['adaptive_bytes']:,.0f}", "")
    _echo_table(f"{stats['file']}: coded bytes next to entropy bounds (contexts within chunks)", header, rows,
                total, right=range(2, 6))


def _print_table(stats: dict) -> None:
    header = ("tensor", "dtype", "shape", "original", "coded", "ratio", "planes: bits/symbol (entropy)")
    rows = [(t.name, t.dtype, str(t.shape), f"{t.original_bytes:,}", f"{t.coded_bytes:,}", f"{t.ratio:.3f}",
             "  ".join(f"{p.bits_per_symbol:.2f} ({p.entropy:.2f})" for p in t.planes)
             + (f"  [delta: {t.delta}]" if t.delta else "")) for t in stats["tensors"]]
    original, coded = stats["original_bytes"], stats["file_bytes"]
    total = ("total", "", "", f"{original:,}", f"{coded:,}", f"{coded / max(original, 1):.3f}", "")
    _echo_table(f"{stats['file']} (format {stats['version']}, source: {stats['source']})", header, rows, total,
                right=range(3, 6))
    if stats.get("base"):
        b = stats["base"]
        deltas = sum(t.delta is not None for t in stats["tensors"])
        typer.echo(f"{deltas} tensors are deltas against the base model {b['name']!r}; decoding needs it:")
        for f in b["files"]:
            typer.echo(f"  {f['path']}  {f['size']:,} bytes  SHA-256 {f['sha256']}")


def _echo_table(title: str, header: tuple, rows: list, total: tuple, right: range) -> None:
    """A plain-text table; the columns in `right` (sizes, ratios) right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows, total)) for i in range(len(header))]
    rule = tuple("-" * w for w in widths)
    typer.echo(title)
    for row in (header, rule, *rows, rule, total):
        typer.echo("  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths))).rstrip())


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out; exit 143. Both
    # are also noted in llmcodec.output, which commits no output after one (numba can lose them).
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _interrupt)
    # A warm start (numba, typer's pydantic) allocates ~185,000 objects that live until exit: collect
    # only after more new objects than that, and not at exit, where the interpreter's collections would
    # walk them all. A cold start's numba compiles still get collected.
    gc.set_threshold(250_000)
    try:
        app()
    finally:
        gc.freeze()


def _terminate(signum, frame) -> None:
    from . import output

    output.interrupted = Terminated
    raise Terminated


def _interrupt(signum, frame) -> None:
    from . import output

    output.interrupted = KeyboardInterrupt
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
