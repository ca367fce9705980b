"""The training loop: outputs, resume, determinism, the exported model."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from mrfengine.cli import main
from mrfengine.errors import InputFileError, ValidationError
from mrfengine.io import Cohort
from mrfengine.nn import load_model, read_card
from mrfengine.nn.train import TrainSettings, cohort_hash, load_settings, train
from mrfengine.nn.checkpoint import load_checkpoint

from _tiny_cohort import TRAIN_TOML, tiny_cohort_path



def _write_settings(path, cohort, out, epochs):
    path.write_text(TRAIN_TOML.format(cohort=cohort, out=out, epochs=epochs))
    return path


@pytest.fixture(scope="module")
def cohort_path(tmp_path_factory):
    return tiny_cohort_path(tmp_path_factory)


@pytest.fixture(scope="module")
def full_run(cohort_path, tmp_path_factory):
    """An uninterrupted two-epoch run through the command line."""
    root = tmp_path_factory.mktemp("train_full")
    toml = _write_settings(root / "run.toml", cohort_path, "out", 2)
    assert main(["train", str(toml), "--no-progress"]) == 0
    return root / "out"


def test_a_run_writes_checkpoint_metrics_plot_and_model(full_run, cohort_path):
    for name in ("checkpoint.pt", "metrics.csv", "metrics.png", "model.pt", "model.card.json"):
        assert (full_run / name).is_file(), name
    assert not list(full_run.glob(".*tmp*"))
    rows = list(csv.DictReader((full_run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for r in rows:
        assert float(r["train_loss"]) > 0
        assert 0 <= float(r["lesion_dice"]) <= 1
        assert 0 <= float(r["NAWM_dice_slice_mean"]) <= 1 and 0 <= float(r["GM_dice_slice_mean"]) <= 1
        assert float(r["T1_reldev"]) > 0 and float(r["T2star_reldev"]) > 0
    assert (full_run / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = read_card(full_run / "model.card.json")
    cohort = Cohort.open(cohort_path)
    assert card.training_cohort_hash == cohort_hash(cohort)
    site = cohort[cohort.subjects_in("train")[0]].site
    assert card.sequence_digest == cohort.sequence(site).digest()
    assert card.metrics["validation"]["T1_reldev"] == pytest.approx(float(rows[-1]["T1_reldev"]))
    assert card.metrics["epochs"] == 2
    assert card.tissue_targets == "truth" and card.metrics["training_run"]["tissue_targets"] == "truth"
    ckpt = load_checkpoint(full_run / "checkpoint.pt", restore_rng=False)
    assert card.normalisation == ckpt.normalisation
    assert card.config == ckpt.config and card.config.learning_rate == 1e-4


def test_resume_after_epoch_one_matches_the_uninterrupted_run(full_run, cohort_path, tmp_path):
    settings = load_settings(_write_settings(tmp_path / "run.toml", cohort_path, "out", 1))
    train(settings)
    assert load_checkpoint(tmp_path / "out" / "checkpoint.pt", restore_rng=False).epoch == 1
    with pytest.raises(ValidationError, match="resume"):
        train(settings)  # a checkpoint is in the way
    longer = load_settings(_write_settings(tmp_path / "run.toml", cohort_path, "out", 2))
    result = train(longer, resume=True)
    assert [h["epoch"] for h in result.history] == [1, 2]
    a = torch.load(full_run / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "out" / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["extra"]["history"] == b["extra"]["history"]


def test_the_exported_model_loads_and_predicts_like_the_checkpoint(full_run, cohort_path):
    cohort = Cohort.open(cohort_path)
    sid = cohort.subjects_in("validation")[0]
    loaded = load_model(full_run / "model.pt", expect_channels=35)
    ckpt_state = torch.load(full_run / "checkpoint.pt", weights_only=True)
    net = loaded.card.config.build()
    net.load_state_dict(ckpt_state["model"])
    net.eval()
    scale, offset = loaded.card.normalisation.scale_and_offset()
    x = np.asarray(cohort[sid].mrf[:, 5]) * scale[:, None, None] + offset[:, None, None]
    xin = torch.from_numpy(x[None].astype(np.float32))
    with torch.no_grad():
        got, want = loaded.module(xin), net(xin)
    assert got.shape == (1, 5, 64, 64)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


def test_settings_are_checked(tmp_path, cohort_path):
    with pytest.raises(InputFileError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('cohort = "c.zarr"\nnetwork = "MSE-5"\noutput_dir = "o"\nlearning_rat = 1e-4\n')
    with pytest.raises(ValidationError, match="learning_rat"):
        load_settings(bad)
    with pytest.raises(ValidationError, match="epochs"):
        TrainSettings(cohort="c", network="MSE-5", output_dir="o", epochs=0)
    s = load_settings(_write_settings(tmp_path / "ok.toml", cohort_path, "out", 1))
    assert s.output_dir == str(tmp_path / "out") and s.learning_rate == 1e-4
    cfg = s.network_config()
    assert (cfg.depth, cfg.base_filters, cfg.patch_size, cfg.patches_per_slice) == (2, 4, 32, 1)
    with pytest.raises(ValidationError, match="cannot resume"):
        train(s, resume=True)


def test_loss_weights_and_lesion_centring_settings(tmp_path, cohort_path):
    toml = _write_settings(tmp_path / "run.toml", cohort_path, "out", 1)
    toml.write_text(toml.read_text() + 'lesion_centring = "lesion"\npatch_centring = "brain"\n'
                    'loss_weights = { lesion = 2, GM = 0.5 }\n')
    s = load_settings(toml)
    assert s.loss_weights == {"lesion": 2.0, "GM": 0.5} and s.lesion_centring == "lesion"
    assert s.patch_centring == "brain"
    weights = {o.name: o.weight for o in s.network_config().outputs}
    assert weights == {"T1": 1.0, "T2star": 1.0, "NAWM": 1.0, "GM": 0.5, "lesion": 2.0}
    assert TrainSettings(cohort="c", network="MSE-5", output_dir="o").network_config().loss_weights == (1.0,) * 5
    for bad, match in ((dict(loss_weights={"WM": 1.0}), "does not output"),
                       (dict(loss_weights={"lesion": -1.0}), "lesion must be a number"),
                       (dict(loss_weights={"lesion": True}), "lesion must be a number"),
                       (dict(loss_weights={}), "table of output name"),
                       (dict(lesion_centring="component"), "lesion_centring"),
                       (dict(patch_centring="mask"), "patch_centring")):
        with pytest.raises(ValidationError, match=match):
            TrainSettings(cohort="c", network="MSE-5", output_dir="o", **bad)
    # the run records both in its checkpoint and card; a checkpoint from before the
    # settings existed resumes as if they had their defaults
    result = train(s)
    run = load_model(result.model_path).card.metrics["training_run"]
    assert run["lesion_centring"] == "lesion" and run["loss_weights"] == {"lesion": 2.0, "GM": 0.5}
    assert run["patch_centring"] == "brain"
    toml.write_text(toml.read_text().replace("epochs = 1", "epochs = 2"))
    assert len(train(load_settings(toml), resume=True).history) == 2  # the same settings resume
    plain = load_settings(_write_settings(tmp_path / "plain.toml", cohort_path, "plain", 1))
    train(plain)
    ckpt_path = tmp_path / "plain" / "checkpoint.pt"
    state = torch.load(ckpt_path, weights_only=True)
    for key in ("lesion_centring", "patch_centring", "loss_weights"):
        del state["extra"]["settings"][key]
    # ... and one whose history has the validation keys of earlier versions reads them as today's
    first = dict(state["extra"]["history"][0])
    state["extra"]["history"] = [{{"NAWM_dice_slice_mean": "NAWM_dice", "GM_dice_slice_mean": "GM_dice"}.get(k, k): v
                                  for k, v in first.items()}]
    torch.save(state, ckpt_path)
    longer = load_settings(_write_settings(tmp_path / "plain.toml", cohort_path, "plain", 2))
    resumed = train(longer, resume=True)
    assert len(resumed.history) == 2 and resumed.history[0] == first
    rows = list(csv.DictReader((tmp_path / "plain" / "metrics.csv").open()))
    assert float(rows[0]["GM_dice_slice_mean"]) == pytest.approx(first["GM_dice_slice_mean"])
    weighted = load_settings(_write_settings(tmp_path / "plain.toml", cohort_path, "plain", 3))
    weighted = TrainSettings(**{**weighted.to_dict(), "loss_weights": {"lesion": 3.0}})
    with pytest.raises(ValidationError, match="loss_weights"):
        train(weighted, resume=True)


def test_bf16_autocast_runs_and_validates(cohort_path, tmp_path):
    toml = _write_settings(tmp_path / "run.toml", cohort_path, "out", 1)
    toml.write_text(toml.read_text() + "bf16 = true\n")
    result = train(load_settings(toml))
    (row,) = result.history
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["T1_reldev"])
    assert load_model(result.model_path).card.metrics["validation"]["T1_reldev"] == pytest.approx(row["T1_reldev"])


def test_a_run_can_start_from_a_saved_model(full_run, cohort_path, tmp_path):
    """init_model: the weights and normalisation of a saved network are the start
    (learning rate ~0, so one epoch leaves them where they were)."""
    start = load_model(full_run / "model.pt")
    toml = _write_settings(tmp_path / "warm.toml", cohort_path, "warm", 1)
    toml.write_text(toml.read_text() + f'learning_rate = 1e-12\ninit_model = "{full_run / "model.pt"}"\n')
    result = train(load_settings(toml))
    end = load_model(result.model_path)
    assert end.card.normalisation.to_dict() == start.card.normalisation.to_dict()
    a, b = start.module.state_dict(), end.module.state_dict()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    # the card carries the lineage: this run's settings and history, the start's hash and record
    run = end.card.metrics["training_run"]
    assert run["learning_rate"] == 1e-12 and run["init_model"] == "model.pt" and len(run["history"]) == 1
    assert "output_dir" not in run and run["cohort"] == Path(cohort_path).name
    origin = run["initialised_from"]
    assert origin["sha256"] == start.card.artifact_sha256
    assert origin["training_run"] == start.card.metrics["training_run"]
    assert origin["epochs"] == start.card.metrics["epochs"]
    # resuming after the starting network has gone fails before any epoch, not at the export
    copy = tmp_path / "start"
    copy.mkdir()
    for name in ("model.pt", "model.card.json"):
        (copy / name).write_bytes((full_run / name).read_bytes())
    gone = _write_settings(tmp_path / "gone.toml", cohort_path, "gone", 1)
    gone.write_text(gone.read_text() + f'learning_rate = 1e-12\ninit_model = "{copy / "model.pt"}"\n')
    train(load_settings(gone))
    copy.rename(tmp_path / "moved")
    gone.write_text(gone.read_text().replace("epochs = 1", "epochs = 2"))
    with pytest.raises(InputFileError, match="start/model.card.json"):
        train(load_settings(gone), resume=True)
    assert load_checkpoint(tmp_path / "gone" / "checkpoint.pt").epoch == 1
    bad = _write_settings(tmp_path / "bad.toml", cohort_path, "bad", 1)
    bad.write_text(bad.read_text().replace("depth = 2", "depth = 3") + f'init_model = "{full_run / "model.pt"}"\n')
    with pytest.raises(ValidationError, match="cannot start a run"):
        train(load_settings(bad))


def _validation_split_and_network(cohort_path):
    """The tiny cohort, MSE-5, its validation sampler and a 1x1 convolution for a network:
    any in-plane size, outputs that cross both thresholds somewhere."""
    from mrfengine.nn import get_config
    from mrfengine.nn.data import PatchSampler, fit_cohort_normalisation

    cohort = Cohort.open(cohort_path)
    config = get_config("MSE-5")
    norm = fit_cohort_normalisation(cohort, config)
    sampler = PatchSampler(cohort, config, norm, split="validation", augment=False, patch_size=32)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(config.in_channels, len(config.outputs), 1)
    with torch.no_grad():
        model.bias.copy_(torch.tensor([1.0, 0.6, 0.7, 0.7, 0.2]))
        model.weight.mul_(0.3)
    return cohort, config, sampler, model


def test_validation_metrics_are_the_evaluation_measures(cohort_path):
    """validate() gives what mrfengine.metrics gives on the masked whole volumes:
    lesion Dice and detection rate at 33%, NAWM/GM Dice at 80% as a mean over
    all slices, relative deviations in the brain."""
    from mrfengine.metrics import dice, lesion_detection_rate, relative_deviation, tissue_dice
    from mrfengine.nn.train import validate
    from mrfengine.nn.targets import to_physical_units

    cohort, config, sampler, model = _validation_split_and_network(cohort_path)
    got = validate(model, sampler)

    names = config.output_names
    per_subject: dict[str, list] = {}
    for i, ref_slice in enumerate(sampler.slices):
        subject = cohort[ref_slice.subject]
        x = torch.from_numpy(sampler.normalised_input(i)[None])
        with torch.no_grad():
            pred = to_physical_units(model(x), config)[0].numpy()
        brain = np.asarray(subject.brain_mask[ref_slice.z]) > 0
        ref = [np.asarray(subject.array(p)[ref_slice.z], dtype=np.float32) for p in sampler.target_paths]
        per_subject.setdefault(ref_slice.subject, []).append((np.where(brain, pred, 0.0), np.asarray(ref), brain))
    pred = {s: np.stack([p for p, _, _ in v]) for s, v in per_subject.items()}
    ref = {s: np.stack([r for _, r, _ in v]) for s, v in per_subject.items()}
    brain = {s: np.stack([b for _, _, b in v]) for s, v in per_subject.items()}
    P, R, B = (np.concatenate(list(d.values())) for d in (pred, ref, brain))
    k = {n: names.index(n) for n in names}

    assert got["lesion_dice"] == pytest.approx(dice(P[:, k["lesion"]], R[:, k["lesion"]] >= 0.5, threshold=0.33))
    rates = [lesion_detection_rate(pred[s][:, k["lesion"]], ref[s][:, k["lesion"]] >= 0.5, threshold=0.33)
             for s in pred]
    rates = [r for r in rates if np.isfinite(r)]
    assert rates, "the tiny cohort's validation split should have a lesion"
    assert got["lesion_detection_rate"] == pytest.approx(np.mean(rates))
    for n in ("NAWM", "GM"):
        expected = tissue_dice(P[:, k[n]], R[:, k[n]], threshold=0.8, axis=0).slice_mean
        assert 0 < expected < 1
        assert got[f"{n}_dice_slice_mean"] == pytest.approx(expected)
    for n in ("T1", "T2star"):
        assert got[f"{n}_reldev"] == pytest.approx(relative_deviation(P[:, k[n]][B], R[:, k[n]][B]))


def test_validation_demo_and_report_give_the_same_figures_for_the_same_maps(cohort_path):
    """One definition of each figure: the training validation, the demo's metrics and
    `mrfengine evaluate` all go through metrics.evaluate_subject, so the same maps against
    the same reference give the same numbers."""
    from mrfengine.demo import metrics_against_truth
    from mrfengine.nn.train import validate
    from mrfengine.nn.targets import to_physical_units
    from mrfengine.report.evaluate import evaluate_cohort

    cohort, config, sampler, model = _validation_split_and_network(cohort_path)
    (sid,) = cohort.subjects_in("validation")
    subject = cohort[sid]
    by_validation = validate(model, sampler)

    # the same network's maps as whole volumes, masked to the brain as validate() masks them
    brain = np.asarray(subject.brain_mask[:]) > 0
    slices = []
    for i, ref_slice in enumerate(sampler.slices):
        with torch.no_grad():
            out = to_physical_units(model(torch.from_numpy(sampler.normalised_input(i)[None])), config)
        slices.append(np.where(brain[ref_slice.z], out[0].numpy(), 0.0))
    assert [r.z for r in sampler.slices] == list(range(subject.shape[0]))
    volumes = np.stack(slices, axis=1).astype(np.float32)
    maps = {n: volumes[k] for k, n in enumerate(config.output_names)}

    class Network:
        name = "network"

        def maps(self, _subject):
            return maps

    class Targets:  # the training targets: truth T1/T2*/WM/GM, the annotation as the lesion reference
        name = "targets"

        def maps(self, s):
            return {n: np.asarray(s.array(p)[:], np.float32) for n, p in zip(config.output_names, sampler.target_paths)}

    def report(ref):
        rep = evaluate_cohort(cohort_path, pred=Network(), ref=ref, subjects=[sid], figures=False)
        return rep["subjects"][sid]["summary"]

    against_targets, against_truth = report(Targets()), report("truth")
    demo = metrics_against_truth(subject, maps, brain)
    assert 0 < by_validation["lesion_dice"] < 1 and 0 < by_validation["NAWM_dice_slice_mean"] < 1
    for key, report_key in (("lesion_dice", "lesion_dice"), ("lesion_detection_rate", "lesion_detection_rate"),
                            ("NAWM_dice_slice_mean", "NAWM_dice_slice_mean"),
                            ("GM_dice_slice_mean", "GM_dice_slice_mean"),
                            ("T1_reldev", "T1_relative_deviation"), ("T2star_reldev", "T2star_relative_deviation")):
        assert by_validation[key] == pytest.approx(against_targets[report_key], rel=1e-9), key
    for key in ("lesion_dice", "lesion_detection_rate", "NAWM_dice_volume", "NAWM_dice_slice_mean",
                "GM_dice_volume", "T1_relative_deviation", "T2star_relative_deviation",
                "T1_relative_deviation_WM_core", "T2star_relative_deviation_lesion_core"):
        assert demo[key] == against_truth[key], key
    # NAWM/GM and T1/T2* have one reference (the truth) in all three
    assert by_validation["NAWM_dice_slice_mean"] == pytest.approx(demo["NAWM_dice_slice_mean"], rel=1e-12)
    assert by_validation["T1_reldev"] == pytest.approx(demo["T1_relative_deviation"], rel=1e-9)


def test_a_held_apart_cohort_is_refused(tmp_path):
    from dataclasses import replace

    from mrfengine.phantom import SiteConfig, cohort_preset, simulate_cohort
    from mrfengine.phantom.config import GridConfig

    grid = GridConfig(shape_zyx=(3, 16, 16), voxel_size_mm=(10.0, 10.0, 10.0), slab_center_mm=17.0)
    cfg = replace(cohort_preset("heldout", n_subjects=1), grid=grid,
                  sites=(SiteConfig("1", snr=13.0), SiteConfig("2", snr=100.0)))
    simulate_cohort(tmp_path / "held.zarr", config=cfg, seed=0)
    toml = _write_settings(tmp_path / "s.toml", tmp_path / "held.zarr", tmp_path / "out", 1)
    with pytest.raises(ValidationError, match="held-apart cohort .* evaluate"):
        train(load_settings(toml))
    assert not (tmp_path / "out").exists()
