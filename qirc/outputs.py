"""Where qirc writes: it never removes or overwrites a file it did not write.

Every command that writes a folder or a file given on the command line goes through this module:

    folders  `qirc MODEL -o DIR` (a compile output), `--dump-ir DIR` (IR dumps), `qirc zoo build -o DIR`
    files    `qirc report -o FILE.html`, `qirc sim -o FILE.npz`, `qirc MODEL --emit qir|dot -o FILE`

A folder that exists must be empty or hold a previous output of the same command, recognised by its contents
(`KINDS`); a file that exists must be a previous output of the same command, recognised by a mark qirc writes into
it (a `<meta name="generator">` in a report, the zip comment of a sim npz) or by its first line (emitted text).
Anything else is a UsageError (exit 2) raised before any work, naming what qirc did not write.  A previous output
folder is replaced atomically: the new folder is completed next to it and swapped in with two renames; the old one
is then emptied name by name (only the names its kind writes, never `rmtree`) and removed.  An empty folder is
filled in place (it keeps its inode, so a shell whose working directory it is still sees the files).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from typing import Dict, List

from .qir.diagnostics import QircError, UsageError

#: the files a compile writes (qirc.driver.FILES)
COMPILE_FILES = ("network.onnx", "inputs.npz", "outputs.npz", "qirc.json")
#: an IR dump: NN-stage.qir or NN-stage.dot
_DUMP_FILE = re.compile(r"^\d{2,}-[A-Za-z0-9_.{}=,-]+\.(qir|dot)$")
#: the mark in the first bytes of a page `qirc report` writes
REPORT_MARK = '<meta name="generator" content="qirc report">'
#: the zip comment of an npz `qirc sim` writes
SIM_MARK = b"written by qirc sim"


def _is_compile_report(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(report, dict) and "target" in report and "passes" in report


def _compile_entry(folder: str, name: str) -> bool:
    path = os.path.join(folder, name)
    if name not in COMPILE_FILES or not os.path.isfile(path) or os.path.islink(path):
        return False
    return name != "qirc.json" or _is_compile_report(path)


def _is_compile_output(folder: str) -> bool:
    names = _listdir(folder)
    return bool(names) and "qirc.json" in names and all(_compile_entry(folder, n) for n in names)


def _dump_entry(folder: str, name: str) -> bool:
    path = os.path.join(folder, name)
    return bool(_DUMP_FILE.match(name)) and os.path.isfile(path) and not os.path.islink(path)


def _zoo_entry(folder: str, name: str) -> bool:
    path = os.path.join(folder, name)
    if os.path.islink(path):
        return False
    if os.path.isdir(path):  # `qirc zoo build --target T` compiles into DIR/T
        return _is_compile_output(path)
    return name == "model.onnx" and _is_zoo_model(path)


def _is_zoo_model(path: str) -> bool:
    try:
        from . import _onnx as onnx  # not `import onnx`: its ml_dtypes import costs about a second
        model = onnx.load(path, load_external_data=False)
    except Exception:  # any unreadable file is simply not ours
        return False
    return any(p.key == "qirc.zoo.network" for p in model.metadata_props)


#: folder kind -> (what it is, in messages; does an entry of such a folder belong to qirc?)
KINDS: Dict[str, tuple] = {
    "compile": ("output directory", _compile_entry),
    "dump": ("--dump-ir directory", _dump_entry),
    "zoo": ("output directory", _zoo_entry),
}


def _listdir(folder: str) -> List[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def foreign_entries(folder: str, kind: str) -> List[str]:
    """The entries of an existing `folder` that an output of `kind` does not write (folders get a trailing /)."""
    _, ours = KINDS[kind]
    return [name + ("/" if os.path.isdir(os.path.join(folder, name)) else "")
            for name in _listdir(folder) if not ours(folder, name)]


def _shown(names: List[str], limit: int = 5) -> str:
    more = len(names) - limit
    return ", ".join(names[:limit]) + (f" and {more} more" if more > 0 else "")


def check_output_dir(path: str, kind: str, option: str = "-o") -> None:
    """Refuse (UsageError) an output folder qirc may not write: a file, or a folder holding anything that is not
    a previous output of `kind`; an absent folder under a file is a QircError naming that file."""
    what, _ = KINDS[kind]
    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option}: {what} '{path}' exists and is not a directory")
    if os.path.isdir(path):
        foreign = foreign_entries(path, kind)
        if foreign:
            raise UsageError(f"{option}: {what} '{path}' holds files qirc did not write ({_shown(foreign)}); "
                             f"give a new or empty directory, or a previous qirc output, which is replaced")
        return
    ancestor = os.path.dirname(path)
    while not os.path.exists(ancestor) and os.path.dirname(ancestor) != ancestor:
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        prefix = "--dump-ir: " if option == "--dump-ir" else ""
        raise QircError(f"{prefix}cannot write the {what.replace('--dump-ir ', '')} ('{ancestor}' is a file, not a "
                        f"directory)", file=path)


def staging_dir(dest: str) -> str:
    """A new empty folder next to `dest` (same file system, so the final rename is atomic); creates the parent."""
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.tmp-", dir=parent)
    os.chmod(tmp, 0o755 & ~_umask())
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_output(folder: str, kind: str) -> bool:
    """Remove what an output of `kind` wrote in `folder` (file by file) and the folder if that empties it; returns
    whether the folder is gone.  Entries qirc did not write are left where they are."""
    _, ours = KINDS[kind]
    for name in _listdir(folder):
        path = os.path.join(folder, name)
        if not ours(folder, name):
            continue
        if os.path.isdir(path):
            remove_output(path, "compile")
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    try:
        os.rmdir(folder)
        return True
    except OSError:
        return False


def install_dir(new: str, dest: str, kind: str, option: str = "-o") -> None:
    """Put the finished folder `new` at `dest`, following the module's rule (the caller removes `new` on error).

    Absent `dest`: one rename.  Empty `dest`: `new`'s entries are moved in.  A previous output: `dest` is renamed
    aside, `new` renamed into place (the old one renamed back if that fails), then the old one removed by
    `remove_output`.  `dest` is checked again here, so a file that appeared since the start is never removed."""
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    check_output_dir(dest, kind, option)
    if not _listdir(dest):
        for name in _listdir(new):
            os.rename(os.path.join(new, name), os.path.join(dest, name))
        os.rmdir(new)
        return
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=os.path.dirname(dest))
    os.rmdir(old)
    os.rename(dest, old)
    try:
        os.rename(new, dest)
    except BaseException:
        os.rename(old, dest)
        raise
    remove_output(old, kind)


# ----- single files ----------------------------------------------------------------------------------------------
def _is_report(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return REPORT_MARK.encode() in head


def _is_sim_output(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.comment == SIM_MARK
    except (OSError, zipfile.BadZipFile):
        return False


def _is_emitted_text(path: str) -> bool:
    """Text `qirc --emit` writes: a qir module or a Graphviz digraph (its first line that is not a comment)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    for line in head.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if line and not line.startswith("//"):
            return line.startswith("qir.module") or line.startswith("digraph")
    return False


FILE_KINDS: Dict[str, tuple] = {
    "report": ("qirc report page", _is_report),
    "sim": ("qirc sim output", _is_sim_output),
    "emit": ("qir or dot text qirc wrote", _is_emitted_text),
}


def check_output_file(path: str, kind: str, option: str = "-o") -> None:
    """Refuse (UsageError) to overwrite an existing file that is not a previous output of `kind`."""
    what, ours = FILE_KINDS[kind]
    if os.path.isdir(path) or not os.path.lexists(path):
        return  # a folder fails when written (cannot write: is a directory); an absent file is simply created
    if os.path.islink(path) or not ours(path):
        raise UsageError(f"{option}: '{path}' exists and is not a {what}; qirc does not overwrite files it did "
                         f"not write (give a new file name)")


def mark_sim_output(path: str) -> None:
    """Write `SIM_MARK` as the zip comment of the npz at `path` (numpy ignores it)."""
    with zipfile.ZipFile(path, "a") as z:
        z.comment = SIM_MARK


__all__ = ["check_output_dir", "check_output_file", "install_dir", "staging_dir", "remove_output",
           "foreign_entries", "mark_sim_output", "REPORT_MARK", "SIM_MARK", "COMPILE_FILES"]
