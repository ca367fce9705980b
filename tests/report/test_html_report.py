"""``mrfengine report``: the per-subject HTML QC pages and the cohort index, checked for their
structure with Python's html.parser and rendered in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mrfengine import __version__
from mrfengine.cli import main
from mrfengine.masking import MASK_METHOD
from mrfengine.report.qc import _CBAR_PX, _View

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Page(HTMLParser):
    """Links, images, figures, headings, script and style-sheet tags, and the text of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.images: list[dict[str, str]] = []
        self.ids: list[str] = []
        self.tags: list[str] = []
        self.external: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if "://" in a.get(key, "") or a.get(key, "").startswith("//"):
                self.external.append(a[key])

    def handle_data(self, data):
        self.text.append(data)

    @property
    def body(self) -> str:
        return " ".join(" ".join(self.text).split())


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _png(img: dict[str, str]) -> np.ndarray:
    from PIL import Image

    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix), img["src"][:40]
    raw = base64.b64decode(img["src"][len(prefix):])
    assert raw.startswith(PNG)
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


@pytest.fixture(scope="module")
def qc(tmp_path_factory):
    """A tiny cohort of 2 subjects: sub-01 through denoise,match; sub-02 with a U-net-like
    group written directly (lesion probability, a mask made from the series, an input outside
    the training data); the report of both."""
    from scipy import ndimage

    from mrfengine.io import Cohort
    from mrfengine.phantom import simulate_cohort
    from mrfengine.pipeline import run_subject
    from mrfengine.pipeline.derived import write_derived

    root = tmp_path_factory.mktemp("qc")
    path = root / "tiny.zarr"
    simulate_cohort(path, preset="tiny", n_subjects=2, seed=0)
    assert run_subject(path, "sub-01", "denoise,match").status == "ok"
    sub = Cohort.open(path)["sub-02"]
    t1 = np.asarray(sub.truth["T1"][...])
    ann = np.asarray(sub.annotations["lesion"][...]) > 0
    assert ann.any()
    lesion = np.clip(1.5 * ndimage.gaussian_filter(ann.astype(np.float32), 0.7), 0, 1)
    brain = (np.asarray(sub.brain_mask[...]) > 0).astype(np.float32)
    attrs = {"provenance": {
        "mrfengine_version": __version__, "backend": "auto",
        "stages": {"mask": {"source": MASK_METHOD, "option": "auto"},
                   "unet": {"network": "MSE-5", "device": "cpu", "outside_training": True, "input_shift": 4.2,
                            "tissue_targets": "truth"},
                   "write": {"brain_mask": MASK_METHOD, "outside_brain_value": 0.0}},
        "config": {"name": "unet", "stages": ["mask", "unet", "write"],
                   "options": {"mask": {"source": "auto"}, "unet": {"model": "default", "tta": "none"}, "write": {}}}},
        "timings_s": {"read": 0.1, "mask": 0.2, "unet": 1.5, "write": 0.01}}
    gm = np.asarray(sub.truth["GM"][...])
    write_derived(path, "sub-02", "unet", {"T1": t1 * brain, "lesion": lesion * brain, "GM": gm * brain,
                                           "brain_mask": brain}, attrs=attrs)
    out = root / "qc"
    assert main(["report", str(path), "-o", str(out)]) == 0
    return path, out


def test_index_links_every_subject_page_with_a_status(qc):
    _, out = qc
    index = _parse(out / "index.html")
    assert sorted(index.links) == ["sub-01.html", "sub-02.html"]
    assert all((out / link).is_file() for link in index.links)
    text = index.body
    assert "denoise-match" in text and "unet" in text  # the pipelines present, per subject
    row2 = text[text.index("sub-02"):]
    assert "warning(s)" in row2 and "made from the MRF series" in row2
    row1 = text[text.index("sub-01"):text.index("sub-02")]
    assert "OK" in row1
    assert not index.external and "script" not in index.tags


def test_subject_pages_embed_maps_with_colour_bars_and_units(qc):
    _, out = qc
    page = _parse(out / "sub-01.html")
    assert "script" not in page.tags and "link" not in page.tags and not page.external  # self-contained
    assert page.links[0] == "index.html"
    alts = [img["alt"] for img in page.images]
    for name in ("T1", "T2star", "B1", "M0", "correlation", "mppca_sigma", "mppca_rank"):
        assert f"{name} mosaic" in alts
        assert f"g-denoise-match-{name}" in page.ids
    assert "orientation check" in alts and "lesion overlay" in alts
    text = page.body
    # units from the map registry, fixed display ranges of quantitative maps
    assert "T1 [ms]" in text and "T2star [ms]" in text and "M0 [a.u.]" in text and "mppca_rank [unitless]" in text
    assert "Display range 0 to 3000 (fixed)" in text and "Display range 0 to 150 (fixed)" in text
    for img in page.images:
        rgb = _png(img)
        if img["alt"].endswith(" mosaic"):
            # the colour bar: a strip of many colours in the right margin (black without one)
            bar = rgb[:, -_CBAR_PX:].reshape(-1, 3)
            assert len(np.unique(bar, axis=0)) > 40, img["alt"]
            assert rgb[:, :-_CBAR_PX].std() > 10, img["alt"]  # the slices themselves


def test_subject_page_shows_provenance_timings_and_orientation(qc):
    _, out = qc
    text = _parse(out / "sub-01.html").body
    assert f"mrfengine version {__version__}" in text
    assert "stages mask → denoise → match → write" in text
    assert 'patch_radius = 2, estimator = "mp"' in text
    assert "match: the stage's record" in text  # each stage's record folds out
    assert "Timings" in text and "match" in text[text.index("Timings"):]
    assert "axis codes RAS" in text  # the orientation from the affine
    # a conventional group without a segment stage: the tissue maps evaluate would take from the truth
    assert "no tissue maps (no segment stage)" in text


def test_warnings_and_a_visible_lesion_overlay(qc):
    _, out = qc
    page = _parse(out / "sub-02.html")
    text = page.body
    assert "the brain mask was made from the MRF series" in text
    assert "outside what network MSE-5 was trained on (4.2 training SDs" in text
    assert "learnt from the phantom's truth tissue fractions" in text
    overlay = _png(next(i for i in page.images if i["alt"] == "lesion overlay"))
    r, g, b = (overlay[..., k].astype(int) for k in range(3))
    fill = (r > 200) & (b < 60) & (r - b > 150)  # the probability, red to yellow
    annotation = (g > 200) & (b > 200) & (r < 60)  # the annotation outline, cyan
    assert fill.sum() > 50 and annotation.sum() > 20
    assert "lesion mosaic" in [i["alt"] for i in page.images]


def test_view_labels_follow_the_affine():
    box = (slice(0, 4), slice(0, 6))
    img = np.zeros((4, 6))
    img[:, :3] = 1  # x index 0-2
    ras = _View(np.eye(4), box)  # radiological: the subject's right on the image's left, anterior up
    assert (ras.codes, ras.left, ras.right, ras.top, ras.bottom) == ("RAS", "R", "L", "A", "P")
    assert ras(img)[:, 3:].all() and not ras(img)[:, :3].any()  # +x towards R: low x (the L side) on the right
    las = _View(np.diag([-1.0, 1.0, 1.0, 1.0]), box)
    assert (las.codes, las.left, las.top) == ("LAS", "R", "A")
    assert las(img)[:, :3].all()  # x towards L: low x (the R side) on the left
    lps = _View(np.diag([-1.0, -1.0, 1.0, 1.0]), box)
    assert (lps.left, lps.top, lps.plane) == ("R", "A", "axial")
    coronal = _View(np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]]), box)
    assert (coronal.codes, coronal.top, coronal.plane) == ("RSA", "S", "coronal")


def test_cli_refuses_to_replace_pages_and_filters_pipelines(qc, tmp_path, capsys):
    path, out = qc
    assert main(["report", str(path), "-o", str(out)]) == 1
    assert "pass --force" in capsys.readouterr().err
    assert main(["report", str(path), "-o", str(tmp_path / "x"), "--pipeline", "nope"]) == 2
    err = capsys.readouterr().err
    assert "derived/nope/" in err and "denoise-match, unet" in err
    assert main(["report", str(path), "-o", str(tmp_path / "x"), "--subjects", ""]) == 2
    one = tmp_path / "one"
    assert main(["report", str(path), "-o", str(one), "--subjects", "2", "--pipeline", "unet", "--slices", "3"]) == 0
    assert sorted(p.name for p in one.iterdir()) == ["index.html", "sub-02.html"]
    page = _parse(one / "sub-02.html")
    assert "g-unet" in page.ids and "g-denoise-match" not in page.ids
    assert "shown slices (z)" in page.body


def test_an_interrupted_group_is_a_warning_not_a_section(qc, tmp_path):
    import zarr

    from mrfengine.report.qc import subject_page

    path, _ = qc
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)
    group = zarr.open_group(copy / "subjects" / "sub-01", mode="r+").require_group("derived").create_group("broken")
    group.attrs["mrfengine_derived"] = {"pipeline": "broken", "complete": False}
    page = subject_page(copy, "1", n_slices=2)
    assert page.pipelines == ["denoise-match"] and page.incomplete == ["broken"]
    assert any("derived/broken/ is incomplete" in w for w in page.warnings)
    assert 'id="g-broken"' not in page.html
    only = subject_page(copy, "sub-01", pipelines=["broken"], n_slices=2)
    assert only.pipelines == [] and "requested, but derived/broken/ is incomplete" in only.warnings[0]


def _chromium(url: str, shot: Path, profile: Path, size: str) -> subprocess.CompletedProcess:
    """Headless chromium: a screenshot of ``url``, console messages on stderr, no network."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--host-resolver-rules=MAP * ~NOTFOUND",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
         f"--window-size={size}", url],
        check=False, capture_output=True, text=True, timeout=120)


def _console(stderr: str) -> list[str]:
    """The page's console messages (chromium logs each as ``...:CONSOLE(...)]`` or
    ``INFO:CONSOLE:``), uncaught errors included."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(CHROMIUM is None and os.environ.get("MRFENGINE_REQUIRE_BROWSER") != "1",
                    reason="chromium is not installed (apt-get install chromium); CI installs it")
def test_page_renders_in_headless_chromium_without_console_errors(request, tmp_path):
    from PIL import Image

    if CHROMIUM is None:
        pytest.fail("MRFENGINE_REQUIRE_BROWSER=1 but no chromium is installed (apt-get install chromium)")
    _, out = request.getfixturevalue("qc")
    # the detector sees a console error: a page that throws is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><p>x</p><script>throw new Error('boom')</script></body></html>")
    run = _chromium(bad.as_uri(), tmp_path / "bad.png", tmp_path / "profile-bad", "400,300")
    assert any("boom" in line for line in _console(run.stderr)), run.stderr[-2000:]

    shot = tmp_path / "sub-01.png"
    run = _chromium((out / "sub-01.html").resolve().as_uri(), shot, tmp_path / "profile", "1280,2000")
    assert run.returncode == 0, run.stderr[-2000:]
    assert not _console(run.stderr), _console(run.stderr)
    assert "ERROR:CONSOLE" not in run.stderr and "Uncaught" not in run.stderr
    px = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert px.shape == (2000, 1280)
    assert px.var() > 500  # not blank
    assert (px < 20).mean() > 0.05  # the images drew (black mosaics), not just the page's text
    keep = os.environ.get("MRFENGINE_QC_SCREENSHOT")
    if keep:  # look at it: MRFENGINE_QC_SCREENSHOT=/tmp/sub-01.png pytest ...
        shutil.copyfile(shot, keep)
