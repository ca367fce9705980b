"""``mrfengine predict``: a 4D MRF NIfTI in, the network's maps out."""

from __future__ import annotations

import click

from ._common import progress, progress_option
from ._outputs import force_option, prefix_option


def output_file_spec(name: str, unit: str) -> tuple[str, str, float]:
    """BIDS-style ``(suffix, unit, scale)`` of a network output: ``T1`` and
    ``T2star`` as ``T1map``/``T2starmap`` in seconds, probabilities as
    ``label-<name>_probseg``, anything else as ``desc-<name>_map`` in its unit
    (names and units from the map registry, :data:`mrfengine.maps.NETWORK_MAPS`)."""
    from ..maps import DIMENSIONLESS, NETWORK_MAPS, MapSpec

    spec = NETWORK_MAPS.get(name)
    if spec is not None and spec.kind == "quantitative" and unit == spec.unit:
        return spec.bids_name(), spec.bids_unit, spec.scale_to_bids
    if unit == DIMENSIONLESS:
        spec = MapSpec(name, DIMENSIONLESS, "", "probability", "probseg", bids_label=name)
        return spec.bids_name(), spec.bids_unit, spec.scale_to_bids
    return f"desc-{name}_map", unit, 1.0


MASK_SUFFIX = "desc-brain_mask"
"""File suffix of the brain mask predict makes from the series (BIDS derivatives' ``desc-brain_mask``)."""


def uncertainty_file_spec(name: str, unit: str) -> tuple[str, str, float]:
    """:func:`output_file_spec` of an output's Monte-Carlo dropout uncertainty:
    ``desc-uncertainty`` added (``desc-uncertainty_T1map`` in seconds,
    ``label-lesion_desc-uncertainty_probseg``, ``desc-Xuncertainty_map``)."""
    suffix, bids_unit, scale = output_file_spec(name, unit)
    if suffix.startswith("desc-"):
        desc, _, rest = suffix.partition("_")
        return f"{desc}uncertainty_{rest}", bids_unit, scale
    head, sep, rest = suffix.rpartition("_")
    return (f"{head}_desc-uncertainty_{rest}" if sep else f"desc-uncertainty_{suffix}"), bids_unit, scale


CONSISTENCY_SUFFIX = "desc-physicsconsistency_map"
"""File suffix of the physics-consistency map (:mod:`mrfengine.nn.consistency`)."""


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
@click.option("--sequence", "sequence_spec", default=None,
              help="The acquisition (preset or file); checked against the model's. Default: the model's own.")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None,
              help="3D brain mask on the input's grid (nonzero inside); every map is 0 outside it. Default: a "
                   "mask made from the series (nilearn compute_epi_mask), written as PREFIX_desc-brain_mask.")
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
                   "dropout), one desc-uncertainty file per output holding the standard deviation over them, in "
                   "the output's units; the maps stay the deterministic pass. Costs N more passes. 0: off.")
@click.option("--mc-seed", default=0, show_default=True, type=click.IntRange(0),
              help="Seed of the dropout masks (--mc-samples): the same seed gives the same maps.")
@click.option("--consistency", is_flag=True,
              help="Also write the physics-consistency map (desc-physicsconsistency_map): per brain voxel, the "
                   "correlation of the measured fingerprint with the signal model's at the network's T1/T2* "
                   "(best B1); near 1 where the maps explain the data, lower where the network and the physics "
                   "disagree; 0 outside the brain.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]),
              help="auto: the GPU when there is one.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads (default: torch's choice).")
@prefix_option
@force_option
@progress_option
def predict(input_path, output_dir, model_path, trust_model_code, sequence_spec, mask_path, no_brain_mask, input_scale,
            batch_size, precision, tta, mc_samples, mc_seed, consistency, device, threads, prefix, force,
            show_progress) -> None:
    """Run a trained U-net over every slice of a 4D MRF series (X, Y, Z,
    frames; slices along the third axis) and write its maps as NIfTI with the
    input's affine and JSON sidecars: T1map and T2starmap in seconds, and
    label-NAWM/GM/lesion_probseg probabilities, as the model's outputs are.

    Without --model the shipped MSE-5 network is used (or the model named by
    the environment variable MRFENGINE_MODEL).  The model's card must fit the
    data: the frame count and the sequence (--sequence, default the model's
    own, whose slice count the input must have) are checked, and a mismatch
    is refused.  A model is read as weights only; a TorchScript file (it
    runs code stored in the file) is refused unless --trust-model-code.

    Outside the brain every map is 0 (mrfengine's outside rule, also that of
    the batch's maps and of export): the brain is --mask, or else a mask
    made from the series (the one its intensity level is measured in),
    written beside the maps as PREFIX_desc-brain_mask; --no-brain-mask keeps
    the whole field of view.  The sidecars name the mask (BrainMask,
    BrainMaskSource) and the value outside it (OutsideBrainValue).
    Existing maps are not replaced unless --force."""
    import time
    from pathlib import Path

    import numpy as np
    import torch

    from .. import __version__
    from ..errors import InputFileError, ValidationError
    from ..io import derivative_name, entity_prefix, load_mask_like, load_nifti, save_nifti, write_sidecar
    from ..io.outputs import check_outputs, check_prefix
    from ..masking import MASK_METHOD, apply_outside_rule, outside_rule_fields
    from ..nn import card_path, check_card, load_model, read_card, run_network
    from ..nn.default import default_model_path
    from ..sequence import Sequence, resolve_sequence

    if model_path is None:
        model_path = default_model_path()
    if threads:
        torch.set_num_threads(threads)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError("--device cuda requested but torch sees no CUDA device")

    card = read_card(model_path)
    if card.config.input_kind != "mrf":
        raise ValidationError(f"{model_path}: network {card.name} takes {', '.join(card.config.input_names)} maps, "
                              "not an MRF series; mrfengine predict runs MRF networks")
    # Every output is checked before any work: a plain prefix, inside -o, nothing replaced without --force.
    prefix = prefix or check_prefix(entity_prefix(input_path), what=f"{input_path}: the prefix from its name")
    if consistency and not {"T1", "T2star"} <= set(card.config.output_names):
        raise click.UsageError(f"--consistency needs a network with T1 and T2star outputs; {card.name} has "
                               f"{', '.join(card.config.output_names)}")
    suffixes = [output_file_spec(spec.name, spec.unit)[0] for spec in card.config.outputs]
    if mc_samples:
        suffixes += [uncertainty_file_spec(spec.name, spec.unit)[0] for spec in card.config.outputs]
    if consistency:
        suffixes.append(CONSISTENCY_SUFFIX)
    if mask_path and no_brain_mask:
        raise click.UsageError("--mask and --no-brain-mask exclude each other: give the brain, or keep the whole "
                               "field of view")
    made_mask = not mask_path and not no_brain_mask  # the mask made from the series is written as a derivative
    if made_mask:
        suffixes.append(MASK_SUFFIX)
    check_outputs(output_dir, [derivative_name(prefix, s, ext) for s in suffixes for ext in (".nii.gz", ".json")],
                  force=force, sources={derivative_name(prefix, s, ".json"): Path(input_path).name for s in suffixes[:1]})
    data, affine, header = load_nifti(input_path, ndim=4, magnitude=True)
    if sequence_spec:
        seq = resolve_sequence(sequence_spec)
    elif card.sequence is not None and isinstance(card.sequence.get("description"), dict):
        seq = Sequence.from_dict(card.sequence["description"])
    else:
        raise ValidationError(f"{model_path}: the model card does not describe its sequence; pass --sequence")
    try:
        check_card(card, channels=data.shape[3], sequence=seq, input_kind="mrf", source=card_path(model_path))
    except ValidationError as exc:
        raise ValidationError(f"{input_path} does not fit the model: {exc}") from exc
    # the model's own files (hash, format, weights) are judged apart from the data: a changed model says so
    model = load_model(model_path, device=device, trust_model_code=trust_model_code)
    if data.shape[2] != seq.n_slices:
        raise InputFileError(f"{input_path}: {data.shape[2]} slices along axis 2, but sequence {seq.name} (the "
                             f"model's) has {seq.n_slices}; pass --sequence for this acquisition")
    mask = load_mask_like(mask_path, data.shape[:3], affine, reference=input_path) if mask_path else None

    bar = progress(range(data.shape[2]), desc="slices", enabled=show_progress)
    done = [0]

    def _advance(n_done: int) -> None:
        for _ in range(n_done - done[0]):
            next(bar, None)
        done[0] = n_done

    t0 = time.perf_counter()
    # (X, Y, Z, C) -> (Z, C, Y, X) as a view; predict_volume copies a batch at a time.
    try:
        result = run_network(data.transpose(2, 3, 1, 0), model, channel_axis=1, batch_size=batch_size,
                             precision=precision, progress=_advance, tta=tta, input_scale=input_scale,
                             mask=None if mask is None else mask.transpose(2, 1, 0), mc_samples=mc_samples,
                             mc_seed=mc_seed)
    except ValidationError as exc:  # the input's scale cannot be measured (no brain found, an empty mask)
        raise ValidationError(f"{input_path}: {exc}") from exc
    seconds = time.perf_counter() - t0
    # The outside rule (mrfengine.masking.apply_outside_rule): every map 0 outside the brain mask.
    if no_brain_mask:
        rule_mask, mask_name, mask_source = None, None, "none"
    elif mask is not None:
        rule_mask, mask_name, mask_source = mask.transpose(2, 1, 0), Path(mask_path).name, "given"
    elif result.scaling.mask is not None:
        rule_mask, mask_name, mask_source = result.scaling.mask, derivative_name(prefix, MASK_SUFFIX), MASK_METHOD
    else:
        raise ValidationError(f"{input_path}: no brain mask could be made from the series (no bright region in its "
                              "mean image); pass --mask MASK, or --no-brain-mask to keep the whole field of view")
    maps = apply_outside_rule(result.maps, rule_mask)

    out = Path(output_dir)
    provenance = {
        "mrfengine_version": __version__,
        "Model": card.name,
        "ModelFile": model.path.name,
        "ModelSHA256": card.artifact_sha256,
        "TrainingCohortHash": card.training_cohort_hash,
        "Sequence": seq.name,
        "SequenceDigest": seq.digest(),
        "Precision": precision,
        "TestTimeAugmentation": tta,
        "Source": str(Path(input_path).name),
        "InputScale": "subject" if result.scaling.rescaled else "absolute",
        "InputGain": result.scaling.gain,
        "InputLevel": result.scaling.level,
        "InputLevelRatio": result.scaling.level_ratio,
        "InputLevelMask": result.scaling.mask_source,
        **outside_rule_fields(mask_name, mask_source),
        "InputShift": result.input_shift,
        "InputOutsideTraining": result.outside_training,
    }
    for spec in card.config.outputs:
        suffix, unit, scale = output_file_spec(spec.name, spec.unit)
        arr = maps[spec.name].transpose(2, 1, 0) * np.float32(scale)  # (Z, Y, X) -> (X, Y, Z)
        path = save_nifti(np.ascontiguousarray(arr, dtype=np.float32), affine, out / derivative_name(prefix, suffix),
                          header=header)
        write_sidecar(path.with_name(derivative_name(prefix, suffix, ".json")),
                      {"Description": f"{spec.description or spec.name} predicted by the U-net", "Units": unit,
                       **provenance})
    if mc_samples:
        from ..nn.uncertainty import uncertainty_fields

        mc_fields = uncertainty_fields(mc_samples, mc_seed, model.module)
        uncertainty = apply_outside_rule(result.uncertainty, rule_mask)
        for spec in card.config.outputs:
            suffix, unit, scale = uncertainty_file_spec(spec.name, spec.unit)
            arr = uncertainty[spec.name].transpose(2, 1, 0) * np.float32(scale)
            path = save_nifti(np.ascontiguousarray(arr, dtype=np.float32), affine,
                              out / derivative_name(prefix, suffix), header=header)
            write_sidecar(path.with_name(derivative_name(prefix, suffix, ".json")),
                          {"Description": f"uncertainty of {spec.description or spec.name}: standard deviation over "
                                          f"{mc_samples} Monte-Carlo dropout passes of the U-net", "Units": unit,
                           **mc_fields, **provenance})
    if consistency:
        from ..nn.consistency import consistency_fields, physics_consistency

        t1 = time.perf_counter()
        # scored inside the outside rule's brain (every voxel with signal under --no-brain-mask)
        agreement = physics_consistency(data.transpose(2, 3, 1, 0), maps["T1"], maps["T2star"], seq,
                                        mask=rule_mask, channel_axis=1)
        path = save_nifti(np.ascontiguousarray(agreement.transpose(2, 1, 0), dtype=np.float32), affine,
                          out / derivative_name(prefix, CONSISTENCY_SUFFIX), header=header)
        write_sidecar(path.with_name(derivative_name(prefix, CONSISTENCY_SUFFIX, ".json")),
                      {**consistency_fields(), "ComputeSeconds": round(time.perf_counter() - t1, 2), **provenance})
    if made_mask:
        path = save_nifti(np.ascontiguousarray(rule_mask.transpose(2, 1, 0), dtype=np.uint8), affine,
                          out / derivative_name(prefix, MASK_SUFFIX), header=header)
        write_sidecar(path.with_name(derivative_name(prefix, MASK_SUFFIX, ".json")),
                      {"Description": "brain mask the maps were set to 0 outside of (and the input's level "
                                      "measured in)", "Type": "Brain", "Method": MASK_METHOD, "Units": "1",
                       "Sources": [str(Path(input_path).name)], "mrfengine_version": __version__})
    if result.outside_training:
        click.secho(f"warning: {input_path}: {result.warning(card.name)}; the maps may be wrong "
                    "(InputOutsideTraining in the sidecars)", err=True, fg="yellow")
    click.echo(f"predicted {data.shape[2]} slices in {seconds:.1f} s ({device}, {precision}, model {card.name} "
               f"from {model.path}); maps in {out}/{prefix}_*.nii.gz")


commands = [predict]
