"""A BIDS dataset as input: each participant's MRF series, T2-weighted reference and lesion mask.

BIDS has no suffix for MR fingerprinting yet, so mrfengine reads the series
by default as an anatomical *file collection* with its own upper-case
suffix, as the qMRI extension names its multi-volume inputs (``MP2RAGE``,
``MESE``, ``VFA``)::

    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_acq-<label>][_run-<index>]_MRF.nii.gz
    sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_T2w.nii.gz      (optional; the register stage's reference)
    derivatives/<any>/sub-<label>/.../sub-<label>_label-lesion_mask.nii.gz  (optional; with --derivatives)

The BIDS validator does not know the suffix: list ``*_MRF.*`` in the
dataset's ``.bidsignore``.  A lesion mask is a derivative in BIDS (raw
``anat`` has no lesion suffix); it may also lie in the raw dataset under the
same name (listed in ``.bidsignore`` too).  Every query can be replaced, as
fMRIPrep's ``--bids-filter-file`` does: a JSON object whose keys are the
queries of :data:`DEFAULT_QUERIES` (``mrf``, ``t2w``, ``lesion``,
``brainmask``) and whose values are pybids filters (entity -> value or list;
``null``: the entity must be absent; ``"*"``: it must be present).
``brainmask`` is not searched unless a filter file names it.

The series' sequence comes from its JSON sidecar (BIDS inheritance applies:
a dataset-level ``acq-MRF_MRF.json`` serves every participant), see
:func:`sequence_from_metadata`.  Masks and the reference must lie on the
series' grid (the cohort importer, :func:`mrfengine.io.importer.import_subject`,
checks it and names the file otherwise).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputFileError, ValidationError
from ..sequence import Sequence, hermann2021, resolve_sequence

__all__ = [
    "DEFAULT_QUERIES",
    "QUERY_NAMES",
    "ParticipantInputs",
    "find_inputs",
    "load_filter_file",
    "merge_queries",
    "open_layout",
    "participant_labels",
    "sequence_from_metadata",
]

log = logging.getLogger(__name__)

_NIFTI = [".nii", ".nii.gz"]

#: The pybids queries of each input (a filter file replaces a query's entities it names).
DEFAULT_QUERIES: dict[str, dict[str, Any] | None] = {
    "mrf": {"datatype": "anat", "suffix": "MRF", "extension": _NIFTI},
    "t2w": {"datatype": "anat", "suffix": "T2w", "extension": _NIFTI},
    "lesion": {"label": "lesion", "suffix": "mask", "extension": _NIFTI},
    "brainmask": None,  # not searched unless a filter file asks
}
QUERY_NAMES = tuple(DEFAULT_QUERIES)

#: Sidecar keys of the series that name its sequence (mrfengine's; BIDS defines none for MRF).
SEQUENCE_FILE_KEY = "MRFSequenceFile"
_LABEL_RE = re.compile(r"[A-Za-z0-9]+")


@dataclass(frozen=True)
class ParticipantInputs:
    """The files of one participant, as found in the dataset.

    Attributes
    ----------
    subject : str
        The cohort's subject id, ``sub-<label>``.
    mrf : Path
        The MRF series.
    t2w, lesion, brain_mask : Path or None
    metadata : dict
        The series' sidecar fields (BIDS inheritance applied).
    entities : dict
        The series' BIDS entities (session, acquisition, run, ...).
    """

    subject: str
    mrf: Path
    t2w: Path | None = None
    lesion: Path | None = None
    brain_mask: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    entities: dict[str, Any] = field(default_factory=dict)

    def files(self) -> dict[str, Path]:
        """The files found, by query name."""
        found = {"mrf": self.mrf, "t2w": self.t2w, "lesion": self.lesion, "brainmask": self.brain_mask}
        return {k: v for k, v in found.items() if v is not None}


def _check_dataset(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputFileError(f"{path}: no such {what}")
    if not path.is_dir():
        raise InputFileError(f"{path}: not a folder; the {what} is a BIDS dataset folder")
    if not (path / "dataset_description.json").is_file():
        raise InputFileError(f"{path}: not a BIDS dataset (no dataset_description.json at its top)")
    try:
        doc = json.loads((path / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path / 'dataset_description.json'}: not readable JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputFileError(f"{path / 'dataset_description.json'}: not a JSON object")
    return path


def open_layout(bids_dir: str | os.PathLike, derivatives: SequenceABC[str | os.PathLike] = ()):
    """Index a BIDS dataset (and derivative datasets) with pybids.

    Parameters
    ----------
    bids_dir : path
        The raw dataset's root (with ``dataset_description.json``).
    derivatives : paths
        Derivative datasets to search too (lesion masks, brain masks); each
        needs its ``dataset_description.json``.

    Returns
    -------
    bids.BIDSLayout
        Not validated by pybids (the validator is a separate step, as for
        fMRIPrep): files with mrfengine's ``MRF`` suffix are indexed.

    Raises
    ------
    InputFileError
        A path that is not a BIDS dataset, naming it.
    """
    try:
        from bids import BIDSLayout
    except ImportError as exc:  # pragma: no cover - the bids extra
        raise InputFileError("reading a BIDS dataset needs pybids: pip install 'mrfengine[bids]'") from exc
    from bids.exceptions import PyBIDSError

    root = _check_dataset(Path(bids_dir).absolute(), "BIDS dataset")
    derivs = [_check_dataset(Path(d).absolute(), "derivative dataset") for d in derivatives]
    try:
        layout = BIDSLayout(str(root), validate=False, config=["bids", "derivatives"])
        for d in derivs:
            # pybids wants GeneratedBy or PipelineDescription in its description; its error is kept.
            layout.add_derivatives(str(d), validate=False, config=["bids", "derivatives"])
    except (PyBIDSError, ValueError) as exc:
        raise InputFileError(f"{root}: pybids cannot index it ({exc})") from exc
    return layout


def participant_labels(layout, wanted: SequenceABC[str] = ()) -> list[str]:
    """The participant labels to run (without ``sub-``), in the order given (default: all, sorted).

    Raises
    ------
    ValidationError
        A label that is not letters and digits, or one the dataset lacks (the
        message lists the dataset's labels).
    """
    known = sorted(layout.get_subjects(scope="raw"))
    if not wanted:
        if not known:
            raise InputFileError(f"{layout.root}: no participant (no sub-<label> folder)")
        return known
    out: list[str] = []
    for raw in wanted:
        label = raw.removeprefix("sub-")
        if not _LABEL_RE.fullmatch(label):
            raise ValidationError(f"participant label {raw!r}: letters and digits only (BIDS), e.g. 01 or sub-01")
        if label not in known:
            shown = ", ".join(known[:20]) + (", ..." if len(known) > 20 else "")
            raise ValidationError(f"participant {label!r} is not in {layout.root} (it has: {shown or 'none'})")
        if label not in out:
            out.append(label)
    return out


def _query_value(value: Any) -> Any:
    from bids.layout import Query

    if value is None:
        return Query.NONE
    if value == "*":
        return Query.ANY
    if isinstance(value, list):
        return [_query_value(v) for v in value]
    return value


def load_filter_file(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Read a ``--bids-filter-file``: ``{"mrf": {...}, "t2w": {...}, "lesion": {...}, "brainmask": {...}}``.

    Raises
    ------
    InputFileError
        Not readable, not JSON, not an object of objects, or a key that is not a query.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputFileError(f"{p}: cannot read the BIDS filter file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise InputFileError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise InputFileError(f"{p}: a BIDS filter file is a JSON object of queries ({', '.join(QUERY_NAMES)})")
    unknown = sorted(set(doc) - set(QUERY_NAMES))
    if unknown:
        raise InputFileError(f"{p}: unknown quer{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; "
                             f"known: {', '.join(QUERY_NAMES)}")
    for key, value in doc.items():
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise InputFileError(f"{p}: {key!r} must be an object of BIDS entities, e.g. "
                                 '{"acquisition": "MRF", "session": "1"}')
    return doc


def merge_queries(filters: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any] | None]:
    """:data:`DEFAULT_QUERIES` with a filter file's entities replacing or adding to each query's."""
    out = {k: (dict(v) if v is not None else None) for k, v in DEFAULT_QUERIES.items()}
    for key, entities in (filters or {}).items():
        out[key] = {**(out[key] or {"extension": _NIFTI}), **dict(entities)}
    return out


def _describe(query: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in query.items()}, default=str)


def _get(layout, label: str, name: str, query: Mapping[str, Any], scope: str, filter_file: str | None,
         extra: Mapping[str, Any] | None = None) -> list[Any]:
    filters = {k: _query_value(v) for k, v in query.items()}
    filters.update(extra or {})
    try:
        return layout.get(subject=label, scope=scope, return_type="object", **filters)
    except (ValueError, KeyError) as exc:  # an entity pybids does not know
        where = f" (from {filter_file})" if filter_file else ""
        raise ValidationError(f"the {name} query {_describe(query)}{where} is not a valid pybids query: {exc}") from exc


def _one(found: list[Any], name: str, label: str, query: Mapping[str, Any], *, required: bool,
         root: str) -> Any | None:
    if not found:
        if required:
            raise InputFileError(f"{root}: no {name} series for sub-{label} (looked for {_describe(query)}: "
                                 f"sub-{label}/anat/sub-{label}_MRF.nii.gz by default); name it as mrfengine expects "
                                 f"or give --bids-filter-file")
        return None
    if len(found) > 1:
        names = "\n".join(f"  {f.path}" for f in sorted(found, key=lambda f: f.path))
        raise InputFileError(f"sub-{label}: {len(found)} {name} files match {_describe(query)}; one is needed "
                             f"(select it with --bids-filter-file, e.g. by session, acquisition or run):\n{names}")
    return found[0]


def find_inputs(layout, label: str, queries: Mapping[str, Mapping[str, Any] | None], *,
                filter_file: str | None = None) -> ParticipantInputs:
    """The files of participant ``label`` (without ``sub-``).

    Exactly one MRF series must match; T2w, lesion and brain mask are
    optional but must match at most one file each.  With a series in a
    session (``ses-``), the other inputs are looked for in the same session.

    Raises
    ------
    InputFileError
        No series, or two candidates for one input (all of them named).
    ValidationError
        A query pybids does not accept.
    """
    root = str(layout.root)
    mrf_query = queries["mrf"]
    if mrf_query is None:
        raise ValidationError("the mrf query cannot be null")
    mrf = _one(_get(layout, label, "mrf", mrf_query, "raw", filter_file), "MRF", label, mrf_query,
               required=True, root=root)
    entities = dict(mrf.get_entities())
    same = {"session": entities["session"]} if "session" in entities else {}
    found: dict[str, Path | None] = {}
    for name, scope in (("t2w", "raw"), ("lesion", "all"), ("brainmask", "all")):
        query = queries.get(name)
        if query is None:
            found[name] = None
            continue
        extra = {k: v for k, v in same.items() if k not in query}
        hit = _one(_get(layout, label, name, query, scope, filter_file, extra), name, label, query,
                   required=False, root=root)
        found[name] = Path(hit.path) if hit is not None else None
    return ParticipantInputs(f"sub-{label}", Path(mrf.path), found["t2w"], found["lesion"], found["brainmask"],
                             dict(mrf.get_metadata()), entities)


def _slice_timing(seq: Sequence) -> list[float]:
    """The excitation time (s) of each slice in the first measurement, as the exporter writes it."""
    slot_s = float(seq.repetition_time_ms[0]) / seq.n_slots / 1000
    return [float(seq.slot_of_slice(z)) * slot_s for z in range(seq.n_slices)]


def sequence_from_metadata(metadata: Mapping[str, Any], n_slices: int, path: str | os.PathLike, *,
                           dataset_root: str | os.PathLike | None = None, site: str | None = None,
                           sequence: Sequence | None = None) -> tuple[str, Sequence]:
    """The cohort site and the sequence of an MRF series, from its sidecar.

    In order: ``sequence`` given (``--sequence``); the sidecar's
    ``MRFSequenceFile`` (a sequence file, relative to the dataset root);
    ``SequenceName`` ``hermann2021-site1``/``-site2`` (what ``mrfengine
    export`` writes for a series) or another preset name;
    ``MultibandAccelerationFactor`` 1 or 3 (the hermann2021 protocols of
    sites 1 and 2); else ``site`` (``--site``, default 1).  The hermann2021
    protocols take the series' slice count.  ``SequenceDigest`` and
    ``SliceTiming`` in the sidecar, when present, must agree with the result
    (the slice order decides each slice's dictionary).

    Returns
    -------
    site : str
        ``1``/``2`` for the hermann2021 protocols, else ``site`` or the sequence's name.
    sequence : Sequence

    Raises
    ------
    InputFileError
        A sidecar whose fields do not agree with each other or with the
        series, naming the series.
    """
    path = Path(path)
    meta = dict(metadata)
    chosen: Sequence | None = sequence
    how = "--sequence"
    if chosen is None and SEQUENCE_FILE_KEY in meta:
        ref = Path(str(meta[SEQUENCE_FILE_KEY]))
        ref = ref if ref.is_absolute() else Path(dataset_root or path.parent) / ref
        try:
            chosen = resolve_sequence(ref)
        except (OSError, ValueError) as exc:
            raise InputFileError(f"{path}: its sidecar's {SEQUENCE_FILE_KEY} {ref}: {exc}") from exc
        how = f"{SEQUENCE_FILE_KEY} {ref.name}"
    name = str(meta.get("SequenceName", "")).strip().lower()
    protocol = None
    if chosen is None and name in ("hermann2021-site1", "hermann2021-site2"):
        protocol, how = int(name[-1]), f"SequenceName {meta['SequenceName']}"
    elif chosen is None and name:
        try:
            chosen, how = resolve_sequence(name), f"SequenceName {meta['SequenceName']}"
        except (OSError, ValueError):
            chosen = None  # a scanner's sequence name (e.g. epfid2d1_60): not a preset
    if chosen is None and protocol is None and "MultibandAccelerationFactor" in meta:
        factor = meta["MultibandAccelerationFactor"]
        if factor not in (1, 3):
            raise InputFileError(f"{path}: MultibandAccelerationFactor {factor!r} in its sidecar matches no "
                                 "known protocol (hermann2021: 1 at site 1, 3 at site 2); give --sequence")
        protocol, how = (1 if factor == 1 else 2), f"MultibandAccelerationFactor {factor}"
    if chosen is None and protocol is None:
        if site not in (None, "1", "2"):
            raise InputFileError(f"{path}: its sidecar names no sequence ({SEQUENCE_FILE_KEY}, SequenceName, "
                                 f"MultibandAccelerationFactor) and site {site!r} is no known protocol; give "
                                 "--sequence")
        protocol, how = int(site or "1"), f"--site {site}" if site else "the default, site 1"
        if site is None:
            log.warning("%s: its sidecar names no sequence; assuming the hermann2021 protocol of site 1 "
                        "(give --site or --sequence, or SequenceName in the sidecar)", path)
    elif chosen is None and site in ("1", "2") and int(site) != protocol:
        raise InputFileError(f"{path}: its sidecar says the site-{protocol} protocol ({how}), --site says {site}")
    if chosen is None:
        if protocol == 2 and n_slices % 3:
            raise InputFileError(f"{path}: {n_slices} slices, but the site-2 protocol (SMS factor 3, from {how}) "
                                 "needs a multiple of 3")
        chosen = hermann2021(protocol, n_slices=n_slices)
        site_name = str(protocol)
    else:
        site_name = site or re.sub(r"[^A-Za-z0-9_.-]", "-", chosen.name)
    digest = meta.get("SequenceDigest")
    if digest is not None and str(digest) != chosen.digest():
        raise InputFileError(f"{path}: its sidecar's SequenceDigest {digest} is not that of {chosen.name} "
                             f"({chosen.digest()}, from {how}); the series was acquired with another sequence")
    timing = meta.get("SliceTiming")
    if timing is not None and chosen.n_slices == n_slices:
        ours = _slice_timing(chosen)
        if (not isinstance(timing, list) or len(timing) != n_slices
                or any(abs(float(a) - b) > 1e-4 for a, b in zip(timing, ours))):
            raise InputFileError(f"{path}: its sidecar's SliceTiming does not match the slice order of "
                                 f"{chosen.name} (from {how}); each slice's dictionary depends on it. Sidecar: "
                                 f"{timing}; {chosen.name}: {[round(t, 6) for t in ours]}")
    return site_name, chosen
