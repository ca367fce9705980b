"""Whole-volume metrics of one subject (issue 6: 240x240x60, all metrics, 101 thresholds, < 5 s).

The synthetic subject: an ellipsoidal brain with smooth WM/GM probability
maps, T1/T2* maps and their "predicted" versions (5% multiplicative noise),
~30 ellipsoidal lesions from ~10 voxels to a few ml, and a smooth lesion
probability map (blurred lesions of varied contrast, smooth background up to
~0.2, a few false-positive blobs).  ``MRFENGINE_BENCH_SIZE=full`` gives the
240x240x60 volume; the default is 64x64x16.

The naive cases (one binarisation, or one labelling, per threshold) show what
the one-pass sweeps save; compare times within one run.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mrfengine import metrics
from mrfengine.metrics.sweep import detection_sweep_reference, dice_sweep_reference


def synthetic_subject(shape: tuple[int, int, int], n_lesions: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1, 1, n) for n in shape)
    X, Y, Z = np.meshgrid(x, y, z, indexing="ij", sparse=True)
    r = np.sqrt((X / 0.85) ** 2 + (Y / 0.9) ** 2 + (Z / 0.95) ** 2)
    brain = r < 1
    wm_prob = np.clip(ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 3) * 4 - 1.5 + (0.8 - r), 0, 1)
    wm_prob = (wm_prob * brain).astype(np.float32)
    gm_prob = ((1 - wm_prob) * brain).astype(np.float32)
    wm = wm_prob >= 0.5
    gm = brain & ~wm

    lesion = np.zeros(shape, dtype=bool)
    contrast = np.zeros(shape, dtype=np.float32)
    centres = np.argwhere(wm & (r < 0.8))
    radii = np.exp(rng.uniform(np.log(1.4), np.log(max(2.0, shape[0] / 24)), n_lesions))
    for c, rad in zip(centres[rng.choice(len(centres), n_lesions, replace=False)], radii):
        lo = np.maximum(c - int(rad) - 2, 0)
        hi = np.minimum(c + int(rad) + 3, shape)
        sub = tuple(slice(a, b) for a, b in zip(lo, hi))
        axes = np.ix_(*(np.arange(a, b) for a, b in zip(lo, hi)))
        d2 = sum(((g - ci) / (rad * k)) ** 2 for g, ci, k in zip(axes, c, (1.0, 0.8, 0.5)))
        blob = d2 <= 1
        lesion[sub] |= blob
        contrast[sub][blob] = rng.uniform(0.45, 1.0)
    prob = ndimage.gaussian_filter(contrast, 1.0)
    prob += 0.2 * ndimage.gaussian_filter(rng.random(shape, dtype=np.float32), 4)
    for c in np.argwhere(brain)[rng.choice(np.count_nonzero(brain), 5, replace=False)]:
        prob[tuple(c)] += 0.6  # false-positive specks
    prob = np.clip(ndimage.gaussian_filter(prob, 0.5) * brain, 0, 1).astype(np.float32)

    t1 = np.where(wm, 830.0, 1330.0) * (1 + 0.5 * lesion)
    t2 = np.where(wm, 53.0, 66.0) * (1 + 0.2 * lesion)
    t1_ref = (t1 * brain).astype(np.float32)
    t2_ref = (t2 * brain).astype(np.float32)
    noise = lambda: rng.normal(1.0, 0.05, shape).astype(np.float32)  # noqa: E731
    second = ndimage.binary_erosion(lesion) | (ndimage.binary_dilation(lesion) & (rng.random(shape) < 0.3))
    return {
        "pred": {"T1": t1_ref * noise(), "T2star": t2_ref * noise(), "NAWM": wm_prob * noise(), "GM": gm_prob, "lesion": prob},
        "ref": {"T1": t1_ref, "T2star": t2_ref, "NAWM": wm_prob, "GM": gm_prob, "lesion": lesion},
        "second": second,
        "brain": brain,
        "tissues": {"WM": wm & ~lesion, "GM": gm, "lesion": lesion},
    }


@pytest.fixture(scope="module")
def subject(full):
    shape = (240, 240, 60) if full else (64, 64, 16)
    s = synthetic_subject(shape, 30 if full else 8)
    n_les = metrics.label_lesions(s["ref"]["lesion"], min_size=10).n
    assert n_les >= (20 if full else 4), n_les
    return s


def _info(benchmark, s):
    if benchmark.stats is not None:
        benchmark.extra_info["shape"] = list(s["ref"]["lesion"].shape)
        benchmark.extra_info["n_lesions"] = metrics.label_lesions(s["ref"]["lesion"], min_size=10).n


def test_evaluate_subject_all_metrics(benchmark, subject):
    """Everything `mrfengine evaluate` computes for one subject, 101-threshold sweeps included."""
    s = subject
    rec = benchmark.pedantic(
        metrics.evaluate_subject,
        args=(s["pred"], s["ref"]),
        kwargs={"second_annotation": s["second"], "mask": s["brain"], "tissues": s["tissues"], "voxel_size": (1, 1, 2)},
        rounds=3,
        iterations=1,
    )
    assert len(rec["lesion"]["sweep"]["dice"]) == 101
    assert rec["summary"]["lesion_detection_rate"] is not None
    _info(benchmark, s)


def test_dice_sweep_one_pass(benchmark, subject):
    p, r = subject["pred"]["lesion"], subject["ref"]["lesion"]
    benchmark.pedantic(metrics.dice_sweep, args=(p, r), rounds=3, iterations=1)


def test_detection_sweep_one_pass(benchmark, subject):
    p, r = subject["pred"]["lesion"], subject["ref"]["lesion"]
    benchmark.pedantic(metrics.detection_sweep, args=(p, r), rounds=3, iterations=1)


def test_dice_sweep_naive(benchmark, subject):
    p, r = subject["pred"]["lesion"], subject["ref"]["lesion"]
    got = benchmark.pedantic(dice_sweep_reference, args=(p, r), rounds=1, iterations=1)
    np.testing.assert_array_equal(got, metrics.dice_sweep(p, r))


def test_detection_sweep_naive(benchmark, subject):
    p, r = subject["pred"]["lesion"], subject["ref"]["lesion"]
    got = benchmark.pedantic(detection_sweep_reference, args=(p, r), rounds=1, iterations=1)
    np.testing.assert_array_equal(got, metrics.detection_sweep(p, r))
