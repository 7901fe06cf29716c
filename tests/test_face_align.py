"""Alignment parity against the reference's golden case, plus the fit's invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastsync.face.align import Aligner, crop_size, face_template, fit_similarity, warp_face
from fastsync.face.parity import check_align_case


def test_golden_align_cases_pass(golden_dir):
    cases = sorted(golden_dir.glob("align_*_align.pt"))
    assert cases, f"no align_*_align.pt in {golden_dir}"
    for path in cases:
        metrics = check_align_case(path.name[len("align_"):-len("_align.pt")], {"align.pt": path})
        failed = [m.describe() for m in metrics if not m.passed]
        assert not failed, f"{path.name}: {failed}"


@pytest.mark.parametrize("resolution, expected", [(256, (210, 280)), (512, (420, 560)), (384, (314, 419))])
def test_crop_size_truncates_like_the_reference(resolution, expected):
    assert crop_size(resolution) == expected


def test_fit_maps_template_onto_itself_and_recovers_a_similarity():
    template = face_template(512)
    matrix, offset = fit_similarity(template, template)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-4)
    np.testing.assert_allclose(offset, 0, atol=1e-5)

    angle, scale, shift = 0.3, 0.25, np.array([40.0, -12.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (template - shift) @ np.linalg.inv(rot).T  # so that rot @ p + shift == template
    matrix, _ = fit_similarity(points, template)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-4)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-2)


def test_smoothing_state_runs_in_sequence_and_resets():
    points = [np.array([[279.0, 336], [318, 334], [298, 361]]), np.array([[281.0, 338], [317, 333], [300, 364]])]
    aligner = Aligner(512)
    first = aligner.next_matrix(points[0])
    second = aligner.next_matrix(points[1])
    fresh = Aligner(512).next_matrix(points[1])
    assert not np.allclose(second, fresh)  # the second frame remembers the first
    np.testing.assert_allclose(second[:, :2], fresh[:, :2])  # only the translation is smoothed
    aligner.reset()
    np.testing.assert_array_equal(aligner.next_matrix(points[0]), first)


def test_warp_fills_outside_with_127():
    frame = np.zeros((40, 30, 3), np.uint8)
    far_away = np.array([[1.0, 0, 5000], [0, 1, 5000]], np.float32)
    face = warp_face(frame, far_away, 256)
    assert face.shape == (256, 256, 3) and np.all(face == 127)


@pytest.mark.parametrize("centre", [(120.0, 150.0), (10.0, 5.0), (235.0, 290.0), (5000.0, 150.0)],
                         ids=["inside", "top-left-edge", "bottom-right-edge", "off-frame"])
def test_windowed_warp_matches_sampling_the_whole_frame(centre):
    """warp_to_crop samples only the window it reads; sampling the whole frame (the plain
    way) must give the same crop, up to float rounding of the grid (at most 1 level)."""
    from fastsync.face.align import FILL_VALUE, crop_grid, crop_size, sample_bilinear, warp_to_crop

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (300, 240, 3), dtype=np.uint8)
    size = crop_size(128)
    angle, scale = 0.2, 1.3
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array(size, dtype=np.float64) / 2 - linear @ np.array(centre)  # `centre` lands mid-crop
    matrix = np.hstack([linear, shift[:, None]]).astype(np.float32)
    windowed = warp_to_crop(frame, matrix, size).astype(int)

    grid = crop_grid(matrix, size[0], size[1], frame.shape[1], frame.shape[0])
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float()
    whole, _ = sample_bilinear(image, grid, FILL_VALUE)
    plain = whole[0].permute(1, 2, 0).numpy().astype(np.uint8).astype(int)

    assert windowed.shape == plain.shape
    assert np.abs(windowed - plain).max() <= 1
    assert (windowed == plain).mean() > 0.99
    if centre[0] > 1000:
        assert (windowed == int(FILL_VALUE)).all()


@pytest.mark.parametrize("channels", [1, 3])
def test_one_pass_sampling_equals_sampling_image_and_ones_apart(channels):
    """sample_bilinear samples the image and its coverage in one grid_sample call (a ones
    channel); that must be bit for bit the two separate calls it replaced."""
    import torch.nn.functional as F

    from fastsync.face.align import FILL_VALUE, sample_bilinear

    gen = torch.Generator().manual_seed(channels)
    image = torch.rand((1, channels, 61, 47), generator=gen) * 255
    grid = torch.rand((1, 33, 29, 2), generator=gen) * 2.6 - 1.3  # some samples fall outside
    values, coverage = sample_bilinear(image, grid, FILL_VALUE)

    def apart(img):
        return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    expected_coverage = apart(torch.ones((1, 1, 61, 47)))
    assert (expected_coverage < 0.5).any() and (expected_coverage > 0.5).any()  # edges are exercised
    assert torch.equal(coverage, expected_coverage)
    assert torch.equal(values, apart(image) + (1 - expected_coverage) * FILL_VALUE)
