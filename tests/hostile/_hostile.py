"""Helpers of the hostile suite (``from _hostile import run_cli, snapshot``).

The hostile suite: bad inputs built in ``tmp_path``, as a careless or hostile user brings them.

Every test here checks the same promises (issue 17, ``docs/security.md``):

* a clean error: one line on stderr starting ``error:`` (or click's ``Error:`` for usage)
  that names the file or the option, and no traceback;
* exit status 1 for bad data, 2 for bad usage;
* nothing outside the output folder touched (:func:`snapshot` before and after);
* nothing that was complete before lost.

:func:`run_cli` runs the command line in this process, so the suite stays fast; an
exception escaping ``main`` is a traceback a user would have seen, and fails the test.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(args, capsys, *, code: int | None = None, says: str | tuple[str, ...] = ()) -> CliResult:
    """Run ``mrfengine ARGS`` in-process; fail on a traceback.

    Parameters
    ----------
    args : list of str
    capsys : pytest fixture
    code : int, optional
        The expected exit status.
    says : str or tuple of str
        Words the error must contain (e.g. the file's name, the option).
    """
    from mrfengine.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as exc:  # pragma: no cover - main returns codes
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - what a user would have seen as a traceback
        pytest.fail(f"mrfengine {' '.join(map(str, args))} raised instead of a clean error:\n{traceback.format_exc()}")
    captured = capsys.readouterr()
    result = CliResult(rc, captured.out, captured.err)
    assert "Traceback" not in captured.err + captured.out, captured.err
    if code is not None:
        assert rc == code, f"exit {rc}, expected {code}; stderr:\n{captured.err}"
    if code:
        errors = [line for line in captured.err.splitlines() if line.lower().startswith("error")]
        assert errors, f"no error line on stderr:\n{captured.err}"
        words = (says,) if isinstance(says, str) else tuple(says)
        for word in words:
            assert any(str(word) in line for line in errors), f"the error does not name {word!r}:\n{captured.err}"
    return result


def snapshot(root: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``root``: relative path -> (size, mtime_ns); compare before and after."""
    root = Path(root)
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out
