"""The one registry of mrfengine's maps: name, unit, description, kind, BIDS naming.

Every table that names a map's unit or description (the cohort's ground truth
:data:`mrfengine.io.cohort.TRUTH_SPECS`, the batch's derived arrays
:data:`mrfengine.pipeline.derived.DERIVED_ARRAYS`, the BIDS names of ``mrfengine
match`` :func:`mrfengine.io.bids.match_file`, the exporter's names
:func:`mrfengine.io.exporter.export_file`, ``mrfengine predict``'s file names
:func:`mrfengine.io.bids.network_file` and the paper's network outputs
:func:`mrfengine.nn.configs.paper_outputs`) is derived from here, so a unit is
spelled one way everywhere:

=============  ==============================================================
unit           meaning
=============  ==============================================================
``ms``         milliseconds (relaxation times in the store, in memory, on cards)
``s``          seconds (relaxation times in exported BIDS files)
``1``          dimensionless: fractions, probabilities, B1+ factor, correlations
``arbitrary``  arbitrary units (MRF magnitudes, M0, images)
``label``      integer labels
``voxel``      displacements in voxels
=============  ==============================================================

Maps of one name mean different things by source (``truth/GM`` is a volume
fraction, the network's ``GM`` a probability, ``T1`` of dictionary matching the
best atom's parameter), hence one table per source: :data:`TRUTH_MAPS`,
:data:`MATCH_MAPS`, :data:`NETWORK_MAPS`, plus :data:`OTHER_MAPS` (the series,
masks, uncertainty and physics consistency).  A name has one unit across all
of them (``tests/test_maps.py``).

This module imports nothing from the package: any layer may use it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Mapping

from .errors import ValidationError

__all__ = [
    "UNITS", "MS", "SECOND", "DIMENSIONLESS", "ARBITRARY", "LABEL", "VOXEL", "KINDS",
    "MapSpec", "TRUTH_MAPS", "MATCH_MAPS", "NETWORK_MAPS", "OTHER_MAPS", "PIPELINE_MAPS",
    "UNCERTAINTY_SUFFIX", "uncertainty_spec", "derived_spec",
]

MS = "ms"
SECOND = "s"
DIMENSIONLESS = "1"
ARBITRARY = "arbitrary"
LABEL = "label"
VOXEL = "voxel"
#: The unit words mrfengine writes (store attributes, cards, sidecars).
UNITS = (MS, SECOND, DIMENSIONLESS, ARBITRARY, LABEL, VOXEL)

#: What a map is: a physical parameter, a volume fraction (truth), a
#: probability (a network's segmentation), an integer label map, a binary
#: mask, an image (arbitrary intensity), a displacement, a quality measure
#: (a correlation or a standard deviation).
KINDS = ("quantitative", "fraction", "probability", "label", "mask", "image", "displacement", "quality")


@dataclass(frozen=True)
class MapSpec:
    """One map: what it is and how it is named and scaled on the way out.

    Attributes
    ----------
    name : str
        Array name (``T1``, ``GM``, ``lesion_id``).
    unit : str
        Unit in the store, in memory and on model cards (one of :data:`UNITS`).
    description : str
        One line; written as the array's ``description`` attribute or a
        sidecar's ``Description``.
    kind : str
        One of :data:`KINDS`.
    bids_suffix : str
        Suffix of the exported file: BIDS's own where BIDS has one (``T1map``,
        ``TB1map``, ``probseg``, ``dseg``, ``mask``), else mrfengine's
        (``correlation``, ``noise``, ``rank``, ``displacement``,
        ``consistency``, ``MRF``; :data:`mrfengine.io.bids.NONSTANDARD_SUFFIXES`,
        listed in the derivative's ``.bidsignore``); empty: the name, letters
        and digits only.
    bids_label : str
        Value of the ``label-`` entity (``""``: none).
    bids_unit : str
        Unit of the exported values (``s`` for relaxation times).
    scale_to_bids : float
        Factor from :attr:`unit` to :attr:`bids_unit` (ms to s: 1e-3).
    """

    name: str
    unit: str
    description: str
    kind: str
    bids_suffix: str = ""
    bids_label: str = ""
    bids_unit: str = ""
    scale_to_bids: float = 1.0

    def __post_init__(self) -> None:
        if self.unit not in UNITS or (self.bids_unit and self.bids_unit not in UNITS):
            raise ValidationError(f"map {self.name}: units must be among {UNITS}; got {self.unit!r}, {self.bids_unit!r}")
        if self.kind not in KINDS:
            raise ValidationError(f"map {self.name}: kind must be one of {KINDS}; got {self.kind!r}")
        if not self.bids_unit:
            object.__setattr__(self, "bids_unit", self.unit)

    @property
    def suffix(self) -> str:
        """:attr:`bids_suffix`, or the name in letters and digits when it is empty."""
        return self.bids_suffix or "".join(c for c in self.name if c.isalnum()) or "x"

    def bids_name(self, desc: str = "") -> str:
        """The BIDS name part after the subject's entities: ``desc-<desc>_T1map``,
        ``label-GM_desc-<desc>_probseg``, ``desc-<desc>_correlation`` (``desc``
        letters and digits, the producer; empty: no ``desc-`` entity)."""
        parts = ([f"label-{self.bids_label}"] if self.bids_label else []) + ([f"desc-{desc}"] if desc else [])
        return "_".join(parts + [self.suffix])


def _relax(name: str, description: str) -> MapSpec:
    return MapSpec(name, MS, description, "quantitative", f"{name}map", bids_unit=SECOND, scale_to_bids=1e-3)


def _fraction(name: str, description: str) -> MapSpec:
    return MapSpec(name, DIMENSIONLESS, description, "fraction", "probseg", bids_label=name)


def _probability(name: str, description: str) -> MapSpec:
    return MapSpec(name, DIMENSIONLESS, description, "probability", "probseg", bids_label=name)


def _frozen(*specs: MapSpec) -> Mapping[str, MapSpec]:
    return MappingProxyType({s.name: s for s in specs})


_CSF_RULE = "PD-weighted mean over the brain-tissue compartments (CSF's value where CSF dominates)"

#: The cohort's ground truth, ``truth/<name>`` (``docs/cohort-format.md``).
TRUTH_MAPS: Mapping[str, MapSpec] = _frozen(
    _relax("T1", f"T1: {_CSF_RULE}"),
    _relax("T2star", f"T2*: {_CSF_RULE}"),
    MapSpec("B1", DIMENSIONLESS, "B1+ flip-angle scale factor (fraction of nominal)", "quantitative", "TB1map"),
    MapSpec("PD", DIMENSIONLESS, "proton density relative to water (sum of fraction x compartment PD)",
            "quantitative", "PDmap"),
    _fraction("GM", "grey-matter volume fraction (cortical and deep)"),
    _fraction("WM", "normal-appearing white-matter volume fraction (lesions excluded)"),
    _fraction("CSF", "cerebrospinal-fluid volume fraction"),
    _fraction("lesion", "MS-lesion volume fraction"),
    _fraction("DGM", "deep grey-matter volume fraction (a part of GM)"),
    # a discrete segmentation takes no label- entity in BIDS: desc-truth_dseg (one per subject)
    MapSpec("lesion_id", LABEL, "1-based index of the lesion that dominates the voxel, 0 elsewhere", "label",
            "dseg"),
    MapSpec("distortion", VOXEL, "EPI displacement along +Y: MRF voxel y shows the tissue at y - d", "displacement",
            "displacement"),
)

#: Dictionary matching's maps (``mrfengine match``, the batch's ``match`` stage).
#: ``correlation`` has no BIDS suffix: mrfengine's ``correlation`` (``desc-match_correlation``).
MATCH_MAPS: Mapping[str, MapSpec] = _frozen(
    _relax("T1", "Longitudinal relaxation time of the best-matching dictionary atom"),
    _relax("T2star", "Effective transverse relaxation time of the best-matching dictionary atom"),
    MapSpec("B1", DIMENSIONLESS, "B1+ flip-angle scale factor (fraction of nominal) of the best-matching "
            "dictionary atom", "quantitative", "TB1map"),
    MapSpec("M0", ARBITRARY, "Proton density: least-squares scale between voxel and matched atom", "quantitative",
            "M0map"),
    MapSpec("correlation", DIMENSIONLESS, "Normalised inner product of voxel and matched atom, [0, 1]", "quality",
            "correlation"),
)

#: The paper's network outputs (:func:`mrfengine.nn.configs.paper_outputs`).
NETWORK_MAPS: Mapping[str, MapSpec] = _frozen(
    _relax("T1", "Longitudinal relaxation time"),
    _relax("T2star", "Effective transverse relaxation time"),
    _probability("NAWM", "Normal-appearing white-matter probability"),
    _probability("GM", "Grey-matter probability"),
    _probability("lesion", "White-matter lesion probability"),
)

#: The conventional pipeline's tissue maps (the ``segment`` stage, :mod:`mrfengine.segmentation`),
#: its distortion correction (the ``register`` stage, :mod:`mrfengine.registration`) and the noise
#: maps of its MP-PCA denoising (the ``denoise`` stage and ``mrfengine denoise``, :func:`mrfengine.denoise.mppca`).
PIPELINE_MAPS: Mapping[str, MapSpec] = _frozen(
    _probability("GM", "Grey-matter probability (cortical and deep), mixture model with MNI152 priors"),
    _probability("WM", "White-matter probability (lesions included), mixture model with MNI152 priors"),
    _probability("CSF", "Cerebrospinal-fluid probability, mixture model with MNI152 priors"),
    _probability("NAWM", "Normal-appearing white-matter probability: WM outside the lesion mask"),
    MapSpec("displacement", VOXEL, "EPI distortion estimated by registration to the T2-weighted reference: the "
            "tissue at voxel p lies at MRF voxel p + d along the phase-encoding axis (before the rigid part)",
            "displacement", "displacement"),
    MapSpec("mppca_sigma", ARBITRARY, "Noise standard deviation estimated by MP-PCA (Marchenko-Pastur law), in the "
            "series' units: the weighted RMS of the noise levels of the windows that hold the voxel", "quality",
            "noise"),
    MapSpec("mppca_rank", DIMENSIONLESS, "Signal components MP-PCA kept in the window centred on the voxel (the "
            "rank of its local signal)", "quality", "rank"),
)

#: Arrays that are not a parameter map of one source.
OTHER_MAPS: Mapping[str, MapSpec] = _frozen(
    MapSpec("mrf", ARBITRARY, "MRF-EPI magnitude images, frames in acquisition order", "image", "MRF"),
    MapSpec("brain_mask", DIMENSIONLESS, "Brain mask", "mask", "mask"),
    MapSpec("physics_consistency", DIMENSIONLESS,
            "Correlation of the series with the Bloch signal of the predicted T1 and T2*, [0, 1]", "quality",
            "consistency"),
)

#: Ending of an output's Monte-Carlo dropout uncertainty array (``T1_uncertainty``).
UNCERTAINTY_SUFFIX = "_uncertainty"


def uncertainty_spec(spec: MapSpec) -> MapSpec:
    """The spec of ``<spec.name>_uncertainty``: the standard deviation over
    Monte-Carlo dropout passes, in the output's unit, named like the output
    with ``std`` after its suffix (``desc-unet_T1mapstd``,
    ``label-lesion_desc-unet_probsegstd``: not a ``T1map`` nor a ``probseg``)."""
    return replace(spec, name=spec.name + UNCERTAINTY_SUFFIX, kind="quality", bids_suffix=spec.suffix + "std",
                   description=f"{spec.name}: standard deviation over Monte-Carlo dropout passes, in {spec.unit}")


def derived_spec(name: str) -> MapSpec | None:
    """The spec of a derived array ``derived/<pipeline>/<name>``: dictionary
    matching's maps first, then the network's, their uncertainties and the
    physics consistency; None for any other name."""
    if name in MATCH_MAPS:
        return MATCH_MAPS[name]
    if name in NETWORK_MAPS:
        return NETWORK_MAPS[name]
    base, sep, rest = name.rpartition(UNCERTAINTY_SUFFIX)
    if sep and not rest and base in NETWORK_MAPS:
        return uncertainty_spec(NETWORK_MAPS[base])
    if name in ("physics_consistency", "brain_mask"):
        return OTHER_MAPS[name]
    return PIPELINE_MAPS.get(name)
