"""tissue_targets: the NAWM/GM targets from a pipeline's segment stage instead of the phantom's truth."""

import json
import shutil

import numpy as np
import pytest
import torch
from _tiny_cohort import TRAIN_TOML, tiny_cohort_path

from mrfengine.cli import main
from mrfengine.errors import ValidationError
from mrfengine.io import Cohort
from mrfengine.nn import read_card
from mrfengine.nn.checkpoint import load_checkpoint
from mrfengine.nn.data import PatchSampler, check_target_arrays, resolve_target
from mrfengine.nn.train import TrainSettings, load_settings, train
from mrfengine.pipeline.derived import write_derived



def _settings(path, cohort, out, epochs=1, extra=""):
    path.write_text(TRAIN_TOML.format(cohort=cohort, out=out, epochs=epochs) + extra)
    return path


def _segment_maps(subject):
    """Stand-ins for a segment stage's maps, unlike the truth: NAWM = truth/WM ** 2, GM = truth/GM / 2."""
    wm = np.asarray(subject.truth["WM"][:], dtype=np.float32)
    gm = np.asarray(subject.truth["GM"][:], dtype=np.float32)
    return {"NAWM": wm * wm, "GM": gm / 2, "T1": np.asarray(subject.truth["T1"][:], dtype=np.float32)}


@pytest.fixture(scope="module")
def seg_cohort(tmp_path_factory):
    """A copy of the tiny cohort whose subjects all have derived/seg/{NAWM,GM,T1}, and whose
    training subjects alone have derived/part/{NAWM,GM}: (path, the first subject without 'part')."""
    path = tmp_path_factory.mktemp("tissue") / "tiny.zarr"
    shutil.copytree(tiny_cohort_path(tmp_path_factory), path)
    cohort = Cohort.open(path)
    for sid in cohort.subjects:
        maps = _segment_maps(cohort[sid])
        write_derived(path, sid, "seg", maps)
        if sid in cohort.subjects_in("train"):
            write_derived(path, sid, "part", {"NAWM": maps["NAWM"], "GM": maps["GM"]})
    return path, next(s for s in cohort.subjects if s not in cohort.subjects_in("train"))


def test_the_setting_resolves_the_nawm_and_gm_target_paths():
    assert resolve_target("truth/WM", "NAWM") == "truth/WM"
    assert resolve_target("truth/WM", "NAWM", tissue_targets="derived:seg") == "derived/seg/NAWM"
    assert resolve_target("truth/GM", "GM", tissue_targets="derived:seg") == "derived/seg/GM"
    for name, target in (("T1", "truth/T1"), ("T2star", "truth/T2star"), ("lesion", "annotations/lesion")):
        assert resolve_target(target, name, tissue_targets="derived:seg") == target
    # independent of map_source, which moves T1/T2* only
    assert resolve_target("truth/T1", "T1", "derived:m", "derived:seg") == "derived/m/T1"
    assert resolve_target("truth/WM", "NAWM", "derived:m", "truth") == "truth/WM"
    with pytest.raises(ValidationError, match="tissue_targets must be 'truth' or 'derived:<name>'"):
        resolve_target("truth/WM", "NAWM", tissue_targets="seg")
    assert TrainSettings(cohort="c", network="MSE-5", output_dir="o").tissue_targets == "truth"
    for bad, match in (("derived:", "tissue_targets must be"), ("spm", "tissue_targets must be"),
                       ("derived:a/b", "pipeline of tissue_targets"), ("", "non-empty")):
        with pytest.raises(ValidationError, match=match):
            TrainSettings(cohort="c", network="MSE-5", output_dir="o", tissue_targets=bad)
    with pytest.raises(ValidationError, match="network MSE-1 has no NAWM or GM output"):
        TrainSettings(cohort="c", network="MSE-1", output_dir="o", tissue_targets="derived:seg")


def test_the_sampler_reads_the_derived_maps_for_nawm_and_gm_only(seg_cohort, tiny_config, tiny_normalisation):
    path, _ = seg_cohort
    cohort = Cohort.open(path)
    config = tiny_config()
    norm = tiny_normalisation(35)
    kw = dict(split="train", patch_size=32, patches_per_slice=1, augment=False, seed=3)
    truth = PatchSampler(cohort, config, norm, **kw)
    default_paths = ["truth/T1", "truth/T2star", "truth/WM", "truth/GM", "annotations/lesion"]
    assert truth.target_paths == default_paths
    seg = PatchSampler(cohort, config, norm, tissue_targets="derived:seg", **kw)
    assert seg.target_paths == ["truth/T1", "truth/T2star", "derived/seg/NAWM", "derived/seg/GM",
                                "annotations/lesion"]
    plan = seg.epoch_plan(0)
    assert np.array_equal(plan, truth.epoch_plan(0))  # the same patches, only the targets differ
    (xs, ys), (xt, yt) = next(seg.batches(0, 8)), next(truth.batches(0, 8))
    assert torch.equal(xs, xt)
    assert torch.equal(ys[:, [0, 1, 4]], yt[:, [0, 1, 4]])
    torch.testing.assert_close(ys[:, 2], yt[:, 2] ** 2)  # NAWM = truth/WM ** 2 (scale 1)
    torch.testing.assert_close(ys[:, 3], yt[:, 3] / 2)
    for k, (i, y0, x0, _, _) in enumerate(plan[:8]):
        ref = seg.slices[int(i)]
        nawm = np.asarray(cohort[ref.subject].array("derived/seg/NAWM")[ref.z])[y0:y0 + 32, x0:x0 + 32]
        np.testing.assert_array_equal(ys[k, 2].numpy(), nawm)


def test_a_subject_without_the_derived_maps_is_refused_before_training(seg_cohort, tmp_path):
    path, without = seg_cohort
    cohort = Cohort.open(path)
    config = TrainSettings(cohort="c", network="MSE-5", output_dir="o").network_config()
    check_target_arrays(cohort, config, cohort.subjects_in("train"), tissue_targets="derived:part")
    with pytest.raises(ValidationError) as err:
        check_target_arrays(cohort, config, cohort.subjects, tissue_targets="derived:part")
    msg = str(err.value)
    assert f"subject {without} has no 'derived/part/NAWM'" in msg
    assert f"'mrfengine batch {path} --stages denoise,match,segment --name part'" in msg
    # the default pipeline name of those stages needs no --name
    with pytest.raises(ValidationError, match=r"--stages denoise,match,segment'"):
        check_target_arrays(cohort, config, cohort.subjects, tissue_targets="derived:denoise-match-segment")
    # training stops at once: nothing written, no normalisation fitted, no epoch run
    toml = _settings(tmp_path / "run.toml", path, "out", extra='tissue_targets = "derived:part"\n')
    with pytest.raises(ValidationError, match=f"subject {without} has no 'derived/part/NAWM'"):
        train(load_settings(toml))
    assert not (tmp_path / "out").exists()
    # the command line says so too, naming the command that makes the maps
    plain = _settings(tmp_path / "plain.toml", path, "cli")
    assert main(["train", str(plain), "--no-progress", "--tissue-targets", "derived:part"]) != 0
    assert not (tmp_path / "cli").exists()
    assert main(["train", str(plain), "--no-progress", "--tissue-targets", "spm"]) != 0


@pytest.fixture(scope="module")
def seg_run(seg_cohort, tmp_path_factory):
    """One tiny epoch on derived/seg tissue targets through the command line."""
    root = tmp_path_factory.mktemp("seg_run")
    toml = _settings(root / "run.toml", seg_cohort[0], "out")
    assert main(["train", str(toml), "--no-progress", "--tissue-targets", "derived:seg"]) == 0
    return root, toml


def test_the_card_and_checkpoint_record_the_setting_and_resume_keeps_it(seg_run):
    root, toml = seg_run
    card = read_card(root / "out" / "model.pt")
    assert card.tissue_targets == "derived:seg"
    data = json.loads((root / "out" / "model.card.json").read_text())
    assert data["training"]["tissue_targets"] == "derived:seg"
    assert card.metrics["training_run"]["tissue_targets"] == "derived:seg"
    ckpt = load_checkpoint(root / "out" / "checkpoint.pt", restore_rng=False)
    assert ckpt.extra["settings"]["tissue_targets"] == "derived:seg"
    # validation scores NAWM/GM against the maps trained on (here a quarter of truth's GM is never >= 80%)
    assert 0 <= card.metrics["validation"]["GM_dice_slice_mean"] <= 1
    # resume with the other targets (the file's default, or the option) is refused, naming both
    toml.write_text(toml.read_text().replace("epochs = 1", "epochs = 2"))
    with pytest.raises(ValidationError, match="tissue_targets: 'derived:seg' there, 'truth' now"):
        train(load_settings(toml), resume=True)
    assert main(["train", str(toml), "--no-progress", "--resume", "--tissue-targets", "truth"]) != 0
    assert load_checkpoint(root / "out" / "checkpoint.pt").epoch == 1
    # the same targets resume
    assert main(["train", str(toml), "--no-progress", "--resume", "--tissue-targets", "derived:seg"]) == 0
    assert load_checkpoint(root / "out" / "checkpoint.pt").epoch == 2
    assert read_card(root / "out" / "model.pt").tissue_targets == "derived:seg"


def test_cards_without_the_field_read_as_truth(seg_run, tmp_path):
    root, _ = seg_run
    data = json.loads((root / "out" / "model.card.json").read_text())
    del data["training"]["tissue_targets"]
    old = tmp_path / "old.card.json"
    old.write_text(json.dumps(data))
    assert read_card(old).tissue_targets == "truth"
    data["training"]["tissue_targets"] = "spm"
    old.write_text(json.dumps(data))
    with pytest.raises(ValidationError, match="old.card.json: tissue_targets must be"):
        read_card(old)


def test_saved_models_carry_the_setting_into_resaves_and_the_predictions_record(tmp_path, tiny_config,
                                                                                tiny_normalisation, tiny_sequence):
    from mrfengine.nn import load_model, save_model
    from mrfengine.nn.artifact import resave_model
    from mrfengine.nn.predict import network_maps

    config = tiny_config()
    card = save_model(config.build(seed=0), tmp_path / "seg.pt", config=config, normalisation=tiny_normalisation(35),
                      sequence=tiny_sequence, tissue_targets="derived:seg")
    assert card.tissue_targets == read_card(tmp_path / "seg.pt").tissue_targets == "derived:seg"
    assert resave_model(tmp_path / "seg.pt", tmp_path / "half.pt").tissue_targets == "derived:seg"
    volume = np.random.default_rng(0).uniform(0, 0.3, (2, 35, 16, 16)).astype(np.float32)
    run = network_maps(volume, load_model(tmp_path / "half.pt"), sequence=tiny_sequence, brain_mask=False,
                       input_scale="absolute")
    assert run.info()["tissue_targets"] == "derived:seg"
    assert run.sidecar_fields()["TissueTargets"] == "derived:seg"  # predict's NIfTI sidecars say it
    with pytest.raises(ValidationError, match="tissue_targets must be"):
        save_model(config.build(seed=0), tmp_path / "bad.pt", config=config, normalisation=tiny_normalisation(35),
                   sequence=tiny_sequence, tissue_targets="spm")
    assert not (tmp_path / "bad.pt").exists()  # refused before anything is written
