"""One command line (issue 21, part 5): the same option for the same idea on every command, exit 2
for every bad option value, ``batch --dry-run`` / ``--print-config`` / ``--report DIR``, the model
checked before any cluster starts, ``predict --report DIR`` and ``show --pipeline``."""

from __future__ import annotations

import json
import os
import tomllib

import numpy as np
import pytest

from mrfengine import __version__
from mrfengine.cli import cli, main

PNG = b"\x89PNG\r\n\x1a\n"


def _files(root) -> dict[str, int]:
    """Every file under ``root`` with its modification time: what a command must not touch."""
    out = {}
    for folder, _, names in os.walk(root):
        for n in names:
            p = os.path.join(folder, n)
            out[p] = os.stat(p).st_mtime_ns
    return out


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A tiny cohort of 2 subjects; sub-02 has complete denoise-match maps of the default
    configuration (written directly) and a unet group."""
    from mrfengine.io import Cohort
    from mrfengine.masking import MASK_METHOD
    from mrfengine.phantom import simulate_cohort
    from mrfengine.pipeline import Pipeline
    from mrfengine.pipeline.derived import write_derived

    path = tmp_path_factory.mktemp("conv") / "tiny.zarr"
    simulate_cohort(path, preset="tiny", n_subjects=2, seed=0)
    sub = Cohort.open(path)["sub-02"]
    brain = (np.asarray(sub.brain_mask[...]) > 0).astype(np.float32)
    t1 = np.asarray(sub.truth["T1"][...]) * brain
    config = Pipeline.from_stages("denoise,match").to_dict()
    write_derived(path, "sub-02", "denoise-match", {"T1": t1, "T2star": np.asarray(sub.truth["T2star"][...]) * brain},
                  attrs={"provenance": {"mrfengine_version": __version__, "backend": "auto", "config": config,
                                        "stages": {}}})
    lesion = (np.asarray(sub.annotations["lesion"][...]) > 0).astype(np.float32)
    write_derived(path, "sub-02", "unet", {"T1": t1, "lesion": lesion, "brain_mask": brain},
                  attrs={"provenance": {"mrfengine_version": __version__, "backend": "auto",
                                        "config": {"name": "unet", "stages": ["mask", "unet", "write"], "options": {}},
                                        "stages": {"mask": {"source": MASK_METHOD}}}})
    return path


# --------------------------------------------------------------------------- one spelling per idea
def _commands():
    """(name, click command) of every command and subcommand."""
    out = []
    for name, cmd in cli.commands.items():
        subs = getattr(cmd, "commands", None)
        if subs:
            out += [(f"{name} {s}", c) for s, c in subs.items()]
        else:
            out.append((name, cmd))
    return out


def _opts(cmd) -> dict[str, object]:
    return {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def test_o_is_a_folder_everywhere_and_files_take_output():
    for name, cmd in _commands():
        opts = _opts(cmd)
        if "-o" in opts and not opts["-o"].hidden:  # hidden: a deprecated -o FILE (show), warned about
            p = opts["-o"]
            assert "--output-dir" in p.opts, f"{name}: -o must be -o/--output-dir (a folder)"
            assert not getattr(p.type, "file_okay", True), f"{name}: -o/--output-dir takes a folder"
        if "--output" in opts and "--output-dir" not in opts[("--output")].opts:
            assert not getattr(opts["--output"].type, "dir_okay", True) or opts["--output"].hidden, name


# the commands that select subjects of a cohort, that write, that compute
SELECTS = {"batch", "evaluate", "report", "export", "show"}
WRITES = {"simulate", "import", "export", "show", "batch", "evaluate", "report", "predict", "match", "denoise",
          "dictionary build", "train"} | ({"bids"} if "bids" in cli.commands else set())
COMPUTES = {"simulate", "batch", "evaluate", "predict", "match", "denoise", "dictionary build", "train", "demo"}


def test_subjects_force_and_nthreads_on_every_command_that_needs_them():
    commands = dict(_commands())
    for name in SELECTS:
        p = _opts(commands[name])["--subjects"]
        assert p.multiple and not p.hidden, name
    for name in WRITES:
        assert "--force" in _opts(commands[name]), f"{name} writes files: it needs --force"
    for name in COMPUTES:
        p = _opts(commands[name])["--nthreads"]
        assert p.metavar == "N" and not p.hidden, name
    # simulate's count is --n-subjects; its old --subjects N is hidden (deprecated)
    sim = _opts(commands["simulate"])
    assert not sim["--n-subjects"].hidden and sim["--subjects"].hidden
    # the old spellings still work but are hidden
    assert _opts(commands["predict"])["--threads"].hidden
    assert _opts(commands["show"])["--subject"].hidden and _opts(commands["show"])["-o"].hidden
    assert _opts(commands["dictionary build"])["--output"].hidden


def test_deprecated_spellings_still_work_and_warn(cohort, tmp_path, capsys):
    png = tmp_path / "a.png"
    assert main(["show", str(cohort), "--subject", "1", "-o", str(png), "--slice", "5"]) == 0
    err = capsys.readouterr().err
    assert "--subject is deprecated" in err and "use --output FILE" in err
    assert png.read_bytes()[:8] == PNG
    assert main(["show", str(cohort), "--subjects", "1", "--output", str(png), "--slice", "5"]) == 1  # exists
    assert "--force" in capsys.readouterr().err
    assert main(["show", str(cohort), "--subjects", "1", "--output", str(png), "--slice", "5", "--force", "-q"]) == 0


# --------------------------------------------------------------------------- exit 2 for every bad value
BAD = [
    (["simulate", "{tmp}/x.zarr", "--n-subjects", "0"], "--n-subjects"),
    (["simulate", "{tmp}/x.zarr", "--subjects", "2", "--n-subjects", "2"], "--n-subjects"),
    (["simulate", "{tmp}/x.zarr", "--nthreads", "-1"], "--nthreads"),
    (["batch", "{cohort}", "--subjects", ""], "--subjects"),
    (["batch", "{cohort}", "--nthreads", "two"], "--nthreads"),
    (["batch", "{cohort}", "--report", "{tmp}/run.json"], "--run-report"),
    (["batch", "{cohort}", "--print-config", "xml"], "--print-config"),
    (["batch", "{cohort}", "--stages", "denoise", "--config", "{tmp}/p.toml"], "--stages or --config"),
    (["evaluate", "{cohort}", "-o", "{tmp}/ev", "--pred", "nonsense"], "--pred"),
    (["evaluate", "{cohort}", "-o", "{tmp}/ev", "--subjects", ","], "--subjects"),
    (["report", "{cohort}", "-o", "{tmp}/qc", "--slices", "0"], "--slices"),
    (["show", "{cohort}", "--output", "{tmp}/m.png", "--subjects", "1,2"], "one subject per figure"),
    (["show", "{cohort}", "--output", "{tmp}/m.png", "--maps", "T1"], "--pipeline"),
    (["show", "{cohort}", "--output", "{tmp}/m.png", "--subjects", "2", "--pipeline", "nosuch"], "derived groups: denoise-match"),
    (["show", "{cohort}", "--output", "{tmp}/m.png", "--subjects", "2", "--pipeline", "unet",
      "--maps", "T9"], "has no T9"),
    (["match", "{tmp}/in.nii.gz", "-o", "{tmp}/m", "--sequence", "nosuch"], "--sequence"),
    (["match", "{tmp}/in.nii.gz", "-o", "{tmp}/m", "--nthreads", "-2"], "--nthreads"),
    (["denoise", "{tmp}/in.nii.gz", "{tmp}/out.nii.gz", "--nthreads", "x"], "--nthreads"),
    (["predict", "{tmp}/in.nii.gz", "-o", "{tmp}/p", "--threads", "-1"], "--threads"),
    (["predict", "{tmp}/in.nii.gz", "-o", "{tmp}/p", "--sequence", "nosuch"], "--sequence"),
    (["dictionary", "build", "--sequence", "nosuch"], "--sequence"),
    (["dictionary", "build", "--nthreads", "-1"], "--nthreads"),
    (["export", "{cohort}", "-o", "{tmp}/e", "--subjects", ""], "--subjects"),
]


@pytest.mark.parametrize("args, says", BAD, ids=[" ".join(a[:1] + a[2:4]) for a, _ in BAD])
def test_a_bad_option_value_is_exit_2_naming_it(args, says, cohort, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, cohort=cohort) for a in args]
    before = _files(cohort)
    assert main(argv) == 2
    assert says in capsys.readouterr().err
    assert _files(cohort) == before
    assert not (tmp_path / "x.zarr").exists()


def test_v_and_q_after_the_command(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "c.zarr"), "--print-config", "-q"]) == 0
    assert main(["batch", "-v", str(tmp_path / "c.zarr"), "--print-config"]) == 0


# --------------------------------------------------------------------------- batch
def test_batch_print_config_round_trips_through_config(tmp_path, capsys):
    from mrfengine.pipeline import Pipeline

    c = str(tmp_path / "never.zarr")  # not read: only the pipeline is printed
    assert main(["batch", c, "--stages", "denoise,match,unet", "--name", "mine", "--print-config"]) == 0
    text = capsys.readouterr().out
    doc = tomllib.loads(text)
    assert doc["pipeline"] == {"name": "mine", "stages": ["mask", "denoise", "match", "unet", "write"]}
    assert doc["denoise"] and doc["unet"]["model"] == "default"  # every option, defaults filled in
    expected = Pipeline.from_stages("denoise,match,unet", name="mine")
    assert Pipeline.from_dict(doc) == expected
    for fmt, name in (("toml", "p.toml"), ("json", "p.json")):
        assert main(["batch", c, "--stages", "denoise,match,unet", "--name", "mine", f"--print-config={fmt}"]) == 0
        (tmp_path / name).write_text(capsys.readouterr().out)
        # --config reads it back: the same pipeline, printed the same
        assert main(["batch", c, "--config", str(tmp_path / name), f"--print-config={fmt}"]) == 0
        assert capsys.readouterr().out == (tmp_path / name).read_text()
    assert json.loads((tmp_path / "p.json").read_text()) == doc
    assert not os.path.exists(c)


def test_batch_dry_run_plans_without_writing(cohort, capsys):
    before = _files(cohort)
    assert main(["batch", str(cohort), "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("sub-")}
    assert rows["sub-01"].split()[1] == "run" and "no maps yet" in rows["sub-01"]
    assert rows["sub-02"].split()[1] == "skip" and "complete, same configuration" in rows["sub-02"]
    assert "1 to run, 0 to redo, 1 to skip" in out
    # another configuration of the same name: redone
    assert main(["batch", str(cohort), "--dry-run", "--config", _write_config(cohort.parent)]) == 0
    out = capsys.readouterr().out
    assert "redo" in out and "another configuration" in out
    assert main(["batch", str(cohort), "--dry-run", "--force", "--subjects", "2"]) == 0
    out = capsys.readouterr().out
    assert "--force" in out and "sub-01" not in out
    assert _files(cohort) == before


def _write_config(folder) -> str:
    path = folder / "other.toml"
    path.write_text('[pipeline]\nname = "denoise-match"\nstages = ["denoise", "match"]\n[denoise]\npatch_radius = 1\n')
    return str(path)


def test_batch_checks_the_model_before_any_cluster_starts(cohort, capsys, monkeypatch):
    import mrfengine.pipeline.batch as pb

    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(pb, "batch_client", no_cluster)
    before = _files(cohort)
    # the shipped MSE-5 network was trained on the full hermann2021 sequences, not the tiny cohort's
    assert main(["batch", str(cohort), "--stages", "unet", "--name", "u2"]) == 1
    err = capsys.readouterr().err
    assert "model.pt" in err and "checked before the cluster starts" in err and "sub-01" in err
    assert _files(cohort) == before


def test_batch_report_dir_is_refused_before_work_when_it_exists(cohort, tmp_path, capsys, monkeypatch):
    import mrfengine.pipeline.batch as pb

    monkeypatch.setattr(pb, "batch_client", lambda *a, **k: (_ for _ in ()).throw(AssertionError("started")))
    qc = tmp_path / "qc"
    qc.mkdir()
    (qc / "index.html").write_text("mine")
    assert main(["batch", str(cohort), "--report", str(qc)]) == 1
    assert "index.html" in capsys.readouterr().err
    assert (qc / "index.html").read_text() == "mine"


def test_batch_report_dir_writes_the_qc_pages(cohort, tmp_path, capsys):
    from mrfengine.cli.batch import _write_qc
    from mrfengine.pipeline.batch import BatchReport
    from mrfengine.pipeline.run import SubjectResult

    report = BatchReport("denoise-match", [SubjectResult("sub-02", "denoise-match", "skipped"),
                                           SubjectResult("sub-01", "denoise-match", "failed", error="boom")])
    _write_qc(str(tmp_path / "qc"), str(cohort), report, False)
    assert sorted(p.name for p in (tmp_path / "qc").iterdir()) == ["index.html", "sub-02.html"]
    page = (tmp_path / "qc" / "sub-02.html").read_text()
    assert "derived/denoise-match/" in page and "derived/unet/" not in page
    assert "QC report:" in capsys.readouterr().out


def test_summary_columns_are_never_cut_mid_word(capsys):
    from mrfengine.cli.batch import _summary
    from mrfengine.pipeline.batch import BatchReport
    from mrfengine.pipeline.run import SubjectResult

    long_id = "sub-" + "verylongsubjectlabel" * 2
    timings = {"read": 1.25, "mask": 0.5, "denoise": 12.0, "match": 30.5, "register": 4.0, "segment": 9.75,
               "unet": 2.0, "write": 0.5, "wall": 61.0}
    report = BatchReport("p", [SubjectResult(long_id, "p", "ok", timings, peak_memory_mb=1234.0),
                               SubjectResult("sub-01", "p", "failed", {"read": 0.1, "wall": 0.2},
                                             error="a long message " * 8)], wall_s=62.0)
    _summary(report, "c.zarr")
    out = capsys.readouterr()
    lines = out.out.splitlines()
    head = lines[0]
    assert long_id in out.out  # the id is whole
    # every stage timing is whole on some line, and the columns line up under the header
    body = "\n".join(lines[2:])
    for k, v in timings.items():
        if k != "wall":
            assert f"{k} {v:.1f}" in body
    col = head.index("stages")
    for line in lines[2:]:
        if line.startswith(("sub-", " ")) and len(line) > col:
            assert line[col - 1] == " "
    assert ("a long message " * 8).strip() in out.err


# --------------------------------------------------------------------------- show, predict --report
def test_show_draws_derived_maps(cohort, tmp_path, capsys):
    png = tmp_path / "d.png"
    assert main(["show", str(cohort), "--subjects", "2", "--output", str(png), "--pipeline", "unet",
                 "--slice", "5"]) == 0
    assert "2 derived map(s)" in capsys.readouterr().out  # T1, lesion (not its brain mask)
    assert png.read_bytes()[:8] == PNG
    from mrfengine.io import Cohort
    from mrfengine.report.mosaic import subject_mosaic

    sub = Cohort.open(cohort)["sub-02"]
    plain = subject_mosaic(sub, slices=[5])
    fig = subject_mosaic(sub, slices=[5], maps=["derived/unet/T1", "derived/denoise-match/T2star"])
    assert len(fig.axes) >= len(plain.axes) + 2  # two more panels (and their colour bars)
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "unet (ms)" in titles and "denoise-match (ms)" in titles


def test_nifti_report_of_a_prediction(cohort, tmp_path):
    """``predict --report DIR``'s page, from NIfTI files as predict writes them (relaxation
    times in seconds): the maps in ms, the orientation check, the run's warnings."""
    import nibabel as nib

    from mrfengine.io import Cohort
    from mrfengine.report.qc import write_nifti_report

    sub = Cohort.open(cohort)["sub-02"]
    aff = np.asarray(sub.affine)
    mrf = np.asarray(sub.mrf[...]).transpose(3, 2, 1, 0)
    nib.save(nib.Nifti1Image(mrf.astype(np.float32), aff), tmp_path / "sub-02_mrf.nii.gz")
    t1 = np.asarray(sub.truth["T1"][...]).transpose(2, 1, 0) / 1000.0  # seconds, as BIDS
    nib.save(nib.Nifti1Image(t1.astype(np.float32), aff), tmp_path / "t1.nii.gz")
    brain = (np.asarray(sub.brain_mask[...]) > 0).transpose(2, 1, 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, aff), tmp_path / "mask.nii.gz")
    qc = write_nifti_report(tmp_path / "sub-02_mrf.nii.gz", {"T1": tmp_path / "t1.nii.gz",
                                                              "brain_mask": tmp_path / "mask.nii.gz"},
                            tmp_path / "qc", subject_id="sub-02", record={"network": "MSE-5", "device": "cpu",
                                                                            "outside_training": True, "seconds": 1.0},
                            n_slices=3)
    html = qc.pages["sub-02"].read_text()
    assert "T1 mosaic" in html and "orientation check" in html and "<b>T1</b> [ms]" in html
    assert "outside what network MSE-5" in html and "derived/unet/" in html
    caption = html[html.index("<b>T1</b>"):]
    shown = float(caption[caption.index("median ") + 7:].split()[0])
    assert shown == pytest.approx(float(np.median(t1[:, :, [int(z) for z in _zs(html)]][
        brain[:, :, [int(z) for z in _zs(html)]] > 0]) * 1000.0), rel=1e-3)  # seconds on disk, ms on the page
    assert qc.index.is_file()
    from mrfengine.io.outputs import OutputExistsError

    with pytest.raises(OutputExistsError, match="already exist; pass --force"):
        write_nifti_report(tmp_path / "sub-02_mrf.nii.gz", {"T1": tmp_path / "t1.nii.gz"}, tmp_path / "qc",
                           subject_id="sub-02")


def _zs(html: str) -> list[str]:
    row = html[html.index("shown slices (z)"):]
    return row[row.index("<td>") + 4:row.index("</td>")].split(", ")
