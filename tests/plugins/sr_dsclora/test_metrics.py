"""SR metrics: Y conversion (BT.601), PSNR/SSIM values, border crop; the PNG plots."""

import math

import pytest
import torch

from lowrank_vision.plugins.sr_dsclora.metrics import plot_comparison, plot_history, psnr_y, rgb_to_y, ssim_y

torch.set_num_threads(1)

# (rgb in [0,1], expected Y in BT.601 studio range)
Y_CASES = [((0.0, 0.0, 0.0), 16.0), ((1.0, 1.0, 1.0), 235.0), ((1.0, 0.0, 0.0), 16 + 65.481), ((0.0, 0.0, 1.0), 16 + 24.966)]


@pytest.mark.parametrize("rgb, y", Y_CASES)
def test_rgb_to_y(rgb, y):
    img = torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(rgb_to_y(img), torch.full((1, 1, 2, 2), y, dtype=img.dtype), atol=1e-4)


def test_psnr_and_ssim_values():
    torch.manual_seed(0)
    hr = torch.rand(1, 3, 40, 40)
    assert psnr_y(hr, hr, border=4) == float("inf")
    assert ssim_y(hr, hr, border=4) == pytest.approx(1.0, abs=1e-9)
    grey = torch.full((1, 3, 40, 40), 100 / 255)
    shifted = torch.full((1, 3, 40, 40), 110 / 255)
    # Y differs by 10 * 219/255 on every pixel -> PSNR = 20 log10(255 / (10 * 219/255))
    assert psnr_y(shifted, grey, border=4) == pytest.approx(20 * math.log10(255 / (10 * 219 / 255)), abs=1e-3)
    noise = torch.randn_like(hr)
    light, heavy = (ssim_y((hr + sigma * noise).clamp(0, 1), hr, border=4) for sigma in (0.05, 0.3))
    assert 0.999 > light > heavy > 0.2


def test_border_crop_ignores_the_border():
    hr = torch.rand(1, 3, 32, 32)
    sr = hr.clone()
    sr[..., :2, :] = 0  # damage only the top 2 rows
    assert psnr_y(sr, hr, border=2) == float("inf")
    assert psnr_y(sr, hr, border=0) < 40


def test_plots_are_written(tmp_path):
    history = [{"step": s, "loss": 1.0 / s, "l_ad": 0.5 / s} for s in range(1, 6)]
    curve = plot_history(history, tmp_path / "loss.png", keys=("loss", "l_ad"))
    crops = plot_comparison([("a", torch.rand(3, 40, 40)), ("b", torch.rand(3, 40, 40))], tmp_path / "crops.png", crop=(4, 4, 16))
    for path in (curve, crops):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops.png", "loss.png"]


def test_separable_ssim_equals_the_2d_window():
    import torch.nn.functional as F

    from lowrank_vision.plugins.sr_dsclora.metrics import ssim

    torch.manual_seed(0)
    a = torch.rand(3, 1, 40, 33, dtype=torch.float64) * 219 + 16
    b = a + torch.randn_like(a) * 8
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).view(1, 1, 11, 11)
    mu_a, mu_b = F.conv2d(a, w), F.conv2d(b, w)
    var_a, var_b, cov = F.conv2d(a * a, w) - mu_a**2, F.conv2d(b * b, w) - mu_b**2, F.conv2d(a * b, w) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ref = (((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))).flatten(1).mean(1)
    assert torch.allclose(ssim(a, b), ref, rtol=0, atol=1e-12)
