"""The :class:`Dictionary`: atoms, their parameters, norms and SVD compression.

A dictionary is any set of simulated fingerprints with a parameter table; it
need not come from mrfengine's own signal model, so other MRF projects can hand
theirs to :func:`mrfengine.match`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .._atomic import atomic_path
from ..errors import DictionaryError

__all__ = ["Dictionary", "SVDCompression", "Separable"]


@dataclass(frozen=True)
class SVDCompression:
    """A rank-``r`` temporal basis of a dictionary's normalised atoms.

    Attributes
    ----------
    basis : ndarray, (n_frames, rank)
        Orthonormal columns (right singular vectors); project signals with
        ``signals @ basis``.  Complex dictionaries: ``signals @ basis`` too,
        with the basis holding the conjugated singular vectors.
    atoms : ndarray, (n_atoms, rank)
        The normalised atoms in the compressed coordinates.
    singular_values : ndarray, (n_frames,)
        All singular values of the normalised atom matrix, descending.
    energy : float
        Fraction of the atoms' energy (sum of squared singular values) kept.
    """

    basis: np.ndarray
    atoms: np.ndarray
    singular_values: np.ndarray
    energy: float

    @property
    def rank(self) -> int:
        return self.basis.shape[1]


@dataclass(frozen=True)
class Separable:
    """A dictionary whose atoms factor as ``amplitude[pair] * decay[decay_index]``.

    MRF-EPI atoms are ``|sin(b a_t) Mz_t(T1, b)|`` (one row per (T1, B1)
    pair) times ``exp(-TE_t / T2*)`` (one row per T2*); matchers use the
    factorisation to skip most of the brute-force work.

    Attributes
    ----------
    amplitude : ndarray, (n_pairs, n_frames)
    decay : ndarray, (n_decays, n_frames)
    pair : ndarray of int64, (n_atoms,)
    decay_index : ndarray of int64, (n_atoms,)
    """

    amplitude: np.ndarray
    decay: np.ndarray
    pair: np.ndarray
    decay_index: np.ndarray

    def check(self, atoms: np.ndarray) -> None:
        """Raise DictionaryError unless the factors reproduce ``atoms``."""
        n, t = atoms.shape
        if self.amplitude.ndim != 2 or self.decay.ndim != 2 or self.amplitude.shape[1] != t \
                or self.decay.shape[1] != t:
            raise DictionaryError(f"separable factors must be 2-D with {t} frames; got "
                                  f"{self.amplitude.shape} and {self.decay.shape}")
        if self.pair.shape != (n,) or self.decay_index.shape != (n,):
            raise DictionaryError(f"separable indices must have shape ({n},)")
        if n and (self.pair.min() < 0 or self.pair.max() >= self.amplitude.shape[0]
                  or self.decay_index.min() < 0 or self.decay_index.max() >= self.decay.shape[0]):
            raise DictionaryError("separable indices out of range")
        sample = np.unique(np.linspace(0, n - 1, min(n, 257)).astype(np.int64))
        rebuilt = self.amplitude[self.pair[sample]] * self.decay[self.decay_index[sample]]
        if not np.allclose(rebuilt, atoms[sample], rtol=1e-4, atol=1e-6 * float(np.abs(atoms).max())):
            raise DictionaryError("separable factors do not reproduce the atoms")


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.flags.writeable:
        arr = arr.view()
        arr.flags.writeable = False
    return arr


class Dictionary:
    """Simulated fingerprints and the parameters that made them.

    Parameters
    ----------
    atoms : array_like, (n_atoms, n_frames)
        One fingerprint per row; real (float32/float64) or complex.  Stored as
        float32 (complex64) unless float64 (complex128) is given.  No atom may
        be all zero, and all values must be finite.
    params : mapping of str to array_like
        Each entry (n_atoms,): the parameter values of every atom, e.g.
        ``{"T1": t1_ms, "T2star": t2s_ms, "B1": b1}``.  Times are in ms by
        mrfengine's convention.
    metadata : mapping, optional
        JSON-compatible provenance (sequence, slot, grid, ...).
    norms : array_like, optional
        The atoms' L2 norms, (n_atoms,), when already known (e.g. read from
        disk).  Never trusted: the norms are always computed from the atoms
        (O(atoms x frames), cheap next to matching) and given ones must agree
        with them within :attr:`NORMS_RTOL` (relative), else
        :class:`~mrfengine.errors.DictionaryError`; they only check that a
        file's atoms and norms belong together.
    separable : Separable, optional
        A factorisation of the atoms (checked on a sample), which fast
        matchers exploit; mrfengine's own dictionaries carry one.

    Raises
    ------
    DictionaryError
        On a wrong shape, a non-finite value, an all-zero atom, a parameter
        of the wrong length, or ``norms`` that are not the atoms' own.

    Examples
    --------
    >>> import numpy as np
    >>> from mrfengine import Dictionary, match
    >>> atoms = np.abs(np.random.default_rng(0).normal(size=(100, 35)))
    >>> d = Dictionary(atoms, {"T1": np.linspace(300, 3000, 100)})
    >>> match(atoms[:3] * 2.0, d).params["T1"].shape
    (3,)
    """

    def __init__(
        self,
        atoms: ArrayLike,
        params: Mapping[str, ArrayLike],
        *,
        metadata: Mapping[str, Any] | None = None,
        norms: ArrayLike | None = None,
        separable: Separable | None = None,
    ) -> None:
        arr = np.asarray(atoms)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise DictionaryError(f"atoms must be a 2-D array (n_atoms, n_frames); got shape {arr.shape}")
        if np.iscomplexobj(arr):
            arr = arr.astype(np.complex128 if arr.dtype == np.complex128 else np.complex64, copy=False)
        elif np.issubdtype(arr.dtype, np.number) or arr.dtype == bool:
            arr = arr.astype(np.float64 if arr.dtype == np.float64 else np.float32, copy=False)
        else:
            raise DictionaryError(f"atoms must be numeric; got dtype {arr.dtype}")
        if not np.all(np.isfinite(arr)):
            raise DictionaryError("atoms contain NaN or Inf")
        if not isinstance(params, Mapping) or not params:
            raise DictionaryError("params must be a non-empty mapping of parameter name to (n_atoms,) values")
        table: dict[str, np.ndarray] = {}
        for name, values in params.items():
            v = np.asarray(values)
            if v.shape != (arr.shape[0],):
                raise DictionaryError(
                    f"parameter {name!r} must have shape ({arr.shape[0]},) (one value per atom); got {v.shape}"
                )
            table[str(name)] = _readonly(v)
        self._atoms = _readonly(np.ascontiguousarray(arr))
        self._params = table
        self.metadata: dict[str, Any] = dict(metadata or {})
        zero = np.flatnonzero(self.norms == 0)
        if zero.size:
            raise DictionaryError(
                f"{zero.size} atom(s) are all zero (first indices {zero[:5].tolist()}); they cannot be normalised"
            )
        if norms is not None:
            self._check_norms(norms)
        self._svd: dict[tuple[str, float], SVDCompression] = {}
        if separable is not None:
            separable = Separable(
                _readonly(np.ascontiguousarray(separable.amplitude, dtype=np.float64)),
                _readonly(np.ascontiguousarray(separable.decay, dtype=np.float64)),
                _readonly(np.asarray(separable.pair, dtype=np.int64)),
                _readonly(np.asarray(separable.decay_index, dtype=np.int64)),
            )
            separable.check(self._atoms)
        self.separable: Separable | None = separable
        self._cache: dict[str, Any] = {}  # derived data of matchers, keyed by matcher

    NORMS_RTOL = 1e-4
    """How far given ``norms`` may differ from the atoms' own (relative):
    float32 rounding of a norm summed over thousands of frames stays below
    1e-5; a larger difference means the norms belong to other atoms."""

    def _check_norms(self, norms: ArrayLike) -> None:
        """Given norms must be the atoms' own: shape, finite, positive, within :attr:`NORMS_RTOL`."""
        try:
            nv = np.asarray(norms, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DictionaryError(f"norms must be numbers; got {type(norms).__name__} ({exc})") from None
        if nv.shape != (self.n_atoms,):
            raise DictionaryError(f"norms must have shape ({self.n_atoms},) (one per atom); got {nv.shape}")
        if not np.all(np.isfinite(nv)) or not np.all(nv > 0):
            bad = int(np.sum(~(np.isfinite(nv) & (nv > 0))))
            raise DictionaryError(f"norms must be finite and positive; {bad} are not")
        own = self.norms
        off = np.abs(nv - own) > self.NORMS_RTOL * own
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise DictionaryError(
                f"norms differ from the atoms' L2 norms in {int(off.sum())} of {self.n_atoms} atom(s) (first: atom "
                f"{i}, given {nv[i]:.6g}, actual {own[i]:.6g}); they would scale M0 wrongly: omit norms to compute them"
            )

    # ------------------------------------------------------------ properties
    @property
    def atoms(self) -> np.ndarray:
        """The atoms as given, (n_atoms, n_frames), read-only."""
        return self._atoms

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameter table: name -> (n_atoms,) read-only array."""
        return dict(self._params)

    @property
    def n_atoms(self) -> int:
        return self._atoms.shape[0]

    @property
    def n_frames(self) -> int:
        return self._atoms.shape[1]

    @property
    def dtype(self) -> np.dtype:
        return self._atoms.dtype

    @cached_property
    def norms(self) -> np.ndarray:
        """L2 norm of each atom, (n_atoms,), float64."""
        a = self._atoms
        if np.iscomplexobj(a):
            sq = np.einsum("ij,ij->i", a.real, a.real, dtype=np.float64)
            sq += np.einsum("ij,ij->i", a.imag, a.imag, dtype=np.float64)
        else:
            sq = np.einsum("ij,ij->i", a, a, dtype=np.float64)
        return _readonly(np.sqrt(sq))

    @cached_property
    def normalized(self) -> np.ndarray:
        """Atoms scaled to unit L2 norm, (n_atoms, n_frames), dtype of the atoms."""
        return _readonly((self._atoms / self.norms[:, None]).astype(self._atoms.dtype, copy=False))

    @cached_property
    def digest(self) -> str:
        """SHA-256 of atoms and parameters: identifies the dictionary in provenance."""
        h = hashlib.sha256()
        h.update(str(self._atoms.dtype).encode())
        h.update(np.ascontiguousarray(self._atoms).tobytes())
        for name in sorted(self._params):
            h.update(name.encode())
            h.update(np.ascontiguousarray(self._params[name]).tobytes())
        return h.hexdigest()

    def __repr__(self) -> str:
        names = ", ".join(self._params)
        return f"Dictionary(n_atoms={self.n_atoms}, n_frames={self.n_frames}, dtype={self.dtype}, params=[{names}])"

    def __len__(self) -> int:
        return self.n_atoms

    # ---------------------------------------------------------- compression
    def compress(self, rank: int | None = None, *, energy: float = 0.99999) -> SVDCompression:
        """SVD compression of the normalised atoms (McGivney et al., IEEE TMI 2014).

        Parameters
        ----------
        rank : int, optional
            Number of singular vectors to keep; when None, the smallest rank
            that keeps ``energy`` of the atoms' energy.
        energy : float
            Energy fraction in (0, 1] used when ``rank`` is None.

        Returns
        -------
        SVDCompression
            Cached per (rank, energy).
        """
        if rank is not None:
            if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= self.n_frames:
                raise DictionaryError(f"rank must be an integer in [1, {self.n_frames}]; got {rank!r}")
            key = ("rank", float(rank))
        else:
            if not 0 < energy <= 1:
                raise DictionaryError(f"energy must lie in (0, 1]; got {energy}")
            key = ("energy", float(energy))
        if key in self._svd:
            return self._svd[key]
        dn = self.normalized
        # Eigen-decomposition of the (n_frames x n_frames) Gram matrix in float64:
        # cheap, and exact enough for a basis (singular values = sqrt(eigenvalues)).
        gram = (dn.conj().T.astype(np.complex128 if np.iscomplexobj(dn) else np.float64)) @ dn
        evals, evecs = np.linalg.eigh(gram)
        order = np.argsort(evals)[::-1]
        evals = np.clip(evals[order].real, 0.0, None)
        evecs = evecs[:, order]
        total = float(evals.sum())
        if rank is None:
            cum = np.cumsum(evals) / total
            rank = int(np.searchsorted(cum, energy - 1e-12) + 1)
            rank = min(rank, self.n_frames)
        basis = evecs[:, :rank].astype(dn.dtype)
        comp = SVDCompression(
            basis=_readonly(np.ascontiguousarray(basis)),
            atoms=_readonly(np.ascontiguousarray(dn @ basis)),
            singular_values=_readonly(np.sqrt(evals)),
            energy=float(evals[:rank].sum() / total),
        )
        self._svd[key] = comp
        return comp

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write atoms, parameters, norms and metadata to ``path`` (.npz, uncompressed), atomically."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz")
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                atoms=self._atoms,
                norms=self.norms,
                **({} if self.separable is None else {
                    "sep:amplitude": self.separable.amplitude, "sep:decay": self.separable.decay,
                    "sep:pair": self.separable.pair, "sep:decay_index": self.separable.decay_index}),
                __metadata__=np.frombuffer(json.dumps(self.metadata).encode(), dtype=np.uint8),
                **{f"param:{k}": v for k, v in self._params.items()},
            )
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        atoms: str | None = None,
        params: Mapping[str, Any] | Sequence[str] | None = None,
        units: Mapping[str, str] | None = None,
        n_frames: int | None = None,
        layout: str | None = None,
    ) -> Dictionary:
        """Read a dictionary: one :meth:`save` wrote, or another tool's .npz, HDF5 or MATLAB (v5, v7.3) file.

        The format is told from the file's content; the atoms and the
        per-atom parameters are found by their names, or named with
        ``atoms``, ``params``; relaxation times are converted to ms
        (``units`` where the file does not say).  Nothing is guessed between
        two candidates.  See :func:`mrfengine.dictionary.io.load_dictionary`
        for the layouts, the options and the unit rules.

        Examples
        --------
        >>> d = Dictionary.load("dict.mat", atoms="dict.D", params=("T1", "T2"),
        ...                     units={"T1": "ms", "T2": "ms"})  # doctest: +SKIP

        Raises
        ------
        InputFileError
            The file is missing, truncated, of no known format, or ambiguous
            (the message names the file and lists its arrays).
        DictionaryError
            What it holds does not make a dictionary, or a unit is unknown.
        """
        from .io import load_dictionary

        return load_dictionary(path, atoms=atoms, params=params, units=units, n_frames=n_frames,
                               layout=layout)
