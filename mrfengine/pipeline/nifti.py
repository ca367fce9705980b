"""One MRF series in a NIfTI file, its maps out as NIfTI files: the library behind
``mrfengine predict``, ``mrfengine match`` and ``mrfengine denoise``.

:func:`predict_nifti` runs a trained U-net, :func:`match_nifti` dictionary
matching, :func:`denoise_nifti` MP-PCA denoising (the series out, with its
noise and rank maps, as MRtrix3's ``dwidenoise``).  They share everything but
the files with the batch's ``unet``, ``match`` and ``denoise`` stages
(:mod:`mrfengine.pipeline.stages`): the network's run with its checks, outside
rule and record (:mod:`mrfengine.nn.predict`), the matching with its maps and
record (:mod:`mrfengine.pipeline.conventional`), :func:`mrfengine.denoise.mppca`.  What they
add is the file side:

* every output is planned and checked before any work
  (:func:`mrfengine.io.outputs.check_outputs`: a plain prefix, inside the
  output folder, nothing replaced unless ``force``);
* the series is read checked (:func:`mrfengine.io.load_nifti`: 4D magnitudes),
  a mask must lie on its grid, its slice count must be the sequence's;
* every map is written with the input's affine and header, in BIDS units
  (seconds for T1 and T2*), into a BIDS derivative dataset (the output folder:
  ``dataset_description.json``, :func:`mrfengine.io.bids.ensure_derivative_root`)
  under ``sub-<label>/[ses-<label>/]anat/`` with the producer's ``desc-``
  (``match``, ``unet``) and the suffixes of the map registry
  (:func:`mrfengine.io.bids.match_file`, :func:`~mrfengine.io.bids.network_file`),
  with a sidecar of the one schema (:func:`mrfengine.io.bids.map_sidecar`;
  ``Sources`` as BIDS URIs); the input's header description is not copied.

Background values: every map is 0 outside the brain mask
(:func:`mrfengine.masking.apply_outside_rule`) and 0 where the method gave no
estimate (:func:`mrfengine.masking.fill_not_estimated`: matching's unmatched
voxels); never NaN.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError, ValidationError
from ..io.bids import (
    BRAIN_LABEL,
    DESCRIPTION,
    DerivativeFile,
    check_derivative_root,
    ensure_derivative_root,
    map_sidecar,
    match_file,
    network_file,
    output_entities,
    read_links,
    source_uri,
    spec_file,
    write_sidecar,
)
from ..io.nifti import load_mask_like, load_nifti, nifti_suffix, save_nifti
from ..io.outputs import check_outputs
from ..maps import MATCH_MAPS, OTHER_MAPS, UNCERTAINTY_SUFFIX, MapSpec
from ..masking import MASK_METHOD, OUTSIDE_BRAIN_VALUE, outside_rule_fields
from ..sequence import Sequence

__all__ = ["DenoiseResult", "NiftiResult", "denoise_nifti", "match_nifti", "predict_nifti"]

#: Names of the optional outputs in :attr:`NiftiResult.files`, as the ``unet`` stage names its arrays
#: (the map registry's: ``<output>`` + :data:`mrfengine.maps.UNCERTAINTY_SUFFIX`).
CONSISTENCY_NAME = OTHER_MAPS["physics_consistency"].name
BRAIN_MASK_NAME = OTHER_MAPS["brain_mask"].name


@dataclass(frozen=True)
class NiftiResult:
    """What :func:`predict_nifti` and :func:`match_nifti` wrote.

    Attributes
    ----------
    output_dir : Path
        The derivative dataset's root.
    prefix : str
        The files' entities (``sub-01_ses-2``).
    files : dict of str to Path
        Map name -> the NIfTI written (its sidecar lies beside it,
        ``.json``): the outputs (``T1``, ``T2star``, ``lesion``, ... ;
        ``B1``, ``M0``, ``correlation``), ``<output>_uncertainty``,
        ``physics_consistency`` and ``brain_mask`` (a mask made from the
        series) when written.
    n_slices : int
    seconds : float
        Time of the network's passes, or of the matching.
    info : dict
        The run's record, as the batch's stage records it in a store:
        :meth:`mrfengine.nn.predict.NetworkMaps.info` or
        :func:`mrfengine.pipeline.conventional.match_volume`'s.
    warning : str or None
        Why the input lies outside what the network was trained on (the
        sidecars say ``InputOutsideTraining``); None when it does not.
    """

    output_dir: Path
    prefix: str
    files: dict[str, Path] = field(default_factory=dict)
    n_slices: int = 0
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    warning: str | None = None

    @property
    def folder(self) -> Path:
        """The folder of the maps (``OUT/sub-01/anat``; the root when nothing was written)."""
        parents = {p.parent for p in self.files.values()}
        return parents.pop() if len(parents) == 1 else self.output_dir


#: The ``desc-`` of each producer's files (:func:`predict_nifti`, :func:`match_nifti`).
PREDICT_DESC = "unet"
MATCH_DESC = "match"


def _plan_derivative(root: Path, planned: Mapping[str, DerivativeFile], source: str, force: bool) -> None:
    """Check before any work: the root is no other tool's dataset, and no planned file (image or
    sidecar) is replaced unless ``force`` (a sidecar made from another input is named)."""
    check_derivative_root(root, force=force)
    names = [str(p) for f in planned.values() for p in (f.relpath, f.sidecar)]
    first = next(iter(planned.values()))
    check_outputs(root, names, force=force, sources={str(first.sidecar): source})


def _check_slices(input_path, n: int, axis: int, sequence: Sequence, whose: str = "") -> None:
    if n != sequence.n_slices:
        raise InputFileError(f"{input_path}: {n} slices along axis {axis}, but sequence {sequence.name}{whose} has "
                             f"{sequence.n_slices}; pass --sequence for this acquisition")


def _save(arr: np.ndarray, affine, header, root: Path, file: DerivativeFile, fields: dict[str, Any],
          dtype=np.float32) -> Path:
    path = save_nifti(np.ascontiguousarray(arr, dtype=dtype), affine, root / file.relpath, header=header)
    write_sidecar(root / file.sidecar, fields)
    return path


def predict_nifti(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    trust_model_code: bool = False,
    sequence: str | os.PathLike | Sequence | None = None,
    mask: str | os.PathLike | None = None,
    brain_mask: bool = True,
    input_scale: str = "card",
    batch_size: int = 4,
    precision: str = "float32",
    tta: str = "none",
    mc_samples: int = 0,
    mc_seed: int = 0,
    consistency: bool = False,
    device: str = "auto",
    threads: int | None = None,
    prefix: str | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> NiftiResult:
    """Run a trained U-net over every slice of a 4D MRF NIfTI and write its maps as NIfTI.

    The series is (X, Y, Z, frames), slices along the third axis.  The maps
    are written with the input's affine into the BIDS derivative dataset
    ``output_dir`` (``sub-XX/anat/``): ``sub-XX_desc-unet_T1map`` and
    ``_desc-unet_T2starmap`` in seconds, ``sub-XX_label-<tissue>_desc-unet_probseg``
    probabilities (as the model's outputs are), each with a JSON sidecar
    (:func:`mrfengine.io.bids.map_sidecar`: the model, its hash, the sequence,
    the input's scaling, the brain mask, the value outside it).

    Parameters
    ----------
    input_path : path
        The series (``.nii`` or ``.nii.gz``, magnitudes).
    output_dir : path
        Folder of the maps (made when missing).
    model : path, optional
        ``NAME.pt`` with ``NAME.card.json`` beside it; default
        ``$MRFENGINE_MODEL``, else the shipped MSE-5 network
        (:func:`mrfengine.nn.default.default_model_path`).
    trust_model_code : bool
        Also load a TorchScript model file (it runs code stored in the file);
        models saved as weights only never need it.
    sequence : str, path or Sequence, optional
        The acquisition (a preset, a file); checked against the model's.
        Default: the one the model's card describes.
    mask : path, optional
        A 3D brain mask on the input's grid (nonzero inside).  Every map is
        0 outside it.
    brain_mask : bool
        True (default): without ``mask``, a mask is made from the series
        (:func:`mrfengine.masking.brain_mask_from_mrf`, the one the input's
        level is measured in), every map is 0 outside it, and it is written
        as ``sub-XX_label-brain_desc-unet_mask``.  False: the whole field of view (no
        map is set to 0); excludes ``mask``.
    input_scale : {"card", "subject", "absolute"}
        ``subject`` rescales the series to the training data's level measured
        in the brain; ``absolute`` takes it as it is; ``card``: as the model's
        card says.
    batch_size : int
        Slices per forward pass.
    precision : {"float32", "bfloat16"}
    tta : {"none", "flip", "dihedral"}
        Test-time augmentation.
    mc_samples : int
        0 (off), or N >= 2 Monte-Carlo dropout passes: one
        ``<suffix>std`` map per output (``desc-unet_T1mapstd``) (the standard deviation over
        them, in the output's units).
    mc_seed : int
        Seed of the dropout masks (>= 0).
    consistency : bool
        Also write the physics-consistency map
        (``desc-unet_consistency``; networks with T1 and T2* outputs).
    device : {"auto", "cpu", "cuda"}
    threads : int, optional
        CPU threads of torch during the run (restored after).
    prefix : str, optional
        The outputs' BIDS entities (``sub-01_ses-2``) or a subject label
        (``patient7``: ``sub-patient7``); default from the input's name
        (:func:`mrfengine.io.bids.output_entities`: ``sub-01_ses-2`` of
        ``sub-01_ses-2_MRF.nii.gz``, ``sub-scan7`` of ``scan_7.nii.gz``).
    force : bool
        Replace files that exist; write into a folder another tool's dataset holds.
    progress : callable, optional
        ``progress(done, total)``: called with the slices done and their number.

    Returns
    -------
    NiftiResult

    Raises
    ------
    OptionError
        ``mask`` with ``brain_mask=False``; ``consistency`` for a network
        without T1 and T2* outputs.
    InputFileError
        An unreadable series, mask or model; a slice count that is not the
        sequence's; an unusable output folder.
    ValidationError
        Data that do not fit the model (frames, sequence), a network that
        takes maps, bad options, no brain found in the series (pass a mask,
        or ``brain_mask=False``).
    OutputExistsError
        Outputs exist and ``force`` is false.
    BackendUnavailableError
        ``device="cuda"`` without a CUDA device.
    """
    from ..nn import card_path, check_card, read_card
    from ..nn.predict import (
        check_brain_mask_options,
        check_consistency,
        network_maps,
        network_sequence,
        open_network,
        resolve_model_path,
        torch_device,
        torch_threads,
    )
    from ..nn.uncertainty import check_mc_samples, check_mc_seed

    model_path = resolve_model_path(model, what="model")
    device = torch_device(device)
    card = read_card(model_path)
    if card.config.input_kind != "mrf":
        raise ValidationError(f"{model_path}: network {card.name} takes {', '.join(card.config.input_names)} maps, "
                              "not an MRF series; predict runs MRF networks")
    mc_samples, mc_seed = check_mc_samples(mc_samples), check_mc_seed(mc_seed)
    check_brain_mask_options(mask is not None, brain_mask)
    if consistency:
        check_consistency(card)
    # Every output is planned and checked before any work: its entities, the root, nothing replaced unless force.
    entities = output_entities(input_path, prefix)
    root = Path(output_dir)
    links = read_links(root)
    source = source_uri(input_path, root, links)
    mask_uri = source_uri(mask, root, links) if mask is not None else None
    planned: dict[str, tuple[DerivativeFile, MapSpec]] = {
        spec.name: network_file(spec.name, spec.unit, entities, PREDICT_DESC) for spec in card.config.outputs}
    if mc_samples:
        planned.update({spec.name + UNCERTAINTY_SUFFIX: network_file(spec.name, spec.unit, entities, PREDICT_DESC,
                                                                     uncertainty=True)
                        for spec in card.config.outputs})
    if consistency:
        planned[CONSISTENCY_NAME] = (spec_file(OTHER_MAPS[CONSISTENCY_NAME], entities, PREDICT_DESC),
                                     OTHER_MAPS[CONSISTENCY_NAME])
    if mask is None and brain_mask:  # the mask made from the series is written as a derivative
        planned[BRAIN_MASK_NAME] = (DerivativeFile(entities, "mask", desc=PREDICT_DESC, label=BRAIN_LABEL),
                                    OTHER_MAPS[BRAIN_MASK_NAME])
    _plan_derivative(root, {k: f for k, (f, _) in planned.items()}, source, force)
    data, affine, header = load_nifti(input_path, ndim=4, magnitude=True)
    seq = network_sequence(card, sequence, source=model_path)
    try:
        check_card(card, channels=data.shape[3], sequence=seq, input_kind="mrf", source=card_path(model_path))
    except ValidationError as exc:
        raise ValidationError(f"{input_path} does not fit the model: {exc}") from exc
    # the model's own files (hash, format, weights) are judged apart from the data: a changed model says so
    loaded = open_network(model_path, device=device, trust_model_code=trust_model_code)
    _check_slices(input_path, data.shape[2], 2, seq, "" if sequence is not None else " (the model's)")
    given = load_mask_like(mask, data.shape[:3], affine, reference=input_path) if mask is not None else None

    with torch_threads(threads):
        try:
            # (X, Y, Z, C) -> (Z, C, Y, X) as a view; the network copies a batch at a time.
            net = network_maps(data.transpose(2, 3, 1, 0), loaded, sequence=seq,
                               mask=None if given is None else given.transpose(2, 1, 0), mask_source="given",
                               brain_mask=brain_mask, channel_axis=1, batch_size=batch_size, precision=precision,
                               device=device, tta=tta, input_scale=input_scale, mc_samples=mc_samples,
                               mc_seed=mc_seed, consistency=consistency,
                               progress=None if progress is None else lambda done: progress(done, data.shape[2]))
        except ValidationError as exc:  # the input's scale cannot be measured, no brain found, ...
            raise type(exc)(f"{input_path}: {exc}") from exc

    mask_name = {"given": mask_uri, MASK_METHOD: planned[BRAIN_MASK_NAME][0].uri if BRAIN_MASK_NAME in planned
                 else None, "none": None}[net.mask_source]
    outside = outside_rule_fields(mask_name, net.mask_source)
    sources = [source] + ([mask_uri] if mask_uri else [])
    run = net.sidecar_fields()
    made_by = f"U-net {card.name}"
    hdr = _derived_header(header)
    ensure_derivative_root(root, links=links, nonstandard=[f.suffix for f, _ in planned.values() if f.nonstandard],
                           force=force)
    files: dict[str, Path] = {}
    for spec in card.config.outputs:
        file, bids = planned[spec.name]
        fields = map_sidecar(f"{spec.description or spec.name} predicted by the U-net", bids.bids_unit,
                             sources=sources, outside=outside, producer=PREDICT_DESC, generated_by=made_by,
                             spatial_reference=source if file.segmentation else None, provenance=run)
        files[spec.name] = _save(net.maps[spec.name].transpose(2, 1, 0) * np.float32(bids.scale_to_bids), affine,
                                 hdr, root, file, fields)
    if net.uncertainty is not None:
        mc_fields = net.uncertainty_fields()
        for spec in card.config.outputs:
            file, bids = planned[spec.name + UNCERTAINTY_SUFFIX]
            fields = map_sidecar(f"uncertainty of {spec.description or spec.name}: standard deviation over "
                                 f"{mc_samples} Monte-Carlo dropout passes of the U-net", bids.bids_unit,
                                 sources=sources, outside=outside, producer=PREDICT_DESC, generated_by=made_by,
                                 provenance={**mc_fields, **run})
            files[spec.name + UNCERTAINTY_SUFFIX] = _save(
                net.uncertainty[spec.name].transpose(2, 1, 0) * np.float32(bids.scale_to_bids), affine, hdr, root,
                file, fields)
    if net.consistency is not None:
        from ..nn.consistency import consistency_fields

        what = consistency_fields()
        description, unit = what.pop("Description"), what.pop("Units")
        fields = map_sidecar(description, unit, sources=sources, outside=outside, producer=PREDICT_DESC,
                             generated_by=made_by,
                             provenance={**what, "ComputeSeconds": round(net.consistency_seconds, 2), **run})
        files[CONSISTENCY_NAME] = _save(net.consistency.transpose(2, 1, 0), affine, hdr, root,
                                        planned[CONSISTENCY_NAME][0], fields)
    if net.mask_made:
        file = planned[BRAIN_MASK_NAME][0]
        fields = map_sidecar("brain mask the maps were set to 0 outside of (and the input's level measured in)",
                             "1", sources=[source], outside=None, spatial_reference=source, mask_type="Brain",
                             producer=PREDICT_DESC, generated_by=made_by, provenance={"MaskMethod": MASK_METHOD})
        files[BRAIN_MASK_NAME] = _save(net.mask.transpose(2, 1, 0), affine, hdr, root, file, fields, dtype=np.uint8)
    prefix = "_".join(f"{k}-{v}" for k, v in entities.items())
    return NiftiResult(root, prefix, files, int(data.shape[2]), net.seconds, net.info(), net.warning)


def match_nifti(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    sequence: str | os.PathLike | Sequence = "hermann2021",
    mask: str | os.PathLike | None = None,
    backend: str = "auto",
    method: str = "auto",
    rank: int | None = None,
    slice_axis: int = 2,
    prefix: str | None = None,
    force: bool = False,
    cache: Any = None,
    progress: Callable[[int, int], None] | None = None,
    dictionary: Any = None,
    dictionary_options: Mapping[str, Any] | None = None,
) -> NiftiResult:
    """Match every voxel of a 4D MRF NIfTI against the dictionary of its own slice and write the maps.

    The series is (X, Y, Z, frames).  Written with the input's affine:
    into the BIDS derivative dataset ``output_dir``,
    ``sub-XX/anat/sub-XX_desc-match_T1map`` and ``_desc-match_T2starmap`` (seconds),
    ``sub-XX/fmap/sub-XX_desc-match_TB1map``, ``..._desc-match_M0map`` and the match
    correlation ``..._desc-match_correlation``, each with a JSON sidecar
    (:func:`mrfengine.io.bids.map_sidecar`: the sequence, the backend and
    method, the mask and the value outside it).

    Voxels outside ``mask``, with a NaN/Inf frame or all frames zero are not
    matched: every map holds 0 there (:func:`mrfengine.masking.fill_not_estimated`;
    outside the mask, the outside rule's 0).

    Parameters
    ----------
    input_path, output_dir : path
        The series (``.nii`` or ``.nii.gz``, magnitudes) and the folder of
        its maps (made when missing), as :func:`predict_nifti`.
    sequence : str, path or Sequence
        The acquisition: a preset (``hermann2021``, ``hermann2021-site1``,
        ``hermann2021-site2``), a sequence file or a
        :class:`~mrfengine.sequence.Sequence`.
    mask : path, optional
        A 3D brain mask on the input's grid (nonzero: match).
    backend : str
        Matching backend (``auto`` picks the fastest available).
    method : {"auto", "brute", "structured"}
    rank : int, optional
        Match in a rank-R SVD compression.
    slice_axis : {0, 1, 2}
        Array axis of the slices (positions as acquired).
    prefix : str, optional
        The outputs' entities, as :func:`predict_nifti`'s.
    force : bool
        Replace files that exist.
    cache : DictionaryCache, path, None or False
        The dictionary cache (:class:`mrfengine.dictionary.SliceDictionaries`):
        None the default folder, False none.
    progress : callable, optional
        ``progress(done, total)``: called with the slices matched and their number.
    dictionary : Dictionary or path, optional
        One dictionary for every slice instead of the sequence's per-slice
        ones (``sequence`` and ``cache`` are then not used): a
        :class:`~mrfengine.dictionary.Dictionary` or a file
        :meth:`Dictionary.load <mrfengine.dictionary.Dictionary.load>` reads
        (mrfengine's or another tool's .npz, HDF5, MATLAB v5/v7.3), of any
        frame count: the series must have as many frames.  A map is written
        for each of its parameters: ``T1``, ``T2``, ``T2star`` (``T1map``,
        ``T2map``, ``T2starmap``, seconds), ``B1`` (``TB1map``), any other
        under its own name and its file's unit; with ``M0map`` and the
        correlation.  Complex atoms are matched by their magnitude (the
        series holds magnitudes); the sidecars say so.
    dictionary_options : mapping, optional
        Keywords of :meth:`Dictionary.load` for a dictionary file
        (``atoms``, ``params``, ``units``, ``layout``); the frame count is
        the series'.

    Returns
    -------
    NiftiResult

    Raises
    ------
    InputFileError
        An unreadable series, mask or dictionary file, a frame or slice count
        that is not the sequence's (or the dictionary's), an unusable output
        folder.
    ValidationError
        Bad options.
    OutputExistsError
        Outputs exist and ``force`` is false.
    """
    from ..dictionary import SliceDictionaries
    from ..sequence import resolve_sequence
    from .conventional import match_maps, match_sidecar_fields, match_volume

    if isinstance(slice_axis, bool) or slice_axis not in (0, 1, 2):
        raise ValidationError(f"slice_axis must be 0, 1 or 2; got {slice_axis!r}")
    if dictionary is not None:
        return _match_nifti_dictionary(input_path, output_dir, dictionary, dict(dictionary_options or {}), mask=mask,
                                       backend=backend, method=method, rank=rank, slice_axis=slice_axis,
                                       prefix=prefix, force=force, progress=progress)
    if dictionary_options:
        raise ValidationError("dictionary_options are for a dictionary file given as dictionary=")
    # Every output is planned and checked before any work: its entities, the root, nothing replaced unless force.
    entities = output_entities(input_path, prefix)
    root = Path(output_dir)
    links = read_links(root)
    source = source_uri(input_path, root, links)
    mask_uri = source_uri(mask, root, links) if mask is not None else None
    planned = {key: match_file(key, entities, MATCH_DESC) for key in MATCH_MAPS}
    _plan_derivative(root, planned, source, force)
    seq = resolve_sequence(sequence)
    data, affine, header = load_nifti(input_path, ndim=4, n_frames=seq.n_measurements, magnitude=True)
    _check_slices(input_path, data.shape[slice_axis], slice_axis, seq)
    given = load_mask_like(mask, data.shape[:3], affine, reference=input_path) if mask is not None else None
    dictionaries = SliceDictionaries(seq, cache=cache)
    n_slices = int(data.shape[slice_axis])
    t0 = time.perf_counter()
    result, info = match_volume(data, dictionaries, slice_axis=slice_axis, axis=-1, mask=given, backend=backend,
                                method=method, rank=rank,
                                progress=None if progress is None else lambda done: progress(done, n_slices))
    seconds = time.perf_counter() - t0
    outside = outside_rule_fields(mask_uri, "given")
    sources = [source] + ([mask_uri] if mask_uri else [])
    run = match_sidecar_fields(info)
    hdr = _derived_header(header)
    ensure_derivative_root(root, links=links, nonstandard=[f.suffix for f in planned.values() if f.nonstandard],
                           force=force)
    files: dict[str, Path] = {}
    for key, values in match_maps(result).items():
        spec = MATCH_MAPS[key]
        fields = map_sidecar(spec.description, spec.bids_unit, sources=sources, outside=outside,
                             producer=MATCH_DESC, generated_by="dictionary matching", provenance=run)
        files[key] = _save(values * np.float32(spec.scale_to_bids), affine, hdr, root, planned[key], fields)
    prefix = "_".join(f"{k}-{v}" for k, v in entities.items())
    return NiftiResult(root, prefix, files, n_slices, seconds, info)


def _dictionary_map_specs(d: Any) -> dict[str, tuple[MapSpec, str]]:
    """The map of each of a given dictionary's parameters and the unit of its file's values:
    the registry's for ``T1``, ``T2star`` and ``B1``, ``T2map`` for ``T2``, any other under its own
    name (a suffix mrfengine's ``.bidsignore`` lists) in the unit the dictionary records."""
    from ..maps import ARBITRARY, MS, SECOND, UNITS

    units = d.metadata.get("units", {}) if isinstance(d.metadata.get("units"), Mapping) else {}
    specs: dict[str, tuple[MapSpec, str]] = {}
    for name in d.params:
        if name in ("M0", "correlation"):
            raise ValidationError(f"the dictionary's parameter {name!r} has the name of a map matching writes itself "
                                  f"(M0, correlation); rename it")
        if name in ("T1", "T2star", "B1"):
            spec = MATCH_MAPS[name]
        elif name == "T2":
            spec = MapSpec("T2", MS, "Transverse relaxation time of the best-matching dictionary atom",
                           "quantitative", "T2map", bids_unit=SECOND, scale_to_bids=1e-3)
        else:
            unit = str(units.get(name, "")).strip()
            spec = MapSpec(name, unit if unit in UNITS else ARBITRARY,
                           f"Parameter {name} of the best-matching dictionary atom"
                           + (f" ({unit})" if unit else " (the dictionary gives no unit)"), "quantitative")
            specs[name] = (spec, unit or ARBITRARY)
            continue
        specs[name] = (spec, spec.bids_unit)
    for key in ("M0", "correlation"):
        specs[key] = (MATCH_MAPS[key], MATCH_MAPS[key].bids_unit)
    suffixes: dict[str, str] = {}
    for name, (spec, _) in specs.items():
        if spec.suffix in suffixes:
            raise ValidationError(f"the dictionary's parameters {suffixes[spec.suffix]!r} and {name!r} would both be "
                                  f"written as {spec.suffix} maps; rename one")
        suffixes[spec.suffix] = name
    return specs


def _match_nifti_dictionary(input_path, output_dir, dictionary: Any, options: dict[str, Any], *, mask, backend: str,
                            method: str, rank: int | None, slice_axis: int, prefix: str | None, force: bool,
                            progress) -> NiftiResult:
    """:func:`match_nifti` with one dictionary (an object or a file) for every slice."""
    from ..dictionary import Dictionary
    from ..dictionary.io import FrameCountError
    from ..masking import fill_not_estimated
    from ..matching import match_slices

    if "n_frames" in options:
        raise ValidationError("dictionary_options: n_frames is the series' frame count, not an option")
    unknown = sorted(set(options) - {"atoms", "params", "units", "layout"})
    if unknown:
        raise ValidationError(f"dictionary_options: unknown keys {unknown} (atoms, params, units, layout)")
    entities = output_entities(input_path, prefix)
    root = Path(output_dir)
    links = read_links(root)
    source = source_uri(input_path, root, links)
    mask_uri = source_uri(mask, root, links) if mask is not None else None
    data, affine, header = load_nifti(input_path, ndim=4, magnitude=True)
    n_frames = int(data.shape[-1])
    if isinstance(dictionary, Dictionary):
        if options:
            raise ValidationError("dictionary_options are for a dictionary file, not a Dictionary")
        d, dict_uri, dict_name = dictionary, None, "given"
    else:
        try:
            d = Dictionary.load(dictionary, n_frames=n_frames, **options)
        except FrameCountError as exc:
            have = " or ".join(str(h) for h in exc.have)
            raise InputFileError(f"{input_path}: the series has {n_frames} frames, but the fingerprints of dictionary "
                                 f"{dictionary} have {have}; give the dictionary of this acquisition") from exc
        dict_uri, dict_name = source_uri(dictionary, root, links), Path(dictionary).name
    if d.n_frames != n_frames:
        raise InputFileError(f"{input_path}: the series has {n_frames} frames, but the dictionary has {d.n_frames}")
    specs = _dictionary_map_specs(d)
    planned = {key: spec_file(spec, entities, MATCH_DESC) for key, (spec, _) in specs.items()}
    _plan_derivative(root, planned, source, force)
    given = load_mask_like(mask, data.shape[:3], affine, reference=input_path) if mask is not None else None
    magnitude = np.iscomplexobj(d.atoms)
    matched_against = Dictionary(np.abs(d.atoms), d.params, metadata=d.metadata) if magnitude else d
    n_slices = int(data.shape[slice_axis])
    t0 = time.perf_counter()
    result = match_slices(data, lambda z: matched_against, slice_axis=slice_axis, channel_axis=-1, mask=given,
                          backend=backend, method=method, rank=rank,
                          progress=None if progress is None else lambda done: progress(done, n_slices))
    seconds = time.perf_counter() - t0
    source_meta = d.metadata.get("source", {}) if isinstance(d.metadata.get("source"), Mapping) else {}
    info = {"backend": result.backend, "method": result.method, "rank": result.rank, "dictionary": dict_name,
            "dictionary_digest": d.digest, "dictionary_format": source_meta.get("format", "mrfengine"),
            "dictionary_atoms": d.n_atoms, "dictionary_frames": d.n_frames, "dictionary_magnitude": magnitude,
            "n_matched": int(np.count_nonzero(result.matched))}
    run = {"Dictionary": dict_uri or dict_name, "DictionaryDigest": d.digest,
           "DictionaryFormat": info["dictionary_format"], "DictionaryAtoms": d.n_atoms, "DictionaryFrames": d.n_frames,
           "DictionaryMatchedByMagnitude": magnitude, "MatchingBackend": result.backend,
           "MatchingMethod": result.method, "SVDRank": result.rank, "MatchedVoxels": info["n_matched"]}
    outside = outside_rule_fields(mask_uri, "given")
    sources = [source] + ([mask_uri] if mask_uri else []) + ([dict_uri] if dict_uri else [])
    hdr = _derived_header(header)
    ensure_derivative_root(root, links=links, nonstandard=[f.suffix for f in planned.values() if f.nonstandard],
                           force=force)
    values = {name: np.asarray(result.params[name], dtype=np.float32) for name in d.params}
    values.update(M0=np.abs(result.m0), correlation=result.correlation)
    files: dict[str, Path] = {}
    for key, arr in fill_not_estimated(values, result.matched).items():
        spec, unit = specs[key]
        fields = map_sidecar(spec.description, unit, sources=sources, outside=outside, producer=MATCH_DESC,
                             generated_by="dictionary matching", provenance=run)
        files[key] = _save(arr * np.float32(spec.scale_to_bids), affine, hdr, root, planned[key], fields)
    prefix = "_".join(f"{k}-{v}" for k, v in entities.items())
    return NiftiResult(root, prefix, files, n_slices, seconds, info)


# --------------------------------------------------------------------------- denoise
#: What ``denoise_nifti``'s OUT holds outside the mask (its sidecar's ``OutsideMask``).
DENOISE_OUTSIDE = "the input's values, unchanged (not denoised)"


@dataclass(frozen=True)
class DenoiseResult:
    """What :func:`denoise_nifti` wrote.

    Attributes
    ----------
    files : dict of str to Path
        ``denoised`` (the series), ``mppca_sigma`` (``noise_path``) and
        ``mppca_rank`` (``rank_path``) when asked for; each has its JSON
        sidecar beside it.
    seconds : float
        Time of the MP-PCA run.
    info : dict
        ``backend``, ``estimator``, ``window``, ``patch_radius``,
        ``frames``, ``mask_source`` (``given``,
        :data:`~mrfengine.masking.MASK_METHOD` or ``none``), ``voxels``
        (denoised), ``median_sigma`` (in the denoised voxels, the input's
        units) and ``median_rank``.
    """

    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name[: len(path.name) - len(nifti_suffix(path))] + ".json")


def _plan_denoise_outputs(input_path: Path, outputs: dict[str, Path], others: list[Path], force: bool) -> None:
    """Check every output of :func:`denoise_nifti` before any work: NIfTI names, none the input (or
    the mask), no two alike, writable folders, nothing replaced unless ``force``."""
    from ..errors import OptionError

    seen: dict[Path, str] = {Path(os.path.abspath(p)): "the input" for p in [input_path, *others]}
    for what, path in outputs.items():
        if not nifti_suffix(path):
            raise OptionError(f"{path}: the {what} output must be a NIfTI file name (.nii or .nii.gz)")
        for p in (path, _sidecar_path(path)):
            key = Path(os.path.abspath(p))
            if key in seen:
                raise OptionError(f"{p}: the {what} output would be the same file as {seen[key]}")
            seen[key] = f"the {what} output"
    for path in outputs.values():
        check_outputs(path.parent, [path.name, _sidecar_path(path).name], force=force)


def _denoise_root(output: Path) -> Path:
    """The root of the mrfengine derivative dataset ``output`` lies in, else ``output``'s folder."""
    for folder in Path(os.path.abspath(output)).parents:
        if (folder / DESCRIPTION).is_file():
            try:
                check_derivative_root(folder)
            except InputFileError:
                break  # another tool's dataset (or a raw one): the output's folder is the reference
            return folder
    return Path(os.path.abspath(output)).parent


def _derived_header(header):
    """The input's header for an output: geometry, codes, units and frame timing kept; its
    description, auxiliary file, display range, intent and extensions (which describe the input) not."""
    hdr = header.copy()
    for key, value in (("descrip", b""), ("aux_file", b""), ("cal_min", 0.0), ("cal_max", 0.0)):
        if key in hdr:
            hdr[key] = value
    if hasattr(hdr, "set_intent"):
        hdr.set_intent("none")
    if hasattr(hdr, "extensions"):
        hdr.extensions.clear()
    return hdr


def denoise_nifti(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    noise_path: str | os.PathLike | None = None,
    rank_path: str | os.PathLike | None = None,
    mask: str | os.PathLike | None = None,
    brain_mask: bool = True,
    patch_radius: int | tuple[int, int, int] = 2,
    estimator: str = "mp",
    backend: str = "auto",
    n_threads: int = 0,
    force: bool = False,
) -> DenoiseResult:
    """MP-PCA denoising of a 4D NIfTI series, as MRtrix3's ``dwidenoise``: the library behind ``mrfengine denoise``.

    The series is (X, Y, Z, frames), as NIfTI stores a 4D image (frames on
    the fourth axis); the values are read with the file's scaling
    (``scl_slope``/``scl_inter``) applied, any real numbers (magnitudes or
    not).  Denoising is :func:`mrfengine.denoise.mppca`, the batch's
    ``denoise`` stage: every ``(2 r + 1)^3`` window, Marchenko-Pastur noise
    level and rank, the estimates of all windows that hold a voxel averaged.

    Written, each atomically and only once all are computed (a failure leaves
    no output), each with a JSON sidecar of the one schema
    (:func:`mrfengine.io.bids.map_sidecar`: method, estimator, window,
    backend, mask, ``Sources``, mrfengine's version):

    * ``output_path``: the denoised series, float32, same shape, affine,
      qform/sform codes, voxel sizes, units and frame interval as the input
      (its ``descrip``, ``aux_file``, display range, intent and header
      extensions are not copied).  **Outside the mask the input's values,
      unchanged** (MP-PCA's own rule): the series stays whole for whatever
      reads it next (``match``, ``predict``), which apply their own mask.
      MRtrix3's ``dwidenoise -mask`` leaves those voxels 0.
    * ``noise_path``: the noise standard deviation sigma (3D float32, in the
      input's scaled units; registry name ``mppca_sigma``).
    * ``rank_path``: the signal components kept in the window centred on
      each voxel (3D int16, as ``dwidenoise -rank``; ``mppca_rank``).

    Both maps are 0 outside the mask (mrfengine's outside rule), never NaN.

    Parameters
    ----------
    input_path : path
        The 4D series (``.nii`` or ``.nii.gz``); at least 2 frames, no NaN/Inf.
    output_path : path
        The denoised series (``.nii`` or ``.nii.gz``; its folder is made when missing).
    noise_path, rank_path : path, optional
        The noise map and the rank map.
    mask : path, optional
        A 3D mask on the input's grid (nonzero: denoise).
    brain_mask : bool
        True (default): without ``mask``, denoise inside a brain mask made
        from the series (:func:`mrfengine.masking.brain_mask_from_mrf`, as
        ``predict`` and the batch make it; not written, its voxel count is in
        the sidecars).  False: the whole field of view; excludes ``mask``.
    patch_radius : int or 3 ints
        Window radius per axis (X, Y, Z); 2: 5 x 5 x 5 windows (dwidenoise's
        default extent for up to 125 frames).
    estimator : {"mp", "exp2"}
        ``mp``: Veraart et al. 2016 (mrfengine's default, the batch's);
        ``exp2``: Cordero-Grande et al. 2019 (dwidenoise's default).
    backend : {"auto", "cpp", "numba", "numpy", "cupy", "reference"}
        :data:`mrfengine.denoise.BACKENDS`; ``auto`` picks the fastest here.
    n_threads : int
        Threads of the ``cpp`` backend; 0: all (or ``OMP_NUM_THREADS``).
    force : bool
        Replace outputs that exist.

    Returns
    -------
    DenoiseResult

    Raises
    ------
    OptionError
        A bad option: an output name that is not NIfTI or names the input (or
        another output), ``mask`` with ``brain_mask=False``, a bad patch
        radius, estimator, backend or thread count.
    InputFileError
        An unreadable series or mask; a series that is not 4D, has fewer than
        2 frames or NaN/Inf values; a mask off the series' grid; an unusable
        output folder.  The message names the file.
    ValidationError
        No brain found in the series (pass ``mask``, or ``brain_mask=False``).
    OutputExistsError
        Outputs exist and ``force`` is false.
    BackendUnavailableError
        ``backend`` cannot run here.
    """
    from ..denoise import BACKENDS, mppca
    from ..denoise._common import ESTIMATORS, parse_patch_radius, window_extent
    from ..errors import OptionError
    from ..maps import OTHER_MAPS, PIPELINE_MAPS
    from ..masking import brain_mask_from_mrf

    if mask is not None and not brain_mask:
        raise OptionError("a mask and brain_mask=False (--mask and --no-brain-mask) exclude each other: give the "
                          "region to denoise, or denoise the whole field of view")
    try:
        radius = parse_patch_radius(patch_radius)
    except ValidationError as exc:
        raise OptionError(str(exc)) from None
    if max(radius) < 1:
        raise OptionError(f"patch_radius must be >= 1 along at least one axis (a window of one voxel has no "
                          f"noise to measure); got {patch_radius!r}")
    if estimator not in ESTIMATORS:
        raise OptionError(f"estimator must be one of {', '.join(ESTIMATORS)}; got {estimator!r}")
    if backend not in ("auto", *BACKENDS):
        raise OptionError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 0:
        raise OptionError(f"n_threads must be an int >= 0; got {n_threads!r}")

    input_path = Path(input_path)
    outputs = {"denoised": Path(output_path)}
    if noise_path is not None:
        outputs["mppca_sigma"] = Path(noise_path)
    if rank_path is not None:
        outputs["mppca_rank"] = Path(rank_path)
    _plan_denoise_outputs(input_path, outputs, [Path(mask)] if mask is not None else [], force)

    data, affine, header = load_nifti(input_path, ndim=4)
    if data.shape[3] < 2:
        raise InputFileError(f"{input_path}: {data.shape[3]} frame; MP-PCA needs a series of at least 2 frames "
                             "along the fourth axis")
    if not np.isfinite(np.sum(data, dtype=np.float64)):
        bad = ~np.isfinite(data)
        n_bad = int(bad.sum())
        if n_bad:
            raise InputFileError(
                f"{input_path}: {n_bad} NaN/Inf value(s) in {int(bad.any(axis=3).sum())} voxel(s); MP-PCA mixes "
                "the voxels of each window, so it cannot denoise them: replace them first (e.g. with 0) and give "
                "a --mask that leaves those voxels out")
    spatial = tuple(int(s) for s in data.shape[:3])
    if int(np.prod(window_extent(spatial, radius))) < 2:
        raise OptionError(f"the window of patch_radius {patch_radius!r} on a {spatial} volume holds one voxel")
    if mask is not None:
        region, mask_source = load_mask_like(mask, spatial, affine, reference=input_path), "given"
    elif brain_mask:
        try:
            # (X, Y, Z, F) -> (F, Z, Y, X) as a view; the mask comes back (Z, Y, X)
            region = brain_mask_from_mrf(data.transpose(3, 2, 1, 0), channel_axis=0).transpose(2, 1, 0)
        except ValidationError as exc:
            raise ValidationError(f"{input_path}: {exc}; give a mask (--mask) or denoise the whole field of view "
                                  "(--no-brain-mask)") from exc
        mask_source = MASK_METHOD
    else:
        region, mask_source = None, "none"

    t0 = time.perf_counter()
    try:
        result = mppca(data, channel_axis=-1, mask=region, patch_radius=radius, estimator=estimator,
                       backend=backend, n_threads=int(n_threads))
    except ValidationError as exc:
        raise type(exc)(f"{input_path}: {exc}") from exc
    seconds = time.perf_counter() - t0
    inside = np.ones(spatial, bool) if region is None else np.asarray(region, bool)
    sigma = np.where(inside, np.nan_to_num(result.sigma, nan=0.0), 0.0).astype(np.float32)
    rank = np.where(inside, np.maximum(result.n_components, 0), 0).astype(np.int16)
    n_inside = int(inside.sum())
    info: dict[str, Any] = {
        "backend": result.backend, "estimator": result.estimator, "window": list(result.window),
        "patch_radius": list(radius), "frames": int(data.shape[3]), "mask_source": mask_source, "voxels": n_inside,
        "median_sigma": float(np.median(sigma[inside])) if n_inside else None,
        "median_rank": float(np.median(rank[inside])) if n_inside else None,
    }

    # the sidecars: the one schema, the run's record after it
    # Sources as BIDS URIs, seen from the derivative dataset OUT lies in (its links merged into that
    # dataset's description), else from OUT's folder
    root = _denoise_root(outputs["denoised"])
    links = read_links(root)
    mask_file = source_uri(mask, root, links) if mask is not None else None
    sources = [source_uri(input_path, root, links)] + ([mask_file] if mask_file else [])
    run = {"Method": "MP-PCA (Marchenko-Pastur PCA over sliding windows)", "Estimator": result.estimator,
           "PatchRadius": list(radius), "Window": list(result.window),
           "Recombination": "weighted mean of the estimates of all windows that hold the voxel, weight 1/(1 + rank)",
           "Backend": result.backend, "Frames": int(data.shape[3]), "DenoisedVoxels": n_inside,
           "ComputeSeconds": round(seconds, 3)}
    outside = {"BrainMask": mask_file, "BrainMaskSource": mask_source,
               "OutsideBrainValue": OUTSIDE_BRAIN_VALUE if region is not None else None}
    made_by = "MP-PCA denoising"
    series = OTHER_MAPS["mrf"]
    planned: dict[str, tuple[np.ndarray, dict[str, Any]]] = {
        "denoised": (np.asarray(result.denoised, dtype=np.float32),
                     map_sidecar(f"{series.description}, denoised by MP-PCA", series.unit, sources=sources,
                                 outside=None, producer="denoise", generated_by=made_by,
                                 provenance={"Mask": mask_file, "MaskSource": mask_source,
                                             "OutsideMask": DENOISE_OUTSIDE if region is not None else None, **run}))}
    for name, values in (("mppca_sigma", sigma), ("mppca_rank", rank)):
        if name in outputs:
            spec = PIPELINE_MAPS[name]
            planned[name] = (values, map_sidecar(spec.description, spec.unit, sources=sources, outside=outside,
                                                 producer="denoise", generated_by=made_by, provenance=run))
    if (root / DESCRIPTION).is_file():
        ensure_derivative_root(root, links=links)
    hdr = _derived_header(header)
    units = hdr.get_xyzt_units() if hasattr(hdr, "get_xyzt_units") else ("mm", "sec")
    files = _write_all(outputs, planned, affine, hdr, units)
    return DenoiseResult(files, seconds, info)


def _write_all(outputs: dict[str, Path], planned: dict[str, tuple[np.ndarray, dict[str, Any]]], affine, header,
               units) -> dict[str, Path]:
    """Write every image and sidecar to a temporary file first, then rename them all: a failure
    before the renames leaves no output (and the old files, with ``force``, as they were); the
    denoised series is renamed last."""
    import contextlib

    from .._atomic import atomic_path

    for path in outputs.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:  # exits in reverse: the first entered is renamed last
        for name, path in outputs.items():
            values, fields = planned[name]
            tail = path.name[len(path.name) - len(nifti_suffix(path)):]
            tmp = stack.enter_context(atomic_path(path, suffix=tail))
            save_nifti(values, affine, tmp, header=header, xyzt_units=units)
            write_sidecar(stack.enter_context(atomic_path(_sidecar_path(path))), fields)
    return dict(outputs)
