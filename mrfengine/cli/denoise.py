"""``mrfengine denoise``: MP-PCA denoising of a 4D NIfTI series, as MRtrix3's ``dwidenoise``."""

from __future__ import annotations

import click

from ._common import nthreads_option
from ._outputs import force_option

#: ``--backend`` choices: "auto" and :data:`mrfengine.denoise.BACKENDS` (spelt out so ``--help``
#: does not import the kernels; ``tests/cli/test_denoise.py`` checks they agree).
DENOISE_BACKENDS = ("auto", "cpp", "numba", "numpy", "cupy", "reference")


def _patch_radius(_ctx, _param, value: str):
    """``N`` or ``NX,NY,NZ`` -> an int or 3 ints (the library checks their range)."""
    parts = [p.strip() for p in str(value).split(",")]
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 3) or min(numbers) < 0:
        raise click.BadParameter(f"expected N or NX,NY,NZ (integers >= 0); got {value!r}")
    return numbers[0] if len(numbers) == 1 else tuple(numbers)


@click.command()
@click.argument("input_path", metavar="IN.nii[.gz]", type=click.Path(dir_okay=False))
@click.argument("output_path", metavar="OUT.nii[.gz]", type=click.Path(dir_okay=False))
@click.option("--noise", "noise_path", type=click.Path(dir_okay=False), default=None, metavar="SIGMA.nii[.gz]",
              help="Also write the noise map: the noise standard deviation per voxel (float32, the input's "
                   "scaled units), 0 outside the mask.")
@click.option("--rank", "rank_path", type=click.Path(dir_okay=False), default=None, metavar="RANK.nii[.gz]",
              help="Also write the rank map: the signal components kept in the window centred on each voxel "
                   "(int16; the map of dwidenoise -rank), 0 outside the mask.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="3D mask on the input's grid (nonzero: denoise). Default: a brain mask made from the series "
                   "(nilearn compute_epi_mask on the mean over frames).")
@click.option("--no-brain-mask", is_flag=True, help="Denoise the whole field of view (no mask).")
@click.option("--patch-radius", default="2", show_default=True, callback=_patch_radius, metavar="N|NX,NY,NZ",
              help="Window radius per axis: 2 gives 5x5x5 windows (dwidenoise's default extent up to 125 frames).")
@click.option("--estimator", default="mp", show_default=True, type=click.Choice(["mp", "exp2"]),
              help="Noise estimator: mp (Veraart 2016, the batch's denoise stage) or exp2 (Cordero-Grande 2019, "
                   "dwidenoise's default).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(DENOISE_BACKENDS),
              help="MP-PCA kernel; auto picks the fastest available (mrfengine info lists them).")
@nthreads_option("CPU threads of the MP-PCA kernel; 0: all cores (or OMP_NUM_THREADS).")
@force_option
def denoise(input_path, output_path, noise_path, rank_path, mask_path, no_brain_mask, patch_radius, estimator,
            backend, n_threads, force) -> None:
    """Denoise a 4D series (X, Y, Z, frames) by Marchenko-Pastur PCA, as
    MRtrix3's dwidenoise, and write it to OUT: float32 with the input's
    affine, qform/sform, voxel sizes and frame interval, and a JSON sidecar
    (method, estimator, window, backend, mask, Sources, version).

    The method is the batch's denoise stage (mrfengine.denoise.mppca): every
    window's noise level and signal rank from the Marchenko-Pastur law, the
    estimates of all windows that hold a voxel averaged.  Values are read
    with the file's scaling (scl_slope, int16 files), so --noise is in the
    input's scaled units.

    Only voxels inside the mask are denoised; outside it OUT holds the
    input's values unchanged (dwidenoise -mask writes 0 there), and the
    --noise and --rank maps hold 0.  The mask is --mask, else one made from
    the series; --no-brain-mask denoises the whole field of view.  Existing
    outputs are not replaced unless --force; a failure leaves none."""
    from ..errors import OptionError
    from ..pipeline.nifti import denoise_nifti

    if mask_path and no_brain_mask:
        raise click.UsageError("--mask and --no-brain-mask exclude each other: give the region to denoise, or "
                               "denoise the whole field of view")
    try:
        result = denoise_nifti(input_path, output_path, noise_path=noise_path, rank_path=rank_path, mask=mask_path,
                               brain_mask=not no_brain_mask, patch_radius=patch_radius, estimator=estimator,
                               backend=backend, n_threads=n_threads, force=force)
    except OptionError as exc:
        raise click.UsageError(str(exc)) from None
    info = result.info
    where = {"given": "in the mask", "none": "in the whole field of view"}.get(info["mask_source"],
                                                                             "in a brain mask made from the series")
    sigma = f"; median noise sigma {info['median_sigma']:.4g}, median rank {info['median_rank']:g}" \
        if info["median_sigma"] is not None else ""
    click.echo(f"denoised {info['voxels']} voxels {where} in {result.seconds:.1f} s ({info['backend']}, "
               f"{info['estimator']}, window {'x'.join(map(str, info['window']))}){sigma}; wrote "
               + ", ".join(str(p) for p in result.files.values()))


commands = [denoise]
