"""The cohort store: a zarr v3 hierarchy holding the MRF series, reference
images, ground truth and annotations of many subjects.

The layout, attributes and rules are specified in ``docs/cohort-format.md``;
this module is its one implementation.  In short::

    COHORT.zarr/                      group; attrs["mrfengine_cohort"]: schema version,
                                      sites (serialised sequences), subjects (site, split, group)
      subjects/<sub-ID>/              group; attrs["mrfengine_subject"]: affine, voxel size, ...,
                                      and ``complete``, written last
        mrf                           (n_frames, Z, Y, X) float32, one chunk per slice
        brain_mask                    (Z, Y, X) uint8                      [optional]
        reference/<name>              (Z, Y, X) float32, e.g. T2w           [optional]
        truth/<name>                  (Z, Y, X) T1, T2star (ms), B1, PD, GM, WM, CSF, lesion, ...
        annotations/<name>            (Z, Y, X) uint8, e.g. lesion, lesion_repeat

Array index ``[..., z, y, x]`` maps to world millimetres through the
subject's NIfTI-style ``affine`` applied to ``(x, y, z, 1)``.

A subject counts only once its ``complete`` attribute is true; that attribute
is written after every array, so an interrupted writer leaves a subject that
readers treat as absent and writers rewrite.

Reading: :class:`Cohort` (``Cohort.open(path)``) and :class:`Subject`.
Writing: :func:`create_cohort`, :func:`open_cohort_for_writing`,
:class:`SubjectWriter`.  Checking: :func:`validate_cohort`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError, ValidationError
from ..sequence import Sequence

__all__ = [
    "SCHEMA_VERSION",
    "ROOT_KEY",
    "SUBJECT_KEY",
    "SPLITS",
    "GROUPS",
    "TRUTH_SPECS",
    "REQUIRED_TRUTH",
    "SiteEntry",
    "SubjectEntry",
    "Cohort",
    "Subject",
    "SubjectWriter",
    "create_cohort",
    "open_cohort_for_writing",
    "register_subjects",
    "validate_cohort",
    "normalize_subject_id",
    "default_compressor",
    "read_cohort_attrs",
    "subject_complete",
    "json_equal",
    "ValidationReport",
]

log = logging.getLogger(__name__)

#: Version of the layout and attributes described in ``docs/cohort-format.md``.
#: Readers refuse any other version.
SCHEMA_VERSION = 1
ROOT_KEY = "mrfengine_cohort"
SUBJECT_KEY = "mrfengine_subject"
SPLITS = ("train", "validation", "test", "none")
GROUPS = ("patient", "healthy", "unknown")

#: truth array name -> (unit, description)
TRUTH_SPECS: dict[str, tuple[str, str]] = {
    "T1": ("ms", "T1: PD-weighted mean over the brain-tissue compartments (CSF's value where CSF dominates)"),
    "T2star": ("ms", "T2*: PD-weighted mean over the brain-tissue compartments (CSF's value where CSF dominates)"),
    "B1": ("1", "B1+ flip-angle scale factor (fraction of nominal)"),
    "PD": ("1", "proton density relative to water (sum of fraction x compartment PD)"),
    "GM": ("fraction", "grey-matter volume fraction (cortical and deep)"),
    "WM": ("fraction", "normal-appearing white-matter volume fraction (lesions excluded)"),
    "CSF": ("fraction", "cerebrospinal-fluid volume fraction"),
    "lesion": ("fraction", "MS-lesion volume fraction"),
    "DGM": ("fraction", "deep grey-matter volume fraction (a part of GM)"),
    "lesion_id": ("label", "1-based index of the lesion that dominates the voxel, 0 elsewhere"),
    "distortion": ("voxel", "EPI displacement along +Y: MRF voxel y shows the tissue at y - d"),
}
REQUIRED_TRUTH = ("T1", "T2star", "B1", "PD", "GM", "WM", "CSF", "lesion")

_SUBJECT_RE = re.compile(r"^sub-[A-Za-z0-9]+$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_GROUPS_OF_SUBJECT = ("reference", "truth", "annotations")


def default_compressor():
    """Blosc-zstd (level 1) with bit shuffling: the codec of every array in the store."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")


def normalize_subject_id(subject_id: str) -> str:
    """``sub-01`` from ``sub-01`` or ``01``; raises ValidationError for anything else.

    Subject ids follow BIDS: ``sub-`` and letters or digits only.
    """
    if not isinstance(subject_id, str):
        raise ValidationError(f"subject id must be a string; got {subject_id!r}")
    sid = subject_id if subject_id.startswith("sub-") else f"sub-{subject_id}"
    if not _SUBJECT_RE.match(sid):
        raise ValidationError(f"subject id must be 'sub-' followed by letters or digits (BIDS); got {subject_id!r}")
    return sid


# --------------------------------------------------------------------------- entries
@dataclass(frozen=True)
class SiteEntry:
    """What the cohort records about one acquisition site.

    Attributes
    ----------
    sequence : Sequence
        The site's acquisition; its ``n_slices`` equals Z of the site's subjects.
    snr : float or None
        Simulated SNR relative to the white-matter signal (None: real data or
        noise-free).
    extra : dict
        Further JSON-compatible site facts (e.g. the simulated B1 field).
    """

    sequence: Sequence
    snr: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"sequence": self.sequence.to_dict(), "snr": self.snr, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteEntry:
        data = dict(data)
        seq = Sequence.from_dict(data.pop("sequence"))
        snr = data.pop("snr", None)
        return cls(seq, None if snr is None else float(snr), data)


@dataclass(frozen=True)
class SubjectEntry:
    """A subject as listed in the cohort's root attributes."""

    site: str
    split: str = "none"
    group: str = "unknown"

    def __post_init__(self) -> None:
        if not isinstance(self.site, str) or not _NAME_RE.match(self.site):
            raise ValidationError(f"site must be a short name such as '1'; got {self.site!r}")
        if self.split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {self.split!r}")
        if self.group not in GROUPS:
            raise ValidationError(f"group must be one of {GROUPS}; got {self.group!r}")

    def to_dict(self) -> dict[str, str]:
        return {"site": self.site, "split": self.split, "group": self.group}


# --------------------------------------------------------------------------- open
def _zarr():
    import zarr

    return zarr


def read_cohort_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a cohort, checked: a zarr v3 group holding a
    cohort of this schema version.

    Raises
    ------
    StoreError
        Missing path, not a zarr v3 group, not a cohort, other schema version.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: no such cohort (the path does not exist)")
    meta = path / "zarr.json"
    if not path.is_dir() or not meta.is_file():
        hint = " (a zarr v2 store?)" if (path / ".zgroup").exists() else ""
        raise StoreError(f"{path}: not a cohort: not a zarr v3 group (no zarr.json){hint}")
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: not a cohort: unreadable zarr.json ({exc})") from exc
    if doc.get("node_type") != "group" or doc.get("zarr_format") != 3:
        raise StoreError(f"{path}: not a cohort: zarr.json does not describe a zarr v3 group")
    attrs = doc.get("attributes", {}).get(ROOT_KEY)
    if not isinstance(attrs, dict):
        raise StoreError(f"{path}: a zarr group but not an mrfengine cohort (no {ROOT_KEY!r} attribute)")
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise StoreError(
            f"{path}: cohort schema version {version!r} is not supported: this mrfengine reads version "
            f"{SCHEMA_VERSION} (docs/cohort-format.md)"
        )
    return attrs


def _parse_sites(path: Path, attrs: Mapping[str, Any]) -> dict[str, SiteEntry]:
    sites = {}
    for name, entry in dict(attrs.get("sites", {})).items():
        try:
            sites[name] = SiteEntry.from_dict(entry)
        except (ValidationError, KeyError, TypeError) as exc:
            raise StoreError(f"{path}: site {name!r} has no valid sequence: {exc}") from exc
    return sites


def _parse_subjects(path: Path, attrs: Mapping[str, Any]) -> dict[str, SubjectEntry]:
    out = {}
    for sid, entry in dict(attrs.get("subjects", {})).items():
        try:
            out[sid] = SubjectEntry(**entry)
        except (ValidationError, TypeError) as exc:
            raise StoreError(f"{path}: subject {sid!r} has a malformed entry {entry!r}: {exc}") from exc
    return out


def _subject_attrs(path: Path, sid: str) -> dict[str, Any] | None:
    meta = path / "subjects" / sid / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes", {}).get(SUBJECT_KEY)
    return attrs if isinstance(attrs, dict) else None


def _is_complete(attrs: Mapping[str, Any] | None) -> bool:
    return bool(attrs) and attrs.get("complete") is True


def subject_complete(path: str | os.PathLike, subject_id: str) -> bool:
    """Whether the subject group exists and carries its completion marker."""
    return _is_complete(_subject_attrs(Path(path), subject_id))


class Subject:
    """One complete subject of a cohort (read-only view).

    Arrays are :class:`zarr.Array` objects: index them (``subject.mrf[:, z]``)
    to read only what is needed.

    Attributes
    ----------
    id : str
        ``sub-XX``.
    site, split, group : str
    sequence : Sequence
        The site's acquisition.
    affine : ndarray, float64, (4, 4)
        Maps ``(x, y, z, 1)`` voxel indices to world mm; arrays are indexed
        ``[..., z, y, x]``.
    voxel_size_mm : tuple of float
        ``(dx, dy, dz)``.
    shape : tuple of int
        ``(Z, Y, X)``.
    attrs : dict
        All subject attributes (``docs/cohort-format.md``).
    """

    def __init__(self, group: Any, entry: SubjectEntry, site: SiteEntry, attrs: dict[str, Any]) -> None:
        self._group = group
        self.id: str = attrs["id"]
        self.site = entry.site
        self.split = entry.split
        self.group = entry.group
        self.sequence: Sequence = site.sequence
        self.attrs = attrs
        self.affine = np.asarray(attrs["affine"], dtype=np.float64)
        self.voxel_size_mm = tuple(float(v) for v in attrs["voxel_size_mm"])
        self.shape = tuple(int(v) for v in attrs["shape_zyx"])

    def __repr__(self) -> str:
        return (f"Subject({self.id!r}, site={self.site!r}, split={self.split!r}, group={self.group!r}, "
                f"shape={self.shape})")

    @property
    def mrf(self):
        """The MRF magnitudes, zarr array (n_frames, Z, Y, X) float32."""
        return self._group["mrf"]

    @property
    def brain_mask(self):
        """Brain mask, zarr array (Z, Y, X) uint8, or None."""
        return self._group["brain_mask"] if "brain_mask" in self.arrays else None

    def _sub(self, name: str) -> dict[str, Any]:
        prefix = name + "/"
        return {p[len(prefix):]: self._group[p] for p in self.arrays if p.startswith(prefix)}

    @property
    def truth(self) -> dict[str, Any]:
        """Ground-truth arrays by name (empty for imported subjects)."""
        return self._sub("truth")

    @property
    def annotations(self) -> dict[str, Any]:
        """Annotation masks by name (e.g. ``lesion``, ``lesion_repeat``)."""
        return self._sub("annotations")

    @property
    def reference(self) -> dict[str, Any]:
        """Reference images by name (e.g. ``T2w``)."""
        return self._sub("reference")

    @property
    def arrays(self) -> tuple[str, ...]:
        """Paths of all arrays of the subject, as listed at completion."""
        return tuple(self.attrs.get("arrays", ()))

    def array(self, path: str):
        """An array by its path inside the subject group, e.g. ``truth/T1``."""
        if path not in self.arrays:
            raise StoreError(f"{self.id} has no array {path!r}; it has {list(self.arrays)}")
        return self._group[path]


class Cohort:
    """A cohort store opened for reading.

    Use :meth:`open`.  Only complete subjects are visible through
    :attr:`subjects`, iteration and indexing; :attr:`incomplete` lists the
    rest.

    Examples
    --------
    >>> cohort = Cohort.open("cohort.zarr")            # doctest: +SKIP
    >>> for sub in cohort.subjects_in("test"):         # doctest: +SKIP
    ...     frames = cohort[sub].mrf[:, 30]            # (35, Y, X)
    """

    def __init__(self, path: Path, attrs: dict[str, Any], group: Any) -> None:
        self.path = path
        self.attrs = attrs
        self._group = group
        self.schema_version: int = attrs["schema_version"]
        self.sites: dict[str, SiteEntry] = _parse_sites(path, attrs)
        self.entries: dict[str, SubjectEntry] = _parse_subjects(path, attrs)
        sub_dir = path / "subjects"
        on_disk = sorted(p.name for p in sub_dir.iterdir() if p.is_dir()) if sub_dir.is_dir() else []
        self._attrs_of = {sid: _subject_attrs(path, sid) for sid in on_disk}
        self.subjects: list[str] = sorted(
            sid for sid, a in self._attrs_of.items() if _is_complete(a) and sid in self.entries
        )
        self.incomplete: list[str] = sorted(set(self.entries) - set(self.subjects))

    @classmethod
    def open(cls, path: str | os.PathLike) -> Cohort:
        """Open a cohort read-only.

        Raises
        ------
        StoreError
            The path does not exist, is not a zarr v3 group, is not a cohort,
            or has another schema version.
        """
        path = Path(path)
        attrs = read_cohort_attrs(path)
        group = _zarr().open_group(str(path), mode="r")
        return cls(path, attrs, group)

    def __repr__(self) -> str:
        return (f"Cohort({str(self.path)!r}, {len(self.subjects)} complete subjects, "
                f"{len(self.incomplete)} incomplete, sites {sorted(self.sites)})")

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return (self[s] for s in self.subjects)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self.subjects

    def __getitem__(self, subject_id: str) -> Subject:
        if subject_id not in self.entries:
            raise StoreError(f"{self.path}: no subject {subject_id!r}; subjects: {self.subjects}")
        if subject_id not in self.subjects:
            raise StoreError(f"{self.path}: subject {subject_id!r} is incomplete (its writer was interrupted); "
                             "rerun the command that writes it")
        entry = self.entries[subject_id]
        if entry.site not in self.sites:
            raise StoreError(f"{self.path}: subject {subject_id!r} names site {entry.site!r}, which the cohort lacks")
        attrs = self._attrs_of[subject_id]
        try:
            return Subject(self._group[f"subjects/{subject_id}"], entry, self.sites[entry.site], attrs)
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: subject {subject_id!r} has malformed attributes ({exc!r}); "
                             "run `mrfengine validate` on the cohort") from exc

    @property
    def split(self) -> dict[str, str]:
        """Split of every listed subject (complete or not)."""
        return {sid: e.split for sid, e in self.entries.items()}

    def subjects_in(self, split: str) -> list[str]:
        """Complete subjects of one split (``train``, ``validation``, ``test``, ``none``)."""
        if split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {split!r}")
        return [s for s in self.subjects if self.entries[s].split == split]

    def select(self, subject_ids: Iterable[str] | None) -> list[str]:
        """The complete subjects named in ``subject_ids`` (all of them for none),
        in the order given, without repeats.

        A name may leave out ``sub-`` and, for a store with zero-padded numbers,
        the padding: ``7``, ``sub-7``, ``07`` and ``sub-07`` all name ``sub-07``.

        Raises
        ------
        ValidationError
            A name that is no BIDS subject id.
        StoreError
            A subject the store lacks or has incomplete (names the store).
        """
        if not subject_ids:
            return list(self.subjects)
        wanted: list[str] = []
        for name in subject_ids:
            sid = normalize_subject_id(name)
            if sid not in self.subjects and sid[4:].isdigit():
                same = [c for c in self.subjects if c[4:].isdigit() and int(c[4:]) == int(sid[4:])]
                sid = same[0] if len(same) == 1 else sid
            if sid not in self.subjects:
                why = "its writer was interrupted; rerun the command that writes it" if sid in self.entries \
                    else "not in the store"
                raise StoreError(f"{self.path}: no complete subject {sid!r} ({why}); it has {len(self.subjects)} "
                                 f"complete subjects: {', '.join(self.subjects[:6])}"
                                 f"{', ...' if len(self.subjects) > 6 else ''}")
            if sid not in wanted:
                wanted.append(sid)
        return wanted

    def sequence(self, site: str) -> Sequence:
        """The acquisition of ``site``."""
        if site not in self.sites:
            raise StoreError(f"{self.path}: no site {site!r}; sites: {sorted(self.sites)}")
        return self.sites[site].sequence

    @property
    def generator(self) -> dict[str, Any] | None:
        """How the cohort was simulated (preset, seed, configuration), or None."""
        return self.attrs.get("generator")


# --------------------------------------------------------------------------- write
def create_cohort(
    path: str | os.PathLike,
    *,
    sites: Mapping[str, SiteEntry],
    subjects: Mapping[str, SubjectEntry] | None = None,
    kind: str = "imported",
    generator: Mapping[str, Any] | None = None,
    overwrite: bool = False,
):
    """Create an empty cohort (root group, attributes, ``subjects/``).

    Parameters
    ----------
    path : path
        A new folder (``.zarr`` by convention).
    sites : mapping of str to SiteEntry
    subjects : mapping of str to SubjectEntry, optional
        Subjects planned (simulation) or known so far (import).
    kind : {"simulated", "imported"}
    generator : mapping, optional
        JSON-compatible description of how the data are made (preset, seed,
        configuration); a resumed simulation must match it.
    overwrite : bool
        Replace an existing cohort store at ``path`` (see :func:`_remove`:
        only a folder whose root ``zarr.json`` carries the cohort attribute,
        and only if it holds nothing but the store's own files); otherwise an
        existing path is an error.

    Returns
    -------
    zarr.Group
        The root group, open for writing.

    Raises
    ------
    StoreError
        ``path`` exists and ``overwrite`` is false, or it is no cohort store
        (nothing is deleted then).
    """
    from .. import __version__

    path = Path(path)
    if kind not in ("simulated", "imported"):
        raise ValidationError(f"kind must be 'simulated' or 'imported'; got {kind!r}")
    frames = {s.sequence.n_measurements for s in sites.values()}
    if len(frames) > 1:
        raise ValidationError(f"all sites must have the same number of measurements; got {sorted(frames)}")
    attrs = {
        "schema_version": SCHEMA_VERSION,
        "created_by": f"mrfengine {__version__}",
        "kind": kind,
        "n_frames": frames.pop() if frames else None,
        "sites": {name: s.to_dict() for name, s in sorted(sites.items())},
        "subjects": {sid: e.to_dict() for sid, e in sorted((subjects or {}).items())},
        "generator": None if generator is None else dict(generator),
    }
    if os.path.lexists(path):
        if not overwrite:
            raise StoreError(f"{path}: already exists; choose a new path or overwrite it")
        _remove(path)
    zarr = _zarr()
    # Mode "a", never "w": zarr's "w" empties the whole folder.
    tmp_root = zarr.open_group(str(path), mode="a", zarr_format=3)
    tmp_root.require_group("subjects")
    # The root attributes last: until they exist the folder is not a cohort.
    tmp_root.attrs.update({ROOT_KEY: attrs})
    return tmp_root


def open_cohort_for_writing(path: str | os.PathLike):
    """Open an existing cohort for writing (schema version checked); returns
    ``(root group, root attributes)``."""
    path = Path(path)
    attrs = read_cohort_attrs(path)
    return _zarr().open_group(str(path), mode="r+"), attrs


def register_subjects(
    root: Any,
    *,
    subjects: Mapping[str, SubjectEntry] | None = None,
    sites: Mapping[str, SiteEntry] | None = None,
) -> None:
    """Add or replace subject entries and sites in the root attributes.

    A site already present must keep its sequence (checked by digest).
    """
    attrs = dict(root.attrs[ROOT_KEY])
    site_map = dict(attrs.get("sites", {}))
    for name, entry in (sites or {}).items():
        if name in site_map:
            old = Sequence.from_dict(site_map[name]["sequence"])
            if old.digest() != entry.sequence.digest():
                raise StoreError(
                    f"site {name!r} already has sequence {old.name!r} with another timing; one site, one sequence"
                )
            continue
        if attrs.get("n_frames") not in (None, entry.sequence.n_measurements):
            raise StoreError(f"site {name!r} has {entry.sequence.n_measurements} measurements; the cohort has "
                             f"{attrs['n_frames']}")
        attrs["n_frames"] = entry.sequence.n_measurements
        site_map[name] = entry.to_dict()
    subj = dict(attrs.get("subjects", {}))
    for sid, entry in (subjects or {}).items():
        if entry.site not in site_map:
            raise StoreError(f"subject {sid!r} names site {entry.site!r}, which the cohort lacks")
        subj[sid] = entry.to_dict()
    attrs["sites"] = dict(sorted(site_map.items()))
    attrs["subjects"] = dict(sorted(subj.items()))
    root.attrs.update({ROOT_KEY: attrs})


def _remove(path: Path) -> None:
    """Delete the cohort store at ``path``, and nothing that is not provably its own.

    Raises
    ------
    StoreError
        ``path`` is a link or a file, its root ``zarr.json`` lacks the
        ``mrfengine_cohort`` attribute (not a cohort: refused), or the store
        holds files that zarr and mrfengine did not write (refused, named).
        Nothing is deleted then.
    """
    path = Path(path)
    if path.is_symlink() or not path.is_dir():
        raise StoreError(f"{path}: is not an mrfengine cohort (not a folder); refusing to delete it")
    try:
        doc = json.loads((path / "zarr.json").read_text())
        ok = isinstance(doc, dict) and isinstance(doc.get("attributes", {}).get(ROOT_KEY), dict)
    except (OSError, ValueError, AttributeError):
        ok = False
    if not ok:
        raise StoreError(f"{path}: is not an mrfengine cohort (no {ROOT_KEY!r} attribute in its zarr.json); "
                         "refusing to delete it")
    ours: list[Path] = []
    foreign: list[Path] = []  # other files and links: not ours to delete

    def is_array(folder: Path) -> bool:
        try:
            return json.loads((folder / "zarr.json").read_text()).get("node_type") == "array"
        except (OSError, ValueError, AttributeError):
            return False

    def walk(folder: Path, in_chunks: bool) -> None:
        # Ours: every node's zarr.json, the chunks under an array's c/, a batch's write probes.
        array = not in_chunks and is_array(folder)
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink():
                foreign.append(entry)
            elif entry.is_dir():
                walk(entry, in_chunks or (array and entry.name == "c"))
            elif entry.name == "zarr.json" or in_chunks or entry.name.startswith(".mrfengine-write-test-"):
                ours.append(entry)
            else:
                foreign.append(entry)

    try:
        walk(path, False)
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the store to replace it ({exc.strerror or exc})") from exc
    if foreign:
        names = ", ".join(str(p.relative_to(path)) for p in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise StoreError(f"{path}: holds {len(foreign)} file(s) that are not the cohort's ({names}); refusing to "
                         "delete the store: move them out first")
    try:
        for f in ours:
            f.unlink()
        for folder in sorted({d for f in ours for d in f.parents if path in d.parents},
                             key=lambda d: len(d.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    except OSError as exc:
        raise StoreError(f"{path}: cannot delete the old store ({exc.strerror or exc})") from exc


class SubjectWriter:
    """Writes one subject; the subject counts only after :meth:`finish`.

    On creation an existing incomplete group of that id is deleted; an
    existing complete one is an error unless ``overwrite``.  The group is
    created with ``complete: false``; :meth:`finish` writes the array list and
    ``complete: true`` last.

    Parameters
    ----------
    root : zarr.Group
        The cohort's root group (writable).
    subject_id : str
    shape_zyx : (int, int, int)
    affine : ndarray, (4, 4)
        Voxel ``(x, y, z, 1)`` to world mm.
    n_frames : int
    attrs : mapping, optional
        Further subject attributes (qform/sform codes, units, provenance).
    overwrite : bool
    """

    def __init__(
        self,
        root: Any,
        subject_id: str,
        *,
        shape_zyx: tuple[int, int, int],
        affine: np.ndarray,
        n_frames: int,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        sid = normalize_subject_id(subject_id)
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise ValidationError(f"affine must be a finite, invertible 4x4 matrix; got\n{affine}")
        if len(shape_zyx) != 3 or min(shape_zyx) < 1:
            raise ValidationError(f"shape_zyx must be three positive ints; got {shape_zyx}")
        subjects = root.require_group("subjects")
        if sid in subjects:
            try:
                old = subjects[sid].attrs.get(SUBJECT_KEY)
            except Exception:  # noqa: BLE001 - an unreadable group is an incomplete one
                old = None
            if _is_complete(old) and not overwrite:
                raise StoreError(f"subject {sid} is already complete in the cohort; pass overwrite to replace it")
            del subjects[sid]
        self.id = sid
        self.shape = tuple(int(s) for s in shape_zyx)
        self.n_frames = int(n_frames)
        self._group = subjects.create_group(sid)
        self._arrays: list[str] = []
        voxel = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        self._attrs: dict[str, Any] = {
            "id": sid,
            "shape_zyx": list(self.shape),
            "affine": affine.tolist(),
            "voxel_size_mm": [float(v) for v in voxel],
            "qform_code": 1,
            "sform_code": 1,
            "xyzt_units": ["mm", "sec"],
            **dict(attrs or {}),
            "complete": False,
        }
        self._group.attrs.update({SUBJECT_KEY: self._attrs})
        self._finished = False

    def create(self, path: str, *, dtype: str, frames: bool = False, attrs: Mapping[str, Any] | None = None):
        """Create an empty array at ``path`` (e.g. ``truth/T1``), one chunk per slice.

        ``frames`` gives it the MRF shape (n_frames, Z, Y, X); otherwise (Z, Y, X).
        """
        head, _, name = path.rpartition("/")
        if head and not _NAME_RE.match(head):
            raise ValidationError(
                f"arrays live at the subject level or one group deep (e.g. {_GROUPS_OF_SUBJECT}); got {path!r}")
        if not _NAME_RE.match(name):
            raise ValidationError(f"array name must be letters, digits, '_', '.', '-'; got {name!r}")
        z, y, x = self.shape
        shape = (self.n_frames, z, y, x) if frames else (z, y, x)
        chunks = (self.n_frames, 1, y, x) if frames else (1, y, x)
        parent = self._group.require_group(head) if head else self._group
        arr = parent.create_array(
            name, shape=shape, chunks=chunks, dtype=dtype, compressors=default_compressor(), fill_value=0,
            attributes=dict(attrs or {}),
        )
        if path not in self._arrays:
            self._arrays.append(path)
        return arr

    def write(self, path: str, data: np.ndarray, *, attrs: Mapping[str, Any] | None = None):
        """Create ``path`` and write a whole (Z, Y, X) or (n_frames, Z, Y, X) array."""
        data = np.asarray(data)
        frames = data.ndim == 4
        expect = ((self.n_frames,) if frames else ()) + self.shape
        if data.shape != expect:
            raise ValidationError(f"{path} must have shape {expect}; got {data.shape}")
        dtype = "uint8" if data.dtype == bool else str(data.dtype)
        arr = self.create(path, dtype=dtype, frames=frames, attrs=attrs)
        arr[...] = data.astype(dtype, copy=False)
        return arr

    def finish(self, **attrs: Any) -> None:
        """Mark the subject complete: the array list and ``complete: true``, last."""
        if self._finished:
            return
        if "mrf" not in self._arrays:
            raise StoreError(f"{self.id}: cannot finish a subject without its 'mrf' array")
        self._attrs.update(attrs)
        self._attrs["arrays"] = sorted(self._arrays)
        self._attrs["complete"] = True
        self._group.attrs.update({SUBJECT_KEY: self._attrs})
        self._finished = True


# --------------------------------------------------------------------------- validate
@dataclass
class ValidationReport:
    """Problems found by :func:`validate_cohort` (empty ``problems``: valid)."""

    path: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_complete: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_cohort(path: str | os.PathLike, *, deep: bool = False, allow_incomplete: bool = False) -> ValidationReport:
    """Check a cohort against ``docs/cohort-format.md``; name every problem.

    Parameters
    ----------
    path : path
    deep : bool
        Also read the data: finite MRF values, fractions in [0, 1] summing to
        at most 1, binary masks.  Slow for paper-sized cohorts.
    allow_incomplete : bool
        Report incomplete subjects as warnings instead of problems (a
        generation still running).

    Returns
    -------
    ValidationReport

    Raises
    ------
    StoreError
        Only when the path is not a cohort of this schema version at all (the
        message says why); every other finding goes into the report.
    """
    path = Path(path)
    attrs = read_cohort_attrs(path)
    rep = ValidationReport(path)
    try:
        sites = _parse_sites(path, attrs)
        entries = _parse_subjects(path, attrs)
    except StoreError as exc:
        rep.problems.append(str(exc))
        return rep
    n_frames = attrs.get("n_frames")
    for name, site in sites.items():
        if n_frames is not None and site.sequence.n_measurements != n_frames:
            rep.problems.append(f"site {name}: sequence has {site.sequence.n_measurements} measurements, cohort "
                                f"n_frames is {n_frames}")
    for sid, e in entries.items():
        if not _SUBJECT_RE.match(sid):
            rep.problems.append(f"subject id {sid!r} is not BIDS-like ('sub-' + letters/digits)")
        if e.site not in sites:
            rep.problems.append(f"{sid}: site {e.site!r} is not among the cohort's sites {sorted(sites)}")
    sub_dir = path / "subjects"
    on_disk = sorted(p.name for p in sub_dir.iterdir() if p.is_dir()) if sub_dir.is_dir() else []
    for sid in sorted(set(on_disk) - set(entries)):
        rep.problems.append(f"{sid}: a subject group that the root attributes do not list")
    zarr = _zarr()
    for sid in sorted(entries):
        a = _subject_attrs(path, sid) if sid in on_disk else None
        if not _is_complete(a):
            what = "missing" if sid not in on_disk else "incomplete (no completion marker; writer interrupted?)"
            (rep.warnings if allow_incomplete else rep.problems).append(f"{sid}: {what}")
            continue
        rep.n_complete += 1
        site = sites.get(entries[sid].site)
        rep.problems.extend(f"{sid}: {p}" for p in _check_subject(zarr, path, sid, a, site, deep=deep))
    return rep


def _check_subject(zarr: Any, path: Path, sid: str, a: Mapping[str, Any], site: SiteEntry | None, *,
                   deep: bool) -> list[str]:
    problems: list[str] = []
    for key in ("id", "shape_zyx", "affine", "voxel_size_mm", "arrays"):
        if key not in a:
            problems.append(f"attribute {key!r} is missing")
    if problems:
        return problems
    if a["id"] != sid:
        problems.append(f"attribute id is {a['id']!r}, not the group name")
    shape = tuple(a["shape_zyx"])
    aff = np.asarray(a["affine"], dtype=float)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        problems.append(f"affine is not a finite invertible 4x4 matrix: {a['affine']}")
    else:
        vox = np.sqrt((aff[:3, :3] ** 2).sum(axis=0))
        if not np.allclose(vox, a["voxel_size_mm"], rtol=1e-4):
            problems.append(f"voxel_size_mm {a['voxel_size_mm']} disagrees with the affine's {vox.round(4).tolist()}")
    group = zarr.open_group(str(path / "subjects" / sid), mode="r")
    if "mrf" not in a["arrays"]:
        problems.append("no 'mrf' array listed")
    for p in a["arrays"]:
        try:
            arr = group[p]
        except KeyError:
            problems.append(f"array {p!r} is listed but missing")
            continue
        if p == "mrf":
            n_frames = site.sequence.n_measurements if site else arr.shape[0]
            expect = (n_frames,) + shape
            if arr.shape != expect:
                problems.append(f"mrf has shape {arr.shape}; expected {expect} (frames, Z, Y, X)")
            if str(arr.dtype) != "float32":
                problems.append(f"mrf has dtype {arr.dtype}; expected float32")
            if arr.chunks != (expect[0], 1) + shape[1:]:
                problems.append(f"mrf chunks {arr.chunks} are not one slice each {(expect[0], 1) + shape[1:]}")
            if site and shape[0] != site.sequence.n_slices:
                problems.append(f"{shape[0]} slices but the site's sequence has {site.sequence.n_slices}")
            if deep:
                for z in range(arr.shape[1]):
                    if not np.all(np.isfinite(arr[:, z])):
                        problems.append(f"mrf slice {z} has NaN or Inf values")
                        break
            continue
        if arr.shape != shape:
            problems.append(f"{p} has shape {arr.shape}; expected {shape} (Z, Y, X)")
            continue
        if deep and (p.startswith("annotations/") or p == "brain_mask"):
            vals = np.unique(arr[...])
            if not np.all(np.isin(vals, (0, 1))):
                problems.append(f"{p} is not binary: values {vals[:8].tolist()}")
    truth = [p[len("truth/"):] for p in a["arrays"] if p.startswith("truth/")]
    if truth:
        missing = [t for t in REQUIRED_TRUTH if t not in truth]
        if missing:
            problems.append(f"truth lacks {missing}")
        elif deep:
            total = np.zeros(shape, dtype=np.float64)
            for t in ("GM", "WM", "CSF", "lesion"):
                v = np.asarray(group[f"truth/{t}"][...], dtype=np.float64)
                if v.min() < -1e-6 or v.max() > 1 + 1e-5:
                    problems.append(f"truth/{t} leaves [0, 1]: range {v.min():.4g} .. {v.max():.4g}")
                total += v
            if total.max() > 1 + 1e-4:
                problems.append(f"tissue fractions sum to {total.max():.4g} > 1 somewhere")
    return problems


def json_equal(a: Any, b: Any) -> bool:
    """Equality after a JSON round trip (tuples and lists alike, floats exact)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

