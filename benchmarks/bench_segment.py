"""Tissue probability maps from the matched T1 map (issue 20, part 3): time and Dice.

Default (``small``): one subject of the ``tiny`` preset (64 x 64 x 12 at 3.5 x 3.5 x 6 mm).
``MRFENGINE_BENCH_SIZE=full``: one paper-sized subject (240 x 240 x 60 at 1 x 1 x 2 mm).
The subject is simulated, denoised and matched (:func:`mrfengine.pipeline.run_subject`,
``denoise,match``), then :func:`mrfengine.segmentation.segment_tissues` runs on its T1 map
in the stored brain mask:

* ``test_segment[mni152]``: the default, MNI152 priors registered with ANTs (affine)
  and the partial-volume mixture;
* ``test_segment[none]``: the mixture without priors (no registration).

``extra_info`` holds the NAWM and GM Dice at 80% against the phantom's truth, as
``mrfengine evaluate`` computes them (NAWM = WM outside ``annotations/lesion``; the
reference NAWM = ``truth/WM``, GM = ``truth/GM``), and the stages' times.  Target (full
size): Dice >= 0.85 for both, in seconds on two cores.  ANTs runs on one thread unless
``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is set (``mrfengine._ants``).

    MRFENGINE_BENCH_SIZE=full python -m pytest benchmarks/bench_segment.py -s
"""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.io import Cohort
from mrfengine.metrics import evaluate_subject
from mrfengine.phantom import simulate_cohort
from mrfengine.pipeline import run_subject

PIPE = "denoise,match"
DERIVED = "derived/denoise-match"


@pytest.fixture(scope="module")
def subject(full, tmp_path_factory):
    """(T1 map, brain mask, spacing, affine, truth and annotation) of one matched phantom subject."""
    try:
        from mrfengine._ants import import_ants

        import_ants()  # ITK's threads settled before ANTs first runs
    except ImportError:
        pytest.skip("antspyx is not installed")
    path = tmp_path_factory.mktemp("bench-segment") / "cohort.zarr"
    simulate_cohort(path, preset="paper" if full else "tiny", n_subjects=1, seed=0, workers=1)
    sid = Cohort.open(path).subjects[0]
    result = run_subject(path, sid, PIPE)
    assert result.status == "ok", result.error
    s = Cohort.open(path)[sid]
    return {
        "t1": np.asarray(s.array(f"{DERIVED}/T1")),
        "mask": np.asarray(s.brain_mask) > 0,
        "spacing": tuple(float(v) for v in s.voxel_size_mm[::-1]),
        "affine": np.asarray(s.affine),
        "WM": np.asarray(s.array("truth/WM")),
        "GM": np.asarray(s.array("truth/GM")),
        "lesion": np.asarray(s.array("annotations/lesion")) > 0,
    }


@pytest.mark.parametrize("priors", ["mni152", "none"])
def test_segment(benchmark, subject, full, priors):
    from mrfengine.segmentation import segment_tissues

    kwargs = {"affine": subject["affine"], "priors": None if priors == "none" else priors}
    seg = benchmark.pedantic(segment_tissues, args=(subject["t1"], subject["mask"], subject["spacing"]),
                             kwargs=kwargs, rounds=2 if full else 3, iterations=1)
    pred = {"NAWM": np.where(subject["lesion"], 0, seg.probabilities["WM"]), "GM": seg.probabilities["GM"]}
    ref = {"NAWM": subject["WM"], "GM": subject["GM"]}
    dice = evaluate_subject(pred, ref, mask=subject["mask"], extras=False)["summary"]
    nawm, gm = dice["NAWM_dice_volume"], dice["GM_dice_volume"]
    timings = seg.info["timings_s"]
    benchmark.extra_info.update(priors=priors, NAWM_dice=round(nawm, 4), GM_dice=round(gm, 4),
                                voxels=seg.info["voxels"], timings_s=timings,
                                class_t1_ms=seg.info["class_t1_ms"],
                                template_r1_correlation=seg.info.get("prior", {}).get("template_r1_correlation"))
    print(f"\nsegment ({priors}): NAWM Dice {nawm:.4f}, GM Dice {gm:.4f} at 80%; {seg.info['voxels']} voxels; "
          f"times {timings}")
    if full:
        assert nawm >= 0.85 and gm >= 0.85
    else:  # 3.5 x 3.5 x 6 mm voxels: mostly partial volume; a smoke check
        assert nawm >= 0.75 and gm >= 0.75
