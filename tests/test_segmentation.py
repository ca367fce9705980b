"""Tissue probability maps from a T1 map (mrfengine.segmentation)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.segmentation import (
    CLASSES,
    TissueSegmentation,
    mni152_priors,
    segment_tissues,
)

T1_MS = {"WM": 830.0, "GM": 1330.0, "CSF": 3400.0}


def _phantom(shape=(12, 40, 40), *, classes=("WM", "GM", "CSF"), noise=0.02, seed=0):
    """Nested spheres (WM core, GM shell, CSF rim) with partial-volume edges; T1 linear in the fractions."""
    radii = {"WM": 9.0, "GM": 14.0, "CSF": 17.0}
    fine = 4  # supersampled edges: true fractions
    zz, yy, xx = np.meshgrid(*[(np.arange(n * fine) + 0.5) / fine - 0.5 - (n - 1) / 2 for n in shape], indexing="ij")
    rr = np.sqrt((2.5 * zz) ** 2 + yy**2 + xx**2)  # 2.5 x thicker slices
    inner = 0.0
    fractions = {}
    for name in ("WM", "GM", "CSF"):
        shell = ((rr >= inner) & (rr < radii[name])).astype(np.float32)
        fractions[name] = shell.reshape(shape[0], fine, shape[1], fine, shape[2], fine).mean(axis=(1, 3, 5))
        inner = radii[name]
    present = [c for c in ("WM", "GM", "CSF") if c in classes]
    if "CSF" not in classes:  # the GM shell goes to the edge
        fractions["GM"] = fractions["GM"] + fractions["CSF"]
        fractions["CSF"] = np.zeros(shape, np.float32)
    brain = sum(fractions[c] for c in present) > 0.5
    total = np.maximum(sum(fractions.values()), 1e-6)  # the outermost voxels: the tissue part of them
    fractions = {c: f / total * brain for c, f in fractions.items()}
    t1 = sum(fractions[c] * T1_MS[c] for c in ("WM", "GM", "CSF"))
    rng = np.random.default_rng(seed)
    t1 = np.where(brain, t1 * (1 + noise * rng.standard_normal(shape)), 0).astype(np.float32)
    return t1, brain, fractions


def _dice(a, b):
    return 2 * np.sum(a & b) / max(1, a.sum() + b.sum())


@pytest.fixture(scope="module")
def phantom():
    return _phantom()


@pytest.fixture(scope="module")
def segmented(phantom):
    t1, brain, _ = phantom
    return segment_tissues(t1, brain, (2.5, 1.0, 1.0), priors=None)


def test_probabilities_are_fractions_in_the_mask_and_zero_outside(phantom, segmented):
    t1, brain, _ = phantom
    assert isinstance(segmented, TissueSegmentation)
    assert set(segmented.probabilities) == set(CLASSES)
    total = np.zeros(t1.shape, np.float32)
    for name in CLASSES:
        p = segmented.probabilities[name]
        assert p.dtype == np.float32 and p.shape == t1.shape
        assert p.min() >= 0 and p.max() <= 1
        assert np.all(p[~brain] == 0), name
        total += p
    np.testing.assert_allclose(total[brain], 1, atol=1e-5)


def test_three_classes_are_found_with_partial_volumes(phantom, segmented):
    _, brain, truth = phantom
    for name in CLASSES:
        got = segmented.probabilities[name] >= 0.8
        assert _dice(got, (truth[name] >= 0.8) & brain) > 0.95, name
    # fractions, not posteriors: in the boundary voxels the probability follows the true fraction
    edge = brain & (truth["GM"] > 0.15) & (truth["GM"] < 0.85) & (truth["CSF"] < 0.01)
    assert edge.sum() > 50
    err = np.abs(segmented.probabilities["GM"][edge] - truth["GM"][edge])
    assert np.median(err) < 0.1
    info = segmented.info
    json.dumps(info)  # JSON-compatible, as the stage's provenance stores it
    assert info["method"] == "pv" and info["priors"] is None
    for name in CLASSES:
        assert abs(info["class_t1_ms"][name] / T1_MS[name] - 1) < 0.05, info["class_t1_ms"]


def test_two_class_volume():
    t1, brain, truth = _phantom(classes=("WM", "GM"))
    seg = segment_tissues(t1, brain, (2.5, 1.0, 1.0), priors=None)
    for name in ("WM", "GM"):
        assert _dice(seg.probabilities[name] >= 0.8, (truth[name] >= 0.8) & brain) > 0.95, name
    assert (seg.probabilities["CSF"][brain] >= 0.5).mean() < 0.01


def test_deterministic(phantom, segmented):
    t1, brain, _ = phantom
    again = segment_tissues(t1.copy(), brain.astype(np.uint8), (2.5, 1.0, 1.0), priors=None)
    for name in CLASSES:
        np.testing.assert_array_equal(again.probabilities[name], segmented.probabilities[name])


def test_voxels_without_an_estimate_take_the_proportions(phantom):
    t1, brain, _ = phantom
    holed = t1.copy()
    hole = np.zeros_like(brain)
    hole[6, 18:22, 18:22] = True
    holed[hole] = 0
    seg = segment_tissues(holed, brain, (2.5, 1.0, 1.0), priors=None)
    assert seg.info["not_estimated_voxels"] == int(hole.sum())
    total = sum(seg.probabilities[n] for n in CLASSES)
    np.testing.assert_allclose(total[hole], 1, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"mask": np.ones((3, 4, 4), bool)}, "mask has shape"),
    ({"t2star_ms": np.ones((3, 4, 4))}, "t2star_ms has shape"),
    ({"t1_ms": np.ones((4, 4))}, "3D"),
    ({"mask": "nan"}, "mask holds NaN"),
    ({"mask": "empty"}, "mask is empty"),
    ({"mask": "two"}, "0/1"),
    ({"spacing_zyx": (2.0, 0.0, 1.0)}, "spacing_zyx must be three positive"),
    ({"spacing_zyx": (2.0, 1.0)}, "spacing_zyx"),
    ({"t1_ms": "nan"}, "NaN/Inf value(s) inside the mask"),
    ({"t1_ms": "negative"}, "negative"),
    ({"affine": np.diag([3.0, 1.0, 2.0, 1.0])}, "affine's voxel sizes"),
    ({"affine": np.eye(3)}, "4 x 4"),
    ({"priors": "spm"}, "priors must be one of"),
    ({"method": "fast"}, "method must be one of"),
    ({"prior_weight": 1.5}, "prior_weight"),
    ({"n_threads": -1}, "n_threads"),
])
def test_bad_inputs_are_named(change, message):
    t1 = np.full((6, 10, 10), 1000.0, np.float32)
    mask = np.ones(t1.shape, bool)
    kwargs = {"t1_ms": t1, "mask": mask, "spacing_zyx": (2.0, 1.0, 1.0), "priors": None}
    special = {
        ("mask", "nan"): np.where(np.arange(mask.size).reshape(mask.shape) == 0, np.nan, 1.0),
        ("mask", "empty"): np.zeros_like(mask),
        ("mask", "two"): mask.astype(int) * 2,
        ("t1_ms", "nan"): np.where(np.arange(t1.size).reshape(t1.shape) == 7, np.nan, t1),
        ("t1_ms", "negative"): np.where(np.arange(t1.size).reshape(t1.shape) == 7, -5.0, t1),
    }
    for key, value in change.items():
        kwargs[key] = special[key, value] if isinstance(value, str) and (key, value) in special else value
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        segment_tissues(**kwargs)


def test_one_tissue_is_that_tissue():
    t1 = np.random.default_rng(2).normal(T1_MS["GM"], 25, (6, 10, 10)).astype(np.float32)
    seg = segment_tissues(t1, np.ones(t1.shape, bool), (2.0, 1.0, 1.0), priors=None)
    assert (seg.probabilities["GM"] >= 0.8).mean() > 0.97


@pytest.mark.parametrize("scale, message", [(1e-3, "seconds"), (1.0, "at least 100")])
def test_maps_in_seconds_and_too_few_voxels_are_refused(phantom, scale, message):
    t1, brain, _ = phantom
    mask = brain if scale != 1.0 else np.zeros_like(brain)
    if scale == 1.0:
        mask[6, 20, 20:30] = True
    with pytest.raises(ValidationError, match=message):
        segment_tissues(t1 * scale, mask, (2.5, 1.0, 1.0), priors=None)


# ----------------------------------------------------------------- with ANTs: MNI152 priors and Atropos
def _ants_or_skip():
    from mrfengine._ants import (
        import_ants,  # ITK's thread count settled before ANTs first runs
    )

    try:
        return import_ants()
    except ImportError:
        pytest.skip("antspyx is not installed")


@pytest.fixture(scope="module")
def mni_subject():
    """A T1 map made from the MNI152 maps at 6 mm (each 2 mm voxel its likeliest tissue, then block
    fractions), shifted by centimetres and rotated by 10 degrees away from MNI space."""
    _ants_or_skip()
    from mrfengine.segmentation import _mni152

    _, gm, wm, affine = _mni152(2)
    brain2 = (gm + wm) > 0.05
    label = np.argmax(np.stack([1 - gm - wm, gm, wm]), axis=0)
    crop = tuple(slice(0, (n // 3) * 3) for n in gm.shape)

    def blocks(a):
        a = a[crop].astype(np.float32)
        return a.reshape(a.shape[0] // 3, 3, a.shape[1] // 3, 3, a.shape[2] // 3, 3).mean(axis=(1, 3, 5))

    brain = blocks(brain2) > 0.5
    fractions = {name: blocks((label == k) & brain2) for k, name in enumerate(("CSF", "GM", "WM"))}
    total = np.maximum(sum(fractions.values()), 1e-6)
    fractions = {k: np.where(brain, v / total, 0) for k, v in fractions.items()}
    t1 = sum(fractions[k] * T1_MS[k] for k in fractions).astype(np.float32)
    t1[brain] *= 1 + 0.02 * np.random.default_rng(1).standard_normal(int(brain.sum()))
    angle = np.deg2rad(10)
    rot = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    moved = np.eye(4)
    moved[:3, :3] = rot @ np.diag([6.0, 6.0, 6.0])
    moved[:3, 3] = affine[:3, 3] + [25.0, -30.0, 20.0]
    return t1, brain, fractions, moved


@pytest.fixture(scope="module")
def mni_segmented(mni_subject):
    t1, brain, _, affine = mni_subject
    return segment_tissues(t1, brain, (6.0, 6.0, 6.0), affine=affine)


def test_mni152_priors_are_registered_onto_a_moved_brain(mni_subject, mni_segmented):
    t1, brain, truth, affine = mni_subject
    seg = mni_segmented
    assert seg.info["priors"] == "mni152"
    json.dumps(seg.info)
    assert seg.info["prior"]["template_r1_correlation"] > 0.8, seg.info["prior"]
    assert _dice(seg.probabilities["WM"] >= 0.8, truth["WM"] >= 0.8) > 0.9
    total = sum(seg.probabilities[n] for n in CLASSES)
    np.testing.assert_allclose(total[brain], 1, atol=1e-5)
    assert all(np.all(seg.probabilities[n][~brain] == 0) for n in CLASSES)
    # the priors themselves, registered and blurred, follow the truth (10 degrees and cm away from MNI)
    priors, info = mni152_priors(t1, brain, affine)
    for name in ("GM", "WM"):
        assert np.corrcoef(priors[name][brain], truth[name][brain])[0, 1] > 0.85, name
    np.testing.assert_allclose(sum(priors.values()), 1, atol=1e-5)
    # the same input, the same registration (a fixed seed, ITK's threads settled by mrfengine._ants)
    assert info["affine_parameters"] == seg.info["prior"]["affine_parameters"]


def test_atropos_posteriors(phantom):
    _ants_or_skip()
    t1, brain, truth = phantom
    seg = segment_tissues(t1, brain, (2.5, 1.0, 1.0), priors=None, method="atropos")
    assert seg.info["method"] == "atropos"
    total = sum(seg.probabilities[n] for n in CLASSES)
    np.testing.assert_allclose(total[brain], 1, atol=1e-5)
    for name in CLASSES:
        p = seg.probabilities[name]
        assert np.all(p[~brain] == 0)
        assert _dice(p >= 0.8, (truth[name] >= 0.8) & brain) > 0.85, name
