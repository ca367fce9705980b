"""Argument validators shared by the whole package: one wording for each check.

Every public function, configuration and stage option checks its scalar
arguments with these, so a user meets the same message for the same mistake
anywhere (``n_bins must be an integer >= 1; got 0``), and names follow one
rule (:data:`NAME_RE`).  Array checks of the metrics live beside them in
:mod:`mrfengine.metrics._validate`.

Each validator returns the checked value in its canonical Python type (a
numpy integer becomes ``int``) and raises
:class:`~mrfengine.errors.ValidationError` (a ``ValueError``) naming the
argument and the value it got.
"""

from __future__ import annotations

import math
import re
import warnings
from numbers import Integral, Real
from typing import Any

from .errors import ValidationError

__all__ = [
    "NAME_RE",
    "SHA256_RE",
    "check_float",
    "check_int",
    "check_name",
    "check_range",
    "deprecated_alias",
    "is_sha256",
]

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
"""A name chosen by the user that becomes a store key or a file name (a pipeline, a derived
group, a stage option's output): a letter or digit, then letters, digits, ``_``, ``.`` and ``-``
(no separators, no leading dot, no trailing newline: ``\\Z``)."""

SHA256_RE = re.compile(r"[0-9a-f]{64}\Z")
"""A SHA-256 digest as lower-case hex (sequence digests, artifact hashes)."""


def check_int(value: Any, name: str, *, minimum: int | None = 1, maximum: int | None = None) -> int:
    """An integer (not a bool; numpy integers accepted) within ``[minimum, maximum]``.

    Parameters
    ----------
    value : Any
    name : str
        The argument's name, as the message shows it.
    minimum, maximum : int or None
        Inclusive bounds; None for none (default: at least 1).

    Returns
    -------
    int

    Raises
    ------
    ValidationError
        ``"{name} must be an integer >= 1; got 0"`` (or ``from a to b``, ``<= b``).
    """
    ok = isinstance(value, Integral) and not isinstance(value, bool)
    if ok:
        value = int(value)
        ok = (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        raise ValidationError(f"{name} must be an integer{_bounds(minimum, maximum)}; got {value!r}")
    return value


def check_float(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None,
                exclusive_minimum: bool = False) -> float:
    """A finite real number (not a bool) within the bounds.

    Parameters
    ----------
    value : Any
    name : str
    minimum, maximum : float or None
        Bounds (``maximum`` inclusive); None for none.
    exclusive_minimum : bool
        ``value > minimum`` rather than ``>=`` (e.g. "positive": ``minimum=0,
        exclusive_minimum=True``).

    Returns
    -------
    float

    Raises
    ------
    ValidationError
        ``"{name} must be a finite number > 0; got -1.0"``.
    """
    ok = isinstance(value, Real) and not isinstance(value, bool)
    if ok:
        value = float(value)
        ok = math.isfinite(value) and (minimum is None or (value > minimum if exclusive_minimum else value >= minimum)) \
            and (maximum is None or value <= maximum)
    if not ok:
        lo = "" if minimum is None else f" {'>' if exclusive_minimum else '>='} {minimum:g}"
        hi = "" if maximum is None else f"{',' if lo else ''} <= {maximum:g}"
        raise ValidationError(f"{name} must be a finite number{lo}{hi}; got {value!r}")
    return value


def check_range(value: Any, name: str, *, minimum: float | None = None) -> tuple[float, float]:
    """A ``(low, high)`` pair of finite numbers with ``minimum <= low <= high``.

    Raises
    ------
    ValidationError
        ``"{name} must be an increasing range (0 <= low <= high); got (3, 1)"``.
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValidationError(f"{name} must be a (low, high) pair of numbers; got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi and (minimum is None or minimum <= lo)):
        floor = "" if minimum is None else f"{minimum:g} <= "
        raise ValidationError(f"{name} must be an increasing range ({floor}low <= high); got {tuple(value)!r}")
    return lo, hi


def check_name(value: Any, what: str = "name") -> str:
    """A user-chosen name that becomes a key or a file name (:data:`NAME_RE`).

    Raises
    ------
    ValidationError
        ``"{what} must be letters, digits, '_', '.' or '-', starting with a letter or digit; got 'a/b'"``.
    """
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValidationError(f"{what} must be letters, digits, '_', '.' or '-', starting with a letter or digit; "
                              f"got {value!r}")
    return value


def deprecated_alias(value: Any, alias_value: Any, *, name: str, alias: str, default: Any, where: str,
                     stacklevel: int = 3) -> Any:
    """The value of keyword ``name`` of ``where``, whose former name ``alias`` still works.

    ``alias_value`` is None when the old keyword was not given; otherwise it
    is used, with a :class:`DeprecationWarning` attributed ``stacklevel``
    frames up (3: the caller of the function that called this one).  Both
    given with different values (``value`` not ``default``) is an error.
    """
    if alias_value is None:
        return value
    warnings.warn(f"{where}: the keyword {alias!r} is deprecated; use {name!r}", DeprecationWarning,
                  stacklevel=stacklevel)
    if value != default and value != alias_value:
        raise ValidationError(f"{where}: got {name}={value!r} and its deprecated alias {alias}={alias_value!r}; "
                              f"give {name} only")
    return alias_value


def is_sha256(value: Any) -> bool:
    """Whether ``value`` is a SHA-256 digest in lower-case hex (:data:`SHA256_RE`)."""
    return isinstance(value, str) and SHA256_RE.match(value) is not None


def _bounds(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" from {minimum} to {maximum}"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""
