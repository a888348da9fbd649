"""What the fuzz targets share: their command line, seeding, instrumentation, recording findings,
and `Draw`, which turns the fuzzer's bytes into choices.

    python tests/fuzz/fuzz_X.py --minutes 10 [CORPUS_DIR]   # -max_total_time=600; any libFuzzer flag
    python tests/fuzz/fuzz_X.py CRASH_FILE                    # run one input again

A target's `check(data)` returns when the property holds (decoded bit-exact, or refused with an
`LlmcodecError`) and raises otherwise: `Finding` for a property broken without an exception (wrong
data, a refusal of a file the writer wrote, too slow), any other exception as it came.

With $LLMCODEC_FUZZ_FINDINGS set to a folder, findings do not stop the run: each is counted under
a signature (its kind, or the exception type and the innermost llmcodec line that raised it), the
first inputs of each signature are saved there as `<target>-<n>.bin` with a line in `README.txt`
(`<target>-<n>.bin | signature | message`),
and fuzzing goes on. Crashes of the process itself (signals, libFuzzer's timeouts and memory
limit) still end it; `run_all.sh` starts it again.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBRARY = str(HERE.parent.parent / "llmcodec")
# numba compiles these modules' functions from their bytecode: they are imported uninstrumented.
COMPILED = ["llmcodec.jit", "llmcodec.kernels", "llmcodec.transforms"]
INSTRUMENTED = ["llmcodec.errors", "llmcodec.ggml", "llmcodec.sources.gguf", "llmcodec.dtypes", "llmcodec.format",
                "llmcodec.budget", "llmcodec.codec", "llmcodec.container", "llmcodec.loader", "llmcodec.api",
                "llmcodec.sources", "llmcodec.sources.safetensors", "llmcodec.files"]
SAVED_PER_SIGNATURE = 3  # inputs kept of each kind of finding


class Finding(Exception):
    """A property broken without an exception of its own; `kind` names the class of the finding."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


class Draw:
    """Choices drawn from the fuzzer's bytes, front to back; once they run out every draw gives
    its smallest answer, so any input is a complete, deterministic recipe."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]."""
        span = hi - lo
        if span <= 0:
            return lo
        nbytes = (span.bit_length() + 7) // 8
        raw = self.data[self.pos:self.pos + nbytes]
        self.pos += len(raw)
        return lo + int.from_bytes(raw, "little") % (span + 1)

    def bool(self) -> bool:
        return self.int(0, 1) == 1

    def chance(self, one_in: int) -> bool:
        """True about once in `one_in` draws (never once the bytes run out)."""
        return self.int(0, one_in - 1) == one_in - 1

    def pick(self, options):
        options = list(options)
        return options[self.int(0, len(options) - 1)]

    def bytes(self, n: int) -> bytes:
        """n bytes: the next ones of the input, then zeros."""
        raw = self.data[self.pos:self.pos + n]
        self.pos += len(raw)
        return raw + bytes(n - len(raw))

    def rest(self) -> bytes:
        raw = self.data[self.pos:]
        self.pos = len(self.data)
        return raw


def mutate(draw: Draw, data: bytes, max_edits: int = 4) -> bytes:
    """`data` with up to `max_edits` byte edits drawn from `draw`: overwrite, insert, delete, cut."""
    out = bytearray(data)
    for _ in range(draw.int(0, max_edits)):
        op = draw.int(0, 4)
        at = draw.int(0, max(len(out) - 1, 0))
        if op <= 1 and out:
            out[at] = draw.int(0, 255)
        elif op == 2:
            out[at:at] = draw.bytes(draw.int(1, 8))
        elif op == 3:
            del out[at:at + draw.int(1, 8)]
        else:
            del out[at:]
    return bytes(out)


def scratch_dir() -> Path:
    """A folder for the files one check writes (in memory where /dev/shm exists), removed when
    Python exits normally (libFuzzer's own exit skips that: the folder stays, nearly empty)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    path = Path(tempfile.mkdtemp(prefix="llmcodec-fuzz-", dir=base))
    atexit.register(shutil.rmtree, path, True)
    return path


def gist(exc: BaseException) -> str:
    """An error's type and message with what varies between inputs of one cause (paths, quoted
    names, numbers) taken out, short: to tell causes apart in a `Finding`'s kind."""
    text = re.sub(r"/\S*", "PATH", str(exc))
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "NAME", text)
    text = re.sub(r"[0-9]+", "N", text)
    return f"{type(exc).__name__}: {text[:90]}"


def signature(exc: BaseException) -> str:
    """What findings of one root cause share: the kind of a `Finding`; else the exception type
    and the innermost line of llmcodec (or, failing that, of anything) it passed through."""
    if isinstance(exc, Finding):
        return exc.kind
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(LIBRARY)] or frames
    where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
    return f"{type(exc).__name__}@{where}"


class Recorder:
    """Saves findings to $LLMCODEC_FUZZ_FINDINGS instead of stopping (see the module docstring)."""

    def __init__(self, target: str, folder: str):
        self.target = target
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}

    def note(self, data: bytes, sig: str, message: str) -> None:
        n = self.counts[sig] = self.counts.get(sig, 0) + 1
        if n > SAVED_PER_SIGNATURE:
            return
        number = 1 + sum(1 for _ in self.folder.glob(f"{self.target}-*.bin"))
        path = self.folder / f"{self.target}-{number}.bin"
        path.write_bytes(data)
        line = f"{path.name} | {sig} | {' '.join(message.split())[:400]}"
        with open(self.folder / "README.txt", "a") as f:
            f.write(line + "\n")
        print(f"FINDING {line}", file=sys.stderr, flush=True)


def guarded(check, recorder: Recorder | None, slow: float | None):
    """`check` with findings recorded by `recorder` (None: raised) and, with `slow`, an input
    taking more than `slow` seconds made a finding."""

    def run(data: bytes) -> None:
        start = time.perf_counter()
        try:
            check(data)
            elapsed = time.perf_counter() - start
            if slow is not None and elapsed > slow:
                raise Finding("slow", f"took {elapsed:.2f} s, over the bound of {slow} s")
        except Exception as exc:
            if recorder is None:
                raise
            recorder.note(data, signature(exc), f"{type(exc).__name__}: {exc}")

    return run


def instrument(extra: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Import llmcodec with atheris' coverage instrumentation, except the numba-compiled modules
    and `skip`; call it before anything else imports llmcodec."""
    import importlib

    import atheris

    for name in (*COMPILED, *skip):
        importlib.import_module(name)
    _trace_plain_comparisons_only(atheris)
    with atheris.instrument_imports(include=["llmcodec"]):
        for name in (*INSTRUMENTED, *extra):
            importlib.import_module(name)


def _trace_plain_comparisons_only(atheris) -> None:
    """Instrumented code calls `atheris._trace_cmp` for every comparison; given numpy arrays it
    leaks (fuzz_info's RSS grew by about 100 KB per input, to libFuzzer's 2 GB limit in a few
    minutes; the same loop uninstrumented stays flat). Comparisons of anything but numbers,
    strings and bytes, which its value tracing cannot use anyway, are done here instead."""
    import operator

    from atheris import version_dependent

    native = atheris._trace_cmp
    ops = (operator.lt, operator.le, operator.eq, operator.ne, operator.gt, operator.ge)  # dis.cmp_op's order
    shift = version_dependent.CMP_OP_SHIFT_AMOUNT
    plain = (int, float, str, bytes)

    def trace_cmp(obj1, obj2, opid, counter, is_const):
        if isinstance(obj1, plain) and isinstance(obj2, plain):
            return native(obj1, obj2, opid, counter, is_const)
        return ops[opid >> shift](obj1, obj2)

    atheris._trace_cmp = trace_cmp


def fuzz_main(argv: list[str], check, seeds, *, target: str, slow: float | None = None) -> None:
    """Run `check` under atheris with the command line of the module docstring. `seeds()` gives
    the inputs (name -> bytes) an empty corpus folder starts with; each is also run once before
    fuzzing starts, outside the time bound and unjudged, so that compiling the kernels is not
    counted.
    The target calls `instrument()` first, before it imports llmcodec."""
    import atheris

    args = [argv[0]]
    minutes = None
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--minutes":
            minutes = float(next(rest))
        else:
            args.append(arg)
    if minutes is not None:
        args.append(f"-max_total_time={max(1, round(60 * minutes))}")
    folders = [a for a in args[1:] if not a.startswith("-")]
    if not folders:
        folders = [tempfile.mkdtemp(prefix=f"llmcodec-{target}-")]
        args += folders
    corpus = Path(folders[0])
    initial = seeds()
    if not corpus.is_file():
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for name, data in initial.items():
                (corpus / name).write_bytes(data)
    if not any(a.startswith("-timeout=") for a in args):
        args.append("-timeout=20")  # an input taking longer is reported as a hang
    folder = os.environ.get("LLMCODEC_FUZZ_FINDINGS")
    recorder = Recorder(target, folder) if folder else None
    for data in initial.values():  # compile the kernels; libFuzzer runs the seeds again, and judges them
        try:
            check(data)
        except Exception:  # noqa: BLE001, S110
            pass
    atheris.Setup(args, guarded(check, recorder, slow))
    atheris.Fuzz()


def remove_all(folder: Path) -> None:
    """Empty `folder`, keeping it."""
    for path in folder.iterdir():
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
