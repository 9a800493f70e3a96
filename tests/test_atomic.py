"""The one atomic writer: every file the package writes goes through it."""

import ast
from pathlib import Path

import numpy as np
import pytest

from ensemble.atomic import atomic_file, atomic_write_json, atomic_write_npy

PACKAGE = Path(__file__).resolve().parents[1] / "ensemble"
# calls that write a file directly; the package's only writer is ensemble/atomic.py
DIRECT_WRITES = {"write_text", "write_bytes", "savefig", "to_csv"}
LIBRARY_SAVES = {"save", "savez"}  # np.save, np.savez, torch.save, torch.jit.save


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "report.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(path) as handle:
        handle.write(b"half a new fi")
        raise RuntimeError("killed")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["report.png"]


def test_json_without_nan_and_npy_roundtrip(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "r.json", {"mP@5": float("nan")})
    assert not list(tmp_path.iterdir())
    atomic_write_npy(tmp_path / "x.npy", np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.load(tmp_path / "x.npy").tolist() == [[0, 1, 2], [3, 4, 5]]


def _direct_writes(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name, receiver = node.func.attr, ast.unparse(node.func.value)
            # writing into a handle of atomic_file (or an in-memory buffer it then writes) is fine
            into_handle = any(isinstance(a, ast.Name) and a.id in {"handle", "buffer"} for a in node.args)
            library_save = name in LIBRARY_SAVES and receiver in {"np", "torch", "torch.jit"}
            if (name in DIRECT_WRITES or library_save) and not into_handle:
                found.append(f"{path.name}:{node.lineno} .{name}(...)")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            mode = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else "r"
            if any(c in mode for c in "wax+"):
                found.append(f"{path.name}:{node.lineno} open(..., {mode!r})")
    return found


def test_the_package_writes_files_only_through_the_atomic_writer():
    offenders = [hit for p in PACKAGE.rglob("*.py") if p.name != "atomic.py" for hit in _direct_writes(p)]
    assert not offenders, offenders
