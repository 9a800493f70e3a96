import pytest
import torch

from ensemble.atomic import atomic_write_text
from ensemble.checkpoint import load_checkpoint, save_checkpoint
from ensemble.errors import EnsError


def test_save_is_atomic_and_kind_checked(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"ens_kind": "member", "x": torch.ones(2)})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp file left behind
    assert torch.equal(load_checkpoint(path, kind="member")["x"], torch.ones(2))
    with pytest.raises(EnsError, match="is a member checkpoint, expected student"):
        load_checkpoint(path, kind="student")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"ens_kind": "member", "v": 1})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"ens_kind": "member", "v": 2})
    assert load_checkpoint(path)["v"] == 1 and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_damaged_or_foreign_files_are_refused(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(EnsError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(EnsError, match="not an ens checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    atomic_write_text(tmp_path / "t.txt", "hi")
    assert (tmp_path / "t.txt").read_text() == "hi"


def test_published_files_get_normal_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c.pt", {"ens_kind": "member"})
        atomic_write_text(tmp_path / "t.txt", "x")
    finally:
        os.umask(mask)
    assert oct((tmp_path / "c.pt").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "t.txt").stat().st_mode & 0o777) == "0o644"


def test_a_full_disk_mid_save_is_the_os_error_naming_the_checkpoint(tmp_path, monkeypatch):
    """torch.save's zip writer turns a failed write into RuntimeError('unexpected pos ...'), which reached
    the user as a traceback; the write's own OSError (ENOSPC) naming the file comes out instead."""
    import errno
    from contextlib import contextmanager

    import ensemble.checkpoint as checkpoint_module

    real = checkpoint_module.atomic_file

    class DiskFullAfter:
        def __init__(self, handle, free_bytes):
            self.handle, self.free_bytes = handle, free_bytes

        def write(self, data):
            self.free_bytes -= len(data)
            if self.free_bytes < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    @contextmanager
    def full_disk(path, expected_bytes=0):
        with real(path, expected_bytes) as handle:
            yield DiskFullAfter(handle, 100_000)

    monkeypatch.setattr(checkpoint_module, "atomic_file", full_disk)
    path = tmp_path / "last.pt"
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, {"ens_kind": "member", "weights": torch.zeros(1_000_000)})
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert list(tmp_path.iterdir()) == []  # no checkpoint, no temp file
