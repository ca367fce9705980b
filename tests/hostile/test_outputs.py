"""Issue 17, cases 2, 8 and the output side of 9: nothing deleted that is not ours,
nothing overwritten without --force, nothing written outside the output folder,
unusable output places refused (named) before any work."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _hostile import run_cli, snapshot


def _permission_bits_bind() -> bool:
    """Whether a read-only folder stops our writes (not for root with CAP_DAC_OVERRIDE)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o555)
        try:
            with open(os.path.join(d, "probe"), "w"):
                return False
        except OSError:
            return True
        finally:
            os.chmod(d, 0o755)


AS_ROOT = not _permission_bits_bind()
SIMULATE = ["simulate", "--preset", "tiny", "--subjects", "1", "--no-progress"]


def _canary(folder: Path, name: str = "canary.txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("precious\n")
    return p


# --------------------------------------------------------------------------- case 2: simulate --force / --overwrite
@pytest.mark.parametrize("flag", ["--force", "--overwrite"])
def test_simulate_force_refuses_a_folder_that_is_not_a_cohort(tmp_path, capsys, flag):
    home = tmp_path / "home"
    _canary(home)
    _canary(home / "docs", "thesis.tex")
    before = snapshot(tmp_path)
    run_cli([*SIMULATE[:1], home, *SIMULATE[1:], flag], capsys, code=1,
            says=(str(home), "is not an mrfengine cohort", "refusing to delete"))
    assert snapshot(tmp_path) == before


def test_simulate_force_refuses_a_zarr_group_that_is_not_a_cohort(tmp_path, capsys):
    import zarr

    store = tmp_path / "other.zarr"
    zarr.open_group(str(store), mode="w", zarr_format=3).attrs["someone_else"] = 1
    before = snapshot(tmp_path)
    run_cli(["simulate", store, *SIMULATE[1:], "--force"], capsys, code=1, says=("is not an mrfengine cohort",))
    assert snapshot(tmp_path) == before


def test_simulate_force_refuses_a_cohort_holding_foreign_files(cohort, capsys):
    _canary(cohort, "notes.txt")
    _canary(cohort / "subjects" / "sub-01", "my-segmentation.nii.gz")
    before = snapshot(cohort.parent)
    run_cli(["simulate", cohort, *SIMULATE[1:], "--force"], capsys, code=1,
            says=(str(cohort), "notes.txt", "not the cohort's"))
    assert snapshot(cohort.parent) == before


def test_replacing_a_real_cohort_deletes_exactly_its_own_files(cohort, tmp_path):
    from mrfengine.io.cohort import Cohort, create_cohort, validate_cohort

    sites = Cohort.open(cohort).sites
    outside = snapshot(tmp_path)
    outside = {k: v for k, v in outside.items() if not k.startswith(cohort.name)}
    create_cohort(cohort, sites=sites, kind="imported", overwrite=True)
    files = sorted(str(p.relative_to(cohort)) for p in cohort.rglob("*") if p.is_file())
    assert files == ["subjects/zarr.json", "zarr.json"]
    assert validate_cohort(cohort).ok and Cohort.open(cohort).subjects == []
    assert {k: v for k, v in snapshot(tmp_path).items() if not k.startswith(cohort.name)} == outside


# --------------------------------------------------------------------------- case 2: dictionary clear-cache
def test_clear_cache_refuses_a_folder_without_the_marker(tmp_path, capsys):
    folder = tmp_path / "mine"
    _canary(folder)
    (folder / ("0" * 32 + ".npz")).write_bytes(b"looks like an entry")
    before = snapshot(tmp_path)
    run_cli(["dictionary", "clear-cache", "--cache-dir", folder], capsys, code=1,
            says=(str(folder), "not an mrfengine dictionary cache", "CACHEDIR.TAG"))
    assert snapshot(tmp_path) == before


def test_clear_cache_refuses_another_programs_cachedir_tag(tmp_path, capsys):
    folder = tmp_path / "other-cache"
    _canary(folder, "CACHEDIR.TAG").write_text("Signature: 8a477f597d28d172789f06886806bc55\n# some other tool\n")
    (folder / ("a" * 32 + ".npz")).write_bytes(b"x")
    before = snapshot(tmp_path)
    run_cli(["dictionary", "clear-cache", "--cache-dir", folder], capsys, code=1, says=(str(folder),))
    assert snapshot(tmp_path) == before


def _build(cache: Path, capsys, slot: int = 0) -> None:
    run_cli(["dictionary", "build", "--sequence", "hermann2021-site1", "--slots", str(slot), "--step", "0.5",
             "--b1", "0.9", "1.1", "0.1", "--cache-dir", cache, "--no-progress"], capsys, code=0)


def test_clear_cache_deletes_only_the_cache_entries(tmp_path, capsys):
    cache = tmp_path / "cache"
    _build(cache, capsys)
    tag = (cache / "CACHEDIR.TAG").read_text().splitlines()
    assert tag[0] == "Signature: 8a477f597d28d172789f06886806bc55" and any("mrfengine" in line for line in tag)
    assert len(list(cache.glob("*.npz"))) == 1
    foreign = _canary(cache, "notes.txt")
    run_cli(["dictionary", "clear-cache", "--cache-dir", cache], capsys, code=0)
    assert sorted(p.name for p in cache.iterdir()) == ["CACHEDIR.TAG", "notes.txt"]
    assert foreign.read_text() == "precious\n"
    foreign.unlink()
    # Then empty, and made by the cache: the folder goes too.
    _build(cache, capsys)
    run_cli(["dictionary", "clear-cache", "--cache-dir", cache], capsys, code=0)
    assert not cache.exists()


def test_a_folder_the_user_made_is_kept_and_a_busy_one_is_not_written_to(tmp_path, capsys):
    made = tmp_path / "made"
    made.mkdir()
    _build(made, capsys)
    run_cli(["dictionary", "clear-cache", "--cache-dir", made], capsys, code=0)
    assert made.is_dir() and [p.name for p in made.iterdir()] == ["CACHEDIR.TAG"]
    busy = tmp_path / "busy"
    _canary(busy)
    before = snapshot(busy)
    _build(busy, capsys)  # works, without the cache
    assert snapshot(busy) == before


def test_a_cache_made_before_the_tag_is_adopted_not_deleted(tmp_path, capsys):
    legacy = tmp_path / "legacy"
    _build(legacy, capsys)
    (legacy / "CACHEDIR.TAG").unlink()  # as caches were before the tag
    run_cli(["dictionary", "clear-cache", "--cache-dir", legacy], capsys, code=1, says="by hand")
    assert len(list(legacy.glob("*.npz"))) == 1
    _build(legacy, capsys, slot=1)  # a new entry; only cache entries there: tagged now, as not made by the cache
    run_cli(["dictionary", "clear-cache", "--cache-dir", legacy], capsys, code=0)
    assert [p.name for p in legacy.iterdir()] == ["CACHEDIR.TAG"]


def test_dictionary_build_output_needs_force(tmp_path, capsys):
    out = tmp_path / "dicts"
    canary = _canary(out, "slot-000.npz")
    args = ["dictionary", "build", "--sequence", "hermann2021-site1", "--slots", "0", "--step", "0.5",
            "--b1", "0.9", "1.1", "0.1", "--no-cache", "--no-progress", "-o", out]
    run_cli(args, capsys, code=1, says=("slot-000.npz", "--force"))
    assert canary.read_text() == "precious\n"
    run_cli([*args, "--force"], capsys, code=0)
    assert canary.read_bytes()[:2] == b"PK"  # an npz now


# --------------------------------------------------------------------------- case 8: export
def test_export_twice_needs_force(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", cohort, "-o", out, "--subject", "1", "--array", "truth/T1", "--array", "brain_mask"]
    run_cli(args, capsys, code=0)
    assert len([p for p in out.rglob("*") if p.is_file()]) == 4 + 2  # and dataset_description.json, .bidsignore
    before = snapshot(tmp_path)
    run_cli(args, capsys, code=1, says=("already exist", "--force", "sub-01_"))
    assert snapshot(tmp_path) == before
    run_cli([*args, "--force"], capsys, code=0)


def test_evaluate_twice_needs_force(cohort, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["evaluate", cohort, "-o", out, "--pred", "truth", "--no-figures"]
    run_cli(args, capsys, code=0)
    assert (out / "evaluation.json").is_file() and (out / "table.md").is_file()
    before = snapshot(tmp_path)
    run_cli(args, capsys, code=1, says=("already exist", "--force"))
    assert snapshot(tmp_path) == before
    run_cli([*args, "--force"], capsys, code=0)


def test_export_checks_every_output_before_writing_any(cohort, tmp_path, capsys):
    out = tmp_path / "out"
    _canary(out / "sub-02" / "anat", "sub-02_desc-brain_mask.json")
    before = snapshot(tmp_path)
    run_cli(["export", cohort, "-o", out, "--array", "brain_mask"], capsys, code=1,
            says=("sub-02_desc-brain_mask.json", "--force"))
    assert snapshot(tmp_path) == before  # not even sub-01's files


def test_export_under_a_file_is_refused_before_the_work(cohort, tmp_path, capsys):
    blocker = _canary(tmp_path, "somefile")
    before = snapshot(tmp_path)
    run_cli(["export", cohort, "-o", blocker / "sub", "--array", "brain_mask"], capsys, code=1,
            says=(str(blocker / "sub"), "is a file"))
    assert snapshot(tmp_path) == before


def test_export_into_a_read_only_folder_is_refused(cohort, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        if AS_ROOT:
            pytest.skip("running as root: a read-only mode does not stop writes")
        run_cli(["export", cohort, "-o", out / "deeper", "--array", "brain_mask"], capsys, code=1,
                says=(str(out / "deeper"), "not writable"))
        assert list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_show_refuses_to_replace_its_png(cohort, tmp_path, capsys):
    png = _canary(tmp_path, "mosaic.png")
    run_cli(["show", cohort, "-o", png], capsys, code=1, says=("mosaic.png", "--force"))
    assert png.read_text() == "precious\n"


# --------------------------------------------------------------------------- case 8: match (prefixes, overwrite)
@pytest.fixture
def mrf_files(tmp_path):
    from mrfengine.sequence import hermann2021, save_sequence

    seq = save_sequence(hermann2021(1, n_slices=4), tmp_path / "seq.json")
    data = np.random.default_rng(0).uniform(0.1, 1.0, (3, 2, 4, 35)).astype(np.float32)

    def make(name: str) -> Path:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
        return path

    return seq, make


def _match(path, out, seq, *extra):
    return ["match", path, "-o", out, "--sequence", seq, "--backend", "numpy", "--no-progress", *extra]


@pytest.mark.parametrize("prefix", ["../../x", "../x", "/tmp/x", "a/b", "..", "a\\b", ""])
def test_match_prefix_must_be_a_plain_name(mrf_files, tmp_path, capsys, prefix):
    seq, make = mrf_files
    src = make("sub-01_mrf.nii.gz")
    before = snapshot(tmp_path)
    run_cli(_match(src, tmp_path / "a" / "b" / "out", seq, "--prefix", prefix), capsys, code=2, says="--prefix")
    assert snapshot(tmp_path) == before


def test_match_twice_needs_force_and_names_apart_inputs_of_one_prefix(mrf_files, tmp_path, capsys):
    seq, make = mrf_files
    x, x_s1, mrf, bold = (make(n) for n in ("x.nii.gz", "x_s1.nii.gz", "sub-01_mrf.nii.gz", "sub-01_bold.nii.gz"))
    out = tmp_path / "out"
    run_cli(_match(x, out, seq), capsys, code=0)
    run_cli(_match(x_s1, out, seq), capsys, code=0)  # x_s1_*, not x_*
    t1 = "anat/{0}_desc-match_T1map.json"
    assert json.loads((out / "sub-x" / t1.format("sub-x")).read_text())["Sources"] == ["bids:input:x.nii.gz"]
    assert json.loads((out / "sub-xs1" / t1.format("sub-xs1")).read_text())["Sources"] == ["bids:input:x_s1.nii.gz"]
    run_cli(_match(mrf, out, seq), capsys, code=0)
    before = snapshot(tmp_path)
    # Another input of the same subject: the same prefix, refused with both names.
    run_cli(_match(bold, out, seq), capsys, code=1,
            says=("sub-01_mrf.nii.gz", "sub-01_bold.nii.gz", "--prefix", "--force"))
    run_cli(_match(mrf, out, seq), capsys, code=1, says=("already exist", "--force"))
    assert snapshot(tmp_path) == before
    run_cli(_match(bold, out, seq, "--prefix", "sub-01_acq-bold"), capsys, code=0)
    run_cli(_match(mrf, out, seq, "--force"), capsys, code=0)
    assert len(list(out.rglob("*.nii.gz"))) == 4 * 5


def test_a_name_derived_prefix_that_is_no_name_is_refused(mrf_files, tmp_path, capsys):
    seq, make = mrf_files
    src = make(".nii.gz")
    run_cli(_match(src, tmp_path / "out", seq), capsys, code=1, says=(".nii.gz", "no subject label", "--prefix"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- case 8: predict
def test_predict_refuses_to_replace_maps_without_force(tmp_path, capsys):
    from mrfengine.nn import Normalisation, get_config, save_model
    from mrfengine.sequence import hermann2021

    cfg = get_config("MSE-5").with_architecture(depth=2, base_filters=4)
    model = tmp_path / "models" / "mse5.pt"
    norm = Normalisation(tuple([0.1] * 35), tuple([0.05] * 35))
    save_model(cfg.build(seed=1), model, config=cfg, normalisation=norm, sequence=hermann2021(1, n_slices=4))
    src = tmp_path / "sub-01_mrf.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 4, 35), 0.1, np.float32), np.eye(4)), str(src))
    out = tmp_path / "out"
    canary = _canary(out / "sub-01" / "anat", "sub-01_label-lesion_desc-unet_probseg.nii.gz")
    before = snapshot(tmp_path)
    # a flat series has no brain to make a mask of: the whole field of view (--no-brain-mask)
    args = ["predict", src, "-o", out, "--model", model, "--no-progress", "--device", "cpu", "--threads", "1",
            "--no-brain-mask"]
    run_cli(args, capsys, code=1, says=("sub-01_label-lesion_desc-unet_probseg.nii.gz", "--force"))
    assert snapshot(tmp_path) == before
    run_cli([*args, "--prefix", "../x"], capsys, code=2, says="--prefix")
    run_cli([*args, "--force"], capsys, code=0)
    assert canary.read_bytes() != b"precious\n" and len(list(out.glob("sub-01/anat/sub-01_*.nii.gz"))) == 5
    run_cli(args, capsys, code=1, says="--force")  # a second run


# --------------------------------------------------------------------------- case 9: stores that cannot be written
def test_simulate_and_import_into_a_store_under_a_file(tmp_path, capsys, mrf_files):
    _, make = mrf_files
    blocker = _canary(tmp_path, "afile")
    before = snapshot(tmp_path / "afile")
    run_cli(["simulate", blocker / "c.zarr", *SIMULATE[1:]], capsys, code=1,
            says=(str(blocker / "c.zarr"), "is a file"))
    src = make("sub-01_mrf.nii.gz")
    run_cli(["import", blocker / "c.zarr", "--subject", "01", "--mrf", src], capsys, code=1,
            says=(str(blocker / "c.zarr"), "is a file"))
    assert snapshot(tmp_path / "afile") == before


@pytest.mark.skipif(AS_ROOT, reason="running as root: permission bits do not stop reads or writes")
@pytest.mark.parametrize("mode, words", [(0o555, "read-only"), (0o000, "cannot read")])
def test_simulate_and_import_into_a_store_without_permission(cohort, capsys, mrf_files, mode, words):
    _, make = mrf_files
    src = make("sub-09_mrf.nii.gz")
    (cohort / "subjects").chmod(mode)
    cohort.chmod(mode)
    try:
        run_cli(["simulate", cohort, "--preset", "tiny", "--subjects", "2", "--seed", "3", "--no-progress"], capsys,
                code=1, says=(str(cohort), words))
        run_cli(["import", cohort, "--subject", "09", "--mrf", src], capsys, code=1, says=(str(cohort), words))
    finally:
        cohort.chmod(0o755)
        (cohort / "subjects").chmod(0o755)


def test_the_store_checks_say_what_is_wrong(tmp_path, monkeypatch):
    """The permission checks themselves, also where tests run as root (os.access stubbed)."""
    from mrfengine.errors import InputFileError, StoreError
    from mrfengine.io import outputs

    store = tmp_path / "c.zarr"
    (store / "subjects").mkdir(parents=True)
    monkeypatch.setattr(outputs.os, "access", lambda p, m: not (m & os.W_OK))
    with pytest.raises(StoreError, match="c.zarr: cannot write into the cohort store .*c.zarr is not writable"):
        outputs.check_store_writable(store)
    with pytest.raises(InputFileError, match="new: the output folder is not writable"):
        outputs.check_outputs(tmp_path / "new", ["a.nii.gz"])
    monkeypatch.setattr(outputs.os, "access", lambda p, m: not (m & os.R_OK))
    with pytest.raises(StoreError, match="cannot read the cohort store"):
        outputs.check_store_writable(store)


# --------------------------------------------------------------------------- properties
@settings(max_examples=300, deadline=None)
@given(st.text(min_size=0, max_size=12))
def test_an_accepted_prefix_never_leaves_the_folder(prefix):
    from mrfengine.errors import ValidationError
    from mrfengine.io.outputs import check_prefix

    root = Path("/some/out")
    try:
        check_prefix(prefix)
    except ValidationError:
        return
    path = Path(os.path.normpath(root / f"{prefix}_T1map.nii.gz"))
    assert path.parent == root
