"""Phantom radiographs: deterministic, every finding drawn where its region says, sides right."""

from __future__ import annotations

import time

import numpy as np
import pytest

from stages.labeling.observations import NO_FINDING, OBSERVATIONS
from stages.phantom.render import Finding, RenderedStudy, render_study
from stages.phantom.sheet import contact_sheet

SIZE = 128
RENDERED = range(NO_FINDING)  # 0..12
LATERALISED = (2, 3, 4, 5, 6, 7, 8, 9, 10, 11)  # findings that sit in one lung or the other
ZONED = (2, 3, 5, 6, 7, 10, 11)  # findings whose height follows the zone
CARDIOMEGALY = OBSERVATIONS.index("Cardiomegaly")
LUNG_LESION = OBSERVATIONS.index("Lung Lesion")
PLEURAL_EFFUSION = OBSERVATIONS.index("Pleural Effusion")


def _render(findings: list[Finding], seed: int = 0, size: int = SIZE) -> RenderedStudy:
    return render_study(findings, size, np.random.default_rng(seed))


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    rows, columns = np.nonzero(mask)
    return float(rows.mean()), float(columns.mean())


@pytest.mark.parametrize("size", [64, 128, 200])
def test_shapes_and_dtypes(size):
    study = _render([Finding(index) for index in RENDERED], size=size)
    for image in (study.frontal, study.lateral):
        assert image.shape == (size, size) and image.dtype == np.uint8
    for regions in (study.frontal_regions, study.lateral_regions):
        assert regions.shape == (len(OBSERVATIONS), size, size) and regions.dtype == bool
        assert not regions[NO_FINDING].any()


def test_same_seed_gives_identical_study():
    findings = [Finding(2, "left", "lower"), Finding(12), Finding(9, severity=1.4)]
    first, second = _render(findings, seed=7), _render(findings, seed=7)
    for name in ("frontal", "lateral", "frontal_regions", "lateral_regions"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_different_seeds_differ():
    first, second = _render([], seed=1), _render([], seed=2)
    assert np.abs(first.frontal.astype(int) - second.frontal).mean() > 3
    assert np.abs(first.lateral.astype(int) - second.lateral).mean() > 3


def test_normal_study_has_no_regions():
    for findings in ([], [Finding(NO_FINDING)]):
        study = _render(findings, seed=3)
        assert not study.frontal_regions.any() and not study.lateral_regions.any()
    no_finding = _render([Finding(NO_FINDING)], seed=3)
    np.testing.assert_array_equal(_render([], seed=3).frontal, no_finding.frontal)


def test_a_normal_chest_looks_like_a_radiograph():
    """Dark lungs either side of a bright mediastinum, a bright abdomen below them."""
    image = _render([], seed=4).frontal.astype(float)
    lungs = (image[40:80, 20:45].mean() + image[40:80, 83:108].mean()) / 2
    assert image[40:80, 58:70].mean() > lungs + 60
    assert image[115:, 20:108].mean() > lungs + 60


@pytest.mark.parametrize("observation", RENDERED)
def test_each_finding_has_its_own_nonempty_region_in_both_views(observation):
    study = _render([Finding(observation)], seed=observation)
    for regions in (study.frontal_regions, study.lateral_regions):
        assert regions[observation].any(), OBSERVATIONS[observation]
        others = np.delete(regions, observation, axis=0)
        assert not others.any()


@pytest.mark.parametrize("observation", RENDERED)
def test_the_sign_is_drawn_inside_its_region(observation):
    """Against the same seed without the finding, pixels change inside the region, not outside."""
    for seed in (0, 1):
        normal = _render([], seed=seed)
        study = _render([Finding(observation)], seed=seed)
        for view in ("frontal", "lateral"):
            region = getattr(study, f"{view}_regions")[observation]
            change = np.abs(getattr(study, view).astype(float) - getattr(normal, view))
            inside, outside = change[region].mean(), change[~region].mean()
            assert inside > 4 and inside > 4 * outside, (OBSERVATIONS[observation], view, inside,
                                                         outside)


@pytest.mark.parametrize("observation", LATERALISED)
def test_patient_right_is_the_viewers_left_on_the_pa_view(observation):
    for seed in (0, 1):
        for side in ("right", "left"):
            study = _render([Finding(observation, side=side)], seed=seed)
            region = study.frontal_regions[observation]
            on_viewers_left = region[:, : SIZE // 2].sum() / region.sum()
            assert on_viewers_left > 0.9 if side == "right" else on_viewers_left < 0.1, (
                OBSERVATIONS[observation], side, on_viewers_left)


@pytest.mark.parametrize("observation", LATERALISED)
def test_bilateral_findings_are_in_both_lungs(observation):
    region = _render([Finding(observation, side="bilateral")], seed=5).frontal_regions[observation]
    assert region[:, : SIZE // 2].any() and region[:, SIZE // 2:].any()


@pytest.mark.parametrize("observation", ZONED)
def test_zone_sets_the_height(observation):
    for seed in (0, 1):
        upper = _render([Finding(observation, "right", "upper")], seed=seed)
        lower = _render([Finding(observation, "right", "lower")], seed=seed)
        for view in ("frontal_regions", "lateral_regions"):
            upper_row = _centroid(getattr(upper, view)[observation])[0]
            lower_row = _centroid(getattr(lower, view)[observation])[0]
            assert upper_row + 0.15 * SIZE < lower_row, (OBSERVATIONS[observation], view)


def test_effusion_lies_at_the_lung_base():
    for seed in range(3):
        study = _render([Finding(PLEURAL_EFFUSION, "left")], seed=seed)
        assert _centroid(study.frontal_regions[PLEURAL_EFFUSION])[0] > 0.55 * SIZE
        assert _centroid(study.lateral_regions[PLEURAL_EFFUSION])[1] > 0.5 * SIZE  # posterior


def test_cardiomegaly_widens_the_heart():
    for seed in range(4):
        normal = _render([], seed=seed).frontal.astype(float)
        large = _render([Finding(CARDIOMEGALY)], seed=seed)
        heart_band = (slice(int(0.55 * SIZE), int(0.68 * SIZE)),
                      slice(int(0.2 * SIZE), int(0.8 * SIZE)))
        assert large.frontal[heart_band].mean() > normal[heart_band].mean() + 5
        columns = np.nonzero(large.frontal_regions[CARDIOMEGALY].any(axis=0))[0]
        assert columns.max() - columns.min() > 0.45 * SIZE  # ratio >= 0.55 of a ~0.8 thorax


def test_severity_and_uncertainty_modulate_the_sign():
    def sign(finding: Finding) -> tuple[int, float]:
        normal, study = _render([], seed=2), _render([finding], seed=2)
        region = study.frontal_regions[finding.observation]
        change = np.abs(study.frontal.astype(float) - normal.frontal)
        return int(region.sum()), float(change[region].mean())

    mild = sign(Finding(PLEURAL_EFFUSION, "right", severity=0.5))
    severe = sign(Finding(PLEURAL_EFFUSION, "right", severity=1.5))
    assert mild[0] < severe[0]
    certain = sign(Finding(LUNG_LESION, "left", "middle"))
    uncertain = sign(Finding(LUNG_LESION, "left", "middle", uncertain=True))
    assert uncertain[1] < certain[1]


def test_lesions_stay_visible_at_128_px():
    for seed in range(5):
        study = _render([Finding(LUNG_LESION, severity=0.5)], seed=seed)
        rows, columns = np.nonzero(study.frontal_regions[LUNG_LESION])
        assert rows.max() - rows.min() >= 4 and columns.max() - columns.min() >= 4


@pytest.mark.parametrize("size", [64, 512])
def test_every_finding_renders_at_the_size_limits(size):
    study = _render([Finding(index) for index in RENDERED], seed=1, size=size)
    assert all(study.frontal_regions[index].any() for index in RENDERED)
    assert all(study.lateral_regions[index].any() for index in RENDERED)


def test_invalid_findings_are_rejected():
    for arguments in ({"observation": 14}, {"observation": 2, "side": "middle"},
                      {"observation": 2, "zone": "apex"}):
        with pytest.raises(ValueError):
            Finding(**arguments)


def test_render_time_per_study():
    """Reported, not asserted: the demo renders thousands of studies on a CPU."""
    rng = np.random.default_rng(0)
    for size in (128, 256):
        render_study([Finding(1)], size, rng)
        start = time.perf_counter()
        for index in range(10):
            render_study([Finding(index % NO_FINDING)], size, rng)
        milliseconds = (time.perf_counter() - start) / 10 * 1000
        print(f"\nphantom render at {size} px: {milliseconds:.1f} ms/study (both views, regions)")


def test_contact_sheet_grid_and_captions():
    images = [np.full((32, 32), 100 + index, dtype=np.uint8) for index in range(5)]
    sheet = contact_sheet(images, [f"study {index} with a long caption" for index in range(5)], 3)
    assert sheet.mode == "L"
    assert sheet.width >= 3 * 32 and sheet.height > 2 * 32
    assert np.asarray(sheet)[0, 0] == 100
    colour = contact_sheet(images[:1] + [np.zeros((32, 32, 3), dtype=np.uint8)], None, 2)
    assert colour.mode == "RGB" and colour.size == (2 * 32 + 2, 32)
    with pytest.raises(ValueError):
        contact_sheet(images, ["too few"], 2)
