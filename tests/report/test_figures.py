"""Each figure is written as a real PNG; inputs are checked."""

from __future__ import annotations

import numpy as np
import pytest

from mrfengine.errors import ValidationError
from mrfengine.report import figures, tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_png(path):
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == PNG_MAGIC
    return imread(path)


def test_report_figures_from_a_built_report(tmp_path, cohort):
    records, splits, volumes = cohort
    report = tables.build_report(records, splits)
    panels = [
        figures.overlay_panel(sid, *volumes[sid], caption=f"Dice {records[sid]['summary']['lesion_dice']:.2f}")
        for sid in records
        if splits[sid] == "test"
    ]
    written = figures.report_figures(report, tmp_path, overlays=panels, dpi=60)
    assert set(written) == {"threshold_sweep", "lesion_volume", "reliability", "overlays"}
    for path in written.values():
        img = read_png(path)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert img[..., :3].std() > 0.01  # something is drawn
    assert not list(tmp_path.glob(".*tmp*"))


def test_representative_slice_and_overlay_panel():
    ref = np.zeros((8, 8, 5), dtype=bool)
    ref[2:4, 2:4, 1] = True
    ref[1:6, 1:6, 3] = True
    assert figures.representative_slice(ref) == 3
    assert figures.representative_slice(ref, axis=0) in (2, 3)
    prob = np.zeros(ref.shape)
    prob[..., 4] = 0.5
    assert figures.representative_slice(np.zeros_like(ref), probability=prob) == 4
    assert figures.representative_slice(np.zeros_like(ref)) == 2
    panel = figures.overlay_panel("s", prob, prob, ref)
    assert panel.background.shape == (8, 8) and panel.reference.sum() == 25 and panel.caption == "slice 3"
    with pytest.raises(ValidationError, match="outside"):
        figures.overlay_panel("s", prob, prob, ref, index=5)


def test_plot_inputs_are_checked(tmp_path):
    t = np.linspace(0, 1, 3)
    with pytest.raises(ValidationError, match="missing"):
        figures.plot_threshold_sweeps(t, {"a": [0, 1, 0]}, {"a": [1, 1, 0]}, {}, path=tmp_path / "x.png")
    with pytest.raises(ValidationError, match="one value per threshold"):
        figures.plot_threshold_sweeps(t, {"a": [0, 1]}, {"a": [1, 1, 0]}, {"a": "test"}, path=tmp_path / "x.png")
    with pytest.raises(ValidationError, match="lacks"):
        figures.plot_lesion_volumes({"a": {"dice": [1.0]}}, {"a": "test"}, path=tmp_path / "y.png")
    with pytest.raises(ValidationError, match="empty"):
        figures.plot_overlays([], path=tmp_path / "z.png")
    assert not list(tmp_path.iterdir())


def test_undetected_lesions_and_nan_curves_still_plot(tmp_path):
    per_lesion = {"a": {"ref_volume_ml": [0.01, 0.2], "pred_volume_ml": [0.0, 0.25], "dice": [0.0, 0.8]}}
    read_png(figures.plot_lesion_volumes(per_lesion, {"a": "test"}, path=tmp_path / "s1.png", dpi=50))
    t = np.linspace(0, 1, 5)
    curves = {"a": [np.nan] * 5, "b": [0.1, 0.5, 0.6, 0.2, None]}
    read_png(figures.plot_threshold_sweeps(t, curves, curves, {"a": "test", "b": "train"}, path=tmp_path / "f3.png", dpi=50))
