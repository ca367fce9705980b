"""Built-in acquisitions.

``hermann2021`` is the MRF-EPI protocol of Hermann et al. (BMC Med Imaging
21:107, 2021), after Rieger et al. (Sci Rep 8:2045, 2018): 35 measurements with
the authors' flip angles and echo times (``data/hermann2021_schedule.csv``).
"""

from __future__ import annotations

import csv
from importlib import resources

from ..errors import SequenceError
from .model import Sequence

__all__ = ["hermann2021", "preset", "PRESETS", "repetition_time_from_echo_time"]

PRESETS = ("hermann2021", "hermann2021-site1", "hermann2021-site2")


def repetition_time_from_echo_time(echo_time_ms: float) -> float:
    """The default TR (ms) of a measurement: 3530 ms + (TE - 16 ms) * 2840 / 60.5.

    A self-consistent reading of the published TR range 3530-6370 ms over the
    TE range 16-76.5 ms (see ``shared/mrf-epi/README.md``).
    """
    return 3530.0 + (echo_time_ms - 16.0) * 2840.0 / 60.5


def _read_schedule() -> tuple[list[float], list[float], list[bool]]:
    text = resources.files(__package__).joinpath("data/hermann2021_schedule.csv").read_text()
    fa, te, inv = [], [], []
    for row in csv.DictReader(text.splitlines()):
        fa.append(float(row["flip_angle_deg"]))
        te.append(float(row["echo_time_ms"]))
        inv.append(row["inversion_before"].strip().lower() == "yes")
    return fa, te, inv


def hermann2021(site: int = 1, *, n_slices: int = 60, dummy_measurements: int = 0) -> Sequence:
    """The MRF-EPI sequence of Hermann et al. 2021.

    Parameters
    ----------
    site : {1, 2}
        Site 1 excites the slices one per slot (``n_slices`` slots); site 2
        used simultaneous multi-slice with factor 3 (``n_slices / 3`` slots).
    n_slices : int
        Slice positions (60 in the paper).
    dummy_measurements : int
        Optional dummy measurements before the first recorded one.

    Notes
    -----
    The inversion before odd measurement ``m`` (1-based) is played just before
    slot ``2 (m - 1)`` (0-based) of that measurement, modulo the number of
    slots; TR follows :func:`repetition_time_from_echo_time`.
    """
    if site not in (1, 2):
        raise SequenceError(f"site must be 1 or 2; got {site!r}")
    sms = 1 if site == 1 else 3
    n_slots = n_slices // sms
    fa, te, inv = _read_schedule()
    slots = [(2 * i) % n_slots if flag else None for i, flag in enumerate(inv)]
    return Sequence(
        flip_angle_deg=tuple(fa),
        echo_time_ms=tuple(te),
        repetition_time_ms=tuple(repetition_time_from_echo_time(t) for t in te),
        inversion_slot=tuple(slots),
        n_slices=n_slices,
        sms_factor=sms,
        dummy_measurements=dummy_measurements,
        name=f"hermann2021-site{site}",
    )


def preset(name: str) -> Sequence:
    """A built-in sequence by name: one of :data:`PRESETS`."""
    key = name.strip().lower()
    if key in ("hermann2021", "hermann2021-site1"):
        return hermann2021(1)
    if key == "hermann2021-site2":
        return hermann2021(2)
    raise SequenceError(f"unknown sequence preset {name!r}; choose one of {', '.join(PRESETS)}")
