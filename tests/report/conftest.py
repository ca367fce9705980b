"""A tiny synthetic cohort of evaluated subjects, built from seeded arrays."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mrfengine import metrics


def synthetic_subject(seed: int, shape=(32, 32, 8)):
    rng = np.random.default_rng(seed)
    ref = np.zeros(shape, dtype=bool)
    x, y, z = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(4):
        c = rng.integers(6, shape[0] - 6), rng.integers(6, shape[1] - 6), rng.integers(2, shape[2] - 2)
        r = rng.uniform(1.5, 3.5)
        ref |= (x - c[0]) ** 2 + (y - c[1]) ** 2 + (2 * (z - c[2])) ** 2 <= r * r
    prob = ndimage.gaussian_filter(ref.astype(np.float32), 1.0) + 0.05 * rng.random(shape, dtype=np.float32)
    prob = np.clip(prob, 0, 1).astype(np.float32)
    background = ndimage.gaussian_filter(rng.random(shape), 3) + 0.3 * ref
    second = ndimage.binary_erosion(ref) if seed % 2 else ref
    return background, prob, ref, second


@pytest.fixture(scope="session")
def cohort():
    records, splits, volumes = {}, {}, {}
    for i in range(5):
        sid = f"sub-{i + 1:02d}"
        background, prob, ref, second = synthetic_subject(i)
        records[sid] = metrics.evaluate_subject(
            {"lesion": prob}, {"lesion": ref}, second_annotation=second, voxel_size=(1, 1, 2)
        )
        splits[sid] = "test" if i >= 3 else "train"
        volumes[sid] = (background, prob, ref)
    return records, splits, volumes
