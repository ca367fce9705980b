"""The official BIDS validator in the tests: :func:`assert_valid_bids`.

The validator is the schema-based BIDS validator 3.x (the JavaScript one the
BIDS project maintains), run offline through the ``bids-validator-deno``
package from PyPI (it bundles the validator and a ``deno`` runtime; the
``dev`` extra installs it).  It is run as a subprocess with
``--format json`` and its report is parsed: a test fails when the report
holds any issue of severity ``error``, and the failure lists every one
(code, sub-code, file).  Warnings are returned for a test that wants to
check them, not failed on: the validator warns about what a minimal
derivative legitimately leaves out (a README, authors).

Where the validator is not installed the tests that use it are skipped,
unless the environment variable ``MRFENGINE_REQUIRE_BIDS_VALIDATOR`` is set
(CI sets it, ``.ci/run``): then they fail, so a broken install cannot pass
unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

__all__ = ["assert_valid_bids", "bids_validator", "validate_bids"]

#: Environment variable that turns a missing validator from a skip into a failure.
REQUIRE = "MRFENGINE_REQUIRE_BIDS_VALIDATOR"
#: Seconds one validator run may take (about 1-2 s on a tiny dataset; the first run compiles).
TIMEOUT_S = 120


def bids_validator() -> list[str] | None:
    """The validator's command line (``bids-validator-deno``), or None when it is not installed.

    Looks on ``PATH`` and beside the running interpreter (a virtual
    environment's ``bin`` that is not on ``PATH``).
    """
    found = shutil.which("bids-validator-deno")
    if found is None:
        beside = Path(sys.executable).with_name("bids-validator-deno")
        found = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None
    return [found] if found else None


def _require_validator() -> list[str]:
    cmd = bids_validator()
    if cmd is None:
        message = "the BIDS validator (bids-validator-deno, pip install bids-validator-deno) is not installed"
        if os.environ.get(REQUIRE):
            pytest.fail(f"{message}, and {REQUIRE} is set", pytrace=False)
        pytest.skip(message)
    return cmd


def validate_bids(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Run the validator on the dataset at ``path``; return its issues.

    Returns
    -------
    list of dict
        The report's issues, each with ``severity`` (``error``, ``warning``),
        ``code``, and where given ``subCode``, ``location`` (the file, from
        the dataset root), ``issueMessage``.

    Skips the calling test when the validator is missing (fails when
    ``MRFENGINE_REQUIRE_BIDS_VALIDATOR`` is set); fails it when the
    validator does not run or its output is not its JSON report.
    """
    cmd = _require_validator()
    root = Path(path)
    if not (root / "dataset_description.json").is_file():
        pytest.fail(f"{root}: not a BIDS dataset (no dataset_description.json)", pytrace=False)
    try:
        proc = subprocess.run([*cmd, str(root), "--format", "json"], capture_output=True, text=True,
                              timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the BIDS validator did not finish on {root} in {TIMEOUT_S} s", pytrace=False)
    try:
        report = json.loads(proc.stdout)
        issues = report["issues"]["issues"]
    except (ValueError, KeyError, TypeError):
        pytest.fail(f"the BIDS validator gave no JSON report on {root} (exit status {proc.returncode}):\n"
                    f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}", pytrace=False)
    return list(issues)


def _describe(issue: dict[str, Any]) -> str:
    code = issue.get("code", "?") + (f" ({issue['subCode']})" if issue.get("subCode") else "")
    where = issue.get("location", "")
    message = (issue.get("issueMessage") or "").strip().splitlines()
    return f"{code}: {where}" + (f" -- {message[0]}" if message else "")


def assert_valid_bids(path: str | os.PathLike, *, allow: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Fail the test when the BIDS validator finds any error in the dataset at ``path``.

    Parameters
    ----------
    path : path
        The dataset's root (where ``dataset_description.json`` lies): a raw
        dataset or a derivative dataset.
    allow : tuple of str
        Error codes to accept (say why at the call); empty by default.

    Returns
    -------
    list of dict
        The warnings (and allowed errors), for a test that checks them.

    Raises
    ------
    pytest.fail.Exception
        With every error listed (code, sub-code, file, first line of its message).
    """
    issues = validate_bids(path)
    errors = [i for i in issues if i.get("severity") == "error" and i.get("code") not in allow]
    if errors:
        listed = "\n".join(f"  {_describe(i)}" for i in errors)
        pytest.fail(f"the BIDS validator found {len(errors)} error(s) in {path}:\n{listed}", pytrace=False)
    return [i for i in issues if i not in errors]
