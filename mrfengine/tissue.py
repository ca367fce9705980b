"""Tissue relaxation values at 3 T (``shared/mrf-epi/README.md``).

T1 and T2* in ms; PD relative to pure water.  CSF T1 lies beyond the
dictionary's 3500 ms edge, as in real data.  The lesion factors are a working
assumption, not a measurement: they are parameters wherever they are used.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tissue", "TISSUES", "LESION_T1_FACTOR", "LESION_T2STAR_FACTOR", "LESION_PD"]


@dataclass(frozen=True)
class Tissue:
    """Mean relaxation values of one tissue class."""

    name: str
    t1_ms: float
    t2star_ms: float
    pd: float


TISSUES: dict[str, Tissue] = {
    "WM": Tissue("white matter", 830.0, 53.0, 0.69),
    "GM": Tissue("grey matter", 1330.0, 66.0, 0.80),
    "DGM": Tissue("deep grey matter", 1250.0, 38.0, 0.80),
    "CSF": Tissue("cerebrospinal fluid", 4000.0, 400.0, 1.0),
}

# Lesion values relative to normal-appearing white matter: (low, high) ranges.
LESION_T1_FACTOR: tuple[float, float] = (1.3, 1.8)
LESION_T2STAR_FACTOR: tuple[float, float] = (1.1, 1.4)
LESION_PD: float = 0.75
