import numpy as np
import pytest
import torch

from fastsync.tools.quality import compare_frames, psnr_from_mse, ssim


def _frames(seed, n=3, h=40, w=48):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_identical_videos_have_infinite_psnr_and_unit_ssim():
    frames = _frames(0)
    q = compare_frames(frames, frames)
    assert q.frames == 3
    assert q.psnr_db == float("inf")
    assert q.ssim == pytest.approx(1.0, abs=1e-6)


def test_psnr_matches_its_definition_over_all_frames():
    a = _frames(1)
    b = [np.clip(f.astype(int) + 4, 0, 255).astype(np.uint8) for f in a]
    q = compare_frames(a, b)
    mse = np.mean([(x.astype(float) - y.astype(float)) ** 2 for x, y in zip(a, b)])
    assert q.psnr_db == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-6)
    assert psnr_from_mse(0) == float("inf")


def test_ssim_drops_with_noise_and_is_symmetric():
    torch.manual_seed(0)
    a = torch.rand(1, 3, 32, 32) * 255
    noisy = (a + torch.randn_like(a) * 30).clamp(0, 255)
    very_noisy = (a + torch.randn_like(a) * 90).clamp(0, 255)
    s1, s2 = float(ssim(a, noisy)), float(ssim(a, very_noisy))
    assert 0 < s2 < s1 < 1
    assert float(ssim(noisy, a)) == pytest.approx(s1, rel=1e-5)


def test_mouth_region_is_measured_separately():
    a = _frames(2)
    b = [f.copy() for f in a]
    for f in b:
        f[:10, :10] = 0  # damage outside the mouth box only
    q = compare_frames(a, b, mouth_boxes=[(20, 20, 40, 38)] * 3)
    assert q.mouth_psnr_db == float("inf")
    assert q.psnr_db < 40


def test_different_lengths_are_an_error():
    with pytest.raises(ValueError):
        compare_frames(_frames(0, n=3), _frames(0, n=2))
