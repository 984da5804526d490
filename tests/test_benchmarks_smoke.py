"""Keeps `benchmarks/run.py` from rotting: a tiny run of every section, and the target bookkeeping.

The benchmarks themselves are not tests (their numbers depend on the machine); this only checks that the suite
runs end to end on the smallest inputs and prints what the README promises.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from common import Check, Table  # noqa: E402


@pytest.mark.slow
def test_quick_run_prints_every_section_and_the_targets():
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--no-targets", "--models", "ResNet8",
                           "--chain-ops", "100", "200", "--batch", "2", "--repeat", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for title in ("command: qirc MODEL --target deeploy-siracusa -o DIR as a whole process", "compile: seconds per stage",
                  "cli: qirc", "scaling: synthetic conv/gemm chains, a fresh process each", "interpreter: integer IR",
                  "targets"):
        assert title in out, f"missing section {title!r} in:\n{out}"
    row = next(line for line in out.splitlines() if line.startswith("ResNet8 ") and "<= 0.6 s" in line)
    wall, user, system, cpu, peak = (float(v) for v in row.split()[1:6])
    assert abs(user + system - cpu) < 2e-3 and 20 < peak < 2000 and cpu > 0
    row = next(line for line in out.splitlines() if line.startswith("ResNet8 ") and "<= 0.6 s" not in line)
    ops, import_s, lower_s, emit_s, compile_s = row.split()[1:6]
    assert int(ops) > 0 and abs(float(import_s) + float(lower_s) + float(emit_s) - float(compile_s)) < 2e-3
    # facts, not speeds: they must hold on any machine
    assert re.search(r"ResNet8: batched interpreter outputs equal per-sample runs\s+yes\s+yes\s+PASS", out), out
    assert re.search(r"'torch' in sys.modules after qirc \S+\s+no\s+no\s+PASS", out), out
    assert re.search(r"'ml_dtypes' in sys.modules after qirc \S+\s+no\s+no\s+PASS", out), out
    summary = re.search(r"(\d+) of (\d+) targets met", out)
    assert summary and int(summary.group(2)) == 8, out


def test_measure_command_reports_the_child_alone():
    from common import measure_command
    # a child that allocates ~200 MB: its own peak, not the launcher's (~10 MB) nor this test process's
    r = measure_command([sys.executable, "-c", "b = bytearray(200 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"])
    assert r["exit"] == 0 and 200 <= r["peak_mb"] < 400 and r["cpu"] > 0
    small = measure_command([sys.executable, "-c", "pass"])
    assert small["peak_mb"] < 100


def test_run_rejects_an_unknown_section():
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--sections", "compile,warp"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown section(s) warp" in proc.stderr


def test_check_limits_and_table_alignment():
    assert Check("t", 0.99, 1.0, " s").passed and not Check("t", 1.0, 1.0, " s").passed
    assert Check("r", 0.25, 0.25, "x", at_least=True).passed and not Check("r", 0.2, 0.25, at_least=True).passed
    flag = Check.expect("torch", observed=True, wanted=False)
    assert (flag.passed, flag.measured, flag.target, flag.status) == (False, "yes", "no", "FAIL")
    assert Check("m", 95.2, 250, " MB").target == "< 250 MB"
    assert Check("c", 0.6, 0.6, " s", inclusive=True).passed and Check("c", 0.6, 0.6, " s", inclusive=True).target \
        == "<= 0.6 s"
    table = Table("title", ["name", "seconds"])
    table.add("a", 0.5)
    table.add("longer", 12.25)
    lines = table.render().splitlines()
    assert lines[0] == "title" and lines[3].endswith(" 0.500") and lines[4].endswith("12.250")
    assert len(lines[3]) == len(lines[4])


@pytest.mark.slow
def test_a_missed_target_exits_1_unless_no_targets(monkeypatch, capsys):
    import importlib

    run = importlib.import_module("run")
    for name in run.THREAD_VARIABLES:  # run.main pins them in os.environ; monkeypatch restores them afterwards
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(run, "HELP_LIMIT_S", 0.0)  # no process starts in 0 s: the --help target must fail
    assert run.main(["--sections", "cli"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"qirc --help CPU time \(median of 5\)\s+\S+ s\s+<= 0 s\s+FAIL", out), out
    assert "2 of 3 targets met" in out and "missed: qirc --help CPU time" in out
    assert run.main(["--sections", "cli", "--no-targets"]) == 0
    assert "(--no-targets: exit 0)" in capsys.readouterr().out
