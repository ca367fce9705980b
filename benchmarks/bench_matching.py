"""Matching throughput against a paper-grid dictionary (43,416 atoms x 35).

Brute force costs 2 x 35 x 43,416 = 3.04 MFLOP per voxel; voxels/s and
GFLOP/s are stored in each case's ``extra_info``.  Compare GFLOP/s with
``bench_peak.py::test_sgemm_peak`` from the same run.
"""

import numpy as np
import pytest

from mrfengine import match
from mrfengine.backend import probe
from mrfengine.testing import random_fingerprints
from mrfengine.dictionary import simulate_dictionary
from mrfengine.sequence import hermann2021

BACKENDS = [b for b in ("numpy", "cpp", "numba") if probe(b).available]


@pytest.fixture(scope="module")
def case(full):
    seq = hermann2021(1)
    d = simulate_dictionary(seq, 30)
    noisy, _ = random_fingerprints(seq, 30, 20000 if full else 2000, np.random.default_rng(0), snr=50.0)
    d.normalized  # noqa: B018  (built once, outside the timing)
    return d, noisy


def _record(benchmark, n_vox, d):
    if benchmark.stats is None:
        return
    t = benchmark.stats.stats.min
    benchmark.extra_info["voxels_per_s"] = round(n_vox / t)
    benchmark.extra_info["gflops"] = round(2 * d.n_frames * d.n_atoms * n_vox / t / 1e9, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_match_brute_force(benchmark, case, backend):
    d, x = case
    r = benchmark.pedantic(match, args=(x, d), kwargs={"backend": backend, "method": "brute"}, rounds=3,
                           iterations=1)
    assert r.matched.all() and r.method == "brute"
    _record(benchmark, x.shape[0], d)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("numpy", "cpp")])
def test_match_structured(benchmark, case, backend):
    d, x = case
    r = benchmark.pedantic(match, args=(x, d), kwargs={"backend": backend, "method": "structured"}, rounds=3,
                           iterations=1)
    assert r.method == "structured"
    if benchmark.stats is not None:
        benchmark.extra_info["voxels_per_s"] = round(x.shape[0] / benchmark.stats.stats.min)


@pytest.mark.parametrize("backend", BACKENDS)
def test_match_svd_rank10(benchmark, case, backend):
    d, x = case
    d.compress(10)
    r = benchmark.pedantic(match, args=(x, d), kwargs={"backend": backend, "rank": 10}, rounds=3, iterations=1)
    assert r.rank == 10
    if benchmark.stats is not None:
        benchmark.extra_info["voxels_per_s"] = round(x.shape[0] / benchmark.stats.stats.min)
