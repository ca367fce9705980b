"""The MNI template warped into subjects."""

from __future__ import annotations

import numpy as np

from mrfengine.phantom import AnatomyConfig, GridConfig
from mrfengine.phantom.anatomy import (
    Deformation,
    grid_affine,
    load_template,
    random_deformation,
    subject_anatomy,
)
from mrfengine.phantom.fields import SmoothField


def test_template_fractions_are_consistent():
    t = load_template((1.0, 1.0, 2.0))
    assert t.gm.dtype == np.float32
    assert np.all(t.gm + t.wm <= t.brain + 1e-5)
    assert np.median(t.t1w[t.wm > 0.95]) > 0.9


def test_identity_deformation_reproduces_the_template():
    # A 1 mm grid whose voxel centres fall on template voxel centres, no
    # deformation: the fractions are the template's own values.
    grid = GridConfig(shape_zyx=(4, 50, 50), voxel_size_mm=(1.0, 1.0, 1.0), slab_center_mm=20.5,
                      center_mm=(0.5, -16.5))
    rng = np.random.default_rng(0)
    ident = Deformation(np.array([0.5, -16.5, 20.5]), np.eye(3), np.zeros(3),
                        (SmoothField(rng), SmoothField(rng), SmoothField(rng)), 0.0)
    tpl = load_template((1.0, 1.0, 1.0))
    a = subject_anatomy(grid, ident, tpl)
    inv = np.linalg.inv(tpl.affine)
    aff = grid_affine(grid)
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in grid.shape_zyx), indexing="ij")
    world = aff[:3, :3] @ np.stack([xx.ravel(), yy.ravel(), zz.ravel()]) + aff[:3, 3, None]
    ijk = np.rint(inv[:3, :3] @ world + inv[:3, 3, None]).astype(int)
    expect_brain = tpl.brain[tuple(ijk)].reshape(grid.shape_zyx)
    expect_tissue = (tpl.gm + tpl.wm)[tuple(ijk)].reshape(grid.shape_zyx)
    np.testing.assert_allclose(a.brain, expect_brain, atol=1e-5)
    np.testing.assert_allclose(a.gm + a.wm, expect_tissue, atol=1e-5)
    assert a.brain.sum() > 1000


def test_subject_fractions():
    grid = GridConfig(shape_zyx=(12, 64, 64), voxel_size_mm=(3.5, 3.5, 6.0), slab_center_mm=17.0)
    a = subject_anatomy(grid, random_deformation(AnatomyConfig(), grid, np.random.default_rng(1)))
    for f in (a.gm, a.wm, a.csf, a.dgm):
        assert f.min() >= 0 and f.max() <= 1
    np.testing.assert_allclose(a.gm + a.wm + a.csf, a.brain, atol=1e-4)
    assert np.all(a.dgm <= a.gm + 1e-6)
    assert a.dgm.sum() > 0 and a.ventricles.sum() > 0
    # The ventricles hold CSF and lie deep in the brain.
    assert np.all(a.csf[a.ventricles] > 0.5)


def test_subjects_differ_and_repeat():
    grid = GridConfig(shape_zyx=(6, 48, 48), voxel_size_mm=(4.0, 4.0, 8.0))

    def make(seed):
        return subject_anatomy(grid, random_deformation(AnatomyConfig(), grid, np.random.default_rng(seed)))

    a, b, a2 = make(1), make(2), make(1)
    np.testing.assert_array_equal(a.gm, a2.gm)
    assert np.abs(a.gm - b.gm).mean() > 0.01


def test_subject_tissues_are_the_most_likely_tissue_of_each_template_voxel():
    pop = load_template((1.0, 1.0, 1.0), "population")
    sub = load_template((1.0, 1.0, 1.0), "subject")
    np.testing.assert_array_equal(sub.brain, pop.brain)
    np.testing.assert_array_equal(sub.t1w, pop.t1w)
    # No partial-volume blur at the template's own voxel size: crisp labels.
    assert set(np.unique(sub.gm)) <= {0.0, 1.0} and set(np.unique(sub.wm)) <= {0.0, 1.0}
    assert np.all(sub.gm + sub.wm <= sub.brain)
    csf = pop.brain - pop.gm - pop.wm
    clear_gm = (pop.gm > pop.wm + 0.05) & (pop.gm > csf + 0.05)
    clear_wm = (pop.wm > pop.gm + 0.05) & (pop.wm > csf + 0.05)
    assert np.all(sub.gm[clear_gm] == 1) and np.all(sub.wm[clear_wm] == 1)
    # Same tissue volumes within 15%: the labels redistribute, they do not invent tissue.
    for s, p in ((sub.gm, pop.gm), (sub.wm, pop.wm)):
        assert abs(s.sum() / p.sum() - 1) < 0.15


def test_subject_fractions_are_crisp_inside_tissues_and_mixed_at_boundaries():
    grid = GridConfig(shape_zyx=(6, 96, 96), voxel_size_mm=(1.0, 1.0, 2.0), slab_center_mm=30.0)
    deformation = random_deformation(AnatomyConfig(), grid, np.random.default_rng(4))
    mixed = {}
    for model in ("subject", "population"):
        a = subject_anatomy(grid, deformation, load_template((1.0, 1.0, 2.0), model))
        np.testing.assert_allclose(a.gm + a.wm + a.csf, a.brain, atol=1e-4)
        gm = a.gm[a.brain >= 0.5]
        mixed[model] = float(np.mean((gm > 0.1) & (gm < 0.9)))
        if model == "subject":
            assert np.mean(gm >= 0.99) > 0.1  # pure grey matter exists
    # A population map is mostly mixture; one brain is mostly pure tissue.
    assert mixed["subject"] < 0.5 * mixed["population"]


def test_unknown_fraction_model_is_refused():
    import pytest

    from mrfengine.errors import ValidationError

    with pytest.raises(ValidationError, match="fractions"):
        load_template((1.0, 1.0, 1.0), "smooth")
    with pytest.raises(ValidationError, match="tissue_fractions"):
        AnatomyConfig(tissue_fractions="smooth")
