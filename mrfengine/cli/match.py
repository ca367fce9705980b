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
@click.option("--dictionary", "dictionary_path", type=click.Path(dir_okay=False), default=None,
              help="One dictionary for every slice instead of the sequence's: mrfengine's or another tool's .npz, "
                   "HDF5 or MATLAB .mat (v5, v7.3), any frame count (the series' must match).")
@click.option("--dictionary-atoms", metavar="NAME", default=None,
              help="The array of the atoms in --dictionary (dict.D, group/signals), where the file holds several.")
@click.option("--dictionary-params", metavar="SPEC", multiple=True,
              help="The parameters in --dictionary: the look-up table's columns in order (T1,T2,B1), or NAME=ARRAY "
                   "(T1=lut[:,0], 0-based), repeatable.")
@click.option("--dictionary-units", metavar="NAME=UNIT", multiple=True,
              help="Units of --dictionary's parameters where the file gives none (T1=s,T2=s; ms, s, us).")
@click.option("--dictionary-layout", type=click.Choice(["atoms-x-frames", "frames-x-atoms"]), default=None,
              help="Orientation of a square atoms array in --dictionary.")
@click.pass_context
def match(ctx, input_path, output_dir, mask_path, sequence_spec, backend, method, rank, slice_axis, prefix, force,
          cache_dir, no_cache, n_threads, show_progress, dictionary_path, dictionary_atoms, dictionary_params,
          dictionary_units, dictionary_layout) -> None:
    """Match every voxel of a 4D MRF series (X, Y, Z, frames) against the
    dictionary of its own slice and write T1map, T2starmap (seconds, BIDS),
    TB1map, M0map and the match correlation as NIfTI with the input's affine
    and JSON sidecars.

    With --dictionary FILE every slice is matched against that file's
    dictionary (another tool's .npz, HDF5 or MATLAB file: Dictionary.load)
    and a map is written per parameter it holds (T1map, T2map, T2starmap,
    TB1map, others under their own name).

    Voxels outside the mask, with NaN/Inf frames or all frames zero are left
    unmatched: 0 in every map (mrfengine's rule for voxels without an
    estimate, the same 0 as outside the brain); the sidecars name the mask
    (BrainMask) and the value outside it (OutsideBrainValue).  Existing maps
    are not replaced unless --force."""
    from ..pipeline.nifti import match_nifti
    from ._common import make_cache

    options = _dictionary_options(ctx, dictionary_path, dictionary_atoms, dictionary_params, dictionary_units,
                                  dictionary_layout)
    with SliceProgress("slices", enabled=show_progress) as advance:
        result = match_nifti(input_path, output_dir, sequence=sequence_spec, mask=mask_path, backend=backend,
                             method=method, rank=rank, slice_axis=slice_axis, prefix=prefix, force=force,
                             cache=None if dictionary_path else make_cache(cache_dir, no_cache), progress=advance,
                             dictionary=dictionary_path, dictionary_options=options)
    info = result.info
    click.echo(f"matched {info['n_matched']} voxels in {result.seconds:.1f} s ({info['backend']}, {info['method']}); "
               f"maps in {result.folder}")


def _dictionary_options(ctx, path, atoms, params, units, layout) -> dict:
    """``Dictionary.load``'s keywords from the --dictionary-* options (usage errors: exit 2)."""
    from click.core import ParameterSource

    given = [name for name, value in (("--dictionary-atoms", atoms), ("--dictionary-params", params),
                                      ("--dictionary-units", units), ("--dictionary-layout", layout)) if value]
    if path is None:
        if given:
            raise click.UsageError(f"{', '.join(given)} describe(s) a --dictionary FILE; give one")
        return {}
    if ctx.get_parameter_source("sequence_spec") is ParameterSource.COMMANDLINE:
        raise click.UsageError("--sequence and --dictionary exclude each other: the dictionary is the sequence's")
    options: dict = {}
    if atoms:
        options["atoms"] = atoms
    if params:
        pairs, names = {}, []
        for value in params:
            if "=" in value:  # one NAME=ARRAY (the array may hold commas: lut[:, 0])
                name, _, array = (v.strip() for v in value.partition("="))
                if not name or not array:
                    raise click.BadParameter(f"{value!r}: write NAME=ARRAY (T1=lut[:,0])", param_hint="--dictionary-params")
                pairs[name] = array
            else:
                names += [n.strip() for n in value.split(",") if n.strip()]
        if pairs and names:
            raise click.BadParameter("give the look-up table's column names (T1,T2) or NAME=ARRAY pairs, not both",
                                     param_hint="--dictionary-params")
        options["params"] = pairs or tuple(names)
    if units:
        table = {}
        for item in (u.strip() for value in units for u in value.split(",") if u.strip()):
            name, sep, unit = (v.strip() for v in item.partition("="))
            if not sep or not name or not unit:
                raise click.BadParameter(f"{item!r}: write NAME=UNIT (T1=s)", param_hint="--dictionary-units")
            table[name] = unit
        options["units"] = table
    if layout:
        options["layout"] = layout.replace("-", " ")
    return options


commands = [match]
