"""``mrfengine match``: a 4D MRF NIfTI in, quantitative maps out."""

from __future__ import annotations

import click

from ._common import backend_option, cache_option, method_option, no_cache_option, progress, progress_option, sequence_option
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
@progress_option
def match(input_path, output_dir, mask_path, sequence_spec, backend, method, rank, slice_axis, prefix, force, cache_dir,
          no_cache, show_progress) -> None:
    """Match every voxel of a 4D MRF series (X, Y, Z, frames) against the
    dictionary of its own slice and write T1map, T2starmap (seconds, BIDS),
    TB1map, M0map and the match correlation as NIfTI with the input's affine
    and JSON sidecars.

    Voxels outside the mask, with NaN/Inf frames or all frames zero are left
    unmatched: 0 in the maps (and in the correlation map).  Existing maps are
    not replaced unless --force."""
    import time
    from pathlib import Path

    import numpy as np

    from .. import __version__
    from ..dictionary import SliceDictionaries
    from ..errors import InputFileError
    from ..io import MAP_SPECS, derivative_name, entity_prefix, load_mask_like, load_nifti, save_nifti, write_sidecar
    from ..io.outputs import check_outputs, check_prefix
    from ..matching import match_slices
    from ..sequence import resolve_sequence
    from ._common import make_cache

    # Every output is checked before any work: a plain prefix, inside -o, nothing replaced without --force.
    prefix = prefix or check_prefix(entity_prefix(input_path), what=f"{input_path}: the prefix from its name")
    names = [derivative_name(prefix, MAP_SPECS[k][0], ext) for k in MAP_SPECS for ext in (".nii.gz", ".json")]
    check_outputs(output_dir, names, force=force,
                  sources={derivative_name(prefix, MAP_SPECS["T1"][0], ".json"): Path(input_path).name})
    seq = resolve_sequence(sequence_spec)
    data, affine, header = load_nifti(input_path, ndim=4, n_frames=seq.n_measurements, magnitude=True)
    if data.shape[slice_axis] != seq.n_slices:
        raise InputFileError(f"{input_path}: {data.shape[slice_axis]} slices along axis {slice_axis}, but "
                             f"sequence {seq.name} has {seq.n_slices}; pass --sequence for this acquisition")
    mask = load_mask_like(mask_path, data.shape[:3], affine, reference=input_path) if mask_path else None
    dicts = SliceDictionaries(seq, cache=make_cache(cache_dir, no_cache))
    bar = progress(range(seq.n_slices), desc="slices", enabled=show_progress)
    t0 = time.perf_counter()
    result = match_slices(data, dicts, slice_axis=slice_axis, axis=-1, mask=mask, backend=backend, method=method, rank=rank,
                          progress=lambda _: next(bar, None))
    seconds = time.perf_counter() - t0
    out = Path(output_dir)
    maps = {**result.params, "M0": result.m0, "correlation": result.correlation}
    provenance = {
        "mrfengine_version": __version__,
        "Sequence": seq.name,
        "SequenceDigest": seq.digest(),
        "MatchingBackend": result.backend,
        "MatchingMethod": result.method,
        "SVDRank": rank,
        "Source": str(Path(input_path).name),
    }
    for key, values in maps.items():
        suffix, unit, scale, desc = MAP_SPECS[key]
        arr = np.nan_to_num(np.asarray(values, dtype=np.float32) * np.float32(scale), nan=0.0)
        path = save_nifti(arr, affine, out / derivative_name(prefix, suffix), header=header)
        write_sidecar(path.with_name(derivative_name(prefix, suffix, ".json")),
                      {"Description": desc, "Units": unit, **provenance})
    n = int(result.matched.sum())
    click.echo(f"matched {n} voxels in {seconds:.1f} s ({result.backend}, {result.method}); "
               f"maps in {out}/{prefix}_*.nii.gz")


commands = [match]
