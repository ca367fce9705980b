"""The ``mask`` stage (issue 20): a brain mask made from the series, and what it saves.

Default (``small``): one subject of the ``tiny`` preset (64 x 64 x 12).
``MRFENGINE_BENCH_SIZE=full``: one paper-sized subject (240 x 240 x 60, 35 frames).
The subject is run twice from two copies of its store: as simulated (with its
``brain_mask``) and as an import without one (its ``brain_mask`` taken off the
subject's array list), where the ``mask`` stage makes the mask from the series.

* ``test_mask_from_series``: the time to make the mask (mean over frames read
  from the store, nilearn's ``compute_epi_mask``); its Dice overlap with the
  phantom's brain in ``extra_info``.  Target: Dice >= 0.95.
* ``test_pipeline_without_vs_with_mask``: ``denoise,match`` of the subject with
  :func:`mrfengine.pipeline.run_subject` (one process), with and without an
  imported mask, alternated; the best time of each and their ratio in
  ``extra_info``.  Target: without / with <= 1.2 (before the mask stage the
  whole field of view was denoised and matched: about 2x at full size).

    MRFENGINE_BENCH_SIZE=full python -m pytest benchmarks/bench_mask.py -s
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from mrfengine.io import Cohort
from mrfengine.io.cohort import SUBJECT_KEY
from mrfengine.masking import MASK_METHOD, brain_mask_from_mrf
from mrfengine.metrics import dice
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import Pipeline, run_subject
from mrfengine.pipeline.derived import derived_attrs

PIPE = Pipeline.from_stages("denoise,match")


@pytest.fixture(scope="module")
def stores(full, tmp_path_factory) -> tuple[Path, Path, str]:
    """(the store with the subject's brain mask, a copy without it, the subject)."""
    root = tmp_path_factory.mktemp("bench-mask")
    masked = root / "masked.zarr"
    simulate_cohort(masked, preset="paper" if full else "tiny", n_subjects=1, seed=0, workers=2)
    bare = root / "bare.zarr"
    shutil.copytree(masked, bare)
    sid = Cohort.open(masked).subjects[0]
    group = zarr.open_group(bare / "subjects" / sid, mode="r+")
    attrs = dict(group.attrs[SUBJECT_KEY])
    attrs["arrays"] = [a for a in attrs["arrays"] if a != "brain_mask"]
    group.attrs[SUBJECT_KEY] = attrs
    return masked, bare, sid


def test_mask_from_series(benchmark, stores):
    masked, bare, sid = stores
    subject = Cohort.open(bare)[sid]
    made = benchmark.pedantic(brain_mask_from_mrf, args=(subject.mrf,), rounds=3, iterations=1)
    truth = np.asarray(Cohort.open(masked)[sid].brain_mask[...]) > 0
    score = dice(made, truth)
    benchmark.extra_info.update(dice=round(float(score), 4), voxels=int(made.sum()), truth_voxels=int(truth.sum()),
                                field_of_view=int(truth.size))
    print(f"\nmask from the series: Dice {score:.4f} against the phantom's brain "
          f"({int(made.sum())} voxels, truth {int(truth.sum())}, field of view {truth.size})")
    assert score >= 0.95


def test_pipeline_without_vs_with_mask(benchmark, stores, full):
    masked, bare, sid = stores
    rounds = 2 if full else 3
    run_subject(masked, sid, PIPE, force=True)  # warm-up: dictionaries simulated and cached, imports done
    times: dict[str, list[float]] = {"with": [], "without": []}

    def once():
        for label, path in (("with", masked), ("without", bare)):
            t0 = time.perf_counter()
            result = run_subject(path, sid, PIPE, force=True)
            times[label].append(time.perf_counter() - t0)
            assert result.status == "ok", result.error

    benchmark.pedantic(once, rounds=rounds, iterations=1)
    best = {k: min(v) for k, v in times.items()}
    ratio = best["without"] / best["with"]
    stages = derived_attrs(bare, sid, PIPE.name)["provenance"]["stages"]
    assert stages["mask"]["source"] == MASK_METHOD
    timings = derived_attrs(bare, sid, PIPE.name)["timings_s"]
    benchmark.extra_info.update(with_mask_s=round(best["with"], 3), without_mask_s=round(best["without"], 3),
                                ratio=round(ratio, 3), mask_stage_s=timings.get("mask"),
                                made_mask_voxels=stages["mask"]["voxels"])
    print(f"\ndenoise,match per subject: with its mask {best['with']:.2f} s, without (mask made from the "
          f"series, {timings.get('mask', 0):.2f} s of it) {best['without']:.2f} s: ratio {ratio:.2f} "
          f"(target <= 1.2)")
    if full:
        assert ratio <= 1.2
