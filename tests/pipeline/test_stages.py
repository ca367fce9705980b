"""Pipeline descriptions (parsing, validation) and the pure stages."""

from __future__ import annotations

import pickle
import tomllib

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.matching import MatchResult
from mrfengine.pipeline import STAGES, Pipeline, slice_dictionaries
from mrfengine.pipeline.stages import pipeline_halo, run_stages
from mrfengine.sequence import hermann2021


def test_from_stages_appends_write_and_fills_defaults():
    p = Pipeline.from_stages("denoise, match")
    assert p.name == "denoise-match"
    assert p.stages == ("mask", "denoise", "match", "write")  # the mask stage first, "auto" by default
    assert p.options["mask"] == {"source": "auto"}
    assert Pipeline.from_stages("mask,denoise,match") == p  # naming it with its defaults is the same pipeline
    assert p.options["denoise"] == {"patch_radius": 2, "estimator": "mp"}
    assert p.options["match"] == {"method": "auto", "rank": None}
    assert pickle.loads(pickle.dumps(p)) == p  # a Dask task can carry it


def test_from_toml():
    doc = tomllib.loads("""
[pipeline]
name = "mppca-brute"
stages = ["denoise", "match"]
[denoise]
patch_radius = 1
[match]
method = "brute"
""")
    p = Pipeline.from_dict(doc)
    assert p.name == "mppca-brute"
    assert p.options["denoise"]["patch_radius"] == 1 and p.options["denoise"]["estimator"] == "mp"
    assert p.options["match"]["method"] == "brute"
    assert Pipeline.from_dict({"stages": "match"}).stages == ("mask", "match", "write")
    # register and segment run on the whole subject after the others: write comes before them
    full = Pipeline.from_stages("denoise,match,register,segment")
    assert full.stages == ("mask", "denoise", "match", "write", "register", "segment")
    assert full.name == "denoise-match-register-segment"
    assert full.options["register"] == {"reference": "T2w", "phase_encoding": "j", "grid_mm": 2.0}
    assert full.options["segment"] == {"priors": "mni152", "lesion": "auto"}
    assert pipeline_halo(full) == pipeline_halo(Pipeline.from_stages("denoise,match"))


@pytest.mark.parametrize("stages, words", [
    ("denoise,segmentation", ["unknown stage", "segmentation", "known stages"]),
    ("unet,segment", ["'segment' needs 'match' before it"]),
    ("match,register,write", ["'write' must be the last stage", "register"]),
    ("match,write,denoise", ["'write' must be the last stage"]),
    ("denoise", ["'write' needs one of", "maps", "'match'"]),
    ("write", ["'write' needs one of", "maps"]),
    ("write,match", ["'write' must be the last stage"]),
    ("match,match", ["once"]),
    ("match,mask", ["'mask' must be the first stage"]),
    ("", ["at least one stage"]),
])
def test_bad_stage_lists(stages, words):
    with pytest.raises(ValidationError) as info:
        Pipeline.from_stages(stages)
    for w in words:
        assert w in str(info.value)


def test_bad_configs():
    with pytest.raises(ValidationError, match="needs 'stages'"):
        Pipeline.from_dict({"name": "x"})
    with pytest.raises(ValidationError, match=r"has no option\(s\) \['radius'\]"):
        Pipeline.from_dict({"stages": ["denoise", "match"], "denoise": {"radius": 2}})
    with pytest.raises(ValidationError, match="does not run"):
        Pipeline.from_dict({"stages": ["match"], "denoise": {"patch_radius": 2}})
    with pytest.raises(ValidationError, match="unknown key"):
        Pipeline.from_dict({"stages": ["match"], "colour": "red"})
    with pytest.raises(ValidationError, match="pipeline name"):
        Pipeline.from_stages("match", name="a/b")
    with pytest.raises(ValidationError, match=r"option 'tta' of stage 'unet' must be one of \['none', 'flip'"):
        Pipeline.from_dict({"stages": ["unet"], "unet": {"tta": "mirror"}})
    with pytest.raises(ValidationError, match="option 'method' of stage 'match'"):
        Pipeline.from_dict({"stages": ["match"], "match": {"method": "fast"}})
    with pytest.raises(ValidationError, match="option 'source' of stage 'mask' must be one of"):
        Pipeline.from_dict({"stages": ["match"], "mask": {"source": "brain"}})


def test_option_choices_are_the_implementations():
    from mrfengine.denoise._common import ESTIMATORS
    from mrfengine.matching.api import METHODS
    from mrfengine.nn.inference import INPUT_SCALES, PRECISIONS, TTA_MODES

    assert STAGES["denoise"].choices["estimator"] == ESTIMATORS
    assert STAGES["match"].choices["method"] == METHODS
    assert STAGES["unet"].choices == {"precision": PRECISIONS, "tta": tuple(TTA_MODES),
                                      "trust_model_code": (False, True), "input_scale": INPUT_SCALES,
                                      "consistency": (False, True)}
    assert set(STAGES["unet"].checks) == {"mc_samples", "mc_seed"}
    # the one definition of each check (mrfengine.nn.uncertainty), imported when it runs
    from mrfengine.nn import uncertainty

    for key, name in (("mc_samples", "check_mc_samples"), ("mc_seed", "check_mc_seed")):
        assert STAGES["unet"].checks[key].__name__ == name
        for bad in (1.5, -1, True):
            with pytest.raises(ValidationError) as ours:
                STAGES["unet"].checks[key](bad)
            with pytest.raises(ValidationError) as theirs:
                getattr(uncertainty, name)(bad)
            assert str(ours.value) == str(theirs.value)
    for stage in STAGES.values():
        for key, values in stage.choices.items():
            assert stage.options[key] in values


def test_dictionaries_shared_per_sequence_digest():
    a = slice_dictionaries(hermann2021(1))
    assert slice_dictionaries(hermann2021(1)) is a
    assert slice_dictionaries(hermann2021(2)) is not a


def test_write_stage_maps_match_result_to_float32_arrays_with_zero_where_not_matched():
    shape = (2, 3, 4)
    params = {"T1": np.full(shape, 800.0), "T2star": np.full(shape, 60.0), "B1": np.ones(shape)}
    matched = np.ones(shape, bool)
    matched[0, 0, 0] = False  # as MatchResult holds an unmatched voxel: NaN parameters, m0 and correlation 0
    for value in params.values():
        value[0, 0, 0] = np.nan
    m0, correlation = np.where(matched, -2.0, 0.0), np.where(matched, 0.99, 0).astype(np.float32)
    result = MatchResult(params=params, m0=m0, correlation=correlation, index=np.where(matched, 0, -1),
                         matched=matched, backend="numpy")
    out, _ = STAGES["write"].function({"maps": result}, {}, "auto")
    derived = out["derived"]
    assert sorted(derived) == ["B1", "M0", "T1", "T2star", "correlation"]
    assert all(v.dtype == np.float32 and v.shape == shape for v in derived.values())
    # the rule for voxels without an estimate (mrfengine.masking.fill_not_estimated): 0 in every map, never NaN
    assert all(v[0, 0, 0] == 0 for v in derived.values())
    assert derived["T1"][1, 2, 3] == 800.0 and derived["M0"][1, 0, 0] == 2.0  # M0's magnitude


def test_run_stages_match_on_exact_fingerprints():
    """Noise-free fingerprints of known parameters come back through match and write."""
    from mrfengine.dictionary import fingerprints

    seq = hermann2021(1, n_slices=12)  # the tiny cohort's sequence: its dictionaries are shared
    z, y, x = seq.n_slices, 2, 3
    mrf = np.stack([fingerprints(seq, seq.slot_of_slice(k), t1_ms=np.full(y * x, 800.0),
                                 t2star_ms=np.full(y * x, 60.0), b1=np.full(y * x, 1.0),
                                 m0=np.full(y * x, 1.0)).T.reshape(-1, y, x) for k in range(z)], axis=1)
    pipe = Pipeline.from_stages("match", options={"mask": {"source": "none"}})  # every voxel is a fingerprint
    state, timings, info = run_stages(pipe, {"mrf": np.abs(mrf).astype(np.float32), "mask": None,
                                             "sequence": seq})
    t1 = state["derived"]["T1"]
    assert t1.shape == (z, y, x)
    np.testing.assert_allclose(t1, 800.0, rtol=0.03)
    assert set(timings) == {"mask", "match", "write"} and info["match"]["sequence_digest"] == seq.digest()
    assert info["mask"] == {"source": "none", "option": "none"} and info["write"]["brain_mask"] == "none"
    with pytest.raises(ValidationError, match="'mask' needs the whole subject"):  # a slab cannot make the mask
        run_stages(pipe, {"mrf": np.abs(mrf).astype(np.float32), "mask": None, "sequence": seq}, crop=(1, 0))


def test_the_readme_lists_every_stage_option():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {line.split("|")[1].strip(" `"): line for line in readme.splitlines()
            if line.startswith("| `") and line.count("|") == 3}
    for name, stage in STAGES.items():
        if not stage.options:
            continue
        assert name in rows, f"README's stage table has no row for {name!r}"
        for key in stage.options:
            assert f"`{key}`" in rows[name], f"README's row for {name!r} does not name option {key!r}"
        for key, values in stage.choices.items():
            for v in values:
                word = str(v).lower() if isinstance(v, bool) else v  # as TOML spells it
                assert f"`{word}`" in rows[name], f"README's row for {name!r} does not name {key} = {v!r}"


def test_a_stage_whose_library_is_missing_is_refused_before_any_subject(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ants" else real(name, *a))
    with pytest.raises(ValidationError, match=r"stage 'register' needs the Python module\(s\) \['ants'\].*mrfengine\[ants\]"):
        Pipeline.from_stages("denoise,match,register")
    assert Pipeline.from_stages("denoise,match").stages[-1] == "write"


def test_batch_help_lists_every_stage():
    from mrfengine.cli.batch import KNOWN_STAGES

    assert tuple(KNOWN_STAGES) == tuple(STAGES)
