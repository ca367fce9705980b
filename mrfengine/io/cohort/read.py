"""Reading a cohort: :class:`Cohort` (``Cohort.open(path_or_store)``), :class:`Subject`,
and the derived groups later stages add (:func:`derived_attrs`, :func:`derived_complete`).

A subject counts only once its ``complete`` attribute is true (written last by
:mod:`.write`); the others are listed with the reason (:attr:`Cohort.absent`).  Arrays
are read as checked :class:`~.validate.StoreArray` objects.  Every access goes through
zarr's API, so a cohort reads alike from a folder, a ``.zip`` or any zarr store
(:mod:`.store`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import StoreError, ValidationError
from ...sequence import Sequence
from .schema import (CHUNKS_KEY, DERIVED, DERIVED_KEY, REVISION_KEY, SPLITS, SUBJECT_KEY, SUBJECTS, SiteEntry,
                     SubjectEntry, array_problem, attrs_problem, check_name, is_complete, json_equal,
                     normalize_subject_id, parse_sites, parse_subjects_lenient)
from .store import consolidated_root, join, local_folder, location, open_root, open_store
from .validate import NO_FOLDER, StoreArray, subject_names, subject_state

__all__ = ["Cohort", "Subject", "read_cohort_attrs", "subject_complete", "derived_attrs", "derived_complete"]

log = logging.getLogger(__name__)

_legacy_warned: set[str] = set()


def read_cohort_attrs(cohort: Any) -> dict[str, Any]:
    """The root attributes of a cohort, checked: a zarr v3 group holding a
    cohort of this schema version.

    Parameters
    ----------
    cohort : path, URL or zarr store

    Raises
    ------
    StoreError
        Missing path, not a zarr v3 group, not a cohort, other schema version.
    """
    return open_root(cohort)[1]


def _root_of(cohort: Any) -> Any:
    """The store path of a cohort given as a :class:`Cohort`, path, URL or store."""
    return cohort.store_path if isinstance(cohort, Cohort) else open_store(cohort)


def subject_complete(cohort: Any, subject_id: str) -> bool:
    """Whether the subject group exists and carries its completion marker."""
    try:
        root = _root_of(cohort)
    except StoreError:
        return False
    return is_complete(subject_state(root, subject_id)[0])


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

    def __init__(self, group: Any, entry: SubjectEntry, site: SiteEntry, attrs: dict[str, Any], *,
                 store: Any = None, consolidated: Any = None) -> None:
        self._group = group
        # The subject's group in the cohort's consolidated metadata, when that copy is current
        # (Cohort.__getitem__ checks): its arrays open without a read of their zarr.json.
        self._consolidated = consolidated
        self._store = str(store) if store is not None else None
        problem = attrs_problem(attrs, getattr(group, "basename", None) or attrs.get("id"))
        if problem:
            raise StoreError(f"{attrs.get('id', '?')}: {problem}")
        self.id: str = attrs["id"]
        self.site = entry.site
        self.split = entry.split
        self.group = entry.group
        self.sequence: Sequence = site.sequence
        self.attrs = attrs
        self.affine = np.asarray(attrs["affine"], dtype=np.float64)
        self.voxel_size_mm = tuple(float(v) for v in attrs["voxel_size_mm"])
        self.shape = tuple(int(v) for v in attrs["shape_zyx"])
        self._opened: dict[str, StoreArray] = {}

    def __repr__(self) -> str:
        return (f"Subject({self.id!r}, site={self.site!r}, split={self.split!r}, group={self.group!r}, "
                f"shape={self.shape})")

    def _open(self, path: str) -> StoreArray:
        """The array at ``path``, its dtype and shape checked against the schema."""
        if path in self._opened:
            return self._opened[path]
        arr = None
        if self._consolidated is not None:
            try:
                arr = self._consolidated[path]
            except Exception:  # noqa: BLE001 - not in the consolidated copy: read the store
                arr = None
        try:
            arr = self._group[path] if arr is None else arr
        except KeyError:
            raise StoreError(f"{self.id}: array {path!r} is listed but missing from the store") from None
        except Exception as exc:  # noqa: BLE001 - unreadable or malformed array metadata
            raise StoreError(f"{self.id}: array {path!r} has unreadable metadata "
                             f"({type(exc).__name__}: {exc})") from exc
        problem = array_problem(path, arr, self.shape, self.sequence.n_measurements)
        if problem:
            raise StoreError(f"{self.id}: {problem}; the store was altered (run mrfengine validate)")
        record = self.attrs.get(CHUNKS_KEY)
        recorded = record.get(path) if isinstance(record, dict) else None
        if recorded is None:
            key = self._store or self.id
            if key not in _legacy_warned:
                _legacy_warned.add(key)
                log.warning("%s: %s/%s has no record of its stored chunks (written by an older mrfengine): a missing "
                            "chunk there reads as zeros and cannot be told from an empty one; `mrfengine validate "
                            "--deep` lists absent chunks, re-simulating or re-importing adds the record",
                            key, self.id, path)
        wrapped = StoreArray(arr, self.id, path, recorded=None if recorded is None else int(recorded))
        self._opened[path] = wrapped
        return wrapped

    @property
    def mrf(self) -> StoreArray:
        """The MRF magnitudes, array (n_frames, Z, Y, X) float32."""
        return self._open("mrf")

    @property
    def brain_mask(self) -> StoreArray | None:
        """Brain mask, array (Z, Y, X) uint8, or None."""
        return self._open("brain_mask") if "brain_mask" in self.arrays else None

    def _sub(self, name: str) -> dict[str, Any]:
        prefix = name + "/"
        return {p[len(prefix):]: self._open(p) for p in self.arrays if p.startswith(prefix)}

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
        return self._open(path)


class Cohort:
    """A cohort store opened for reading.

    Use :meth:`open`.  Only complete subjects are visible through
    :attr:`subjects`, iteration and indexing; :attr:`incomplete` lists the
    rest.

    Attributes
    ----------
    path : Path or str
        The cohort's folder or ``.zip`` file; for another store, its URL.
    location : str
        How messages name the store (``str(path)``).
    store_path : zarr.storage.StorePath
        The store and the cohort's root in it.

    Examples
    --------
    >>> cohort = Cohort.open("cohort.zarr")            # doctest: +SKIP
    >>> cohort = Cohort.open("cohort.zarr.zip")        # doctest: +SKIP
    >>> for sub in cohort.subjects_in("test"):         # doctest: +SKIP
    ...     frames = cohort[sub].mrf[:, 30]            # (35, Y, X)
    """

    def __init__(self, group: Any, attrs: dict[str, Any], store_path: Any) -> None:
        from zarr.storage import ZipStore

        self.store_path = store_path
        self.location = location(store_path)
        folder = local_folder(store_path)
        zipped = isinstance(store_path.store, ZipStore) and not store_path.path
        self.path: Path | str = folder if folder is not None else Path(store_path.store.path) if zipped \
            else self.location
        self.attrs = attrs
        self._group = group
        self._consolidated_root: Any = False  # not looked up yet
        self.schema_version: int = attrs["schema_version"]
        where = self.path
        self.sites: dict[str, SiteEntry] = parse_sites(where, attrs)
        self.entries, malformed = parse_subjects_lenient(where, attrs)
        in_store = subject_names(store_path)
        states = {sid: subject_state(store_path, sid, listed=True) for sid in in_store}
        self._attrs_of = {sid: a for sid, (a, _) in states.items()}
        self.subjects: list[str] = sorted(
            sid for sid, (a, why) in states.items() if why is None and sid in self.entries
        )
        self._opened: dict[str, Subject] = {}
        self.incomplete: list[str] = sorted((set(self.entries) | set(malformed)) - set(self.subjects))
        #: Why each listed subject is not readable: its folder is missing, its ``zarr.json``
        #: is damaged, its writer was interrupted, or its root entry is malformed.
        self.absent: dict[str, str] = {
            sid: malformed.get(sid) or (states[sid][1] if sid in states else NO_FOLDER) or "incomplete"
            for sid in self.incomplete
        }

    @classmethod
    def open(cls, cohort: Any) -> Cohort:
        """Open a cohort read-only.

        Parameters
        ----------
        cohort : path, URL or zarr store
            A folder, a ``.zip`` file (the hierarchy with paths relative to its root),
            an fsspec URL, or a zarr store object (``ZipStore``, ``FsspecStore``,
            ``MemoryStore``, ...; see :mod:`mrfengine.io.cohort.store`).

        Raises
        ------
        StoreError
            The path does not exist, is not a zarr v3 group, is not a cohort,
            or has another schema version.
        """
        group, attrs, sp = open_root(cohort)
        return cls(group, attrs, sp)

    @property
    def name(self) -> str:
        """The store's last path component (``cohort.zarr``), for provenance."""
        return self.path.name if isinstance(self.path, Path) else self.location.rstrip("/").rsplit("/")[-1]

    def __repr__(self) -> str:
        return (f"Cohort({self.location!r}, {len(self.subjects)} complete subjects, "
                f"{len(self.incomplete)} incomplete, sites {sorted(self.sites)})")

    def __len__(self) -> int:
        return len(self.subjects)

    def __iter__(self) -> Iterator[Subject]:
        return (self[s] for s in self.subjects)

    def __contains__(self, subject_id: object) -> bool:
        return subject_id in self.subjects

    def __getitem__(self, subject_id: str) -> Subject:
        if subject_id not in self.entries and subject_id not in self.absent:
            raise StoreError(f"{self.path}: no subject {subject_id!r}; subjects: {self.subjects}")
        if subject_id not in self.subjects:
            raise StoreError(f"{self.path}: subject {subject_id!r} is not readable: {self.absent[subject_id]}; "
                             "rerun the command that writes it")
        entry = self.entries[subject_id]
        if entry.site not in self.sites:
            raise StoreError(f"{self.path}: subject {subject_id!r} names site {entry.site!r}, which the cohort lacks")
        if subject_id in self._opened:  # its arrays' chunk checks are done once
            return self._opened[subject_id]
        attrs = self._attrs_of[subject_id]
        try:
            sub = Subject(self._group[join(SUBJECTS, subject_id)], entry, self.sites[entry.site], attrs,
                          store=self.location, consolidated=self._current_consolidated(subject_id, attrs))
        except StoreError as exc:
            raise StoreError(f"{self.path}: subject {subject_id!r} has malformed attributes ({exc}); "
                             "run `mrfengine validate` on the cohort") from exc
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{self.path}: subject {subject_id!r} has malformed attributes ({exc!r}); "
                             "run `mrfengine validate` on the cohort") from exc
        self._opened[subject_id] = sub
        return sub

    def _current_consolidated(self, sid: str, attrs: dict[str, Any]) -> Any:
        """The subject's group in the consolidated metadata, or None where the cohort has
        none or its copy of the subject is not current.

        Current means: the copy of the subject's attributes equals the subject's own
        (read from its ``zarr.json`` when the cohort was opened), which carry a
        ``revision`` token every writer of the subject's arrays renews.  A subject
        rewritten, a derived group added or replaced after the consolidation (by any
        writer, this mrfengine's or an older one without the token) fails the test, and
        its arrays are read from the store: consolidated metadata never hides a node."""
        if self._consolidated_root is False:
            self._consolidated_root = consolidated_root(self.store_path)
        root = self._consolidated_root
        if root is None or not isinstance(attrs.get(REVISION_KEY), str):
            return None
        try:
            copy = root.metadata.consolidated_metadata.flattened_metadata.get(join(SUBJECTS, sid))
            if copy is None or not json_equal(copy.attributes.get(SUBJECT_KEY), attrs):
                log.debug("%s: the consolidated metadata of %s is not current; reading its arrays' metadata",
                          self.location, sid)
                return None
            return root[join(SUBJECTS, sid)]
        except Exception:  # noqa: BLE001 - a damaged copy: read the store
            return None

    @property
    def split(self) -> dict[str, str]:
        """Split of every listed subject (complete or not)."""
        return {sid: e.split for sid, e in self.entries.items()}

    def subjects_in(self, split: str) -> list[str]:
        """Complete subjects of one split (``train``, ``validation``, ``test``, ``none``)."""
        if split not in SPLITS:
            raise ValidationError(f"split must be one of {SPLITS}; got {split!r}")
        return [s for s in self.subjects if self.entries[s].split == split]

    def select(self, subject_ids: Iterable[str] | None, *, incomplete: bool = False) -> list[str]:
        """The complete subjects named in ``subject_ids`` (all of them for none),
        in the order given, without repeats.

        With ``incomplete``, subjects the root attributes list but that are not
        complete (:attr:`absent`: a missing folder, a damaged ``zarr.json``, an
        interrupted writer) are selected too, so a caller can report each as a
        failure instead of silently using fewer subjects.

        A name may leave out ``sub-`` and, for a store with zero-padded numbers,
        the padding: ``7``, ``sub-7``, ``07`` and ``sub-07`` all name ``sub-07``.

        Raises
        ------
        ValidationError
            A name that is no BIDS subject id.
        StoreError
            A subject the store lacks or has incomplete (names the store).
        """
        known = sorted(set(self.entries) | set(self.absent)) if incomplete else self.subjects
        if not subject_ids:
            return list(known)
        wanted: list[str] = []
        for name in subject_ids:
            sid = normalize_subject_id(name)
            if sid not in known and sid[4:].isdigit():
                same = [c for c in known if c[4:].isdigit() and int(c[4:]) == int(sid[4:])]
                sid = same[0] if len(same) == 1 else sid
            if sid not in known:
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


# --------------------------------------------------------------------------- derived groups
def derived_attrs(cohort: Any, subject: str, pipeline: str) -> dict[str, Any] | None:
    """The ``mrfengine_derived`` attributes of ``subjects/<subject>/derived/<pipeline>/``,
    or None where the group does not exist, cannot be read or has none.

    Parameters
    ----------
    cohort : Cohort, path, URL or zarr store
    subject : str
        ``sub-XX`` (or ``XX``).
    pipeline : str
        The derived group's name.
    """
    import zarr

    sid = normalize_subject_id(subject)
    check_name(pipeline, "pipeline name")
    try:
        root = _root_of(cohort)
        group = zarr.open_group(store=root.store, path=join(root.path, SUBJECTS, sid, DERIVED, pipeline), mode="r",
                                zarr_format=3, use_consolidated=False)
        attrs = group.attrs.get(DERIVED_KEY)
    except Exception:  # noqa: BLE001 - absent, unreadable or damaged: no record
        return None
    return dict(attrs) if isinstance(attrs, dict) else None


def derived_complete(cohort: Any, subject: str, pipeline: str) -> bool:
    """Whether ``derived/<pipeline>/`` of ``subject`` is finished: its group carries
    ``complete: true`` *and* every one of its arrays is listed in the subject's
    ``arrays`` attribute (the record written last)."""
    attrs = derived_attrs(cohort, subject, pipeline)
    if not attrs or attrs.get("complete") is not True:
        return False
    sid = normalize_subject_id(subject)
    sub_attrs = subject_state(_root_of(cohort), sid)[0] or {}
    listed = set(sub_attrs.get("arrays", ()))
    return all(f"derived/{pipeline}/{a}" in listed for a in attrs.get("arrays", ())) and bool(attrs.get("arrays"))
