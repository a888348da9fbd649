"""Checkpoint folders: the one definition of which files a folder holds, which of them are a
checkpoint's, and how a folder is written and replaced.

Invariants every door relies on (`encode`, `decode`, `verify`, `info`, `open`, `load_file`, the
torch helpers):
- A folder's files are its regular files at any depth (`walk`), by relative path; a symbolic link
  to a regular file counts as that file. A link to a folder, or a device, FIFO or socket inside
  it, is an error: it is neither followed nor silently dropped.
- A source folder's checkpoint files are its `*.safetensors` and `*.gguf` files (`source_files`);
  an encoded folder's shards are its `*.llmc` files (`shards`), subfolders included. So the tensors
  `open(folder)` lists are exactly those `verify` checks and `decode` restores. A folder without
  any is an error that names what it found.
- An existing destination folder is replaced only when everything in it is something this very
  write would produce (an earlier output of the same encode or decode): nothing else is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from .errors import FormatError, InvalidArgumentError
from .output import UMASK, check_interrupted, is_stream
from .sources import CHECKPOINT_SUFFIXES

SUFFIX = ".llmc"
_SHOWN = 5  # names an error lists before "and N more"


def is_folder(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.path.isdir(path)


def walk(folder) -> list[Path]:
    """Relative paths of every regular file under `folder`, at any depth, in POSIX path order."""
    root = Path(folder)
    found = []
    for top, dirs, files in os.walk(root, onerror=_raise):
        for name in dirs:
            if os.path.islink(os.path.join(top, name)):
                raise InvalidArgumentError(f"{os.path.join(top, name)}: a link to a folder; "
                                           f"llmcodec does not follow those in a checkpoint folder")
        for name in files:
            path = os.path.join(top, name)
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                raise InvalidArgumentError(f"{path}: a link to nothing") from None
            if not stat.S_ISREG(mode):
                raise InvalidArgumentError(f"{path}: not a regular file (a device, FIFO, socket or "
                                           f"link to a folder) inside a checkpoint folder")
            found.append(Path(path).relative_to(root))
    return sorted(found, key=lambda p: PurePosixPath(p).as_posix())


def _raise(exc: OSError) -> None:
    raise exc


def source_files(folder) -> list[Path]:
    """The relative paths of a source folder's checkpoint files (`*.safetensors`, `*.gguf`)."""
    files = walk(folder)
    chosen = [p for p in files if p.suffix in CHECKPOINT_SUFFIXES]
    if not chosen:
        raise InvalidArgumentError(f"{folder}: no checkpoint in this folder (no *.safetensors or *.gguf file); "
                                   f"found {_listing(files)}")
    return chosen


def shards(folder) -> list[Path]:
    """The paths of an encoded folder's containers (`*.llmc`, subfolders included), in order."""
    files = walk(folder)
    chosen = [Path(folder) / p for p in files if p.suffix == SUFFIX]
    if not chosen:
        raise InvalidArgumentError(f"{folder}: not an encoded checkpoint folder (no {SUFFIX} files in it); "
                                   f"found {_listing(files)}")
    return chosen


INDEX_NAME = "model.safetensors.index.json"  # a sharded safetensors checkpoint's index (kept by encode)


def model_shards(folder) -> list[Path]:
    """The containers a loader (`open`, `load_file`, the torch helpers) reads for an encoded
    folder: when it holds a safetensors index (`model.safetensors.index.json`, or the only
    `*.safetensors.index.json`), the encoded shards the index names, so an unrelated container in
    the folder is ignored; without an index (or with one that maps no tensor), every container
    (`shards`). `decode` and `verify`
    work on files, and take every container."""
    folder = Path(folder)
    index = _index_file(folder)
    if index is None:
        return shards(folder)
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise FormatError(f"{index}: not a readable safetensors index ({type(exc).__name__}: {exc})") from None
    if not names:  # an index that maps no tensor decides nothing
        return shards(folder)
    found = []
    for name in names:
        rel = PurePosixPath(name) if isinstance(name, str) else None
        if rel is None or rel.is_absolute() or ".." in rel.parts or rel.suffix not in CHECKPOINT_SUFFIXES:
            raise FormatError(f"{index}: names {name!r} as a shard, which is not a checkpoint file in the folder")
        path = folder.joinpath(*rel.parts).with_suffix(SUFFIX)
        if not path.is_file():
            raise FormatError(f"{index}: names shard {name}, but the folder holds no {path.name}")
        found.append(path)
    return found


def _index_file(folder: Path) -> Path | None:
    if (folder / INDEX_NAME).is_file():
        return folder / INDEX_NAME
    indexes = [p for p in folder.glob("*.safetensors.index.json") if p.is_file()]
    return indexes[0] if len(indexes) == 1 else None


def _listing(files: list[Path]) -> str:
    if not files:
        return "nothing"
    names = ", ".join(str(p) for p in files[:_SHOWN])
    return names + (f" and {len(files) - _SHOWN} more" if len(files) > _SHOWN else "")


def check_destination(src: Path, dst: Path) -> None:
    """Refuse a destination for a folder that is a stream (`-`, a device, a FIFO) or overlaps its
    source (inside it, or holding it)."""
    if is_stream(dst):
        raise InvalidArgumentError(f"{dst}: a folder is written to a folder, not to a stream or device")
    a, b = Path(os.path.realpath(src)), Path(os.path.realpath(dst))
    if a == b or a in b.parents or b in a.parents:
        raise InvalidArgumentError(f"{dst}: the output folder cannot be inside the folder {src} or hold it")


def check_replaceable(dst: Path, targets, what: str) -> None:
    """Refuse to replace an existing `dst` unless it is a folder holding only files in `targets`
    (relative paths) and the folders above them: an earlier output of the same write."""
    if not os.path.lexists(dst):
        return
    if dst.is_symlink() or not dst.is_dir():
        raise InvalidArgumentError(f"{dst} exists and is not a folder; not replacing it with the folder {what} writes")
    allowed = {Path(t) for t in targets}
    parents = {p for t in allowed for p in t.parents}
    foreign = []
    for top, dirs, files in os.walk(dst, onerror=_raise):
        for name in dirs + files:
            rel = Path(top, name).relative_to(dst)
            regular = os.path.isfile(Path(top, name)) and not os.path.islink(Path(top, name))
            if not (rel in allowed and regular) and not (name in dirs and rel in parents
                                                        and not os.path.islink(Path(top, name))):
                foreign.append(rel)
    if foreign:
        raise InvalidArgumentError(f"{dst}: not replacing this folder: it holds {_listing(sorted(foreign))}, "
                                   f"which {what} would not write (remove it yourself, or choose another output)")


def write_folder(dst: Path, targets: dict, build, what: str) -> None:
    """Make folder `dst` holding `targets` (relative output path -> anything `build` takes):
    `build(out_path, value)` writes each, into a hidden temporary folder beside `dst` that becomes
    `dst` only when complete. An existing `dst` is replaced only under `check_replaceable`.
    The new folder (and its subfolders) get the permissions the umask gives."""
    check_replaceable(dst, targets, what)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name[:200]}.", suffix=".tmp"))
    try:
        for out, value in targets.items():
            try:
                (tmp / out).parent.mkdir(parents=True, exist_ok=True)
                build(tmp / out, value)
            except OSError as exc:  # name the user's destination, not the hidden folder
                if exc.errno is not None and os.fspath(exc.filename or "").startswith(os.fspath(tmp)):
                    raise type(exc)(exc.errno, exc.strerror, os.fspath(dst / out)) from None
                raise
        os.chmod(tmp, 0o777 & ~UMASK)  # mkdtemp made it 0700
        check_interrupted()
        check_replaceable(dst, targets, what)  # again: the user may have added files meanwhile
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace(tmp: Path, dst: Path) -> None:
    """Move the finished folder `tmp` to `dst`; an existing `dst` (already checked) goes."""
    if not os.path.lexists(dst):
        os.replace(tmp, dst)
        return
    old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name[:200]}.", suffix=".old"))
    os.replace(dst, old / "x")
    os.replace(tmp, dst)
    shutil.rmtree(old, ignore_errors=True)
