"""method="group": exact cluster pruning equals brute force; the approximate mode's loss is bounded."""

import numpy as np
import pytest

from mrfengine import Dictionary, match
from mrfengine.dictionary import ParameterGrid, simulate_dictionary
from mrfengine.errors import ValidationError
from mrfengine.matching._group import best_atoms_group, build_groups
from mrfengine.matching._numpy import best_atoms_numpy
from mrfengine.sequence import hermann2021
from mrfengine.testing import random_fingerprints


@pytest.fixture(scope="module")
def mrf_epi():
    """A small float64 MRF-EPI dictionary (10 % grid, 3,990 atoms) and 1,500 voxels at SNR 50."""
    seq = hermann2021(1)
    d = simulate_dictionary(seq, 7, ParameterGrid.geometric(step=0.1, b1=(0.7, 1.3, 0.1)), dtype=np.float64)
    x, _ = random_fingerprints(seq, 7, 1500, np.random.default_rng(3), snr=50.0)
    return d, x.astype(np.float64)


def _random(rng, n_atoms, n_frames, complex_=False):
    a = rng.normal(size=(n_atoms, n_frames))
    if complex_:
        a = a + 1j * rng.normal(size=(n_atoms, n_frames))
    return Dictionary(a, {"T1": np.arange(n_atoms, dtype=float)})


@pytest.mark.parametrize("complex_", [False, True])
def test_exact_group_search_equals_brute_force_on_random_signed_data(complex_):
    """Signed real and complex atoms (their negatives/phases in the same cluster): the same atom, always."""
    rng = np.random.default_rng(0)
    d = _random(rng, 600, 12, complex_)
    x = rng.normal(size=(400, 12)) + (1j * rng.normal(size=(400, 12)) if complex_ else 0)
    x[:50] = d.atoms[:50] * (rng.normal(size=(50, 1)) + (1j if complex_ else 0))  # on-atom voxels
    brute = match(x, d, method="brute", backend="numpy")
    for n_groups in (1, 7, 40, 600):
        r = match(x, d, method="group", n_groups=n_groups)
        np.testing.assert_array_equal(r.index, brute.index)
        np.testing.assert_allclose(r.m0, brute.m0, rtol=1e-12)
        assert r.method == "group" and r.backend == "numpy" and r.info["exact"]


def test_exact_group_search_equals_brute_force_on_mrf_epi(mrf_epi):
    d, x = mrf_epi
    brute = match(x, d, method="brute", backend="numpy")
    r = match(x, d, method="group")
    np.testing.assert_array_equal(r.index, brute.index)
    for k in ("T1", "T2star", "B1"):
        np.testing.assert_array_equal(r.params[k], brute.params[k])
    # The pruning pays: well under a fifth of the brute-force scores, centroids included.
    assert r.info["scored_fraction"] < 0.2


def test_exact_group_search_with_rank_equals_compressed_brute_force(mrf_epi):
    d, x = mrf_epi
    brute = match(x, d, method="brute", backend="numpy", rank=6)
    r = match(x, d, method="group", rank=6)
    assert r.rank == 6
    np.testing.assert_array_equal(r.index, brute.index)


def test_ties_resolve_to_the_lowest_index_as_brute_force():
    """Duplicate atoms in different clusters: argmax semantics (first index) are kept."""
    rng = np.random.default_rng(1)
    base = np.abs(rng.normal(size=(30, 8))) + 0.1
    atoms = np.concatenate([base, base[::-1]])  # atom i == atom 59 - i
    x = base * 3.0
    groups = build_groups(atoms / np.linalg.norm(atoms, axis=1, keepdims=True), 9)
    best, _ = best_atoms_group(x, groups)
    np.testing.assert_array_equal(best, best_atoms_numpy(x, atoms / np.linalg.norm(atoms, axis=1, keepdims=True)))
    np.testing.assert_array_equal(best, np.arange(30))


def test_approximate_mode_loss_is_small_and_measured(mrf_epi):
    """group_top=k scores only the k best-bounded clusters: fewer scores, the brute atom in most voxels."""
    d, x = mrf_epi
    brute = match(x, d, method="brute", backend="numpy")
    exact = match(x, d, method="group")
    r1 = match(x, d, method="group", group_top=1)
    r4 = match(x, d, method="group", group_top=4)
    assert not r4.info["exact"]
    assert r1.info["scored_fraction"] < r4.info["scored_fraction"]
    same1 = np.mean(r1.index == brute.index)
    same4 = np.mean(r4.index == brute.index)
    assert same1 <= same4 and same4 > 0.98
    # Never better than the exact winner; where it differs, a close neighbour.
    assert np.all(r4.correlation <= exact.correlation + 1e-6)
    missed = r4.index != brute.index
    t1_err = np.abs(r4.params["T1"] - brute.params["T1"]) / brute.params["T1"]
    assert t1_err[missed].max(initial=0.0) < 0.5


def test_clusters_are_cached_on_the_dictionary(mrf_epi):
    d, x = mrf_epi
    match(x[:5], d, method="group", n_groups=11)
    groups = d._cache["group:None:11"]
    match(x[:5], d, method="group", n_groups=11)
    assert d._cache["group:None:11"] is groups
    assert groups.n_groups <= 11 and groups.starts[-1] == d.n_atoms
    np.testing.assert_array_equal(np.sort(groups.order), np.arange(d.n_atoms))


def test_masked_and_empty_inputs():
    rng = np.random.default_rng(2)
    d = _random(rng, 50, 6)
    x = rng.normal(size=(4, 5, 6))
    mask = np.zeros((4, 5), dtype=bool)
    r = match(x, d, method="group", mask=mask)
    assert (r.index == -1).all()
    mask[1, 2] = True
    r = match(x, d, method="group", mask=mask)
    assert r.index[1, 2] == match(x, d, method="brute", backend="numpy").index[1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_groups": 0}, "n_groups must be an integer in"),
        ({"n_groups": 51}, "n_groups must be an integer in"),
        ({"n_groups": 2.5}, "n_groups must be an integer in"),
        ({"group_top": 0}, "group_top must be an integer"),
        ({"group_top": True}, "group_top must be an integer"),
        ({"n_groups": 5, "method": "brute"}, "apply to method='group' only"),
        ({"backend": "cpp"}, "runs on the numpy backend"),
    ],
)
def test_bad_group_options_are_refused(kwargs, message):
    rng = np.random.default_rng(4)
    d = _random(rng, 50, 6)
    kwargs = {"method": "group", **kwargs}
    with pytest.raises(ValidationError, match=message):
        match(rng.normal(size=(3, 6)), d, **kwargs)
