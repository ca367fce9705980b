"""``mrfengine predict``: a 4D MRF NIfTI in, the network's maps out."""

from __future__ import annotations

import click

from ._common import SliceProgress, check_sequence_spec, nthreads_option, progress_option
from ._outputs import force_option, prefix_option

def _check_mc_samples(ctx, param, value):
    from ..errors import ValidationError
    from ..nn.uncertainty import check_mc_samples

    try:
        return check_mc_samples(value, what="--mc-samples")
    except ValidationError as exc:
        raise click.BadParameter(str(exc).replace("--mc-samples must", "must")) from None


@click.command()
@click.argument("input_path", metavar="MRF.nii[.gz]", type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False), help="Folder for the maps.")
@click.option("--model", "model_path", default=None, type=click.Path(dir_okay=False),
              help="The network: NAME.pt with NAME.card.json beside it. Default: $MRFENGINE_MODEL if set, "
                   "else the MSE-5 network shipped in mrfengine/models/mse5/.")
@click.option("--trust-model-code", is_flag=True,
              help="Also load a TorchScript model file (--model or $MRFENGINE_MODEL). TorchScript files run code "
                   "stored in the file: use it only for models you trust. Without it they are refused; models "
                   "saved as weights only (state_dict, the default and the shipped one) never need it.")
@click.option("--sequence", "sequence_spec", default=None, callback=check_sequence_spec,
              help="The acquisition (preset or file); checked against the model's. Default: the model's own.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="3D brain mask on the input's grid (nonzero inside); every map is 0 outside it. Default: a "
                   "mask made from the series (nilearn compute_epi_mask), written as sub-XX_label-brain_desc-unet_mask.")
@click.option("--no-brain-mask", is_flag=True,
              help="Keep the whole field of view: no map is set to 0 outside the brain (the input's level is "
                   "still measured in a mask made from the series).")
@click.option("--input-scale", default="card", show_default=True, type=click.Choice(["card", "subject", "absolute"]),
              help="subject: rescale the series to the training data's intensity level, measured in the brain "
                   "(--mask, or a mask made from the series), so any global gain or int16 scaling cancels; "
                   "absolute: take it as it is; card: what the model's card says.")
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1), help="Slices per forward pass.")
@click.option("--precision", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"]),
              help="bfloat16: about twice as fast on CPUs with AVX-512 BF16/AMX, about three significant digits.")
@click.option("--tta", default="none", show_default=True, type=click.Choice(["none", "flip", "dihedral"]),
              help="Test-time augmentation: average over the slice and its mirror (flip, 2x the time) or over "
                   "all eight 90-degree rotations and mirrors (dihedral, 8x).")
@click.option("--mc-samples", default=0, show_default=True, type=int, callback=_check_mc_samples,
              help="Uncertainty maps: N >= 2 stochastic passes with the network's dropout on (Monte-Carlo "
                   "dropout), one <suffix>std file per output (desc-unet_T1mapstd) holding the standard deviation over them, in "
                   "the output's units; the maps stay the deterministic pass. Costs N more passes. 0: off.")
@click.option("--mc-seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the dropout masks (--mc-samples): the same seed gives the same maps.")
@click.option("--consistency", is_flag=True,
              help="Also write the physics-consistency map (desc-unet_consistency): per brain voxel, the "
                   "correlation of the measured fingerprint with the signal model's at the network's T1/T2* "
                   "(best B1); near 1 where the maps explain the data, lower where the network and the physics "
                   "disagree; 0 outside the brain.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: the GPU when there is one.")
@nthreads_option("CPU threads of the network (PyTorch); 0: torch's choice, all cores.", aliases=("--threads",))
@click.option("--report", "report_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also write an HTML quality-control page of the maps into DIR (PREFIX.html and index.html, as "
                   "'mrfengine report' draws a cohort's): orientation check against the input, lesion overlay, "
                   "each map as a mosaic with its colour bar and unit, the run's record and warnings.")
@prefix_option
@force_option
@progress_option
def predict(input_path, output_dir, model_path, trust_model_code, sequence_spec, mask_path, no_brain_mask, input_scale,
            batch_size, precision, tta, mc_samples, mc_seed, consistency, device, n_threads, report_dir, prefix,
            force, show_progress) -> None:
    """Run a trained U-net over every slice of a 4D MRF series (X, Y, Z,
    frames; slices along the third axis) and write its maps as NIfTI with the
    input's affine and JSON sidecars into the BIDS derivative dataset
    OUTPUT_DIR (sub-XX/anat/, dataset_description.json): desc-unet_T1map and
    desc-unet_T2starmap in seconds, and label-NAWM/GM/lesion_desc-unet_probseg
    probabilities, as the model's outputs are.

    Without --model the shipped MSE-5 network is used (or the model named by
    the environment variable MRFENGINE_MODEL).  The model's card must fit the
    data: the frame count and the sequence (--sequence, default the model's
    own, whose slice count the input must have) are checked, and a mismatch
    is refused.  A model is read as weights only; a TorchScript file (it
    runs code stored in the file) is refused unless --trust-model-code.

    Outside the brain every map is 0 (mrfengine's outside rule, also that of
    the batch's maps and of export): the brain is --mask, or else a mask
    made from the series (the one its intensity level is measured in),
    written beside the maps as label-brain_desc-unet_mask; --no-brain-mask keeps
    the whole field of view.  The sidecars name the mask (BrainMask,
    BrainMaskSource) and the value outside it (OutsideBrainValue).
    Existing maps are not replaced unless --force."""
    from ..errors import OptionError
    from ..pipeline.nifti import predict_nifti

    if mask_path and no_brain_mask:
        raise click.UsageError("--mask and --no-brain-mask exclude each other: give the brain, or keep the whole "
                               "field of view")
    if report_dir is not None:  # the pages are checked before the network runs
        from ..io.bids import output_entities
        from ..io.outputs import check_outputs
        from ..report.qc import INDEX_FILE, page_name

        page_prefix = "_".join(f"{k}-{v}" for k, v in output_entities(input_path, prefix).items())  # result.prefix
        check_outputs(report_dir, [INDEX_FILE, page_name(page_prefix)], force=force)
    try:
        with SliceProgress("slices", enabled=show_progress) as advance:
            result = predict_nifti(input_path, output_dir, model=model_path, trust_model_code=trust_model_code,
                                   sequence=sequence_spec, mask=mask_path, brain_mask=not no_brain_mask,
                                   input_scale=input_scale, batch_size=batch_size, precision=precision, tta=tta,
                                   mc_samples=mc_samples, mc_seed=mc_seed, consistency=consistency, device=device,
                                   threads=n_threads or None, prefix=prefix, force=force, progress=advance)
    except OptionError as exc:
        raise click.UsageError(str(exc)) from None
    if result.warning:
        click.secho(f"warning: {input_path}: {result.warning}; the maps may be wrong "
                    "(InputOutsideTraining in the sidecars)", err=True, fg="yellow")
    info = result.info
    click.echo(f"predicted {result.n_slices} slices in {result.seconds:.1f} s ({info['device']}, {info['precision']}, "
               f"model {info['network']} from {info['model']}); maps in {result.folder}")
    if report_dir is not None:
        from ..report.qc import write_nifti_report

        qc = write_nifti_report(input_path, {k: v for k, v in result.files.items()}, report_dir,
                                subject_id=result.prefix, pipeline="unet", record={**info, "seconds": result.seconds},
                                mask_path=mask_path, force=force)
        click.echo(f"QC page: {qc.pages[result.prefix]}" + (" (with warnings)" if qc.warnings[result.prefix] else ""))


commands = [predict]
