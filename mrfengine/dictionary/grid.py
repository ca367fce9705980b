"""Parameter grids of MRF-EPI dictionaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DictionaryError

__all__ = ["geometric_range", "ParameterGrid", "paper_grid"]


def geometric_range(start: float, stop: float, step: float) -> np.ndarray:
    """``start * (1 + step)**k`` for k = 0, 1, ... up to ``stop`` (included when hit).

    ``step`` is relative (0.05 for the paper's 5% steps).
    """
    if not (start > 0 and stop >= start and step > 0):
        raise DictionaryError(
            f"a geometric range needs 0 < start <= stop and step > 0; got start={start}, stop={stop}, step={step}"
        )
    n = int(np.floor(np.log(stop / start) / np.log1p(step) + 1e-9)) + 1
    return start * (1.0 + step) ** np.arange(n)


@dataclass(frozen=True)
class ParameterGrid:
    """The (T1, T2*, B1) grid of a dictionary.

    Atoms are ordered with B1 slowest, then T1, then T2* fastest, dropping
    (T1, T2*) pairs with T2* > T1 when ``drop_t2star_above_t1``.  Keeping the
    atoms of one (T1, B1) contiguous lets matchers exploit the model's
    structure: within such a run only ``exp(-TE / T2*)`` changes.

    Parameters
    ----------
    t1_ms, t2star_ms : tuple of float
        Strictly increasing, positive, in ms.
    b1 : tuple of float
        Strictly increasing, positive flip-angle scale factors.
    drop_t2star_above_t1 : bool
        Drop the unphysical atoms with T2* > T1 (the paper does).
    """

    t1_ms: tuple[float, ...]
    t2star_ms: tuple[float, ...]
    b1: tuple[float, ...]
    drop_t2star_above_t1: bool = True

    def __post_init__(self) -> None:
        for name in ("t1_ms", "t2star_ms", "b1"):
            arr = np.asarray(getattr(self, name), dtype=float).ravel()
            if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise DictionaryError(f"{name} must be a non-empty list of positive finite numbers")
            if np.any(np.diff(arr) <= 0):
                raise DictionaryError(f"{name} must be strictly increasing")
            object.__setattr__(self, name, tuple(float(v) for v in arr))
        if self.n_atoms == 0:
            raise DictionaryError("the grid has no atom left after dropping T2* > T1")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(n_b1, n_t1, n_t2star) before dropping."""
        return len(self.b1), len(self.t1_ms), len(self.t2star_ms)

    def keep_mask(self) -> np.ndarray:
        """Boolean (n_t1, n_t2star): which (T1, T2*) pairs are atoms."""
        t1 = np.asarray(self.t1_ms)[:, None]
        t2 = np.asarray(self.t2star_ms)[None, :]
        if not self.drop_t2star_above_t1:
            return np.ones((t1.size, t2.size), dtype=bool)
        return t2 <= t1

    @property
    def n_atoms(self) -> int:
        return int(self.keep_mask().sum()) * len(self.b1)

    def atom_parameters(self, dtype: type = np.float64) -> dict[str, np.ndarray]:
        """T1 (ms), T2star (ms) and B1 of every atom, each (n_atoms,) of ``dtype``."""
        keep = self.keep_mask()
        i1, i2 = np.nonzero(keep)
        nb = len(self.b1)
        t1 = np.tile(np.asarray(self.t1_ms)[i1], nb)
        t2 = np.tile(np.asarray(self.t2star_ms)[i2], nb)
        b1 = np.repeat(np.asarray(self.b1), i1.size)
        return {"T1": t1.astype(dtype), "T2star": t2.astype(dtype), "B1": b1.astype(dtype)}

    def to_dict(self) -> dict[str, Any]:
        return {
            "t1_ms": list(self.t1_ms),
            "t2star_ms": list(self.t2star_ms),
            "b1": list(self.b1),
            "drop_t2star_above_t1": self.drop_t2star_above_t1,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParameterGrid:
        try:
            return cls(
                tuple(data["t1_ms"]), tuple(data["t2star_ms"]), tuple(data["b1"]),
                bool(data.get("drop_t2star_above_t1", True)),
            )
        except KeyError as exc:
            raise DictionaryError(f"grid description lacks {exc}") from exc

    @classmethod
    def geometric(
        cls,
        t1_ms: tuple[float, float] = (300.0, 3500.0),
        t2star_ms: tuple[float, float] = (10.0, 2500.0),
        step: float = 0.05,
        b1: tuple[float, float, float] = (0.6, 1.4, 0.1),
        *,
        drop_t2star_above_t1: bool = True,
    ) -> ParameterGrid:
        """Geometric T1/T2* ranges with relative ``step`` and a linear B1 range
        ``(start, stop, step)`` (stop included)."""
        b_start, b_stop, b_step = b1
        if b_step <= 0 or b_stop < b_start:
            raise DictionaryError(f"b1 range must be (start, stop >= start, step > 0); got {b1}")
        nb = int(np.floor((b_stop - b_start) / b_step + 1e-9)) + 1
        b1_values = np.round(b_start + b_step * np.arange(nb), 10)
        return cls(
            tuple(geometric_range(*t1_ms, step)),
            tuple(geometric_range(*t2star_ms, step)),
            tuple(b1_values),
            drop_t2star_above_t1,
        )


def paper_grid() -> ParameterGrid:
    """The grid of Hermann et al. 2021: T1 300-3500 ms and T2* 10-2500 ms in 5%
    geometric steps, B1 0.6-1.4 by 0.1, T2* > T1 dropped."""
    return ParameterGrid.geometric()
