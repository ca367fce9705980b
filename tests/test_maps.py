"""The one map registry (mrfengine.maps) and the tables derived from it agree."""

from __future__ import annotations

import pytest

from mrfengine import maps
from mrfengine.errors import ValidationError
from mrfengine.cli.predict import output_file_spec, uncertainty_file_spec
from mrfengine.io.bids import MAP_SPECS
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
    assert set(MAP_SPECS) == set(maps.MATCH_MAPS)
    for name, (suffix, unit, scale, description) in MAP_SPECS.items():
        spec = maps.MATCH_MAPS[name]
        assert (unit, scale, description) == (spec.bids_unit, spec.scale_to_bids, spec.description)
        assert suffix == (spec.bids_suffix if name != "correlation" else "desc-correlation_mask")
    # Unchanged file names of `mrfengine match`.
    assert [MAP_SPECS[k][0] for k in ("T1", "T2star", "B1", "M0")] == ["T1map", "T2starmap", "TB1map", "M0map"]
    assert MAP_SPECS["M0"][1] == "arbitrary"


@pytest.mark.parametrize("path, name, unit, scale", [
    ("mrf", "mrf", "arbitrary", 1.0),
    ("brain_mask", "desc-brain_mask", "1", 1.0),
    ("truth/T1", "desc-truth_T1map", "s", 1e-3),
    ("truth/T2star", "desc-truth_T2starmap", "s", 1e-3),
    ("truth/B1", "desc-truth_TB1map", "1", 1.0),
    ("truth/PD", "desc-truth_PDmap", "1", 1.0),
    ("truth/GM", "label-GM_desc-truth_probseg", "1", 1.0),
    ("truth/lesion_id", "label-lesion_desc-truth_dseg", "label", 1.0),
    ("truth/distortion", "desc-truth_displacement", "voxel", 1.0),
    ("truth/new_map", "desc-truthnewmap_map", "arbitrary", 1.0),
    ("derived/p-1/T1", "desc-p1_T1map", "s", 1e-3),
    ("derived/p-1/M0", "desc-p1_M0map", "arbitrary", 1.0),
    ("derived/p-1/correlation", "desc-p1correlation_map", "1", 1.0),
    ("derived/p-1/NAWM", "label-NAWM_desc-p1_probseg", "1", 1.0),
    ("derived/p-1/CSF", "label-CSF_desc-p1_probseg", "1", 1.0),
    ("derived/p-1/T2star_uncertainty", "desc-p1uncertainty_T2starmap", "s", 1e-3),
    ("derived/p-1/lesion_uncertainty", "label-lesion_desc-p1uncertainty_probseg", "1", 1.0),
    ("derived/p-1/B1_uncertainty", "desc-p1B1uncertainty_map", "arbitrary", 1.0),
    ("derived/p-1/physics_consistency", "desc-p1physicsconsistency_map", "1", 1.0),
    ("derived/p-1/other", "desc-p1other_map", "arbitrary", 1.0),
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
        assert export_name(f"derived/P/{name}_uncertainty") == (unc.bids_name("Puncertainty"), unc.bids_unit,
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
    for name, spec in maps.NETWORK_MAPS.items():
        assert output_file_spec(name, spec.unit) == (spec.bids_name(), spec.bids_unit, spec.scale_to_bids)
        unc = maps.uncertainty_spec(spec)
        assert uncertainty_file_spec(name, spec.unit) == (unc.bids_name("uncertainty"), unc.bids_unit,
                                                           unc.scale_to_bids)
    # A custom card's output keeps its own unit.
    assert output_file_spec("T1", "s") == ("desc-T1_map", "s", 1.0)
    assert output_file_spec("WMH", "1") == ("label-WMH_probseg", "1", 1.0)
