"""``mrfengine batch`` on Dask: one subject's latency and throughput scaling with workers.

Default (``small``): the ``tiny`` preset (64 x 64 x 12).  ``MRFENGINE_BENCH_SIZE=full``:
paper-sized subjects (240 x 240 x 60, 35 frames); set ``MRFENGINE_BENCH_COHORT`` to an
existing paper cohort (``mrfengine simulate X.zarr --preset paper``) to skip simulating.

* ``test_batch_one_subject``: denoise + match of one subject on the default local
  cluster (one worker per core, the subject split into two slab tasks).  Target
  (issue 7): < 30 s for a paper-sized subject on 2 cores.  Rounds after the first
  find the dictionaries in the disk cache, as every subject after the first of a study.
* ``test_batch_scaling``: a 10-subject cohort (small: 6) with 1 worker, then 2
  workers (one thread each), in one run; subjects/min and the ratio go to
  ``extra_info``.  Target: 2 workers >= 1.7x the throughput of 1.

    MRFENGINE_BENCH_SIZE=full python -m pytest benchmarks/bench_batch.py -s
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mrfengine.io import Cohort
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import Pipeline
from mrfengine.pipeline.batch import batch_client, prepare_dictionaries, run_batch

PIPE = Pipeline.from_stages("denoise,match")


@pytest.fixture(scope="module")
def cohort(full, tmp_path_factory) -> Path:
    """A cohort of 10 paper-sized subjects (full) or the 6 tiny ones (small)."""
    given = os.environ.get("MRFENGINE_BENCH_COHORT")
    if full and given:
        return Path(given)
    path = tmp_path_factory.mktemp("bench-batch") / "cohort.zarr"
    simulate_cohort(path, preset="paper" if full else "tiny", n_subjects=10 if full else None, seed=0, workers=2)
    return path


def _subjects(cohort: Path, n: int) -> list[str]:
    return Cohort.open(cohort).subjects[:n]


def test_batch_one_subject(benchmark, cohort, full):
    sid = _subjects(cohort, 1)
    rounds = []
    with batch_client(dashboard=False) as client:
        def once():
            t0 = time.perf_counter()
            report = run_batch(cohort, PIPE, client, subjects=sid, force=True)
            rounds.append(time.perf_counter() - t0)
            assert report.ok and report.count("ok") == 1, report
            return report

        report = benchmark.pedantic(once, rounds=3 if full else 1, iterations=1)
    r = report.results[0]
    benchmark.extra_info.update({
        "subject": r.subject, "shape": list(Cohort.open(cohort)[r.subject].shape),
        "workers": report.n_workers, "seconds_per_round": [round(t, 2) for t in rounds],
        "task_seconds": {k: round(v, 2) for k, v in r.timings_s.items()},
        "peak_worker_mb": round(r.peak_memory_mb or 0, 1),
    })
    print(f"\none subject {r.subject}: rounds {[f'{t:.1f}' for t in rounds]} s on {report.n_workers} workers; "
          f"task seconds {r.timings_s}; peak worker RSS {r.peak_memory_mb:.0f} MB")


def test_batch_scaling(benchmark, cohort, full, tmp_path):
    n = 10 if full else 6
    subjects = _subjects(cohort, n)
    assert len(subjects) == n
    rates = {}
    # The dictionaries are simulated once before timing (a warm cache, as after a study's first subject).
    prepare_dictionaries(cohort, subjects, PIPE)

    def run(workers: int) -> float:
        with batch_client(n_workers=workers, dashboard=False) as client:
            t0 = time.perf_counter()
            report = run_batch(cohort, PIPE, client, subjects=subjects, force=True)
            wall = time.perf_counter() - t0
        assert report.ok and report.count("ok") == n, report
        rates[workers] = n / wall * 60
        return wall

    def both():
        return run(1), run(2)

    walls = benchmark.pedantic(both, rounds=1, iterations=1)
    ratio = rates[2] / rates[1]
    benchmark.extra_info.update({"subjects": n, "wall_s": [round(w, 1) for w in walls],
                                 "subjects_per_min": {k: round(v, 2) for k, v in rates.items()},
                                 "ratio_2_over_1": round(ratio, 3)})
    print(f"\n{n} subjects: 1 worker {walls[0]:.1f} s ({rates[1]:.2f}/min), 2 workers {walls[1]:.1f} s "
          f"({rates[2]:.2f}/min): {ratio:.2f}x")
    if full:
        assert ratio >= 1.7, f"2 workers give {ratio:.2f}x the throughput of 1 (target >= 1.7x)"
