"""The built-in demonstration: simulate a slab of voxels with known parameters,
add Rician noise, match them against the per-slice dictionaries and compare.

The CLI (``mrfengine demo``) prints the report; this module only computes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .dictionary import SliceDictionaries, fingerprints
from .matching import match_slices
from .metrics import CORE_FRACTION, core_masks, relative_deviation
from .noise import rician, wm_signal_level  # noqa: F401 - mrfengine.demo's names before mrfengine.noise
from .testing import random_fingerprints  # noqa: F401 - likewise, before mrfengine.testing
from .sequence import Sequence, hermann2021
from .tissue import LESION_PD, LESION_T1_FACTOR, LESION_T2STAR_FACTOR, TISSUES

__all__ = ["DemoRow", "DemoReport", "CohortDemoRow", "SCANNER_GAIN", "UnetDemoReport", "metrics_against_truth",
           "run_cohort_demo",
           "run_unet_demo", "simulate_slab", "rician", "run_demo", "wm_signal_level", "random_fingerprints",
           "write_scanner_series"]


@dataclass(frozen=True)
class DemoRow:
    """Recovered against true values for one tissue class (medians over voxels)."""

    tissue: str
    n_voxels: int
    t1_true_ms: float
    t1_found_ms: float
    t1_rel_error: float
    t2star_true_ms: float
    t2star_found_ms: float
    t2star_rel_error: float
    b1_abs_error: float
    m0_rel_error: float


@dataclass
class DemoReport:
    rows: list[DemoRow]
    n_voxels: int
    n_slices: int
    n_atoms: int
    backend: str
    method: str
    snr: float
    dictionary_seconds: float
    match_seconds: float
    timings: dict[str, float] = field(default_factory=dict)




def simulate_slab(
    sequence: Sequence,
    positions: list[int],
    n_per_slice: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Noise-free fingerprints of random voxels, off the dictionary grid.

    Each voxel is white matter, grey matter, deep grey matter or lesion, with
    T1 and T2* jittered by +-10% around the class value, B1 uniform in
    [0.75, 1.25] and M0 the class PD.

    Returns
    -------
    signals : ndarray, (n_slices, n_per_slice, n_measurements)
    truth : dict of (n_slices, n_per_slice) arrays: T1, T2star (ms), B1, M0
    labels : ndarray of str, (n_slices, n_per_slice)
    """
    classes = np.array(["WM", "GM", "DGM", "lesion"])
    shape = (len(positions), n_per_slice)
    labels = classes[rng.integers(0, classes.size, shape)]
    wm = TISSUES["WM"]
    t1 = np.empty(shape)
    t2 = np.empty(shape)
    pd = np.empty(shape)
    for name in classes:
        sel = labels == name
        if name == "lesion":
            t1[sel] = wm.t1_ms * rng.uniform(*LESION_T1_FACTOR, sel.sum())
            t2[sel] = wm.t2star_ms * rng.uniform(*LESION_T2STAR_FACTOR, sel.sum())
            pd[sel] = LESION_PD
        else:
            t = TISSUES[name]
            t1[sel], t2[sel], pd[sel] = t.t1_ms, t.t2star_ms, t.pd
    t1 *= rng.uniform(0.9, 1.1, shape)
    t2 *= rng.uniform(0.9, 1.1, shape)
    b1 = rng.uniform(0.75, 1.25, shape)
    signals = np.empty(shape + (sequence.n_measurements,))
    for z, pos in enumerate(positions):
        slot = int(sequence.slot_of_slice(pos))
        signals[z] = fingerprints(sequence, slot, t1[z], t2[z], b1[z], pd[z])
    return signals, {"T1": t1, "T2star": t2, "B1": b1, "M0": pd}, labels


def run_demo(
    *,
    sequence: Sequence | None = None,
    n_slices: int = 4,
    n_per_slice: int = 2048,
    snr: float = 50.0,
    seed: int = 0,
    backend: str = "auto",
    method: str = "auto",
    dictionaries: SliceDictionaries | None = None,
) -> DemoReport:
    """Simulate, add noise at ``snr`` (relative to white matter), match, compare."""
    sequence = hermann2021(1) if sequence is None else sequence
    rng = np.random.default_rng(seed)
    first = max(0, sequence.n_slices // 2 - n_slices // 2)
    positions = list(range(first, min(sequence.n_slices, first + n_slices)))
    clean, truth, labels = simulate_slab(sequence, positions, n_per_slice, rng)
    sigma = wm_signal_level(sequence) / snr
    noisy = rician(clean, sigma, rng).astype(np.float32)

    dicts = SliceDictionaries(sequence) if dictionaries is None else dictionaries
    t0 = time.perf_counter()
    per_slice = [dicts.for_slice(p) for p in positions]
    t_dict = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = match_slices(noisy, per_slice, slice_axis=0, channel_axis=-1, backend=backend, method=method)
    t_match = time.perf_counter() - t0

    rows = []
    for name in ("WM", "GM", "DGM", "lesion"):
        sel = labels == name
        if not sel.any():
            continue
        def med_rel(key: str) -> float:
            return float(np.median(np.abs(result.params[key][sel] / truth[key][sel] - 1)))
        rows.append(
            DemoRow(
                tissue=name,
                n_voxels=int(sel.sum()),
                t1_true_ms=float(np.median(truth["T1"][sel])),
                t1_found_ms=float(np.median(result.params["T1"][sel])),
                t1_rel_error=med_rel("T1"),
                t2star_true_ms=float(np.median(truth["T2star"][sel])),
                t2star_found_ms=float(np.median(result.params["T2star"][sel])),
                t2star_rel_error=med_rel("T2star"),
                b1_abs_error=float(np.median(np.abs(result.params["B1"][sel] - truth["B1"][sel]))),
                m0_rel_error=float(np.median(np.abs(result.m0[sel] / truth["M0"][sel] - 1))),
            )
        )
    return DemoReport(
        rows=rows,
        n_voxels=int(labels.size),
        n_slices=len(positions),
        n_atoms=per_slice[0].n_atoms,
        backend=result.backend,
        method=result.method,
        snr=snr,
        dictionary_seconds=t_dict,
        match_seconds=t_match,
    )


@dataclass(frozen=True)
class CohortDemoRow:
    """Matching against ground truth for one subject: median relative errors in
    the tissue cores, voxels whose true tissue fraction is at least ``purity``
    (:func:`mrfengine.metrics.core_masks`)."""

    subject: str
    site: str
    group: str
    n_voxels: int
    seconds: float
    errors: dict[str, tuple[float, float, int]]  # tissue -> (T1 error, T2* error, voxels)


def run_cohort_demo(
    path,
    *,
    n_subjects: int | None = None,
    seed: int = 0,
    backend: str = "auto",
    method: str = "auto",
    purity: float = CORE_FRACTION,
    client=None,
    n_workers: int | None = None,
    on_event=None,
) -> tuple[list[CohortDemoRow], Any]:
    """Simulate the tiny cohort at ``path`` (resumable), run the batch pipeline
    (MP-PCA denoising, then matching each slice against its own dictionary)
    over every subject on a local Dask cluster (or ``client``), and compare
    the maps written to ``derived/denoise-match/`` with ground truth: the
    median relative deviation of T1 and T2* in the WM, GM and lesion cores
    (true fraction ``>= purity``, :data:`mrfengine.metrics.CORE_FRACTION` by
    default) where the pipeline matched.

    Returns the per-subject rows and the batch report.
    """
    from .io import Cohort
    from .phantom import simulate_cohort
    from .pipeline import Pipeline
    from .pipeline.batch import batch_client, run_batch

    simulate_cohort(path, preset="tiny", n_subjects=n_subjects, seed=seed)
    pipeline = Pipeline.from_stages("denoise,match", options={"match": {"method": method}})
    if client is None:
        with batch_client(n_workers=n_workers, dashboard=False) as own:
            report = run_batch(path, pipeline, own, force=True, backend=backend, on_event=on_event)
    else:
        report = run_batch(path, pipeline, client, force=True, backend=backend, on_event=on_event)
    cohort = Cohort.open(path)
    took = {r.subject: r.timings_s.get("wall", float("nan")) for r in report.results}
    rows = []
    for result in report.results:
        if result.status != "ok":
            continue
        subject = cohort[result.subject]
        t1_found = np.asarray(subject.array(f"derived/{pipeline.name}/T1")[:])
        t2_found = np.asarray(subject.array(f"derived/{pipeline.name}/T2star")[:])
        # matched: finite inside the brain (0 outside it, the outside rule; NaN where a brain voxel has no match)
        matched = np.isfinite(t1_found) if subject.brain_mask is None else \
            (np.asarray(subject.brain_mask[:]) > 0) & np.isfinite(t1_found)
        truth = subject.truth
        t1 = np.asarray(truth["T1"][:])
        t2 = np.asarray(truth["T2star"][:])
        errors = {}
        fractions = {tissue: np.asarray(truth[tissue][:]) for tissue in ("WM", "GM", "lesion") if tissue in truth}
        for tissue, core in zip(fractions, core_masks(fractions, core_fraction=purity).values()):
            sel = core & matched
            if sel.sum() == 0:
                continue
            errors[tissue] = (
                relative_deviation(t1_found, t1, sel, statistic="median"),
                relative_deviation(t2_found, t2, sel, statistic="median"),
                int(sel.sum()),
            )
        rows.append(CohortDemoRow(subject.id, subject.site, subject.group, int(matched.sum()),
                                  took[subject.id], errors))
    return rows, report


#: The gain the U-net demo puts its series at: the simulator's brain signal (about 0.3)
#: becomes about 300, as a scanner's reconstruction would store it.
SCANNER_GAIN = 1000.0


@dataclass
class UnetDemoReport:
    """The default U-net on one unseen subject at a scanner's intensity scale, against its ground truth.

    Attributes
    ----------
    gain : float
        What the simulated series was multiplied by before it was stored.
    scl_slope, scl_inter : float
        The int16 NIfTI's scaling (value = slope * stored + inter).
    input_level_ratio : float
        The series' intensity level over the training data's, as ``predict``
        measured it (``InputLevelRatio`` in the sidecars).
    input_scale : str
        How ``predict`` took the series' scale (``subject``: rescaled).
    mask_dice : float
        Dice of the brain mask ``predict`` made from the series against the
        simulated brain.
    t1_reldev, t2star_reldev : float
        Mean relative deviations in the brain (voxels both masks hold).
    lesion_dice, lesion_detection_rate : float
        At the paper's 33% against the true lesion mask (lesion fraction >= 0.5).
    nawm_dice_volume, gm_dice_volume, nawm_dice_slice_mean, gm_dice_slice_mean : float
        At 80% against the true NAWM (``truth/WM``, lesions already excluded)
        and GM fractions: over the whole volume, and the mean over slices.
    summary : dict
        Every figure, as :func:`metrics_against_truth` returns it (the keys of
        ``mrfengine evaluate``'s summaries, e.g. ``T1_relative_deviation_WM_core``).
    """

    subject: str
    model: str
    shape: tuple[int, int, int]
    seconds: float
    t1_reldev: float
    t2star_reldev: float
    lesion_dice: float
    lesion_detection_rate: float
    nawm_dice_volume: float
    gm_dice_volume: float
    nawm_dice_slice_mean: float
    gm_dice_slice_mean: float
    gain: float = 1.0
    scl_slope: float = 1.0
    scl_inter: float = 0.0
    input_level_ratio: float | None = None
    input_scale: str = "absolute"
    mask_dice: float = float("nan")
    input_path: str = ""
    output_dir: str = ""
    summary: dict[str, float | None] = field(default_factory=dict)

    @property
    def nawm_dice(self) -> float:
        """The whole-volume NAWM Dice (:attr:`nawm_dice_volume`; the name of earlier versions)."""
        return self.nawm_dice_volume

    @property
    def gm_dice(self) -> float:
        """The whole-volume GM Dice (:attr:`gm_dice_volume`; the name of earlier versions)."""
        return self.gm_dice_volume


def metrics_against_truth(subject, maps, mask=None) -> dict[str, float | None]:
    """The demo's figures: ``maps`` against the subject's ground truth, as ``mrfengine evaluate`` computes them.

    Parameters
    ----------
    subject : mrfengine.io.Subject
        A simulated subject (with ``truth/``).
    maps : mapping of str to ndarray
        ``T1``, ``T2star`` (ms), ``NAWM``, ``GM``, ``lesion`` (probabilities),
        any subset, ``(Z, Y, X)`` on the subject's grid.
    mask : ndarray, bool, optional
        Where the deviations are computed (default the brain mask).

    Returns
    -------
    dict
        :func:`mrfengine.report.evaluate.evaluate_maps`' summary against the
        ``truth`` source (lesion reference: the lesion fraction >=
        :data:`~mrfengine.metrics.REFERENCE_LESION_THRESHOLD`; NAWM:
        ``truth/WM``, which excludes lesions already), without the sweep,
        calibration and MSSEG extras; NaN written as None.
    """
    from .report.evaluate import evaluate_maps

    return evaluate_maps(subject, dict(maps), "truth", mask=mask, extras=False, pred_name="the maps")["summary"]


def write_scanner_series(mrf, affine, path, *, gain: float = SCANNER_GAIN):
    """Store an MRF series as a scanner would: ``gain`` times the signal, in int16 with ``scl_slope``.

    Parameters
    ----------
    mrf : array_like, (T, Z, Y, X)
        The magnitudes (a cohort subject's ``mrf``).
    affine : ndarray, (4, 4)
    path : path
        ``.nii`` or ``.nii.gz``; written as (X, Y, Z, T) int16 ``round(gain
        * signal / scl_slope)`` with ``scl_inter`` 0 and ``scl_slope`` that
        puts the largest value at 32,000 (non-negative integers, as scanners
        store magnitudes).

    Returns
    -------
    (float, float)
        The ``scl_slope`` and ``scl_inter`` written.
    """
    import nibabel as nib

    data = np.asarray(mrf, dtype=np.float32).transpose(3, 2, 1, 0) * np.float32(gain)
    peak = float(data.max())
    slope = float(np.float32(peak / 32000.0)) if peak > 0 else 1.0  # as the header stores it
    raw = np.rint(data / np.float32(slope)).astype(np.int16)
    img = nib.Nifti1Image(raw, np.asarray(affine, dtype=np.float64))
    img.header.set_slope_inter(slope, 0.0)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return slope, 0.0


def run_unet_demo(path, *, seed: int = 0, model: str = "default", precision: str = "float32",
                  preset: str = "paper", gain: float = SCANNER_GAIN, threads: int | None = None) -> UnetDemoReport:
    """The network on a series as a scanner would store it, through ``mrfengine predict``.

    Simulates one patient (``preset`` paper: 240 x 240 x 60, site 1; a cohort
    seed the default model never saw) at ``path``, stores its MRF series times
    ``gain`` as an int16 NIfTI with ``scl_slope`` beside it
    (``<path stem>-scanner/sub-01_mrf.nii``, no brain mask: scans arrive
    without one) and runs ``mrfengine predict`` on it, the code a user runs:
    the NIfTI read back (``load_nifti``), the series' scale taken per subject
    (``--input-scale subject``, or ``card`` when the model's card is
    scale-free), a brain mask made from the series and the outside rule.  The
    maps written (``<path stem>-scanner/maps/``) are compared with the ground
    truth by :func:`metrics_against_truth` (the definitions of ``mrfengine
    evaluate``): relative deviations in the brain, Dice at the paper's
    thresholds (33% lesion, 80% tissue).

    Raises
    ------
    NoDefaultModelError
        When ``model`` is ``default`` and no model is packaged.
    """
    import json
    import time
    from pathlib import Path

    import nibabel as nib

    from .cli.predict import predict as predict_command
    from .io import Cohort
    from .metrics import dice
    from .nn import read_card
    from .phantom import simulate_cohort
    from .nn.predict import resolve_model_path
    from .sequence import save_sequence

    model_path = str(resolve_model_path(model, what="demo --model"))  # the clear error before simulating anything
    path = Path(path)
    simulate_cohort(path, preset=preset, n_subjects=1, seed=10_000 + seed)
    sub = Cohort.open(path)[Cohort.open(path).subjects[0]]
    work = path.with_name(path.name.removesuffix(".zarr") + "-scanner")
    work.mkdir(parents=True, exist_ok=True)
    series = work / f"{sub.id}_mrf.nii"  # uncompressed: noise compresses badly, and gzip costs 25 s here
    slope, inter = write_scanner_series(sub.mrf[...], sub.affine, series, gain=gain)
    sequence_file = save_sequence(sub.sequence, work / "sequence.json")
    scale = "card" if read_card(model_path).normalisation.scale_free else "subject"
    out = work / "maps"
    args = [str(series), "-o", str(out), "--model", str(model_path), "--sequence", str(sequence_file),
            "--input-scale", scale, "--precision", precision, "--force", "--no-progress"]
    if threads:
        args += ["--threads", str(threads)]
    t0 = time.perf_counter()
    predict_command.main(args, prog_name="mrfengine predict", standalone_mode=False)
    seconds = time.perf_counter() - t0

    def read(suffix: str) -> np.ndarray:  # (X, Y, Z) -> the store's (Z, Y, X)
        path = out / sub.id / "anat" / f"{sub.id}_{suffix}.nii.gz"  # predict's derivative layout
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32).transpose(2, 1, 0)

    side = json.loads((out / sub.id / "anat" / f"{sub.id}_desc-unet_T1map.json").read_text())["Provenance"]
    brain = np.asarray(sub.brain_mask[:]) > 0
    made = read("label-brain_desc-unet_mask") > 0
    both = brain & made
    maps = {"T1": read("desc-unet_T1map") * 1e3, "T2star": read("desc-unet_T2starmap") * 1e3,
            "NAWM": read("label-NAWM_desc-unet_probseg"), "GM": read("label-GM_desc-unet_probseg"),
            "lesion": read("label-lesion_desc-unet_probseg")}
    summary = metrics_against_truth(sub, maps, both)

    def figure(key: str) -> float:
        return float("nan") if summary.get(key) is None else float(summary[key])

    return UnetDemoReport(
        subject=sub.id, model=str(model_path), shape=tuple(sub.shape), seconds=seconds,
        t1_reldev=figure("T1_relative_deviation"), t2star_reldev=figure("T2star_relative_deviation"),
        lesion_dice=figure("lesion_dice"), lesion_detection_rate=figure("lesion_detection_rate"),
        nawm_dice_volume=figure("NAWM_dice_volume"), gm_dice_volume=figure("GM_dice_volume"),
        nawm_dice_slice_mean=figure("NAWM_dice_slice_mean"), gm_dice_slice_mean=figure("GM_dice_slice_mean"),
        summary=summary,
        gain=float(gain), scl_slope=slope, scl_inter=inter, input_level_ratio=side.get("InputLevelRatio"),
        input_scale=str(side.get("InputScale")), mask_dice=dice(made, brain), input_path=str(series),
        output_dir=str(out),
    )
