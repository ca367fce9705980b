"""Group matching (``method="group"``) against numpy brute force on a large MRF-EPI dictionary at SNR 50.

The dictionary is the package's own (Hermann 2021, slot 7) on a fine grid:
T1/T2* in 5 % geometric steps and B1 in steps of 0.05 (82,008 atoms x 35) by
default, 2.5 % steps (317,203 atoms) with ``MRFENGINE_BENCH_SIZE=full``.
Each case stores in ``extra_info`` its voxels/s, the fraction of atom scores
computed (centroids included), the fraction of voxels given brute force's
atom and, where they differ, the relative T1 / T2* / B1 error against brute
force's parameters.  Figures are in ``benchmarks/README.md``.
"""

import numpy as np
import pytest

from mrfengine import match
from mrfengine.dictionary import ParameterGrid, simulate_dictionary
from mrfengine.sequence import hermann2021
from mrfengine.testing import random_fingerprints


@pytest.fixture(scope="module")
def case(full):
    seq = hermann2021(1)
    grid = ParameterGrid.geometric(step=0.025 if full else 0.05, b1=(0.6, 1.4, 0.05))
    d = simulate_dictionary(seq, 7, grid)
    x, _ = random_fingerprints(seq, 7, 8000 if full else 2000, np.random.default_rng(0), snr=50.0)
    d.normalized  # noqa: B018  (built once, outside the timing)
    match(x[:1], d, method="group")  # clusters built and cached outside the timing
    match(x[:1], d, method="group", rank=10)
    brute = {rank: match(x, d, method="brute", backend="numpy", rank=rank) for rank in (None, 10)}
    return d, x, brute


def _record(benchmark, r, ref, n_vox):
    if benchmark.stats is not None:
        benchmark.extra_info["voxels_per_s"] = round(n_vox / benchmark.stats.stats.min)
    benchmark.extra_info["scored_fraction"] = round(float(r.info.get("scored_fraction", 1.0)), 4)
    same = r.index == ref.index
    benchmark.extra_info["same_atom"] = round(float(same.mean()), 5)
    for k in ("T1", "T2star", "B1"):
        err = np.abs(r.params[k][~same] - ref.params[k][~same]) / ref.params[k][~same]
        benchmark.extra_info[f"{k}_rel_err_median_of_differing"] = round(float(np.median(err)), 4) if err.size else 0.0


@pytest.mark.parametrize("rank", [None, 10])
def test_brute_numpy(benchmark, case, rank):
    d, x, brute = case
    r = benchmark.pedantic(match, args=(x, d), kwargs={"method": "brute", "backend": "numpy", "rank": rank},
                           rounds=1, iterations=1)
    _record(benchmark, r, brute[rank], x.shape[0])


@pytest.mark.parametrize("rank", [None, 10])
def test_group_exact(benchmark, case, rank):
    d, x, brute = case
    r = benchmark.pedantic(match, args=(x, d), kwargs={"method": "group", "rank": rank}, rounds=3, iterations=1)
    _record(benchmark, r, brute[rank], x.shape[0])
    assert np.mean(r.index == brute[rank].index) > 0.995  # float32 near-ties aside


@pytest.mark.parametrize("top", [1, 2, 4])
def test_group_approximate(benchmark, case, top):
    d, x, brute = case
    r = benchmark.pedantic(match, args=(x, d), kwargs={"method": "group", "group_top": top}, rounds=3,
                           iterations=1)
    _record(benchmark, r, brute[None], x.shape[0])
