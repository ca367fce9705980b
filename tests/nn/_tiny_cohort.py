"""One tiny simulated cohort per test session, shared by the data and training tests."""

from pathlib import Path

_PATHS: dict[str, Path] = {}

#: A training configuration for the tiny cohort: MSE-5, depth 2, 4 base filters, one thread.
TRAIN_TOML = """\
cohort = "{cohort}"
network = "MSE-5"
output_dir = "{out}"
epochs = {epochs}
batch_size = 32
patches_per_slice = 1
patch_size = 32
depth = 2
base_filters = 4
seed = 5
threads = 1
"""


def tiny_cohort_path(tmp_path_factory) -> Path:
    """``simulate_cohort(preset="tiny", seed=0)`` (6 subjects, 64 x 64 x 12), made once."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _PATHS:
        from mrfengine.phantom import simulate_cohort

        path = tmp_path_factory.mktemp("nn_cohort") / "tiny.zarr"
        simulate_cohort(path, preset="tiny", seed=0)
        _PATHS[key] = path
    return _PATHS[key]
