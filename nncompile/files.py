"""Writing output files whole or not at all: a user never finds half a module or diagram."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import NNError


def write_atomic(path: str | Path, content: str | bytes | Callable[[BinaryIO], object],
                 durable: bool = False) -> None:
    """Write ``content`` (text, bytes, or a function that writes to a binary handle) to a
    temporary file beside ``path``, then rename it into place.

    The file gets the mode an ordinary ``open()`` would give it (``0o666 & ~umask``), or keeps
    its own if it exists. ``durable`` (params, checkpoints) also syncs the data before the
    rename and the folder after it, so a power cut leaves either the old file or the new one.
    """
    if not str(path) or Path(path).is_dir():
        raise NNError(f"cannot write {str(path) or 'an empty file name'}: give the name of a file, not a folder")
    path = Path(path)
    if _is_descriptor(path) or (path.exists() and not path.is_file()):
        _write_into(path, content)   # /dev/stdout, a device, a pipe: written into, never renamed over
        return
    if path.is_symlink():   # written through, as open() writes: the link stays a link
        path = Path(os.path.realpath(path))
    blocking = next((folder for folder in path.parents if folder.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise NNError(f"cannot write {path}: {blocking} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode_for(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise NNError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            _put(handle, content)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)   # mkstemp made it 0600, which no other output of a compiler has
        os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise NNError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_descriptor(path: Path) -> bool:
    """Whether ``path`` names one of the process's open files (/dev/stdout, /dev/fd/1,
    /proc/self/fd/1), whatever that file is: the caller's stream, not a file to replace."""
    name = os.path.abspath(path)
    return name in ("/dev/stdout", "/dev/stderr") or name.startswith(("/dev/fd/", "/proc/"))


def _write_into(path: Path, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Write into a file that is not a regular one, as it is: a device takes the bytes as they
    come. Appending, so that ``-o /dev/stdout >> log`` adds to the log instead of truncating it."""
    try:
        with open(path, "ab") as handle:
            _put(handle, content)
    except OSError as exc:
        raise NNError(f"cannot write {path}: {exc.strerror}") from None


def _put(handle: BinaryIO, content: str | bytes | Callable[[BinaryIO], object]) -> None:
    """Text as UTF-8, bytes as they are, or a function's writes."""
    if callable(content):
        content(handle)
    else:
        handle.write(content.encode("utf-8") if isinstance(content, str) else content)


def _mode_for(path: Path) -> int:
    """The permissions of the existing file at ``path`` (not its setuid/setgid bits), else
    what the umask gives a new file."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask: read from /proc where Linux shows it, else set and put straight
    back (which another thread could observe in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows has no handle on a folder to sync)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
