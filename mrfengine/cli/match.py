"""``mrfengine match``: a 4D MRF NIfTI in, quantitative maps out."""

from __future__ import annotations

import click

from ._common import (
    SliceProgress,
    backend_option,
    cache_option,
    method_option,
    no_cache_option,
    nthreads_option,
    progress_option,
    sequence_option,
)
from ._outputs import force_option, prefix_option


@click.command()
@click.argument("input_path", metavar="MRF.nii[.gz]", type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False), help="Folder for the maps.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="3D brain mask (nonzero = match), same grid as the input.")
@sequence_option
@backend_option
@method_option
@click.option("--rank", type=click.IntRange(1), default=None, help="Match in a rank-R SVD compression.")
@click.option("--slice-axis", default=2, show_default=True, type=click.IntRange(0, 2),
              help="Array axis of the slices (0-based positions, as acquired).")
@prefix_option
@force_option
@cache_option
@no_cache_option
@nthreads_option()
@progress_option
def match(input_path, output_dir, mask_path, sequence_spec, backend, method, rank, slice_axis, prefix, force, cache_dir,
          no_cache, n_threads, show_progress) -> None:
    """Match every voxel of a 4D MRF series (X, Y, Z, frames) against the
    dictionary of its own slice and write T1map, T2starmap (seconds, BIDS),
    TB1map, M0map and the match correlation as NIfTI with the input's affine
    and JSON sidecars.

    Voxels outside the mask, with NaN/Inf frames or all frames zero are left
    unmatched: 0 in every map (mrfengine's rule for voxels without an
    estimate, the same 0 as outside the brain); the sidecars name the mask
    (BrainMask) and the value outside it (OutsideBrainValue).  Existing maps
    are not replaced unless --force."""
    from ..pipeline.nifti import match_nifti
    from ._common import make_cache

    with SliceProgress("slices", enabled=show_progress) as advance:
        result = match_nifti(input_path, output_dir, sequence=sequence_spec, mask=mask_path, backend=backend,
                             method=method, rank=rank, slice_axis=slice_axis, prefix=prefix, force=force,
                             cache=make_cache(cache_dir, no_cache), progress=advance)
    info = result.info
    click.echo(f"matched {info['n_matched']} voxels in {result.seconds:.1f} s ({info['backend']}, {info['method']}); "
               f"maps in {result.folder}")


commands = [match]
