import dataclasses
import json

import pytest

from mrfengine.errors import ValidationError
from mrfengine.nn import CONFIGS, NetworkConfig, OutputSpec, get_config, paper_outputs

TABLE_1 = {  # name: (loss, inputs, outputs), Hermann et al. 2021, Table 1
    "MSE-5": ("mse", 35, ("T1", "T2star", "NAWM", "GM", "lesion")),
    "MAE-5": ("mae", 35, ("T1", "T2star", "NAWM", "GM", "lesion")),
    "LCL-5": ("lcl", 35, ("T1", "T2star", "NAWM", "GM", "lesion")),
    "MSE-1": ("mse", 35, ("lesion",)),
    "MAE-1": ("mae", 35, ("lesion",)),
    "LCL-1": ("lcl", 35, ("lesion",)),
    "DICE-1": ("dice", 35, ("lesion",)),
    "MSE-2-1": ("mse", 2, ("lesion",)),
}


def test_the_eight_networks_of_table_1():
    assert list(CONFIGS) == list(TABLE_1)
    for name, (loss, c_in, outs) in TABLE_1.items():
        cfg = get_config(name)
        assert cfg.name == name and cfg.in_channels == c_in and cfg.output_names == outs
        assert cfg.loss_kinds == (loss,) * len(outs) and cfg.loss_weights == (1.0,) * len(outs)
        assert (cfg.depth, cfg.base_filters, cfg.dropout, cfg.size_multiple) == (4, 32, 0.5, 16)
        assert (cfg.learning_rate, cfg.batch_size, cfg.epochs, cfg.patch_size, cfg.patches_per_slice) == \
            (1e-4, 64, 100, 64, 64)
    assert get_config("MSE-2-1").input_kind == "maps" and get_config("MSE-2-1").input_names == ("T1", "T2star")
    assert get_config("DICE-1").outputs[0].activation == "sigmoid"
    assert all(o.activation == "none" for n in TABLE_1 if n != "DICE-1" for o in get_config(n).outputs)


def test_units_and_target_scaling():
    t1, t2, nawm, gm, lesion = get_config("MSE-5").outputs
    assert (t1.unit, t1.scale, t2.unit, t2.scale) == ("ms", 1000.0, "ms", 100.0)
    assert all((o.unit, o.scale) == ("1", 1.0) for o in (nawm, gm, lesion))
    assert (t1.target, nawm.target, lesion.target) == ("truth/T1", "truth/WM", "annotations/lesion")


def test_get_config_is_case_insensitive_and_names_the_known_ones():
    assert get_config("mse-5") is CONFIGS["MSE-5"]
    with pytest.raises(ValidationError, match="MSE-5, MAE-5"):
        get_config("MSE-7")


@pytest.mark.parametrize("name", list(TABLE_1))
def test_json_round_trip(name):
    cfg = get_config(name)
    again = NetworkConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and again.description == cfg.description


def test_build_and_tiny_variants():
    cfg = get_config("LCL-5").with_architecture(depth=2, base_filters=4)
    assert (cfg.depth, cfg.base_filters, cfg.patch_size % 4) == (2, 4, 0)
    net = cfg.build(seed=3)
    assert (net.in_channels, net.out_channels, net.depth, net.base_filters) == (35, 5, 2, 4)


@pytest.mark.parametrize("change,match", [
    ({"input_kind": "images"}, "input_kind"),
    ({"in_channels": 0}, "in_channels"),
    ({"patch_size": 40}, "multiple of 2\\*\\*depth"),
    ({"dropout": 1.5}, "dropout"),
    ({"outputs": ()}, "outputs"),
    ({"outputs": paper_outputs("mse") + paper_outputs("mse", lesion_only=True)}, "unique"),
    ({"input_kind": "maps"}, "names each of its 35"),
    ({"input_names": ("T1",)}, "takes frames"),
])
def test_config_validation(change, match):
    with pytest.raises(ValidationError, match=match):
        dataclasses.replace(get_config("MSE-5"), **change)


@pytest.mark.parametrize("kwargs,match", [
    ({"loss": "huber"}, "loss must be one of"),
    ({"loss": "dice"}, "Dice loss needs activation 'sigmoid'"),
    ({"activation": "sigmoid"}, "Dice loss needs"),
    ({"scale": 0.0}, "scale must be positive"),
    ({"weight": -1.0}, "weight must be >= 0"),
    ({"weight": float("nan")}, "finite"),
    ({"name": "T 1"}, "identifier"),
])
def test_output_spec_validation(kwargs, match):
    base = {"name": "T1", "unit": "ms", "scale": 1000.0, "loss": "mse"}
    with pytest.raises(ValidationError, match=match):
        OutputSpec(**{**base, **kwargs})


def test_all_zero_weights_and_malformed_dicts_are_refused():
    outs = tuple(dataclasses.replace(o, weight=0.0) for o in paper_outputs("mse"))
    with pytest.raises(ValidationError, match="positive loss weight"):
        NetworkConfig("X", outs)
    with pytest.raises(ValidationError, match="unknown network configuration fields"):
        NetworkConfig.from_dict({**get_config("MSE-1").to_dict(), "optimizer": "sgd"})
    bad = get_config("MSE-1").to_dict()
    bad["outputs"][0]["colour"] = "red"
    with pytest.raises(ValidationError, match="each output"):
        NetworkConfig.from_dict(bad)
