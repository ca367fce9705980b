"""Synthetic cohort generation, and reference matching against its ground truth.

Default (``small``): subjects of the ``tiny`` preset (64 x 64 x 12).
``MRFENGINE_BENCH_SIZE=full``: paper-sized subjects (240 x 240 x 60, 1 x 1 x 2 mm).

* ``test_simulate_subject``: one subject, all stages, written to a store; the
  seconds per stage and the process's peak RSS go to ``extra_info``.  The
  acceptance target is 48 paper subjects in < 15 min on 2 cores (< 18.75 s per
  subject with one process) and < 4 GB peak memory.
* ``test_simulate_cohort``: a whole cohort (small: the tiny preset's 6
  subjects; full: 4 paper subjects, both sites).
* ``test_match_subject_against_truth``: reference matching (paper grid,
  per-slice dictionaries, C++ backend when built) of one simulated subject;
  the median relative T1 and T2* errors against the truth in pure-ish voxels
  (tissue fraction > 0.9) of white matter, grey matter and lesions go to
  ``extra_info``.

The full 48-subject cohort is timed by hand (see ``benchmarks/README.md``)::

    /usr/bin/time -v mrfengine simulate /tmp/paper.zarr --preset paper --workers 2
"""

from __future__ import annotations

import resource
import sys

import numpy as np
import pytest

from mrfengine.backend import probe
from mrfengine.dictionary import SliceDictionaries
from mrfengine.matching import match_slices
from mrfengine.phantom import cohort_preset, plan_cohort, simulate_cohort, simulate_subject
from mrfengine.phantom.anatomy import load_template


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


@pytest.fixture(scope="module")
def preset(full) -> str:
    return "paper" if full else "tiny"


def test_simulate_subject(benchmark, tmp_path_factory, preset):
    import zarr

    from mrfengine.io.cohort import SiteEntry, SubjectEntry, create_cohort
    from mrfengine.phantom.generate import site_sequence

    cfg = cohort_preset(preset, n_subjects=4)
    plans = plan_cohort(cfg, 0)
    patient = next(p for p in plans if p.group == "patient")
    path = tmp_path_factory.mktemp("bench") / "one.zarr"
    create_cohort(path, sites={s.name: SiteEntry(site_sequence(cfg, s.name)) for s in cfg.sites},
                  subjects={patient.id: SubjectEntry(patient.site)}, kind="simulated")
    root = zarr.open_group(str(path), mode="r+")
    template = load_template(tuple(float(v) for v in cfg.grid.voxel_size_mm))
    times = benchmark.pedantic(simulate_subject, args=(root, cfg, patient, 0), kwargs={"template": template},
                               rounds=3, iterations=1)
    assert times["total"] > 0
    benchmark.extra_info.update({f"s_{k}": round(v, 2) for k, v in times.items()})
    benchmark.extra_info["peak_rss_mb"] = round(_peak_rss_mb())
    benchmark.extra_info["voxels"] = int(np.prod(cfg.grid.shape_zyx))


def test_simulate_cohort(benchmark, tmp_path_factory, preset, full):
    n = 4 if full else None
    counter = iter(range(100))

    def run():
        return simulate_cohort(tmp_path_factory.mktemp("bench") / f"c{next(counter)}.zarr", preset=preset,
                               n_subjects=n, seed=0)

    c = benchmark.pedantic(run, rounds=1, iterations=1)
    assert len(c.subjects) == (4 if full else 6)
    if benchmark.stats is not None:
        benchmark.extra_info["s_per_subject"] = round(benchmark.stats.stats.min / len(c.subjects), 2)
    benchmark.extra_info["peak_rss_mb"] = round(_peak_rss_mb())


def test_match_subject_against_truth(benchmark, tmp_path_factory, preset):
    c = simulate_cohort(tmp_path_factory.mktemp("bench") / "m.zarr", preset=preset, n_subjects=2, seed=0)
    sub = next(c[s] for s in c.subjects if c[s].group == "patient")
    mrf = np.asarray(sub.mrf[...])
    mask = np.asarray(sub.brain_mask[...]).astype(bool)
    dicts = SliceDictionaries(sub.sequence, cache=False)
    for z in range(sub.sequence.n_slots):  # build outside the timing
        dicts[z].normalized  # noqa: B018
    backend = "cpp" if probe("cpp").available else "numpy"
    r = benchmark.pedantic(match_slices, args=(mrf, dicts),
                           kwargs={"slice_axis": 1, "axis": 0, "mask": mask, "backend": backend},
                           rounds=1, iterations=1)
    truth = {k: np.asarray(v[...]) for k, v in sub.truth.items()}
    info = {"backend": backend, "voxels": int(mask.sum())}
    for name in ("WM", "GM", "lesion"):
        sel = (truth[name] > 0.9) & mask
        info[f"n_{name}"] = int(sel.sum())
        if not sel.any():
            continue
        for key in ("T1", "T2star"):
            err = np.median(np.abs(r.params[key][sel] / truth[key][sel] - 1))
            info[f"{key}_{name}_median_rel_err"] = round(float(err), 4)
            assert err < 0.1, (name, key, err)
    benchmark.extra_info.update(info)
