"""Shared pieces of the benchmark scripts: corpus paths, timing, child processes, result tables.

    from common import CORPUS, best_of, Table, Check, run_child

Benchmarks are scripts, not tests; `benchmarks/run.py` runs the suite and compares with the targets.  Times of a
process sharing its cores with others are noisy, so the scripts report the best of several runs (the least
disturbed one) and, where a ratio decides a target, CPU time next to wall time.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
BENCH_DIR = REPO / "benchmarks"
CORPUS = REPO.parent / "shared" / "corpus" / "deepquant"
# Smallest first: `--quick` and the smoke test take the head of this list.
CORPUS_MODELS = ["Autoencoder", "Autoencoder-MLPerf", "DSCNN-XS", "DSCNN-S", "ResNet8", "MobileNetV2-VWW"]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


EXAMPLES = REPO / "examples"
#: benchmark name -> folder under examples/ (zoo networks, see qirc/zoo/make_examples.py); smallest first
EXAMPLE_MODELS = {"ResNet8": "resnet8", "MobileNetV2-VWW": "mobilenetv2-vww"}
#: DeepQuant files shipped for the tests (tests/data/README.md)
SHIPPED = REPO / "tests" / "data" / "deepquant"


def corpus_model(name: str, form: str = "split.onnx") -> Path:
    """A corpus network for the single-purpose scripts: the DeepQuant file of ../shared/corpus when that folder is
    there, else the copy shipped under tests/data/deepquant, else (for split.onnx) the zoo build of the same network
    under examples/.  The path may not exist (callers skip it): nothing outside the repository is required."""
    for folder in (CORPUS, SHIPPED):
        if (folder / name / form).exists():
            return folder / name / form
    if form == "split.onnx" and (EXAMPLES / name.lower() / "model.onnx").exists():
        return EXAMPLES / name.lower() / "model.onnx"
    return SHIPPED / name / form


def example_model(name: str) -> Path:
    """examples/<folder>/model.onnx of a benchmark model name (may not exist yet: callers report it missing)."""
    return EXAMPLES / EXAMPLE_MODELS.get(name, name.lower()) / "model.onnx"


def qirc_command() -> List[str]:
    """The installed `qirc` console script next to this Python (not a version-manager shim in front of it, which
    adds its own start-up time), else `qirc` on PATH, else `python -m qirc`."""
    import shutil
    beside = Path(sys.executable).parent / "qirc"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("qirc")
    return [found] if found else [sys.executable, "-m", "qirc"]


# A tiny launcher measures a command the way `/usr/bin/time` does: it forks and execs the command and reads the
# child's CPU time and peak RSS with os.wait4.  It runs in its own small process because Linux carries the peak RSS
# of the address space a child was forked from (or vfork-borrowed) into the child's ru_maxrss across execve: spawned
# straight from a benchmark process that holds a compiled model, the command would report that process's peak.
_LAUNCHER = """import json, os, sys, time
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
                  "user": usage.ru_utime, "sys": usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024,
                  "exit": os.waitstatus_to_exitcode(status)}))
"""


def measure_command(argv: Sequence[str], env: Optional[Dict[str, str]] = None, cwd: Optional[str] = None) -> dict:
    """Run `argv` (argv[0] an executable path) once; {"wall", "cpu", "user", "sys", "peak_mb", "exit"} of that
    process alone (its stdout is discarded)."""
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *argv], capture_output=True, text=True,
                          env=env if env is not None else thread_env(1), cwd=cwd or str(REPO), timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"cannot measure {' '.join(argv)}: {proc.stderr.strip()[-500:]}")
    return json.loads(lines[-1])


def thread_env(threads: int, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """An environment in which numpy's BLAS and OpenMP use `threads` threads (read once, when numpy loads: set it
    for a child process, or before the first numpy import)."""
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    # this repository's qirc first, whatever is installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    return env


# ----- timing ------------------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """One measurement: wall and CPU seconds of the least disturbed run, and what the call returned."""

    wall: float
    cpu: float
    result: object = None


def best_of(fn: Callable[[], object], repeat: int = 3, warmup: int = 0) -> Timing:
    """Run `fn` `warmup` times untimed, then `repeat` times; the run with the smallest wall time."""
    for _ in range(warmup):
        fn()
    best = None
    for _ in range(max(1, repeat)):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = fn()
        timing = Timing(time.perf_counter() - wall0, time.process_time() - cpu0, result)
        if best is None or timing.wall < best.wall:
            best = timing
    return best


def median_wall(fn: Callable[[], object], repeat: int = 5) -> float:
    times = []
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ----- child processes ---------------------------------------------------------------------------------------------
def run_child(code: str, env: Optional[Dict[str, str]] = None, timeout: float = 600) -> dict:
    """Run `code` in a fresh interpreter (benchmarks/ on its path); it must print one JSON object as its last
    stdout line, which is returned.  A failing child raises RuntimeError with its stderr's last lines."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env if env is not None else thread_env(1), cwd=str(REPO))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"benchmark child failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1])


# ----- results -----------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """A measured quantity against its target: `value <= limit` (or >= when `at_least`)."""

    name: str
    value: float
    limit: float
    unit: str = ""
    at_least: bool = False
    inclusive: bool = False  # value <= limit passes (the "<=" targets)

    @classmethod
    def expect(cls, name: str, observed: bool, wanted: bool) -> "Check":
        """A yes/no check: passes when `observed == wanted`."""
        check = cls(name, float(observed == wanted), 1.0, at_least=True)
        check.shown, check.wanted = ("yes" if observed else "no"), ("yes" if wanted else "no")
        return check

    @property
    def passed(self) -> bool:
        if self.at_least:
            return self.value >= self.limit
        return self.value <= self.limit if self.inclusive else self.value < self.limit

    @property
    def target(self) -> str:
        wanted = getattr(self, "wanted", None)
        op = ">=" if self.at_least else "<=" if self.inclusive else "<"
        return wanted if wanted is not None else f"{op} {self.limit:g}{self.unit}"

    @property
    def measured(self) -> str:
        shown = getattr(self, "shown", None)
        return shown if shown is not None else f"{self.value:.3g}{self.unit}"

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


class Table:
    """Rows of cells printed with aligned columns (numbers right-aligned)."""

    def __init__(self, title: str, header: Sequence[str]):
        self.title = title
        self.header = list(header)
        self.rows: List[List[str]] = []

    def add(self, *cells) -> None:
        self.rows.append([fmt(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(r[i]) if i < len(r) else 0 for r in [self.header] + self.rows)
                  for i in range(len(self.header))]
        numeric = [all(_is_number(r[i]) for r in self.rows if i < len(r) and r[i]) for i in range(len(widths))]

        def line(cells):
            return "  ".join((c.rjust(w) if num else c.ljust(w))
                             for c, w, num in zip(cells, widths, numeric)).rstrip()

        out = [self.title, line(self.header), line(["-" * w for w in widths])]
        out += [line(r) for r in self.rows]
        return "\n".join(out) + "\n"

    def print(self, file=None) -> None:
        print(self.render(), file=file or sys.stdout, flush=True)


def fmt(cell) -> str:
    """Floats with 3 significant decimals (4 below 0.01), None as '-'."""
    if cell is None:
        return "-"
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, float):
        return f"{cell:.4f}" if abs(cell) < 0.01 else f"{cell:.3f}" if abs(cell) < 100 else f"{cell:.1f}"
    return str(cell)


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("x%"))
        return True
    except ValueError:
        return text == "-"


def print_rows(header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """A table without a title (for the older single-purpose scripts)."""
    table = Table("", header)
    for row in rows:
        table.add(*row)
    print(table.render().lstrip("\n"), end="")
