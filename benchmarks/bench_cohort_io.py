"""Cohort store I/O: writing a subject, reading its MRF series, opening a cohort.

Default (``small``): subjects of the ``tiny`` preset's grid (35 frames, 12 x 64 x 64).
``MRFENGINE_BENCH_SIZE=full``: paper-sized subjects (35 frames, 60 x 240 x 240, 484 MB
of float32 MRF per subject).

* ``test_write_subject``: one subject as the simulator and the importer write it: the
  MRF series plane by plane (``mrf[:, z] = ...``), 14 (Z, Y, X) maps written whole
  (truth, mask, annotation, reference), then the completion record.  The files the
  subject takes go to ``extra_info`` (``files_per_subject``).
* ``test_read_mrf_whole``: open the cohort and read one subject's whole MRF array.
* ``test_read_mrf_slice``: open the cohort and read one slice (all frames) of it, as a
  batch task reading its slab does.
* ``test_open_cohort``: open a cohort of N subjects (small 8, full 48; the paper's
  slices and arrays per subject on a 16 x 16 plane, so the metadata and chunk counts are
  the paper cohort's) and open every array of every subject with its chunk check, as
  ``validate`` and the readers do.  The files the cohort takes go to ``extra_info``.

Every case runs for two layouts (the ``layout`` parameter):

* ``chunked``: the layout before issue 21 part 8, one chunk file per slice, no shards, no
  ``dimension_names``, no consolidated metadata (reproduced by swapping
  :func:`mrfengine.io.cohort.schema.array_layout` for the old chunks-only one);
* ``sharded``: today's, one shard per array (:data:`~mrfengine.io.cohort.SHARD_BYTES`),
  axis names, consolidated metadata written after the cohort.

Timings on the shared 2-core machine are noisy: compare runs made one after the other
(figures in ``benchmarks/README.md``)::

    MRFENGINE_BENCH_SIZE=full python -m pytest benchmarks/bench_cohort_io.py -s
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from mrfengine.io.cohort import (Cohort, SiteEntry, SubjectEntry, SubjectWriter, consolidate, create_cohort,
                                 register_subjects)
from mrfengine.io.cohort import write as cohort_write
from mrfengine.sequence import Sequence

LAYOUTS = ("chunked", "sharded")

N_FRAMES = 35
#: (Z, Y, X) of a subject, and of the cohort the open benchmark lists.
SHAPES = {"small": ((12, 64, 64), (12, 16, 16), 8), "full": ((60, 240, 240), (60, 16, 16), 48)}
MAPS = ("T1", "T2star", "B1", "PD", "GM", "WM", "CSF", "lesion", "DGM", "lesion_id")


def _size() -> str:
    return os.environ.get("MRFENGINE_BENCH_SIZE", "small")


def _chunked_layout(shape, dtype, **_):
    """The layout before sharding: one chunk (one file) per slice, no axis names."""
    axis = len(shape) - 3
    return {"chunks": tuple(1 if i == axis else n for i, n in enumerate(shape))}


@contextlib.contextmanager
def _layout(layout: str):
    with pytest.MonkeyPatch.context() as m:
        if layout == "chunked":
            m.setattr(cohort_write, "array_layout", _chunked_layout)
        yield


def _sequence() -> Sequence:
    """The paper's acquisition (35 frames); readers check the frame count, not the slices."""
    from mrfengine.phantom import cohort_preset
    from mrfengine.phantom.generate import site_sequence

    cfg = cohort_preset("paper")
    return site_sequence(cfg, cfg.sites[0].name)


def _new_cohort(path: Path):
    return create_cohort(path, sites={"1": SiteEntry(_sequence(), 50.0)}, kind="imported")


def _write_subject(root, sid: str, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
    z, y, x = shape
    register_subjects(root, subjects={sid: SubjectEntry("1")})
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    writer = SubjectWriter(root, sid, shape_zyx=shape, affine=affine, n_frames=N_FRAMES, overwrite=True)
    # Noisy magnitudes compress about as real MRF does (poorly): the size is the series'.
    base = np.abs(rng.normal(1.0, 0.3, size=(N_FRAMES, 1, y, x))).astype(np.float32)
    mrf = writer.create("mrf", dtype="float32", frames=True)
    for k in range(z):
        mrf[:, k] = base[:, 0] * (1 + 0.01 * k)
    smooth = np.linspace(0, 1, z * y * x, dtype=np.float32).reshape(shape)
    for name in MAPS:
        dtype = np.uint16 if name == "lesion_id" else np.float32
        writer.write(f"truth/{name}", (smooth * 100).astype(dtype))
    writer.write("brain_mask", (smooth > 0.2).astype(np.uint8))
    writer.write("annotations/lesion", (smooth > 0.9).astype(np.uint8))
    writer.write("reference/T2w", smooth * 7)
    writer.write("truth/distortion", smooth)
    writer.finish()


def _files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


@pytest.fixture(scope="module", params=LAYOUTS)
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def one_subject(tmp_path_factory, layout) -> Path:
    shape = SHAPES[_size()][0]
    path = tmp_path_factory.mktemp("io") / f"one-{layout}.zarr"
    with _layout(layout):
        root = _new_cohort(path)
        _write_subject(root, "sub-01", shape, np.random.default_rng(0))
    if layout == "sharded":
        consolidate(path)
    return path


@pytest.fixture(scope="module")
def many_subjects(tmp_path_factory, layout) -> Path:
    _, shape, n = SHAPES[_size()]
    path = tmp_path_factory.mktemp("io") / f"many-{layout}.zarr"
    with _layout(layout):
        root = _new_cohort(path)
        rng = np.random.default_rng(1)
        for i in range(n):
            _write_subject(root, f"sub-{i + 1:02d}", shape, rng)
    if layout == "sharded":
        consolidate(path)
    return path


def test_write_subject(benchmark, tmp_path, layout):
    shape = SHAPES[_size()][0]
    rng = np.random.default_rng(0)
    paths = iter(tmp_path / f"w{i}.zarr" for i in range(1000))

    def setup():
        path = next(paths)
        root = _new_cohort(path)
        return (root, path), {}

    done: list[Path] = []

    def run(root, path):
        _write_subject(root, "sub-01", shape, rng)
        done.append(path)

    with _layout(layout):
        benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    folder = done[-1] / "subjects" / "sub-01"
    benchmark.extra_info["files_per_subject"] = _files(folder)
    benchmark.extra_info["mb_per_subject"] = round(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
                                                   / 2**20, 1)
    print(f"\n{layout}: files per subject: {_files(folder)}")
    for p in done[:-1]:
        shutil.rmtree(p, ignore_errors=True)


def test_read_mrf_whole(benchmark, one_subject, layout):
    shape = SHAPES[_size()][0]

    def run():
        return Cohort.open(one_subject)["sub-01"].mrf[...]

    out = benchmark.pedantic(run, rounds=3, iterations=1)
    assert out.shape == (N_FRAMES, *shape)
    benchmark.extra_info["mb_read"] = round(out.nbytes / 2**20, 1)


def test_read_mrf_slice(benchmark, one_subject, layout):
    shape = SHAPES[_size()][0]

    def run():
        return Cohort.open(one_subject)["sub-01"].mrf[:, shape[0] // 2]

    out = benchmark.pedantic(run, rounds=10, iterations=1)
    assert out.shape == (N_FRAMES, *shape[1:])


def test_open_cohort(benchmark, many_subjects, layout):
    def run():
        cohort = Cohort.open(many_subjects)
        n = 0
        for sid in cohort.subjects:
            sub = cohort[sid]
            for p in sub.arrays:
                sub.array(p).check_chunks()
                n += 1
        return n

    n = benchmark.pedantic(run, rounds=3, iterations=1)
    assert n == SHAPES[_size()][2] * 15  # mrf, 10 truth maps, mask, annotation, reference, distortion
    benchmark.extra_info["arrays"] = n
    benchmark.extra_info["files"] = _files(many_subjects)
    print(f"\n{layout}: cohort files: {_files(many_subjects)}")
