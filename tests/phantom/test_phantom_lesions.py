"""Lesion sizes, rendering and simulated annotations."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mrfengine.phantom import AnatomyConfig, AnnotationConfig, GridConfig, LesionConfig
from mrfengine.phantom.anatomy import grid_affine, random_deformation, subject_anatomy
from mrfengine.phantom.lesions import Lesion, _core_radius, annotate, render_lesions, sample_lesions


@pytest.mark.parametrize("volume", [3.0, 20.0, 400.0, 6000.0])
def test_soft_sphere_holds_its_volume(volume):
    r, w = _core_radius(volume, 0.6)
    x = np.linspace(0, r + 40 * w, 200001)
    held = np.trapezoid(4 * np.pi * x**2 / (1 + np.exp((x - r) / w)), x)
    assert held == pytest.approx(volume, rel=2e-3)


def _sphere(volume, centre=(0.25, -0.4, 10.3)):
    r, w = _core_radius(volume, 0.6)
    return Lesion("deep", centre, (r, r, r), tuple(map(tuple, np.eye(3))), volume, 1.5, 1.2, 0.75, w,
                  ((0.0, 0.0, 0.0, 0.0, 0.0),))


@pytest.mark.parametrize("volume", [10.0, 300.0, 3000.0])
def test_rendered_volume_matches(volume):
    grid = GridConfig(shape_zyx=(20, 40, 40), voxel_size_mm=(1.0, 1.0, 2.0), slab_center_mm=10.0, center_mm=(0, 0))
    aff = grid_affine(grid)
    maps = render_lesions([_sphere(volume)], aff, grid.shape_zyx, LesionConfig(irregularity=0.0))
    assert maps.occupancy.sum() * 2.0 == pytest.approx(volume, rel=0.03)
    assert maps.occupancy.max() <= 1
    assert set(np.unique(maps.owner)) == {0, 1}
    assert np.all(maps.t1_factor[maps.owner == 1] == 1.5)


def test_sampled_lesions_sit_in_white_matter():
    grid = GridConfig(shape_zyx=(24, 96, 96), voxel_size_mm=(2.5, 2.5, 4.0), slab_center_mm=18.0)
    anat = subject_anatomy(grid, random_deformation(AnatomyConfig(), grid, np.random.default_rng(3)))
    aff = grid_affine(grid)
    cfg = LesionConfig()
    lesions = sample_lesions(anat, aff, cfg, np.random.default_rng(4))
    assert cfg.count_range[0] <= len(lesions) <= cfg.count_range[1]
    inv = np.linalg.inv(aff)
    for les in lesions:
        x, y, z = np.rint(inv[:3, :3] @ np.asarray(les.center_mm) + inv[:3, 3]).astype(int)
        assert anat.wm[z, y, x] > 0.4
        assert cfg.t1_factor[0] <= les.t1_factor <= cfg.t1_factor[1]
        assert cfg.volume_range_mm3[0] <= les.volume_mm3 <= cfg.volume_range_mm3[1]
    assert {les.location for les in lesions} >= {"periventricular"}


def _two_blobs():
    frac = np.zeros((10, 30, 30), np.float32)
    owner = np.zeros(frac.shape, np.uint16)
    zz, yy, xx = np.mgrid[:10, :30, :30]
    for k, (c, r) in enumerate((((5, 8, 8), 4.0), ((5, 22, 22), 1.5)), start=1):
        d = np.sqrt((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2)
        f = np.clip(r + 0.5 - d, 0, 1)
        owner[f > 0] = k
        frac = np.maximum(frac, f)
    vols = np.bincount(owner.ravel(), weights=frac.ravel())[1:]
    return frac, owner, vols


def test_annotation_without_variability_is_the_thresholded_truth():
    frac, owner, vols = _two_blobs()
    cfg = AnnotationConfig(threshold=(0.5, 0.5), lesion_threshold_sd=0.0, boundary_noise=0.0, miss_probability=0.0)
    mask = annotate(frac, owner, vols, (1.0, 1.0, 1.0), cfg, np.random.default_rng(0))
    np.testing.assert_array_equal(mask, (frac > 0.5).astype(np.uint8))


def test_annotation_sessions_disagree_a_little_and_miss_small_lesions():
    frac, owner, vols = _two_blobs()
    cfg = AnnotationConfig()
    a = annotate(frac, owner, vols, (1.0, 1.0, 1.0), cfg, np.random.default_rng(1)).astype(bool)
    b = annotate(frac, owner, vols, (1.0, 1.0, 1.0), cfg, np.random.default_rng(2)).astype(bool)
    dice = 2 * (a & b).sum() / (a.sum() + b.sum())
    assert 0.5 < dice < 1.0
    # Never far from a true lesion.
    from scipy import ndimage as ndi

    assert not (a & ~ndi.binary_dilation(frac > 0.02, iterations=2)).any()
    always_miss = replace(cfg, miss_volume_mm3=50.0, miss_probability=1.0)
    m = annotate(frac, owner, vols, (1.0, 1.0, 1.0), always_miss, np.random.default_rng(1)).astype(bool)
    assert vols[1] < 50 < vols[0]
    assert not m[:, 15:, 15:].any() and m[:, :15, :15].any()


def test_no_lesions_no_annotation():
    z = np.zeros((4, 8, 8), np.float32)
    out = annotate(z, z.astype(np.uint16), np.zeros(0), (1.0, 1.0, 1.0), AnnotationConfig(), np.random.default_rng(0))
    assert out.dtype == np.uint8 and not out.any()
