"""Cohort commands: ``simulate``, ``import``, ``export``, ``show``, ``validate``."""

from __future__ import annotations

import click

from ._common import READ_COHORT, nthreads_option, output_file_option, progress_option, subjects_option
from ._outputs import force_options


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, path = v.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"expected NAME=PATH; got {v!r}", param_hint=option)
        out[name] = path
    return out


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=click.Path(file_okay=False, readable=False))  # checked below
@click.option("--preset", default="paper", show_default=True, type=click.Choice(["tiny", "paper", "heldout"]),
              help="tiny: 6 small subjects in seconds (tests); paper: 48 subjects of 240x240x60 as in the paper; "
                   "heldout: 7 paper-sized subjects simulated with settings no training cohort uses, all in the "
                   "test split, for 'mrfengine evaluate' only ('train' refuses it).")
@click.option("--n-subjects", "n_subjects", type=click.IntRange(1), default=None, metavar="N",
              help="Number of subjects (default: the preset's); the split scales with it.")
@click.option("--subjects", "n_subjects_alias", type=click.IntRange(1), default=None, hidden=True,
              help="Deprecated name of --n-subjects (--subjects names subjects on every other command).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0), help="Same seed, same bytes.")
@click.option("--distortion/--no-distortion", default=None,
              help="Simulate EPI distortion along the phase-encoding direction (default: off).")
@click.option("--tissue-fractions", default=None,
              type=click.Choice(["subject", "population", "mixed"]),  # phantom.config.FRACTION_MODELS (lazy import)
              help="subject (the default of tiny and paper): one brain's crisp tissues with partial volume at "
                   "their boundaries; population: the MNI template's population probabilities as fractions "
                   "(cohorts made before version 2); mixed: the mean of the two (heldout's default).")
@click.option("--randomise", is_flag=True,
              help="Draw every subject's settings from wide ranges (intensity scale over five decades, int16 "
                   "storage, SNR 15-80, B1, tissue values and PD, lesion size/shape/place, both fraction models, "
                   "EPI distortion): training data for a network that works on scans it never saw. "
                   "Deterministic per seed.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1),
              help="Processes simulating subjects in parallel.")
@force_options("Replace an existing cohort store at COHORT (otherwise: resume). Only a folder that is an "
               "mrfengine cohort holding nothing but its own files is deleted.", alias="--overwrite")
@nthreads_option()
@progress_option
def simulate(cohort, preset, n_subjects, n_subjects_alias, seed, distortion, tissue_fractions, randomise, workers,
             force, force_alias, n_threads, show_progress) -> None:
    """Simulate a synthetic MS cohort (MNI-based anatomy, lesions, MRF-EPI
    signals with Rician noise, ground truth and simulated annotations) into a
    zarr cohort store.  Rerunning the same command resumes an interrupted run."""
    import time

    from ..io.outputs import check_store_writable
    from ..phantom import cohort_preset, simulate_cohort
    from ._common import progress

    overwrite = force or force_alias
    if n_subjects_alias is not None:
        click.echo("warning: simulate --subjects N is deprecated; use --n-subjects N (--subjects names subjects "
                   "on the other commands)", err=True)
        if n_subjects is not None:
            raise click.UsageError("give --n-subjects only (--subjects N is its deprecated name)")
        n_subjects = n_subjects_alias
    check_store_writable(cohort)

    cfg = cohort_preset(preset, n_subjects=n_subjects, distortion=distortion, tissue_fractions=tissue_fractions,
                        randomise=randomise or None)
    bar = progress(range(cfg.n_subjects), total=cfg.n_subjects, desc="subjects", enabled=show_progress)
    done = {"done": 0, "skipped": 0}

    def report(_sid: str, what: str) -> None:
        done[what] += 1
        next(bar, None)

    t0 = time.perf_counter()
    c = simulate_cohort(cohort, config=cfg, seed=seed, overwrite=overwrite, workers=workers, progress=report)
    seconds = time.perf_counter() - t0
    z, y, x = cfg.grid.shape_zyx
    click.echo(f"{cohort}: {len(c.subjects)} subjects ({x}x{y}x{z}), {done['done']} simulated, "
               f"{done['skipped']} already complete, in {seconds:.1f} s")


@click.command("import")
@click.argument("cohort", metavar="COHORT.zarr", type=click.Path(file_okay=False, readable=False))  # checked below
@click.option("--subject", "subject_id", required=True, help="Subject id, e.g. sub-01 (or 01).")
@click.option("--mrf", "mrf_path", required=True, type=click.Path(dir_okay=False),
              help="4D MRF NIfTI (X, Y, Z, frames); int16 with scaling or float; .nii or .nii.gz.")
@click.option("--site", default="1", show_default=True, help="Site name (1 and 2: the hermann2021 protocols).")
@click.option("--sequence", "sequence_spec", default=None,
              help="Sequence of a new site: a preset or a file (default for sites 1 and 2: hermann2021).")
@click.option("--split", default="none", show_default=True,
              type=click.Choice(["train", "validation", "test", "none"]))
@click.option("--group", default="unknown", show_default=True, type=click.Choice(["patient", "healthy", "unknown"]))
@click.option("--brain-mask", type=click.Path(dir_okay=False), default=None, help="3D brain mask on the MRF grid.")
@click.option("--annotation", "annotation_specs", multiple=True, metavar="NAME=PATH",
              help="A 3D mask, e.g. lesion=sub-01_lesion.nii.gz (repeatable).")
@click.option("--reference", "reference_specs", multiple=True, metavar="NAME=PATH",
              help="A 3D reference image, e.g. T2w=sub-01_T2w.nii.gz (repeatable).")
@click.option("--slice-axis", default=2, show_default=True, type=click.IntRange(0, 2),
              help="Array axis of the MRF's slices.")
@force_options("Replace the subject if it is already in the cohort.", alias="--overwrite")
def import_(cohort, subject_id, mrf_path, site, sequence_spec, split, group, brain_mask, annotation_specs,
            reference_specs, slice_axis, force, force_alias) -> None:
    """Import one subject's NIfTI files (MRF series, masks, reference images)
    into a cohort store, creating it if needed."""
    from ..io.importer import import_subject
    from ..io.outputs import check_store_writable
    from ..sequence import resolve_sequence

    overwrite = force or force_alias
    check_store_writable(cohort)

    seq = resolve_sequence(sequence_spec) if sequence_spec else None
    sid = import_subject(
        cohort, subject_id, mrf_path, site=site, sequence=seq, split=split, group=group, brain_mask=brain_mask,
        annotations=_pairs(annotation_specs, "--annotation"), references=_pairs(reference_specs, "--reference"),
        slice_axis=slice_axis, overwrite=overwrite,
    )
    click.echo(f"{cohort}: imported {sid} (site {site}, split {split})")


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=READ_COHORT)
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False))
@subjects_option("export every subject", aliases=("--subject",))
@click.option("--array", "arrays", multiple=True,
              help="Array path(s) such as truth/T1, mrf, annotations/lesion (default: all of the subject).")
@click.option("--pipeline", "pipelines", multiple=True,
              help="Export the maps of this derived group (mrfengine batch --name; e.g. denoise-match); repeatable.")
@click.option("--uncompressed", is_flag=True, help="Write .nii instead of .nii.gz.")
@force_options("Replace images and sidecars that already exist in OUTPUT_DIR.")
def export(cohort, output_dir, subject_ids, arrays, pipelines, uncompressed, force) -> None:
    """Export arrays of cohort subjects to NIfTI: OUTPUT_DIR becomes a BIDS
    derivative dataset (dataset_description.json naming the store), the
    files in sub-01/anat/ with the subject's affine, BIDS names such as
    sub-01_desc-truth_T1map.nii.gz and JSON sidecars (units; T1 and T2* in
    seconds; Sources as BIDS URIs).  With --pipeline, the maps a batch wrote
    (desc-<pipeline name>: sub-01_desc-denoisematch_T1map.nii.gz, ...) with the
    pipeline's provenance in their sidecars, 0 outside the subject's brain
    mask (written too, as sub-01_desc-brain_mask.nii.gz); subjects whose maps
    are not complete are reported and skipped.  Every output is checked before anything is
    written: existing files are not replaced unless --force."""
    from ..errors import StoreError
    from ..io.cohort import Cohort
    from ..io.bids import check_derivative_root
    from ..io.exporter import export_file, export_subject
    from ..io.outputs import check_outputs

    ext = ".nii" if uncompressed else ".nii.gz"
    c = Cohort.open(cohort)
    no_maps: list[str] = []  # subjects without complete maps of a pipeline: reported, skipped
    damaged: list[str] = []  # subjects whose store is damaged: errors
    plan: list[tuple[str, list[str]]] = []
    names: list[str] = []
    for sid in c.select(subject_ids):
        wanted = list(arrays)
        try:
            sub = c[sid]
            if pipelines:
                for name in pipelines:
                    found = [a for a in sub.arrays if a.startswith(f"derived/{name}/")]
                    if not found:
                        no_maps.append(f"{sid} ({name})")
                    wanted += found
                if not wanted:
                    continue
                if any(a.startswith("derived/") for a in wanted) and "brain_mask" in sub.arrays:
                    wanted.append("brain_mask")  # the mask the maps' sidecars name (the outside rule)
            wanted = list(dict.fromkeys(wanted or sub.arrays))  # an array named twice is exported once
            for a in wanted:
                sub.array(a).check_chunks()  # a damaged subject is refused before any of its files is written
                file = export_file(sub.id, a, ext)[0]
                names += [str(file.relpath), str(file.sidecar)]
        except StoreError as exc:
            damaged.append(str(exc))
            continue
        plan.append((sid, wanted))
    check_derivative_root(output_dir, force=force)
    check_outputs(output_dir, names, force=force)
    n = 0
    for sid, wanted in plan:
        try:
            n += len(export_subject(c, sid, output_dir, arrays=wanted, ext=ext, force=force))
        except StoreError as exc:  # a chunk that does not decode: found only when read
            damaged.append(f"{exc} (the images of {sid} written before it are in {output_dir})")
    click.echo(f"wrote {n} images to {output_dir}")
    if no_maps:
        click.secho(f"not exported (no complete maps; run mrfengine batch): {', '.join(no_maps)}", err=True,
                    fg="yellow")
    for problem in damaged:
        click.secho(f"error: {problem}", err=True, fg="red")
    if damaged or not n:
        click.get_current_context().exit(1)


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=READ_COHORT)
@subjects_option("show the first subject", aliases=("--subject",),
                 help="The subject to show, sub-07 or 07 (default: the first); one subject per figure.")
@output_file_option("PNG file to write.", aliases=("-o",))
@click.option("--pipeline", "pipelines", multiple=True, metavar="NAME",
              help="Also show the maps of this derived group (derived/NAME/: a batch's conventional or U-net maps), "
                   "each with its colour bar and unit; repeatable or comma-separated.")
@click.option("--maps", "map_names", default=None, metavar="NAMES",
              help="Only these maps of the --pipeline groups, comma-separated (e.g. T1,T2star,lesion; default: "
                   "every map of the group but its brain mask).")
@click.option("--slice", "slices", multiple=True, type=click.IntRange(0), help="Slice(s) to show (default: 3).")
@click.option("--frame", "frames", multiple=True, type=click.IntRange(0), help="MRF frame(s), 0-based (default 0, 17).")
@force_options("Replace OUTPUT if it exists.")
def show(cohort, subject_ids, output, pipelines, map_names, slices, frames, force) -> None:
    """Write a PNG mosaic of one subject: MRF frames, truth maps, tissue
    fractions and lesion outlines on the T2-weighted reference; with
    --pipeline, the maps of derived groups too (dictionary matching, U-net)
    with their colour bars, drawn as the QC pages of `mrfengine report` draw
    them."""
    from pathlib import Path

    from ..errors import StoreError
    from ..io.cohort import Cohort
    from ..io.outputs import check_outputs
    from ..report.mosaic import save_subject_mosaic

    if len(subject_ids) > 1:
        raise click.BadParameter(f"one subject per figure; got {', '.join(subject_ids)}", param_hint="--subjects")
    names = [p.strip() for v in pipelines for p in v.split(",") if p.strip()]
    if pipelines and not names:
        raise click.BadParameter("no pipeline named", param_hint="--pipeline")
    wanted = [m.strip() for m in (map_names or "").split(",") if m.strip()]
    if map_names is not None and not wanted:
        raise click.BadParameter("no map named", param_hint="--maps")
    if wanted and not names:
        raise click.UsageError("--maps selects maps of the --pipeline groups: give --pipeline NAME too")
    out = Path(output)
    check_outputs(out.parent, [out.name], force=force)
    c = Cohort.open(cohort)
    if not c.subjects:
        raise StoreError(f"{cohort}: no complete subject to show")
    sid = c.select(subject_ids)[0] if subject_ids else c.subjects[0]
    maps = _derived_maps(c[sid], names, wanted)
    path = save_subject_mosaic(c, sid, output, slices=slices or None, frames=frames or (0, 17), maps=maps)
    click.echo(f"wrote {path}" + (f" ({sid}, {len(maps)} derived map(s))" if maps else f" ({sid})"))


def _derived_maps(subject, pipelines: list[str], wanted: list[str]) -> list[str]:
    """The array paths of the maps ``show --pipeline/--maps`` asks for; exit 2 naming what is missing."""
    groups = sorted({a.split("/")[1] for a in subject.arrays if a.startswith("derived/") and a.count("/") >= 2})
    maps: list[str] = []
    for name in pipelines:
        if name not in groups:
            raise click.BadParameter(f"{subject.id} has no complete derived/{name}/; its derived groups: "
                                     f"{', '.join(groups) or '(none: run mrfengine batch)'}", param_hint="--pipeline")
        have = [a for a in subject.arrays if a.startswith(f"derived/{name}/") and a.count("/") == 2]
        if wanted:
            missing = [m for m in wanted if f"derived/{name}/{m}" not in have]
            if missing:
                raise click.BadParameter(f"derived/{name}/ of {subject.id} has no {', '.join(missing)}; it has "
                                         f"{', '.join(a.rsplit('/', 1)[1] for a in have)}", param_hint="--maps")
            maps += [f"derived/{name}/{m}" for m in wanted]
        else:
            maps += [a for a in have if not a.endswith("/brain_mask")]
    return maps


@click.command()
@click.argument("cohort", metavar="COHORT.zarr", type=READ_COHORT)
@click.option("--deep", is_flag=True, help="Also read the data (finite values, fractions, binary masks).")
@click.option("--allow-incomplete", is_flag=True, help="Incomplete subjects are warnings, not errors.")
def validate(cohort, deep, allow_incomplete) -> None:
    """Check a cohort store against its schema (docs/cohort-format.md) and
    name every problem; exit status 1 if there is any."""
    from ..errors import StoreError
    from ..io.cohort import Cohort, validate_cohort

    rep = validate_cohort(cohort, deep=deep, allow_incomplete=allow_incomplete)
    for w in rep.warnings:
        click.echo(f"warning: {w}", err=True)
    for p in rep.problems:
        click.echo(f"problem: {p}", err=True)
    if not rep.ok:
        raise StoreError(f"{cohort}: {len(rep.problems)} problem(s) found")
    c = Cohort.open(cohort)
    splits = {s: len(c.subjects_in(s)) for s in ("train", "validation", "test", "none")}
    click.echo(f"{cohort}: valid (schema version {c.schema_version}); {rep.n_complete} complete subjects, sites "
               f"{sorted(c.sites)}, split " + ", ".join(f"{k} {v}" for k, v in splits.items() if v))


commands = [simulate, import_, export, show, validate]
