"""Training patches from the cohort store.

:class:`PatchSampler` draws the paper's training examples: random square
patches (64 x 64) of single slices, ``patches_per_slice`` per slice and epoch,
slices with an annotated lesion drawn ``lesion_oversampling`` times as often
(x5 in the paper; the extra patches centred on a lesion voxel, or on a
lesion, ``lesion_centring``), the other patches placed uniformly in the slice
or centred on a brain voxel (``patch_centring``), each patch rotated by a random multiple of 90
degrees and randomly flipped.  Inputs are the slice's 35 MRF magnitudes (or, for networks
that take maps, its T1/T2* maps), normalised per channel with statistics of
the *training split only*; targets are read where each output's
``OutputSpec.target`` points (``truth/T1``, ``truth/WM``,
``annotations/lesion``, ...) and scaled to network units
(:func:`mrfengine.nn.targets.to_network_units`); ``map_source`` and
``tissue_targets`` redirect the T1/T2* and the NAWM/GM targets to a pipeline's
derived maps (:func:`resolve_target`).

Slices are read lazily from zarr (one chunk per slice) through a small LRU
cache, so memory stays bounded by ``cache_slices`` slices whatever the
cohort's size.  Everything random comes from ``seed`` and the epoch number:
the same seed gives the same batches, and epoch ``e`` can be drawn without
drawing epochs ``0..e-1`` first (which makes resumed runs exact).

References
----------
Hermann I, et al. Accelerated white matter lesion analysis based on
simultaneous T1 and T2* quantification using magnetic resonance
fingerprinting and deep learning. Magn Reson Med. 2021;86:471-486.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .._validate import check_int
from ..errors import StoreError, ValidationError
from ..metrics.definitions import reference_lesion_mask
from ..metrics.lesions import connectivity_structure
from .configs import NetworkConfig
from .normalisation import Normalisation, input_level
from .targets import to_network_units

log = logging.getLogger(__name__)

__all__ = ["SliceRef", "PatchSampler", "fit_cohort_normalisation", "resolve_target", "subject_level", "SPLITS",
           "LESION_CENTRING", "PATCH_CENTRING", "TISSUE_OUTPUTS", "SEGMENT_STAGES", "check_target_arrays"]

SPLITS = ("train", "validation", "test")
#: How an oversampled patch picks its lesion (:class:`PatchSampler`).
LESION_CENTRING = ("voxel", "lesion")
#: Where the ``patches_per_slice`` patches of a slice lie (:class:`PatchSampler`).
PATCH_CENTRING = ("uniform", "brain")

#: Quantitative outputs whose targets may come from a derived group instead of ``truth/``.
_MAP_OUTPUTS = ("T1", "T2star")
#: Tissue outputs whose targets may come from a pipeline's ``segment`` stage
#: (``derived/<pipeline>/NAWM``, ``.../GM``) instead of ``truth/`` (``tissue_targets``),
#: as the paper took them from SPM's segmentation of the conventional T1 map.
TISSUE_OUTPUTS = ("NAWM", "GM")
#: The stages of ``mrfengine batch`` that make a cohort's NAWM/GM targets.
SEGMENT_STAGES = "denoise,match,segment"


@dataclass(frozen=True)
class SliceRef:
    """One slice of one subject; ``lesion`` when its annotation marks any voxel,
    ``lesion_yx`` the (row, column) of its lesion voxels (empty otherwise) and
    ``lesion_label`` the in-slice lesion (8-connected component, from 0) of each."""

    subject: str
    z: int
    lesion: bool
    lesion_yx: tuple[tuple[int, int], ...] = ()
    lesion_label: tuple[int, ...] = ()


def _parse_map_source(map_source: str, key: str = "map_source") -> str | None:
    """``"truth"`` -> None; ``"derived:<name>"`` -> ``<name>`` (``key`` names the setting in errors)."""
    if map_source == "truth":
        return None
    if isinstance(map_source, str) and map_source.startswith("derived:") and len(map_source) > len("derived:"):
        return map_source[len("derived:"):]
    raise ValidationError(f"{key} must be 'truth' or 'derived:<name>'; got {map_source!r}")


def resolve_target(target: str, name: str, map_source: str = "truth", tissue_targets: str = "truth") -> str:
    """The array path of an output's training target in a subject group.

    ``T1``/``T2star`` targets are read from ``derived/<name>/`` when
    ``map_source`` is ``derived:<name>`` (e.g. dictionary-matched maps, as in
    the paper); ``NAWM``/``GM`` targets from ``derived/<pipeline>/NAWM`` and
    ``.../GM`` when ``tissue_targets`` is ``derived:<pipeline>`` (the
    ``segment`` stage's probability maps, as the paper's came from SPM);
    every other target from where its ``OutputSpec.target`` says
    (``truth/WM`` for NAWM, ``truth/GM``, ``annotations/lesion``, ...).
    """
    derived = _parse_map_source(map_source)
    tissue = _parse_map_source(tissue_targets, "tissue_targets")
    if derived is not None and name in _MAP_OUTPUTS:
        return f"derived/{derived}/{name}"
    if tissue is not None and name in TISSUE_OUTPUTS:
        return f"derived/{tissue}/{name}"
    if not target:
        raise ValidationError(f"output {name} names no target array (OutputSpec.target is empty)")
    return target


def _input_paths(config: NetworkConfig, map_source: str) -> list[str] | None:
    """None for MRF inputs, else the array path of each input map."""
    if config.input_kind == "mrf":
        return None
    derived = _parse_map_source(map_source)
    return [f"derived/{derived}/{n}" if derived else f"truth/{n}" for n in config.input_names]


def _missing_array_message(sid: str, path: str, network: str, cohort_path, tissue_targets: str) -> str:
    """Why ``sid`` cannot be trained on: it lacks ``path``; for the segment stage's
    tissue maps, the command that makes them."""
    tissue = _parse_map_source(tissue_targets, "tissue_targets")
    if tissue is not None and path in {f"derived/{tissue}/{n}" for n in TISSUE_OUTPUTS}:
        name = "" if tissue == SEGMENT_STAGES.replace(",", "-") else f" --name {tissue}"
        return (f"subject {sid} has no {path!r}, a tissue target of network {network} (tissue_targets = "
                f"{tissue_targets!r}: the NAWM/GM probability maps of pipeline {tissue!r}'s segment stage); make "
                f"them with 'mrfengine batch {cohort_path} --stages {SEGMENT_STAGES}{name}', or train on "
                "tissue_targets = 'truth'")
    return f"subject {sid} has no array {path!r} needed by network {network}"


def check_target_arrays(
    cohort,
    config: NetworkConfig,
    subjects,
    *,
    map_source: str = "truth",
    tissue_targets: str = "truth",
) -> None:
    """Refuse, before any work, subjects that lack an array a network's training reads.

    Parameters
    ----------
    cohort : mrfengine.io.Cohort
    config : NetworkConfig
    subjects : iterable of str
        The subjects to be read (a training run: its train and validation splits).
    map_source, tissue_targets : str
        ``truth`` or ``derived:<name>`` (:func:`resolve_target`).

    Raises
    ------
    ValidationError
        Naming the first subject and the array it lacks; for a missing tissue
        target of ``tissue_targets = "derived:<pipeline>"`` also the
        ``mrfengine batch`` command that makes it.
    """
    paths = [resolve_target(o.target, o.name, map_source, tissue_targets) for o in config.outputs]
    paths += _input_paths(config, map_source) or []
    for sid in subjects:
        arrays = cohort[sid].arrays
        for path in paths:
            if path not in arrays:
                raise ValidationError(_missing_array_message(sid, path, config.name, cohort.path, tissue_targets))


def _subjects_of(cohort, split: str) -> list[str]:
    if split not in SPLITS:
        raise ValidationError(f"split must be one of {SPLITS}; got {split!r}")
    return list(cohort.subjects_in(split))


def _read_input_slice(subject, z: int, input_paths: list[str] | None) -> np.ndarray:
    if input_paths is None:
        return np.asarray(subject.mrf[:, z], dtype=np.float32)
    return np.stack([np.asarray(subject.array(p)[z], dtype=np.float32) for p in input_paths])


def _brain_slice(subject, z: int) -> np.ndarray | None:
    bm = subject.brain_mask
    return None if bm is None else np.asarray(bm[z]) > 0


def subject_level(subject) -> float:
    """A subject's MRF intensity level (:data:`~mrfengine.nn.normalisation.LEVEL_STATISTIC`),
    in its brain mask, or one made from the series (as at inference) when it has none."""
    from ..masking import brain_mask_from_mean, mean_image

    mean = mean_image(subject.mrf, channel_axis=0)
    bm = subject.brain_mask
    brain = np.asarray(bm[...]) > 0 if bm is not None else brain_mask_from_mean(mean)
    return input_level(mean, brain)


def _subject_gains(cohort, sids, normalisation: Normalisation | None, config: NetworkConfig) -> dict[str, float]:
    """The gain that brings each subject to ``normalisation.subject_level`` (1 for
    absolute-scale normalisations and map inputs)."""
    if normalisation is None or not normalisation.scale_free or config.input_kind != "mrf":
        return {sid: 1.0 for sid in sids}
    return {sid: normalisation.gain(subject_level(cohort[sid])) for sid in sids}


def fit_cohort_normalisation(
    cohort,
    config: NetworkConfig,
    *,
    split: str = "train",
    map_source: str = "truth",
    scale_free: bool = False,
) -> Normalisation:
    """Per-channel mean and std of the inputs over the brain voxels of one split.

    Streams slice by slice (float64 sums), so memory holds one slice at a
    time; the result equals :func:`mrfengine.nn.fit_normalisation` on the
    whole split's volumes with their brain masks.

    Parameters
    ----------
    cohort : mrfengine.io.Cohort
    config : NetworkConfig
        Input kind and channels.
    split : str
        ``train`` (the default, and the only correct choice for training).
    map_source : str
        ``truth`` or ``derived:<name>`` (inputs of ``maps`` networks).
    scale_free : bool
        MRF inputs only: each subject is first rescaled to the split's median
        intensity level (:func:`subject_level`), which becomes the result's
        ``subject_level``: the network is then trained, and run, free of the
        inputs' global scale.

    Raises
    ------
    ValidationError
        No subject in the split, wrong channel count, or a constant channel.
    """
    sids = _subjects_of(cohort, split)
    if not sids:
        raise ValidationError(f"the cohort {cohort.path} has no {split!r} subject to compute the normalisation from")
    reference = None
    gains = {sid: 1.0 for sid in sids}
    if scale_free and config.input_kind == "mrf":
        levels = {sid: subject_level(cohort[sid]) for sid in sids}
        reference = float(np.median(list(levels.values())))
        gains = {sid: reference / level for sid, level in levels.items()}
    paths = _input_paths(config, map_source)
    total = np.zeros(config.in_channels)
    total_sq = np.zeros(config.in_channels)
    count = 0
    for sid in sids:
        subject = cohort[sid]
        for z in range(subject.shape[0]):
            x = _read_input_slice(subject, z, paths) * np.float32(gains[sid])
            if x.shape[0] != config.in_channels:
                raise ValidationError(f"{sid}: network {config.name} takes {config.in_channels} input channels; "
                                      f"the cohort has {x.shape[0]}")
            flat = x.reshape(x.shape[0], -1).astype(np.float64)
            brain = _brain_slice(subject, z)
            if brain is not None:
                flat = flat[:, brain.ravel()]
            total += flat.sum(axis=1)
            total_sq += (flat * flat).sum(axis=1)
            count += flat.shape[1]
    if count == 0:
        raise ValidationError(f"the {split!r} subjects have no brain voxel")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    if not np.all(std > 0):
        raise ValidationError(f"input channels {np.flatnonzero(~(std > 0)).tolist()} are constant in the "
                              f"{split!r} split: cannot normalise them")
    return Normalisation(tuple(mean), tuple(std), reference)


class PatchSampler:
    """Seeded random patches of the slices of one split.

    Parameters
    ----------
    cohort : mrfengine.io.Cohort
    config : NetworkConfig
        Inputs, outputs (``OutputSpec.target``) and, unless overridden, the
        patch size, patches per slice and lesion oversampling.
    normalisation : Normalisation
        Applied to the inputs; fit it on the training split
        (:func:`fit_cohort_normalisation`), also when sampling validation data.
        With a ``subject_level`` each subject's series is first rescaled to it
        (its level measured once, when its first slice is read), as at inference.
    split : {"train", "validation", "test"}
        Only subjects of this split are read.
    patch_size, patches_per_slice, lesion_oversampling : int, optional
        Default: the configuration's (64, 64, 5 in the paper).
    augment : bool
        Random 90-degree rotations and flips (default on).
    seed : int
        Same seed, same patches (and batches) for every epoch.
    map_source : str
        ``truth`` or ``derived:<name>``: where T1/T2* targets (and map inputs) come from.
    tissue_targets : str
        ``truth`` (``truth/WM``, ``truth/GM``) or ``derived:<pipeline>``
        (``derived/<pipeline>/NAWM``, ``.../GM``, a ``segment`` stage's maps):
        where the NAWM and GM targets come from.
    cache_slices : int
        Slices kept in memory (LRU); bounds the memory use.
    lesion_centring : {"voxel", "lesion"}
        How an oversampled patch picks the lesion it is centred on: ``voxel``
        (default) a lesion voxel of the slice drawn uniformly, so a large
        lesion is drawn as often as it has voxels; ``lesion`` a lesion of the
        slice (8-connected component) drawn uniformly, then one of its voxels,
        so small lesions are seen as often as large ones.
    patch_centring : {"uniform", "brain"}
        Where the ``patches_per_slice`` patches of every slice lie:
        ``uniform`` (default, the paper's random patches) anywhere in the
        slice; ``brain`` centred on a voxel of the subject's brain mask drawn
        uniformly (slices without brain, or subjects without a mask, fall back
        to uniform).  On a 240 x 240 field of view 64 x 64 uniform patches
        hold about 40% brain and one in nine none at all; brain-centred ones
        about 70%, so an epoch spends less compute on background.

    Raises
    ------
    ValidationError
        Unknown split, no subject in it, bad sizes, a missing target array.
    """

    def __init__(
        self,
        cohort,
        config: NetworkConfig,
        normalisation: Normalisation,
        *,
        split: str = "train",
        patch_size: int | None = None,
        patches_per_slice: int | None = None,
        lesion_oversampling: int | None = None,
        augment: bool = True,
        seed: int = 0,
        map_source: str = "truth",
        cache_slices: int = 32,
        lesion_centring: str = "voxel",
        patch_centring: str = "uniform",
        tissue_targets: str = "truth",
    ) -> None:
        self.cohort = cohort
        self.config = config
        self.split = split
        self.patch_size = check_int(config.patch_size if patch_size is None else patch_size, "patch_size")
        self.patches_per_slice = check_int(
            config.patches_per_slice if patches_per_slice is None else patches_per_slice, "patches_per_slice")
        self.lesion_oversampling = check_int(
            config.lesion_oversampling if lesion_oversampling is None else lesion_oversampling, "lesion_oversampling")
        if self.patch_size % config.size_multiple:
            raise ValidationError(f"patch_size must be a multiple of {config.size_multiple} for network "
                                  f"{config.name}; got {self.patch_size}")
        if normalisation.n_channels != config.in_channels:
            raise ValidationError(f"normalisation has {normalisation.n_channels} channels; network {config.name} "
                                  f"takes {config.in_channels}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValidationError(f"seed must be a non-negative integer; got {seed!r}")
        self.seed = int(seed)
        if lesion_centring not in LESION_CENTRING:
            raise ValidationError(f"lesion_centring must be one of {LESION_CENTRING}; got {lesion_centring!r}")
        self.lesion_centring = lesion_centring
        if patch_centring not in PATCH_CENTRING:
            raise ValidationError(f"patch_centring must be one of {PATCH_CENTRING}; got {patch_centring!r}")
        self.patch_centring = patch_centring
        self.augment = bool(augment)
        self.normalisation = normalisation
        self._scale, self._offset = (a[:, None, None] for a in normalisation.scale_and_offset())
        self._gains: dict[str, float] = {}  # per subject, measured when its first slice is read
        self._input_paths = _input_paths(config, map_source)
        self.tissue_targets = tissue_targets
        self._target_paths = [resolve_target(o.target, o.name, map_source, tissue_targets) for o in config.outputs]
        self._cache: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_size = check_int(cache_slices, "cache_slices")
        self.subjects = _subjects_of(cohort, split)
        if not self.subjects:
            raise ValidationError(f"the cohort {cohort.path} has no {split!r} subject to sample")
        self.slices = self._index_slices()
        self._brain: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if patch_centring == "brain":
            self._brain = {sid: self._brain_voxels(sid) for sid in self.subjects}

    # ------------------------------------------------------------ indexing
    def _index_slices(self) -> list[SliceRef]:
        from scipy import ndimage

        eight = connectivity_structure(8, 2)
        lesion_path = next((p for p, o in zip(self._target_paths, self.config.outputs) if o.name == "lesion"),
                           "annotations/lesion")
        refs = []
        for sid in self.subjects:
            subject = self.cohort[sid]
            for path in self._target_paths + (self._input_paths or []):
                if path not in subject.arrays:
                    raise ValidationError(_missing_array_message(sid, path, self.config.name, self.cohort.path,
                                                                 self.tissue_targets))
            lesion = subject.array(lesion_path) if lesion_path in subject.arrays else None
            for z in range(subject.shape[0]):
                if lesion is None:
                    refs.append(SliceRef(sid, z, False))
                    continue
                mask = reference_lesion_mask(np.asarray(lesion[z]))
                yx = np.argwhere(mask)
                labels, _ = ndimage.label(mask, structure=eight)
                refs.append(SliceRef(sid, z, len(yx) > 0, tuple((int(a), int(b)) for a, b in yx),
                                     tuple(int(v) - 1 for v in labels[mask])))
        return refs

    def _brain_voxels(self, sid: str) -> tuple[np.ndarray, np.ndarray]:
        """In-slice flat indices of the brain voxels of every slice of ``sid``,
        concatenated, and each slice's start in them (Z + 1,)."""
        subject = self.cohort[sid]
        z, h, w = subject.shape[:3]
        mask = subject.brain_mask
        if mask is None:
            return np.zeros(0, np.int32), np.zeros(z + 1, np.int64)
        dtype = np.uint16 if h * w <= 1 << 16 else np.int32
        flat = [np.flatnonzero(np.asarray(mask[k]) > 0).astype(dtype) for k in range(z)]
        return np.concatenate(flat), np.concatenate([[0], np.cumsum([f.size for f in flat])]).astype(np.int64)

    @property
    def n_lesion_slices(self) -> int:
        return sum(r.lesion for r in self.slices)

    def patches_per_epoch(self) -> int:
        """``patches_per_slice x (slices + (oversampling - 1) x lesion slices)``."""
        n = len(self.slices) + (self.lesion_oversampling - 1) * self.n_lesion_slices
        return n * self.patches_per_slice

    def __len__(self) -> int:
        return self.patches_per_epoch()

    # ------------------------------------------------------------ the plan
    def epoch_plan(self, epoch: int) -> np.ndarray:
        """The patches of ``epoch`` in the order they are served.

        A slice's first ``patches_per_slice`` patches lie uniformly in it, or
        are centred on a random brain voxel (``patch_centring="brain"``).  A
        lesion slice appears ``lesion_oversampling`` times as often as
        another; its extra patches are centred (up to a quarter patch off) on
        one of its lesion voxels, so they hold lesion.  Slices are visited in a random order, in blocks of half the slice
        cache; the patches of a block are shuffled together, so each slice is
        read from the store about once per epoch and a batch mixes the
        patches of many slices.

        Returns
        -------
        ndarray, (N, 5) int64
            Per patch: slice index (into :attr:`slices`), top row, left
            column, number of 90-degree rotations (0-3), flip (0/1).
        """
        rng = np.random.default_rng([self.seed, int(epoch)])
        repeats = np.array([self.lesion_oversampling if r.lesion else 1 for r in self.slices]) * self.patches_per_slice
        idx = np.repeat(np.arange(len(self.slices)), repeats)
        n = idx.size
        shapes = {sid: self.cohort[sid].shape[1:] for sid in self.subjects}
        hy = np.array([max(shapes[self.slices[i].subject][0] - self.patch_size, 0) for i in range(len(self.slices))])
        hx = np.array([max(shapes[self.slices[i].subject][1] - self.patch_size, 0) for i in range(len(self.slices))])
        y0 = np.floor(rng.random(n) * (hy[idx] + 1)).astype(np.int64)
        x0 = np.floor(rng.random(n) * (hx[idx] + 1)).astype(np.int64)
        p = self.patch_size
        # The extra (oversampled) patches of a lesion slice hold a lesion: centred on a random
        # lesion voxel (or a voxel of a random lesion), shifted by up to a quarter patch; the
        # first patches stay uniform.
        first = np.zeros(n, bool)
        starts = np.concatenate([[0], np.cumsum(repeats)[:-1]])
        first[(np.arange(n) - np.repeat(starts, repeats)) < self.patches_per_slice] = True
        if self.patch_centring == "brain":
            # drawn after the uniform positions, so uniform plans stay as they were
            u = rng.random(n)
            for k in np.flatnonzero(first):
                ref = self.slices[idx[k]]
                voxels, start = self._brain[ref.subject]
                lo, hi = int(start[ref.z]), int(start[ref.z + 1])
                if hi == lo:
                    continue
                width = shapes[ref.subject][1]
                cy, cx = divmod(int(voxels[lo + min(int(u[k] * (hi - lo)), hi - lo - 1)]), width)
                y0[k] = min(max(cy - p // 2, 0), int(hy[idx[k]]))
                x0[k] = min(max(cx - p // 2, 0), int(hx[idx[k]]))
        members_of: dict[int, list[np.ndarray]] = {}
        if self.lesion_centring == "lesion":
            for i in np.unique(idx[~first]):
                label = np.asarray(self.slices[i].lesion_label)
                members_of[int(i)] = [np.flatnonzero(label == c) for c in range(int(label.max()) + 1)]
        for k in np.flatnonzero(~first):
            yx = self.slices[idx[k]].lesion_yx
            if self.lesion_centring == "voxel":
                cy, cx = yx[int(rng.integers(len(yx)))]
            else:
                members = members_of[idx[k]]
                one = members[int(rng.integers(len(members)))]
                cy, cx = yx[int(one[int(rng.integers(len(one)))])]
            jy, jx = rng.integers(-(p // 4), p // 4 + 1, size=2)
            y0[k] = min(max(cy - p // 2 + int(jy), 0), int(hy[idx[k]]))
            x0[k] = min(max(cx - p // 2 + int(jx), 0), int(hx[idx[k]]))
        if self.augment:
            rot = rng.integers(0, 4, n)
            flip = rng.integers(0, 2, n)
        else:
            rot = np.zeros(n, np.int64)
            flip = np.zeros(n, np.int64)
        plan = np.stack([idx, y0, x0, rot, flip], axis=1).astype(np.int64)
        # Shuffle within blocks of slices that fit the slice cache (a shuffle buffer): a
        # global permutation would read a slice from the store for nearly every patch.
        block = max(1, self._cache_size // 2)
        rank = np.empty(len(self.slices), dtype=np.int64)
        rank[rng.permutation(len(self.slices))] = np.arange(len(self.slices))
        order = np.lexsort((rng.random(n), rank[idx] // block))
        return plan[order]

    # ------------------------------------------------------------ reading
    def _slice(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        ref = self.slices[i]
        key = (ref.subject, ref.z)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        subject = self.cohort[ref.subject]
        x = _read_input_slice(subject, ref.z, self._input_paths)
        if x.shape[0] != self.config.in_channels:
            raise ValidationError(f"{ref.subject}: network {self.config.name} takes {self.config.in_channels} "
                                  f"input channels; the cohort has {x.shape[0]}")
        if ref.subject not in self._gains:
            self._gains.update(_subject_gains(self.cohort, [ref.subject], self.normalisation, self.config))
        x = x * (self._scale * np.float32(self._gains[ref.subject])) + self._offset
        try:
            y = np.stack([np.asarray(subject.array(p)[ref.z], dtype=np.float32) for p in self._target_paths])
        except StoreError as exc:
            raise ValidationError(f"{ref.subject}: a training target is missing: {exc}") from exc
        # Unmatched voxels of derived maps (NaN: outside the brain, invalid signal) are
        # background, 0, as in the truth maps.
        y = np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0)
        y = to_network_units(torch.from_numpy(y[None]), self.config)[0].numpy()
        self._cache[key] = (x.astype(np.float32), y)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return x, y

    def _patch(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        i, y0, x0, rot, flip = (int(v) for v in row)
        x, y = self._slice(i)
        p = self.patch_size
        xp, yp = _crop(x, y0, x0, p, self._offset), _crop(y, y0, x0, p, 0.0)
        if flip:
            xp, yp = xp[..., ::-1], yp[..., ::-1]
        if rot:
            xp, yp = np.rot90(xp, rot, axes=(1, 2)), np.rot90(yp, rot, axes=(1, 2))
        return xp, yp

    def batches(self, epoch: int, batch_size: int, *, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of ``epoch``: ``(inputs, targets)`` float32 tensors of
        shape (B, C_in, P, P) (normalised) and (B, C_out, P, P) (network
        units); the last batch may be smaller.  ``start`` skips that many
        batches (resuming inside an epoch)."""
        batch_size = check_int(batch_size, "batch_size")
        plan = self.epoch_plan(epoch)
        for b in range(start * batch_size, len(plan), batch_size):
            pairs = [self._patch(row) for row in plan[b:b + batch_size]]
            xs = np.stack([p[0] for p in pairs])
            ys = np.stack([p[1] for p in pairs])
            yield torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(np.ascontiguousarray(ys))

    def n_batches(self, batch_size: int) -> int:
        return -(-self.patches_per_epoch() // check_int(batch_size, "batch_size"))

    @property
    def target_paths(self) -> list[str]:
        """Array path of each output's target in a subject group."""
        return list(self._target_paths)

    def normalised_input(self, i: int) -> np.ndarray:
        """The whole normalised input of slice ``i`` (C_in, Y, X) float32."""
        return self._slice(i)[0]

    def background(self) -> np.ndarray:
        """Normalised value of a zero input per channel (C_in,) float32: what
        padding outside the field of view holds."""
        return self._offset[:, 0, 0].copy()


def _crop(a: np.ndarray, y0: int, x0: int, p: int, fill: np.ndarray | float) -> np.ndarray:
    """``a[:, y0:y0+p, x0:x0+p]``, padded at the high end with ``fill`` (per
    channel, (C, 1, 1), or a number) where the slice is smaller than the patch:
    inputs with the normalised value of zero signal, as at inference; targets with 0.
    """
    out = a[:, y0:y0 + p, x0:x0 + p]
    if out.shape[1:] == (p, p):
        return out
    padded = np.empty((a.shape[0], p, p), dtype=a.dtype)
    padded[...] = fill
    padded[:, :out.shape[1], :out.shape[2]] = out
    return padded
