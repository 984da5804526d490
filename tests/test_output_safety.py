"""qirc never removes or overwrites a file it did not write (qirc/outputs.py).

The scene is a user's project folder holding a model, a script and a data folder.  Every command that writes where
the user says (`qirc -o DIR`, `--dump-ir DIR`, `qirc zoo build -o DIR`, `qirc report -o FILE`, `qirc sim -o FILE`)
must refuse it with one line and exit 2, leaving every file as it was; an empty folder and an earlier output of
the same command are accepted, and an earlier output folder is replaced atomically.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bad_inputs as B
from real_models import deepquant

from qirc import outputs
from qirc.cli import main

MODEL = deepquant("Autoencoder")  # 128-64-32-64-128 FC autoencoder: compiles in a fraction of a second
TARGET = "deeploy-generic"
COMPILE_FILES = ["inputs.npz", "network.onnx", "outputs.npz", "qirc.json"]


@pytest.fixture
def project(tmp_path) -> Path:
    """A user's folder: a model, a script and a data folder with samples."""
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    shutil.copy(MODEL, root / "model.onnx")
    (root / "train.py").write_text("print('my training script')\n")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 128)).astype(np.float32)
    np.savez(root / "data" / "samples.npz", x=x)
    return root


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _refused(code, out, err, *words):
    assert code == 2, err
    assert out == ""
    (line,) = err.splitlines()
    assert line.startswith("qirc: error: ") and "Traceback" not in err
    for word in words:
        assert word in line, line
    return line


def test_compile_into_the_project_folder_is_refused_and_touches_nothing(project):
    """`qirc model.onnx --target T -o .` run inside the folder: the installed tool, exit 2, one line."""
    before = B.tree_listing(project.parent)
    proc = subprocess.run([sys.executable, "-m", "qirc", "model.onnx", "--target", TARGET, "-o", "."],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert "holds files qirc did not write (data/, model.onnx, train.py)" in line and str(project) in line
    assert B.tree_listing(project.parent) == before


@pytest.mark.parametrize("argv", [
    ["{p}/model.onnx", "--target", TARGET, "-o", "{p}"],
    ["{p}/model.onnx", "--target", TARGET, "-o", "{p}/data"],
    ["{p}/model.onnx", "--target", TARGET, "-o", "{p}/new", "--dump-ir", "{p}"],
    ["{p}/model.onnx", "--target", TARGET, "-o", "{p}/new", "--dump-ir", "{p}/data"],
], ids=["compile-o-project", "compile-o-data", "dump-ir-project", "dump-ir-data"])
def test_folders_holding_user_files_are_refused(project, argv, capsys):
    before = B.tree_listing(project.parent)
    code, out, err = _run([a.format(p=project) for a in argv], capsys)
    _refused(code, out, err, "holds files qirc did not write", "give a new or empty directory")
    assert B.tree_listing(project.parent) == before


def test_report_and_sim_do_not_overwrite_user_files(project, capsys):
    before = B.tree_listing(project.parent)
    code, out, err = _run(["report", str(project / "model.onnx"), "--target", TARGET, "-o",
                           str(project / "train.py")], capsys)
    _refused(code, out, err, str(project / "train.py"), "is not a qirc report page")
    code, out, err = _run(["sim", str(project / "model.onnx"), "--inputs", str(project / "data" / "samples.npz"),
                           "-o", str(project / "data" / "samples.npz")], capsys)
    _refused(code, out, err, "samples.npz", "is not a qirc sim output")
    assert B.tree_listing(project.parent) == before


def test_zoo_build_into_the_project_folder_is_refused_before_any_work(project, capsys):
    # the check comes before torch is needed: the same answer with or without the brevitas extra
    before = B.tree_listing(project.parent)
    code, out, err = _run(["zoo", "build", "dscnn-xs", "-o", str(project)], capsys)
    _refused(code, out, err, "holds files qirc did not write", "data/")
    assert B.tree_listing(project.parent) == before


def test_an_empty_folder_is_filled_in_place(project, capsys):
    out_dir = project / "build"
    out_dir.mkdir()
    inode = out_dir.stat().st_ino
    code, _, err = _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == COMPILE_FILES
    assert out_dir.stat().st_ino == inode  # the same folder (a shell inside it still sees the files)
    assert sorted(os.listdir(project)) == ["build", "data", "model.onnx", "train.py"]  # no temporaries left


def test_a_previous_output_is_replaced(project, capsys):
    out_dir = project / "build"
    assert _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir)], capsys)[0] == 0
    first = (out_dir / "qirc.json").read_text()
    code, _, err = _run([str(project / "model.onnx"), "--target", "deeploy-cortexm", "-o", str(out_dir)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(out_dir)) == COMPILE_FILES
    assert '"deeploy-cortexm"' in (out_dir / "qirc.json").read_text() and first != (out_dir / "qirc.json").read_text()
    assert sorted(os.listdir(project)) == ["build", "data", "model.onnx", "train.py"]
    # a user file added to a previous output makes it the user's: refused from then on
    (out_dir / "notes.txt").write_text("mine\n")
    before = B.tree_listing(project.parent)
    code, out, err = _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir)], capsys)
    _refused(code, out, err, "(notes.txt)")
    assert B.tree_listing(project.parent) == before


def test_replacing_a_previous_output_is_atomic(project, capsys, monkeypatch):
    """If the new folder cannot be renamed into place, the previous output is put back as it was."""
    out_dir = project / "build"
    assert _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir)], capsys)[0] == 0
    before = B.tree_listing(project.parent)
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(str(src)).startswith(".build.tmp-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    code, out, err = _run([str(project / "model.onnx"), "--target", "deeploy-cortexm", "-o", str(out_dir)], capsys)
    assert code == 1 and "cannot write the output directory (No space left on device)" in err
    assert B.tree_listing(project.parent) == before


def test_install_dir_never_removes_a_file_that_appeared_meanwhile(tmp_path, monkeypatch):
    """The old folder is emptied name by name: a file qirc did not write survives (in the renamed-aside folder)."""
    dest = tmp_path / "out"
    dest.mkdir()
    for name in COMPILE_FILES:
        (dest / name).write_text('{"target": "t", "passes": []}' if name == "qirc.json" else "old")
    new = Path(outputs.staging_dir(str(dest)))
    for name in COMPILE_FILES:
        (new / name).write_text('{"target": "t", "passes": []}' if name == "qirc.json" else "new")
    # a user file lands in the old output after the check: the swap goes on, the file is kept
    real_remove = outputs.remove_output

    def remove_output(folder, kind):
        Path(folder, "late.txt").write_text("mine")
        return real_remove(folder, kind)

    monkeypatch.setattr(outputs, "remove_output", remove_output)
    outputs.install_dir(str(new), str(dest), "compile")
    assert (dest / "network.onnx").read_text() == "new"
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith(".out.old-")]
    assert sorted(os.listdir(aside)) == ["late.txt"] and (aside / "late.txt").read_text() == "mine"


def test_dump_ir_replaces_an_earlier_dump_and_keeps_it_on_failure(project, capsys):
    dumps = project / "ir"
    out_dir = project / "build"
    code, _, err = _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir), "--dump-ir",
                         str(dumps), "-p", "dce"], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dumps)) == ["00-imported.qir", "01-lower-to-int.qir", "02-dce.qir",
                                         "03-deeploy-legalize.qir"]
    # a second run without the extra pass: no file of the first run is left to mislead
    code, _, err = _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(out_dir), "--dump-ir",
                         str(dumps)], capsys)
    assert code == 0, err
    assert sorted(os.listdir(dumps)) == ["00-imported.qir", "01-lower-to-int.qir", "02-deeploy-legalize.qir"]
    assert sorted(os.listdir(project)) == ["build", "data", "ir", "model.onnx", "train.py"]


def test_sim_replaces_its_own_earlier_output(project, capsys):
    out = project / "out.npz"
    argv = ["sim", str(project / "model.onnx"), "--inputs", str(project / "data" / "samples.npz"), "-o", str(out)]
    assert _run(argv, capsys)[0] == 0
    assert outputs._is_sim_output(str(out))
    assert _run(argv, capsys)[0] == 0  # an earlier qirc sim output is overwritten
    with np.load(out) as data:
        assert data[data.files[0]].shape == (2, 128)


def test_report_replaces_its_own_earlier_page(project, capsys):
    pytest.importorskip("matplotlib")
    page = project / "report.html"
    argv = ["report", str(project / "model.onnx"), "--target", TARGET, "--samples", "1", "-o", str(page)]
    assert _run(argv, capsys)[0] == 0
    assert outputs.REPORT_MARK in page.read_text()[:2000]
    assert _run(argv, capsys)[0] == 0


@pytest.mark.brevitas
def test_zoo_build_accepts_an_empty_folder_and_its_own_earlier_build(tmp_path, capsys):
    pytest.importorskip("brevitas")
    out_dir = tmp_path / "zoo"
    out_dir.mkdir()
    assert _run(["zoo", "build", "dscnn-xs", "-o", str(out_dir), "--target", TARGET], capsys)[0] == 0
    assert sorted(os.listdir(out_dir)) == [TARGET, "model.onnx"]
    assert sorted(os.listdir(out_dir / TARGET)) == COMPILE_FILES
    code, _, err = _run(["zoo", "build", "dscnn-xs", "-o", str(out_dir)], capsys)
    assert code == 0, err
    (out_dir / "model.onnx").write_bytes(MODEL.read_bytes())  # now a model the zoo did not write
    code, out, err = _run(["zoo", "build", "dscnn-xs", "-o", str(out_dir)], capsys)
    _refused(code, out, err, "(model.onnx)")


def test_emit_does_not_overwrite_the_model_but_replaces_its_own_text(project, capsys):
    before = B.tree_listing(project.parent)
    code, out, err = _run([str(project / "model.onnx"), "--emit", "qir", "-o", str(project / "model.onnx")], capsys)
    _refused(code, out, err, "model.onnx", "is not a qir or dot text qirc wrote")
    assert B.tree_listing(project.parent) == before
    for fmt in ("qir", "dot"):
        target = project / f"model.{fmt}"
        assert _run([str(project / "model.onnx"), "--emit", fmt, "-o", str(target)], capsys)[0] == 0
        assert _run([str(project / "model.onnx"), "--emit", fmt, "-o", str(target)], capsys)[0] == 0


@pytest.mark.parametrize("dump", ["build", "build/ir"])
def test_dump_ir_inside_the_output_directory_is_a_usage_error(project, capsys, dump):
    before = B.tree_listing(project.parent)
    code, out, err = _run([str(project / "model.onnx"), "--target", TARGET, "-o", str(project / "build"),
                           "--dump-ir", str(project / dump)], capsys)
    _refused(code, out, err, "must not be one inside the other")
    assert B.tree_listing(project.parent) == before
