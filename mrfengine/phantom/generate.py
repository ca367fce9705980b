"""Generate a synthetic cohort into a cohort store, one subject at a time.

:func:`simulate_cohort` plans the cohort (sites, healthy volunteers and
patients, the train/validation/test split), writes the root attributes, then
streams the subjects: each is simulated and written slice by slice and marked
complete last (:class:`mrfengine.io.cohort.SubjectWriter`), so memory stays
bounded by one subject and a rerun resumes where an interrupted one stopped.

Randomness: every subject draws from its own streams, seeded by
``(seed, subject index)`` (:class:`numpy.random.SeedSequence`), one stream per
stage (anatomy, tissues, B1, lesions, annotations, reference, MRF noise per
slice).  The same seed gives the same bytes, whatever the order or number of
worker processes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import StoreError, ValidationError
from ..io.cohort import (
    Cohort,
    SiteEntry,
    SubjectEntry,
    SubjectWriter,
    TRUTH_SPECS,
    consolidate,
    create_cohort,
    drop_consolidated,
    json_equal,
    read_cohort_attrs,
    subject_complete,
)
from ..sequence import Sequence, hermann2021
from .anatomy import Template, grid_affine, load_template, random_deformation, subject_anatomy, template_points
from .config import CohortConfig, cohort_preset
from .lesions import annotate, render_lesions, sample_lesions
from ..noise import wm_signal_level
from .randomise import draw_subject
from .signals import (
    T2_MS,
    add_rician_noise,
    distort_slice,
    distortion_field,
    noise_sigma,
    quantization_step,
    slice_signals,
    t2w_image,
)
from .tissues import Compartment, TissueModel, b1_field, spatial_maps, subject_tissue_values

__all__ = ["SubjectPlan", "plan_cohort", "site_sequence", "simulate_subject", "simulate_cohort", "GENERATOR"]

log = logging.getLogger(__name__)

GENERATOR = "mrfengine.phantom/2"
_STAGES = ("anatomy", "tissue", "b1", "lesions", "annotations", "reference", "noise", "distortion", "randomise")
# A held-apart cohort's streams carry this extra word: other brains than a regular cohort's of the same seed.
_HELD_APART_SALT = 0x4E1D


@dataclass(frozen=True)
class SubjectPlan:
    """What the cohort plan fixes for one subject before it is simulated."""

    id: str
    index: int
    site: str
    group: str
    split: str
    repeat_annotation: bool


def site_sequence(config: CohortConfig, site: str) -> Sequence:
    """The acquisition of ``site`` for the cohort's slice count."""
    return hermann2021(int(site), n_slices=int(config.grid.shape_zyx[0]))


def plan_cohort(config: CohortConfig, seed: int) -> list[SubjectPlan]:
    """Sites, groups and splits of every subject.

    Subjects are divided over the sites in equal consecutive blocks (site 1
    first).  Healthy volunteers are spread over the sites and train; the test
    and validation splits take ``test_per_site`` and ``validation_per_site``
    patients of each site at random; a share ``annotation.repeat_share`` of
    patients gets a second annotation session.

    Raises
    ------
    ValidationError
        When a site has fewer patients than its held-out counts need.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
    n = config.n_subjects
    width = max(2, len(str(n)))
    n_sites = len(config.sites)
    site_of = [config.sites[i * n_sites // n].name for i in range(n)]
    members = {s.name: [i for i in range(n) if site_of[i] == s.name] for s in config.sites}
    healthy: set[int] = set()
    per_site = [config.n_healthy // n_sites + (1 if k < config.n_healthy % n_sites else 0) for k in range(n_sites)]
    for k, s in enumerate(config.sites):
        take = min(per_site[k], len(members[s.name]))
        healthy.update(int(i) for i in rng.choice(members[s.name], size=take, replace=False))
    split = ["test" if config.held_apart else "train"] * n
    for k, s in enumerate(config.sites):
        patients = [i for i in members[s.name] if i not in healthy]
        need = config.test_per_site[k] + config.validation_per_site[k]
        if need > len(patients):
            raise ValidationError(
                f"site {s.name} has {len(patients)} patients but the split needs {need} for test and validation"
            )
        chosen = rng.permutation(patients)[:need]
        for j, i in enumerate(chosen):
            split[int(i)] = "test" if j < config.test_per_site[k] else "validation"
    patients = [i for i in range(n) if i not in healthy]
    n_repeat = int(round(config.annotation.repeat_share * len(patients)))
    if config.annotation.repeat_share > 0 and patients:
        n_repeat = max(1, n_repeat)
    repeat = set()
    if patients:
        repeat = {int(i) for i in rng.choice(patients, size=min(n_repeat, len(patients)), replace=False)}
    return [
        SubjectPlan(
            id=f"sub-{i + 1:0{width}d}",
            index=i,
            site=site_of[i],
            group="healthy" if i in healthy else "patient",
            split=split[i],
            repeat_annotation=i in repeat,
        )
        for i in range(n)
    ]


class _Stopwatch:
    """Seconds per named stage, summed over repeated laps."""

    def __init__(self) -> None:
        self.start = self._last = time.perf_counter()
        self.times: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.times[name] = self.times.get(name, 0.0) + now - self._last
        self._last = now


def _streams(seed: int, index: int, held_apart: bool = False) -> dict[str, np.random.Generator]:
    words = [int(seed), int(index) + 1] + ([_HELD_APART_SALT] if held_apart else [])
    # Child k of a SeedSequence depends on k alone, so appending a stage keeps the others' streams.
    seqs = np.random.SeedSequence(words).spawn(len(_STAGES))
    return {name: np.random.default_rng(s) for name, s in zip(_STAGES, seqs)}


def _site(config: CohortConfig, name: str):
    return next(s for s in config.sites if s.name == name)


def _revision(config: CohortConfig, seed: int, plan: SubjectPlan) -> str:
    """The subject's revision token, a function of what it is simulated from (same seed,
    same bytes, the consolidated metadata included)."""
    import hashlib
    import json

    what = json.dumps({"config": config.to_dict(), "seed": int(seed), "subject": plan.id, "index": plan.index},
                      sort_keys=True, default=str)
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def simulate_subject(
    root: Any,
    config: CohortConfig,
    plan: SubjectPlan,
    seed: int,
    *,
    template: Template | None = None,
) -> dict[str, float]:
    """Simulate one subject and write it into an open cohort.

    Parameters
    ----------
    root : zarr.Group
        The cohort's root group, writable.
    config : CohortConfig
    plan : SubjectPlan
    seed : int
        The cohort seed (the subject's streams derive from it and ``plan.index``).
    template : Template, optional
        A template already loaded for the grid's voxel size.

    Returns
    -------
    dict
        Seconds spent per stage (not stored: timings are not reproducible).
    """
    clock = _Stopwatch()
    times = clock.times
    lap = clock.lap

    rng = _streams(seed, plan.index, config.held_apart)
    grid = config.grid
    shape = tuple(int(s) for s in grid.shape_zyx)
    affine = grid_affine(grid)
    site = _site(config, plan.site)
    seq = site_sequence(config, plan.site)
    draw = None
    if config.randomisation.enabled:
        draw = draw_subject(config, site, wm_signal_level(seq), rng["randomise"])
        if draw.config.anatomy.tissue_fractions != config.anatomy.tissue_fractions:
            template = None
        config, site = draw.config, draw.site
    vox_zyx = tuple(float(v) for v in grid.voxel_size_mm[::-1])
    voxel_volume = float(np.prod(grid.voxel_size_mm))

    deformation = random_deformation(config.anatomy, grid, rng["anatomy"])
    if template is None:
        template = load_template(tuple(float(v) for v in grid.voxel_size_mm), config.anatomy.tissue_fractions)
    anat = subject_anatomy(grid, deformation, template)
    lap("anatomy")

    values = subject_tissue_values(config.tissue, rng["tissue"])
    tmaps = spatial_maps(values, config.tissue, affine, shape, anat.t1w, rng["tissue"])
    centre = np.array([grid.center_mm[0], grid.center_mm[1], grid.slab_center_mm])
    b1 = b1_field(site, affine, shape, centre, rng["b1"])
    lap("tissues")

    lesions = sample_lesions(anat, affine, config.lesion, rng["lesions"]) if plan.group == "patient" else []
    lm = render_lesions(lesions, affine, shape, config.lesion)
    lesion_frac = (anat.wm * lm.occupancy).astype(np.float32)
    owner = np.where(lesion_frac >= 0.01, lm.owner, 0).astype(np.uint16)
    volumes = np.bincount(owner.ravel(), weights=lesion_frac.ravel(), minlength=len(lesions) + 1)[1:] * voxel_volume
    lap("lesions")

    wm_t1, wm_t2 = tmaps["WM"]
    scalar = {name: np.float32(values[name].pd) for name in ("WM", "GM", "DGM", "CSF")}
    comps = {
        "WM": Compartment(anat.wm - lesion_frac, wm_t1, wm_t2, np.asarray(scalar["WM"])),
        "GM": Compartment(anat.gm - anat.dgm, *tmaps["GM"], np.asarray(scalar["GM"])),
        "DGM": Compartment(anat.dgm, *tmaps["DGM"], np.asarray(scalar["DGM"])),
        "CSF": Compartment(anat.csf, *tmaps["CSF"], np.asarray(scalar["CSF"])),
        "lesion": Compartment(lesion_frac, wm_t1 * lm.t1_factor, wm_t2 * lm.t2star_factor, lm.pd),
    }
    model = TissueModel(comps, b1)
    truth = model.truth_maps()
    lap("tissues")

    writer = SubjectWriter(
        root, plan.id, shape_zyx=shape, affine=affine, n_frames=seq.n_measurements,
        attrs={"site": plan.site, "group": plan.group, "source": "simulated"},
        overwrite=True,
        revision=_revision(config, seed, plan),
    )
    for name, arr in truth.items():
        unit, desc = TRUTH_SPECS[name]
        writer.write(f"truth/{name}", arr.astype(np.float32), attrs={"units": unit, "description": desc})
    unit, desc = TRUTH_SPECS["lesion_id"]
    writer.write("truth/lesion_id", owner, attrs={"units": unit, "description": desc})
    writer.write("brain_mask", (anat.brain >= 0.5).astype(np.uint8),
                 attrs={"description": "brain (template brain fraction >= 0.5)"})
    lap("write")

    n_sessions = 2 if (plan.group == "patient" and plan.repeat_annotation) else 1
    for k, name in enumerate(("lesion", "lesion_repeat")[:n_sessions]):
        mask = annotate(lesion_frac, owner, volumes, vox_zyx, config.annotation, rng["annotations"])
        writer.write(f"annotations/{name}", mask, attrs={
            "description": "simulated manual lesion mask" + (", second session of the same rater" if k else ""),
            "rater": 1, "session": k + 1,
        })
    lap("annotations")

    t2w = t2w_image(comps)
    wm = values["WM"]
    t2w_level = wm.pd * (1 - np.exp(-6000.0 / wm.t1_ms)) * np.exp(-90.0 / T2_MS["WM"])
    t2w = add_rician_noise(t2w, float(t2w_level / config.t2w_snr), rng["reference"], quantize=config.quantize)
    writer.write("reference/T2w", t2w, attrs={
        "description": "undistorted T2-weighted spin echo (TE 90 ms, TR 6000 ms), simulated", "units": "arbitrary"})
    lap("reference")

    disp = None
    if config.distortion.enabled:
        pts = template_points(deformation, affine, shape)
        disp = distortion_field(affine, shape, pts, config.distortion.max_mm, config.distortion.random_sd_mm,
                                rng["distortion"])
        del pts
        unit, desc = TRUTH_SPECS["distortion"]
        writer.write("truth/distortion", disp, attrs={"units": unit, "description": desc})
        lap("distortion")

    sigma = noise_sigma(seq, site.snr)
    mrf = writer.create("mrf", dtype="float32", frames=True, attrs={
        "units": "arbitrary", "description": "MRF-EPI magnitude images, frames in acquisition order"})
    noise_seed = np.random.SeedSequence(int(rng["noise"].integers(2**63)))
    slice_rngs = [np.random.default_rng(s) for s in noise_seed.spawn(shape[0])]
    for z in range(shape[0]):
        clean = slice_signals(seq, z, comps, b1)
        lap("signals")
        if disp is not None:
            clean = distort_slice(clean, disp[z])
        noisy = add_rician_noise(clean, sigma, slice_rngs[z], quantize=config.quantize)
        if draw is not None:
            noisy = draw.store(noisy)
        lap("noise")
        mrf[:, z] = noisy
        lap("write")

    table = [dict(les.to_dict(), id=k + 1, volume_mm3=round(float(volumes[k]), 3),
                  target_volume_mm3=round(les.volume_mm3, 3)) for k, les in enumerate(lesions)]
    step = quantization_step(sigma) if config.quantize else 0.0
    extra = {}
    if draw is not None:
        sigma, step = sigma * draw.gain, (draw.int16_slope if draw.int16_slope is not None else step * draw.gain)
        extra["randomisation"] = draw.record
    writer.finish(
        noise_sigma=sigma,
        snr=site.snr,
        quantization_step=step,
        deformation=deformation.describe(),
        tissue_values={k: {"t1_ms": round(v.t1_ms, 3), "t2star_ms": round(v.t2star_ms, 3), "pd": v.pd}
                       for k, v in values.items()},
        lesions=table,
        n_lesions=len(table),
        lesion_volume_ml=round(float(volumes.sum()) / 1000, 4),
        annotation_sessions=n_sessions if plan.group == "patient" else 1,
        **extra,
    )
    times["total"] = time.perf_counter() - clock.start
    log.debug("%s simulated in %.1f s (%s)", plan.id, times["total"],
             ", ".join(f"{k} {v:.1f}" for k, v in times.items() if k != "total"))
    return times


def _differences(stored: Any, asked: Any, key: str = "") -> list[str]:
    """``"KEY: STORED (asked: ASKED)"`` for each leaf where two JSON-like values differ."""
    if isinstance(stored, dict) and isinstance(asked, dict):
        out = []
        for k in sorted(set(stored) | set(asked), key=str):
            sub = f"{key}.{k}" if key else str(k)
            if k not in stored:
                out.append(f"{sub}: absent (asked: {asked[k]!r})")
            elif k not in asked:
                out.append(f"{sub}: {stored[k]!r} (not a setting of this version)")
            else:
                out.extend(_differences(stored[k], asked[k], sub))
        return out
    if json_equal(stored, asked):
        return []
    return [f"{key or 'value'}: {stored!r} (asked: {asked!r})"]


def _generator_attrs(config: CohortConfig, seed: int) -> dict[str, Any]:
    return {"name": GENERATOR, "mrfengine_version": __version__, "seed": int(seed), "config": config.to_dict()}


def _worker(path: str, config: CohortConfig, plans: list[SubjectPlan], seed: int) -> list[tuple[str, dict]]:
    import zarr

    root = zarr.open_group(path, mode="r+")
    template = load_template(tuple(float(v) for v in config.grid.voxel_size_mm), config.anatomy.tissue_fractions)
    return [(p.id, simulate_subject(root, config, p, seed, template=template)) for p in plans]


def simulate_cohort(
    path: str | os.PathLike,
    *,
    preset: str = "tiny",
    n_subjects: int | None = None,
    seed: int = 0,
    config: CohortConfig | None = None,
    distortion: bool | None = None,
    overwrite: bool = False,
    workers: int = 1,
    progress: Callable[[str, str], None] | None = None,
) -> Cohort:
    """Simulate a synthetic MS cohort into a cohort store (resumable).

    Parameters
    ----------
    path : path
        The cohort (``.zarr`` folder).  If it exists and was made with the
        same settings, complete subjects are kept and the rest (re)written.
    preset : {"tiny", "paper"}
        ``tiny``: 6 subjects of 64 x 64 x 12 voxels (seconds); ``paper``: 48
        subjects of 240 x 240 x 60 as in Hermann et al. 2021.
    n_subjects : int, optional
        Another cohort size for the preset.
    seed : int
        Same seed, same bytes.
    config : CohortConfig, optional
        A full configuration instead of ``preset`` / ``n_subjects``.
    distortion : bool, optional
        Switch the EPI distortion on or off (preset default: off).
    overwrite : bool
        Delete an existing store at ``path`` first.
    workers : int
        Processes simulating subjects in parallel (each holds one subject).
    progress : callable, optional
        Called as ``progress(subject_id, "done" | "skipped")``.

    Returns
    -------
    Cohort
        The store, opened for reading.

    Raises
    ------
    StoreError
        ``path`` is something else than a cohort made with these settings.
    """
    if config is None:
        config = cohort_preset(preset, n_subjects=n_subjects, distortion=distortion)
    elif distortion is not None:
        config = replace(config, distortion=replace(config.distortion, enabled=bool(distortion)))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValidationError(f"seed must be a non-negative integer; got {seed!r}")
    if workers < 1:
        raise ValidationError(f"workers must be >= 1; got {workers}")
    path = Path(path)
    plans = plan_cohort(config, seed)
    generator = _generator_attrs(config, seed)
    if path.exists() and not overwrite:
        attrs = read_cohort_attrs(path)
        old = attrs.get("generator") or {}
        diff = _differences({"generator": old.get("name"), "seed": old.get("seed"), "config": old.get("config")},
                            {"generator": generator["name"], "seed": generator["seed"], "config": generator["config"]})
        if diff:
            more = f" and {len(diff) - 4} more" if len(diff) > 4 else ""
            what = "was not simulated" if not old else \
                f"was simulated with other settings ({'; '.join(diff[:4])}{more})"
            raise StoreError(f"{path}: {what}; choose another path or overwrite it")
        import zarr

        drop_consolidated(path)  # once, here, before any subject writer starts
        root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
        log.debug("resuming %s", path)
    else:
        sites = {s.name: SiteEntry(site_sequence(config, s.name), s.snr,
                                   {"b1_center": s.b1_center, "b1_edge": s.b1_edge}) for s in config.sites}
        subjects = {p.id: SubjectEntry(p.site, p.split, p.group) for p in plans}
        root = create_cohort(path, sites=sites, subjects=subjects, kind="simulated", generator=generator,
                             overwrite=overwrite)
    todo = []
    for p in plans:
        if subject_complete(path, p.id):
            if progress:
                progress(p.id, "skipped")
        else:
            todo.append(p)
    if workers == 1 or len(todo) <= 1:
        template = load_template(tuple(float(v) for v in config.grid.voxel_size_mm), config.anatomy.tissue_fractions)
        for p in todo:
            simulate_subject(root, config, p, seed, template=template)
            if progress:
                progress(p.id, "done")
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # Spawned workers: zarr's event-loop thread must not be forked.
        n = min(workers, len(todo))
        batches = [todo[k::n] for k in range(n)]
        with ProcessPoolExecutor(max_workers=n, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, str(path), config, [p], seed) for b in batches for p in b]
            for fut in as_completed(futures):
                for sid, _ in fut.result():
                    if progress:
                        progress(sid, "done")
    consolidate(path)  # every subject written: one read of the metadata of all of them
    return Cohort.open(path)
