"""Output files: written whole or not at all, with the permissions the user's umask gives."""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from nncompile.errors import NNError
from nncompile.files import write_atomic
from nncompile.train.checkpoint import write_npz

posix_only = pytest.mark.skipif(os.name == "nt", reason="POSIX permissions")


@pytest.fixture
def umask() -> Iterator[None]:
    """Restore the process's umask after a test that sets it."""
    saved = os.umask(0o022)
    yield
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What each os.fsync call synced: 'file' or 'folder'."""
    synced: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)
    monkeypatch.setattr(os, "fsync", record)
    return synced


@posix_only
@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)],
                         ids=["umask 022", "umask 077", "umask 002"])
def test_a_new_file_gets_the_mode_the_umask_gives(mask: int, expected: int, tmp_path: Path, umask: None) -> None:
    os.umask(mask)
    write_atomic(tmp_path / "m.py", "x = 1\n")
    assert mode(tmp_path / "m.py") == expected


@posix_only
def test_an_existing_file_keeps_its_own_mode(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "m.py"
    target.write_text("old\n")
    target.chmod(0o640)
    write_atomic(target, "new\n")
    assert target.read_text() == "new\n" and mode(target) == 0o640


def test_a_durable_write_syncs_the_file_before_the_rename_and_the_folder_after(
        tmp_path: Path, fsyncs: list[str]) -> None:
    write_atomic(tmp_path / "params.npz", b"data", durable=True)
    assert fsyncs == (["file"] if os.name == "nt" else ["file", "folder"])


def test_an_ordinary_write_does_not_wait_for_the_disk(tmp_path: Path, fsyncs: list[str]) -> None:
    write_atomic(tmp_path / "m.py", "x = 1\n")
    assert fsyncs == []


def test_params_and_checkpoints_are_written_durably(tmp_path: Path, fsyncs: list[str]) -> None:
    write_npz(tmp_path / "checkpoint.npz", {"param/W": np.ones(3)})
    assert "file" in fsyncs
    with np.load(tmp_path / "checkpoint.npz") as archive:
        assert archive["param/W"].tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), RuntimeError("bug")])
def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(failure: Exception, tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.npz"
    target.write_bytes(b"old")

    def fail(handle: object) -> None:
        raise failure
    with pytest.raises(NNError if isinstance(failure, OSError) else RuntimeError):
        write_atomic(target, fail, durable=True)
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("name", ["", "."])
def test_a_folder_or_an_empty_name_is_refused_by_name(tmp_path: Path, monkeypatch, name: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NNError, match="give the name of a file, not a folder"):
        write_atomic(name, "text")


@posix_only
def test_a_symlink_is_written_through_and_stays_a_link(tmp_path: Path) -> None:
    target, link = tmp_path / "target.py", tmp_path / "link.py"
    target.write_text("old")
    link.symlink_to(target.name)
    write_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.py", "target.py"]


@posix_only
def test_a_pipe_or_device_is_written_into_not_replaced(tmp_path: Path) -> None:
    """``-o /dev/null`` or ``-o /dev/stdout`` must not rename a regular file over the device
    (as root, that replaced /dev/null); a named pipe stands in for the device here."""
    import threading

    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    write_atomic(fifo, "through the pipe", durable=True)
    reader.join(timeout=10)
    assert got == [b"through the pipe"]
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and list(tmp_path.iterdir()) == [fifo]


def test_a_file_where_a_folder_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "model.nn").write_text("")
    with pytest.raises(NNError, match=r"cannot write .*model.nn/x.py: .*model.nn is a file, not a folder"):
        write_atomic(tmp_path / "model.nn" / "x.py", "text")



@posix_only
def test_dev_stdout_is_written_into_whether_it_is_a_pipe_or_a_file_appended_to(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    compile_to_stdout = f"{sys.executable} -m nncompile compile {root / 'examples' / 'neuron.nn'} -o /dev/stdout"
    piped = subprocess.run(["bash", "-c", f"{compile_to_stdout} | head -1"], capture_output=True, text=True,
                           cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert piped.stdout.startswith('"""neuron.nn, compiled by nncompile'), piped
    (tmp_path / "log.py").write_text("# kept\n")
    appended = subprocess.run(["bash", "-c", f"{compile_to_stdout} >> log.py"], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)})
    assert appended.returncode == 0, appended
    text = (tmp_path / "log.py").read_text()
    assert text.startswith('# kept\n"""neuron.nn, compiled by nncompile') and "def value_and_grad" in text



def test_only_the_processs_own_streams_are_appended_to_a_file_under_dev_is_replaced(tmp_path: Path) -> None:
    from nncompile.files import _is_descriptor

    assert _is_descriptor(Path("/dev/stdout")) and _is_descriptor(Path("/dev/fd/1"))
    assert _is_descriptor(Path("/proc/self/fd/1"))
    assert not _is_descriptor(Path("/dev/shm/model.py")) and not _is_descriptor(tmp_path / "dev" / "fd")
