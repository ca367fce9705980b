"""Atomic file writes: a unique temporary file beside the destination, renamed over it.

Every file mrfengine writes whole (NIfTI maps, sidecars, sequences,
dictionaries, checkpoints, model artifacts, tables, figures, reports) goes
through :func:`atomic_path`, so a reader sees either the old file or the
complete new one, never a half-written file, and a failed write leaves
nothing behind.

The temporary file is ``.<name>.tmp-<pid>-<thread>-<random><suffix>`` in the
destination's folder (the same file system, so the rename is atomic).  It is
created exclusively (``O_EXCL``), so two processes or two threads of one
process (the workers of a local Dask cluster are threads) never share one,
and with the mode an ordinary ``open`` gives (``0o666`` less the umask), so
the destination's permissions are those of a plainly written file.

This module imports only :mod:`mrfengine.errors` from the package: any module may use it.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import ValidationError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "TEMP_MARK", "temp_pattern"]

#: What every temporary name carries after the destination's name (before the suffix kept).
TEMP_MARK = ".tmp-"
_TOKEN = r"[0-9]+-[0-9]+-[0-9a-f]{8}"
_NAME_MAX = 255  # bytes in one path component on the usual file systems
_ATTEMPTS = 100


def temp_pattern(name: str, suffix: str = "") -> str:
    """A regular expression (uncompiled) that the temporary names of ``name`` match in full.

    ``name`` is itself a regular expression for the destination's name
    *without* ``suffix`` (e.g. ``r"[0-9a-f]{32}\\.npz"``); ``suffix`` is the
    literal suffix kept (see :func:`atomic_path`).  Tools that clean up the
    temporaries a killed process left use it to recognise them.  Names
    shortened to fit the file system's limit are not matched.
    """
    return rf"\.{name}{re.escape(TEMP_MARK)}{_TOKEN}{re.escape(suffix)}"


def _temp_name(name: str, suffix: str) -> str:
    base = name[: len(name) - len(suffix)]
    tail = f"{TEMP_MARK}{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(4)}{suffix}"
    room = _NAME_MAX - 1 - len(tail.encode())
    while len(base.encode()) > room:  # a name near the limit: shorten the part before the tail
        base = base[:-1]
    return f".{base}{tail}"


def _create(folder: Path, name: str, suffix: str) -> Path:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(_ATTEMPTS):
        tmp = folder / _temp_name(name, suffix)
        try:
            os.close(os.open(tmp, flags, 0o666))
        except FileExistsError:  # astronomically unlikely: draw another name
            continue
        return tmp
    raise FileExistsError(f"{folder}: could not create a temporary file for {name!r} in {_ATTEMPTS} attempts")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); folders cannot be opened for fsync on Windows."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder: the data itself is synced
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; rename it over ``path`` on success.

    Parameters
    ----------
    path : path
        The destination.  Its folder must exist (the temporary file lies
        there).  An existing file is replaced (atomically, by
        :func:`os.replace`); an existing folder is not.
    suffix : str, optional
        A tail of ``path``'s name that the temporary name keeps at its end,
        for writers that choose the format from the name (``".nii.gz"``
        makes nibabel compress).
    fsync : bool, optional
        Flush the written data and the rename to the disk before returning
        (survives a power cut; slower).

    Yields
    ------
    Path
        An empty file, created for this write only, unique across processes
        and threads.  Write it by name (it may be opened, truncated and
        rewritten any number of times).

    Raises
    ------
    ValidationError
        ``suffix`` is not a tail of ``path``'s name.
    OSError
        The temporary file could not be created, or the rename failed.

    Notes
    -----
    Any exception inside the block (``KeyboardInterrupt`` included), or a
    failed rename, removes the temporary file and leaves ``path`` as it was.
    Only a killed process leaves a temporary file behind (see
    :func:`temp_pattern`).

    Examples
    --------
    >>> with atomic_path(out / "T1map.nii.gz", suffix=".nii.gz") as tmp:  # doctest: +SKIP
    ...     nib.save(img, tmp)
    """
    path = Path(path)
    if suffix and (not path.name.endswith(suffix) or path.name == suffix):
        raise ValidationError(f"{path}: the suffix to keep, {suffix!r}, is not a tail of the name")
    tmp = _create(path.parent, path.name, suffix)
    done = False
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
        done = True
        if fsync:
            _fsync_folder(path.parent)
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, *, encoding: str = "utf-8",
                      fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`); returns ``path`` as a Path.

    The text is written as :meth:`pathlib.Path.write_text` writes it (universal
    newlines), in ``encoding`` (UTF-8 unless told).
    """
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_text(text, encoding=encoding)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); returns ``path`` as a Path."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return path
