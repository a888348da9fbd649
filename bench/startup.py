"""Start-up in a new process: llmcodec's first answers against safetensors', and the command line.

    python bench/startup.py

Cold start (issue 17's targets): MiniLM-L6's real fp32 weights (91 MB) as a safetensors file and as
an .llmc file (defaults), each step a new Python process, timed from outside (wall, and CPU time
from the children's rusage) and peak RSS (VmHWM), 7 rounds with the paths alternating:
- `open + keys`: `llmcodec.open(f)` / `safetensors.safe_open(f, "np")`, then `keys()`;
- `open + smallest tensor`: the same, then `get_tensor` of the smallest tensor.
Each path is also run once to list which heavy modules it imported (sys.modules at the end), once
with its steps timed inside the process (import, open, keys, first get_tensor, the numba kernels'
loading included), and once under `python -X importtime` for the largest imports.

Command line: the installed `llmcodec` on 1000-element fp32 files, once per command to fill numba's
on-disk cache, then 7 rounds; one more run of `verify` starts from an empty numba cache.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import markdown_table, write_section  # noqa: E402

REPEAT = 7
SCRIPT = Path(sys.executable).with_name("llmcodec")
CLI = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "llmcodec.cli"]


def run(args: list[str], cwd: Path, env: dict | None = None) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one run; CPU time is the steadier when the machine is busy."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(args, cwd=cwd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.0f}"


HEAVY = ("numpy", "numba", "llvmlite", "ml_dtypes", "torch", "safetensors", "xxhash")
PROBE = ("import sys\nprint('MODULES', ' '.join(m for m in {heavy!r} if m in sys.modules))\n"
         "print('HWM', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])\n")


def cold_paths(st: Path, llmc: Path, smallest: str) -> dict[str, str]:
    """name -> Python code run in a new process; the `t(...)` marks time the steps inside it."""
    head = "import time\n_t0 = time.perf_counter()\ndef t(what): print('STEP', what, time.perf_counter() - _t0)\n"
    st_open = f"from safetensors import safe_open\nt('import')\nf = safe_open({str(st)!r}, 'np')\nt('open')\n"
    ll_open = f"import llmcodec\nt('import')\nf = llmcodec.open({str(llmc)!r})\nt('open')\n"
    keys = "k = list(f.keys())\nt('keys')\n"
    tensor = f"a = f.get_tensor({smallest!r})\nt('get_tensor')\n"
    return {
        "safetensors open + keys": head + st_open + keys,
        "llmcodec open + keys": head + ll_open + keys,
        "safetensors open + smallest tensor": head + st_open + keys + tensor,
        "llmcodec open + smallest tensor": head + ll_open + keys + tensor,
    }


def run_code(code: str, cwd: Path, extra: list[str] = ()) -> tuple[float, float, str, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, *extra, "-c", code], cwd=cwd, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, out.stdout, out.stderr


def import_breakdown(stderr: str, top: int = 4) -> str:
    """From a `-X importtime` run: the largest top-level imports, then the heavy modules wherever
    they were first imported (cumulative ms)."""
    top_level, heavy = [], {}
    for line in stderr.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "cumulative" in line:
            continue
        name = parts[2].strip()
        if parts[2].startswith(" ") and not parts[2].startswith("   "):  # top level: no indentation
            top_level.append((int(parts[1]), name))
        if name in HEAVY:
            heavy.setdefault(name, int(parts[1]))
    top_level.sort(reverse=True)
    return (", ".join(f"{name} {us / 1e3:.0f}" for us, name in top_level[:top]) + "; of which "
            + ", ".join(f"{name} {us / 1e3:.0f}" for name, us in heavy.items()))


def cold_start(tmp: Path) -> str:
    import llmcodec
    from safetensors.numpy import load_file as st_load

    sys.path.insert(0, str(Path(__file__).parent))
    from weights import ensure_packages, minilm_path

    ensure_packages()
    st = minilm_path()
    llmc = tmp / "minilm.llmc"
    llmcodec.encode_file(st, llmc)
    tensors = st_load(str(st))
    smallest = min(tensors, key=lambda k: (tensors[k].nbytes, k))
    paths = cold_paths(st, llmc, smallest)
    probe = PROBE.format(heavy=HEAVY)
    for code in paths.values():  # warm: page cache, numba's on-disk cache
        run_code(code, tmp)
    runs = {name: [] for name in paths}
    for _ in range(REPEAT):
        for name, code in paths.items():
            wall, cpu, out, _ = run_code(code + probe, tmp)
            hwm = int(out.split("HWM", 1)[1].split()[0]) / 1024
            runs[name].append((wall, cpu, hwm))
    rows, med = [], {}
    for name, code in paths.items():
        walls, cpus, hwms = zip(*runs[name])
        med[name] = (statistics.median(walls), statistics.median(cpus), statistics.median(hwms))
        _, _, out, _ = run_code(code + probe, tmp)
        modules = out.split("MODULES", 1)[1].splitlines()[0].split()
        steps = [line.split()[1:] for line in out.splitlines() if line.startswith("STEP")]
        inside, last = [], 0.0
        for what, at in steps:
            inside.append(f"{what} {(float(at) - last) * 1e3:.0f}")
            last = float(at)
        _, _, _, err = run_code(code, tmp, ["-X", "importtime"])
        rows.append([name, ms(med[name][0]), ms(med[name][1]), f"{med[name][2]:.0f}", ", ".join(modules),
                     "; ".join(inside), import_breakdown(err)])
    table = markdown_table(["new process", "wall ms (median)", "CPU ms (median)", "peak RSS MB (median)",
                            "heavy modules imported", "steps inside, ms",
                            "largest top-level imports; heavy modules (cumulative ms)"], rows)
    targets = []
    for what, bound in (("open + keys", 2.0), ("open + smallest tensor", 3.0)):
        ours, theirs = med[f"llmcodec {what}"], med[f"safetensors {what}"]
        targets.append([what, f"{ours[0] / theirs[0]:.1f}x wall, {ours[1] / theirs[1]:.1f}x CPU",
                        f"<= {bound:.0f}x", f"+{ours[2] - theirs[2]:.0f} MB", "<= +64 MB"])
    target_table = markdown_table(["llmcodec / safetensors", "time", "target", "peak RSS", "target"], targets)
    print(table)
    print(target_table)
    return (f"MiniLM-L6 fp32 (91 MB, {len(tensors)} tensors; smallest `{smallest}`), safetensors file "
            f"and its .llmc; new processes, {REPEAT} alternating rounds; see the module docstring.\n\n"
            f"{table}\n\n{target_table}")


def main() -> None:
    import llmcodec
    from safetensors.numpy import save_file as st_save

    with tempfile.TemporaryDirectory() as tmp:
        write_section("Cold start: first answers in a new process", "python bench/startup.py", cold_start(Path(tmp)))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        llmcodec.save_file({"w": np.zeros(1000, np.float32)}, tmp / "tiny.llmc")
        st_save({"w": np.linspace(-1, 1, 1000, dtype=np.float32)}, tmp / "tiny.safetensors")
        commands = {
            "python -c 'import llmcodec'": [sys.executable, "-c", "import llmcodec"],
            "llmcodec verify tiny.llmc": [*CLI, "verify", "tiny.llmc"],
            "llmcodec info tiny.llmc": [*CLI, "info", "tiny.llmc"],
            "llmcodec encode tiny.safetensors": [*CLI, "encode", "-f", "-o", "out.llmc", "tiny.safetensors"],
            "llmcodec decode tiny.llmc": [*CLI, "decode", "-f", "-o", "out.safetensors", "tiny.llmc"],
        }
        for args in commands.values():
            run(args, tmp)
        times = {name: [] for name in commands}
        for _ in range(REPEAT):
            for name, args in commands.items():
                times[name].append(run(args, tmp))
        with tempfile.TemporaryDirectory() as cache:
            cold = run(commands["llmcodec verify tiny.llmc"], tmp, env={**os.environ, "NUMBA_CACHE_DIR": cache})
    rows = []
    for name, runs in times.items():
        walls, cpus = zip(*runs)
        rows.append([name, ms(statistics.median(walls)), ms(statistics.median(cpus)), ms(min(walls))])
    rows.append(["llmcodec verify tiny.llmc, empty numba cache (1 run)", ms(cold[0]), ms(cold[1]), ""])
    table = markdown_table(["command", "wall ms (median)", "CPU ms (median)", "wall ms (min)"], rows)
    body = (f"Fresh processes running the installed `llmcodec` on 1000-element fp32 files, {REPEAT} runs each; "
            f"numba's on-disk cache warm except in the last row.\n\n{table}")
    write_section("CLI start-up (warm numba cache)", "python bench/startup.py", body)
    print(table)


if __name__ == "__main__":
    main()
