"""Checks on what a command is about to write, made before it does any work.

Every command that writes files plans its outputs first and calls
:func:`check_outputs`: the output folder must be (or become) a writable
folder, every output must stay inside it, no two outputs may share a name,
and an existing file is replaced only when the user said so (``--force``).
:func:`check_prefix` keeps a user's name prefix a plain name.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputFileError, StoreError, ValidationError

__all__ = ["check_prefix", "check_writable_dir", "check_store_writable", "check_outputs", "OutputExistsError"]

_BAD_PREFIX = re.compile(r"[\x00-\x1f/\\]")


class OutputExistsError(StoreError):
    """An output exists and the command was not told to replace it."""


def check_prefix(prefix: str, *, what: str = "prefix") -> str:
    """Return ``prefix`` if it is a plain file-name part, else raise.

    A plain name has no path separator, no control character, is not ``.``
    or ``..`` (nor starts with ``..``), and is not empty.

    Raises
    ------
    ValidationError
        Names ``what`` and the problem.
    """
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValidationError(f"{what} must be a plain name; got {prefix!r}")
    if _BAD_PREFIX.search(prefix) or prefix.startswith("..") or prefix in (".",) or os.path.isabs(prefix):
        raise ValidationError(f"{what} must be a plain name without path separators or '..' "
                              f"(outputs stay in the output folder); got {prefix!r}")
    return prefix


def _first_existing(path: Path) -> Path:
    p = path
    while not os.path.lexists(p):
        if p.parent == p:
            break
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike, *, what: str = "output folder") -> Path:
    """Check that ``path`` is, or can be created as, a folder we may write in.

    Nothing is created.  Walks up to the first existing ancestor: it must be
    a folder (not a regular file) that we can write in.

    Raises
    ------
    InputFileError
        Names the path and what is wrong with it.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise InputFileError(f"{path}: the {what} exists and is not a folder")
    base = _first_existing(path.absolute())
    if not base.is_dir():
        raise InputFileError(f"{path}: cannot create the {what}: {base} is a file, not a folder")
    if not os.access(base, os.W_OK | os.X_OK):
        where = "" if base == path.absolute() else f" (in {base})"
        raise InputFileError(f"{path}: the {what} is not writable{where}: permission denied")
    if base == path.absolute() and not os.access(base, os.R_OK):
        raise InputFileError(f"{path}: the {what} is not readable: permission denied")
    return path


def check_store_writable(path: str | os.PathLike) -> Path:
    """Check, before any work, that a cohort store can be created or written at ``path``.

    A new store needs a writable folder to be created in; an existing one is
    asked by :func:`mrfengine.io.cohort.require_writable` (the one writability
    check: what zarr knows of the store, a local folder's permissions and free
    space), after checking that a local folder can be read at all.

    Raises
    ------
    StoreError
        Names the store and what is wrong.
    """
    from .cohort import require_writable

    path = Path(path)
    if not os.path.lexists(path):
        try:
            return check_writable_dir(path, what="cohort store")
        except InputFileError as exc:
            raise StoreError(str(exc)) from None
    if not path.is_dir() and path.suffix.lower() != ".zip":
        raise StoreError(f"{path}: the cohort store exists and is not a folder")
    for folder in (path, path / "subjects"):
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            raise StoreError(f"{path}: cannot read the cohort store ({folder}: permission denied)")
    require_writable(path, action="write into the cohort store")
    return path


def check_outputs(
    output_dir: str | os.PathLike,
    names: Iterable[str],
    *,
    force: bool = False,
    sources: dict[str, str] | None = None,
) -> list[Path]:
    """Plan the files ``names`` in ``output_dir``; raise before any is written.

    Parameters
    ----------
    output_dir : path
    names : iterable of str
        File names (relative to ``output_dir``).
    force : bool
        Existing files may be replaced.
    sources : dict, optional
        ``{json sidecar name: the input's BIDS URI}``: an existing sidecar
        whose first ``Sources`` entry is another input is named in the
        refusal (two inputs whose outputs share a subject's entities).

    Returns
    -------
    list of Path
        The output paths, in order.

    Raises
    ------
    InputFileError
        The folder is not usable, or an output would leave it.
    ValidationError
        Two outputs share a name.
    OutputExistsError
        Outputs exist and ``force`` is false.
    """
    out = check_writable_dir(output_dir)
    root = Path(os.path.abspath(out))
    paths, seen, existing = [], set(), []
    for name in names:
        p = Path(os.path.abspath(root / name))
        if p.parent != root and root not in p.parents:
            raise InputFileError(f"{out / name}: would be written outside the output folder {out}")
        if p in seen:
            raise ValidationError(f"{out / name}: two outputs of this command have the same name; "
                                  "give them different names (e.g. --prefix)")
        seen.add(p)
        paths.append(out / name)
        if os.path.lexists(p):
            if p.is_dir() or p.is_symlink():
                raise InputFileError(f"{out / name}: exists and is {'a folder' if p.is_dir() else 'a link'}; "
                                     "refusing to replace it")
            existing.append(out / name)
    if existing and not force:
        other = ""
        for side, src in (sources or {}).items():
            try:
                doc = json.loads((root / side).read_text())
                old = (doc.get("Sources") or [None])[0] if isinstance(doc.get("Sources"), list) else doc.get("Source")
            except (OSError, ValueError, AttributeError):
                old = None
            if old and old != src:
                other = (f" (written from {old}, not {src}: two inputs give the same prefix; "
                         "pass --prefix to name them apart)")
                break
        more = f" and {len(existing) - 1} more output(s)" if len(existing) > 1 else ""
        raise OutputExistsError(f"{existing[0]}{more} already exist{other}; pass --force to replace them")
    return paths
