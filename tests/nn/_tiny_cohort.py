"""One tiny simulated cohort per test session, shared by the data and training tests."""

from pathlib import Path

_PATHS: dict[str, Path] = {}


def tiny_cohort_path(tmp_path_factory) -> Path:
    """``simulate_cohort(preset="tiny", seed=0)`` (6 subjects, 64 x 64 x 12), made once."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _PATHS:
        from mrfengine.phantom import simulate_cohort

        path = tmp_path_factory.mktemp("nn_cohort") / "tiny.zarr"
        simulate_cohort(path, preset="tiny", seed=0)
        _PATHS[key] = path
    return _PATHS[key]
