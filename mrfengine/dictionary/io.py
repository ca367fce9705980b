"""Dictionaries from files other MRF tools write: .npz, HDF5, MATLAB v5 and v7.3.

:func:`load_dictionary` (what :meth:`Dictionary.load <mrfengine.dictionary.Dictionary.load>`
calls) reads mrfengine's own ``.npz`` and the layouts other MRF projects use,
telling the format from the file's first bytes (a zip archive, the HDF5
signature, the MATLAB header), never from its extension alone:

==================  ==============================================================
format              read with
==================  ==============================================================
mrfengine .npz      atoms, norms, ``param:<name>``, ``__metadata__`` (:meth:`Dictionary.save`)
plain .npz          :func:`numpy.load`, ``allow_pickle=False``: any named arrays
HDF5                h5py (the ``hdf5`` extra): datasets, groups as ``group/name``,
                    compound datasets as ``name.field``
MATLAB v5 (and v4)  :func:`scipy.io.loadmat`: struct fields as ``struct.field``
MATLAB v7.3         h5py, axes reversed back to MATLAB's order, cell strings read
==================  ==============================================================

Nothing in a file is executed: no pickles, MATLAB objects and function
handles are skipped as non-numeric.

Layouts found in the wild, all read without options where they are
unambiguous: a struct ``dict`` with ``D`` (atoms x frames), ``normD`` and a
look-up table ``lut`` (one row per atom: T1, T2, ...; the MGH/Cauley
template-matching code); top-level ``dict`` (frames x atoms, MATLAB column
order), ``dict_norm``, ``lut`` and the grid vectors ``T1``/``T2``; ``dict``
with ``look_up`` and ``look_up_names`` (OpenMRF); ``sig`` with one named
vector per parameter (``t1w``, ``t2w``, ... : Pulseq-CEST-MRF); a compound
table of parameters (``T1``, ``T2``, ``B1`` fields, mrftools-style HDF5).
Complex atoms are read as MATLAB complex, an HDF5 compound ``{real, imag}``
(``{r, i}``, ``{re, im}``) or a trailing axis of 2.

Where the file does not say which array is which (two arrays that could be
the atoms, an unnamed look-up table, a square atom matrix), nothing is
guessed: :class:`~mrfengine.errors.InputFileError` names the file and lists
its arrays (:func:`dictionary_arrays`), and the caller names them
(``atoms=``, ``params=``, ``n_frames=``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..errors import DictionaryError, InputFileError, MRFEngineError
from .core import Dictionary, Separable

log = logging.getLogger(__name__)

__all__ = ["ATOM_NAMES", "LAYOUTS", "TABLE_NAMES", "TIME_UNITS", "FrameCountError", "canonical_name",
           "dictionary_arrays", "load_dictionary"]

#: Array names (their last component, case-insensitive) that hold atoms in other tools' files.
ATOM_NAMES = ("atoms", "dict", "dictionary", "d", "dic", "sig", "signal", "signals", "fingerprints", "dict_sw_norm")
#: Names of look-up tables: one row (MATLAB) or column per atom, one column per parameter.
TABLE_NAMES = ("lut", "look_up", "lookup", "lookup_table", "look_up_table", "params", "parameters", "r",
               "dict_params", "entries")
#: Names of the parameter names of a look-up table (a string array or a MATLAB cell of strings).
_TABLE_NAME_NAMES = ("look_up_names", "lookup_names", "lut_names", "param_names", "parameter_names", "params_names",
                     "names", "labels", "columns")
#: Names of the atoms' norms: not parameters (a normalised dictionary's scale, see :func:`load_dictionary`).
_NORM_NAMES = ("norm", "norms", "dict_norm", "dictnorm", "normd", "norm_d", "atom_norms")
#: 2-D arrays beside the atoms that are not atoms: an SVD basis (``V``, ``U``), a sequence's timings.
_NOT_ATOMS = ("v", "u", "basis", "vr", "phi")
#: Vectors of a sequence (one value per frame, or scalars), never parameters of the atoms.
_SEQUENCE_NAMES = ("tr", "te", "ti", "fa", "flip", "flips", "flip_angle", "flip_angles", "flipangles", "alpha",
                   "rfpulses", "rf", "rf_pulses", "phase", "phases", "time", "times", "t", "tr_v", "te_v", "fa_v",
                   "trs", "tes", "fas", "b1_nominal")
#: Unit words of relaxation times and their factor to ms (mrfengine's unit of times).
TIME_UNITS = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "seconds": 1000.0, "milliseconds": 1.0, "us": 1e-3,
              "µs": 1e-3}
#: Canonical parameter names (mrfengine's maps), by lower-case alias.
_ALIASES = {"t1": "T1", "t2": "T2", "t2s": "T2star", "t2star": "T2star", "t2*": "T2star", "t2_star": "T2star",
            "b1": "B1", "b1+": "B1", "tb1": "B1"}
#: Relaxation times mrfengine keeps in ms: the parameters whose unit is converted.
_TIMES = ("T1", "T2", "T2star")
#: Below this largest value an undeclared relaxation time is not plausibly in ms (a whole dictionary of T1 or
#: T2 under 20 ms): refused rather than assumed.
_MS_FLOOR = 20.0

#: The orientations of an atoms array (``layout=``): axis 0 holds the atoms, or axis 1.
LAYOUTS = ("atoms x frames", "frames x atoms")

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_COMPLEX_FIELDS = (("real", "imag"), ("r", "i"), ("re", "im"), ("real", "imaginary"))


def canonical_name(name: str) -> str:
    """``T1``, ``T2``, ``T2star`` or ``B1`` for their common spellings (``t1``, ``T2s``, ``t2*``); others unchanged."""
    return _ALIASES.get(name.strip().lower(), name.strip())


# ---------------------------------------------------------------------------------------------- file contents
@dataclass
class _Entry:
    """One array of a file: its shape (MATLAB's order for MATLAB files) and how to read it."""

    shape: tuple[int, ...]
    kind: str  # "real", "complex", "pair" (trailing axis of 2 read as complex later), "text"
    read: Callable[[], Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        dims = " x ".join(str(s) for s in self.shape) or "scalar"
        return f"{dims} {self.kind}" + (f" ({self.note})" if self.note else "")


@dataclass
class _Contents:
    path: Path
    format: str
    entries: dict[str, _Entry]

    def listing(self, limit: int = 40) -> str:
        items = [f"{name} ({e.describe()})" for name, e in self.entries.items()]
        more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more if items else "no arrays"

    def find(self, name: str) -> str:
        """The entry called ``name``: exact, with ``.`` and ``/`` alike, or a unique last component."""
        norm = _norm_key(name)
        hits = [k for k in self.entries if _norm_key(k) == norm]
        if not hits:
            hits = [k for k in self.entries if _norm_key(k).rsplit("/", 1)[-1] == norm]
        if len(hits) == 1:
            return hits[0]
        why = f"is ambiguous ({', '.join(hits)})" if hits else "is not in the file"
        raise InputFileError(f"{self.path}: array {name!r} {why}; it holds {self.listing()}")


def _norm_key(name: str) -> str:
    return name.strip().strip("/").replace(".", "/")


def _leaf(name: str) -> str:
    return _norm_key(name).rsplit("/", 1)[-1].lower()


def _sniff(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(2048 + 8)
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "npz"
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        return "matlab-v7.3"
    for offset in (0, 512, 1024, 2048):
        if head[offset:offset + 8] == _HDF5_SIGNATURE:
            return "hdf5"
    if head.startswith(b"MATLAB 5.0 MAT-file") or (len(head) >= 128 and head[126:128] in (b"IM", b"MI")):
        return "matlab-v5"
    if path.suffix.lower() == ".mat":
        return "matlab-v4"  # no header of its own; scipy tells it from the first record
    if not head:
        raise InputFileError(f"{path}: the dictionary file is empty")
    raise InputFileError(f"{path}: not a dictionary file mrfengine can read (an .npz archive, HDF5 or a MATLAB "
                         f".mat file, told by its first bytes)")


def _array_kind(dtype: np.dtype) -> str | None:
    if dtype.kind in "fiub":
        return "real"
    if dtype.kind == "c":
        return "complex"
    if dtype.kind in "US":
        return "text"
    return None


def _add_array(entries: dict[str, _Entry], name: str, arr: np.ndarray, note: str = "") -> None:
    """A numpy array into ``entries``: structured arrays by field, complex pairs marked, objects skipped."""
    if arr.dtype.names:
        fields = tuple(f.lower() for f in arr.dtype.names)
        for re_name, im_name in _COMPLEX_FIELDS:
            if fields == (re_name, im_name):
                re_f, im_f = arr.dtype.names
                value = arr[re_f] + 1j * arr[im_f]
                entries[name] = _Entry(value.shape, "complex", lambda v=value: v, note="compound real/imag")
                return
        for f in arr.dtype.names:
            _add_array(entries, f"{name}.{f}", arr[f], note)
        return
    kind = _array_kind(arr.dtype)
    if kind is None:
        return
    entries[name] = _Entry(arr.shape, kind, lambda a=arr: a, note=note)


# ----------------------------------------------------------------------------------------------- readers
def _read_npz(path: Path) -> Iterator[dict[str, _Entry]]:
    entries: dict[str, _Entry] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            try:
                arr = z[key]
            except ValueError as exc:  # an object array: would need pickle
                if "pickle" in str(exc).lower():
                    continue
                raise
            _add_array(entries, key, arr)
        yield entries


def _matlab_value(entries: dict[str, _Entry], name: str, value: Any) -> None:
    """scipy's ``simplify_cells`` output into ``entries``: dicts are structs, lists cells."""
    if isinstance(value, dict):
        for k, v in value.items():
            _matlab_value(entries, f"{name}.{k}" if name else k, v)
    elif isinstance(value, str):
        text = np.array(value)
        entries[name] = _Entry((), "text", lambda v=text: v)
    elif isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object):
        items = list(np.ravel(np.asarray(value, dtype=object))) if not isinstance(value, (list, tuple)) else value
        if items and all(isinstance(v, str) for v in items):
            arr = np.array(items)
            entries[name] = _Entry(arr.shape, "text", lambda a=arr: a, note="cell of strings")
    elif isinstance(value, np.ndarray):
        _add_array(entries, name, value, "MATLAB complex" if np.iscomplexobj(value) else "")
    elif isinstance(value, (int, float, complex, np.number)):
        arr = np.asarray(value)
        _add_array(entries, name, arr)


def _read_matlab_v5(path: Path) -> Iterator[dict[str, _Entry]]:
    from scipy.io import loadmat

    data = loadmat(path, simplify_cells=True, mat_dtype=False)
    entries: dict[str, _Entry] = {}
    for key, value in data.items():
        if not key.startswith("__"):
            _matlab_value(entries, key, value)
    yield entries


def _h5py(path: Path | None = None):
    try:
        import h5py
    except ImportError as exc:
        where = f"{path}: " if path is not None else ""
        raise InputFileError(f"{where}reading HDF5 and MATLAB v7.3 dictionaries needs h5py: "
                             f"pip install 'mrfengine[hdf5]'") from exc
    return h5py


def _read_hdf5(path: Path, matlab: bool) -> Iterator[dict[str, _Entry]]:
    h5py = _h5py(path)
    entries: dict[str, _Entry] = {}
    with h5py.File(path, "r") as f:
        sep_of = {}

        def visit(name: str, obj: Any) -> None:
            if name.startswith(("#refs#", "#subsystem#")):
                return
            parent = name.rsplit("/", 1)[0] if "/" in name else ""
            if isinstance(obj, h5py.Group):
                sep_of[name] = "." if matlab and _attr_text(obj.attrs.get("MATLAB_class")) == "struct" else "/"
                return
            if not isinstance(obj, h5py.Dataset):
                return
            label = name
            if parent:
                label = _h5_label(parent, sep_of) + sep_of.get(parent, "/") + name.rsplit("/", 1)[1]
            _add_dataset(entries, label, obj, f, matlab)

        f.visititems(visit)
        yield entries


def _h5_label(group: str, sep_of: dict[str, str]) -> str:
    parts = group.split("/")
    label = parts[0]
    for i in range(1, len(parts)):
        label += sep_of.get("/".join(parts[:i]), "/") + parts[i]
    return label


def _attr_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.dtype.kind == "S":
        return b"".join(value.ravel()).decode("utf-8", "replace")
    return "" if value is None else str(value)


def _add_dataset(entries: dict[str, _Entry], label: str, ds: Any, f: Any, matlab: bool) -> None:
    h5py = _h5py()
    mclass = _attr_text(ds.attrs.get("MATLAB_class")) if matlab else ""
    attrs = {k: ds.attrs[k] for k in ds.attrs if not k.startswith("MATLAB_")}
    if matlab and ds.attrs.get("MATLAB_empty") is not None and int(np.ravel(ds.attrs["MATLAB_empty"])[0]):
        return
    dtype = ds.dtype
    shape = tuple(reversed(ds.shape)) if matlab else tuple(ds.shape)

    def oriented(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(arr.T) if matlab and arr.ndim > 1 else arr

    if matlab and mclass == "char":
        entries[label] = _Entry((), "text", lambda: np.array(_matlab_chars(ds[()])))
        return
    if matlab and mclass == "cell" and h5py.check_dtype(ref=dtype) is not None:
        refs = oriented(ds[()]).ravel()
        texts = []
        for ref in refs:
            target = f[ref]
            if not (isinstance(target, h5py.Dataset) and _attr_text(target.attrs.get("MATLAB_class")) == "char"):
                return
            texts.append(_matlab_chars(target[()]))
        arr = np.array(texts)
        entries[label] = _Entry(arr.shape, "text", lambda a=arr: a, note="cell of strings")
        return
    if dtype.names:
        names = tuple(n.lower() for n in dtype.names)
        for re_name, im_name in _COMPLEX_FIELDS:
            if names == (re_name, im_name):
                re_f, im_f = dtype.names

                def read_complex(ds=ds, re_f=re_f, im_f=im_f):
                    raw = ds[()]
                    out = np.empty(raw.shape, np.result_type(raw[re_f].dtype, np.complex64))
                    out.real, out.imag = raw[re_f], raw[im_f]
                    return oriented(out)

                entries[label] = _Entry(shape, "complex", read_complex, attrs, note="compound real/imag")
                return
        for fname in dtype.names:
            if _array_kind(dtype[fname]) in ("real", "complex") and dtype[fname].shape == ():
                entries[f"{label}.{fname}"] = _Entry(
                    shape, _array_kind(dtype[fname]), lambda ds=ds, fname=fname: oriented(ds.fields(fname)[()]),
                    _field_attrs(attrs, fname, dtype.names))
        return
    kind = _array_kind(dtype)
    if kind == "text" or h5py.check_string_dtype(dtype) is not None:
        def read_text(ds=ds):
            raw = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) is not None else ds[()]
            return np.array(raw, dtype=str)

        entries[label] = _Entry(shape, "text", read_text)
        return
    if kind is None:
        return
    # h5py reads a compound {r, i} as complex itself: HDF5 has no complex type of its own
    entries[label] = _Entry(shape, kind, lambda ds=ds: oriented(np.asarray(ds[()])), attrs,
                            note="compound real/imag" if kind == "complex" else "")


def _field_attrs(attrs: dict[str, Any], fname: str, names: tuple[str, ...]) -> dict[str, Any]:
    """A compound dataset's ``units`` attribute (one per field) for one field."""
    units = attrs.get("units", attrs.get("unit"))
    if units is not None and np.ndim(units) == 1 and len(units) == len(names):
        return {"units": np.ravel(units)[names.index(fname)]}
    return {}


def _matlab_chars(raw: np.ndarray) -> str:
    codes = np.asarray(raw).T.ravel()
    return "".join(chr(int(c)) for c in codes if int(c))


@contextmanager
def _open(path: Path) -> Iterator[_Contents]:
    fmt = _sniff(path)
    readers = {"npz": lambda: _read_npz(path), "matlab-v5": lambda: _read_matlab_v5(path),
               "matlab-v4": lambda: _read_matlab_v5(path), "hdf5": lambda: _read_hdf5(path, matlab=False),
               "matlab-v7.3": lambda: _read_hdf5(path, matlab=True)}
    gen = readers[fmt]()
    try:
        try:
            entries = next(gen)
        except InputFileError:
            raise
        except Exception as exc:  # any reader failure is a bad file; the reader is named
            raise InputFileError(f"{path}: not a readable {fmt} dictionary file (truncated or corrupt?): "
                                 f"{type(exc).__name__}: {exc}") from exc
        try:
            yield _Contents(path, fmt, entries)
        except MRFEngineError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
            raise InputFileError(f"{path}: reading the {fmt} file failed (truncated or corrupt?): "
                                 f"{type(exc).__name__}: {exc}") from exc
    finally:
        gen.close()


def dictionary_arrays(path: str | os.PathLike) -> dict[str, str]:
    """The arrays a dictionary file holds, as :func:`load_dictionary` names them.

    Parameters
    ----------
    path : path
        An .npz, HDF5 or MATLAB file.

    Returns
    -------
    dict of str to str
        Name (``struct.field`` for MATLAB structs, ``group/name`` for HDF5
        groups, ``name.field`` for compound fields) -> shape and kind, e.g.
        ``{"dict.D": "5000 x 1000 complex", "dict.lut": "5000 x 2 real"}``.
        MATLAB files list MATLAB's shapes (rows x columns), v7.3 included.
    """
    path = _existing(path)
    with _open(path) as contents:
        return {name: e.describe() for name, e in contents.entries.items()}


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"{path}: dictionary file not found")
    return path


# --------------------------------------------------------------------------------------------- selection
_INDEX = re.compile(r"^(?P<name>.+?)\s*\[\s*(?P<a>:|-?\d+)\s*(?:,\s*(?P<b>:|-?\d+)\s*)?\]$")


def _read_spec(contents: _Contents, spec: str) -> tuple[np.ndarray, str]:
    """``NAME``, ``NAME[:, j]`` or ``NAME[j, :]`` (0-based, in the listed shape) -> values, entry name."""
    m = _INDEX.match(spec.strip())
    if "(" in spec and m is None:
        raise InputFileError(f"{contents.path}: parameter {spec!r}: write columns as NAME[:, j] (0-based, numpy "
                             f"style), not MATLAB's NAME(:, j)")
    name = contents.find(m.group("name") if m else spec)
    entry = contents.entries[name]
    if entry.kind == "text":
        raise InputFileError(f"{contents.path}: {name!r} holds text, not parameter values")
    arr = np.asarray(entry.read())
    if m is None:
        return arr, name
    a, b = m.group("a"), m.group("b")
    index: tuple[Any, ...] = (slice(None) if a == ":" else int(a),) + (() if b is None else
                                                                       (slice(None) if b == ":" else int(b),))
    if len(index) > arr.ndim:
        raise InputFileError(f"{contents.path}: {spec!r} indexes {len(index)} axes of {name!r}, shape {arr.shape}")
    try:
        return np.asarray(arr[index]), name
    except IndexError as exc:
        raise InputFileError(f"{contents.path}: {spec!r}: {exc} (shape of {name!r}: {arr.shape})") from None


@dataclass
class _Atoms:
    name: str
    values: np.ndarray  # 2-D, complex where the file says so, atoms x frames once oriented
    complex_from: str


def _atoms_array(contents: _Contents, name: str) -> _Atoms:
    entry = contents.entries[name]
    if entry.kind == "text":
        raise InputFileError(f"{contents.path}: {name!r} holds text, not atoms")
    arr = np.asarray(entry.read())
    how = (entry.note or "complex values") if entry.kind == "complex" else ""
    if arr.ndim == 3 and arr.shape[-1] == 2 and not np.iscomplexobj(arr):
        arr = arr[..., 0] + 1j * arr[..., 1]
        how = "trailing axis of 2 (real, imaginary)"
    if arr.ndim != 2:
        raise InputFileError(f"{contents.path}: atoms {name!r} must be a 2-D array (atoms and frames) or 3-D with "
                             f"a last axis of 2 (real, imaginary); got shape {arr.shape}")
    return _Atoms(name, arr, how)


def _is_atoms_candidate(entry: _Entry) -> bool:
    if entry.kind not in ("real", "complex"):
        return False
    s = entry.shape
    return (len(s) == 2 and min(s) >= 2) or (len(s) == 3 and s[-1] == 2 and min(s[:2]) >= 2 and entry.kind == "real")


def _choose_atoms(contents: _Contents, atoms: str | None) -> str:
    if atoms is not None:
        return contents.find(atoms)
    entries = contents.entries
    named = [k for k, e in entries.items() if _leaf(k) in ATOM_NAMES and _is_atoms_candidate(e)]
    if len(named) == 1:
        return named[0]
    if len(named) > 1:
        raise InputFileError(f"{contents.path}: more than one array could hold the atoms ({', '.join(named)}); "
                             f"name one with atoms=NAME (--dictionary-atoms); the file holds {contents.listing()}")
    others = [k for k, e in entries.items() if _is_atoms_candidate(e) and _leaf(k) not in TABLE_NAMES + _NOT_ATOMS]
    if len(others) == 1:
        return others[0]
    what = (f"several arrays could hold them ({', '.join(others)})" if others else "no 2-D array could hold them")
    raise InputFileError(f"{contents.path}: cannot tell which array holds the atoms: {what}; name it with "
                         f"atoms=NAME (--dictionary-atoms); the file holds {contents.listing()}")


def _table_names(contents: _Contents, table: str, n_cols: int) -> list[str] | None:
    """The column names of a look-up table: an attribute of it or a string array beside it."""
    entry = contents.entries[table]
    for key in ("names", "columns", "fields", "parameter_names", "param_names"):
        if key in entry.attrs:
            names = [_attr_text(v) if isinstance(v, bytes) else str(v) for v in np.ravel(entry.attrs[key])]
            if len(names) == n_cols:
                return names
    prefix = _norm_key(table).rsplit("/", 1)[0] if "/" in _norm_key(table) else ""
    texts = [k for k, e in contents.entries.items() if e.kind == "text" and _leaf(k) in
             _TABLE_NAME_NAMES + (f"{_leaf(table)}_names",)]
    same_level = [k for k in texts if (_norm_key(k).rsplit("/", 1)[0] if "/" in _norm_key(k) else "") == prefix]
    for k in same_level or texts:
        names = [str(v).strip() for v in np.ravel(contents.entries[k].read())]
        if len(names) == n_cols:
            return names
    return None


def _grid_names(contents: _Contents, table: np.ndarray, exclude: set[str]) -> list[str] | None:
    """Columns named by the grid vectors beside them: column j is ``T1`` when its distinct values are
    exactly those of a vector ``T1`` (and of no other vector)."""
    vectors = {k: e for k, e in contents.entries.items() if e.kind == "real" and len(e.shape) == 1
               and 1 < e.shape[0] < table.shape[0] and k not in exclude}
    names = []
    for j in range(table.shape[1]):
        col = np.unique(table[:, j])
        hits = []
        for k, e in vectors.items():
            values = np.unique(np.asarray(e.read(), dtype=np.float64))
            if values.shape == col.shape and np.allclose(values, col, rtol=1e-6, atol=0):
                hits.append(k)
        if len(hits) != 1:
            return None
        names.append(_norm_key(hits[0]).rsplit("/", 1)[-1])
    return names if len(set(map(canonical_name, names))) == len(names) else None


def _units_of(contents: _Contents, source: str, column: int | None) -> str | None:
    """What the file says about a parameter's unit: a ``units``/``unit`` attribute (one per column of a
    table), or a text entry ``<name>_units``/``<name>_unit`` (``units`` for a table's columns)."""
    entry = contents.entries.get(source)
    if entry is not None:
        for key in ("units", "unit", "Units", "UNITS"):
            if key in entry.attrs:
                value = entry.attrs[key]
                if column is not None and np.ndim(value) == 1 and len(value) > column:
                    value = np.ravel(value)[column]
                elif np.ndim(value) >= 1 and np.size(value) != 1:
                    continue
                return _attr_text(np.ravel(value)[0] if np.ndim(value) else value).strip()
    leaf = _leaf(source)
    for k, e in contents.entries.items():
        if e.kind == "text" and _leaf(k) in (f"{leaf}_units", f"{leaf}_unit", f"{leaf}units", f"{leaf}unit"):
            values = [str(v).strip() for v in np.ravel(e.read())]
            if column is None and len(values) == 1:
                return values[0]
            if column is not None and len(values) > column:
                return values[column]
    return None


def _per_atom(values: np.ndarray, n_atoms: int) -> np.ndarray | None:
    v = np.asarray(values)
    if v.ndim == 2 and 1 in v.shape:
        v = v.ravel()
    return v if v.ndim == 1 and v.shape[0] == n_atoms else None


def _table_columns(contents: _Contents, name: str, n_atoms: int) -> np.ndarray | None:
    """A look-up table as (n_atoms, n_params), or None when neither axis has ``n_atoms``."""
    arr = np.asarray(contents.entries[name].read())
    if arr.ndim == 1 and arr.shape[0] == n_atoms:
        return arr[:, None]
    if arr.ndim != 2:
        return None
    if arr.shape[0] == n_atoms and arr.shape[1] != n_atoms:
        return arr
    if arr.shape[1] == n_atoms and arr.shape[0] != n_atoms:
        return arr.T
    return arr if arr.shape[0] == n_atoms else None


def _find_params(contents: _Contents, atoms_name: str, n_atoms: int,
                 names: Sequence[str] | None) -> tuple[dict[str, np.ndarray], dict[str, str], dict[str, str]]:
    """Per-atom parameters found in the file: (values, source spec, unit from the file) by name.

    ``names``: the column names of the file's one look-up table (``params=("T1", "T2")``)."""
    values: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    units: dict[str, str] = {}
    entries = contents.entries

    def add(name: str, v: np.ndarray, source: str, unit: str | None) -> None:
        key = canonical_name(name)
        if key in values:
            raise InputFileError(f"{contents.path}: parameter {key} found twice ({sources[key]} and {source}); "
                                 f"name the parameters with params={{...}} (--dictionary-params NAME=ARRAY)")
        values[key], sources[key] = v, source
        if unit:
            units[key] = unit

    tables = [k for k, e in entries.items() if k != atoms_name and e.kind == "real" and _leaf(k) in TABLE_NAMES
              and len(e.shape) == 2 and n_atoms in e.shape and min(e.shape) >= 1]
    if names is not None and len(tables) != 1:
        what = f"several ({', '.join(tables)})" if tables else "none"
        raise InputFileError(f"{contents.path}: params={tuple(names)} names the columns of the look-up table, "
                             f"but the file holds {what} with {n_atoms} rows; name each parameter's array "
                             f"instead (params={{'T1': 'lut[:, 0]', ...}}); the file holds {contents.listing()}")
    for table in tables:
        arr = _table_columns(contents, table, n_atoms)
        if arr is None:
            raise InputFileError(f"{contents.path}: look-up table {table!r} (shape {entries[table].shape}) is square: "
                                 f"name its columns with params={{'T1': '{table}[:, 0]', ...}}")
        cols = list(names) if names is not None else _table_names(contents, table, arr.shape[1])
        if cols is None:
            cols = _grid_names(contents, arr, {table, atoms_name})
        if cols is None:
            raise InputFileError(
                f"{contents.path}: look-up table {table!r} has {arr.shape[1]} column(s) per atom but no names for "
                f"them; name them in order, e.g. params=('T1', 'T2') (--dictionary-params T1,T2); the file holds "
                f"{contents.listing()}")
        if len(cols) != arr.shape[1]:
            raise InputFileError(f"{contents.path}: {len(cols)} parameter name(s) {tuple(cols)} for the "
                                 f"{arr.shape[1]} column(s) of {table!r}")
        by_rows = len(entries[table].shape) == 1 or entries[table].shape[0] == n_atoms
        for j, col in enumerate(cols):
            spec = f"{table}[:, {j}]" if by_rows else f"{table}[{j}, :]"
            add(col, np.ascontiguousarray(arr[:, j]), spec, _units_of(contents, table, j))
    for k, e in entries.items():
        if k == atoms_name or k in tables or e.kind != "real" or _leaf(k) in _NORM_NAMES + _SEQUENCE_NAMES:
            continue
        if len(e.shape) == 1 and e.shape[0] == n_atoms or (len(e.shape) == 2 and sorted(e.shape) == [1, n_atoms]):
            v = _per_atom(e.read(), n_atoms)
            if v is not None:
                add(_norm_key(k).rsplit("/", 1)[-1], v, k, _units_of(contents, k, None))
    return values, sources, units


def _norms_entry(contents: _Contents, n_atoms: int) -> tuple[str, np.ndarray] | None:
    hits = [k for k, e in contents.entries.items() if e.kind == "real" and _leaf(k) in _NORM_NAMES
            and int(np.prod(e.shape)) == n_atoms and max(e.shape, default=0) == n_atoms]
    if len(hits) != 1:
        return None
    return hits[0], np.asarray(contents.entries[hits[0]].read(), dtype=np.float64).ravel()


# ------------------------------------------------------------------------------------------------ units
def _apply_units(path: Path, params: dict[str, np.ndarray], file_units: dict[str, str],
                 given: Mapping[str, str] | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    given = {canonical_name(k): str(v).strip() for k, v in (given or {}).items()}
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise DictionaryError(f"{path}: units given for {', '.join(unknown)}, which the dictionary does not have "
                              f"(its parameters: {', '.join(params)})")
    out: dict[str, np.ndarray] = {}
    units: dict[str, str] = {}
    record: dict[str, Any] = {}
    assumed, converted = [], {}
    for name, v in params.items():
        unit = given.get(name, file_units.get(name))
        if name in _TIMES:
            if unit is None:
                values = np.asarray(v, dtype=np.float64)
                top = float(np.nanmax(values)) if values.size else 0.0
                if top < _MS_FLOOR:
                    raise DictionaryError(
                        f"{path}: {name} values lie in [{float(np.nanmin(values)):.4g}, {top:.4g}] and the file gives "
                        f"no unit: seconds, or ms? say so with units={{'{name}': 's'}} (--dictionary-units "
                        f"{name}=s) or 'ms'")
                unit = "ms"
                assumed.append(name)
            factor = TIME_UNITS.get(unit.lower() if unit != "µs" else unit)
            if factor is None:
                raise DictionaryError(f"{path}: unit {unit!r} of {name} is not a time unit mrfengine knows "
                                      f"({', '.join(TIME_UNITS)})")
            if factor != 1.0:
                converted[name] = f"{unit} -> ms"
            out[name] = np.asarray(v, dtype=np.float64) * factor
            units[name] = "ms"
        else:
            out[name] = np.asarray(v)
            if unit is not None:
                units[name] = unit
    record["units"] = units
    if assumed:
        log.warning("%s: no unit given for %s; taken as ms (values up to %s): pass units= "
                    "(--dictionary-units) if they are not", path, ", ".join(assumed),
                    ", ".join(f"{n} {float(np.nanmax(out[n])):.4g}" for n in assumed))
        record["units_assumed"] = assumed
    if converted:
        record["units_converted"] = converted
    return out, record


# ------------------------------------------------------------------------------------------------- load
def _is_mrfengine_npz(contents: _Contents) -> bool:
    keys = set(contents.entries)
    return contents.format == "npz" and "atoms" in keys and any(k.startswith("param:") for k in keys)


def _load_mrfengine(contents: _Contents) -> Dictionary:
    e = contents.entries
    try:
        atoms = e["atoms"].read()
        params = {k.split(":", 1)[1]: e[k].read() for k in e if k.startswith("param:")}
        meta = json.loads(bytes(e["__metadata__"].read()).decode()) if "__metadata__" in e else {}
        norms = e["norms"].read() if "norms" in e else None
        sep = None
        if "sep:amplitude" in e:
            sep = Separable(e["sep:amplitude"].read(), e["sep:decay"].read(), e["sep:pair"].read(),
                            e["sep:decay_index"].read())
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{contents.path}: not a readable mrfengine dictionary ({exc})") from exc
    try:
        return Dictionary(atoms, params, metadata=meta, norms=norms, separable=sep)
    except DictionaryError as exc:
        raise InputFileError(f"{contents.path}: {exc}") from exc


def load_dictionary(
    path: str | os.PathLike,
    *,
    atoms: str | None = None,
    params: Mapping[str, str | ArrayLike] | Sequence[str] | None = None,
    units: Mapping[str, str] | None = None,
    n_frames: int | None = None,
    layout: str | None = None,
) -> Dictionary:
    """Read a dictionary from mrfengine's .npz or another tool's .npz, HDF5 or MATLAB (v5, v7.3) file.

    The format is told from the file's first bytes (zip, HDF5 signature,
    MATLAB header), not its extension.  A file :meth:`Dictionary.save` wrote
    is read as it was saved.  Other files are searched for the atoms and the
    per-atom parameters (the module docstring lists the layouts); what cannot
    be told apart is refused, never guessed, and named with the options.

    Parameters
    ----------
    path : path
        The file.
    atoms : str, optional
        The array of the atoms, as :func:`dictionary_arrays` lists it
        (``"dict.D"``, ``"D"`` where the last component is unique,
        ``"group/atoms"``).  Default: the one 2-D array called ``dict``,
        ``D``, ``atoms``, ``sig``, ... (:data:`ATOM_NAMES`), else the one
        2-D array that is not a look-up table.  Either orientation (atoms x
        frames, or frames x atoms as MATLAB code keeps them) is accepted;
        the axis of the atoms is the one the parameters have.  Complex atoms
        stay complex: MATLAB complex, HDF5 compound ``{real, imag}``, or a
        last axis of 2.
    params : mapping or sequence of str, optional
        Which arrays are the parameters.  A mapping of parameter name to an
        array's name, a column of one (``"lut[:, 0]"``, ``"lut[1, :]"``:
        0-based, numpy style, in the listed shape) or the values themselves:
        ``{"T1": "lut[:, 0]", "T2": "lut[:, 1]"}``.  A sequence names the
        columns of the file's one look-up table in order:
        ``("T1", "T2", "B1")``.  Default: the columns of each look-up table
        (``lut``, ``look_up``, ``params``, ``r``: :data:`TABLE_NAMES`) named
        by the file (``look_up_names``, a ``names`` attribute, or grid
        vectors ``T1``/``T2`` whose values the columns take), and every
        other 1-D array with one value per atom (norms excepted).
    units : mapping of str to str, optional
        Unit of a parameter where the file gives none or gives it wrongly:
        ``{"T1": "s", "T2": "s"}``.  See Notes.
    n_frames : int, optional
        The fingerprint length: picks the orientation of the atoms where
        parameters lie along both axes, and is checked (a mismatch is
        refused naming both counts).
    layout : {"atoms x frames", "frames x atoms"}, optional
        The orientation of the atoms array as listed (MATLAB's shape for
        MATLAB files); needed only for a square one.

    Returns
    -------
    Dictionary
        Atoms (n_atoms, n_frames), float32/complex64 unless the file holds
        float64/complex128.  Parameter names are canonical where they are
        common spellings (``t1`` -> ``T1``, ``T2s``/``t2*`` -> ``T2star``,
        ``b1`` -> ``B1``).  ``metadata["source"]`` records the file, its
        format, which arrays became the atoms and each parameter, how complex
        values were stored and how the atoms were oriented; ``metadata["units"]``
        each parameter's unit after loading.

    Raises
    ------
    InputFileError
        The file is missing, empty, truncated, corrupt or of no known
        format; or what it holds is ambiguous (two candidates for the atoms,
        an unnamed look-up table, a square atom matrix): the message names
        the file, lists its arrays and says which option settles it.
    DictionaryError
        Atoms or parameters that do not make a dictionary (non-finite
        values, an all-zero atom, a frame count other than ``n_frames``),
        a relaxation time in an unknown unit or without a unit where its
        values look like seconds.

    Notes
    -----
    **Units.** mrfengine keeps relaxation times in ms (its maps are in ms in
    memory and seconds in BIDS files).  ``T1``, ``T2`` and ``T2star`` are
    converted to ms from the unit ``units`` gives, else from the file's
    (an HDF5 ``units`` attribute, one per column of a table, or a text array
    ``<name>_units``).  Without either they are taken as ms, and
    ``metadata["units_assumed"]`` lists them, unless their largest value is
    under 20 (a dictionary of sub-20-ms T1s is not plausible; seconds are):
    that is refused until ``units`` says which.  Other parameters (``B1``,
    off-resonance, exchange rates) keep their values; their unit is recorded
    when the file or ``units`` gives one.

    **Normalised atoms.** Where the atoms all have unit norm and the file
    holds their original norms (``dict_norm``, ``normD``, ``norms``), the atoms
    are scaled back by them, so M0 is in the tool's units; the metadata says so.

    Examples
    --------
    >>> from mrfengine import Dictionary
    >>> d = Dictionary.load("dict.mat", params=("T1", "T2"), units={"T1": "ms", "T2": "ms"})  # doctest: +SKIP
    >>> d = Dictionary.load("fisp.h5", atoms="dictionary/signals",
    ...                     params={"T1": "dictionary/lut[:, 0]", "T2": "dictionary/lut[:, 1]"})  # doctest: +SKIP
    """
    path = _existing(path)
    if n_frames is not None and (isinstance(n_frames, bool) or int(n_frames) != n_frames or n_frames < 1):
        raise DictionaryError(f"n_frames must be a positive integer; got {n_frames!r}")
    if layout is not None and layout not in LAYOUTS:
        raise DictionaryError(f"layout must be one of {', '.join(map(repr, LAYOUTS))}; got {layout!r}")
    if isinstance(params, str):
        raise DictionaryError(f"params must be a mapping or a sequence of names; got the string {params!r} "
                              f"(for one column name write ({params!r},))")
    with _open(path) as contents:
        if _is_mrfengine_npz(contents) and atoms is None and params is None:
            d = _load_mrfengine(contents)
            if units:
                raise DictionaryError(f"{path}: a mrfengine dictionary records its units (times in ms); "
                                      f"units= is for other tools' files")
            _check_frames(path, d.n_frames, n_frames)
            return d
        try:
            return _load_other(contents, atoms, params, units, n_frames, layout)
        except DictionaryError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise DictionaryError(f"{path}: {exc}") from exc


class FrameCountError(DictionaryError):
    """The dictionary's fingerprints are not ``n_frames`` long.

    Attributes
    ----------
    have : tuple of int
        The frame counts the file offers (one, or both axes of an atoms array
        whose orientation was not settled).
    want : int
        The frame count asked for.
    """

    def __init__(self, message: str, have: tuple[int, ...], want: int) -> None:
        super().__init__(message)
        self.have, self.want = have, want


def _check_frames(path: Path, have: int, want: int | None) -> None:
    if want is not None and have != want:
        raise FrameCountError(f"{path}: the dictionary has {have} frames, {want} were expected", (have,), want)


def _load_other(contents: _Contents, atoms: str | None, params: Any, units: Mapping[str, str] | None,
                n_frames: int | None, layout: str | None) -> Dictionary:
    path = contents.path
    atoms_name = _choose_atoms(contents, atoms)
    a = _atoms_array(contents, atoms_name)
    rows, cols = a.values.shape

    explicit: dict[str, np.ndarray] = {}
    sources: dict[str, str] = {}
    file_units: dict[str, str] = {}
    names: Sequence[str] | None = None
    if isinstance(params, Mapping):
        if not params:
            raise DictionaryError("params must name at least one parameter")
        for name, spec in params.items():
            key = canonical_name(str(name))
            if isinstance(spec, str):
                explicit[key], source = _read_spec(contents, spec)
                sources[key] = spec
                m = _INDEX.match(spec.strip())
                ints = [int(g) for g in (m.groups()[1:] if m else ()) if g not in (None, ":")]
                col = ints[0] if len(ints) == 1 else None
                unit = _units_of(contents, source, col)
                if unit:
                    file_units[key] = unit
            else:
                explicit[key], sources[key] = np.asarray(spec), "given"
    elif params is not None:
        names = [str(n) for n in params]
        if not names or len(set(map(canonical_name, names))) != len(names):
            raise DictionaryError(f"params must be distinct names; got {tuple(names)}")

    # Orientation: the axis of the atoms is the one the parameters have (and not n_frames).
    options = []
    for axis, n_atoms in ((0, rows), (1, cols)):
        if n_frames is not None and (cols if axis == 0 else rows) != n_frames:
            continue
        if layout is not None and LAYOUTS.index(layout) != axis:
            continue
        if explicit:
            found = all(_per_atom(v, n_atoms) is not None for v in explicit.values())
            options.append((axis, n_atoms, None) if found else None)
            continue
        try:
            found_params = _find_params(contents, atoms_name, n_atoms, names)
        except InputFileError as exc:
            options.append((axis, n_atoms, exc))
            continue
        options.append((axis, n_atoms, found_params) if found_params[0] else None)
    viable = [o for o in options if o is not None and not isinstance(o[2], InputFileError)]
    errors = [o[2] for o in options if o is not None and isinstance(o[2], InputFileError)]
    if len(viable) > 1 and rows != cols:
        # Parameters along both axes: the axis with mrfengine's named parameters (T1, T2, ...) wins, if only one has them.
        named = [o for o in viable if o[2] is None or set(o[2][0]) & set(_ALIASES.values())]
        if len(named) == 1:
            viable = named
    if rows == cols and len(viable) > 1:
        viable = []
        errors = [InputFileError(f"{path}: atoms {atoms_name!r} are square ({rows} x {cols}): say which axis holds "
                                 f"the atoms with layout='atoms x frames' or 'frames x atoms'")]
    if len(viable) > 1:
        # both axes carry parameters: refuse rather than pick
        raise InputFileError(f"{path}: atoms {atoms_name!r} ({rows} x {cols}) have parameters along both axes; "
                             f"say which axis holds the atoms with n_frames= or layout=, or name the parameters "
                             f"with params=; the file holds {contents.listing()}")
    if not viable:
        if errors:
            raise errors[0]
        if n_frames is not None and n_frames not in (rows, cols):
            raise FrameCountError(f"{path}: atoms {atoms_name!r} have shape {rows} x {cols}: neither axis has the "
                                  f"{n_frames} frames expected", (rows, cols), n_frames)
        if explicit:
            lengths = {k: np.shape(v) for k, v in explicit.items()}
            raise InputFileError(f"{path}: the parameters {lengths} do not have one value per atom of "
                                 f"{atoms_name!r} (shape {rows} x {cols})")
        raise InputFileError(f"{path}: no per-atom parameters found for atoms {atoms_name!r} ({rows} x {cols}): "
                             f"name them with params={{'T1': 'NAME', ...}} (--dictionary-params T1=NAME); the file "
                             f"holds {contents.listing()}")
    axis, n_atoms, found = viable[0]
    values = a.values if axis == 0 else a.values.T
    if found is None:
        param_values = {k: _per_atom(v, n_atoms) for k, v in explicit.items()}
    else:
        param_values, sources, file_units = found
    meta_source: dict[str, Any] = {"file": str(path), "format": contents.format, "atoms": atoms_name,
                                   "layout": LAYOUTS[axis], "params": sources}
    if a.complex_from:
        meta_source["complex"] = a.complex_from
    norms = _norms_entry(contents, n_atoms)
    if norms is not None and np.all(np.isfinite(norms[1])) and np.all(norms[1] > 0):
        own = np.sqrt(np.sum(np.abs(values.astype(np.complex128 if np.iscomplexobj(values) else np.float64)) ** 2,
                             axis=1))
        if np.allclose(own, 1.0, rtol=1e-3) and not np.allclose(norms[1], 1.0, rtol=1e-3):
            values = values * norms[1].astype(values.real.dtype)[:, None]
            meta_source["denormalised_with"] = norms[0]
    typed, unit_record = _apply_units(path, param_values, file_units, units)
    meta = {"source": meta_source, **unit_record}
    _check_frames(path, values.shape[1], n_frames)
    return Dictionary(np.ascontiguousarray(values), typed, metadata=meta)
