"""``mrfengine demo``: the main job on a built-in default."""

from __future__ import annotations

import click

from ._common import backend_option, cache_option, make_cache, method_option, no_cache_option, nthreads_option


@click.command()
@click.option("--slices", default=4, show_default=True, type=click.IntRange(1, 60), help="Slices in the slab.")
@click.option("--voxels", default=2048, show_default=True, type=click.IntRange(1), help="Voxels per slice.")
@click.option("--snr", default=50.0, show_default=True, type=click.FloatRange(min=1, min_open=False),
              help="SNR relative to the white-matter signal.")
@click.option("--site", default=1, show_default=True, type=click.Choice(["1", "2"]), help="Protocol of site 1 or 2.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--cohort", "cohort_path", type=click.Path(file_okay=False), default="mrfengine-demo/tiny.zarr",
              show_default=True, help="Where the tiny cohort and its maps are kept (reused when it exists).")
@click.option("--no-cohort", is_flag=True, help="Skip the cohort part.")
@click.option("--no-unet", is_flag=True, help="Skip the U-net part.")
@backend_option
@method_option
@cache_option
@no_cache_option
@nthreads_option()
def demo(slices: int, voxels: int, snr: float, site: str, seed: int, cohort_path: str | None, no_cohort: bool,
         no_unet: bool, backend: str, method: str, cache_dir: str | None, no_cache: bool, n_threads: int) -> None:
    """Two demonstrations on built-in defaults.

    1. A slab of voxels with known, off-grid T1/T2*/B1/M0 and Rician noise,
    matched against the per-slice dictionaries of the paper's sequence:
    recovered against true values.

    2. The tiny synthetic MS cohort (6 subjects of both sites, MNI anatomy,
    lesions, B1 field, Rician noise) through the batch engine (MP-PCA
    denoising, then matching slice by slice, on a local Dask cluster): median
    errors against ground truth per tissue, and where the maps are.

    3. The packaged U-net (the paper's MSE-5 network) on one paper-sized
    patient it never saw (240 x 240 x 60, 35 frames), its series stored as
    a scanner would (times 1000, int16 NIfTI with scl_slope, no brain mask):
    `mrfengine predict` with the series' scale taken per subject gives
    whole-brain T1, T2*, NAWM, GM and lesion maps, against truth."""
    from ..demo import run_demo
    from ..dictionary import SliceDictionaries
    from ..sequence import hermann2021

    seq = hermann2021(int(site))
    dicts = SliceDictionaries(seq, cache=make_cache(cache_dir, no_cache))
    click.echo(f"mrfengine demo: sequence {seq.name} ({seq.n_measurements} measurements, {seq.n_slots} slots), "
               f"{slices} slices x {voxels} voxels, Rician noise at SNR {snr:g} (white matter)")
    rep = run_demo(sequence=seq, n_slices=slices, n_per_slice=voxels, snr=snr, seed=seed, backend=backend,
                   method=method, dictionaries=dicts)
    head = (f"{'tissue':<7}{'voxels':>7}  {'T1 true':>8} {'T1 found':>8} {'err':>6}  "
            f"{'T2* true':>8} {'T2* found':>9} {'err':>6}  {'|dB1|':>6} {'M0 err':>6}")
    click.echo("\nmedians per tissue (times in ms, err = median relative error)")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rep.rows:
        click.echo(f"{r.tissue:<7}{r.n_voxels:>7}  {r.t1_true_ms:>8.0f} {r.t1_found_ms:>8.0f} {r.t1_rel_error:>6.1%}  "
                   f"{r.t2star_true_ms:>8.1f} {r.t2star_found_ms:>9.1f} {r.t2star_rel_error:>6.1%}  "
                   f"{r.b1_abs_error:>6.3f} {r.m0_rel_error:>6.1%}")
    rate = rep.n_voxels / rep.match_seconds if rep.match_seconds > 0 else float("inf")
    click.echo(f"\ndictionaries: {rep.n_slices} x {rep.n_atoms} atoms in {rep.dictionary_seconds:.2f} s; "
               f"matching ({rep.backend}, {rep.method}): {rep.n_voxels} voxels in {rep.match_seconds:.2f} s ({rate:,.0f} voxels/s)")
    if not no_cohort:
        if cache_dir:  # the batch's worker processes read the cache from the environment
            import os

            os.environ["MRFENGINE_CACHE_DIR"] = str(cache_dir)
        _cohort_part(cohort_path, seed, backend, method)
    if not no_unet:
        _unet_part(cohort_path, seed)


def _cohort_part(cohort_path, seed, backend, method) -> None:
    import time
    from pathlib import Path

    from ..demo import run_cohort_demo
    from .batch import _quiet_dask

    path = Path(cohort_path)
    _quiet_dask()
    click.echo(f"\nsimulating the tiny cohort in {path} and running `mrfengine batch` on it "
               "(MP-PCA denoising, matching slice by slice) ...")
    t0 = time.perf_counter()
    rows, report = run_cohort_demo(path, seed=seed, backend=backend, method=method)
    total = time.perf_counter() - t0
    from ..metrics import CORE_FRACTION

    click.echo(f"median relative error against ground truth (tissue cores: voxels with true fraction >= "
               f"{CORE_FRACTION:g})")
    head = f"{'subject':<8}{'site':>6} {'group':>8} {'voxels':>7}  {'WM T1/T2*':>13}  {'GM T1/T2*':>13}  {'lesion T1/T2*':>13}"
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        cells = []
        for tissue in ("WM", "GM", "lesion"):
            e = r.errors.get(tissue)
            cells.append(f"{e[0]:>6.1%}/{e[1]:<6.1%}" if e else f"{'-':>13}")
        click.echo(f"{r.subject:<8}{r.site:>6} {r.group:>8} {r.n_voxels:>7}  " + "  ".join(cells))
    failed = [r for r in report.results if r.status == "failed"]
    for r in failed:
        click.secho(f"  {r.subject} failed: {r.error}", err=True, fg="red")
    click.echo(f"cohort simulated and processed in {total:.1f} s ({report.n_workers} Dask workers, batch "
               f"{report.wall_s:.1f} s)")
    click.echo(f"maps: {path}/subjects/<subject>/derived/{report.pipeline}/ (T1, T2star, B1, M0, correlation)\n"
               f"as NIfTI: mrfengine export {path} -o OUTDIR --pipeline {report.pipeline}\n"
               f"the whole study: mrfengine batch {path}")
    if failed:
        click.get_current_context().exit(1)


def _unet_part(cohort_path, seed, *, model: str = "default", preset: str = "paper") -> None:
    import time
    from pathlib import Path

    from ..demo import SCANNER_GAIN, run_unet_demo

    try:
        from ..nn.default import NoDefaultModelError
    except ImportError as exc:  # torch is an optional dependency
        click.echo(f"\nU-net part skipped: it needs PyTorch ({exc}; pip install 'mrfengine[nn]')")
        return

    path = Path(cohort_path).with_name("unet-subject.zarr")
    click.echo(f"\nsimulating one {'paper-sized ' if preset == 'paper' else ''}patient in {path} (unseen by the "
               f"model), storing its series as a scanner would (x{SCANNER_GAIN:g}, int16 NIfTI with scl_slope, no "
               "brain mask) and running `mrfengine predict` on it ...")
    t0 = time.perf_counter()
    try:
        rep = run_unet_demo(path, seed=seed, model=model, preset=preset)
    except NoDefaultModelError as exc:
        click.echo(f"skipped: {exc}")
        return
    total = time.perf_counter() - t0
    ratio = "-" if rep.input_level_ratio is None else f"{rep.input_level_ratio:,.4g}"
    click.echo(f"{rep.subject} {rep.shape[0]}x{rep.shape[1]}x{rep.shape[2]}: input {Path(rep.input_path).name} "
               f"(gain {rep.gain:g}, int16, scl_slope {rep.scl_slope:.4g}, scl_inter {rep.scl_inter:.4g}); "
               f"measured level {ratio} times the training data's, input scale {rep.input_scale}; "
               f"brain mask made from the series: Dice {rep.mask_dice:.3f} with the simulated brain; "
               f"predict took {rep.seconds:.1f} s")
    click.echo(f"against ground truth: T1 deviation {rep.t1_reldev:.1%}, T2* deviation {rep.t2star_reldev:.1%}, "
               f"lesion Dice {rep.lesion_dice:.2f} and detection rate {rep.lesion_detection_rate:.2f} at 33%, "
               f"NAWM Dice {rep.nawm_dice_slice_mean:.2f}, GM Dice {rep.gm_dice_slice_mean:.2f} at 80% (mean over "
               f"slices; whole volume {rep.nawm_dice_volume:.2f}, {rep.gm_dice_volume:.2f})")
    click.echo(f"maps: {rep.output_dir}/ (T1map, T2starmap in s; NAWM, GM, lesion probseg; the brain mask; 0 "
               f"outside the brain); done in {total:.1f} s\n"
               f"any 4D MRF NIfTI: mrfengine predict MRF.nii.gz -o OUTDIR")


commands = [demo]
