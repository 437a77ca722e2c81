"""Checking, before any work starts, that the files a command will write can be written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_writable", "check_writable_dir"]


def check_writable(name: str, path: str | os.PathLike) -> None:
    """Make sure ``path`` can be opened for writing, without changing it.

    The file is opened for appending (which leaves an existing file as it is) and closed; one
    created by the check is removed again.

    Raises:
        ValueError: naming the setting ``name``, the path and the reason.
    """
    p = _file_path(name, path)
    existed = p.exists()
    try:
        with open(p, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"{name} {str(path)!r} cannot be written: {exc.strerror}") from None
    if not existed:
        p.unlink()


def check_writable_dir(name: str, path: str | os.PathLike) -> None:
    """Make sure a new file can be created beside ``path`` (atomic writes create a temporary
    file in its directory, then rename it).

    Raises:
        ValueError: naming the setting ``name``, the path and the reason.
    """
    p = _file_path(name, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".check", dir=p.parent)
    except OSError as exc:
        raise ValueError(
            f"{name} {str(path)!r}: cannot create files in {str(p.parent)!r}: {exc.strerror}"
        ) from None
    os.close(fd)
    os.unlink(tmp)


def _file_path(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, refused when it is a directory or its directory is missing."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{name} {str(path)!r} is a directory; give a file path")
    if not p.parent.is_dir():
        raise ValueError(f"{name} {str(path)!r}: directory {str(p.parent)!r} does not exist")
    return p
