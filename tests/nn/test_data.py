"""PatchSampler: seeded patches of the cohort store, split, oversampling, normalisation."""

import numpy as np
import pytest
import torch

from mrfengine.errors import ValidationError
from mrfengine.io import Cohort
from mrfengine.nn import fit_normalisation, get_config
from mrfengine.nn.data import PatchSampler, fit_cohort_normalisation, resolve_target

from _tiny_cohort import tiny_cohort_path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return Cohort.open(tiny_cohort_path(tmp_path_factory))


@pytest.fixture(scope="module")
def config():
    return get_config("MSE-5").with_architecture(depth=2, base_filters=4)


@pytest.fixture(scope="module")
def norm(cohort, config):
    return fit_cohort_normalisation(cohort, config)


def _sampler(cohort, config, norm, **kw):
    kw.setdefault("patch_size", 32)
    kw.setdefault("patches_per_slice", 2)
    return PatchSampler(cohort, config, norm, **kw)


def test_same_seed_same_batches_other_seed_others(cohort, config, norm):
    a = list(_sampler(cohort, config, norm, seed=3).batches(1, 8))
    b = list(_sampler(cohort, config, norm, seed=3).batches(1, 8))
    c = list(_sampler(cohort, config, norm, seed=4).batches(1, 8))
    assert len(a) == len(b) == len(c) > 1
    for (xa, ya), (xb, yb) in zip(a, b):
        assert xa.dtype == torch.float32 and xa.shape[1:] == (35, 32, 32) and ya.shape[1:] == (5, 32, 32)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not all(torch.equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
    # epochs differ, and an epoch is drawn without the ones before it
    s = _sampler(cohort, config, norm, seed=3)
    assert not np.array_equal(s.epoch_plan(0), s.epoch_plan(1))
    assert np.array_equal(s.epoch_plan(1), _sampler(cohort, config, norm, seed=3).epoch_plan(1))


def test_split_is_respected(cohort, config, norm):
    for split in ("train", "validation", "test"):
        s = _sampler(cohort, config, norm, split=split)
        expected = cohort.subjects_in(split)
        assert s.subjects == expected
        assert {r.subject for r in s.slices} == set(expected)
    train = _sampler(cohort, config, norm)
    assert not {r.subject for r in train.slices} & set(cohort.subjects_in("test") + cohort.subjects_in("validation"))
    with pytest.raises(ValidationError, match="split"):
        _sampler(cohort, config, norm, split="holdout")


def test_lesion_slices_are_oversampled(cohort, config, norm):
    s = _sampler(cohort, config, norm, patches_per_slice=3, lesion_oversampling=5)
    expected_lesion = [bool(np.asarray(cohort[r.subject].annotations["lesion"][r.z]).any()) for r in s.slices]
    assert [r.lesion for r in s.slices] == expected_lesion
    assert 0 < sum(expected_lesion) < len(expected_lesion)
    counts = np.bincount(s.epoch_plan(0)[:, 0], minlength=len(s.slices))
    assert counts.tolist() == [15 if les else 3 for les in expected_lesion]
    assert len(s) == 3 * (len(s.slices) + 4 * sum(expected_lesion))
    assert sum(x.shape[0] for x, _ in s.batches(0, 64)) == len(s)


def test_oversampled_lesion_patches_hold_lesion(cohort, config, norm):
    s = _sampler(cohort, config, norm, patches_per_slice=3, lesion_oversampling=5, augment=False)
    plan = s.epoch_plan(1)
    p = s.patch_size
    held, extra = 0, 0
    for i, ref in enumerate(s.slices):
        rows = plan[plan[:, 0] == i]
        if not ref.lesion:
            continue
        yx = np.asarray(ref.lesion_yx)
        inside = [bool(np.any((yx[:, 0] >= y0) & (yx[:, 0] < y0 + p) & (yx[:, 1] >= x0) & (yx[:, 1] < x0 + p)))
                  for _, y0, x0, _, _ in rows]
        held += sum(inside)
        extra += 12  # 15 patches, of which 3 uniform
        assert sum(inside) >= 12, (ref, inside)  # the 12 extra ones are centred on a lesion voxel (+- p/4)
    assert held >= extra > 0


def test_lesion_labels_are_the_slices_connected_lesions(cohort, config, norm):
    from scipy import ndimage

    s = _sampler(cohort, config, norm)
    for ref in s.slices:
        mask = np.asarray(cohort[ref.subject].annotations["lesion"][ref.z]) >= 0.5
        labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
        assert len(ref.lesion_label) == len(ref.lesion_yx) == int(mask.sum())
        assert sorted(set(ref.lesion_label)) == list(range(n))
        for (y, x), k in zip(ref.lesion_yx, ref.lesion_label):
            assert labels[y, x] == k + 1


def _two_lesion_centres(cohort, config, norm, centring, epochs=3):
    """A 64 x 64 slice with a 10 x 10 lesion at the top left and a one-voxel one at
    the bottom right: which lesion is each oversampled patch centred on?"""
    from mrfengine.nn.data import SliceRef

    s = _sampler(cohort, config, norm, patch_size=16, patches_per_slice=50, lesion_oversampling=5,
                 augment=False, lesion_centring=centring)
    big = [(y, x) for y in range(5, 15) for x in range(5, 15)]
    sid = s.slices[0].subject
    assert cohort[sid].shape[1:] == (64, 64)
    s.slices = [SliceRef(sid, 0, True, tuple(big) + ((58, 58),), (0,) * len(big) + (1,))]
    small = []
    for e in range(epochs):
        plan = s.epoch_plan(e)
        assert plan.shape[0] == 250
        cy, cx = plan[:, 1] + 8, plan[:, 2] + 8
        near_small = (np.abs(cy - 58) <= 6) & (np.abs(cx - 58) <= 6)
        near_big = (cy >= 5 - 4) & (cy < 15 + 4) & (cx >= 5 - 4) & (cx < 15 + 4)
        small.append(int(near_small.sum()))
        assert int((near_small | near_big).sum()) >= 200  # the 200 oversampled patches, at least, sit on one
    return np.array(small) / 200


def test_lesion_centring_draws_small_lesions_as_often_as_large_ones(cohort, config, norm):
    by_voxel = _two_lesion_centres(cohort, config, norm, "voxel")
    by_lesion = _two_lesion_centres(cohort, config, norm, "lesion")
    assert np.all(by_voxel < 0.08)  # 1 voxel in 101 (+ uniform patches that land there)
    assert np.all((by_lesion > 0.38) & (by_lesion < 0.65))  # one lesion in two
    # "voxel" is the default, and draws what the sampler always drew
    a = _sampler(cohort, config, norm, seed=7).epoch_plan(2)
    assert np.array_equal(a, _sampler(cohort, config, norm, seed=7, lesion_centring="voxel").epoch_plan(2))
    with pytest.raises(ValidationError, match="lesion_centring"):
        _sampler(cohort, config, norm, lesion_centring="component")


def test_brain_centred_patches_sit_on_the_brain(cohort, config, norm):
    """patch_centring="brain": each slice's patches are centred on a brain voxel (up to
    the clipping at the slice's edge), hold more brain than uniform ones, and the
    slices' patch counts and the oversampled patches' rule stay as they were."""
    kw = dict(patch_size=16, patches_per_slice=8, augment=False, seed=2)
    uniform = _sampler(cohort, config, norm, **kw)
    brain = _sampler(cohort, config, norm, patch_centring="brain", **kw)
    assert np.array_equal(uniform.epoch_plan(1), _sampler(cohort, config, norm, patch_centring="uniform",
                                                          **kw).epoch_plan(1))
    a, b = uniform.epoch_plan(1), brain.epoch_plan(1)
    assert np.array_equal(np.bincount(a[:, 0]), np.bincount(b[:, 0]))
    p = 16
    fraction = {"uniform": [], "brain": []}
    centred = 0
    for name, plan, sampler in (("uniform", a, uniform), ("brain", b, brain)):
        for i, ref in enumerate(sampler.slices):
            mask = np.asarray(cohort[ref.subject].brain_mask[ref.z]) > 0
            if ref.lesion or not mask.any():  # lesion slices: their extra patches follow the lesions
                continue
            h, w = mask.shape
            for _, y0, x0, _, _ in plan[plan[:, 0] == i]:
                fraction[name].append(mask[y0:y0 + p, x0:x0 + p].mean())
                if name == "brain" and 0 < y0 < h - p and 0 < x0 < w - p:
                    assert mask[y0 + p // 2, x0 + p // 2], (ref.subject, ref.z, y0, x0)  # the drawn voxel
                    centred += 1
    assert centred > 20
    assert np.mean(fraction["brain"]) > np.mean(fraction["uniform"]) + 0.1
    assert min(fraction["brain"]) > 0
    with pytest.raises(ValidationError, match="patch_centring"):
        _sampler(cohort, config, norm, patch_centring="mask")


def test_patches_are_rotated_flipped_crops_in_network_units(cohort, config, norm):
    s = _sampler(cohort, config, norm, seed=1)
    plan = s.epoch_plan(0)
    assert set(plan[:, 3]) == {0, 1, 2, 3} and set(plan[:, 4]) == {0, 1}
    scale, offset = norm.scale_and_offset()
    x_batch, y_batch = next(s.batches(0, 6))
    for k, (i, y0, x0, rot, flip) in enumerate(plan[:6]):
        ref = s.slices[i]
        sub = cohort[ref.subject]
        x = np.asarray(sub.mrf[:, ref.z]) * scale[:, None, None] + offset[:, None, None]
        t1 = np.asarray(sub.truth["T1"][ref.z]) / 1000.0
        les = np.asarray(sub.annotations["lesion"][ref.z]).astype(np.float32)
        crops = [a[..., y0:y0 + 32, x0:x0 + 32] for a in (x, t1, les)]
        if flip:
            crops = [c[..., ::-1] for c in crops]
        crops = [np.rot90(c, rot, axes=(-2, -1)) for c in crops]
        np.testing.assert_allclose(x_batch[k].numpy(), crops[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(y_batch[k, 0].numpy(), crops[1], rtol=1e-6)
        np.testing.assert_array_equal(y_batch[k, 4].numpy(), crops[2])


def test_normalisation_comes_from_the_training_split_only(cohort, config, norm):
    def stats(split):
        sids = cohort.subjects_in(split)
        return fit_normalisation([np.asarray(cohort[s].mrf[:]) for s in sids],
                                 mask=[np.asarray(cohort[s].brain_mask[:]) > 0 for s in sids])

    train_only = stats("train")
    np.testing.assert_allclose(norm.mean, train_only.mean, rtol=1e-9)
    np.testing.assert_allclose(norm.std, train_only.std, rtol=1e-9)
    everyone = fit_normalisation([np.asarray(cohort[s].mrf[:]) for s in cohort.subjects],
                                 mask=[np.asarray(cohort[s].brain_mask[:]) > 0 for s in cohort.subjects])
    assert not np.allclose(norm.mean, everyone.mean, rtol=1e-6)


def test_targets_from_a_derived_group_and_checks(cohort, config, norm):
    assert resolve_target("truth/T1", "T1", "derived:unet") == "derived/unet/T1"
    assert resolve_target("truth/GM", "GM", "derived:unet") == "truth/GM"
    assert resolve_target("truth/T1", "T1") == "truth/T1"
    with pytest.raises(ValidationError, match="map_source"):
        resolve_target("truth/T1", "T1", "matched")
    with pytest.raises(ValidationError, match="derived/none/T1"):
        _sampler(cohort, config, norm, map_source="derived:none")
    with pytest.raises(ValidationError, match="multiple of 4"):
        _sampler(cohort, config, norm, patch_size=30)
    with pytest.raises(ValidationError, match="channels"):
        PatchSampler(cohort, get_config("MSE-2-1").with_architecture(depth=2, base_filters=4), norm)
