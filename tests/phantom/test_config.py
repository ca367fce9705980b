"""Presets and the cohort plan (sites, healthy volunteers, split)."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from mrfengine.errors import ValidationError
from mrfengine.phantom import GridConfig, cohort_preset, plan_cohort


def test_paper_plan_matches_the_study():
    plans = plan_cohort(cohort_preset("paper"), seed=0)
    assert len(plans) == 48
    assert [p.id for p in plans[:2]] == ["sub-01", "sub-02"]
    assert sum(p.group == "healthy" for p in plans) == 6
    held = Counter((p.split, p.site) for p in plans if p.split != "train")
    assert held == {("test", "1"): 2, ("test", "2"): 3, ("validation", "1"): 2, ("validation", "2"): 3}
    # Held-out subjects are patients (lesion metrics need lesions); healthy ones train.
    assert all(p.group == "patient" for p in plans if p.split != "train")
    assert Counter(p.site for p in plans) == {"1": 24, "2": 24}
    repeat = [p for p in plans if p.repeat_annotation]
    assert all(p.group == "patient" for p in repeat) and len(repeat) == 10


def test_plan_is_seeded():
    cfg = cohort_preset("paper")
    assert plan_cohort(cfg, 3) == plan_cohort(cfg, 3)
    assert plan_cohort(cfg, 3) != plan_cohort(cfg, 4)


def test_tiny_preset_has_every_kind_of_subject():
    cfg = cohort_preset("tiny")
    assert cfg.grid.shape_zyx == (12, 64, 64) and cfg.grid.shape_zyx[0] % 3 == 0
    plans = plan_cohort(cfg, 0)
    assert {p.split for p in plans} == {"train", "validation", "test"}
    assert {p.site for p in plans} == {"1", "2"}
    assert {p.group for p in plans} == {"healthy", "patient"}
    assert any(p.repeat_annotation for p in plans)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 12, 100])
def test_other_sizes_keep_a_training_patient(n):
    cfg = cohort_preset("paper", n_subjects=n)
    plans = plan_cohort(cfg, 0)
    assert len(plans) == n
    assert any(p.split == "train" and p.group == "patient" for p in plans)


def test_bad_settings_are_named():
    with pytest.raises(ValidationError, match="unknown cohort preset"):
        cohort_preset("huge")
    with pytest.raises(ValidationError, match="multiple of 3"):
        replace(cohort_preset("tiny"), grid=GridConfig(shape_zyx=(10, 64, 64)))
    with pytest.raises(ValidationError, match="patients"):
        plan_cohort(replace(cohort_preset("tiny"), test_per_site=(5, 5)), 0)
