"""BIDS derivatives: the one layout, names and sidecar schema of every file mrfengine writes from a map.

Every producer (``mrfengine match``, ``predict``, ``denoise`` into a derivative
tree, ``export`` of a cohort, ``mrfengine bids``) writes into a **BIDS
derivative dataset**: the output folder is its root, with
``dataset_description.json`` (``DatasetType`` ``derivative``, ``GeneratedBy``,
``SourceDatasets``, ``DatasetLinks``; written once, atomically, and merged on
later runs, :func:`ensure_derivative_root`) and a ``.bidsignore`` listing the
suffixes BIDS does not define; the files lie in::

    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_acq-..][_run-..][_label-<L>]_desc-<producer>_<suffix>.nii.gz

(``fmap/`` for ``TB1map``, as BIDS files B1+ maps).  Each producer has its own
``desc-``: ``match``, ``unet`` (``predict``), ``denoise``, the pipeline's name
for ``export --pipeline`` (letters and digits), ``truth`` for simulated ground
truth.  Suffixes are BIDS's where it has one -- ``T1map``/``T2starmap``
(seconds), ``M0map``, ``PDmap``, ``TB1map`` (qMRI), ``probseg`` with ``label-``
for probabilities, ``dseg``, ``mask`` for binary masks only (``desc-brain_mask``
for a brain mask) -- and mrfengine's own otherwise
(:data:`NONSTANDARD_SUFFIXES`: ``correlation``, ``noise``, ``rank``,
``displacement``, ``consistency``, ``MRF``, and ``<suffix>std`` for a map's
Monte-Carlo dropout standard deviation), which the root's ``.bidsignore``
names so the BIDS validator accepts the dataset (BIDS's mechanism for files
it does not define).

The entities of the output come from the input's name
(:func:`output_entities`): ``sub``, ``ses``, ``acq``, ``ce``, ``rec`` and
``run`` carry over (``sub-01_ses-2_run-1_MRF.nii.gz`` gives
``sub-01/ses-2/anat/sub-01_ses-2_run-1_desc-match_T1map.nii.gz``); a name
without ``sub-`` becomes ``sub-<its letters and digits>``
(``scan_7.nii.gz``: ``sub-scan7``); ``--prefix`` gives them instead
(``sub-01_ses-2``, or a plain label: ``patient7`` is ``sub-patient7``).

Every sidecar follows one schema, :func:`map_sidecar`: ``Description``,
``Units``, ``SkullStripped``, ``Sources`` (BIDS URIs: ``bids:raw:sub-01/anat/..``
for an input inside a BIDS dataset, ``bids:input:<name>`` for one outside any,
``bids:cohort:subjects/<sub>/<array>`` for a cohort store's array -- each
dataset named in ``DatasetLinks`` -- and ``bids::sub-01/..`` for a file of the
derivative itself), ``SpatialReference`` and ``Type`` where BIDS asks for
them, the outside rule (``BrainMask``, ``BrainMaskSource``,
``OutsideBrainValue``), and the producer's own record under one key,
``Provenance``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .._atomic import atomic_write_text
from ..errors import InputFileError, ValidationError
from ..maps import MATCH_MAPS, NETWORK_MAPS, MapSpec, uncertainty_spec

__all__ = ["BIDS_VERSION", "CARRIED_ENTITIES", "ENTITY_ORDER", "NONSTANDARD_SUFFIXES", "SIDECAR_KEYS",
           "DerivativeFile", "check_derivative_root", "datatype_of", "derivative_path", "ensure_derivative_root",
           "entity_prefix", "map_sidecar", "match_file", "network_file", "network_spec", "output_entities",
           "parse_entities", "producer_desc", "read_links", "source_uri", "spec_file", "write_sidecar"]

#: The BIDS version the derivatives follow (``dataset_description.json``'s ``BIDSVersion``).
BIDS_VERSION = "1.10.0"

#: BIDS entities in the order a file name lists them (the specification's entity table).
ENTITY_ORDER = ("sub", "ses", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc", "stain", "rec", "dir",
                "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi", "space", "split", "recording",
                "chunk", "seg", "res", "den", "label", "desc")

#: Entities of an input's name that its outputs carry (those every anatomical derivative may have).
CARRIED_ENTITIES = ("sub", "ses", "acq", "ce", "rec", "run")

#: Suffixes mrfengine writes that BIDS does not define (listed in the derivative's ``.bidsignore``);
#: ``<suffix>std`` (a Monte-Carlo dropout standard deviation) is added as written.
NONSTANDARD_SUFFIXES = ("MRF", "correlation", "noise", "rank", "displacement", "consistency")

#: Suffixes BIDS files under ``fmap/`` (B1+ maps); every other map lies under ``anat/``.
_FMAP_SUFFIXES = ("TB1map", "RB1map")
#: Suffixes of segmentations and masks: no ``SkullStripped`` (BIDS asks it of other images), a ``SpatialReference``.
_SEGMENTATION_SUFFIXES = ("dseg", "probseg", "mask")
_STANDARD_SUFFIXES = ("T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap", "M0map", "S0map",
                      "TB1map", "RB1map", "T1w", "T2w", "PDw", "T2starw", "FLAIR", *_SEGMENTATION_SUFFIXES)

_LABEL = re.compile(r"[A-Za-z0-9]+")
_ENTITY = re.compile(r"([a-z]+)-([A-Za-z0-9]+)")
_EXTS = (".nii.gz", ".nii", ".json")


def _stem(path: str | os.PathLike) -> str:
    name = Path(path).name
    for ext in _EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _alnum(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "", text)


def parse_entities(path: str | os.PathLike) -> dict[str, str]:
    """The BIDS entities of a file name, in order: ``{"sub": "01", "ses": "1"}``
    from ``.../sub-01_ses-1_MRF.nii.gz``; ``{}`` for a name that is not BIDS
    (no ``key-value`` parts before its suffix, or a part that is neither)."""
    parts = _stem(path).split("_")
    if len(parts) > 1 and "-" not in parts[-1]:
        parts = parts[:-1]  # the suffix
    found: dict[str, str] = {}
    for part in parts:
        m = _ENTITY.fullmatch(part)
        if m is None or m.group(1) in found:
            return {}
        found[m.group(1)] = m.group(2)
    return found


def entity_prefix(path: str | os.PathLike) -> str:
    """``sub-01_ses-1`` from ``.../sub-01_ses-1_MRF.nii.gz``: the name without
    its extension and suffix when it is BIDS (:func:`parse_entities`), else
    the name without its extension."""
    entities = parse_entities(path)
    return "_".join(f"{k}-{v}" for k, v in entities.items()) if entities else _stem(path)


def output_entities(input_path: str | os.PathLike, prefix: str | None = None) -> dict[str, str]:
    """The entities of the outputs made from ``input_path`` (or named by ``prefix``).

    ``prefix`` (``--prefix``), when given, names them: BIDS entities
    (``sub-01_ses-2``, ``sub`` first) or a plain label (``patient7``, which
    becomes ``sub-patient7``).  Otherwise the input's name does: its
    entities among :data:`CARRIED_ENTITIES` when it has ``sub-`` (others,
    such as ``task-`` or ``desc-``, are dropped: outputs get their own
    ``desc-``), else ``sub-<the name's letters and digits>``
    (``scan_7.nii.gz``: ``sub-scan7``; ``sub`` is what BIDS requires).

    Raises
    ------
    ValidationError
        A ``prefix`` that is neither, or a name with no letter or digit.
    """
    if prefix is not None:
        if not isinstance(prefix, str) or not prefix.strip():
            raise ValidationError(f"prefix must be BIDS entities (sub-01_ses-2) or a plain label; got {prefix!r}")
        if _LABEL.fullmatch(prefix):
            return {"sub": prefix}
        parts = prefix.split("_")
        entities: dict[str, str] = {}
        for part in parts:
            m = _ENTITY.fullmatch(part)
            if m is None or m.group(1) not in CARRIED_ENTITIES or m.group(1) in entities:
                raise ValidationError(
                    f"prefix {prefix!r}: {part!r} is not one of the entities {', '.join(CARRIED_ENTITIES)} "
                    "(key-value, letters and digits, each once); give e.g. sub-01_ses-2, or a plain label")
            entities[m.group(1)] = m.group(2)
        if "sub" not in entities or parts[0] != f"sub-{entities['sub']}":
            raise ValidationError(f"prefix {prefix!r}: BIDS names start with the sub- entity (e.g. sub-01_ses-2)")
        return _ordered(entities)
    found = parse_entities(input_path)
    if "sub" in found:
        return _ordered({k: v for k, v in found.items() if k in CARRIED_ENTITIES})
    label = _alnum(_stem(input_path))
    if not label:
        raise ValidationError(f"{input_path}: no subject label can be made from the name (no letter or digit); "
                              "pass --prefix sub-<label>")
    return {"sub": label}


def _ordered(entities: Mapping[str, str]) -> dict[str, str]:
    return {k: entities[k] for k in ENTITY_ORDER if k in entities}


def producer_desc(name: str) -> str:
    """The ``desc-`` value of a producer or pipeline name: its letters and digits
    (``denoise-match``: ``denoisematch``).

    Raises
    ------
    ValidationError
        A name with no letter or digit.
    """
    desc = _alnum(str(name))
    if not desc:
        raise ValidationError(f"{name!r}: a producer name needs a letter or digit (its desc- entity)")
    return desc


def datatype_of(suffix: str) -> str:
    """The folder of a suffix: ``fmap`` for B1+ maps (``TB1map``), ``anat`` for every other."""
    return "fmap" if suffix in _FMAP_SUFFIXES else "anat"


class DerivativeFile:
    """One file of a derivative: entities, suffix, where it lies, how it is described.

    Parameters
    ----------
    entities : mapping
        The subject's entities (:func:`output_entities`).
    suffix : str
    desc : str, optional
        The producer (:func:`producer_desc`); None: no ``desc-``.
    label : str, optional
        The ``label-`` entity (``lesion``, ``GM``, ``brain``).
    ext : str
        ``.nii.gz`` or ``.nii``.

    Attributes
    ----------
    relpath : PurePosixPath
        From the derivative root: ``sub-01/anat/sub-01_desc-match_T1map.nii.gz``.
    sidecar : PurePosixPath
        The ``.json`` beside it.
    uri : str
        Its BIDS URI within the derivative (``bids::sub-01/anat/...``).
    """

    def __init__(self, entities: Mapping[str, str], suffix: str, *, desc: str | None = None,
                 label: str | None = None, ext: str = ".nii.gz") -> None:
        if "sub" not in entities:
            raise ValidationError(f"a derivative file needs the sub- entity; got {dict(entities)}")
        for key, value in ((k, v) for k, v in {**entities, "label": label, "desc": desc}.items() if v is not None):
            if not _LABEL.fullmatch(str(value)):
                raise ValidationError(f"the {key}- entity must be letters and digits; got {value!r}")
        if not _LABEL.fullmatch(suffix):
            raise ValidationError(f"a BIDS suffix is letters and digits; got {suffix!r}")
        ents = _ordered({**{k: v for k, v in entities.items() if k not in ("label", "desc")},
                         **({"label": label} if label else {}), **({"desc": desc} if desc else {})})
        self.entities, self.suffix, self.ext = ents, suffix, ext
        self.datatype = datatype_of(suffix)
        stem = "_".join(f"{k}-{v}" for k, v in ents.items()) + f"_{suffix}"
        folder = PurePosixPath(f"sub-{ents['sub']}") / (f"ses-{ents['ses']}" if "ses" in ents else "") / self.datatype
        self.relpath = folder / f"{stem}{ext}"
        self.sidecar = folder / f"{stem}.json"
        self.uri = f"bids::{self.relpath}"

    @property
    def nonstandard(self) -> bool:
        """BIDS does not define the suffix (the root's ``.bidsignore`` names it)."""
        return self.suffix not in _STANDARD_SUFFIXES

    @property
    def segmentation(self) -> bool:
        return self.suffix in _SEGMENTATION_SUFFIXES

    def __repr__(self) -> str:
        return f"DerivativeFile({str(self.relpath)!r})"


def derivative_path(entities: Mapping[str, str], suffix: str, *, desc: str | None = None, label: str | None = None,
                    ext: str = ".nii.gz") -> PurePosixPath:
    """The path from the derivative root of one file (:class:`DerivativeFile`'s ``relpath``)."""
    return DerivativeFile(entities, suffix, desc=desc, label=label, ext=ext).relpath


def spec_file(spec: MapSpec, entities: Mapping[str, str], desc: str | None, *, ext: str = ".nii.gz",
              label: str | None = None) -> DerivativeFile:
    """The :class:`DerivativeFile` of a registry map (:mod:`mrfengine.maps`): its suffix and ``label-``."""
    return DerivativeFile(entities, spec.suffix, desc=desc, label=label or spec.bids_label or None, ext=ext)


def match_file(key: str, entities: Mapping[str, str], desc: str = "match", *, ext: str = ".nii.gz") -> DerivativeFile:
    """The file of dictionary matching's map ``key`` (``T1``, ..., ``correlation``)."""
    return spec_file(MATCH_MAPS[key], entities, desc, ext=ext)


def network_spec(name: str, unit: str) -> MapSpec:
    """The registry spec of a network output ``name`` in ``unit``: the paper's
    quantitative maps (``T1``/``T2star`` in ms: ``T1map`` in seconds), any
    dimensionless output as a probability (``label-<name>_probseg``), any
    other as a map of its own name and unit."""
    from ..maps import DIMENSIONLESS

    spec = NETWORK_MAPS.get(name)
    if spec is not None and spec.kind == "quantitative" and unit == spec.unit:
        return spec
    if unit == DIMENSIONLESS:
        return MapSpec(name, DIMENSIONLESS, spec.description if spec else "", "probability", "probseg",
                       bids_label=_alnum(name) or "x")
    return MapSpec(name, unit if unit in ("ms", "s", "1", "arbitrary", "label", "voxel") else "arbitrary",
                   spec.description if spec else "", "quality")


def network_file(name: str, unit: str, entities: Mapping[str, str], desc: str = "unet", *,
                 uncertainty: bool = False, ext: str = ".nii.gz") -> tuple[DerivativeFile, MapSpec]:
    """The file and spec of a network output (or of its Monte-Carlo dropout standard deviation)."""
    spec = network_spec(name, unit)
    if uncertainty:
        spec = uncertainty_spec(spec)
    return spec_file(spec, entities, desc, ext=ext), spec


#: The brain mask a producer made: ``label-brain_desc-<producer>_mask`` (a subject's own is ``desc-brain_mask``).
BRAIN_LABEL = "brain"


# --------------------------------------------------------------------------- the dataset root
def _code_url() -> str | None:
    """The package's source URL from its metadata (``[project.urls]`` Source/Repository/Homepage), or None."""
    try:
        from importlib.metadata import metadata

        urls = metadata("mrfengine").get_all("Project-URL") or []
    except Exception:  # noqa: BLE001 - not installed: no URL to give
        return None
    found = {}
    for entry in urls:
        label, _, url = entry.partition(",")
        found[label.strip().lower()] = url.strip()
    for key in ("source", "repository", "source code", "code", "homepage"):
        if found.get(key):
            return found[key]
    return None


def _dataset_root(path: Path) -> Path | None:
    """The nearest folder above ``path`` holding ``dataset_description.json`` (a BIDS dataset), or None."""
    for folder in Path(os.path.abspath(path)).parents:
        if (folder / "dataset_description.json").is_file():
            return folder
    return None


def _link_target(target: Path, root: Path) -> str:
    """A ``DatasetLinks`` value: the path relative to the derivative root when it lies at most two
    folders up (``bids/derivatives/mrfengine`` -> ``../..``; a store beside the root:
    ``../cohort.zarr``), so the two move together; else a ``file://`` URI."""
    rel = os.path.relpath(target, root)
    if rel == "." or not rel.startswith(".."):  # inside the derivative: never a source; an absolute URI
        return target.as_uri()
    parts = rel.split(os.sep)
    if parts.count("..") <= 2 and all(p == ".." for p in parts[:parts.count("..")]):
        return "/".join(parts)
    return target.as_uri()


def source_uri(source: str | os.PathLike, root: str | os.PathLike, links: dict[str, str], *,
               inner: str | None = None) -> str:
    """The BIDS URI of an input ``source`` as seen from the derivative at ``root``; its dataset is
    added to ``links`` (name -> location, for ``DatasetLinks``).

    * a file inside the derivative itself: ``bids::<path>``;
    * a file inside a BIDS dataset (a ``dataset_description.json`` above it):
      ``bids:raw:<path within it>`` (``raw``, ``raw2``, ... when several);
    * a cohort store (``inner`` given: the array's path in it):
      ``bids:cohort:<inner>``;
    * any other file: ``bids:input:<name>``, its folder linked as ``input``.
    """
    root = Path(os.path.abspath(root))
    if inner is not None and "://" in str(source):  # a remote store: its URL is the link
        location, within, name = str(source), inner, "cohort"
        return _linked(location, within, name, links)
    src = Path(os.path.abspath(source))
    if inner is not None:
        base, within, name = src, inner, "cohort"
    else:
        if root in src.parents:
            return f"bids::{src.relative_to(root).as_posix()}"
        dataset = _dataset_root(src)
        if dataset is not None and dataset != root:
            base, within, name = dataset, src.relative_to(dataset).as_posix(), "raw"
        else:
            base, within, name = src.parent, src.name, "input"
    return _linked(_link_target(base, root), within, name, links)


def _linked(location: str, within: str, name: str, links: dict[str, str]) -> str:
    """``bids:<key>:<within>``, ``key`` the link of ``location`` (``name``, ``name2``, ... when new)."""
    for key, value in links.items():
        if value == location and re.fullmatch(rf"{name}[0-9]*", key):
            return f"bids:{key}:{within}"
    key, n = name, 1
    while key in links:
        n += 1
        key = f"{name}{n}"
    links[key] = location
    return f"bids:{key}:{within}"


DESCRIPTION = "dataset_description.json"
BIDSIGNORE = ".bidsignore"


def _ignore_lines(suffixes: Iterable[str]) -> list[str]:
    return [f"*_{s}.{ext}" for s in suffixes for ext in ("nii.gz", "nii", "json")]


def ensure_derivative_root(root: str | os.PathLike, *, links: Mapping[str, str] | None = None,
                           nonstandard: Iterable[str] = (), force: bool = False) -> Path:
    """Make ``root`` a BIDS derivative dataset of mrfengine's, or check and extend the one it is.

    Writes (atomically) ``dataset_description.json`` -- ``Name``,
    ``BIDSVersion``, ``DatasetType: derivative``, ``GeneratedBy`` (mrfengine,
    its version, ``CodeURL`` when the package names one), ``SourceDatasets``
    and ``DatasetLinks`` (``links``) -- and ``.bidsignore`` with the
    non-standard suffixes (:data:`NONSTANDARD_SUFFIXES` and ``nonstandard``).
    An existing description of mrfengine's is merged: links and source
    datasets added, this version added to ``GeneratedBy`` when it differs.

    Raises
    ------
    InputFileError
        The description is unreadable, is not a derivative's, or was made by
        another tool (``GeneratedBy``), unless ``force``; a link name that
        the description already gives another location.
    """
    from .. import __version__

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / DESCRIPTION
    tool: dict[str, Any] = {"Name": "mrfengine", "Version": __version__}
    url = _code_url()
    if url:
        tool["CodeURL"] = url
    doc: dict[str, Any]
    if path.exists():
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict):
                raise TypeError("not a JSON object")
        except (OSError, ValueError, TypeError) as exc:
            raise InputFileError(f"{path}: not a readable dataset description ({exc}); refusing to write "
                                 "derivatives into this folder") from None
        names = [g.get("Name") for g in doc.get("GeneratedBy") or [] if isinstance(g, dict)]
        ours = doc.get("DatasetType") == "derivative" and "mrfengine" in names
        if not ours and not force:
            what = (f"a derivative of {', '.join(map(str, names)) or 'an unnamed tool'}"
                    if doc.get("DatasetType") == "derivative" else f"a {doc.get('DatasetType', 'raw')} BIDS dataset")
            raise InputFileError(f"{root}: is {what} (its {DESCRIPTION}), not mrfengine's derivatives; "
                                 "write into another folder, or pass --force to add mrfengine's files to it")
        doc.setdefault("Name", "mrfengine derivatives")
        doc.setdefault("BIDSVersion", BIDS_VERSION)
        doc["DatasetType"] = "derivative"
        gen = [g for g in doc.get("GeneratedBy") or [] if isinstance(g, dict)]
        if not any(g.get("Name") == "mrfengine" and g.get("Version") == __version__ for g in gen):
            gen.append(tool)
        doc["GeneratedBy"] = gen
    else:
        doc = {"Name": "mrfengine derivatives", "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
               "GeneratedBy": [tool]}
    old_links = dict(doc.get("DatasetLinks") or {})
    for key, value in (links or {}).items():
        if key in old_links and old_links[key] != value:
            raise InputFileError(f"{path}: DatasetLinks names {key!r} as {old_links[key]!r}, not {value!r}")
        old_links[key] = value
    if old_links:
        doc["DatasetLinks"] = old_links
        sources = list(doc.get("SourceDatasets") or [])
        known = {s.get("URL") for s in sources if isinstance(s, dict)}
        for value in old_links.values():
            if value not in known:
                sources.append({"URL": value})
                known.add(value)
        doc["SourceDatasets"] = sources
    text = json.dumps(doc, indent=2) + "\n"
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    ignore = root / BIDSIGNORE
    have = ignore.read_text(encoding="utf-8").splitlines() if ignore.exists() else []
    want = [line for line in _ignore_lines([*NONSTANDARD_SUFFIXES, *nonstandard]) if line not in have]
    if want:
        atomic_write_text(ignore, "\n".join([*have, *want]) + "\n")
    return root


def read_links(root: str | os.PathLike) -> dict[str, str]:
    """The ``DatasetLinks`` of the derivative at ``root`` (``{}`` when it has no readable description):
    the names :func:`source_uri` reuses, so a later run's URIs name the datasets the first run linked."""
    try:
        doc = json.loads((Path(root) / DESCRIPTION).read_text(encoding="utf-8"))
        links = doc.get("DatasetLinks") if isinstance(doc, dict) else None
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in links.items()} if isinstance(links, dict) else {}


def check_derivative_root(root: str | os.PathLike, *, force: bool = False) -> None:
    """Raise before any work when ``root`` holds another tool's dataset (:func:`ensure_derivative_root`'s
    check, nothing written)."""
    path = Path(root) / DESCRIPTION
    if not path.exists() or force:
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        names = [g.get("Name") for g in doc.get("GeneratedBy") or [] if isinstance(g, dict)]
        ours = doc.get("DatasetType") == "derivative" and "mrfengine" in names
    except (OSError, ValueError, AttributeError, TypeError):
        ours = False
    if not ours:
        ensure_derivative_root(root, force=False)  # raises with the reason


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_sidecar(path: str | os.PathLike, fields: Mapping[str, Any]) -> Path:
    """Write a JSON sidecar atomically (``.json`` beside the image)."""
    return atomic_write_text(path, json.dumps(dict(fields), indent=2, default=_jsonable) + "\n")


SIDECAR_KEYS = ("Description", "Units", "SkullStripped", "Sources", "SpatialReference", "Type", "BrainMask",
                "BrainMaskSource", "OutsideBrainValue", "Provenance")
"""The keys of every map sidecar, in this order (:func:`map_sidecar`; ``SkullStripped`` not for a
segmentation or mask, ``SpatialReference`` and ``Type`` only when given, the outside rule only for an estimate)."""

_RULE = ("BrainMask", "BrainMaskSource", "OutsideBrainValue")


def map_sidecar(
    description: str,
    units: str,
    *,
    sources: Iterable[str],
    outside: Mapping[str, Any] | None,
    skull_stripped: bool | None = None,
    spatial_reference: str | None = None,
    mask_type: str | None = None,
    producer: str = "",
    generated_by: str = "",
    generated_version: str | None = None,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fields of a map's JSON sidecar: the one schema of every file mrfengine writes into a derivative.

    Parameters
    ----------
    description : str
        What the map is (BIDS ``Description``).
    units : str
        Its unit as stored in the file (BIDS ``Units``: ``s``, ``1``, ``arbitrary``).
    sources : iterable of str
        BIDS URIs of what it was computed from (``Sources``;
        :func:`source_uri`, :attr:`DerivativeFile.uri`).
    outside : mapping or None
        :func:`mrfengine.masking.outside_rule_fields` of the map (which brain
        mask it is 0 outside of, by URI, or none); None for a file that is
        no estimate (a mask itself, a series).
    skull_stripped : bool, optional
        BIDS ``SkullStripped`` (required of derivative images that are not
        segmentations or masks); default: whether ``outside`` names a mask
        the map is 0 outside of.  Not written when None and no ``outside``
        (a segmentation or mask).
    spatial_reference : str, optional
        BIDS ``SpatialReference``: the URI of the image whose grid the file is on
        (recommended for segmentations and masks).
    mask_type : str, optional
        BIDS ``Type`` of a mask (``Brain``).
    producer : str
        The producer's ``desc-`` (``match``, ``unet``, ...), in ``Provenance``.
    generated_by : str
        What made it (``U-net MSE-5``, ``dictionary matching``, ``pipeline
        match: match -> write``), ``Provenance``'s ``Method``.
    generated_version : str, optional
        The mrfengine version that computed the map when it is not the
        writer's (an export of maps a batch stored earlier).
    provenance : mapping, optional
        The producer's own record (model, sequence, backend, ...): under
        ``Provenance``, after ``Producer``, ``Method``, ``Version``.

    Returns
    -------
    dict
        :data:`SIDECAR_KEYS` in order, those that apply.

    Raises
    ------
    ValidationError
        No source, a source that is not a BIDS URI, or ``outside`` without
        the outside rule's three keys.
    """
    from .. import __version__

    uris = [str(s) for s in sources]
    if not uris:
        raise ValidationError("a map's sidecar needs at least one source")
    bad = [u for u in uris if not u.startswith("bids:")]
    if bad:
        raise ValidationError(f"Sources are BIDS URIs (bids:<dataset>:<path>); got {bad}")
    fields: dict[str, Any] = {"Description": str(description), "Units": str(units)}
    if outside is not None and set(outside) != set(_RULE):
        raise ValidationError(f"the outside rule's sidecar fields are {list(_RULE)}; got {sorted(outside)}")
    if skull_stripped is None and outside is not None:
        skull_stripped = outside.get("BrainMask") is not None and outside.get("OutsideBrainValue") is not None
    if skull_stripped is not None:
        fields["SkullStripped"] = bool(skull_stripped)
    fields["Sources"] = uris
    if spatial_reference:
        fields["SpatialReference"] = spatial_reference
    if mask_type:
        fields["Type"] = mask_type
    if outside is not None:
        fields.update({key: outside[key] for key in _RULE})
    record: dict[str, Any] = {}
    if producer:
        record["Producer"] = producer
    if generated_by:
        record["Method"] = generated_by
    record["Version"] = generated_version or __version__
    if generated_version and generated_version != __version__:
        record["WrittenByVersion"] = __version__
    record.update(provenance or {})
    fields["Provenance"] = record
    return fields
