"""The `llmcodec` command line: argument handling only; the work is in `llmcodec.files`.

Expected failures print one line on stderr and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import signal
import sys
from pathlib import Path

import typer

from . import files
from .container import ContainerReader
from .errors import LlmcodecError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Lossless compression of neural-network weight files (safetensors).")

Threads = typer.Option(None, "--threads", "-T", min=1, help="Worker threads [default: $LLMCODEC_THREADS or all cores].")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bar.")
Force = typer.Option(False, "--force", "-f", help="Overwrite an existing output.")


def _fail(message: str) -> None:
    typer.echo(f"llmcodec: error: {message}", err=True)
    raise typer.Exit(1)


@contextlib.contextmanager
def _errors():
    """Turn expected failures into one line on stderr and exit code 1."""
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
    except KeyboardInterrupt:
        typer.echo("llmcodec: interrupted", err=True)
        raise typer.Exit(130) from None


@contextlib.contextmanager
def _progress(description: str, total: int, quiet: bool):
    """A byte-count progress bar on stderr, or nothing when quiet or not on a terminal."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _check_input(path: Path) -> None:
    if not path.exists():
        _fail(f"{path}: no such file or folder")


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        _fail(f"{path} already exists; use --force to overwrite it")


@app.command()
def encode(
    src: Path = typer.Argument(..., help="A .safetensors file, or a folder with a sharded checkpoint."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output [default: x.safetensors -> x.llmc]."),
    threads: int | None = Threads,
    chunk_size: int | None = typer.Option(None, "--chunk-size", min=1,
                                             help="Bytes of tensor data per chunk [default: 1 MiB]."),
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """Compress a checkpoint losslessly."""
    _check_input(src)
    dst = output or files.encoded_name(src)
    _check_output(dst, force)
    with _errors(), _progress(f"encode {src.name}", _size(src), quiet) as progress:
        files.encode_file(src, dst, threads=threads, chunk_size=chunk_size, progress=progress)
    if not quiet:
        typer.echo(f"{src} -> {dst}: {_size(dst) / max(_size(src), 1):.2%} of the original", err=True)


@app.command()
def decode(
    src: Path = typer.Argument(..., help="A .llmc file or folder."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output [default: x.llmc -> x.safetensors]."),
    threads: int | None = Threads,
    force: bool = Force,
    quiet: bool = Quiet,
) -> None:
    """Restore the original checkpoint, byte-identical (its SHA-256 is checked)."""
    _check_input(src)
    with _errors():
        if output is None and not src.is_dir():
            with ContainerReader(src) as reader:
                output = files.decoded_name(src, reader.source.kind)
                total = reader.source.original_size or sum(t.nbytes for t in reader.tensors)
        else:
            output = output or files.decoded_name(src)
            total = _size(src)
        _check_output(output, force)
        with _progress(f"decode {src.name}", total, quiet) as progress:
            files.decode_file(src, output, threads=threads, progress=progress)
    if not quiet:
        typer.echo(f"{src} -> {output}", err=True)


@app.command()
def verify(
    src: Path = typer.Argument(..., help="A .llmc file or folder."),
    threads: int | None = Threads,
    quiet: bool = Quiet,
) -> None:
    """Decode everything in memory and check every checksum; exit 0 only if all is right."""
    _check_input(src)
    with _errors(), _progress(f"verify {src.name}", _size(src), quiet) as progress:
        files.verify_file(src, threads=threads, progress=progress)
    if not quiet:
        typer.echo(f"{src}: OK", err=True)


@app.command()
def info(
    src: Path = typer.Argument(..., help="A .llmc file."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    threads: int | None = Threads,
) -> None:
    """Per tensor: dtype, shape, sizes, ratio, and per plane its coded bits next to its entropy."""
    _check_input(src)
    with _errors():
        stats = files.file_stats(src, threads=threads)
    if as_json:
        stats["tensors"] = [dict(dataclasses.asdict(t), ratio=t.ratio) for t in stats["tensors"]]
        typer.echo(json.dumps(stats, indent=2))
        return
    _print_table(stats)


def _print_table(stats: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{stats['file']} (format {stats['version']}, source: {stats['source']})")
    for col in ("tensor", "dtype", "shape", "original", "coded", "ratio", "planes: bits/symbol (entropy)"):
        table.add_column(col, justify="right" if col in ("original", "coded", "ratio") else "left")
    for t in stats["tensors"]:
        planes = "  ".join(f"{p.bits_per_symbol:.2f} ({p.entropy:.2f})" for p in t.planes)
        table.add_row(t.name, t.dtype, str(t.shape), f"{t.original_bytes:,}", f"{t.coded_bytes:,}",
                      f"{t.ratio:.3f}", planes)
    original, coded = stats["original_bytes"], stats["file_bytes"]
    table.add_row("total", "", "", f"{original:,}", f"{coded:,}", f"{coded / max(original, 1):.3f}", "",
                  end_section=True)
    Console(width=200 if not sys.stdout.isatty() else None).print(table)


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out.
    signal.signal(signal.SIGTERM, _terminate)
    app()


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
