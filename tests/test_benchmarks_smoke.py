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
CORPUS = REPO.parent / "shared" / "corpus" / "deepquant"
sys.path.insert(0, str(REPO / "benchmarks"))

from common import Check, Table  # noqa: E402

needs_corpus = pytest.mark.skipif(not (CORPUS / "ResNet8" / "split.onnx").exists(),
                                  reason="needs ../shared/corpus (ResNet8, Autoencoder)")


@needs_corpus
def test_quick_run_prints_every_section_and_the_targets():
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--quick", "--no-targets", "--models", "Autoencoder",
                           "--chain-ops", "100", "200", "--batch", "2", "--repeat", "1"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for title in ("compile: seconds per stage", "cli: qirc", "scaling: synthetic conv/gemm chains, a fresh process each",
                  "interpreter: ResNet8 split.onnx, batch 2", "targets"):
        assert title in out, f"missing section {title!r} in:\n{out}"
    row = next(line for line in out.splitlines() if line.startswith("Autoencoder "))
    ops, import_s, lower_s, emit_s, compile_s = row.split()[1:6]
    assert int(ops) > 0 and abs(float(import_s) + float(lower_s) + float(emit_s) - float(compile_s)) < 2e-3
    # bit-exactness of the batched interpreter is a hard fact, not a speed: it must hold on any machine
    assert re.search(r"batched interpreter outputs equal per-sample runs\s+yes\s+yes\s+PASS", out), out
    assert re.search(r"'torch' in sys.modules after qirc \S+\s+no\s+no\s+PASS", out), out
    summary = re.search(r"(\d+) of (\d+) targets met", out)
    assert summary and int(summary.group(2)) == 5, out


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
    table = Table("title", ["name", "seconds"])
    table.add("a", 0.5)
    table.add("longer", 12.25)
    lines = table.render().splitlines()
    assert lines[0] == "title" and lines[3].endswith(" 0.500") and lines[4].endswith("12.250")
    assert len(lines[3]) == len(lines[4])


@needs_corpus
def test_a_missed_target_exits_1_unless_no_targets(monkeypatch, capsys):
    import importlib

    run = importlib.import_module("run")
    for name in run.THREAD_VARIABLES:  # run.main pins them in os.environ; monkeypatch restores them afterwards
        monkeypatch.setenv(name, "1")
    monkeypatch.setattr(run, "HELP_LIMIT_S", 0.0)  # no process starts in 0 s: the --help target must fail
    assert run.main(["--sections", "cli"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"qirc --help wall time \(median of 5\)\s+\S+ s\s+< 0 s\s+FAIL", out), out
    assert "1 of 2 targets met" in out and "missed: qirc --help wall time" in out
    assert run.main(["--sections", "cli", "--no-targets"]) == 0
    assert "(--no-targets: exit 0)" in capsys.readouterr().out
