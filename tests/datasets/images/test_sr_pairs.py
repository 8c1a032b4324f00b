"""SR data and metrics: Y conversion, PSNR/SSIM values, bicubic LR, bundled split, folder readers."""

import math

import pytest
import torch

from lowrank_vision.datasets.sr_data import (
    BUNDLED_SPLIT,
    SRPatchDataset,
    bicubic_downsample,
    bundled_photos,
    load_eval_set,
    load_paired_folder,
    mod_crop,
    read_image,
    write_image,
)
from lowrank_vision.datasets.sr_metrics import psnr_y, rgb_to_y, ssim_y

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


def test_bicubic_downsample_shape_and_quantization():
    hr = mod_crop(torch.rand(3, 50, 47), 4)
    assert hr.shape == (3, 48, 44)
    lr = bicubic_downsample(hr, 4)
    assert lr.shape == (3, 12, 11)
    assert torch.equal(lr, lr.mul(255).round().div(255))
    flat = torch.full((3, 16, 16), 0.5)
    assert torch.allclose(bicubic_downsample(flat, 2), torch.full((3, 8, 8), 128 / 255), atol=1 / 255)
    with pytest.raises(ValueError, match="mod_crop"):
        bicubic_downsample(torch.rand(3, 10, 10), 4)


def test_bundled_split_is_disjoint_and_real():
    assert not set(BUNDLED_SPLIT["eval"]) & set(BUNDLED_SPLIT["train"])
    assert not {v for v in BUNDLED_SPLIT["eval"].values()} & {v for v in BUNDLED_SPLIT["train"].values()}
    photos = bundled_photos("eval")
    assert [n for n, _ in photos] == ["astronaut", "chelsea", "coffee", "china", "flower"]
    shapes = {n: tuple(img.shape) for n, img in photos}
    assert shapes["astronaut"] == (3, 512, 512) and shapes["china"] == (3, 427, 640)
    # real photos: rich content, not a flat or generated pattern
    assert all(img.std().item() > 0.1 for _, img in photos)
    with pytest.raises(ValueError, match="split"):
        bundled_photos("test")


def test_eval_set_pairs_are_consistent():
    images = load_eval_set(None, 4)
    assert len(images) == 5
    for im in images:
        assert im.hr.shape[-2] == 4 * im.lr.shape[-2] and im.hr.shape[-1] == 4 * im.lr.shape[-1]


def test_patch_dataset_is_aligned_and_deterministic():
    torch.manual_seed(0)
    hr = torch.rand(3, 64, 80)
    ds = SRPatchDataset([("a", hr)], scale=2, lr_patch=8, length=5, augment=False, seed=1)
    lr_p, hr_p = ds[3]
    assert lr_p.shape == (3, 8, 8) and hr_p.shape == (3, 16, 16)
    assert torch.allclose(bicubic_downsample(hr_p, 2), lr_p, atol=0.2)  # same region (border effects aside)
    assert torch.equal(ds[3][0], SRPatchDataset([("a", hr)], 2, lr_patch=8, length=5, augment=False, seed=1)[3][0])
    with pytest.raises(IndexError):
        ds[5]
    with pytest.raises(ValueError, match="lr_patch"):
        SRPatchDataset([("a", hr)], scale=2, lr_patch=64)


def test_paired_and_hr_folders(tmp_path):
    torch.manual_seed(0)
    (tmp_path / "HR").mkdir()
    (tmp_path / "LR_bicubic" / "X2").mkdir(parents=True)
    for i in range(2):
        hr = torch.rand(3, 24, 20)
        write_image(hr, tmp_path / "HR" / f"{i:04d}.png")
        write_image(bicubic_downsample(read_image(tmp_path / "HR" / f"{i:04d}.png"), 2), tmp_path / "LR_bicubic" / "X2" / f"{i:04d}x2.png")
    pairs = load_paired_folder(tmp_path / "HR", tmp_path / "LR_bicubic" / "X2", 2)
    assert [p[0] for p in pairs] == ["0000", "0001"] and pairs[0][1].shape == (3, 12, 10)
    images = load_eval_set(str(tmp_path), 2)  # DIV2K layout is recognised
    assert len(images) == 2 and images[0].hr.shape == (3, 24, 20)
    images = load_eval_set(str(tmp_path / "HR"), 2)  # plain HR folder -> bicubic LR
    assert images[1].lr.shape == (3, 12, 10)
    with pytest.raises(NotADirectoryError):
        load_eval_set(str(tmp_path / "missing"), 2)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read image"):
        read_image(tmp_path / "bad.png")
