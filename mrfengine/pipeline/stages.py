"""Named pipeline stages as pure functions over arrays, and the :class:`Pipeline` that orders them.

A stage reads named *artifacts* and returns new ones; it never touches the
store.  The artifacts a run starts with (:data:`INITIAL_ARTIFACTS`) are

``mrf``
    (T, Z, Y, X) float32 MRF magnitudes of one subject.
``mask``
    (Z, Y, X) bool brain mask, or None (every voxel).
``sequence``
    The subject's :class:`~mrfengine.sequence.Sequence`.

The stages:

``denoise``
    MP-PCA (:func:`mrfengine.denoise.mppca`) of ``mrf`` inside ``mask``;
    replaces ``mrf``.
``match``
    Dictionary matching slice by slice (:func:`mrfengine.matching.match_slices`)
    against the subject's per-slot dictionaries, built once per sequence
    (:func:`slice_dictionaries`, keyed by ``Sequence.digest()``); gives ``maps``.
``write``
    Turns ``maps`` into ``derived``, the float32 arrays of the derived group
    (T1, T2star in ms, B1, M0, correlation; see
    :data:`mrfengine.pipeline.derived.DERIVED_ARRAYS`).  Persisting them is the
    runner's job (:func:`mrfengine.pipeline.run.run_subject`).

A pipeline is the ordered list of stage names with their options, from a TOML
table (:meth:`Pipeline.from_dict`) or ``--stages denoise,match``
(:meth:`Pipeline.from_stages`); ``write`` is appended when it is not named.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import ValidationError
from ..sequence import Sequence

__all__ = [
    "Stage",
    "Pipeline",
    "STAGES",
    "INITIAL_ARTIFACTS",
    "slice_dictionaries",
    "run_stages",
]

#: Artifacts a run provides before the first stage.
INITIAL_ARTIFACTS = ("mrf", "mask", "sequence")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

StageFunction = Callable[[Mapping[str, Any], Mapping[str, Any], str], tuple[dict[str, Any], dict[str, Any]]]


@dataclass(frozen=True)
class Stage:
    """One named step: ``function(inputs, options, backend) -> (outputs, info)``.

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
    """

    name: str
    function: StageFunction
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- denoise
def _denoise(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str):
    from ..denoise import mppca

    result = mppca(inputs["mrf"], axis=0, mask=inputs["mask"], backend=backend,
                   patch_radius=options["patch_radius"], estimator=options["estimator"])
    info = {"backend": result.backend, "estimator": result.estimator, "window": list(result.window)}
    return {"mrf": np.asarray(result.denoised, dtype=np.float32)}, info


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


def _match(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str):
    from ..matching import match_slices

    sequence: Sequence = inputs["sequence"]
    dictionaries = slice_dictionaries(sequence)
    result = match_slices(inputs["mrf"], dictionaries, slice_axis=1, axis=0, mask=inputs["mask"],
                          backend=backend, method=options["method"], rank=options["rank"])
    digests = {str(slot): dictionaries[slot].digest for slot in range(dictionaries.n_slots)}
    info = {"backend": result.backend, "method": result.method, "rank": result.rank,
            "sequence_digest": sequence.digest(), "dictionary_digests": digests,
            "n_matched": int(np.count_nonzero(result.matched))}
    return {"maps": result}, info


# --------------------------------------------------------------------------- write
def _write(inputs: Mapping[str, Any], options: Mapping[str, Any], backend: str):
    result = inputs["maps"]
    derived = {
        "T1": result.params["T1"],
        "T2star": result.params["T2star"],
        "B1": result.params["B1"],
        "M0": np.abs(result.m0),
        "correlation": result.correlation,
    }
    derived = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in derived.items()}
    return {"derived": derived}, {}


#: The known stages by name.
STAGES: Mapping[str, Stage] = MappingProxyType({
    "denoise": Stage("denoise", _denoise, ("mrf", "mask"), ("mrf",),
                     MappingProxyType({"patch_radius": 2, "estimator": "mp"})),
    "match": Stage("match", _match, ("mrf", "mask", "sequence"), ("maps",),
                   MappingProxyType({"method": "auto", "rank": None})),
    "write": Stage("write", _write, ("maps",), ("derived",)),
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
        names.append("write")
    elif names[-1] != "write":
        raise ValidationError(f"'write' must be the last stage; got {names}")
    return tuple(names)


def _check_flow(names: tuple[str, ...]) -> None:
    available = set(INITIAL_ARTIFACTS)
    for name in names:
        stage = STAGES[name]
        missing = [i for i in stage.inputs if i not in available]
        if missing:
            makers = sorted({s.name for s in STAGES.values() if set(missing) & set(s.outputs)})
            raise ValidationError(
                f"stage {name!r} needs input(s) {missing}, which no earlier stage produces (available: "
                f"{sorted(available)}); add {' or '.join(repr(m) for m in makers)} before {name!r}"
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
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValidationError(f"pipeline name must be letters, digits, '_', '.', '-' (it names the derived "
                                  f"group); got {self.name!r}")
        names = _parse_stage_names(self.stages)
        _check_flow(names)
        object.__setattr__(self, "stages", names)
        object.__setattr__(self, "options", _resolve_options(names, self.options))

    @classmethod
    def from_stages(cls, stages: str | list[str] | tuple[str, ...], *, name: str | None = None,
                    options: Mapping[str, Mapping[str, Any]] | None = None) -> Pipeline:
        """``Pipeline.from_stages("denoise,match")``; the name defaults to the stage
        names joined by ``-`` (without ``write``), e.g. ``denoise-match``."""
        names = _parse_stage_names(stages)
        _check_flow(names)  # before the default name, so `--stages write` says what is missing
        if name is None:
            name = "-".join(s for s in names if s != "write")
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


def run_stages(pipeline: Pipeline, artifacts: Mapping[str, Any], *, backend: str = "auto",
               clock: Callable[[], float] | None = None) -> tuple[dict[str, Any], dict[str, float], dict[str, Any]]:
    """Run every stage of ``pipeline`` on ``artifacts`` (the :data:`INITIAL_ARTIFACTS`).

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
    timings: dict[str, float] = {}
    info: dict[str, Any] = {}
    for name in pipeline.stages:
        stage = STAGES[name]
        t0 = clock()
        outputs, stage_info = stage.function({k: state[k] for k in stage.inputs}, pipeline.options[name], backend)
        timings[name] = clock() - t0
        info[name] = stage_info
        state.update(outputs)
    return state, timings, info
