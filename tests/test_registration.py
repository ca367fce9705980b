"""Distortion correction (mrfengine.registration): a known distortion and motion are undone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from mrfengine.errors import ValidationError
from mrfengine.registration import PHASE_ENCODING_AXES, Registration, register_to_reference, true_displacement_residual

pytest.importorskip("ants")

SHAPE = (20, 64, 64)
SPACING = (2.0, 2.0, 2.0)


def _head(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'brain': an ellipsoid with blobs of three intensities, and its mask."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.85) ** 2 + (z / 0.9) ** 2 <= 1
    tissue = ndimage.gaussian_filter(rng.standard_normal(SHAPE), 3)
    image = np.where(tissue > 0.02, 1.0, np.where(tissue < -0.02, 0.5, 2.0)) * brain
    return ndimage.gaussian_filter(image, 0.7).astype(np.float32), brain


def _distortion(amplitude: float) -> np.ndarray:
    """A smooth displacement along Y (voxels), largest at the 'front'."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    return (amplitude * np.exp(-((y - 0.5) ** 2 + x**2 + z**2) / 0.3)).astype(np.float32)


def _distort(image: np.ndarray, d: np.ndarray) -> np.ndarray:
    """MRF voxel y shows the tissue at y - d(y) (the phantom's convention)."""
    coords = np.indices(image.shape).astype(np.float64)
    coords[1] -= d
    return ndimage.map_coordinates(image, coords, order=1, mode="constant").astype(np.float32)


@pytest.fixture(scope="module")
def distorted():
    reference, brain = _head()
    d = _distortion(2.5)
    return reference, _distort(reference, d), d, brain


def test_rigid_plus_restricted_syn_undoes_a_distortion(distorted):
    reference, moving, d, brain = distorted
    reg = register_to_reference(moving, reference, SPACING)
    res = true_displacement_residual(reg, d, brain)
    assert res["rms_without"] > 0.5
    assert res["rms"] < 0.5 * res["rms_without"]
    assert reg.displacement is not None and reg.phase_axis == 1
    assert reg.info["method"].startswith("ANTs rigid + SyN")
    # the field is along the phase axis only and the corrected image matches the reference better
    corrected = reg.resample(moving, order=1)
    assert np.mean(np.abs(corrected - reference)[brain]) < np.mean(np.abs(moving - reference)[brain])


def test_rigid_only_and_deterministic(distorted):
    reference, moving, d, brain = distorted
    a = register_to_reference(moving, reference, SPACING, phase_encoding="none")
    b = register_to_reference(moving, reference, SPACING, phase_encoding="none")
    assert a.displacement is None and a.phase_axis is None
    np.testing.assert_array_equal(a.matrix, b.matrix)
    # rigid cannot undo a local distortion: it does little
    res = true_displacement_residual(a, d, brain)
    assert res["rms"] > 0.6 * res["rms_without"]


def test_a_known_rotation_is_found():
    reference, brain = _head(1)
    angle = np.radians(3.0)
    rot = np.eye(4)
    rot[1:3, 1:3] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centre = (np.array(SHAPE) - 1) / 2
    rot[:3, 3] = centre - rot[:3, :3] @ centre + [0.0, 1.5, -1.0]
    # moving voxel q shows the reference tissue at rot^-1 q: the MRF of a moved head
    inv = np.linalg.inv(rot)
    moving = ndimage.affine_transform(reference, inv[:3, :3], inv[:3, 3], order=1).astype(np.float32)
    reg = register_to_reference(moving, reference, SPACING, phase_encoding="none")
    pts = np.stack(np.nonzero(brain))
    err = np.sqrt(np.sum((reg.coordinates(pts) - (rot[:3, :3] @ pts + rot[:3, 3:4])) ** 2, axis=0))
    assert np.sqrt(np.mean(err**2)) < 0.3
    assert reg.info["rotation_deg"] == pytest.approx(3.0, abs=0.5)


def test_registration_arithmetic():
    image = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    ident = Registration(np.eye(4))
    for order in (0, 1, 3):
        np.testing.assert_allclose(ident.resample(image, order=order), image, atol=1e-3)
    shift = np.eye(4)
    shift[2, 3] = 1.0  # reference x -> MRF x + 1
    d = np.zeros(image.shape, np.float32)
    d[:, 2, :] = 1.0
    reg = Registration(shift, d, 1)
    np.testing.assert_allclose(reg.coordinates(np.array([[1], [2], [3]])).ravel(), [1, 3, 4])
    np.testing.assert_allclose(reg.coordinates(np.array([[1], [1], [3]])).ravel(), [1, 1, 4])
    out = reg.resample(image, order=1, where=image > 50)
    assert out[0, 0, 0] == 0.0 and out[3, 1, 2] == image[3, 1, 3]
    assert reg.to_dict()["phase_axis"] == 1


def test_bad_inputs_are_named():
    ref, _ = _head()
    with pytest.raises(ValidationError, match="one grid"):
        register_to_reference(ref[:5], ref, SPACING)
    bad = ref.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValidationError, match="NaN"):
        register_to_reference(bad, ref, SPACING)
    with pytest.raises(ValidationError, match="0 everywhere"):
        register_to_reference(np.zeros_like(ref), ref, SPACING)
    with pytest.raises(ValidationError, match="phase_encoding"):
        register_to_reference(ref, ref, SPACING, phase_encoding="y")
    with pytest.raises(ValidationError, match="spacing"):
        register_to_reference(ref, ref, (2.0, 0.0, 2.0))
    assert set(PHASE_ENCODING_AXES) == {"i", "j", "k", "none"}
