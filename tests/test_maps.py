"""The one map registry (mrfengine.maps) and the tables derived from it agree."""

from __future__ import annotations

import pytest

from mrfengine import maps
from mrfengine.errors import ValidationError
from mrfengine.io.bids import match_file, network_file
from mrfengine.io.cohort import REQUIRED_TRUTH, TRUTH_SPECS
from mrfengine.io.exporter import export_name
from mrfengine.nn.configs import LOSS_KINDS, paper_outputs
from mrfengine.pipeline.derived import DERIVED_ARRAYS, _array_attributes

TABLES = {"truth": maps.TRUTH_MAPS, "match": maps.MATCH_MAPS, "network": maps.NETWORK_MAPS, "other": maps.OTHER_MAPS}


def test_registry_entries_are_well_formed():
    for table, specs in TABLES.items():
        assert specs, table
        for name, spec in specs.items():
            assert spec.name == name, (table, name)
            assert spec.unit in maps.UNITS and spec.bids_unit in maps.UNITS, (table, name)
            assert spec.kind in maps.KINDS and spec.description.strip(), (table, name)
            assert spec.scale_to_bids > 0
            if spec.unit == spec.bids_unit:
                assert spec.scale_to_bids == 1.0, (table, name)
    with pytest.raises(ValueError, match="units"):
        maps.MapSpec("x", "milliseconds", "x", "quantitative")
    with pytest.raises(ValueError, match="kind"):
        maps.MapSpec("x", "ms", "x", "colour")


def test_one_unit_per_name_across_sources():
    # truth/GM (a fraction) and the network's GM (a probability) are both "1"; T1 is ms everywhere.
    seen: dict[str, tuple[str, str]] = {}
    for table, specs in TABLES.items():
        for name, spec in specs.items():
            if name in seen:
                assert seen[name][0] == spec.unit, f"{name}: {seen[name]} vs {table} {spec.unit}"
            seen[name] = (spec.unit, table)
    assert seen["T1"][0] == maps.MS and seen["GM"][0] == maps.DIMENSIONLESS


def test_relaxation_times_leave_in_seconds():
    for specs in (maps.TRUTH_MAPS, maps.MATCH_MAPS, maps.NETWORK_MAPS):
        for name in ("T1", "T2star"):
            spec = specs[name]
            assert (spec.unit, spec.bids_unit, spec.scale_to_bids) == ("ms", "s", 1e-3)
            assert spec.bids_name() == f"{name}map"


def test_truth_specs_derive_from_registry():
    assert TRUTH_SPECS == {n: (s.unit, s.description) for n, s in maps.TRUTH_MAPS.items()}
    assert set(REQUIRED_TRUTH) <= set(TRUTH_SPECS)
    assert {TRUTH_SPECS[n][0] for n in ("GM", "WM", "CSF", "lesion", "DGM")} == {"1"}


def test_derived_arrays_and_their_stored_attributes():
    assert set(DERIVED_ARRAYS) == set(maps.MATCH_MAPS)
    for name, (unit, description) in DERIVED_ARRAYS.items():
        assert unit == maps.MATCH_MAPS[name].unit
        assert description.startswith(maps.MATCH_MAPS[name].description) and "where not matched" in description
        assert _array_attributes(name) == {"units": unit, "description": description}
    # The unet stage's arrays get units and descriptions too.
    for name, spec in maps.NETWORK_MAPS.items():
        attrs = _array_attributes(name) if name not in DERIVED_ARRAYS else None
        if attrs is not None:
            assert attrs == {"units": spec.unit, "description": spec.description}
        unc = _array_attributes(name + "_uncertainty")
        assert unc["units"] == spec.unit and "Monte-Carlo dropout" in unc["description"]
    assert _array_attributes("physics_consistency")["units"] == "1"
    assert _array_attributes("not_a_map") == {"units": "", "description": ""}


def test_match_cli_names_derive_from_registry():
    sub = {"sub": "01"}
    names = {k: str(match_file(k, sub).relpath) for k in maps.MATCH_MAPS}
    # `mrfengine match`'s own desc-, the registry's suffixes; B1+ under fmap/ as BIDS files it
    assert names == {"T1": "sub-01/anat/sub-01_desc-match_T1map.nii.gz",
                     "T2star": "sub-01/anat/sub-01_desc-match_T2starmap.nii.gz",
                     "B1": "sub-01/fmap/sub-01_desc-match_TB1map.nii.gz",
                     "M0": "sub-01/anat/sub-01_desc-match_M0map.nii.gz",
                     "correlation": "sub-01/anat/sub-01_desc-match_correlation.nii.gz"}
    assert match_file("correlation", sub).nonstandard and not match_file("T1", sub).nonstandard


@pytest.mark.parametrize("path, name, unit, scale", [
    ("mrf", "MRF", "arbitrary", 1.0),
    ("brain_mask", "desc-brain_mask", "1", 1.0),
    ("truth/T1", "desc-truth_T1map", "s", 1e-3),
    ("truth/T2star", "desc-truth_T2starmap", "s", 1e-3),
    ("truth/B1", "desc-truth_TB1map", "1", 1.0),
    ("truth/PD", "desc-truth_PDmap", "1", 1.0),
    ("truth/GM", "label-GM_desc-truth_probseg", "1", 1.0),
    ("truth/lesion_id", "desc-truth_dseg", "label", 1.0),
    ("truth/distortion", "desc-truth_displacement", "voxel", 1.0),
    ("truth/new_map", "desc-truth_newmap", "arbitrary", 1.0),
    ("derived/p-1/T1", "desc-p1_T1map", "s", 1e-3),
    ("derived/p-1/M0", "desc-p1_M0map", "arbitrary", 1.0),
    ("derived/p-1/correlation", "desc-p1_correlation", "1", 1.0),
    ("derived/p-1/mppca_sigma", "desc-p1_noise", "arbitrary", 1.0),
    ("derived/p-1/mppca_rank", "desc-p1_rank", "1", 1.0),
    ("derived/p-1/brain_mask", "label-brain_desc-p1_mask", "1", 1.0),
    ("derived/p-1/NAWM", "label-NAWM_desc-p1_probseg", "1", 1.0),
    ("derived/p-1/CSF", "label-CSF_desc-p1_probseg", "1", 1.0),
    ("derived/p-1/T2star_uncertainty", "desc-p1_T2starmapstd", "s", 1e-3),
    ("derived/p-1/lesion_uncertainty", "label-lesion_desc-p1_probsegstd", "1", 1.0),
    ("derived/p-1/B1_uncertainty", "desc-p1_B1uncertainty", "arbitrary", 1.0),
    ("derived/p-1/physics_consistency", "desc-p1_consistency", "1", 1.0),
    ("derived/p-1/other", "desc-p1_other", "arbitrary", 1.0),
    ("annotations/lesion", "label-lesion_mask", "1", 1.0),
    ("annotations/WMH_rater2", "label-WMH_desc-rater2_mask", "1", 1.0),
    ("reference/T2w", "T2w", "arbitrary", 1.0),
])
def test_export_names(path, name, unit, scale):
    assert export_name(path) == (name, unit, scale)


def test_every_map_the_exporter_names_has_a_registry_entry():
    for name, spec in maps.TRUTH_MAPS.items():
        assert export_name(f"truth/{name}") == (spec.bids_name("truth"), spec.bids_unit, spec.scale_to_bids)
    for specs in (maps.MATCH_MAPS, maps.NETWORK_MAPS):
        for name, spec in specs.items():
            assert export_name(f"derived/P/{name}") == (spec.bids_name("P"), spec.bids_unit, spec.scale_to_bids)
    for name, spec in maps.NETWORK_MAPS.items():
        unc = maps.derived_spec(f"{name}_uncertainty")
        assert unc is not None and unc.unit == spec.unit
        assert export_name(f"derived/P/{name}_uncertainty") == (unc.bids_name("P"), unc.bids_unit,
                                                                 unc.scale_to_bids)
    # Every exported unit is a registry unit word.
    for path in ("mrf", "brain_mask", "annotations/lesion", "reference/T2w", "derived/P/physics_consistency"):
        assert export_name(path)[1] in maps.UNITS


def test_network_outputs_and_predict_names_derive_from_registry():
    for loss in LOSS_KINDS:
        try:
            outputs = paper_outputs(loss)
        except ValidationError:  # a loss the paper's regression outputs cannot take (dice)
            outputs = paper_outputs(loss, lesion_only=True)
        for out in outputs:
            spec = maps.NETWORK_MAPS[out.name]
            assert (out.unit, out.description) == (spec.unit, spec.description)
    assert {o.name for o in paper_outputs("mse")} == set(maps.NETWORK_MAPS)
    sub = {"sub": "01"}
    for name, spec in maps.NETWORK_MAPS.items():
        file, got = network_file(name, spec.unit, sub)
        assert file.relpath.name == f"sub-01_{spec.bids_name('unet')}.nii.gz" and got == spec
        file, unc = network_file(name, spec.unit, sub, uncertainty=True)
        assert unc == maps.uncertainty_spec(spec) and file.suffix == spec.suffix + "std" and file.nonstandard
        assert (unc.bids_unit, unc.scale_to_bids) == (spec.bids_unit, spec.scale_to_bids)
    # A custom card's output keeps its own unit; a dimensionless one is a probability.
    file, spec = network_file("T1", "s", sub)
    assert (file.relpath.name, spec.bids_unit, spec.scale_to_bids) == ("sub-01_desc-unet_T1.nii.gz", "s", 1.0)
    file, spec = network_file("WMH", "1", sub)
    assert (file.relpath.name, spec.bids_unit) == ("sub-01_label-WMH_desc-unet_probseg.nii.gz", "1")
