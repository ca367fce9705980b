"""Named pipeline stages as pure functions over arrays, and the :class:`Pipeline` that orders them.

A stage reads named *artifacts* and returns new ones; it never touches the
store.  The artifacts a run starts with (:data:`INITIAL_ARTIFACTS`) are

``mrf``
    (T, Z, Y, X) float32 MRF magnitudes of one subject.
``mask``
    (Z, Y, X) bool brain mask, or None (every voxel).
``sequence``
    The subject's :class:`~mrfengine.sequence.Sequence`.
``z0``
    Index of the first plane of ``mrf`` in the subject (0 for a whole
    subject; a slab's offset when a batch splits subjects into slabs).

The stages:

``mask``
    The brain mask the other stages run in (option ``source``): ``auto`` (the
    default) takes the subject's ``brain_mask`` when it has one and otherwise
    makes one from the series (:func:`mrfengine.masking.brain_mask_from_mrf`,
    nilearn's ``compute_epi_mask`` on the mean over frames); ``series`` always
    makes one; ``none`` runs over the whole field of view.  Replaces ``mask``
    and gives ``mask_source`` (:data:`~mrfengine.masking.BRAIN_MASK_SOURCE`,
    :data:`~mrfengine.masking.MASK_METHOD` or ``"none"``); its provenance
    names the source and counts the voxels.  Every pipeline runs it first: a
    pipeline that does not name it gets it with ``source = "auto"``, so a
    subject without a brain mask (an imported NIfTI, usually) is denoised and
    matched in its brain, not over the whole field of view.
``denoise``
    MP-PCA (:func:`mrfengine.denoise.mppca`) of ``mrf`` inside ``mask``;
    replaces ``mrf`` and gives ``mppca_sigma`` (the noise level per voxel)
    and ``mppca_rank`` (the signal components kept), which ``write`` stores.
``match``
    Dictionary matching slice by slice (:func:`mrfengine.pipeline.conventional.match_volume`,
    as ``mrfengine match``) against the subject's per-slot dictionaries, built once per sequence
    (:func:`slice_dictionaries`, keyed by ``Sequence.digest()``); gives ``maps``.
``unet``
    Whole-slice inference of a trained U-net (:mod:`mrfengine.nn`; option
    ``model``: a ``.pt`` saved by mrfengine, default the packaged model) on
    ``mrf`` (an MRF network) or on the ``maps`` of ``match`` (a maps network);
    gives ``nn_maps`` (T1, T2star in ms; NAWM, GM, lesion probabilities, as
    the model's card says).  The card is checked against the subject's frame
    count and sequence.  Option ``prefix`` names its arrays when ``match``
    runs too (``T1`` would clash).  The model is read as weights only; a
    TorchScript model file runs code stored in it and is refused unless
    ``trust_model_code = true`` (only for models you trust).  The run is
    ``mrfengine predict``'s (:func:`mrfengine.nn.predict.network_maps`: the
    same checks, options, uncertainty, physics consistency and outside rule,
    with the subject's ``brain_mask``, or the whole field of view without one).
``register``
    Distortion correction (:func:`mrfengine.registration.register_to_reference`):
    the matched T1 map registered to the subject's T2-weighted reference
    (option ``reference``, default ``T2w``) with ANTs, rigidly and then with
    a SyN field along the phase-encoding axis (option ``phase_encoding``,
    ``j`` = Y; ``none``: rigid only), every ``derived`` array resampled onto
    the reference grid (cubic B-spline for maps, linear for probabilities,
    nearest for masks), the brain mask moved with them and stored as
    ``brain_mask``; the field is stored as ``displacement`` and the rigid
    matrix goes into the provenance.  Runs after ``write``, once per subject.
``segment``
    GM/WM/CSF probability maps from the (corrected) T1 map
    (:func:`mrfengine.segmentation.segment_tissues`: a mixture model with
    MNI152 priors, option ``priors``) and ``NAWM`` = WM outside the lesion
    annotation (option ``lesion``); adds ``GM``, ``WM``, ``CSF``, ``NAWM`` to
    ``derived``.  Runs after ``write`` (and ``register``), once per subject.
``write``
    Turns ``maps`` and/or ``nn_maps`` into ``derived``, the float32 arrays of the derived group
    (T1, T2star in ms, B1, M0, correlation, 0 where not matched:
    :func:`mrfengine.pipeline.conventional.match_maps`; see
    :data:`mrfengine.pipeline.derived.DERIVED_ARRAYS`), with the outside rule
    (:func:`mrfengine.masking.apply_outside_rule`): every array is 0 outside
    ``mask`` (the mask stage's); without a mask, nothing is.  A mask made from
    the series is stored with the maps (``brain_mask``, 1 inside, 0 outside),
    which ``mrfengine export`` writes and exports the maps under.  Persisting
    them is the runner's job (:func:`mrfengine.pipeline.run.run_subject`).

Slabs.  A stage also states how many neighbouring planes each output plane
depends on (:attr:`Stage.halo`, 0 for voxel- or slice-wise stages, ``None``
for one that needs the whole volume).  From it :func:`run_stages` runs a slab
read with a halo and crops it, so ``mrfengine batch`` can spread one subject
over several workers.  A stage that needs the whole subject before anything
else (:attr:`Stage.whole_subject`: the ``mask`` stage, since the mask is made
from the whole series) is not a stage with a ``None`` halo, which would keep
the subject in one piece: the runner runs it once on the whole subject
(:func:`run_subject_stages`, reading the series lazily, a few planes at a
time) before the slabs, and hands each slab its planes of the result; the
other stages then run slab by slab as before.  A slab's maps equal the whole volume's up to
floating-point rounding (the MP-PCA kernel's running sums start at the slab's
first plane); the batch's slab plan depends only on the subject's shape and
the pipeline, so reruns give the same bytes.

After the slabs.  ``register`` and ``segment`` need the whole brain
(:attr:`Stage.after_slabs`): they run once per subject on the ``derived``
arrays of all its planes, gathered (:func:`run_after_slabs`; in a batch, in
the subject's finalize task), with the :data:`SUBJECT_ARTIFACTS`.  They come
after ``write``, which is inserted before them when not named.

A pipeline is the ordered list of stage names with their options, from a TOML
table (:meth:`Pipeline.from_dict`) or ``--stages denoise,match``
(:meth:`Pipeline.from_stages`); ``mask`` is put first and ``write`` appended
when they are not named (``--stages mask,denoise,match`` names the mask stage
to give it options; it must come first).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from .._validate import check_float, check_name
from ..errors import ValidationError
from ..masking import BRAIN_MASK_SOURCE, MASK_METHOD, OUTSIDE_BRAIN_VALUE, apply_outside_rule, brain_mask_from_mrf
from ..sequence import Sequence

__all__ = [
    "Stage",
    "Pipeline",
    "STAGES",
    "INITIAL_ARTIFACTS",
    "slice_dictionaries",
    "run_stages",
    "pipeline_halo",
    "run_subject_stages",
    "VOLUME_AXES",
    "SUBJECT_ARTIFACTS",
    "run_after_slabs",
    "has_after_slabs",
]

#: Artifacts a run provides before the first stage.
INITIAL_ARTIFACTS = ("mrf", "mask", "sequence", "z0")

#: Artifacts the :attr:`Stage.after_slabs` stages also get, facts of the whole
#: subject: ``reference`` (name -> (Z, Y, X) image, e.g. ``T2w``), ``spacing_zyx``
#: (voxel size in mm), ``affine`` (4 x 4, NIfTI-style) and ``annotations``
#: (name -> (Z, Y, X) mask, e.g. ``lesion``).
SUBJECT_ARTIFACTS = ("reference", "spacing_zyx", "affine", "annotations")

#: Artifacts that are volumes, with the axis along which planes (slices) run;
#: :func:`run_stages` crops these when it drops a slab's halo.
VOLUME_AXES: Mapping[str, int] = MappingProxyType({"mrf": 1, "mask": 0, "mppca_sigma": 0, "mppca_rank": 0})

log = logging.getLogger(__name__)


StageFunction = Callable[..., tuple[dict[str, Any], dict[str, Any]]]


def _no_halo(options: Mapping[str, Any]) -> int:
    return 0


def _whole_volume(options: Mapping[str, Any]) -> None:
    """The stage needs the whole subject: the U-net's scale-free input is measured
    over the whole brain, so a slab would see another intensity level."""
    return None



@dataclass(frozen=True)
class Stage:
    """One named step: ``function(inputs, options, backend, n_threads=0) -> (outputs, info)``.

    Attributes
    ----------
    name : str
    function : callable
        Pure: reads ``inputs`` (the artifacts named in :attr:`inputs`),
        returns the artifacts named in :attr:`outputs` and a JSON-compatible
        ``info`` dict for the provenance (backend that ran, method, digests).
    inputs, outputs : tuple of str
        Artifact names.
    options : mapping
        The options the stage accepts, with their defaults.
    any_of : tuple of str
        Artifacts of which at least one must be produced before the stage;
        those present are passed too.
    optional : tuple of str
        Artifacts passed when an earlier stage made them (the unet stage:
        match's maps, for networks that take maps).
    choices : mapping
        Option name -> the values it may take, checked when a pipeline is
        built (a typo fails before any subject runs).
    checks : mapping
        Option name -> a function that returns the value checked (raising
        :class:`~mrfengine.errors.ValidationError`), for options whose values
        are not a short list (the unet stage's ``mc_samples``).
    halo : callable
        ``halo(options)``: planes on each side that one output plane depends on
        (0: plane-wise; ``None``: the stage needs the whole volume, so the
        subject is never split).  A stage with a halo must output only
        :data:`VOLUME_AXES` artifacts, which :func:`run_stages` can crop.
    whole_subject : bool
        The stage runs once on the whole subject before the slabs are planned
        (:func:`run_subject_stages`); its inputs may be lazily sliced arrays
        (the store's) and its volume outputs are cut into each slab's planes.
        Such stages come first in a pipeline and do not count in its halo.
    after_slabs : bool
        The stage runs once on the whole subject *after* the others, on the
        ``derived`` arrays of all its planes gathered (the ``register`` and
        ``segment`` stages: a registration and a segmentation need the whole
        brain); :func:`run_after_slabs`.  Such stages come after ``write``, and
        they also see the :data:`SUBJECT_ARTIFACTS`.
    after : tuple of str
        Stages that must run earlier in the pipeline (``register`` needs
        ``match``'s T1 map).
    requires : tuple of str
        Python modules the stage needs beyond mrfengine's dependencies
        (``ants``: the ``ants`` extra); a pipeline naming the stage is refused
        without them, before any subject runs.
    """

    name: str
    function: StageFunction
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    checks: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    halo: Callable[[Mapping[str, Any]], int | None] = _no_halo
    any_of: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    whole_subject: bool = False
    after_slabs: bool = False
    after: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()


# --------------------------------------------------------------------------- mask
def _mask(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    source = options["source"]
    stored = inputs["mask"]
    if source == "none":
        mask, made_from = None, "none"
    elif source == "auto" and stored is not None:
        mask, made_from = np.asarray(stored) > 0, BRAIN_MASK_SOURCE
    else:
        mask, made_from = brain_mask_from_mrf(inputs["mrf"], channel_axis=0), MASK_METHOD
    info: dict[str, Any] = {"source": made_from, "option": source}
    if mask is not None:
        info.update(voxels=int(np.count_nonzero(mask)), fraction=round(float(np.mean(mask)), 6))
        if made_from == MASK_METHOD:
            log.info("brain mask made from the series: %d voxels (%.1f%% of the field of view)",
                     info["voxels"], 100.0 * info["fraction"])
    return {"mask": mask, "mask_source": made_from}, info


# --------------------------------------------------------------------------- denoise
def _denoise(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    from ..denoise import mppca

    result = mppca(inputs["mrf"], channel_axis=0, mask=inputs["mask"], backend=backend, n_threads=n_threads,
                   patch_radius=options["patch_radius"], estimator=options["estimator"])
    info = {"backend": result.backend, "estimator": result.estimator, "window": list(result.window),
            "arrays": ["mppca_sigma", "mppca_rank"]}
    # the noise level and signal rank per voxel, stored by write (0 outside the mask: NaN and -1 there)
    return {"mrf": np.asarray(result.denoised, dtype=np.float32),
            "mppca_sigma": np.nan_to_num(np.asarray(result.sigma, dtype=np.float32), nan=0.0),
            "mppca_rank": np.maximum(np.asarray(result.n_components), 0).astype(np.float32)}, info


# --------------------------------------------------------------------------- match
@functools.lru_cache(maxsize=8)
def _dictionaries_by_digest(digest: str, sequence_json: str):
    from ..dictionary import SliceDictionaries

    return SliceDictionaries(Sequence.from_dict(json.loads(sequence_json)))


def slice_dictionaries(sequence: Sequence):
    """The :class:`~mrfengine.dictionary.SliceDictionaries` of ``sequence``, shared per
    process: one instance per ``sequence.digest()`` (LRU cache of 8), so each
    slot's dictionary is simulated (or read from the disk cache) once per site."""
    # The JSON is a function of the digest; it rides along only to rebuild the sequence.
    return _dictionaries_by_digest(sequence.digest(), json.dumps(sequence.to_dict(), sort_keys=True))


def _denoise_halo(options: Mapping[str, Any]) -> int:
    from ..denoise._common import parse_patch_radius

    # An output plane averages the windows that hold it; those reach r planes further.
    return 2 * int(parse_patch_radius(options["patch_radius"])[0])


def _match(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    from .conventional import match_volume

    result, info = match_volume(inputs["mrf"], slice_dictionaries(inputs["sequence"]), slice_axis=1, axis=0,
                                z0=inputs.get("z0", 0), mask=inputs["mask"], n_threads=n_threads, backend=backend,
                                method=options["method"], rank=options["rank"])
    return {"maps": result}, info


# --------------------------------------------------------------------------- unet
#: Name (after the stage's prefix) of an output's uncertainty array, ``<output>_uncertainty``.
_UNCERTAINTY = "_uncertainty"
#: Name (after the stage's prefix) of the unet stage's physics-consistency array.
CONSISTENCY_ARRAY = "physics_consistency"


def _unet(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    from ..nn import check_card
    from ..nn.predict import network_maps, open_network, resolve_model_path, torch_device, torch_threads

    path = str(resolve_model_path(str(options["model"]), what="unet stage option 'model'"))
    device = torch_device("auto" if backend in ("auto", "cupy", "numba-cuda") else "cpu")
    model = open_network(path, device=device, trust_model_code=options.get("trust_model_code") is True, cached=True)
    card = model.card
    sequence: Sequence = inputs["sequence"]
    mask = inputs["mask"]
    mask_source = inputs.get("mask_source", BRAIN_MASK_SOURCE)
    if card.config.input_kind == "maps":
        from .conventional import match_maps

        maps = inputs.get("maps")
        if maps is None:
            raise ValidationError(f"{path}: network {card.config.name} takes maps "
                                  f"({', '.join(card.config.input_names)}); run 'match' before 'unet'")
        given = match_maps(maps)  # 0 where not matched, as the write stage stores them
        volume = np.stack([given[n] for n in card.config.input_names])
        check_card(card, channels=volume.shape[0], input_kind="maps", source=path)
    else:
        volume = inputs["mrf"]
        check_card(card, channels=volume.shape[0], sequence=sequence, input_kind="mrf", source=path)
    with torch_threads(n_threads if device == "cpu" else None):
        # the mask stage's brain mask, or the whole field of view (its source "none")
        net = network_maps(volume, model, sequence=sequence, mask=mask, mask_source=mask_source,
                           brain_mask=mask is not None, channel_axis=0, batch_size=int(options["batch_size"]),
                           precision=str(options["precision"]), device=device, tta=str(options["tta"]),
                           input_scale=str(options["input_scale"]), mc_samples=options["mc_samples"],
                           mc_seed=options["mc_seed"], consistency=bool(options["consistency"]),
                           consistency_option="unet option consistency")
    prefix = str(options["prefix"])
    out = dict(net.maps)
    info = net.info()
    if net.uncertainty is not None:
        out.update({name + _UNCERTAINTY: value for name, value in net.uncertainty.items()})
        info["uncertainty"] = {"mc_samples": net.prediction.mc_samples, "mc_seed": net.prediction.mc_seed,
                               "arrays": [prefix + name + _UNCERTAINTY for name in net.uncertainty]}
    if net.consistency is not None:
        from ..nn.consistency import consistency_fields

        out[CONSISTENCY_ARRAY] = net.consistency
        info["physics_consistency"] = {"array": prefix + CONSISTENCY_ARRAY, **consistency_fields()}
    if net.warning:
        log.warning("unet: %s", net.warning)
    return {"nn_maps": {prefix + k: np.asarray(v, np.float32) for k, v in out.items()}}, info


def _uncertainty_check(name: str) -> Callable[[Any], int]:
    """The option check ``name`` of :mod:`mrfengine.nn.uncertainty` (the one definition), imported
    when it runs: torch is optional, and a pipeline without a unet stage never needs it."""

    def check(value: Any) -> int:
        from ..nn import uncertainty

        return getattr(uncertainty, name)(value)

    check.__name__ = check.__qualname__ = name
    return check


# --------------------------------------------------------------------------- write
def _write(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    derived: dict[str, np.ndarray] = {}
    result = inputs.get("maps")
    if result is not None:
        from .conventional import match_maps

        derived.update(match_maps(result))  # 0 where not matched (mrfengine.masking.fill_not_estimated)
    nn_maps = inputs.get("nn_maps") or {}
    clash = sorted(set(derived) & set(nn_maps))
    if clash:
        raise ValidationError(f"both 'match' and 'unet' produce {clash}; give the unet stage a prefix "
                              f"(e.g. [unet] prefix = \"unet_\")")
    derived.update(nn_maps)
    for name in ("mppca_sigma", "mppca_rank"):  # the denoise stage's noise maps (mrfengine.maps.PIPELINE_MAPS)
        if inputs.get(name) is not None:
            if name in derived:
                raise ValidationError(f"a stage produced {name!r}, the name of the denoise stage's map; "
                                      "give the unet stage a prefix")
            derived[name] = np.asarray(inputs[name], dtype=np.float32)
    # The outside rule (mrfengine.masking): every map, conventional or network, 0 outside the brain mask.
    mask = inputs.get("mask")
    source = "none" if mask is None else inputs.get("mask_source", BRAIN_MASK_SOURCE)
    if source == MASK_METHOD:
        if "brain_mask" in derived:
            raise ValidationError("a stage produced 'brain_mask', the name of the mask made from the series; "
                                  "give the unet stage a prefix")
        derived["brain_mask"] = np.asarray(mask, dtype=np.float32)  # stored with the maps it was used for
    derived = {k: np.ascontiguousarray(v) for k, v in apply_outside_rule(derived, mask).items()}
    return {"derived": derived}, {"brain_mask": source,
                                  "outside_brain_value": None if mask is None else OUTSIDE_BRAIN_VALUE}


# --------------------------------------------------------------------------- register
#: How the register stage resamples a derived array, by name: masks nearest, probabilities and
#: quality maps linearly (then kept in [0, 1]), quantitative maps with a cubic B-spline (the
#: paper's) where all their neighbours are estimated and nearest at the edge of the estimate.
_NEAREST = ("brain_mask", "mppca_rank")
_LINEAR_KINDS = ("probability", "fraction", "quality", "mask")


def _resample_order(name: str) -> int:
    from ..maps import derived_spec

    if name in _NEAREST:
        return 0
    spec = derived_spec(name.rpartition("_uncertainty")[0] if name.endswith("_uncertainty") else name)
    if spec is None:
        return 1
    return 3 if spec.kind == "quantitative" and not name.endswith("_uncertainty") else 1


def _register(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    from ..maps import derived_spec
    from ..masking import has_estimate
    from ..registration import register_to_reference

    derived = dict(inputs["derived"])
    name = str(options["reference"])
    references = inputs.get("reference") or {}
    if name not in references:
        raise ValidationError(f"the subject has no reference image {name!r} (reference/{name}) to register to; "
                              f"import one with --reference {name}=FILE, or drop the register stage")
    if "T1" not in derived:
        raise ValidationError("the register stage registers the matched T1 map; run 'match' before it")
    reference = np.asarray(references[name], dtype=np.float32)
    mask = inputs.get("mask")
    moving = np.asarray(derived["T1"], dtype=np.float32)
    region = np.asarray(mask, bool) if mask is not None else moving > 0
    reg = register_to_reference(moving, reference, inputs["spacing_zyx"], mask=region,
                                phase_encoding=str(options["phase_encoding"]), grid_mm=float(options["grid_mm"]))
    shape = moving.shape
    # the brain on the reference grid: the mask the maps were made in, moved with them
    new_mask = None if mask is None else reg.resample(region.astype(np.float32), order=0) > 0.5
    where = new_mask
    # cubic only where every neighbour is estimated (else the zeros outside would ring in)
    inside = reg.resample(has_estimate(moving).astype(np.float32), order=1, where=where) >= 0.999
    out: dict[str, np.ndarray] = {}
    for key, value in derived.items():
        value = np.asarray(value, dtype=np.float32)
        order = _resample_order(key)
        if order == 3:
            cubic = reg.resample(value, order=3, where=where)
            near = reg.resample(value, order=0, where=where)
            moved = np.where(inside, np.maximum(cubic, 0.0), near)
        else:
            moved = reg.resample(value, order=order, where=where)
            spec = derived_spec(key) if order == 1 else None
            if spec is not None and spec.kind in _LINEAR_KINDS and spec.unit == "1":
                moved = np.clip(moved, 0.0, 1.0)  # not sigma (arbitrary) nor T1_uncertainty (ms)
        out[key] = moved.astype(np.float32)
    if new_mask is not None:
        # the mask moved with the maps is theirs (export applies and names it), whatever its source
        out["brain_mask"] = new_mask.astype(np.float32)
        out = apply_outside_rule(out, new_mask)
    if reg.displacement is not None:
        if "displacement" in out:
            raise ValidationError("a stage produced 'displacement', the register stage's field; rename it")
        out["displacement"] = reg.displacement  # the transform, over the whole field of view
    info = {**reg.to_dict(), "reference": f"reference/{name}", "space": f"reference/{name}",
            "resampling": "cubic B-spline (maps), linear (probabilities), nearest (masks)",
            "arrays": sorted(out), "shape_zyx": list(shape)}
    return {"derived": out, "mask": new_mask}, info


# --------------------------------------------------------------------------- segment
def _segment(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str, n_threads: int = 0):
    from ..segmentation import segment_tissues

    derived = dict(inputs["derived"])
    if "T1" not in derived:
        raise ValidationError("the segment stage segments the matched T1 map; run 'match' before it")
    mask = inputs.get("mask")
    t1 = np.asarray(derived["T1"], dtype=np.float32)
    region = np.asarray(mask, bool) if mask is not None else t1 > 0
    priors = None if options["priors"] == "none" else str(options["priors"])
    seg = segment_tissues(t1, region, inputs["spacing_zyx"], t2star_ms=derived.get("T2star"), m0=derived.get("M0"),
                          affine=inputs.get("affine"), priors=priors, n_threads=n_threads)
    lesion_option = str(options["lesion"])
    annotations = inputs.get("annotations") or {}
    lesion = None
    if lesion_option == "annotation" and "lesion" not in annotations:
        raise ValidationError("segment option lesion = 'annotation', but the subject has no annotations/lesion")
    if lesion_option in ("auto", "annotation") and "lesion" in annotations:
        lesion = np.asarray(annotations["lesion"]) > 0
        if lesion.shape != t1.shape:
            raise ValidationError(f"annotations/lesion has shape {lesion.shape}; the maps {t1.shape}")
    probs = {k: np.asarray(v, dtype=np.float32) for k, v in seg.probabilities.items()}
    probs["NAWM"] = probs["WM"] if lesion is None else np.where(lesion, 0.0, probs["WM"]).astype(np.float32)
    clash = sorted(set(probs) & set(derived))
    if clash:
        raise ValidationError(f"both 'segment' and an earlier stage produce {clash}; give the unet stage a prefix "
                              f"(e.g. [unet] prefix = \"unet_\")")
    derived.update(apply_outside_rule(probs, mask))
    info = {**seg.info, "lesion": "annotations/lesion" if lesion is not None else "none",
            "NAWM": "WM outside annotations/lesion" if lesion is not None else "WM (no lesion mask)"}
    return {"derived": derived}, info


#: The known stages by name.
STAGES: Mapping[str, Stage] = MappingProxyType({
    "mask": Stage("mask", _mask, ("mrf", "mask"), ("mask", "mask_source"), MappingProxyType({"source": "auto"}),
                  choices=MappingProxyType({"source": ("auto", "series", "none")}), whole_subject=True),
    "denoise": Stage("denoise", _denoise, ("mrf", "mask"), ("mrf", "mppca_sigma", "mppca_rank"),
                     MappingProxyType({"patch_radius": 2, "estimator": "mp"}),
                     choices=MappingProxyType({"estimator": ("mp", "exp2")}),
                     halo=_denoise_halo),
    "match": Stage("match", _match, ("mrf", "mask", "sequence", "z0"), ("maps",),
                   MappingProxyType({"method": "auto", "rank": None}),
                   choices=MappingProxyType({"method": ("auto", "brute", "structured", "group")})),
    "unet": Stage("unet", _unet, ("mrf", "mask", "sequence"), ("nn_maps",),
                  MappingProxyType({"model": "default", "precision": "float32", "batch_size": 4, "prefix": "",
                                    "tta": "none", "trust_model_code": False, "input_scale": "card",
                                    "mc_samples": 0, "mc_seed": 0, "consistency": False}),
                  choices=MappingProxyType({"precision": ("float32", "bfloat16"),
                                            "tta": ("none", "flip", "dihedral"),
                                            "input_scale": ("card", "subject", "absolute"),
                                            "trust_model_code": (False, True),
                                            "consistency": (False, True)}),
                  checks=MappingProxyType({"mc_samples": _uncertainty_check("check_mc_samples"),
                                           "mc_seed": _uncertainty_check("check_mc_seed")}),
                  optional=("maps", "mask_source"), halo=_whole_volume),
    "write": Stage("write", _write, ("mask",), ("derived",), any_of=("maps", "nn_maps"),
                   optional=("mask_source", "mppca_sigma", "mppca_rank")),
    "register": Stage("register", _register, ("derived", "mask", "reference", "spacing_zyx"), ("derived", "mask"),
                      MappingProxyType({"reference": "T2w", "phase_encoding": "j", "grid_mm": 2.0}),
                      choices=MappingProxyType({"phase_encoding": ("j", "i", "k", "none")}),
                      checks=MappingProxyType({"reference": lambda v: check_name(v, "register option reference"),
                                               "grid_mm": lambda v: check_float(v, "grid_mm", minimum=0.0,
                                                                                exclusive_minimum=True)}),
                      after_slabs=True, after=("match",), requires=("ants",), halo=_whole_volume),
    "segment": Stage("segment", _segment, ("derived", "mask", "spacing_zyx"), ("derived",),
                     MappingProxyType({"priors": "mni152", "lesion": "auto"}),
                     choices=MappingProxyType({"priors": ("mni152", "none"),
                                               "lesion": ("auto", "annotation", "none")}),
                     optional=("affine", "annotations"), after_slabs=True, after=("match",), requires=("ants",),
                     halo=_whole_volume),
})


# --------------------------------------------------------------------------- pipeline
def _parse_stage_names(stages: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(stages, str):
        names = [s.strip() for s in stages.split(",") if s.strip()]
    elif isinstance(stages, (list, tuple)) and all(isinstance(s, str) for s in stages):
        names = [s.strip() for s in stages]
    else:
        raise ValidationError(f"stages must be a comma-separated string or a list of stage names; got {stages!r}")
    if not names:
        raise ValidationError(f"stages must name at least one stage of {sorted(STAGES)}; got {stages!r}")
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ValidationError(f"unknown stage(s) {unknown}; known stages: {sorted(STAGES)}")
    dup = sorted({s for s in names if names.count(s) > 1})
    if dup:
        raise ValidationError(f"each stage may appear once; {dup} appear(s) more often in {names}")
    if "write" not in names:
        first_after = next((i for i, n in enumerate(names) if STAGES[n].after_slabs), len(names))
        names.insert(first_after, "write")
    w = names.index("write")
    if any(not STAGES[n].after_slabs for n in names[w + 1:]) or any(STAGES[n].after_slabs for n in names[:w]):
        later = sorted(n for n in STAGES if STAGES[n].after_slabs)
        raise ValidationError(f"'write' must be the last stage (only {later} may follow it, after every other "
                              f"stage); got {names}")
    if "mask" not in names:
        names.insert(0, "mask")  # the brain mask every stage runs in: source "auto"
    elif names[0] != "mask":
        raise ValidationError(f"'mask' must be the first stage (every later stage runs in its mask); got {names}")
    return tuple(names)


def _check_flow(names: tuple[str, ...]) -> None:
    available = set(INITIAL_ARTIFACTS)
    for k, name in enumerate(names):
        stage = STAGES[name]
        if stage.after_slabs:
            available.update(SUBJECT_ARTIFACTS)
        absent = [m for m in stage.requires if importlib.util.find_spec(m) is None]
        if absent:
            raise ValidationError(f"stage {name!r} needs the Python module(s) {absent}, which are not installed: "
                                  f"pip install 'mrfengine[ants]' (antspyx)")
        missing_stages = [a for a in stage.after if a not in names[:k]]
        if missing_stages:
            raise ValidationError(f"stage {name!r} needs {' and '.join(repr(m) for m in missing_stages)} before it; "
                                  f"e.g. --stages {','.join(['denoise', 'match', name])}")
        missing = [i for i in stage.inputs if i not in available]
        if missing:
            makers = sorted({s.name for s in STAGES.values() if set(missing) & set(s.outputs)})
            raise ValidationError(
                f"stage {name!r} needs input(s) {missing}, which no earlier stage produces (available: "
                f"{sorted(available)}); add {' or '.join(repr(m) for m in makers)} before {name!r}"
            )
        if stage.any_of and not set(stage.any_of) & available:
            makers = sorted({s.name for s in STAGES.values() if set(stage.any_of) & set(s.outputs)})
            raise ValidationError(
                f"stage {name!r} needs one of {list(stage.any_of)}, which no earlier stage produces; "
                f"add {' or '.join(repr(m) for m in makers)} before {name!r}"
            )
        available.update(stage.outputs)


def _resolve_options(names: tuple[str, ...], options: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    options = dict(options or {})
    extra = sorted(set(options) - set(names))
    if extra:
        raise ValidationError(f"options given for stage(s) {extra} that the pipeline does not run ({list(names)})")
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        given = options.get(name, {})
        if not isinstance(given, Mapping):
            raise ValidationError(f"options of stage {name!r} must be a table; got {given!r}")
        allowed = STAGES[name].options
        bad = sorted(set(given) - set(allowed))
        if bad:
            raise ValidationError(f"stage {name!r} has no option(s) {bad}; it accepts {sorted(allowed) or 'none'}")
        resolved = {**allowed, **given}
        for key, values in STAGES[name].choices.items():
            if resolved[key] not in values:
                raise ValidationError(f"option {key!r} of stage {name!r} must be one of {list(values)}; "
                                      f"got {resolved[key]!r}")
        for key, check in STAGES[name].checks.items():
            try:
                check(resolved[key])
            except ValidationError as exc:
                raise ValidationError(f"option {key!r} of stage {name!r}: {exc}") from None
        try:
            json.dumps(resolved)
        except TypeError as exc:
            raise ValidationError(f"options of stage {name!r} must be plain TOML/JSON values; got {given!r}") from exc
        out[name] = resolved
    return out


@dataclass(frozen=True)
class Pipeline:
    """An ordered, validated list of stages and their options.

    Attributes
    ----------
    name : str
        The derived group the run writes (``subjects/<sub>/derived/<name>/``):
        letters, digits, ``_``, ``.``, ``-``.
    stages : tuple of str
        Stage names in order, ending with ``write``.
    options : dict
        Stage name -> its options with defaults filled in.

    Use :meth:`from_stages` or :meth:`from_dict`; the constructor checks the
    same rules (unknown stage or option, an input no earlier stage produces).
    """

    name: str
    stages: tuple[str, ...]
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "pipeline name (it names the derived group)")
        names = _parse_stage_names(self.stages)
        _check_flow(names)
        object.__setattr__(self, "stages", names)
        object.__setattr__(self, "options", _resolve_options(names, self.options))

    @classmethod
    def from_stages(cls, stages: str | list[str] | tuple[str, ...], *, name: str | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> Pipeline:
        """``Pipeline.from_stages("denoise,match")``; the name defaults to the stage
        names joined by ``-`` (without ``mask`` and ``write``, which every pipeline
        runs), e.g. ``denoise-match``."""
        names = _parse_stage_names(stages)
        _check_flow(names)  # before the default name, so `--stages write` says what is missing
        if name is None:
            name = "-".join(s for s in names if s not in ("mask", "write"))
        return cls(name, names, options or {})

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> Pipeline:
        """A pipeline from a parsed TOML document::

            [pipeline]
            name = "mppca-match"           # optional
            stages = ["denoise", "match"]  # or "denoise,match"
            [denoise]                      # optional, one table per stage
            patch_radius = 2

        The ``pipeline`` table may also be the document itself (keys ``name``,
        ``stages`` and the stage tables at the top level).

        Raises
        ------
        ValidationError
            Missing ``stages``, unknown keys, stages or options, or a stage
            whose input no earlier stage produces.
        """
        if not isinstance(config, Mapping):
            raise ValidationError(f"a pipeline configuration must be a table; got {type(config).__name__}")
        doc = dict(config)
        head = doc.pop("pipeline", None)
        if head is not None:
            if not isinstance(head, Mapping):
                raise ValidationError(f"[pipeline] must be a table; got {head!r}")
            if set(head) & set(doc):
                raise ValidationError(f"keys {sorted(set(head) & set(doc))} appear both in [pipeline] and at the top")
            doc.update(head)
        if "stages" not in doc:
            raise ValidationError("a pipeline configuration needs 'stages', e.g. stages = [\"denoise\", \"match\"]")
        stages = doc.pop("stages")
        name = doc.pop("name", None)
        bad = sorted(k for k in doc if k not in STAGES)
        if bad:
            raise ValidationError(f"unknown key(s) {bad} in the pipeline configuration; expected 'name', 'stages' "
                                  f"and stage tables of {sorted(STAGES)}")
        return cls.from_stages(stages, name=name, options=doc)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible description (stored in the derived group's provenance)."""
        return {"name": self.name, "stages": list(self.stages),
                "options": {k: dict(v) for k, v in self.options.items()}}


def pipeline_halo(pipeline: Pipeline) -> int | None:
    """Planes of input needed on each side of a slab for exact output: the sum
    of the stages' halos, or ``None`` if a stage needs the whole volume (the
    :attr:`Stage.whole_subject` stages run before the slabs and do not count)."""
    total = 0
    for name in pipeline.stages:
        if STAGES[name].whole_subject or STAGES[name].after_slabs:
            continue
        h = STAGES[name].halo(pipeline.options[name])
        if h is None:
            return None
        total += int(h)
    return total


def _crop_planes(state: dict[str, Any], drop_lo: int, drop_hi: int) -> None:
    if drop_lo == 0 and drop_hi == 0:
        return
    for key, axis in VOLUME_AXES.items():
        value = state.get(key)
        if value is None:
            continue
        index = [slice(None)] * value.ndim
        index[axis] = slice(drop_lo, value.shape[axis] - drop_hi)
        state[key] = value[tuple(index)]
    state["z0"] = int(state.get("z0", 0) or 0) + drop_lo


def _run_one(name: str, options: Mapping[str, Any], state: Mapping[str, Any], backend: str, n_threads: int):
    stage = STAGES[name]
    given = {k: state[k] for k in stage.inputs}
    given.update({k: state[k] for k in stage.any_of + stage.optional if k in state})
    return stage.function(given, options, backend, n_threads=n_threads)


def run_subject_stages(pipeline: Pipeline, artifacts: Mapping[str, Any], *, backend: str = "auto",
                       n_threads: int = 0, clock: Callable[[], float] | None = None,
                       ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run the :attr:`Stage.whole_subject` stages of ``pipeline`` (the ``mask`` stage) on a whole subject.

    The runner calls it once per subject before it plans slabs, and gives
    each slab its planes of the outputs and the returned ``info`` as
    :func:`run_stages`' ``subject_done``.

    Parameters
    ----------
    pipeline : Pipeline
    artifacts : mapping
        The whole subject's :data:`INITIAL_ARTIFACTS`; ``mrf`` may be a lazily
        sliced array (the store's), read a few planes at a time.

    Returns
    -------
    tuple
        ``(outputs, timings_s, info)`` as :func:`run_stages` gives them, ``outputs``
        holding just the artifacts these stages made (``mask``, ``mask_source``).
    """
    return _run_selected(pipeline, dict(artifacts), lambda stage: stage.whole_subject, backend, n_threads, clock)[1:]


def _run_selected(pipeline: Pipeline, state: dict[str, Any], selected: Callable[[Stage], bool], backend: str,
                  n_threads: int, clock: Callable[[], float] | None,
                  ) -> tuple[dict[str, Any], dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run the stages of ``pipeline`` that ``selected`` picks, in order, on ``state`` (updated in place).
    Returns ``(state, outputs, timings_s, info)``, ``outputs`` the artifacts they made."""
    import time

    clock = clock or time.perf_counter
    outputs: dict[str, Any] = {}
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    for name in pipeline.stages:
        if not selected(STAGES[name]):
            continue
        t0 = clock()
        made, info[name] = _run_one(name, pipeline.options[name], state, backend, n_threads)
        timings[name] = clock() - t0
        state.update(made)
        outputs.update(made)
    return state, outputs, timings, info


def run_stages(pipeline: Pipeline, artifacts: Mapping[str, Any], *, backend: str = "auto", n_threads: int = 0,
               crop: tuple[int, int] = (0, 0), subject_done: Mapping[str, Any] | None = None,
               clock: Callable[[], float] | None = None) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run every stage of ``pipeline`` on ``artifacts`` (the :data:`INITIAL_ARTIFACTS`).

    Parameters
    ----------
    pipeline : Pipeline
    artifacts : mapping
        ``mrf``, ``mask``, ``sequence`` and optionally ``z0`` (default 0).
    backend : str
        Backend of the kernels (``auto`` picks).
    n_threads : int
        CPU threads per kernel (0: all the process may use).
    crop : (int, int)
        Halo planes read below and above the planes wanted (a slab of a
        batch).  Each stage sees just the halo the stages from it onwards
        still need (:attr:`Stage.halo`); the result covers only the planes
        wanted.  Must be at least the halo of the stages that follow, on each
        side that is not the volume's edge (the caller's job).
    subject_done : mapping, optional
        Stage name -> info of the :attr:`Stage.whole_subject` stages the
        caller ran on the whole subject (:func:`run_subject_stages`), whose
        outputs ``artifacts`` hold for these planes; they are not run again.
        Without it, ``artifacts`` must be the whole subject (no ``crop``), and
        every stage runs here.

    Returns
    -------
    artifacts : dict
        All artifacts after the last stage (``derived`` among them).
    timings_s : dict
        Stage name -> seconds.
    info : dict
        Stage name -> the stage's provenance info.
    """
    import time

    clock = clock or time.perf_counter
    state = dict(artifacts)
    state.setdefault("z0", 0)
    halos = []
    for name in pipeline.stages:
        h = None if STAGES[name].after_slabs else STAGES[name].halo(pipeline.options[name])
        halos.append(0 if h is None else int(h))
    extra_lo, extra_hi = (int(c) for c in crop)
    if min(extra_lo, extra_hi) < 0:
        raise ValidationError(f"crop must be two planes counts >= 0; got {crop!r}")
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    for k, name in enumerate(pipeline.stages):
        if STAGES[name].after_slabs:
            break  # run once on the gathered subject: run_after_slabs
        if STAGES[name].whole_subject:
            if subject_done is not None and name in subject_done:
                info[name] = subject_done[name]
                continue
            if extra_lo or extra_hi or state["z0"]:
                raise ValidationError(f"stage {name!r} needs the whole subject; run it first "
                                      f"(run_subject_stages) and pass its info as subject_done")
        needed = sum(halos[k:])
        drop_lo, drop_hi = max(0, extra_lo - needed), max(0, extra_hi - needed)
        _crop_planes(state, drop_lo, drop_hi)
        extra_lo, extra_hi = extra_lo - drop_lo, extra_hi - drop_hi
        t0 = clock()
        outputs, stage_info = _run_one(name, pipeline.options[name], state, backend, n_threads)
        timings[name] = clock() - t0
        info[name] = stage_info
        state.update(outputs)
    if extra_lo or extra_hi:
        raise ValidationError(f"the last stage {pipeline.stages[-1]!r} has a halo; a pipeline must end with "
                              f"plane-wise stages")
    return state, timings, info


def has_after_slabs(pipeline: Pipeline) -> bool:
    """Whether ``pipeline`` has :attr:`Stage.after_slabs` stages (``register``, ``segment``)."""
    return any(STAGES[n].after_slabs for n in pipeline.stages)


def run_after_slabs(pipeline: Pipeline, state: Mapping[str, Any], subject: Mapping[str, Any], *,
                    backend: str = "auto", n_threads: int = 0, clock: Callable[[], float] | None = None,
                    ) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run the :attr:`Stage.after_slabs` stages of ``pipeline`` on a whole subject.

    Parameters
    ----------
    pipeline : Pipeline
    state : mapping
        The whole subject after the other stages: ``derived`` (its arrays,
        all planes), ``mask`` (the whole brain mask or None) and ``mask_source``.
    subject : mapping
        The :data:`SUBJECT_ARTIFACTS` (``reference``, ``spacing_zyx``,
        ``affine``, ``annotations``).

    Returns
    -------
    tuple
        ``(state, timings_s, info)`` as :func:`run_stages`: ``state["derived"]``
        the arrays to store.
    """
    state, _, timings, info = _run_selected(pipeline, {**dict(subject), **dict(state)},
                                            lambda stage: stage.after_slabs, backend, n_threads, clock)
    return state, timings, info
